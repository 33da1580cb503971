//! Reading processes from /proc: the periodic samples of live processes, and
//! the existing tree when attaching to a running process.
//!
//! Parsers take the file's text so they are tested without a live process.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{Mutex, OnceLock},
};

use crate::model::event::{ArgvHex, argv_from};
pub use crate::model::input::{Sample, Shares};

/// Fields of /proc/PID/stat that pmet uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Process id.
    pub pid: u32,
    /// comm, without the parentheses.
    pub comm: String,
    /// State letter.
    pub state: char,
    /// Parent pid.
    pub ppid: u32,
    /// User CPU, ticks.
    pub utime: u64,
    /// System CPU, ticks.
    pub stime: u64,
    /// Threads.
    pub num_threads: u32,
    /// Start time, ticks after boot.
    pub starttime: u64,
    /// Resident pages.
    pub rss_pages: u64,
    /// The kernel's PF_EXITING flag: this thread has begun to exit (its
    /// exit hook may have run already).
    pub exiting: bool,
}

/// `task_struct.flags` bit set once a thread enters do_exit (stat field 9).
const PF_EXITING: u32 = 0x4;

/// Parses /proc/PID/stat. comm may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let f = |n: usize| rest.get(n - 3).copied();
    Some(Stat {
        pid,
        comm,
        state: f(3)?.chars().next()?,
        ppid: f(4)?.parse().ok()?,
        utime: f(14)?.parse().ok()?,
        stime: f(15)?.parse().ok()?,
        num_threads: f(20)?.parse().ok()?,
        starttime: f(22)?.parse().ok()?,
        rss_pages: f(24)?.parse().ok()?,
        exiting: f(9)?.parse::<u32>().ok()? & PF_EXITING != 0,
    })
}

/// The values of `keys` in a `Key: value [kB]` file (/proc/PID/status,
/// smaps_rollup, io), in bytes where the unit is kB; `None` for a key not
/// there (or not a number). One pass, and only the wanted lines' numbers are
/// parsed: a sample reads these files for every live process, five times a
/// second while the tree is busy, and a map of all ~55 status lines was a
/// tenth of that.
pub fn fields<const N: usize>(text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut out = [None; N];
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let Some(i) = keys.iter().position(|&want| want == k) else {
            continue;
        };
        let mut it = v.split_ascii_whitespace();
        if let Some(n) = it.next().and_then(|n| n.parse::<u64>().ok()) {
            out[i] = Some(if it.next() == Some("kB") { n * 1024 } else { n });
        }
    }
    out
}

/// What pmet reads of /proc/PID/io (and of a thread's).
const IO_FIELDS: [&str; 3] = ["read_bytes", "write_bytes", "cancelled_write_bytes"];

/// This machine's page size in bytes (the unit of the kernel's memory
/// counters), read once.
pub fn page_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *SIZE
        .get_or_init(|| u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096))
}

/// Splits /proc/PID/cmdline (or environ) into its NUL-separated strings.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    parse_argv(bytes).0
}

/// Splits /proc/PID/cmdline into arguments, and the bytes of those that are
/// not UTF-8.
pub fn parse_argv(bytes: &[u8]) -> (Vec<String>, ArgvHex) {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return (Vec::new(), None);
    }
    argv_from(bytes.split(|&b| b == 0))
}

/// Where /proc is; tests point it elsewhere.
#[derive(Debug)]
pub struct Procfs {
    pub(crate) root: PathBuf,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    pub ticks_per_s: u64,
    /// Page size, bytes.
    pub page_size: u64,
    /// The files a sample reads, kept open per live process between
    /// samples: reading a kept file again costs half of opening it anew (a
    /// walk through /proc each time; measured 6.8 → 3.1 µs for `stat`,
    /// 11.4 → 7.7 for `status`, 5.0 → 1.6 for `io`). An open file stays
    /// with the process it was opened for: once that one is gone, reading
    /// fails, even where its pid went to another.
    open: Mutex<HashMap<u32, Open>>,
    /// At most this many processes' files are kept open (see
    /// [`Procfs::keep_at_most`]).
    keep_at_most: OnceLock<usize>,
}

/// One process's files a sample reads.
#[derive(Debug)]
struct Open {
    stat: File,
    status: File,
    /// `None` where it cannot be opened (then not read at all).
    io: Option<File>,
}

