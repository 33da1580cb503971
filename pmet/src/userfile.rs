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
//!
//! Whatever is already at the path may have been planted. In a sticky,
//! world-writable directory (`/tmp`), what would be written in place (a FIFO,
//! a device, the stream's regular file) is refused when it belongs to another
//! user (the kernel's `protected_fifos` rule, applied always): another user's
//! FIFO there would receive the report. A planted link or regular file at a
//! report's name is replaced, which leaks nothing. A FIFO is never waited on for ever: its open and
//! each write give up after [`FIFO_PATIENCE`] without a reader, so a FIFO
//! nobody reads cannot hang pmet.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::privileges::{Credentials, as_user};

/// Longest file name most Linux file systems take.
const NAME_MAX: usize = 255;

/// How long a FIFO may go without a reader (to open it, or to take the next
/// bytes) before the write fails.
#[cfg(not(test))]
pub const FIFO_PATIENCE: Duration = Duration::from_secs(10);
/// Short in unit tests, which wait it out.
#[cfg(test)]
pub const FIFO_PATIENCE: Duration = Duration::from_millis(300);

/// The fds pmet was started with, when the command line noted them.
static INHERITED: OnceLock<Vec<RawFd>> = OnceLock::new();

/// Notes the fds this process was started with, so that `/dev/fd/N` can only
/// name one of them, never a descriptor pmet opened itself (and `-o -` with
/// standard output closed is an error, not a write into whatever reused fd
/// 1). Call it first thing in `main`; an embedding program that does not
/// call it gets any open fd.
pub fn note_inherited_fds() {
    let mut fds = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
                continue;
            };
            // Every fd that survived exec lacks FD_CLOEXEC; the directory's
            // own fd has it.
            // SAFETY: F_GETFD only reads the fd's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 && !reopened_by_runtime(fd) {
                fds.push(fd);
            }
        }
    }
    let _ = INHERITED.set(fds);
}

/// Rust's runtime reopens a standard fd that was closed at start as
/// `/dev/null`, read-write (a shell's `>/dev/null` is write-only): such an fd
/// was closed when pmet was started.
fn reopened_by_runtime(fd: RawFd) -> bool {
    if fd > 2 {
        return false;
    }
    // SAFETY: F_GETFL only reads the fd's flags.
    let rw = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_ACCMODE == libc::O_RDWR;
    rw && match (fstat(fd), std::fs::metadata("/dev/null")) {
        (Ok(st), Ok(null)) => {
            use std::os::unix::fs::MetadataExt;
            file_type(&st) == libc::S_IFCHR && st.st_rdev == null.rdev()
        }
        _ => false,
    }
}

fn check_own_fd(fd: RawFd) -> io::Result<()> {
    let name = match fd {
        1 => "standard output".to_owned(),
        2 => "standard error".to_owned(),
        n => format!("fd {n}"),
    };
    if let Some(fds) = INHERITED.get() {
        if fds.contains(&fd) {
            return Ok(());
        }
        return Err(invalid(if fd <= 2 {
            format!(
                "{name} is closed (or is /dev/null opened read-write, as a closed one is reopened); give a file name"
            )
        } else {
            format!("{name} was not handed to pmet (open it in the shell, e.g. `{fd}>FILE`)")
        }));
    }
    // SAFETY: F_GETFD only asks whether the fd is open.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })
        .map(drop)
        .map_err(|_| invalid(format!("{name} is not open in pmet")))
}

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

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an fd and an out-pointer (fstat takes O_PATH fds).
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// The user pmet writes as.
fn writer_uid(creds: Option<&Credentials>) -> u32 {
    // SAFETY: no preconditions.
    creds.map_or_else(|| unsafe { libc::geteuid() }, |c| c.uid)
}

/// Refuses an entry someone else may have planted: in a sticky directory
/// that anyone may write, an entry neither the writer nor the directory's
/// owner owns.
fn check_planted(dir: &OwnedFd, st: &libc::stat, uid: u32) -> io::Result<()> {
    let d = fstat(dir.as_raw_fd())?;
    let open_to_all = d.st_mode & libc::S_ISVTX != 0 && d.st_mode & libc::S_IWOTH != 0;
    if open_to_all && st.st_uid != uid && st.st_uid != d.st_uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to another user (uid {}) in a directory anyone may write to, \
                 so it may have been planted to receive pmet's output; remove it or write \
                 to a directory only you can write",
                st.st_uid
            ),
        ));
    }
    Ok(())
}

