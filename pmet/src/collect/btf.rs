//! `task_struct` offsets read from the running kernel's BTF.
//!
//! aya's Rust eBPF has no CO-RE relocations, so the kernel side never
//! hard-codes a struct layout: the loader resolves the few fields it reads
//! here and passes their offsets in through the `CONFIG` global.

use std::path::Path;

use btf_rs::{Backend, Btf, Type};

use crate::error::Error;

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets inside `struct task_struct`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `exit_code`.
    pub exit_code: u32,
    /// `se.sum_exec_runtime`.
    pub sum_exec_runtime: u32,
    /// `utime`.
    pub utime: u32,
    /// `stime`.
    pub stime: u32,
    /// `ioac.read_bytes` (0: no I/O accounting in this kernel).
    pub read_bytes: u32,
    /// `ioac.write_bytes`.
    pub write_bytes: u32,
    /// `ioac.cancelled_write_bytes`.
    pub cancelled_write_bytes: u32,
    /// `pid` (the thread id).
    pub pid: u32,
    /// `__state` (`state` before 5.14), for `sched_switch` where its
    /// tracepoint has no `prev_state` (0: not found).
    pub state: u32,
    /// `sched_switch` has its `prev_state` argument (5.18+).
    pub switch_prev_state: bool,
    /// Where a task's pid namespace and its pid there are read.
    pub pid_ns: Option<PidNsOffsets>,
    /// What the process hooks need as BTF tracepoints (`None`: the classic
    /// ones are used).
    pub exec: Option<ExecOffsets>,
    /// A thread's context switches and page faults (`None`: taskstats is
    /// needed for them).
    pub ctx: Option<CtxOffsets>,
    /// A thread's peak memory, read at its exit (`None`: taskstats is
    /// needed for it). Only with `exec`: that is where the exit tracepoint
    /// has `group_dead` (6.16+), which is also where it fires before
    /// `exit_mm` tears the memory down.
    pub mem: Option<MemOffsets>,
    /// `task_struct.signal` and `signal_struct.maxrss`: the peak resident
    /// size of the memories a process left behind at its execs (`None`:
    /// not read; only the last program's peak is known).
    pub maxrss: Option<(u32, u16)>,
    /// Where a task's working directory is walked at exec (`None`: it is
    /// read from `/proc/PID/cwd` as the exec is taken in instead).
    pub cwd: Option<CwdOffsets>,
}

/// Offsets from a task to its working directory's dentries and mounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CwdOffsets {
    /// `task_struct.fs`.
    pub task_fs: u32,
    /// `fs_struct.pwd.mnt`, `fs_struct.pwd.dentry`.
    pub pwd_mnt: u16,
    pub pwd_dentry: u16,
    /// `dentry.d_parent`, `dentry.d_name.name`.
    pub d_parent: u16,
    pub d_name: u16,
    /// `vfsmount.mnt_root`.
    pub mnt_root: u16,
    /// `mount.mnt`, `mount.mnt_parent`, `mount.mnt_mountpoint`.
    pub mount_mnt: u16,
    pub mount_parent: u16,
    pub mount_mountpoint: u16,
}

/// `task_struct` context-switch and fault counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtxOffsets {
    /// `nvcsw`, `nivcsw`, `maj_flt` (minor faults are not reported).
    pub nvcsw: u32,
    pub nivcsw: u32,
    pub maj_flt: u32,
}

/// Where an `mm_struct` keeps what taskstats' `hiwater_rss` is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemOffsets {
    /// `mm_struct.hiwater_rss`.
    pub hiwater_rss: u16,
    /// `mm_struct.rss_stat`: `struct percpu_counter[NR_MM_COUNTERS]` (6.2+).
    pub rss_stat: u16,
    /// `sizeof(struct percpu_counter)`.
    pub stride: u16,
    /// `percpu_counter.count`.
    pub count: u16,
}

