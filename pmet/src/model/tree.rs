//! The one model of the traced tree: every process ever seen, who started
//! whom, when, with which argv, and what each used. Kernel events, taskstats
//! records and /proc samples are all merged here; the summary and the JSON
//! report are both produced from it.

use std::sync::Arc;

use super::{
    conn::{Conns, DEFAULT_MAX_CONNECTIONS, Life},
    event::{ArgvHex, Ctx, Event, ThreadTotals},
};
use crate::model::{
    env::{EnvCache, EnvPolicy, EnvVar},
    event::Ids,
    input::{Sample, Shares, TaskStats},
    net::Net,
};

/// The tree's maps: keyed by pids, thread ids, cookies and socket cookies,
/// which the kernel assigns, not the traced programs, so a fast hash is
/// safe; SipHash was ~8 % of pmet's CPU taking in an exec storm's events.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal {
        /// Signal number.
        signal: i32,
        /// A core was dumped.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Decodes a kernel `exit_code` / wait status.
    pub fn from_raw(raw: u32) -> Self {
        let sig = (raw & 0x7f) as i32;
        if sig == 0 {
            ExitStatus::Code(((raw >> 8) & 0xff) as i32)
        } else {
            ExitStatus::Signal {
                signal: sig,
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    /// The status a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal { signal, .. } => 128 + signal,
        }
    }
}

/// Figures of a process at the moment tracing began (attach mode), subtracted
/// so a report counts only what happened while pmet watched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    /// Runtime of the threads alive at attach, ns (matched by their frees).
    pub thread_runtime_ns: u64,
    /// Their tick-sampled user time, ns.
    pub thread_utime_ns: u64,
    /// Their tick-sampled system time, ns.
    pub thread_stime_ns: u64,
    /// Their storage bytes read.
    pub thread_read_bytes: u64,
    /// Their storage bytes written.
    pub thread_write_bytes: u64,
    /// Their dirty bytes dropped before writeback.
    pub thread_cancelled_write_bytes: u64,
    /// Whole-process sample at attach (for figures of still-live processes).
    pub sample: Option<Sample>,
    /// `--since-process-start`: live figures count from the process's start,
    /// so no attach sample is subtracted from them.
    pub from_start: bool,
    /// `--since-process-start`: runtime of threads that ended before attach,
    /// ns, added to what the kernel reports at exit.
    pub credit_runtime_ns: u64,
    /// Their tick-sampled user time, ns.
    pub credit_utime_ns: u64,
    /// Their tick-sampled system time, ns.
    pub credit_stime_ns: u64,
    /// Their storage bytes read.
    pub credit_read_bytes: u64,
    /// Their storage bytes written.
    pub credit_write_bytes: u64,
    /// Their dirty bytes dropped before writeback.
    pub credit_cancelled_write_bytes: u64,
}

/// Sums of the per-thread records taskstats sent for one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskstatsTotals {
    /// Records received (one per exited thread).
    pub records: u32,
    /// User µs.
    pub utime_us: u64,
    /// System µs.
    pub stime_us: u64,
    /// Runtime ns.
    pub run_ns: u64,
    /// Peak RSS, KiB (shared by the threads: the max).
    pub hiwater_rss_kb: u64,
    /// Storage bytes read.
    pub read_bytes: u64,
    /// Storage bytes written.
    pub write_bytes: u64,
    /// Dirty bytes dropped before writeback.
    pub cancelled_write_bytes: u64,
    /// Voluntary context switches.
    pub nvcsw: u64,
    /// Involuntary context switches.
    pub nivcsw: u64,
    /// Minor faults.
    pub minflt: u64,
    /// Major faults.
    pub majflt: u64,
    /// The group's last thread's record (`AGROUP`) has come: the pid is free
    /// from then on, and a later record with it is another process's.
    pub group_done: bool,
}

/// Figures the kernel side kept at its exit for a thread whose last
/// switch (its final record) was not seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The figures.
    pub totals: ThreadTotals,
    /// Context switches and faults, read with them.
    pub ctx: Option<Ctx>,
}

/// A process's memory, each figure at its highest sampled value; the report
/// writes it as it is (`processes[].memory`). PSS, private and shared come
/// from `smaps_rollup` (`None` until it could be read); the rest from
/// `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MemoryPeak {
    /// Proportional set size: shared pages divided among their sharers.
    #[serde(rename = "pss_peak_bytes")]
    pub pss: Option<u64>,
    /// Pages mapped by this process only.
    #[serde(rename = "private_peak_bytes")]
    pub private: Option<u64>,
    /// Pages mapped by others too.
    #[serde(rename = "shared_peak_bytes")]
    pub shared: Option<u64>,
    /// Swapped out.
    #[serde(rename = "swap_peak_bytes")]
    pub swap: u64,
    /// Resident anonymous memory.
    #[serde(rename = "anon_peak_bytes")]
    pub anon: u64,
    /// Resident file-backed memory.
    #[serde(rename = "file_peak_bytes")]
    pub file: u64,
    /// Resident shared memory (tmpfs, System V and POSIX shm).
    #[serde(rename = "shmem_peak_bytes")]
    pub shmem: u64,
}

/// `smaps_rollup` is read again once RSS has grown by this fraction since the
/// last read, or after this many samples (it costs about 3.7 times a sample).
const SHARES_RSS_GROWTH: f64 = 1.02;
const SHARES_EVERY: u32 = 10;
/// ... or once RSS stops growing above the last read by more than 1/this
/// (a read taken while memory was still being touched would otherwise
/// stand for up to ten samples, longer than many a peak lasts).
const SHARES_SETTLED_ABOVE: u64 = 256;

/// Most thread records a process keeps; the figures of later ones are summed
/// in [`Proc::threads_overflow`] (a process of thousands of short threads
/// must not make the tree grow without bound).
pub const MAX_THREADS_KEPT: usize = 4096;

/// One thread of a process, as the kernel side saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadRec {
    /// Thread id.
    pub tid: u32,
    /// Its name: inherited at creation, its own (`PR_SET_NAME`) at exit.
    pub comm: String,
    /// `CLOCK_BOOTTIME` ns of its creation; `None` when it ran before tracing.
    pub start_ns: Option<u64>,
    /// `CLOCK_BOOTTIME` ns of its exit; `None` while it runs.
    pub end_ns: Option<u64>,
    /// Its final figures (at its last switch, or kept at its exit when
    /// that switch was not seen).
    pub totals: Option<ThreadTotals>,
    /// What it had used when pmet attached (subtracted; zero otherwise).
    pub baseline: ThreadTotals,
}

/// Threads beyond [`MAX_THREADS_KEPT`], summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadsOverflow {
    /// How many.
    pub count: u32,
    /// Their final figures, summed.
    pub totals: ThreadTotals,
}

