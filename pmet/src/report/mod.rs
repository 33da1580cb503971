//! The JSON report (schema `pmet.report.v1`): a contract that scripts and CI
//! jobs parse. Fields may be added; the ones documented in README.md are never
//! renamed. Unknown figures are `null`, never a made-up zero.

mod build;
pub mod diff;
pub mod entry;
pub mod read;
pub mod spill;
mod write;

pub use build::Names;
pub use build::{MAX_PROC_POINTS, MAX_TREE_POINTS, RunInfo, build};
pub use write::{Output, OutputTarget};

use serde::{Deserialize, Serialize};

use crate::model::series::{ProcPoint, Stat, TreePoint, TreeStats};

/// The schema name written into every report.
pub const SCHEMA: &str = "pmet.report.v1";

/// The documented top-level fields: the contract (README.md), never renamed.
pub const TOP_FIELDS: [&str; 11] = [
    "schema",
    "pmet_version",
    "command",
    "root_pid",
    "started_at",
    "duration_s",
    "exit_code",
    "exit_signal",
    "collector",
    "totals",
    "processes",
];
/// The documented fields of `collector`.
pub const COLLECTOR_FIELDS: [&str; 5] = ["ebpf", "interval_ms", "samples", "events", "lost_events"];
/// The documented fields of `totals`.
pub const TOTALS_FIELDS: [&str; 6] = [
    "processes",
    "cpu_user_s",
    "cpu_system_s",
    "disk_read_bytes",
    "disk_write_bytes",
    "net",
];
/// The documented fields of each `processes[]` entry.
pub const PROCESS_FIELDS: [&str; 15] = [
    "pid",
    "ppid",
    "comm",
    "argv",
    "start_offset_s",
    "end_offset_s",
    "exit_code",
    "exit_signal",
    "cpu_user_s",
    "cpu_system_s",
    "peak_rss_bytes",
    "max_threads",
    "disk_read_bytes",
    "disk_write_bytes",
    "net",
];

/// A whole report. Every field has a default when reading, so reports from
/// older or newer pmet versions load (see `read` for what is reported missing).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// pmet's version.
    pub pmet_version: String,
    /// The launched command (`null` when attached with `--pid`).
    pub command: Option<Vec<String>>,
    /// Pid of the launched or attached process.
    pub root_pid: u32,
    /// When tracing began, RFC 3339.
    pub started_at: String,
    /// How long tracing lasted, seconds.
    pub duration_s: f64,
    /// The root's exit status (`null` if it was killed by a signal or is still running).
    pub exit_code: Option<i32>,
    /// The signal that killed the root, if one did.
    pub exit_signal: Option<i32>,
    /// How the figures were collected, and what was lost.
    pub collector: Collector,
    /// The tree, summed.
    pub totals: Totals,
    /// Every process ever seen, in start order.
    pub processes: Vec<ProcessReport>,
    /// `launch`, `attach`, `all` (`--all`) or `cgroup` (`--cgroup`,
    /// `--container`).
    #[serde(default)]
    pub mode: String,
    /// The cgroup followed, its path under the v2 root (`cgroup` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Tracing stopped before the tree finished (duration elapsed or interrupted).
    #[serde(default)]
    pub stopped_early: Option<String>,
    /// The machine it ran on.
    #[serde(default)]
    pub host: Option<Host>,
    /// `process_start`, or `attach` when figures count only what happened
    /// after pmet attached (network always counts from attach).
    #[serde(default)]
    pub counting_from: String,
    /// The tree over time.
    #[serde(default)]
    pub series: Option<SeriesReport>,
    /// Statistics of the tree over every sample.
    #[serde(default)]
    pub stats: Option<TreeStats>,
}

