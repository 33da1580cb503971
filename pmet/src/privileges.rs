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
