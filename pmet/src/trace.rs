//! One tracing session, start to finish: check the inputs, load the kernel
//! side (or fall back to polling), launch or attach, merge events, exit
//! records and samples into the tree until the last process is gone, then
//! report.

use std::{
    ffi::OsString,
    io::Write,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    time::{Duration, SystemTime},
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::Instant,
};

use crate::{
    collect::{
        ebpf::{self, Kernel},
        procfs::Procfs,
        taskstats::{Listener, TaskStats},
    },
    error::Error,
    launch::{self, Prepared},
    lifecycle::{Action, Lifecycle, Target},
    model::{snapshot::Snapshot, tree::ExitStatus},
    privileges::{self, Account},
    render::{sink::Sink, trace_events::write_trace_events},
    report::Output,
    report::{self, Collector, Host, OutputTarget, Report, RunInfo},
    session::{self, SUSPECT_GRACE, Session, Settle},
    signals,
};

/// Whether to use eBPF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EbpfMode {
    /// Use it; fall back to polling with a warning when it cannot load.
    Auto,
    /// Poll /proc only (`--no-ebpf`).
    Off,
    /// Use it, or fail (the Python package's `backend="ebpf"`).
    Required,
}

pub use crate::lifecycle::Descendants;

/// What to trace and how.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The command to launch (empty when attaching).
    pub command: Vec<OsString>,
    /// The process to attach to.
    pub pid: Option<u32>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// When the duration runs out on the launched command, exit with its own
    /// status rather than 124 (`timeout --preserve-status`).
    pub preserve_status: bool,
    /// Adaptive sampling bounds: (shortest, first, longest).
    pub intervals: (Duration, Duration, Duration),
    /// Where the JSON report goes.
    pub output: Option<OutputTarget>,
    /// Where per-sample lines go instead of stderr (`--stream`).
    pub stream: Option<std::path::PathBuf>,
    /// Where Chrome/Perfetto trace events go (`--trace-events`).
    pub trace_events: Option<std::path::PathBuf>,
    /// Told one line once pmet is watching (`--ready`).
    pub ready: Option<std::path::PathBuf>,
    /// Follow only the root.
    pub exclude_children: bool,
    /// Attach mode: count CPU and disk from each process's start.
    pub since_process_start: bool,
    /// eBPF or polling.
    pub ebpf: EbpfMode,
    /// `--user`.
    pub user: Option<String>,
    /// `--record`: the history store must be usable before launch.
    pub record: bool,
    /// Launch mode: what to do with descendants when the command exits.
    pub descendants: Descendants,
    /// Threads listed per process in the report (the rest summed).
    pub max_threads_listed: usize,
    /// Connections listed per process in the report (the rest summed).
    pub max_connections: usize,
    /// smaps_rollup is not read.
    pub no_pss: bool,
    /// The exporters.
    pub export: crate::export::Settings,
    /// `pmet agent`: ended processes are forgotten once exported, and
    /// SIGHUP re-reads this config file (if any).
    pub agent: Option<Agent>,
    /// Host-wide (`--all`): `pid` is 1, and pmet leaves itself out.
    pub all: bool,
    /// A cgroup's processes (`--cgroup`).
    pub cgroup: Option<String>,
    /// A container's processes (`--container`).
    pub container: Option<String>,
    /// Which environment values are kept (names always are).
    pub env_policy: crate::model::env::EnvPolicy,
    /// The command's whole environment, instead of pmet's own.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// The directory the command starts in, instead of pmet's own.
    pub cwd: Option<std::path::PathBuf>,
    /// pmet runs inside another program (the Python package): the process
    /// is not pmet's alone, so it does not become a subreaper and reaps its
    /// command only, never another child of that program.
    pub embedded: bool,
}

/// What a program embedding pmet asks of a running session.
#[derive(Debug)]
pub enum Control {
    /// A sample now, sent back (also shown as any sample is).
    Sample(std::sync::mpsc::Sender<Snapshot>),
    /// As if pmet had been sent this signal by another process: SIGINT or
    /// SIGTERM is passed on to the command's tree, which is then waited
    /// for (SIGTERM: a grace, then the report regardless).
    Signal(i32),
}

/// A running session's line to the program embedding it.
#[derive(Debug)]
pub struct Remote {
    /// Its requests.
    pub requests: mpsc::UnboundedReceiver<Control>,
    /// Told once, when the command has started (or the process is
    /// attached to): its pid, and whether the kernel side is used.
    pub started: std::sync::mpsc::Sender<Begun>,
}

/// A session under way, as [`Remote::started`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begun {
    /// The command's (or the attached process's) pid.
    pub pid: u32,
    /// eBPF is in use (else /proc polling).
    pub ebpf: bool,
}

/// `pmet agent`'s own settings.
#[derive(Clone, Debug, Default)]
pub struct Agent {
    /// Re-read on SIGHUP.
    pub config: Option<std::path::PathBuf>,
}

/// What stays loaded until dropped: the kernel programs and the taskstats
/// registration. Detaching takes a few hundred milliseconds (one RCU grace
/// period per classic tracepoint), so callers drop it after showing results.
pub struct Loaded {
    _kernel: Option<Kernel>,
    _taskstats: Option<Listener>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loaded")
    }
}

/// How a session ended.
#[derive(Debug)]
pub struct Outcome {
    /// The kernel side, still attached; drop it to detach.
    pub loaded: Loaded,
    /// The report (already written when an output was given). When the run
    /// wrote its ended processes out as it went (more than
    /// [`report::spill::SPILL_AFTER`] of them), `processes` is empty: they
    /// are in the written report only, and in `briefs`.
    pub report: Report,
    /// Every process in brief, in report order, when `report.processes` is
    /// empty for that reason.
    pub briefs: Option<Vec<report::Brief>>,
    /// The status pmet should exit with.
    pub exit_code: i32,
    /// Writing the report failed (the summary is still shown).
    pub write_error: Option<Error>,
    /// Writing `--trace-events` failed.
    pub trace_events_error: Option<Error>,
}

