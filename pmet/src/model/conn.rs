//! Connections: one record per socket a process used, with its ends, its
//! bytes and how it ended. The kernel side names sockets by cookie; a socket
//! shared by two processes (a fork after accept) is a record in each, with
//! each one's own bytes, so a process's connections always sum to its `net`.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// Records kept per process unless `--max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// The transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// How the socket came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The process connected.
    Connect,
    /// A listener of the process accepted it.
    Accept,
    /// A UDP socket.
    Udp,
    /// A TCP socket already connected when pmet first saw it move bytes
    /// (a process pmet attached to, or one handed the socket).
    Unknown,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Still open when the report was written.
    Open,
    /// Closed with a FIN by either side (for UDP: its process ended).
    Closed,
    /// Ended by a reset.
    Reset,
    /// The connect was refused.
    Refused,
    /// The kernel gave up on it.
    Timeout,
    /// An ICMP error ended it.
    Unreachable,
    /// The program closed it before its connect completed.
    Aborted,
}

impl Proto {
    /// Its name in the report (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl Outcome {
    /// Its name in the report (`closed`, `refused`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Closed => "closed",
            Outcome::Reset => "reset",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
            Outcome::Aborted => "aborted",
        }
    }

    /// Ended in failure: a connect that never completed, or a reset.
    pub fn failed(self) -> bool {
        !matches!(self, Outcome::Open | Outcome::Closed)
    }

    /// From the kernel side's [`pmet_common::conn_outcome`] value.
    pub fn from_kernel(v: u16) -> Self {
        use pmet_common::conn_outcome as o;
        match v {
            o::CLOSED => Outcome::Closed,
            o::RESET => Outcome::Reset,
            o::REFUSED => Outcome::Refused,
            o::TIMEOUT => Outcome::Timeout,
            o::UNREACHABLE => Outcome::Unreachable,
            o::ABORTED => Outcome::Aborted,
            _ => Outcome::Open,
        }
    }
}

impl Role {
    /// Its name in the report (`connect`, `accept`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Connect => "connect",
            Role::Accept => "accept",
            Role::Udp => "udp",
            Role::Unknown => "unknown",
        }
    }

    /// From the kernel side's [`pmet_common::conn_role`] value.
    pub fn from_kernel(v: u16) -> Self {
        use pmet_common::conn_role as r;
        match v {
            r::CONNECT => Role::Connect,
            r::ACCEPT => Role::Accept,
            r::UDP => Role::Udp,
            _ => Role::Unknown,
        }
    }
}

/// A socket address from the kernel's raw form: `None` when unset (port 0
/// and no address).
pub fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*addr)),
        _ => return None,
    };
    if port == 0 && ip.is_unspecified() {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}

/// A TCP socket's life as the kernel followed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    /// When it was opened (connect or completed handshake), boottime ns.
    pub opened_ns: u64,
    /// When it closed, if it has.
    pub closed_ns: Option<u64>,
    /// Local end (a connect's port is known only after it is chosen).
    pub local: Option<SocketAddr>,
    /// Remote end.
    pub remote: Option<SocketAddr>,
    /// How it came to be.
    pub role: Role,
    /// How it ended.
    pub outcome: Outcome,
    /// Segments sent again.
    pub retransmits: u64,
    /// The socket is destroyed: nothing about it can change any more.
    pub ended: bool,
}

/// One process's use of one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The kernel's name for the socket.
    pub sock_cookie: u64,
    /// Transport.
    pub proto: Proto,
    /// How it came to be.
    pub role: Role,
    /// Local end.
    pub local: Option<SocketAddr>,
    /// Remote end (`None` for an unconnected UDP socket).
    pub remote: Option<SocketAddr>,
    /// Bytes this process sent on it.
    pub tx_bytes: u64,
    /// Bytes this process received on it.
    pub rx_bytes: u64,
    /// Boottime ns it was opened (for UDP: its first byte).
    pub opened_ns: u64,
    /// Boottime ns it closed.
    pub closed_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// TCP segments retransmitted.
    pub retransmits: u64,
    /// Its bytes are final (taken from the kernel).
    pub bytes_final: bool,
}

