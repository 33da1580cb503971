//! Socket bytes, counted in place per tracked process: one map update per
//! send or receive, no event per packet.
//!
//! `sock:sock_send_length` / `sock:sock_recv_length` fire inside
//! `sock_sendmsg`/`sock_recvmsg` in the calling task's context, so the current
//! tgid is the true owner, loopback included. Where the kernel has no such
//! tracepoints (before 6.3), fexit hooks on the inet layer's send and receive
//! functions count the same bytes, in the same context.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit, tracepoint},
    programs::{BtfTracePointContext, FExitContext, TracePointContext},
};
use pmet_common::{NetCounters, NetKey, counter, tracked_flags};

use crate::{NET, TRACKED, bump, kread, tracked};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IPPROTO_UDPLITE: u16 = 136;
const IPPROTO_MPTCP: u16 = 262;
const MSG_PEEK: i32 = 2;
/// `sk_type` values of the sockets whose bytes are TCP or UDP payload.
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    if try_count(&ctx, true).is_err() {
        bump(counter::READ_FAILED);
    }
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    if try_count(&ctx, false).is_err() {
        bump(counter::READ_FAILED);
    }
    0
}

/// The same hooks as BTF tracepoints: the raw arguments (`sk`, `ret`,
/// `flags`) with no trace record built first, so cheaper per call, and
/// detached at once. Preferred when BTF gives `struct sock`'s offsets.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_btf(ctx: BtfTracePointContext) -> i32 {
    if try_count_btf(&ctx, true).is_err() {
        bump(counter::READ_FAILED);
    }
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_btf(ctx: BtfTracePointContext) -> i32 {
    if try_count_btf(&ctx, false).is_err() {
        bump(counter::READ_FAILED);
    }
    0
}

#[inline(always)]
fn try_count_btf(ctx: &BtfTracePointContext, tx: bool) -> Result<(), i32> {
    // TP_PROTO(struct sock *sk, int ret, int flags)
    let flags = if tx { 0 } else { crate::arg(ctx, 2) as i32 };
    count_sk(
        crate::arg(ctx, 0) as _,
        crate::arg(ctx, 1) as i32 as i64,
        flags,
        tx,
    )
}

/// Counts what one send or receive of socket `sk` (a pointer the verifier
/// knows by its BTF type) moved: `ret` bytes, or an error.
#[inline(always)]
fn count_sk(sk: u64, ret: i64, flags: i32, tx: bool) -> Result<(), i32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(t) = tracked(tgid) else {
        return Ok(());
    };
    if ret <= 0 {
        return Ok(());
    }
    // A send or receive moves less than 2 GiB (the kernel caps a call at
    // MAX_RW_COUNT), so the count fits the counters' i32 path.
    let ret = ret.min(i32::MAX as i64) as i32;
    // SAFETY (all reads): offsets from this kernel's BTF; sk is live during
    // the call, and known to the verifier by its type.
    let family: u16 = unsafe { kread(sk, config!(sk_family).into(), true) }.ok_or(-1)?;
    let protocol: u16 = unsafe { kread(sk, config!(sk_protocol).into(), true) }.ok_or(-1)?;
    if config!(sk_type) != 0 {
        // A raw socket opened with IPPROTO_UDP (or TCP) moves whole packets,
        // headers included: not payload of either protocol.
        let ty: u16 = unsafe { kread(sk, config!(sk_type).into(), true) }.ok_or(-1)?;
        if ty != SOCK_STREAM && ty != SOCK_DGRAM {
            return Ok(());
        }
    }
    if let Some(tcp) = add(tgid, t.cookie, family, protocol, ret, flags, tx) {
        crate::conn::count(sk as *const c_void, tgid, t.cookie, tcp, tx, ret as u64);
    }
    Ok(())
}

/// The `struct sock` of the `struct socket` an fexit hook was given.
#[inline(always)]
fn sk_of(sock: u64) -> Result<u64, i32> {
    // SAFETY: `sock` is the traced function's own `struct socket *`
    // argument, known to the verifier by its type; the offset is from BTF.
    unsafe { kread::<u64>(sock, config!(socket_sk).into(), true) }
        .filter(|&sk| sk != 0)
        .ok_or(-1)
}

// Kernels before 6.3 have no socket tracepoints. There the bytes are counted
// at the exit of the IPv4 and IPv6 socket layers' send and receive
// functions, which every path to a TCP or UDP socket goes through (write,
// send*, sendmmsg and recvmmsg included, which call them without
// `sock_sendmsg`), and `inet_sendpage`, where sendfile and splice to a
// socket went before 6.5. Their return value is what the tracepoints' `ret`
// would have been. The argument positions below are these functions'
// signatures; the loader checks them against this kernel's BTF first.

/// `int inet_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet_sendmsg")]
pub fn inet_sendmsg_fx(ctx: FExitContext) -> i32 {
    fexit_send(&ctx, 3)
}

/// `int inet6_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet6_sendmsg")]
pub fn inet6_sendmsg_fx(ctx: FExitContext) -> i32 {
    fexit_send(&ctx, 3)
}