/// The tree's samples over time, and how sampling went.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SeriesReport {
    /// Intervals achieved between samples, seconds.
    pub interval_s: Option<Stat>,
    /// Most points kept for the tree (and `processes[].series` has at most
    /// `max_points_per_process`).
    pub max_points: usize,
    /// Most points kept per process.
    pub max_points_per_process: usize,
    /// Old points were merged pairwise to stay within `max_points` (rates
    /// averaged, peaks kept, running totals kept).
    pub downsampled: bool,
    /// The points, oldest first.
    pub tree: Vec<TreePoint>,
}

/// Statistics of one process over its samples.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProcStats {
    /// CPU use, percent of one core.
    pub cpu_pct: Option<Stat>,
    /// Resident memory.
    pub rss_bytes: Option<Stat>,
}

/// How the figures were collected.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Collector {
    /// Kernel events (eBPF) were used; `false` means /proc polling only.
    pub ebpf: bool,
    /// The kernel release the run was measured on (`uname -r`).
    pub kernel_release: Option<String>,
    /// How each capability was measured on that kernel: the hooks used, and
    /// the preferred ones that fell back, with the reason (empty without
    /// eBPF). Runs measured through different hooks are not comparable
    /// figure for figure.
    pub hooks: Vec<crate::collect::hooks::Hook>,
    /// Polling interval, milliseconds.
    pub interval_ms: u64,
    /// Polls taken.
    pub samples: u64,
    /// Kernel events processed.
    pub events: u64,
    /// Events or figures lost, all causes summed (see `lost`).
    pub lost_events: u64,
    /// Losses by cause.
    #[serde(default)]
    pub lost: Lost,
    /// Exit records came from taskstats.
    #[serde(default)]
    pub taskstats: bool,
    /// Final CPU and disk figures came from the kernel at task free.
    #[serde(default)]
    pub exit_totals: bool,
    /// CPU seconds pmet itself used (userspace; the kernel-side programs run
    /// in the traced processes and show up in their figures).
    #[serde(default)]
    pub self_cpu_s: Option<f64>,
    /// Of `self_cpu_s`, what pmet used before tracing began (loading the
    /// kernel side, starting the command): the rest is the run's, which
    /// grows with the processes traced.
    #[serde(default)]
    pub startup_cpu_s: Option<f64>,
    /// pmet's own peak resident memory.
    #[serde(default)]
    pub self_peak_rss_bytes: Option<u64>,
    /// Exports that failed (`--textfile` writes, `--pushgateway` pushes,
    /// `--otlp` sends); each kind is said once on stderr. They never change
    /// pmet's exit status.
    #[serde(default)]
    pub export_errors: u64,
    /// The GPUs followed (`null`: no GPU driver on this machine).
    #[serde(default)]
    pub gpu: Option<GpuCollector>,
}

impl Collector {
    /// Whether socket bytes were counted: with eBPF, by some network hook.
    pub fn counts_network(&self) -> bool {
        self.ebpf
            && crate::collect::hooks::counts(
                &self.hooks,
                crate::collect::hooks::Capability::Network,
            )
    }

