//! Exit accounting from the kernel's taskstats interface.
//!
//! After registering a CPU mask on a generic-netlink socket, the kernel sends
//! one `struct taskstats` for every task that exits on those CPUs, taken in
//! `do_exit` while the task's memory still exists. pmet uses it for the peak
//! RSS (`hiwater_rss`), context switches and page faults of every process, and
//! as a second source of CPU, disk and exit status. Messages cover the whole
//! machine; the tree model keeps the ones that belong to the traced tree.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const TASKSTATS_CMD_GET: u8 = 1;
const TASKSTATS_CMD_NEW: u8 = 2;
const TASKSTATS_CMD_ATTR_REGISTER_CPUMASK: u16 = 3;
const TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK: u16 = 4;
const TASKSTATS_TYPE_PID: u16 = 1;
const TASKSTATS_TYPE_TGID: u16 = 2;
const TASKSTATS_TYPE_STATS: u16 = 3;
const TASKSTATS_TYPE_AGGR_PID: u16 = 4;

/// How long the reader lets records queue between two batches.
const BATCH: Duration = Duration::from_millis(20);

/// Byte offsets in `struct taskstats` (stable: fields are only ever appended;
/// checked against <linux/taskstats.h> version 13 and this kernel's 16).
mod off {
    pub const VERSION: usize = 0;
    pub const EXITCODE: usize = 4;
    pub const FLAG: usize = 8;
    pub const RUN_VIRTUAL: usize = 72;
    pub const COMM: usize = 80;
    pub const PID: usize = 128;
    pub const PPID: usize = 132;
    pub const UTIME: usize = 152;
    pub const STIME: usize = 160;
    pub const MINFLT: usize = 168;
    pub const MAJFLT: usize = 176;
    pub const HIWATER_RSS: usize = 200;
    pub const HIWATER_VM: usize = 208;
    pub const READ_CHAR: usize = 216;
    pub const WRITE_CHAR: usize = 224;
    pub const READ_BYTES: usize = 248;
    pub const WRITE_BYTES: usize = 256;
    pub const CANCELLED_WRITE_BYTES: usize = 264;
    pub const NVCSW: usize = 272;
    pub const NIVCSW: usize = 280;
    /// `ac_tgid`, present from version 10.
    pub const TGID: usize = 368;
    /// Bytes needed to read everything above.
    pub const MIN_LEN: usize = 288;
}

pub use crate::model::input::{AGROUP, TaskStats};

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Decodes a `struct taskstats`; `None` when too short.
pub fn parse_stats(b: &[u8]) -> Option<TaskStats> {
    if b.len() < off::MIN_LEN {
        return None;
    }
    let version = u16_at(b, off::VERSION);
    let comm = &b[off::COMM..off::COMM + 32];
    let comm_len = comm.iter().position(|&c| c == 0).unwrap_or(32);
    let tid = u32_at(b, off::PID);
    let tgid = if version >= 10 && b.len() >= off::TGID + 4 {
        u32_at(b, off::TGID)
    } else {
        tid
    };
    Some(TaskStats {
        tid,
        tgid: if tgid == 0 { tid } else { tgid },
        ppid: u32_at(b, off::PPID),
        comm: String::from_utf8_lossy(&comm[..comm_len]).into_owned(),
        exit_code: u32_at(b, off::EXITCODE),
        flags: b[off::FLAG],
        utime_us: u64_at(b, off::UTIME),
        stime_us: u64_at(b, off::STIME),
        run_ns: u64_at(b, off::RUN_VIRTUAL),
        hiwater_rss_kb: u64_at(b, off::HIWATER_RSS),
        hiwater_vm_kb: u64_at(b, off::HIWATER_VM),
        read_char: u64_at(b, off::READ_CHAR),
        write_char: u64_at(b, off::WRITE_CHAR),
        read_bytes: u64_at(b, off::READ_BYTES),
        write_bytes: u64_at(b, off::WRITE_BYTES),
        cancelled_write_bytes: u64_at(b, off::CANCELLED_WRITE_BYTES),
        nvcsw: u64_at(b, off::NVCSW),
        nivcsw: u64_at(b, off::NIVCSW),
        minflt: u64_at(b, off::MINFLT),
        majflt: u64_at(b, off::MAJFLT),
    })
}

