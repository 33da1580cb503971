//! pmet's developer tasks. `cargo xtask setup` installs what building the
//! eBPF side needs (idempotent: each step is skipped when already done);
//! `test`, `lint` and `demo` run setup first, so a fresh machine needs nothing
//! else.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod bench;
mod kernels;

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
/// a real gateway to push to, and promtool; prometheus-node-exporter: its
/// textfile collector reading pmet's textfiles).
const TEST_PACKAGES: [&str; 9] = [
    "python3-venv",
    "systemd",
    "tmux",
    "chromium",
    "iproute2",
    "nftables",
    "prometheus",
    "prometheus-pushgateway",
    "prometheus-node-exporter",
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
    /// Only the Python package's part of `test`: pip install into a fresh
    /// venv, pytest as root and as an ordinary user, mypy, the abi3 wheel.
    TestPython,
    /// Set up, then check formatting and run clippy on both sides of the kernel boundary.
    Lint,
    /// Build the binary that starts on any x86-64 Linux (static, musl):
    /// target/dist/pmet-VERSION-x86_64-linux-musl and its .sha256.
    Dist,
    /// Boot each kernel of the matrix (Debian 11, 12 and 13's, fetched by
    /// package name, pinned) in qemu and run pmet's exact-truth tests inside
    /// it, and the same tests on this machine's kernel; print kernel × test.
    TestKernels {
        /// Only these kernels (e.g. `6.1`, comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Only these tests (names from `xtask/src/kernels.rs`).
        #[arg(long, value_delimiter = ',')]
        tests: Vec<String>,
        /// Kernels whose failures are printed but do not fail the task
        /// (e.g. `5.10`, while the issue that tracks it is open).
        #[arg(long, value_delimiter = ',')]
        known_failing: Vec<String>,
        /// Also time the exec storm and a TCP transfer untraced and traced,
        /// in each VM and here (ratios only compare within one machine).
        #[arg(long)]
        bench: bool,
    },
    /// On a machine with an NVIDIA GPU: pmet's GPU figures against
    /// nvidia-smi's for a job with a known footprint and an idle process
    /// (xtask/src/gpu/check.py; runs with a prebuilt pmet and python3
    /// alone where nothing can be installed: `python3
    /// xtask/src/gpu/check.py target/release/pmet`).
    GpuCheck,
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
        /// Shell loops the exec storm runs at once, each its own 3,000 execs
        /// (8 on a 16-core machine: a parallel build's exec path).
        #[arg(long, default_value_t = 1)]
        loops: usize,
        /// Measure this pmet binary, built elsewhere: nothing is installed or
        /// built, and tools that are missing get "not installed" rows (for a
        /// lent machine without a package registry). Needs --workload.
        #[arg(long, requires = "workload")]
        pmet: Option<PathBuf>,
        /// The test helper `workload` built beside that pmet.
        #[arg(long, requires = "pmet")]
        workload: Option<PathBuf>,
    },
}

/// Debian packages of the tools the bench compares with.
const BENCH_PACKAGES: [&str; 4] = ["bpftrace", "nethogs", "sysstat", "time"];