    /// Why the network figures are unknown, when they are.
    pub fn network_unknown(&self) -> Option<String> {
        if !self.ebpf {
            return Some("polled /proc only (run as root for eBPF)".into());
        }
        let h = self
            .hooks
            .iter()
            .find(|h| h.capability == crate::collect::hooks::Capability::Network)?;
        if h.via.is_some() {
            return None;
        }
        Some(format!(
            "no network hook works on this kernel ({})",
            h.fell_back
                .iter()
                .map(|r| format!("{}: {}", r.via.name(), r.reason))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}

/// Losses by cause. All zero on a healthy run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Lost {
    /// Events dropped because the ring buffer was full.
    pub ring_buffer: u64,
    /// Processes the kernel could not track (map full).
    pub tracked_map_full: u64,
    /// Processes whose socket counters could not be created (map full).
    pub net_map_full: u64,
    /// Threads whose final figures could not be kept until free (map full).
    pub dying_map_full: u64,
    /// Kernel reads that failed.
    pub read_failures: u64,
    /// Times the taskstats socket overflowed (records dropped).
    pub taskstats_overflows: u64,
    /// Processes whose exit was never seen.
    pub exits_unseen: u64,
    /// Exited processes whose final figures never arrived.
    pub totals_missing: u64,
    /// Kernel events about processes pmet never saw start (a sign of a
    /// missed fork: those processes are absent from the report).
    #[serde(default)]
    pub unmatched_events: u64,
    /// Exec argument lists cut at the kernel-side limit (not a loss of events).
    #[serde(default)]
    pub argv_truncated: u64,
    /// Exited threads whose last context switch (before 2026-11-27: whose
    /// task free) the kernel side did not see. Their
    /// final figures are those the kernel side kept for them (see the next
    /// two), or, when it kept none, taskstats'. Still measured by the
    /// kernel, so not counted in `lost_events`.
    #[serde(default)]
    pub free_events_missed: u64,
    /// Of those, figures read at the thread's last context switch: the same
    /// as the free's. Always 0 since that switch sends the final record
    /// itself (2026-11-27); kept so reports stay comparable.
    #[serde(default)]
    pub frees_kept_at_last_switch: u64,
    /// Of those, figures read at the thread's exit: short of the teardown of
    /// its address space that follows (hundreds of µs for a short process).
    #[serde(default)]
    pub frees_kept_at_exit: u64,
    /// Of `free_events_missed`, those found stale in the kernel (the address
    /// of their task went to another before their last switch was seen) and sent
    /// with their kept figures (not summed).
    #[serde(default)]
    pub stale_free_records: u64,
    /// Socket uses the kernel could not record per connection (map full):
    /// their bytes are in `net` and in `connections_dropped`, not in
    /// `connections`. Not a loss of any figure, so not in `lost_events`.
    #[serde(default)]
    pub conn_map_full: u64,
}

impl Lost {
    /// The kernel side's own counts, from its `COUNTERS` map.
    pub fn from_kernel(c: &[u64; pmet_common::counter::LEN as usize]) -> Self {
        use pmet_common::counter as k;
        Lost {
            ring_buffer: c[k::RINGBUF_FULL as usize],
            tracked_map_full: c[k::TRACKED_FULL as usize],
            net_map_full: c[k::NET_FULL as usize],
            dying_map_full: c[k::DYING_FULL as usize],
            read_failures: c[k::READ_FAILED as usize],
            stale_free_records: c[k::FREE_MISMATCH as usize],
            argv_truncated: c[k::ARGV_TRUNCATED as usize],
            conn_map_full: c[k::CONN_FULL as usize],
            ..Lost::default()
        }
    }

    /// Every loss of a session, in one place, for the live view and the
    /// report alike: the kernel side's counters, records pmet could not
    /// decode, taskstats' overflows, and what the tree shows (exits never
    /// seen, final figures missing, events about unknown processes, frees
    /// made good from kept figures).
    pub fn measure(
        kernel: Option<&[u64; pmet_common::counter::LEN as usize]>,
        undecodable: u64,
        taskstats_overflows: u64,
        tree: &crate::model::tree::Tree,
        settled_before: Option<u64>,
    ) -> Self {
        let mut l = kernel.map(Self::from_kernel).unwrap_or_default();
        l.read_failures += undecodable;
        l.taskstats_overflows = taskstats_overflows;
        l.unmatched_events = tree.orphan_events;
        // This runs at every sample: the forgotten and the folded are
        // summed in the tree, only the rest is walked.
        let mut sum = tree.gone.losses;
        sum.add(&tree.folded.losses);
        for (i, p) in tree.procs.iter().enumerate() {
            if !tree.is_folded(i) {
                sum.add(&tree.losses_of(p, settled_before));
            }
        }
        l.exits_unseen = sum.exits_unseen;
        l.totals_missing = sum.totals_missing;
        l.frees_kept_at_exit = sum.frees_kept_at_exit;
        l.free_events_missed = sum.free_events_missed;
        l
    }

    /// What `lost_events` sums: every cause that leaves an event, a figure
    /// or a process out (the live view's LOST and the report agree).
    pub fn total(&self) -> u64 {
        self.ring_buffer
            + self.tracked_map_full
            + self.net_map_full
            + self.dying_map_full
            + self.read_failures
            + self.taskstats_overflows
            + self.exits_unseen
            + self.totals_missing
            + self.unmatched_events
    }
}

pub use crate::model::net::{Net, Traffic};

/// Longest name a [`Brief`] keeps, in characters: wider than the summary
/// shows one (the whole command line is in the JSON report).
pub const BRIEF_NAME_CHARS: usize = 240;

/// How a [`Brief`] names its process: shared by every brief with the same
/// names (a storm of one program keeps one).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Label {
    /// Its command line (its comm when it had none), cut to
    /// [`BRIEF_NAME_CHARS`].
    name: Box<str>,
    /// What makes siblings "the same program": the executable's base name
    /// and its first argument (`python3 -m`, `cc -c`), not the rest.
    fold: Box<str>,
}

/// One shared copy of each [`Label`] the briefs hold.
#[derive(Debug, Default)]
pub struct Interned(std::collections::HashSet<std::sync::Arc<Label>>);

impl Interned {
    fn get(&mut self, l: Label) -> std::sync::Arc<Label> {
        if let Some(a) = self.0.get(&l) {
            return a.clone();
        }
        let a = std::sync::Arc::new(l);
        self.0.insert(a.clone());
        a
    }
}

/// What the summary shows of a process: its report entry cut to 64 bytes
/// and a shared label, so that a run of 100,000 processes is summed up
/// without holding their entries (see [`spill`]). Unknown figures are kept
/// as values no report holds (`u32::MAX`, `u64::MAX`).
#[derive(Clone, Debug, PartialEq)]
pub struct Brief {
    /// Process id.
    pub pid: u32,
    parent: u32,
    label: std::sync::Arc<Label>,
    cpu_bits: u64,
    peak_rss: u64,
    /// Its traffic when there was any (boxed: most processes have none).
    traffic: Option<Box<Net>>,
    /// Its connections, when it had any.
    conns: Option<Box<(Vec<ConnectionReport>, Option<ConnectionsDropped>)>>,
    exit_code: i32,
    exit_signal: i32,
    flags: u8,
}

impl Brief {
    const CODE: u8 = 1;
    const SIGNAL: u8 = 2;
    const ENDED: u8 = 4;
    const VANISHED: u8 = 8;
    const NET_KNOWN: u8 = 16;