/// One process ever seen in the tree.
#[derive(Clone, Debug, Default)]
pub struct Proc {
    /// Process id.
    pub pid: u32,
    /// Parent pid (the creator), when known.
    pub ppid: Option<u32>,
    /// Index of the parent in [`Tree::procs`], when it is in the tree.
    pub parent: Option<usize>,
    /// Indices of the children, in creation order.
    pub children: Vec<usize>,
    /// Kernel-side identity of this instance of the pid.
    pub cookie: u64,
    /// Name (the last exec's comm).
    pub comm: String,
    /// Arguments of the last exec (inherited from the parent until it execs;
    /// shared, so a fork does not copy them).
    pub argv: Arc<[String]>,
    /// The bytes of the arguments that are not UTF-8 (see [`ArgvHex`]),
    /// shared like `argv`.
    pub argv_hex: Option<Arc<[Option<String>]>>,
    /// Path given to the last exec.
    pub exe: Option<String>,
    /// argv was cut short by the kernel-side limit.
    pub argv_truncated: bool,
    /// Successful execs.
    pub execs: u32,
    /// `CLOCK_BOOTTIME` ns when it started.
    pub start_ns: u64,
    /// `CLOCK_BOOTTIME` ns when it exited; `None` while alive.
    pub end_ns: Option<u64>,
    /// How it ended.
    pub exit: Option<ExitStatus>,
    /// Its exit was never seen (lost event); it is no longer running.
    pub vanished: bool,
    /// The kernel could not follow it (its map was full).
    pub untracked: bool,
    /// It was already running when tracing began.
    pub preexisting: bool,
    /// Threads alive now.
    pub threads_alive: u32,
    /// Most threads alive at once.
    pub max_threads: u32,
    /// Threads that exited and are not yet freed.
    pub threads_unfreed: u32,
    /// Sum of freed threads' final figures.
    pub freed: ThreadTotals,
    /// Freed threads whose figures were readable.
    pub freed_threads: u32,
    /// Freed threads whose figures were not readable.
    pub freed_unreadable: u32,
    /// Exited threads whose free was never seen by the kernel side, and
    /// whose figures were not kept for it either.
    pub freed_missing: u32,
    /// Exited threads whose final record was never seen, counted from the
    /// figures the kernel side kept for them at their exit (short of the
    /// address space's teardown).
    pub freed_kept: u32,
    /// Exit-time records from taskstats.
    pub taskstats: TaskstatsTotals,
    /// Context switches and faults of the freed threads that carried them
    /// (`ctx_threads` of the `freed_threads`).
    pub ctx: Ctx,
    pub ctx_threads: u32,
    /// The highest peak resident size its threads' exits read, bytes.
    pub exit_peak_rss: u64,
    /// Which part of the kernel's `signal->maxrss` is this process's own.
    pub maxrss_floor: MaxrssFloor,
    /// The latest /proc sample.
    pub last_sample: Option<Sample>,
    /// It has had a child: once that child is reaped, its I/O is in this
    /// process's `/proc/PID/io` too (the kernel adds it at wait), so its own
    /// live I/O is read thread by thread instead. Set when the child is
    /// added, before it can be reaped (set at the child's exit, a child
    /// reaped between a drain and the next sample had lent its I/O once).
    pub has_children: bool,
    /// Its own I/O so far (read, write, cancelled): its ended threads'
    /// final figures and its live threads' readings, the highest seen (a
    /// thread gone from /proc before its free is taken in must not make it
    /// dip). Read when [`Proc::has_children`] (see
    /// [`Tree::wants_threads_io`]).
    pub threads_io: Option<[u64; 3]>,
    /// Samples taken.
    pub samples: u32,
    /// Highest VmHWM seen in samples, bytes.
    pub sampled_peak_rss: u64,
    /// Socket traffic (final once `net_final`).
    pub net: Net,
    /// `net` was read after the process exited.
    pub net_final: bool,
    /// Attach-time figures to subtract.
    pub baseline: Baseline,
    /// Who it runs as and in which cgroup: from its last exec, else
    /// inherited at fork, else read at attach.
    pub ids: Option<Ids>,
    /// Its environment at its last exec (names; values the policy keeps).
    pub env: Option<Arc<[EnvVar]>>,
    /// That environment was cut short at the kernel-side limit.
    pub env_truncated: bool,
    /// Its memory at its sampled peaks (`None` until sampled).
    pub memory_peak: Option<MemoryPeak>,
    /// RSS when `smaps_rollup` was last read, and samples since.
    shares_at: Option<(u64, u32)>,
    /// RSS did not grow from the sample before the last one.
    rss_settled: bool,
    /// PSS at the last read of `smaps_rollup`.
    pub last_pss: u64,
    /// Its threads, in creation order (at most [`MAX_THREADS_KEPT`]).
    pub threads: Vec<ThreadRec>,
    /// Threads beyond those kept.
    pub threads_overflow: ThreadsOverflow,
    /// The sockets it used.
    pub conns: Conns,
    /// Its working directory when it exec'd (or when pmet attached).
    pub cwd: Option<String>,
    /// What it did on the GPUs (see [`Tree::gpu_known`]).
    pub gpu: crate::model::gpu::GpuUse,
    /// The order pmet learned of it in, over the whole run (forgotten
    /// processes included): a report lists processes by start, then this.
    pub seq: u64,
    /// Its parent's [`Proc::seq`]: the link survives the parent being
    /// forgotten ([`Tree::prune`]).
    pub parent_seq: Option<u64>,
}

/// How much of a process's `signal->maxrss` (the peak resident size of
/// every memory it ran in, as `wait4` reports it) is its own. The memory a
/// process runs in before its first exec is a copy of its creator's, or
/// its creator's itself: its own when it was forked (the copy is its to
/// grow; like `wait4`, its peak then starts at what it shared at the fork),
/// another program's when it was made with `CLONE_VM` (`vfork`,
/// `posix_spawn`: its creator's peak) or is the command pmet launched
/// (pmet's own copy, waiting at the gate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaxrssFloor {
    /// Not known to be its own until it execs (launched by pmet, made with
    /// `CLONE_VM`, or running before pmet attached): the exec's reading
    /// becomes the floor.
    #[default]
    UntilExec,
    /// Peaks above this many bytes are the process's own.
    Above(u64),
}

impl MaxrssFloor {
    /// The part of `maxrss` that is the process's own peak, if any.
    fn own(self, maxrss: u64) -> Option<u64> {
        match self {
            MaxrssFloor::Above(floor) if maxrss > floor => Some(maxrss),
            _ => None,
        }
    }
}

impl Proc {
    /// The record of thread `tid`, created (as running before tracing) when
    /// pmet has none and there is room.
    fn thread_mut(&mut self, tid: u32) -> Option<&mut ThreadRec> {
        if let Some(i) = self.threads.iter().rposition(|t| t.tid == tid) {
            return Some(&mut self.threads[i]);
        }
        if self.threads.len() >= MAX_THREADS_KEPT {
            return None;
        }
        self.threads.push(ThreadRec {
            tid,
            ..ThreadRec::default()
        });
        self.threads.last_mut()
    }

    /// A freed thread's context switches and faults, when read.
    fn add_ctx(&mut self, ctx: Option<Ctx>) {
        if let Some(c) = ctx {
            self.ctx.add(&c);
            self.ctx_threads += 1;
        }
    }

    /// Context switches (voluntary, involuntary) and major faults of the
    /// whole process: from its threads' own counters when every freed
    /// thread carried them, else from taskstats' records, else unknown.
    pub fn ctx_figures(&self) -> Option<(u64, u64, u64)> {
        if self.totals_complete() && self.ctx_threads == self.freed_threads {
            Some((self.ctx.nvcsw, self.ctx.nivcsw, self.ctx.maj_flt))
        } else {
            let t = &self.taskstats;
            (t.records > 0).then_some((t.nvcsw, t.nivcsw, t.majflt))
        }
    }

    /// Its peak resident memory, bytes (0: unknown): the highest of what
    /// its exits read, taskstats' record, and the samples.
    pub fn peak_rss(&self) -> u64 {
        (self.taskstats.hiwater_rss_kb * 1024)
            .max(self.sampled_peak_rss)
            .max(self.exit_peak_rss)
    }

    /// A thread's final figures arrived (from its free, or kept for it).
    fn thread_totals(&mut self, tid: u32, t: ThreadTotals) {
        match self.thread_mut(tid) {
            Some(r) => r.totals = Some(t),
            None => {
                self.threads_overflow.count += 1;
                self.threads_overflow.totals.add(&t);
            }
        }
    }

    /// Still running (as far as pmet knows).
    pub fn alive(&self) -> bool {
        self.end_ns.is_none() && !self.vanished
    }

    /// Every thread's final figures have arrived: CPU and disk are exact.
    pub fn totals_complete(&self) -> bool {
        !self.alive()
            && self.threads_alive == 0
            && self.threads_unfreed == 0
            && self.freed_threads > 0
            && self.freed_unreadable == 0
            && self.freed_missing == 0
    }
}

/// A process found in /proc, for [`Tree::add_seen`].
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Process id.
    pub pid: u32,
    /// Parent pid.
    pub ppid: u32,
    /// Cookie (kernel-side identity; userspace-chosen here).
    pub cookie: u64,
    /// Start, CLOCK_BOOTTIME ns.
    pub start_ns: u64,
    /// Name.
    pub comm: String,
    /// Arguments.
    pub argv: Vec<String>,
    /// The bytes of those that are not UTF-8.
    pub argv_hex: ArgvHex,
    /// Threads now.
    pub threads: u32,
    /// Figures at attach, to subtract.
    pub baseline: Baseline,
    /// Running before tracing began.
    pub preexisting: bool,
    /// Its threads at attach and what each had used then.
    pub threads_at_attach: Vec<SeenThread>,
    /// Who it runs as and where, read at attach.
    pub ids: Option<Ids>,
    /// Its environment, read at attach (`NAME=VALUE`; the policy applies).
    pub env: Option<Vec<String>>,
    /// Its working directory, read at attach.
    pub cwd: Option<String>,
}

/// A thread of a process found in /proc.
#[derive(Clone, Debug, Default)]
pub struct SeenThread {
    /// Thread id.
    pub tid: u32,
    /// Its name then.
    pub comm: String,
    /// What it had used then (subtracted from its figures).
    pub used: ThreadTotals,
}

