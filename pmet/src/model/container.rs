//! Which container a process runs in, read from its cgroup path alone: the
//! runtimes name their cgroups after the container, so no runtime socket is
//! needed (and none is trusted).

use serde::{Deserialize, Serialize};

/// A container, as its cgroup names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The container id (64 hex digits for OCI runtimes; the name for LXC).
    pub id: String,
    /// `docker`, `containerd`, `cri-o`, `podman` or `lxc`.
    pub runtime: String,
}

fn hex64(s: &str) -> Option<&str> {
    let id = s.get(..64)?;
    (id.bytes().all(|b| b.is_ascii_hexdigit())
        && s[64..].chars().all(|c| c == '.' || c.is_ascii_alphabetic()))
    .then_some(id)
}

/// The container a cgroup path names, if any. The innermost match wins
/// (a container inside a pod's slice is the container, not the pod).
pub fn container(path: &str) -> Option<Container> {
    const SCOPES: [(&str, &str); 4] = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ];
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate().rev() {
        for (prefix, runtime) in SCOPES {
            if let Some(id) = part.strip_prefix(prefix).and_then(hex64) {
                return Some(Container {
                    id: id.to_owned(),
                    runtime: runtime.into(),
                });
            }
        }
        // cgroupfs drivers: /docker/<id>, /kubepods/.../<id>.
        if i > 0
            && parts[i - 1] == "docker"
            && let Some(id) = hex64(part)
        {
            return Some(Container {
                id: id.to_owned(),
                runtime: "docker".into(),
            });
        }
        if let Some(name) = part.strip_prefix("lxc.payload.")
            && !name.is_empty()
        {
            return Some(Container {
                id: name.to_owned(),
                runtime: "lxc".into(),
            });
        }
    }
    None
}

/// The Kubernetes pod uid a cgroup path names (`kubepods…pod<uid>`; systemd
/// slices write its dashes as underscores).
pub fn k8s_pod_uid(path: &str) -> Option<String> {
    if !path.contains("kubepods") {
        return None;
    }
    path.split('/').rev().find_map(|part| {
        let uid = part.rsplit_once("pod")?.1;
        let uid = uid.strip_suffix(".slice").unwrap_or(uid).replace('_', "-");
        let ok = uid.len() == 36
            && uid.bytes().enumerate().all(|(i, b)| {
                matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
            });
        ok.then_some(uid)
    })
}

/// The id of the container whose cgroup has this id (the cgroup
/// directory's inode), found through its path.
pub fn container_of_cgroup(cgroup_id: u64) -> Option<String> {
    if cgroup_id == 0 {
        return None;
    }
    let paths = crate::collect::cgroup::paths_of(&std::collections::HashSet::from([cgroup_id]));
    paths
        .get(&cgroup_id)
        .and_then(|path| container(path))
        .map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff0";

    #[test]
    fn each_runtime_is_recognised_by_its_cgroup() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (format!("/docker/{ID}"), "docker"),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                "containerd",
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/crio-{ID}.scope"),
                "cri-o",
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                "podman",
            ),
        ];
        for (path, runtime) in cases {
            let c = container(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((c.id.as_str(), c.runtime.as_str()), (ID, runtime), "{path}");
        }
        let lxc = container("/lxc.payload.web1/init.scope").unwrap();
        assert_eq!((lxc.id.as_str(), lxc.runtime.as_str()), ("web1", "lxc"));
        for none in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/docker-abc.scope",
            "/docker/short",
        ] {
            assert_eq!(container(none), None, "{none}");
        }
    }

    #[test]
    fn a_pod_uid_is_read_from_either_spelling() {
        let uid = "0f2d5a4e-1b2c-4d3e-9f8a-7b6c5d4e3f21";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(k8s_pod_uid(&systemd).as_deref(), Some(uid));
        assert_eq!(
            container(&systemd).map(|c| c.runtime),
            Some("containerd".into())
        );
        let cgroupfs = format!("/kubepods/besteffort/pod{uid}/{ID}");
        assert_eq!(k8s_pod_uid(&cgroupfs).as_deref(), Some(uid));
        assert_eq!(k8s_pod_uid("/system.slice/pod.service"), None);
    }
}