fn bench(opts: bench::Opts, prebuilt: Option<(PathBuf, PathBuf)>) -> Result<()> {
    let (root, pmet, workload) = match prebuilt {
        // Run where it stands: the source tree may not be where it was built.
        Some((pmet, workload)) => (env::current_dir()?, pmet, workload),
        None => {
            setup()?;
            setup_apt(&BENCH_PACKAGES)?;
            if output(Command::new("psrecord").arg("--help")).is_none() {
                run(Command::new("python3").args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "psrecord==1.4",
                ]))?;
            }
            run(cargo().args(["build", "--release", "-p", "pmet", "-p", "pmet-tests"]))?;
            let release = target_dir().join("release");
            (root(), release.join("pmet"), release.join("workload"))
        }
    };
    let md = bench::run(&root, pmet, workload, &opts)?;
    let out = root.join("target").join("bench").join("report.md");
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
    let target = target_dir();
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
        .env("PMET_BIN", &pmet))?;
    // A filter picks Rust tests; the whole run includes the Python package
    // and, as root, the kernel matrix.
    if args.is_empty() {
        python_tests(&pmet, &target)?;
        if is_root() {
            kernels::test_kernels(&kernels::Opts::default())?;
        } else {
            eprintln!(
                "xtask: not root: the kernel matrix is not run (`sudo -E cargo xtask test-kernels`)"
            );
        }
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A Python 3.12 interpreter: on PATH (a pyenv shim answers only when 3.12
/// is selected), in pyenv's versions, or Debian's.
fn python312() -> Option<String> {
    let works = |p: &str| {
        output(Command::new(p).args(["-c", "import sys; print(sys.executable)"]))
            .map(|s| s.trim().to_owned())
    };
    if let Some(p) = works("python3.12") {
        return Some(p);
    }
    let pyenv = env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))?;
    let mut found: Vec<PathBuf> = fs::read_dir(pyenv.join("versions"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("3.12"))
        })
        .map(|p| p.join("bin").join("python3.12"))
        .collect();
    found.sort();
    found.push("/usr/bin/python3.12".into());
    found.iter().rev().find_map(|p| works(&p.to_string_lossy()))
}

/// The Python package (`pmet-py`): built and installed with pip into a
/// fresh venv as a user would (`pip install ./pmet-py`), its pytest suite
/// run as root (eBPF) and as an ordinary user (procfs), its type stubs
/// checked with mypy, and the abi3 wheel built with maturin and installed on
/// Python 3.12 too.
fn python_tests(pmet: &Path, target: &Path) -> Result<()> {
    let py = target.join("py");
    let venv = py.join("venv-3.11");
    if venv.exists() {
        fs::remove_dir_all(&venv)?;
    }
    fs::create_dir_all(&py)?;
    // Debian's interpreter: an ordinary user can run it (pyenv's live
    // under /root).
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv))?;
    let bin = |name: &str| venv.join("bin").join(name);
    run(Command::new(bin("pip"))
        .args(["install", "--quiet", "pytest", "mypy", "maturin>=1.16,<2"])
        .arg(root().join("pmet-py")))?;
    let tests = root().join("pmet-py").join("tests");
    let pytest = |c: &mut Command| {
        c.args(["-m", "pytest", "-p", "no:cacheprovider", "-v"])
            .arg(&tests)
            .env("PMET_BIN", pmet)
            .current_dir(&tests);
    };
    let mut as_is = Command::new(bin("python"));
    pytest(&mut as_is);
    run(&mut as_is)?;
    if is_root() {
        // The same suite as nobody: the procfs backend's tests.
        let mut user = Command::new("setpriv");
        user.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            "HOME=/tmp",
        ])
        .arg(bin("python"));
        pytest(&mut user);
        run(&mut user)?;
    }
    let typing = tests.join("typecheck");
    run(Command::new(bin("python"))
        .args(["-m", "mypy", "--strict", "--no-incremental"])
        .arg(typing.join("uses.py")))?;
    let wrong = Command::new(bin("python"))
        .args(["-m", "mypy", "--strict", "--no-incremental"])
        .arg(typing.join("wrong.py"))
        .status()?;
    ensure!(
        !wrong.success(),
        "mypy accepted pmet-py/tests/typecheck/wrong.py: the stubs no longer type report fields"
    );
    // The wheel, as released: one abi3 wheel for every CPython from 3.11.
    let wheels = py.join("wheels");
    if wheels.exists() {
        fs::remove_dir_all(&wheels)?;
    }
    run(Command::new(bin("maturin"))
        .args(["build", "--release", "--quiet", "-o"])
        .arg(&wheels)
        .arg("-m")
        .arg(root().join("pmet-py").join("Cargo.toml")))?;
    let wheel = fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("maturin wrote no wheel")?;
    let name = wheel.file_name().unwrap_or_default().to_string_lossy();
    ensure!(name.contains("abi3"), "{name}: not an abi3 wheel");
    let py312 = python312().context(
        "python3.12 is needed to check the wheel on 3.12: none on PATH, in pyenv's versions or in /usr (this machine kind has pyenv's)",
    )?;
    // The one wheel on both: Debian's 3.11 and a 3.12.
    for (minor, python) in [(11, "/usr/bin/python3".to_owned()), (12, py312)] {
        let venv = py.join(format!("wheel-3.{minor}"));
        if venv.exists() {
            fs::remove_dir_all(&venv)?;
        }
        run(Command::new(python.trim()).args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet"])
            .arg(&wheel))?;
        run(Command::new(venv.join("bin").join("python")).args([
            "-c",
            &format!(
                "import sys, pmet; assert sys.version_info[:2] == (3, {minor}); \
                 r = pmet.trace(['sh', '-c', 'exit 3']); assert r.exit_code == 3, r; \
                 print('pmet', pmet.__version__, 'wheel on', sys.version.split()[0], 'with', r.collector.ebpf and 'ebpf' or 'procfs')"
            ),
        ]))?;
    }
    Ok(())
}

