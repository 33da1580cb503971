//! Types shared by pmet's kernel-side programs (`pmet-ebpf`) and its userspace
//! loader (`pmet`).
//!
//! Everything here crosses the kernel boundary as raw bytes, so every type is
//! `#[repr(C)]`, made only of fixed-size integers and arrays (no pointers, no
//! `bool`), with explicit padding fields so both sides agree on the layout.
#![no_std]

/// Length of a task's `comm` as the kernel stores it.
pub const COMM_LEN: usize = 16;
/// Bytes kept of the path passed to `execve`.
pub const FILENAME_LEN: usize = 256;
/// Pids per element of the kernel side's `MARKS` array (a byte each).
/// A power of two: the kernel side masks a pid with `MARK_PIDS - 1`.
pub const MARK_PIDS: u32 = 4096;

/// Bytes of argv (NUL-separated) kept per exec. Must be a power of two: the
/// kernel side masks offsets with `ARGV_LEN - 1` to satisfy the verifier.
pub const ARGV_LEN: usize = 4096;
/// Most arguments read per exec.
pub const MAX_ARGS: u32 = 128;

/// Kinds of events sent through the `EVENTS` ring buffer.
pub mod kind {
    /// A tracked task created a process or a thread ([`super::ForkEvent`]).
    pub const FORK: u32 = 1;
    /// A tracked task called execve/execveat ([`super::ExecArgsEvent`]); may fail.
    pub const EXEC_ARGS: u32 = 2;
    /// A tracked process finished an exec ([`super::ExecEvent`]).
    pub const EXEC: u32 = 3;
    /// A tracked thread exited ([`super::ExitEvent`]).
    pub const EXIT: u32 = 4;
    /// A tracked thread switched away for the last time: its final
    /// accounting ([`super::FreeEvent`]).
    pub const FREE: u32 = 5;
    /// The environment an exec was given ([`super::ExecArgsEvent`] with an
    /// empty filename and `NAME=VALUE` strings in place of argv); sent right
    /// after its `EXEC_ARGS`.
    pub const EXEC_ENV: u32 = 6;
    /// A tracked process moved its first byte on a socket, or began a TCP
    /// connect ([`super::ConnEvent`]).
    pub const CONN: u32 = 7;
    /// A TCP socket a tracked process used was destroyed: its life, final
    /// ([`super::ConnEndEvent`]).
    pub const CONN_END: u32 = 8;
    /// A tracked process finished an exec: who it is now, its path, argv and
    /// environment in one record ([`super::ExecFullHeader`], then the
    /// filename, then `argv_len` bytes of argv and `env_len` of
    /// environment). Sent where the exec is hooked as a BTF tracepoint, in
    /// place of `EXEC_ARGS`, `EXEC_ENV` and `EXEC`.
    pub const EXEC_FULL: u32 = 9;
}

/// Indices into the `COUNTERS` per-CPU array: things the kernel side could not
/// do, so userspace can report them instead of silently losing data.
pub mod counter {
    /// An event did not fit in the ring buffer.
    pub const RINGBUF_FULL: u32 = 0;
    /// A new process could not be added to `TRACKED` (map full): it and its
    /// descendants are not followed.
    pub const TRACKED_FULL: u32 = 1;
    /// A process's network counters could not be created (map full).
    pub const NET_FULL: u32 = 2;
    /// An exiting thread could not be remembered until its last switch (map
    /// full): its final CPU and disk figures are lost.
    pub const DYING_FULL: u32 = 3;
    /// An exec's argv was longer than [`super::ARGV_LEN`] or [`super::MAX_ARGS`].
    pub const ARGV_TRUNCATED: u32 = 4;
    /// Reading a kernel or user value failed (faulted page, bad pointer).
    pub const READ_FAILED: u32 = 5;
    /// The exited thread remembered at a task address was found stale (its
    /// last switch was never seen and the address went to another task); the
    /// figures kept for it at exit were sent in place of its final ones.
    pub const FREE_MISMATCH: u32 = 6;
    /// A socket's bytes or life could not be kept per connection (map
    /// full): the process's `net` totals still have them, unattributed.
    pub const CONN_FULL: u32 = 7;
    /// Number of counters.
    pub const LEN: u32 = 8;
}

