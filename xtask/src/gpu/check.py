"""`cargo xtask gpu-check`: pmet's GPU figures against nvidia-smi's.

On a machine with an NVIDIA GPU and driver: traces `load.py` (a job that
holds a known amount of GPU memory and keeps every SM busy for a few
seconds) and, beside it, a process that does nothing on the GPU; polls
`nvidia-smi --query-compute-apps` and `nvidia-smi pmon` meanwhile; and
compares. Passes when pmet's memory peak for the job is within 5 % of
nvidia-smi's, its SM use is reported, and the idle process is at 0.
Needs only python3 and the driver (no CUDA toolkit, no network), so it runs
with a pmet binary built elsewhere: check.py PMET_BIN [OUT_DIR]
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB, SECONDS = 2048, 6


def smi(args):
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20).stdout
    except FileNotFoundError:
        sys.exit("gpu-check: nvidia-smi not found; run it on a machine with an NVIDIA GPU and driver")


def main():
    pmet = sys.argv[1]
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "target/gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    if not smi(["-L"]).strip():
        sys.exit("gpu-check: nvidia-smi lists no GPU; run it on a machine with an NVIDIA GPU")
    report_path = out / "report.json"
    memory, sm = {}, {}
    done = threading.Event()

    def poll():
        while not done.is_set():
            for line in smi(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]).splitlines():
                parts = [x.strip() for x in line.split(",")]
                if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                    pid, mib = int(parts[0]), int(parts[1])
                    memory[pid] = max(memory.get(pid, 0), mib)
            for line in smi(["pmon", "-c", "1", "-s", "u"]).splitlines():
                f = line.split()
                if line.startswith("#") or len(f) < 5 or not f[1].isdigit():
                    continue
                if f[3].isdigit():
                    sm.setdefault(int(f[1]), []).append(int(f[3]))
            time.sleep(0.25)

    t = threading.Thread(target=poll)
    t.start()
    job = f"{sys.executable} {HERE / 'load.py'} {MIB} {SECONDS} & sleep {SECONDS + 2} & wait"
    ran = subprocess.run([pmet, "trace", "-q", "-i", "200ms", "-o", str(report_path), "--", "sh", "-c", job])
    done.set()
    t.join()
    if ran.returncode != 0:
        sys.exit(f"gpu-check: the traced job failed ({ran.returncode})")
    r = json.loads(report_path.read_text())
    gpus = r["collector"]["gpu"]
    if not gpus:
        sys.exit("gpu-check: pmet saw no GPU (collector.gpu is null); run `pmet -v trace -- true` for why")
    # The job itself: python running load.py (the `sh -c` around it names
    # load.py in its argv too, and holds nothing on the GPU).
    load = next(
        p for p in r["processes"] if len(p["argv"]) > 1 and p["argv"][1].endswith("load.py")
    )
    idle = next(p for p in r["processes"] if p["comm"] == "sleep")
    g, z = load["gpu"], idle["gpu"]
    smi_mib = memory.get(load["pid"], 0)
    smi_sm = sm.get(load["pid"], [])
    pmet_mib = g["memory_peak_bytes"] / 2**20
    rows = [
        ("GPU job: memory peak", f"{pmet_mib:.0f} MiB", f"{smi_mib} MiB (compute-apps, max)"),
        ("GPU job: SM mean / max", f"{g['sm_pct_mean']:.1f} % / {g['sm_pct_max']:.1f} %",
         f"{sum(smi_sm) / len(smi_sm):.1f} % / {max(smi_sm)} % (pmon)" if smi_sm else "no pmon samples"),
        ("GPU job: busy (SM-weighted)", f"{g['busy_s']:.2f} s", f"{SECONDS} s of spinning"),
        ("idle process", f"{z['memory_peak_bytes']} B, {z['sm_pct_mean']} %, devices {z['devices']}",
         "absent" if idle["pid"] not in memory else f"{memory[idle['pid']]} MiB"),
    ]
    dev = gpus["devices"][0]
    lines = [
        f"`cargo xtask gpu-check` on {dev['name']} ({dev['driver']}, {gpus['source']}, "
        f"accounting {'on' if dev.get('accounting') else 'off'}), "
        f"{os.cpu_count()} CPUs; the job allocates {MIB} MiB (its process holds more: the CUDA "
        f"context and the framework's caches, all counted by both tools) and keeps the SMs "
        f"busy for {SECONDS} s:",
        "",
        "| figure | pmet | nvidia-smi |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    lines += [
        "",
        "nvidia-smi's compute-apps peak per pid (MiB): "
        + ", ".join(f"{pid}: {mib}" for pid, mib in sorted(memory.items())),
        "pmet's memory peak per pid (MiB): "
        + ", ".join(
            f"{p['pid']} {p['comm']}: {p['gpu']['memory_peak_bytes'] / 2**20:.0f}"
            for p in r["processes"]
            if p.get("gpu")
        ),
    ]
    text = "\n".join(lines) + "\n"
    (out / "gpu-check.md").write_text(text)
    print(text)
    failures = []
    if smi_mib == 0:
        failures.append("nvidia-smi never listed the job")
    elif abs(pmet_mib - smi_mib) > 0.05 * smi_mib:
        failures.append(f"memory {pmet_mib:.0f} MiB is not within 5 % of nvidia-smi's {smi_mib} MiB")
    if g["sm_pct_max"] <= 0:
        failures.append("no SM use reported for the spinning job")
    if z["memory_peak_bytes"] != 0 or z["sm_pct_mean"] != 0 or z["devices"]:
        failures.append(f"the idle process is not at 0: {z}")
    if failures:
        sys.exit("gpu-check failed: " + "; ".join(failures))
    print("gpu-check passed")


main()
