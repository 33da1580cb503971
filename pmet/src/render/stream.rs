//! One line per sample, for output that is not a terminal: `--format simple`
//! (for people reading a log) and `--format jsonl` (for tools).

use serde::Serialize;

use super::{
    live::{elapsed, rate},
    units::{bytes, duration},
};
use crate::{model::snapshot::Snapshot, report::Net};

/// A `--format simple` line.
pub fn simple_line(s: &Snapshot) -> String {
    let net = match &s.net {
        Some(n) => format!(
            "tcp ↑{} ↓{}  udp ↑{} ↓{}",
            bytes(n.tcp.tx_bytes),
            bytes(n.tcp.rx_bytes),
            bytes(n.udp.tx_bytes),
            bytes(n.udp.rx_bytes)
        ),
        None => "net unknown".into(),
    };
    let mut line = format!(
        "{:>7}  cpu {:>4.0}% {}  rss {}  disk r {} w {} ({})  {}  procs {} alive / {} seen",
        elapsed(s.t),
        s.cpu_pct,
        duration(s.cpu_s),
        bytes(s.rss_bytes),
        bytes(s.disk_read_bytes),
        bytes(s.disk_write_bytes),
        rate(s.disk_read_rate + s.disk_write_rate),
        net,
        s.alive,
        s.seen
    );
    if s.failed > 0 {
        line.push_str(&format!(" / {} failed", s.failed));
    }
    if s.lost > 0 {
        line.push_str(&format!("  LOST {}", s.lost));
    }
    line
}

/// One process in a JSON Lines record.
#[derive(Serialize)]
struct ProcRecord<'a> {
    pid: u32,
    comm: &'a str,
    cpu_pct: f64,
    cpu_s: Option<f64>,
    rss_bytes: Option<u64>,
    net: Option<Net>,
}

/// A `--format jsonl` record (field names follow the report's).
#[derive(Serialize)]
struct Record<'a> {
    t: f64,
    processes_alive: usize,
    processes_seen: usize,
    processes_failed: usize,
    cpu_pct: f64,
    cpu_s: f64,
    rss_bytes: u64,
    disk_read_bytes: u64,
    disk_write_bytes: u64,
    net: Option<Net>,
    lost_events: u64,
    processes: Vec<ProcRecord<'a>>,
}

fn r3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

/// A `--format jsonl` line (no newline).
pub fn json_line(s: &Snapshot) -> String {
    let rec = Record {
        t: r3(s.t),
        processes_alive: s.alive,
        processes_seen: s.seen,
        processes_failed: s.failed,
        cpu_pct: r3(s.cpu_pct),
        cpu_s: (s.cpu_s * 1e6).round() / 1e6,
        rss_bytes: s.rss_bytes,
        disk_read_bytes: s.disk_read_bytes,
        disk_write_bytes: s.disk_write_bytes,
        net: s.net,
        lost_events: s.lost,
        processes: s
            .processes
            .iter()
            .map(|p| ProcRecord {
                pid: p.pid,
                comm: &p.comm,
                cpu_pct: r3(p.cpu_pct),
                cpu_s: p.cpu_s.map(|c| (c * 1e6).round() / 1e6),
                rss_bytes: p.rss_bytes,
                net: p.net,
            })
            .collect(),
    };
    serde_json::to_string(&rec).expect("a sample always serializes")
}