/// Bits of [`ForkEvent::flags`].
pub mod fork_flags {
    /// The new task is a thread of the creator's process (`CLONE_THREAD`).
    pub const THREAD: u32 = 1;
    /// The new process could not be added to the tracked set (map full): it
    /// and its descendants are not followed.
    pub const UNTRACKED: u32 = 2;
    /// Not a fork: a process of the traced cgroups (`--cgroup`) that pmet
    /// did not follow yet joined the tree as it forked or exec'd; `child`
    /// is the process itself.
    pub const JOINED: u32 = 4;
}

/// Bits of [`ExitEvent::flags`] and [`FreeEvent::flags`].
pub mod exit_flags {
    /// The last thread of the process exited: the process is gone.
    pub const GROUP_DEAD: u32 = 1;
    /// `exit_code` was read from the task (else it is unknown); exit events only.
    pub const CODE_VALID: u32 = 2;
    /// CPU and I/O figures were read from the task (else they are unknown).
    pub const STATS_VALID: u32 = 4;
    // 8 was `FINAL` (kept figures read at the last context switch), until
    // that switch sent the final record itself.
    /// Free events only: the thread's last switch was never seen; these are
    /// the figures kept for it in `DYING` at its exit.
    pub const KEPT: u32 = 16;
    /// Exit events of the last thread only: the process has socket
    /// counters in `NET` (else userspace need not look); from
    /// [`tracked_flags::HAD_NET`].
    pub const HAD_NET: u32 = 32;
    /// Exit events: `peak_rss_pages` was read from the thread's memory
    /// (still there at `sched_process_exit` from Linux 6.16).
    pub const MEM_VALID: u32 = 64;
    /// Free events: the figures include context switches and page faults.
    pub const CTX_VALID: u32 = 128;
}

/// Bits of [`ExecArgsEvent::flags`].
pub mod exec_flags {
    /// argv was cut short.
    pub const TRUNCATED: u16 = 1;
    /// The call was execveat (the filename may be relative to a directory fd).
    pub const EXECVEAT: u16 = 2;
    /// [`super::kind::EXEC_FULL`] only: these strings could not be read
    /// (none follow; a read failure is counted).
    pub const UNREAD: u16 = 4;
}

/// [`ConnEvent::role`] and [`SockLife::role`]: how the socket came to be.
pub mod conn_role {
    /// A TCP socket first seen carrying bytes: its connect or accept came
    /// before pmet followed it.
    pub const UNKNOWN: u16 = 0;
    /// A tracked process called connect (seen entering `SYN_SENT`).
    pub const CONNECT: u16 = 1;
    /// A connection a listener accepted (seen going `SYN_RECV` to `ESTABLISHED`).
    pub const ACCEPT: u16 = 2;
    /// A UDP socket.
    pub const UDP: u16 = 3;
}

/// [`SockLife::outcome`]: how a TCP connection ended.
pub mod conn_outcome {
    /// Still open.
    pub const OPEN: u16 = 0;
    /// Closed by either side with a FIN.
    pub const CLOSED: u16 = 1;
    /// Ended by a reset (`ECONNRESET`, `EPIPE`).
    pub const RESET: u16 = 2;
    /// The connect was refused (`ECONNREFUSED`).
    pub const REFUSED: u16 = 3;
    /// The kernel gave up (`ETIMEDOUT`).
    pub const TIMEOUT: u16 = 4;
    /// An ICMP error ended it (`EHOSTUNREACH`, `ENETUNREACH`).
    pub const UNREACHABLE: u16 = 5;
    /// The program closed a connect before it completed.
    pub const ABORTED: u16 = 6;
}

