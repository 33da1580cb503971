//! Process life: creation, exec (with argv, read while the caller's memory
//! still exists), exit, and the final accounting taken when a task is freed.

use core::mem::size_of;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_probe_read_user,
        generated::{self, bpf_probe_read_user_str},
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use pmet_common::{
    ARGV_LEN, COMM_LEN, CWD_DEPTH, CWD_LEN, Dying, EventHeader, ExecArgsEvent, ExecArgsHeader,
    ExecEvent, ExecFullEvent, ExecFullHeader, ExitEvent, FILENAME_LEN, ForkEvent, FreeEvent,
    MAX_ARGS, NAME_LEN, TaskFigures, Tracked, config_flags, counter, exec_flags, exit_flags,
    fork_flags, kind, tracked_flags,
};

use crate::{
    DYING, EVENTS, EXEC_SCRATCH, SCOPE, SCRATCH, TRACKED, bump, current_task, kread, mark, now,
    tracked,
};

const CLONE_THREAD: u64 = 0x0001_0000;

#[inline(always)]
fn header(kind: u32, tgid: u32, tid: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        tgid,
        tid,
        _pad: 0,
        ts_ns,
    }
}

#[inline(always)]
fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// Splits `bpf_get_current_pid_tgid()` into (tgid, tid).
#[inline(always)]
fn current() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

/// Sends a fixed-size event, counting it as lost when the ring buffer is full.
#[inline(always)]
fn send<T: 'static>(event: T) {
    match crate::EVENTS.reserve::<T>(0) {
        Some(mut slot) => {
            slot.write(event);
            slot.submit(0);
        }
        None => bump(counter::RINGBUF_FULL),
    }
}

/// The current process, tracked: already, or joining now because it runs in
/// one of the traced cgroups (`--cgroup`), which is said with a `JOINED`
/// record before anything else about it.
#[inline(always)]
fn tracked_or_joining(tgid: u32, tid: u32) -> Option<Tracked> {
    if let Some(t) = tracked(tgid) {
        return Some(t);
    }
    if config!(flags) & config_flags::CGROUP_SCOPE == 0 {
        return None;
    }
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    SCOPE.get_ptr(cgroup)?;
    let ts = now();
    let cookie = ts | 1;
    mark(tgid, true);
    if TRACKED
        .insert(
            tgid,
            Tracked {
                cookie,
                ..Tracked::default()
            },
            BPF_NOEXIST as u64,
        )
        .is_err()
    {
        // Another thread of it joined first, or the map is full.
        return tracked(tgid).or_else(|| {
            bump(counter::TRACKED_FULL);
            None
        });
    }
    send(ForkEvent {
        hdr: header(kind::FORK, tgid, tid, ts),
        child: tgid,
        flags: fork_flags::JOINED,
        clone_flags: 0,
        cookie,
        comm: comm(),
    });
    Some(Tracked {
        cookie,
        ..Tracked::default()
    })
}

/// A task was created (fires in the creator's context, before the new task
/// can run). A new process joins the tree here, so nothing it does is missed.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    match try_task_newtask(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            bump(counter::READ_FAILED);
            0
        }
    }
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current();
    if tracked_or_joining(tgid, tid).is_none() {
        return Ok(());
    }
    // SAFETY: offsets come from this kernel's tracepoint format.
    let child: u32 = unsafe { ctx.read_at(config!(newtask_pid) as usize)? };
    // clone_flags is 8 bytes on current kernels and was 4 on older ones; the
    // low word (little-endian first) holds CLONE_THREAD either way.
    let clone_flags =
        u64::from(unsafe { ctx.read_at::<u32>(config!(newtask_clone_flags) as usize)? });
    newtask(child, clone_flags);
    Ok(())
}

/// The same hook as a BTF tracepoint: detached at once, no record built.
#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask_btf(ctx: BtfTracePointContext) -> i32 {
    let (tgid, tid) = current();
    if tracked_or_joining(tgid, tid).is_none() {
        return 0;
    }
    // TP_PROTO(struct task_struct *task, u64 clone_flags)
    let task: u64 = crate::arg(&ctx, 0) as _;
    let clone_flags: u64 = crate::arg(&ctx, 1) as _;
    // SAFETY: offset from this kernel's BTF; the new task is live, and
    // known to the verifier by its type.
    match unsafe { kread::<u32>(task, config!(task_pid).into(), true) } {
        Some(child) => newtask(child, clone_flags),
        None => bump(counter::READ_FAILED),
    }
    0
}

