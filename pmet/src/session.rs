//! A tracing session's state machine: events, exit records and samples
//! merged into the tree, with one owner for each rule about them. It talks to
//! the world only through [`EventSource`] and [`Sampler`] and is told the
//! time, so [`trace`](crate::trace) only wires it to the real kernel, /proc,
//! signals and clocks, and the tests below drive it with fakes.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use pmet_common::exit_flags;

use crate::{
    collect::{
        decode::{ctx, totals},
        source::{EventSource, Sampler},
        taskstats::TaskStats,
    },
    error::Error,
    model::{
        event::{Event, ThreadTotals},
        series::{ProcPoint, Recorder, Series},
        snapshot::{Snapshot, Snapshotter},
        tree::{Baseline, ExitStatus, Kept, Proc, Seen, SeenThread, Tree},
    },
    report::{self, Lost},
};

/// After this long, a free not seen is given up (see [`Tree::free_missed`]).
pub const FREE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may be gone from the kernel's tracked set before its
/// exit event arrives, before the exit counts as lost.
pub const SUSPECT_GRACE: Duration = Duration::from_millis(250);

/// Cookies chosen by userspace are even; the kernel's are odd, so the two
/// never collide.
struct Cookies(u64);
impl Cookies {
    fn next(&mut self) -> u64 {
        self.0 += 2;
        self.0
    }
}

/// Longest wait, at the end, for the last exits' final figures.
pub const SETTLE: Duration = Duration::from_millis(3000);
/// Stop waiting earlier once none has arrived for this long.
pub const SETTLE_IDLE: Duration = Duration::from_millis(500);

/// The wait at the end of a run for the final figures of the last exits
/// (sent at each thread's last context switch, or by taskstats where it is
/// used): on while they keep coming, over when all are in, after
/// [`SETTLE_IDLE`] without progress, or after [`SETTLE`] in all.
#[derive(Debug)]
pub struct Settle {
    started: Duration,
    last_progress: Duration,
    awaiting: usize,
}

impl Settle {
    /// Starts waiting at `now` (any monotonic clock, as a duration).
    pub fn new(now: Duration) -> Self {
        Self {
            started: now,
            last_progress: now,
            awaiting: usize::MAX,
        }
    }

    /// `awaiting` exits still lack figures at `now`: whether to stop waiting.
    pub fn done(&mut self, awaiting: usize, now: Duration) -> bool {
        if awaiting < self.awaiting {
            self.awaiting = awaiting;
            self.last_progress = now;
        }
        awaiting == 0 || now >= self.started + SETTLE || now >= self.last_progress + SETTLE_IDLE
    }
}

/// A tracing session's state: the tree and everything that feeds it. It
/// owns the rules (which exit is lost, when a free is given up, what a
/// polling round does); the kernel and /proc are reached through
/// [`EventSource`] and [`Sampler`], and the time is passed in, so every rule
/// is tested with fakes.
pub struct Session<E, S> {
    /// The kernel side; `None` when polling /proc only.
    pub kernel: Option<E>,
    /// The process tree.
    pub tree: Tree,
    /// /proc.
    pub procfs: S,
    /// taskstats records waiting to be applied after the ring is drained.
    pub pending_ts: Vec<TaskStats>,
    /// Polling rounds taken.
    pub samples: u64,
    /// Ring records that could not be decoded.
    pub undecodable: u64,
    /// Time spent taking in kernel events, over the run (debug output: the
    /// per-event cost a storm pays while it runs).
    pub drain_time: std::time::Duration,
    follow_children: bool,
    cookies: Cookies,
    snapshots: Snapshotter,
    /// The series the report keeps.
    pub recorder: Recorder,
    /// taskstats records the kernel dropped (the listener's count).
    pub taskstats_overflows: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Processes the kernel no longer tracks, or that /proc no longer has,
    /// whose exit has not arrived, and since when (boottime ns).
    suspects: HashMap<(u32, u64), u64>,
    kernel_io: bool,
    /// NVML or DRM fdinfo, when a GPU is there.
    gpu: Option<Box<dyn crate::collect::gpu::GpuSource>>,
    last_gpu_ns: Option<u64>,
    /// The GPUs are asked at most about this often (see [`Session::watch_gpus`]).
    gpu_every: std::time::Duration,
}

impl<E: EventSource, S: Sampler> Session<E, S> {
    /// A session over `kernel` (or polling only) and `procfs`, started at
    /// `start_ns` (boottime).
    pub fn new(
        kernel: Option<E>,
        procfs: S,
        start_ns: u64,
        kernel_io: bool,
        follow_children: bool,
    ) -> Self {
        // The live figures' network is known where a network hook loaded.
        let ebpf = kernel.as_ref().is_some_and(|k| k.network());
        Self {
            snapshots: Snapshotter::new(start_ns, procfs.ticks_per_s(), kernel_io, ebpf),
            kernel,
            tree: Tree::new(),
            procfs,
            pending_ts: Vec::new(),
            samples: 0,
            undecodable: 0,
            drain_time: std::time::Duration::ZERO,
            follow_children,
            cookies: Cookies(0),
            recorder: Recorder::new(report::MAX_TREE_POINTS, report::MAX_PROC_POINTS),
            suspects: HashMap::new(),
            taskstats_overflows: None,
            kernel_io,
            gpu: None,
            last_gpu_ns: None,
            gpu_every: std::time::Duration::ZERO,
        }
    }

    /// Every loss of the run, once it has settled (the report's).
    pub fn losses(&self) -> Lost {
        self.losses_at(None)
    }

    /// Every loss so far (the one value the live view and the exporters
    /// show) at `now`: a process that ended less than [`FREE_TIMEOUT`] ago
    /// may still be waiting for its final figures, not missing them, so the
    /// count only grows while the run goes on.
    fn losses_at(&self, now: Option<u64>) -> Lost {
        let counters = self.kernel.as_ref().map(|k| k.counters());
        let overflows = self
            .taskstats_overflows
            .as_ref()
            .map_or(0, |o| o.load(std::sync::atomic::Ordering::Relaxed));
        let settled_before = now.map(|n| n.saturating_sub(FREE_TIMEOUT.as_nanos() as u64));
        Lost::measure(
            counters.as_ref(),
            self.undecodable,
            overflows,
            &self.tree,
            settled_before,
        )
    }

    /// Forgets the processes whose figures are final and that `forget`
    /// agrees to (`pmet agent`: once exported), with their series; the tree
    /// keeps their sums. Final: ended a second ago or more with every
    /// thread's free taken in and, when taskstats is listened to, its record
    /// too (it comes on its own path, with peak RSS and context switches),
    /// or vanished; or ended past the point where missing figures are given
    /// up. Returns what was forgotten.
    pub fn prune(&mut self, now: u64, forget: impl Fn(&Proc) -> bool) -> Vec<Box<Proc>> {
        self.prune_with_series(now, forget)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// [`Session::prune`], handing back each forgotten process's series too
    /// (a trace writes them to its report).
    pub fn prune_with_series(
        &mut self,
        now: u64,
        forget: impl Fn(&Proc) -> bool,
    ) -> Vec<(Box<Proc>, Option<Series<ProcPoint>>)> {
        let ago = |d: std::time::Duration| now.saturating_sub(d.as_nanos() as u64);
        let (settled, given_up) = (
            ago(std::time::Duration::from_secs(1)),
            ago(FREE_TIMEOUT + std::time::Duration::from_secs(1)),
        );
        let taskstats = self.taskstats_overflows.is_some();
        let removed = self
            .tree
            .prune(self.procfs.ticks_per_s(), self.kernel_io, |p| {
                let end = p.end_ns.unwrap_or(0);
                let complete =
                    p.vanished || (p.totals_complete() && (!taskstats || p.taskstats.records > 0));
                let done = end <= given_up || (end <= settled && complete);
                done && forget(p)
            });
        removed
            .into_iter()
            .map(|p| {
                self.suspects.remove(&(p.pid, p.cookie));
                let series = self.recorder.procs.remove(&(p.pid, p.cookie));
                (p, series)
            })
            .collect()
    }

    /// Follows GPU use through `source` from now on.
    /// Follows the GPUs `source` sees, asking it at most once per `every`
    /// (the run's `--interval`): samples come faster while the tree is busy,
    /// and asking NVML for its processes costs ~3 ms of CPU each time on an
    /// H200. Utilisation loses nothing by it (the driver keeps its samples
    /// until asked); memory is a peak seen at those looks either way.
    pub fn watch_gpus(
        &mut self,
        source: Box<dyn crate::collect::gpu::GpuSource>,
        every: std::time::Duration,
    ) {
        self.tree.gpu_known = true;
        self.gpu = Some(source);
        self.gpu_every = every;
    }

    /// The GPUs followed, and through what.
    pub fn gpus(&self) -> Option<(&'static str, Vec<crate::collect::gpu::Device>)> {
        self.gpu.as_ref().map(|g| (g.kind(), g.devices().to_vec()))
    }

    /// Hands over the GPU source, done with (the trace closes it on a thread of its own).
    pub fn take_gpu(&mut self) -> Option<Box<dyn crate::collect::gpu::GpuSource>> {
        self.gpu.take()
    }

    fn look_at_gpus(&mut self, now: u64) {
        let Some(g) = self.gpu.as_mut() else {
            return;
        };
        // A quarter of slack, so ticks a hair under `every` apart still look.
        let every = self.gpu_every.as_nanos() as u64;
        if self
            .last_gpu_ns
            .is_some_and(|t| now.saturating_sub(t) < every - every / 4)
        {
            return;
        }
        let pids: Vec<u32> = self.tree.live_keys().into_iter().map(|k| k.0).collect();
        let uses = g.sample(now, &pids);
        let dt = self
            .last_gpu_ns
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9);
        self.last_gpu_ns = Some(now);
        self.tree.apply_gpu(&uses, dt);
    }