    /// The brief of an entry, its names shared through `names`.
    pub fn of(e: &ProcessReport, names: &mut Interned) -> Self {
        let listed = e.connections.as_ref().is_some_and(|c| !c.is_empty());
        let flag = |on: bool, f: u8| if on { f } else { 0 };
        let name = if e.argv.is_empty() {
            e.comm.clone()
        } else {
            crate::units::command_line(&e.argv)
        };
        let mut fold: Vec<&str> = e.argv.iter().take(2).map(String::as_str).collect();
        match fold.first_mut() {
            Some(exe) => *exe = exe.rsplit('/').next().unwrap_or(exe),
            None => fold.push(&e.comm),
        }
        Self {
            pid: e.pid,
            parent: e.parent.map_or(u32::MAX, |p| p as u32),
            label: names.get(Label {
                name: crate::units::fit(&name, BRIEF_NAME_CHARS).into(),
                fold: fold.join(" ").into(),
            }),
            cpu_bits: e
                .cpu_user_s
                .zip(e.cpu_system_s)
                .map_or(u64::MAX, |(u, s)| (u + s).to_bits()),
            peak_rss: e.peak_rss_bytes.unwrap_or(u64::MAX),
            traffic: e.net.filter(|n| *n != Net::default()).map(Box::new),
            conns: (listed || e.connections_dropped.is_some()).then(|| {
                Box::new((
                    e.connections.clone().unwrap_or_default(),
                    e.connections_dropped.clone(),
                ))
            }),
            exit_code: e.exit_code.unwrap_or(0),
            exit_signal: e.exit_signal.unwrap_or(0),
            flags: flag(e.exit_code.is_some(), Self::CODE)
                | flag(e.exit_signal.is_some(), Self::SIGNAL)
                | flag(e.end_offset_s.is_some(), Self::ENDED)
                | flag(e.vanished, Self::VANISHED)
                | flag(e.net.is_some(), Self::NET_KNOWN),
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Position of its parent in the list.
    pub fn parent(&self) -> Option<usize> {
        (self.parent != u32::MAX).then_some(self.parent as usize)
    }

    /// Sets the position of its parent.
    pub fn set_parent(&mut self, parent: Option<u32>) {
        self.parent = parent.unwrap_or(u32::MAX);
    }

    /// Its command line (its comm when it had none), cut to
    /// [`BRIEF_NAME_CHARS`].
    pub fn name(&self) -> &str {
        &self.label.name
    }

    /// What makes siblings "the same program": the executable's base name
    /// and its first argument, not the rest.
    pub fn fold_key(&self) -> &str {
        &self.label.fold
    }

    /// CPU seconds, user and system.
    pub fn cpu_s(&self) -> Option<f64> {
        (self.cpu_bits != u64::MAX).then(|| f64::from_bits(self.cpu_bits))
    }

    /// Peak RSS.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        (self.peak_rss != u64::MAX).then_some(self.peak_rss)
    }

    /// Exit status.
    pub fn exit_code(&self) -> Option<i32> {
        self.has(Self::CODE).then_some(self.exit_code)
    }

    /// The signal that killed it.
    pub fn exit_signal(&self) -> Option<i32> {
        self.has(Self::SIGNAL).then_some(self.exit_signal)
    }

    /// Its end was seen.
    pub fn ended(&self) -> bool {
        self.has(Self::ENDED)
    }

    /// Its end was not seen; it is no longer running.
    pub fn vanished(&self) -> bool {
        self.has(Self::VANISHED)
    }

    /// Its traffic (`None` when traffic was not followed).
    pub fn net(&self) -> Option<Net> {
        self.has(Self::NET_KNOWN)
            .then(|| self.traffic.as_deref().copied().unwrap_or_default())
    }

    /// Its listed connections.
    pub fn connections(&self) -> &[ConnectionReport] {
        self.conns.as_ref().map_or(&[], |c| &c.0)
    }

    /// What its connections held beyond those listed.
    pub fn connections_dropped(&self) -> Option<&ConnectionsDropped> {
        self.conns.as_ref().and_then(|c| c.1.as_ref())
    }

    /// It exited non-zero or was killed.
    pub fn failed(&self) -> bool {
        self.exit_signal().is_some() || self.exit_code().is_some_and(|c| c != 0)
    }
}

/// The briefs of a report's processes, in its order.
pub fn briefs(r: &Report) -> Vec<Brief> {
    let mut names = Interned::default();
    r.processes
        .iter()
        .map(|p| Brief::of(p, &mut names))
        .collect()
}

/// The tree, summed over every process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Totals {
    /// Processes ever seen.
    pub processes: u64,
    /// User CPU seconds.
    pub cpu_user_s: f64,
    /// System CPU seconds.
    pub cpu_system_s: f64,
    /// Storage bytes read.
    pub disk_read_bytes: u64,
    /// Storage bytes written: what the tree wrote less what it dropped
    /// before writeback (a temporary file deleted while still in the page
    /// cache never reaches the device).
    pub disk_write_bytes: u64,
    /// Dirty bytes the tree dropped before writeback (already taken out of
    /// `disk_write_bytes`; the sum of the two is what it dirtied).
    #[serde(default)]
    pub disk_cancelled_write_bytes: u64,
    /// Network traffic (`null` without eBPF).
    pub net: Option<Net>,
    /// Processes whose figures are missing from these sums (their fields are null).
    #[serde(default)]
    pub processes_without_figures: u64,
    /// Most processes alive at once.
    #[serde(default)]
    pub max_processes_alive: u64,
    /// Processes that exited non-zero or were killed.
    #[serde(default)]
    pub failed_processes: u64,
    /// The most PSS the tree's live processes held together at one look: its
    /// memory with shared pages counted once (`null` when never sampled).
    #[serde(default)]
    pub pss_peak_bytes: Option<u64>,
    /// Processes still running when tracing ended (left by the command, or
    /// an early stop): their figures are from the last sample.
    #[serde(default)]
    pub processes_running: u64,
    /// GPU use (`null` when no GPU driver was there to ask).
    #[serde(default)]
    pub gpu: Option<GpuTotals>,
}

/// One process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// The pid of the process that started it.
    pub ppid: Option<u32>,
    /// Index in `processes` of the process that started it (pids can be
    /// reused; this cannot be ambiguous). `null` for the root.
    #[serde(default)]
    pub parent: Option<usize>,
    /// Name (comm of its last exec).
    pub comm: String,
    /// Arguments of its last exec.
    pub argv: Vec<String>,
    /// Seconds after tracing began that it started (negative: before, in attach mode).
    pub start_offset_s: f64,
    /// Seconds after tracing began that it exited; `null` while alive.
    pub end_offset_s: Option<f64>,
    /// Exit status; `null` if killed by a signal, alive, or unknown.
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub exit_signal: Option<i32>,
    /// User CPU seconds.
    pub cpu_user_s: Option<f64>,
    /// System CPU seconds.
    pub cpu_system_s: Option<f64>,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Most threads alive at once.
    pub max_threads: Option<u32>,
    /// Storage bytes read.
    pub disk_read_bytes: Option<u64>,
    /// Storage bytes written, less what it dropped before writeback.
    pub disk_write_bytes: Option<u64>,
    /// Dirty bytes it dropped before writeback (truncating or deleting a
    /// file: the kernel charges them to the process that drops them, which
    /// may not be the one that wrote them).
    #[serde(default)]
    pub disk_cancelled_write_bytes: Option<u64>,
    /// Network traffic (`null` without eBPF).
    pub net: Option<Net>,
    /// Path given to its last exec.
    #[serde(default)]
    pub exe: Option<String>,
    /// argv was cut at the kernel-side limit.
    #[serde(default)]
    pub argv_truncated: bool,
    /// For each argument that is not UTF-8 (U+FFFD in `argv`), its bytes in
    /// hex, `null` for the others; `null` when every argument is UTF-8.
    #[serde(default)]
    pub argv_hex: Option<Vec<Option<String>>>,
    /// It dumped core.
    #[serde(default)]
    pub core_dumped: bool,
    /// Where the CPU and disk figures come from: `exit` (kernel, final),
    /// `taskstats` (kernel, at exit), `sample` (last /proc poll), or `none`.
    #[serde(default)]
    pub figures: String,
    /// Voluntary context switches (from exit records).
    #[serde(default)]
    pub voluntary_ctxt_switches: Option<u64>,
    /// Involuntary context switches.
    #[serde(default)]
    pub involuntary_ctxt_switches: Option<u64>,
    /// Major page faults.
    #[serde(default)]
    pub major_faults: Option<u64>,
    /// It was running before tracing began (attach mode).
    #[serde(default)]
    pub preexisting: bool,
    /// Its exit was never observed (an event was lost); it is not running.
    #[serde(default)]
    pub vanished: bool,
    /// Its samples over time (processes sampled at least twice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<ProcPoint>,
    /// Statistics over its samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ProcStats>,
    /// When it started, RFC 3339 (`null` when unknown).
    #[serde(default)]
    pub started_at: Option<String>,
    /// Real user id it ran as after its last exec (else its parent's at its
    /// fork), `null` without eBPF.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Real group id.
    #[serde(default)]
    pub gid: Option<u32>,
    /// The user's name (OpenTelemetry `process.owner`).
    #[serde(default)]
    pub user: Option<String>,
    /// Its cgroup v2 path at its last exec.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The container that cgroup names (OpenTelemetry `container.id`).
    #[serde(default)]
    pub container: Option<crate::model::container::Container>,
    /// The Kubernetes pod that cgroup names.
    #[serde(default)]
    pub k8s_pod_uid: Option<String>,
    /// Its pid namespace (the namespace's inode number, as `ls -l
    /// /proc/PID/ns/pid` shows it), read by the kernel side at its exec.
    #[serde(default)]
    pub pid_ns: Option<u32>,
    /// Its pid inside that namespace (the last `NSpid` of
    /// `/proc/PID/status`): what the process itself and its container see.
    #[serde(default)]
    pub ns_pid: Option<u32>,
    /// Its working directory when it exec'd.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Its environment at its last exec: every name; a value only where
    /// `--env`/`--env-all` asked for it, else `"<redacted>"` (the value was
    /// never kept). `null` when unknown.
    #[serde(default)]
    pub env: Option<crate::model::env::EnvReport>,
    /// That environment was cut short at the kernel-side limit.
    #[serde(default)]
    pub env_truncated: bool,
    /// Its memory at its sampled peaks (`null` when never sampled).
    #[serde(default)]
    pub memory: Option<crate::model::tree::MemoryPeak>,
    /// Its threads, the most CPU first (at most `--max-threads-listed`).
    #[serde(default)]
    pub threads: Vec<ThreadReport>,
    /// Threads not listed, summed; `null` when every thread is listed.
    #[serde(default)]
    pub threads_dropped: Option<ThreadsDropped>,
    /// Each socket it used, in the order it first used them (at most
    /// `--max-connections`); `null` when connections were not followed
    /// (no eBPF, or a kernel whose BTF lacks `struct sock`'s ends).
    #[serde(default)]
    pub connections: Option<Vec<ConnectionReport>>,
    /// What its unlisted connections did, summed: those over the limit, and
    /// bytes the kernel could not attribute to a socket. `null` when every
    /// byte of `net` is in `connections`.
    #[serde(default)]
    pub connections_dropped: Option<ConnectionsDropped>,
    /// What it did on the GPUs: zeros for a process that used none;
    /// `null` when no GPU driver was there to ask.
    #[serde(default)]
    pub gpu: Option<GpuReport>,
}

