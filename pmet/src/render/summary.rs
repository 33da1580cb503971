//! The short human summary printed when a trace ends, made from the report
//! alone (so a saved report renders the same way).

use std::fmt::Write as _;

use super::{
    style::Style,
    units::{bytes, command_line, duration, fit, signal_name},
};
use crate::report::{Brief, Report, briefs};

/// How many processes the "busiest" table lists.
const TOP: usize = 5;
/// Most lines of process tree in the summary.
const TREE_LINES: usize = 24;

fn status(p: &Brief) -> String {
    match (p.exit_code(), p.exit_signal(), p.ended()) {
        (_, Some(s), _) => format!("killed by {}", signal_name(s)),
        (Some(c), _, _) => format!("exit {c}"),
        (None, None, false) if p.vanished() => "gone (exit unseen)".into(),
        (None, None, false) => "running".into(),
        (None, None, true) => "exited (status unknown)".into(),
    }
}

fn cpu(p: &Brief) -> Option<f64> {
    p.cpu_s()
}

/// Renders the summary for a terminal `width` columns wide.
pub fn summary(r: &Report, width: usize, st: Style) -> String {
    summary_of(r, &briefs(r), width, st, true)
}

/// The summary of a report whose processes are `ps` (a streamed report's
/// processes are not held: see `report::spill`), with or without the list
/// of failed processes (which `pmet report` shows first instead).
pub fn summary_of(
    r: &Report,
    ps: &[Brief],
    width: usize,
    st: Style,
    failures_at_end: bool,
) -> String {
    let width = width.max(60);
    let mut o = String::new();
    let what = match &r.command {
        Some(c) => command_line(c),
        None if r.mode == "all" => "every process on the host (--all)".to_owned(),
        None if r.mode == "cgroup" => format!(
            "the processes of cgroup {}",
            r.cgroup.as_deref().unwrap_or("?")
        ),
        None => format!("pid {}", r.root_pid),
    };
    let _ = writeln!(o, "{} {}", st.bold("pmet:"), fit(&what, width - 6));
    let root_status = match (r.exit_code, r.exit_signal) {
        (_, Some(s)) => st.red(&format!("killed by {}", signal_name(s))),
        (Some(0), _) => st.green("exit 0"),
        (Some(c), _) => st.red(&format!("exit {c}")),
        _ => "still running".into(),
    };
    let t = &r.totals;
    let alive = ps.iter().filter(|p| !p.ended() && !p.vanished()).count();
    let mut line = format!(
        "  {root_status} after {} · {} process{}",
        duration(r.duration_s),
        t.processes,
        if t.processes == 1 { "" } else { "es" }
    );
    if t.failed_processes > 0 {
        let _ = write!(
            line,
            " ({})",
            st.red(&format!("{} failed", t.failed_processes))
        );
    }
    if alive > 0 {
        let _ = write!(line, " · {alive} still running");
    }
    if let Some(why) = &r.stopped_early {
        let _ = write!(line, " · stopped early ({why})");
    }
    let _ = writeln!(o, "{line}");
    if alive > 0 {
        // Named, so nobody wonders what is still running after pmet returned.
        let running: Vec<String> = ps
            .iter()
            .filter(|p| !p.ended() && !p.vanished())
            .take(5)
            .map(|p| format!("{} {}", p.pid, fit(p.name(), 40)))
            .collect();
        let more = if alive > running.len() { ", …" } else { "" };
        let _ = writeln!(o, "  still running: {}{more}", running.join(", "));
    }
    let _ = writeln!(
        o,
        "  cpu   {} user + {} system",
        duration(t.cpu_user_s),
        duration(t.cpu_system_s)
    );
    let _ = writeln!(
        o,
        "  disk  {} read · {} written",
        bytes(t.disk_read_bytes),
        bytes(t.disk_write_bytes)
    );
    if let Some(pss) = t.pss_peak_bytes {
        let _ = writeln!(
            o,
            "  mem   {} at the peak, shared pages counted once (PSS)",
            bytes(pss)
        );
    }
    if let Some(n) = &t.net {
        let _ = writeln!(
            o,
            "  net   TCP {} sent, {} received · UDP {} sent, {} received",
            bytes(n.tcp.tx_bytes),
            bytes(n.tcp.rx_bytes),
            bytes(n.udp.tx_bytes),
            bytes(n.udp.rx_bytes)
        );
    } else {
        let why = r
            .collector
            .network_unknown()
            .unwrap_or_else(|| "not counted".into());
        let _ = writeln!(o, "  net   unknown: {why}");
    }
    if let Some(g) = t.gpu.as_ref().filter(|g| g.processes > 0) {
        let devices = r.collector.gpu.as_ref().map_or(0, |c| c.devices.len());
        let _ = writeln!(
            o,
            "  gpu   {} process{} on {} GPU{} · {} memory at the peaks · {} busy (SM-weighted)",
            g.processes,
            if g.processes == 1 { "" } else { "es" },
            devices,
            if devices == 1 { "" } else { "s" },
            bytes(g.memory_peak_bytes),
            duration(g.busy_s)
        );
    }
    if t.processes_without_figures > 0 {
        let _ = writeln!(
            o,
            "  note  {} process(es) have no CPU/disk figures (see `figures` in the report)",
            t.processes_without_figures
        );
    }
    if r.collector.lost_events > 0 {
        let l = &r.collector.lost;
        let _ = writeln!(
            o,
            "  {}  {} (ring buffer {}, map full {}, exits unseen {}, totals missing {}, taskstats overflows {})",
            st.alarm("LOST"),
            r.collector.lost_events,
            l.ring_buffer,
            l.tracked_map_full + l.net_map_full + l.dying_map_full,
            l.exits_unseen,
            l.totals_missing,
            l.taskstats_overflows
        );
    }

    // The story: the tree, folded where it is large.
    let tree = super::tree::tree_lines(ps, width.saturating_sub(4), TREE_LINES, st);
    let _ = writeln!(o, "  process tree:");
    for l in &tree {
        let _ = writeln!(o, "    {l}");
    }
    o.push_str(&connections(ps, width, st));
    if ps.len() <= tree.len() {
        // Every process is on screen already: the rankings add nothing.
        return if failures_at_end {
            failures(ps, o, width, st)
        } else {
            o
        };
    }
    let mut busy: Vec<&Brief> = ps.iter().filter(|p| cpu(p).is_some()).collect();
    busy.sort_by(|a, b| {
        cpu(b)
            .partial_cmp(&cpu(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    busy.truncate(TOP);
    if ps.len() > 1 && !busy.is_empty() {
        let _ = writeln!(o, "  busiest by CPU:");
        let _ = writeln!(
            o,
            "    {:>7}  {:>9}  {:>9}  {:>19}  command",
            "pid", "cpu", "peak rss", "net sent/received"
        );
        for p in busy {
            let net = p
                .net()
                .map(|n| {
                    format!(
                        "{}/{}",
                        bytes(n.tcp.tx_bytes + n.udp.tx_bytes),
                        bytes(n.tcp.rx_bytes + n.udp.rx_bytes)
                    )
                })
                .unwrap_or_else(|| "-".into());
            let head = format!(
                "    {:>7}  {:>9}  {:>9}  {:>19}  ",
                p.pid,
                cpu(p).map(duration).unwrap_or_else(|| "-".into()),
                p.peak_rss_bytes().map(bytes).unwrap_or_else(|| "-".into()),
                net
            );
            let room = width.saturating_sub(head.chars().count()).max(10);
            let _ = writeln!(o, "{head}{}", fit(p.name(), room));
        }
    }
    let mut talkers: Vec<(&Brief, u64)> = ps
        .iter()
        .filter_map(|p| {
            let n = p.net()?;
            let total = n.tcp.tx_bytes + n.tcp.rx_bytes + n.udp.tx_bytes + n.udp.rx_bytes;
            (total > 0).then_some((p, total))
        })
        .collect();
    talkers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
    if !talkers.is_empty() {
        let _ = writeln!(o, "  busiest on the network:");
        let _ = writeln!(
            o,
            "    {:>7}  {:>21}  {:>21}  command",
            "pid", "TCP sent/received", "UDP sent/received"
        );
        for (p, _) in talkers.iter().take(TOP) {
            let n = p.net().unwrap_or_default();
            let head = format!(
                "    {:>7}  {:>21}  {:>21}  ",
                p.pid,
                format!("{}/{}", bytes(n.tcp.tx_bytes), bytes(n.tcp.rx_bytes)),
                format!("{}/{}", bytes(n.udp.tx_bytes), bytes(n.udp.rx_bytes)),
            );
            let room = width.saturating_sub(head.chars().count()).max(10);
            let _ = writeln!(o, "{head}{}", fit(p.name(), room));
        }
    }
    if failures_at_end {
        failures(ps, o, width, st)
    } else {
        o
    }
}

/// One remote endpoint, over every process that talked to it.
#[derive(Default)]
struct Peer {
    tx: u64,
    rx: u64,
    connections: u64,
    failed: u64,
}

/// Who the tree talked to (the top remote endpoints by bytes) and which
/// connections failed; empty when connections were not followed or none
/// had a remote end.
pub fn connections(ps: &[Brief], width: usize, st: Style) -> String {
    let mut o = String::new();
    let mut peers: std::collections::BTreeMap<(String, &str), Peer> = Default::default();
    let mut failed: Vec<(&Brief, &crate::report::ConnectionReport)> = Vec::new();
    let (mut count, mut retransmits) = (0u64, 0u64);
    for p in ps {
        for c in p.connections() {
            count += 1;
            retransmits += c.retransmits;
            if c.outcome.failed() {
                failed.push((p, c));
            }
            let Some(remote) = &c.remote else { continue };
            let proto = c.proto.as_str();
            // An accepted connection's remote port is the client's
            // ephemeral one: grouped by client host and the port it reached.
            let key = match (c.role, c.local.as_deref()) {
                (crate::model::conn::Role::Accept, Some(local)) => {
                    let host = remote.rsplit_once(':').map_or(remote.as_str(), |h| h.0);
                    let port = local.rsplit_once(':').map_or("", |l| l.1);
                    format!("from {host} to :{port}")
                }
                _ => remote.clone(),
            };
            let e = peers.entry((key, proto)).or_default();
            e.tx += c.tx_bytes;
            e.rx += c.rx_bytes;
            e.connections += 1;
            e.failed += u64::from(c.outcome.failed());
        }
        if let Some(d) = p.connections_dropped() {
            count += d.count;
            retransmits += d.retransmits;
        }
    }
    if count == 0 {
        return o;
    }
    let _ = writeln!(
        o,
        "  conns {count} connection{} · {} failed · {retransmits} retransmit{}",
        if count == 1 { "" } else { "s" },
        if failed.is_empty() {
            "0".to_owned()
        } else {
            st.red(&failed.len().to_string())
        },
        if retransmits == 1 { "" } else { "s" },
    );
    let mut ranked: Vec<(&(String, &str), &Peer)> = peers.iter().collect();
    ranked.sort_by(|a, b| {
        (b.1.tx + b.1.rx)
            .cmp(&(a.1.tx + a.1.rx))
            .then_with(|| a.0.cmp(b.0))
    });
    if !ranked.is_empty() {
        let _ = writeln!(o, "  top remote endpoints:");
        let _ = writeln!(
            o,
            "    {:>21}  {:>6}  {:>5}  endpoint",
            "sent/received", "conns", "fail"
        );
        for ((remote, proto), p) in ranked.iter().take(TOP) {
            let _ = writeln!(
                o,
                "    {:>21}  {:>6}  {:>5}  {}",
                format!("{}/{}", bytes(p.tx), bytes(p.rx)),
                p.connections,
                p.failed,
                fit(
                    &format!("{proto} {remote}"),
                    width.saturating_sub(44).max(10)
                )
            );
        }
    }
    if !failed.is_empty() {
        let _ = writeln!(o, "  failed connections:");
        for (p, c) in failed.iter().take(TOP) {
            let what = format!(
                "{} {}",
                c.outcome.as_str(),
                c.remote.as_deref().unwrap_or("(no remote)")
            );
            let head = format!("    {:>7}  {:<34}  ", p.pid, what);
            let room = width.saturating_sub(head.chars().count()).max(10);
            let _ = writeln!(
                o,
                "    {:>7}  {}  {}",
                p.pid,
                st.red(&format!("{what:<34}")),
                fit(p.name(), room)
            );
        }
        if failed.len() > TOP {
            let _ = writeln!(o, "    … and {} more", failed.len() - TOP);
        }
    }
    o
}

/// The failed processes, listed.
fn failures(ps: &[Brief], mut o: String, width: usize, st: Style) -> String {
    o.push_str(&failure_list(ps, "failed:", TOP, width, st));
    o
}

/// The processes that exited non-zero or were killed, under `heading`, at
/// most `rows` of them; empty when none failed.
pub fn failure_list(ps: &[Brief], heading: &str, rows: usize, width: usize, st: Style) -> String {
    let mut o = String::new();
    let failed: Vec<&Brief> = ps.iter().filter(|p| p.failed()).collect();
    if failed.is_empty() {
        return o;
    }
    let _ = writeln!(o, "  {heading}");
    for p in failed.iter().take(rows) {
        let head = format!("    {:>7}  {:<18}  ", p.pid, status(p));
        let room = width.saturating_sub(head.chars().count()).max(10);
        let _ = writeln!(
            o,
            "    {:>7}  {}  {}",
            p.pid,
            st.red(&format!("{:<18}", status(p))),
            fit(p.name(), room)
        );
    }
    if failed.len() > rows {
        let _ = writeln!(o, "    … and {} more", failed.len() - rows);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Collector, Net, ProcessReport, Totals, Traffic};

    fn report() -> Report {
        let p = |pid, code, sig, cpu: f64, argv: &[&str]| ProcessReport {
            pid,
            ppid: Some(1),
            comm: argv[0].into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            start_offset_s: 0.0,
            end_offset_s: Some(1.0),
            exit_code: code,
            exit_signal: sig,
            cpu_user_s: Some(cpu),
            cpu_system_s: Some(0.0),
            peak_rss_bytes: Some(13 << 20),
            max_threads: Some(1),
            disk_read_bytes: Some(0),
            disk_write_bytes: Some(0),
            net: Some(Net {
                tcp: Traffic {
                    tx_bytes: 100_000,
                    ..Traffic::default()
                },
                ..Net::default()
            }),
            figures: "exit".into(),
            ..ProcessReport::default()
        };
        Report {
            schema: "pmet.report.v1".into(),
            pmet_version: "0.1.0".into(),
            command: Some(vec!["sh".into(), "-c".into(), "run it".into()]),
            root_pid: 10,
            started_at: "2026-11-26T12:00:00.000Z".into(),
            duration_s: 2.5,
            exit_code: Some(1),
            exit_signal: None,
            collector: Collector {
                ebpf: true,
                interval_ms: 1000,
                ..Collector::default()
            },
            totals: Totals {
                processes: 3,
                cpu_user_s: 1.5,
                failed_processes: 2,
                net: Some(Net {
                    tcp: Traffic {
                        tx_bytes: 300_000,
                        ..Traffic::default()
                    },
                    ..Net::default()
                }),
                ..Totals::default()
            },
            processes: vec![
                p(10, Some(1), None, 0.25, &["sh", "-c", "run it"]),
                ProcessReport {
                    parent: Some(0),
                    ..p(11, Some(0), None, 1.0, &["python3", "work.py"])
                },
                ProcessReport {
                    parent: Some(1),
                    ..p(12, None, Some(9), 0.25, &["sleep", "10"])
                },
            ],
            mode: "launch".into(),
            stopped_early: None,
            host: None,
            counting_from: "process_start".into(),
            ..Report::default()
        }
    }

    #[test]
    fn tells_the_story() {
        let s = summary(&report(), 100, Style::default());
        assert!(s.starts_with("pmet: sh -c 'run it'\n"), "{s}");
        assert!(
            s.contains("exit 1 after 2.500 s · 3 processes (2 failed)"),
            "{s}"
        );
        assert!(s.contains("TCP 293 KiB sent"), "{s}");
        let tree = s.split("process tree:\n").nth(1).unwrap();
        let tree: Vec<&str> = tree.lines().take(3).collect();
        assert!(
            tree[0].starts_with("    10 sh -c 'run it' · 0.250 s"),
            "{s}"
        );
        assert!(
            tree[1].starts_with("    └─ 11 python3 work.py · 1.000 s"),
            "{s}"
        );
        assert!(
            tree[2].starts_with("       └─ 12 sleep 10 · 0.250 s"),
            "{s}"
        );
        assert!(tree[2].ends_with("killed by SIGKILL"), "{s}");
        assert!(
            !s.contains("busiest by CPU"),
            "all processes fit in the tree: {s}"
        );
        assert!(s.contains("failed:"), "{s}");
        assert!(!s.contains("LOST"), "{s}");
        for line in s.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line}");
        }
    }

    #[test]
    fn losses_are_shown() {
        let mut r = report();
        r.collector.lost_events = 3;
        r.collector.lost.ring_buffer = 3;
        assert!(summary(&r, 80, Style::default()).contains("LOST  3 (ring buffer 3"));
    }
}