/// Everything known about the traced tree.
#[derive(Debug, Default)]
pub struct Tree {
    /// Every process, in the order pmet learned of it. Boxed: the table
    /// then grows by a pointer a process, not by a whole `Proc` (1.2 KB)
    /// copied at every doubling (a 10,001-process run: peak RSS 58 -> 54 MB).
    #[allow(clippy::vec_box)]
    pub procs: Vec<Box<Proc>>,
    /// The most PSS the live processes held together at one look: the
    /// tree's memory with shared pages counted once.
    pub pss_peak: u64,
    /// Live processes by pid.
    live: HashMap<u32, usize>,
    /// Every process by (pid, cookie).
    by_key: HashMap<(u32, u64), usize>,
    /// The latest process to hold each pid.
    latest: HashMap<u32, usize>,
    /// exec arguments waiting for their exec to succeed, by thread id.
    pending_exec: HashMap<u32, (String, Vec<String>, ArgvHex, bool)>,
    /// Environments of execs under way, by calling thread, as kept.
    pending_env: HashMap<u32, (Arc<[EnvVar]>, bool)>,
    /// Every distinct environment kept, shared by the processes that had it.
    envs: EnvCache,
    /// Which environment values are kept (names always are).
    pub env_policy: EnvPolicy,
    /// The process pmet launched or attached to.
    pub root: Option<usize>,
    /// Kernel events applied.
    pub events: u64,
    /// Events about processes pmet did not know (should stay 0).
    pub orphan_events: u64,
    /// Most processes alive at once.
    pub max_alive: usize,
    /// Connections listed per process (`None`: the default).
    pub max_connections: Option<usize>,
    /// smaps_rollup is never read (`--no-pss`).
    pub no_pss: bool,
    /// The processes that used each socket, by socket cookie.
    sock_users: HashMap<u64, Vec<usize>>,
    /// When the run ended, if it has.
    closed_at: Option<u64>,
    /// Processes created after that, left out.
    late: HashSet<u32>,
    late_forks: Vec<u32>,
    /// Processes that ended while pmet attached to them, left out: an exit
    /// the kernel did send for one is expected, not a loss.
    ended_at_attach: HashSet<(u32, u64)>,
    /// What the processes dropped by [`Tree::prune`] added up to.
    pub gone: Gone,
    /// What the folded processes held here add up to: those ended with
    /// every figure final, which a look no longer walks (see
    /// [`Tree::fold_settled`]).
    pub folded: Gone,
    /// Per process, as `procs`: whether it is in `folded`.
    is_folded: Vec<bool>,
    /// The figures' units, given by the first [`Tree::fold_settled`].
    fold_units: (u64, bool),
    /// A GPU source was looking: every process's `gpu` is a figure (0 for
    /// one that never used a GPU), not unknown.
    pub gpu_known: bool,
}

/// The processes a long-running session forgot (`pmet agent`), summed, so
/// the tree's totals never go down when they are dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Gone {
    /// How many.
    pub procs: u64,
    /// Those that failed (non-zero exit or killed).
    pub failed: u64,
    /// CPU seconds.
    pub cpu_s: f64,
    /// Storage bytes read, written, and written then cancelled.
    pub read: u64,
    /// See `read`.
    pub write: u64,
    /// See `read`.
    pub cancelled: u64,
    /// Network bytes.
    pub net: Net,
    /// Their losses, summed.
    pub losses: Losses,
}

/// What the tree shows was lost about processes (the kernel's and
/// taskstats' own counts are kept elsewhere): one process's, or a sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Exits never seen.
    pub exits_unseen: u64,
    /// Ended processes whose final figures never arrived.
    pub totals_missing: u64,
    /// Thread frees made good from the figures kept at exit.
    pub frees_kept_at_exit: u64,
    /// Thread frees not seen (those made good included).
    pub free_events_missed: u64,
}

impl Losses {
    /// Adds `o`.
    pub fn add(&mut self, o: &Losses) {
        self.exits_unseen += o.exits_unseen;
        self.totals_missing += o.totals_missing;
        self.frees_kept_at_exit += o.frees_kept_at_exit;
        self.free_events_missed += o.free_events_missed;
    }

    /// Takes back what [`Losses::add`] added.
    fn sub(&mut self, o: &Losses) {
        self.exits_unseen -= o.exits_unseen;
        self.totals_missing -= o.totals_missing;
        self.frees_kept_at_exit -= o.frees_kept_at_exit;
        self.free_events_missed -= o.free_events_missed;
    }
}

impl Gone {
    /// One process's share: itself, its figures `f` and its losses `l`.
    fn of(p: &Proc, f: &crate::model::figures::Figures, l: Losses) -> Self {
        let d = f.disk.unwrap_or_default();
        Self {
            procs: 1,
            failed: u64::from(matches!(p.exit, Some(e) if e.shell_code() != 0)),
            cpu_s: f.cpu.map_or(0.0, |(u, s)| u + s),
            read: d.read,
            write: d.write,
            cancelled: d.cancelled,
            net: p.net,
            losses: l,
        }
    }

    /// Adds one process's share (or a sum of them).
    pub fn add(&mut self, o: &Gone) {
        self.procs += o.procs;
        self.failed += o.failed;
        self.cpu_s += o.cpu_s;
        self.read += o.read;
        self.write += o.write;
        self.cancelled += o.cancelled;
        self.net.add(&o.net);
        self.losses.add(&o.losses);
    }

    /// Takes back a share [`Gone::add`] added.
    fn sub(&mut self, o: &Gone) {
        self.procs -= o.procs;
        self.failed -= o.failed;
        // Floating point: what was added may leave a rounding's worth.
        self.cpu_s = (self.cpu_s - o.cpu_s).max(0.0);
        self.read -= o.read;
        self.write -= o.write;
        self.cancelled -= o.cancelled;
        self.net.sub(&o.net);
        self.losses.sub(&o.losses);
    }
}

