//! What the tree model is told: kernel events decoded into plain Rust values.

/// Final figures of one thread, read from its task_struct as it is freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadTotals {
    /// Nanoseconds on CPU (exact).
    pub runtime_ns: u64,
    /// Tick-sampled user time, ns (for the user/system split).
    pub utime_ns: u64,
    /// Tick-sampled system time, ns.
    pub stime_ns: u64,
    /// Storage bytes read.
    pub read_bytes: u64,
    /// Storage bytes written.
    pub write_bytes: u64,
    /// Dirty bytes cancelled by truncation.
    pub cancelled_write_bytes: u64,
}

impl ThreadTotals {
    /// Adds another thread's figures to these.
    pub fn add(&mut self, t: &ThreadTotals) {
        self.runtime_ns += t.runtime_ns;
        self.utime_ns += t.utime_ns;
        self.stime_ns += t.stime_ns;
        self.read_bytes += t.read_bytes;
        self.write_bytes += t.write_bytes;
        self.cancelled_write_bytes += t.cancelled_write_bytes;
    }
}

/// A thread's context switches and page faults, read from its task with
/// its final figures (what taskstats and wait4 report, summed per process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ctx {
    /// Voluntary context switches.
    pub nvcsw: u64,
    /// Involuntary context switches.
    pub nivcsw: u64,
    /// Major page faults.
    pub maj_flt: u64,
}

impl Ctx {
    /// Adds another thread's counts to these.
    pub fn add(&mut self, o: &Ctx) {
        self.nvcsw += o.nvcsw;
        self.nivcsw += o.nivcsw;
        self.maj_flt += o.maj_flt;
    }
}

/// Who a process runs as and in which cgroup, as the kernel said at exec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// cgroup v2 id (the inode of its cgroup directory; 0: unknown).
    pub cgroup_id: u64,
    /// Its pid namespace (the namespace's inode number).
    pub pid_ns: Option<u32>,
    /// Its pid inside that namespace.
    pub ns_pid: Option<u32>,
}

/// The initial pid namespace's inode number (`PROC_PID_INIT_INO`): a
/// process there has the same pid inside as out.
pub const INIT_PID_NS: u32 = 0xEFFF_FFFC;

impl Ids {
    /// What a new process created with `clone_flags` inherits of these:
    /// all but its pid inside the namespace, known only where that is the
    /// host's, and not the namespace itself when the clone made a new one.
    pub fn inherited(&self, child: u32, new_pid_ns: bool) -> Ids {
        let pid_ns = if new_pid_ns { None } else { self.pid_ns };
        Ids {
            pid_ns,
            ns_pid: (pid_ns == Some(INIT_PID_NS)).then_some(child),
            ..*self
        }
    }
}

use super::conn::{Life, Opened};

