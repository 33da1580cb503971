//! One tracing session, start to finish: check the inputs, load the kernel
//! side, launch (or attach), merge events, exit records and samples into the
//! tree until the last process is gone, then report.

use std::{
    collections::HashSet,
    ffi::OsString,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::Path,
    time::{Duration, SystemTime},
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use crate::{
    collect::{
        btf,
        decode::decode,
        ebpf::{self, Kernel},
        procfs::Procfs,
        taskstats::{Listener, TaskStats},
        tracefs::Tracefs,
    },
    error::Error,
    launch::{self, Prepared},
    model::{
        event::Event,
        tree::{Baseline, ExitStatus, Tree},
    },
    privileges,
    report::{self, Collector, Host, Lost, OutputTarget, Report, RunInfo},
};

/// What to trace and how.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The command to launch (empty when attaching).
    pub command: Vec<OsString>,
    /// The process to attach to.
    pub pid: Option<u32>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Sampling interval.
    pub interval: Duration,
    /// Where the JSON report goes.
    pub output: Option<OutputTarget>,
}

/// How a session ended.
#[derive(Debug)]
pub struct Outcome {
    /// The report (already written when an output was given).
    pub report: Report,
    /// The status pmet should exit with.
    pub exit_code: i32,
    /// Writing the report failed (the summary is still shown).
    pub write_error: Option<Error>,
}

/// How long a launched command gets to exit after SIGTERM at `--duration`.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Longest wait, at the end, for the last exit records to arrive.
const SETTLE: Duration = Duration::from_millis(3000);
/// After this long, a free not seen is given up (see [`Tree::free_missed`]).
const FREE_TIMEOUT: Duration = Duration::from_secs(10);
/// Stop waiting earlier once no record has arrived for this long.
const SETTLE_IDLE: Duration = Duration::from_millis(500);

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

/// Cookies chosen by userspace are even; the kernel's are odd, so the two
/// never collide.
struct Cookies(u64);
impl Cookies {
    fn next(&mut self) -> u64 {
        self.0 += 2;
        self.0
    }
}

struct Session {
    kernel: Kernel,
    tree: Tree,
    procfs: Procfs,
    pending_ts: Vec<TaskStats>,
    samples: u64,
    undecodable: u64,
}

impl Session {
    /// Applies every event waiting in the ring buffer; reads the final socket
    /// counters of processes that exited.
    fn drain(&mut self) {
        let mut exits = Vec::new();
        while let Some(item) = self.kernel.events.next() {
            match decode(&item) {
                Some(ev) => {
                    if let Event::Exit {
                        group_dead: true,
                        tgid,
                        cookie,
                        ..
                    } = ev
                    {
                        exits.push((tgid, cookie));
                    }
                    self.tree.apply(ev);
                }
                None => self.undecodable += 1,
            }
        }
        for (pid, cookie) in exits {
            let net = self.kernel.take_net(pid, cookie).unwrap_or_default();
            self.tree.set_net(pid, cookie, net, true);
        }
    }

    /// Applies taskstats records, after the ring buffer: a record's process
    /// was announced (fork event) before it could exit.
    fn apply_taskstats(&mut self) {
        self.drain();
        for r in std::mem::take(&mut self.pending_ts) {
            self.tree.apply_taskstats(&r);
        }
    }

    /// Gives up on frees the kernel side has not seen `after` the exit.
    fn sweep_dying(&mut self, after: Duration) {
        let now = boottime_ns();
        for (task, d) in self.kernel.dying() {
            if now.saturating_sub(d.exit_ns) >= after.as_nanos() as u64 {
                self.kernel.forget_dying(task);
                self.tree.free_missed(d.tgid, d.cookie);
            }
        }
    }