/// Offsets for reading an exec's path, argv and environment at
/// `sched_process_exec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecOffsets {
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.arg_start`, `arg_end`, `env_start`, `env_end`.
    pub arg_start: u16,
    pub arg_end: u16,
    pub env_start: u16,
    pub env_end: u16,
    /// `linux_binprm.filename`.
    pub bprm_filename: u16,
}

/// Offsets from a task to its pid in its own pid namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidNsOffsets {
    /// `task_struct.thread_pid`.
    pub thread_pid: u32,
    /// `struct pid.level`.
    pub level: u16,
    /// `struct pid.numbers`.
    pub numbers: u16,
    /// `struct upid.ns` (`nr` is at 0).
    pub upid_ns: u16,
    /// `sizeof(struct upid)`.
    pub upid_size: u16,
    /// `struct pid_namespace.ns.inum`.
    pub inum: u16,
}

/// Byte offsets inside `struct sock`, for the BTF socket programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family`.
    pub family: u16,
    /// `sk_protocol` (a bitfield before Linux 5.6: then not resolvable).
    pub protocol: u16,
    /// `sk_type` (0 when not resolvable: raw sockets are then not told apart).
    pub kind: u16,
    /// What connections need (`None`: only per-process totals are kept).
    pub ends: Option<EndOffsets>,
}

/// Byte offsets of a socket's ends and error inside `struct sock`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndOffsets {
    /// `__sk_common.skc_daddr`.
    pub daddr: u16,
    /// `__sk_common.skc_rcv_saddr`.
    pub rcv_saddr: u16,
    /// `__sk_common.skc_dport`.
    pub dport: u16,
    /// `__sk_common.skc_num`.
    pub num: u16,
    /// `__sk_common.skc_v6_daddr` (0 without IPv6).
    pub v6_daddr: u16,
    /// `__sk_common.skc_v6_rcv_saddr` (0 without IPv6).
    pub v6_rcv_saddr: u16,
    /// `sk_err`.
    pub err: u16,
    /// `tcp_sock.total_retrans` (0: not found; retransmits are then the
    /// tracepoint's hits).
    pub total_retrans: u16,
}

/// Opens a BTF file: mapped where the kernel allows it (only the handful
/// of types pmet needs are decoded, which keeps start-up fast), else read
/// whole (`/sys/kernel/btf/vmlinux` can be mapped only since Linux 6.16).
pub fn open(path: &Path) -> btf_rs::Result<Btf> {
    Btf::from_file_with_backend(path, Backend::Mmap).or_else(|_| Btf::from_file(path))
}

/// Resolves [`SockOffsets`]; `None` when this kernel's layout does not allow
/// it (the classic socket tracepoints are used instead).
pub fn sock_offsets(btf: &Btf) -> Option<SockOffsets> {
    let sock = find_struct(btf, "sock").ok()?;
    let family = member_offset(btf, &sock, &["__sk_common", "skc_family"]).ok()?;
    let protocol = member_offset(btf, &sock, &["sk_protocol"]).ok()?;
    let kind = member_offset(btf, &sock, &["sk_type"]).ok();
    let common = |name: &str| {
        member_offset(btf, &sock, &["__sk_common", name])
            .ok()
            .and_then(|o| u16::try_from(o).ok())
    };
    let ends = (|| {
        Some(EndOffsets {
            daddr: common("skc_daddr")?,
            rcv_saddr: common("skc_rcv_saddr")?,
            dport: common("skc_dport")?,
            num: common("skc_num")?,
            v6_daddr: common("skc_v6_daddr").unwrap_or(0),
            v6_rcv_saddr: common("skc_v6_rcv_saddr").unwrap_or(0),
            err: u16::try_from(member_offset(btf, &sock, &["sk_err"]).ok()?).ok()?,
            total_retrans: find_struct(btf, "tcp_sock")
                .ok()
                .and_then(|t| member_offset(btf, &t, &["total_retrans"]).ok())
                .and_then(|o| u16::try_from(o).ok())
                .unwrap_or(0),
        })
    })();
    Some(SockOffsets {
        family: u16::try_from(family).ok()?,
        protocol: u16::try_from(protocol).ok()?,
        kind: kind.and_then(|k| u16::try_from(k).ok()).unwrap_or(0),
        ends,
    })
}