/// One process's GPU use.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GpuReport {
    /// The devices it used (NVML UUIDs, or DRM PCI addresses).
    pub devices: Vec<String>,
    /// The most GPU memory it held at one look (all devices together).
    pub memory_peak_bytes: u64,
    /// Mean SM (or busiest engine) utilisation over the looks that saw it
    /// on a GPU, percent.
    pub sm_pct_mean: f64,
    /// Highest, percent.
    pub sm_pct_max: f64,
    /// Mean memory-controller utilisation, percent (`null` where the
    /// driver gives none).
    pub mem_pct_mean: Option<f64>,
    /// SM-utilisation-weighted seconds.
    pub busy_s: f64,
    /// Peak and mean are the driver's lifetime figures (NVML accounting
    /// mode, where it was already on), not sampled.
    #[serde(default)]
    pub accounting: bool,
}

/// The tree's GPU use.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GpuTotals {
    /// Processes seen on a GPU.
    pub processes: u64,
    /// The sum of the processes' memory peaks (an upper bound of the
    /// tree's peak at one moment).
    pub memory_peak_bytes: u64,
    /// SM-utilisation-weighted seconds, all processes.
    pub busy_s: f64,
}

/// The GPUs pmet asked, and how.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GpuCollector {
    /// `nvml` or `fdinfo`.
    pub source: String,
    /// Each device.
    pub devices: Vec<crate::collect::gpu::Device>,
}

