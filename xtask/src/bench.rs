//! `cargo xtask bench`: pmet's cost and accuracy, side by side with the tools
//! people use today, in one run on this machine. Prints a Markdown report and
//! writes it to `target/bench/report.md`.
//!
//! Every workload's truth is known exactly (bytes sent, processes started,
//! CPU reported by wait4). Traced and untraced runs are interleaved round by
//! round (the order rotates) and medians are compared, because this machine
//! is shared and noisy. Nothing here asserts: a benchmark reports.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// What the comparison tools are called in the tables.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sched:sched_process_exec { @execs = count(); }
tracepoint:sock:sock_send_length /args->ret > 0/ { @tx[pid] = sum(args->ret); }
tracepoint:sock:sock_recv_length /args->ret > 0 && !(args->flags & 2)/ { @rx[pid] = sum(args->ret); }
"#;

/// bpftrace doing on the exec path what pmet's process hooks do, as a
/// bpftrace user would write it: a line out per fork (parent, child, time),
/// per exec (pid, name, path) and per exit (pid, exit code, CPU time, time),
/// on every process of the host. pmet also reads each exec's argv and
/// environment, its ids and namespace, and each thread's final figures at
/// its last switch; this script reads none of those, so it is a lower bound
/// of what a script with pmet's hooks costs. `BPFTRACE_SCRIPT`'s one exec
/// counter is the floor of any exec tracer.
const BPFTRACE_PROCESS_SCRIPT: &str = r#"
tracepoint:sched:sched_process_fork { printf("F %d %d %llu\n", args->parent_pid, args->child_pid, nsecs); }
tracepoint:sched:sched_process_exec { printf("E %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:sched:sched_process_exit { printf("X %d %d %llu %llu\n", pid, curtask->exit_code, curtask->se.sum_exec_runtime, nsecs); }
"#;

/// Options of the bench.
pub struct Opts {
    /// Rounds per comparison (medians over these).
    pub rounds: usize,
    /// Smaller workloads, for a quick look.
    pub quick: bool,
    /// Sections to run (all when empty).
    pub only: Vec<String>,
    /// Shell loops the exec storm runs at once (each its own 3,000 execs).
    pub loops: usize,
}

struct Bench {
    pmet: PathBuf,
    workload: PathBuf,
    dir: PathBuf,
    quick: bool,
    /// Whether bpftrace is on this machine (a machine lent without a
    /// package registry may lack it; its rows then say so).
    bpftrace: bool,
}

/// One timed run.
#[derive(Clone, Debug, Default)]
struct Timed {
    wall: f64,
    stdout: String,
    /// CPU seconds of the program's main thread over its whole life, its
    /// exit included (read from its zombie, before it is reaped).
    main_cpu: Option<f64>,
}

/// Waits for `pid` to exit without reaping it, and reads its main thread's
/// CPU time from its schedstat (exact ns, unlike `stat`'s ticks):
/// for pmet, everything its own thread did, the report's writing included,
/// which `collector.self_cpu_s` (read before the report) leaves out.
fn main_cpu_at_exit(pid: u32) -> Option<f64> {
    // SAFETY: an all-zero siginfo_t is valid; waitid only writes it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain call on our own child; WNOWAIT leaves it to `wait`.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return None;
    }
    // A zombie's task list is its main thread alone.
    cpu_ns(pid).ok().map(|ns| ns as f64 / 1e9)
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `cmd` and times it. A workload that fails has no truth to compare
/// against: that stops the bench.
fn timed(cmd: &mut Command) -> Result<Timed> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        out.read_to_string(&mut stdout)?;
    }
    let main_cpu = main_cpu_at_exit(child.id());
    let status = child.wait()?;
    let wall = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(Timed {
        wall,
        stdout,
        main_cpu,
    })
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn pct(x: f64) -> String {
    format!("{:+.2} %", x * 100.0)
}

/// A background observer (bpftrace, nethogs, pidstat) around one run.
struct Observer {
    child: Child,
    out: PathBuf,
}

impl Observer {
    fn stop(mut self) -> Result<String> {
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(fs::read_to_string(&self.out).unwrap_or_default())
    }
}

impl Bench {
    fn workload(&self) -> Command {
        Command::new(&self.workload)
    }

    /// Arguments that run the command `inner` under the workload's timing shim.
    fn shim(&self, inner: &[&str]) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![self.workload.clone().into(), "time".into()];
        v.extend(inner.iter().map(|s| s.into()));
        v
    }

    /// Like [`Bench::shim`], for one of the workload's own roles.
    fn shim_w(&self, role: &[&str]) -> Vec<std::ffi::OsString> {
        let mut v = self.shim(&[]);
        v.push(self.workload.clone().into());
        v.extend(role.iter().map(|s| s.into()));
        v
    }

    /// Runs `cmd` (which includes the shim) and returns the shim's measure of
    /// the workload, in seconds, and the run's stdout.
    fn inner(&self, cmd: &mut Command) -> Result<(f64, String)> {
        self.inner_timed(cmd).map(|(secs, t)| (secs, t.stdout))
    }

    /// [`Bench::inner`], with the whole run's [`Timed`].
    fn inner_timed(&self, cmd: &mut Command) -> Result<(f64, Timed)> {
        let f = self.dir.join("time.txt");
        let _ = fs::remove_file(&f);
        let t = timed(cmd.env("WORKLOAD_TIME_FILE", &f))?;
        let secs: f64 = fs::read_to_string(&f)
            .context("the timing shim wrote nothing")?
            .trim()
            .parse()?;
        Ok((secs, t))
    }

    fn pmet(&self, report: &Path) -> Command {
        let mut c = Command::new(&self.pmet);
        c.args(["trace", "-q", "-o"]).arg(report).arg("--");
        c
    }

    fn report(path: &Path) -> Result<Value> {
        serde_json::from_slice(&fs::read(path)?)
            .with_context(|| format!("reading {}", path.display()))
    }

    /// Starts a background tool and waits until it is ready (`ready` appears
    /// in its output, or a fixed delay when `ready` is empty).
    fn observe(&self, name: &str, cmd: &mut Command, ready: &str) -> Result<Observer> {
        let out = self.dir.join(format!("{name}.out"));
        let f = fs::File::create(&out)?;
        let child = cmd
            .stdout(f.try_clone()?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        if ready.is_empty() {
            std::thread::sleep(Duration::from_millis(1500));
        } else {
            while !fs::read_to_string(&out).unwrap_or_default().contains(ready) {
                if Instant::now() > deadline {
                    bail!("{name} did not start");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Observer { child, out })
    }

    /// pmet following every process on the host until stopped.
    fn pmet_all(&self, report: &Path) -> Result<Observer> {
        self.observe(
            "pmet-all",
            Command::new(&self.pmet)
                .args(["trace", "--all", "-q", "-o"])
                .arg(report),
            "",
        )
    }

    fn bpftrace(&self) -> Result<Observer> {
        self.bpftrace_with("bpftrace", BPFTRACE_SCRIPT)
    }

    /// bpftrace running `script`, known as `name`.
    fn bpftrace_with(&self, name: &str, script: &str) -> Result<Observer> {
        let path = self.dir.join(format!("{name}.bt"));
        fs::write(&path, script)?;
        self.observe(name, Command::new("bpftrace").arg(&path), "Attaching")
    }

    fn nethogs(&self) -> Result<Observer> {
        self.observe(
            "nethogs",
            Command::new("nethogs").args(["-t", "-a", "-v", "2", "-d", "1"]),
            "Refreshing",
        )
    }
}

/// `@map[pid]: value` lines of bpftrace's exit dump.
fn bpftrace_map(out: &str, map: &str) -> HashMap<u32, u64> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("@{map}["))?;
            let (pid, v) = rest.split_once("]: ")?;
            Some((pid.parse().ok()?, v.trim().parse().ok()?))
        })
        .collect()
}

