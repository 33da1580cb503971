//! Connections: which socket each tracked process used, its two ends, its
//! bytes, and (for TCP) how it opened and ended.
//!
//! Sockets are named by their cookie (`bpf_get_socket_cookie`), never by
//! address: an address is reused as soon as a socket is freed, a cookie never.
//! The helper needs the kernel's own `struct sock *`, so all of this runs on
//! BTF tracepoints; the classic socket fallback keeps per-process totals only.
//!
//! State changes and retransmits often fire in softirq context, in whatever
//! task was interrupted, so the current task is trusted as an owner only at
//! hooks that run in the owner's system call: a send or receive, entering
//! `SYN_SENT` (connect), and entering `FIN_WAIT1` / `LAST_ACK` (close).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_socket_cookie},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use pmet_common::{
    ConnBytes, ConnEndEvent, ConnEvent, ConnKey, Endpoints, EventHeader, SockLife, config_flags,
    conn_outcome, conn_role, counter, kind,
};

use crate::{ACCEPTED, CONNS, EVENTS, SOCKS, bump, kread, now, tracked};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;

// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;

// errno values a connection can end with.
const EPIPE: i32 = 32;
const ENETUNREACH: i32 = 101;
const ECONNRESET: i32 = 104;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// The socket's name: its cookie; or, on kernels whose tracing programs
/// cannot call `bpf_get_socket_cookie` (before 5.12), its address, which
/// is unique while the socket lives (a followed socket's end is seen at
/// `tcp_destroy_sock`, before the address can be reused).
#[inline(always)]
fn cookie_of(sk: *const c_void) -> u64 {
    if config!(flags) & config_flags::SOCK_ADDRESS_ID != 0 {
        return sk as u64;
    }
    // SAFETY: `sk` is the tracepoint's own `struct sock *` argument, which
    // the verifier knows by its BTF type.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// A field of a socket, with the probe helper rather than a plain load
/// (`kread` with `btf`): these reads come once per socket or state change,
/// not per call, and an IPv6 address is read whole, 16 bytes, more than one
/// load.
#[inline(always)]
fn read<T: Copy>(sk: u64, offset: u16) -> Option<T> {
    // SAFETY: offsets come from this kernel's BTF; sk is live during the hook.
    unsafe { kread(sk, offset.into(), false) }
}

/// A socket's ends as they are now.
#[inline(always)]
fn ends(sk: u64) -> Endpoints {
    let mut e = Endpoints {
        family: read::<u16>(sk, config!(sk_family)).unwrap_or(0),
        ..Endpoints::default()
    };
    if e.family == AF_INET {
        let r: [u8; 4] = read(sk, config!(sk_daddr)).unwrap_or([0; 4]);
        let l: [u8; 4] = read(sk, config!(sk_rcv_saddr)).unwrap_or([0; 4]);
        e.raddr[..4].copy_from_slice(&r);
        e.laddr[..4].copy_from_slice(&l);
    } else if e.family == AF_INET6 && config!(sk_v6_daddr) != 0 {
        e.raddr = read(sk, config!(sk_v6_daddr)).unwrap_or([0; 16]);
        e.laddr = read(sk, config!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
    }
    e.rport = u16::from_be(read::<u16>(sk, config!(sk_dport)).unwrap_or(0));
    e.lport = read::<u16>(sk, config!(sk_num)).unwrap_or(0);
    e
}

/// Tells userspace that process `tgid` uses socket `sock_cookie`.
#[inline(always)]
fn announce(sk: u64, tgid: u32, proc_cookie: u64, sock_cookie: u64, proto: u16, role: u16) {
    let Some(mut slot) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    slot.write(ConnEvent {
        hdr: EventHeader {
            kind: kind::CONN,
            tgid,
            tid,
            _pad: 0,
            ts_ns: now(),
        },
        proc_cookie,
        sock_cookie,
        ends: ends(sk),
        proto,
        role,
        _pad: 0,
    });
    slot.submit(0);
}

/// Starts following a TCP socket's life.
#[inline(always)]
fn follow(sk: u64, sock_cookie: u64, role: u16, opened_ns: u64) {
    let life = SockLife {
        opened_ns,
        closed_ns: 0,
        ends: ends(sk),
        retransmits: 0,
        role,
        outcome: conn_outcome::OPEN,
        retrans_base: total_retrans(sk).unwrap_or(0),
        _pad: 0,
    };
    if SOCKS.insert(sock_cookie, life, BPF_NOEXIST as u64).is_err()
        && SOCKS.get_ptr(sock_cookie).is_none()
    {
        bump(counter::CONN_FULL);
    }
}

/// The socket's `tcp_sock.total_retrans`: segments it retransmitted over
/// its life, as `TCP_INFO` reports them (`None`: not known here).
#[inline(always)]
fn total_retrans(sk: u64) -> Option<u32> {
    if config!(tcp_total_retrans) == 0 {
        return None;
    }
    read::<u32>(sk, config!(tcp_total_retrans))
}

/// Brings a followed socket's retransmits up to its own count.
#[inline(always)]
fn retransmits_now(sk: u64, l: &mut SockLife) -> bool {
    match total_retrans(sk) {
        Some(t) => {
            l.retransmits = t.wrapping_sub(l.retrans_base);
            true
        }
        None => false,
    }
}

/// Counts `n` bytes that process `tgid` moved on socket `sk` (called by the
/// BTF socket hooks once the bytes count as network bytes).
#[inline(always)]
pub fn count(sk: *const c_void, tgid: u32, proc_cookie: u64, tcp: bool, tx: bool, n: u64) {
    if config!(flags) & config_flags::CONNECTIONS == 0 {
        return;
    }
    let sock_cookie = cookie_of(sk);
    let key = ConnKey {
        tgid,
        _pad: 0,
        proc_cookie,
        sock_cookie,
    };
    let mut announced = false;
    let c = match CONNS.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            // One CPU's NOEXIST insert wins: that one announces the pair.
            if CONNS
                .insert(key, ConnBytes::default(), BPF_NOEXIST as u64)
                .is_ok()
            {
                first_use(sk as u64, tgid, proc_cookie, sock_cookie, tcp);
                announced = true;
            }
            match CONNS.get_ptr_mut(key) {
                Some(c) => c,
                None => {
                    bump(counter::CONN_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's slot of a live per-CPU element.
    if !tcp && unsafe { (*c).remote_seen } == 0 {
        // A UDP socket may `connect()` after its first datagram (iperf3's
        // server does): no hook sees the connect, so until this CPU has
        // seen a remote end each datagram looks for one (a read of the
        // port), and the first to find it announces the socket again.
        if read::<u16>(sk as u64, config!(sk_dport)).unwrap_or(0) != 0 {
            if !announced {
                announce(
                    sk as u64,
                    tgid,
                    proc_cookie,
                    sock_cookie,
                    IPPROTO_UDP,
                    conn_role::UDP,
                );
            }
            // SAFETY: as above.
            unsafe { (*c).remote_seen = 1 };
        }
    }
    // SAFETY: this CPU's slot of a live per-CPU element.
    unsafe {
        if tx {
            (*c).tx_bytes += n;
        } else {
            (*c).rx_bytes += n;
        }
    }
}

#[inline(always)]
fn first_use(sk: u64, tgid: u32, proc_cookie: u64, sock_cookie: u64, tcp: bool) {
    let role = if !tcp {
        conn_role::UDP
    } else if let Some(l) = SOCKS.get_ptr(sock_cookie) {
        // SAFETY: a live map value, copied at once.
        unsafe { (*l).role }
    } else {
        // SAFETY: a live map value, copied at once.
        let accepted = ACCEPTED.get_ptr(sock_cookie).map(|t| unsafe { *t });
        let (role, opened) = match accepted {
            Some(t) => (conn_role::ACCEPT, t),
            None => (conn_role::UNKNOWN, now()),
        };
        follow(sk, sock_cookie, role, opened);
        role
    };
    let proto = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    announce(sk, tgid, proc_cookie, sock_cookie, proto, role);
}

/// TCP state changes: a tracked connect begins, an accepted connection is
/// noted (its owner is known only when it first uses it), and a followed
/// connection's end and outcome are recorded.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if config!(flags) & config_flags::CONNECTIONS == 0 {
        return 0;
    }
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const c_void = crate::arg(&ctx, 0) as _;
    let old = crate::arg(&ctx, 1) as i32;
    let new = crate::arg(&ctx, 2) as i32;
    if read::<u16>(sk as u64, config!(sk_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let sock_cookie = cookie_of(sk);
    if let Some(l) = SOCKS.get_ptr_mut(sock_cookie) {
        let err = if new == TCP_CLOSE {
            read::<i32>(sk as u64, config!(sk_err)).unwrap_or(0)
        } else {
            0
        };
        let e = ends(sk as u64);
        // SAFETY: a live map value; a socket's state changes under its lock.
        unsafe { changed(&mut *l, e, old, new, err) };
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if new == TCP_SYN_SENT {
        // Always in the connecting task's own connect().
        if let Some(t) = tracked(tgid) {
            follow(sk as u64, sock_cookie, conn_role::CONNECT, now());
            announce(
                sk as u64,
                tgid,
                t.cookie,
                sock_cookie,
                IPPROTO_TCP,
                conn_role::CONNECT,
            );
        }
    } else if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // A handshake completed for some listener; its owner is whoever
        // first uses it. LRU: unclaimed ones age out.
        let _ = ACCEPTED.insert(sock_cookie, now(), 0);
    } else if new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK {
        // A close() in the owner's context: an accepted connection closed
        // without a byte moved is still one the tree had.
        if let Some(t) = tracked(tgid) {
            // SAFETY: a live map value, copied at once.
            if let Some(opened) = ACCEPTED.get_ptr(sock_cookie).map(|t| unsafe { *t }) {
                follow(sk as u64, sock_cookie, conn_role::ACCEPT, opened);
                if let Some(l) = SOCKS.get_ptr_mut(sock_cookie) {
                    // SAFETY: as above.
                    unsafe { changed(&mut *l, ends(sk as u64), old, new, 0) };
                }
                announce(
                    sk as u64,
                    tgid,
                    t.cookie,
                    sock_cookie,
                    IPPROTO_TCP,
                    conn_role::ACCEPT,
                );
            }
        }
    }
    0
}

#[inline(always)]
fn changed(l: &mut SockLife, e: Endpoints, old: i32, new: i32, err: i32) {
    if e.lport != 0 {
        // A connect's local port is chosen after SYN_SENT; the ports are
        // still set at CLOSE (released just after this tracepoint).
        l.ends = e;
    }
    if (new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK || new == TCP_CLOSE) && l.closed_ns == 0 {
        l.closed_ns = now();
    }
    if new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK {
        if l.outcome == conn_outcome::OPEN {
            l.outcome = conn_outcome::CLOSED;
        }
    } else if new == TCP_CLOSE {
        // sk_err is set before the state goes to CLOSE on every error path
        // (tcp_done_with_error).
        l.outcome = match err {
            ECONNREFUSED => conn_outcome::REFUSED,
            ETIMEDOUT => conn_outcome::TIMEOUT,
            EHOSTUNREACH | ENETUNREACH => conn_outcome::UNREACHABLE,
            ECONNRESET | EPIPE => conn_outcome::RESET,
            _ if old == TCP_SYN_SENT => conn_outcome::ABORTED,
            _ if l.outcome == conn_outcome::OPEN => conn_outcome::CLOSED,
            _ => l.outcome,
        };
    }
}

/// A segment of a followed connection was sent again.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    if config!(flags) & config_flags::CONNECTIONS == 0 {
        return 0;
    }
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb)
    let sk: *const c_void = crate::arg(&ctx, 0) as _;
    if let Some(l) = SOCKS.get_ptr_mut(cookie_of(sk)) {
        // SAFETY: a live map value; retransmits run under the socket's lock.
        // The kernel has added this packet's segments to `total_retrans`
        // before the tracepoint (`__tcp_retransmit_skb`).
        let l = unsafe { &mut *l };
        if !retransmits_now(sk as u64, l) {
            l.retransmits += 1;
        }
    }
    0
}

/// A TCP socket is destroyed: its followed life goes to userspace, final.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    if config!(flags) & config_flags::CONNECTIONS == 0 {
        return 0;
    }
    // TP_PROTO(struct sock *sk)
    let sk: *const c_void = crate::arg(&ctx, 0) as _;
    let sock_cookie = cookie_of(sk);
    let _ = ACCEPTED.remove(sock_cookie);
    // A retransmit whose send failed counts in `total_retrans` with no
    // tracepoint: the socket's own count, once more, at its end.
    if let Some(l) = SOCKS.get_ptr_mut(sock_cookie) {
        // SAFETY: a live map value.
        retransmits_now(sk as u64, unsafe { &mut *l });
    }
    let Some(l) = SOCKS.get_ptr(sock_cookie) else {
        return 0;
    };
    let Some(mut slot) = EVENTS.reserve::<ConnEndEvent>(0) else {
        // Left in SOCKS: userspace reads what remains there at the end.
        bump(counter::RINGBUF_FULL);
        return 0;
    };
    let tgid_tid = bpf_get_current_pid_tgid();
    slot.write(ConnEndEvent {
        hdr: EventHeader {
            kind: kind::CONN_END,
            tgid: (tgid_tid >> 32) as u32,
            tid: tgid_tid as u32,
            _pad: 0,
            ts_ns: now(),
        },
        sock_cookie,
        // SAFETY: a live map value, copied before it is removed.
        life: unsafe { *l },
    });
    slot.submit(0);
    let _ = SOCKS.remove(sock_cookie);
    0
}