/// A whole file read from its start again (a /proc file makes its text
/// anew at offset 0), as text (a comm need not be UTF-8).
fn read_from_start(f: &File, buf: &mut Vec<u8>) -> io::Result<String> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = f.read_at(&mut chunk, buf.len() as u64)?;
        if n == 0 {
            return Ok(String::from_utf8_lossy(buf).into_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Default for Procfs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl Procfs {
    /// A reader of the proc filesystem mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            root: root.into(),
            ticks_per_s: if tck > 0 { tck as u64 } else { 100 },
            page_size: page_size(),
            open: Mutex::default(),
            keep_at_most: OnceLock::new(),
        }
    }

    /// How many processes' files may be kept open: three files each, within
    /// a third of the descriptors pmet may open beyond the first 1,024
    /// (which stay for everything else: the report, exporters' sockets,
    /// the kernel side's maps). Read once, after pmet raised its limit.
    fn keep_at_most(&self) -> usize {
        *self.keep_at_most.get_or_init(|| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: a valid pointer to a rlimit.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
                return 0;
            }
            (l.rlim_cur.saturating_sub(1024) / 9).min(4096) as usize
        })
    }

    /// Closes the files kept for the processes `keep` says no to (those
    /// no longer live).
    pub fn keep_only(&self, keep: &dyn Fn(u32) -> bool) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|&pid, _| keep(pid));
    }

    fn path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(file)
    }

    /// Its live threads' own I/O summed, from each `task/TID/io` (see
    /// [`super::source::Sampler::threads_io`]).
    pub fn threads_io(&self, pid: u32) -> Option<[u64; 3]> {
        let task = self.path(pid, "task");
        let mut sum = [0; 3];
        for e in fs::read_dir(&task).ok()? {
            let io = match fs::read_to_string(e.ok()?.path().join("io")) {
                Ok(io) => io,
                // Ended since the listing: its free brings its figures.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ESRCH) =>
                {
                    continue;
                }
                Err(_) => return None,
            };
            for (s, v) in sum.iter_mut().zip(fields(&io, IO_FIELDS)) {
                *s += v?;
            }
        }
        Some(sum)
    }

    /// Whether /proc/PID is not there (only "not found" says so).
    pub fn gone(&self, pid: u32) -> bool {
        fs::metadata(self.root.join(pid.to_string()))
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
    }

    /// /proc/PID/stat, parsed.
    pub fn stat(&self, pid: u32) -> io::Result<Stat> {
        let text = fs::read_to_string(self.path(pid, "stat"))?;
        parse_stat(&text).ok_or_else(|| io::Error::other(format!("unparsable /proc/{pid}/stat")))
    }

    /// /proc/PID/cmdline, split (and the bytes of arguments not UTF-8).
    pub fn cmdline(&self, pid: u32) -> io::Result<(Vec<String>, ArgvHex)> {
        Ok(parse_argv(&fs::read(self.path(pid, "cmdline"))?))
    }

    /// Samples a live process. `None` when it is gone. Its files are kept
    /// open for the next sample, up to [`Procfs::keep_at_most`] processes.
    pub fn sample(&self, pid: u32, ts_ns: u64) -> Option<Sample> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(files) = open.get(&pid) {
            match self.sample_from(files, ts_ns) {
                Ok(s) => {
                    if s.is_none() {
                        open.remove(&pid);
                    }
                    return s;
                }
                // Gone (or its pid now another's): opened anew below.
                Err(_) => {
                    open.remove(&pid);
                }
            }
        }
        let files = Open {
            stat: File::open(self.path(pid, "stat")).ok()?,
            status: File::open(self.path(pid, "status")).ok()?,
            io: File::open(self.path(pid, "io")).ok(),
        };
        let s = self.sample_from(&files, ts_ns).ok()??;
        if open.len() < self.keep_at_most() {
            open.insert(pid, files);
        }
        Some(s)
    }

    /// A sample from one process's open files: `Ok(None)` for a zombie
    /// (its figures are no longer its own to sample), an error when they
    /// cannot be read (it is gone).
    fn sample_from(&self, files: &Open, ts_ns: u64) -> io::Result<Option<Sample>> {
        let mut buf = Vec::with_capacity(2048);
        let stat = parse_stat(&read_from_start(&files.stat, &mut buf)?)
            .ok_or_else(|| io::Error::other("unparsable stat"))?;
        if stat.state == 'Z' || stat.state == 'X' {
            return Ok(None);
        }
        let status = read_from_start(&files.status, &mut buf)?;
        let [rss, hwm, threads, anon, file, shmem, swap] = fields(
            &status,
            [
                "VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile", "RssShmem", "VmSwap",
            ],
        );
        let io = files
            .io
            .as_ref()
            .and_then(|f| read_from_start(f, &mut buf).ok())
            .map(|io| fields(&io, IO_FIELDS));
        let [read_bytes, write_bytes, cancelled_write_bytes] = io.unwrap_or_default();
        Ok(Some(Sample {
            ts_ns,
            utime_ticks: stat.utime,
            stime_ticks: stat.stime,
            rss_bytes: rss.unwrap_or(stat.rss_pages * self.page_size),
            hwm_bytes: hwm.unwrap_or(0),
            threads: threads.map(|t| t as u32).unwrap_or(stat.num_threads),
            read_bytes,
            write_bytes,
            cancelled_write_bytes,
            start_ticks: stat.starttime,
            anon_bytes: anon.unwrap_or(0),
            file_bytes: file.unwrap_or(0),
            shmem_bytes: shmem.unwrap_or(0),
            swap_bytes: swap.unwrap_or(0),
        }))
    }

    /// What of `pid`'s memory is its own, from `smaps_rollup` (`None` when it
    /// is gone, or not readable).
    pub fn shares(&self, pid: u32) -> Option<Shares> {
        let text = fs::read_to_string(self.path(pid, "smaps_rollup")).ok()?;
        let [
            pss,
            private_clean,
            private_dirty,
            shared_clean,
            shared_dirty,
        ] = fields(
            &text,
            [
                "Pss",
                "Private_Clean",
                "Private_Dirty",
                "Shared_Clean",
                "Shared_Dirty",
            ],
        );
        let get = |v: Option<u64>| v.unwrap_or(0);
        Some(Shares {
            pss_bytes: pss?,
            private_bytes: get(private_clean) + get(private_dirty),
            shared_bytes: get(shared_clean) + get(shared_dirty),
        })
    }

    /// Per-thread figures of a live process, for the attach-time baseline:
    /// (tid, runtime ns, utime ticks, stime ticks, read bytes, write bytes).
    pub fn threads(&self, pid: u32) -> Vec<ThreadFigures> {
        let Ok(dir) = fs::read_dir(self.path(pid, "task")) else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let base = self.path(pid, "task").join(tid.to_string());
            let stat = parse_stat(&fs::read_to_string(base.join("stat")).ok()?)?;
            let runtime_ns = fs::read_to_string(base.join("schedstat"))
                .ok()
                .and_then(|s| s.split_ascii_whitespace().next()?.parse().ok());
            let io = fs::read_to_string(base.join("io"))
                .ok()
                .map(|io| fields(&io, IO_FIELDS));
            let [read_bytes, write_bytes, cancelled_write_bytes] = io.unwrap_or_default();
            Some(ThreadFigures {
                tid,
                comm: stat.comm,
                runtime_ns,
                utime_ticks: stat.utime,
                stime_ticks: stat.stime,
                read_bytes,
                write_bytes,
                cancelled_write_bytes,
                exiting: stat.exiting,
            })
        })
        .collect()
    }

    /// Every process's /proc/PID/stat.
    pub fn scan(&self) -> Vec<Stat> {
        let Ok(dir) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            self.stat(pid).ok()
        })
        .collect()
    }

    /// Every process's parent, for walking a subtree.
    pub fn parents(&self) -> HashMap<u32, u32> {
        self.scan().into_iter().map(|s| (s.pid, s.ppid)).collect()
    }

    /// `pid` and all its live descendants, parents before children.
    pub fn subtree(&self, pid: u32) -> Vec<u32> {
        let parents = self.parents();
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&c, &p) in &parents {
            children.entry(p).or_default().push(c);
        }
        let mut out = vec![pid];
        let mut i = 0;
        while i < out.len() {
            if let Some(cs) = children.get(&out[i]) {
                let mut cs = cs.clone();
                cs.sort_unstable();
                out.extend(cs);
            }
            i += 1;
        }
        out
    }

    /// Whether a process with this pid exists now (zombies included).
    pub fn exists(&self, pid: u32) -> bool {
        self.path(pid, "stat").exists()
    }
}

