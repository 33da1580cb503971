//! pmet's developer tasks. `cargo xtask setup` installs what building the
//! eBPF side needs (idempotent: each step is skipped when already done);
//! `test`, `lint` and `demo` run setup first, so a fresh machine needs nothing
//! else.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;

/// The bpf-linker that links with this toolchain's LLVM (see PLATFORM.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM major version of the Rust toolchain, which bpf-linker must match.
const LLVM_MAJOR: &str = "22";
/// Debian packages bpf-linker builds against.
const APT_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// Debian packages the test suite drives pmet with (tmux: the live view in a
/// real terminal; chromium: the HTML report in a real browser; iproute2 and
/// nftables: a network namespace whose firewall makes TCP retransmit;
/// prometheus and prometheus-pushgateway: a real server to scrape pmet and
/// a real gateway to push to, and promtool).
const TEST_PACKAGES: [&str; 7] = [
    "systemd",
    "tmux",
    "chromium",
    "iproute2",
    "nftables",
    "prometheus",
    "prometheus-pushgateway",
];

#[derive(Parser)]
#[command(about = "pmet's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs: Debian LLVM packages, bpf-linker, rust-src.
    Setup,
    /// Set up, build, and run the whole test suite (eBPF tests need root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then check formatting and run clippy on both sides of the kernel boundary.
    Lint,
    /// Set up, build, and trace a small real workload (a web server and its clients).
    Demo,
    /// Measure pmet's cost and accuracy beside bpftrace, nethogs, psrecord,
    /// pidstat and /usr/bin/time (installed as needed); writes target/bench/report.md.
    Bench {
        /// Rounds per comparison.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Smaller workloads, for a quick look.
        #[arg(long)]
        quick: bool,
        /// Run only these sections (comma-separated): exec, network,
        /// compute, startup, scale, capacity; and agent (ten minutes of
        /// churn under `pmet agent`, one with --quick), run only when named.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

/// Debian packages of the tools the bench compares with.
const BENCH_PACKAGES: [&str; 4] = ["bpftrace", "nethogs", "sysstat", "time"];

fn bench(rounds: usize, quick: bool, only: Vec<String>) -> Result<()> {
    setup()?;
    setup_apt(&BENCH_PACKAGES)?;
    if output(Command::new("psrecord").arg("--help")).is_none() {
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "psrecord==1.4"]))?;
    }
    run(cargo().args(["build", "--release", "-p", "pmet", "-p", "pmet-tests"]))?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let md = bench::run(
        &root(),
        target.join("release").join("pmet"),
        target.join("release").join("workload"),
        &bench::Opts {
            rounds,
            quick,
            only,
        },
    )?;
    let out = target.join("bench").join("report.md");
    std::fs::write(&out, &md)?;
    println!("{md}");
    eprintln!("xtask: written to {}", out.display());
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.stderr(Stdio::null()).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// Runs as root, or through sudo when not root.
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn toolchain() -> String {
    env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| {
        output(Command::new("rustup").args(["show", "active-toolchain"]))
            .and_then(|s| s.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "stable".into())
    })
}

fn setup_rust_src() -> Result<()> {
    let tc = toolchain();
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &tc,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: rust-src present for {tc}");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &tc]))
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn setup_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages present");
        return Ok(());
    }
    let has_candidate = |p: &str| {
        output(Command::new("apt-cache").args(["policy", p]))
            .is_some_and(|s| s.contains("Candidate:") && !s.contains("Candidate: (none)"))
    };
    if !missing.iter().all(|p| has_candidate(p)) {
        run(privileged("apt-get").arg("update"))?;
    }
    run(privileged("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn setup_bpf_linker() -> Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: {} present", have.trim());
        return Ok(());
    }
    setup_apt(&APT_PACKAGES)?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
            "--force",
        ])
        // Without it the link looks for a bare -lLLVM and fails.
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")))
}

fn setup() -> Result<()> {
    setup_rust_src()?;
    setup_bpf_linker()?;
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// PyPI packages the test suite uses: a real OTLP protobuf decoder for the
/// OTLP exporter's test.
const TEST_PIP: [&str; 1] = ["opentelemetry-proto"];

fn test(args: &[String]) -> Result<()> {
    setup()?;
    setup_apt(&TEST_PACKAGES)?;
    let have = output(Command::new("python3").args([
        "-c",
        "import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
    ]))
    .is_some();
    if !have {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(TEST_PIP))?;
    }
    run(cargo().args(["build", "--workspace", "--all-targets"]))?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let pmet = target.join("debug").join("pmet");
    if !is_root() {
        eprintln!(
            "xtask: not root: tests that load eBPF will be skipped (in CI they fail instead); \
             run `sudo -E cargo xtask test` for the full suite"
        );
    }
    run(cargo()
        .args(["test", "--workspace"])
        .args(args)
        .env("PMET_BIN", pmet))
}

fn lint() -> Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // The host pass covers userspace, shared types, tests and xtask; the
    // kernel side is also linted for the BPF target, where its real code is.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .current_dir(root().join("pmet-ebpf"))
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("RUSTC_BOOTSTRAP", "1"))
}

fn demo() -> Result<()> {
    setup()?;
    run(cargo().args(["build", "--release", "-p", "pmet"]))?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let pmet = target.join("release").join("pmet");
    let report = target.join("demo-report.json");
    let script = root().join("examples").join("web.py");
    let mut cmd = privileged(pmet.to_str().context("non-UTF-8 target path")?);
    cmd.arg("trace")
        .arg("-o")
        .arg(&report)
        .args(["--", "python3"])
        .arg(&script);
    run(&mut cmd)?;
    eprintln!("xtask: the full report is in {}", report.display());
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Test { args } => test(&args),
        Task::Lint => lint(),
        Task::Demo => demo(),
        Task::Bench {
            rounds,
            quick,
            only,
        } => bench(rounds, quick, only),
    }
}
