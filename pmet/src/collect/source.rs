//! The world as a tracing session sees it, behind two small traits: the
//! kernel side ([`EventSource`]) and /proc ([`Sampler`]). The real ones are
//! [`Kernel`] and [`Procfs`]; the session's unit tests use in-memory fakes,
//! so every rule about exits, losses and pid reuse is tested without root.

use std::io;

use pmet_common::{ConnKey, Dying, NetCounters, counter};

use super::{
    ebpf::Kernel,
    procfs::{Procfs, Sample, Shares, Stat, ThreadFigures},
};
use crate::{
    error::Error,
    model::{
        conn::Life,
        event::{ArgvHex, Event, Ids},
        net::{Net, Traffic},
    },
};

/// The kernel side: events about the tracked tree, and the maps behind them.
pub trait EventSource {
    /// Appends the events waiting, in order; returns how many records could
    /// not be decoded.
    fn drain_into(&mut self, out: &mut Vec<Event>) -> u64;
    /// Puts a process in the tracked tree.
    fn track(&mut self, pid: u32, cookie: u64) -> Result<(), Error>;
    /// Takes a process out of the tracked tree (it and what it starts from
    /// now on are no longer followed).
    fn untrack(&mut self, pid: u32);
    /// The cookie a pid is tracked under, if it still is.
    fn tracked(&self, pid: u32) -> Option<u64>;
    /// A live process's network traffic so far.
    fn net(&self, pid: u32, cookie: u64) -> Option<Net>;
    /// An exited process's final traffic, removed from the kernel.
    fn take_net(&mut self, pid: u32, cookie: u64) -> Option<Net>;
    /// Loss counters, indexed by `pmet_common::counter`.
    fn counters(&self) -> [u64; counter::LEN as usize];
    /// Exited threads whose free has not been seen, by task address.
    fn dying(&self) -> Vec<(u64, Dying)>;
    /// Gives up on one of them.
    fn forget_dying(&mut self, task: u64);
    /// Whether final per-thread figures arrive at free time.
    fn exit_totals(&self) -> bool;
    /// Whether connections are followed.
    fn connections(&self) -> bool;
    /// Whether socket bytes are counted (a network hook loaded).
    fn network(&self) -> bool {
        true
    }
    /// A process's bytes on one socket as (sent, received); `take` removes
    /// them from the kernel (the socket or the process is gone).
    fn conn_bytes(&mut self, key: (u32, u64), sock_cookie: u64, take: bool) -> Option<(u64, u64)>;
    /// A TCP socket's life so far, while the kernel still follows it.
    fn sock_life(&self, sock_cookie: u64) -> Option<Life>;
}

/// /proc: live figures and the shape of the process table.
pub trait Sampler {
    /// Clock ticks per second of /proc's CPU times.
    fn ticks_per_s(&self) -> u64;
    /// `/proc/PID/stat`.
    fn stat(&self, pid: u32) -> io::Result<Stat>;
    /// `/proc/PID/cmdline` (and the bytes of arguments not UTF-8).
    fn cmdline(&self, pid: u32) -> io::Result<(Vec<String>, ArgvHex)>;
    /// A live sample of one process.
    fn sample(&self, pid: u32, ts_ns: u64) -> Option<Sample>;
    /// Lets go of what is kept for sampling processes that `keep` says no
    /// to (those no longer live).
    fn keep_only(&self, keep: &dyn Fn(u32) -> bool) {
        let _ = keep;
    }
    /// A process's environment, `NAME=VALUE` (for one pmet attaches to).
    fn environ(&self, pid: u32) -> Option<Vec<String>>;
    /// Who a process runs as and its cgroup (for one pmet attaches to).
    fn ids(&self, pid: u32) -> Option<Ids>;
    /// Its working directory.
    fn cwd(&self, pid: u32) -> Option<String>;
    /// What of one process's memory is its own (costlier than a sample).
    fn shares(&self, pid: u32) -> Option<Shares>;
    /// Per-thread figures of one process.
    fn threads(&self, pid: u32) -> Vec<ThreadFigures>;
    /// Every process.
    fn scan(&self) -> Vec<Stat>;
    /// `pid` and its descendants, parents first.
    fn subtree(&self, pid: u32) -> Vec<u32>;
    /// Whether `pid` is no longer in /proc at all (reaped; a zombie is
    /// still there).
    fn gone(&self, pid: u32) -> bool;
    /// Its live threads' own I/O summed (read, write, cancelled bytes; each
    /// `/proc/PID/task/TID/io`, which unlike `/proc/PID/io` leaves out ended
    /// threads and reaped children); `None` when unreadable.
    fn threads_io(&self, pid: u32) -> Option<[u64; 3]>;
}