/// A tracked task created task `child`: a new process joins the tree.
#[inline(always)]
fn newtask(child: u32, clone_flags: u64) {
    let (tgid, tid) = current();
    let is_thread = clone_flags & CLONE_THREAD != 0;
    let mut flags = 0;
    let mut cookie = 0;
    let ts = now();
    if is_thread {
        flags |= fork_flags::THREAD;
    } else if config!(flags) & config_flags::FOLLOW_CHILDREN == 0 {
        // Only the root is followed.
        return;
    } else {
        // Boot time is unique enough per pid: two processes with one pid
        // cannot be created in the same nanosecond.
        cookie = ts | 1;
        // A full map is counted and flagged; userspace says so. (No aya-log
        // here: its formatting was most of this hot program's instructions.)
        let t = Tracked {
            cookie,
            ..Tracked::default()
        };
        mark(child, true);
        if TRACKED.insert(child, t, 0).is_err() {
            bump(counter::TRACKED_FULL);
            flags |= fork_flags::UNTRACKED;
        }
    }
    send(ForkEvent {
        hdr: header(kind::FORK, tgid, tid, ts),
        child,
        flags,
        clone_flags,
        cookie,
        comm: comm(),
    });
}

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    exec_args(
        &ctx,
        config!(execve_filename),
        config!(execve_argv),
        config!(execve_envp),
        0,
    )
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    exec_args(
        &ctx,
        config!(execveat_filename),
        config!(execveat_argv),
        config!(execveat_envp),
        exec_flags::EXECVEAT,
    )
}

#[inline(always)]
fn exec_args(
    ctx: &TracePointContext,
    off_filename: u16,
    off_argv: u16,
    off_envp: u16,
    flags: u16,
) -> u32 {
    match try_exec_args(ctx, off_filename, off_argv, off_envp, flags) {
        Ok(()) => 0,
        Err(_) => {
            bump(counter::READ_FAILED);
            0
        }
    }
}

/// Reads the path and argv of an exec while the caller's memory still holds
/// them: once the exec succeeds they are gone, and a process that lives a
/// millisecond has no /proc entry left to read.
#[inline(always)]
fn try_exec_args(
    ctx: &TracePointContext,
    off_filename: u16,
    off_argv: u16,
    off_envp: u16,
    flags: u16,
) -> Result<(), i32> {
    let (tgid, tid) = current();
    if tracked(tgid).is_none() {
        return Ok(());
    }
    // SAFETY: offsets come from this kernel's syscall tracepoint format.
    let filename: u64 = unsafe { ctx.read_at(off_filename as usize)? };
    let argv: u64 = unsafe { ctx.read_at(off_argv as usize)? };
    let ev: *mut ExecArgsEvent = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: `ev` points at this CPU's scratch slot.
    unsafe {
        let name = (*ev).filename.as_mut_ptr();
        if bpf_probe_read_user_str(name.cast(), FILENAME_LEN as u32, filename as *const _) < 0 {
            *name = 0;
        }
        send_strings(ev, kind::EXEC_ARGS, tgid, tid, argv, flags);
        if off_envp != 0 {
            // The environment, read here for the same reason as argv; what
            // of it is kept is userspace's policy (names, values on request).
            let envp: u64 = ctx.read_at(off_envp as usize)?;
            *name = 0;
            send_strings(ev, kind::EXEC_ENV, tgid, tid, envp, flags);
        }
    }
    Ok(())
}

/// Reads the NUL-terminated strings of the user array `vec` (argv or envp)
/// into `ev` and sends them as a `kind` record.
///
/// # Safety
/// `ev` must point at this CPU's scratch slot: each read starts below
/// `ARGV_LEN` and reads at most `ARGV_LEN` bytes into a `2 * ARGV_LEN` buffer.
#[inline(always)]
unsafe fn send_strings(
    ev: *mut ExecArgsEvent,
    kind: u32,
    tgid: u32,
    tid: u32,
    vec: u64,
    mut flags: u16,
) {
    // SAFETY: as the caller promises; user pointers are read with the
    // probe helpers, which fail rather than fault.
    unsafe {
        let buf = (*ev).argv.as_mut_ptr();
        let mut off: usize = 0;
        let mut argc: u16 = 0;
        let mut i: u32 = 0;
        while i < MAX_ARGS {
            let p: u64 = bpf_probe_read_user((vec as *const u64).add(i as usize)).unwrap_or(0);
            if p == 0 {
                break;
            }
            if off >= ARGV_LEN {
                flags |= exec_flags::TRUNCATED;
                break;
            }
            let start = off & (ARGV_LEN - 1);
            let n = bpf_probe_read_user_str(buf.add(start).cast(), ARGV_LEN as u32, p as *const _);
            if n <= 0 {
                break;
            }
            off = start + n as usize;
            argc += 1;
            i += 1;
        }
        if i == MAX_ARGS {
            let more: u64 =
                bpf_probe_read_user((vec as *const u64).add(MAX_ARGS as usize)).unwrap_or(0);
            if more != 0 {
                flags |= exec_flags::TRUNCATED;
            }
        }
        if off > ARGV_LEN {
            flags |= exec_flags::TRUNCATED;
            off = ARGV_LEN;
        }
        if flags & exec_flags::TRUNCATED != 0 {
            bump(counter::ARGV_TRUNCATED);
        }
        (*ev).head = ExecArgsHeader {
            hdr: header(kind, tgid, tid, now()),
            argv_len: off as u16,
            argc,
            flags,
            _pad: 0,
        };
        // The mask is a no-op at run time (off <= ARGV_LEN); it proves the
        // bound to the verifier.
        let len = size_of::<ExecArgsHeader>() + FILENAME_LEN + (off & (2 * ARGV_LEN - 1));
        let bytes = core::slice::from_raw_parts(ev as *const u8, len);
        if EVENTS.output::<[u8]>(bytes, 0).is_err() {
            bump(counter::RINGBUF_FULL);
        }
    }
}