/// Start of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (thread group id) of the task the event is about.
    pub tgid: u32,
    /// Thread id of the task the event is about.
    pub tid: u32,
    /// Padding, always zero.
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` nanoseconds when the event happened.
    pub ts_ns: u64,
}

/// A tracked task created a task (`task:task_newtask`, in the creator's context).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    /// `tgid`/`tid` are the creator's.
    pub hdr: EventHeader,
    /// Thread id of the new task (its pid too when it is a process).
    pub child: u32,
    /// [`fork_flags`].
    pub flags: u32,
    /// The `clone` flags as the kernel saw them.
    pub clone_flags: u64,
    /// The new process's cookie in `TRACKED` (0 for threads).
    pub cookie: u64,
    /// The creator's comm, which the child inherits.
    pub comm: [u8; COMM_LEN],
}

/// A tracked task entered execve/execveat (`syscalls:sys_enter_execve*`).
///
/// Sent with a variable length: the fixed part, then `filename` (always
/// [`FILENAME_LEN`] bytes) and `argv_len` bytes of NUL-separated arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecArgsHeader {
    /// `tgid`/`tid` are the caller's (before exec).
    pub hdr: EventHeader,
    /// Bytes of argv that follow the filename.
    pub argv_len: u16,
    /// Number of arguments read.
    pub argc: u16,
    /// [`exec_flags`].
    pub flags: u16,
    /// Padding, always zero.
    pub _pad: u16,
}

/// The largest exec-args event: header, filename, and argv with room for the
/// last argument to overrun `ARGV_LEN` (the kernel side clamps what it sends).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecArgsEvent {
    /// Fixed part.
    pub head: ExecArgsHeader,
    /// NUL-terminated path given to exec.
    pub filename: [u8; FILENAME_LEN],
    /// NUL-separated argv; only `head.argv_len` bytes are sent.
    pub argv: [u8; ARGV_LEN * 2],
}

/// A tracked process finished an exec (`sched:sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    /// `tgid`/`tid` are the process after exec (a thread that execs becomes the leader).
    pub hdr: EventHeader,
    /// Thread id that called exec (matches an earlier [`ExecArgsHeader`]).
    pub old_tid: u32,
    /// Real user id after exec (setuid programs keep the caller's).
    pub uid: u32,
    /// Real group id after exec.
    pub gid: u32,
    /// Its pid inside its own pid namespace (0: unknown).
    pub ns_pid: u32,
    /// Its cgroup (v2) id: the inode of its cgroup directory.
    pub cgroup_id: u64,
    /// comm after exec.
    pub comm: [u8; COMM_LEN],
    /// Its pid namespace: the namespace's inode number (0: unknown).
    pub pid_ns: u32,
    /// `signal->maxrss` after the exec, in pages (saturated; 0: unread):
    /// the peak resident size of every memory the process ran in before
    /// this program, the one exec just dropped included.
    pub maxrss_pages: u32,
}

/// The fixed part of an [`kind::EXEC_FULL`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecFullHeader {
    /// Who the process is after the exec (`hdr.kind` is `EXEC_FULL`).
    pub exec: ExecEvent,
    /// Bytes of argv after the filename (NUL-separated).
    pub argv_len: u16,
    /// Bytes of environment after argv (`NAME=VALUE`, NUL-separated).
    pub env_len: u16,
    /// [`exec_flags`] of argv.
    pub argv_flags: u16,
    /// [`exec_flags`] of the environment.
    pub env_flags: u16,
    /// Bytes of the working directory after the environment: its path's
    /// components from the last to the first, each ending in a NUL (see
    /// [`CWD_LEN`]).
    pub cwd_len: u16,
    /// [`exec_flags`] of the working directory (`TRUNCATED`: deeper or
    /// longer than the kernel side walks; `UNREAD`: not read).
    pub cwd_flags: u16,
    pub _pad: u32,
}

