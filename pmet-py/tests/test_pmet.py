"""The Python package against the real kernel and real programs: exact
bytes, real processes, real signals. See conftest.py for the two runs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pmet
from conftest import run_pytest

# A TCP server and client and a UDP receiver and sender, each its own
# process, moving known bytes: the truth the report must hold.
NETWORK = """
import socket, subprocess, sys

role = sys.argv[1] if len(sys.argv) > 1 else "main"

def exact_recv(conn, n):
    got = 0
    while got < n:
        b = conn.recv(min(65536, n - got))
        if not b:
            sys.exit(f"short read: {got} of {n}")
        got += len(b)

if role == "main":
    tcp = subprocess.Popen([sys.executable, __file__, "tcp-server"], stdout=subprocess.PIPE, text=True)
    port = tcp.stdout.readline().strip()
    subprocess.run([sys.executable, __file__, "tcp-client", port], check=True)
    udp = subprocess.Popen([sys.executable, __file__, "udp-recv"], stdout=subprocess.PIPE, text=True)
    port = udp.stdout.readline().strip()
    subprocess.run([sys.executable, __file__, "udp-send", port], check=True)
    assert tcp.wait() == 0 and udp.wait() == 0
elif role == "tcp-server":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
    print(s.getsockname()[1], flush=True)
    c, _ = s.accept()
    exact_recv(c, 123457)
    c.sendall(b"r" * 4567)
    c.close()
elif role == "tcp-client":
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    c.sendall(b"s" * 123457)
    exact_recv(c, 4567)
    c.close()
elif role == "udp-recv":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], flush=True)
    for _ in range(10):
        data, peer = s.recvfrom(2000)
        assert len(data) == 1000
        s.sendto(b"k", peer)
elif role == "udp-send":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(10):
        s.sendto(b"u" * 1000, ("127.0.0.1", int(sys.argv[2])))
        s.recvfrom(10)