/// cputime_adjust() as the kernel does it for getrusage/wait4: the exact
/// runtime split in the ratio of the tick-sampled user and system times.
pub fn split_runtime(runtime_ns: u64, utime: u64, stime: u64) -> (u64, u64) {
    if stime == 0 {
        return (runtime_ns, 0);
    }
    if utime == 0 {
        return (0, runtime_ns);
    }
    let s = (u128::from(stime) * u128::from(runtime_ns) / (u128::from(stime) + u128::from(utime)))
        as u64;
    (runtime_ns - s, s)
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, mut p: Proc) -> usize {
        if p.threads.is_empty() {
            // Its main thread, under the process's own id. Room for it
            // alone: most processes never start another, and a first push
            // would make room for four (a heap profile of a 10,001-process
            // run found 6.3 MB of such room).
            p.threads = vec![ThreadRec {
                tid: p.pid,
                comm: p.comm.clone(),
                start_ns: Some(p.start_ns),
                ..ThreadRec::default()
            }];
        }
        let i = self.procs.len();
        let (pid, cookie) = (p.pid, p.cookie);
        p.seq = self.seen_count();
        if let Some(parent) = p.parent {
            self.procs[parent].children.push(i);
            self.procs[parent].has_children = true;
            p.parent_seq = Some(self.procs[parent].seq);
        }
        if let Some(&old) = self.live.get(&pid) {
            // The pid was reused while pmet still thought the old holder lived:
            // its exit was lost.
            self.procs[old].vanished = true;
        }
        let alive = p.alive();
        self.procs.push(Box::new(p));
        self.is_folded.push(false);
        if alive {
            self.live.insert(pid, i);
        }
        self.by_key.insert((pid, cookie), i);
        self.latest.insert(pid, i);
        self.max_alive = self.max_alive.max(self.live.len());
        i
    }

    /// Adds the process pmet launched (`ppid` is pmet): tracked before it could run.
    pub fn add_root(
        &mut self,
        pid: u32,
        ppid: u32,
        cookie: u64,
        start_ns: u64,
        argv: Vec<String>,
    ) -> usize {
        let i = self.insert(Proc {
            pid,
            ppid: Some(ppid),
            cookie,
            comm: argv
                .first()
                .map(|a| a.rsplit('/').next().unwrap_or(a).chars().take(15).collect())
                .unwrap_or_default(),
            argv: argv.into(),
            start_ns,
            threads_alive: 1,
            max_threads: 1,
            ..Proc::default()
        });
        self.root = Some(i);
        i
    }

    /// Adds a process found in /proc rather than announced by the kernel:
    /// one running before tracing began (attach mode), or one found by
    /// polling. The first one added becomes the root.
    pub fn add_seen(&mut self, n: Seen) -> usize {
        let parent = self.live.get(&n.ppid).copied();
        let threads: Vec<ThreadRec> = n
            .threads_at_attach
            .into_iter()
            .take(MAX_THREADS_KEPT)
            .map(|t| ThreadRec {
                comm: if t.comm.is_empty() && t.tid == n.pid {
                    n.comm.clone()
                } else {
                    t.comm
                },
                tid: t.tid,
                baseline: t.used,
                ..ThreadRec::default()
            })
            .collect();
        let i = self.insert(Proc {
            pid: n.pid,
            ppid: Some(n.ppid),
            parent,
            cookie: n.cookie,
            comm: n.comm,
            argv: n.argv.into(),
            argv_hex: n.argv_hex.map(Into::into),
            start_ns: n.start_ns,
            preexisting: n.preexisting,
            threads_alive: n.threads.max(1),
            max_threads: n.threads.max(1),
            baseline: n.baseline,
            ids: n.ids,
            env: n.env.map(|v| self.env_policy.apply(v)),
            cwd: n.cwd,
            threads,
            ..Proc::default()
        });
        if self.root.is_none() {
            self.root = Some(i);
        }
        i
    }

    /// Marks a live process as exited without kernel events (polling mode):
    /// it is gone from /proc, its status unknown.
    pub fn mark_gone(&mut self, pid: u32, ts_ns: u64) {
        if let Some(i) = self.live.remove(&pid) {
            let p = self.proc_mut(i);
            p.end_ns = Some(ts_ns);
            p.threads_alive = 0;
        }
    }

    /// The live process with this pid.
    pub fn live(&self, pid: u32) -> Option<&Proc> {
        self.live.get(&pid).map(|&i| &*self.procs[i])
    }

    /// Pids and cookies of live processes.
    pub fn live_keys(&self) -> Vec<(u32, u64)> {
        let mut v: Vec<_> = self
            .live
            .values()
            .map(|&i| (self.procs[i].pid, self.procs[i].cookie))
            .collect();
        v.sort_unstable();
        v
    }

    /// What was lost about `p`. `settled_before`: while the run goes on,
    /// a process that ended after this (boottime ns) may still be waiting
    /// for its final figures, and is not counted as missing them.
    pub fn losses_of(&self, p: &Proc, settled_before: Option<u64>) -> Losses {
        let kept = u64::from(p.freed_kept);
        Losses {
            exits_unseen: u64::from(p.vanished && !p.untracked),
            totals_missing: u64::from(
                !p.alive()
                    && !p.vanished
                    && !p.totals_complete()
                    && p.taskstats.records == 0
                    && !self.ended_after_close(p)
                    && settled_before.is_none_or(|b| p.end_ns.is_some_and(|e| e <= b)),
            ),
            frees_kept_at_exit: kept,
            free_events_missed: u64::from(p.freed_missing) + kept,
        }
    }

    /// Takes in one look of the GPU source: its rows for the live
    /// processes, covering `dt_s` seconds since the previous look.
    pub fn apply_gpu(&mut self, uses: &[crate::collect::gpu::Use], dt_s: f64) {
        for &i in self.live.values() {
            self.procs[i].gpu.now = (0, 0.0);
        }
        let mut by_pid: HashMap<u32, Vec<&crate::collect::gpu::Use>> = HashMap::default();
        for u in uses {
            by_pid.entry(u.pid).or_default().push(u);
        }
        for (pid, rows) in by_pid {
            if let Some(&i) = self.live.get(&pid) {
                self.procs[i].gpu.look(&rows, dt_s);
            }
        }
    }

    /// Every process seen, the forgotten included.
    pub fn seen_count(&self) -> u64 {
        self.procs.len() as u64 + self.gone.procs
    }

    /// Forgets the ended processes `forget` agrees to, keeping their sums
    /// in [`Tree::gone`], for a session that runs for weeks (`pmet agent`):
    /// memory then follows the live processes, not every process ever seen.
    /// Indices are renumbered; a live process whose parent was forgotten
    /// keeps its `ppid` and loses its link. Returns what was dropped.
    pub fn prune(
        &mut self,
        ticks_per_s: u64,
        kernel_io: bool,
        forget: impl Fn(&Proc) -> bool,
    ) -> Vec<Box<Proc>> {
        let drop: Vec<bool> = self
            .procs
            .iter()
            .enumerate()
            .map(|(i, p)| !p.alive() && Some(i) != self.root && forget(p))
            .collect();
        if !drop.contains(&true) {
            return Vec::new();
        }
        let mut new_index = Vec::with_capacity(drop.len());
        let mut next = 0;
        for &d in &drop {
            new_index.push((!d).then_some(next));
            next += usize::from(!d);
        }
        let remap = |i: usize| new_index[i];
        // Renumbers an index in place; false when its process was dropped.
        let moved = |i: &mut usize| remap(*i).map(|n| *i = n).is_some();
        let mut kept = Vec::with_capacity(next);
        let mut removed = Vec::new();
        let folded = std::mem::take(&mut self.is_folded);
        let mut kept_folded = Vec::with_capacity(next);
        for ((mut p, d), was_folded) in std::mem::take(&mut self.procs)
            .into_iter()
            .zip(drop)
            .zip(folded)
        {
            if d {
                let share = self.share_of(&p, (ticks_per_s, kernel_io));
                if was_folded {
                    self.folded.sub(&share);
                }
                self.gone.add(&share);
                // Boxed as held: a process is ~1.2 KB, not worth a move.
                removed.push(p);
            } else {
                p.parent = p.parent.and_then(remap);
                p.children.retain_mut(|c| moved(c));
                kept.push(p);
                kept_folded.push(was_folded);
            }
        }
        self.procs = kept;
        self.is_folded = kept_folded;
        self.root = self.root.and_then(remap);
        self.live.retain(|_, i| moved(i));
        self.latest.retain(|_, i| moved(i));
        self.by_key.retain(|_, i| moved(i));
        self.sock_users.retain(|_, users| {
            users.retain_mut(|i| moved(i));
            !users.is_empty()
        });
        removed
    }

    /// Folds every process whose figures can no longer change into
    /// [`Tree::folded`], so that a look (a sample's totals, its losses) walks
    /// only the live and the recently ended, not every process held: in an
    /// exec storm that is thousands of processes five times a second.
    /// Settled: ended with its exit seen, every thread's final figures and
    /// its final socket counters in, and its taskstats record when
    /// `taskstats` is the only source of its memory figures. Anything that
    /// still changes a folded process unfolds it first ([`Tree::proc_mut`]).
    /// `ticks_per_s` and `kernel_io` are [`figures`]' units.
    ///
    /// [`figures`]: crate::model::figures::figures
    pub fn fold_settled(&mut self, ticks_per_s: u64, kernel_io: bool, taskstats: bool) {
        self.fold_units = (ticks_per_s, kernel_io);
        for i in 0..self.procs.len() {
            if self.is_folded[i] {
                continue;
            }
            let p = &self.procs[i];
            let settled = !p.alive()
                && !p.vanished
                && p.net_final
                && p.totals_complete()
                && (!taskstats || p.taskstats.records > 0);
            if settled {
                let share = self.share_of(p, self.fold_units);
                self.folded.add(&share);
                self.is_folded[i] = true;
            }
        }
    }

    /// Whether the process at `i` is folded into [`Tree::folded`].
    pub fn is_folded(&self, i: usize) -> bool {
        self.is_folded.get(i).copied().unwrap_or(false)
    }

    /// The process at `i`, to change: taken out of [`Tree::folded`] first
    /// when it was folded (rare: a late event about a settled process, or
    /// the root's status from wait), to be folded again once settled.
    fn proc_mut(&mut self, i: usize) -> &mut Proc {
        self.unfold(i);
        &mut self.procs[i]
    }

    /// Takes the process at `i` out of [`Tree::folded`] if it is there.
    fn unfold(&mut self, i: usize) {
        if self.is_folded(i) {
            let share = self.share_of(&self.procs[i], self.fold_units);
            self.folded.sub(&share);
            self.is_folded[i] = false;
        }
    }

    /// One process's share of the sums, its figures in `units`
    /// (`ticks_per_s`, `kernel_io`).
    fn share_of(&self, p: &Proc, (ticks_per_s, kernel_io): (u64, bool)) -> Gone {
        let f = crate::model::figures::figures(p, ticks_per_s, kernel_io);
        Gone::of(p, &f, self.losses_of(p, None))
    }

    /// Processes alive now.
    pub fn alive_count(&self) -> usize {
        self.live.len()
    }

    /// Exited processes whose final figures have not all arrived.
    pub fn awaiting_totals(&self) -> usize {
        self.procs
            .iter()
            .filter(|p| !p.alive() && !p.vanished && !p.untracked && p.threads_unfreed > 0)
            .count()
    }

    /// An event about a process pmet does not know: a loss, unless the
    /// process started after the run ended.
    fn unknown(&mut self, pid: u32) {
        if !self.late.contains(&pid) {
            self.orphan_events += 1;
        }
    }

    /// An event about a process known by pid and cookie that is not here.
    fn unknown_key(&mut self, pid: u32, cookie: u64) {
        if !self.ended_at_attach.contains(&(pid, cookie)) {
            self.unknown(pid);
        }
    }

    /// `pid` (tracked as `cookie`) ended while pmet attached to it and is
    /// left out: its exit, if the kernel saw it, is dropped quietly.
    pub fn ended_at_attach(&mut self, pid: u32, cookie: u64) {
        self.ended_at_attach.insert((pid, cookie));
    }

    /// The run ended at `at` (boottime ns): processes created after it are
    /// left out (their events dropped, not counted as losses).
    pub fn close(&mut self, at: u64) {
        self.closed_at = Some(at);
    }

    /// Processes left out since the last call, for the kernel to stop
    /// following.
    pub fn take_late_forks(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.late_forks)
    }

    /// Applies one kernel event.
    pub fn apply(&mut self, ev: Event) {
        self.events += 1;
        match ev {
            Event::Fork {
                ts_ns,
                parent_tgid,
                child,
                cookie,
                thread,
                untracked,
                new_pid_ns,
                shares_memory,
                comm,
            } => {
                let Some(&pi) = self.live.get(&parent_tgid) else {
                    if self.late.contains(&parent_tgid) {
                        // A child of one left out is left out too.
                        if !thread {
                            self.late.insert(child);
                            self.late_forks.push(child);
                        }
                    } else {
                        log::debug!("fork of {child} by unknown {parent_tgid}");
                        self.orphan_events += 1;
                    }
                    return;
                };
                if !thread && self.closed_at.is_some_and(|at| ts_ns > at) {
                    // Started after the run ended: not part of it.
                    self.late.insert(child);
                    self.late_forks.push(child);
                    return;
                }
                if thread {
                    let p = self.proc_mut(pi);
                    p.threads_alive += 1;
                    p.max_threads = p.max_threads.max(p.threads_alive);
                    if p.threads.len() < MAX_THREADS_KEPT {
                        p.threads.push(ThreadRec {
                            tid: child,
                            comm,
                            start_ns: Some(ts_ns),
                            ..ThreadRec::default()
                        });
                    } else {
                        p.threads_overflow.count += 1;
                    }
                    return;
                }
                let parent = &self.procs[pi];
                let proc = Proc {
                    pid: child,
                    ppid: Some(parent.pid),
                    parent: Some(pi),
                    cookie,
                    comm,
                    argv: parent.argv.clone(),
                    argv_hex: parent.argv_hex.clone(),
                    exe: parent.exe.clone(),
                    argv_truncated: parent.argv_truncated,
                    // Credentials, cgroup and environment are the parent's
                    // until it execs; its pid namespace too, unless it
                    // starts a new one.
                    ids: parent.ids.map(|i| i.inherited(child, new_pid_ns)),
                    env: parent.env.clone(),
                    env_truncated: parent.env_truncated,
                    start_ns: ts_ns,
                    untracked,
                    threads_alive: 1,
                    max_threads: 1,
                    maxrss_floor: if shares_memory {
                        MaxrssFloor::UntilExec
                    } else {
                        MaxrssFloor::Above(0)
                    },
                    ..Proc::default()
                };
                let i = self.insert(proc);
                if untracked {
                    // Not followed by the kernel: no exit will come.
                    self.procs[i].vanished = true;
                    self.live.remove(&child);
                }
            }
            Event::ExecArgs {
                tid,
                filename,
                argv,
                argv_hex,
                truncated,
                ..
            } => {
                (self.pending_exec).insert(tid, (filename, argv, argv_hex, truncated));
            }
            Event::ExecEnv {
                tid,
                block,
                truncated,
                ..
            } => {
                // Values not asked for are dropped here, before anything
                // else sees them.
                let kept = self.envs.kept(&self.env_policy, &block);
                self.pending_env.insert(tid, (kept, truncated));
            }
            Event::Exec {
                tgid,
                old_tid,
                comm,
                ids,
                maxrss_bytes,
                cwd,
                ..
            } => {
                let Some(&i) = self.live.get(&tgid) else {
                    self.unknown(tgid);
                    return;
                };
                let p = &mut self.procs[i];
                // The exec'ing thread is the process's only one now, under
                // its id, with the new program's name.
                if let Some(t) = p.thread_mut(tgid) {
                    t.comm = comm.clone();
                }
                p.comm = comm;
                p.execs += 1;
                p.ids = Some(ids);
                if cwd.is_some() {
                    p.cwd = cwd;
                }
                if let (MaxrssFloor::UntilExec, Some(m)) = (p.maxrss_floor, maxrss_bytes) {
                    p.maxrss_floor = MaxrssFloor::Above(m);
                }
                if let Some((env, truncated)) = self.pending_env.remove(&old_tid) {
                    p.env = Some(env);
                    p.env_truncated = truncated;
                }
                if let Some((filename, argv, hex, truncated)) = self.pending_exec.remove(&old_tid) {
                    p.exe = Some(filename);
                    p.argv = argv.into();
                    p.argv_hex = hex.map(Into::into);
                    p.argv_truncated = truncated;
                }
            }
            Event::Exit {
                ts_ns,
                tgid,
                tid,
                cookie,
                group_dead,
                exit_code,
                comm,
                peak_rss_bytes,
                maxrss_bytes,
                ..
            } => {
                self.pending_exec.remove(&tid);
                self.pending_env.remove(&tid);
                let Some(&i) = self.by_key.get(&(tgid, cookie)) else {
                    self.unknown_key(tgid, cookie);
                    return;
                };
                let p = self.proc_mut(i);
                p.threads_alive = p.threads_alive.saturating_sub(1);
                p.threads_unfreed += 1;
                let own = maxrss_bytes.and_then(|m| p.maxrss_floor.own(m));
                for b in [peak_rss_bytes, own].into_iter().flatten() {
                    p.exit_peak_rss = p.exit_peak_rss.max(b);
                }
                if let Some(t) = p.thread_mut(tid) {
                    t.end_ns = Some(ts_ns);
                    if !comm.is_empty() {
                        t.comm = comm.clone();
                    }
                }
                if group_dead {
                    p.end_ns = Some(ts_ns);
                    if p.comm.is_empty() {
                        p.comm = comm;
                    }
                    if let Some(raw) = exit_code {
                        p.exit = Some(ExitStatus::from_raw(raw));
                    }
                    // Threads pmet never saw start (attach mode) are gone too.
                    p.threads_alive = 0;
                    if self.live.get(&tgid) == Some(&i) {
                        self.live.remove(&tgid);
                    }
                }
            }
            Event::Free {
                tgid,
                tid,
                cookie,
                totals,
                kept,
                ctx,
                ..
            } => {
                let Some(&i) = self.by_key.get(&(tgid, cookie)) else {
                    self.unknown_key(tgid, cookie);
                    return;
                };
                let p = self.proc_mut(i);
                if p.threads_unfreed == 0 && p.freed_missing > 0 {
                    // Given up on, yet here it is: its exact figures replace
                    // the fallback after all.
                    p.freed_missing -= 1;
                } else {
                    p.threads_unfreed = p.threads_unfreed.saturating_sub(1);
                }
                match totals {
                    Some(t) => {
                        p.freed.add(&t);
                        p.freed_threads += 1;
                        p.thread_totals(tid, t);
                    }
                    None => p.freed_unreadable += 1,
                }
                p.add_ctx(ctx);
                p.freed_kept += u32::from(kept);
            }
            Event::Conn {
                tgid,
                proc_cookie,
                opened,
            } => {
                let Some(&i) = self.by_key.get(&(tgid, proc_cookie)) else {
                    self.unknown_key(tgid, proc_cookie);
                    return;
                };
                let max = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
                self.procs[i].conns.open(opened, max);
                let users = self.sock_users.entry(opened.sock_cookie).or_default();
                if !users.contains(&i) {
                    users.push(i);
                }
            }
            // Taken in by the session, which reads the process from /proc.
            Event::Join { .. } => {}
            Event::ConnEnd { sock_cookie, life } => {
                for &i in self.sock_users.get(&sock_cookie).into_iter().flatten() {
                    self.procs[i].conns.set_life(sock_cookie, &life);
                }
            }
        }
    }

    /// A process's working directory, read at its exec.
    pub fn set_cwd(&mut self, key: (u32, u64), cwd: String) {
        if let Some(&i) = self.by_key.get(&key) {
            self.procs[i].cwd = Some(cwd);
        }
    }

    /// One process by (pid, cookie).
    pub fn get(&self, key: (u32, u64)) -> Option<&Proc> {
        self.by_key.get(&key).map(|&i| &*self.procs[i])
    }

    /// Every process's (pid, cookie), in the order pmet learned of them.
    pub fn keys(&self) -> Vec<(u32, u64)> {
        self.procs.iter().map(|p| (p.pid, p.cookie)).collect()
    }

    /// A process ended at `end_ns`: its UDP sockets are closed by then.
    pub fn conns_process_ended(&mut self, key: (u32, u64), end_ns: u64) {
        if let Some(&i) = self.by_key.get(&key) {
            self.procs[i].conns.process_ended(end_ns);
        }
    }

    /// The processes that used a socket, as (pid, cookie).
    pub fn sock_users(&self, sock_cookie: u64) -> Vec<(u32, u64)> {
        self.sock_users
            .get(&sock_cookie)
            .into_iter()
            .flatten()
            .map(|&i| (self.procs[i].pid, self.procs[i].cookie))
            .collect()
    }

    /// A process's bytes on one socket, read from the kernel.
    pub fn set_conn_bytes(
        &mut self,
        key: (u32, u64),
        sock_cookie: u64,
        tx: u64,
        rx: u64,
        final_: bool,
    ) {
        if let Some(&i) = self.by_key.get(&key) {
            self.procs[i].conns.set_bytes(sock_cookie, tx, rx, final_);
        }
    }

    /// A TCP socket's life so far, for every process that used it.
    pub fn set_conn_life(&mut self, sock_cookie: u64, life: &Life) {
        for &i in self.sock_users.get(&sock_cookie).into_iter().flatten() {
            self.procs[i].conns.set_life(sock_cookie, life);
        }
    }

    /// Records a taskstats exit record if it belongs to the tree.
    pub fn apply_taskstats(&mut self, ts: &TaskStats) -> bool {
        let Some(&i) = self.latest.get(&ts.tgid) else {
            return false;
        };
        let p = self.proc_mut(i);
        if p.taskstats.group_done {
            // The pid was reused by a process outside the tree.
            return false;
        }
        let t = &mut p.taskstats;
        t.records += 1;
        t.utime_us += ts.utime_us;
        t.stime_us += ts.stime_us;
        t.run_ns += ts.run_ns;
        t.hiwater_rss_kb = t.hiwater_rss_kb.max(ts.hiwater_rss_kb);
        t.read_bytes += ts.read_bytes;
        t.write_bytes += ts.write_bytes;
        t.cancelled_write_bytes += ts.cancelled_write_bytes;
        t.nvcsw += ts.nvcsw;
        t.nivcsw += ts.nivcsw;
        t.minflt += ts.minflt;
        t.majflt += ts.majflt;
        // The group's last record carries the wait status. The exit event
        // says the same; this stands in when that event was lost (taskstats
        // does not share the ring buffer).
        if ts.flags & crate::model::input::AGROUP != 0 {
            p.taskstats.group_done = true;
            if p.exit.is_none() {
                p.exit = Some(ExitStatus::from_raw(ts.exit_code));
            }
        }
        true
    }

    /// Records a /proc sample of a live process.
    pub fn apply_sample(&mut self, pid: u32, s: Sample) {
        let Some(&i) = self.live.get(&pid) else {
            return;
        };
        let p = self.proc_mut(i);
        if p.baseline.sample.is_none() && !p.baseline.from_start && p.preexisting && p.samples == 0
        {
            // Should have been set at attach (its read failed); keep deltas
            // from attach regardless.
            p.baseline.sample = Some(s);
        }
        p.samples += 1;
        p.sampled_peak_rss = p.sampled_peak_rss.max(s.hwm_bytes).max(s.rss_bytes);
        p.max_threads = p.max_threads.max(s.threads);
        p.rss_settled = p
            .last_sample
            .is_some_and(|was| s.rss_bytes <= was.rss_bytes);
        p.last_sample = Some(s);
        let m = p.memory_peak.get_or_insert_with(MemoryPeak::default);
        m.anon = m.anon.max(s.anon_bytes);
        m.file = m.file.max(s.file_bytes);
        m.shmem = m.shmem.max(s.shmem_bytes);
        m.swap = m.swap.max(s.swap_bytes);
        if let Some((_, since)) = &mut p.shares_at {
            *since += 1;
        }
    }

    /// Whether `pid`'s own I/O must be read thread by thread: with the
    /// kernel side's final figures of its ended threads to add, for a
    /// process that may reap a child (it has had one, or it is an init,
    /// which reaps orphans): `/proc/PID/io` holds the reaped children's I/O
    /// too.
    pub fn wants_threads_io(&self, pid: u32, kernel_io: bool) -> bool {
        kernel_io
            && self.live.get(&pid).is_some_and(|&i| {
                let p = &self.procs[i];
                p.has_children || p.pid == 1 || p.ids.is_some_and(|ids| ids.ns_pid == Some(1))
            })
    }

    /// Records `pid`'s live threads' own I/O (see [`Tree::wants_threads_io`]).
    pub fn apply_threads_io(&mut self, pid: u32, live: [u64; 3]) {
        if let Some(&i) = self.live.get(&pid) {
            let p = self.proc_mut(i);
            let f = &p.freed;
            let now = [
                f.read_bytes + live[0],
                f.write_bytes + live[1],
                f.cancelled_write_bytes + live[2],
            ];
            let was = p.threads_io.unwrap_or_default();
            p.threads_io = Some(std::array::from_fn(|k| was[k].max(now[k])));
        }
    }

    /// Whether `pid`'s `smaps_rollup` is worth reading now: never read, its
    /// RSS at a new high or settled above the last read, or not read for a
    /// while.
    pub fn shares_due(&self, pid: u32) -> bool {
        if self.no_pss {
            return false;
        }
        let Some(p) = self.live.get(&pid).map(|&i| &self.procs[i]) else {
            return false;
        };
        let rss = p.last_sample.map_or(0, |s| s.rss_bytes);
        match p.shares_at {
            None => true,
            Some((at, since)) => {
                rss as f64 > at as f64 * SHARES_RSS_GROWTH
                    || since >= SHARES_EVERY
                    || (p.rss_settled && rss > at + at / SHARES_SETTLED_ABOVE)
            }
        }
    }

    /// Records what of `pid`'s memory is its own.
    pub fn apply_shares(&mut self, pid: u32, sh: Shares) {
        let Some(&i) = self.live.get(&pid) else {
            return;
        };
        let p = self.proc_mut(i);
        let rss = p.last_sample.map_or(0, |s| s.rss_bytes);
        p.shares_at = Some((rss, 0));
        p.last_pss = sh.pss_bytes;
        let m = p.memory_peak.get_or_insert_with(MemoryPeak::default);
        let max = |a: Option<u64>, b: u64| Some(a.map_or(b, |a| a.max(b)));
        m.pss = max(m.pss, sh.pss_bytes);
        m.private = max(m.private, sh.private_bytes);
        m.shared = max(m.shared, sh.shared_bytes);
    }

    /// After a round of samples: the live processes' PSS together, against
    /// the tree's peak. A process's last PSS reading can be rounds old (it
    /// is read again only once RSS grows, or every few samples); PSS is
    /// never above RSS, so each counts for at most the RSS it holds now: a
    /// process that let go of its memory does not lend its old peak to the
    /// sum while another one peaks.
    pub fn note_pss(&mut self) {
        let total: u64 = (self.live.values())
            .map(|&i| {
                let p = &self.procs[i];
                p.last_pss.min(p.last_sample.map_or(0, |s| s.rss_bytes))
            })
            .sum();
        self.pss_peak = self.pss_peak.max(total);
    }

    /// Records a process's socket counters (final when it has exited).
    pub fn set_net(&mut self, pid: u32, cookie: u64, net: Net, final_: bool) {
        if let Some(&i) = self.by_key.get(&(pid, cookie)) {
            let p = self.proc_mut(i);
            p.net = net;
            p.net_final |= final_;
        }
    }

    /// Gives up on the free of one exited thread of a process: its final
    /// figures are those the kernel side kept for it, or, when it kept none,
    /// taskstats'.
    pub fn free_missed(&mut self, pid: u32, cookie: u64, tid: u32, kept: Option<Kept>) {
        if let Some(&i) = self.by_key.get(&(pid, cookie)) {
            let p = self.proc_mut(i);
            if p.threads_unfreed > 0 {
                p.threads_unfreed -= 1;
                match kept {
                    Some(k) => {
                        p.freed.add(&k.totals);
                        p.freed_threads += 1;
                        p.thread_totals(tid, k.totals);
                        p.add_ctx(k.ctx);
                        p.freed_kept += 1;
                    }
                    None => p.freed_missing += 1,
                }
            }
        }
    }

    /// Whether a process ended after the run did (its final figures may
    /// not be in by the time the report is written: not a loss).
    pub fn ended_after_close(&self, p: &Proc) -> bool {
        self.closed_at
            .is_some_and(|at| p.end_ns.is_some_and(|end| end > at))
    }

    /// At the end of a session: every exited thread still awaiting its free
    /// will not get one (its kernel record may have been overwritten).
    pub fn give_up_frees(&mut self) {
        for p in self.procs.iter_mut().filter(|p| !p.alive()) {
            p.freed_missing += p.threads_unfreed;
            p.threads_unfreed = 0;
        }
    }

    /// Marks a live process as gone without an exit event (its event was lost).
    pub fn mark_vanished(&mut self, pid: u32, ts_ns: u64) {
        if let Some(i) = self.live.remove(&pid) {
            let p = self.proc_mut(i);
            p.vanished = true;
            p.end_ns = Some(ts_ns);
        }
    }

    /// Sets the root's exit status as wait() reported it (authoritative).
    pub fn set_root_exit(&mut self, status: ExitStatus, ts_ns: u64) {
        if let Some(r) = self.root {
            let p = self.proc_mut(r);
            p.exit = Some(status);
            if p.end_ns.is_none() {
                // Polling mode has no exit event; with eBPF the event's own
                // timestamp replaces this one when it is drained.
                p.end_ns = Some(ts_ns);
                let pid = p.pid;
                if self.live.get(&pid) == Some(&r) {
                    self.live.remove(&pid);
                }
            }
        }
    }

    /// Pids of processes that exited and whose taskstats record has not come.
    pub fn awaiting_taskstats(&self) -> usize {
        self.procs
            .iter()
            .filter(|p| !p.alive() && !p.vanished && !p.untracked && p.taskstats.records == 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork(parent: u32, child: u32, cookie: u64, ts: u64) -> Event {
        Event::Fork {
            shares_memory: false,
            ts_ns: ts,
            parent_tgid: parent,
            child,
            cookie,
            thread: false,
            untracked: false,
            new_pid_ns: false,
            comm: "sh".into(),
        }
    }
    fn thread(parent: u32, tid: u32) -> Event {
        Event::Fork {
            shares_memory: false,
            ts_ns: 0,
            parent_tgid: parent,
            child: tid,
            cookie: 0,
            thread: true,
            untracked: false,
            new_pid_ns: false,
            comm: "sh".into(),
        }
    }
    fn exit(tgid: u32, tid: u32, cookie: u64, dead: bool, code: u32, ts: u64) -> Event {
        Event::Exit {
            maxrss_bytes: None,
            ts_ns: ts,
            tgid,
            tid,
            cookie,
            group_dead: dead,
            had_net: true,
            exit_code: Some(code),
            comm: "x".into(),
            peak_rss_bytes: None,
        }
    }
    #[test]
    fn peak_rss_counts_the_memory_left_at_an_exec_but_not_a_creators() {
        const MB: u64 = 1 << 20;
        let exec = |tgid: u32, maxrss: u64| Event::Exec {
            ts_ns: 0,
            tgid,
            old_tid: tgid,
            comm: "x".into(),
            ids: Default::default(),
            maxrss_bytes: Some(maxrss),
            cwd: None,
        };
        let dies = |tgid: u32, cookie: u64, maxrss: u64| {
            let mut e = exit(tgid, tgid, cookie, true, 0, 9);
            if let Event::Exit {
                maxrss_bytes,
                peak_rss_bytes,
                ..
            } = &mut e
            {
                (*maxrss_bytes, *peak_rss_bytes) = (Some(maxrss), Some(MB));
            }
            e
        };
        let mut t = Tree::default();
        // The command pmet launched ran in pmet's copy (30 MB) until its
        // exec; its program then grew to 60 MB and exec'd `true` (1 MB).
        t.add_root(100, 1, 1, 0, vec!["a".into()]);
        t.apply(exec(100, 30 * MB));
        t.apply(exec(100, 60 * MB));
        // A child vfork'd by a 500 MB creator: its maxrss is the creator's.
        let mut vfork = fork(100, 101, 2, 1);
        if let Event::Fork { shares_memory, .. } = &mut vfork {
            *shares_memory = true;
        }
        t.apply(vfork);
        t.apply(exec(101, 500 * MB));
        t.apply(dies(101, 2, 500 * MB));
        // A forked child that grew its copy to 8 MB and never exec'd.
        t.apply(fork(100, 102, 3, 1));
        t.apply(dies(102, 3, 8 * MB));
        t.apply(dies(100, 1, 60 * MB));
        let peak = |pid: u32| t.procs.iter().find(|p| p.pid == pid).unwrap().peak_rss();
        assert_eq!((peak(100), peak(101), peak(102)), (60 * MB, MB, 8 * MB));
        // A process found running (attach): whose memory its maxrss holds is
        // unknown until it execs.
        let mut t = Tree::default();
        t.add_seen(Seen {
            pid: 200,
            ppid: 1,
            cookie: 1,
            ..Seen::default()
        });
        t.apply(dies(200, 1, 90 * MB));
        assert_eq!(t.procs[0].peak_rss(), MB);
    }

    fn free(tgid: u32, tid: u32, cookie: u64, rt: u64, u: u64, s: u64) -> Event {
        Event::Free {
            ts_ns: 0,
            tgid,
            tid,
            cookie,
            totals: Some(ThreadTotals {
                runtime_ns: rt,
                utime_ns: u,
                stime_ns: s,
                read_bytes: 10,
                write_bytes: 20,
                cancelled_write_bytes: 0,
            }),
            kept: false,
            ctx: None,
        }
    }

    #[test]
    fn exit_status_decoding() {
        assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Code(3));
        assert_eq!(ExitStatus::from_raw(0), ExitStatus::Code(0));
        assert_eq!(
            ExitStatus::from_raw(9),
            ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(0x80 | 11),
            ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            }
        );
        assert_eq!(ExitStatus::from_raw(15).shell_code(), 143);
    }

    #[test]
    fn split_matches_kernel_cputime_adjust() {
        assert_eq!(split_runtime(1000, 0, 0), (1000, 0));
        assert_eq!(split_runtime(1000, 3, 0), (1000, 0));
        assert_eq!(split_runtime(1000, 0, 3), (0, 1000));
        assert_eq!(split_runtime(1000, 3, 1), (750, 250));
        let (u, s) = split_runtime(u64::MAX / 2, u64::MAX / 3, u64::MAX / 3);
        assert_eq!(u + s, u64::MAX / 2);
    }

    #[test]
    fn builds_the_tree_and_inherits_argv_until_exec() {
        let mut t = Tree::new();
        t.add_root(
            100,
            1,
            1,
            1_000,
            vec!["/bin/sh".into(), "-c".into(), "x".into()],
        );
        t.apply(fork(100, 101, 11, 2_000));
        t.apply(Event::ExecArgs {
            ts_ns: 2_100,
            tid: 101,
            filename: "/bin/true".into(),
            argv: vec!["true".into()],
            argv_hex: None,
            truncated: false,
        });
        // A failed attempt by another thread must not leak into 101.
        t.apply(Event::ExecArgs {
            ts_ns: 2_100,
            tid: 999,
            filename: "/nope".into(),
            argv: vec!["nope".into()],
            argv_hex: None,
            truncated: false,
        });
        t.apply(Event::Exec {
            maxrss_bytes: None,
            cwd: None,
            ts_ns: 2_200,
            tgid: 101,
            old_tid: 101,
            comm: "true".into(),
            ids: Default::default(),
        });
        t.apply(fork(100, 102, 12, 2_300));
        assert_eq!(t.alive_count(), 3);
        let c = &t.procs[1];
        assert_eq!((c.pid, c.ppid, c.parent), (101, Some(100), Some(0)));
        assert_eq!(&c.argv[..], ["true"]);
        assert_eq!(c.exe.as_deref(), Some("/bin/true"));
        assert_eq!(c.comm, "true");
        let d = &t.procs[2];
        assert_eq!(
            &d.argv[..],
            ["/bin/sh", "-c", "x"],
            "fork without exec keeps argv"
        );
        assert_eq!(t.procs[0].children, [1, 2]);
        assert_eq!(t.max_alive, 3);
    }

    #[test]
    fn exit_and_free_give_exact_final_figures() {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec!["a".into()]);
        t.apply(fork(100, 101, 11, 10));
        t.apply(thread(101, 150));
        t.apply(thread(101, 151));
        assert_eq!(t.procs[1].max_threads, 3);
        t.apply(exit(101, 150, 11, false, 0, 20));
        t.apply(free(101, 150, 11, 1_000, 1, 1));
        assert!(t.procs[1].alive());
        t.apply(exit(101, 151, 11, false, 7 << 8, 30));
        t.apply(exit(101, 101, 11, true, 7 << 8, 31));
        assert!(!t.procs[1].alive());
        assert_eq!(t.procs[1].exit, Some(ExitStatus::Code(7)));
        assert!(!t.procs[1].totals_complete(), "two threads still unfreed");
        assert_eq!(t.awaiting_totals(), 1);
        t.apply(free(101, 151, 11, 2_000, 0, 4));
        t.apply(free(101, 101, 11, 3_000, 4, 0));
        let p = &t.procs[1];
        assert!(p.totals_complete());
        assert_eq!(p.freed.runtime_ns, 6_000);
        assert_eq!((p.freed.utime_ns, p.freed.stime_ns), (5, 5));
        assert_eq!(p.freed.read_bytes, 30);
        assert_eq!(p.end_ns, Some(31));
        assert_eq!(t.alive_count(), 1);
        assert_eq!(t.awaiting_totals(), 0);
    }

    #[test]
    fn a_missed_free_is_made_good_by_the_figures_kept_for_it() {
        let kept = |rt| Kept {
            ctx: None,
            totals: ThreadTotals {
                runtime_ns: rt,
                utime_ns: 1,
                stime_ns: 1,
                read_bytes: 7,
                ..ThreadTotals::default()
            },
        };
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec!["a".into()]);
        t.apply(fork(100, 101, 11, 10));
        t.apply(thread(101, 150));
        t.apply(thread(101, 151));
        t.apply(exit(101, 150, 11, false, 0, 20));
        t.apply(exit(101, 151, 11, false, 0, 21));
        t.apply(exit(101, 101, 11, true, 0, 30));
        t.apply(free(101, 150, 11, 1_000, 1, 1));
        // Two threads' final records never come: their figures were kept
        // at their exits.
        t.free_missed(101, 11, 151, Some(kept(1_900)));
        t.free_missed(101, 11, 101, Some(kept(300)));
        let p = &t.procs[1];
        assert!(p.totals_complete(), "nothing is left to taskstats");
        assert_eq!(p.freed.runtime_ns, 1_000 + 1_900 + 300);
        assert_eq!(p.freed_threads, 3);
        assert_eq!(p.freed_kept, 2);
        let missing = |t: &Tree| t.procs.iter().map(|p| p.freed_missing).sum::<u32>();
        assert_eq!(missing(&t), 0);
        assert_eq!(super::super::figures::figures(p, 100, true).source, "exit");
        // Nothing kept: taskstats' figures, and it is counted as missing.
        t.apply(fork(100, 102, 13, 40));
        t.apply(exit(102, 102, 13, true, 0, 50));
        t.free_missed(102, 13, 102, None);
        assert_eq!(t.procs[2].freed_missing, 1);
        assert_eq!(missing(&t), 1);
        assert!(!t.procs[2].totals_complete());
        // ... until its free turns up late after all: exact again.
        t.apply(free(102, 102, 13, 4_000, 1, 1));
        assert_eq!(t.procs[2].freed_missing, 0);
        assert!(t.procs[2].totals_complete());
        assert_eq!(t.procs[2].freed.runtime_ns, 4_000);
    }

    #[test]
    fn reused_pid_keeps_two_processes_apart() {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec![]);
        t.apply(fork(100, 200, 21, 10));
        t.apply(exit(200, 200, 21, true, 0, 11));
        t.apply(fork(100, 200, 22, 12));
        t.apply(free(200, 200, 21, 500, 1, 0));
        t.apply(exit(200, 200, 22, true, 1 << 8, 13));
        t.apply(free(200, 200, 22, 700, 1, 0));
        assert_eq!(t.procs.len(), 3);
        assert_eq!(t.procs[1].freed.runtime_ns, 500);
        assert_eq!(t.procs[1].exit, Some(ExitStatus::Code(0)));
        assert_eq!(t.procs[2].freed.runtime_ns, 700);
        assert_eq!(t.procs[2].exit, Some(ExitStatus::Code(1)));
    }

    #[test]
    fn reparented_orphans_stay_under_their_creator() {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec![]);
        t.apply(fork(100, 101, 11, 1));
        t.apply(fork(101, 102, 12, 2));
        t.apply(exit(101, 101, 11, true, 0, 3));
        // 102 now belongs to init in the kernel's eyes, but is still in the tree
        // and still alive.
        t.apply(fork(102, 103, 13, 4));
        assert_eq!(t.alive_count(), 3);
        assert_eq!(t.procs[3].parent, Some(2));
        assert_eq!(t.procs[2].ppid, Some(101));
    }

    #[test]
    fn events_about_unknown_processes_are_counted_not_applied() {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec![]);
        t.apply(fork(555, 556, 1, 1));
        t.apply(exit(777, 777, 5, true, 0, 1));
        assert_eq!(t.procs.len(), 1);
        assert_eq!(t.orphan_events, 2);
    }

    #[test]
    fn lost_exit_is_marked_vanished() {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec![]);
        t.apply(fork(100, 101, 11, 1));
        t.mark_vanished(101, 50);
        assert_eq!(t.alive_count(), 1);
        assert!(t.procs[1].vanished);
        assert_eq!(t.procs[1].exit, None);
    }

    #[test]
    fn taskstats_records_join_the_latest_holder_of_the_pid() {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec![]);
        // A thread's record, then the group's last (AGROUP), as they come.
        let mut ts = TaskStats {
            tid: 105,
            tgid: 100,
            hiwater_rss_kb: 400,
            utime_us: 10,
            ..TaskStats::default()
        };
        assert!(t.apply_taskstats(&ts));
        ts.tgid = 4444;
        assert!(!t.apply_taskstats(&ts), "not in the tree");
        ts.tgid = 100;
        ts.tid = 100;
        ts.hiwater_rss_kb = 500;
        ts.flags = crate::model::input::AGROUP;
        ts.exit_code = 2 << 8;
        assert!(t.apply_taskstats(&ts));
        let p = &t.procs[0].taskstats;
        assert_eq!(p.records, 2);
        assert_eq!(p.hiwater_rss_kb, 500);
        assert_eq!(p.utime_us, 20);
        assert_eq!(t.procs[0].exit, Some(ExitStatus::Code(2)));
        // After the group's last record, the pid is free: a process outside
        // the tree that reused it exits with its own figures, which are not
        // this one's.
        ts.hiwater_rss_kb = 90_000;
        ts.exit_code = 9;
        assert!(!t.apply_taskstats(&ts));
        let p = &t.procs[0].taskstats;
        assert_eq!((p.records, p.hiwater_rss_kb), (2, 500));
        assert_eq!(t.procs[0].exit, Some(ExitStatus::Code(2)));
    }

    #[test]
    fn switches_faults_and_peak_memory_come_from_the_kernel_side_when_every_thread_had_them() {
        // The same events as the kernel side sends them where it reads
        // these itself: `c` switches and faults, or `c` MiB at the peak.
        let with = |mut ev: Event, c: u64| {
            match &mut ev {
                Event::Free { ctx, .. } => {
                    *ctx = Some(Ctx {
                        nvcsw: c,
                        nivcsw: 10 * c,
                        maj_flt: c,
                    })
                }
                Event::Exit { peak_rss_bytes, .. } => *peak_rss_bytes = Some(c << 20),
                _ => {}
            }
            ev
        };
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec![]);
        t.apply(fork(100, 101, 11, 10));
        t.apply(thread(101, 150));
        t.apply(with(exit(101, 150, 11, false, 0, 20), 7));
        t.apply(with(free(101, 150, 11, 1_000, 1, 1), 2));
        t.apply(with(exit(101, 101, 11, true, 0, 31), 5));
        t.apply(with(free(101, 101, 11, 3_000, 4, 0), 3));
        let p = &t.procs[1];
        // Summed over the threads; the memory is the highest any exit read.
        assert_eq!(p.ctx_figures(), Some((5, 50, 5)));
        assert_eq!(p.peak_rss(), 7 << 20);

        // One thread freed without them: taskstats' record, or nothing.
        t.apply(fork(100, 102, 12, 40));
        t.apply(thread(102, 160));
        t.apply(exit(102, 160, 12, false, 0, 50));
        t.apply(with(free(102, 160, 12, 1_000, 1, 1), 2));
        t.apply(exit(102, 102, 12, true, 0, 51));
        t.apply(free(102, 102, 12, 1_000, 1, 1));
        assert_eq!(t.procs[2].ctx_figures(), None);
        assert!(t.apply_taskstats(&TaskStats {
            tid: 102,
            tgid: 102,
            flags: crate::model::input::AGROUP,
            nvcsw: 8,
            nivcsw: 9,
            majflt: 1,
            hiwater_rss_kb: 512,
            ..TaskStats::default()
        }));
        assert_eq!(t.procs[2].ctx_figures(), Some((8, 9, 1)));
        assert_eq!(t.procs[2].peak_rss(), 512 << 10);
    }

    #[test]
    fn a_known_exit_status_is_not_replaced_by_taskstats() {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 0, vec![]);
        t.set_root_exit(ExitStatus::Code(2), 5);
        let ts = TaskStats {
            tid: 100,
            tgid: 100,
            flags: crate::model::input::AGROUP,
            exit_code: 9,
            ..TaskStats::default()
        };
        assert!(t.apply_taskstats(&ts));
        assert_eq!(t.procs[0].exit, Some(ExitStatus::Code(2)));
    }
}