/// Most bytes of an exec's working directory the kernel side sends (its
/// components, each at most `NAME_LEN`); a power of two, for the masks.
pub const CWD_LEN: usize = 4096;
/// Longest path component the kernel side reads, its NUL included.
pub const NAME_LEN: usize = 256;
/// Most components (and mounts crossed) of a working directory walked.
pub const CWD_DEPTH: u32 = 48;
// The working directory lands after argv and the environment (each at most
// ARGV_LEN, below 2 * ARGV_LEN together), masked, and stays inside
// `ExecFullEvent::strings`.
const _: () = assert!(2 * ARGV_LEN + CWD_LEN + NAME_LEN <= 4 * ARGV_LEN);
const _: () = assert!(CWD_LEN.is_power_of_two());

/// The largest [`kind::EXEC_FULL`] record, as the kernel side builds it
/// before sending its used length: room for argv and the environment at
/// offsets and lengths the verifier can bound by masks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecFullEvent {
    /// Fixed part.
    pub head: ExecFullHeader,
    /// NUL-terminated path given to exec.
    pub filename: [u8; FILENAME_LEN],
    /// argv, then the environment, then the working directory (at an
    /// offset below `2 * ARGV_LEN`, so it fits: see [`CWD_LEN`]).
    pub strings: [u8; ARGV_LEN * 4],
}

/// A tracked thread exited (`sched:sched_process_exit`, in its own context).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    /// The exiting thread.
    pub hdr: EventHeader,
    /// `task_struct.exit_code`: `status << 8`, or the signal number (| 0x80 on core dump).
    pub exit_code: u32,
    /// [`exit_flags`].
    pub flags: u32,
    /// The process's cookie.
    pub cookie: u64,
    /// The thread's comm.
    pub comm: [u8; COMM_LEN],
    /// Its memory's peak resident size in pages, as taskstats computes it:
    /// the larger of `mm->hiwater_rss` and the file, anonymous and shmem
    /// counters (`MEM_VALID`; 0 for a thread without memory).
    pub peak_rss_pages: u64,
    /// The last thread's exit: `signal->maxrss` in pages (0: unread), the
    /// peak resident size over every memory the process ran in, those
    /// before its execs included (what `wait4` reports as `ru_maxrss`).
    pub maxrss_pages: u64,
}

/// A thread's CPU and storage figures, read from its `task_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskFigures {
    /// `se.sum_exec_runtime`: nanoseconds on CPU, exact.
    pub sum_exec_runtime: u64,
    /// `utime` (tick-sampled nanoseconds); only its ratio to `stime` is used.
    pub utime: u64,
    /// `stime` (tick-sampled nanoseconds).
    pub stime: u64,
    /// `ioac.read_bytes`: bytes this thread caused to be read from storage.
    pub read_bytes: u64,
    /// `ioac.write_bytes`: bytes this thread caused to be written to storage.
    pub write_bytes: u64,
    /// `ioac.cancelled_write_bytes`: dirty bytes dropped by truncation.
    pub cancelled_write_bytes: u64,
    /// `nvcsw`: voluntary context switches.
    pub nvcsw: u64,
    /// `nivcsw`: involuntary context switches.
    pub nivcsw: u64,
    /// `maj_flt`: major page faults.
    pub maj_flt: u64,
}

/// A tracked thread's final figures, sent at its last context switch
/// (`sched_switch` away from a `TASK_DEAD` task): every figure is final,
/// including CPU time used on the way out of `do_exit`, as at its free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeEvent {
    /// The freed thread.
    pub hdr: EventHeader,
    /// The process's cookie.
    pub cookie: u64,
    /// Its final figures (`STATS_VALID`).
    pub figures: TaskFigures,
    /// [`exit_flags`] (`STATS_VALID`). The exit code is not read again
    /// here: the exit event already carries it.
    pub flags: u32,
    pub _pad: u32,
}

