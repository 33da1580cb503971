//! pmet runs as root; the command it traces does not. Each test here is an
//! attack that the traced command, or the user it runs as, can make: run by
//! a real unprivileged user that the test creates, with pmet invoked as
//! `sudo` would (SUDO_UID/SUDO_GID), and shown to be harmless: no root file
//! overwritten, created or chowned, devices left devices, escape sequences
//! quoted, bad environment refused.

mod common;

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use common::{can_trace, pmet_bin};
use serde_json::Value;

/// The unprivileged user the attacks run as.
struct User {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

const USER: &str = "pmet-hostile";

fn user() -> &'static User {
    static U: OnceLock<User> = OnceLock::new();
    U.get_or_init(|| {
        if Command::new("id")
            .arg(USER)
            .output()
            .unwrap()
            .status
            .success()
        {
            // Left by an earlier run.
        } else {
            let out = Command::new("useradd")
                .args(["--create-home", "--user-group", "--shell", "/bin/sh", USER])
                .output()
                .expect("run useradd");
            // 9: created meanwhile by another test binary.
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, USER]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        let uid = id("-u");
        User {
            uid,
            gid: id("-g"),
            home: common::passwd_home(uid).into(),
        }
    })
}

/// A fresh directory in the user's home, owned by the user.
fn user_dir(name: &str) -> PathBuf {
    let u = user();
    let d = u.home.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(u.uid), Some(u.gid)).unwrap();
    d
}

/// Runs `script` as the user, as the attacker preparing the ground would.
fn as_user(script: &str) -> Output {
    let u = user();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={}", u.uid),
            &format!("--regid={}", u.gid),
            "--init-groups",
            "sh",
            "-c",
            script,
        ])
        .env("HOME", &u.home)
        .output()
        .expect("run setpriv");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `sudo pmet ARGS` as the user would run it.
fn sudo_pmet(args: &[&str]) -> Command {
    let u = user();
    let mut c = Command::new(pmet_bin());
    c.args(args)
        .env("SUDO_UID", u.uid.to_string())
        .env("SUDO_GID", u.gid.to_string())
        .env_remove("PMET_HISTORY")
        .env_remove("XDG_DATA_HOME");
    c
}

fn run(mut c: Command) -> (Option<i32>, String) {
    let o = c.output().expect("run pmet");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A root-owned file nobody else may touch, in a root-only directory.
fn victim() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::Builder::new()
        .prefix("pmet-victim")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = d.path().join("precious");
    std::fs::write(&f, "precious").unwrap();
    (d, f)
}

fn assert_untouched(victim: &Path) {
    assert_eq!(std::fs::read_to_string(victim).unwrap(), "precious");
    let m = std::fs::metadata(victim).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (0, 0),
        "{} was chowned",
        victim.display()
    );
}

fn assert_users_regular_file(p: &Path) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(m.is_file(), "{} is not a regular file", p.display());
    let u = user();
    assert_eq!(
        (m.uid(), m.gid()),
        (u.uid, u.gid),
        "{} belongs to the user",
        p.display()
    );
}

#[test]
fn planted_symlinks_cannot_redirect_the_report_or_trace_events() {
    if !can_trace() {
        return;
    }
    let (_keep, victim) = victim();
    let w = user_dir("t-symlinks");
    let v = victim.display();
    let w_ = w.display();
    // The old temp name (it held pmet's pid), a spray of guesses at the new
    // one, and the report and trace-events names themselves.
    let script = format!(
        "ln -s {v} {w_}/.r.json.pmet-tmp.$PPID; \
         i=0; while [ $i -lt 50 ]; do ln -s {v} {w_}/.pmet-$i.tmp; i=$((i+1)); done; \
         ln -sf {v} {w_}/r.json; ln -sf {v} {w_}/t.json; ln -sf {v} {w_}/m.prom; exit 7"
    );
    // The textfile is rewritten at every sample: a symlink planted between
    // two writes must be replaced, never followed.
    let mut c = sudo_pmet(&["trace", "-q", "-o"]);
    c.arg(w.join("r.json"))
        .arg("--trace-events")
        .arg(w.join("t.json"))
        .arg("--textfile")
        .arg(w.join("m.prom"))
        .args(["--", "sh", "-c", &script]);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(7), "the command's status: {stderr}");
    assert_untouched(&victim);
    assert_users_regular_file(&w.join("r.json"));
    assert_users_regular_file(&w.join("t.json"));
    assert_users_regular_file(&w.join("m.prom"));
    let r: Value = common::read_json(&w.join("r.json"));
    assert_eq!(r["exit_code"], 7);
}