/// The static target: no glibc to match on the host it runs on.
const DIST_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the static binary, copies it to target/dist with its checksum,
/// and returns its path. musl rather than an old glibc: the binary then
/// needs no C library at all (glibc 2.17 hosts and distroless containers
/// alike), and both the target (rustup) and the C compiler the bundled
/// SQLite needs (Debian's musl-tools) install here. The cost: a static
/// binary cannot load NVML, so GPU figures are null there with the reason
/// (the glibc build keeps them).
fn dist() -> Result<PathBuf> {
    setup()?;
    setup_apt(&["musl-tools"])?;
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == DIST_TARGET) {
        run(Command::new("rustup").args(["target", "add", DIST_TARGET]))?;
    }
    run(cargo().args(["build", "--release", "-p", "pmet", "--target", DIST_TARGET]))?;
    let built = target_dir().join(DIST_TARGET).join("release").join("pmet");
    let dir = target_dir().join("dist");
    fs::create_dir_all(&dir)?;
    let name = format!("pmet-{}-x86_64-linux-musl", env!("CARGO_PKG_VERSION"));
    let out = dir.join(&name);
    fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    run(Command::new("strip").arg(&out))?;
    let sum = output(Command::new("sha256sum").arg(&name).current_dir(&dir))
        .context("sha256sum failed")?;
    fs::write(dir.join(format!("{name}.sha256")), sum)?;
    // It must start with no C library beside it.
    let ldd = Command::new("ldd").arg(&out).output()?;
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    ensure!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "{} is not static: {said}",
        out.display()
    );
    Ok(out)
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
    let target = target_dir();
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
        Task::TestPython => {
            setup()?;
            setup_apt(&TEST_PACKAGES)?;
            run(cargo().args(["build", "-p", "pmet"]))?;
            let target = target_dir();
            python_tests(&target.join("debug").join("pmet"), &target)
        }
        Task::Lint => lint(),
        Task::Dist => dist().map(|p| eprintln!("xtask: {}", p.display())),
        Task::TestKernels {
            only,
            tests,
            known_failing,
            bench,
        } => kernels::test_kernels(&kernels::Opts {
            only,
            tests,
            known_failing,
            bench,
        }),
        Task::GpuCheck => {
            setup()?;
            run(cargo().args(["build", "--release", "-p", "pmet"]))?;
            let target = target_dir();
            run(Command::new("python3")
                .arg(root().join("xtask/src/gpu/check.py"))
                .arg(target.join("release").join("pmet"))
                .arg(target.join("gpu-check")))
        }
        Task::Demo => demo(),
        Task::Bench {
            rounds,
            quick,
            only,
            loops,
            pmet,
            workload,
        } => bench(
            bench::Opts {
                rounds,
                quick,
                only,
                loops,
            },
            pmet.zip(workload),
        ),
    }
}