/// A socket's two ends as the kernel holds them: addresses in network
/// order (IPv4 in the first four bytes), ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Local address.
    pub laddr: [u8; 16],
    /// Remote address (zero: none, an unconnected UDP socket).
    pub raddr: [u8; 16],
    /// Local port (zero: not bound yet).
    pub lport: u16,
    /// Remote port.
    pub rport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Padding, always zero.
    pub _pad: u16,
}

/// A tracked process used a socket: its first byte on it, or its connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    /// `tgid`/`tid` are the user's.
    pub hdr: EventHeader,
    /// The process's cookie.
    pub proc_cookie: u64,
    /// The socket's cookie (`bpf_get_socket_cookie`): unique while the system runs.
    pub sock_cookie: u64,
    /// The ends at that moment.
    pub ends: Endpoints,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u16,
    /// [`conn_role`].
    pub role: u16,
    /// Padding, always zero.
    pub _pad: u32,
}

/// Value of the `SOCKS` map (key: socket cookie): a TCP socket a tracked
/// process used, from its connect or accept to its destruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLife {
    /// `CLOCK_BOOTTIME` ns of the connect or of the completed handshake.
    pub opened_ns: u64,
    /// When it left `ESTABLISHED` for good (0: open).
    pub closed_ns: u64,
    /// Its ends, refreshed at each state change (a connect's local port
    /// is chosen after `SYN_SENT`).
    pub ends: Endpoints,
    /// Segments retransmitted since it was followed: the socket's own
    /// `total_retrans` (what `TCP_INFO` and `RetransSegs` count) less its
    /// value then, or where that is unknown the `tcp:tcp_retransmit_skb`
    /// hits (packets, each of one or more segments).
    pub retransmits: u32,
    /// [`conn_role`].
    pub role: u16,
    /// [`conn_outcome`].
    pub outcome: u16,
    /// `total_retrans` when it was first followed.
    pub retrans_base: u32,
    /// Padding, always zero.
    pub _pad: u32,
}

/// A TCP socket in `SOCKS` was destroyed: no byte can move on it any more.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEndEvent {
    /// `tgid`/`tid` are whoever's context it happened in (often none of the tree's).
    pub hdr: EventHeader,
    /// The socket's cookie.
    pub sock_cookie: u64,
    /// Its life, final.
    pub life: SockLife,
}

/// Key of the `CONNS` per-CPU map: one process's use of one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Process id.
    pub tgid: u32,
    /// Padding, always zero.
    pub _pad: u32,
    /// The process's cookie.
    pub proc_cookie: u64,
    /// The socket's cookie.
    pub sock_cookie: u64,
}

/// Value of the `CONNS` per-CPU map: bytes under the same rules as
/// [`NetCounters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnBytes {
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// UDP: this CPU has seen the socket with a remote end (0 until then:
    /// each datagram here looks, and the first to find one announces the
    /// socket again, for a socket that `connect()`s after its first use).
    pub remote_seen: u64,
}

/// Value of the `TRACKED` map (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// Unique per process instance, so a reused pid never merges two processes' counters.
    pub cookie: u64,
    /// [`tracked_flags`].
    pub flags: u32,
    /// Padding, always zero.
    pub _pad: u32,
}

/// Bits of [`Tracked::flags`].
pub mod tracked_flags {
    /// The process has socket counters in `NET`: set where its entry is
    /// made, so its exit says so without a lookup of its own.
    pub const HAD_NET: u32 = 1;
}

/// Value of the `DYING` map (key: task_struct address), between a tracked
/// thread's exit and its last context switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dying {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The process's cookie.
    pub cookie: u64,
    /// `CLOCK_BOOTTIME` ns of the exit (lets userspace give up on a last
    /// switch that is never seen).
    pub exit_ns: u64,
    /// The thread's figures, for when its last switch is never seen: read
    /// at exit (`STATS_VALID`; short of the final figures by what the exit
    /// itself costs).
    pub figures: TaskFigures,
    /// [`exit_flags`]: `STATS_VALID`.
    pub flags: u32,
    pub _pad: u32,
}