#[test]
fn a_directory_swapped_during_the_run_cannot_redirect_the_report() {
    if !can_trace() {
        return;
    }
    let (root_dir, victim) = victim();
    let w = user_dir("t-swap");
    let out = w.join("out");
    as_user(&format!("mkdir {}", out.display()));
    let script = format!(
        "mv {o} {o}.bak && ln -s {r} {o}",
        o = out.display(),
        r = root_dir.path().display()
    );
    let mut c = sudo_pmet(&["trace", "-q", "-o"]);
    c.arg(out.join("r.json")).args(["--", "sh", "-c", &script]);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(0), "{stderr}");
    assert_untouched(&victim);
    let names: Vec<_> = std::fs::read_dir(root_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["precious"], "nothing new in the root directory");
    assert_users_regular_file(&w.join("out.bak/r.json"));
}

#[test]
fn the_report_cannot_go_where_the_user_cannot_write() {
    if !can_trace() {
        return;
    }
    let (root_dir, victim) = victim();
    let marker = user_dir("t-nowrite").join("ran");
    let mut c = sudo_pmet(&["trace", "-q", "-o"]);
    c.arg(root_dir.path().join("r.json"))
        .args(["--", "touch"])
        .arg(&marker);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        !marker.exists(),
        "nothing launched for a report it cannot write"
    );
    assert_untouched(&victim);
    // Overwriting a root file the user can read but not write: refused too.
    let mut c = sudo_pmet(&["trace", "-q", "-o"]);
    c.arg(&victim).args(["--", "true"]);
    assert_eq!(run(c).0, Some(3));
    assert_untouched(&victim);
}

#[test]
fn another_user_in_a_sticky_directory_cannot_redirect_roots_report() {
    if !can_trace() {
        return;
    }
    let (_keep, victim) = victim();
    let sticky = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(sticky.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let r = sticky.path().join("r.json");
    let s = sticky.path().join("s.jsonl");
    // Root runs pmet itself (no sudo); the command runs as the hostile user.
    let script = format!(
        "ln -s {v} {r}; ln -s {v} {s}",
        v = victim.display(),
        r = r.display(),
        s = s.display()
    );
    let mut c = Command::new(pmet_bin());
    c.args(["trace", "-q", "--user", USER, "-o"])
        .arg(&r)
        .args(["--", "sh", "-c", &script]);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(0), "{stderr}");
    assert_untouched(&victim);
    assert!(std::fs::symlink_metadata(&r).unwrap().is_file());
    // A stream in place of a planted link is refused before launch.
    let mut c = Command::new(pmet_bin());
    c.args([
        "trace", "-q", "--user", USER, "--format", "jsonl", "--stream",
    ])
    .arg(&s)
    .args(["--", "true"]);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_untouched(&victim);
}

