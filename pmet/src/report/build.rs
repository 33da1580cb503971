//! From the tree model to a [`Report`]: the one place where each reported
//! figure's source is chosen.

use super::{
    Collector, ConnectionReport, ConnectionsDropped, DEFAULT_MAX_THREADS_LISTED, GpuReport,
    GpuTotals, Host, Net, ProcStats, ProcessReport, Report, SCHEMA, SeriesReport, ThreadReport,
    ThreadsDropped, Totals,
};
use crate::model::{
    container::{container, k8s_pod_uid},
    env::EnvReport,
    figures::{Figures, figures},
    series::{ProcPoint, Recorder, Series, Stat},
    tree::{ExitStatus, Proc, ThreadRec, Tree, split_runtime},
};

/// Most tree points a report keeps.
pub const MAX_TREE_POINTS: usize = 720;
/// Most points kept per process.
pub const MAX_PROC_POINTS: usize = 120;

/// Facts about the run that the tree does not hold.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// The launched command; `None` when attached.
    pub command: Option<Vec<String>>,
    /// `CLOCK_BOOTTIME` ns when tracing began.
    pub start_ns: u64,
    /// `CLOCK_BOOTTIME` ns when it ended.
    pub end_ns: u64,
    /// RFC 3339 wall-clock start.
    pub started_at: String,
    /// Clock ticks per second for /proc figures.
    pub ticks_per_s: u64,
    /// How figures were collected and what was lost.
    pub collector: Collector,
    /// Why tracing stopped before the tree finished, if it did.
    pub stopped_early: Option<String>,
    /// The free-time figures include storage I/O (the kernel has I/O accounting).
    pub kernel_io: bool,
    /// The machine.
    pub host: Option<Host>,
    /// `attach` (figures count from the moment pmet attached) or
    /// `process_start`.
    pub counting_from: String,
    /// Threads listed per process (`None`: the default).
    pub max_threads_listed: Option<usize>,
    /// Wall-clock time at `start_ns`, for each process's `started_at`.
    pub start_wall: Option<std::time::SystemTime>,
    /// User names by uid, and cgroup paths by id, as resolved at the end.
    pub names: Names,
    /// Connections were followed.
    pub connections: bool,
    /// Host-wide (`--all`).
    pub all: bool,
    /// The cgroup followed (`--cgroup`, `--container`).
    pub cgroup: Option<String>,
}

