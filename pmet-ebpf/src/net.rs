//! Socket bytes, counted in place per tracked process: one map update per
//! send or receive, no event per packet.
//!
//! `sock:sock_send_length` / `sock:sock_recv_length` fire inside
//! `sock_sendmsg`/`sock_recvmsg` in the calling task's context, so the current
//! tgid is the true owner, loopback included.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, macros::tracepoint,
    programs::TracePointContext,
};
use pmet_common::{NetCounters, NetKey, counter};

use crate::{CONFIG, NET, bump, tracked};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IPPROTO_UDPLITE: u16 = 136;
const IPPROTO_MPTCP: u16 = 262;
const MSG_PEEK: i32 = 2;

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

#[inline(always)]
fn try_count(ctx: &TracePointContext, tx: bool) -> Result<(), i32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(t) = tracked(tgid) else {
        return Ok(());
    };
    let cfg = CONFIG.load();
    // SAFETY (all reads): offsets come from this kernel's tracepoint format.
    let ret: i32 = unsafe { ctx.read_at(cfg.sock_ret as usize)? };
    if ret <= 0 {
        // Errors and empty reads/writes move no bytes.
        return Ok(());
    }
    let family: u16 = unsafe { ctx.read_at(cfg.sock_family as usize)? };
    if family != AF_INET && family != AF_INET6 {
        // Unix sockets and the rest are IPC, not network.
        return Ok(());
    }
    let protocol: u16 = unsafe { ctx.read_at(cfg.sock_protocol as usize)? };
    let tcp = protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP;
    let udp = protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE;
    if !tcp && !udp {
        return Ok(());
    }
    if !tx {
        let flags: i32 = unsafe { ctx.read_at(cfg.sock_flags as usize)? };
        if flags & MSG_PEEK != 0 {
            // Peeked bytes are read again later; count them once.
            return Ok(());
        }
    }
    let key = NetKey {
        tgid,
        _pad: 0,
        cookie: t.cookie,
    };
    let c = match NET.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            // Another CPU may insert first; NOEXIST then fails harmlessly and
            // the lookup below finds its entry.
            let _ = NET.insert(key, NetCounters::default(), BPF_NOEXIST as u64);
            match NET.get_ptr_mut(key) {
                Some(c) => c,
                None => {
                    bump(counter::NET_FULL);
                    return Ok(());
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
    Ok(())
}
