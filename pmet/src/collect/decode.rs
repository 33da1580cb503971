//! Ring-buffer records from the kernel side, decoded into [`Event`]s.

use std::{mem::size_of, sync::Arc};

use pmet_common::{
    ConnEndEvent, ConnEvent, EventHeader, ExecArgsHeader, ExecEvent, ExecFullHeader, ExitEvent,
    FILENAME_LEN, ForkEvent, FreeEvent, SockLife, TaskFigures, exec_flags, exit_flags, fork_flags,
    kind,
};

use super::procfs::page_size;
use crate::model::{
    conn::{Life, Opened, Outcome, Proto, Role, endpoint},
    event::{ArgvHex, Ctx, Event, Ids, ThreadTotals, argv_from},
};

/// `clone(2)`'s flag for a new pid namespace.
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_VM: u64 = 0x100;

/// Reads a `T` from the start of `b` if it is long enough.
fn read<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a repr(C) integer-only type from
    // pmet-common, valid for any bit pattern; read_unaligned tolerates the
    // ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// A NUL-terminated (or full) byte string.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An exec's argv from its NUL-separated strings, at most `argc` of them.
fn argv(bytes: &[u8], truncated: bool, argc: usize) -> (Vec<String>, ArgvHex) {
    let mut pieces: Vec<&[u8]> = bytes.split(|&c| c == 0).collect();
    // The buffer ends with a NUL, leaving one empty piece; or, cut short
    // mid-string, with a piece that is not a whole one.
    if bytes.last() == Some(&0) || truncated {
        pieces.pop();
    }
    pieces.truncate(argc);
    argv_from(pieces)
}

/// An exec's environment from its NUL-separated `NAME=VALUE` strings;
/// `last` is the block of the exec before, shared when the bytes are the
/// same (consecutive execs mostly pass one environment on: ~2 KB not
/// copied, allocated and freed again per exec), and becomes this one.
fn exec_env(
    ts_ns: u64,
    tid: u32,
    bytes: &[u8],
    truncated: bool,
    last: &mut Option<Arc<[u8]>>,
) -> Event {
    // Whole strings only: a block cut short mid-string ends at its last NUL.
    let whole = bytes.iter().rposition(|&c| c == 0).map_or(0, |i| i + 1);
    let bytes = &bytes[..whole];
    let block = match last {
        Some(l) if **l == *bytes => l.clone(),
        _ => last.insert(bytes.into()).clone(),
    };
    Event::ExecEnv {
        ts_ns,
        tid,
        block,
        truncated,
    }
}

/// Who a process is after its exec (and where, when the kernel side read
/// its working directory).
fn exec(e: &ExecEvent, cwd: Option<String>) -> Event {
    Event::Exec {
        ts_ns: e.hdr.ts_ns,
        tgid: e.hdr.tgid,
        old_tid: e.old_tid,
        comm: cstr(&e.comm),
        ids: Ids {
            uid: e.uid,
            gid: e.gid,
            cgroup_id: e.cgroup_id,
            pid_ns: (e.pid_ns != 0).then_some(e.pid_ns),
            ns_pid: (e.pid_ns != 0).then_some(e.ns_pid),
        },
        maxrss_bytes: (e.maxrss_pages != 0).then(|| u64::from(e.maxrss_pages) * page_size()),
        cwd,
    }
}