/// Key of the `NET` per-CPU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetKey {
    /// Process id.
    pub tgid: u32,
    /// Padding, always zero.
    pub _pad: u32,
    /// The process's cookie.
    pub cookie: u64,
}

/// Value of the `NET` per-CPU map: one process's socket traffic on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// TCP bytes sent.
    pub tcp_tx_bytes: u64,
    /// TCP bytes received.
    pub tcp_rx_bytes: u64,
    /// UDP bytes sent.
    pub udp_tx_bytes: u64,
    /// UDP bytes received.
    pub udp_rx_bytes: u64,
    /// Successful TCP send calls.
    pub tcp_tx_calls: u64,
    /// Successful TCP receive calls.
    pub tcp_rx_calls: u64,
    /// Successful UDP send calls.
    pub udp_tx_calls: u64,
    /// Successful UDP receive calls.
    pub udp_rx_calls: u64,
}

impl NetCounters {
    /// Adds another CPU's (or thread's) counters into these.
    pub fn add(&mut self, o: &NetCounters) {
        self.tcp_tx_bytes += o.tcp_tx_bytes;
        self.tcp_rx_bytes += o.tcp_rx_bytes;
        self.udp_tx_bytes += o.udp_tx_bytes;
        self.udp_rx_bytes += o.udp_rx_bytes;
        self.tcp_tx_calls += o.tcp_tx_calls;
        self.tcp_rx_calls += o.tcp_rx_calls;
        self.udp_tx_calls += o.udp_tx_calls;
        self.udp_rx_calls += o.udp_rx_calls;
    }
}

