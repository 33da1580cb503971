//! Files pmet writes for the user who invoked it (the report, trace events,
//! the sample stream, HTML and SVG exports): created with that user's
//! credentials, so pmet, running as root, can never write where the user
//! could not.
//!
//! The traced command may run as that same user and may plant symlinks or
//! swap directories while it runs, so a file is anchored before launch: its
//! directory is opened then and every later step is relative to that
//! directory fd. A regular file is replaced atomically through a temporary
//! file with a random name, created `O_EXCL|O_NOFOLLOW`; a device or FIFO that
//! is already there is written in place (`-o /dev/null` stays a device); the
//! names of pmet's own standard streams (`/dev/stdout`, `/dev/fd/N`) write to
//! the fd pmet was handed.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use crate::privileges::{Credentials, as_user};

/// Longest file name most Linux file systems take.
const NAME_MAX: usize = 255;

/// A file to be written for the user, checked and anchored.
#[derive(Debug)]
pub struct UserFile {
    shown: PathBuf,
    creds: Option<Credentials>,
    place: Place,
}

#[derive(Debug)]
enum Place {
    /// One of pmet's own fds (`-`, `/dev/stdout`, `/dev/fd/N`).
    Fd(RawFd),
    /// `name` inside the directory opened (`O_PATH`) at `dir`.
    InDir { dir: OwnedFd, name: CString },
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The fd a path names when it is one of pmet's own streams.
fn own_fd(path: &Path) -> Option<RawFd> {
    let s = path.to_str()?;
    match s {
        "-" | "/dev/stdout" => Some(1),
        "/dev/stderr" => Some(2),
        _ => s
            .strip_prefix("/dev/fd/")
            .or_else(|| s.strip_prefix("/proc/self/fd/"))
            .and_then(|n| n.parse().ok()),
    }
}

fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out-pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match cvt(r) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// Written in place: replacing one with a regular file would break it.
fn is_special(st: &libc::stat) -> bool {
    matches!(
        file_type(st),
        libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK
    )
}

fn open_at(dir: &OwnedFd, name: &CString, flags: libc::c_int) -> io::Result<File> {
    // SAFETY: valid fd and C string; the mode is read only with O_CREAT.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOCTTY,
            0o666 as libc::c_uint,
        )
    })?;
    // SAFETY: a fresh fd owned here.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn unlink_at(dir: &OwnedFd, name: &CString) {
    // SAFETY: valid fd and C string.
    unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
}