/// An exec succeeded; comm is already the new program's.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    if tracked_or_joining(tgid, tid).is_none() {
        return 0;
    }
    // SAFETY: offset from this kernel's tracepoint format.
    let old_tid = match unsafe { ctx.read_at::<u32>(config!(exec_old_pid) as usize) } {
        Ok(v) => v,
        Err(_) => {
            bump(counter::READ_FAILED);
            tid
        }
    };
    let ts = now();
    match EXEC_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot: tracepoint programs do not nest
        // on a CPU, and the BTF exec program is not loaded beside this one.
        Some(ev) if config!(task_fs) != 0 => unsafe { exec_with_cwd(ev, old_tid, ts) },
        _ => exec(old_tid, ts, false),
    }
    0
}

/// Starts an `EXEC_FULL` record in `ev`: who the process is now, with its
/// path, argv, environment and working directory all marked `UNREAD` until
/// read.
///
/// # Safety
/// `ev` must point at this CPU's `EXEC_SCRATCH` slot.
#[inline(always)]
unsafe fn unread_record(ev: *mut ExecFullEvent, old_tid: u32, ts: u64, btf: bool) {
    // SAFETY: as the caller promises.
    unsafe {
        (*ev).head = ExecFullHeader {
            exec: exec_event(kind::EXEC_FULL, old_tid, ts, btf),
            argv_len: 0,
            env_len: 0,
            argv_flags: exec_flags::UNREAD,
            env_flags: exec_flags::UNREAD,
            cwd_len: 0,
            cwd_flags: exec_flags::UNREAD,
            _pad: 0,
        };
        *(*ev).filename.as_mut_ptr() = 0;
    }
}

/// The classic hooks' exec record with the working directory (argv and
/// the environment came from the syscall tracepoints): an `EXEC_FULL`
/// whose argv and environment are marked `UNREAD`.
///
/// # Safety
/// `ev` must point at this CPU's `EXEC_SCRATCH` slot.
#[inline(always)]
unsafe fn exec_with_cwd(ev: *mut ExecFullEvent, old_tid: u32, ts: u64) {
    // SAFETY: as the caller promises; the task is the current one.
    unsafe {
        unread_record(ev, old_tid, ts, false);
        let len = core::ptr::addr_of_mut!((*ev).head.cwd_len);
        (*ev).head.cwd_flags = cwd((*ev).strings.as_mut_ptr(), len, current_task(false));
        send_record(ev);
    }
}

/// Sends the `EXEC_FULL` record in `ev`, as long as its lengths say.
///
/// # Safety
/// `ev` must point at this CPU's `EXEC_SCRATCH` slot.
#[inline(always)]
unsafe fn send_record(ev: *mut ExecFullEvent) {
    // SAFETY: as the caller promises.
    unsafe {
        // argv and the environment are at most ARGV_LEN each and the
        // working directory at most CWD_LEN, so the mask (for the verifier)
        // changes nothing.
        let strings = ((*ev).head.argv_len as usize
            + (*ev).head.env_len as usize
            + (*ev).head.cwd_len as usize)
            & (4 * ARGV_LEN - 1);
        let len = size_of::<ExecFullHeader>() + FILENAME_LEN + strings;
        let bytes = core::slice::from_raw_parts(ev as *const u8, len);
        if EVENTS.output::<[u8]>(bytes, 0).is_err() {
            bump(counter::RINGBUF_FULL);
        }
    }
}