    /// At the end: where the driver kept lifetime figures of the processes
    /// that used a GPU (NVML accounting mode, never turned on by pmet),
    /// they replace the sampled ones.
    pub fn gpu_lifetimes(&mut self) {
        let Some(g) = self.gpu.as_ref() else {
            return;
        };
        for p in self
            .tree
            .procs
            .iter_mut()
            .filter(|p| !p.gpu.devices.is_empty())
        {
            for (device, memory, sm) in g.lifetime(p.pid) {
                p.gpu.lifetime(&device, memory, sm);
            }
        }
    }

    /// Samples list the processes that ended since the previous one too.
    pub fn keep_ended(&mut self) {
        self.snapshots.keep_ended = true;
    }

    /// A fresh userspace cookie.
    pub fn next_cookie(&mut self) -> u64 {
        self.cookies.next()
    }

    /// Pids of the processes still running in the tree that are, as far as
    /// can be checked, the very instance pmet follows (the kernel still
    /// tracks the pid under its cookie, or, when polling, it is in /proc with
    /// the start time pmet saw): safe to signal.
    pub fn live_pids(&self) -> Vec<u32> {
        let tick_ns = 1_000_000_000 / self.procfs.ticks_per_s().max(1);
        // A launched root is pmet's own child: until pmet reaps it, its pid
        // cannot be reused.
        let root = self
            .tree
            .root
            .map(|r| (self.tree.procs[r].pid, self.tree.procs[r].cookie));
        self.tree
            .live_keys()
            .into_iter()
            .filter(|&(pid, cookie)| match &self.kernel {
                // pmet's own unreaped child needs no map to vouch for it.
                _ if root == Some((pid, cookie)) => true,
                Some(k) => k.tracked(pid) == Some(cookie),
                None => self.procfs.stat(pid).is_ok_and(|st| {
                    self.tree
                        .live(pid)
                        .is_some_and(|p| p.start_ns == st.starttime * tick_ns)
                }),
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// When the traced run ended, for its duration: the last exit when the
    /// whole tree has ended (not when pmet got round to reporting: pmet may
    /// itself have been stopped or slowed meanwhile), else `now`.
    pub fn end_ns(&self, now: u64) -> u64 {
        if self.tree.alive_count() > 0 {
            return now;
        }
        self.tree
            .procs
            .iter()
            .filter_map(|p| p.end_ns)
            .max()
            .map_or(now, |e| e.min(now))
    }

    /// Whether some process looks gone but its exit has not arrived yet.
    pub fn has_suspects(&self) -> bool {
        !self.suspects.is_empty()
    }

    /// Applies every event waiting in the ring buffer; reads the final socket
    /// counters of processes that exited.
    pub fn drain(&mut self) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        let t = std::time::Instant::now();
        let mut events = Vec::new();
        self.undecodable += kernel.drain_into(&mut events);
        let mut exits = Vec::new();
        let mut ended = Vec::new();
        let mut execs = Vec::new();
        for ev in events {
            match ev {
                Event::Exit {
                    group_dead: true,
                    tgid,
                    cookie,
                    had_net,
                    ..
                } => exits.push((tgid, cookie, had_net)),
                Event::ConnEnd { sock_cookie, .. } => ended.push(sock_cookie),
                // (One whose working directory the kernel side read has it.)
                Event::Exec {
                    tgid, cwd: None, ..
                } => execs.push(tgid),
                Event::Join { pid, cookie, ts_ns } => {
                    // Before what follows about it (its exec, its forks).
                    if self.tree.live(pid).is_none() {
                        let seen = seen_now(&self.procfs, pid, cookie, false, ts_ns, false);
                        self.tree.add_seen(seen);
                    }
                    continue;
                }
                _ => {}
            }
            self.tree.apply(ev);
        }
        // Processes started after the run ended are not followed further.
        for pid in self.tree.take_late_forks() {
            kernel.untrack(pid);
        }
        // Its working directory as it exec'd, read now: taken only if the
        // kernel still tracks the same instance after the read, so a pid
        // reused meanwhile cannot lend its directory.
        for pid in execs {
            let Some(cookie) = self.tree.live(pid).map(|p| p.cookie) else {
                continue;
            };
            if let Some(cwd) = self.procfs.cwd(pid)
                && kernel.tracked(pid) == Some(cookie)
            {
                self.tree.set_cwd((pid, cookie), cwd);
            }
        }
        // A destroyed socket moves no more bytes: take each user's.
        for sock in ended {
            for key in self.tree.sock_users(sock) {
                if let Some((tx, rx)) = kernel.conn_bytes(key, sock, true) {
                    self.tree.set_conn_bytes(key, sock, tx, rx, true);
                }
            }
        }
        for &(pid, cookie, had_net) in &exits {
            // Most processes never touch a socket: the kernel side says
            // which have counters, saving a map lookup per exit.
            let net = if had_net {
                kernel.take_net(pid, cookie).unwrap_or_default()
            } else {
                Default::default()
            };
            self.tree.set_net(pid, cookie, net, true);
        }
        for (pid, cookie, _) in exits {
            self.read_conns((pid, cookie), true);
        }
        self.drain_time += t.elapsed();
    }

    /// Reads one process's connections from the kernel: the bytes of those
    /// not yet final, and the life so far of TCP sockets still followed.
    /// `gone`: the process has ended, so its bytes are final and taken.
    fn read_conns(&mut self, key: (u32, u64), gone: bool) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        let Some(p) = self.tree.get(key) else {
            return;
        };
        let end_ns = p.end_ns;
        for sock in p.conns.pending() {
            if let Some((tx, rx)) = kernel.conn_bytes(key, sock, gone) {
                self.tree.set_conn_bytes(key, sock, tx, rx, gone);
            }
            if let Some(life) = kernel.sock_life(sock) {
                self.tree.set_conn_life(sock, &life);
            }
        }
        if !gone && let Some(n) = kernel.net(key.0, key.1) {
            // Read after its connections: a byte is counted in the totals
            // first, so the totals are never behind their parts.
            self.tree.set_net(key.0, key.1, n, false);
        }
        if gone && let Some(end) = end_ns {
            self.tree.conns_process_ended(key, end);
        }
    }

    /// At the end of a session: every connection's bytes and life as they
    /// stand (those of processes still running are read, not taken).
    pub fn finish_connections(&mut self) {
        self.drain();
        for key in self.tree.keys() {
            let gone = self.tree.get(key).is_some_and(|p| !p.alive());
            self.read_conns(key, gone);
        }
    }

    /// The root was reaped. Everything it did before dying is already in the
    /// ring buffer (its forks, its exit): apply that first, or its last
    /// children would look like orphans.
    pub fn root_exited(&mut self, st: ExitStatus, now_ns: u64) {
        self.drain();
        self.tree.set_root_exit(st, now_ns);
    }

    /// Applies taskstats records, after the ring buffer: a record's process
    /// was announced (fork event) before it could exit.
    pub fn apply_taskstats(&mut self) {
        self.drain();
        for r in std::mem::take(&mut self.pending_ts) {
            self.tree.apply_taskstats(&r);
        }
    }

    /// Gives up on frees the kernel side has not seen `after` the exit.
    pub fn sweep_dying(&mut self, after: Duration, now: u64) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        for (task, d) in kernel.dying() {
            if now.saturating_sub(d.exit_ns) >= after.as_nanos() as u64 {
                kernel.forget_dying(task);
                let kept = (d.flags & exit_flags::STATS_VALID != 0).then(|| Kept {
                    totals: totals(&d.figures),
                    ctx: ctx(&d.figures, d.flags),
                });
                self.tree.free_missed(d.tgid, d.cookie, d.tid, kept);
            }
        }
    }

