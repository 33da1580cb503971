//! Every option of `pmet trace`, and the other subcommands, through the real
//! binary.

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::{fs::MetadataExt, process::CommandExt},
    process::{Command as StdCommand, Stdio},
    time::Duration,
};

use assert_cmd::Command;
use common::{can_trace, pmet, pmet_bin, workload};
use serde_json::Value;

fn cmd() -> Command {
    Command::new(pmet_bin())
}

/// A world-writable temporary directory, for commands run as another user.
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    d
}

#[test]
fn help_teaches_with_examples() {
    let out = cmd().args(["trace", "--help"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for want in [
        "Examples:",
        "sudo pmet trace -- ./build.sh",
        "--since-process-start",
        "--no-ebpf",
    ] {
        assert!(text.contains(want), "help lacks {want:?}:\n{text}");
    }
    let out = cmd().arg("--version").assert().success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).starts_with("pmet "));
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = cmd().args(["completions", shell]).assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(
            text.contains("pmet") && text.contains("since-process-start"),
            "{shell}"
        );
    }
    cmd().args(["completions", "tcsh"]).assert().code(2);
    let out = cmd().arg("man").assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains(".TH pmet"), "{text}");
}

#[test]
fn interval_bounds_are_checked() {
    let out = cmd()
        .args([
            "trace",
            "--min-interval",
            "2s",
            "--max-interval",
            "1s",
            "--",
            "true",
        ])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("--min-interval (2s) is longer than --max-interval (1s)"),
        "{err}"
    );
    cmd()
        .args(["trace", "--since-process-start", "--", "true"])
        .assert()
        .code(2);
    // Live needs a terminal; the tests' stderr is a pipe.
    cmd()
        .args(["trace", "--format", "live", "--", "true"])
        .assert()
        .code(2);
}

#[test]
fn simple_lines_when_piped_no_escape_codes() {
    if !can_trace() {
        return;
    }
    let run = pmet(&[
        "trace",
        "--format",
        "simple",
        "-i",
        "100ms",
        "--",
        workload(),
        "threads",
        "1",
        "400",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "escape codes in piped output");
    let samples: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(" procs "))
        .collect();
    assert!(samples.len() >= 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("pmet: "),
        "summary printed after the samples"
    );
}

#[test]
fn jsonl_to_a_stream_file() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("samples.jsonl");
    let run = pmet(&[
        "trace",
        "--format",
        "jsonl",
        "--stream",
        stream.to_str().unwrap(),
        "-i",
        "100ms",
        "--",
        workload(),
        "spawn-tree",
        "20",
        "1",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        !run.stderr.contains("\"t\":"),
        "samples went to the file, not stderr"
    );
    let text = std::fs::read_to_string(&stream).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(lines.len() >= 2, "{text}");
    let mut t = -1.0;
    for l in &lines {
        let now = l["t"].as_f64().unwrap();
        assert!(now >= t, "time goes forward");
        t = now;
        for k in [
            "cpu_s",
            "cpu_pct",
            "rss_bytes",
            "disk_read_bytes",
            "net",
            "processes_alive",
        ] {
            assert!(l.get(k).is_some(), "missing {k} in {l}");
        }
    }
    let last = lines.last().unwrap();
    assert_eq!(last["processes_seen"], run.report()["totals"]["processes"]);
    assert_eq!(last["processes_seen"], 41);
}

#[test]
fn quiet_prints_nothing_and_keeps_the_status() {
    if !can_trace() {
        return;
    }
    let run = pmet(&["trace", "-q", "--", workload(), "exit", "5"]);
    assert_eq!(run.code, Some(5));
    assert_eq!(run.stderr, "");
    assert_eq!(run.report()["exit_code"], 5);
}

#[test]
fn verbose_shows_debug_detail() {
    if !can_trace() {
        return;
    }
    let run = pmet(&["trace", "-vv", "--", workload(), "exit", "0"]);
    assert_eq!(run.code, Some(0));
    assert!(run.stderr.contains("pmet: debug:"), "{}", run.stderr);
}

#[test]
fn color_follows_the_flag() {
    if !can_trace() {
        return;
    }
    let run = pmet(&["trace", "--color", "always", "--", workload(), "exit", "1"]);
    assert!(run.stderr.contains("\x1b[31mexit 1"), "{}", run.stderr);
    let run = pmet(&["trace", "--", workload(), "exit", "1"]);
    assert!(!run.stderr.contains('\x1b'), "{}", run.stderr);
}

