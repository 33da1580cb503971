//! Loading, configuring and attaching the kernel-side programs, and the
//! userspace ends of their maps.
//!
//! Which programs are loaded is the program table's choice
//! ([`super::hooks`]): per capability, BTF tracepoints where this kernel's
//! BTF gives what they need, classic tracepoints or fexit hooks otherwise.
//! Dropping [`Kernel`] detaches everything.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU8, Ordering},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FExit, TracePoint},
};
use aya_log::EbpfLogger;
use pmet_common::{
    Config, ConnBytes, ConnKey, MARK_PIDS, NetCounters, NetKey, SockLife, Tracked, counter,
};

use super::{
    btf::{FexitSocket, SockOffsets, TaskOffsets},
    hooks::{Alternative, Attach, Capability, Facts, Hook, Plan, Via},
    tracefs::Tracefs,
};
use crate::error::Error;

/// The compiled kernel side, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pmet-ebpf"));

/// Memory the per-CPU `NET` map may take: each entry holds one
/// `NetCounters` per possible CPU, so its size is set at load from the CPU
/// count instead of growing with it (16,384 entries are 2 MiB on 2 CPUs, and
/// would be 256 MiB on 256).
const NET_MAP_BUDGET: usize = 32 << 20;
/// `NET` entries: processes of the tree with socket traffic at one time.
const NET_MAX_ENTRIES: u32 = 16384;
/// Fewest `NET` entries, however many CPUs.
const NET_MIN_ENTRIES: u32 = 1024;
/// `TRACKED` entries: processes of the tree alive at one time.
const TRACKED_MAX_ENTRIES: u32 = 65536;
/// `DYING` entries: exited threads awaiting their free.
const DYING_MAX_ENTRIES: u32 = 16384;

/// `CONNS` entries: (process, socket) pairs not yet taken by userspace, in
/// the same memory budget as `NET`.
const CONNS_MAX_ENTRIES: u32 = 65536;
const CONNS_MIN_ENTRIES: u32 = 4096;
/// `SOCKS` entries: TCP sockets of the tree not yet destroyed.
const SOCKS_MAX_ENTRIES: u32 = 16384;

/// The kernel's largest `pid_max` (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: u32 = 4 << 20;

/// `MARKS` elements for pids below `pid_max` (`MARK_PIDS` bytes each; at
/// most 4 MiB in all, for the largest `pid_max`). A pid above what the array
/// covers (`pid_max` raised later) is looked up in `TRACKED` as before.
pub fn mark_elements(pid_max: u32) -> u32 {
    pid_max.clamp(1, PID_MAX_LIMIT).div_ceil(MARK_PIDS)
}

/// This kernel's `pid_max`, or the largest there can be.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(PID_MAX_LIMIT)
}

