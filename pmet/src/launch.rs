//! Starting the traced command so that nothing it does is missed: the child
//! is forked, waits on a pipe until the loader has put its pid in the
//! kernel's tracked set, and only then execs.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
};

use crate::error::Error;

/// Finds `cmd` as a shell would: a name with a slash is a path, anything else
/// is looked up in `PATH`.
pub fn resolve(cmd: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, Error> {
    let shown = cmd.to_string_lossy().into_owned();
    if cmd.is_empty() {
        return Err(Error::CommandNotFound(shown));
    }
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        return check_executable(&p).map(|()| p);
    }
    let path_var = path_var
        .map(OsStr::to_owned)
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut denied = None;
    for dir in std::env::split_paths(&path_var) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let p = dir.join(cmd);
        if !p.is_file() {
            continue;
        }
        match check_executable(&p) {
            Ok(()) => return Ok(p),
            Err(e) => denied = denied.or(Some(e)),
        }
    }
    Err(denied.unwrap_or(Error::CommandNotFound(shown)))
}

fn check_executable(p: &Path) -> Result<(), Error> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::CommandNotFound(p.display().to_string()))?;
    if !p.exists() {
        return Err(Error::CommandNotFound(p.display().to_string()));
    }
    let not_exec = |source| Error::NotExecutable {
        path: p.display().to_string(),
        source,
    };
    if p.is_dir() {
        return Err(not_exec(io::Error::from_raw_os_error(libc::EISDIR)));
    }
    // SAFETY: valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
        return Err(not_exec(io::Error::last_os_error()));
    }
    Ok(())
}

pub use crate::privileges::Credentials;

/// Resource limits pmet raises for itself (locked memory for BPF maps, open
/// files for its many fds) and gives back to the command as they were.
const RESTORED_LIMITS: [Resource; 2] = [libc::RLIMIT_MEMLOCK, libc::RLIMIT_NOFILE];

/// `setrlimit`'s resource type: glibc's own, an `int` elsewhere (musl).
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// A command ready to start: every allocation done before fork, because the
/// child of a multi-threaded process may only make async-signal-safe calls.
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    creds: Option<Credentials>,
    /// The directory it starts in (pmet's own when `None`).
    cwd: Option<CString>,
    /// [`RESTORED_LIMITS`] as they were before pmet raised them.
    limits: Vec<(Resource, libc::rlimit)>,
}

fn cstring(s: impl Into<Vec<u8>>) -> Result<CString, Error> {
    CString::new(s)
        .map_err(|_| Error::Usage("arguments and environment cannot contain NUL bytes".into()))
}

impl Prepared {
    /// Prepares `argv` (argv[0] resolved through PATH) with the given
    /// environment and, when `creds` is set, a switch to that user.
    pub fn new(
        argv: &[OsString],
        env: impl IntoIterator<Item = (OsString, OsString)>,
        creds: Option<Credentials>,
    ) -> Result<Self, Error> {
        let first = argv
            .first()
            .ok_or_else(|| Error::Usage("no command given".into()))?;
        let env: Vec<(OsString, OsString)> = env.into_iter().collect();
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let path = resolve(first, path_var)?;
        Ok(Self {
            path: cstring(path.into_os_string().into_vec())?,
            argv: argv
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            envp: env
                .into_iter()
                .map(|(k, v)| {
                    let mut kv = k.into_vec();
                    kv.push(b'=');
                    kv.extend(v.into_vec());
                    cstring(kv)
                })
                .collect::<Result<_, _>>()?,
            creds,
            cwd: None,
            limits: RESTORED_LIMITS
                .into_iter()
                .filter_map(|r| {
                    let mut l = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    // SAFETY: valid out-pointer.
                    (unsafe { libc::getrlimit(r, &mut l) } == 0).then_some((r, l))
                })
                .collect(),
        })
    }
}

impl Prepared {
    /// Starts the command in `dir`, checked now (as pmet can see it; the
    /// command's user is checked again when it starts).
    pub fn in_dir(mut self, dir: &std::path::Path) -> Result<Self, Error> {
        let cwd_error = |source| Error::Cwd {
            path: dir.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(dir).map_err(cwd_error)?;
        if !meta.is_dir() {
            return Err(cwd_error(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        self.cwd = Some(cstring(dir.as_os_str().as_bytes())?);
        Ok(self)
    }
}

/// A forked child waiting at the gate.
pub struct Gated {
    /// The child's pid.
    pub pid: u32,
    gate: Option<OwnedFd>,
    errors: OwnedFd,
    path: String,
    cwd: Option<String>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Raises this process's soft open-files limit to the hard one: pmet holds an
/// fd per BPF map and program, and a low soft limit would make loading fail
/// and fall back to polling. The command gets the old limit back.
pub fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                log::debug!("raising RLIMIT_NOFILE: {}", io::Error::last_os_error());
            }
        }
    }
}

/// Forks the child; it waits until [`Gated::release`].
pub fn spawn_gated(p: &Prepared) -> Result<Gated, Error> {
    let (gate_r, gate_w) = pipe().map_err(Error::Launch)?;
    let (err_r, err_w) = pipe().map_err(Error::Launch)?;
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = p
        .creds
        .as_ref()
        .map(|c| c.groups.clone())
        .unwrap_or_default();

    // SAFETY: fork in a multi-threaded process; the child below only makes
    // async-signal-safe calls on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Launch(io::Error::last_os_error()));
    }
    if pid == 0 {
        // Child.
        unsafe {
            let fail = |code: i32| -> ! {
                let e = *libc::__errno_location();
                libc::write(err_w.as_raw_fd(), (&raw const e).cast(), 4);
                libc::_exit(code)
            };
            // The parent's ends: holding our own gate's write end would keep
            // the read below from ever seeing EOF.
            libc::close(gate_w.as_raw_fd());
            libc::close(err_r.as_raw_fd());
            // Rust ignores SIGPIPE; a command must start with the default.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // Wait to be tracked. EOF means pmet is gone: never run untraced.
            let mut b = 0u8;
            loop {
                let n = libc::read(gate_r.as_raw_fd(), (&raw mut b).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(125);
            }
            // Raised for pmet, not for the command.
            for (r, l) in &p.limits {
                libc::setrlimit(*r, l);
            }
            if let Some(c) = &p.creds
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(c.gid) != 0
                    || libc::setuid(c.uid) != 0)
            {
                fail(125);
            }
            // As the command's user. A failure is sent negated, apart from
            // the exec's.
            if let Some(dir) = &p.cwd
                && libc::chdir(dir.as_ptr()) != 0
            {
                let e = -*libc::__errno_location();
                libc::write(err_w.as_raw_fd(), (&raw const e).cast(), 4);
                libc::_exit(126);
            }
            libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = *libc::__errno_location();
            fail(if e == libc::ENOENT { 127 } else { 126 });
        }
    }
    drop(gate_r);
    drop(err_w);
    Ok(Gated {
        pid: pid as u32,
        gate: Some(gate_w),
        errors: err_r,
        path: p.path.to_string_lossy().into_owned(),
        cwd: p.cwd.as_ref().map(|c| c.to_string_lossy().into_owned()),
    })
}

