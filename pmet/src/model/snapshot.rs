//! A moment of the traced tree, as the live view and the per-sample streams
//! show it: cumulative figures, and rates since the previous moment.

use std::collections::HashMap;

use serde::Serialize;

use super::{figures::figures, net::Net, tree::Tree};

/// Bytes per second each way, TCP and UDP apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct NetRate {
    /// TCP sent, B/s.
    pub tcp_tx: f64,
    /// TCP received, B/s.
    pub tcp_rx: f64,
    /// UDP sent, B/s.
    pub udp_tx: f64,
    /// UDP received, B/s.
    pub udp_rx: f64,
}

impl NetRate {
    /// Sent, both protocols.
    pub fn tx(&self) -> f64 {
        self.tcp_tx + self.udp_tx
    }
    /// Received, both protocols.
    pub fn rx(&self) -> f64 {
        self.tcp_rx + self.udp_rx
    }
}

impl NetRate {
    /// Bytes per second from `before` to `now`, `dt` seconds apart.
    fn between(now: &Net, before: &Net, dt: f64) -> NetRate {
        let r = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        NetRate {
            tcp_tx: r(now.tcp.tx_bytes, before.tcp.tx_bytes),
            tcp_rx: r(now.tcp.rx_bytes, before.tcp.rx_bytes),
            udp_tx: r(now.udp.tx_bytes, before.udp.tx_bytes),
            udp_rx: r(now.udp.rx_bytes, before.udp.rx_bytes),
        }
    }
}

/// One live process in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcLine {
    /// Process id.
    pub pid: u32,
    /// Name.
    pub comm: String,
    /// Arguments.
    pub argv: Vec<String>,
    /// CPU use since the previous snapshot, percent of one core.
    pub cpu_pct: f64,
    /// CPU seconds so far.
    pub cpu_s: Option<f64>,
    /// Resident memory now.
    pub rss_bytes: Option<u64>,
    /// Network bytes so far (`None` without eBPF).
    pub net: Option<Net>,
    /// Network rate since the previous snapshot.
    pub net_rate: NetRate,
    /// Its parent.
    pub ppid: Option<u32>,
    /// Storage read rate since the previous snapshot, B/s.
    pub disk_read_rate: f64,
    /// Storage write rate, B/s.
    pub disk_write_rate: f64,
    /// It ended since the previous snapshot (its rates cover its last
    /// moments: a process that lived a millisecond counts too).
    pub ended: bool,
    /// Who it runs as (`pmet top` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its container's id (`pmet top` only, when in one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The tree at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Seconds since tracing began.
    pub t: f64,
    /// Processes alive.
    pub alive: usize,
    /// Processes seen so far.
    pub seen: usize,
    /// Processes that exited non-zero or were killed.
    pub failed: usize,
    /// CPU use of the whole tree since the previous snapshot, percent of one core
    /// (short-lived processes included, once their final figures are in).
    pub cpu_pct: f64,
    /// CPU seconds used so far, user and system.
    pub cpu_s: f64,
    /// Resident memory of the live processes.
    pub rss_bytes: u64,
    /// Storage bytes read so far.
    pub disk_read_bytes: u64,
    /// Storage bytes written so far.
    pub disk_write_bytes: u64,
    /// Read rate since the previous snapshot, B/s.
    pub disk_read_rate: f64,
    /// Write rate, B/s.
    pub disk_write_rate: f64,
    /// Network bytes so far (`None` without eBPF).
    pub net: Option<Net>,
    /// Network rate since the previous snapshot.
    pub net_rate: NetRate,
    /// Events or figures lost so far.
    pub lost: u64,
    /// The live processes' GPU use at the last look (`None` without a GPU
    /// driver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::model::series::GpuPoint>,
    /// Live processes, busiest (by CPU) first.
    pub processes: Vec<ProcLine>,
    /// Processes that ended since the previous snapshot (for `pmet top`:
    /// the live view and the trace stream show the living).
    #[serde(skip)]
    pub ended: Vec<ProcLine>,
}

#[derive(Clone, Copy, Default)]
struct Prev {
    cpu_s: f64,
    net: Net,
    read: u64,
    write: u64,
}

/// Takes snapshots, remembering the previous one for rates.
#[derive(Default)]
pub struct Snapshotter {
    start_ns: u64,
    ticks_per_s: u64,
    kernel_io: bool,
    ebpf: bool,
    last: Option<(u64, Prev, u64, u64)>,
    procs: HashMap<(u32, u64), Prev>,
    /// Lines for the processes that ended since the previous snapshot are
    /// made, and lines name each process's user and container (for `pmet
    /// top`; the live view and the stream show the living).
    pub keep_ended: bool,
    /// User names by uid and container ids by cgroup id, looked up once.
    users: HashMap<u32, Option<String>>,
    containers: HashMap<u64, Option<String>>,
}