/// The inet layer's send and receive functions that the fexit socket hooks
/// attach to (where the kernel has no socket tracepoints), each with the
/// parameters the hook reads its arguments by (the return value follows
/// them). A function this kernel lacks, or has with other parameters, is
/// left out.
pub const FEXIT_SOCKET_FUNCTIONS: [(&str, &[&str]); 5] = [
    ("inet_sendmsg", &["sock", "msg", "size"]),
    ("inet6_sendmsg", &["sock", "msg", "size"]),
    ("inet_recvmsg", &["sock", "msg", "size", "flags"]),
    ("inet6_recvmsg", &["sock", "msg", "size", "flags"]),
    (
        "inet_sendpage",
        &["sock", "page", "offset", "size", "flags"],
    ),
];

/// What the fexit socket hooks need from this kernel's BTF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FexitSocket {
    /// `struct socket.sk`.
    pub socket_sk: u16,
    /// The functions of [`FEXIT_SOCKET_FUNCTIONS`] this kernel has, with the
    /// parameters the hooks expect.
    pub functions: Vec<&'static str>,
    /// Those it lacks or has with other parameters, and what it has.
    pub mismatched: Vec<(&'static str, String)>,
}

/// Resolves [`FexitSocket`]; `None` without `struct socket`.
pub fn fexit_socket(btf: &Btf) -> Option<FexitSocket> {
    let socket = find_struct(btf, "socket").ok()?;
    let socket_sk = u16::try_from(member_offset(btf, &socket, &["sk"]).ok()?).ok()?;
    let mut out = FexitSocket {
        socket_sk,
        ..FexitSocket::default()
    };
    for (name, want) in FEXIT_SOCKET_FUNCTIONS {
        match func_params(btf, name) {
            Some(have) if have == want => out.functions.push(name),
            Some(have) => out
                .mismatched
                .push((name, format!("its parameters are ({})", have.join(", ")))),
            None => out
                .mismatched
                .push((name, "not in this kernel's BTF".into())),
        }
    }
    Some(out)
}

/// The parameter names of kernel function `name`, from its BTF prototype.
fn func_params(btf: &Btf, name: &str) -> Option<Vec<String>> {
    let f = btf
        .resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Func(_)))?;
    let Type::Func(f) = f else { return None };
    let Type::FuncProto(proto) = btf.resolve_chained_type(&f).ok()? else {
        return None;
    };
    Some(
        proto
            .parameters
            .iter()
            .map(|p| btf.resolve_name(p).unwrap_or_default())
            .collect(),
    )
}

/// Whether this kernel's BTF has tracepoint `name` (a `btf_trace_NAME`
/// typedef).
pub fn has_btf_tracepoint(btf: &Btf, name: &str) -> bool {
    tracepoint_args(btf, name).is_some()
}

/// Resolves [`TaskOffsets`] from a BTF file.
pub fn task_offsets(path: &Path) -> Result<TaskOffsets, Error> {
    let err = |what: String| Error::Btf {
        path: path.to_owned(),
        what,
    };
    if !path.exists() {
        return Err(err(
            "not found (the kernel needs CONFIG_DEBUG_INFO_BTF=y)".into()
        ));
    }
    let btf = open(path).map_err(|e| err(format!("unreadable: {e}")))?;
    task_offsets_in(&btf, path)
}

/// [`task_offsets`] from an opened BTF (`path` names it in errors).
pub fn task_offsets_in(btf: &Btf, path: &Path) -> Result<TaskOffsets, Error> {
    let err = |what: String| Error::Btf {
        path: path.to_owned(),
        what,
    };
    let task = find_struct(btf, "task_struct").map_err(err)?;
    let off = |path: &[&str]| member_offset(btf, &task, path).map_err(err);
    let opt = |path: &[&str]| member_offset(btf, &task, path).ok();
    let exec = exec_offsets(btf, opt(&["mm"]));
    Ok(TaskOffsets {
        exit_code: off(&["exit_code"])?,
        sum_exec_runtime: off(&["se", "sum_exec_runtime"])?,
        utime: off(&["utime"])?,
        stime: off(&["stime"])?,
        read_bytes: opt(&["ioac", "read_bytes"]).unwrap_or(0),
        write_bytes: opt(&["ioac", "write_bytes"]).unwrap_or(0),
        cancelled_write_bytes: opt(&["ioac", "cancelled_write_bytes"]).unwrap_or(0),
        pid: off(&["pid"])?,
        state: opt(&["__state"]).or_else(|| opt(&["state"])).unwrap_or(0),
        switch_prev_state: tracepoint_args(btf, "sched_switch") == Some(4),
        pid_ns: pid_ns_offsets(btf, opt(&["thread_pid"])),
        exec,
        ctx: (|| {
            Some(CtxOffsets {
                nvcsw: opt(&["nvcsw"])?,
                nivcsw: opt(&["nivcsw"])?,
                maj_flt: opt(&["maj_flt"])?,
            })
        })(),
        mem: exec.and_then(|_| mem_offsets(btf)),
        maxrss: (|| {
            let signal = find_struct(btf, "signal_struct").ok()?;
            let maxrss = member_offset(btf, &signal, &["maxrss"]).ok()?;
            Some((opt(&["signal"])?, u16::try_from(maxrss).ok()?))
        })(),
        cwd: opt(&["fs"]).and_then(|fs| cwd_offsets(btf, fs)),
    })
}