/// A working directory from its components, last first, each ending in a
/// NUL (as the kernel side walks them up).
fn cwd(b: &[u8]) -> String {
    let mut parts: Vec<&[u8]> = b.split(|&c| c == 0).collect();
    parts.pop();
    let mut path = String::new();
    for p in parts.iter().rev() {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(p));
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// Decodes the kernel side's records, one after the other; what it keeps
/// between them is the last exec's environment (see `exec_env`).
#[derive(Debug, Default)]
pub struct Decoder {
    last_env: Option<Arc<[u8]>>,
}

impl Decoder {
    /// Decodes one record into `out`: most make one event; an exec's whole
    /// record (`EXEC_FULL`) makes the three the model takes an exec as (its
    /// argv, its environment, then who the process now is). False for a
    /// record too short or of an unknown kind.
    pub fn decode_into(&mut self, b: &[u8], out: &mut Vec<Event>) -> bool {
        let last_env = &mut self.last_env;
        let Some(hdr) = read::<EventHeader>(b) else {
            return false;
        };
        if hdr.kind != kind::EXEC_FULL {
            return decode_one(b, last_env).map(|ev| out.push(ev)).is_some();
        }
        let Some(h) = read::<ExecFullHeader>(b) else {
            return false;
        };
        let rest = &b[size_of::<ExecFullHeader>()..];
        let (argv_len, env_len) = (h.argv_len as usize, h.env_len as usize);
        let cwd_len = h.cwd_len as usize;
        if rest.len() < FILENAME_LEN + argv_len + env_len + cwd_len {
            return false;
        }
        let (ts_ns, tid) = (h.exec.hdr.ts_ns, h.exec.old_tid);
        let strings = &rest[FILENAME_LEN..];
        if h.argv_flags & exec_flags::UNREAD == 0 {
            let truncated = h.argv_flags & exec_flags::TRUNCATED != 0;
            let (argv, argv_hex) = argv(&strings[..argv_len], truncated, usize::MAX);
            out.push(Event::ExecArgs {
                ts_ns,
                tid,
                filename: cstr(&rest[..FILENAME_LEN]),
                argv,
                argv_hex,
                truncated,
            });
        }
        if h.env_flags & exec_flags::UNREAD == 0 {
            let truncated = h.env_flags & exec_flags::TRUNCATED != 0;
            out.push(exec_env(
                ts_ns,
                tid,
                &strings[argv_len..argv_len + env_len],
                truncated,
                last_env,
            ));
        }
        let at = argv_len + env_len;
        let dir = (h.cwd_flags == 0).then(|| cwd(&strings[at..at + cwd_len]));
        out.push(exec(&h.exec, dir));
        true
    }
}

/// Decodes a record that makes one event; `None` for a record too short or
/// of an unknown kind (an exec's whole record included: see
/// [`Decoder::decode_into`]).
fn decode_one(b: &[u8], last_env: &mut Option<Arc<[u8]>>) -> Option<Event> {
    let hdr: EventHeader = read(b)?;
    match hdr.kind {
        kind::FORK => {
            let e: ForkEvent = read(b)?;
            if e.flags & fork_flags::JOINED != 0 {
                return Some(Event::Join {
                    ts_ns: e.hdr.ts_ns,
                    pid: e.child,
                    cookie: e.cookie,
                });
            }
            Some(Event::Fork {
                ts_ns: e.hdr.ts_ns,
                parent_tgid: e.hdr.tgid,
                child: e.child,
                cookie: e.cookie,
                thread: e.flags & fork_flags::THREAD != 0,
                untracked: e.flags & fork_flags::UNTRACKED != 0,
                new_pid_ns: e.clone_flags & CLONE_NEWPID != 0,
                shares_memory: e.clone_flags & CLONE_VM != 0,
                comm: cstr(&e.comm),
            })
        }
        kind::EXEC_ARGS | kind::EXEC_ENV => {
            let h: ExecArgsHeader = read(b)?;
            let rest = &b[size_of::<ExecArgsHeader>()..];
            if rest.len() < FILENAME_LEN {
                return None;
            }
            let filename = cstr(&rest[..FILENAME_LEN]);
            let bytes = &rest[FILENAME_LEN..];
            let bytes = &bytes[..(h.argv_len as usize).min(bytes.len())];
            let truncated = h.flags & exec_flags::TRUNCATED != 0;
            if h.hdr.kind == kind::EXEC_ENV {
                return Some(exec_env(h.hdr.ts_ns, h.hdr.tid, bytes, truncated, last_env));
            }
            let (argv, argv_hex) = argv(bytes, truncated, h.argc as usize);
            Some(Event::ExecArgs {
                ts_ns: h.hdr.ts_ns,
                tid: h.hdr.tid,
                filename,
                argv,
                argv_hex,
                truncated,
            })
        }
        kind::EXEC => Some(exec(&read(b)?, None)),
        kind::EXIT => {
            let e: ExitEvent = read(b)?;
            Some(Event::Exit {
                ts_ns: e.hdr.ts_ns,
                tgid: e.hdr.tgid,
                tid: e.hdr.tid,
                cookie: e.cookie,
                group_dead: e.flags & exit_flags::GROUP_DEAD != 0,
                had_net: e.flags & exit_flags::HAD_NET != 0,
                exit_code: (e.flags & exit_flags::CODE_VALID != 0).then_some(e.exit_code),
                comm: cstr(&e.comm),
                peak_rss_bytes: (e.flags & exit_flags::MEM_VALID != 0)
                    .then(|| e.peak_rss_pages * page_size()),
                maxrss_bytes: (e.maxrss_pages != 0).then(|| e.maxrss_pages * page_size()),
            })
        }
        kind::FREE => {
            let e: FreeEvent = read(b)?;
            Some(Event::Free {
                ts_ns: e.hdr.ts_ns,
                tgid: e.hdr.tgid,
                tid: e.hdr.tid,
                cookie: e.cookie,
                totals: (e.flags & exit_flags::STATS_VALID != 0).then(|| totals(&e.figures)),
                kept: e.flags & exit_flags::KEPT != 0,
                ctx: ctx(&e.figures, e.flags),
            })
        }
        kind::CONN => {
            let e: ConnEvent = read(b)?;
            let n = &e.ends;
            Some(Event::Conn {
                tgid: e.hdr.tgid,
                proc_cookie: e.proc_cookie,
                opened: Opened {
                    sock_cookie: e.sock_cookie,
                    proto: if e.proto == 17 {
                        Proto::Udp
                    } else {
                        Proto::Tcp
                    },
                    role: Role::from_kernel(e.role),
                    local: endpoint(n.family, &n.laddr, n.lport).filter(|l| l.port() != 0),
                    remote: endpoint(n.family, &n.raddr, n.rport).filter(|r| r.port() != 0),
                    ts_ns: e.hdr.ts_ns,
                },
            })
        }
        kind::CONN_END => {
            let e: ConnEndEvent = read(b)?;
            Some(Event::ConnEnd {
                sock_cookie: e.sock_cookie,
                life: life(&e.life, true),
            })
        }
        _ => None,
    }
}

/// A TCP socket's life as the model keeps it (`ended`: the socket is gone).
pub fn life(l: &SockLife, ended: bool) -> Life {
    let n = &l.ends;
    Life {
        opened_ns: l.opened_ns,
        closed_ns: (l.closed_ns != 0).then_some(l.closed_ns),
        // A connect refused before its port was chosen has no local end.
        local: endpoint(n.family, &n.laddr, n.lport).filter(|l| l.port() != 0),
        remote: endpoint(n.family, &n.raddr, n.rport).filter(|r| r.port() != 0),
        role: Role::from_kernel(l.role),
        outcome: Outcome::from_kernel(l.outcome),
        retransmits: u64::from(l.retransmits),
        ended,
    }
}

/// A thread's context switches and faults, when `flags` say they were read.
pub fn ctx(f: &TaskFigures, flags: u32) -> Option<Ctx> {
    let want = exit_flags::STATS_VALID | exit_flags::CTX_VALID;
    (flags & want == want).then_some(Ctx {
        nvcsw: f.nvcsw,
        nivcsw: f.nivcsw,
        maj_flt: f.maj_flt,
    })
}

/// A thread's CPU and storage figures as the model keeps them.
pub fn totals(f: &TaskFigures) -> ThreadTotals {
    ThreadTotals {
        runtime_ns: f.sum_exec_runtime,
        utime_ns: f.utime,
        stime_ns: f.stime,
        read_bytes: f.read_bytes,
        write_bytes: f.write_bytes,
        cancelled_write_bytes: f.cancelled_write_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record, decoded on its own.
    fn decode(b: &[u8]) -> Option<Event> {
        decode_one(b, &mut None)
    }

    /// One record, by a decoder that has seen nothing before it.
    fn decode_into(b: &[u8], out: &mut Vec<Event>) -> bool {
        Decoder::default().decode_into(b, out)
    }
    use pmet_common::COMM_LEN;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn hdr(kind: u32, tgid: u32, tid: u32) -> EventHeader {
        EventHeader {
            kind,
            tgid,
            tid,
            _pad: 0,
            ts_ns: 42,
        }
    }

    #[test]
    fn fork_and_thread() {
        let e = ForkEvent {
            hdr: hdr(kind::FORK, 10, 11),
            child: 12,
            flags: 0,
            clone_flags: 0x11,
            cookie: 7,
            comm: comm("bash"),
        };
        assert_eq!(
            decode(&bytes(&e)),
            Some(Event::Fork {
                shares_memory: false,
                ts_ns: 42,
                parent_tgid: 10,
                child: 12,
                cookie: 7,
                thread: false,
                untracked: false,
                new_pid_ns: false,
                comm: "bash".into()
            })
        );
        let t = ForkEvent {
            flags: fork_flags::THREAD,
            ..e
        };
        assert!(matches!(
            decode(&bytes(&t)),
            Some(Event::Fork { thread: true, .. })
        ));
    }

    #[test]
    fn exec_args_variable_length() {
        let h = ExecArgsHeader {
            hdr: hdr(kind::EXEC_ARGS, 10, 11),
            argv_len: 15,
            argc: 3,
            flags: 0,
            _pad: 0,
        };
        let mut b = bytes(&h);
        let mut name = [0u8; FILENAME_LEN];
        name[..9].copy_from_slice(b"/bin/echo");
        b.extend_from_slice(&name);
        b.extend_from_slice(b"echo\0a b\0\xffz\0");
        assert_eq!(b.len(), size_of::<ExecArgsHeader>() + FILENAME_LEN + 12);
        // argv_len larger than what arrived is clamped, not a panic.
        let ev = decode(&b).unwrap();
        assert_eq!(
            ev,
            Event::ExecArgs {
                ts_ns: 42,
                tid: 11,
                filename: "/bin/echo".into(),
                argv: vec!["echo".into(), "a b".into(), "\u{fffd}z".into()],
                // The byte that is not UTF-8 is kept.
                argv_hex: Some(vec![None, None, Some("ff7a".into())]),
                truncated: false
            }
        );
    }

    #[test]
    fn an_exec_whole_record_makes_the_three_events_the_separate_ones_did() {
        let exec = ExecEvent {
            hdr: hdr(kind::EXEC_FULL, 10, 10),
            old_tid: 11,
            uid: 1000,
            gid: 100,
            ns_pid: 0,
            cgroup_id: 7,
            comm: comm("echo"),
            pid_ns: 0,
            maxrss_pages: 0,
        };
        let (argv, env) = (&b"echo\0a b\0"[..], &b"A=1\0B=2\0C=partial"[..]);
        let head = |argv_flags, env_flags| ExecFullHeader {
            exec,
            argv_len: argv.len() as u16,
            env_len: env.len() as u16,
            argv_flags,
            env_flags,
            cwd_len: 0,
            cwd_flags: exec_flags::UNREAD,
            _pad: 0,
        };
        let record = |h: &ExecFullHeader| {
            let mut b = bytes(h);
            let mut name = [0u8; FILENAME_LEN];
            name[..9].copy_from_slice(b"/bin/echo");
            b.extend_from_slice(&name);
            b.extend_from_slice(argv);
            b.extend_from_slice(env);
            b
        };
        let identity = Event::Exec {
            maxrss_bytes: None,
            cwd: None,
            ts_ns: 42,
            tgid: 10,
            old_tid: 11,
            comm: "echo".into(),
            ids: Ids {
                uid: 1000,
                gid: 100,
                cgroup_id: 7,
                pid_ns: None,
                ns_pid: None,
            },
        };
        let mut out = Vec::new();
        assert!(decode_into(
            &record(&head(0, exec_flags::TRUNCATED)),
            &mut out
        ));
        assert_eq!(
            out,
            [
                Event::ExecArgs {
                    ts_ns: 42,
                    tid: 11,
                    filename: "/bin/echo".into(),
                    argv: vec!["echo".into(), "a b".into()],
                    argv_hex: None,
                    truncated: false
                },
                Event::ExecEnv {
                    ts_ns: 42,
                    tid: 11,
                    block: b"A=1\0B=2\0".to_vec().into(),
                    truncated: true
                },
                identity.clone(),
            ]
        );
        // Strings the kernel side could not read are not made up.
        out.clear();
        let unread = exec_flags::UNREAD;
        assert!(decode_into(&record(&head(unread, unread)), &mut out));
        assert_eq!(out, [identity]);
        // Shorter than its lengths say: undecodable, nothing taken.
        out.clear();
        let mut short = record(&head(0, 0));
        short.pop();
        assert!(!decode_into(&short, &mut out));
        assert!(out.is_empty());
        // A decoder hands consecutive execs with the same environment one
        // shared block; different bytes get their own.
        let mut d = Decoder::default();
        let block = |d: &mut Decoder, r: &[u8]| {
            let mut out = Vec::new();
            assert!(d.decode_into(r, &mut out));
            out.into_iter()
                .find_map(|e| match e {
                    Event::ExecEnv { block, .. } => Some(block),
                    _ => None,
                })
                .unwrap()
        };
        let whole = record(&head(0, 0));
        let (a, b) = (block(&mut d, &whole), block(&mut d, &whole));
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(*a, *b"A=1\0B=2\0");
        let mut other = whole.clone();
        // "A=1" becomes "A=9".
        let at = other.len() - env.len() + 2;
        other[at] = b'9';
        let c = block(&mut d, &other);
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
        assert_eq!(*c, *b"A=9\0B=2\0");
        assert_eq!(*block(&mut d, &whole), *a);
        // The working directory after the environment, its components last
        // first (the walk goes up); the root has none.
        for (parts, want) in [(&b"deep\0a b\0usr\0"[..], "/usr/a b/deep"), (b"", "/")] {
            let mut h = head(0, 0);
            (h.cwd_len, h.cwd_flags) = (parts.len() as u16, 0);
            let mut r = record(&h);
            r.extend_from_slice(parts);
            let mut out = Vec::new();
            assert!(decode_into(&r, &mut out));
            let Some(Event::Exec { cwd, .. }) = out.last() else {
                panic!("{out:?}")
            };
            assert_eq!(cwd.as_deref(), Some(want));
        }
    }

    #[test]
    fn exit_and_free_flags() {
        let e = ExitEvent {
            maxrss_pages: 0,
            hdr: hdr(kind::EXIT, 10, 10),
            exit_code: 3 << 8,
            flags: exit_flags::GROUP_DEAD | exit_flags::CODE_VALID | exit_flags::HAD_NET,
            cookie: 5,
            comm: comm("sh"),
            peak_rss_pages: 0,
        };
        assert!(matches!(
            decode(&bytes(&e)),
            Some(Event::Exit {
                group_dead: true,
                had_net: true,
                exit_code: Some(768),
                cookie: 5,
                ..
            })
        ));
        let e = ExitEvent { flags: 0, ..e };
        assert!(matches!(
            decode(&bytes(&e)),
            Some(Event::Exit {
                group_dead: false,
                had_net: false,
                exit_code: None,
                peak_rss_bytes: None,
                ..
            })
        ));
        let e = ExitEvent {
            flags: exit_flags::MEM_VALID,
            peak_rss_pages: 3,
            ..e
        };
        match decode(&bytes(&e)) {
            Some(Event::Exit {
                peak_rss_bytes: Some(b),
                ..
            }) => assert_eq!(b, 3 * page_size()),
            other => panic!("{other:?}"),
        }
        let f = FreeEvent {
            hdr: hdr(kind::FREE, 10, 10),
            cookie: 5,
            figures: TaskFigures {
                sum_exec_runtime: 999,
                ..TaskFigures::default()
            },
            flags: exit_flags::STATS_VALID,
            ..FreeEvent::default()
        };
        match decode(&bytes(&f)) {
            Some(Event::Free {
                totals: Some(t),
                ctx: None,
                ..
            }) => assert_eq!(t.runtime_ns, 999),
            other => panic!("{other:?}"),
        }
        let f = FreeEvent {
            figures: TaskFigures {
                nvcsw: 4,
                nivcsw: 5,
                maj_flt: 7,
                ..f.figures
            },
            flags: exit_flags::STATS_VALID | exit_flags::CTX_VALID,
            ..f
        };
        match decode(&bytes(&f)) {
            Some(Event::Free { ctx: Some(c), .. }) => assert_eq!(
                c,
                Ctx {
                    nvcsw: 4,
                    nivcsw: 5,
                    maj_flt: 7
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_or_unknown_records_are_rejected() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&bytes(&hdr(99, 1, 1))), None);
        assert_eq!(decode(&bytes(&hdr(kind::FORK, 1, 1))), None);
        assert_eq!(decode(&bytes(&hdr(kind::EXEC_ARGS, 1, 1))), None);
    }
}
