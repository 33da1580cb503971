//! A process's network traffic: the one type for it, from the kernel side's
//! counters (converted once, where they are read) to the report.

use serde::{Deserialize, Serialize};

/// TCP and UDP traffic.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Net {
    /// TCP, IPv4 and IPv6.
    pub tcp: Traffic,
    /// UDP (and UDP-Lite), IPv4 and IPv6.
    pub udp: Traffic,
}

/// Bytes and calls one way and the other.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Traffic {
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Successful send calls.
    #[serde(default)]
    pub tx_calls: u64,
    /// Successful receive calls.
    #[serde(default)]
    pub rx_calls: u64,
}

impl Net {
    /// Adds another process's traffic.
    pub fn add(&mut self, o: &Net) {
        self.tcp.add(&o.tcp);
        self.udp.add(&o.udp);
    }

    /// Takes back what [`Net::add`] added.
    pub fn sub(&mut self, o: &Net) {
        self.tcp.sub(&o.tcp);
        self.udp.sub(&o.udp);
    }

    /// Bytes sent, TCP and UDP.
    pub fn tx_bytes(&self) -> u64 {
        self.tcp.tx_bytes + self.udp.tx_bytes
    }

    /// Bytes received, TCP and UDP.
    pub fn rx_bytes(&self) -> u64 {
        self.tcp.rx_bytes + self.udp.rx_bytes
    }
}

impl Traffic {
    fn add(&mut self, o: &Traffic) {
        self.tx_bytes += o.tx_bytes;
        self.rx_bytes += o.rx_bytes;
        self.tx_calls += o.tx_calls;
        self.rx_calls += o.rx_calls;
    }

    fn sub(&mut self, o: &Traffic) {
        self.tx_bytes = self.tx_bytes.saturating_sub(o.tx_bytes);
        self.rx_bytes = self.rx_bytes.saturating_sub(o.rx_bytes);
        self.tx_calls = self.tx_calls.saturating_sub(o.tx_calls);
        self.rx_calls = self.rx_calls.saturating_sub(o.rx_calls);
    }
}