/// `ssize_t inet_sendpage(struct socket *sock, struct page *page, int
/// offset, size_t size, int flags)`.
#[fexit(function = "inet_sendpage")]
pub fn inet_sendpage_fx(ctx: FExitContext) -> i32 {
    fexit_send(&ctx, 5)
}

/// `int inet_recvmsg(struct socket *sock, struct msghdr *msg, size_t size,
/// int flags)`.
#[fexit(function = "inet_recvmsg")]
pub fn inet_recvmsg_fx(ctx: FExitContext) -> i32 {
    fexit_recv(&ctx)
}

/// `int inet6_recvmsg(struct socket *sock, struct msghdr *msg, size_t size,
/// int flags)`.
#[fexit(function = "inet6_recvmsg")]
pub fn inet6_recvmsg_fx(ctx: FExitContext) -> i32 {
    fexit_recv(&ctx)
}

#[inline(always)]
fn fexit_send(ctx: &FExitContext, ret_at: usize) -> i32 {
    let r = sk_of(crate::arg(ctx, 0) as _).and_then(|sk| {
        let ret = if ret_at == 5 {
            crate::arg(ctx, 5) as i64
        } else {
            crate::arg(ctx, 3) as i32 as i64
        };
        count_sk(sk, ret, 0, true)
    });
    if r.is_err() {
        bump(counter::READ_FAILED);
    }
    0
}

#[inline(always)]
fn fexit_recv(ctx: &FExitContext) -> i32 {
    let r = sk_of(crate::arg(ctx, 0) as _).and_then(|sk| {
        count_sk(
            sk,
            crate::arg(ctx, 4) as i32 as i64,
            crate::arg(ctx, 3) as i32,
            false,
        )
    });
    if r.is_err() {
        bump(counter::READ_FAILED);
    }
    0
}

#[inline(always)]
fn try_count(ctx: &TracePointContext, tx: bool) -> Result<(), i32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(t) = tracked(tgid) else {
        return Ok(());
    };
    // SAFETY (all reads): offsets come from this kernel's tracepoint format.
    let ret: i32 = unsafe { ctx.read_at(config!(sock_ret) as usize)? };
    if ret <= 0 {
        // Errors and empty reads/writes move no bytes.
        return Ok(());
    }
    let family: u16 = unsafe { ctx.read_at(config!(sock_family) as usize)? };
    let protocol: u16 = unsafe { ctx.read_at(config!(sock_protocol) as usize)? };
    let flags: i32 = if tx {
        0
    } else {
        unsafe { ctx.read_at(config!(sock_flags) as usize)? }
    };
    let _ = add(tgid, t.cookie, family, protocol, ret, flags, tx);
    Ok(())
}

/// Counts `ret` bytes moved by process `tgid` when they are network bytes;
/// says whether they were TCP (`Some(true)`) or UDP (`Some(false)`).
#[inline(always)]
fn add(
    tgid: u32,
    cookie: u64,
    family: u16,
    protocol: u16,
    ret: i32,
    flags: i32,
    tx: bool,
) -> Option<bool> {
    if family != AF_INET && family != AF_INET6 {
        // Unix sockets and the rest are IPC, not network.
        return None;
    }
    let tcp = protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP;
    let udp = protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE;
    if !tcp && !udp {
        return None;
    }
    if !tx && flags & MSG_PEEK != 0 {
        // Peeked bytes are read again later; count them once.
        return None;
    }
    let key = NetKey {
        tgid,
        _pad: 0,
        cookie,
    };
    let c = match NET.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            // Another CPU may insert first; NOEXIST then fails harmlessly and
            // the lookup below finds its entry.
            let _ = NET.insert(key, NetCounters::default(), BPF_NOEXIST as u64);
            match NET.get_ptr_mut(key) {
                Some(c) => {
                    // Its exit says it has counters (once per process).
                    if let Some(t) = TRACKED.get_ptr_mut(tgid) {
                        // SAFETY: a live map value; a racing setter writes
                        // the same bit.
                        unsafe {
                            if (*t).cookie == cookie {
                                (*t).flags |= tracked_flags::HAD_NET;
                            }
                        }
                    }
                    c
                }
                None => {
                    bump(counter::NET_FULL);
                    return Some(tcp);
                }
            }
        }
    };
    let n = ret as u64;
    // SAFETY: `c` is this CPU's slot of a live map element; per-CPU, so no
    // other program writes it concurrently.
    unsafe {
        match (tcp, tx) {
            (true, true) => {
                (*c).tcp_tx_bytes += n;
                (*c).tcp_tx_calls += 1;
            }
            (true, false) => {
                (*c).tcp_rx_bytes += n;
                (*c).tcp_rx_calls += 1;
            }
            (false, true) => {
                (*c).udp_tx_bytes += n;
                (*c).udp_tx_calls += 1;
            }
            (false, false) => {
                (*c).udp_rx_bytes += n;
                (*c).udp_rx_calls += 1;
            }
        }
    }
    Some(tcp)
}