/// A new, empty file with a random name in `dir`, never following a link.
fn create_temp(dir: &OwnedFd) -> io::Result<(File, CString)> {
    for _ in 0..16 {
        let mut r = [0u8; 8];
        // SAFETY: valid buffer of its length.
        let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
        if n != r.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let name = CString::new(format!(".pmet-{:016x}.tmp", u64::from_ne_bytes(r)))
            .expect("no NUL in a hex name");
        match open_at(
            dir,
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        ) {
            Ok(f) => return Ok((f, name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not find a free temporary name"))
}

impl UserFile {
    /// Checks, as `creds` (or as pmet with `None`), that `path` can be
    /// written, and anchors its directory. Call it before launching anything,
    /// so a request that cannot succeed fails first and the traced command
    /// cannot redirect the file by swapping a directory later.
    pub fn prepare(path: &Path, creds: Option<&Credentials>) -> io::Result<Self> {
        let shown = path.to_owned();
        let creds = creds.cloned();
        if let Some(fd) = own_fd(path) {
            // SAFETY: F_GETFD only asks whether the fd is open.
            cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })
                .map_err(|_| invalid(format!("fd {fd} is not open in pmet")))?;
            return Ok(Self {
                shown,
                creds,
                place: Place::Fd(fd),
            });
        }
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() {
            return Err(invalid("the path is empty"));
        }
        if bytes.ends_with(b"/") {
            return Err(invalid("it names a directory (it ends with /)"));
        }
        let Some(name) = path.file_name() else {
            return Err(invalid("it names a directory"));
        };
        if name.len() > NAME_MAX {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        let name = CString::new(name.as_bytes()).map_err(|_| invalid("it contains a NUL byte"))?;
        let dir_path = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let c_dir = CString::new(dir_path.as_os_str().as_bytes())
            .map_err(|_| invalid("it contains a NUL byte"))?;
        let dir = as_user(creds.as_ref(), || -> io::Result<OwnedFd> {
            // SAFETY: valid C string.
            let fd = unsafe {
                libc::open(
                    c_dir.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            match cvt(fd) {
                // SAFETY: a fresh fd owned here.
                Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir_path.display()),
                )),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", dir_path.display()),
                )),
                Err(e) => Err(e),
            }
        })??;
        let f = Self {
            shown,
            creds,
            place: Place::InDir { dir, name },
        };
        f.probe()?;
        Ok(f)
    }

    /// The path as the user gave it.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    fn probe(&self) -> io::Result<()> {
        let Place::InDir { dir, name } = &self.place else {
            return Ok(());
        };
        as_user(self.creds.as_ref(), || -> io::Result<()> {
            match stat_at(dir, name)? {
                Some(st) if file_type(&st) == libc::S_IFDIR => Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "it is a directory",
                )),
                Some(st) if is_special(&st) => {
                    // SAFETY: valid fd and C string.
                    cvt(unsafe { libc::faccessat(dir.as_raw_fd(), name.as_ptr(), libc::W_OK, 0) })
                        .map(drop)
                }
                _ => {
                    let (f, tmp) = create_temp(dir)?;
                    drop(f);
                    unlink_at(dir, &tmp);
                    Ok(())
                }
            }
        })?
    }

    /// Writes the whole file through `fill`: a regular file is replaced
    /// atomically (a reader never sees half of it), a device or FIFO is
    /// written in place.
    pub fn write_with(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send,
    ) -> io::Result<()> {
        match &self.place {
            Place::Fd(fd) => {
                let mut out = io::BufWriter::new(dup(*fd)?);
                fill(&mut out)?;
                out.flush()
            }
            Place::InDir { dir, name } => as_user(self.creds.as_ref(), || {
                if let Some(st) = stat_at(dir, name)?
                    && is_special(&st)
                {
                    let mut out =
                        io::BufWriter::new(open_at(dir, name, libc::O_WRONLY | libc::O_NOFOLLOW)?);
                    fill(&mut out)?;
                    return out.flush();
                }
                let (f, tmp) = create_temp(dir)?;
                let res = (|| {
                    // Reports run to tens of MB: fewer, larger writes.
                    let mut out = io::BufWriter::with_capacity(1 << 20, f);
                    fill(&mut out)?;
                    let f = out.into_inner().map_err(io::IntoInnerError::into_error)?;
                    f.sync_all()?;
                    // SAFETY: valid fds and C strings.
                    cvt(unsafe {
                        libc::renameat(
                            dir.as_raw_fd(),
                            tmp.as_ptr(),
                            dir.as_raw_fd(),
                            name.as_ptr(),
                        )
                    })
                    .map(drop)
                })();
                if res.is_err() {
                    unlink_at(dir, &tmp);
                }
                res
            })?,
        }
    }

    /// Opens the file for writing as it goes (created, or truncated when it
    /// is a regular file). A symbolic link in its place is refused rather
    /// than followed: the traced command may have planted it.
    pub fn open_stream(&self) -> io::Result<File> {
        match &self.place {
            Place::Fd(fd) => dup(*fd),
            Place::InDir { dir, name } => as_user(self.creds.as_ref(), || {
                let link = || {
                    invalid(
                        "it is a symbolic link, which pmet does not follow when writing; \
                         give the path it points to",
                    )
                };
                if stat_at(dir, name)?.is_some_and(|st| file_type(&st) == libc::S_IFLNK) {
                    return Err(link());
                }
                // O_NOFOLLOW still guards a link planted after the look above.
                let f = open_at(dir, name, libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW)
                    .map_err(|e| {
                        if e.raw_os_error() == Some(libc::ELOOP) {
                            link()
                        } else {
                            e
                        }
                    })?;
                if f.metadata()?.is_file() {
                    f.set_len(0)?;
                }
                Ok(f)
            })?,
        }
    }
}