/// After taking in kernel events, wait this long before the next look, so a
/// storm of events costs one wakeup per batch rather than one per event.
/// Fewer, larger batches cost pmet less for the same events: each event is
/// taken in on caches the traced workload has just cooled, at a cost that a
/// larger batch spreads, and the working directories of the processes alive
/// at a batch's end are read (~60 µs each). Not the wakeups themselves:
/// sparing the ring's wakeups between batches saved nothing. 50 ms rather
/// than 20 took a 3,000-exec storm's run from ~22 to ~17.5 ms of CPU.
/// Events wait at most this long (the ring holds 8 MB, ~3,600 execs at
/// 2.3 KB each: 72,000 a second for 50 ms, where the bench's fork storm runs
/// ~3,400 a second on 2 CPUs and on 16). A working directory is read for
/// the processes still alive when their exec is taken in, so fewer of those
/// that live under 50 ms have one.
const BATCH: Duration = Duration::from_millis(50);
/// Ended processes are written out at most this often between samples.
const SPILL_EVERY: Duration = Duration::from_millis(250);
/// A tree using more CPU than this (percent of a core) counts as busy.
const BUSY_CPU_PCT: f64 = 5.0;

/// Tells systemd (`Type=notify`, which sets `$NOTIFY_SOCKET`) that the
/// service is up: sd_notify(3)'s `READY=1`, one datagram.
fn notify_systemd_ready() {
    use std::os::{linux::net::SocketAddrExt, unix::net};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => net::SocketAddr::from_abstract_name(name),
        None => net::SocketAddr::from_pathname(&path),
    };
    let sent = net::UnixDatagram::unbound()
        .and_then(|s| addr.and_then(|a| s.send_to_addr(b"READY=1", &a)));
    if let Err(e) = sent {
        log::warn!("telling systemd READY=1 at NOTIFY_SOCKET: {e}");
    }
}

