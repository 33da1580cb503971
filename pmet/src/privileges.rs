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
    if euid != 0 {
        return Ok(None);
    }
    let Some(uid) = sudo_uid.and_then(|s| s.parse::<u32>().ok()) else {
        return Ok(None);
    };
    if uid == 0 {
        return Ok(None);
    }
    let mut a = match passwd_entry(None, uid) {
        Some((name, uid, gid, home)) => Account {
            groups: groups_of(&name, gid),
            name,
            uid,
            gid,
            home,
        },
        None => Account {
            name: uid.to_string(),
            uid,
            gid: uid,
            home: "/".into(),
            groups: vec![],
        },
    };
    if let Some(gid) = sudo_gid.and_then(|s| s.parse::<u32>().ok()) {
        a.gid = gid;
        if !a.groups.contains(&gid) {
            a.groups.push(gid);
        }
    }
    Ok(Some(a))
}

/// After the programs are loaded and the command started, keep only what the
/// rest of the run needs: signalling the command (which may run as another
/// user), reading other users' /proc entries, and writing the report where
/// the user asked.
pub fn drop_capabilities() {
    use caps::{CapSet, Capability};
    let keep: caps::CapsHashSet = [
        Capability::CAP_KILL,
        Capability::CAP_SYS_PTRACE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_FOWNER,
        Capability::CAP_CHOWN,
    ]
    .into_iter()
    .collect();
    for set in [CapSet::Effective, CapSet::Permitted] {
        let have = caps::read(None, set).unwrap_or_default();
        let target: caps::CapsHashSet = have.intersection(&keep).copied().collect();
        if let Err(e) = caps::set(None, set, &target) {
            log::debug!("could not drop capabilities ({set:?}): {e}");
        }
    }
    let _ = caps::clear(None, CapSet::Inheritable);
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