impl Gated {
    /// Lets the child exec, and reports whether the exec succeeded.
    pub fn release(mut self) -> Result<(), Error> {
        let gate = self.gate.take().expect("released once");
        let b = 1u8;
        // SAFETY: valid fd and buffer.
        if unsafe { libc::write(gate.as_raw_fd(), (&raw const b).cast(), 1) } != 1 {
            return Err(Error::Launch(io::Error::last_os_error()));
        }
        drop(gate);
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::read(
                    self.errors.as_raw_fd(),
                    errno[got..].as_mut_ptr().cast(),
                    4 - got,
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        if got == 0 {
            // The pipe closed on exec: the command is running.
            return Ok(());
        }
        let code = i32::from_ne_bytes(errno);
        if code < 0 {
            return Err(Error::Cwd {
                path: self.cwd.clone().unwrap_or_default().into(),
                source: io::Error::from_raw_os_error(-code),
            });
        }
        let e = io::Error::from_raw_os_error(code);
        Err(match e.raw_os_error() {
            Some(libc::ENOENT) => Error::CommandNotFound(self.path.clone()),
            _ => Error::NotExecutable {
                path: self.path.clone(),
                source: e,
            },
        })
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        // Dropping an unreleased gate makes the child exit 125 without running.
        self.gate.take();
    }
}

/// Waits for a child and returns its raw wait status.
pub fn wait(pid: u32, nohang: bool) -> io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: valid pointer.
        let r = unsafe {
            libc::waitpid(
                pid as i32,
                &mut status,
                if nohang { libc::WNOHANG } else { 0 },
            )
        };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(Some(status));
    }
}

/// Makes pmet the reaper of its descendants' orphans
/// (`PR_SET_CHILD_SUBREAPER`): a process whose parent exits is re-parented to
/// pmet, which reaps it at once, instead of to init, which may take a second
/// (the orphan's final figures wait for that).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log::debug!("PR_SET_CHILD_SUBREAPER: {}", io::Error::last_os_error());
    }
}

/// Reaps every child that has exited: orphans adopted as subreaper, and the
/// root when it is among them, whose raw wait status is returned.
pub fn reap_children(root: u32) -> Option<i32> {
    let mut root_status = None;
    loop {
        let mut status = 0;
        // SAFETY: valid pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
        if r > 0 {
            if r as u32 == root {
                root_status = Some(status);
            } else {
                log::debug!("reaped orphan {r}");
            }
            continue;
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return root_status;
    }
}

/// Opens a pidfd, readable once the process exits.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_a_shell() {
        let p = resolve(OsStr::new("sh"), Some(OsStr::new("/nonexistent:/bin"))).unwrap();
        assert_eq!(p, PathBuf::from("/bin/sh"));
        assert!(matches!(
            resolve(OsStr::new("no-such-cmd-pmet"), Some(OsStr::new("/bin"))),
            Err(Error::CommandNotFound(_))
        ));
        assert!(matches!(
            resolve(OsStr::new("/no/such/file"), None),
            Err(Error::CommandNotFound(_))
        ));
        let e = resolve(OsStr::new("/etc/passwd"), None).unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
        let e = resolve(OsStr::new("/tmp"), None).unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
    }

    /// A gated `sh` that creates a marker file when it runs.
    fn marker_child() -> (tempfile::TempDir, PathBuf, Gated) {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let script = format!("echo x > {}", marker.display());
        let argv: Vec<OsString> = ["sh", "-c", &script].iter().map(OsString::from).collect();
        let p = Prepared::new(&argv, std::env::vars_os(), None).unwrap();
        let g = spawn_gated(&p).unwrap();
        (dir, marker, g)
    }

    #[test]
    fn gated_child_runs_only_after_release() {
        let (_dir, marker, g) = marker_child();
        let pid = g.pid;
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!marker.exists(), "child ran before release");
        g.release().unwrap();
        let status = wait(pid, false).unwrap().unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(marker.exists());
    }

    #[test]
    fn dropped_gate_never_runs_the_command() {
        let (_dir, marker, g) = marker_child();
        let pid = g.pid;
        drop(g);
        let status = wait(pid, false).unwrap().unwrap();
        assert_eq!(libc::WEXITSTATUS(status), 125);
        assert!(!marker.exists());
    }
}
