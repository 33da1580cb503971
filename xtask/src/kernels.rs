//! `cargo xtask test-kernels`: pmet's exact-truth integration tests on the
//! kernels users run. Each kernel of the matrix (Debian's own packages,
//! pinned by version, fetched by name and unpacked, never installed) is
//! booted in qemu (TCG: KVM guests abort or hang on these machines) with an
//! initramfs holding busybox, pmet, the `workload` helper and the `trace`
//! test binary; its `/init` runs each test and prints a verdict line on the
//! serial console. This machine's own kernel runs the same tests directly.
//! A kernel that does not boot, or a test that does not pass, fails the
//! task: nothing is skipped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, output, privileged, root, run, setup_apt, target_dir};

/// One kernel of the matrix: the Debian package and its pinned version, and
/// the suite that has it.
pub struct Kernel {
    /// What the table calls it.
    pub label: &'static str,
    /// The package (`linux-image-…-cloud-amd64`: no modules needed).
    pub package: &'static str,
    /// Its version, pinned.
    pub version: &'static str,
    /// The apt suite it comes from.
    pub suite: &'static str,
}

/// The matrix: Debian 11, 12 and 13's kernels.
pub const MATRIX: [Kernel; 3] = [
    Kernel {
        label: "5.10 (Debian 11)",
        package: "linux-image-5.10.0-32-cloud-amd64",
        version: "5.10.223-1",
        suite: "bullseye",
    },
    Kernel {
        label: "6.1 (Debian 12)",
        package: "linux-image-6.1.0-57-cloud-amd64",
        version: "6.1.192-3",
        suite: "bookworm-security",
    },
    Kernel {
        label: "6.12 (Debian 13)",
        package: "linux-image-6.12.117+deb13-cloud-amd64",
        version: "6.12.117-1",
        suite: "trixie",
    },
];

/// The tests run on every kernel: those of `tests/tests/trace.rs` that
/// assert exact truths a kernel gives (processes, exit statuses, CPU
/// against wait4, bytes per process and per connection, TCP and UDP, v4 and
/// v6) and need nothing but busybox, pmet and `workload`.
pub const TESTS: [&str; 14] = [
    "check_says_what_this_kernel_loads_and_the_report_agrees",
    "exit_status_passes_through",
    "every_short_lived_child_and_grandchild_is_reported_with_its_exit_code",
    "a_killed_child_is_reported_with_its_signal",
    "a_shell_loop_of_300_children_is_counted_whole",
    "cpu_of_children_matches_what_wait4_reports",
    "tcp_over_ipv4_is_counted_to_the_byte_per_process",
    "tcp_over_ipv6_is_counted_to_the_byte_per_process",
    "a_large_tcp_exchange_is_counted_to_the_byte",
    "sendfile_to_a_tcp_socket_is_counted_to_the_byte",
    "udp_over_ipv4_is_counted_to_the_byte",
    "udp_over_ipv6_is_counted_to_the_byte",
    "a_refused_connect_is_a_connection_that_failed",
    "every_short_process_has_the_working_directory_it_execd_in",
];

/// Debian packages the matrix needs here.
const PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "cpio"];

/// The apt sources and pins that let `apt-get download` fetch the other
/// releases' kernels without anything else on this machine being upgraded
/// from them.
const SOURCES: &str = "/etc/apt/sources.list.d/pmet-kernels.sources";
const PINS: &str = "/etc/apt/preferences.d/pmet-kernels";

/// What the kernel prints when a CPU is stuck in it.
const LOCKUP: &str = "soft lockup";

/// How long one kernel's whole run may take under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// Options of the task.
#[derive(Default)]
pub struct Opts {
    /// Only these kernels (labels' leading versions, e.g. `6.1`).
    pub only: Vec<String>,
    /// Only these tests.
    pub tests: Vec<String>,
    /// Kernels (leading versions) whose failures are shown, not fatal.
    pub known_failing: Vec<String>,
    /// Also time, in each VM and here, the exec storm and a TCP transfer
    /// untraced and traced, interleaved (`BENCH_ROUNDS` rounds).
    pub bench: bool,
}

/// Rounds of each benchmark, traced and untraced in turn.
const BENCH_ROUNDS: usize = 5;