impl Snapshotter {
    /// A snapshotter for a run that began at `start_ns` (CLOCK_BOOTTIME).
    pub fn new(start_ns: u64, ticks_per_s: u64, kernel_io: bool, ebpf: bool) -> Self {
        Self {
            start_ns,
            ticks_per_s,
            kernel_io,
            ebpf,
            ..Self::default()
        }
    }

    /// `p`'s user name and container id.
    fn identify(&mut self, p: &crate::model::tree::Proc) -> (Option<String>, Option<String>) {
        let Some(ids) = p.ids else {
            return (None, None);
        };
        let user = self
            .users
            .entry(ids.uid)
            .or_insert_with(|| crate::privileges::user_name(ids.uid))
            .clone()
            .or_else(|| Some(ids.uid.to_string()));
        let container = self
            .containers
            .entry(ids.cgroup_id)
            .or_insert_with(|| crate::model::container::container_of_cgroup(ids.cgroup_id))
            .clone();
        (user, container)
    }

    /// The tree at `now_ns`.
    pub fn take(&mut self, tree: &Tree, now_ns: u64, lost: u64) -> Snapshot {
        // Processes a long session forgot still count in the totals, and
        // so do those folded: summed once, not walked at every look.
        let mut g = tree.gone;
        g.add(&tree.folded);
        let mut total = Prev {
            cpu_s: g.cpu_s,
            net: g.net,
            ..Prev::default()
        };
        let (mut read, mut write, mut cancelled) = (g.read, g.write, g.cancelled);
        let mut rss = 0u64;
        let mut failed = g.failed as usize;
        let mut gpu = tree.gpu_known.then(crate::model::series::GpuPoint::default);
        let mut lines = Vec::new();
        let mut ended_lines = Vec::new();
        let dt = self
            .last
            .map(|(t, ..)| now_ns.saturating_sub(t) as f64 / 1e9)
            .filter(|&d| d > 0.0);
        let mut procs = HashMap::new();
        for (i, p) in tree.procs.iter().enumerate() {
            let folded = tree.is_folded(i);
            if folded && !self.keep_ended {
                // Ended: in the totals already, and listed by no one.
                continue;
            }
            let f = figures(p, self.ticks_per_s, self.kernel_io);
            let cpu = f.cpu.map(|(u, s)| u + s);
            let net = p.net;
            if !folded {
                total.cpu_s += cpu.unwrap_or(0.0);
                if let Some(d) = f.disk {
                    read += d.read;
                    write += d.write;
                    cancelled += d.cancelled;
                }
                total.net.add(&net);
                if matches!(p.exit, Some(e) if e.shell_code() != 0) {
                    failed += 1;
                }
            }
            let since_last = |end: u64| self.last.is_none_or(|(t, ..)| end > t);
            let ended = match p.end_ns {
                None if !p.vanished => false,
                Some(end) if self.keep_ended && since_last(end) => true,
                _ => continue,
            };
            let now = Prev {
                cpu_s: cpu.unwrap_or(0.0),
                net,
                read: f.disk.map_or(0, |d| d.read),
                write: f.disk.map_or(0, |d| d.written()),
            };
            let key = (p.pid, p.cookie);
            // A process new since the last snapshot started from nothing.
            let before = self.procs.get(&key).copied().unwrap_or_default();
            let (cpu_pct, net_rate, read_rate, write_rate) = match dt {
                Some(dt)
                    if self.procs.contains_key(&key)
                        || p.start_ns > self.last.map_or(0, |l| l.0) =>
                {
                    (
                        (now.cpu_s - before.cpu_s).max(0.0) / dt * 100.0,
                        NetRate::between(&net, &before.net, dt),
                        now.read.saturating_sub(before.read) as f64 / dt,
                        now.write.saturating_sub(before.write) as f64 / dt,
                    )
                }
                _ => (0.0, NetRate::default(), 0.0, 0.0),
            };
            let rss_now = if ended {
                None
            } else {
                p.last_sample.map(|s| s.rss_bytes)
            };
            let (user, container) = if self.keep_ended {
                self.identify(p)
            } else {
                (None, None)
            };
            let line = ProcLine {
                pid: p.pid,
                comm: p.comm.clone(),
                argv: p.argv.to_vec(),
                cpu_pct,
                cpu_s: cpu,
                rss_bytes: rss_now,
                net: self.ebpf.then_some(net),
                net_rate,
                ppid: p.ppid,
                disk_read_rate: read_rate,
                disk_write_rate: write_rate,
                ended,
                user,
                container,
            };
            if ended {
                ended_lines.push(line);
                continue;
            }
            procs.insert(key, now);
            rss += rss_now.unwrap_or(0);
            if let Some(g) = gpu.as_mut() {
                g.memory_bytes += p.gpu.now.0;
                g.sm_pct += p.gpu.now.1;
            }
            lines.push(line);
        }
        lines.sort_by(|a, b| {
            b.cpu_pct
                .total_cmp(&a.cpu_pct)
                .then(b.cpu_s.unwrap_or(0.0).total_cmp(&a.cpu_s.unwrap_or(0.0)))
                .then(a.pid.cmp(&b.pid))
        });
        // The tree's writes that reached storage: a file one process wrote
        // and another deleted before writeback cancels out here.
        let write = write.saturating_sub(cancelled);
        let (cpu_pct, net_rate, read_rate, write_rate) = match (dt, self.last) {
            (Some(dt), Some((_, before, r0, w0))) => (
                (total.cpu_s - before.cpu_s).max(0.0) / dt * 100.0,
                NetRate::between(&total.net, &before.net, dt),
                read.saturating_sub(r0) as f64 / dt,
                write.saturating_sub(w0) as f64 / dt,
            ),
            _ => (0.0, NetRate::default(), 0.0, 0.0),
        };
        self.last = Some((now_ns, total, read, write));
        self.procs = procs;
        Snapshot {
            t: now_ns.saturating_sub(self.start_ns) as f64 / 1e9,
            alive: tree.alive_count(),
            seen: tree.seen_count() as usize,
            failed,
            cpu_pct,
            cpu_s: total.cpu_s,
            rss_bytes: rss,
            disk_read_bytes: read,
            disk_write_bytes: write,
            disk_read_rate: read_rate,
            disk_write_rate: write_rate,
            net: self.ebpf.then_some(total.net),
            net_rate,
            lost,
            gpu,
            processes: lines,
            ended: ended_lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{event::Event, input::Sample};

    #[test]
    fn the_live_processes_gpu_use_is_summed_once_known() {
        let mut t = Tree::new();
        t.add_root(100, 999, 1, 0, vec!["train".into()]);
        let mut snaps = Snapshotter::new(0, 100, true, true);
        assert_eq!(
            snaps.take(&t, 1_000_000_000, 0).gpu,
            None,
            "no driver: unknown"
        );
        t.gpu_known = true;
        t.apply_gpu(
            &[crate::collect::gpu::Use {
                pid: 100,
                device: "GPU-a".into(),
                memory_bytes: 1 << 30,
                sm_pct: Some(75.0),
                mem_pct: None,
            }],
            1.0,
        );
        let g = snaps.take(&t, 2_000_000_000, 0).gpu.unwrap();
        assert_eq!((g.memory_bytes, g.sm_pct), (1 << 30, 75.0));
        // Not seen at the next look: nothing held now.
        t.apply_gpu(&[], 1.0);
        let g = snaps.take(&t, 3_000_000_000, 0).gpu.unwrap();
        assert_eq!((g.memory_bytes, g.sm_pct), (0, 0.0));
    }

    #[test]
    fn rates_come_from_the_previous_snapshot() {
        let mut t = Tree::new();
        t.add_root(100, 999, 1, 0, vec!["sh".into()]);
        t.apply(Event::Fork {
            shares_memory: false,
            ts_ns: 0,
            parent_tgid: 100,
            child: 101,
            cookie: 11,
            thread: false,
            untracked: false,
            new_pid_ns: false,
            comm: "curl".into(),
        });
        let sample = |ticks, rss| Sample {
            utime_ticks: ticks,
            rss_bytes: rss,
            ..Sample::default()
        };
        t.apply_sample(101, sample(100, 1 << 20));
        t.set_net(
            101,
            11,
            crate::model::net::Net::from(&pmet_common::NetCounters {
                tcp_rx_bytes: 1000,
                ..pmet_common::NetCounters::default()
            }),
            false,
        );
        let mut s = Snapshotter::new(0, 100, true, true);
        let a = s.take(&t, 1_000_000_000, 0);
        assert_eq!(a.cpu_pct, 0.0, "no rate without a previous snapshot");
        assert_eq!(a.cpu_s, 1.0);
        t.apply_sample(101, sample(150, 2 << 20));
        t.set_net(
            101,
            11,
            crate::model::net::Net::from(&pmet_common::NetCounters {
                tcp_rx_bytes: 3000,
                ..pmet_common::NetCounters::default()
            }),
            false,
        );
        let b = s.take(&t, 3_000_000_000, 0);
        assert_eq!(b.t, 3.0);
        assert_eq!(b.cpu_pct, 25.0, "0.5 s of CPU over 2 s");
        assert_eq!(b.net_rate.tcp_rx, 1000.0);
        assert_eq!(b.rss_bytes, 2 << 20);
        assert_eq!(b.alive, 2);
        assert_eq!(b.processes[0].pid, 101, "busiest first");
        assert_eq!(b.processes[0].cpu_pct, 25.0);
        assert_eq!(b.processes[0].net_rate.tcp_rx, 1000.0);
        assert_eq!(b.net.unwrap().tcp.rx_bytes, 3000);
    }
}