/// Names the report shows for ids the kernel gave.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// User names by uid.
    pub users: std::collections::HashMap<u32, String>,
    /// cgroup v2 paths by id.
    pub cgroups: std::collections::HashMap<u64, String>,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn offset_s(ns: u64, start: u64) -> f64 {
    // Round to microseconds: more digits would be noise.
    ((ns as i128 - start as i128) as f64 / 1e3).round() / 1e6
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn process(p: &Proc, info: &RunInfo, gpu_known: bool, f: &Figures) -> ProcessReport {
    let ebpf = info.collector.ebpf;
    let cgroup = p
        .ids
        .and_then(|i| info.names.cgroups.get(&i.cgroup_id).cloned());
    let (exit_code, exit_signal, core_dumped) = match p.exit {
        Some(ExitStatus::Code(c)) => (Some(c), None, false),
        Some(ExitStatus::Signal {
            signal,
            core_dumped,
        }) => (None, Some(signal), core_dumped),
        None => (None, None, false),
    };
    let peak = p.peak_rss();
    let ctx = p.ctx_figures();
    ProcessReport {
        pid: p.pid,
        ppid: p.ppid,
        parent: None,
        comm: p.comm.clone(),
        argv: p.argv.to_vec(),
        start_offset_s: offset_s(p.start_ns, info.start_ns),
        end_offset_s: p.end_ns.map(|e| offset_s(e, info.start_ns)),
        exit_code,
        exit_signal,
        cpu_user_s: f.cpu.map(|c| round6(c.0)),
        cpu_system_s: f.cpu.map(|c| round6(c.1)),
        peak_rss_bytes: (peak > 0).then_some(peak),
        max_threads: (ebpf || p.samples > 0).then_some(p.max_threads),
        disk_read_bytes: f.disk.map(|d| d.read),
        disk_write_bytes: f.disk.map(|d| d.written()),
        disk_cancelled_write_bytes: f.disk.map(|d| d.cancelled),
        net: info.collector.counts_network().then_some(p.net),
        exe: p.exe.clone(),
        argv_truncated: p.argv_truncated,
        argv_hex: p.argv_hex.as_deref().map(<[_]>::to_vec),
        core_dumped,
        figures: f.source.to_owned(),
        voluntary_ctxt_switches: ctx.map(|c| c.0),
        involuntary_ctxt_switches: ctx.map(|c| c.1),
        major_faults: ctx.map(|c| c.2),
        preexisting: p.preexisting,
        vanished: p.vanished,
        series: Vec::new(),
        stats: None,
        started_at: info.start_wall.map(|w| {
            let t = if p.start_ns >= info.start_ns {
                w + std::time::Duration::from_nanos(p.start_ns - info.start_ns)
            } else {
                w - std::time::Duration::from_nanos(info.start_ns - p.start_ns)
            };
            humantime::format_rfc3339_millis(t).to_string()
        }),
        uid: p.ids.map(|i| i.uid),
        gid: p.ids.map(|i| i.gid),
        user: p.ids.and_then(|i| info.names.users.get(&i.uid).cloned()),
        cgroup: cgroup.clone(),
        container: cgroup.as_deref().and_then(container),
        k8s_pod_uid: cgroup.as_deref().and_then(k8s_pod_uid),
        pid_ns: p.ids.and_then(|i| i.pid_ns),
        ns_pid: p.ids.and_then(|i| i.ns_pid),
        cwd: p.cwd.clone(),
        env: p.env.clone().map(EnvReport),
        env_truncated: p.env_truncated,
        memory: p.memory_peak,
        threads: Vec::new(),
        threads_dropped: None,
        connections: None,
        connections_dropped: None,
        gpu: gpu_known.then(|| GpuReport {
            devices: p.gpu.devices.clone(),
            memory_peak_bytes: p.gpu.memory_peak_bytes,
            sm_pct_mean: round6(p.gpu.sm_pct_mean()),
            sm_pct_max: round6(p.gpu.sm_pct_max),
            mem_pct_mean: p.gpu.mem_pct_mean().map(round6),
            busy_s: round6(p.gpu.busy_s),
            accounting: p.gpu.accounting,
        }),
    }
}

/// A process's connections, and what its `net` holds beyond them.
fn connections(p: &Proc, info: &RunInfo) -> (Vec<ConnectionReport>, Option<ConnectionsDropped>) {
    let listed: Vec<ConnectionReport> = p
        .conns
        .list
        .iter()
        .map(|c| ConnectionReport {
            proto: c.proto,
            role: c.role,
            local: c.local.map(|a| a.to_string()),
            remote: c.remote.map(|a| a.to_string()),
            tx_bytes: c.tx_bytes,
            rx_bytes: c.rx_bytes,
            opened_offset_s: offset_s(c.opened_ns, info.start_ns),
            closed_offset_s: c.closed_ns.map(|e| offset_s(e, info.start_ns)),
            outcome: c.outcome,
            retransmits: c.retransmits,
        })
        .collect();
    let d = &p.conns.dropped;
    // Whatever `net` holds beyond the listed connections is theirs (or the
    // kernel's, when its map was full): the two always sum to `net`.
    let tx: u64 = listed.iter().map(|c| c.tx_bytes).sum();
    let rx: u64 = listed.iter().map(|c| c.rx_bytes).sum();
    let net_tx = p.net.tcp.tx_bytes + p.net.udp.tx_bytes;
    let net_rx = p.net.tcp.rx_bytes + p.net.udp.rx_bytes;
    let dropped = ConnectionsDropped {
        count: d.count,
        tx_bytes: net_tx.saturating_sub(tx),
        rx_bytes: net_rx.saturating_sub(rx),
        retransmits: d.retransmits,
        failed: d.failed,
    };
    let any = dropped != ConnectionsDropped::default();
    (listed, any.then_some(dropped))
}

/// A thread's final (user, system) CPU seconds, less what it had used at
/// attach.
fn thread_cpu(t: &ThreadRec) -> Option<(f64, f64)> {
    let f = t.totals?;
    let b = &t.baseline;
    let (u, s) = split_runtime(
        f.runtime_ns.saturating_sub(b.runtime_ns),
        f.utime_ns.saturating_sub(b.utime_ns),
        f.stime_ns.saturating_sub(b.stime_ns),
    );
    Some((u as f64 / 1e9, s as f64 / 1e9))
}

/// A process's threads, the most CPU first, at most `max`; the rest (and
/// those beyond what the tree kept) summed.
fn threads(p: &Proc, info: &RunInfo, max: usize) -> (Vec<ThreadReport>, Option<ThreadsDropped>) {
    let mut all: Vec<(Option<(f64, f64)>, &ThreadRec)> =
        p.threads.iter().map(|t| (thread_cpu(t), t)).collect();
    let busy = |c: &Option<(f64, f64)>| c.map_or(-1.0, |(u, s)| u + s);
    all.sort_by(|a, b| {
        busy(&b.0)
            .total_cmp(&busy(&a.0))
            .then(a.1.tid.cmp(&b.1.tid))
    });
    let listed = all
        .iter()
        .take(max)
        .map(|(cpu, t)| ThreadReport {
            tid: t.tid,
            comm: t.comm.clone(),
            cpu_user_s: cpu.map(|c| round6(c.0)),
            cpu_system_s: cpu.map(|c| round6(c.1)),
            start_offset_s: t.start_ns.map(|s| offset_s(s, info.start_ns)),
            end_offset_s: t.end_ns.map(|e| offset_s(e, info.start_ns)),
        })
        .collect();
    let o = &p.threads_overflow;
    let (ou, os) = split_runtime(o.totals.runtime_ns, o.totals.utime_ns, o.totals.stime_ns);
    let mut dropped = ThreadsDropped {
        count: u64::from(o.count),
        cpu_user_s: ou as f64 / 1e9,
        cpu_system_s: os as f64 / 1e9,
    };
    for (cpu, _) in all.iter().skip(max) {
        dropped.count += 1;
        if let Some((u, s)) = cpu {
            dropped.cpu_user_s += u;
            dropped.cpu_system_s += s;
        }
    }
    dropped.cpu_user_s = round6(dropped.cpu_user_s);
    dropped.cpu_system_s = round6(dropped.cpu_system_s);
    (listed, (dropped.count > 0).then_some(dropped))
}

/// A process's entry in the report, but for `parent` (a position in the
/// whole list, which only the end of the run decides).
/// `f` is `figures(p)`, computed once by the caller for the entry and for
/// [`Sums::add`].
pub fn entry(
    p: &Proc,
    info: &RunInfo,
    series: Option<&Series<ProcPoint>>,
    gpu_known: bool,
    f: &Figures,
) -> ProcessReport {
    let series = series.filter(|s| s.points.len() >= 2);
    let (threads, threads_dropped) = threads(
        p,
        info,
        info.max_threads_listed
            .unwrap_or(DEFAULT_MAX_THREADS_LISTED),
    );
    let (conns, conns_dropped) = if info.connections {
        let (l, d) = connections(p, info);
        (Some(l), d)
    } else {
        (None, None)
    };
    ProcessReport {
        threads,
        threads_dropped,
        connections: conns,
        connections_dropped: conns_dropped,
        series: series.map(|s| s.points.clone()).unwrap_or_default(),
        stats: series.map(|s| ProcStats {
            cpu_pct: Stat::of(&s.points.iter().map(|x| x.cpu_pct).collect::<Vec<_>>()),
            rss_bytes: Stat::of(
                &s.points
                    .iter()
                    .map(|x| x.rss_bytes as f64)
                    .collect::<Vec<_>>(),
            ),
        }),
        ..process(p, info, gpu_known, f)
    }
}

/// The tree's totals, summed a process at a time: a long run writes its
/// ended processes out as it goes (see `spill`) and keeps only these.
#[derive(Clone, Debug, Default)]
pub struct Sums {
    totals: Totals,
    /// Bytes dirtied (written, cancelled or not): the tree's net writes come
    /// from these, not from its processes' net writes, because the kernel
    /// charges a cancellation to whoever dropped the pages (`rm`), not to
    /// whoever wrote them.
    dirtied: u64,
}

impl Sums {
    /// Adds one process: its entry, and the figures it was made from.
    pub fn add(&mut self, e: &ProcessReport, f: &Figures) {
        let t = &mut self.totals;
        t.processes += 1;
        match (e.cpu_user_s, e.disk_read_bytes) {
            (Some(_), Some(_)) => {}
            _ => t.processes_without_figures += 1,
        }
        t.cpu_user_s += e.cpu_user_s.unwrap_or(0.0);
        t.cpu_system_s += e.cpu_system_s.unwrap_or(0.0);
        t.disk_read_bytes += e.disk_read_bytes.unwrap_or(0);
        t.disk_cancelled_write_bytes += e.disk_cancelled_write_bytes.unwrap_or(0);
        if let Some(n) = &e.net {
            t.net.get_or_insert_with(Net::default).add(n);
        }
        if e.exit_signal.is_some() || e.exit_code.is_some_and(|c| c != 0) {
            t.failed_processes += 1;
        }
        if e.end_offset_s.is_none() && !e.vanished {
            t.processes_running += 1;
        }
        if let Some(g) = &e.gpu {
            let gt = t.gpu.get_or_insert_with(GpuTotals::default);
            gt.processes += u64::from(!g.devices.is_empty());
            gt.memory_peak_bytes += g.memory_peak_bytes;
            gt.busy_s = round6(gt.busy_s + g.busy_s);
        }
        if let Some(d) = f.disk {
            self.dirtied += d.write;
        }
    }

    /// The totals of the tree, whose processes were all added.
    pub fn totals(&self, tree: &Tree, network: bool) -> Totals {
        let mut t = self.totals.clone();
        if network {
            t.net.get_or_insert_with(Net::default);
        }
        t.max_processes_alive = tree.max_alive as u64;
        t.pss_peak_bytes = (tree.pss_peak > 0).then_some(tree.pss_peak);
        t.disk_write_bytes = self.dirtied.saturating_sub(t.disk_cancelled_write_bytes);
        t.cpu_user_s = round6(t.cpu_user_s);
        t.cpu_system_s = round6(t.cpu_system_s);
        t
    }
}

/// The tree's processes in report order: by start, then in the order pmet
/// learned of them.
pub fn report_order(tree: &Tree) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tree.procs.len()).collect();
    order.sort_by_key(|&i| (tree.procs[i].start_ns, tree.procs[i].seq));
    order
}

