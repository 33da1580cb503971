//! Checking, before anything is loaded, that pmet holds what it needs, so
//! the error names the missing capability instead of a later EPERM.

use crate::error::Error;

/// Linux capability numbers pmet cares about.
pub mod cap {
    /// Administer networking (taskstats registration).
    pub const NET_ADMIN: u32 = 12;
    /// Catch-all administration (mounting tracefs; BPF on old kernels).
    pub const SYS_ADMIN: u32 = 21;
    /// Performance monitoring (tracing programs).
    pub const PERFMON: u32 = 38;
    /// Loading BPF programs and maps.
    pub const BPF: u32 = 39;
}

fn name(c: u32) -> &'static str {
    match c {
        cap::NET_ADMIN => "CAP_NET_ADMIN",
        cap::SYS_ADMIN => "CAP_SYS_ADMIN",
        cap::PERFMON => "CAP_PERFMON",
        cap::BPF => "CAP_BPF",
        _ => "a capability",
    }
}

/// Parses `CapEff:` from /proc/self/status text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The capabilities missing from `eff` for loading and attaching tracing
/// programs. CAP_SYS_ADMIN alone suffices (it implies the others).
pub fn missing_for_ebpf(eff: u64) -> Vec<&'static str> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(cap::SYS_ADMIN) {
        return Vec::new();
    }
    [cap::BPF, cap::PERFMON]
        .into_iter()
        .filter(|&c| !has(c))
        .map(name)
        .collect()
}

/// Whether this process holds `c`.
pub fn has(c: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective_caps)
        .is_some_and(|eff| eff & (1u64 << c) != 0)
}

/// The inode of the initial pid namespace, fixed by the kernel
/// (`PROC_PID_INIT_INO`).
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Fails when pmet is not in the initial pid namespace: eBPF programs name
/// processes by their pids there, pmet by its own namespace's.
pub fn check_pid_namespace() -> Result<(), Error> {
    match std::fs::read_link("/proc/self/ns/pid") {
        Ok(ns) if ns.as_os_str() != INIT_PID_NS => {
            Err(Error::PidNamespace(ns.to_string_lossy().into_owned()))
        }
        _ => Ok(()),
    }
}

/// Fails with a clear error when eBPF tracing is not permitted.
pub fn check_ebpf() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::Other(format!("cannot read /proc/self/status: {e}")))?;
    let eff = effective_caps(&status).unwrap_or(0);
    let missing = missing_for_ebpf(eff);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotRoot {
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_missing_caps() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(
            missing_for_ebpf(effective_caps(root).unwrap()),
            Vec::<&str>::new()
        );
        let user = "CapEff:\t0000000000000000\n";
        assert_eq!(
            missing_for_ebpf(effective_caps(user).unwrap()),
            ["CAP_BPF", "CAP_PERFMON"]
        );
        let bpf_only = 1u64 << cap::BPF;
        assert_eq!(missing_for_ebpf(bpf_only), ["CAP_PERFMON"]);
        assert_eq!(effective_caps("nothing"), None);
    }
}

/// A user account, as the command will run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: std::path::PathBuf,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
}

fn passwd_entry(
    by_name: Option<&str>,
    by_uid: u32,
) -> Option<(String, u32, u32, std::path::PathBuf)> {
    use std::ffi::{CStr, CString};
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid buffers; the result points into `pw`/`buf`, read below
    // while they live.
    let r = unsafe {
        match by_name {
            Some(n) => {
                let c = CString::new(n).ok()?;
                libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out)
            }
            None => libc::getpwuid_r(by_uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out),
        }
    };
    if r != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getpw*_r filled these with NUL-terminated strings in `buf`.
    let name = unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned();
    let home = unsafe { CStr::from_ptr(pw.pw_dir) }
        .to_string_lossy()
        .into_owned();
    Some((name, pw.pw_uid, pw.pw_gid, home.into()))
}

fn groups_of(name: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = std::ffi::CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut v = vec![0 as libc::gid_t; n as usize];
        let before = n;
        // SAFETY: valid buffer of `n` entries; n is updated to the count.
        let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, v.as_mut_ptr(), &mut n) };
        if r >= 0 {
            v.truncate(n.max(0) as usize);
            return v;
        }
        if n <= before {
            n = before * 2;
        }
        if n > 65536 {
            return vec![gid];
        }
    }
}

/// The name of the user with this id, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    passwd_entry(None, uid).map(|e| e.0)
}

/// Looks up a user by name or numeric id.
pub fn account(user: &str) -> Option<Account> {
    let entry = passwd_entry(Some(user), 0).or_else(|| {
        let uid: u32 = user.parse().ok()?;
        passwd_entry(None, uid)
    })?;
    let (name, uid, gid, home) = entry;
    Some(Account {
        groups: groups_of(&name, gid),
        name,
        uid,
        gid,
        home,
    })
}