/// One process's use of one socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnectionReport {
    /// `tcp` or `udp`.
    pub proto: crate::model::conn::Proto,
    /// `connect`, `accept`, `udp`, or `unknown` (a TCP socket already
    /// connected when pmet first saw it: one it attached to, or inherited).
    pub role: crate::model::conn::Role,
    /// `127.0.0.1:8080` or `[::1]:8080`; `null` before it was bound.
    pub local: Option<String>,
    /// The peer; `null` for an unconnected UDP socket.
    pub remote: Option<String>,
    /// Bytes this process sent on it (the same rules as `net`).
    pub tx_bytes: u64,
    /// Bytes this process received on it.
    pub rx_bytes: u64,
    /// Seconds from the start of tracing to its connect, its completed
    /// handshake (accept) or, for UDP and `unknown`, its first byte.
    pub opened_offset_s: f64,
    /// Seconds to its close (for UDP, which has no close event: the end of
    /// the process); `null` while open.
    pub closed_offset_s: Option<f64>,
    /// `open`, `closed`, `reset`, `refused`, `timeout`, `unreachable`,
    /// or `aborted` (the program closed it before its connect completed).
    pub outcome: crate::model::conn::Outcome,
    /// TCP segments sent again.
    pub retransmits: u64,
}

/// A process's connections left out of its list, summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConnectionsDropped {
    /// Connections over `--max-connections`.
    pub count: u64,
    /// Bytes sent on them, and any the kernel could not attribute.
    pub tx_bytes: u64,
    /// Bytes received likewise.
    pub rx_bytes: u64,
    /// Their retransmits.
    pub retransmits: u64,
    /// How many of them failed.
    pub failed: u64,
}