#[test]
fn exclude_children_follows_only_the_root() {
    if !can_trace() {
        return;
    }
    let run = pmet(&[
        "trace",
        "--exclude-children",
        "--",
        workload(),
        "tcp",
        "4",
        "10000",
        "100",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    assert_eq!(r["totals"]["processes"], 1);
    assert_eq!(
        r["totals"]["net"]["tcp"]["tx_bytes"], 0,
        "the talking was done by children"
    );
}

#[test]
fn duration_stops_a_launched_command_like_timeout() {
    if !can_trace() {
        return;
    }
    // timeout(1)'s own status for the same thing: what pmet should say.
    let timeout = StdCommand::new("timeout")
        .args(["0.7", workload(), "sleep", "20000"])
        .status()
        .expect("timeout(1)");
    assert_eq!(timeout.code(), Some(124));
    let run = pmet(&["trace", "-d", "700ms", "--", workload(), "sleep", "20000"]);
    assert_eq!(run.code, timeout.code(), "{}", run.stderr);
    let r = run.report();
    assert_eq!(r["stopped_early"], "duration");
    assert_eq!(r["exit_signal"], 15);
    let d = r["duration_s"].as_f64().unwrap();
    assert!((0.7..3.0).contains(&d), "duration {d}");
    // As `timeout --preserve-status`: the command's own (SIGTERM: 143).
    let run = pmet(&[
        "trace",
        "-d",
        "300ms",
        "--preserve-status",
        "--",
        workload(),
        "sleep",
        "20000",
    ]);
    assert_eq!(run.code, Some(128 + 15), "{}", run.stderr);
    assert_eq!(run.report()["exit_signal"], 15);
}

fn start_target(args: &[&str]) -> std::process::Child {
    // pmet built first: a build inside the target's life could outlast it.
    pmet_bin();
    StdCommand::new(workload())
        .args(args)
        .spawn()
        .expect("spawn target")
}

#[test]
fn duration_in_attach_mode_leaves_the_process_running() {
    if !can_trace() {
        return;
    }
    let mut target = start_target(&["threads", "1", "4000"]);
    std::thread::sleep(Duration::from_millis(200));
    let pid = target.id().to_string();
    // The truth from outside: the target's CPU from just before pmet starts
    // to just after it ends brackets what pmet saw while attached.
    let cpu_of = || -> f64 {
        let mut ns = 0.0;
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let s = std::fs::read_to_string(t.unwrap().path().join("schedstat")).unwrap();
            ns += s.split_whitespace().next().unwrap().parse::<f64>().unwrap();
        }
        ns / 1e9
    };
    let before = cpu_of();
    let t0 = std::time::Instant::now();
    let run = pmet(&["trace", "--pid", &pid, "-d", "1s"]);
    let wall = t0.elapsed().as_secs_f64();
    let after = cpu_of();
    let still_running = target.try_wait().unwrap().is_none();
    target.kill().unwrap();
    target.wait().unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(still_running, "pmet must not stop an attached process");
    let r = run.report();
    assert_eq!(r["stopped_early"], "duration");
    assert_eq!(r["mode"], "attach");
    assert_eq!(r["counting_from"], "attach");
    let p = &r["processes"][0];
    assert_eq!(p["end_offset_s"], Value::Null);
    assert_eq!(p["figures"], "sample");
    // Its threads, running before pmet came, by the names they had then.
    let names: Vec<&str> = p["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["comm"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["workload", "burn-0"], "{p:#}");
    // It burned what it could of a core the second pmet watched: no more
    // than it used around pmet's whole run (ticks: 10 ms), and no less than
    // that less what one core could burn while pmet started and ended.
    let cpu = p["cpu_user_s"].as_f64().unwrap() + p["cpu_system_s"].as_f64().unwrap();
    let outside = after - before;
    let unwatched = wall - r["duration_s"].as_f64().unwrap();
    assert!(
        cpu <= outside + 0.02 && cpu >= outside - unwatched - 0.03,
        "cpu {cpu}, outside {outside}, unwatched {unwatched}"
    );
    assert!(cpu > 0.1, "it was busy: {cpu}");
}

#[test]
fn attaching_to_a_process_that_exits_mid_run() {
    if !can_trace() {
        return;
    }
    // It exits once pmet is watching, however long pmet's start takes (a
    // fixed 2.5 s sleep ended first on a loaded machine: exit 4, "no such
    // process", rightly).
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let st = StdCommand::new("mkfifo").arg(&go).status().unwrap();
    assert!(st.success());
    let mut target = StdCommand::new("sh")
        .arg("-c")
        .arg(format!("read -r _ < {}", go.display()))
        .spawn()
        .unwrap();
    let pid = target.id();
    let (run, ready) = common::pmet_when_ready(&["trace", "--pid", &pid.to_string()]);
    assert_eq!(ready["pid"], pid);
    std::fs::write(&go, "go\n").unwrap();
    let run = run.join().unwrap();
    target.wait().unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    assert_eq!(r["stopped_early"], Value::Null);
    let p = &r["processes"][0];
    assert_eq!(p["pid"], pid);
    assert!(p["end_offset_s"].is_number());
    assert_eq!(
        p["exit_code"], 0,
        "seen by the kernel even though pmet is not its parent"
    );
}

#[test]
fn since_process_start_counts_cpu_from_the_start() {
    if !can_trace() {
        return;
    }
    let cpu_of = |r: &Value| {
        let p = &r["processes"][0];
        p["cpu_user_s"].as_f64().unwrap() + p["cpu_system_s"].as_f64().unwrap()
    };
    // 3 s of CPU, attached to 0.6 s in: from attach, what is left of it
    // (pmet's own start-up on a loaded machine can take a second or more,
    // which with 1.5 s left 0.22 s once, below any fixed bound).
    for flag in [true, false] {
        let mut target = start_target(&["cpu", "3000"]);
        std::thread::sleep(Duration::from_millis(600));
        let pid = target.id().to_string();
        // What it had used by now (less than by the attach, which comes
        // later): how much of it is left depends on how much CPU the
        // machine gave it, so the bound is read, not fixed.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        let before = ticks / 100.0;
        let range = if flag {
            2.95..3.3
        } else {
            0.3..(3.05 - before)
        };
        let mut args = vec!["trace", "--pid", &pid];
        if flag {
            args.push("--since-process-start");
        }
        let run = pmet(&args);
        target.wait().unwrap();
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let r = run.report();
        let cpu = cpu_of(r);
        assert!(
            range.contains(&cpu),
            "since start {flag}: cpu {cpu}, {before} s used before the attach"
        );
        assert_eq!(
            r["counting_from"],
            if flag { "process_start" } else { "attach" }
        );
    }
}

#[test]
fn since_process_start_counts_a_process_still_running_from_its_start() {
    if !can_trace() {
        return;
    }
    // The truth, from the process's own counters in /proc.
    let cpu_ticks = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let mut target = start_target(&["cpu", "4000"]);
    std::thread::sleep(Duration::from_millis(1200));
    let before = cpu_ticks(target.id());
    let pid = target.id().to_string();
    let run = pmet(&[
        "trace",
        "--pid",
        &pid,
        "--since-process-start",
        "-d",
        "500ms",
    ]);
    let after = cpu_ticks(target.id());
    target.kill().unwrap();
    target.wait().unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let p = &run.report()["processes"][0];
    assert_eq!(p["figures"], "sample", "still running when tracing stopped");
    let cpu = p["cpu_user_s"].as_f64().unwrap() + p["cpu_system_s"].as_f64().unwrap();
    assert!(
        cpu >= before - 0.02 && cpu <= after + 0.02,
        "from its start: {before} <= {cpu} <= {after}"
    );
}

#[test]
fn no_ebpf_polls_and_marks_what_it_cannot_know() {
    if !can_trace() {
        return;
    }
    let run = pmet(&[
        "trace",
        "--no-ebpf",
        "-i",
        "50ms",
        "--",
        workload(),
        "threads",
        "1",
        "400",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    assert_eq!(r["collector"]["ebpf"], false);
    assert_eq!(r["totals"]["net"], Value::Null);
    let p = &r["processes"][0];
    assert_eq!(p["exit_code"], 0, "the root's status comes from wait()");
    assert_eq!(p["net"], Value::Null);
    assert!(p["cpu_user_s"].as_f64().unwrap() > 0.2, "{p:#}");
    assert!(
        !run.stderr.contains("pmet: warning"),
        "no warning when asked: {}",
        run.stderr
    );
}

#[test]
fn user_flag_runs_the_command_as_that_user() {
    if !can_trace() {
        return;
    }
    let dir = shared_dir();
    let f = dir.path().join("uid");
    let script = format!("id -u > {}; echo $HOME >> {}", f.display(), f.display());
    let run = pmet(&["trace", "--user", "nobody", "--", "sh", "-c", &script]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(text.lines().next(), Some("65534"), "{text}");
    let run = pmet(&["trace", "--user", "root", "--", "sh", "-c", &script]);
    assert_eq!(run.code, Some(0));
    assert_eq!(
        std::fs::read_to_string(&f).unwrap().lines().next(),
        Some("0")
    );
}

#[test]
fn under_sudo_the_command_runs_as_the_invoking_user() {
    if !can_trace() {
        return;
    }
    let dir = shared_dir();
    let f = dir.path().join("uid");
    let report = dir.path().join("r.json");
    let script = format!("id -u > {0}; id -g >> {0}; echo $HOME >> {0}", f.display());
    let out = cmd()
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .args(["trace", "-o"])
        .arg(&report)
        .args(["--", "sh", "-c", &script])
        .assert()
        .success();
    let text = std::fs::read_to_string(&f).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["65534", "65534"], "{text}");
    let home = common::passwd_home(65534);
    assert_eq!(lines[2], home, "HOME is the user's");
    let meta = std::fs::metadata(&report).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "the report belongs to the user"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        r["collector"]["ebpf"],
        true,
        "{}",
        String::from_utf8_lossy(&out.get_output().stderr)
    );
}

/// Starts pmet in its own process group, as a shell would for a foreground job.
fn spawn_pmet_group(args: &[&str], report: &std::path::Path) -> std::process::Child {
    let mut c = StdCommand::new(pmet_bin());
    let (head, tail) = args.split_at(args.iter().position(|a| *a == "--").unwrap());
    c.args(head)
        .arg("-o")
        .arg(report)
        .args(tail)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Default dispositions, as from a shell: a run under `nohup` (a CI
    // runner's, a rehearsal's) ignores SIGHUP, pmet and its command inherit
    // that across exec, and a SIGHUP passed on then rightly does nothing
    // (the command ran on; pmet gave up after its grace: 129, status null).
    // SAFETY: signal(2) only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    c.spawn().unwrap()
}

fn wait_for_line(child: &mut std::process::Child, want: &str) {
    let mut r = BufReader::new(child.stdout.as_mut().unwrap());
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 0 {
        if line.contains(want) {
            return;
        }
        line.clear();
    }
    panic!("never saw {want:?}");
}

#[test]
fn ctrl_c_reaches_the_command_and_the_report_is_complete() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut p = spawn_pmet_group(
        &["trace", "--", "sh", "-c", "echo ready; exec sleep 30"],
        &report,
    );
    wait_for_line(&mut p, "ready");
    std::thread::sleep(Duration::from_millis(100));
    // The terminal sends SIGINT to the whole foreground group.
    // SAFETY: plain killpg.
    unsafe { libc::killpg(p.id() as i32, libc::SIGINT) };
    let st = p.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 2));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["exit_signal"], 2);
    assert_eq!(
        r["stopped_early"],
        Value::Null,
        "pmet waited for the command"
    );
    assert!(r["processes"][0]["end_offset_s"].is_number());
}

#[test]
fn a_second_ctrl_c_stops_waiting_and_still_writes_the_report() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut p = spawn_pmet_group(
        &[
            "trace",
            "--",
            "sh",
            "-c",
            "trap '' INT; echo ready; sleep 3",
        ],
        &report,
    );
    wait_for_line(&mut p, "ready");
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: plain kill of pmet only.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
    }
    let st = p.wait().unwrap();
    assert_eq!(st.code(), Some(130));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["stopped_early"], "interrupted");
    assert_eq!(
        r["processes"][0]["end_offset_s"],
        Value::Null,
        "still running"
    );
}