#[test]
fn devices_and_fifos_stay_what_they_are() {
    if !can_trace() {
        return;
    }
    let (code, stderr) = run({
        let mut c = sudo_pmet(&["trace", "-q", "-o", "/dev/null", "--", "true"]);
        c.env_remove("SUDO_UID").env_remove("SUDO_GID");
        c
    });
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let w = user_dir("t-fifo");
    let fifo = w.join("fifo");
    as_user(&format!("mkfifo {}", fifo.display()));
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).unwrap())
    };
    let mut c = sudo_pmet(&["trace", "-q", "-o"]);
    c.arg(&fifo).args(["--", "true"]);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(0), "{stderr}");
    let got: Value = serde_json::from_slice(&reader.join().unwrap()).unwrap();
    assert_eq!(got["schema"], "pmet.report.v1");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // `-o /dev/stdout` writes to pmet's own stdout.
    let o = sudo_pmet(&["trace", "-q", "-o", "/dev/stdout", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["exit_code"], 0);
}

/// Another user's FIFO in /tmp-like places would receive the report; a FIFO
/// nobody reads must not hang pmet; `/dev/fd/N` must not name pmet's own fds.
#[test]
fn planted_fifos_and_pmets_own_fds_cannot_take_the_report() {
    if !can_trace() {
        return;
    }
    let sticky = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(sticky.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = sticky.path().join("r.json");
    as_user(&format!("mkfifo -m 0666 {}", planted.display()));
    // Root (no sudo) asks for a report at the name the hostile user took.
    let mut c = Command::new(pmet_bin());
    c.args(["trace", "-q", "-o"])
        .arg(&planted)
        .args(["--", "true"]);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("belongs to another user"), "{stderr}");
    // A FIFO of one's own with no reader: an error after the patience, not a
    // hang (the timeout would say 124).
    let own = user_dir("t-fifo-unread").join("fifo");
    as_user(&format!("mkfifo {}", own.display()));
    let mut c = Command::new("timeout");
    c.args(["60"]).arg(pmet_bin()).args(["trace", "-q", "-o"]);
    c.arg(&own).args(["--", "true"]);
    c.env("SUDO_UID", user().uid.to_string())
        .env("SUDO_GID", user().gid.to_string());
    let (code, stderr) = run(c);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("nothing opened for reading"), "{stderr}");
    // `/dev/fd/N` for an fd pmet was not handed, and `-` with stdout closed.
    let (code, stderr) = run(sudo_pmet(&["trace", "-q", "-o", "/dev/fd/6", "--", "true"]));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("fd 6 was not handed to pmet"), "{stderr}");
    let mut c = sudo_pmet(&["trace", "-q", "-o", "-", "--", "true"]);
    // SAFETY: close is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::close(1);
            Ok(())
        });
    }
    let (code, stderr) = run(c);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("standard output is closed"), "{stderr}");
}

#[test]
fn the_stream_is_not_created_when_pmet_refuses_to_start() {
    if !can_trace() {
        return;
    }
    let w = user_dir("t-stream");
    let s = w.join("s.jsonl");
    let cases: [(&[&str], i32); 4] = [
        (&["--", "pmet-no-such-command"], 127),
        (&["-o", "/nonexistent/dir/r.json", "--", "true"], 3),
        (&["--user", "pmet-no-such-user", "--", "true"], 2),
        (&["--pid", "999999999"], 4),
    ];
    for (args, want) in cases {
        std::fs::write(&s, "earlier samples\n").unwrap();
        let mut c = sudo_pmet(&["trace", "-q", "--format", "jsonl", "--stream"]);
        c.arg(&s).args(args);
        let (code, stderr) = run(c);
        assert_eq!(code, Some(want), "{args:?}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(&s).unwrap(),
            "earlier samples\n",
            "{args:?} truncated the stream"
        );
    }
    std::fs::remove_file(&s).unwrap();
    let mut c = sudo_pmet(&["trace", "--format", "jsonl", "--stream"]);
    c.arg(&s).args(["--", "true"]);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(0), "{stderr}");
    assert_users_regular_file(&s);
    let first = std::fs::read_to_string(&s).unwrap();
    let line: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert!(line.is_object());
}