    /// At the end of a session: takes the figures kept for every exited
    /// thread whose free has not come, then the frees that came meanwhile,
    /// and only then gives up on the rest. (A free that ran just before the
    /// sweep has left the kernel's records already; its event is in the ring.)
    pub fn finish_frees(&mut self, now: u64) {
        let unfreed = |t: &Tree| t.procs.iter().map(|p| p.threads_unfreed).sum::<u32>();
        let debug = log::log_enabled!(log::Level::Debug);
        if debug {
            let kept = self.kernel.as_ref().map_or(0, |k| k.dying().len());
            log::debug!(
                "finish: {kept} kept in the kernel, {} threads await their free",
                unfreed(&self.tree)
            );
        }
        self.sweep_dying(Duration::ZERO, now);
        self.drain();
        if debug {
            log::debug!(
                "finish: after the sweep and a drain, {} threads await their free",
                unfreed(&self.tree)
            );
        }
        if self.kernel.as_ref().is_some_and(|k| k.exit_totals()) {
            self.tree.give_up_frees();
        }
    }

    /// Polling mode: finds new children and gone processes in /proc.
    fn poll_tree(&mut self, now: u64) {
        let all = self.procfs.scan();
        let present: HashSet<u32> = all
            .iter()
            .filter(|s| s.state != 'Z' && s.state != 'X')
            .map(|s| s.pid)
            .collect();
        for (pid, _) in self.tree.live_keys() {
            if !present.contains(&pid) {
                self.tree.mark_gone(pid, now);
            }
        }
        if !self.follow_children {
            return;
        }
        let tick_ns = 1_000_000_000 / self.procfs.ticks_per_s().max(1);
        // Parents before children: repeat until no live process gains one.
        loop {
            let mut added = false;
            for st in &all {
                if !present.contains(&st.pid) || self.tree.live(st.pid).is_some() {
                    continue;
                }
                if self.tree.live(st.ppid).is_none() {
                    continue;
                }
                let cookie = self.cookies.next();
                let (argv, argv_hex) = self.procfs.cmdline(st.pid).unwrap_or_default();
                self.tree.add_seen(Seen {
                    pid: st.pid,
                    ppid: st.ppid,
                    cookie,
                    start_ns: st.starttime * tick_ns,
                    comm: st.comm.clone(),
                    argv,
                    argv_hex,
                    threads: st.num_threads,
                    ..Seen::default()
                });
                added = true;
            }
            if !added {
                break;
            }
        }
    }

    /// One polling round: liveness, /proc samples, live socket counters.
    pub fn tick(&mut self, now: u64) -> Snapshot {
        self.sweep_dying(FREE_TIMEOUT, now);
        if let Some(kernel) = &self.kernel {
            // A process the kernel no longer tracks but the tree thinks alive:
            // its exit event is either still in the ring (drained next) or lost.
            // The kernel side drops a process from its tracked set just
            // before it submits the exit, so a process can look gone while
            // its exit is still on its way to the ring: only one still
            // missing a grace later counts as lost. So does one the samples
            // found gone from /proc while the kernel still tracks it (made a
            // suspect there): tracked after its exit hook ran, no exit will
            // come. A suspect stays one until its exit comes or the grace
            // ends.
            let suspects: Vec<(u32, u64)> = self
                .tree
                .live_keys()
                .into_iter()
                .filter(|key @ &(pid, cookie)| {
                    kernel.tracked(pid) != Some(cookie) || self.suspects.contains_key(key)
                })
                .collect();
            self.apply_taskstats();
            let mut still = HashMap::new();
            for key @ (pid, cookie) in suspects {
                if self.tree.live(pid).is_none_or(|p| p.cookie != cookie) {
                    continue;
                }
                let since = self.suspects.get(&key).copied().unwrap_or(now);
                if now.saturating_sub(since) >= SUSPECT_GRACE.as_nanos() as u64 {
                    log::debug!(
                        "pid {pid} left the kernel's tracked set without an exit event \
                         (the kernel holds cookie {:?} for it, the tree {cookie})",
                        self.kernel.as_ref().and_then(|k| k.tracked(pid))
                    );
                    self.tree.mark_vanished(pid, since);
                    // Its traffic is final too, and its kernel entries must
                    // not outlive it (they would, with no exit to take them).
                    if let Some(k) = self.kernel.as_mut() {
                        if k.tracked(pid) == Some(cookie) {
                            k.untrack(pid);
                        }
                        if let Some(n) = k.take_net(pid, cookie) {
                            self.tree.set_net(pid, cookie, n, true);
                        }
                    }
                    self.read_conns((pid, cookie), true);
                } else {
                    still.insert(key, since);
                }
            }
            self.suspects = still;
        } else {
            self.apply_taskstats();
            self.poll_tree(now);
        }
        for (pid, cookie) in self.tree.live_keys() {
            if let Some(s) = self.procfs.sample(pid, now) {
                self.tree.apply_sample(pid, s);
                if self.tree.shares_due(pid)
                    && let Some(sh) = self.procfs.shares(pid)
                {
                    self.tree.apply_shares(pid, sh);
                }
                if self.tree.wants_threads_io(pid, self.kernel_io)
                    && let Some(io) = self.procfs.threads_io(pid)
                {
                    self.tree.apply_threads_io(pid, io);
                }
            } else if self.kernel.is_some() && self.procfs.gone(pid) {
                // (Not a zombie: a leader that exited before its other
                // threads reads as one, alive.)
                self.suspects.entry((pid, cookie)).or_insert(now);
            }
            if let Some(n) = self.kernel.as_ref().and_then(|k| k.net(pid, cookie)) {
                self.tree.set_net(pid, cookie, n, false);
            }
        }
        // Files kept open for processes sampled before and gone since.
        self.procfs.keep_only(&|pid| self.tree.live(pid).is_some());
        self.look_at_gpus(now);
        self.tree.note_pss();
        self.samples += 1;
        self.tree.fold_settled(
            self.procfs.ticks_per_s(),
            self.kernel_io,
            self.taskstats_overflows.is_some(),
        );
        let snap = self
            .snapshots
            .take(&self.tree, now, self.losses_at(Some(now)).total());
        let keys = self.tree.live_keys().into_iter().collect();
        self.recorder.record(&snap, &keys);
        snap
    }
}

/// Puts `pid` and its descendants in the tracked set. Parents go first, and
/// the walk repeats until it finds nothing new, so a child forked while the
/// walk ran is caught either here or by the kernel.
pub fn attach<E: EventSource, S: Sampler>(
    s: &mut Session<E, S>,
    root: u32,
    since_start: bool,
    now: u64,
    exclude: Option<u32>,
) -> Result<(), Error> {
    // pmet itself, host-wide: not traced, nor anything it starts.
    let mut seen: HashSet<u32> = exclude
        .map(|me| s.procfs.subtree(me).into_iter().collect())
        .unwrap_or_default();
    for _round in 0..100 {
        let subtree = if s.follow_children {
            s.procfs.subtree(root)
        } else {
            vec![root]
        };
        let fresh: Vec<u32> = subtree.into_iter().filter(|p| !seen.contains(p)).collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            seen.insert(pid);
            if s.kernel.as_ref().is_some_and(|k| k.tracked(pid).is_some()) {
                // Forked after its parent was tracked: the kernel announced it.
                continue;
            }
            attach_one(s, pid, since_start, now)?;
        }
    }
    if s.tree.root.is_none() {
        return Err(Error::NoSuchPid(root));
    }
    Ok(())
}

/// Follows one running process from now: tracked in the kernel, added to
/// the tree with what it had used so far as its baseline. Whether it was
/// there (a zombie or a process gone meanwhile is skipped).
pub fn attach_one<E: EventSource, S: Sampler>(
    s: &mut Session<E, S>,
    pid: u32,
    since_start: bool,
    now: u64,
) -> Result<bool, Error> {
    let Ok(stat) = s.procfs.stat(pid) else {
        return Ok(false);
    };
    if stat.state == 'Z' {
        return Ok(false);
    }
    let cookie = s.next_cookie();
    if let Some(k) = s.kernel.as_mut() {
        k.track(pid, cookie)?;
        // A process that exited between that look and the track ran its
        // exit hook untracked: no exit will come, and the tree would hold it
        // alive for good (host-wide, with processes ending all the time, a
        // CI run met this). Looked at again once tracked, one found ending
        // is left out, as one gone before the look would have been.
        if ended_since(&s.procfs, pid, stat.starttime) {
            k.untrack(pid);
            s.tree.ended_at_attach(pid, cookie);
            return Ok(false);
        }
    }
    s.tree
        .add_seen(seen_now(&s.procfs, pid, cookie, since_start, now, true));
    Ok(true)
}

/// Whether the process that started at `starttime` as `pid` is gone, a
/// zombie, or has every thread in do_exit (the last one's exit hook may then
/// have run before the track).
fn ended_since(procfs: &impl Sampler, pid: u32, starttime: u64) -> bool {
    match procfs.stat(pid) {
        Err(_) => true,
        Ok(now) => {
            now.starttime != starttime
                || matches!(now.state, 'Z' | 'X' | 'x')
                || (now.exiting && procfs.threads(pid).iter().all(|t| t.exiting))
        }
    }
}