#[test]
fn sigterm_and_sighup_are_passed_to_the_command() {
    if !can_trace() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.json");
        let mut p = spawn_pmet_group(
            &["trace", "--", "sh", "-c", "echo ready; exec sleep 30"],
            &report,
        );
        wait_for_line(&mut p, "ready");
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: plain kill of pmet only.
        unsafe { libc::kill(p.id() as i32, sig) };
        let st = p.wait().unwrap();
        assert_eq!(st.code(), Some(128 + sig), "signal {sig}");
        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["exit_signal"], sig);
    }
}

#[test]
fn nothing_of_pmet_stays_loaded_on_any_exit_path() {
    if !can_trace() {
        return;
    }
    for how in ["exit", "sigkill", "interrupt"] {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.json");
        let mut p = spawn_pmet_group(
            &[
                "trace",
                "--",
                "sh",
                "-c",
                "trap '' INT; echo ready; sleep 1",
            ],
            &report,
        );
        wait_for_line(&mut p, "ready");
        let ids = common::bpf_prog_ids_of(p.id());
        assert!(
            ids.len() >= 8,
            "pmet holds its programs while running: {ids:?}"
        );
        match how {
            "sigkill" => p.kill().unwrap(),
            "interrupt" => {
                for _ in 0..2 {
                    // SAFETY: plain kill of pmet only.
                    unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            _ => {}
        }
        p.wait().unwrap();
        // Program teardown after the last fd closes is asynchronous (RCU).
        let mut left = ids.clone();
        for _ in 0..50 {
            left.retain(|&id| common::bpf_prog_exists(id));
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(left.is_empty(), "{how}: programs still loaded: {left:?}");
    }
}