/// The benchmarks: a name and the command timed (by `workload time`, which
/// writes its wall seconds to `$WORKLOAD_TIME_FILE`).
const BENCHES: [(&str, &str); 2] = [
    (
        "exec storm (1,000 /bin/true)",
        "sh -c 'for i in $(seq 1000); do /bin/true; done'",
    ),
    ("TCP, 50 MB over loopback", "$W tcp 4 50000000 0"),
];

/// Runs the matrix and prints the table; fails when any cell failed.
pub fn test_kernels(opts: &Opts) -> Result<()> {
    crate::setup()?;
    setup_apt(&PACKAGES)?;
    let kernels: Vec<&Kernel> = MATRIX
        .iter()
        .filter(|k| {
            opts.only.is_empty()
                || opts
                    .only
                    .iter()
                    .any(|o| k.label.split(' ').next() == Some(o.as_str()))
        })
        .collect();
    let tests: Vec<&str> = TESTS
        .iter()
        .copied()
        .filter(|t| opts.tests.is_empty() || opts.tests.iter().any(|o| o == t))
        .collect();
    if tests.is_empty() {
        bail!("no test of the matrix is named {:?}", opts.tests);
    }
    let dir = target_dir().join("kernels");
    fs::create_dir_all(&dir)?;
    let images: Vec<PathBuf> = kernels
        .iter()
        .map(|k| fetch(k, &dir))
        .collect::<Result<_>>()?;
    let built = build()?;
    let initrd = dir.join("initramfs.cpio.gz");
    initramfs(&built, &tests, opts.bench, &initrd)?;
    let mut table: Vec<(String, Vec<Cell>)> = Vec::new();
    let mut benches: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let host = host_run(&built, &tests)?;
    let here = format!("this machine ({})", uname_r());
    if opts.bench {
        benches.push((here.clone(), bench_of(&host_bench(&built)?)));
    }
    table.push((here, host));
    for (k, image) in kernels.iter().zip(&images) {
        eprintln!("xtask: booting {} under qemu", k.label);
        let log = dir.join(format!("{}.log", k.package));
        let booted = boot(image, &initrd, &tests, &log);
        let cells = match booted {
            Ok((c, text)) => {
                if opts.bench {
                    benches.push((k.label.to_owned(), bench_of(&text)));
                }
                c
            }
            Err(e) => {
                eprintln!("xtask: {e:#}");
                tests
                    .iter()
                    .map(|_| Cell {
                        passed: false,
                        secs: 0.0,
                    })
                    .collect()
            }
        };
        table.push((k.label.to_owned(), cells));
    }
    print_table(&tests, &table);
    if opts.bench {
        print_bench(&benches);
    }
    let known = |label: &str| {
        opts.known_failing
            .iter()
            .any(|k| label.split(' ').next() == Some(k.as_str()))
    };
    let failed: usize = table
        .iter()
        .filter(|(label, _)| !known(label))
        .map(|(_, c)| c.iter().filter(|c| !c.passed).count())
        .sum();
    for (label, cells) in table.iter().filter(|(l, _)| known(l)) {
        let n = cells.iter().filter(|c| !c.passed).count();
        eprintln!("xtask: {label}: {n} failed, known failing (not counted)");
    }
    if failed > 0 {
        bail!(
            "{failed} kernel × test cells failed; each VM's console is in {}",
            dir.display()
        );
    }
    Ok(())
}

/// One test's outcome on one kernel.
#[derive(Clone, Debug)]
struct Cell {
    passed: bool,
    secs: f64,
}

/// What goes into the initramfs.
struct Built {
    pmet: PathBuf,
    workload: PathBuf,
    trace_tests: PathBuf,
}