/// What a process did with sockets beyond the records kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Connections not listed (over the limit). Their bytes are not kept:
    /// they are what `net` holds beyond the listed ones (the report's
    /// `connections_dropped`).
    pub count: u64,
    /// Their retransmits.
    pub retransmits: u64,
    /// How many of them failed.
    pub failed: u64,
}

/// A process's connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conns {
    /// Those listed, in the order they were first used.
    pub list: Vec<Connection>,
    /// Where each socket's record is, by socket cookie.
    index: HashMap<u64, Slot>,
    /// What was not listed.
    pub dropped: Dropped,
}

/// Where a socket's figures go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// `list[i]`.
    Listed(usize),
    /// Over the limit: summed in `dropped` once final (`true`: they are).
    Dropped(bool),
}

/// First use of a socket by a process, as the kernel announced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The socket.
    pub sock_cookie: u64,
    /// Transport.
    pub proto: Proto,
    /// How it came to be.
    pub role: Role,
    /// Ends at that moment.
    pub local: Option<SocketAddr>,
    /// Remote end at that moment.
    pub remote: Option<SocketAddr>,
    /// When.
    pub ts_ns: u64,
}

impl Conns {
    /// Notes a socket's first use; over `max` records it is counted only.
    pub fn open(&mut self, o: Opened, max: usize) {
        if let Some(slot) = self.index.get(&o.sock_cookie) {
            // Announced again: a UDP socket that `connect()`ed after its
            // first datagram now has the remote end it lacked. The first
            // ends known stay (a later reconnect does not rename it).
            if let Slot::Listed(i) = *slot {
                let c = &mut self.list[i];
                c.remote = c.remote.or(o.remote);
                c.local = c.local.or(o.local);
            }
            return;
        }
        if self.list.len() >= max {
            self.index.insert(o.sock_cookie, Slot::Dropped(false));
            self.dropped.count += 1;
            return;
        }
        self.index
            .insert(o.sock_cookie, Slot::Listed(self.list.len()));
        self.list.push(Connection {
            sock_cookie: o.sock_cookie,
            proto: o.proto,
            role: o.role,
            local: o.local,
            remote: o.remote,
            tx_bytes: 0,
            rx_bytes: 0,
            opened_ns: o.ts_ns,
            closed_ns: None,
            outcome: Outcome::Open,
            retransmits: 0,
            bytes_final: false,
        });
    }

    /// Sockets whose bytes are still in the kernel.
    pub fn pending(&self) -> Vec<u64> {
        self.index
            .iter()
            .filter(|(_, slot)| match slot {
                Slot::Listed(i) => !self.list[*i].bytes_final,
                Slot::Dropped(done) => !done,
            })
            .map(|(&c, _)| c)
            .collect()
    }

    /// Whether the process used this socket.
    pub fn has(&self, sock_cookie: u64) -> bool {
        self.index.contains_key(&sock_cookie)
    }

    /// Bytes on one socket, read from the kernel (`final_`: taken).
    pub fn set_bytes(&mut self, sock_cookie: u64, tx: u64, rx: u64, final_: bool) {
        match self.index.get_mut(&sock_cookie) {
            Some(Slot::Listed(i)) => {
                let c = &mut self.list[*i];
                if !c.bytes_final {
                    c.tx_bytes = tx;
                    c.rx_bytes = rx;
                    c.bytes_final = final_;
                }
            }
            Some(Slot::Dropped(done)) if final_ => *done = true,
            _ => {}
        }
    }

    /// A TCP socket's life, as followed so far or final.
    pub fn set_life(&mut self, sock_cookie: u64, l: &Life) {
        match self.index.get(&sock_cookie) {
            Some(Slot::Listed(i)) => {
                let c = &mut self.list[*i];
                c.opened_ns = l.opened_ns;
                c.closed_ns = l.closed_ns;
                c.outcome = l.outcome;
                c.retransmits = l.retransmits;
                c.role = l.role;
                // The kernel's ends are the later, fuller ones.
                c.local = l.local.or(c.local);
                c.remote = l.remote.or(c.remote);
            }
            Some(Slot::Dropped(_)) if l.ended => {
                self.dropped.retransmits += l.retransmits;
                self.dropped.failed += u64::from(l.outcome.failed());
            }
            _ => {}
        }
    }