    /// One polling round: liveness, /proc samples, live socket counters.
    fn tick(&mut self) {
        self.sweep_dying(FREE_TIMEOUT);
        // A process the kernel no longer tracks but the tree thinks alive:
        // its exit event is either still in the ring (drained next) or lost.
        let suspects: Vec<(u32, u64)> = self
            .tree
            .live_keys()
            .into_iter()
            .filter(|&(pid, cookie)| self.kernel.tracked(pid) != Some(cookie))
            .collect();
        self.apply_taskstats();
        let now = boottime_ns();
        for (pid, cookie) in suspects {
            if self.tree.live(pid).is_some_and(|p| p.cookie == cookie) {
                log::debug!("pid {pid} left the kernel's tracked set without an exit event");
                self.tree.mark_vanished(pid, now);
            }
        }
        for (pid, cookie) in self.tree.live_keys() {
            if let Some(s) = self.procfs.sample(pid, now) {
                self.tree.apply_sample(pid, s);
            }
            if let Some(n) = self.kernel.net(pid, cookie) {
                self.tree.set_net(pid, cookie, n, false);
            }
        }
        self.samples += 1;
    }
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

/// Puts `pid` and its descendants in the tracked set. Parents go first, and
/// the walk repeats until it finds nothing new, so a child forked while the
/// walk ran is caught either here or by the kernel.
fn attach(
    kernel: &mut Kernel,
    tree: &mut Tree,
    procfs: &Procfs,
    root: u32,
    cookies: &mut Cookies,
) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for _round in 0..100 {
        let fresh: Vec<u32> = procfs
            .subtree(root)
            .into_iter()
            .filter(|p| !seen.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            seen.insert(pid);
            if kernel.tracked(pid).is_some() {
                // Forked after its parent was tracked: the kernel announced it.
                continue;
            }
            let Ok(stat) = procfs.stat(pid) else {
                continue;
            };
            if stat.state == 'Z' {
                continue;
            }
            let cookie = cookies.next();
            kernel.track(pid, cookie)?;
            let now = boottime_ns();
            let threads = procfs.threads(pid);
            let tps = procfs.ticks_per_s.max(1);
            let tick_ns = 1_000_000_000 / tps;
            let baseline = Baseline {
                thread_runtime_ns: threads.iter().filter_map(|t| t.runtime_ns).sum(),
                thread_utime_ns: threads.iter().map(|t| t.utime_ticks * tick_ns).sum(),
                thread_stime_ns: threads.iter().map(|t| t.stime_ticks * tick_ns).sum(),
                thread_read_bytes: threads.iter().filter_map(|t| t.read_bytes).sum(),
                thread_write_bytes: threads.iter().filter_map(|t| t.write_bytes).sum(),
                sample: procfs.sample(pid, now),
            };
            tree.add_existing(
                pid,
                stat.ppid,
                cookie,
                stat.starttime * tick_ns,
                stat.comm.clone(),
                procfs.cmdline(pid).unwrap_or_default(),
                stat.num_threads,
                baseline,
            );
        }
    }
    if tree.root.is_none() {
        return Err(Error::NoSuchPid(root));
    }
    Ok(())
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

/// Runs a session. Errors before tracing starts are returned; once the tree
/// is being followed, problems are logged and the report is still produced.
pub async fn trace(opts: TraceOptions) -> Result<Outcome, Error> {
    // Inputs first: nothing is loaded or launched for a request that cannot succeed.
    if let Some(o) = &opts.output {
        o.check_writable()?;
    }
    let procfs = Procfs::default();
    let prepared = match opts.pid {
        None => Some(Prepared::new(&opts.command, std::env::vars_os(), None)?),
        Some(pid) => {
            match procfs.stat(pid) {
                Ok(s) if s.state != 'Z' && s.state != 'X' => {}
                _ => return Err(Error::NoSuchPid(pid)),
            }
            None
        }
    };
    privileges::check_ebpf()?;

    let tracefs = Tracefs::find_or_mount()?;
    let cfg = ebpf::tracepoint_config(&tracefs)?;
    let task = match btf::task_offsets(Path::new(btf::VMLINUX)) {
        Ok(o) => Some(o),
        Err(e) => {
            log::warn!("{e}; final CPU and disk figures will come from taskstats only");
            None
        }
    };
    let kernel = Kernel::load(cfg, task.as_ref())?;
    let (ts_tx, mut ts_rx) = mpsc::unbounded_channel::<Vec<TaskStats>>();
    let listener = match Listener::start(move |recs| {
        let _ = ts_tx.send(recs);
    }) {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!(
                "taskstats unavailable ({e}): peak memory of short-lived processes will be unknown"
            );
            None
        }
    };

    let mut s = Session {
        kernel,
        tree: Tree::new(),
        procfs,
        pending_ts: Vec::new(),
        samples: 0,
        undecodable: 0,
    };
    let mut cookies = Cookies(0);
    let start_ns = boottime_ns();
    let started_at = SystemTime::now();
    let command: Option<Vec<String>> = prepared.is_some().then(|| {
        opts.command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    });

