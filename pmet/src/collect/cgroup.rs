//! Where a process runs, from cgroupfs: the kernel side reports a cgroup v2
//! id (the inode of the cgroup's directory), which is turned into its path
//! here, once per distinct id, by walking the v2 hierarchy.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::model::event::Ids;

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` on unified systems, its
/// `unified` subdirectory on hybrid ones.
pub fn v2_root() -> Option<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return Some(base.to_owned());
    }
    let unified = base.join("unified");
    unified.join("cgroup.procs").exists().then_some(unified)
}

/// Visits `top` and every directory below it, depth first; `visit` says
/// whether to go into a directory's children.
fn walk(top: &Path, mut visit: impl FnMut(&Path) -> bool) {
    let mut stack = vec![top.to_owned()];
    while let Some(dir) = stack.pop() {
        if !visit(&dir) {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

/// The paths (relative to the v2 root, starting with `/`) of the cgroups
/// with these ids; ids not found are left out.
pub fn paths_of(ids: &HashSet<u64>) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let Some(root) = v2_root() else {
        return found;
    };
    walk(&root, |dir| {
        if found.len() == ids.len() {
            return false;
        }
        if let Ok(meta) = std::fs::metadata(dir)
            && ids.contains(&meta.ino())
        {
            let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            found.insert(meta.ino(), format!("/{}", rel.display()));
        }
        true
    });
    found
}

/// The cgroups a run follows (`--cgroup`, `--container`): one and every
/// cgroup below it, with the processes in them now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// The cgroup's path under the v2 root, starting with `/`.
    pub path: String,
    /// Its id and its descendants' (directory inodes).
    pub ids: Vec<u64>,
    /// The processes in them now.
    pub pids: Vec<u32>,
}

/// The cgroup at `path`: absolute under the v2 root (`/system.slice/x`), or
/// a full path into the v2 mount. The error says what to give instead.
pub fn scope_at(path: &str) -> Result<Scope, String> {
    let root = v2_root().ok_or_else(|| {
        "no cgroup v2 hierarchy here (--cgroup needs /sys/fs/cgroup or /sys/fs/cgroup/unified)"
            .to_owned()
    })?;
    let given = Path::new(path);
    let dir = if given.starts_with(&root) {
        given.to_owned()
    } else {
        root.join(path.trim_start_matches('/'))
    };
    if !dir.join("cgroup.procs").exists() {
        return Err(format!(
            "--cgroup {path}: no such cgroup under {} (give its path there, e.g. /system.slice/foo.service)",
            root.display()
        ));
    }
    let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
    let mut scope = Scope {
        path: format!("/{}", rel.display()),
        ..Scope::default()
    };
    walk(&dir, |d| {
        let Ok(meta) = std::fs::metadata(d) else {
            return false;
        };
        scope.ids.push(meta.ino());
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            scope
                .pids
                .extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        true
    });
    Ok(scope)
}

/// The cgroup of the container whose id starts with `prefix` (docker,
/// containerd, CRI-O, podman, LXC names, as the report recognises them):
/// found by walking the hierarchy, no runtime socket asked.
pub fn container_scope(prefix: &str) -> Result<Scope, String> {
    let root = v2_root()
        .ok_or_else(|| "no cgroup v2 hierarchy here (--container needs one)".to_owned())?;
    if prefix.len() < 4 {
        return Err(format!(
            "--container {prefix}: give at least 4 characters of the container id"
        ));
    }
    let mut hits: Vec<(String, String)> = Vec::new();
    walk(&root, |d| {
        let rel = format!(
            "/{}",
            d.strip_prefix(&root).unwrap_or(Path::new("")).display()
        );
        if let Some(c) = crate::model::container::container(&rel)
            && c.id.starts_with(prefix)
        {
            // The outermost cgroup of the container; its children are in
            // its scope anyway.
            if !hits.iter().any(|(_, p)| rel.starts_with(p.as_str())) {
                hits.push((c.id, rel));
            }
            return false;
        }
        true
    });
    let ids: HashSet<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
    match (ids.len(), hits.first()) {
        (1, Some((_, path))) => scope_at(path),
        (0, _) => Err(format!(
            "--container {prefix}: no running container's cgroup matches (is it running on this host?)"
        )),
        (n, _) => Err(format!(
            "--container {prefix}: {n} containers match; give more of the id"
        )),
    }
}

/// Who `pid` runs as and its cgroup v2 id, from /proc under `proc_root`
/// (for a process pmet attaches to, which makes no exec to report them).
pub fn ids_of(proc_root: &Path, pid: u32) -> Option<Ids> {
    let dir = proc_root.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let cgroup_id = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|t| {
            let path = t.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
            let root = v2_root()?;
            std::fs::metadata(root.join(path.trim_start_matches('/')))
                .ok()
                .map(|m| m.ino())
        })
        .unwrap_or(0);
    // The last NSpid is its pid in its own namespace; the namespace is
    // the inode behind ns/pid.
    let ns_pid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last()?.parse().ok());
    let pid_ns = std::fs::metadata(dir.join("ns").join("pid"))
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok());
    Some(Ids {
        uid: field("Uid:")?,
        gid: field("Gid:")?,
        cgroup_id,
        pid_ns: pid_ns.and(ns_pid).and(pid_ns),
        ns_pid: pid_ns.and(ns_pid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_an_identity_and_its_cgroup_a_path() {
        let ids = ids_of(Path::new("/proc"), std::process::id()).unwrap();
        // SAFETY: no preconditions.
        assert_eq!(ids.uid, unsafe { libc::getuid() });
        if v2_root().is_some() && ids.cgroup_id != 0 {
            let paths = paths_of(&HashSet::from([ids.cgroup_id]));
            assert!(paths[&ids.cgroup_id].starts_with('/'), "{paths:?}");
        }
    }
}
