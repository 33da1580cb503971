//! pmet's kernel side. It decides which processes belong to the traced tree
//! (the `TRACKED` map: a child joins when its creator is tracked), forwards
//! their lifecycle through the `EVENTS` ring buffer, and counts their socket
//! bytes in place. All policy lives in userspace; this side counts and forwards.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// On the host (`cargo check --workspace`, clippy) this is an ordinary, empty
// binary; the programs only mean something on the BPF target.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

/// One field of [`CONFIG`], read alone. A volatile read, or the compiler
/// would fold in the placeholder the object file holds (the loader writes
/// the real values); and one field, because `Global::load` copies the whole
/// `Config` (~70 loads and stores) at every use. The verifier sees the value
/// as a constant: `CONFIG` is read-only data that the loader freezes.
macro_rules! config {
    ($field:ident) => {{
        // (Used inside `unsafe` blocks too.)
        #[allow(unused_unsafe)]
        // SAFETY: `Global` is `repr(transparent)` over an always initialised
        // `Config`; only the field is read.
        let v = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*core::ptr::addr_of!(crate::CONFIG).cast::<pmet_common::Config>()).$field
            ))
        };
        v
    }};
}

mod conn;
mod net;
mod process;

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use pmet_common::{
    Config, ConnBytes, ConnKey, Dying, ExecArgsEvent, ExecFullEvent, MARK_PIDS, NetCounters,
    NetKey, SockLife, Tracked,
};

/// Offsets into tracepoint records and `task_struct`, filled in by the loader.
#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config {
    newtask_pid: 0,
    newtask_clone_flags: 0,
    exec_pid: 0,
    exec_old_pid: 0,
    exit_group_dead: 0,
    sock_family: 0,
    sock_protocol: 0,
    sock_ret: 0,
    sock_flags: 0,
    execve_filename: 0,
    execve_argv: 0,
    execveat_filename: 0,
    execveat_argv: 0,
    sk_type: 0,
    execve_envp: 0,
    execveat_envp: 0,
    task_exit_code: 0,
    task_sum_exec_runtime: 0,
    task_utime: 0,
    task_stime: 0,
    task_read_bytes: 0,
    task_write_bytes: 0,
    task_cancelled_write_bytes: 0,
    task_pid: 0,
    flags: 0,
    sk_family: 0,
    sk_protocol: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_err: 0,
    pid_level: 0,
    task_thread_pid: 0,
    pid_numbers: 0,
    upid_ns: 0,
    upid_size: 0,
    pidns_inum: 0,
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_env_start: 0,
    mm_env_end: 0,
    bprm_filename: 0,
    mm_hiwater_rss: 0,
    mm_rss_stat: 0,
    rss_stride: 0,
    rss_count: 0,
    socket_sk: 0,
    task_signal: 0,
    signal_maxrss: 0,
    tcp_total_retrans: 0,
    task_nvcsw: 0,
    task_nivcsw: 0,
    task_maj_flt: 0,
    task_state: 0,
    task_fs: 0,
    fs_pwd_mnt: 0,
    fs_pwd_dentry: 0,
    dentry_parent: 0,
    dentry_name: 0,
    vfsmount_root: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
});

/// Processes in the traced tree, by tgid. The loader sets every map's size at
/// load (`pmet/src/collect/ebpf.rs`); the sizes here are placeholders.
#[map]
static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(65536, 0);

/// A byte per pid, `MARK_PIDS` to an element: set while that pid may be in
/// `TRACKED`, so that the hooks, which run for every process on the machine,
/// turn away the others with one load instead of a hash lookup (~40 ns
/// each, on every socket call of every process on the host). Set before an
/// entry is added, here or by userspace (which maps this array and writes
/// the byte: a whole element written through the map would race with the
/// kernel's writes to its other bytes); cleared here when the process's
/// exit removes its entry, which comes before its pid can be reused. A
/// byte left set (an entry userspace removed) only costs the lookup. Sized
/// by the loader from `pid_max`; a pid beyond it is looked up.
#[map]
static MARKS: Array<[u8; MARK_PIDS as usize]> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The array may be mapped into userspace.
const BPF_F_MMAPABLE: u32 = 1024;

/// Exited tracked threads, by task_struct address, until their last context
/// switch.
#[map]
static DYING: HashMap<u64, Dying> = HashMap::with_max_entries(16384, 0);

/// Socket bytes per tracked process. Per-CPU because this kernel's BPF target
/// has no usable atomic add from Rust; userspace sums the CPUs.
#[map]
static NET: PerCpuHashMap<NetKey, NetCounters> =
    PerCpuHashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Per-CPU maps allocate their elements as they are first used, not at load:
/// preallocating `CONNS` and `NET` took ~47 ms of every start-up, and an
/// element is created once per process (or socket), off every hot path.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Bytes per process and socket. Userspace removes a socket's entries once
/// it is destroyed or its process has gone; a full map leaves the bytes in
/// `NET`'s totals only (counted, shown as unattributed).
#[map]
static CONNS: PerCpuHashMap<ConnKey, ConnBytes> =
    PerCpuHashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// The life of each TCP socket the tree used, by socket cookie, until it is