    let mut pidfd: Option<AsyncFd<OwnedFd>> = None;
    let root_pid;
    if let Some(p) = &prepared {
        let gate = launch::spawn_gated(p)?;
        root_pid = gate.pid;
        let cookie = cookies.next();
        if let Err(e) = s.kernel.track(gate.pid, cookie) {
            drop(gate);
            let _ = launch::wait(root_pid, false);
            return Err(e);
        }
        s.tree.add_root(
            gate.pid,
            cookie,
            boottime_ns(),
            command.clone().unwrap_or_default(),
        );
        pidfd = launch::pidfd_open(gate.pid)
            .and_then(watch)
            .map_err(|e| log::warn!("pidfd_open({root_pid}): {e}; polling for the exit instead"))
            .ok();
        if let Err(e) = gate.release() {
            let _ = launch::wait(root_pid, false);
            return Err(e);
        }
    } else {
        root_pid = opts.pid.expect("attach mode has a pid");
        attach(
            &mut s.kernel,
            &mut s.tree,
            &s.procfs,
            root_pid,
            &mut cookies,
        )?;
    }
    let launched = prepared.is_some();

    let ring = watch(Fd(s.kernel.events_fd()))
        .map_err(|e| Error::Other(format!("epoll on the ring buffer: {e}")))?;
    let log_fd = s
        .kernel
        .logger
        .as_ref()
        .and_then(|l| watch(Fd(l.as_raw_fd())).ok());