/// The same hook as a BTF tracepoint. The path, argv and environment are
/// read here, from the new program's own memory, where the kernel has just
/// copied them (`mm->arg_start..arg_end`, `env_start..env_end`): one read
/// each, no syscall tracepoint, and only for execs that succeed. All of it
/// goes in one record with who the process now is (`EXEC_FULL`).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec_btf(ctx: BtfTracePointContext) -> i32 {
    let (tgid, tid) = current();
    if tracked_or_joining(tgid, tid).is_none() {
        return 0;
    }
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let old_tid = crate::arg(&ctx, 1) as u32;
    let bprm: u64 = crate::arg(&ctx, 2) as _;
    let ts = now();
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        // Never for index 0 of an array; the identity alone, then.
        exec(old_tid, ts, true);
        return 0;
    };
    // SAFETY: this CPU's scratch slot, used by this program alone (a BTF
    // tracepoint does not nest on a CPU).
    unsafe { exec_full(ev, old_tid, bprm, ts) };
    0
}

/// Builds and sends an exec's whole record in `ev`: who the process is now,
/// then its path, argv and environment, each marked `UNREAD` when it could
/// not be read (counted as a read failure).
///
/// # Safety
/// `ev` must point at this CPU's `EXEC_SCRATCH` slot.
#[inline(always)]
unsafe fn exec_full(ev: *mut ExecFullEvent, old_tid: u32, bprm: u64, ts: u64) {
    // SAFETY (all): as the caller promises, `ev` is the scratch slot; the
    // offsets are from this kernel's BTF; the task, its mm and bprm are live
    // during the hook; user memory is read with the probe helper, which
    // fails rather than faults.
    unsafe {
        unread_record(ev, old_tid, ts, true);
        // The working directory first, at a fixed place past where argv
        // and the environment can reach, then moved down to follow them:
        // walked after them, the walk was verified once for each way their
        // reads can end (43,647 instructions against 10,000).
        let walked = (*ev).strings.as_mut_ptr().add(2 * ARGV_LEN);
        let len = core::ptr::addr_of_mut!((*ev).head.cwd_len);
        if config!(task_fs) != 0 {
            (*ev).head.cwd_flags = cwd(walked, len, current_task(false));
        }
        if exec_strings(ev, bprm).is_err() {
            bump(counter::READ_FAILED);
        }
        let used = (*ev).head.argv_len as usize + (*ev).head.env_len as usize;
        let n = *len as u32 & (2 * CWD_LEN as u32 - 1);
        if (*ev).head.cwd_flags != 0 {
            // Not walked (its length is 0).
        } else if used >= 2 * ARGV_LEN {
            // No room after argv and the environment, both at their
            // longest: not sent (a 0 length with no flag would read as `/`).
            (*ev).head.cwd_flags = exec_flags::TRUNCATED;
            *len = 0;
        } else if n > 0
            && generated::bpf_probe_read_kernel(
                (*ev)
                    .strings
                    .as_mut_ptr()
                    .add(used & (2 * ARGV_LEN - 1))
                    .cast(),
                n,
                walked as *const _,
            ) < 0
        {
            (*ev).head.cwd_flags = exec_flags::UNREAD;
            *len = 0;
        }
        send_record(ev);
    }
}

/// Reads an exec's path, argv and environment into `ev`, setting their
/// lengths and flags as it goes.
///
/// # Safety
/// As [`exec_full`].
#[inline(always)]
unsafe fn exec_strings(ev: *mut ExecFullEvent, bprm: u64) -> Result<(), i64> {
    // SAFETY: as the caller promises (see `exec_full`).
    unsafe {
        // The task, its mm and bprm are known to the verifier by type.
        let task = current_task(true);
        let mm: u64 = kread(task, config!(task_mm).into(), true).ok_or(-1i64)?;
        let field = |off: u16| kread::<u64>(mm, off.into(), true).ok_or(-1i64);
        let name = (*ev).filename.as_mut_ptr();
        let path: u64 = kread(bprm, config!(bprm_filename).into(), true).ok_or(-1i64)?;
        if generated::bpf_probe_read_kernel_str(name.cast(), FILENAME_LEN as u32, path as *const _)
            < 0
        {
            *name = 0;
        }
        let strings = (*ev).strings.as_mut_ptr();
        let (start, end) = (field(config!(mm_arg_start))?, field(config!(mm_arg_end))?);
        let (argv, flags) = read_block(strings, start, end);
        (*ev).head.argv_len = argv as u16;
        (*ev).head.argv_flags = flags;
        // The environment right after argv: an offset below 2 * ARGV_LEN
        // and a length below it too, inside the 4 * ARGV_LEN buffer.
        let (start, end) = (field(config!(mm_env_start))?, field(config!(mm_env_end))?);
        let (env, flags) = read_block(strings.add(argv & (2 * ARGV_LEN - 1)), start, end);
        (*ev).head.env_len = env as u16;
        (*ev).head.env_flags = flags;
    }
    Ok(())
}