/// `CLOCK_BOOTTIME` now, in ns: the clock of kernel events and /proc start times.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A borrowed fd for the reactor (the owner outlives the AsyncFd).
struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers an fd with the reactor.
fn watch<T: AsRawFd>(x: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: every fd watched here stays open, unchanged, until its AsyncFd
    // is dropped: the owners (the kernel maps, the logger, the pidfd) are
    // dropped only after the AsyncFds, at the end of `trace`.
    unsafe { AsyncFd::register_with_interest(x, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

/// Adaptive sampling: faster while the tree is busy or changing, slower
/// when it is idle.
struct Pace {
    min: Duration,
    now: Duration,
    max: Duration,
    last_shape: (usize, usize),
}

impl Pace {
    fn after(&mut self, s: &Snapshot) -> Duration {
        let shape = (s.seen, s.alive);
        let busy = s.cpu_pct > BUSY_CPU_PCT || shape != self.last_shape;
        self.last_shape = shape;
        self.now = if busy {
            (self.now / 2).max(self.min)
        } else {
            self.now.mul_f64(1.5).min(self.max)
        };
        self.now
    }
}

/// Sends `sig` to every process of the tree still running: only to the
/// instance pmet follows, never to a process that reused a pid.
fn signal_tree(s: &Session<Kernel, Procfs>, sig: i32) {
    for pid in s.live_pids() {
        // SAFETY: kill with plain integers.
        if unsafe { libc::kill(pid as i32, sig) } != 0 {
            log::debug!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
    }
}

/// This machine's name, for the Pushgateway's `instance`.
fn host_name() -> String {
    sysinfo::System::host_name()
        .ok()
        .unwrap_or_else(|| "unknown".into())
}

fn host() -> Host {
    let memory_bytes = sysinfo::System::new()
        .map(|mut sys| {
            sys.refresh_memory();
            sys.total_memory()
        })
        .unwrap_or(0);
    Host {
        hostname: sysinfo::System::host_name().ok(),
        kernel: sysinfo::System::kernel_version().ok(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes,
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// pmet's own CPU seconds and peak RSS so far (its children excluded).
fn self_usage() -> (f64, u64) {
    let ru = rusage();
    // Not ru_maxrss: it carries over the peak of whatever process image
    // exec'd pmet (a shell, a CI runner). VmHWM is this image's own.
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let [hwm] = crate::collect::procfs::fields(&s, ["VmHWM"]);
            hwm
        })
        .unwrap_or(ru.ru_maxrss as u64 * 1024);
    (cpu_of(&ru), hwm)
}

/// pmet's CPU seconds so far, every thread's (to the microsecond).
fn self_cpu() -> f64 {
    cpu_of(&rusage())
}

fn rusage() -> libc::rusage {
    // SAFETY: valid pointer to a zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru
}

fn cpu_of(ru: &libc::rusage) -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ((secs(ru.ru_utime) + secs(ru.ru_stime)) * 1e6).round() / 1e6
}

fn status_from_wait(raw: i32) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        ExitStatus::Signal {
            signal: libc::WTERMSIG(raw),
            core_dumped: libc::WCOREDUMP(raw),
        }
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(raw))
    }
}

/// Whether pmet must keep CAP_BPF to read its maps on this kernel.
fn keep_bpf(s: &Session<Kernel, Procfs>) -> bool {
    let Some(k) = s.kernel.as_ref() else {
        return false;
    };
    let keep = privileges::bpf_needs_capability(|| k.reads_maps());
    if keep {
        log::debug!("this kernel needs CAP_BPF to read pmet's maps: it is kept");
    }
    keep
}

/// Loads the kernel side, or says why it cannot.
pub(crate) fn load_kernel(follow_children: bool, scope: bool) -> Result<Kernel, Error> {
    privileges::check_ebpf()?;
    privileges::check_pid_namespace()?;
    // A test switch: the classic tracepoints, as on a kernel whose BTF lacks
    // what the BTF hooks need, so CI checks that fallback too.
    let classic = std::env::var_os("PMET_TEST_CLASSIC").is_some();
    if classic {
        log::warn!("PMET_TEST_CLASSIC: using the classic process and socket tracepoints");
    }
    let t0 = std::time::Instant::now();
    let probe = ebpf::Probe::of_this_kernel(classic);
    log::debug!("kernel probed (BTF, tracefs) in {:?}", t0.elapsed());
    if probe.task.is_none()
        && let Err(e) = &probe.facts.task_btf
    {
        log::warn!("{e}; final CPU and disk figures will come from taskstats only");
    }
    let mut flags = 0;
    if follow_children {
        flags |= pmet_common::config_flags::FOLLOW_CHILDREN;
    }
    if scope {
        flags |= pmet_common::config_flags::CGROUP_SCOPE;
    }
    Kernel::load(&probe, flags)
}

fn child_env(account: Option<&Account>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    if let Some(a) = account {
        for (k, v) in [
            ("HOME", a.home.clone().into_os_string()),
            ("USER", a.name.clone().into()),
            ("LOGNAME", a.name.clone().into()),
        ] {
            env.retain(|(key, _)| key != k);
            env.push((k.into(), v));
        }
    }
    env
}

/// What was checked and opened before anything is loaded or launched.
struct Inputs {
    euid: u32,
    /// The report, trace events: anchored, written as the invoking user.
    output: Option<Output>,
    trace_events: Option<Output>,
    /// Told once pmet is watching (`--ready`).
    ready: Option<Output>,
    /// The per-sample lines' destination.
    stream: Box<dyn Write + Send>,
    /// The command, ready to start (launch mode).
    prepared: Option<Prepared>,
    /// The exporters' socket, textfile and gateway, opened before launching.
    endpoints: Option<crate::export::Endpoints>,
    /// Who files are written as.
    owner: Option<privileges::Credentials>,
    /// The cgroups followed (`--cgroup`, `--container`).
    scope: Option<crate::collect::cgroup::Scope>,
}

/// Checks every input, in the order a person would fix them, and creates
/// nothing for a request that cannot succeed.
fn check_inputs(opts: &TraceOptions, procfs: &Procfs) -> Result<Inputs, Error> {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    let (sudo_uid, sudo_gid) = (
        std::env::var("SUDO_UID").ok(),
        std::env::var("SUDO_GID").ok(),
    );
    // Files are written as the user who asked for them, whoever the command
    // runs as.
    let owner = privileges::invoking_user(sudo_uid.as_deref(), sudo_gid.as_deref(), euid)?
        .map(|a| a.credentials());
    let account = match opts.pid {
        None => privileges::command_account(
            opts.user.as_deref(),
            sudo_uid.as_deref(),
            sudo_gid.as_deref(),
            euid,
        )?,
        Some(_) => None,
    };
    let output = opts
        .output
        .as_ref()
        .map(|o| o.prepare(owner.as_ref(), "-o"))
        .transpose()?;
    let prepare_file = |p: &std::path::PathBuf, option| {
        OutputTarget::File(p.clone()).prepare(owner.as_ref(), option)
    };
    let trace_events = opts
        .trace_events
        .as_ref()
        .map(|p| prepare_file(p, "--trace-events"))
        .transpose()?;
    let ready = opts
        .ready
        .as_ref()
        .map(|p| prepare_file(p, "--ready"))
        .transpose()?;
    let stream_out = opts
        .stream
        .as_ref()
        .map(|p| prepare_file(p, "--stream"))
        .transpose()?;
    let endpoints = opts
        .export
        .any()
        .then(|| crate::export::Endpoints::open(&opts.export, owner.as_ref(), None))
        .transpose()?;
    if opts.record {
        crate::commands::check_record()?;
    }
    let scope = match (&opts.cgroup, &opts.container) {
        (Some(path), _) => Some(crate::collect::cgroup::scope_at(path).map_err(Error::Usage)?),
        (None, Some(id)) => {
            Some(crate::collect::cgroup::container_scope(id).map_err(Error::Usage)?)
        }
        (None, None) => None,
    };
    if let Some(sc) = &scope
        && !sc.pids.iter().any(|&p| p != std::process::id())
    {
        return Err(Error::Usage(format!(
            "cgroup {} has no processes to follow; start them first, or trace a command with `pmet trace -- CMD`",
            sc.path
        )));
    }
    let prepared = match opts.pid {
        None if scope.is_some() => None,
        None => {
            let p = Prepared::new(
                &opts.command,
                opts.env
                    .clone()
                    .unwrap_or_else(|| child_env(account.as_ref())),
                account.as_ref().map(Account::credentials),
            )?;
            Some(match &opts.cwd {
                Some(dir) => p.in_dir(dir)?,
                None => p,
            })
        }
        Some(pid) => {
            match procfs.stat(pid) {
                Ok(s) if s.state != 'Z' && s.state != 'X' => {}
                _ => return Err(Error::NoSuchPid(pid)),
            }
            None
        }
    };
    // The last check passed: only now is the stream created (or truncated).
    let stream: Box<dyn Write + Send> = match &stream_out {
        Some(o) => Box::new(std::io::LineWriter::new(o.open_stream()?)),
        None => Box::new(std::io::stderr()),
    };
    Ok(Inputs {
        euid,
        output,
        trace_events,
        ready,
        stream,
        prepared,
        endpoints,
        owner,
        scope,
    })
}

/// A session under way: the kernel side, taskstats, the tree, the command.
struct Started {
    s: Session<Kernel, Procfs>,
    listener: Option<Listener>,
    ts_rx: mpsc::UnboundedReceiver<Vec<TaskStats>>,
    root_pid: u32,
    /// Readable once the launched command exits.
    pidfd: Option<AsyncFd<OwnedFd>>,
    root_status: Option<ExitStatus>,
    launched: bool,
    start_ns: u64,
    started_at: SystemTime,
    command: Option<Vec<String>>,
    /// The exporters, when asked for.
    export: Option<crate::export::Running>,
    /// `pmet agent`.
    agent: Option<Agent>,
    /// Inside another program ([`TraceOptions::embedded`]).
    embedded: bool,
    /// Requests from the program embedding pmet.
    requests: Option<mpsc::UnboundedReceiver<Control>>,
    /// Who files are written as (a reload's textfile).
    owner: Option<privileges::Credentials>,
    /// The launched command, waiting to be let go.
    gate: Option<launch::Gated>,
    /// pmet passed a signal on to the whole tree: processes it reached may
    /// still be on their way out when the command has ended.
    signalled_tree: bool,
    /// Where ended processes go once the tree holds many (`None`: everything
    /// is held to the end, for `--record`, `--trace-events`, an embedding
    /// program, or `pmet agent`, which forgets them instead).
    spill: Option<report::spill::Spill>,
    /// When ended processes were last written out.
    spilled_at: Option<Instant>,
    /// pmet's CPU seconds when tracing began (the command let go, or the
    /// attach done): its start-up.
    startup_cpu: f64,
    /// Told once pmet is watching (`--ready`).
    ready: Option<Output>,
    /// Writing that line, beside the trace; waited for at the end (a run
    /// shorter than the write must not exit before it is said).
    ready_writer: Option<std::thread::JoinHandle<()>>,
}

impl Started {
    /// A sample now: shown, and exported.
    fn look(&mut self, sink: &mut Sink) -> Snapshot {
        let snap = self.s.tick(boottime_ns());
        sink.sample(&snap);
        self.export(snap.lost);
        self.spill_ended();
        snap
    }

    /// Says that pmet is watching: everything from now on is seen.
    fn say_ready(&mut self) {
        if let Some(out) = self.ready.take() {
            let line = format!(
                "{{\"ready\":true,\"pid\":{},\"ebpf\":{}}}\n",
                self.root_pid,
                self.s.kernel.is_some()
            );
            // Beside the trace: a FIFO's reader may take its time (up to
            // the FIFO patience), and nothing waits for it meanwhile.
            self.ready_writer = std::thread::Builder::new()
                .name("pmet-ready".into())
                .spawn(move || {
                    if let Err(e) = out.write(line.as_bytes()) {
                        log::warn!("{e}");
                    }
                })
                .ok();
        }
        // `pmet agent` under systemd (`Type=notify`) is up now.
        if self.agent.is_some() {
            notify_systemd_ready();
        }
    }

    /// Writes out the processes whose figures are final once the tree holds
    /// many, so memory follows the processes alive. After a sample: every
    /// process taken has been shown in one.
    fn spill_ended(&mut self) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        if self.s.tree.procs.len() <= report::spill::SPILL_AFTER {
            return;
        }
        self.spilled_at = Some(Instant::now());
        let gone = match self.export.as_ref() {
            Some(x) => self
                .s
                .prune_with_series(boottime_ns(), |p| x.exporter.forgettable(p)),
            None => self.s.prune_with_series(boottime_ns(), |_| true),
        };
        if gone.is_empty() {
            return;
        }
        if let Some(x) = self.export.as_mut() {
            let kernel_io = self.s.kernel.as_ref().is_some_and(|k| k.kernel_io);
            x.exporter.forget(
                gone.iter().map(|(p, _)| &**p),
                self.s.procfs.ticks_per_s,
                kernel_io,
                self.s.kernel.is_some(),
            );
        }
        // Their entries name users and cgroups.
        add_names(spill.names_mut(), gone.iter().filter_map(|(p, _)| p.ids));
        let t = Instant::now();
        let n = gone.len();
        spill.take(gone, self.s.tree.gpu_known);
        log::debug!("{n} ended processes written out in {:?}", t.elapsed());
    }

    /// Updates what the exporters show, after a sample.
    fn export(&mut self, lost: u64) {
        let Some(x) = self.export.as_mut() else {
            return;
        };
        // Network figures are exported where a network hook counts them.
        let ebpf = self.s.kernel.as_ref().is_some_and(|k| k.network);
        let kernel_io = self.s.kernel.as_ref().is_some_and(|k| k.kernel_io);
        let ticks = self.s.procfs.ticks_per_s;
        x.exporter
            .update(&self.s.tree, ticks, kernel_io, ebpf, lost);
        x.published_anew();
        if self.agent.is_some() {
            // Memory follows the live processes: the ended are forgotten
            // once every reader has had their final figures.
            let gone = self.s.prune(boottime_ns(), |p| x.exporter.forgettable(p));
            x.exporter
                .forget(gone.iter().map(|p| &**p), ticks, kernel_io, ebpf);
        }
    }

    /// SIGHUP to `pmet agent`: the config file is read again and what
    /// changed is put in place; a file that does not parse, or an address
    /// that cannot be listened on, changes nothing. The new sampling
    /// interval, if one is set.
    fn reload(&mut self) -> Option<Duration> {
        let Some(path) = self.agent.as_ref().and_then(|a| a.config.clone()) else {
            log::warn!("SIGHUP: nothing to reload (pmet agent runs without --config)");
            return None;
        };
        let x = self.export.as_mut()?;
        let new = crate::export::Settings::read(&path, self.owner.as_ref()).and_then(|new| {
            crate::export::Endpoints::open(&new, self.owner.as_ref(), Some(x.settings()))
                .and_then(|ends| x.apply(new.clone(), ends))
                .map(|()| new)
                .map_err(|e| e.to_string())
        });
        match new {
            Ok(new) => {
                crate::say!("pmet: reloaded {}", path.display());
                new.interval
            }
            Err(e) => {
                crate::say!("pmet: error: reload: {e}; the previous settings stay in force");
                None
            }
        }
    }

    /// Reaps what has exited among pmet's children: the root (whose status
    /// is recorded) and orphans adopted as subreaper, whose final figures
    /// wait for their reaping.
    fn reap(&mut self, lc: &mut Lifecycle) {
        if !self.launched {
            return;
        }
        if self.embedded {
            // The program's other children are its own to reap.
            if let Ok(Some(raw)) = launch::wait(self.root_pid, true) {
                self.root_reaped(raw, lc);
            }
            return;
        }
        if let Some(raw) = launch::reap_children(self.root_pid) {
            self.root_reaped(raw, lc);
        }
    }

    fn root_reaped(&mut self, raw: i32, lc: &mut Lifecycle) {
        if self.root_status.is_none() {
            let st = status_from_wait(raw);
            log::debug!("root reaped at boottime {} ns", boottime_ns());
            self.root_status = Some(st);
            self.s.root_exited(st, boottime_ns());
            lc.root_exited();
        }
    }

    /// Carries out what the lifecycle decided; whether to finish.
    fn act(&mut self, actions: Vec<Action>) -> bool {
        let mut finish = false;
        for a in actions {
            match a {
                Action::Signal(Target::Root, sig) => {
                    // SAFETY: plain kill of our own, unreaped, child.
                    unsafe { libc::kill(self.root_pid as i32, sig) };
                }
                Action::Signal(Target::Tree, sig) => {
                    signal_tree(&self.s, sig);
                    self.signalled_tree = true;
                }
                Action::Finish => finish = true,
            }
        }
        finish
    }
}