/// One thread of a process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ThreadReport {
    /// Thread id.
    pub tid: u32,
    /// Its own name (`prctl(PR_SET_NAME)`, `pthread_setname_np`) as it
    /// exited, else the one it inherited.
    pub comm: String,
    /// User CPU seconds, final (`null` while it ran when tracing stopped).
    pub cpu_user_s: Option<f64>,
    /// System CPU seconds.
    pub cpu_system_s: Option<f64>,
    /// Seconds from the start of tracing (`null`: running before it).
    pub start_offset_s: Option<f64>,
    /// Seconds from the start of tracing to its exit (`null` while running).
    pub end_offset_s: Option<f64>,
}

/// Threads of a process left out of its list, summed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ThreadsDropped {
    /// How many.
    pub count: u64,
    /// Their user CPU seconds (those with final figures).
    pub cpu_user_s: f64,
    /// Their system CPU seconds.
    pub cpu_system_s: f64,
}

/// Threads listed per process unless `--max-threads-listed` says otherwise.
pub const DEFAULT_MAX_THREADS_LISTED: usize = 256;

/// The machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Host {
    /// Host name.
    pub hostname: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// Logical CPUs.
    pub cpus: usize,
    /// Memory, bytes.
    pub memory_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmet_common::counter as k;

    #[test]
    fn lost_sums_every_loss_and_nothing_else() {
        let mut c = [0; k::LEN as usize];
        c[k::RINGBUF_FULL as usize] = 1;
        c[k::TRACKED_FULL as usize] = 2;
        c[k::NET_FULL as usize] = 4;
        c[k::DYING_FULL as usize] = 8;
        c[k::READ_FAILED as usize] = 16;
        c[k::FREE_MISMATCH as usize] = 1000;
        c[k::ARGV_TRUNCATED as usize] = 2000;
        let mut l = Lost::from_kernel(&c);
        assert_eq!((l.stale_free_records, l.argv_truncated), (1000, 2000));
        assert_eq!(l.total(), 31);
        l.taskstats_overflows = 32;
        l.exits_unseen = 64;
        l.totals_missing = 128;
        l.unmatched_events = 256;
        // Not losses: figures taken from another kernel source.
        l.free_events_missed = 5000;
        assert_eq!(l.total(), 511);
    }
}