/// Iterates the netlink attributes in `b`: (type, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16_at(b, 0) as usize;
        let ty = u16_at(b, 2) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        let next = (len + 3) & !3;
        b = &b[next.min(b.len())..];
        Some((ty, payload))
    })
}

/// Decodes every per-task record in a datagram of netlink messages. Per-group
/// aggregates (`AGGR_TGID`) hold only delay totals and are skipped.
pub fn parse_datagram(mut b: &[u8], family: u16) -> Vec<TaskStats> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        let ty = u16_at(b, 4);
        if len < 16 || len > b.len() {
            break;
        }
        let msg = &b[..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        // genlmsghdr: cmd, version, reserved.
        if ty != family || msg.len() < 20 || msg[16] != TASKSTATS_CMD_NEW {
            continue;
        }
        for (t, payload) in attrs(&msg[20..]) {
            if t != TASKSTATS_TYPE_AGGR_PID {
                continue;
            }
            let mut tid = None;
            for (it, ip) in attrs(payload) {
                match it {
                    TASKSTATS_TYPE_PID | TASKSTATS_TYPE_TGID if ip.len() >= 4 => {
                        tid = Some(u32_at(ip, 0))
                    }
                    TASKSTATS_TYPE_STATS => {
                        if let Some(mut s) = parse_stats(ip) {
                            if let Some(t) = tid {
                                s.tid = t;
                            }
                            out.push(s);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn nlmsg(ty: u16, cmd: u8, attr_ty: u16, attr: &[u8], seq: u32) -> Vec<u8> {
    nlmsg_flags(ty, cmd, attr_ty, attr, seq, NLM_F_REQUEST)
}

fn nlmsg_flags(ty: u16, cmd: u8, attr_ty: u16, attr: &[u8], seq: u32, flags: u16) -> Vec<u8> {
    let alen = 4 + attr.len();
    let apad = (alen + 3) & !3;
    let total = 16 + 4 + apad;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, 1, 0, 0]);
    m.extend_from_slice(&(alen as u16).to_ne_bytes());
    m.extend_from_slice(&attr_ty.to_ne_bytes());
    m.extend_from_slice(attr);
    m.resize(total, 0);
    m
}

/// A registered taskstats listener, read by a background thread.
pub struct Listener {
    fd: Arc<OwnedFd>,
    family: u16,
    cpumask: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Times the socket overflowed (ENOBUFS): messages were dropped.
    pub overflows: Arc<AtomicU64>,
}

impl Listener {
    /// Opens the socket, registers for exits on all CPUs, and starts a thread
    /// that passes every decoded record to `sink`.
    pub fn start(sink: impl Fn(Vec<TaskStats>) + Send + 'static) -> io::Result<Self> {
        // SAFETY: plain socket call; the fd is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A burst of exits (an exec storm) must fit while the thread catches up.
        let size: libc::c_int = 32 << 20;
        set_opt(&fd, libc::SO_RCVBUFFORCE, size)
            .or_else(|_| set_opt(&fd, libc::SO_RCVBUF, size))?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        // SAFETY: zeroed sockaddr_nl is "any", bound by the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid fd and address.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let family = resolve_family(&fd)?;
        // SAFETY: no preconditions.
        let ncpu = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1);
        let cpumask = format!("0-{}\0", ncpu - 1);
        send(
            &fd,
            &nlmsg_flags(
                family,
                TASKSTATS_CMD_GET,
                TASKSTATS_CMD_ATTR_REGISTER_CPUMASK,
                cpumask.as_bytes(),
                2,
                NLM_F_REQUEST | NLM_F_ACK,
            ),
        )?;
        check_ack(&fd)?;

        let fd = Arc::new(fd);
        let stop = Arc::new(AtomicBool::new(false));
        let overflows = Arc::new(AtomicU64::new(0));
        let thread = {
            let (fd, stop, overflows) = (fd.clone(), stop.clone(), overflows.clone());
            std::thread::Builder::new()
                .name("pmet-taskstats".into())
                .spawn(move || {
                    // Made before the command is forked; as the session's
                    // thread does after it, keep up with exit storms.
                    crate::privileges::prefer_tracer();
                    let mut buf = vec![0u8; 1 << 16];
                    while !stop.load(Ordering::Relaxed) {
                        // Wait for the first record (or the stop timeout),
                        // then take everything queued without blocking.
                        let mut batch = Vec::new();
                        let mut flags = 0;
                        loop {
                            // SAFETY: valid fd and buffer.
                            let n = unsafe {
                                libc::recv(
                                    fd.as_raw_fd(),
                                    buf.as_mut_ptr().cast(),
                                    buf.len(),
                                    flags,
                                )
                            };
                            if n < 0 {
                                match io::Error::last_os_error().raw_os_error() {
                                    Some(libc::ENOBUFS) => {
                                        overflows.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    Some(libc::EAGAIN | libc::EINTR) => {}
                                    _ => std::thread::sleep(Duration::from_millis(10)),
                                }
                                break;
                            }
                            batch.extend(parse_datagram(&buf[..n as usize], family));
                            flags = libc::MSG_DONTWAIT;
                        }
                        if !batch.is_empty() {
                            sink(batch);
                            // Every exit on the machine sends a record: waking
                            // for each costs the traced workload more than the
                            // records themselves. Let them queue (the socket
                            // buffer holds tens of thousands) and take them in
                            // batches, unless the session asks for them now
                            // (`flush`, at the end of a run).
                            std::thread::park_timeout(BATCH);
                        }
                    }
                })?
        };
        Ok(Self {
            fd,
            family,
            cpumask,
            stop,
            thread: Some(thread),
            overflows,
        })
    }
}

impl Listener {
    /// Delivers what has queued now rather than at the end of the current
    /// batch interval: the end of a run waits for the last records.
    pub fn flush(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = send(
            &self.fd,
            &nlmsg(
                self.family,
                TASKSTATS_CMD_GET,
                TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK,
                self.cpumask.as_bytes(),
                3,
            ),
        );
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Not joined: it may be blocked in a receive for up to its
            // 100 ms timeout, which pmet's exit would wait out. It ends at
            // its next wake-up; the socket closes with its last owner.
            t.thread().unpark();
        }
    }
}

fn set_opt(fd: &OwnedFd, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: valid fd and option buffer.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: valid fd and buffer.
    let r = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn recv(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    // SAFETY: valid fd and buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Reads replies until the kernel's ack (or error) for our request.
fn check_ack(fd: &OwnedFd) -> io::Result<()> {
    for _ in 0..16 {
        let b = recv(fd)?;
        let mut rest = &b[..];
        while rest.len() >= 16 {
            let len = u32_at(rest, 0) as usize;
            let ty = u16_at(rest, 4);
            if ty == NLMSG_ERROR && rest.len() >= 20 {
                let errno = -(u32_at(rest, 16) as i32);
                return if errno == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(errno))
                };
            }
            if ty == NLMSG_DONE {
                return Ok(());
            }
            if len < 16 || len > rest.len() {
                break;
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
    }
    Err(io::Error::other("no acknowledgement from the kernel"))
}

fn resolve_family(fd: &OwnedFd) -> io::Result<u16> {
    send(
        fd,
        &nlmsg(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            b"TASKSTATS\0",
            1,
        ),
    )?;
    let b = recv(fd)?;
    if b.len() >= 20 && u16_at(&b, 4) == NLMSG_ERROR {
        let errno = -(u32_at(&b, 16) as i32);
        return Err(io::Error::from_raw_os_error(errno));
    }
    if b.len() < 20 {
        return Err(io::Error::other(
            "short reply resolving the TASKSTATS family",
        ));
    }
    attrs(&b[20..])
        .find(|(t, p)| *t == CTRL_ATTR_FAMILY_ID && p.len() >= 2)
        .map(|(_, p)| u16_at(p, 0))
        .ok_or_else(|| io::Error::other("the kernel has no TASKSTATS family (CONFIG_TASKSTATS)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_bytes(tid: u32, tgid: u32, code: u32, rss_kb: u64) -> Vec<u8> {
        let mut b = vec![0u8; 416];
        b[0..2].copy_from_slice(&16u16.to_ne_bytes());
        b[off::EXITCODE..off::EXITCODE + 4].copy_from_slice(&code.to_ne_bytes());
        b[off::FLAG] = AGROUP;
        b[off::COMM..off::COMM + 4].copy_from_slice(b"true");
        b[off::PID..off::PID + 4].copy_from_slice(&tid.to_ne_bytes());
        b[off::PPID..off::PPID + 4].copy_from_slice(&1u32.to_ne_bytes());
        b[off::UTIME..off::UTIME + 8].copy_from_slice(&1500u64.to_ne_bytes());
        b[off::RUN_VIRTUAL..off::RUN_VIRTUAL + 8].copy_from_slice(&1_234_567u64.to_ne_bytes());
        b[off::HIWATER_RSS..off::HIWATER_RSS + 8].copy_from_slice(&rss_kb.to_ne_bytes());
        b[off::WRITE_BYTES..off::WRITE_BYTES + 8].copy_from_slice(&8192u64.to_ne_bytes());
        b[off::TGID..off::TGID + 4].copy_from_slice(&tgid.to_ne_bytes());
        b
    }

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize((a.len() + 3) & !3, 0);
        a
    }

    fn message(family: u16, tid: u32, tgid: u32) -> Vec<u8> {
        let mut inner = attr(TASKSTATS_TYPE_PID, &tid.to_ne_bytes());
        inner.extend(attr(
            TASKSTATS_TYPE_STATS,
            &stats_bytes(tid, tgid, 3 << 8, 13000),
        ));
        let outer = attr(TASKSTATS_TYPE_AGGR_PID, &inner);
        let total = 20 + outer.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(total as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[TASKSTATS_CMD_NEW, 1, 0, 0]);
        m.extend(outer);
        m
    }

    #[test]
    fn decodes_a_kernel_style_datagram() {
        let mut d = message(31, 101, 100);
        d.extend(message(31, 200, 200));
        d.extend(message(99, 300, 300)); // another family: ignored
        let recs = parse_datagram(&d, 31);
        assert_eq!(recs.len(), 2);
        let r = &recs[0];
        assert_eq!((r.tid, r.tgid, r.ppid), (101, 100, 1));
        assert_eq!(r.comm, "true");
        assert_eq!(r.exit_code, 3 << 8);
        assert_eq!(r.flags & AGROUP, AGROUP);
        assert_eq!(r.utime_us, 1500);
        assert_eq!(r.run_ns, 1_234_567);
        assert_eq!(r.hiwater_rss_kb, 13000);
        assert_eq!(r.write_bytes, 8192);
        assert_eq!(recs[1].tid, 200);
    }

    #[test]
    fn damaged_input_is_ignored_not_a_panic() {
        let d = message(31, 101, 100);
        for cut in 0..d.len() {
            let _ = parse_datagram(&d[..cut], 31);
        }
        assert!(parse_stats(&[0; 100]).is_none());
        let mut bad = d.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_datagram(&bad, 31).is_empty());
    }

    #[test]
    fn request_is_well_formed() {
        let m = nlmsg(
            31,
            TASKSTATS_CMD_GET,
            TASKSTATS_CMD_ATTR_REGISTER_CPUMASK,
            b"0-1\0",
            7,
        );
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), 31);
        assert_eq!(m[16], TASKSTATS_CMD_GET);
        let (t, p) = attrs(&m[20..]).next().unwrap();
        assert_eq!((t, p), (TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, &b"0-1\0"[..]));
    }
}