/// Writes the current task's working directory into `buf`, as the path's
/// components from the last to the first, each ending in a NUL, walking
/// `d_parent` up to each mount's root and from there to the mount it sits
/// on (what `d_path` does), up to the root of its mount namespace: the
/// length written (0 unless whole) and [`exec_flags`] (`TRUNCATED`: deeper than
/// `CWD_DEPTH` or longer than `CWD_LEN`; `UNREAD`: a read failed). Read
/// here, in the exec, a process that lives a millisecond has it too.
///
/// The length so far lives in `len` (in the map value), read and written
/// through it at each step: a value the verifier then knows only by its
/// bounds, so the paths through the walk (a name here, a mount crossed
/// there) end in states it can prune, where a length kept in a register,
/// exact on each path, made it explore every combination (over its
/// million instructions).
///
/// # Safety
/// `buf` must have room for `CWD_LEN + NAME_LEN` bytes, `len` must be
/// valid for writes; `task` is the current task.
#[inline(always)]
unsafe fn cwd(buf: *mut u8, len: *mut u16, task: u64) -> u16 {
    // SAFETY: as the caller promises.
    let flags = unsafe { walk_cwd(buf, len, task) };
    if flags != 0 {
        // Only a whole path is sent.
        // SAFETY: as the caller promises.
        unsafe { *len = 0 };
    }
    flags
}

/// [`cwd`]'s walk, leaving what it wrote when it stops short.
///
/// # Safety
/// As [`cwd`].
#[inline(always)]
unsafe fn walk_cwd(buf: *mut u8, len: *mut u16, task: u64) -> u16 {
    // Plain reads through the helper: `struct mount` is reached from its
    // `vfsmount` by subtracting an offset, which typed pointers forbid.
    let rd = |base: u64, off: u16| {
        // SAFETY: offsets from this kernel's BTF; the helper checks the
        // address and fails rather than faults.
        unsafe { kread::<u64>(base, off.into(), false) }.filter(|&v| v != 0)
    };
    // SAFETY (the length's reads and writes): as the caller promises.
    let set = |v: u16| unsafe { core::ptr::write_volatile(len, v) };
    set(0);
    let failed = exec_flags::UNREAD;
    // SAFETY: as above.
    let Some(fs) = (unsafe { kread::<u64>(task, config!(task_fs).into(), false) }) else {
        return failed;
    };
    let (Some(mut mnt), Some(mut dentry)) =
        (rd(fs, config!(fs_pwd_mnt)), rd(fs, config!(fs_pwd_dentry)))
    else {
        return failed;
    };
    for _ in 0..CWD_DEPTH {
        let (Some(root), Some(parent)) = (
            rd(mnt, config!(vfsmount_root)),
            rd(dentry, config!(dentry_parent)),
        ) else {
            return failed;
        };
        if dentry == root || dentry == parent {
            // The root of a mount: go on from where it is mounted, or stop
            // at the namespace's root mount (its own parent).
            let mount = mnt - u64::from(config!(mount_mnt));
            let Some(up) = rd(mount, config!(mount_parent)) else {
                return failed;
            };
            if up == mount {
                return 0;
            }
            let Some(point) = rd(mount, config!(mount_mountpoint)) else {
                return failed;
            };
            (mnt, dentry) = (up + u64::from(config!(mount_mnt)), point);
            continue;
        }
        // SAFETY: as above.
        let off = unsafe { core::ptr::read_volatile(len) } as usize;
        if off > CWD_LEN - NAME_LEN {
            return exec_flags::TRUNCATED;
        }
        let Some(name) = rd(dentry, config!(dentry_name)) else {
            return failed;
        };
        // SAFETY: `off` is at most CWD_LEN - NAME_LEN (the mask says so to
        // the verifier), so NAME_LEN bytes fit; the helper checks `name`.
        let n = unsafe {
            generated::bpf_probe_read_kernel_str(
                buf.add(off & (CWD_LEN - 1)).cast(),
                NAME_LEN as u32,
                name as *const _,
            )
        };
        if n <= 0 {
            return failed;
        }
        set((off + n as usize) as u16);
        dentry = parent;
    }
    exec_flags::TRUNCATED
}

/// Reads the NUL-separated strings between `start` and `end` in user memory
/// into `buf`, at most `ARGV_LEN` bytes of them: their length (0 when the
/// read fails) and [`exec_flags`].
///
/// # Safety
/// `buf` must have room for `2 * ARGV_LEN` bytes.
#[inline(always)]
unsafe fn read_block(buf: *mut u8, start: u64, end: u64) -> (usize, u16) {
    let mut flags = 0;
    let mut len = end.saturating_sub(start);
    if len > ARGV_LEN as u64 {
        len = ARGV_LEN as u64;
        flags |= exec_flags::TRUNCATED;
        bump(counter::ARGV_TRUNCATED);
    }
    // SAFETY: as the caller promises; the mask bounds the length below
    // 2 * ARGV_LEN for the verifier (it is at most ARGV_LEN).
    if len > 0
        && unsafe {
            bpf_probe_read_user_buf(buf, len as u32 & (2 * ARGV_LEN as u32 - 1), start).is_err()
        }
    {
        len = 0;
    }
    (len as usize, flags)
}