/// Opens a device or FIFO in place. A FIFO is opened without blocking,
/// waiting at most [`FIFO_PATIENCE`] for a reader, and its writes wait no
/// longer than that for the reader to take bytes.
fn open_special(
    dir: &OwnedFd,
    name: &CString,
    st: &libc::stat,
) -> io::Result<Box<dyn Write + Send>> {
    let flags = libc::O_WRONLY | libc::O_NOFOLLOW;
    if file_type(st) != libc::S_IFIFO {
        return Ok(Box::new(open_at(dir, name, flags)?));
    }
    let deadline = Instant::now() + FIFO_PATIENCE;
    loop {
        match open_at(dir, name, flags | libc::O_NONBLOCK) {
            Ok(f) => {
                return Ok(Box::new(Patient { f, gave_up: false }));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "it is a FIFO that nothing opened for reading in {:?}; start its reader first",
                        FIFO_PATIENCE
                    ),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A non-blocking FIFO whose writes wait, for at most [`FIFO_PATIENCE`]
/// each, for its reader to make room. Once it has waited in vain, every
/// later write fails at once (a buffered writer's flush on drop must not
/// wait a second time).
struct Patient {
    f: File,
    gave_up: bool,
}

impl Write for Patient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("its reader took nothing for {FIFO_PATIENCE:?}"),
            )
        };
        if self.gave_up {
            return Err(timed_out());
        }
        let deadline = Instant::now() + FIFO_PATIENCE;
        loop {
            match self.f.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.gave_up = true;
                        return Err(timed_out());
                    }
                    let mut p = libc::pollfd {
                        fd: self.f.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd. EINTR just loops.
                    unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as libc::c_int) };
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
            check_own_fd(fd)?;
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
        let uid = writer_uid(self.creds.as_ref());
        as_user(self.creds.as_ref(), || -> io::Result<()> {
            let st = stat_at(dir, name)?;
            // Only what is written in place can leak: a planted link or file
            // is replaced by a new file of pmet's (the stream, written in
            // place, checks its regular file when it opens it).
            if let Some(st) = st.as_ref().filter(|st| is_special(st)) {
                check_planted(dir, st, uid)?;
            }
            match st {
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
                    check_planted(dir, &st, writer_uid(self.creds.as_ref()))?;
                    let mut out = io::BufWriter::new(open_special(dir, name, &st)?);
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
    pub fn open_stream(&self) -> io::Result<Box<dyn Write + Send>> {
        match &self.place {
            Place::Fd(fd) => Ok(Box::new(dup(*fd)?)),
            Place::InDir { dir, name } => as_user(self.creds.as_ref(), || {
                let link = || {
                    invalid(
                        "it is a symbolic link, which pmet does not follow when writing; \
                         give the path it points to",
                    )
                };
                let uid = writer_uid(self.creds.as_ref());
                if let Some(st) = stat_at(dir, name)? {
                    if file_type(&st) == libc::S_IFLNK {
                        return Err(link());
                    }
                    if is_special(&st) {
                        check_planted(dir, &st, uid)?;
                        return open_special(dir, name, &st);
                    }
                }
                // O_NOFOLLOW still guards a link planted after the look above.
                // O_NONBLOCK: a FIFO planted after the look above must not
                // block the open (regular files ignore the flag).
                let f = open_at(
                    dir,
                    name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                )
                .map_err(|e| {
                    if e.raw_os_error() == Some(libc::ELOOP) {
                        link()
                    } else {
                        e
                    }
                })?;
                // Judged as opened: whatever was there before, or planted
                // since the look above. Nothing is written or truncated yet.
                let now = fstat(f.as_raw_fd())?;
                check_planted(dir, &now, uid)?;
                if file_type(&now) == libc::S_IFREG {
                    f.set_len(0)?;
                    return Ok(Box::new(f) as Box<dyn Write + Send>);
                }
                // Planted between the look above and the open: judged again.
                drop(f);
                Err(io::Error::other(
                    "it changed while pmet opened it; try again",
                ))
            })?,
        }
    }
}

/// Reads a small file the user named (a config file), as that user: a
/// regular file of at most `limit` bytes. A FIFO or device is refused before
/// it is read, so `/dev/zero` or a FIFO nobody writes cannot hang pmet or
/// fill its memory, and a file only root may read stays unread.
pub fn read_user(path: &Path, creds: Option<&Credentials>, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    as_user(creds, || -> io::Result<Vec<u8>> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(invalid("it is not a regular file"));
        }
        let mut bytes = Vec::new();
        (&mut f).take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(invalid(format!("it is larger than {limit} bytes")));
        }
        Ok(bytes)
    })?
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
        let Err(e) = UserFile::prepare(&p, None).unwrap().open_stream() else {
            panic!("a symlink was followed");
        };
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

    fn mkfifo(p: &Path, mode: libc::mode_t) {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), mode) }, 0);
    }

    #[test]
    fn a_fifo_nobody_reads_fails_in_bounded_time() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo, 0o600);
        let f = UserFile::prepare(&fifo, None).unwrap();
        let t = Instant::now();
        let e = f.write_with(|w| w.write_all(b"x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("nothing opened for reading"), "{e}");
        let Err(e) = f.open_stream() else {
            panic!("a stream opened a FIFO with no reader");
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < FIFO_PATIENCE * 2 + Duration::from_secs(5));
    }

    #[test]
    fn a_fifo_whose_reader_stops_reading_fails_in_bounded_time() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo, 0o600);
        // Opened for reading, never read: the pipe fills and stays full.
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        let reader = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
        assert!(reader >= 0);
        let e = UserFile::prepare(&fifo, None)
            .unwrap()
            .write_with(|w| w.write_all(&vec![b'x'; 1 << 20]))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("took nothing"), "{e}");
        // SAFETY: the fd opened above.
        unsafe { libc::close(reader) };
    }

    #[test]
    fn config_reads_are_bounded_and_refuse_fifos_and_devices() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo, 0o600);
        for p in [Path::new("/dev/zero"), &fifo] {
            let e = read_user(p, None, 1024).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'#'; 2048]).unwrap();
        let e = read_user(&big, None, 1024).unwrap_err();
        assert!(e.to_string().contains("larger than 1024"), "{e}");
        assert_eq!(read_user(&big, None, 2048).unwrap().len(), 2048);
    }

    /// As root: in a sticky, world-writable directory, what another user
    /// put at the name is refused (a FIFO there would receive the report),
    /// and so is their regular file for the stream.
    #[test]
    fn another_users_entry_in_a_sticky_directory_is_refused() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let fifo = d.path().join("report.json");
        mkfifo(&fifo, 0o666);
        let file = d.path().join("stream.jsonl");
        std::fs::write(&file, "").unwrap();
        let give_to_nobody = |p: &Path| {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid C string.
            assert_eq!(unsafe { libc::lchown(c.as_ptr(), 65534, 65534) }, 0);
        };
        give_to_nobody(&fifo);
        give_to_nobody(&file);
        let refused = |e: io::Error| {
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains("another user (uid 65534)"), "{e}");
        };
        refused(UserFile::prepare(&fifo, None).unwrap_err());
        let f = UserFile::prepare(&file, None).unwrap();
        let Err(e) = f.open_stream() else {
            panic!("a planted file received the stream");
        };
        refused(e);
        // The report replaces the planted file instead (nothing of it leaks
        // through the other user's inode).
        f.write_with(|w| w.write_all(b"report")).unwrap();
        assert_eq!(read(&file), "report");
        // In a directory that is not open to all, another user's file is
        // written as before.
        give_to_nobody(&file);
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = UserFile::prepare(&file, None).unwrap();
        f.open_stream().unwrap().write_all(b"ok").unwrap();
        assert_eq!(read(&file), "ok");
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