/// Loads the kernel side (or falls back to polling, saying why), starts
/// taskstats, and launches the command gated (or attaches).
fn start(opts: &TraceOptions, inputs: &Inputs, procfs: Procfs) -> Result<Started, Error> {
    let follow_children = !opts.exclude_children;
    launch::raise_nofile();
    // Looking for GPUs (loading NVML and asking the driver for its devices,
    // tens of ms where a driver is) goes on beside the kernel side's load.
    let gpus = std::thread::Builder::new()
        .name("pmet-gpu".into())
        .spawn(|| {
            let t0 = std::time::Instant::now();
            let found = crate::collect::gpu::open();
            log::debug!("GPUs looked for in {:?}", t0.elapsed());
            found
        });
    let load = || {
        let mut k = load_kernel(follow_children, inputs.scope.is_some())?;
        if let Some(sc) = &inputs.scope {
            k.set_scope(&sc.ids)?;
        }
        Ok::<_, Error>(k)
    };
    let kernel = match opts.ebpf {
        EbpfMode::Off => None,
        EbpfMode::Required => Some(load()?),
        EbpfMode::Auto => match load() {
            Ok(k) => Some(k),
            // A cgroup's processes are known only to the kernel side.
            Err(e) if inputs.scope.is_some() => return Err(e),
            Err(e) => {
                let fix = match &e {
                    Error::NotRoot { .. } => "",
                    _ => "; pass --no-ebpf to silence this",
                };
                log::warn!(
                    "polling /proc only, without exact figures for short processes, exit statuses \
                     or network: {e}{fix}"
                );
                None
            }
        },
    };
    let (ts_tx, ts_rx) = mpsc::unbounded_channel::<Vec<TaskStats>>();
    // taskstats only as a fallback: where the kernel side reads each
    // thread's peak memory at exit and its context switches and faults at
    // its last switch, a record per exit on the machine would add nothing
    // (and cost every exiting task a netlink message).
    let replaced = kernel.as_ref().is_some_and(|k| k.replaces_taskstats);
    if replaced {
        log::debug!("taskstats not needed: the kernel side reads peak memory, switches and faults");
    }
    let listener = if inputs.euid == 0 && !replaced {
        match Listener::start(move |recs| {
            let _ = ts_tx.send(recs);
        }) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!(
                    "taskstats unavailable ({e}): peak memory of short-lived processes will be unknown"
                );
                None
            }
        }
    } else {
        None
    };
    let kernel_io = kernel.as_ref().is_some_and(|k| k.kernel_io);
    let start_ns = boottime_ns();
    let started_at = SystemTime::now();
    let mut s = Session::new(kernel, procfs, start_ns, kernel_io, follow_children);
    s.tree.env_policy = opts.env_policy.clone();
    s.tree.max_connections = Some(opts.max_connections);
    s.tree.no_pss = opts.no_pss;
    let gpus = match gpus {
        Ok(h) => h
            .join()
            .unwrap_or_else(|_| Err("the GPU lookup failed".into())),
        // No thread: look here.
        Err(_) => crate::collect::gpu::open(),
    };
    match gpus {
        Ok(g) => {
            log::info!(
                "GPUs through {}: {}",
                g.kind(),
                g.devices()
                    .iter()
                    .map(|d| format!("{} ({})", d.name, d.uuid))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            s.watch_gpus(g, opts.intervals.1);
        }
        Err(e) => log::info!("no GPU figures: {e}"),
    }
    s.taskstats_overflows = listener.as_ref().map(|l| l.overflows.clone());
    let command: Option<Vec<String>> = inputs.prepared.is_some().then(|| {
        opts.command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    });
    let mut pidfd = None;
    let mut gate_to_release = None;
    let root_pid;
    if let Some(p) = &inputs.prepared {
        if !opts.embedded {
            launch::become_subreaper();
        }
        let gate = launch::spawn_gated(p)?;
        root_pid = gate.pid;
        if inputs.euid == 0 {
            privileges::prefer_tracer();
        }
        let cookie = s.next_cookie();
        if let Some(k) = s.kernel.as_mut()
            && let Err(e) = k.track(gate.pid, cookie)
        {
            drop(gate);
            let _ = launch::wait(root_pid, false);
            return Err(e);
        }
        s.tree.add_root(
            gate.pid,
            std::process::id(),
            cookie,
            boottime_ns(),
            command.clone().unwrap_or_default(),
        );
        pidfd = launch::pidfd_open(gate.pid)
            .and_then(watch)
            .map_err(|e| log::warn!("pidfd_open({root_pid}): {e}; polling for the exit instead"))
            .ok();
        if inputs.euid == 0 {
            privileges::drop_capabilities(keep_bpf(&s));
        }
        // Released by the caller once the live view (if any) holds its
        // lines: the command's first output must land above it.
        gate_to_release = Some(gate);
    } else if let Some(sc) = &inputs.scope {
        if s.kernel.is_none() {
            return Err(Error::Usage(
                "--cgroup and --container need eBPF (run pmet as root, without --no-ebpf)".into(),
            ));
        }
        // Those in the cgroups now; the kernel side adds any that fork or
        // exec there from now on (pmet itself is left out).
        let now = boottime_ns();
        for &pid in sc.pids.iter().filter(|&&p| p != std::process::id()) {
            session::attach_one(&mut s, pid, opts.since_process_start, now)?;
        }
        root_pid = s
            .tree
            .root
            .map(|r| s.tree.procs[r].pid)
            .ok_or_else(|| Error::Usage(format!("cgroup {} has no processes left", sc.path)))?;
        if inputs.euid == 0 {
            privileges::prefer_tracer();
            privileges::drop_capabilities(keep_bpf(&s));
        }
    } else {
        root_pid = opts.pid.expect("attach mode has a pid");
        let me = opts.all.then(std::process::id);
        session::attach(
            &mut s,
            root_pid,
            opts.since_process_start,
            boottime_ns(),
            me,
        )?;
        if inputs.euid == 0 {
            privileges::prefer_tracer();
            privileges::drop_capabilities(keep_bpf(&s));
        }
    }
    Ok(Started {
        s,
        listener,
        ts_rx,
        root_pid,
        pidfd,
        root_status: None,
        launched: inputs.prepared.is_some(),
        start_ns,
        started_at,
        command,
        export: None,
        agent: None,
        embedded: opts.embedded,
        requests: None,
        owner: None,
        gate: gate_to_release,
        signalled_tree: false,
        spill: None,
        spilled_at: None,
        startup_cpu: 0.0,
        ready: None,
        ready_writer: None,
    })
}