/// `bpf_probe_read_user` into a buffer of a length known to the verifier.
///
/// # Safety
/// `dst` must have room for `len` bytes.
#[inline(always)]
unsafe fn bpf_probe_read_user_buf(dst: *mut u8, len: u32, src: u64) -> Result<(), i64> {
    // SAFETY: as the caller promises.
    let r = unsafe { generated::bpf_probe_read_user(dst.cast(), len, src as *const _) };
    if r < 0 { Err(r) } else { Ok(()) }
}

/// A tracked process finished an exec: who it is now. `btf`: called from a
/// BTF tracepoint (see [`kread`]).
#[inline(always)]
fn exec(old_tid: u32, ts: u64, btf: bool) {
    send(exec_event(kind::EXEC, old_tid, ts, btf));
}

/// Who the current process is after an exec, as a `kind` record.
#[inline(always)]
fn exec_event(kind: u32, old_tid: u32, ts: u64, btf: bool) -> ExecEvent {
    let (tgid, tid) = current();
    let ids = bpf_get_current_uid_gid();
    let (ns_pid, pid_ns) = pid_in_ns(btf).unwrap_or((0, 0));
    ExecEvent {
        hdr: header(kind, tgid, tid, ts),
        old_tid,
        uid: ids as u32,
        gid: (ids >> 32) as u32,
        ns_pid,
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: comm(),
        pid_ns,
        maxrss_pages: maxrss_pages(current_task(btf), btf)
            .map(|p| {
                if p > u32::MAX as u64 {
                    u32::MAX
                } else {
                    p as u32
                }
            })
            .unwrap_or(0),
    }
}

/// `task->signal->maxrss`, in pages: the peak resident size of the
/// memories the process's exec'd programs and exited threads dropped (the
/// kernel keeps it at each exec and at the last thread's exit, for
/// `ru_maxrss`). `None` where this kernel's layout is unknown.
#[inline(always)]
fn maxrss_pages(task: u64, btf: bool) -> Option<u64> {
    if config!(task_signal) == 0 {
        return None;
    }
    // SAFETY: offsets from this kernel's BTF; the current task and its
    // signal struct stay valid while it runs this hook.
    let signal: u64 = unsafe { kread(task, config!(task_signal).into(), btf) }?;
    if signal == 0 {
        return None;
    }
    unsafe { kread(signal, config!(signal_maxrss).into(), btf) }
}

/// The current task's pid in its own pid namespace and that namespace's
/// inode: `task->thread_pid->numbers[level]` (what `task_active_pid_ns`
/// and `/proc/PID/status`'s last `NSpid` read).
#[inline(always)]
fn pid_in_ns(btf: bool) -> Option<(u32, u32)> {
    if config!(task_thread_pid) == 0 {
        return None;
    }
    // SAFETY (all reads): offsets from this kernel's BTF; the current task
    // and its pid are live while it runs.
    unsafe {
        let task = current_task(btf);
        let pid: u64 = kread(task, config!(task_thread_pid).into(), btf)?;
        let level: u32 = kread(pid, config!(pid_level).into(), btf)?;
        // The kernel nests at most 32 pid namespaces.
        if level > 32 {
            return None;
        }
        // An offset known only at run time: the probe helper, whatever `btf`.
        let upid = pid
            + u64::from(config!(pid_numbers))
            + u64::from(level) * u64::from(config!(upid_size));
        let nr: u32 = kread(upid, 0, false)?;
        let ns: u64 = kread(upid, config!(upid_ns).into(), false)?;
        let inum: u32 = kread(ns, config!(pidns_inum).into(), false)?;
        Some((nr, inum))
    }
}

/// A thread exits (in its own context). When it is the last of its process,
/// the process leaves the tree; its figures are read by userspace from the
/// maps and from the free event that follows.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    let Some(t) = tracked(tgid) else {
        return 0;
    };
    let group_dead = if config!(exit_group_dead) != 0 {
        // SAFETY: offset from this kernel's tracepoint format.
        unsafe { ctx.read_at::<u8>(config!(exit_group_dead) as usize) }.unwrap_or(0) != 0
    } else {
        // Kernels before 6.16 lack the field; the leader's exit is the best
        // available sign (wrong only when the leader exits before its threads).
        tid == tgid
    };
    exit(t, group_dead, false);
    0
}