fn uname_r() -> String {
    output(Command::new("uname").arg("-r"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Adds the matrix's suites to apt (pinned low) once, and fetches and
/// unpacks `k`'s kernel image; returns the image's path.
fn fetch(k: &Kernel, dir: &Path) -> Result<PathBuf> {
    let unpacked = dir.join(k.package);
    let image = unpacked.join("vmlinuz");
    if image.exists() {
        return Ok(image);
    }
    if !Path::new(SOURCES).exists() {
        fs::write(
            SOURCES,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bullseye trixie\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian-security\n\
             Suites: bullseye-security trixie-security\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .with_context(|| format!("writing {SOURCES} (run as root)"))?;
        let pins: String = ["bullseye", "bullseye-security", "trixie", "trixie-security"]
            .iter()
            .map(|s| format!("Package: *\nPin: release n={s}\nPin-Priority: 100\n\n"))
            .collect();
        fs::write(PINS, pins).with_context(|| format!("writing {PINS}"))?;
        run(privileged("apt-get").arg("update"))?;
    }
    fs::create_dir_all(&unpacked)?;
    let spec = format!("{}={}", k.package, k.version);
    let got = Command::new("apt-get")
        .args(["download", &spec])
        .current_dir(&unpacked)
        .status()
        .context("running apt-get download")?;
    if !got.success() {
        // The suite's lists may be older than the pin: refresh them once.
        run(privileged("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["download", &spec])
            .current_dir(&unpacked))
        .with_context(|| format!("fetching {spec} from {}", k.suite))?;
    }
    let deb = fs::read_dir(&unpacked)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb for {spec}"))?;
    // Only the image is taken out of the package: nothing is installed.
    let sh = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*'",
        deb.display(),
        unpacked.display()
    );
    run(Command::new("sh").args(["-c", &sh]))?;
    let boot = unpacked.join("boot");
    let found = fs::read_dir(&boot)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {spec}"))?;
    fs::rename(&found, &image)?;
    let _ = fs::remove_file(&deb);
    let _ = fs::remove_dir_all(&boot);
    Ok(image)
}

/// Builds the static pmet (`cargo xtask dist`: the binary users install,
/// so the matrix proves that it starts there), `workload` and the `trace`
/// test binary.
fn build() -> Result<Built> {
    let pmet = crate::dist()?;
    let out = cargo()
        .args([
            "test",
            "-p",
            "pmet-tests",
            "--test",
            "trace",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the trace tests")?;
    if !out.status.success() {
        bail!("building the trace tests failed");
    }
    let mut trace_tests = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["target"]["name"] == "trace"
            && let Some(exe) = v["executable"].as_str()
        {
            trace_tests = Some(PathBuf::from(exe));
        }
    }
    let target = target_dir();
    Ok(Built {
        pmet,
        // The test binary knows `workload` by the path it was built at.
        workload: target.join("debug").join("workload"),
        trace_tests: trace_tests.context("cargo named no trace test binary")?,
    })
}

/// The `/init` of the VM: mounts what the tests need, runs each one, says
/// how each went on the console, and powers off.
fn init_script(built: &Built, tests: &[&str], bench: bool) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null\n\
         ip link set lo up\n\
         export CI=1 PATH=/bin:/sbin:/usr/bin TMPDIR=/tmp RUST_BACKTRACE=1\n",
    );
    s.push_str(&format!(
        "export PMET_BIN={}\necho \"PMET-KERNEL $(uname -r)\"\n$PMET_BIN check\n",
        built.pmet.display()
    ));
    for t in tests {
        s.push_str(&format!(
            "s=$(cut -d' ' -f1 /proc/uptime)\n\
             if {bin} --exact {t} --test-threads=1 --nocapture > /tmp/out 2>&1; then r=ok; else r=FAILED; tail -40 /tmp/out; fi\n\
             echo \"PMET-CASE {t} $r $s $(cut -d' ' -f1 /proc/uptime)\"\n",
            bin = built.trace_tests.display()
        ));
    }
    if bench {
        s.push_str(&bench_script(built));
    }
    s.push_str("echo PMET-END\npoweroff -f\n");
    s
}

/// Shell that times each benchmark untraced and traced, in turn, and says
/// each time as `PMET-BENCH INDEX untraced|traced SECONDS`.
fn bench_script(built: &Built) -> String {
    let mut s = format!(
        "W={w}\nexport WORKLOAD_TIME_FILE=/tmp/bench-time\n",
        w = built.workload.display()
    );
    for (i, (_, cmd)) in BENCHES.iter().enumerate() {
        s.push_str(&format!(
            "for r in $(seq {BENCH_ROUNDS}); do\n\
             $W time {cmd} >/dev/null 2>&1; echo \"PMET-BENCH {i} untraced $(cat /tmp/bench-time)\"\n\
             $PMET_BIN trace -q -o /tmp/bench.json -- $W time {cmd} >/dev/null 2>&1; echo \"PMET-BENCH {i} traced $(cat /tmp/bench-time)\"\n\
             done\n"
        ));
    }
    s
}

/// The median of `xs` (0 for none).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Per benchmark, the untraced and traced medians from console lines.
fn bench_of(text: &str) -> Vec<(f64, f64)> {
    (0..BENCHES.len())
        .map(|i| {
            let times = |mode: &str| -> Vec<f64> {
                let prefix = format!("PMET-BENCH {i} {mode} ");
                text.lines()
                    .filter_map(|l| {
                        let at = l.find(&prefix)?;
                        l[at + prefix.len()..].trim().parse().ok()
                    })
                    .collect()
            };
            (median(times("untraced")), median(times("traced")))
        })
        .collect()
}

/// The same benchmarks on this machine, as the VMs run them.
fn host_bench(built: &Built) -> Result<String> {
    let script = bench_script(built);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("PMET_BIN", &built.pmet)
        .output()
        .context("running the benchmarks here")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn print_bench(rows: &[(String, Vec<(f64, f64)>)]) {
    println!(
        "\nmedian wall seconds of {BENCH_ROUNDS} interleaved rounds, untraced → traced (ratio); TCG VMs compare only within themselves"
    );
    for (i, (name, _)) in BENCHES.iter().enumerate() {
        println!("{name}");
        for (kernel, b) in rows {
            let (u, t) = b[i];
            let ratio = if u > 0.0 { t / u } else { 0.0 };
            println!("  {kernel:>28}: {u:8.3} → {t:8.3}  ({ratio:.3})");
        }
    }
}

/// Packs busybox, the binaries (at the paths they were built at) and their
/// shared libraries, and `/init`.
fn initramfs(built: &Built, tests: &[&str], bench: bool, out: &Path) -> Result<()> {
    let dir = out.with_extension("d");
    let _ = fs::remove_dir_all(&dir);
    for d in ["bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox-static is not installed")?;
    let applets = output(Command::new("/bin/busybox").arg("--list")).unwrap_or_default();
    for a in applets.lines().filter(|a| *a != "busybox") {
        // Links to busybox, never busybox to itself (that loops).
        let _ = std::os::unix::fs::symlink("/bin/busybox", dir.join("bin").join(a));
    }
    for bin in [&built.pmet, &built.workload, &built.trace_tests] {
        copy_with_libs(bin, &dir)?;
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    fs::write(
        dir.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;
    let init = dir.join("init");
    fs::write(&init, init_script(built, tests, bench))?;
    run(Command::new("chmod").arg("+x").arg(&init))?;
    let sh = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        dir.display(),
        out.display()
    );
    run(Command::new("sh").args(["-c", &sh]))?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Copies `bin` and what `ldd` says it loads to the same paths under `dir`.
fn copy_with_libs(bin: &Path, dir: &Path) -> Result<()> {
    let mut files = vec![bin.to_owned()];
    let ldd = output(Command::new("ldd").arg(bin)).unwrap_or_default();
    for word in ldd.split_whitespace() {
        if word.starts_with('/') {
            files.push(PathBuf::from(word));
        }
    }
    for f in files {
        let to = dir.join(f.strip_prefix("/").unwrap_or(&f));
        fs::create_dir_all(to.parent().context("a file has a parent")?)?;
        fs::copy(&f, &to).with_context(|| format!("copying {}", f.display()))?;
    }
    Ok(())
}

/// Boots `image` with the initramfs and reads each test's verdict from the
/// console (saved to `log`).
fn boot(image: &Path, initrd: &Path, tests: &[&str], log: &Path) -> Result<(Vec<Cell>, String)> {
    let started = Instant::now();
    let console = fs::File::create(log)?;
    let mut child = Command::new("qemu-system-x86_64")
        // One host thread for all vCPUs. Multi-threaded TCG (the default)
        // let a vCPU go on running a stale translation of kernel text that
        // another had just patched (a static key flipped by attaching or
        // detaching programs, text_poke_bp): it took the int3 at the
        // patched site over and over, for good, as a soft lockup at
        // copy_process's or __schedule's jump label, or a silent hang in
        // asm_exc_int3 (5.10; 3 of 4 boots of 120 UDP/sendfile runs). With
        // thread=single: 0 of 3 (BENCHMARKS.md).
        .args(["-accel", "tcg,thread=single"])
        .args([
            "-cpu",
            "max",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        // loglevel=5 rather than quiet: a soft lockup's registers and stack
        // are printed at the default level, which quiet hides.
        .args([
            "-append",
            "console=ttyS0 panic=-1 loglevel=5 softlockup_all_cpu_backtrace=1",
        ])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        // A CPU stuck in the kernel never recovers: stop at once, and the
        // kernel's remaining cells fail with the console kept.
        if fs::read(log).is_ok_and(|t| String::from_utf8_lossy(&t).contains(LOCKUP)) {
            eprintln!(
                "xtask: a CPU soft-locked inside the VM: its stacks are in {}",
                log.display()
            );
            // Long enough for the stacks of every CPU to reach the console.
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = String::from_utf8_lossy(&fs::read(log)?).into_owned();
    if !text.contains("PMET-KERNEL") {
        bail!(
            "{} did not boot to its tests in {:?}; its console is in {}",
            image.display(),
            started.elapsed(),
            log.display()
        );
    }
    Ok((tests.iter().map(|t| cell_of(&text, t)).collect(), text))
}

/// The verdict of test `t` in a console's text (a test with no line failed:
/// the VM died or timed out before it ended).
fn cell_of(text: &str, t: &str) -> Cell {
    let prefix = format!("PMET-CASE {t} ");
    let Some(line) = text.lines().find_map(|l| {
        l.find(&prefix)
            .map(|at| l[at + prefix.len()..].trim().to_owned())
    }) else {
        return Cell {
            passed: false,
            secs: 0.0,
        };
    };
    let w: Vec<&str> = line.split_whitespace().collect();
    let secs = match (w.get(1), w.get(2)) {
        (Some(a), Some(b)) => b.parse::<f64>().unwrap_or(0.0) - a.parse::<f64>().unwrap_or(0.0),
        _ => 0.0,
    };
    Cell {
        passed: w.first() == Some(&"ok"),
        secs,
    }
}

/// The same tests on this machine's kernel, as it runs today.
fn host_run(built: &Built, tests: &[&str]) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for t in tests {
        let started = Instant::now();
        let st = Command::new(&built.trace_tests)
            .args(["--exact", t, "--test-threads=1"])
            .env("PMET_BIN", &built.pmet)
            .env("CI", "1")
            .current_dir(root())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", built.trace_tests.display()))?;
        cells.push(Cell {
            passed: st.success(),
            secs: started.elapsed().as_secs_f64(),
        });
    }
    Ok(cells)
}

fn print_table(tests: &[&str], table: &[(String, Vec<Cell>)]) {
    let width = tests.iter().map(|t| t.len()).max().unwrap_or(4);
    let mut head = format!("{:width$}", "test");
    for (k, _) in table {
        head.push_str(&format!(" | {k:>22}"));
    }
    println!("\n{head}");
    println!("{}", "-".repeat(head.len()));
    for (i, t) in tests.iter().enumerate() {
        let mut line = format!("{t:width$}");
        for (_, cells) in table {
            let c = &cells[i];
            let v = format!(
                "{} {:6.1} s",
                if c.passed { "ok    " } else { "FAILED" },
                c.secs
            );
            line.push_str(&format!(" | {v:>22}"));
        }
        println!("{line}");
    }
    let passed: usize = table
        .iter()
        .map(|(_, c)| c.iter().filter(|c| c.passed).count())
        .sum();
    let all: usize = table.iter().map(|(_, c)| c.len()).sum();
    println!("\nkernel matrix: {passed} passed, {} failed", all - passed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_give_medians_per_benchmark() {
        let text = "PMET-BENCH 0 untraced 1.0\nPMET-BENCH 0 traced 1.2\n\
                    PMET-BENCH 0 untraced 3.0\nPMET-BENCH 0 traced 1.1\n\
                    PMET-BENCH 0 untraced 2.0\nPMET-BENCH 0 traced 1.0\nPMET-BENCH 1 traced x\n";
        let b = bench_of(text);
        assert_eq!(b[0], (2.0, 1.1));
        assert_eq!(b[1], (0.0, 0.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_verdict_is_read_from_the_console_and_a_missing_one_fails() {
        let text = "noise\r\nPMET-CASE a ok 10.5 12.0\r\nPMET-CASE b FAILED 12.0 13.0\n";
        let a = cell_of(text, "a");
        assert!(a.passed && (a.secs - 1.5).abs() < 1e-9);
        assert!(!cell_of(text, "b").passed);
        assert!(!cell_of(text, "c").passed);
        // A name that is a prefix of another is not taken for it.
        assert!(!cell_of("PMET-CASE ab ok 1 2\n", "a").passed);
    }
}