/// The kernel side's counters as the model keeps them: the one conversion.
impl From<&NetCounters> for Net {
    fn from(c: &NetCounters) -> Self {
        Net {
            tcp: Traffic {
                tx_bytes: c.tcp_tx_bytes,
                rx_bytes: c.tcp_rx_bytes,
                tx_calls: c.tcp_tx_calls,
                rx_calls: c.tcp_rx_calls,
            },
            udp: Traffic {
                tx_bytes: c.udp_tx_bytes,
                rx_bytes: c.udp_rx_bytes,
                tx_calls: c.udp_tx_calls,
                rx_calls: c.udp_rx_calls,
            },
        }
    }
}

impl EventSource for Kernel {
    fn drain_into(&mut self, out: &mut Vec<Event>) -> u64 {
        let mut undecodable = 0;
        while let Some(item) = self.events.next() {
            if !self.decoder.decode_into(&item, out) {
                undecodable += 1;
            }
        }
        undecodable
    }
    fn track(&mut self, pid: u32, cookie: u64) -> Result<(), Error> {
        Kernel::track(self, pid, cookie)
    }
    fn untrack(&mut self, pid: u32) {
        Kernel::untrack(self, pid)
    }
    fn tracked(&self, pid: u32) -> Option<u64> {
        Kernel::tracked(self, pid)
    }
    fn net(&self, pid: u32, cookie: u64) -> Option<Net> {
        Kernel::net(self, pid, cookie).as_ref().map(Net::from)
    }
    fn take_net(&mut self, pid: u32, cookie: u64) -> Option<Net> {
        Kernel::take_net(self, pid, cookie).as_ref().map(Net::from)
    }
    fn counters(&self) -> [u64; counter::LEN as usize] {
        Kernel::counters(self)
    }
    fn dying(&self) -> Vec<(u64, Dying)> {
        Kernel::dying(self)
    }
    fn forget_dying(&mut self, task: u64) {
        Kernel::forget_dying(self, task)
    }
    fn exit_totals(&self) -> bool {
        self.exit_totals
    }
    fn connections(&self) -> bool {
        self.connections
    }
    fn network(&self) -> bool {
        self.network
    }
    fn conn_bytes(&mut self, key: (u32, u64), sock_cookie: u64, take: bool) -> Option<(u64, u64)> {
        let k = ConnKey {
            tgid: key.0,
            _pad: 0,
            proc_cookie: key.1,
            sock_cookie,
        };
        Kernel::conn_bytes(self, &k, take).map(|b| (b.tx_bytes, b.rx_bytes))
    }
    fn sock_life(&self, sock_cookie: u64) -> Option<Life> {
        Kernel::sock_life(self, sock_cookie).map(|l| super::decode::life(&l, false))
    }
}

impl Sampler for Procfs {
    fn ticks_per_s(&self) -> u64 {
        self.ticks_per_s
    }
    fn stat(&self, pid: u32) -> io::Result<Stat> {
        Procfs::stat(self, pid)
    }
    fn cmdline(&self, pid: u32) -> io::Result<(Vec<String>, ArgvHex)> {
        Procfs::cmdline(self, pid)
    }
    fn sample(&self, pid: u32, ts_ns: u64) -> Option<Sample> {
        Procfs::sample(self, pid, ts_ns)
    }
    fn keep_only(&self, keep: &dyn Fn(u32) -> bool) {
        Procfs::keep_only(self, keep)
    }
    fn threads(&self, pid: u32) -> Vec<ThreadFigures> {
        Procfs::threads(self, pid)
    }
    fn gone(&self, pid: u32) -> bool {
        Procfs::gone(self, pid)
    }
    fn threads_io(&self, pid: u32) -> Option<[u64; 3]> {
        Procfs::threads_io(self, pid)
    }
    fn shares(&self, pid: u32) -> Option<Shares> {
        Procfs::shares(self, pid)
    }
    fn ids(&self, pid: u32) -> Option<Ids> {
        super::cgroup::ids_of(&self.root, pid)
    }
    fn cwd(&self, pid: u32) -> Option<String> {
        let target = std::fs::read_link(self.root.join(pid.to_string()).join("cwd")).ok()?;
        Some(target.to_string_lossy().into_owned())
    }
    fn environ(&self, pid: u32) -> Option<Vec<String>> {
        let bytes = std::fs::read(self.root.join(pid.to_string()).join("environ")).ok()?;
        Some(super::procfs::parse_cmdline(&bytes))
    }
    fn scan(&self) -> Vec<Stat> {
        Procfs::scan(self)
    }
    fn subtree(&self, pid: u32) -> Vec<u32> {
        Procfs::subtree(self, pid)
    }
}