/// destroyed.
#[map]
static SOCKS: HashMap<u64, SockLife> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Handshakes completed for any listener on the host (cookie to time), so an
/// accepted connection's opening is known when a tracked process claims it.
#[map]
static ACCEPTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// The cgroups (ids) whose processes make up the tree with `--cgroup`.
#[map]
static SCOPE: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// Lifecycle events for userspace.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Loss and failure counters, indexed by `pmet_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(pmet_common::counter::LEN, 0);

/// Room to build an exec-args event, too large for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<ExecArgsEvent> = PerCpuArray::with_max_entries(1, 0);

/// Room to build an exec's whole record (the BTF path), likewise.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecFullEvent> = PerCpuArray::with_max_entries(1, 0);

/// Counts one occurrence of a loss or failure.
#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; BPF programs do not preempt each other on a CPU
        // for tracepoints, so a plain add cannot race.
        unsafe { *p += 1 };
    }
}

/// Boot time now, in ns: read once per program run, for all it sends (in a
/// VM the clock read was ~0.3 µs of each exec's kernel-side cost when every
/// record read it again).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() }
}

/// Reads the `T` at `off` bytes into the kernel object at `base`.
///
/// With `btf`, `base` must be a pointer the verifier knows by its BTF type (a
/// BTF tracepoint's argument, `bpf_get_current_task_btf()`, or a pointer
/// field loaded from one of those), and `off` a field's offset from
/// [`CONFIG`]: read-only data that the loader freezes, so the verifier sees
/// the offset as a constant. The read is then a plain load, which the
/// verifier checks against the kernel's BTF (the field must be there, of that
/// size) and makes fault-safe (a fault reads 0): ~35 ns less than
/// `bpf_probe_read_kernel` on this machine, and these programs do a dozen
/// such reads per process. Without `btf` (the classic tracepoints, which the
/// loader uses where BTF falls short), the helper, whose failure is `None`.
///
/// # Safety
/// `base + off` must be a field of type `T` of a live kernel object.
#[inline(always)]
unsafe fn kread<T: Copy>(base: u64, off: u64, btf: bool) -> Option<T> {
    let at = (base + off) as *const T;
    if btf {
        // SAFETY: as the caller promises; the verifier checks it too.
        Some(unsafe { core::ptr::read_volatile(at) })
    } else {
        // SAFETY: the helper checks the address itself.
        unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(at) }.ok()
    }
}

/// The current task, as a pointer the verifier knows by its BTF type when
/// `btf` (see [`kread`]).
#[inline(always)]
fn current_task(btf: bool) -> u64 {
    // SAFETY: no preconditions; the current task outlives the program.
    unsafe {
        if btf {
            aya_ebpf::helpers::generated::bpf_get_current_task_btf() as u64
        } else {
            aya_ebpf::helpers::bpf_get_current_task()
        }
    }
}

/// The `n`th argument of a BTF tracepoint or fexit program (an array of
/// 64-bit words), read in place. aya's accessor is an out-of-line function
/// whose argument is a pointer, which Linux 5.10's verifier, checking it as a
/// global function, refuses ("arg#0 type is not a struct").
#[inline(always)]
fn arg<C: aya_ebpf::EbpfContext>(ctx: &C, n: usize) -> u64 {
    // SAFETY: the context of these programs is their arguments' array; `n`
    // is a constant the verifier checks against the hook's prototype.
    unsafe { *ctx.as_ptr().cast::<u64>().add(n) }
}

/// Where `tgid`'s byte of [`MARKS`] is, for a pid the array covers.
#[inline(always)]
fn mark_of(tgid: u32) -> Option<*mut u8> {
    let element = MARKS.get_ptr_mut(tgid / MARK_PIDS)?;
    // SAFETY: an offset below the element's MARK_PIDS bytes.
    Some(unsafe { element.cast::<u8>().add((tgid & (MARK_PIDS - 1)) as usize) })
}

/// Says that `tgid` may be tracked (`true`: before its `TRACKED` entry is
/// added) or is not (`false`: after its entry was removed).
#[inline(always)]
fn mark(tgid: u32, on: bool) {
    if let Some(m) = mark_of(tgid) {
        // SAFETY: a live map value's byte; a single byte store cannot tear.
        unsafe { core::ptr::write_volatile(m, u8::from(on)) };
    }
}

/// The tracked entry of the current process, if it is in the tree.
#[inline(always)]
fn tracked(tgid: u32) -> Option<Tracked> {
    if let Some(m) = mark_of(tgid) {
        // SAFETY: a live map value's byte.
        if unsafe { core::ptr::read_volatile(m) } == 0 {
            return None;
        }
    }
    // SAFETY: the value is copied out at once.
    unsafe { TRACKED.get(tgid).copied() }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