/// Everything about the history store in one test: they share the user's
/// default store path.
#[test]
fn the_history_store_is_the_users_and_cannot_be_turned_against_root() {
    if !can_trace() {
        return;
    }
    let u = user();
    let local = u.home.join(".local");
    let _ = std::fs::remove_dir_all(&local);
    let (root_dir, victim) = victim();

    // A read makes nothing: no root-owned store in the user's home.
    let (code, stderr) = run(sudo_pmet(&["report", "5"]));
    assert_eq!(code, Some(66), "{stderr}");
    assert!(stderr.contains("no runs recorded yet"), "{stderr}");
    assert!(
        !local.exists(),
        "`pmet report 5` created {}",
        local.display()
    );

    // ~/.local/share/pmet is a link to a root directory: not chowned, nothing
    // created there, and the record fails before the command runs.
    as_user(&format!(
        "mkdir -p ~/.local/share && ln -s {} ~/.local/share/pmet",
        root_dir.path().display()
    ));
    let marker = user_dir("t-history").join("ran");
    let mut c = sudo_pmet(&["trace", "-q", "--record", "--", "touch"]);
    c.arg(&marker);
    let (code, stderr) = run(c);
    assert_eq!(code, Some(74), "{stderr}");
    assert!(
        !marker.exists(),
        "the command ran although the store is unusable"
    );
    let m = std::fs::metadata(root_dir.path()).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0), "the root directory was chowned");
    assert_eq!(std::fs::read_dir(root_dir.path()).unwrap().count(), 1);
    assert_untouched(&victim);

    // history.db is a dangling link into a root directory: nothing created.
    as_user(&format!(
        "rm ~/.local/share/pmet && mkdir ~/.local/share/pmet && ln -s {}/created ~/.local/share/pmet/history.db",
        root_dir.path().display()
    ));
    let (code, stderr) = run(sudo_pmet(&["trace", "-q", "--record", "--", "true"]));
    assert_eq!(code, Some(74), "{stderr}");
    assert!(!root_dir.path().join("created").exists());

    // A trigger planted in the user's own store does not run inside pmet.
    as_user("rm ~/.local/share/pmet/history.db");
    let db = u.home.join(".local/share/pmet/history.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL,
               command TEXT NOT NULL, exit_code INTEGER, duration_s REAL NOT NULL,
               cpu_s REAL NOT NULL, rss_bytes INTEGER, net_bytes INTEGER,
               processes INTEGER NOT NULL, lost_events INTEGER NOT NULL, report TEXT NOT NULL);
             CREATE TABLE pwned (x);
             CREATE TRIGGER t AFTER INSERT ON runs BEGIN INSERT INTO pwned VALUES (1); END;",
        )
        .unwrap();
    }
    std::os::unix::fs::chown(&db, Some(u.uid), Some(u.gid)).unwrap();
    let (code, stderr) = run(sudo_pmet(&["trace", "-q", "--record", "--", "true"]));
    assert_eq!(code, Some(0), "{stderr}");
    let c = rusqlite::Connection::open(&db).unwrap();
    let runs: i64 = c
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    let pwned: i64 = c
        .query_row("SELECT count(*) FROM pwned", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (runs, pwned),
        (1, 0),
        "the run is stored, the trigger did not fire"
    );
    drop(c);

    // A fresh store: the store, its side files and every directory made for
    // it belong to the user.
    let _ = std::fs::remove_dir_all(&local);
    let (code, stderr) = run(sudo_pmet(&["trace", "-q", "--record", "--", "true"]));
    assert_eq!(code, Some(0), "{stderr}");
    for p in [
        local.clone(),
        local.join("share"),
        local.join("share/pmet"),
        db.clone(),
    ] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (u.uid, u.gid), "{}", p.display());
    }
    for e in std::fs::read_dir(local.join("share/pmet")).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        assert_eq!(m.uid(), u.uid);
    }
    // A store the user made read-only can still be listed.
    as_user("chmod 0555 ~/.local/share/pmet && chmod 0444 ~/.local/share/pmet/history.db");
    let o = sudo_pmet(&["history"]).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    as_user("chmod 0755 ~/.local/share/pmet");
    let _ = std::fs::remove_dir_all(&local);
}