"""


def by_role(report: pmet.Report, role: str) -> pmet.ProcessReport:
    found = [p for p in report.processes if len(p.argv) > 2 and p.argv[2] == role]
    assert len(found) == 1, [p.argv for p in report.processes]
    return found[0]


def test_exact_tcp_and_udp_bytes_per_process(script):
    report = pmet.trace(script(NETWORK), backend="ebpf")
    assert report.exit_code == 0
    assert report.collector.ebpf and report.collector.lost_events == 0
    server, client = by_role(report, "tcp-server"), by_role(report, "tcp-client")
    assert (server.net.tcp.rx_bytes, server.net.tcp.tx_bytes) == (123457, 4567)
    assert (client.net.tcp.tx_bytes, client.net.tcp.rx_bytes) == (123457, 4567)
    recv, send = by_role(report, "udp-recv"), by_role(report, "udp-send")
    assert (recv.net.udp.rx_bytes, recv.net.udp.tx_bytes) == (10000, 10)
    assert (send.net.udp.tx_bytes, send.net.udp.rx_bytes) == (10000, 10)
    assert report.totals.net.tcp.tx_bytes == 123457 + 4567
    assert report.totals.processes == 5
    assert isinstance(report.processes[0], pmet.ProcessReport)
    assert isinstance(report.processes[0].net.tcp, pmet.Traffic)
    if not Path("/dev/nvidiactl").exists() and not Path("/dev/dri").exists():
        # No GPU driver: GPU figures are unknown, not 0.
        assert report.collector.gpu is None and report.totals.gpu is None
        assert all(p.gpu is None for p in report.processes)


@pytest.mark.unprivileged
def test_the_procfs_backend_as_an_ordinary_user_knows_no_network(script):
    m = pmet.ProcessMonitor(script(NETWORK))
    assert m.backend == "procfs"
    report = m.run()
    assert report.exit_code == 0
    assert report.collector.ebpf is False
    assert report.totals.net is None
    assert all(p.net is None for p in report.processes)
    assert report.processes[0].cpu_user_s is not None
    with pytest.raises(PermissionError, match="CAP_BPF|root"):
        pmet.ProcessMonitor(["true"], backend="ebpf")


@pytest.mark.unprivileged
def test_the_plugin_as_an_ordinary_user_leaves_network_budgets_out(tmp_path):
    (tmp_path / "test_budget.py").write_text(
        "import pytest\n"
        "@pytest.mark.pmet_budget(net_tx='1KiB', cpu='60s')\n"
        "def test_quiet():\n    pass\n"
    )
    r = run_pytest(["--pmet", "-W", "default", "test_budget.py"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pmet_budget net_tx not checked: the procfs backend cannot see network" in r.stdout


def test_from_pid_follows_a_running_process_and_its_children(script):
    cmd = script(
        """
        import subprocess, sys, time
        time.sleep(0.5)
        subprocess.run([sys.executable, "-c", "print(sum(range(10**6)))"], check=True)
        time.sleep(0.3)
        """
    )
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    m = pmet.ProcessMonitor.from_pid(p.pid, base_interval_ms=100)
    assert m.pid == m.get_pid() == p.pid
    report = m.run()
    p.wait()
    assert report.mode == "attach"
    assert report.root_pid == p.pid
    assert report.totals.processes == 2
    child = [q for q in report.processes if q.pid != p.pid][0]
    assert child.exit_code == 0 and child.cpu_user_s > 0


def test_sample_once_before_during_and_after_run(script):
    cmd = script(
        """
        import time
        block = bytearray(64 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(1.5)
        """
    )
    m = pmet.ProcessMonitor(cmd, base_interval_ms=100)
    assert m.is_running()
    time.sleep(0.8)
    s = m.sample_once()
    assert isinstance(s, pmet.Sample)
    assert s.alive == 1 and s.seen == 1
    (me,) = s.processes
    assert me.pid == m.pid and me.comm.startswith("python")
    assert me.rss_bytes >= 64 << 20
    assert s.rss_bytes == me.rss_bytes
    assert s.net is not None and s.net.tcp.tx_bytes == 0
    if not Path("/dev/nvidiactl").exists() and not Path("/dev/dri").exists():
        assert s.gpu is None, "no GPU driver here: unknown, not 0"
    report = m.run()
    assert not m.is_running()
    last = m.sample_once()
    assert last.alive == 0 and last.seen == 1
    assert report.processes[0].peak_rss_bytes >= 64 << 20


def test_children_are_the_live_descendants_with_their_figures(script):
    cmd = script(
        """
        import subprocess, sys
        kids = [subprocess.Popen(["sleep", "3"]) for _ in range(3)]
        print(" ".join(str(k.pid) for k in kids), flush=True)
        for k in kids:
            k.wait()
        """
    )
    out = os.pipe()
    m = pmet.ProcessMonitor(["sh", "-c", f"exec {' '.join(cmd)} >&{out[1]}"], base_interval_ms=100)
    os.close(out[1])
    pids = sorted(int(x) for x in os.read(out[0], 200).split())
    kids = m.children()
    assert sorted(k.pid for k in kids) == pids
    assert all(k.comm == "sleep" and k.ppid == m.pid for k in kids)
    assert all(k.rss_bytes and k.rss_bytes > 0 for k in kids)
    m.stop()


def test_run_releases_the_gil():
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    report = pmet.ProcessMonitor(["sleep", "1"]).run()
    seen = ticks
    stop.set()
    t.join()
    assert report.exit_code == 0
    # About 1,000 in a second; far fewer if run() held the GIL.
    assert seen > 300, seen


def test_on_sample_and_samples_see_each_sample(script):
    got: list[pmet.Sample] = []
    report = pmet.trace(["sleep", "0.6"], base_interval_ms=100, max_interval_ms=100, on_sample=got.append)
    assert report.exit_code == 0
    assert len(got) >= 4 and all(isinstance(s, pmet.Sample) for s in got)
    assert [s.t for s in got] == sorted(s.t for s in got)
    m = pmet.ProcessMonitor(["sleep", "0.5"], base_interval_ms=100, max_interval_ms=100)
    times = [s.t for s in m.samples()]
    assert len(times) >= 3
    assert m.run().exit_code == 0


def test_every_error_is_pythons_own(tmp_path):
    with pytest.raises(FileNotFoundError, match="command not found"):
        pmet.ProcessMonitor(["no-such-command-pmet"])
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    # Not even root may exec a file with no execute bit.
    with pytest.raises(PermissionError, match="cannot execute"):
        pmet.ProcessMonitor([str(plain)])
    with pytest.raises(ProcessLookupError, match="no process with pid"):
        pmet.ProcessMonitor.from_pid(unused_pid())
    with pytest.raises(ValueError, match="base_interval_ms"):
        pmet.ProcessMonitor(["true"], base_interval_ms=0)
    with pytest.raises(ValueError, match="shorter than"):
        pmet.ProcessMonitor(["true"], base_interval_ms=500, max_interval_ms=100)
    with pytest.raises(ValueError, match="backend"):
        pmet.ProcessMonitor(["true"], backend="pcap")
    with pytest.raises(ValueError, match="since_process_start goes with"):
        pmet.ProcessMonitor(["true"], since_process_start=True)
    with pytest.raises(TypeError, match="list of arguments"):
        pmet.ProcessMonitor("make -j4")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="cannot start the command in"):
        pmet.ProcessMonitor(["true"], cwd=tmp_path / "absent")
    with pytest.raises(NotADirectoryError):
        pmet.ProcessMonitor(["true"], cwd=plain)
    with pytest.raises(FileNotFoundError):
        pmet.load_report(tmp_path / "absent.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(pmet.PmetError, match="not a pmet report"):
        pmet.load_report(tmp_path / "other.json")
    r = pmet.trace(["true"])
    with pytest.raises(ValueError, match="fail_if"):
        pmet.diff(r, r, fail_if="cpu>>10%")
    with pytest.raises(AttributeError, match="no field 'nonsense'"):
        r.nonsense
    assert issubclass(pmet.PmetError, Exception)


def unused_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def test_keyboard_interrupt_stops_the_command_and_carries_the_report(tmp_path):
    prog = tmp_path / "interrupted.py"
    prog.write_text(
        "import json, pmet, sys\n"
        "m = pmet.ProcessMonitor(['sleep', '30'])\n"
        "print(m.pid, flush=True)\n"
        "try:\n"
        "    m.run()\n"
        "except KeyboardInterrupt as e:\n"
        "    r = e.report\n"
        "    print(json.dumps([r.exit_code, r.exit_signal, r.processes[0].exit_signal]), flush=True)\n"
        "    sys.exit(3)\n"
    )
    # As from a terminal: SIGINT at its default and not blocked (a
    # background job of a non-interactive shell, as CI may be, starts with
    # it ignored, and Python then leaves it so).
    p = subprocess.Popen(
        [sys.executable, str(prog)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_from_a_terminal,
    )
    sleeper = int(p.stdout.readline())
    time.sleep(0.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 3, out
    # SIGINT reached the command (not only Python), which died of it.
    assert json.loads(out) == [None, 2, 2]
    assert time.monotonic() - t0 < 5
    assert not Path(f"/proc/{sleeper}").exists()


def test_the_context_manager_stops_the_tree():
    with pmet.ProcessMonitor(["sleep", "30"]) as m:
        pid = m.pid
        assert m.is_running()
    assert not Path(f"/proc/{pid}").exists()
    assert m.report is not None
    assert m.report.processes[0].exit_signal == signal.SIGTERM


def test_env_and_cwd_are_the_commands(tmp_path):
    report = pmet.trace(
        ["sh", "-c", 'printf "%s %s" "$PMET_TEST" "$(pwd)" > out.txt'],
        env={"PMET_TEST": "from python", "PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    assert report.exit_code == 0
    assert (tmp_path / "out.txt").read_text() == f"from python {tmp_path}"
    assert report.processes[0].cwd in (str(tmp_path), None)


def test_reports_round_trip_with_the_cli(tmp_path, script):
    cli = os.environ.get("PMET_BIN")
    assert cli, "cargo xtask test sets PMET_BIN to the pmet binary"
    report = pmet.trace(script(NETWORK))
    path = tmp_path / "from-python.json"
    report.write(path)
    shown = subprocess.run([cli, "report", str(path)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "· 5 processes" in shown.stdout, shown.stdout
    assert pmet.load_report(path).to_json() == report.to_json()
    # And the other way: what the CLI wrote reads back byte for byte.
    cli_path = tmp_path / "from-cli.json"
    ran = subprocess.run([cli, "trace", "-q", "-o", str(cli_path), "--", "sh", "-c", "exit 7"])
    assert ran.returncode == 7
    loaded = pmet.load_report(cli_path)
    assert loaded.exit_code == 7
    assert loaded.to_json() + "\n" == cli_path.read_text()
    again = tmp_path / "again.json"
    loaded.write(again)
    assert again.read_bytes() == cli_path.read_bytes()
    assert pmet.Report.from_dict(loaded.to_dict()).to_json() == loaded.to_json()


def test_write_refuses_what_another_user_planted_in_a_sticky_directory(tmp_path):
    report = pmet.trace(["true"])
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    # Another user's FIFO at the name asked for, with that user reading.
    planted = shared / "report.json"
    os.mkfifo(planted)
    os.chown(planted, 65534, 65534)
    reader = os.open(planted, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(PermissionError, match="report.json"):
            report.write(planted)
        assert os.read(reader, 4096) == b"", "the planted FIFO received the report"
    finally:
        os.close(reader)
    # Another user's regular file there is replaced, not written through:
    # what they hold open of it never sees the report.
    theirs = shared / "theirs.json"
    theirs.write_text("theirs")
    os.chown(theirs, 65534, 65534)
    with open(theirs) as held:
        report.write(theirs)
        assert held.read() == "theirs"
    assert os.stat(theirs).st_uid == os.geteuid()
    assert pmet.load_report(theirs).to_json() == report.to_json()
    # A name nobody holds is written, and reads back.
    mine = shared / "mine.json"
    report.write(mine)
    assert pmet.load_report(mine).to_json() == report.to_json()


def test_diff_names_its_breaches(script):
    one = pmet.trace(["true"])
    many = pmet.trace(["sh", "-c", "true; true; /bin/true; /bin/true"])
    d = pmet.diff(one, many, fail_if="processes>+1,duration>+1h")
    assert d.breached
    assert [b.limit for b in d.breaches] == ["processes>+1"]
    assert d.metric("processes").base == 1
    assert d.metric("processes").new == many.totals.processes
    assert not pmet.diff(one, one, fail_if="cpu>+1000%").breaches


def test_the_plugin_records_each_test_and_fails_the_one_over_budget(tmp_path):
    (tmp_path / "test_budgets.py").write_text(
        "import socket, subprocess, sys, pytest\n"
        "SEND = '''\n"
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(50): s.sendto(b'x' * 2000, ('127.0.0.1', int(sys.argv[1])))\n"
        "'''\n"
        "@pytest.mark.pmet_budget(net_tx='1KiB')\n"
        "def test_chatty():\n"
        "    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 0))\n"
        "    subprocess.run([sys.executable, '-c', SEND, str(r.getsockname()[1])], check=True)\n"
        "@pytest.mark.pmet_budget(processes=1)\n"
        "def test_spawns_three():\n"
        "    for _ in range(3): subprocess.run(['true'], check=True)\n"
        "@pytest.mark.pmet_budget(cpu='60s', rss='4GiB', net_tx='1MiB', processes=5, failed=0)\n"
        "def test_within_budget():\n"
        "    subprocess.run(['true'], check=True)\n"
    )
    r = run_pytest(["--pmet", "--pmet-report", "figures.json", "test_budgets.py"], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 failed, 1 passed" in r.stdout, r.stdout
    assert "pmet budget exceeded: net_tx 97.7 KiB (100000 bytes) > budget 1.0 KiB (1024 bytes)" in r.stdout
    assert "pmet budget exceeded: processes 3 > budget 1" in r.stdout
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["backend"] == "ebpf"
    tests = {t["nodeid"].split("::")[1]: t for t in figures["tests"]}
    assert tests["test_chatty"]["net_tx_bytes"] == 100000
    assert tests["test_chatty"]["processes"] == 1
    assert tests["test_spawns_three"]["processes"] == 3
    assert tests["test_within_budget"]["failed_processes"] == 0
    assert tests["test_within_budget"]["net_tx_bytes"] == 0
    assert all(t["cpu_s"] >= 0 and t["peak_rss_bytes"] > 0 for t in tests.values())
