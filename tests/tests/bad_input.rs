//! Bad input: a clear one-line error naming the problem and the fix, a
//! documented exit status, and nothing launched that should not be.

mod common;

use std::os::unix::process::CommandExt;

use common::{can_trace, pmet};

fn one_line_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pmet: error:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "want exactly one error line, got:\n{stderr}"
    );
    lines[0]
}

#[test]
fn command_not_found_exits_127_like_a_shell() {
    if !can_trace() {
        return;
    }
    let run = pmet(&["trace", "--", "pmet-no-such-command", "x"]);
    assert_eq!(run.code, Some(127));
    let e = one_line_error(&run.stderr);
    assert!(e.contains("command not found: pmet-no-such-command"), "{e}");
    assert!(run.report.is_none());
}

#[test]
fn command_not_executable_exits_126() {
    if !can_trace() {
        return;
    }
    let run = pmet(&["trace", "--", "/etc/hostname"]);
    assert_eq!(run.code, Some(126));
    let e = one_line_error(&run.stderr);
    assert!(e.contains("cannot execute /etc/hostname"), "{e}");
}

#[test]
fn missing_pid_exits_4() {
    let run = pmet(&["trace", "--pid", "99999999"]);
    assert_eq!(run.code, Some(4), "{}", run.stderr);
    let e = one_line_error(&run.stderr);
    assert!(e.contains("no process with pid 99999999"), "{e}");
}

#[test]
fn unwritable_output_fails_before_launching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = std::process::Command::new(common::pmet_bin())
        .args(["trace", "-o", "/nonexistent-dir/r.json", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let e = one_line_error(&stderr);
    assert!(
        e.contains("/nonexistent-dir/r.json") && e.contains("-o"),
        "{e}"
    );
    assert!(
        !marker.exists(),
        "the command ran although the report could not be written"
    );
}

#[test]
fn without_root_the_missing_capability_is_named() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: the plain run shows the same thing.
        let run = pmet(&["trace", "--", "true"]);
        assert_eq!(run.code, Some(125));
        return;
    }
    let out = std::process::Command::new(common::pmet_bin())
        .args(["trace", "--", "true"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    let e = one_line_error(&stderr);
    assert!(e.contains("CAP_BPF") && e.contains("sudo pmet"), "{e}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["trace"][..],
        &["trace", "--interval", "0", "--", "true"],
        &["trace", "--duration", "-5s", "--", "true"],
        &["trace", "--duration", "soon", "--", "true"],
        &["trace", "--no-such-flag", "--", "true"],
        &["trace", "--pid", "abc"],
    ] {
        let out = std::process::Command::new(common::pmet_bin())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}