    let mut ticker = tokio::time::interval(opts.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Other(e.to_string()))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Other(e.to_string()))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::Other(e.to_string()))?;
    let far = Instant::now() + Duration::from_secs(86400 * 365 * 30);
    let mut deadline = opts.duration.map_or(far, |d| Instant::now() + d);
    let mut root_status: Option<ExitStatus> = None;
    let mut stopped_early: Option<String> = None;
    let mut signals = 0u32;
    let mut term_sent = false;

    loop {
        let root_running = launched && root_status.is_none();
        tokio::select! {
            g = ring.readable() => {
                match g {
                    Ok(mut g) => { g.clear_ready(); s.drain(); }
                    Err(e) => log::error!("ring buffer: {e}"),
                }
            }
            Some(recs) = ts_rx.recv() => {
                s.pending_ts.extend(recs);
                while let Ok(more) = ts_rx.try_recv() {
                    s.pending_ts.extend(more);
                }
                s.apply_taskstats();
            }
            _ = ticker.tick() => s.tick(),
            r = async { pidfd.as_ref().expect("guarded").readable().await }, if root_running && pidfd.is_some() => {
                if let Ok(mut g) = r { g.clear_ready(); }
                if let Ok(Some(raw)) = launch::wait(root_pid, true) {
                    let st = status_from_wait(raw);
                    root_status = Some(st);
                    s.tree.set_root_exit(st);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if root_running && pidfd.is_none() => {
                if let Ok(Some(raw)) = launch::wait(root_pid, true) {
                    let st = status_from_wait(raw);
                    root_status = Some(st);
                    s.tree.set_root_exit(st);
                }
            }
            g = async { log_fd.as_ref().expect("guarded").readable().await }, if log_fd.is_some() => {
                if let Ok(mut g) = g { g.clear_ready(); }
                if let Some(l) = s.kernel.logger.as_mut() { l.flush(); }
            }
            _ = sigint.recv() => {
                signals += 1;
                // A terminal's Ctrl+C reaches the whole foreground group, the
                // traced command included: let it react, and keep following.
                if !launched || signals >= 2 {
                    stopped_early = Some("interrupted".into());
                    break;
                }
                log::info!("interrupt: waiting for the traced command to exit (Ctrl+C again to stop now)");
            }
            sig = async { tokio::select! { _ = sigterm.recv() => libc::SIGTERM, _ = sighup.recv() => libc::SIGHUP } } => {
                signals += 1;
                if !launched || signals >= 2 {
                    stopped_early = Some("interrupted".into());
                    break;
                }
                if root_status.is_none() {
                    // SAFETY: plain kill of our own child.
                    unsafe { libc::kill(root_pid as i32, sig) };
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if launched && !term_sent && root_status.is_none() {
                    stopped_early = Some("duration".into());
                    // SAFETY: plain kill of our own child.
                    unsafe { libc::kill(root_pid as i32, libc::SIGTERM) };
                    term_sent = true;
                    deadline = Instant::now() + TERM_GRACE;
                } else {
                    stopped_early = Some("duration".into());
                    break;
                }
            }
        }
        let root_done = !launched || root_status.is_some();
        if root_done && s.tree.alive_count() == 0 {
            // One more look: a fork may be in flight in the ring buffer.
            s.drain();
            if s.tree.alive_count() == 0 {
                break;
            }
        }
    }

    // Settle: the final figures of the last exits arrive after an RCU grace
    // period (milliseconds; up to a second on a loaded machine). Stop when all
    // are in, or when none has arrived for a while: a free the kernel side
    // did not see is not worth more waiting, taskstats covers it.
    let hard_stop = Instant::now() + SETTLE;
    let mut last_progress = Instant::now();
    let mut awaiting = usize::MAX;
    loop {
        while let Ok(recs) = ts_rx.try_recv() {
            s.pending_ts.extend(recs);
        }
        s.apply_taskstats();
        let totals = if s.kernel.exit_totals {
            s.tree.awaiting_totals()
        } else {
            0
        };
        let records = if listener.is_some() {
            s.tree.awaiting_taskstats()
        } else {
            0
        };
        if totals + records < awaiting {
            awaiting = totals + records;
            last_progress = Instant::now();
        }
        let now = Instant::now();
        if awaiting == 0 || now >= hard_stop || now >= last_progress + SETTLE_IDLE {
            log::debug!("settled: {totals} processes await exit totals, {records} taskstats");
            s.sweep_dying(Duration::ZERO);
            s.tree.give_up_frees();
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if launched
        && root_status.is_none()
        && let Ok(Some(raw)) = launch::wait(root_pid, true)
    {
        let st = status_from_wait(raw);
        root_status = Some(st);
        s.tree.set_root_exit(st);
    }
    // Still-running processes (an early stop): a last sample and counters.
    if s.tree.alive_count() > 0 {
        s.tick();
        s.samples -= 1;
    }
    let end_ns = boottime_ns();

    let c = s.kernel.counters();
    use pmet_common::counter as k;
    let overflows = listener.as_ref().map_or(0, |l| {
        l.overflows.load(std::sync::atomic::Ordering::Relaxed)
    });
    let info = RunInfo {
        command,
        start_ns,
        end_ns,
        started_at: humantime::format_rfc3339_millis(started_at).to_string(),
        ticks_per_s: s.procfs.ticks_per_s,
        collector: Collector {
            ebpf: true,
            interval_ms: opts.interval.as_millis() as u64,
            samples: s.samples,
            events: 0,
            lost_events: 0,
            lost: Lost {
                ring_buffer: c[k::RINGBUF_FULL as usize],
                tracked_map_full: c[k::TRACKED_FULL as usize],
                net_map_full: c[k::NET_FULL as usize],
                dying_map_full: c[k::DYING_FULL as usize],
                read_failures: c[k::READ_FAILED as usize] + s.undecodable,
                stale_free_records: c[k::FREE_MISMATCH as usize],
                taskstats_overflows: overflows,
                argv_truncated: c[k::ARGV_TRUNCATED as usize],
                ..Lost::default()
            },
            taskstats: listener.is_some(),
            exit_totals: s.kernel.exit_totals,
        },
        stopped_early,
        kernel_io: s.kernel.kernel_io,
        host: Some(host()),
    };
    let report = report::build(&s.tree, &info);
    // Detach before writing: nothing of pmet stays loaded past this point.
    drop(ring);
    drop(log_fd);
    drop(listener);
    drop(s);

    let exit_code = if launched {
        match root_status {
            Some(st) => st.shell_code(),
            // Still running after the grace period: as timeout(1) says.
            None => 124,
        }
    } else {
        0
    };
    let write_error = match &opts.output {
        Some(o) => {
            let mut json =
                serde_json::to_vec_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
            json.push(b'\n');
            report::write_atomic(o, &json).err()
        }
        None => None,
    };
    Ok(Outcome {
        report,
        exit_code,
        write_error,
    })
}