#[test]
fn malformed_sudo_variables_are_refused_not_taken_as_root() {
    if !can_trace() {
        return;
    }
    let u = user();
    let w = user_dir("t-sudo-env");
    let marker = w.join("ran");
    let cases = [
        ("abc".to_string(), u.gid.to_string(), "SUDO_UID"),
        ("4000000000".to_string(), u.gid.to_string(), "no user"),
        (u.uid.to_string(), "0".to_string(), "SUDO_GID=0"),
        (u.uid.to_string(), "x".to_string(), "SUDO_GID"),
    ];
    for (uid, gid, want) in cases {
        let mut c = Command::new(pmet_bin());
        c.args(["trace", "-q", "--", "touch"])
            .arg(&marker)
            .env("SUDO_UID", &uid)
            .env("SUDO_GID", &gid);
        let (code, stderr) = run(c);
        assert_eq!(code, Some(2), "{uid}/{gid}: {stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!marker.exists(), "{uid}/{gid}: the command ran");
    }
}

#[test]
fn raised_limits_are_not_inherited_by_the_command() {
    if !can_trace() {
        return;
    }
    let w = user_dir("t-limits");
    let f = w.join("limits");
    // Low soft limits, as a login shell may set them; pmet raises both for
    // itself (BPF maps, many fds) and must give them back.
    let mut c = sudo_pmet(&["trace", "-q", "--", "sh", "-c"]);
    c.arg(format!("(ulimit -S -l; ulimit -S -n) > {}", f.display()));
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            for (r, soft) in [
                (libc::RLIMIT_MEMLOCK, 64 * 1024),
                (libc::RLIMIT_NOFILE, 256),
            ] {
                let mut l = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(r, &mut l);
                l.rlim_cur = soft.min(l.rlim_max);
                libc::setrlimit(r, &l);
            }
            Ok(())
        });
    }
    let (code, stderr) = run(c);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "64\n256\n");
}

// ---- Hostile or broken input and output: one line, a documented status,
// never a panic (exit 101), and the command's status always returned.

fn no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A pipe whose reader is already gone.
fn closed_pipe() -> std::process::Stdio {
    let mut fds = [0; 2];
    // SAFETY: valid array; both fds are owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the read end is closed at once; the write end is handed over.
    unsafe {
        libc::close(fds[0]);
        std::os::fd::FromRawFd::from_raw_fd(fds[1])
    }
}

#[test]
fn paths_that_cannot_be_written_are_refused_before_launch() {
    if !can_trace() {
        return;
    }
    let w = user_dir("t-paths");
    let marker = w.join("ran");
    let long = w.join("r".repeat(300));
    let newdir = format!("{}/", w.join("newdir").display());
    for (o, want) in [
        ("", "empty"),
        (newdir.as_str(), "ends with /"),
        (long.to_str().unwrap(), "too long"),
    ] {
        let mut c = Command::new(pmet_bin());
        c.args(["trace", "-q", "-o", o, "--", "touch"]).arg(&marker);
        let (code, stderr) = run(c);
        assert_eq!(code, Some(3), "-o {o:?}: {stderr}");
        assert!(stderr.contains(want) && stderr.contains("-o"), "{stderr}");
        assert!(!marker.exists(), "-o {o:?}: the command ran");
    }
    for d in ["18446744073709551615s", "-1s"] {
        for opt in ["-d", "-i"] {
            let mut c = Command::new(pmet_bin());
            c.args(["trace", "-q", opt, d, "--", "touch"]).arg(&marker);
            let (code, stderr) = run(c);
            assert_eq!(code, Some(2), "{opt} {d}: {stderr}");
            no_panic(&stderr);
            assert!(!marker.exists());
        }
    }
}