/// Follows the tree, merging kernel events, exit records and samples, until
/// the lifecycle says the run is over.
async fn follow(
    st: &mut Started,
    lc: &mut Lifecycle,
    intervals: (Duration, Duration, Duration),
    sink: &mut Sink,
) -> Result<(), Error> {
    let ring = match &st.s.kernel {
        Some(k) => Some(
            watch(Fd(k.events_fd()))
                .map_err(|e| Error::Other(format!("epoll on the ring buffer: {e}")))?,
        ),
        None => None,
    };
    let log_fd =
        st.s.kernel
            .as_ref()
            .and_then(|k| k.logger.as_ref())
            .and_then(|l| watch(Fd(l.as_raw_fd())).ok());
    let sig = |k: SignalKind| signal(k).map_err(|e| Error::Other(format!("signal handler: {e}")));
    // INT, TERM, HUP, QUIT, USR1 and USR2: taken with their sender, so the
    // lifecycle can pass them on, and never left to end pmet with the live
    // view's scroll region still set or without the report.
    // Embedded, the signals are the program's own (it passes on what it
    // wants through `Control::Signal`).
    let sigfd = if st.embedded {
        None
    } else {
        Some(signals::SignalFd::open().map_err(|e| Error::Other(format!("signalfd: {e}")))?)
    };
    let mut sigwinch = sig(SignalKind::window_change())?;
    // Orphans re-parented to pmet (the subreaper) are reaped as they exit.
    let mut sigchld = sig(SignalKind::child())?;
    let (min, first, max) = intervals;
    let mut pace = Pace {
        min,
        now: first,
        max,
        last_shape: (0, 0),
    };
    let mut backoff: Option<Instant> = None;
    // A first look at once: rates need a starting point.
    let snap = st.look(sink);
    st.say_ready();
    let mut next_tick = Instant::now() + pace.after(&snap);
    let never = Instant::now() + Duration::from_secs(86400 * 365 * 30);

    loop {
        let root_running = lc.root_running();
        let pumping = backoff.is_some();
        let deadline = lc.next_deadline().unwrap_or(never);
        let actions = tokio::select! {
            g = async { ring.as_ref().expect("guarded").readable().await }, if ring.is_some() && !pumping => {
                match g {
                    Ok(mut g) => { g.clear_ready(); st.s.drain(); }
                    Err(e) => log::error!("ring buffer: {e}"),
                }
                backoff = Some(Instant::now() + BATCH);
                Vec::new()
            }
            Some(recs) = st.ts_rx.recv(), if !pumping => {
                st.s.pending_ts.extend(recs);
                st.s.apply_taskstats();
                backoff = Some(Instant::now() + BATCH);
                Vec::new()
            }
            _ = async { tokio::time::sleep_until(backoff.expect("guarded")).await }, if pumping => {
                // Let events pile up for a moment, then take them in one go:
                // one wakeup per batch instead of one per event.
                while let Ok(more) = st.ts_rx.try_recv() {
                    st.s.pending_ts.extend(more);
                }
                st.s.apply_taskstats();
                backoff = None;
                // Between samples too, a storm's ended processes go out
                // a quarter second apart rather than a sample apart (a
                // sink that lists ended processes waits for its sample).
                if !sink.wants_ended()
                    && st.spilled_at.is_none_or(|t| t.elapsed() >= SPILL_EVERY)
                {
                    st.spill_ended();
                }
                Vec::new()
            }
            _ = tokio::time::sleep_until(next_tick) => {
                let snap = st.look(sink);
                let mut wait = pace.after(&snap);
                if st.s.has_suspects() {
                    // Decide on a possibly lost exit soon, not a slow tick later.
                    wait = wait.min(SUSPECT_GRACE);
                }
                next_tick = Instant::now() + wait;
                Vec::new()
            }
            r = async { st.pidfd.as_ref().expect("guarded").readable().await }, if root_running && st.pidfd.is_some() => {
                if let Ok(mut g) = r { g.clear_ready(); }
                if let Ok(Some(raw)) = launch::wait(st.root_pid, true) {
                    st.root_reaped(raw, lc);
                }
                Vec::new()
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if root_running && st.pidfd.is_none() => {
                if let Ok(Some(raw)) = launch::wait(st.root_pid, true) {
                    st.root_reaped(raw, lc);
                }
                Vec::new()
            }
            g = async { log_fd.as_ref().expect("guarded").readable().await }, if log_fd.is_some() => {
                if let Ok(mut g) = g { g.clear_ready(); }
                if let Some(l) = st.s.kernel.as_mut().and_then(|k| k.logger.as_mut()) { l.flush(); }
                Vec::new()
            }
            _ = sigwinch.recv() => { sink.resize(); Vec::new() }
            r = async { st.requests.as_mut().expect("guarded").recv().await }, if st.requests.is_some() => match r {
                Some(Control::Sample(reply)) => {
                    let snap = st.look(sink);
                    let _ = reply.send(snap);
                    Vec::new()
                }
                Some(Control::Signal(signo)) => lc.on_signal(
                    signals::Received { signo, from_terminal: false, sender: None },
                    false,
                    Instant::now(),
                ),
                // The program let go of the session: it runs to its end.
                None => {
                    st.requests = None;
                    Vec::new()
                }
            },
            k = sink.next_key(), if sink.takes_keys() => {
                // `pmet top`'s full-screen view: q, Esc, Ctrl-C end it.
                if k.is_some_and(|k| sink.key(k)) {
                    vec![Action::Finish]
                } else {
                    Vec::new()
                }
            }
            _ = sigchld.recv(), if st.launched => { st.reap(lc); Vec::new() }
            got = async { sigfd.as_ref().expect("guarded").recv().await }, if sigfd.is_some() => match got {
                Ok(got) if got.signo == libc::SIGHUP && st.agent.is_some() => {
                    if let Some(every) = st.reload() {
                        (pace.min, pace.now, pace.max) = (every, every, every);
                        next_tick = Instant::now() + every;
                    }
                    Vec::new()
                }
                Ok(got) => {
                    let from_tree = got.sender.is_some_and(|pid| st.s.tree.live(pid).is_some());
                    if !st.launched || got.from_terminal {
                        log::info!("signal {}: waiting for the traced command to exit (again to stop now)", got.signo);
                    }
                    lc.on_signal(got, from_tree, Instant::now())
                }
                Err(e) => {
                    log::error!("signalfd: {e}");
                    Vec::new()
                }
            },
            _ = tokio::time::sleep_until(deadline) => lc.on_deadline(Instant::now()),
        };
        if st.act(actions) {
            log::debug!("the run ends: stopped ({:?})", lc.stopped_early());
            return Ok(());
        }
        if !lc.root_running() {
            // One more look: a fork may be in flight in the ring buffer.
            st.s.drain();
        }
        let alive = st.s.tree.alive_count();
        let actions = lc.on_change(alive, Instant::now());
        if st.act(actions) {
            log::debug!("the run ends: {alive} processes alive");
            return Ok(());
        }
    }
}

/// The final figures of the last exits arrive with each thread's last
/// context switch (with taskstats, its record comes too): waits for them
/// while they keep coming, then takes what the kernel kept for the rest.
async fn settle(st: &mut Started, lc: &mut Lifecycle) {
    let t0 = Instant::now();
    let mut wait = Settle::new(Duration::ZERO);
    let exit_totals = st.s.kernel.as_ref().is_some_and(|k| k.exit_totals);
    loop {
        st.reap(lc);
        if let Some(l) = &st.listener {
            l.flush();
        }
        while let Ok(recs) = st.ts_rx.try_recv() {
            st.s.pending_ts.extend(recs);
        }
        st.s.apply_taskstats();
        let totals = if exit_totals {
            st.s.tree.awaiting_totals()
        } else {
            0
        };
        let records = if st.listener.is_some() {
            st.s.tree.awaiting_taskstats()
        } else {
            0
        };
        log::trace!(
            "settling at {:?}: {totals} await exit totals, {records} taskstats",
            t0.elapsed()
        );
        // Processes pmet signalled with the rest of the tree are given a
        // moment to end (they usually do within milliseconds), so they are
        // not reported as still running by a hair.
        let signalled = if st.signalled_tree {
            st.s.tree.alive_count()
        } else {
            0
        };
        if wait.done(totals + records + signalled, t0.elapsed()) {
            log::debug!(
                "settled in {:?}: {totals} processes await exit totals, {records} taskstats; {} events matched no known process",
                t0.elapsed(),
                st.s.tree.orphan_events
            );
            log::debug!(
                "{} kernel events taken in, in {:?} over the run",
                st.s.tree.events,
                st.s.drain_time
            );
            st.s.finish_frees(boottime_ns());
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Looks up the user names and cgroup paths of `ids` that `names` lacks,
/// each once (the cgroup tree is walked once for all of them).
fn add_names(names: &mut report::Names, ids: impl Iterator<Item = crate::model::event::Ids>) {
    let mut cgroups = std::collections::HashSet::new();
    for ids in ids {
        if !names.users.contains_key(&ids.uid)
            && let Some(n) = privileges::user_name(ids.uid)
        {
            names.users.insert(ids.uid, n);
        }
        if ids.cgroup_id != 0 && !names.cgroups.contains_key(&ids.cgroup_id) {
            cgroups.insert(ids.cgroup_id);
        }
    }
    if !cgroups.is_empty() {
        names
            .cgroups
            .extend(crate::collect::cgroup::paths_of(&cgroups));
    }
}

/// The user names and cgroup paths of the ids in the tree, looked up once
/// each at the end.
fn names(tree: &crate::model::tree::Tree) -> report::Names {
    let mut names = report::Names::default();
    add_names(&mut names, tree.procs.iter().filter_map(|p| p.ids));
    names
}

/// Builds the report, writes what was asked for, and hands back what stays
/// loaded (detached by the caller after showing the results).
fn finish(mut st: Started, lc: &Lifecycle, opts: &TraceOptions, inputs: &Inputs) -> Outcome {
    // The ready line was said before anything the run reports: written
    // (or given up on, in the FIFO patience) before the run ends.
    if let Some(w) = st.ready_writer.take() {
        let _ = w.join();
    }
    st.s.finish_connections();
    st.s.gpu_lifetimes();
    let end_ns = st.s.end_ns(boottime_ns());
    let lost = st.s.losses();
    let (self_cpu, self_rss) = self_usage();
    let info = RunInfo {
        command: st.command.take(),
        end_ns,
        started_at: humantime::format_rfc3339_millis(st.started_at).to_string(),
        collector: Collector {
            ebpf: st.s.kernel.is_some(),
            kernel_release: kernel_release(),
            hooks: st
                .s
                .kernel
                .as_ref()
                .map(|k| k.hooks.clone())
                .unwrap_or_default(),
            interval_ms: opts.intervals.1.as_millis() as u64,
            samples: st.s.samples,
            events: st.s.tree.events,
            lost_events: lost.total(),
            lost,
            taskstats: st.listener.is_some(),
            exit_totals: st.s.kernel.as_ref().is_some_and(|k| k.exit_totals),
            self_cpu_s: Some(self_cpu),
            startup_cpu_s: Some(st.startup_cpu),
            self_peak_rss_bytes: Some(self_rss),
            export_errors: st.export.as_ref().map_or(0, |x| x.errors),
            gpu: st.s.gpus().map(|(source, devices)| report::GpuCollector {
                source: source.into(),
                devices,
            }),
        },
        stopped_early: lc.stopped_early().map(str::to_owned),
        host: Some(host()),
        names: names(&st.s.tree),
        all: opts.all,
        cgroup: inputs.scope.as_ref().map(|sc| sc.path.clone()),
        counting_from: if opts.pid.is_some() && !opts.since_process_start {
            "attach"
        } else {
            "process_start"
        }
        .into(),
        ..static_info(&st, opts)
    };
    let t = Instant::now();
    let mut made = match st.spill.take().filter(|s| !s.is_empty()) {
        Some(s) => Made::Streamed(s.finish(&st.s.tree, &info, Some(&st.s.recorder))),
        None => Made::Whole(report::build(&st.s.tree, &info, Some(&st.s.recorder))),
    };
    log::debug!("report built in {:?}", t.elapsed());
    let exit_code = lc.exit_code(st.root_status);
    let write_error = inputs.output.as_ref().and_then(|o| {
        o.write_with(|w| {
            let t = Instant::now();
            // Compact: a tree of 10,000 processes is 22 MB this way and 32
            // pretty-printed, and a third slower to write (`jq .` shows it
            // indented; `pmet report` reads it for people).
            match &mut made {
                Made::Whole(r) => report::entry::write_whole(r, w)?,
                Made::Streamed(s) => s.write_json(w)?,
            }
            log::debug!("report serialized in {:?}", t.elapsed());
            w.write_all(b"\n")
        })
        .err()
    });
    let (report, briefs) = match made {
        Made::Whole(r) => (r, None),
        Made::Streamed(s) => {
            let (r, b) = s.into_parts();
            (r, Some(b))
        }
    };
    let trace_events_error = inputs
        .trace_events
        .as_ref()
        .and_then(|o| o.write_with(|w| write_trace_events(&report, w)).err());
    // Shutting NVML down takes ~10 ms (measured on an H200): not on the
    // way out. A command-line run exits meanwhile; an embedding program
    // gets it closed in the background.
    if let Some(g) = st.s.take_gpu() {
        // Where no thread can be made, the source goes with the refused
        // closure: closed here.
        let _ = std::thread::Builder::new()
            .name("pmet-gpu-close".into())
            .spawn(move || drop(g));
    }
    if !opts.embedded {
        // The command line exits once the report is out: handing every
        // process held back to the allocator one at a time would be work
        // for nothing (a profile of a 3,000-process storm put it at ~0.4 µs
        // a process, 3 % of pmet's CPU). An embedding program keeps going,
        // so it gets the memory back.
        std::mem::forget(std::mem::take(&mut st.s.tree));
    }
    Outcome {
        loaded: Loaded {
            _kernel: st.s.kernel.take(),
            _taskstats: st.listener.take(),
        },
        report,
        briefs,
        exit_code,
        write_error,
        trace_events_error,
    }
}

/// The report as made at the end: whole, or streamed from where a long
/// run wrote its ended processes.
#[allow(clippy::large_enum_variant)] // one value, made once at the end
enum Made {
    Whole(Report),
    Streamed(report::spill::Streamed),
}

/// What every report entry needs to know of the run, known from its start.
fn static_info(st: &Started, opts: &TraceOptions) -> RunInfo {
    RunInfo {
        start_ns: st.start_ns,
        ticks_per_s: st.s.procfs.ticks_per_s,
        collector: Collector {
            ebpf: st.s.kernel.is_some(),
            hooks: st
                .s
                .kernel
                .as_ref()
                .map(|k| k.hooks.clone())
                .unwrap_or_default(),
            ..Collector::default()
        },
        kernel_io: st.s.kernel.as_ref().is_some_and(|k| k.kernel_io),
        max_threads_listed: Some(opts.max_threads_listed),
        start_wall: Some(st.started_at),
        connections: st.s.kernel.as_ref().is_some_and(|k| k.connections),
        ..RunInfo::default()
    }
}

/// Runs a session. Errors before tracing starts are returned; once the tree
/// is being followed, problems are logged and the report is still produced.
/// `make_sink` is given the sample stream once every input has been checked.
pub async fn trace(
    opts: TraceOptions,
    make_sink: impl FnOnce(Box<dyn Write + Send>) -> Sink,
) -> Result<Outcome, Error> {
    trace_with(opts, make_sink, None).await
}

/// [`trace`], driven also by the program embedding pmet through `remote`.
pub async fn trace_with(
    mut opts: TraceOptions,
    make_sink: impl FnOnce(Box<dyn Write + Send>) -> Sink,
    remote: Option<Remote>,
) -> Result<Outcome, Error> {
    let procfs = Procfs::default();
    let mut inputs = check_inputs(&opts, &procfs)?;
    let mut st = start(&opts, &inputs, procfs)?;
    if let Some(ends) = inputs.endpoints.take() {
        st.export = Some(crate::export::Running::start(
            opts.export.clone(),
            ends,
            host_name(),
        )?);
    }
    st.agent = opts.agent.clone();
    st.owner = inputs.owner.clone();
    st.ready = inputs.ready.take();
    // What needs every process held to the end does not spill.
    if opts.agent.is_none() && !opts.embedded && !opts.record && opts.trace_events.is_none() {
        st.spill = Some(report::spill::Spill::new(
            static_info(&st, &opts),
            inputs.output.is_some(),
        ));
    }
    let stream = std::mem::replace(&mut inputs.stream, Box::new(std::io::sink()));
    let mut sink = make_sink(stream);
    if sink.wants_ended() {
        st.s.keep_ended();
    }
    if let Some(gate) = st.gate.take()
        && let Err(e) = gate.release()
    {
        let _ = launch::wait(st.root_pid, false);
        return Err(e);
    }
    st.startup_cpu = self_cpu();
    if let Some(r) = remote {
        let _ = r.started.send(Begun {
            pid: st.root_pid,
            ebpf: st.s.kernel.is_some(),
        });
        st.requests = Some(r.requests);
    }
    let mut lc = Lifecycle::new(
        st.launched,
        opts.descendants,
        opts.duration.take(),
        Instant::now(),
    )
    .preserve_status(opts.preserve_status);
    follow(&mut st, &mut lc, opts.intervals, &mut sink).await?;
    let ended = Instant::now();
    // The run is over: what starts from now (a storm still running under
    // --all, or processes the command left behind) is not part of it.
    st.s.drain();
    st.s.tree.close(boottime_ns());
    settle(&mut st, &mut lc).await;
    // A last sample: still-running processes (an early stop) get their
    // figures, and a short run gets at least one look; the exporters' last
    // word holds every process that had series.
    if let Some(x) = st.export.as_mut() {
        x.exporter.last_word();
    }
    st.look(&mut sink);
    // The last word to the Pushgateway and the OTLP endpoint, waited for:
    // a CI job's figures. A failure is said and counted; it never changes
    // the command's status.
    if let Some(x) = st.export.as_mut() {
        x.finish();
    }
    sink.finish();
    log::debug!(
        "settled and sampled {:?} after the tree ended",
        ended.elapsed()
    );
    let outcome = finish(st, &lc, &opts, &inputs);
    log::debug!("report written {:?} after the tree ended", ended.elapsed());
    Ok(outcome)
}