/// The same hook as a BTF tracepoint (kernels with `group_dead`, 6.16+:
/// the loader uses it only where the classic record has the field).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let (tgid, _) = current();
    let Some(t) = tracked(tgid) else {
        return 0;
    };
    // TP_PROTO(struct task_struct *p, bool group_dead)
    exit(t, crate::arg(&ctx, 1) & 0xff != 0, true);
    0
}

/// A tracked thread exits (in its own context). `btf`: called from a BTF
/// tracepoint (see [`kread`]).
#[inline(always)]
fn exit(t: Tracked, group_dead: bool, btf: bool) {
    let (tgid, tid) = current();
    let mut flags = 0;
    if group_dead {
        flags |= exit_flags::GROUP_DEAD;
    }
    let task = current_task(btf);
    let ts = now();
    let mut exit_code = 0;
    if config!(task_exit_code) != 0 {
        // SAFETY: offset from this kernel's BTF; a failed read is reported.
        match unsafe { kread::<u32>(task, config!(task_exit_code).into(), btf) } {
            Some(v) => {
                exit_code = v;
                flags |= exit_flags::CODE_VALID;
            }
            None => bump(counter::READ_FAILED),
        }
    }
    if config!(task_sum_exec_runtime) != 0 {
        // Without switches and faults: these figures stand in only when
        // the thread's last switch goes unseen (rarely), and the process's
        // counts are then left unknown rather than read on every exit.
        let figures = task_figures(task, false, btf);
        let d = Dying {
            tgid,
            tid,
            cookie: t.cookie,
            exit_ns: ts,
            flags: if figures.is_some() {
                exit_flags::STATS_VALID
            } else {
                0
            },
            figures: figures.unwrap_or_default(),
            _pad: 0,
        };
        // Added only if new: one map operation for the usual case.
        if DYING.insert(task, d, BPF_NOEXIST as u64).is_err() {
            // A thread remembered at this address already: its last switch
            // was never seen and its task_struct went to this one. Send what
            // was kept for it before this thread's entry replaces it.
            // SAFETY: copied out at once.
            if let Some(stale) = unsafe { DYING.get(task).copied() } {
                recover(&stale);
            }
            if DYING.insert(task, d, 0).is_err() {
                bump(counter::DYING_FULL);
            }
        }
    }
    let peak_rss_pages = peak_rss_pages(task, btf);
    if peak_rss_pages.is_some() {
        flags |= exit_flags::MEM_VALID;
    } else if config!(mm_hiwater_rss) != 0 {
        // Expected, and unread: a loss (no taskstats stands in for it).
        bump(counter::READ_FAILED);
    }
    if group_dead {
        let _ = TRACKED.remove(tgid);
        mark(tgid, false);
        if t.flags & tracked_flags::HAD_NET != 0 {
            flags |= exit_flags::HAD_NET;
        }
    }
    send(ExitEvent {
        hdr: header(kind::EXIT, tgid, tid, ts),
        exit_code,
        flags,
        cookie: t.cookie,
        comm: comm(),
        peak_rss_pages: peak_rss_pages.unwrap_or(0),
        maxrss_pages: if group_dead {
            maxrss_pages(task, btf).unwrap_or(0)
        } else {
            0
        },
    });
}

/// The peak resident size of the exiting thread's memory, in pages, as
/// taskstats computes it (`get_mm_hiwater_rss`): the larger of
/// `hiwater_rss` (updated lazily, when pages are unmapped) and the current
/// count of file, anonymous and shmem pages (each `percpu_counter`'s
/// central `count`, as `get_mm_counter` reads it; negative reads as 0).
/// `None` where this kernel fires the exit tracepoint after the memory is
/// gone (before 6.16) or the layout is unknown; `Some(0)` for a thread
/// with no memory of its own (a kernel thread).
#[inline(always)]
fn peak_rss_pages(task: u64, btf: bool) -> Option<u64> {
    if config!(mm_hiwater_rss) == 0 {
        return None;
    }
    // SAFETY (all reads): offsets from this kernel's BTF; the current task
    // and its memory stay valid while it runs this tracepoint, which comes
    // before `exit_mm`.
    let mm: u64 = unsafe { kread(task, config!(task_mm).into(), btf) }?;
    if mm == 0 {
        return Some(0);
    }
    let hiwater: u64 = unsafe { kread(mm, config!(mm_hiwater_rss).into(), btf) }?;
    let counter = |i: u64| -> Option<u64> {
        // Constant too: `i` is, at each use below.
        let off = config!(mm_rss_stat) as u64
            + i * config!(rss_stride) as u64
            + config!(rss_count) as u64;
        let v: i64 = unsafe { kread(mm, off, btf) }?;
        Some(if v > 0 { v as u64 } else { 0 })
    };
    // MM_FILEPAGES, MM_ANONPAGES and MM_SHMEMPAGES (MM_SWAPENTS, 2, is not resident).
    let rss = counter(0)? + counter(1)? + counter(3)?;
    Some(if hiwater > rss { hiwater } else { rss })
}