/// The kernel side's `MARKS` array, mapped into pmet: a byte per pid that
/// says the pid may be in `TRACKED`, so that the hooks turn the host's other
/// processes away with one load. Userspace sets a pid's byte before adding
/// its entry (and never clears it: a byte left set only costs the kernel a
/// lookup); a byte is written through the mapping, not the map, since
/// writing a whole element would undo the kernel's writes to its other
/// bytes.
struct Marks {
    at: std::ptr::NonNull<AtomicU8>,
    len: usize,
    /// Keeps the map (and its descriptor) for as long as it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is shared memory, valid for the value's life and
// written only through atomics.
unsafe impl Send for Marks {}

impl Marks {
    fn map(map: MapData, elements: u32) -> std::io::Result<Self> {
        let len = elements as usize * MARK_PIDS as usize;
        // SAFETY: a fresh shared mapping of the map's values (an array made
        // with BPF_F_MMAPABLE), of exactly their size; checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            at: std::ptr::NonNull::new(at.cast()).ok_or_else(std::io::Error::last_os_error)?,
            len,
            _map: map,
        })
    }

    /// Says that `pid` may be tracked: before its entry is added.
    fn set(&self, pid: u32) {
        let i = pid as usize;
        if i < self.len {
            // SAFETY: inside the mapping. SeqCst: seen by the kernel before
            // the entry that follows.
            unsafe { (*self.at.as_ptr().add(i)).store(1, Ordering::SeqCst) };
        }
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, used no more.
        unsafe { libc::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

/// How many `NET` entries fit [`NET_MAP_BUDGET`] with `cpus` possible CPUs.
pub fn net_entries(cpus: usize) -> u32 {
    per_cpu_entries::<NetCounters>(cpus, NET_MIN_ENTRIES, NET_MAX_ENTRIES)
}

/// How many `CONNS` entries fit the same budget.
pub fn conns_entries(cpus: usize) -> u32 {
    per_cpu_entries::<ConnBytes>(cpus, CONNS_MIN_ENTRIES, CONNS_MAX_ENTRIES)
}

fn per_cpu_entries<V>(cpus: usize, min: u32, max: u32) -> u32 {
    let per_entry = std::mem::size_of::<V>() * cpus.max(1);
    u32::try_from(NET_MAP_BUDGET / per_entry)
        .unwrap_or(u32::MAX)
        .clamp(min, max)
}

/// The classic process tracepoints' field offsets, into `cfg`.
pub fn process_tracepoint_fields(tracefs: &Tracefs, cfg: &mut Config) -> Result<(), Error> {
    cfg.newtask_pid = tracefs.offset("task", "task_newtask", "pid")?;
    cfg.newtask_clone_flags = tracefs.offset("task", "task_newtask", "clone_flags")?;
    cfg.exec_pid = tracefs.offset("sched", "sched_process_exec", "pid")?;
    cfg.exec_old_pid = tracefs.offset("sched", "sched_process_exec", "old_pid")?;
    cfg.exit_group_dead = tracefs
        .try_offset("sched", "sched_process_exit", "group_dead")?
        .unwrap_or(0);
    cfg.execve_filename = tracefs.offset("syscalls", "sys_enter_execve", "filename")?;
    cfg.execve_argv = tracefs.offset("syscalls", "sys_enter_execve", "argv")?;
    cfg.execveat_filename = tracefs.offset("syscalls", "sys_enter_execveat", "filename")?;
    cfg.execveat_argv = tracefs.offset("syscalls", "sys_enter_execveat", "argv")?;
    cfg.execve_envp = tracefs.offset("syscalls", "sys_enter_execve", "envp")?;
    cfg.execveat_envp = tracefs.offset("syscalls", "sys_enter_execveat", "envp")?;
    Ok(())
}

/// The classic socket tracepoints' field offsets, into `cfg`.
pub fn sock_tracepoint_fields(tracefs: &Tracefs, cfg: &mut Config) -> Result<(), Error> {
    let send = |f| tracefs.offset("sock", "sock_send_length", f);
    let recv = |f| tracefs.offset("sock", "sock_recv_length", f);
    cfg.sock_family = send("family")?;
    cfg.sock_protocol = send("protocol")?;
    cfg.sock_ret = send("ret")?;
    cfg.sock_flags = recv("flags")?;
    // One program reads both socket tracepoints with the same offsets; they
    // share an event class, but check rather than assume.
    for f in ["family", "protocol", "ret"] {
        if send(f)? != recv(f)? {
            return Err(Error::Other(format!(
                "sock:sock_send_length and sock:sock_recv_length disagree on the offset of `{f}`"
            )));
        }
    }
    Ok(())
}

/// What the loader learns about this kernel before loading anything: the
/// offsets each alternative of the program table needs, and which of them
/// this kernel has ([`Facts`]).
#[derive(Clone, Debug)]
pub struct Probe {
    /// `task_struct` offsets (`None`: exit totals come from taskstats).
    pub task: Option<TaskOffsets>,
    /// `struct sock` offsets.
    pub sock: Option<SockOffsets>,
    /// The fexit socket hooks' targets.
    pub fexit: Option<FexitSocket>,
    /// The classic tracepoints' field offsets (process and socket ones), where found.
    pub tracepoint_fields: Config,
    /// Which alternatives this kernel can run.
    pub facts: Facts,
}

impl Probe {
    /// Reads this kernel's BTF (and tracefs, where a classic tracepoint may
    /// be needed). `classic` is a test switch: as a kernel whose BTF lacks
    /// what the BTF hooks need.
    pub fn of_this_kernel(classic: bool) -> Probe {
        let vmlinux = std::path::Path::new(super::btf::VMLINUX);
        // Opened once: where it cannot be mapped it is read and indexed
        // whole, which is most of a debug build's start-up.
        let btf = super::btf::open(vmlinux);
        let mut task = match &btf {
            Ok(b) => super::btf::task_offsets_in(b, vmlinux),
            Err(_) => super::btf::task_offsets(vmlinux),
        };
        let b = btf.as_ref().ok();
        let mut sock = b.and_then(super::btf::sock_offsets);
        let mut sock_tp = b.is_some_and(|b| {
            super::btf::has_btf_tracepoint(b, "sock_send_length")
                && super::btf::has_btf_tracepoint(b, "sock_recv_length")
        });
        // The fexit targets are looked up only where they may be used.
        let mut fexit = if sock_tp && sock.is_some() {
            None
        } else {
            b.and_then(super::btf::fexit_socket)
        };
        if classic {
            if let Ok(t) = task.as_mut() {
                // As such a kernel's offsets would be: the memory's are only
                // found with the exec's (they need `task->mm`).
                t.exec = None;
                t.mem = None;
            }
            sock = None;
            fexit = None;
            sock_tp = false;
        }
        let process_btf = match &task {
            Ok(t) if t.exec.is_some() => Ok(()),
            Ok(_) => Err("this kernel's sched_process_exit has no group_dead (Linux 6.16+), or its BTF lacks what the exec hook reads"
                .to_owned()),
            Err(e) => Err(e.to_string()),
        };
        let network_btf = match (&sock, sock_tp) {
            (Some(_), true) => Ok(()),
            (None, _) => Err("this kernel's BTF does not give struct sock's offsets".to_owned()),
            (Some(_), false) => Err(
                "no BTF tracepoint sock_send_length / sock_recv_length (they came in Linux 6.3)"
                    .to_owned(),
            ),
        };
        // tracefs is read (and mounted) only where a classic tracepoint may
        // be used: every hook on BTF needs none.
        let mut fields = Config::default();
        let (process_tracepoint, network_tracepoint) = if process_btf.is_ok() && network_btf.is_ok()
        {
            let skip = || Err("not needed: the BTF hooks are used".to_owned());
            (skip(), skip())
        } else {
            match Tracefs::find_or_mount() {
                Ok(t) => (
                    process_tracepoint_fields(&t, &mut fields).map_err(|e| e.to_string()),
                    sock_tracepoint_fields(&t, &mut fields).map_err(|e| e.to_string()),
                ),
                Err(e) => (Err(e.to_string()), Err(e.to_string())),
            }
        };
        let fexit_functions = match (&fexit, &sock) {
            _ if network_btf.is_ok() => {
                Err("not needed: the BTF socket tracepoints are used".into())
            }
            (Some(f), Some(_)) => Ok(f.functions.clone()),
            (None, _) => Err("this kernel's BTF has no struct socket".to_owned()),
            (_, None) => Err("this kernel's BTF does not give struct sock's offsets".to_owned()),
        };
        let connections_btf = match sock.and_then(|s| s.ends) {
            Some(_) => Ok(()),
            None => Err("this kernel's BTF does not give struct sock_common's ends".to_owned()),
        };
        let task_btf = match &task {
            Ok(t) if t.switch_prev_state || t.state != 0 => Ok(()),
            Ok(_) => Err("this kernel's task_struct has neither __state nor state".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        Probe {
            task: task.ok(),
            sock,
            fexit,
            tracepoint_fields: fields,
            facts: Facts {
                process_btf,
                process_tracepoint,
                task_btf,
                network_btf,
                network_tracepoint,
                fexit_functions,
                connections_btf,
            },
        }
    }

    /// The kernel side's configuration for `plan`, on top of `flags`.
    pub fn config(&self, plan: &Plan, flags: u32) -> Config {
        // The classic tracepoints' offsets as found (zero where tracefs was
        // not read): only the classic programs read them, and only those of
        // the plan are loaded.
        let mut cfg = Config {
            flags,
            ..self.tracepoint_fields
        };
        let network = plan.via(Capability::Network);
        if let Some(t) = &self.task {
            let mut t = *t;
            if plan.via(Capability::Process) != Some(Via::TpBtf) {
                t.exec = None;
            }
            cfg = with_task_offsets(cfg, &t);
        }
        if let (Some(o), Some(Via::TpBtf | Via::Fexit)) = (self.sock, network) {
            cfg.sk_family = o.family;
            cfg.sk_protocol = o.protocol;
            cfg.sk_type = o.kind;
            if let (Some(e), Some(_)) = (o.ends, plan.via(Capability::Connections)) {
                cfg.sk_daddr = e.daddr;
                cfg.sk_rcv_saddr = e.rcv_saddr;
                cfg.sk_dport = e.dport;
                cfg.sk_num = e.num;
                cfg.sk_v6_daddr = e.v6_daddr;
                cfg.sk_v6_rcv_saddr = e.v6_rcv_saddr;
                cfg.sk_err = e.err;
                cfg.tcp_total_retrans = e.total_retrans;
                cfg.flags |= pmet_common::config_flags::CONNECTIONS;
                if plan.via(Capability::Connections) == Some(Via::TpBtfAddress) {
                    cfg.flags |= pmet_common::config_flags::SOCK_ADDRESS_ID;
                }
            }
        }
        if let (Some(x), Some(Via::Fexit)) = (&self.fexit, network) {
            cfg.socket_sk = x.socket_sk;
        }
        cfg
    }
}

/// Adds the task_struct offsets to `cfg`.
pub fn with_task_offsets(mut cfg: Config, o: &TaskOffsets) -> Config {
    cfg.task_exit_code = o.exit_code;
    cfg.task_sum_exec_runtime = o.sum_exec_runtime;
    cfg.task_utime = o.utime;
    cfg.task_stime = o.stime;
    cfg.task_read_bytes = o.read_bytes;
    cfg.task_write_bytes = o.write_bytes;
    cfg.task_cancelled_write_bytes = o.cancelled_write_bytes;
    cfg.task_pid = o.pid;
    cfg.task_state = o.state;
    if o.switch_prev_state {
        cfg.flags |= pmet_common::config_flags::SWITCH_PREV_STATE;
    }
    if let Some(x) = o.exec {
        cfg.task_mm = x.task_mm;
        cfg.mm_arg_start = x.arg_start;
        cfg.mm_arg_end = x.arg_end;
        cfg.mm_env_start = x.env_start;
        cfg.mm_env_end = x.env_end;
        cfg.bprm_filename = x.bprm_filename;
        cfg.flags |= pmet_common::config_flags::BTF_PROCESS;
    }
    if let Some(c) = o.ctx {
        cfg.task_nvcsw = c.nvcsw;
        cfg.task_nivcsw = c.nivcsw;
        cfg.task_maj_flt = c.maj_flt;
    }
    // Only where the process hooks are BTF ones: `mem` needs `exec`'s
    // `task->mm` (without it the exit would read the task's first word as
    // its memory, and no taskstats would stand in).
    if let (Some(m), Some(_)) = (o.mem, o.exec) {
        cfg.mm_hiwater_rss = m.hiwater_rss;
        cfg.mm_rss_stat = m.rss_stat;
        cfg.rss_stride = m.stride;
        cfg.rss_count = m.count;
    }
    if let Some((signal, maxrss)) = o.maxrss {
        cfg.task_signal = signal;
        cfg.signal_maxrss = maxrss;
    }
    if let Some(c) = o.cwd {
        cfg.task_fs = c.task_fs;
        cfg.fs_pwd_mnt = c.pwd_mnt;
        cfg.fs_pwd_dentry = c.pwd_dentry;
        cfg.dentry_parent = c.d_parent;
        cfg.dentry_name = c.d_name;
        cfg.vfsmount_root = c.mnt_root;
        cfg.mount_mnt = c.mount_mnt;
        cfg.mount_parent = c.mount_parent;
        cfg.mount_mountpoint = c.mount_mountpoint;
    }
    if let Some(n) = o.pid_ns {
        cfg.task_thread_pid = n.thread_pid;
        cfg.pid_level = n.level;
        cfg.pid_numbers = n.numbers;
        cfg.upid_ns = n.upid_ns;
        cfg.upid_size = n.upid_size;
        cfg.pidns_inum = n.inum;
    }
    cfg
}

/// The loaded and attached kernel side.
pub struct Kernel {
    // Field order matters for drop: maps and logger before the object.
    /// Lifecycle events.
    pub events: RingBuf<MapData>,
    /// Kernel-side log records (aya-log), when the object has any.
    pub logger: Option<EbpfLogger<&'static dyn log::Log>>,
    tracked: HashMap<MapData, u32, Tracked>,
    marks: Marks,
    net: PerCpuHashMap<MapData, NetKey, NetCounters>,
    counters: PerCpuArray<MapData, u64>,
    dying: HashMap<MapData, u64, pmet_common::Dying>,
    conns: PerCpuHashMap<MapData, ConnKey, ConnBytes>,
    socks: HashMap<MapData, u64, SockLife>,
    scope: HashMap<MapData, u64, u8>,
    /// Connections are followed (BTF gave every offset they need).
    pub connections: bool,
    /// Socket bytes are counted (some hook for them loaded).
    pub network: bool,
    /// How each capability is measured on this kernel.
    pub hooks: Vec<Hook>,
    /// Final per-thread figures at free time are available.
    pub exit_totals: bool,
    /// They include storage I/O.
    pub kernel_io: bool,
    /// Exits carry the memory's peak and final records the context
    /// switches and page faults: everything taskstats would add, so it is
    /// not needed.
    pub replaces_taskstats: bool,
    /// Turns the ring's records into events.
    pub decoder: super::decode::Decoder,
    ebpf: Ebpf,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if log::log_enabled!(log::Level::Debug) {
            // What each hook cost in the kernel, where the kernel counted it
            // (`sysctl kernel.bpf_stats_enabled=1` while pmet runs).
            for (name, p) in self.ebpf.programs() {
                if let Ok(info) = p.info()
                    && info.run_count() > 0
                {
                    log::debug!(
                        "program {name} ran {} times, {:.0} ns each",
                        info.run_count(),
                        info.run_time().as_nanos() as f64 / info.run_count() as f64
                    );
                }
            }
        }
        // Detaching a tracepoint waits for an RCU grace period (~70 ms here);
        // one program after another that is half a second at exit. Detach
        // them all at once instead.
        let started = std::time::Instant::now();
        // fexit links one after another (see `attempt`); they detach at once.
        for (_, p) in self.ebpf.programs_mut() {
            if let aya::programs::Program::FExit(t) = p {
                let _ = t.unload();
            }
        }
        let programs: Vec<&mut aya::programs::Program> = self
            .ebpf
            .programs_mut()
            .map(|(_, p)| p)
            .filter(|p| !matches!(p, aya::programs::Program::FExit(_)))
            .collect();
        std::thread::scope(|s| {
            for p in programs {
                s.spawn(move || {
                    let _ = match p {
                        aya::programs::Program::TracePoint(t) => t.unload(),
                        aya::programs::Program::BtfTracePoint(t) => t.unload(),
                        _ => Ok(()),
                    };
                });
            }
        });
        log::debug!("detached in {:?}", started.elapsed());
    }
}

fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        // Kernels since 5.11 charge BPF memory to the cgroup instead.
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) refused: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn program_error(
    program: &str,
    hook: String,
    action: &'static str,
    e: impl std::error::Error,
) -> Error {
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    Error::Program {
        program: program.to_owned(),
        hook,
        action,
        detail,
    }
}

/// A program loaded (or not) on a thread: its alternative, name, hook, the
/// program, and how its load went.
type Loaded<'a> = (
    usize,
    &'static str,
    Attach,
    &'a mut aya::programs::Program,
    Result<(), Error>,
);

/// The kernel's BTF as the programs' loads need it: being parsed, or parsed.
enum TargetBtf {
    Parsing(std::thread::JoinHandle<Result<Btf, aya::BtfError>>),
    Ready(Btf),
    Taken,
}

impl TargetBtf {
    /// Waits for the parse the first time.
    fn get(&mut self) -> Result<&Btf, Error> {
        if let TargetBtf::Parsing(_) = self {
            let TargetBtf::Parsing(h) = std::mem::replace(self, TargetBtf::Taken) else {
                unreachable!("matched above");
            };
            let btf = h
                .join()
                .map_err(|_| Error::Load("parsing the kernel's BTF panicked".into()))?
                .map_err(|e| Error::Btf {
                    path: super::btf::VMLINUX.into(),
                    what: e.to_string(),
                })?;
            *self = TargetBtf::Ready(btf);
        }
        match self {
            TargetBtf::Ready(b) => Ok(b),
            _ => Err(Error::Load("the kernel's BTF could not be parsed".into())),
        }
    }
}

/// One attempt's object, with every program of its plan loaded and attached.
struct Attempt {
    ebpf: Ebpf,
    cfg: Config,
    marks: u32,
}

/// Loads the object with `cfg` and loads and attaches every program of
/// `plan`, all at once (the verifier's time is most of start-up, and each
/// load is independent). Returns the object, or the alternatives whose
/// programs failed, with the first error of each.
fn attempt(
    cfg: Config,
    plan: &Plan,
    facts: &Facts,
    btf: &mut TargetBtf,
) -> Result<Result<Attempt, Vec<(usize, Error)>>, Error> {
    let t0 = std::time::Instant::now();
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    // aya's loader parses the kernel's BTF when it is made, for CO-RE
    // relocations, which pmet's programs do not have: it is dropped at once
    // (the copy the hooks need to find their targets is parsed once, by the
    // caller). Two copies alive at once would add ~15 MB to pmet's peak.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    let marks = mark_elements(pid_max());
    let mut ebpf = loader
        .override_global("CONFIG", &cfg, true)
        .map_max_entries("TRACKED", TRACKED_MAX_ENTRIES)
        .map_max_entries("MARKS", marks)
        .map_max_entries("DYING", DYING_MAX_ENTRIES)
        .map_max_entries("NET", net_entries(cpus))
        .map_max_entries("CONNS", conns_entries(cpus))
        .map_max_entries("SOCKS", SOCKS_MAX_ENTRIES)
        .load(OBJECT)
        .map_err(|e| Error::Load(error_chain(&e)))?;
    log::debug!("object loaded in {:?}", t0.elapsed());
    let btf = btf.get()?;
    let mut wanted: Vec<(usize, &'static str, Attach, &mut aya::programs::Program)> = Vec::new();
    let chosen: Vec<(usize, &'static Alternative)> = plan.alternatives().collect();
    for (name, p) in ebpf.programs_mut() {
        let found = chosen.iter().find_map(|&(i, alt)| {
            let prog = alt.programs.iter().find(|x| x.name == name)?;
            facts.wants(prog).then_some((i, prog))
        });
        if let Some((i, prog)) = found {
            wanted.push((i, prog.name, prog.attach, p));
        }
    }
    for &(i, alt) in &chosen {
        if let Some(missing) = alt
            .programs
            .iter()
            .filter(|p| facts.wants(p))
            .find(|p| !wanted.iter().any(|w| w.1 == p.name))
        {
            return Err(Error::Load(format!(
                "program {} missing from the object (alternative {i})",
                missing.name
            )));
        }
    }
    // Verified on as many threads as there are programs; attached one
    // after another: on 5.10, fexit attaches made at once from several
    // threads were seen to lock a CPU up in the kernel's code patching.
    let loaded: Vec<Loaded<'_>> = std::thread::scope(|s| {
        let handles: Vec<_> = wanted
            .into_iter()
            .map(|(i, name, attach, p)| {
                s.spawn(move || {
                    let r = load_one(name, attach, p, btf);
                    (i, name, attach, p, r)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    // In the table's order: attached so, and the failure an alternative
    // is given up for is the same from run to run.
    let mut loaded = loaded;
    loaded.sort_by_key(|(i, name, ..)| {
        let at = super::hooks::TABLE[*i]
            .programs
            .iter()
            .position(|p| p.name == *name);
        (*i, at)
    });
    let mut results: Vec<(usize, Result<(), Error>)> = Vec::new();
    for (i, name, attach, p, r) in loaded {
        let r = r.and_then(|()| attach_one(name, attach, p));
        results.push((i, r));
    }
    let mut failed: Vec<(usize, Error)> = Vec::new();
    for (i, r) in results {
        if let Err(e) = r
            && !failed.iter().any(|(j, _)| *j == i)
        {
            failed.push((i, e));
        }
    }
    if failed.is_empty() {
        log::debug!("programs loaded and attached at {:?}", t0.elapsed());
        Ok(Ok(Attempt { ebpf, cfg, marks }))
    } else {
        Ok(Err(failed))
    }
}

/// Loads one program (the verifier's part).
fn load_one(
    name: &'static str,
    attach: Attach,
    p: &mut aya::programs::Program,
    btf: &Btf,
) -> Result<(), Error> {
    let hook = attach.describe();
    let fail = |e: aya::programs::ProgramError| program_error(name, hook.clone(), "load", e);
    match attach {
        Attach::Tracepoint { .. } => {
            let p: &mut TracePoint = p.try_into().map_err(fail)?;
            p.load().map_err(fail)
        }
        Attach::BtfTracepoint(tp) => {
            let p: &mut BtfTracePoint = p.try_into().map_err(fail)?;
            p.load(tp, btf).map_err(fail)
        }
        Attach::FExit(function) => {
            let p: &mut FExit = p.try_into().map_err(fail)?;
            p.load(function, btf).map_err(fail)
        }
    }
}

/// Attaches one loaded program to its hook.
fn attach_one(
    name: &'static str,
    attach: Attach,
    p: &mut aya::programs::Program,
) -> Result<(), Error> {
    let hook = attach.describe();
    let fail = |e: aya::programs::ProgramError| program_error(name, hook.clone(), "attach", e);
    match attach {
        Attach::Tracepoint { category, name: tp } => {
            let p: &mut TracePoint = p.try_into().map_err(fail)?;
            p.attach(category, tp).map(drop).map_err(fail)
        }
        Attach::BtfTracepoint(_) => {
            let p: &mut BtfTracePoint = p.try_into().map_err(fail)?;
            p.attach().map(drop).map_err(fail)
        }
        Attach::FExit(_) => {
            let p: &mut FExit = p.try_into().map_err(fail)?;
            p.attach().map(drop).map_err(fail)
        }
    }
}

impl Kernel {
    /// Loads and attaches the kernel side: per capability, the first
    /// alternative of the program table that this kernel runs. An
    /// alternative that fails to load is given up and the rest are loaded
    /// again without it (its configuration can change what the others'
    /// programs do); only a kernel on which no process hook loads is an
    /// error. `flags` are the run's own (`FOLLOW_CHILDREN`, `CGROUP_SCOPE`).
    pub fn load(probe: &Probe, flags: u32) -> Result<Self, Error> {
        raise_memlock();
        // The hooks find their targets in the kernel's BTF, parsed on another
        // thread while the object loads (only the programs' loads need it).
        let mut btf = TargetBtf::Parsing(std::thread::spawn(Btf::from_sys_fs));
        let mut failed: Vec<(usize, String)> = std::env::var("PMET_NO_HOOKS")
            .map(|spec| super::hooks::disabled(&spec))
            .unwrap_or_default();
        let (
            plan,
            Attempt {
                mut ebpf,
                cfg,
                marks,
            },
        ) = loop {
            let plan = Plan::choose(&probe.facts, &failed);
            if plan.via(Capability::Process).is_none() {
                return Err(Error::Load(no_process_hook(&plan)));
            }
            match attempt(probe.config(&plan, flags), &plan, &probe.facts, &mut btf)? {
                Ok(a) => break (plan, a),
                Err(failures) => {
                    let reasons: Vec<(usize, String)> = failures
                        .iter()
                        .map(|(i, e)| {
                            log::debug!("{e}");
                            (*i, short_reason(&e.to_string()))
                        })
                        .collect();
                    let Some(give_up) = Plan::to_refuse(&reasons) else {
                        unreachable!("an attempt that failed names what failed");
                    };
                    log::debug!(
                        "giving up {} via {}: {}",
                        super::hooks::TABLE[give_up.0].capability.name(),
                        super::hooks::TABLE[give_up.0].via.name(),
                        give_up.1
                    );
                    failed.push(give_up);
                }
            }
        };
        drop(btf);
        // The parsed BTF (tens of MB in many small allocations, some on the
        // loading threads) is freed by now: give it back rather than carry
        // it as resident memory for the whole run.
        // (glibc's allocator only; musl's returns freed memory by itself.)
        // SAFETY: no preconditions.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0)
        };
        let hooks = plan.hooks(&probe.facts);
        for h in &hooks {
            if h.via.is_none() {
                let why = h.fell_back.last().map_or("", |r| r.reason.as_str());
                log::warn!(
                    "{}: {} ({why})",
                    h.capability.without(),
                    h.capability.name()
                );
            }
        }
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("no kernel-side log: {e}");
                None
            }
        };
        if log::log_enabled!(log::Level::Debug) {
            // The verifier's work per program: the figure to watch when a
            // kernel-side change makes a hook heavier or nears the limits.
            for (name, info) in ebpf
                .programs()
                .filter_map(|(n, p)| Some((n, p.info().ok()?)))
            {
                log::debug!(
                    "program {name}: {} instructions, {} verified",
                    info.size_translated().unwrap_or(0) / 8,
                    info.verified_instruction_count().unwrap_or(0)
                );
            }
        }
        let exit_totals = plan.via(Capability::ExitTotals).is_some();
        let replaces_taskstats = exit_totals && cfg.mm_hiwater_rss != 0 && cfg.task_nvcsw != 0;
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(Error::Map {
                map: name,
                detail: "missing from the object".into(),
            })
        };
        let bad = |name: &'static str| {
            move |e: aya::maps::MapError| Error::Map {
                map: name,
                detail: e.to_string(),
            }
        };
        let events = RingBuf::try_from(map(&mut ebpf, "EVENTS")?).map_err(bad("EVENTS"))?;
        let tracked = HashMap::try_from(map(&mut ebpf, "TRACKED")?).map_err(bad("TRACKED"))?;
        let marks = match map(&mut ebpf, "MARKS")? {
            aya::maps::Map::Array(data) => Marks::map(data, marks).map_err(|e| Error::Map {
                map: "MARKS",
                detail: format!("cannot map it: {e}"),
            })?,
            _ => {
                return Err(Error::Map {
                    map: "MARKS",
                    detail: "not an array".into(),
                });
            }
        };
        let net = PerCpuHashMap::try_from(map(&mut ebpf, "NET")?).map_err(bad("NET"))?;
        let counters =
            PerCpuArray::try_from(map(&mut ebpf, "COUNTERS")?).map_err(bad("COUNTERS"))?;
        let dying = HashMap::try_from(map(&mut ebpf, "DYING")?).map_err(bad("DYING"))?;
        let conns = PerCpuHashMap::try_from(map(&mut ebpf, "CONNS")?).map_err(bad("CONNS"))?;
        let socks = HashMap::try_from(map(&mut ebpf, "SOCKS")?).map_err(bad("SOCKS"))?;
        let scope = HashMap::try_from(map(&mut ebpf, "SCOPE")?).map_err(bad("SCOPE"))?;
        Ok(Self {
            scope,
            conns,
            socks,
            connections: plan.via(Capability::Connections).is_some(),
            network: plan.via(Capability::Network).is_some(),
            hooks,
            events,
            logger,
            tracked,
            marks,
            net,
            counters,
            dying,
            exit_totals,
            kernel_io: exit_totals && probe.task.is_some_and(|t| t.read_bytes != 0),
            replaces_taskstats,
            decoder: Default::default(),
            ebpf,
        })
    }

    /// Puts a process in the traced tree.
    pub fn track(&mut self, pid: u32, cookie: u64) -> Result<(), Error> {
        self.marks.set(pid);
        self.tracked
            .insert(
                pid,
                Tracked {
                    cookie,
                    ..Tracked::default()
                },
                0,
            )
            .map_err(|e| Error::Map {
                map: "TRACKED",
                detail: format!("cannot track pid {pid}: {e}"),
            })
    }

    /// The cgroups whose processes join the tree (`--cgroup`; the object
    /// must have been loaded with `CGROUP_SCOPE`).
    pub fn set_scope(&mut self, ids: &[u64]) -> Result<(), Error> {
        for &id in ids {
            self.scope.insert(id, 1, 0).map_err(|e| Error::Map {
                map: "SCOPE",
                detail: format!("cannot add cgroup {id}: {e}"),
            })?;
        }
        Ok(())
    }

    /// Stops following a process (and what it starts from now on).
    pub fn untrack(&mut self, pid: u32) {
        let _ = self.tracked.remove(&pid);
    }

    /// Whether pmet can read its maps with the capabilities it has now (a
    /// lookup that finds nothing counts: it was allowed).
    pub fn reads_maps(&self) -> bool {
        matches!(
            self.tracked.get(&0, 0),
            Ok(_) | Err(aya::maps::MapError::KeyNotFound)
        )
    }

    /// The kernel's view of whether a process is still tracked.
    pub fn tracked(&self, pid: u32) -> Option<u64> {
        match self.tracked.get(&pid, 0) {
            Ok(t) => Some(t.cookie),
            Err(e) => {
                log::trace!("TRACKED lookup of {pid}: {e:?}");
                None
            }
        }
    }

    /// A process's socket counters, summed over CPUs.
    pub fn net(&self, pid: u32, cookie: u64) -> Option<NetCounters> {
        let key = NetKey {
            tgid: pid,
            _pad: 0,
            cookie,
        };
        let per_cpu = self.net.get(&key, 0).ok()?;
        let mut sum = NetCounters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Some(sum)
    }

    /// Reads and removes an exited process's counters.
    pub fn take_net(&mut self, pid: u32, cookie: u64) -> Option<NetCounters> {
        let v = self.net(pid, cookie);
        if v.is_some() {
            let _ = self.net.remove(&NetKey {
                tgid: pid,
                _pad: 0,
                cookie,
            });
        }
        v
    }

    /// Loss counters summed over CPUs, indexed by `pmet_common::counter`.
    pub fn counters(&self) -> [u64; counter::LEN as usize] {
        let mut out = [0; counter::LEN as usize];
        for (i, o) in out.iter_mut().enumerate() {
            if let Ok(v) = self.counters.get(&(i as u32), 0) {
                *o = v.iter().sum();
            }
        }
        out
    }

    /// Exited threads still waiting to be freed, by task address.
    pub fn dying(&self) -> Vec<(u64, pmet_common::Dying)> {
        self.dying.iter().filter_map(Result::ok).collect()
    }

    /// Forgets an exited thread whose free was not seen.
    pub fn forget_dying(&mut self, task: u64) {
        let _ = self.dying.remove(&task);
    }

    /// Reads (and with `take`, removes) one process's bytes on one socket.
    pub fn conn_bytes(&mut self, key: &ConnKey, take: bool) -> Option<ConnBytes> {
        let per_cpu = self.conns.get(key, 0).ok()?;
        let mut sum = ConnBytes::default();
        for c in per_cpu.iter() {
            sum.tx_bytes += c.tx_bytes;
            sum.rx_bytes += c.rx_bytes;
        }
        if take {
            let _ = self.conns.remove(key);
        }
        Some(sum)
    }

    /// A followed TCP socket's life so far (one not yet destroyed).
    pub fn sock_life(&self, sock_cookie: u64) -> Option<SockLife> {
        self.socks.get(&sock_cookie, 0).ok()
    }

    /// Raw fd of the event ring buffer, for polling.
    pub fn events_fd(&self) -> i32 {
        self.events.as_raw_fd()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Why no process hook could be used, from the plan's refusals.
fn no_process_hook(plan: &Plan) -> String {
    let why: Vec<String> = plan
        .refused
        .iter()
        .filter(|(i, _)| super::hooks::TABLE[*i].capability == Capability::Process)
        .map(|(i, r)| format!("{}: {r}", super::hooks::TABLE[*i].via.name()))
        .collect();
    format!("no process hook works on this kernel ({})", why.join("; "))
}

/// A load failure as the report keeps it: what failed, and the verifier's
/// verdict (its last line that says what is wrong), without the log's
/// addresses and register states, which differ from run to run.
fn short_reason(full: &str) -> String {
    let Some((head, log)) = full.split_once("Verifier output:") else {
        return full.lines().next().unwrap_or(full).to_owned();
    };
    let verdict = log
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with(':')
        })
        .unwrap_or("");
    format!("{} verifier: {verdict}", head.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_offsets_are_used_only_with_the_exec_ones() {
        use crate::collect::btf::{ExecOffsets, MemOffsets};
        let mem = MemOffsets {
            hiwater_rss: 240,
            rss_stat: 800,
            stride: 40,
            count: 8,
        };
        let exec = ExecOffsets {
            task_mm: 2000,
            ..ExecOffsets::default()
        };
        // Without `task->mm` the exit cannot reach the memory: no offsets
        // (so taskstats is listened to instead).
        let without = TaskOffsets {
            mem: Some(mem),
            ..TaskOffsets::default()
        };
        let cfg = with_task_offsets(Config::default(), &without);
        assert_eq!((cfg.mm_hiwater_rss, cfg.task_mm), (0, 0));
        let with = TaskOffsets {
            exec: Some(exec),
            ..without
        };
        let cfg = with_task_offsets(Config::default(), &with);
        assert_eq!(
            (cfg.mm_hiwater_rss, cfg.mm_rss_stat, cfg.task_mm),
            (240, 800, 2000)
        );
    }

    #[test]
    fn a_load_failure_keeps_the_verifiers_verdict_not_its_log() {
        let full = "eBPF program `tcp_destroy_sock` (BTF tracepoint tcp_destroy_sock) failed to \
                    load: the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). \
                    Verifier output: arg#0 type is not a struct\nUnrecognized arg#0 type PTR\n\
                    0: (18) r2 = 0xffff94a17fe68310\n6: (85) call bpf_get_socket_cookie#46\n\
                    unknown func bpf_get_socket_cookie#46\nverification time 728 usec\n\
                    stack depth 0\nprocessed 6 insns (limit 1000000)\n: Invalid argument (os error 22)";
        assert_eq!(
            short_reason(full),
            "eBPF program `tcp_destroy_sock` (BTF tracepoint tcp_destroy_sock) failed to load: \
             the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). verifier: \
             unknown func bpf_get_socket_cookie#46"
        );
        assert_eq!(short_reason("no such file\nmore"), "no such file");
    }

    #[test]
    fn the_marks_cover_every_pid_below_pid_max_and_no_more_than_4_mib() {
        // The usual values: 32,768 (the kernel's default) and 4,194,304
        // (systemd's, and the limit).
        assert_eq!(mark_elements(32768), 8);
        assert_eq!(mark_elements(4 << 20), 1024);
        assert_eq!(mark_elements(32769), 9);
        assert_eq!(mark_elements(0), 1);
        assert_eq!(mark_elements(u32::MAX), 1024);
        for pid_max in [1, 301, 4096, 4097, 32768, 99_999, 4 << 20] {
            let covered = mark_elements(pid_max) * MARK_PIDS;
            assert!(covered >= pid_max && covered - pid_max < MARK_PIDS);
        }
    }

    #[test]
    fn the_net_map_stays_within_its_budget_on_any_cpu_count() {
        assert_eq!(net_entries(2), NET_MAX_ENTRIES);
        assert_eq!(net_entries(16), NET_MAX_ENTRIES);
        assert_eq!(net_entries(256), 2048);
        assert_eq!(net_entries(4096), NET_MIN_ENTRIES);
        assert_eq!(conns_entries(2), CONNS_MAX_ENTRIES);
        assert_eq!(conns_entries(256), 5461);
        for cpus in [1, 2, 16, 64, 256, 1024] {
            let bytes = net_entries(cpus) as usize * 64 * cpus;
            assert!(bytes <= NET_MAP_BUDGET || net_entries(cpus) == NET_MIN_ENTRIES);
        }
    }
}