/// Builds the report of a run; `recorded` adds its series and statistics.
pub fn build(tree: &Tree, info: &RunInfo, recorded: Option<&Recorder>) -> Report {
    let order = report_order(tree);
    let mut position = vec![0usize; tree.procs.len()];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    let mut sums = Sums::default();
    let processes: Vec<ProcessReport> = order
        .iter()
        .map(|&i| {
            let p = &tree.procs[i];
            let series = recorded.and_then(|r| r.procs.get(&(p.pid, p.cookie)));
            let f = figures(p, info.ticks_per_s, info.kernel_io);
            let e = ProcessReport {
                parent: p.parent.map(|pi| position[pi]),
                ..entry(p, info, series, tree.gpu_known, &f)
            };
            sums.add(&e, &f);
            e
        })
        .collect();
    let totals = sums.totals(tree, info.collector.counts_network());
    head(tree, info, recorded, totals, processes)
}

/// The report around its processes and totals.
pub fn head(
    tree: &Tree,
    info: &RunInfo,
    recorded: Option<&Recorder>,
    totals: Totals,
    processes: Vec<ProcessReport>,
) -> Report {
    let root = tree.root.map(|r| &tree.procs[r]);
    let (exit_code, exit_signal) = match root.and_then(|r| r.exit) {
        Some(ExitStatus::Code(c)) => (Some(c), None),
        Some(ExitStatus::Signal { signal, .. }) => (None, Some(signal)),
        None => (None, None),
    };
    let collector = info.collector.clone();

    Report {
        schema: SCHEMA.to_owned(),
        pmet_version: env!("CARGO_PKG_VERSION").to_owned(),
        command: info.command.clone(),
        root_pid: root.map_or(0, |r| r.pid),
        started_at: info.started_at.clone(),
        duration_s: round6(secs(info.end_ns.saturating_sub(info.start_ns))),
        exit_code,
        exit_signal,
        collector,
        totals,
        processes,
        cgroup: info.cgroup.clone(),
        mode: if info.command.is_some() {
            "launch"
        } else if info.all {
            "all"
        } else if info.cgroup.is_some() {
            "cgroup"
        } else {
            "attach"
        }
        .to_owned(),
        stopped_early: info.stopped_early.clone(),
        host: info.host.clone(),
        counting_from: info.counting_from.clone(),
        series: recorded.map(|r| SeriesReport {
            interval_s: r.intervals(),
            max_points: MAX_TREE_POINTS,
            max_points_per_process: MAX_PROC_POINTS,
            downsampled: r.tree.downsampled || r.procs.values().any(|s| s.downsampled),
            tree: r.tree.points.clone(),
        }),
        stats: recorded.map(Recorder::stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::event::{Event, ThreadTotals},
        report::{COLLECTOR_FIELDS, PROCESS_FIELDS, TOP_FIELDS, TOTALS_FIELDS},
    };

    fn info() -> RunInfo {
        RunInfo {
            command: Some(vec!["sh".into(), "-c".into(), "x".into()]),
            start_ns: 1_000_000_000,
            end_ns: 3_500_000_000,
            started_at: "2026-11-26T12:00:00.000Z".into(),
            ticks_per_s: 100,
            collector: Collector {
                ebpf: true,
                interval_ms: 1000,
                ..Collector::default()
            },
            kernel_io: true,
            ..RunInfo::default()
        }
    }

    fn tree() -> Tree {
        let mut t = Tree::new();
        t.add_root(
            100,
            999,
            1,
            1_000_000_000,
            vec!["sh".into(), "-c".into(), "x".into()],
        );
        t.apply(Event::Fork {
            shares_memory: false,
            ts_ns: 1_500_000_000,
            parent_tgid: 100,
            child: 101,
            cookie: 11,
            thread: false,
            untracked: false,
            new_pid_ns: false,
            comm: "sh".into(),
        });
        for (pid, cookie, code) in [(101u32, 11u64, 9u32), (100, 1, 3 << 8)] {
            t.apply(Event::Exit {
                maxrss_bytes: None,
                ts_ns: 2_000_000_000 + u64::from(pid),
                tgid: pid,
                tid: pid,
                cookie,
                group_dead: true,
                had_net: true,
                exit_code: Some(code),
                comm: "x".into(),
                peak_rss_bytes: None,
            });
            t.apply(Event::Free {
                ts_ns: 2_100_000_000,
                tgid: pid,
                tid: pid,
                cookie,
                totals: Some(ThreadTotals {
                    runtime_ns: 1_500_000_000,
                    utime_ns: 2,
                    stime_ns: 1,
                    read_bytes: 4096,
                    write_bytes: 8192,
                    cancelled_write_bytes: 0,
                }),
                kept: false,
                ctx: None,
            });
        }
        t.set_net(
            101,
            11,
            crate::model::net::Net::from(&pmet_common::NetCounters {
                tcp_tx_bytes: 100_000,
                udp_rx_bytes: 50_000,
                tcp_tx_calls: 2,
                udp_rx_calls: 50,
                ..pmet_common::NetCounters::default()
            }),
            true,
        );
        t
    }

    #[test]
    fn report_has_exact_figures_and_contract_fields() {
        let r = build(&tree(), &info(), None);
        assert_eq!(r.schema, "pmet.report.v1");
        assert_eq!(r.root_pid, 100);
        assert_eq!((r.exit_code, r.exit_signal), (Some(3), None));
        assert_eq!(r.duration_s, 2.5);
        assert_eq!(r.totals.processes, 2);
        assert_eq!(r.totals.cpu_user_s, 2.0);
        assert_eq!(r.totals.cpu_system_s, 1.0);
        assert_eq!(r.totals.disk_write_bytes, 16384);
        assert_eq!(r.totals.net.unwrap().tcp.tx_bytes, 100_000);
        assert_eq!(r.totals.net.unwrap().udp.rx_bytes, 50_000);
        assert_eq!(r.totals.failed_processes, 2);
        let c = &r.processes[1];
        assert_eq!((c.pid, c.ppid), (101, Some(100)));
        assert_eq!((c.exit_code, c.exit_signal), (None, Some(9)));
        assert_eq!(c.start_offset_s, 0.5);
        assert_eq!(c.end_offset_s, Some(1.0), "rounded to the microsecond");
        assert_eq!(c.cpu_user_s, Some(1.0));
        assert_eq!(c.cpu_system_s, Some(0.5));
        assert_eq!(c.figures, "exit");
        assert_eq!(r.collector.lost_events, 0);
    }

    #[test]
    fn unknown_figures_are_null_never_zero() {
        let mut t = Tree::new();
        t.add_root(100, 999, 1, 1_000_000_000, vec!["sh".into()]);
        t.apply(Event::Fork {
            shares_memory: false,
            ts_ns: 1_600_000_000,
            parent_tgid: 100,
            child: 103,
            cookie: 13,
            thread: false,
            untracked: false,
            new_pid_ns: false,
            comm: "sh".into(),
        });
        t.mark_vanished(103, 3_000_000_000);
        let mut i = info();
        i.collector.lost = super::super::Lost::measure(None, 0, 0, &t, None);
        i.collector.lost_events = i.collector.lost.total();
        let r = build(&t, &i, None);
        let p = r.processes.iter().find(|p| p.pid == 103).unwrap();
        assert_eq!(p.cpu_user_s, None);
        assert_eq!(p.disk_read_bytes, None);
        assert_eq!(p.peak_rss_bytes, None);
        assert_eq!(p.exit_code, None);
        assert!(p.vanished);
        assert_eq!(p.figures, "none");
        // 103, and the root: alive and never sampled.
        assert_eq!(r.totals.processes_without_figures, 2);
        assert_eq!(r.collector.lost.exits_unseen, 1);
        assert!(r.collector.lost_events >= 1);
    }

    #[test]
    fn json_round_trips_with_the_documented_names() {
        let r = build(&tree(), &info(), None);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for k in TOP_FIELDS {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in COLLECTOR_FIELDS {
            assert!(v["collector"].get(k).is_some(), "missing collector.{k}");
        }
        for k in TOTALS_FIELDS {
            assert!(v["totals"].get(k).is_some(), "missing totals.{k}");
        }
        let p = &v["processes"][0];
        for k in PROCESS_FIELDS {
            assert!(p.get(k).is_some(), "missing processes[].{k}");
        }
        assert!(p["net"]["tcp"]["tx_bytes"].is_u64());
        assert!(p["net"]["udp"]["rx_bytes"].is_u64());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