/// One thread's figures at attach time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadFigures {
    /// Thread id.
    pub tid: u32,
    /// Its name (`comm`, which a thread may set for itself).
    pub comm: String,
    /// Nanoseconds on CPU (/proc/PID/task/TID/schedstat), when available.
    pub runtime_ns: Option<u64>,
    /// User CPU, ticks.
    pub utime_ticks: u64,
    /// System CPU, ticks.
    pub stime_ticks: u64,
    /// Storage bytes read.
    pub read_bytes: Option<u64>,
    /// Storage bytes written.
    pub write_bytes: Option<u64>,
    /// Dirty bytes it dropped before writeback.
    pub cancelled_write_bytes: Option<u64>,
    /// It has begun to exit ([`Stat::exiting`]).
    pub exiting: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (we (ird) name) S 4000 4242 4000 34816 4242 4194304 1201 0 0 0 \
        250 37 0 0 20 0 3 0 123456 25165824 3328 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 \
        17 1 0 0 0 0 0";

    #[test]
    fn stat_survives_parentheses_and_spaces_in_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "we (ird) name");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 4000);
        assert_eq!(s.utime, 250);
        assert_eq!(s.stime, 37);
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime, 123456);
        assert_eq!(s.rss_pages, 3328);
        assert!(!s.exiting);
        // The same thread once in do_exit (PF_EXITING, 0x4, added to flags).
        let dying = STAT.replace(" 4194304 ", " 4194308 ");
        assert!(parse_stat(&dying).unwrap().exiting);
    }

    #[test]
    fn stat_rejects_garbage() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[test]
    fn status_in_bytes() {
        let [hwm, rss, threads, name] = fields(
            "Name:\tbash\nVmHWM:\t    5000 kB\nVmRSS:\t  4000 kB\nThreads:\t7\n",
            ["VmHWM", "VmRSS", "Threads", "Name"],
        );
        assert_eq!(hwm, Some(5000 * 1024));
        assert_eq!(rss, Some(4000 * 1024));
        assert_eq!(threads, Some(7));
        assert_eq!(name, None);
    }

    #[test]
    fn only_the_fields_asked_for_in_bytes_and_none_for_the_missing() {
        let text = "Name:\tbash\nVmHWM:\t    5000 kB\nVmRSS:\t  4000 kB\nThreads:\t7\nbad line\nVmSwap:\tx kB\n";
        assert_eq!(
            fields(
                text,
                ["VmRSS", "Threads", "VmHWM", "RssAnon", "VmSwap", "Name"]
            ),
            [
                Some(4000 * 1024),
                Some(7),
                Some(5000 * 1024),
                None,
                None,
                None
            ]
        );
        assert_eq!(
            fields(
                "rchar: 10\nread_bytes: 4096\nwrite_bytes: 8192\n",
                ["write_bytes", "read_bytes"]
            ),
            [Some(8192), Some(4096)]
        );
    }

    #[test]
    fn io_fields() {
        let [read, write, cancelled] = fields(
            "rchar: 10\nwchar: 20\nread_bytes: 4096\nwrite_bytes: 8192\n",
            IO_FIELDS,
        );
        assert_eq!(read, Some(4096));
        assert_eq!(write, Some(8192));
        assert_eq!(cancelled, None);
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(
            parse_cmdline(b"python3\0-c\0print(1)\0"),
            ["python3", "-c", "print(1)"]
        );
        assert_eq!(parse_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        assert_eq!(
            parse_argv(b"a\0\xffb\0"),
            (
                vec!["a".into(), "\u{fffd}b".into()],
                Some(vec![None, Some("ff62".into())])
            )
        );
        assert_eq!(parse_argv(b"a\0b\0").1, None);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn a_process_s_files_are_kept_open_and_let_go_once_it_is_gone() {
        let p = Procfs::default();
        p.keep_at_most.set(4).unwrap();
        let kept = |pid| p.open.lock().unwrap().contains_key(&pid);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let first = p.sample(pid, 1).unwrap();
        assert!(kept(pid));
        // From the kept files: the same process, figures read anew.
        let again = p.sample(pid, 2).unwrap();
        assert_eq!((again.ts_ns, again.start_ticks), (2, first.start_ticks));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: its kept files no longer read, and a pid that went to
        // another process would be opened anew rather than read through them.
        assert!(p.sample(pid, 3).is_none());
        assert!(!kept(pid));
        let me = std::process::id();
        assert!(p.sample(me, 4).is_some());
        p.keep_only(&|pid| pid != me);
        assert!(!kept(me), "let go when no longer live");
    }

    #[test]
    fn samples_this_process() {
        let p = Procfs::default();
        let s = p.sample(std::process::id(), 1).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.hwm_bytes >= s.rss_bytes);
        assert!(s.threads >= 1);
        assert!(p.subtree(std::process::id()).contains(&std::process::id()));
    }
}