/// Sends, in place of a last switch that was never seen (its entry found
/// stale), the figures kept for the thread at its exit.
#[inline(always)]
fn recover(d: &Dying) {
    bump(counter::FREE_MISMATCH);
    send(FreeEvent {
        hdr: header(kind::FREE, d.tgid, d.tid, now()),
        cookie: d.cookie,
        figures: d.figures,
        flags: d.flags | exit_flags::KEPT,
        _pad: 0,
    });
}

/// `TASK_DEAD` in `task_struct.__state` (include/linux/sched.h; unchanged
/// since 4.14): the switch away from a task in that state is its last.
const TASK_DEAD: u32 = 0x80;

/// A context switch. The one away from a dead task is its last: the
/// scheduler has just added its final runtime and counted this switch, so
/// its figures are final, and the thread's free record is sent from here
/// (the free itself comes an RCU grace period later, and a hook on it was
/// seen to miss a few). Fires on every switch on the machine: the state
/// test comes first, the map lookup only for dead tasks.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let task: u64 = crate::arg(&ctx, 1);
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct
    // *next, unsigned int prev_state): the last argument since 5.18; before,
    // the state is read from `prev` (a constant branch: the verifier sees
    // only the one this kernel takes).
    let prev_state: u32 = if config!(flags) & pmet_common::config_flags::SWITCH_PREV_STATE != 0 {
        crate::arg(&ctx, 3) as u32
    } else {
        // SAFETY: offset from this kernel's BTF; `prev` is the running task.
        match unsafe { kread::<u32>(task, config!(task_state).into(), true) } {
            Some(s) => s,
            None => return 0,
        }
    };
    if prev_state & TASK_DEAD == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    let Some(d) = (unsafe { DYING.get(task).copied() }) else {
        return 0;
    };
    let _ = DYING.remove(task);
    if config!(task_pid) != 0 {
        // The address may hold a later task when an earlier last switch
        // went unseen.
        // SAFETY: offset from this kernel's BTF; the task is still allocated
        // (and known to the verifier by its type).
        let pid = unsafe { kread::<u32>(task, config!(task_pid).into(), true) };
        if pid != Some(d.tid) {
            recover(&d);
            return 0;
        }
    }
    let mut ev = FreeEvent {
        hdr: header(kind::FREE, d.tgid, d.tid, now()),
        cookie: d.cookie,
        ..FreeEvent::default()
    };
    if let Some(f) = task_figures(task, true, true) {
        ev.figures = f;
        ev.flags |= stats_valid();
    }
    send(ev);
    0
}

/// The flags that say which of [`task_figures`]' values were read.
#[inline(always)]
fn stats_valid() -> u32 {
    if config!(task_nvcsw) != 0 {
        exit_flags::STATS_VALID | exit_flags::CTX_VALID
    } else {
        exit_flags::STATS_VALID
    }
}

/// A task's CPU and storage figures, or `None` when this kernel's layout
/// does not give them (or a read fails, which is counted); with its context
/// switches and faults when `ctx`. `btf`: `task` is known to the verifier
/// by its type (see [`kread`]).
#[inline(always)]
fn task_figures(task: u64, ctx: bool, btf: bool) -> Option<TaskFigures> {
    let read = |off: u32| -> Option<u64> {
        if off == 0 {
            return None;
        }
        // SAFETY: offset from this kernel's BTF; the task is alive or not yet
        // freed in every caller.
        unsafe { kread(task, off.into(), btf) }
    };
    let read_ctx = |off: u32| if ctx { read(off).unwrap_or(0) } else { 0 };
    match (
        read(config!(task_sum_exec_runtime)),
        read(config!(task_utime)),
        read(config!(task_stime)),
    ) {
        (Some(sum_exec_runtime), Some(utime), Some(stime)) => Some(TaskFigures {
            sum_exec_runtime,
            utime,
            stime,
            read_bytes: read(config!(task_read_bytes)).unwrap_or(0),
            write_bytes: read(config!(task_write_bytes)).unwrap_or(0),
            cancelled_write_bytes: read(config!(task_cancelled_write_bytes)).unwrap_or(0),
            nvcsw: read_ctx(config!(task_nvcsw)),
            nivcsw: read_ctx(config!(task_nivcsw)),
            maj_flt: read_ctx(config!(task_maj_flt)),
        }),
        _ => {
            if config!(task_sum_exec_runtime) != 0 {
                bump(counter::READ_FAILED);
            }
            None
        }
    }
}