#[test]
fn a_closed_or_full_stderr_still_returns_the_commands_status() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.json");
    for (name, stderr) in [
        ("closed pipe", closed_pipe()),
        (
            "/dev/full",
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap()
                .into(),
        ),
    ] {
        let st = Command::new(pmet_bin())
            .args(["trace", "--format", "simple", "-i", "20ms", "-o"])
            .arg(&r)
            .args(["--", "sh", "-c", "sleep 0.1; exit 5"])
            .stderr(stderr)
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(5), "{name}");
        let report: Value = common::read_json(&r);
        assert_eq!(
            report["exit_code"], 5,
            "{name}: the report is still written"
        );
        std::fs::remove_file(&r).unwrap();
    }
}

#[test]
fn report_output_to_a_closed_pipe_ends_quietly_and_to_a_full_disk_says_so() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.json");
    let (code, stderr) = run({
        let mut c = Command::new(pmet_bin());
        c.args(["trace", "-q", "-o"]).arg(&r).args(["--", "true"]);
        c
    });
    assert_eq!(code, Some(0), "{stderr}");
    for args in [
        vec!["report", r.to_str().unwrap()],
        vec!["diff", r.to_str().unwrap(), r.to_str().unwrap()],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let o = Command::new(pmet_bin())
            .args(&args)
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}: quiet");
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = Command::new(pmet_bin())
            .args(&args)
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(74), "{args:?}: {stderr}");
        assert!(stderr.contains("No space left on device"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn text_from_files_and_the_store_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.json");
    std::fs::write(
        &r,
        r#"{"schema": "pmet.report.v1", "pmet_version": "1\u001b]0;owned\u0007",
            "started_at": "\u001b[2J", "mode": "\u009b31m"}"#,
    )
    .unwrap();
    let o = Command::new(pmet_bin())
        .args(["report", "--color", "never"])
        .arg(&r)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{9b}'),
        "{out:?}"
    );
    assert!(out.contains("\\x1b]0;owned\\x07"), "{out}");

    let db = dir.path().join("history.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL,
           command TEXT NOT NULL, exit_code INTEGER, duration_s REAL NOT NULL,
           cpu_s REAL NOT NULL, rss_bytes INTEGER, net_bytes INTEGER,
           processes INTEGER NOT NULL, lost_events INTEGER NOT NULL, report TEXT NOT NULL);
         INSERT INTO runs VALUES (1, char(27) || '[2J', 'make' || char(27) || ']0;x' || char(7),
           0, 1.0, 1.0, NULL, NULL, 1, 0, '{}');",
    )
    .unwrap();
    drop(c);
    let o = Command::new(pmet_bin())
        .arg("history")
        .env("PMET_HISTORY", &db)
        .env("COLUMNS", "300")
        .env_remove("SUDO_UID")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("make\\x1b]0;x\\x07"), "{out}");
}

/// A traced program picks its own name (the file it runs) and arguments:
/// a bidirectional override there (U+202E: `x\u{202e}hs.txt` shows as
/// `xtxt.sh`) or an escape sequence reaches no screen raw, not the summary,
/// nor `pmet report`. The report's JSON keeps them as they were.
#[test]
fn arguments_that_are_not_utf8_keep_their_bytes_in_the_report() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.json");
    // `true` is given "a", the byte 0xff, "b" (not UTF-8), then "ok".
    let o = Command::new(pmet_bin())
        .args(["trace", "-o"])
        .arg(&r)
        .args([
            "--",
            "sh",
            "-c",
            "/bin/true \"$(printf 'a\\377b')\" ok; true",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&r).unwrap()).unwrap();
    let ps = report["processes"].as_array().unwrap();
    let t = ps
        .iter()
        .find(|p| p["argv"][0] == "/bin/true")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(
        t["argv"],
        serde_json::json!(["/bin/true", "a\u{fffd}b", "ok"])
    );
    assert_eq!(t["argv_hex"], serde_json::json!([null, "61ff62", null]));
    let sh = ps.iter().find(|p| p["argv"][0] == "sh").unwrap();
    assert_eq!(sh["argv_hex"], Value::Null, "all UTF-8");
}

