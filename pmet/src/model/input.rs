//! What the tree is told besides kernel events: /proc samples of live
//! processes and taskstats exit records. Defined here, where they are used;
//! `collect` reads them from the world and fills them in.

/// One look at a live process, taken from /proc/PID/{stat,status,io}.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// `CLOCK_BOOTTIME` nanoseconds when it was taken.
    pub ts_ns: u64,
    /// User CPU, clock ticks (whole process, exited threads included).
    pub utime_ticks: u64,
    /// System CPU, clock ticks.
    pub stime_ticks: u64,
    /// Resident set size now, bytes.
    pub rss_bytes: u64,
    /// Peak resident set size so far (VmHWM), bytes.
    pub hwm_bytes: u64,
    /// Threads now.
    pub threads: u32,
    /// Storage bytes read (None when /proc/PID/io is not readable).
    pub read_bytes: Option<u64>,
    /// Storage bytes written.
    pub write_bytes: Option<u64>,
    /// Of those, dirty bytes dropped before writeback (truncation, unlink).
    pub cancelled_write_bytes: Option<u64>,
    /// Process start, clock ticks after boot (identifies the instance of a pid).
    pub start_ticks: u64,
    /// Resident anonymous, file-backed and shared-memory bytes, and swapped
    /// out bytes (`status`: RssAnon, RssFile, RssShmem, VmSwap).
    pub anon_bytes: u64,
    /// See `anon_bytes`.
    pub file_bytes: u64,
    /// See `anon_bytes`.
    pub shmem_bytes: u64,
    /// See `anon_bytes`.
    pub swap_bytes: u64,
}

/// What of a process's memory is its own (`/proc/PID/smaps_rollup`), read
/// less often than a sample: the kernel walks every mapping for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shares {
    /// Proportional set size: each shared page counted once across its sharers.
    pub pss_bytes: u64,
    /// Pages mapped by this process only.
    pub private_bytes: u64,
    /// Pages mapped by others too.
    pub shared_bytes: u64,
}

/// `ac_flag` bit: the last thread of its group.
pub const AGROUP: u8 = 0x20;

/// One exited task, as the kernel reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Thread id.
    pub tid: u32,
    /// Process id (`ac_tgid`; the tid on kernels too old to say).
    pub tgid: u32,
    /// Parent pid.
    pub ppid: u32,
    /// comm.
    pub comm: String,
    /// Wait-status-style exit code (`status << 8`, or the signal).
    pub exit_code: u32,
    /// `ac_flag`.
    pub flags: u8,
    /// User CPU, microseconds (tick-sampled).
    pub utime_us: u64,
    /// System CPU, microseconds (tick-sampled).
    pub stime_us: u64,
    /// Scheduler runtime, ns (`cpu_run_virtual_total`; 0 when not provided).
    pub run_ns: u64,
    /// Peak RSS of the address space, KiB.
    pub hiwater_rss_kb: u64,
    /// Peak virtual size, KiB.
    pub hiwater_vm_kb: u64,
    /// Bytes passed to read-like calls.
    pub read_char: u64,
    /// Bytes passed to write-like calls.
    pub write_char: u64,
    /// Storage bytes read.
    pub read_bytes: u64,
    /// Storage bytes written.
    pub write_bytes: u64,
    /// Dirty bytes cancelled by truncation.
    pub cancelled_write_bytes: u64,
    /// Voluntary context switches.
    pub nvcsw: u64,
    /// Involuntary context switches.
    pub nivcsw: u64,
    /// Minor page faults.
    pub minflt: u64,
    /// Major page faults.
    pub majflt: u64,
}