/// Offsets the kernel side needs, found by userspace at start-up (tracepoint
/// `format` files and the kernel's BTF) and written into the `CONFIG` global
/// before load, so nothing about this kernel's layout is hard-coded.
///
/// A zero offset means "not available"; the program then skips that read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `task:task_newtask` `pid`.
    pub newtask_pid: u16,
    /// `task:task_newtask` `clone_flags`.
    pub newtask_clone_flags: u16,
    /// `sched:sched_process_exec` `pid`.
    pub exec_pid: u16,
    /// `sched:sched_process_exec` `old_pid`.
    pub exec_old_pid: u16,
    /// `sched:sched_process_exit` `group_dead` (0: field absent on this kernel).
    pub exit_group_dead: u16,
    /// `sock:sock_{send,recv}_length` `family`.
    pub sock_family: u16,
    /// `sock:sock_{send,recv}_length` `protocol`.
    pub sock_protocol: u16,
    /// `sock:sock_{send,recv}_length` `ret`.
    pub sock_ret: u16,
    /// `sock:sock_{send,recv}_length` `flags`.
    pub sock_flags: u16,
    /// `syscalls:sys_enter_execve` `filename`.
    pub execve_filename: u16,
    /// `syscalls:sys_enter_execve` `argv`.
    pub execve_argv: u16,
    /// `syscalls:sys_enter_execveat` `filename`.
    pub execveat_filename: u16,
    /// `syscalls:sys_enter_execveat` `argv`.
    pub execveat_argv: u16,
    /// `sock.sk_type` (for the BTF socket programs): only stream and datagram
    /// sockets carry TCP and UDP payload; a raw socket's bytes include headers.
    pub sk_type: u16,
    /// `syscalls:sys_enter_execve` `envp`.
    pub execve_envp: u16,
    /// `syscalls:sys_enter_execveat` `envp`.
    pub execveat_envp: u16,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `task_struct.se.sum_exec_runtime`.
    pub task_sum_exec_runtime: u32,
    /// `task_struct.utime`.
    pub task_utime: u32,
    /// `task_struct.stime`.
    pub task_stime: u32,
    /// `task_struct.ioac.read_bytes`.
    pub task_read_bytes: u32,
    /// `task_struct.ioac.write_bytes`.
    pub task_write_bytes: u32,
    /// `task_struct.ioac.cancelled_write_bytes`.
    pub task_cancelled_write_bytes: u32,
    /// `task_struct.pid`: checks that a dead task is the one that exited.
    pub task_pid: u32,
    /// [`config_flags`].
    pub flags: u32,
    /// `sock.__sk_common.skc_family` (for the BTF socket programs).
    pub sk_family: u16,
    /// `sock.sk_protocol`.
    pub sk_protocol: u16,
    /// `__sk_common.skc_daddr` (see [`config_flags::CONNECTIONS`]).
    pub sk_daddr: u16,
    /// `__sk_common.skc_rcv_saddr`.
    pub sk_rcv_saddr: u16,
    /// `__sk_common.skc_dport`.
    pub sk_dport: u16,
    /// `__sk_common.skc_num`.
    pub sk_num: u16,
    /// `__sk_common.skc_v6_daddr`.
    pub sk_v6_daddr: u16,
    /// `__sk_common.skc_v6_rcv_saddr`.
    pub sk_v6_rcv_saddr: u16,
    /// `sock.sk_err`.
    pub sk_err: u16,
    /// `struct pid.level` (see `task_thread_pid`).
    pub pid_level: u16,
    /// `task_struct.thread_pid` (0: pid namespaces are not read).
    pub task_thread_pid: u32,
    /// `struct pid.numbers`.
    pub pid_numbers: u16,
    /// `struct upid.ns`.
    pub upid_ns: u16,
    /// `sizeof(struct upid)`.
    pub upid_size: u16,
    /// `struct pid_namespace.ns.inum`.
    pub pidns_inum: u16,
    /// `task_struct.mm` (see [`config_flags::BTF_PROCESS`]).
    pub task_mm: u32,
    /// `mm_struct.arg_start`.
    pub mm_arg_start: u16,
    /// `mm_struct.arg_end`.
    pub mm_arg_end: u16,
    /// `mm_struct.env_start`.
    pub mm_env_start: u16,
    /// `mm_struct.env_end`.
    pub mm_env_end: u16,
    /// `linux_binprm.filename`.
    pub bprm_filename: u16,
    /// `mm_struct.hiwater_rss` (0: a thread's peak memory is not read at
    /// exit; taskstats gives it instead).
    pub mm_hiwater_rss: u16,
    /// `mm_struct.rss_stat`: an array of `percpu_counter`, one per
    /// `MM_FILEPAGES`, `MM_ANONPAGES`, `MM_SWAPENTS`, `MM_SHMEMPAGES`.
    pub mm_rss_stat: u16,
    /// `sizeof(struct percpu_counter)`.
    pub rss_stride: u16,
    /// `percpu_counter.count`.
    pub rss_count: u16,
    /// `struct socket.sk`: where the fexit socket hooks (kernels without
    /// the socket tracepoints, before 6.3) find the socket's `struct sock`.
    pub socket_sk: u16,
    /// `task_struct.signal` (0: `maxrss` is not read).
    pub task_signal: u32,
    /// `signal_struct.maxrss`.
    pub signal_maxrss: u16,
    /// `tcp_sock.total_retrans` (0: retransmits are counted as the
    /// tracepoint's hits).
    pub tcp_total_retrans: u16,
    /// `task_struct.nvcsw` (0: context switches and faults are not read;
    /// taskstats gives them instead).
    pub task_nvcsw: u32,
    /// `task_struct.nivcsw`.
    pub task_nivcsw: u32,
    /// `task_struct.maj_flt`.
    pub task_maj_flt: u32,
    /// `task_struct.__state` (`state` before 5.14): where `sched_switch`
    /// reads the previous task's state on kernels whose tracepoint has no
    /// `prev_state` argument (before 5.18; see `SWITCH_PREV_STATE`).
    pub task_state: u32,
    /// `task_struct.fs` (0: the working directory is not read at exec).
    pub task_fs: u32,
    /// `fs_struct.pwd.mnt`.
    pub fs_pwd_mnt: u16,
    /// `fs_struct.pwd.dentry`.
    pub fs_pwd_dentry: u16,
    /// `dentry.d_parent`.
    pub dentry_parent: u16,
    /// `dentry.d_name.name`.
    pub dentry_name: u16,
    /// `vfsmount.mnt_root`.
    pub vfsmount_root: u16,
    /// `mount.mnt`: where a `struct mount` holds its `vfsmount`.
    pub mount_mnt: u16,
    /// `mount.mnt_parent`.
    pub mount_parent: u16,
    /// `mount.mnt_mountpoint`.
    pub mount_mountpoint: u16,
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// New processes created by tracked ones join the tree (else only the
    /// root is followed).
    pub const FOLLOW_CHILDREN: u32 = 1;
    /// BTF gave the `struct sock` offsets connections need (`skc_daddr` is
    /// at offset 0, so a zero offset cannot mean "absent" there).
    pub const CONNECTIONS: u32 = 2;
    /// The process hooks run as BTF tracepoints, and an exec's path, argv
    /// and environment are read at `sched_process_exec` from the new
    /// program's memory (`mm->arg_start..arg_end`, `env_start..env_end`),
    /// with no syscall tracepoint.
    pub const BTF_PROCESS: u32 = 4;
    /// The tree is the processes of the cgroups in `SCOPE` (`--cgroup`,
    /// `--container`): one that forks or execs there joins it.
    pub const CGROUP_SCOPE: u32 = 8;
    /// `sched_switch` has its `prev_state` argument (5.18+); else the state
    /// is read from the task at `task_state`.
    pub const SWITCH_PREV_STATE: u32 = 16;
    /// Sockets are named by their address, not their cookie (tracing
    /// programs cannot call `bpf_get_socket_cookie` before 5.12).
    pub const SOCK_ADDRESS_ID: u32 = 32;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C), made of integers and integer arrays
    // with explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Tracked {}
    unsafe impl aya::Pod for super::Dying {}
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetCounters {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnBytes {}
    unsafe impl aya::Pod for super::SockLife {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<ForkEvent>(), 24 + 8 + 16 + 16);
        assert_eq!(size_of::<ExecArgsHeader>(), 32);
        assert_eq!(size_of::<ExecEvent>(), 24 + 16 + 8 + 16 + 8);
        assert_eq!(size_of::<ExecFullHeader>(), size_of::<ExecEvent>() + 16);
        assert_eq!(size_of::<TaskFigures>(), 72);
        assert_eq!(size_of::<ExitEvent>(), 24 + 16 + 16 + 8 + 8);
        assert_eq!(size_of::<FreeEvent>(), 24 + 8 * 10 + 8);
        assert_eq!(size_of::<NetKey>(), 16);
        assert_eq!(size_of::<NetCounters>(), 64);
        assert_eq!(
            size_of::<Config>(),
            32 + 40 + 16 + 12 + 16 + 8 + 12 + 4 + 8 + 20
        );
        assert_eq!(size_of::<Endpoints>(), 40);
        assert_eq!(size_of::<ConnEvent>(), 24 + 16 + 40 + 8);
        assert_eq!(size_of::<SockLife>(), 16 + 40 + 8 + 8);
        assert_eq!(size_of::<ConnEndEvent>(), 24 + 8 + 72);
        assert_eq!(size_of::<ConnKey>(), 24);
        assert_eq!(size_of::<ConnBytes>(), 24);
        assert_eq!(size_of::<Dying>(), 24 + 72 + 8);
        assert!(ARGV_LEN.is_power_of_two());
    }
}