/// [`CwdOffsets`], all or none.
fn cwd_offsets(btf: &Btf, task_fs: u32) -> Option<CwdOffsets> {
    let small = |v: u32| u16::try_from(v).ok();
    let at = |name: &str, path: &[&str]| {
        let s = find_struct(btf, name).ok()?;
        small(member_offset(btf, &s, path).ok()?)
    };
    Some(CwdOffsets {
        task_fs,
        pwd_mnt: at("fs_struct", &["pwd", "mnt"])?,
        pwd_dentry: at("fs_struct", &["pwd", "dentry"])?,
        d_parent: at("dentry", &["d_parent"])?,
        d_name: at("dentry", &["d_name", "name"])?,
        mnt_root: at("vfsmount", &["mnt_root"])?,
        mount_mnt: at("mount", &["mnt"])?,
        mount_parent: at("mount", &["mnt_parent"])?,
        mount_mountpoint: at("mount", &["mnt_mountpoint"])?,
    })
}

/// [`MemOffsets`], where `rss_stat` is the array of four per-CPU counters
/// the kernel has used since 6.2 (`MM_FILEPAGES`, `MM_ANONPAGES`,
/// `MM_SWAPENTS`, `MM_SHMEMPAGES`); `None` for any other layout.
fn mem_offsets(btf: &Btf) -> Option<MemOffsets> {
    let small = |v: u32| u16::try_from(v).ok();
    let mm = find_struct(btf, "mm_struct").ok()?;
    let (bits, ty) = find_member(btf, &mm, "rss_stat", 0)?;
    let Type::Array(a) = ty else { return None };
    if a.len() != 4 || bits % 8 != 0 {
        return None;
    }
    let elem = resolve_aggregate(btf, btf.resolve_chained_type(&a).ok()?)?;
    let Type::Struct(ref counter) = elem else {
        return None;
    };
    if btf.resolve_name(counter).ok()? != "percpu_counter" {
        return None;
    }
    Some(MemOffsets {
        hiwater_rss: small(member_offset(btf, &mm, &["hiwater_rss"]).ok()?)?,
        rss_stat: small(bits / 8)?,
        stride: small(u32::try_from(counter.size()).ok()?)?,
        count: small(member_offset(btf, &elem, &["count"]).ok()?)?,
    })
}

/// The number of arguments of BTF tracepoint `name` (its `btf_trace_NAME`
/// typedef's, less the context pointer every one starts with).
fn tracepoint_args(btf: &Btf, name: &str) -> Option<usize> {
    let t = btf
        .resolve_types_by_name(&format!("btf_trace_{name}"))
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Typedef(_)))?;
    let Type::Typedef(td) = t else { return None };
    let Type::Ptr(p) = btf.resolve_chained_type(&td).ok()? else {
        return None;
    };
    let Type::FuncProto(f) = btf.resolve_chained_type(&p).ok()? else {
        return None;
    };
    f.parameters.len().checked_sub(1)
}