#[test]
fn names_and_arguments_a_traced_program_chooses_cannot_reorder_the_screen() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("x\u{202e}hs.txt");
    std::os::unix::fs::symlink("/bin/true", &link).unwrap();
    let r = dir.path().join("r.json");
    let script = format!("'{}' 'a\u{202e}b' '\u{1b}[2J'; true", link.display());
    let o = Command::new(pmet_bin())
        .args(["trace", "-o"])
        .arg(&r)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let report: Value = serde_json::from_slice(&std::fs::read(&r).unwrap()).unwrap();
    let p = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["argv"][1] == "a\u{202e}b")
        .unwrap_or_else(|| panic!("{report:#}"))
        .clone();
    assert_eq!(
        p["comm"], "x\u{202e}hs.txt",
        "the JSON keeps the bytes' text"
    );
    let shown = Command::new(pmet_bin())
        .args(["report", "--color", "never"])
        .arg(&r)
        .env("COLUMNS", "300")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(0));
    for (what, text) in [("summary", &*err), ("pmet report", &*out)] {
        assert!(
            !text.contains('\u{202e}') && !text.contains('\u{1b}'),
            "{what}: {text:?}"
        );
    }
    assert!(out.contains("\\u202e"), "escaped, not dropped: {out}");
}

#[test]
fn usr1_and_usr2_reach_the_command_and_pmet_carries_on() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.json");
    let ready = dir.path().join("ready");
    let script = format!(
        "trap 'exit 42' USR1; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut child = Command::new(pmet_bin())
        .args(["trace", "-q", "-o"])
        .arg(&r)
        .args(["--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    common::wait_for_file(&ready);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(42));
    let report: Value = common::read_json(&r);
    assert_eq!(report["exit_code"], 42);
}

#[test]
fn a_stream_that_fills_up_is_said_once_and_the_report_still_written() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.json");
    let o = Command::new(pmet_bin())
        .args([
            "trace",
            "--format",
            "jsonl",
            "-i",
            "20ms",
            "--stream",
            "/dev/full",
            "-o",
        ])
        .arg(&r)
        .args(["--", "sh", "-c", "sleep 0.3; exit 3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert_eq!(
        stderr.matches("writing the samples failed").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let report: Value = common::read_json(&r);
    assert_eq!(report["exit_code"], 3);
}

/// A `--textfile` FIFO whose reader holds it open and never reads: the
/// trace waits it out once, gives it up, and ends with the command (before,
/// every sample blocked on it for ever).
#[test]
fn a_textfile_fifo_that_is_never_read_stalls_the_trace_once() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pmet.prom");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // SAFETY: valid C string; the fd is closed below.
    let reader = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    assert!(reader >= 0);
    // The smallest pipe, so a few samples fill it.
    // SAFETY: the fd opened above.
    assert!(unsafe { libc::fcntl(reader, libc::F_SETPIPE_SZ, 4096) } >= 4096);
    let r = dir.path().join("r.json");
    let started = std::time::Instant::now();
    let o = Command::new("timeout")
        .arg("120")
        .arg(pmet_bin())
        .args(["trace", "-q", "-i", "20ms", "--textfile"])
        .arg(&fifo)
        .arg("-o")
        .arg(&r)
        .args(["--", "sh", "-c", "sleep 2; exit 4"])
        .output()
        .unwrap();
    // SAFETY: the fd opened above.
    unsafe { libc::close(reader) };
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.matches("no longer written").count(), 1, "{stderr}");
    assert!(stderr.contains("took nothing"), "{stderr}");
    assert_eq!(common::read_json(&r)["exit_code"], 4);
    // Once 10 s, not at every sample (100 samples of 20 ms).
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn a_secret_in_the_environment_reaches_no_output() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = format!("s3cr3t-{}-{}", std::process::id(), "do-not-leak");
    let run = |extra: &[&str]| {
        let mut c = Command::new(pmet_bin());
        c.args(["trace", "--format", "jsonl", "-i", "20ms", "--stream"])
            .arg(d.join("s.jsonl"))
            .arg("--trace-events")
            .arg(d.join("t.json"))
            .arg("--record")
            .args(["-o"])
            .arg(d.join("r.json"))
            .args(extra)
            .args(["--", "sh", "-c", "sleep 0.1; env > /dev/null"])
            .env("PMET_TEST_SECRET", &secret)
            .env("PMET_TEST_VISIBLE", "shown")
            .env("PMET_HISTORY", d.join("history.db"))
            .env_remove("SUDO_UID");
        let o = c.output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let o = run(&["--env", "PMET_TEST_VIS*"]);
    // Every output a person or a tool could read afterwards.
    let html = Command::new(pmet_bin())
        .arg("report")
        .arg(d.join("r.json"))
        .arg("--html")
        .arg(d.join("r.html"))
        .env("PMET_HISTORY", d.join("history.db"))
        .output()
        .unwrap();
    let history = Command::new(pmet_bin())
        .args(["report", "1"])
        .env("PMET_HISTORY", d.join("history.db"))
        .output()
        .unwrap();
    let mut seen = Vec::new();
    for f in ["r.json", "s.jsonl", "t.json", "r.html", "history.db"] {
        seen.push((f.to_string(), std::fs::read(d.join(f)).unwrap()));
    }
    for (name, out) in [("pmet stderr", &o.stderr), ("pmet stdout", &o.stdout)] {
        seen.push((name.into(), out.clone()));
    }
    seen.push(("report --html".into(), html.stdout));
    seen.push(("report 1".into(), history.stdout));
    for (name, bytes) in &seen {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&secret), "the secret reached {name}");
    }
    let r: Value = common::read_json(&d.join("r.json"));
    let env = &r["processes"][0]["env"];
    assert_eq!(env["PMET_TEST_SECRET"], "<redacted>", "its name is listed");
    assert_eq!(
        env["PMET_TEST_VISIBLE"], "shown",
        "the value asked for is kept"
    );
    assert!(env["PATH"].is_string());
    // The child forked by the shell has the same environment.
    let sleep = r["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["comm"] == "sleep")
        .unwrap();
    assert_eq!(sleep["env"]["PMET_TEST_SECRET"], "<redacted>");
    // --env-all keeps it, as asked.
    std::fs::remove_file(d.join("r.json")).unwrap();
    run(&["--env-all"]);
    let r: Value = common::read_json(&d.join("r.json"));
    assert_eq!(
        r["processes"][0]["env"]["PMET_TEST_SECRET"],
        secret.as_str()
    );
}

#[test]
fn a_user_under_sudo_gets_no_privileged_port_and_root_does() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = ["--", "touch", marker.to_str().unwrap()];
    // Port 1 on the loopback: free, and below 1024.
    let mut args = vec![
        "trace",
        "-q",
        "-o",
        "/dev/null",
        "--prometheus",
        "127.0.0.1:1",
    ];
    args.extend(touch);
    let (code, stderr) = run(sudo_pmet(&args));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("port 1 is privileged") && stderr.contains("from 1024 up"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!marker.exists(), "nothing was launched");
    // Root itself (no sudo) may.
    let (code, stderr) = run({
        let mut c = sudo_pmet(&args);
        c.env_remove("SUDO_UID").env_remove("SUDO_GID");
        c
    });
    assert_eq!(code, Some(0), "{stderr}");
    assert!(marker.exists());
}
