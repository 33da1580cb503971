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
fn without_root_pmet_polls_and_names_what_is_missing() {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = dir.path().join("r.json");
    let mut cmd = std::process::Command::new(common::pmet_bin());
    cmd.args(["trace", "-o"])
        .arg(&out)
        .args(["--", "sh", "-c", "exit 3"]);
    if root {
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pmet: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("CAP_BPF") && warnings[0].contains("sudo pmet"),
        "{}",
        warnings[0]
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(r["collector"]["ebpf"], false);
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["totals"]["net"], serde_json::Value::Null);
    assert_eq!(r["processes"][0]["net"], serde_json::Value::Null);
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

#[test]
fn malformed_exporter_addresses_exit_2_before_launching_anything() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    for (flag, value, says) in [
        ("--prometheus", "localhost", "no port"),
        ("--prometheus", "127.0.0.1:http", "the port is not a number"),
        (
            "--prometheus",
            "no.such.host.invalid:9464",
            "not an address",
        ),
        (
            "--otlp",
            "https://collector:4318",
            "give an http:// address",
        ),
        ("--otlp", "http://collector", "give the port too"),
        ("--pushgateway", "pg:9091", "give an http:// address"),
    ] {
        let run = pmet(&[
            "trace",
            flag,
            value,
            "--",
            "touch",
            marker.to_str().unwrap(),
        ]);
        assert_eq!(run.code, Some(2), "{flag} {value}: {}", run.stderr);
        let e = one_line_error(&run.stderr);
        assert!(e.contains(value) && e.contains(says), "{e}");
        assert!(!marker.exists(), "{flag} {value}: nothing was launched");
    }
}
