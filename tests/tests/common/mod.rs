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

/// Waits until the traced command has created `path` (its way of saying it
/// is ready); fails the test after 20 s.
pub fn wait_for_file(path: &std::path::Path) {
    let t0 = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed().as_secs() < 20,
            "the command never created {}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A JSON file pmet wrote (a report, trace events), parsed.
pub fn read_json(path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `net.<proto>.<dir>_bytes` of a process.
pub fn net(p: &Value, proto: &str, dir: &str) -> u64 {
    p["net"][proto][format!("{dir}_bytes")]
        .as_u64()
        .unwrap_or_else(|| panic!("no net.{proto}.{dir}_bytes in {p:#}"))
}

/// The home directory of `uid`, from the password database.
pub fn passwd_home(uid: u32) -> String {
    let text = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 5 && f[2] == uid.to_string()).then(|| f[5].to_owned())
        })
        .expect("uid in /etc/passwd")
}

/// The BPF programs a process holds, from its fds' fdinfo.
pub fn bpf_prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .flat_map(|t| {
                    t.lines()
                        .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                        .collect::<Vec<u32>>()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether a BPF program with this id is still loaded.
pub fn bpf_prog_exists(id: u32) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    // union bpf_attr for BPF_*_GET_FD_BY_ID: { u32 id; u32 next_id; u32 open_flags; }
    let mut attr = [0u32; 32];
    attr[0] = id;
    // SAFETY: the bpf syscall with a zeroed, large enough attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: fd just returned by the kernel.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// Starts pmet with `args` and `--ready`, and returns once pmet says it is
/// watching (what starts from then on is seen): the run, to join, and the
/// line pmet wrote. Fails the test, with pmet's stderr, if pmet ends first
/// or takes over 60 s.
pub fn pmet_when_ready(args: &[&str]) -> (std::thread::JoinHandle<Run>, Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    let mut with: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let at = with.iter().position(|a| a == "--").unwrap_or(with.len());
    with.insert(at, ready.display().to_string());
    with.insert(at, "--ready".into());
    let run = std::thread::spawn(move || {
        let args: Vec<&str> = with.iter().map(String::as_str).collect();
        pmet(&args)
    });
    let line = read_ready(&ready, || run.is_finished());
    if line.is_none() {
        let r = run.join().unwrap();
        panic!(
            "pmet ended (status {:?}) before saying it was ready:\n{}",
            r.code, r.stderr
        );
    }
    (run, line.unwrap())
}

/// The line pmet wrote to its `--ready` file, once written; `None` if
/// `ended` says pmet ended first. Fails the test after 60 s.
pub fn read_ready(path: &std::path::Path, ended: impl Fn() -> bool) -> Option<Value> {
    let t0 = std::time::Instant::now();
    let read = || {
        let line = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.strip_suffix('\n').map(str::to_owned))?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("--ready line {line:?}: {e}")))
    };
    loop {
        if let Some(v) = read() {
            return Some(v);
        }
        if ended() {
            // A quick command can be done between the look and this check:
            // what pmet wrote before it ended still counts.
            return read();
        }
        assert!(t0.elapsed().as_secs() < 60, "pmet never said it was ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