/// Who a process or a thread runs as: the identity pmet switches to for the
/// command it launches and for every file it writes for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Account {
    /// The identity to switch to for this account.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }
}

/// The user pmet acts for when it runs as root through sudo: the one named by
/// `SUDO_UID`/`SUDO_GID`, checked against the password and group databases.
/// `None` when pmet is not root, or root was not reached through sudo (or
/// sudo was run by root), so pmet acts as itself. A malformed or unknown
/// `SUDO_UID`, or a `SUDO_GID` that is not one of that user's groups, is an
/// error: guessing would mean acting as root for somebody who is not.
pub fn invoking_user(
    sudo_uid: Option<&str>,
    sudo_gid: Option<&str>,
    euid: u32,
) -> Result<Option<Account>, Error> {
    if euid != 0 {
        return Ok(None);
    }
    let Some(raw) = sudo_uid else {
        return Ok(None);
    };
    let uid: u32 = raw.trim().parse().map_err(|_| {
        Error::Usage(format!(
            "SUDO_UID={raw:?} is not a user id; run pmet through sudo, or unset SUDO_UID to act as root"
        ))
    })?;
    if uid == 0 {
        return Ok(None);
    }
    let Some((name, uid, gid, home)) = passwd_entry(None, uid) else {
        return Err(Error::Usage(format!(
            "SUDO_UID={uid} names no user in the password database; run pmet through sudo as a \
             real user, or unset SUDO_UID to act as root"
        )));
    };
    let mut a = Account {
        groups: groups_of(&name, gid),
        name,
        uid,
        gid,
        home,
    };
    if let Some(raw) = sudo_gid {
        let g: u32 = raw.trim().parse().map_err(|_| {
            Error::Usage(format!(
                "SUDO_GID={raw:?} is not a group id; run pmet through sudo, or unset SUDO_GID"
            ))
        })?;
        // sudo records the real gid of the user who ran it, which is always
        // one of that user's groups (newgrp and sg only pick among them).
        if !a.groups.contains(&g) && g != a.gid {
            return Err(Error::Usage(format!(
                "SUDO_GID={g} is not a group of {} (uid {uid}); run pmet through sudo, or unset SUDO_GID",
                a.name
            )));
        }
        a.gid = g;
    }
    if !a.groups.contains(&a.gid) {
        a.groups.push(a.gid);
    }
    Ok(Some(a))
}

/// The invoking user from this process's own environment and euid.
pub fn invoking_user_from_env() -> Result<Option<Account>, Error> {
    invoking_user(
        std::env::var("SUDO_UID").ok().as_deref(),
        std::env::var("SUDO_GID").ok().as_deref(),
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() },
    )
}

/// Who the launched command runs as: `--user`, else under sudo the user who
/// ran sudo, else pmet's own user (`None`: no switch). `--user root` keeps root.
pub fn command_account(
    user: Option<&str>,
    sudo_uid: Option<&str>,
    sudo_gid: Option<&str>,
    euid: u32,
) -> Result<Option<Account>, Error> {
    if let Some(u) = user {
        let a = account(u).ok_or_else(|| {
            Error::Usage(format!("no user named {u}; check the name with `id {u}`"))
        })?;
        if a.uid == euid {
            return Ok(None);
        }
        if euid != 0 {
            return Err(Error::Usage(format!(
                "--user {u} needs root: run `sudo pmet trace --user {u} ...`"
            )));
        }
        return Ok(Some(a));
    }
    invoking_user(sudo_uid, sudo_gid, euid)
}

/// Runs `f` with `creds` as this thread's identity, on a thread of its own
/// that switches user, groups and capabilities with raw syscalls (which, unlike
/// glibc's wrappers, change the calling thread only) and ends with `f`. The
/// rest of pmet keeps its privileges. With `None`, `f` runs here, as pmet.
///
/// Every file pmet creates for a user goes through this, so the kernel's own
/// permission checks decide what pmet may write: never more than the user
/// could. Fails, without running `f`, if the switch cannot be made.
pub fn as_user<R: Send>(
    creds: Option<&Credentials>,
    f: impl FnOnce() -> R + Send,
) -> std::io::Result<R> {
    let Some(c) = creds else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            switch_thread(c)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the thread writing as the user panicked",
            ))
        })
    })
}

fn switch_thread(c: &Credentials) -> std::io::Result<()> {
    use caps::{CapSet, Capability};
    // The main thread keeps SETUID/SETGID permitted but not effective once the
    // command runs; this thread raises them for the switch, then loses every
    // capability with its uids.
    for cap in [Capability::CAP_SETUID, Capability::CAP_SETGID] {
        let _ = caps::raise(None, CapSet::Effective, cap);
    }
    let check = |r: libc::c_long, what: &str| {
        if r == 0 {
            Ok(())
        } else {
            let e = std::io::Error::last_os_error();
            Err(std::io::Error::new(
                e.kind(),
                format!("cannot switch to uid {} ({what}): {e}", c.uid),
            ))
        }
    };
    // SAFETY: raw syscalls with valid arguments; they change this thread only.
    unsafe {
        check(
            libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()),
            "setgroups",
        )?;
        check(
            libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid),
            "setresgid",
        )?;
        check(
            libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid),
            "setresuid",
        )?;
        // Trust, but verify: a thread still root must never run `f`.
        let (uid, fsuid) = (
            libc::syscall(libc::SYS_geteuid) as u32,
            libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
        );
        if uid != c.uid || fsuid != c.uid {
            return Err(std::io::Error::other(format!(
                "switching to uid {} left the thread as uid {uid}",
                c.uid
            )));
        }
    }
    Ok(())
}