/// One thing the kernel saw happen in the traced tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A tracked task created a process or a thread.
    Fork {
        /// `CLOCK_BOOTTIME` ns.
        ts_ns: u64,
        /// The creator's process.
        parent_tgid: u32,
        /// The new task's id (its pid when a process).
        child: u32,
        /// The new process's cookie (0 for a thread).
        cookie: u64,
        /// A thread rather than a process.
        thread: bool,
        /// The kernel could not track the new process (map full).
        untracked: bool,
        /// The new process is the first of a new pid namespace.
        new_pid_ns: bool,
        /// The new process runs in its creator's memory (`CLONE_VM`, as
        /// `vfork` and `posix_spawn` make it) until it execs.
        shares_memory: bool,
        /// The creator's comm, inherited.
        comm: String,
    },
    /// A tracked task called exec with these arguments (it may still fail).
    ExecArgs {
        /// `CLOCK_BOOTTIME` ns.
        ts_ns: u64,
        /// Calling thread.
        tid: u32,
        /// Path given to exec.
        filename: String,
        /// Arguments.
        argv: Vec<String>,
        /// The bytes of those that are not UTF-8.
        argv_hex: ArgvHex,
        /// argv was cut short.
        truncated: bool,
    },
    /// The environment a tracked task's exec was given (`NAME=VALUE`; it
    /// may still fail). The tree keeps only what its policy allows.
    ExecEnv {
        /// `CLOCK_BOOTTIME` ns.
        ts_ns: u64,
        /// Calling thread.
        tid: u32,
        /// The variables, `NAME=VALUE`, each ending in a NUL (as the
        /// kernel side read them; split only when this block is new).
        /// Shared with the exec before it when the bytes are the same.
        block: std::sync::Arc<[u8]>,
        /// Cut short at the kernel-side limit.
        truncated: bool,
    },
    /// A tracked process finished an exec.
    Exec {
        /// `CLOCK_BOOTTIME` ns.
        ts_ns: u64,
        /// The process.
        tgid: u32,
        /// The thread that called exec.
        old_tid: u32,
        /// comm of the new program.
        comm: String,
        /// Who it runs as and where, after the exec.
        ids: Ids,
        /// `signal->maxrss` after the exec, in bytes, when read: the peak
        /// resident size of the memories it ran in before this program.
        maxrss_bytes: Option<u64>,
        /// Its working directory, when the kernel side read it at the exec.
        cwd: Option<String>,
    },
    /// A tracked thread exited.
    Exit {
        /// `CLOCK_BOOTTIME` ns.
        ts_ns: u64,
        /// The process.
        tgid: u32,
        /// The thread.
        tid: u32,
        /// The process's cookie.
        cookie: u64,
        /// It was the last thread: the process is gone.
        group_dead: bool,
        /// The process has socket counters to read (last thread only;
        /// `true` when the kernel side cannot tell).
        had_net: bool,
        /// Raw `task_struct.exit_code` when it could be read.
        exit_code: Option<u32>,
        /// The thread's comm.
        comm: String,
        /// The peak resident size of its memory so far, in bytes, when the
        /// kernel side could read it (Linux 6.16+: the exit hook comes
        /// before the memory is torn down).
        peak_rss_bytes: Option<u64>,
        /// The last thread only: `signal->maxrss` in bytes, when read, the
        /// peak resident size over every memory the process ran in (before
        /// 6.16 its last one included: the kernel keeps it before the exit
        /// hook), as `wait4` reports it.
        maxrss_bytes: Option<u64>,
    },
    /// A tracked thread's task_struct was freed; its figures are final.
    Free {
        /// `CLOCK_BOOTTIME` ns.
        ts_ns: u64,
        /// The process.
        tgid: u32,
        /// The thread.
        tid: u32,
        /// The process's cookie.
        cookie: u64,
        /// Final CPU and I/O, when they could be read.
        totals: Option<ThreadTotals>,
        /// The thread's last switch was never seen: these are the figures
        /// the kernel side kept for it at its exit.
        kept: bool,
        /// Its context switches and page faults, read with `totals`.
        ctx: Option<Ctx>,
    },
    /// A tracked process used a socket for the first time.
    Conn {
        /// The process.
        tgid: u32,
        /// The process's cookie.
        proc_cookie: u64,
        /// The socket and its ends.
        opened: Opened,
    },
    /// A TCP socket the tree used was destroyed; its life is final.
    ConnEnd {
        /// The socket.
        sock_cookie: u64,
        /// Its life.
        life: Life,
    },
    /// A process of the traced cgroups that pmet was not following forked
    /// or exec'd there, and joined the tree (it counts from now).
    Join {
        /// `CLOCK_BOOTTIME` ns.
        ts_ns: u64,
        /// The process.
        pid: u32,
        /// Its cookie.
        cookie: u64,
    },
}

/// For each argument that is not valid UTF-8 (its text shows U+FFFD in
/// place of the bytes that are not), all its bytes in lowercase hex, and
/// `None` for the others; `None` as a whole when every argument is valid. A
/// program can exec with any bytes: its argv is kept, not guessed.
pub type ArgvHex = Option<Vec<Option<String>>>;

/// Arguments as text, and the bytes of those that are not UTF-8.
pub fn argv_from<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<String>, ArgvHex) {
    let (mut text, mut hex) = (Vec::new(), Vec::new());
    for p in pieces {
        match std::str::from_utf8(p) {
            Ok(s) => {
                text.push(s.to_owned());
                hex.push(None);
            }
            Err(_) => {
                text.push(String::from_utf8_lossy(p).into_owned());
                hex.push(Some(p.iter().map(|b| format!("{b:02x}")).collect()));
            }
        }
    }
    let any = hex.iter().any(Option::is_some);
    (text, any.then_some(hex))
}