    /// The process ended at `end_ns`: its UDP sockets, which have no close
    /// event of their own, are closed by then unless it passed them on.
    pub fn process_ended(&mut self, end_ns: u64) {
        for c in &mut self.list {
            if c.proto == Proto::Udp && c.closed_ns.is_none() {
                c.closed_ns = Some(end_ns);
                c.outcome = Outcome::Closed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(cookie: u64, proto: Proto) -> Opened {
        Opened {
            sock_cookie: cookie,
            proto,
            role: if proto == Proto::Udp {
                Role::Udp
            } else {
                Role::Connect
            },
            local: None,
            remote: "10.0.0.1:53".parse().ok(),
            ts_ns: 5,
        }
    }

    #[test]
    fn a_udp_socket_that_connects_later_gains_its_remote_end_once() {
        let mut c = Conns::default();
        let unconnected = Opened {
            remote: None,
            ..opened(1, Proto::Udp)
        };
        c.open(unconnected, 10);
        assert_eq!(c.list[0].remote, None);
        c.open(opened(1, Proto::Udp), 10);
        assert_eq!(c.list[0].remote, "10.0.0.1:53".parse().ok());
        let elsewhere = Opened {
            remote: "10.0.0.2:53".parse().ok(),
            ..opened(1, Proto::Udp)
        };
        c.open(elsewhere, 10);
        assert_eq!(c.list.len(), 1);
        assert_eq!(c.list[0].remote, "10.0.0.1:53".parse().ok());
    }

    #[test]
    fn over_the_limit_connections_are_summed_not_lost() {
        let mut c = Conns::default();
        c.open(opened(1, Proto::Tcp), 2);
        c.open(opened(2, Proto::Udp), 2);
        c.open(opened(3, Proto::Tcp), 2);
        c.open(opened(3, Proto::Tcp), 2);
        assert_eq!(c.list.len(), 2);
        assert_eq!(c.dropped.count, 1);
        let mut pending = c.pending();
        pending.sort();
        assert_eq!(pending, [1, 2, 3]);
        c.set_bytes(3, 10, 20, true);
        c.set_bytes(1, 7, 8, false);
        c.set_life(
            3,
            &Life {
                opened_ns: 1,
                closed_ns: Some(2),
                local: None,
                remote: None,
                role: Role::Connect,
                outcome: Outcome::Refused,
                retransmits: 4,
                ended: true,
            },
        );
        assert_eq!(
            c.dropped,
            Dropped {
                count: 1,
                retransmits: 4,
                failed: 1
            }
        );
        assert!(!c.pending().contains(&3), "taken once: {:?}", c.pending());
        assert_eq!((c.list[0].tx_bytes, c.list[0].rx_bytes), (7, 8));
        c.set_bytes(1, 9, 9, true);
        c.set_bytes(1, 99, 99, true);
        assert_eq!((c.list[0].tx_bytes, c.list[0].rx_bytes), (9, 9));
        assert_eq!(c.pending(), [2]);
    }

    #[test]
    fn udp_closes_with_its_process_tcp_with_its_socket() {
        let mut c = Conns::default();
        c.open(opened(1, Proto::Tcp), 10);
        c.open(opened(2, Proto::Udp), 10);
        c.process_ended(100);
        assert_eq!(c.list[0].closed_ns, None);
        assert_eq!(c.list[0].outcome, Outcome::Open);
        assert_eq!(c.list[1].closed_ns, Some(100));
        assert_eq!(c.list[1].outcome, Outcome::Closed);
    }

    #[test]
    fn names_shown_are_the_reports() {
        use Outcome::*;
        for o in [Open, Closed, Reset, Refused, Timeout, Unreachable, Aborted] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for r in [Role::Connect, Role::Accept, Role::Udp, Role::Unknown] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for p in [Proto::Tcp, Proto::Udp] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }

    #[test]
    fn endpoints_print_as_people_write_them() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(endpoint(2, &a, 8080).unwrap().to_string(), "127.0.0.1:8080");
        let six = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(endpoint(10, &six, 443).unwrap().to_string(), "[::1]:443");
        assert_eq!(endpoint(2, &[0; 16], 0), None);
        assert_eq!(endpoint(2, &[0; 16], 68).unwrap().to_string(), "0.0.0.0:68");
        assert_eq!(endpoint(1, &a, 1), None);
    }
}