/// A running process as /proc shows it now, for [`Tree::add_seen`].
fn seen_now(
    procfs: &impl Sampler,
    pid: u32,
    cookie: u64,
    since_start: bool,
    now: u64,
    preexisting: bool,
) -> Seen {
    let stat = procfs.stat(pid).unwrap_or_default();
    let (argv, argv_hex) = procfs.cmdline(pid).unwrap_or_default();
    let baseline = baseline(procfs, pid, since_start, now);
    let tick_ns = 1_000_000_000 / procfs.ticks_per_s().max(1);
    // Each thread's own use so far: subtracted from its figures, unless
    // counting from the process's start.
    let threads_at_attach = procfs
        .threads(pid)
        .into_iter()
        .map(|t| {
            let used = if since_start {
                ThreadTotals::default()
            } else {
                ThreadTotals {
                    runtime_ns: t.runtime_ns.unwrap_or(0),
                    utime_ns: t.utime_ticks * tick_ns,
                    stime_ns: t.stime_ticks * tick_ns,
                    read_bytes: t.read_bytes.unwrap_or(0),
                    write_bytes: t.write_bytes.unwrap_or(0),
                    cancelled_write_bytes: t.cancelled_write_bytes.unwrap_or(0),
                }
            };
            SeenThread {
                tid: t.tid,
                comm: t.comm,
                used,
            }
        })
        .collect();
    Seen {
        pid,
        ppid: stat.ppid,
        cookie,
        start_ns: stat.starttime * tick_ns,
        comm: stat.comm.clone(),
        argv,
        argv_hex,
        threads: stat.num_threads,
        baseline,
        preexisting,
        threads_at_attach,
        ids: procfs.ids(pid),
        env: procfs.environ(pid),
        cwd: procfs.cwd(pid),
    }
}