fn dup(fd: RawFd) -> io::Result<File> {
    // SAFETY: duplicating an fd pmet holds; the copy is owned here.
    let d = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: a fresh fd owned here.
    Ok(unsafe { File::from_raw_fd(d) })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, symlink};

    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn replaces_a_file_atomically_and_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        let f = UserFile::prepare(&p, None).unwrap();
        f.write_with(|w| w.write_all(b"one")).unwrap();
        f.write_with(|w| w.write_all(b"two")).unwrap();
        assert_eq!(read(&p), "two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let p = d.path().join("r.json");
        symlink(&victim, &p).unwrap();
        UserFile::prepare(&p, None)
            .unwrap()
            .write_with(|w| w.write_all(b"report"))
            .unwrap();
        assert_eq!(read(&victim), "precious");
        assert_eq!(read(&p), "report");
        assert!(!std::fs::symlink_metadata(&p).unwrap().is_symlink());
        // The stream refuses it outright.
        std::fs::remove_file(&p).unwrap();
        symlink(&victim, &p).unwrap();
        let e = UserFile::prepare(&p, None)
            .unwrap()
            .open_stream()
            .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(read(&victim), "precious");
    }

    #[test]
    fn a_swapped_directory_does_not_redirect_the_file() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&out).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let f = UserFile::prepare(&out.join("r.json"), None).unwrap();
        std::fs::rename(&out, d.path().join("out.bak")).unwrap();
        symlink(&elsewhere, &out).unwrap();
        f.write_with(|w| w.write_all(b"x")).unwrap();
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(read(&d.path().join("out.bak/r.json")), "x");
    }

    #[test]
    fn devices_and_fifos_are_written_in_place() {
        let f = UserFile::prepare(Path::new("/dev/null"), None).unwrap();
        f.write_with(|w| w.write_all(b"gone")).unwrap();
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || read(&fifo))
        };
        UserFile::prepare(&fifo, None)
            .unwrap()
            .write_with(|w| w.write_all(b"through"))
            .unwrap();
        assert_eq!(reader.join().unwrap(), "through");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn bad_paths_fail_when_prepared() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (PathBuf::new(), "empty"),
            (d.path().join("newdir/"), "ends with /"),
            (d.path().join("no/such/r.json"), "does not exist"),
            (d.path().to_owned(), "directory"),
            (d.path().join("x".repeat(300)), "too long"),
            (PathBuf::from("/dev/fd/987"), "not open"),
        ];
        for (p, want) in cases {
            let e = UserFile::prepare(&p, None).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", p.display());
        }
        // A long name still fits its temporary name.
        let long = d.path().join("y".repeat(250));
        UserFile::prepare(&long, None)
            .unwrap()
            .write_with(|w| w.write_all(b"ok"))
            .unwrap();
        assert_eq!(read(&long), "ok");
    }

    #[test]
    fn own_streams_are_recognised() {
        assert_eq!(own_fd(Path::new("-")), Some(1));
        assert_eq!(own_fd(Path::new("/dev/stdout")), Some(1));
        assert_eq!(own_fd(Path::new("/dev/stderr")), Some(2));
        assert_eq!(own_fd(Path::new("/dev/fd/7")), Some(7));
        assert_eq!(own_fd(Path::new("/proc/self/fd/3")), Some(3));
        assert_eq!(own_fd(Path::new("/dev/stdoutx")), None);
    }

    /// As root: a file written as another user is that user's, and where that
    /// user cannot write, neither can pmet.
    #[test]
    fn writes_with_the_users_credentials() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            return;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let nobody = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = d.path().join("r.json");
        UserFile::prepare(&p, Some(&nobody))
            .unwrap()
            .write_with(|w| w.write_all(b"x"))
            .unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        let root_only = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root_only.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = UserFile::prepare(&root_only.path().join("r.json"), Some(&nobody)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(std::fs::read_dir(root_only.path()).unwrap().count(), 0);
        // pmet's own thread is still root afterwards.
        assert_eq!(unsafe { libc::syscall(libc::SYS_geteuid) }, 0);
    }
}