/// The last nethogs refresh: pid -> (sent, received).
fn nethogs_last(out: &str) -> HashMap<u32, (f64, f64)> {
    let block = out.rsplit("Refreshing:").next().unwrap_or("");
    block
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let who = f.next()?;
            let sent: f64 = f.next()?.trim().parse().ok()?;
            let recv: f64 = f.next()?.trim().parse().ok()?;
            let mut parts = who.rsplit('/');
            let _uid = parts.next()?;
            let pid: u32 = parts.next()?.parse().ok()?;
            Some((pid, (sent, recv)))
        })
        .collect()
}

fn roles(path: &Path) -> HashMap<String, u32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (r, p) = l.split_once(' ')?;
            Some((r.to_owned(), p.parse().ok()?))
        })
        .collect()
}

fn role_net(report: &Value, role: &str, proto: &str, dir: &str) -> u64 {
    report["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["argv"][1] == role)
        .map(|p| {
            p["net"][proto][format!("{dir}_bytes")]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

struct Md(String);
impl Md {
    fn h(&mut self, t: &str) {
        let _ = writeln!(self.0, "\n### {t}\n");
    }
    fn p(&mut self, t: &str) {
        let _ = writeln!(self.0, "{t}\n");
    }
    fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.0, "| {} |", head.join(" | "));
        let _ = writeln!(
            self.0,
            "|{}|",
            head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for r in rows {
            let _ = writeln!(self.0, "| {} |", r.join(" | "));
        }
        self.0.push('\n');
    }
}

/// Runs every comparison and returns the Markdown report.
pub fn run(root: &Path, pmet: PathBuf, workload: PathBuf, opts: &Opts) -> Result<String> {
    let dir = root.join("target").join("bench");
    fs::create_dir_all(&dir)?;
    let b = Bench {
        pmet,
        workload,
        dir,
        quick: opts.quick,
        bpftrace: Command::new("bpftrace")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    };
    let rounds = opts.rounds.max(1);
    let mut md = Md(String::new());
    let host = format!(
        "{} ({} CPUs), kernel {}",
        fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_else(|| "unknown CPU".into()),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    md.p(&format!(
        "Measured by `cargo xtask bench` ({rounds} rounds, interleaved, medians; spread = min–max of the per-round ratios) on {host}, {}.",
        fs::read_to_string("/proc/uptime").map(|_| "this machine").unwrap_or("this machine")
    ));

    let known = [
        "exec", "network", "compute", "startup", "scale", "capacity", "agent",
    ];
    if let Some(bad) = opts.only.iter().find(|o| !known.contains(&o.as_str())) {
        anyhow::bail!(
            "no bench section {bad:?}; the sections are {}",
            known.join(", ")
        );
    }
    let on = |name: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == name);
    if on("exec") {
        exec_storm(&b, rounds, opts.loops.max(1), &mut md)?;
    }
    if on("network") {
        network(&b, rounds, &mut md)?;
    }
    if on("compute") {
        compute(&b, rounds, &mut md)?;
    }
    if on("startup") {
        startup(&b, &mut md)?;
    }
    if on("scale") {
        idle_and_scale(&b, &mut md)?;
    }
    if on("capacity") {
        capacity(&b, &mut md)?;
    }
    // Ten minutes: only when asked for by name.
    if opts.only.iter().any(|o| o == "agent") {
        agent(&b, &mut md)?;
    }
    Ok(md.0)
}

fn exec_storm(b: &Bench, rounds: usize, loops: usize, md: &mut Md) -> Result<()> {
    let per_loop = if b.quick { 500 } else { 3000 };
    let one = format!("i=0; while [ $i -lt {per_loop} ]; do /bin/true; i=$((i+1)); done");
    // Several loops at once: what a many-core machine's exec path does
    // under a parallel build.
    let script = if loops == 1 {
        one
    } else {
        format!("{} wait", format!("({one}) & ").repeat(loops))
    };
    let n = per_loop * loops;
    // The shell of each loop (a subshell when there are several) is traced too.
    let shells = if loops == 1 { 1 } else { loops + 1 };
    let report = b.dir.join("storm.json");
    let (mut base, mut traced, mut bt) = (vec![], vec![], vec![]);
    let (mut seen, mut lost, mut self_cpu, mut bt_seen) = (vec![], vec![], vec![], vec![]);
    // bpftrace with pmet's process hooks: its runs, and the /bin/true
    // execs, forks and exits it wrote out in each.
    let (mut bt_proc, mut bt_proc_seen) = (vec![], vec![]);
    // pmet's CPU after its start-up (`self_cpu_s` less `startup_cpu_s`,
    // both from one run's report, so start-up's own noise cancels), for
    // the storm and for a command that does nothing.
    let (mut run_cpu, mut empty_run) = (vec![], vec![]);
    let after_startup = |rep: &Value| {
        let c = &rep["collector"];
        c["self_cpu_s"].as_f64().unwrap_or(0.0) - c["startup_cpu_s"].as_f64().unwrap_or(0.0)
    };
    let shim = b.shim(&["sh", "-c", &script]);
    // pmet's CPU around a command that does nothing: its start-up and exit,
    // subtracted to give the cost per traced process.
    let mut empty_cpu = vec![];
    // pmet's main thread over its whole life, report included.
    let (mut empty_main, mut main_cpu) = (vec![], vec![]);
    let mut all = vec![];
    let mut all_seen = vec![];
    for r in 0..rounds {
        let empty = b.dir.join("empty.json");
        let t = timed(b.pmet(&empty).arg("true"))?;
        empty_main.extend(t.main_cpu);
        let rep = Bench::report(&empty)?;
        empty_cpu.push(rep["collector"]["self_cpu_s"].as_f64().unwrap_or(0.0));
        empty_run.push(after_startup(&rep));
        for which in rotate(5, r) {
            match which {
                2 | 4 if !b.bpftrace => {}
                4 => {
                    let o = b.bpftrace_with("bpftrace-process", BPFTRACE_PROCESS_SCRIPT)?;
                    let (secs, _) = b.inner(Command::new(&shim[0]).args(&shim[1..]))?;
                    let out = o.stop()?;
                    bt_proc.push(secs);
                    let lines =
                        |tag: &str| out.lines().filter(|l| l.starts_with(tag)).count() as f64;
                    bt_proc_seen.push((
                        out.lines()
                            .filter(|l| l.starts_with("E ") && l.ends_with(" /bin/true"))
                            .count() as f64,
                        lines("F "),
                        lines("X "),
                    ));
                }
                0 => base.push(b.inner(Command::new(&shim[0]).args(&shim[1..]))?.0),
                3 => {
                    let all_report = b.dir.join("storm-all.json");
                    let o = b.pmet_all(&all_report)?;
                    all.push(b.inner(Command::new(&shim[0]).args(&shim[1..]))?.0);
                    o.stop()?;
                    let rep = Bench::report(&all_report)?;
                    all_seen.push(
                        rep["processes"]
                            .as_array()
                            .map_or(0, |ps| ps.iter().filter(|p| p["comm"] == "true").count())
                            as f64,
                    );
                }
                1 => {
                    let (secs, t) = b.inner_timed(b.pmet(&report).args(&shim))?;
                    main_cpu.extend(t.main_cpu);
                    let rep = Bench::report(&report)?;
                    traced.push(secs);
                    seen.push(rep["totals"]["processes"].as_f64().unwrap_or(0.0) - 1.0);
                    lost.push(rep["collector"]["lost_events"].as_f64().unwrap_or(0.0));
                    self_cpu.push(rep["collector"]["self_cpu_s"].as_f64().unwrap_or(0.0));
                    run_cpu.push(after_startup(&rep));
                }
                _ => {
                    let o = b.bpftrace()?;
                    let (secs, _) = b.inner(Command::new(&shim[0]).args(&shim[1..]))?;
                    let out = o.stop()?;
                    bt.push(secs);
                    let execs: f64 = out
                        .lines()
                        .find_map(|l| l.strip_prefix("@execs: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0.0);
                    bt_seen.push(execs);
                }
            }
        }
    }
    let ratio = |v: &[f64]| -> Vec<f64> { v.iter().zip(&base).map(|(t, b)| t / b).collect() };
    md.h(&if loops == 1 {
        format!("1. Exec storm: a shell loop runs /bin/true {n} times")
    } else {
        format!(
            "1. Exec storm: {loops} shell loops at once each run /bin/true {per_loop} times ({n} in all)"
        )
    });
    let rp = ratio(&traced);
    let rb = ratio(&bt);
    let (plo, phi) = spread(&rp);
    let (blo, bhi) = spread(&rb);
    let mut rows = vec![
        vec![
            "**pmet**".into(),
            format!("**{:.3}**", median(&rp)),
            format!("{plo:.3}–{phi:.3}"),
            format!("{:.0} / {}", median(&seen), n + shells),
            format!("{:.0}", median(&lost)),
            format!(
                "{:.0} ms in all: {:.1} % of a core per traced second; **{:.1} µs per process** after start-up (each run's `self_cpu_s` less its `startup_cpu_s`, less the same for `true`: {:.1} ms), goal ≤ 8 µs; start-up took {:.0} ms of CPU; {:.1} µs with the report's writing (pmet's main thread over its whole life, less the same for `true`)",
                median(&self_cpu) * 1e3,
                median(
                    &self_cpu
                        .iter()
                        .zip(&traced)
                        .map(|(c, t)| c / t * 100.0)
                        .collect::<Vec<_>>()
                ),
                (median(&run_cpu) - median(&empty_run)).max(0.0) * 1e6 / (n + shells) as f64,
                median(&empty_run) * 1e3,
                (median(&empty_cpu) - median(&empty_run)) * 1e3,
                (median(&main_cpu) - median(&empty_main)).max(0.0) * 1e6 / (n + shells) as f64
            ),
        ],
        vec![
            "pmet --all (every process on the host, not only the tree)".into(),
            format!("{:.3}", median(&ratio(&all))),
            {
                let (lo, hi) = spread(&ratio(&all));
                format!("{lo:.3}–{hi:.3}")
            },
            format!("{:.0} / {n} /bin/true", median(&all_seen)),
            "in its report".into(),
            "see its report".into(),
        ],
        if !b.bpftrace {
            vec![
                "bpftrace".into(),
                "not installed on this machine".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]
        } else {
            vec![
                "bpftrace (exec + socket-bytes script, no tree filter)".into(),
                format!("{:.3}", median(&rb)),
                format!("{blo:.3}–{bhi:.3}"),
                format!(
                    "{:.0} execs / {n} (counts execs, not processes; no tree)",
                    median(&bt_seen)
                ),
                "not reported".into(),
                "not measured".into(),
            ]
        },
    ];
    if b.bpftrace {
        let (lo, hi) = spread(&ratio(&bt_proc));
        let m = |f: fn(&(f64, f64, f64)) -> f64| {
            median(&bt_proc_seen.iter().map(f).collect::<Vec<_>>())
        };
        rows.push(vec![
            "bpftrace with pmet's process hooks (a line per fork, exec and exit, with the exit's CPU time; no argv, environment or final figures; no tree filter)".into(),
            format!("{:.3}", median(&ratio(&bt_proc))),
            format!("{lo:.3}–{hi:.3}"),
            format!(
                "{:.0} /bin/true execs / {n}; {:.0} forks, {:.0} exits written (host-wide)",
                m(|s| s.0),
                m(|s| s.1),
                m(|s| s.2)
            ),
            "not reported".into(),
            "not measured".into(),
        ]);
    }
    md.table(
        &[
            "tool",
            "wall time traced/untraced (goal ≤ 1.02, and ≤ bpftrace's)",
            "spread",
            "processes seen / started",
            "lost events",
            "pmet's own CPU",
        ],
        &rows,
    );
    md.p(&format!("Untraced median: {:.2} s.", median(&base)));
    Ok(())
}

/// Orders for round `r`: a rotation, so no configuration always runs first.
fn rotate(n: usize, r: usize) -> Vec<usize> {
    (0..n).map(|i| (i + r) % n).collect()
}

/// The ways the network section runs a transfer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Tool {
    Untraced,
    Pmet,
    /// pmet host-wide, following every process on the machine, while the
    /// transfer runs untraced by it otherwise.
    PmetAll,
    /// pmet tracing another command (`sleep`) while the transfer runs
    /// outside its tree: what tracing costs the rest of the host.
    PmetBeside,
    Bpftrace,
    Nethogs,
}

impl Tool {
    fn row_name(self) -> &'static str {
        match self {
            Tool::Untraced => "untraced",
            Tool::Pmet => "**pmet**",
            Tool::PmetAll => "pmet --all (every process on the host)",
            Tool::PmetBeside => {
                "pmet tracing another command, the transfer outside its tree (what the host's other processes pay)"
            }
            Tool::Bpftrace => "bpftrace (same tracepoints, per pid)",
            Tool::Nethogs => "nethogs 0.8.7 (pcap)",
        }
    }
}

/// A transfer between two of the workload's roles, under the timing shim.
struct Transfer {
    /// The shim, then the workload's own arguments.
    shim: Vec<std::ffi::OsString>,
    /// The roles that send and that receive, and the protocol counted.
    send: &'static str,
    recv: &'static str,
    proto: &'static str,
    /// Payload bytes each way: what a tool should count for each side.
    bytes: u64,
}

/// What the rounds of a transfer gave: the untraced times, and per tool
/// its times and its counting errors (sender's, receiver's: counted −
/// moved).
#[derive(Default)]
struct Runs {
    base: Vec<f64>,
    secs: HashMap<Tool, Vec<f64>>,
    errors: HashMap<Tool, Vec<(i64, i64)>>,
}

impl Runs {
    /// Runs `t` under each of `tools`, in a rotated order each round.
    fn of(b: &Bench, rounds: usize, t: &Transfer, tools: &[Tool]) -> Result<Self> {
        let mut runs = Runs::default();
        for r in 0..rounds {
            for i in rotate(tools.len(), r) {
                runs.add(b, t, tools[i])?;
            }
        }
        Ok(runs)
    }

    /// Runs `t` once under `tool`.
    fn add(&mut self, b: &Bench, t: &Transfer, tool: Tool) -> Result<()> {
        let report = b.dir.join("net.json");
        let roles_path = b.dir.join("roles.txt");
        let _ = fs::remove_file(&roles_path);
        let workload = || {
            let mut c = b.workload();
            c.args(&t.shim[1..]).env("WORKLOAD_ROLES", &roles_path);
            c
        };
        let of_report = |rep: &Value| {
            (
                role_net(rep, t.send, t.proto, "tx"),
                role_net(rep, t.recv, t.proto, "rx"),
            )
        };
        let (secs, counted) = match tool {
            Tool::Untraced => {
                self.base.push(b.inner(&mut workload())?.0);
                return Ok(());
            }
            Tool::Pmet => {
                let mut c = b.pmet(&report);
                c.args(&t.shim);
                let secs = b.inner(&mut c)?.0;
                (secs, of_report(&Bench::report(&report)?))
            }
            Tool::PmetAll => {
                let all_report = b.dir.join("net-all.json");
                let o = b.pmet_all(&all_report)?;
                let secs = b.inner(&mut workload())?.0;
                o.stop()?;
                (secs, of_report(&Bench::report(&all_report)?))
            }
            Tool::PmetBeside => {
                let beside = b.dir.join("net-beside.json");
                let o = b.observe(
                    "pmet-beside",
                    Command::new(&b.pmet)
                        .args(["trace", "-q", "-o"])
                        .arg(&beside)
                        .args(["--", "sleep", "3600"]),
                    "",
                )?;
                let secs = b.inner(&mut workload())?.0;
                o.stop()?;
                // Nothing of the transfer is in its tree: none of its bytes
                // may be counted there.
                let rep = Bench::report(&beside)?;
                let net = |dir: &str| {
                    rep["totals"]["net"][t.proto][format!("{dir}_bytes")]
                        .as_u64()
                        .unwrap_or(u64::MAX)
                };
                (secs, (net("tx"), net("rx")))
            }
            Tool::Bpftrace => {
                let o = b.bpftrace()?;
                let secs = b.inner(&mut workload())?.0;
                let out = o.stop()?;
                let ro = roles(&roles_path);
                (
                    secs,
                    (
                        *bpftrace_map(&out, "tx").get(&ro[t.send]).unwrap_or(&0),
                        *bpftrace_map(&out, "rx").get(&ro[t.recv]).unwrap_or(&0),
                    ),
                )
            }
            Tool::Nethogs => {
                let o = b.nethogs()?;
                let secs = b.inner(&mut workload())?.0;
                // nethogs refreshes once a second: let it print the end.
                std::thread::sleep(Duration::from_millis(2200));
                let out = o.stop()?;
                let ro = roles(&roles_path);
                let last = nethogs_last(&out);
                (
                    secs,
                    (
                        last.get(&ro[t.send]).map_or(0.0, |v| v.0) as u64,
                        last.get(&ro[t.recv]).map_or(0.0, |v| v.1) as u64,
                    ),
                )
            }
        };
        self.secs.entry(tool).or_default().push(secs);
        // What the tool should have counted: the transfer, or nothing of it.
        let expect = if tool == Tool::PmetBeside { 0 } else { t.bytes };
        let err = |v: u64| v as i64 - expect as i64;
        self.errors
            .entry(tool)
            .or_default()
            .push((err(counted.0), err(counted.1)));
        Ok(())
    }

    /// A row per tool: its throughput against untraced, round by round
    /// (`timed`: whether its times mean anything here), and the worst
    /// counting error of each side.
    fn table(&self, md: &mut Md, t: &Transfer, tools: &[(Tool, bool)]) {
        let mut rows = vec![];
        for &(tool, timed) in tools {
            let (ratio, range) = match self.secs.get(&tool).filter(|_| timed) {
                Some(v) => {
                    let ratios: Vec<f64> = v.iter().zip(&self.base).map(|(s, u)| u / s).collect();
                    let (lo, hi) = spread(&ratios);
                    (
                        format!("{:.3}", median(&ratios)),
                        format!("{lo:.3}–{hi:.3}"),
                    )
                }
                None => ("not timed".into(), String::new()),
            };
            let e = &self.errors[&tool];
            let worst =
                |f: fn(&(i64, i64)) -> i64| e.iter().map(f).max_by_key(|e| e.abs()).unwrap_or(0);
            let fmt_err = |e: i64| match tool {
                Tool::PmetBeside => format!("{e:+} B (its tree's count, which should be 0)"),
                _ => format!("{e:+} B ({})", pct(e as f64 / t.bytes as f64)),
            };
            rows.push(vec![
                tool.row_name().into(),
                if tool == Tool::Pmet {
                    format!("**{ratio}**")
                } else {
                    ratio
                },
                range,
                fmt_err(worst(|e| e.0)),
                fmt_err(worst(|e| e.1)),
            ]);
        }
        md.table(
            &[
                "tool",
                "throughput traced/untraced (goal ≥ 0.99)",
                "spread",
                "sender: counted − sent (worst round)",
                "receiver: counted − received (worst round)",
            ],
            &rows,
        );
    }
}

fn network(b: &Bench, rounds: usize, md: &mut Md) -> Result<()> {
    let bytes: u64 = if b.quick { 512 << 20 } else { 2 << 30 };
    let tcp = Transfer {
        shim: b.shim_w(&["tcp", "4", &bytes.to_string(), "0"]),
        send: "tcp-send",
        recv: "tcp-serve",
        proto: "tcp",
        bytes,
    };
    let tools = [
        Tool::Untraced,
        Tool::Pmet,
        Tool::PmetAll,
        Tool::Bpftrace,
        Tool::Nethogs,
    ];
    let runs = Runs::of(b, rounds, &tcp, &tools)?;
    md.h(&format!(
        "2. Network: {} over loopback TCP (64 KiB writes), sender and receiver in separate processes",
        if b.quick { "512 MiB" } else { "2 GiB" }
    ));
    runs.table(
        md,
        &tcp,
        &tools[1..].iter().map(|&t| (t, true)).collect::<Vec<_>>(),
    );
    md.p(&format!(
        "Untraced median throughput: {:.2} GB/s.",
        bytes as f64 / median(&runs.base) / 1e9
    ));

    // UDP: each datagram waits for a one-byte ack, so the run is bound by
    // per-call latency: four hooked socket calls and two context switches
    // per round trip, the hooks' worst case. Sender and receiver share one
    // CPU (the last): across two, each round trip waits on a cross-CPU
    // wakeup whose cost in a VM varies by tens of µs from run to run and
    // hides the hooks.
    let count = if b.quick { 2_000 } else { 20_000 };
    let size = 1000u64;
    let cpu = (std::thread::available_parallelism().map_or(1, |n| n.get()) - 1).to_string();
    let mut shim = b.shim(&["taskset", "-c", &cpu]);
    shim.push(b.workload.clone().into());
    shim.extend(["udp", "4", &count.to_string(), &size.to_string()].map(Into::into));
    let udp = Transfer {
        shim,
        send: "udp-send",
        recv: "udp-recv",
        proto: "udp",
        bytes: count as u64 * size,
    };
    let mut runs = Runs::of(
        b,
        rounds,
        &udp,
        &[Tool::Untraced, Tool::Pmet, Tool::PmetBeside, Tool::Bpftrace],
    )?;
    // nethogs once: its refresh, not its cost, is what it shows here.
    runs.add(b, &udp, Tool::Nethogs)?;
    md.p(&format!(
        "UDP: {count} datagrams of {size} bytes, each acknowledged by one byte before the next ({} bytes of payload each way; the acks are not counted here), sender and receiver on one CPU (`taskset -c {cpu}`); nethogs run once, for its counts:",
        udp.bytes
    ));
    runs.table(
        md,
        &udp,
        &[
            (Tool::Pmet, true),
            (Tool::PmetBeside, true),
            (Tool::Bpftrace, true),
            (Tool::Nethogs, false),
        ],
    );
    md.p(&format!(
        "Untraced median: {:.3} s for the {count} round trips.",
        median(&runs.base)
    ));
    Ok(())
}

fn compute(b: &Bench, rounds: usize, md: &mut Md) -> Result<()> {
    let (n, ms) = if b.quick { (10, 40) } else { (40, 60) };
    let report = b.dir.join("compute.json");
    let (ns, mss) = (n.to_string(), ms.to_string());
    let args = b.shim_w(&["cpu-children", &ns, &mss]);
    let args = &args[1..];
    let truth_of = |out: &str| -> f64 {
        let v: Vec<f64> = out
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        (v.first().unwrap_or(&0.0) + v.get(1).unwrap_or(&0.0)) / 1e6
    };
    let mut base = vec![];
    let mut wall: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut cpu_err: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut seen: HashMap<&str, Vec<f64>> = HashMap::new();
    for r in 0..rounds {
        for which in rotate(5, r) {
            match which {
                0 => base.push(b.inner(b.workload().args(args))?.0),
                1 => {
                    let (secs, out) = b.inner(b.pmet(&report).arg(&b.workload).args(args))?;
                    let truth = truth_of(&out);
                    let rep = Bench::report(&report)?;
                    let kids: f64 = rep["processes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| p["argv"][1] == "cpu")
                        .map(|p| {
                            p["cpu_user_s"].as_f64().unwrap_or(0.0)
                                + p["cpu_system_s"].as_f64().unwrap_or(0.0)
                        })
                        .sum();
                    wall.entry("pmet").or_default().push(secs);
                    cpu_err.entry("pmet").or_default().push(kids / truth - 1.0);
                    // The shim is one more process than the workload's own.
                    seen.entry("pmet")
                        .or_default()
                        .push(rep["totals"]["processes"].as_f64().unwrap_or(0.0) - 1.0);
                }
                2 => {
                    let log = b.dir.join("psrecord.log");
                    let cmdline = format!(
                        "{} {}",
                        b.workload.display(),
                        args.iter()
                            .map(|a| a.to_string_lossy())
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                    let (secs, _) = b.inner(
                        Command::new("psrecord")
                            .arg(&cmdline)
                            .args(["--include-children", "--interval", "0.2", "--log"])
                            .arg(&log),
                    )?;
                    // psrecord logs CPU % per sample: integrate.
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let mut cpu = 0.0;
                    let mut last_t = 0.0;
                    for l in text.lines().filter(|l| !l.starts_with('#')) {
                        let f: Vec<f64> = l
                            .split_whitespace()
                            .filter_map(|x| x.parse().ok())
                            .collect();
                        if f.len() >= 2 {
                            cpu += f[1] / 100.0 * (f[0] - last_t);
                            last_t = f[0];
                        }
                    }
                    // The children burned their CPU; the root's own is tiny.
                    let truth = (n as f64) * (ms as f64) / 1000.0;
                    wall.entry("psrecord").or_default().push(secs);
                    cpu_err
                        .entry("psrecord")
                        .or_default()
                        .push(cpu / truth - 1.0);
                }
                3 => {
                    let o = b.observe(
                        "pidstat",
                        Command::new("pidstat").args(["-h", "-u", "-C", "workload", "1"]),
                        "",
                    )?;
                    let (secs, wout) = b.inner(b.workload().args(args))?;
                    std::thread::sleep(Duration::from_millis(1100));
                    let out = o.stop()?;
                    let truth = truth_of(&wout);
                    let mut pids = std::collections::HashSet::new();
                    let mut cpu = 0.0;
                    for l in out
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        // Time UID PID %usr %system %guest %wait %CPU CPU Command
                        if f.len() >= 10
                            && f[9] == "workload"
                            && let (Ok(pid), Ok(c)) = (f[2].parse::<u32>(), f[7].parse::<f64>())
                        {
                            pids.insert(pid);
                            cpu += c / 100.0;
                        }
                    }
                    wall.entry("pidstat").or_default().push(secs);
                    cpu_err
                        .entry("pidstat")
                        .or_default()
                        .push(cpu / truth - 1.0);
                    seen.entry("pidstat").or_default().push(pids.len() as f64);
                }
                _ => {
                    let fmt = "%U %S";
                    let (secs, out) = b.inner(
                        Command::new("/usr/bin/time")
                            .args(["-f", fmt, "-o"])
                            .arg(b.dir.join("time.out"))
                            .arg(&b.workload)
                            .args(args),
                    )?;
                    let truth = truth_of(&out);
                    let text = fs::read_to_string(b.dir.join("time.out")).unwrap_or_default();
                    let v: Vec<f64> = text
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    let total = v.iter().sum::<f64>();
                    wall.entry("time").or_default().push(secs);
                    // /usr/bin/time's total includes the root; the truth is the children's.
                    cpu_err.entry("time").or_default().push(total / truth - 1.0);
                }
            }
        }
    }
    md.h(&format!(
        "3. Short-lived compute children: {n} children each burn {ms} ms of CPU"
    ));
    let mut rows = vec![];
    for (tool, name) in [
        ("pmet", "**pmet**"),
        ("psrecord", "psrecord 1.4 --include-children --interval 0.2"),
        ("pidstat", "pidstat -u -C workload 1"),
        ("time", "/usr/bin/time (totals only)"),
    ] {
        let ratios: Vec<f64> = wall[tool].iter().zip(&base).map(|(t, u)| t / u).collect();
        let (lo, hi) = spread(&ratios);
        let errs = &cpu_err[tool];
        let worst = errs
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
            .unwrap_or(f64::NAN);
        rows.push(vec![
            name.into(),
            if tool == "pmet" {
                format!("**{:.3}**", median(&ratios))
            } else {
                format!("{:.3}", median(&ratios))
            },
            format!("{lo:.3}–{hi:.3}"),
            seen.get(tool).map_or("cannot tell".into(), |s| {
                format!("{:.0} / {}", median(s), n + 1)
            }),
            format!("{} (worst {})", pct(median(errs)), pct(worst)),
        ]);
    }
    md.table(
        &[
            "tool",
            "wall time traced/untraced (goal ≤ 1.01)",
            "spread",
            "processes seen / started",
            "CPU seconds vs wait4 truth (goal within 1 %)",
        ],
        &rows,
    );
    md.p("Ground truth: the root's `getrusage(RUSAGE_CHILDREN)` after waiting for every child, which is what `/usr/bin/time` reports for a tree.");
    Ok(())
}

fn startup(b: &Bench, md: &mut Md) -> Result<()> {
    // The command prints CLOCK_BOOTTIME as it starts and exits at once:
    // before it, pmet's start-up; after it, pmet's exit (the settle, the
    // report, the detach); the two together, what a CI job wrapping a
    // short command pays.
    let report = b.dir.join("startup.json");
    let (mut up, mut down, mut total) = (vec![], vec![], vec![]);
    for _ in 0..10 {
        let before = boottime_ns();
        let t = timed(b.pmet(&report).arg(&b.workload).arg("now"))?;
        let after = boottime_ns();
        let at: u64 = t.stdout.trim().parse().context("workload now")?;
        up.push((at.saturating_sub(before)) as f64 / 1e6);
        down.push((after.saturating_sub(at)) as f64 / 1e6);
        total.push((after.saturating_sub(before)) as f64 / 1e6);
    }
    md.h("4. Start-up and exit");
    let row = |what: &str, v: &[f64], goal: &str| {
        let (lo, hi) = spread(v);
        vec![
            what.to_owned(),
            format!("**{:.0} ms**", median(v)),
            format!("{lo:.0}–{hi:.0} ms"),
            goal.to_owned(),
        ]
    };
    md.table(
        &[
            "10 runs of `pmet trace -q -- workload now`",
            "median",
            "spread",
            "goal",
        ],
        &[
            row(
                "start-up: invoking pmet to the command's first instruction",
                &up,
                "< 100 ms",
            ),
            row("exit: the command's end to pmet's", &down, "≤ 20 ms"),
            row(
                "in all (what wrapping a short command costs)",
                &total,
                "≤ 120 ms",
            ),
        ],
    );
    Ok(())
}

/// Nanoseconds on CPU of every thread of `pid`, from schedstat (exact,
/// unlike the 10 ms ticks of /proc/PID/stat).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut sum = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        sum += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(sum)
}

fn idle_and_scale(b: &Bench, md: &mut Md) -> Result<()> {
    let idle_s = if b.quick { 10 } else { 30 };
    // pmet's cost at rest is measured on the running pmet, away from its
    // start-up and exit: the CPU its threads use between 3 s in and 3 s
    // before the end. (The difference of two runs' totals is swamped by how
    // much start-up varies.)
    let report = b.dir.join("idle.json");
    let mut child = b
        .pmet(&report)
        .arg(&b.workload)
        .args(["alive", "4", &(idle_s * 1000).to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("spawning pmet")?;
    std::thread::sleep(Duration::from_secs(3));
    let (c0, t0) = (cpu_ns(child.id())?, Instant::now());
    std::thread::sleep(Duration::from_secs(idle_s - 6));
    let at_rest = (cpu_ns(child.id())? - c0) as f64 / 1e9 / t0.elapsed().as_secs_f64();
    let status = child.wait()?;
    if !status.success() {
        bail!("pmet on the idle tree failed: {status}");
    }
    let rep = Bench::report(&report)?;
    let f = |r: &Value, k: &str| r["collector"][k].as_f64().unwrap_or(f64::NAN);
    md.h("5. pmet's own cost, and scale");
    let mut rows = vec![vec![
        format!("idle tree: 4 processes sleeping {idle_s} s"),
        format!(
            "**{:.3} % of a core** at rest (goal < 0.5 %); {:.0} ms in all, start-up included",
            at_rest * 100.0,
            f(&rep, "self_cpu_s") * 1e3
        ),
        format!("{:.1} MB", f(&rep, "self_peak_rss_bytes") / 1e6),
        format!("{} / 5", rep["totals"]["processes"]),
        format!("{}", rep["collector"]["lost_events"]),
    ]];
    // One traced run of the workload helper; its row of the table.
    let scale_row =
        |label: String, report: &str, args: &[String], started: u64, rss_goal: Option<&str>| {
            let report = b.dir.join(report);
            let t = timed(b.pmet(&report).arg(&b.workload).args(args))?;
            let rep = Bench::report(&report)?;
            let rss = format!("{:.1} MB", f(&rep, "self_peak_rss_bytes") / 1e6);
            anyhow::Ok(vec![
                label,
                format!(
                    "{:.3} % of a core over {:.1} s",
                    f(&rep, "self_cpu_s") / t.wall * 100.0,
                    t.wall
                ),
                match rss_goal {
                    Some(goal) => format!("**{rss}** (goal {goal})"),
                    None => rss,
                },
                format!("{} / {started}", rep["totals"]["processes"]),
                format!("{}", rep["collector"]["lost_events"]),
            ])
        };
    let (kids, grand) = if b.quick { (20, 49) } else { (100, 99) };
    let total = 1 + kids + kids * grand;
    rows.push(scale_row(
        format!("{total} processes over the tree's life"),
        "scale.json",
        &["spawn-tree".into(), kids.to_string(), grand.to_string()],
        total,
        Some("< 50 MB"),
    )?);
    // A build's worth of processes: ended ones are written out as the run
    // goes, so memory follows those alive (issue 13: < 60 MB, 0 lost).
    let many: u64 = if b.quick { 20_000 } else { 100_000 };
    rows.push(scale_row(
        format!("{many} processes over the tree's life (2 at a time; report streamed)"),
        "many.json",
        &["storm".into(), many.to_string(), "2".into()],
        many + 1,
        Some("< 60 MB"),
    )?);
    // Many processes alive: where per-process sampling costs most. The
    // smaps_rollup reads behind PSS are measured by taking them away
    // (`--no-pss`), interleaved, three rounds each.
    let alive = if b.quick { 300 } else { 1000 };
    let args = ["alive".to_owned(), alive.to_string(), "3000".into()];
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut exporting = Vec::new();
    let mut last = None;
    for round in 0..3 {
        // 0: as is; 1: --no-pss; 2: with the exporters (an endpoint and a
        // textfile, rebuilt at every sample).
        for variant in rotate(3, round) {
            let report = b.dir.join(format!("alive-{variant}.json"));
            let mut cmd = Command::new(&b.pmet);
            cmd.arg("trace").arg("-q");
            match variant {
                1 => {
                    cmd.arg("--no-pss");
                }
                2 => {
                    cmd.args(["--prometheus", "127.0.0.1:0", "--textfile"])
                        .arg(b.dir.join("alive.prom"));
                }
                _ => {}
            }
            cmd.arg("-o")
                .arg(&report)
                .arg("--")
                .arg(&b.workload)
                .args(&args);
            let t = timed(&mut cmd)?;
            let rep = Bench::report(&report)?;
            let pct = f(&rep, "self_cpu_s") / t.wall * 100.0;
            match variant {
                1 => without.push(pct),
                2 => exporting.push(pct),
                _ => {
                    with.push(pct);
                    last = Some((rep, t));
                }
            }
        }
    }
    let (rep, t) = last.expect("three rounds ran");
    rows.push(vec![
        format!("{alive} processes alive at once for 3 s"),
        format!(
            "{:.3} % of a core over {:.1} s; {:.3} % with `--no-pss` (smaps_rollup reads cost {:+.3} points); {:.3} % with `--prometheus` and `--textfile` (the exporters cost {:+.3} points); medians of 3 interleaved runs each",
            median(&with),
            t.wall,
            median(&without),
            median(&with) - median(&without),
            median(&exporting),
            median(&exporting) - median(&with)
        ),
        format!("{:.1} MB", f(&rep, "self_peak_rss_bytes") / 1e6),
        format!("{} / {}", rep["totals"]["processes"], alive + 1),
        format!("{}", rep["collector"]["lost_events"]),
    ]);
    md.table(
        &[
            "workload",
            "pmet's CPU",
            "pmet's peak RSS",
            "processes seen / started",
            "lost events",
        ],
        &rows,
    );
    Ok(())
}

fn capacity(b: &Bench, md: &mut Md) -> Result<()> {
    // Two shells forking as fast as they can, on a 2-core machine.
    let n = if b.quick { 1000 } else { 4000 };
    let loop_ = format!("i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done");
    let script = format!("({loop_}) & ({loop_}) & wait");
    let shim = b.shim(&["sh", "-c", &script]);
    let (untraced, _) = b.inner(Command::new(&shim[0]).args(&shim[1..]))?;
    let report = b.dir.join("capacity.json");
    let (traced, _) = b.inner(b.pmet(&report).args(&shim))?;
    let rep = Bench::report(&report)?;
    md.h("6. Capacity");
    md.p(&format!(
        "Two shells fork+exec /bin/true {n} times each, as fast as this machine can: {:.0} execs/s untraced, {:.0} execs/s traced; pmet saw {} of {} processes, **{} lost events** (goal 0).",
        2.0 * n as f64 / untraced,
        2.0 * n as f64 / traced,
        rep["totals"]["processes"].as_u64().unwrap_or(0).saturating_sub(1),
        2 * n + 3,
        rep["collector"]["lost_events"]
    ));
    // Four traced trees at once, each two shells forking as fast as they
    // can: four pmet sessions sharing the kernel's hooks and the machine.
    let trees = 4;
    let children: Vec<_> = (0..trees)
        .map(|i| {
            let report = b.dir.join(format!("capacity-{i}.json"));
            let child = b
                .pmet(&report)
                .args(["sh", "-c", &script])
                .stdout(Stdio::null())
                .spawn();
            (report, child)
        })
        .collect();
    let mut rows = Vec::new();
    for (i, (report, child)) in children.into_iter().enumerate() {
        let st = child?.wait()?;
        anyhow::ensure!(st.success(), "traced tree {i} failed: {st}");
        let rep = Bench::report(&report)?;
        let l = &rep["collector"]["lost"];
        rows.push(vec![
            format!("tree {}", i + 1),
            format!(
                "{} / {}",
                rep["totals"]["processes"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(1),
                2 * n + 2
            ),
            format!("**{}**", rep["collector"]["lost_events"]),
            format!(
                "**{}** ({} made good from the figures kept at exit)",
                l["free_events_missed"], l["frees_kept_at_exit"]
            ),
        ]);
    }
    md.p(&format!(
        "{trees} such trees traced at once, by {trees} pmet sessions (goal: 0 lost events, 0 frees missed):"
    ));
    md.table(
        &[
            "tree",
            "processes seen / started",
            "lost events",
            "frees missed",
        ],
        &rows,
    );
    Ok(())
}

/// GETs http://ADDR/metrics; the body.
fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}

/// One unlabelled sample's value in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
}

/// `pmet agent` for ten minutes (one with --quick) while thousands of short
/// processes a minute come and go: its memory must follow the live
/// processes, not every process ever seen.
fn agent(b: &Bench, md: &mut Md) -> Result<()> {
    let minutes = if b.quick { 1 } else { 10 };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = Command::new(&b.pmet)
        .args(["agent", "--prometheus", &addr, "--interval", "1s"])
        .stderr(fs::File::create(b.dir.join("agent.err"))?)
        .spawn()?;
    let pid = agent.id();
    let t0 = Instant::now();
    while scrape(&addr).is_none() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "pmet agent did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let churn = {
        let (stop, started, workload) = (stop.clone(), started.clone(), b.workload.clone());
        std::thread::spawn(move || -> Result<()> {
            use std::sync::atomic::Ordering::Relaxed;
            while !stop.load(Relaxed) {
                // 200 processes, each sending one datagram, then a pause:
                // several thousand a minute on 2 cores, with room left.
                let st = Command::new(&workload)
                    .args(["churn", "200", "2", "100"])
                    .stdout(Stdio::null())
                    .status()?;
                anyhow::ensure!(st.success(), "churn failed: {st}");
                started.fetch_add(201, Relaxed);
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(())
        })
    };
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    let mut cpu_before = cpu_s(pid).context("pmet agent is gone")?;
    let mut series_seen = std::collections::HashSet::new();
    for minute in 1..=minutes {
        std::thread::sleep(
            (t0 + Duration::from_secs(60 * minute)).saturating_duration_since(Instant::now()),
        );
        let text = scrape(&addr).context("pmet agent stopped answering")?;
        let kib = rss_kib(pid).context("pmet agent is gone")?;
        let cpu = cpu_s(pid).context("pmet agent is gone")?;
        let series: Vec<&str> = (text.lines())
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
            .collect();
        series_seen.extend(series.iter().map(|s| s.to_string()));
        rss.push(kib);
        rows.push(vec![
            format!("{minute}"),
            format!("{}", started.load(std::sync::atomic::Ordering::Relaxed)),
            format!(
                "{:.0}",
                sample(&text, "pmet_processes_seen_total").unwrap_or(0.0)
            ),
            format!("{:.0}", sample(&text, "pmet_processes_held").unwrap_or(0.0)),
            format!(
                "{:.0}",
                sample(&text, "pmet_processes_alive").unwrap_or(0.0)
            ),
            format!("{:.1}", kib as f64 / 1024.0),
            format!("{} ({} so far)", series.len(), series_seen.len()),
            format!("{:.0}", text.len() as f64 / 1024.0),
            format!("{:.2}", (cpu - cpu_before) / 60.0 * 100.0),
            format!(
                "{:.0}",
                sample(&text, "pmet_lost_events_total").unwrap_or(0.0)
            ),
        ]);
        cpu_before = cpu;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn
        .join()
        .map_err(|_| anyhow::anyhow!("churn thread"))??;
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = agent.wait()?;
    anyhow::ensure!(st.success(), "pmet agent ended with {st}");
    let started = started.load(std::sync::atomic::Ordering::Relaxed);
    md.h("7. pmet agent under churn");
    md.p(&format!(
        "`pmet agent --prometheus ADDR --interval 1s` for {minutes} min while short processes came and went ({started} started, {:.0} a minute, each sending one UDP datagram); scraped once a minute. RSS at minute 1: {:.1} MiB; at the end: {:.1} MiB (growth {:+.1} MiB). `held` is the processes pmet keeps in memory: the alive and the ended not yet forgotten (forgotten once final, a second after their end, and exported).",
        started as f64 / minutes as f64,
        rss[0] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0,
        (rss[rss.len() - 1] as f64 - rss[0] as f64) / 1024.0,
    ));
    md.table(
        &[
            "minute",
            "processes started",
            "seen",
            "held",
            "alive",
            "RSS (MiB)",
            "series (distinct so far)",
            "exposition (KiB)",
            "CPU (% of a core)",
            "lost",
        ],
        &rows,
    );
    Ok(())
}

/// User and system CPU seconds `pid` has used.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<u64> = (stat.rsplit_once(')')?.1.split_whitespace())
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((f.first()? + f.get(1)?) as f64 / hz)
}