/// What a process had used when pmet attached: subtracted from its final
/// figures, or (`--since-process-start`) the part the kernel will not report
/// at exit (threads that ended before attach) added to them.
fn baseline(procfs: &impl Sampler, pid: u32, since_start: bool, now: u64) -> Baseline {
    let threads = procfs.threads(pid);
    let tick_ns = 1_000_000_000 / procfs.ticks_per_s().max(1);
    let runtime: u64 = threads.iter().filter_map(|t| t.runtime_ns).sum();
    let utime: u64 = threads.iter().map(|t| t.utime_ticks * tick_ns).sum();
    let stime: u64 = threads.iter().map(|t| t.stime_ticks * tick_ns).sum();
    let read: u64 = threads.iter().filter_map(|t| t.read_bytes).sum();
    let write: u64 = threads.iter().filter_map(|t| t.write_bytes).sum();
    let cancelled: u64 = threads.iter().filter_map(|t| t.cancelled_write_bytes).sum();
    let sample = procfs.sample(pid, now);
    if !since_start {
        return Baseline {
            thread_runtime_ns: runtime,
            thread_utime_ns: utime,
            thread_stime_ns: stime,
            thread_read_bytes: read,
            thread_write_bytes: write,
            thread_cancelled_write_bytes: cancelled,
            sample,
            ..Baseline::default()
        };
    }
    // The whole process minus its live threads: what ended before attach.
    let s = sample.unwrap_or_default();
    let total_u = s.utime_ticks * tick_ns;
    let total_s = s.stime_ticks * tick_ns;
    Baseline {
        credit_runtime_ns: (total_u + total_s).saturating_sub(runtime),
        credit_utime_ns: total_u.saturating_sub(utime),
        credit_stime_ns: total_s.saturating_sub(stime),
        credit_read_bytes: s.read_bytes.unwrap_or(0).saturating_sub(read),
        credit_write_bytes: s.write_bytes.unwrap_or(0).saturating_sub(write),
        credit_cancelled_write_bytes: s
            .cancelled_write_bytes
            .unwrap_or(0)
            .saturating_sub(cancelled),
        from_start: true,
        ..Baseline::default()
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! In-memory stand-ins for the kernel side and /proc.

    use std::{
        collections::{HashMap, VecDeque},
        io,
    };

    use pmet_common::{Dying, counter};

    use crate::{
        collect::{
            procfs::{Sample, Shares, Stat, ThreadFigures},
            source::{EventSource, Sampler},
        },
        error::Error,
        model::{
            conn::Life,
            event::{Event, ThreadTotals},
            net::Net,
        },
    };

    /// The kernel side: a queue of events and the maps, set by the test.
    #[derive(Default)]
    pub struct FakeKernel {
        pub events: VecDeque<Event>,
        pub tracked: HashMap<u32, u64>,
        pub net: HashMap<(u32, u64), Net>,
        pub counters: [u64; counter::LEN as usize],
        pub dying: HashMap<u64, Dying>,
        pub undecodable: u64,
        /// Bytes per (pid, cookie, socket cookie).
        pub conns: HashMap<(u32, u64, u64), (u64, u64)>,
        /// Followed TCP sockets.
        pub socks: HashMap<u64, Life>,
    }

    impl FakeKernel {
        /// Announces a process forked by `parent` and tracks it, as the
        /// kernel side does.
        pub fn fork(&mut self, ts_ns: u64, parent: u32, child: u32, cookie: u64) {
            self.tracked.insert(child, cookie);
            self.events.push_back(Event::Fork {
                shares_memory: false,
                ts_ns,
                parent_tgid: parent,
                child,
                cookie,
                thread: false,
                untracked: false,
                new_pid_ns: false,
                comm: "child".into(),
            });
        }

        /// The process's last thread exits: untracked first, then the event,
        /// in that order, as the kernel side does.
        pub fn exit(&mut self, ts_ns: u64, pid: u32, cookie: u64, code: u32) {
            self.tracked.remove(&pid);
            self.events.push_back(Event::Exit {
                maxrss_bytes: None,
                ts_ns,
                tgid: pid,
                tid: pid,
                cookie,
                group_dead: true,
                had_net: true,
                exit_code: Some(code << 8),
                comm: "child".into(),
                peak_rss_bytes: None,
            });
        }

        /// The process's (one) thread is freed with these final figures.
        pub fn free(&mut self, ts_ns: u64, pid: u32, cookie: u64, totals: ThreadTotals) {
            self.events.push_back(Event::Free {
                ts_ns,
                tgid: pid,
                tid: pid,
                cookie,
                totals: Some(totals),
                kept: false,
                ctx: None,
            });
        }
    }

    impl EventSource for FakeKernel {
        fn drain_into(&mut self, out: &mut Vec<Event>) -> u64 {
            out.extend(self.events.drain(..));
            std::mem::take(&mut self.undecodable)
        }
        fn track(&mut self, pid: u32, cookie: u64) -> Result<(), Error> {
            self.tracked.insert(pid, cookie);
            Ok(())
        }
        fn untrack(&mut self, pid: u32) {
            self.tracked.remove(&pid);
        }
        fn tracked(&self, pid: u32) -> Option<u64> {
            self.tracked.get(&pid).copied()
        }
        fn net(&self, pid: u32, cookie: u64) -> Option<Net> {
            self.net.get(&(pid, cookie)).copied()
        }
        fn take_net(&mut self, pid: u32, cookie: u64) -> Option<Net> {
            self.net.remove(&(pid, cookie))
        }
        fn counters(&self) -> [u64; counter::LEN as usize] {
            self.counters
        }
        fn dying(&self) -> Vec<(u64, Dying)> {
            self.dying.iter().map(|(k, v)| (*k, *v)).collect()
        }
        fn forget_dying(&mut self, task: u64) {
            self.dying.remove(&task);
        }
        fn exit_totals(&self) -> bool {
            true
        }
        fn connections(&self) -> bool {
            true
        }
        fn conn_bytes(&mut self, key: (u32, u64), sock: u64, take: bool) -> Option<(u64, u64)> {
            let k = (key.0, key.1, sock);
            if take {
                self.conns.remove(&k)
            } else {
                self.conns.get(&k).copied()
            }
        }
        fn sock_life(&self, sock: u64) -> Option<Life> {
            self.socks.get(&sock).copied()
        }
    }

    /// /proc: the processes the test says exist.
    #[derive(Default)]
    pub struct FakeProc {
        pub stats: HashMap<u32, Stat>,
        pub samples: HashMap<u32, Sample>,
        pub shares: HashMap<u32, Shares>,
        pub cwds: HashMap<u32, String>,
        /// A process that exits after this many more reads of its stat.
        pub stat_reads_left: std::cell::RefCell<HashMap<u32, u32>>,
        /// Processes reaped: gone from /proc (any other is there).
        pub reaped: std::collections::HashSet<u32>,
        /// Live threads' own I/O, per process.
        pub threads_io: HashMap<u32, [u64; 3]>,
    }

    impl Sampler for FakeProc {
        fn ticks_per_s(&self) -> u64 {
            100
        }
        fn stat(&self, pid: u32) -> io::Result<Stat> {
            if let Some(n) = self.stat_reads_left.borrow_mut().get_mut(&pid) {
                if *n == 0 {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                *n -= 1;
            }
            self.stats
                .get(&pid)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn cmdline(&self, pid: u32) -> io::Result<(Vec<String>, crate::model::event::ArgvHex)> {
            self.stat(pid).map(|s| (vec![s.comm], None))
        }
        fn sample(&self, pid: u32, ts_ns: u64) -> Option<Sample> {
            self.samples.get(&pid).map(|s| Sample { ts_ns, ..*s })
        }
        fn threads(&self, _pid: u32) -> Vec<ThreadFigures> {
            Vec::new()
        }
        fn shares(&self, pid: u32) -> Option<Shares> {
            self.shares.get(&pid).copied()
        }
        fn cwd(&self, pid: u32) -> Option<String> {
            self.cwds.get(&pid).cloned()
        }
        fn ids(&self, _pid: u32) -> Option<crate::model::event::Ids> {
            None
        }
        fn environ(&self, _pid: u32) -> Option<Vec<String>> {
            None
        }
        fn scan(&self) -> Vec<Stat> {
            self.stats.values().cloned().collect()
        }
        fn gone(&self, pid: u32) -> bool {
            self.reaped.contains(&pid)
        }
        fn threads_io(&self, pid: u32) -> Option<[u64; 3]> {
            self.threads_io.get(&pid).copied()
        }
        fn subtree(&self, pid: u32) -> Vec<u32> {
            let mut out = vec![pid];
            let mut i = 0;
            while i < out.len() {
                let p = out[i];
                let mut kids: Vec<u32> = self
                    .stats
                    .values()
                    .filter(|s| s.ppid == p)
                    .map(|s| s.pid)
                    .collect();
                kids.sort_unstable();
                out.extend(kids);
                i += 1;
            }
            out.retain(|p| self.stats.contains_key(p));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use pmet_common::Dying;

    use super::{
        fake::{FakeKernel, FakeProc},
        *,
    };
    use crate::collect::procfs::Stat;

    const MS: u64 = 1_000_000;
    const ROOT: u32 = 100;

    /// A launched root (pid 100, cookie 2), tracked, at t = 1 s.
    fn session() -> Session<FakeKernel, FakeProc> {
        let mut s = Session::new(
            Some(FakeKernel::default()),
            FakeProc::default(),
            1000 * MS,
            true,
            true,
        );
        let cookie = s.next_cookie();
        s.kernel.as_mut().unwrap().track(ROOT, cookie).unwrap();
        s.tree
            .add_root(ROOT, 1, cookie, 1000 * MS, vec!["make".into()]);
        s
    }

    fn kernel(s: &mut Session<FakeKernel, FakeProc>) -> &mut FakeKernel {
        s.kernel.as_mut().unwrap()
    }

    fn by_pid(s: &Session<FakeKernel, FakeProc>, pid: u32) -> Vec<&crate::model::tree::Proc> {
        s.tree
            .procs
            .iter()
            .filter(|p| p.pid == pid)
            .map(|p| &**p)
            .collect()
    }

    /// A GPU that counts how often it is asked.
    struct CountingGpu(
        std::sync::Arc<std::sync::atomic::AtomicU32>,
        Vec<crate::collect::gpu::Device>,
    );

    impl crate::collect::gpu::GpuSource for CountingGpu {
        fn devices(&self) -> &[crate::collect::gpu::Device] {
            &self.1
        }
        fn kind(&self) -> &'static str {
            "nvml"
        }
        fn sample(&mut self, _now_ns: u64, _pids: &[u32]) -> Vec<crate::collect::gpu::Use> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::new()
        }
    }

    #[test]
    fn the_gpus_are_asked_at_most_once_an_interval_however_fast_samples_come() {
        let mut s = session();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        s.watch_gpus(
            Box::new(CountingGpu(asked.clone(), Vec::new())),
            std::time::Duration::from_secs(1),
        );
        // Busy: a sample every 200 ms for 3 s (16 samples from t = 1 s).
        for i in 0..=15 {
            s.tick(1000 * MS + i * 200 * MS);
        }
        // At 1.0, 2.0, 3.0 and 4.0 s: one look a second, the first at once.
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 4);
        // Ticks a hair under a second apart still look every time.
        for i in 1..=3 {
            s.tick(4000 * MS + i * 990 * MS);
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 7);
    }

    #[test]
    fn an_exit_still_on_its_way_is_not_lost() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        s.tick(1200 * MS);
        // The kernel untracks 200 before its exit reaches the ring.
        kernel(&mut s).tracked.remove(&200);
        s.tick(1300 * MS);
        assert!(s.tree.live(200).is_some(), "a suspect, not yet lost");
        assert!(s.has_suspects());
        kernel(&mut s).exit(1290 * MS, 200, 11, 3);
        s.tick(1400 * MS);
        let p = by_pid(&s, 200)[0];
        assert!(!p.vanished);
        assert_eq!(p.exit.map(|e| e.shell_code()), Some(3));
        assert!(!s.has_suspects());
    }

    #[test]
    fn one_tracked_after_its_exit_is_lost_once_gone_from_proc_and_untracked() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        s.tick(1200 * MS);
        // Its exit hook ran before the track: the kernel still holds it,
        // no exit comes, and /proc has let it go.
        s.procfs.reaped.insert(200);
        s.tick(1300 * MS);
        s.tick(1400 * MS);
        assert!(s.tree.live(200).is_some(), "within the grace: a suspect");
        s.tick(1300 * MS + SUSPECT_GRACE.as_nanos() as u64);
        let p = by_pid(&s, 200)[0];
        assert!(p.vanished);
        assert_eq!(p.end_ns, Some(1300 * MS));
        assert_eq!(s.losses().exits_unseen, 1);
        assert_eq!(kernel(&mut s).tracked(200), None, "its entry is freed");
        assert!(
            s.tree.live(ROOT).is_some(),
            "the root, in /proc, is not touched"
        );
    }

    #[test]
    fn the_live_view_and_the_report_count_the_same_losses() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        kernel(&mut s).counters[pmet_common::counter::RINGBUF_FULL as usize] = 3;
        kernel(&mut s).undecodable = 2;
        s.tick(1200 * MS);
        kernel(&mut s).tracked.remove(&200);
        s.tick(1300 * MS);
        let snap = s.tick(1300 * MS + SUSPECT_GRACE.as_nanos() as u64);
        let l = s.losses();
        assert_eq!((l.ring_buffer, l.read_failures, l.exits_unseen), (3, 2, 1));
        assert_eq!(snap.lost, l.total(), "one value for both");
        assert_eq!(l.total(), 6);
    }

    #[test]
    fn a_fork_the_kernel_could_not_follow_is_counted_not_waited_for() {
        let mut s = session();
        kernel(&mut s).events.push_back(Event::Fork {
            shares_memory: false,
            ts_ns: 1100 * MS,
            parent_tgid: ROOT,
            child: 300,
            cookie: 0,
            thread: false,
            untracked: true,
            new_pid_ns: false,
            comm: "x".into(),
        });
        s.drain();
        let p = by_pid(&s, 300)[0];
        assert!(p.untracked && p.vanished, "no exit will come for it");
        assert_eq!(s.tree.alive_count(), 1, "only the root");
        assert_eq!(s.tree.awaiting_totals(), 0, "nothing to wait for");
        kernel(&mut s).counters[pmet_common::counter::TRACKED_FULL as usize] = 1;
        assert_eq!(s.losses().tracked_map_full, 1);
        assert_eq!(s.losses().exits_unseen, 0, "counted once, as map full");
    }

    #[test]
    fn settling_waits_while_figures_come_and_no_longer() {
        let ms = Duration::from_millis;
        // All in at once.
        assert!(Settle::new(ms(0)).done(0, ms(0)));
        // Coming in: waits; stuck: gives up after the idle time.
        let mut st = Settle::new(ms(0));
        assert!(!st.done(5, ms(0)));
        assert!(!st.done(3, ms(400)));
        assert!(!st.done(3, ms(400) + SETTLE_IDLE - ms(1)));
        assert!(st.done(3, ms(400) + SETTLE_IDLE));
        // Trickling in forever: the hard stop.
        let mut st = Settle::new(ms(0));
        let mut n = 1000;
        let mut t = ms(0);
        while !st.done(n, t) {
            n -= 1;
            t += ms(100);
        }
        assert_eq!(t, SETTLE);
    }

    #[test]
    fn an_exit_never_seen_is_lost_after_the_grace() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        s.tick(1200 * MS);
        kernel(&mut s).tracked.remove(&200);
        s.tick(1300 * MS);
        s.tick(1300 * MS + SUSPECT_GRACE.as_nanos() as u64 - 1);
        assert!(!by_pid(&s, 200)[0].vanished, "not before the grace");
        kernel(&mut s)
            .net
            .insert((200, 11), crate::model::net::Net::default());
        s.tick(1300 * MS + SUSPECT_GRACE.as_nanos() as u64);
        assert!(
            kernel(&mut s).net.is_empty(),
            "its kernel entry is taken, not leaked"
        );
        let p = by_pid(&s, 200)[0];
        assert!(p.net_final);
        assert!(p.vanished);
        assert_eq!(
            p.end_ns,
            Some(1300 * MS),
            "gone since the first look that missed it"
        );
        assert_eq!(s.tree.alive_count(), 1, "only the root is alive");
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let mut s = session();
        let k = kernel(&mut s);
        k.fork(1100 * MS, ROOT, 200, 11);
        k.net.insert(
            (200, 11),
            crate::model::net::Net {
                tcp: crate::model::net::Traffic {
                    tx_bytes: 5,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        k.exit(1150 * MS, 200, 11, 0);
        k.fork(1160 * MS, ROOT, 200, 13);
        k.exit(1170 * MS, 200, 13, 1);
        s.drain();
        let ps = by_pid(&s, 200);
        assert_eq!(ps.len(), 2, "two processes with one pid");
        assert_eq!(
            ps.iter()
                .map(|p| (p.cookie, p.exit.map(|e| e.shell_code())))
                .collect::<Vec<_>>(),
            [(11, Some(0)), (13, Some(1))]
        );
        assert_eq!(
            ps[0].net.tcp.tx_bytes, 5,
            "counters stay with their instance"
        );
        assert!(ps[0].net_final);
        assert_eq!(ps[1].net.tcp.tx_bytes, 0);
        assert!(kernel(&mut s).net.is_empty(), "final counters are taken");
    }

    #[test]
    fn a_free_never_seen_is_given_up_after_the_timeout() {
        let mut s = session();
        let k = kernel(&mut s);
        k.fork(1100 * MS, ROOT, 200, 11);
        k.exit(1200 * MS, 200, 11, 0);
        k.dying.insert(
            0xdead,
            Dying {
                tgid: 200,
                tid: 200,
                cookie: 11,
                exit_ns: 1200 * MS,
                ..Dying::default()
            },
        );
        s.drain();
        let timeout = FREE_TIMEOUT.as_nanos() as u64;
        s.sweep_dying(FREE_TIMEOUT, 1200 * MS + timeout - 1);
        assert_eq!(kernel(&mut s).dying.len(), 1, "still waiting");
        s.sweep_dying(FREE_TIMEOUT, 1200 * MS + timeout);
        assert!(kernel(&mut s).dying.is_empty());
        assert_eq!(by_pid(&s, 200)[0].threads_unfreed, 0);
        assert_eq!(by_pid(&s, 200)[0].freed_missing, 1, "nothing was kept");
    }

    #[test]
    fn a_free_given_up_takes_the_figures_kept_at_exit() {
        let mut s = session();
        let k = kernel(&mut s);
        k.fork(1100 * MS, ROOT, 200, 11);
        k.exit(1200 * MS, 200, 11, 0);
        k.dying.insert(
            0xdead,
            Dying {
                tgid: 200,
                tid: 200,
                cookie: 11,
                exit_ns: 1200 * MS,
                figures: pmet_common::TaskFigures {
                    sum_exec_runtime: 550_000,
                    utime: 3,
                    stime: 1,
                    ..Default::default()
                },
                flags: exit_flags::STATS_VALID,
                _pad: 0,
            },
        );
        s.drain();
        // The end of a session: every free still awaited is given up.
        s.sweep_dying(Duration::ZERO, 1300 * MS);
        let p = by_pid(&s, 200)[0];
        assert_eq!(p.freed.runtime_ns, 550_000);
        assert_eq!(p.freed_kept, 1);
        assert!(p.totals_complete());
        // What the report and the live view say about it.
        let l = s.losses();
        assert_eq!(
            (
                l.free_events_missed,
                l.frees_kept_at_last_switch,
                l.frees_kept_at_exit
            ),
            (1, 0, 1)
        );
        assert_eq!(l.total(), 0, "made good: not a loss");
    }

    #[test]
    fn processes_started_after_the_run_ended_are_left_out_without_a_loss() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        s.drain();
        s.tree.close(1500 * MS);
        let k = kernel(&mut s);
        // Forked before the end, seen after it: part of the run.
        k.fork(1400 * MS, ROOT, 201, 13);
        // Forked after it, with a child of its own and an exit.
        k.fork(1600 * MS, 200, 202, 15);
        k.fork(1610 * MS, 202, 203, 17);
        k.exit(1700 * MS, 202, 15, 0);
        s.drain();
        assert_eq!(by_pid(&s, 201).len(), 1);
        assert!(by_pid(&s, 202).is_empty() && by_pid(&s, 203).is_empty());
        assert_eq!(kernel(&mut s).tracked(202), None, "no longer followed");
        assert_eq!(kernel(&mut s).tracked(203), None);
        assert_eq!(s.losses().total(), 0);
        // A process of the run that exits after it ended, whose final
        // figures are not in yet: incomplete, but not a loss.
        kernel(&mut s).exit(1800 * MS, 200, 11, 0);
        s.drain();
        let p = by_pid(&s, 200)[0];
        assert!(!p.alive() && !p.totals_complete());
        assert_eq!(s.losses().total(), 0);
    }

    #[test]
    fn a_long_session_forgets_final_processes_and_keeps_their_losses() {
        let mut s = session();
        let k = kernel(&mut s);
        // 200 ends with its free seen; 201 ends and its free never comes.
        k.fork(1100 * MS, ROOT, 200, 11);
        k.fork(1100 * MS, ROOT, 201, 13);
        k.exit(1200 * MS, 200, 11, 0);
        k.exit(1200 * MS, 201, 13, 0);
        k.free(
            1210 * MS,
            200,
            11,
            ThreadTotals {
                runtime_ns: 5 * MS,
                ..ThreadTotals::default()
            },
        );
        s.drain();
        // Within a second of the end nothing goes; 201 is pending, not lost.
        assert!(s.prune(2000 * MS, |_| true).is_empty());
        assert_eq!(s.losses_at(Some(2000 * MS)).totals_missing, 0);
        // 200 is final a second after its end; 201 only once its free is
        // given up, and then as missing figures, counted once for good.
        let gone = s.prune(2300 * MS, |_| true);
        assert_eq!(gone.iter().map(|p| p.pid).collect::<Vec<_>>(), [200]);
        assert_eq!(s.tree.seen_count(), 3);
        assert_eq!(s.tree.gone.cpu_s, 0.005);
        let later = 1200 * MS + (FREE_TIMEOUT + Duration::from_secs(1)).as_nanos() as u64;
        let before = s.losses_at(Some(later));
        assert_eq!(before.totals_missing, 1);
        assert!(
            s.prune(later, |p| p.pid != 201).is_empty(),
            "forget says no"
        );
        let gone = s.prune(later, |_| true);
        assert_eq!(gone.iter().map(|p| p.pid).collect::<Vec<_>>(), [201]);
        assert_eq!(s.losses_at(Some(later)), before);
        assert_eq!(s.tree.procs.len(), 1, "the root stays");
        assert_eq!(s.tree.seen_count(), 3);
    }

    #[test]
    fn a_settled_process_is_summed_once_not_walked_and_a_late_change_unfolds_it() {
        let mut s = session();
        let k = kernel(&mut s);
        k.fork(1100 * MS, ROOT, 200, 11);
        k.fork(1100 * MS, ROOT, 201, 13);
        k.exit(1200 * MS, 200, 11, 3);
        let used = ThreadTotals {
            runtime_ns: 5 * MS,
            utime_ns: 4 * MS,
            stime_ns: MS,
            read_bytes: 4096,
            ..ThreadTotals::default()
        };
        k.free(1210 * MS, 200, 11, used);
        s.drain();
        let index = |s: &Session<FakeKernel, FakeProc>, pid| {
            s.tree.procs.iter().position(|p| p.pid == pid).unwrap()
        };
        let snap = s.tick(1300 * MS);
        assert!(s.tree.is_folded(index(&s, 200)), "ended, every figure in");
        assert!(!s.tree.is_folded(index(&s, 201)), "alive");
        assert!(!s.tree.is_folded(index(&s, ROOT)), "alive");
        assert_eq!(s.tree.folded.procs, 1);
        assert_eq!(
            (snap.cpu_s, snap.disk_read_bytes, snap.failed),
            (0.005, 4096, 1)
        );
        // A late change to a folded process (its socket counters read
        // again) takes it out of the sums, and the next look folds it in
        // again with the new figures: counted once either way.
        let mut net = crate::model::net::Net::default();
        net.udp.tx_bytes = 700;
        s.tree.set_net(200, 11, net, true);
        assert!(!s.tree.is_folded(index(&s, 200)));
        assert_eq!(s.tree.folded, crate::model::tree::Gone::default());
        let snap = s.tick(1400 * MS);
        assert!(s.tree.is_folded(index(&s, 200)));
        assert_eq!(snap.net.unwrap().udp.tx_bytes, 700);
        assert_eq!(
            (snap.cpu_s, snap.disk_read_bytes, snap.failed),
            (0.005, 4096, 1)
        );
        // Forgotten, it moves from the folded sums to the gone ones: the
        // totals stay.
        assert_eq!(s.prune(2300 * MS, |_| true).len(), 1);
        assert_eq!(s.tree.folded.procs, 0);
        assert_eq!(s.tree.gone.procs, 1);
        let snap = s.tick(2400 * MS);
        assert_eq!(
            (snap.cpu_s, snap.disk_read_bytes, snap.failed),
            (0.005, 4096, 1)
        );
        assert_eq!(snap.net.unwrap().udp.tx_bytes, 700);
        assert_eq!(s.losses().total(), 0);
    }

    #[test]
    fn with_taskstats_a_process_is_final_once_its_record_has_come() {
        let mut s = session();
        s.taskstats_overflows = Some(Default::default());
        let k = kernel(&mut s);
        k.fork(1100 * MS, ROOT, 200, 11);
        k.exit(1200 * MS, 200, 11, 0);
        k.free(1210 * MS, 200, 11, ThreadTotals::default());
        s.drain();
        // Its free is in, its record is not: not final yet.
        assert!(s.prune(2300 * MS, |_| true).is_empty());
        s.pending_ts.push(crate::model::input::TaskStats {
            tid: 200,
            tgid: 200,
            hiwater_rss_kb: 512,
            ..Default::default()
        });
        s.apply_taskstats();
        let gone = s.prune(2300 * MS, |_| true);
        assert_eq!(gone.iter().map(|p| p.pid).collect::<Vec<_>>(), [200]);
        assert_eq!(gone[0].taskstats.hiwater_rss_kb, 512);
    }

    #[test]
    fn the_root_exits_with_a_descendant_still_running() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        kernel(&mut s).exit(1500 * MS, ROOT, 2, 0);
        s.root_exited(crate::model::tree::ExitStatus::from_raw(0), 1500 * MS);
        assert_eq!(s.tree.alive_count(), 1);
        assert!(s.tree.live(200).is_some());
        assert!(s.tree.live(ROOT).is_none());
    }

    #[test]
    fn the_run_ends_with_its_last_exit_not_when_pmet_reports() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        kernel(&mut s).exit(1500 * MS, 200, 11, 0);
        s.drain();
        assert_eq!(s.end_ns(9000 * MS), 9000 * MS, "the root still runs");
        s.root_exited(crate::model::tree::ExitStatus::from_raw(0), 1400 * MS);
        // pmet was stopped for seconds before it reported.
        assert_eq!(s.end_ns(11_000 * MS), 1500 * MS);
    }

    #[test]
    fn only_the_instances_followed_are_signalled() {
        let mut s = session();
        kernel(&mut s).fork(1100 * MS, ROOT, 200, 11);
        kernel(&mut s).fork(1100 * MS, ROOT, 201, 13);
        s.drain();
        // 201 exited unseen and its pid went to an unrelated process.
        kernel(&mut s).tracked.insert(201, 99);
        assert_eq!(s.live_pids(), [ROOT, 200]);
    }

    #[test]
    fn the_launched_root_is_signalled_before_the_kernel_map_has_it() {
        let mut s = session();
        // Whatever the map holds for its pid, pmet's own unreaped child is
        // the command.
        kernel(&mut s).tracked.remove(&ROOT);
        assert_eq!(s.live_pids(), [ROOT]);
        kernel(&mut s).tracked.insert(ROOT, 12345);
        assert_eq!(s.live_pids(), [ROOT]);
    }

    #[test]
    fn when_polling_a_pid_is_signalled_only_if_it_started_when_seen() {
        let mut s: Session<FakeKernel, FakeProc> =
            Session::new(None, FakeProc::default(), 1000 * MS, false, true);
        let stat = |pid, ppid, starttime| Stat {
            pid,
            ppid,
            comm: format!("p{pid}"),
            state: 'S',
            num_threads: 1,
            starttime,
            ..Stat::default()
        };
        // The launched root: its start is pmet's clock, not /proc's.
        s.tree
            .add_root(ROOT, 1, 2, 1000 * MS + 1, vec!["sh".into()]);
        s.procfs.stats.insert(ROOT, stat(ROOT, 1, 100));
        s.procfs.stats.insert(200, stat(200, ROOT, 105));
        s.tick(1100 * MS);
        assert_eq!(s.live_pids(), [ROOT, 200]);
        // 200 exited between two looks and an unrelated process took its pid.
        s.procfs.stats.insert(200, stat(200, 1, 107));
        assert_eq!(s.live_pids(), [ROOT]);
    }

    #[test]
    fn a_reaped_childs_io_is_not_its_parents_own_while_the_parent_lives() {
        use crate::{collect::procfs::Sample, model::figures::figures};
        const MIB: u64 = 1 << 20;
        let mut s = session();
        let whole = |s: &mut Session<FakeKernel, FakeProc>, write| {
            let sample = Sample {
                write_bytes: Some(write),
                read_bytes: Some(0),
                threads: 1,
                ..Sample::default()
            };
            s.procfs.samples.insert(ROOT, sample);
        };
        let own_write = |s: &Session<FakeKernel, FakeProc>| {
            figures(by_pid(s, ROOT)[0], 100, true).disk.unwrap().write
        };
        // The root wrote 4 KiB of its own; its /proc/PID/io says so.
        whole(&mut s, 4096);
        s.procfs.threads_io.insert(ROOT, [0, 4096, 0]);
        s.tick(1100 * MS);
        assert_eq!(own_write(&s), 4096);
        // Its child writes 50 MiB, ends and is reaped: the kernel adds those
        // 50 MiB to the root's /proc/PID/io, not to its threads'.
        kernel(&mut s).fork(1150 * MS, ROOT, 200, 11);
        kernel(&mut s).exit(1200 * MS, 200, 11, 0);
        let child = ThreadTotals {
            write_bytes: 50 * MIB,
            ..ThreadTotals::default()
        };
        kernel(&mut s).free(1200 * MS, 200, 11, child);
        whole(&mut s, 50 * MIB + 4096);
        s.tick(1300 * MS);
        assert_eq!(own_write(&s), 4096, "the child's 50 MiB are the child's");
        assert_eq!(
            figures(by_pid(&s, 200)[0], 100, true).disk.unwrap().write,
            50 * MIB
        );
        // A thread of its own that ended is still its own (the kernel side's
        // final figures of it); one gone from task/ before its free is taken
        // in does not make the figure dip.
        s.procfs.threads_io.insert(ROOT, [0, 8192, 0]);
        s.tick(1400 * MS);
        assert_eq!(own_write(&s), 8192);
        s.procfs.threads_io.insert(ROOT, [0, 4096, 0]);
        s.tick(1500 * MS);
        assert_eq!(own_write(&s), 8192, "not taken in yet: no dip");
        let thread = ThreadTotals {
            write_bytes: 4096,
            ..ThreadTotals::default()
        };
        let cookie = by_pid(&s, ROOT)[0].cookie;
        kernel(&mut s).events.push_back(Event::Free {
            ts_ns: 1550 * MS,
            tgid: ROOT,
            tid: ROOT + 1,
            cookie,
            totals: Some(thread),
            kept: false,
            ctx: None,
        });
        s.tick(1600 * MS);
        assert_eq!(own_write(&s), 8192);
    }

    #[test]
    fn since_process_start_counts_a_running_process_from_its_start() {
        use crate::{collect::procfs::Sample, model::figures::figures};
        for (since_start, want_user_s) in [(true, 3.0), (false, 1.0)] {
            let mut s = Session::new(
                Some(FakeKernel::default()),
                FakeProc::default(),
                1000 * MS,
                true,
                true,
            );
            s.procfs.stats.insert(
                300,
                Stat {
                    pid: 300,
                    ppid: 1,
                    state: 'R',
                    num_threads: 1,
                    ..Stat::default()
                },
            );
            let at = |ticks| Sample {
                utime_ticks: ticks,
                read_bytes: Some(ticks * 10),
                write_bytes: Some(ticks * 20),
                threads: 1,
                ..Sample::default()
            };
            // 2 s of CPU before attach, 1 s while traced.
            s.procfs.samples.insert(300, at(200));
            attach(&mut s, 300, since_start, 1000 * MS, None).unwrap();
            s.procfs.samples.insert(300, at(300));
            s.tick(2000 * MS);
            let f = figures(&s.tree.procs[0], 100, true);
            assert_eq!(f.source, "sample");
            assert_eq!(f.cpu.unwrap().0, want_user_s, "since_start={since_start}");
            let ticks = (want_user_s * 100.0) as u64;
            let d = f.disk.unwrap();
            assert_eq!((d.read, d.write), (ticks * 10, ticks * 20));
        }
    }

    #[test]
    fn smaps_is_read_when_rss_grows_or_a_while_has_passed() {
        use crate::collect::procfs::{Sample, Shares};
        let mut s: Session<FakeKernel, FakeProc> =
            Session::new(None, FakeProc::default(), 1000 * MS, false, false);
        s.procfs.stats.insert(
            300,
            Stat {
                pid: 300,
                ppid: 1,
                state: 'S',
                num_threads: 1,
                ..Stat::default()
            },
        );
        attach(&mut s, 300, false, 1000 * MS, None).unwrap();
        let rss = |s: &mut Session<FakeKernel, FakeProc>, mib: u64, pss_mib: u64| {
            s.procfs.samples.insert(
                300,
                Sample {
                    rss_bytes: mib << 20,
                    ..Sample::default()
                },
            );
            s.procfs.shares.insert(
                300,
                Shares {
                    pss_bytes: pss_mib << 20,
                    ..Shares::default()
                },
            );
        };
        let peak = |s: &Session<FakeKernel, FakeProc>| s.tree.procs[0].memory_peak.unwrap().pss;
        rss(&mut s, 100, 60);
        s.tick(1100 * MS);
        assert_eq!(peak(&s), Some(60 << 20), "read at the first look");
        assert_eq!(s.tree.pss_peak, 60 << 20);
        rss(&mut s, 101, 80);
        s.tick(1200 * MS);
        assert_eq!(peak(&s), Some(60 << 20), "RSS within 2 %: not read again");
        rss(&mut s, 103, 90);
        s.tick(1300 * MS);
        assert_eq!(peak(&s), Some(90 << 20), "RSS at a new high: read");
        rss(&mut s, 103, 95);
        for t in 0..9 {
            s.tick((1400 + t * 100) * MS);
        }
        assert_eq!(peak(&s), Some(90 << 20));
        s.tick(2300 * MS);
        assert_eq!(peak(&s), Some(95 << 20), "and every tenth sample");
        assert_eq!(s.tree.pss_peak, 95 << 20);
        // Read while still growing (under load a read can land mid-touch),
        // then held a little higher: read once more as it settles, not ten
        // samples later (the hold may be shorter than that).
        rss(&mut s, 110, 100);
        s.tick(2400 * MS);
        assert_eq!(peak(&s), Some(100 << 20), "a new high: read");
        rss(&mut s, 111, 104);
        s.tick(2500 * MS);
        assert_eq!(peak(&s), Some(100 << 20), "still growing, within 2 %");
        s.tick(2600 * MS);
        assert_eq!(peak(&s), Some(104 << 20), "settled above the last read");
        rss(&mut s, 111, 105);
        s.tick(2700 * MS);
        assert_eq!(
            peak(&s),
            Some(104 << 20),
            "held where it was read: not again"
        );
    }

    #[test]
    fn the_trees_pss_peak_is_what_was_held_at_once_not_each_ones_peak() {
        use crate::collect::procfs::{Sample, Shares};
        let mut s: Session<FakeKernel, FakeProc> =
            Session::new(None, FakeProc::default(), 1000 * MS, false, true);
        for (pid, ppid) in [(300, 1), (301, 300)] {
            s.procfs.stats.insert(
                pid,
                Stat {
                    pid,
                    ppid,
                    state: 'S',
                    num_threads: 1,
                    ..Stat::default()
                },
            );
        }
        attach(&mut s, 300, false, 1000 * MS, None).unwrap();
        let hold = |s: &mut Session<FakeKernel, FakeProc>, pid: u32, mib: u64| {
            let sample = Sample {
                rss_bytes: mib << 20,
                ..Sample::default()
            };
            s.procfs.samples.insert(pid, sample);
            let shares = Shares {
                pss_bytes: mib << 20,
                ..Shares::default()
            };
            s.procfs.shares.insert(pid, shares);
        };
        // 300 holds 100 MiB while 301 holds 4; then 300 lets go of all but
        // 4 and 301 takes 100: never more than 104 MiB at once.
        hold(&mut s, 300, 100);
        hold(&mut s, 301, 4);
        s.tick(1100 * MS);
        assert_eq!(s.tree.pss_peak, 104 << 20);
        // (300's smaps_rollup is not read again: its RSS did not grow. Its
        // last reading is stale, and counts for no more than it holds.)
        hold(&mut s, 300, 4);
        hold(&mut s, 301, 100);
        s.tick(1200 * MS);
        assert_eq!(s.tree.pss_peak, 104 << 20, "300's 100 MiB is gone");
        let peaks: Vec<_> = (s.tree.procs.iter())
            .map(|p| p.memory_peak.unwrap().pss)
            .collect();
        assert_eq!(peaks, [Some(100 << 20), Some(100 << 20)], "each one's own");
    }

    #[test]
    fn a_process_that_exits_while_being_attached_is_left_out_not_lost() {
        let mut s = Session::new(
            Some(FakeKernel::default()),
            FakeProc::default(),
            1000 * MS,
            true,
            true,
        );
        for (pid, ppid) in [(300, 1), (301, 300), (302, 300)] {
            s.procfs.stats.insert(
                pid,
                Stat {
                    pid,
                    ppid,
                    state: 'S',
                    num_threads: 1,
                    starttime: 7,
                    ..Stat::default()
                },
            );
        }
        // 301 is there at the first look, gone by the time it is tracked:
        // its exit hook ran while it was not tracked.
        s.procfs.stat_reads_left.borrow_mut().insert(301, 1);
        // 302 had begun to exit (its exit may still come).
        s.procfs.stats.get_mut(&302).unwrap().exiting = true;
        attach(&mut s, 300, false, 1000 * MS, None).unwrap();
        let pids: Vec<u32> = s.tree.procs.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [300]);
        let k = kernel(&mut s);
        assert_eq!(k.tracked.keys().copied().collect::<Vec<_>>(), [300]);
        // 302's exit did come, under the cookie it was tracked with (the
        // last one handed out; they go up by 2).
        let cookie = s.next_cookie() - 2;
        kernel(&mut s).exit(1100 * MS, 302, cookie, 0);
        kernel(&mut s).free(1100 * MS, 302, cookie, ThreadTotals::default());
        s.drain();
        assert_eq!(s.losses().total(), 0, "{:?}", s.losses());
        assert_eq!(s.tree.procs.len(), 1);
    }

    #[test]
    fn attach_takes_the_running_subtree_parents_first() {
        let mut s = Session::new(
            Some(FakeKernel::default()),
            FakeProc::default(),
            1000 * MS,
            true,
            true,
        );
        let stat = |pid, ppid| Stat {
            pid,
            ppid,
            comm: format!("p{pid}"),
            state: 'S',
            num_threads: 1,
            ..Stat::default()
        };
        for (pid, ppid) in [(300, 1), (301, 300), (302, 301), (400, 1)] {
            s.procfs.stats.insert(pid, stat(pid, ppid));
        }
        attach(&mut s, 300, false, 1000 * MS, None).unwrap();
        let pids: Vec<u32> = s.tree.procs.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [300, 301, 302]);
        assert!(s.tree.procs.iter().all(|p| p.preexisting));
        assert_eq!(kernel(&mut s).tracked.len(), 3);
        let e = attach(&mut s, 999, false, 1000 * MS, None);
        assert!(e.is_ok(), "the root is already set: {e:?}");
        let mut fresh = Session::new(
            Some(FakeKernel::default()),
            FakeProc::default(),
            0,
            true,
            true,
        );
        assert!(matches!(
            attach(&mut fresh, 999, false, 0, None),
            Err(Error::NoSuchPid(999))
        ));
    }

    #[test]
    fn polling_finds_children_and_notices_them_gone() {
        let mut s: Session<FakeKernel, FakeProc> =
            Session::new(None, FakeProc::default(), 1000 * MS, false, true);
        let stat = |pid, ppid| Stat {
            pid,
            ppid,
            comm: format!("p{pid}"),
            state: 'S',
            num_threads: 1,
            ..Stat::default()
        };
        s.procfs.stats.insert(ROOT, stat(ROOT, 1));
        attach(&mut s, ROOT, false, 1000 * MS, None).unwrap();
        s.procfs.stats.insert(200, stat(200, ROOT));
        s.procfs.stats.insert(201, stat(201, 200));
        s.tick(1100 * MS);
        assert_eq!(s.tree.alive_count(), 3);
        s.procfs.stats.remove(&201);
        s.tick(1200 * MS);
        assert_eq!(s.tree.alive_count(), 2);
        let gone = by_pid(&s, 201)[0];
        assert_eq!(gone.end_ns, Some(1200 * MS));
    }
}