fn exec_offsets(btf: &Btf, task_mm: Option<u32>) -> Option<ExecOffsets> {
    // The hooks as pmet reads them: task_newtask(task, clone_flags),
    // sched_process_exec(p, old_pid, bprm), sched_process_exit(p, group_dead).
    for (tp, args) in [
        ("task_newtask", 2),
        ("sched_process_exec", 3),
        ("sched_process_exit", 2),
    ] {
        if tracepoint_args(btf, tp) != Some(args) {
            return None;
        }
    }
    let small = |v: u32| u16::try_from(v).ok();
    let mm = find_struct(btf, "mm_struct").ok()?;
    let bprm = find_struct(btf, "linux_binprm").ok()?;
    let at = |name: &str| small(member_offset(btf, &mm, &[name]).ok()?);
    Some(ExecOffsets {
        task_mm: task_mm?,
        arg_start: at("arg_start")?,
        arg_end: at("arg_end")?,
        env_start: at("env_start")?,
        env_end: at("env_end")?,
        bprm_filename: small(member_offset(btf, &bprm, &["filename"]).ok()?)?,
    })
}

fn pid_ns_offsets(btf: &Btf, thread_pid: Option<u32>) -> Option<PidNsOffsets> {
    let small = |v: u32| u16::try_from(v).ok();
    let pid = find_struct(btf, "pid").ok()?;
    let upid = find_struct(btf, "upid").ok()?;
    let ns = find_struct(btf, "pid_namespace").ok()?;
    if member_offset(btf, &upid, &["nr"]).ok()? != 0 {
        return None;
    }
    let upid_ns = member_offset(btf, &upid, &["ns"]).ok()?;
    Some(PidNsOffsets {
        thread_pid: thread_pid?,
        level: small(member_offset(btf, &pid, &["level"]).ok()?)?,
        numbers: small(member_offset(btf, &pid, &["numbers"]).ok()?)?,
        upid_ns: small(upid_ns)?,
        // { int nr; struct pid_namespace *ns; }: the pointer ends it.
        upid_size: small((upid_ns + 8).next_multiple_of(8))?,
        inum: small(member_offset(btf, &ns, &["ns", "inum"]).ok()?)?,
    })
}

fn find_struct(btf: &Btf, name: &str) -> Result<Type, String> {
    btf.resolve_types_by_name(name)
        .map_err(|e| format!("no type {name}: {e}"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| format!("no struct {name}"))
}

/// Follows typedefs and qualifiers to the underlying struct or union.
fn resolve_aggregate(btf: &Btf, mut t: Type) -> Option<Type> {
    for _ in 0..16 {
        match t {
            Type::Struct(_) | Type::Union(_) => return Some(t),
            Type::Typedef(ref x) => t = btf.resolve_chained_type(x).ok()?,
            Type::Const(ref x) => t = btf.resolve_chained_type(x).ok()?,
            Type::Volatile(ref x) => t = btf.resolve_chained_type(x).ok()?,
            Type::Restrict(ref x) => t = btf.resolve_chained_type(x).ok()?,
            Type::TypeTag(ref x) => t = btf.resolve_chained_type(x).ok()?,
            _ => return None,
        }
    }
    None
}

fn members(t: &Type) -> &[btf_rs::Member] {
    match t {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => &[],
    }
}

/// Byte offset of `path` (e.g. `["se", "sum_exec_runtime"]`) in `outer`,
/// looking through anonymous structs and unions as C does.
fn member_offset(btf: &Btf, outer: &Type, path: &[&str]) -> Result<u32, String> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(0);
    };
    let (bits, ty) = find_member(btf, outer, first, 0)
        .ok_or_else(|| format!("task_struct has no member {}", path.join(".")))?;
    if bits % 8 != 0 {
        return Err(format!("{} is a bitfield", path.join(".")));
    }
    if rest.is_empty() {
        return Ok(bits / 8);
    }
    let inner = resolve_aggregate(btf, ty).ok_or_else(|| format!("{first} is not a struct"))?;
    Ok(bits / 8 + member_offset(btf, &inner, rest)?)
}