/// pmet's scheduling priority while it traces (nice value; the calling
/// thread only).
pub const TRACER_NICE: i32 = -10;

/// Raises the calling thread's scheduling priority to [`TRACER_NICE`]: a
/// tree of hundreds of runnable processes would otherwise get the tracer a
/// hundredth of a core under fair scheduling, and its ring buffer would
/// overflow. Called after the command is forked, which keeps its own.
/// Needs CAP_SYS_NICE (before capabilities are dropped); without it pmet
/// runs at its normal priority, said at debug level.
pub fn prefer_tracer() {
    // SAFETY: plain syscall; on Linux, PRIO_PROCESS with 0 is the calling
    // thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, TRACER_NICE) };
    if r != 0 {
        log::debug!(
            "could not raise pmet's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// After the programs are loaded and the command started, keep only what the
/// rest of the run needs: signalling the command (which may run as another
/// user) and reading other users' /proc entries. SETUID and SETGID stay
/// permitted, not effective, for the thread that writes files as the user
/// ([`as_user`]); pmet itself never chowns or writes as root for a user.
/// With `keep_bpf`, CAP_BPF stays too: kernels before 6.5 refuse every
/// `bpf()` call without it (reading a map through a descriptor pmet holds
/// included) while `kernel.unprivileged_bpf_disabled` is set, as Debian 11's
/// 5.10 has it ([`bpf_needs_capability`] tells).
pub fn drop_capabilities(keep_bpf: bool) {
    use caps::{CapSet, Capability};
    let mut effective: caps::CapsHashSet = [
        Capability::CAP_KILL,
        Capability::CAP_SYS_PTRACE,
        Capability::CAP_DAC_READ_SEARCH,
    ]
    .into_iter()
    .collect();
    if keep_bpf {
        effective.insert(Capability::CAP_BPF);
    }
    let mut permitted = effective.clone();
    permitted.extend([Capability::CAP_SETUID, Capability::CAP_SETGID]);
    // Effective first: it must stay a subset of permitted at every step.
    for (set, keep) in [
        (CapSet::Effective, &effective),
        (CapSet::Permitted, &permitted),
    ] {
        let have = caps::read(None, set).unwrap_or_default();
        let target: caps::CapsHashSet = have.intersection(keep).copied().collect();
        if let Err(e) = caps::set(None, set, &target) {
            log::debug!("could not drop capabilities ({set:?}): {e}");
        }
    }
    let _ = caps::clear(None, CapSet::Inheritable);
}

/// Whether this kernel needs CAP_BPF for pmet to read its own maps:
/// `reads_maps` is tried with CAP_BPF and CAP_SYS_ADMIN lowered (not
/// dropped), then they are raised again.
pub fn bpf_needs_capability(reads_maps: impl Fn() -> bool) -> bool {
    use caps::{CapSet, Capability};
    let lowered: Vec<Capability> = [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN]
        .into_iter()
        .filter(|&c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false))
        .filter(|&c| caps::drop(None, CapSet::Effective, c).is_ok())
        .collect();
    let works = reads_maps();
    for c in lowered {
        let _ = caps::raise(None, CapSet::Effective, c);
    }
    !works
}

#[cfg(test)]
mod account_tests {
    use super::*;

    #[test]
    fn root_and_nobody_resolve() {
        let r = account("root").unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        let n = account("65534").or_else(|| account("nobody")).unwrap();
        assert_eq!(n.uid, 65534);
        assert!(account("no-such-user-pmet").is_none());
    }

    #[test]
    fn sudo_user_becomes_the_command_user() {
        let a = command_account(None, Some("65534"), Some("65534"), 0)
            .unwrap()
            .unwrap();
        assert_eq!((a.uid, a.gid), (65534, 65534));
        assert!(a.groups.contains(&65534));
        assert_eq!(
            command_account(None, Some("0"), Some("0"), 0).unwrap(),
            None
        );
        assert_eq!(command_account(None, None, None, 0).unwrap(), None);
        assert_eq!(
            command_account(Some("root"), Some("65534"), None, 0).unwrap(),
            None
        );
        let e = command_account(Some("no-such-user-pmet"), None, None, 0).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        let e = command_account(Some("root"), None, None, 1000).unwrap_err();
        assert!(e.to_string().contains("needs root"), "{e}");
    }
}
