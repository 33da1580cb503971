//! The live view as a person sees it: pmet runs in a real terminal (tmux),
//! the screen is captured and read.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{can_trace, pmet_bin, workload};

fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux").args(args).output().expect("run tmux");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing in CI: `cargo xtask test` installs it"
        );
        eprintln!("skipping: tmux is not installed");
    }
    ok
}

struct Session(String);
impl Drop for Session {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.0]);
    }
}

fn screen(s: &Session) -> String {
    tmux(&["capture-pane", "-p", "-t", &s.0])
}

fn wait_for(s: &Session, what: &str, within: Duration) -> String {
    let t = Instant::now();
    loop {
        let text = screen(s);
        if text.contains(what) || t.elapsed() > within {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn live_view_in_a_terminal() {
    if !can_trace() || !have_tmux() {
        return;
    }
    let s = Session(format!("pmet-live-{}", std::process::id()));
    // The command prints lines of its own while pmet draws below them.
    let script = format!(
        "for i in 1 2 3; do echo output line $i; done; {} threads 1 3000",
        workload()
    );
    let line = format!(
        "{} trace -i 200ms -- sh -c '{script}'; echo PMET-DONE; sleep 60",
        pmet_bin().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &s.0,
        "-x",
        "110",
        "-y",
        "30",
        &line,
    ]);

    let during = wait_for(&s, "CPU%", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(800));
    let now = screen(&s);
    let during = format!("{during}\n{now}");
    for want in [
        " alive · ",
        " seen │ ",
        "CPU ",
        "RSS ",
        "net TCP ↑",
        "PID",
        "CPU%",
        "threads 1 3000",
        "output line 3",
    ] {
        assert!(during.contains(want), "live view lacks {want:?}:\n{during}");
    }
    // The busy process is listed first, above the idle shell. Ranked, not
    // held to a threshold: how much of a core it gets depends on what else
    // this shared machine runs.
    let mut rows = now
        .lines()
        .skip_while(|l| !l.contains("CPU%"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty());
    let first = rows
        .next()
        .unwrap_or_else(|| panic!("no process rows:\n{now}"));
    assert!(
        first.contains("threads 1 3000") && !first.contains("sh -c"),
        "the busy process is not listed first:\n{now}"
    );
    let pct = |row: &str| -> f64 { row.split_whitespace().nth(1).unwrap().parse().unwrap() };
    assert!(pct(first) > 0.0, "{first}");
    let rest: Vec<&str> = rows.collect();
    assert!(!rest.is_empty(), "the shell is missing:\n{now}");
    for row in rest {
        assert!(pct(row) < pct(first), "{row} ranked below {first}");
    }

    let after = wait_for(&s, "PMET-DONE", Duration::from_secs(20));
    assert!(after.contains("exit 0 after"), "summary missing:\n{after}");
    assert!(
        !after.contains("CPU%"),
        "the live panel was not cleared:\n{after}"
    );
    assert!(
        after.contains("output line 1"),
        "the command's output was lost:\n{after}"
    );
}

#[test]
fn piped_output_has_no_escape_codes() {
    if !can_trace() {
        return;
    }
    let o = Command::new(pmet_bin())
        .args(["trace", "--", workload(), "exit", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("exit 0 after"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(!err.contains('⠋'), "no spinner when not a terminal");
}

#[test]
fn top_full_screen_in_80_by_24_sorts_filters_and_quits() {
    if !can_trace() || !have_tmux() {
        return;
    }
    let s = Session(format!("pmet-top-{}", std::process::id()));
    let mut burner = Command::new(workload())
        .args(["cpu", "8000"])
        .spawn()
        .unwrap();
    let line = format!(
        "{} top -i 300ms; echo TOP-DONE $?; sleep 60",
        pmet_bin().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &s.0,
        "-x",
        "80",
        "-y",
        "24",
        &line,
    ]);
    // The first frame has no rates yet; the burner leads the CPU ranking
    // from the second.
    let first_row = |text: &str| {
        text.lines()
            .skip_while(|l| !l.contains("COMMAND"))
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let t0 = Instant::now();
    let first = loop {
        let text = screen(&s);
        if first_row(&text).starts_with(&format!("{} ", burner.id())) {
            break text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the burner never led:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for want in [
        "pmet top ·",
        "sorted by cpu",
        "PID",
        "CPU%",
        "COMMAND",
        "q: quit",
        "workload cpu 8000",
    ] {
        assert!(first.contains(want), "missing {want:?}:\n{first}");
    }
    tmux(&["send-keys", "-t", &s.0, "m"]);
    let by_mem = wait_for(&s, "sorted by mem", Duration::from_secs(5));
    assert!(by_mem.contains("sorted by mem"), "{by_mem}");
    // Key by key: `tmux send-keys ... "cpu 8000"` is itself a process whose
    // command line holds the filter, and pmet rightly listed it (CI, stop 31).
    tmux(&[
        "send-keys",
        "-t",
        &s.0,
        "/",
        "c",
        "p",
        "u",
        "Space",
        "8",
        "0",
        "0",
        "0",
        "Enter",
    ]);
    // Applied (Enter taken): the footer shows the keys again.
    let t0 = Instant::now();
    let filtered = loop {
        let text = screen(&s);
        if text.contains("· filter: cpu 8000") && text.contains("q: quit") {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no filter:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows: Vec<&str> = filtered
        .lines()
        .skip_while(|l| !l.contains("COMMAND"))
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.contains("q: quit"))
        .collect();
    assert_eq!(rows.len(), 1, "only the burner:\n{filtered}");
    // By user: a process of nobody's, alone under `user:nobody`.
    let mut sleeper = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    // Esc clears the filter (alone: an Esc followed at once by a key reads
    // as Alt and that key).
    tmux(&["send-keys", "-t", &s.0, "/", "Escape"]);
    let t0 = Instant::now();
    while screen(&s).contains("· filter:") {
        assert!(t0.elapsed() < Duration::from_secs(5), "Esc left the filter");
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux(&["send-keys", "-t", &s.0, "/", "user:nobody", "Enter"]);
    let t0 = Instant::now();
    let by_user = loop {
        let text = screen(&s);
        let rows: Vec<String> = text
            .lines()
            .skip_while(|l| !l.contains("COMMAND"))
            .skip(1)
            .filter(|l| !l.trim().is_empty() && !l.contains("q: quit"))
            .map(str::to_owned)
            .collect();
        if text.contains("· filter: user:nobody") && text.contains("q: quit") && rows.len() == 1 {
            break rows;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no user filter:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        by_user[0].starts_with(&format!("{} ", sleeper.id()))
            && by_user[0].contains("nobody")
            && by_user[0].contains("sleep 30"),
        "{by_user:?}"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    tmux(&["send-keys", "-t", &s.0, "q"]);
    let after = wait_for(&s, "TOP-DONE", Duration::from_secs(10));
    burner.kill().unwrap();
    burner.wait().unwrap();
    assert!(after.contains("TOP-DONE 0"), "{after}");
    assert!(
        !after.contains("COMMAND"),
        "the terminal is restored:\n{after}"
    );
}