fn find_member(btf: &Btf, outer: &Type, name: &str, depth: u32) -> Option<(u32, Type)> {
    if depth > 8 {
        return None;
    }
    for m in members(outer) {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Some((m.bit_offset(), btf.resolve_chained_type(m).ok()?));
        }
        if mname.is_empty() {
            let inner = resolve_aggregate(btf, btf.resolve_chained_type(m).ok()?)?;
            if let Some((bits, t)) = find_member(btf, &inner, name, depth + 1) {
                return Some((m.bit_offset() + bits, t));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_this_kernels_task_struct() {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            // Pure-logic suite on a machine without BTF: nothing to resolve.
            assert!(std::env::var_os("CI").is_none(), "CI machines have BTF");
            return;
        }
        let o = task_offsets(path).unwrap();
        assert!(o.exit_code > 0 && o.sum_exec_runtime > 0 && o.utime > 0 && o.stime > 0);
        assert!(o.pid > o.exit_code, "pid follows exit_code in task_struct");
        assert_eq!(o.stime, o.utime + 8, "stime follows utime in task_struct");
        let x = o
            .exec
            .expect("this kernel's process hooks work as BTF tracepoints");
        assert_eq!(x.arg_end, x.arg_start + 8);
        assert_eq!(x.env_end, x.env_start + 8);
        let n = o.pid_ns.expect("pid namespace offsets");
        assert_eq!((n.upid_ns, n.upid_size), (8, 16));
        assert!(n.thread_pid > 0 && n.numbers > n.level);
        assert_eq!(o.write_bytes, o.read_bytes + 8);
        assert_eq!(o.cancelled_write_bytes, o.write_bytes + 8);
        // include/linux/sched.h: nvcsw, nivcsw, start_time, start_boottime,
        // min_flt, maj_flt.
        let c = o.ctx.expect("context switch and fault counters");
        assert_eq!((c.nivcsw, c.maj_flt), (c.nvcsw + 8, c.nvcsw + 40));
        let m = o.mem.expect("this kernel's exit hook sees the memory");
        // struct percpu_counter { raw_spinlock_t lock; s64 count; struct
        // list_head list; s32 __percpu *counters; }: 40 bytes with hotplug.
        assert_eq!((m.count, m.stride), (8, 40), "{m:?}");
        assert!(m.hiwater_rss > 0 && m.rss_stat > 0);
        let (signal, maxrss) = o.maxrss.expect("task->signal->maxrss");
        assert!(signal > 0 && maxrss > 0, "{:?}", o.maxrss);
        let c = o.cwd.expect("the working directory's offsets");
        // { struct vfsmount *mnt; struct dentry *dentry; }
        assert_eq!(c.pwd_dentry, c.pwd_mnt + 8, "{c:?}");
        assert!(
            c.task_fs > 0 && c.d_parent > 0 && c.d_name > c.d_parent,
            "{c:?}"
        );
        assert!(
            c.mount_parent > 0 && c.mount_mountpoint > c.mount_parent,
            "{c:?}"
        );
    }

    #[test]
    fn resolves_this_kernels_sock() {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            return;
        }
        let o = sock_offsets(&open(path).unwrap()).unwrap();
        assert!(o.family > 0 && o.protocol > o.family);
        let e = o.ends.expect("this kernel's sock gives every end");
        // struct sock_common opens with the address pair, then the ports.
        assert_eq!((e.daddr, e.rcv_saddr), (0, 4));
        assert_eq!((e.dport, e.num), (12, 14));
        assert!(e.v6_daddr > e.num && e.v6_rcv_saddr == e.v6_daddr + 16);
        assert!(e.err > o.family);
        assert!(e.total_retrans > 0, "tcp_sock.total_retrans");
    }

    #[test]
    fn resolves_this_kernels_fexit_socket_targets() {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            return;
        }
        let btf = open(path).unwrap();
        let f = fexit_socket(&btf).expect("struct socket");
        // struct socket { socket_state state; short type; unsigned long
        // flags; struct file *file; struct sock *sk; ... }
        assert_eq!(f.socket_sk, 24, "{f:?}");
        for name in [
            "inet_sendmsg",
            "inet6_sendmsg",
            "inet_recvmsg",
            "inet6_recvmsg",
        ] {
            assert!(f.functions.contains(&name), "{f:?}");
        }
        // sendpage is gone since 6.5: sendfile goes through sendmsg.
        assert_eq!(
            f.mismatched,
            vec![("inet_sendpage", "not in this kernel's BTF".to_owned())]
        );
        assert!(has_btf_tracepoint(&btf, "sock_send_length"));
        assert!(!has_btf_tracepoint(&btf, "no_such_tracepoint"));
    }

    #[test]
    fn missing_file_is_named() {
        let e = task_offsets(Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/vmlinux"), "{e}");
    }
}
