//! Running the real pmet binary and reading its report.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::OnceLock,
};

use serde_json::Value;

/// The pmet binary: `PMET_BIN`, or built here once with cargo.
pub fn pmet_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PMET_BIN") {
            return p.into();
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "pmet", "--bin", "pmet"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building pmet failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("pmet")
    })
    .clone()
}

/// The workload helper.
pub fn workload() -> &'static str {
    env!("CARGO_BIN_EXE_workload")
}

/// Whether this test can load eBPF. Without root it skips, unless `CI` is
/// set: CI runs as root, so there a missing privilege is a failure.
pub fn can_trace() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the tests are not running as root: eBPF tests cannot be skipped in CI"
        );
        eprintln!("skipping: needs root to load eBPF (run the suite with sudo)");
    }
    root
}

/// One run of `pmet trace`.
pub struct Run {
    /// pmet's exit status.
    pub code: Option<i32>,
    /// The JSON report, if one was written.
    pub report: Option<Value>,
    /// pmet's stderr.
    pub stderr: String,
    /// pmet's stdout.
    pub stdout: String,
}

impl Run {
    /// The report; panics with pmet's stderr when there is none.
    pub fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no report; pmet said:\n{}", self.stderr))
    }

    /// Processes whose argv[1] (the workload role) is `role`.
    pub fn by_role(&self, role: &str) -> Vec<&Value> {
        self.report()["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter(|p| p["argv"].get(1).and_then(Value::as_str) == Some(role))
            .collect()
    }

    /// The one process whose role is `role`.
    pub fn one(&self, role: &str) -> &Value {
        let v = self.by_role(role);
        assert_eq!(
            v.len(),
            1,
            "expected one `{role}` process, got {}: {:#?}",
            v.len(),
            v
        );
        v[0]
    }
}

/// Runs pmet with `args`, writing its report to a temporary file.
pub fn pmet(args: &[&str]) -> Run {
    pmet_with(args, |_| {})
}

/// Like [`pmet`], with a chance to adjust the command first.
pub fn pmet_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let mut cmd = Command::new(pmet_bin());
    let (head, tail) = match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i..]),
        None => (args, &[][..]),
    };
    cmd.args(head).arg("-o").arg(&out).args(tail);
    adjust(&mut cmd);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run pmet");
    let report = std::fs::read(&out)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("report is valid JSON"));
    Run {
        code: status.code(),
        report,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
    }
}

/// `net.<proto>.<dir>_bytes` of a process.
pub fn net(p: &Value, proto: &str, dir: &str) -> u64 {
    p["net"][proto][format!("{dir}_bytes")]
        .as_u64()
        .unwrap_or_else(|| panic!("no net.{proto}.{dir}_bytes in {p:#}"))
}
