//! The run over time: every snapshot recorded for the report, bounded in
//! size (old points are merged pairwise when a series is full, so a long run
//! keeps its whole span at a coarser step), and statistics over every sample.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{net::Net, snapshot::Snapshot};

/// A tree point's network bytes so far: the report's compact shape for a
/// time series (bytes only, no call counts), kept as it always was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPoint {
    /// TCP sent.
    pub tcp_tx: u64,
    /// TCP received.
    pub tcp_rx: u64,
    /// UDP sent.
    pub udp_tx: u64,
    /// UDP received.
    pub udp_rx: u64,
}

impl From<&Net> for NetPoint {
    fn from(n: &Net) -> Self {
        Self {
            tcp_tx: n.tcp.tx_bytes,
            tcp_rx: n.tcp.rx_bytes,
            udp_tx: n.udp.tx_bytes,
            udp_rx: n.udp.rx_bytes,
        }
    }
}

/// One moment of the whole tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TreePoint {
    /// Seconds since tracing began.
    pub t: f64,
    /// CPU use since the previous point, percent of one core.
    pub cpu_pct: f64,
    /// CPU seconds so far.
    pub cpu_s: f64,
    /// Resident memory of the live processes.
    pub rss_bytes: u64,
    /// Storage bytes read so far.
    pub disk_read_bytes: u64,
    /// Storage bytes written so far.
    pub disk_write_bytes: u64,
    /// Network bytes so far (`null` without eBPF).
    pub net: Option<NetPoint>,
    /// Processes alive.
    pub alive: u32,
    /// GPU use (absent without a GPU driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuPoint>,
}

/// The live processes' GPU use at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuPoint {
    /// GPU memory they hold.
    pub memory_bytes: u64,
    /// Their SM (or busiest engine) utilisation, summed: percent of one GPU.
    pub sm_pct: f64,
}

/// One moment of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcPoint {
    /// Seconds since tracing began.
    pub t: f64,
    /// CPU use since the previous point, percent of one core.
    pub cpu_pct: f64,
    /// Resident memory.
    pub rss_bytes: u64,
}

/// Merging two neighbouring points into one, for downsampling.
pub trait Merge {
    /// `self` then `later` as one point.
    fn merge(&self, later: &Self) -> Self;
}

impl Merge for TreePoint {
    fn merge(&self, later: &Self) -> Self {
        TreePoint {
            // Rates average, peaks keep their maximum, running totals keep
            // the later value: nothing measured is lost, only resolution.
            t: later.t,
            cpu_pct: (self.cpu_pct + later.cpu_pct) / 2.0,
            rss_bytes: self.rss_bytes.max(later.rss_bytes),
            alive: self.alive.max(later.alive),
            ..*later
        }
    }
}

impl Merge for ProcPoint {
    fn merge(&self, later: &Self) -> Self {
        ProcPoint {
            t: later.t,
            cpu_pct: (self.cpu_pct + later.cpu_pct) / 2.0,
            rss_bytes: self.rss_bytes.max(later.rss_bytes),
        }
    }
}

/// A bounded series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series<P> {
    /// The points, oldest first.
    pub points: Vec<P>,
    cap: usize,
    /// Points were merged to stay within the bound.
    pub downsampled: bool,
}

impl<P: Merge + Clone> Series<P> {
    /// An empty series holding at most `cap` points (at least 4).
    pub fn new(cap: usize) -> Self {
        Self {
            points: Vec::new(),
            cap: cap.max(4),
            downsampled: false,
        }
    }

    /// Appends a point, merging the older half pairwise when full.
    pub fn push(&mut self, p: P) {
        if self.points.len() >= self.cap {
            // The first point stays: it anchors the start of the run.
            let half = self.points.len() / 2;
            let mut merged: Vec<P> = vec![self.points[0].clone()];
            merged.extend(self.points[1..half].chunks(2).map(|c| {
                if c.len() == 2 {
                    c[0].merge(&c[1])
                } else {
                    c[0].clone()
                }
            }));
            merged.extend_from_slice(&self.points[half..]);
            self.points = merged;
            self.downsampled = true;
        }
        self.points.push(p);
    }
}

/// Minimum, maximum, mean and 95th percentile of a metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stat {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
}

impl Stat {
    /// Statistics of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len());
        let r = |x: f64| (x * 1e3).round() / 1e3;
        Some(Stat {
            min: r(v[0]),
            max: r(v[v.len() - 1]),
            mean: r(v.iter().sum::<f64>() / v.len() as f64),
            p95: r(v[rank - 1]),
        })
    }
}

/// Statistics of the tree over every sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TreeStats {
    /// CPU use, percent of one core.
    pub cpu_pct: Option<Stat>,
    /// Resident memory of the live processes.
    pub rss_bytes: Option<Stat>,
    /// Processes alive.
    pub processes_alive: Option<Stat>,
    /// Storage read rate, bytes/s.
    pub disk_read_bps: Option<Stat>,
    /// Storage write rate, bytes/s.
    pub disk_write_bps: Option<Stat>,
    /// Network send rate (TCP + UDP), bytes/s.
    pub net_tx_bps: Option<Stat>,
    /// Network receive rate, bytes/s.
    pub net_rx_bps: Option<Stat>,
}

/// Values kept for statistics; past this many, every other one is dropped
/// (the statistics stay representative, memory stays bounded).
const STAT_VALUES: usize = 100_000;

#[derive(Default)]
struct Values(Vec<f64>);
impl Values {
    fn push(&mut self, v: f64) {
        if self.0.len() >= STAT_VALUES {
            let kept: Vec<f64> = self.0.iter().step_by(2).copied().collect();
            self.0 = kept;
        }
        self.0.push(v);
    }
}

/// Records snapshots into series and statistics.
pub struct Recorder {
    /// The tree over time.
    pub tree: Series<TreePoint>,
    /// Each sampled process over time, by (pid, cookie).
    pub procs: HashMap<(u32, u64), Series<ProcPoint>>,
    proc_cap: usize,
    times: Vec<f64>,
    cpu: Values,
    rss: Values,
    alive: Values,
    read: Values,
    write: Values,
    tx: Values,
    rx: Values,
}

impl Recorder {
    /// A recorder keeping at most `tree_cap` tree points and `proc_cap`
    /// points per process.
    pub fn new(tree_cap: usize, proc_cap: usize) -> Self {
        Self {
            tree: Series::new(tree_cap),
            procs: HashMap::new(),
            proc_cap,
            times: Vec::new(),
            cpu: Values::default(),
            rss: Values::default(),
            alive: Values::default(),
            read: Values::default(),
            write: Values::default(),
            tx: Values::default(),
            rx: Values::default(),
        }
    }

    /// Records one snapshot; `keys` maps its processes (by pid) to their
    /// (pid, cookie).
    pub fn record(&mut self, s: &Snapshot, keys: &HashMap<u32, u64>) {
        if self.times.len() < 1_000_000 {
            self.times.push(s.t);
        }
        let r = |x: f64, scale: f64| (x * scale).round() / scale;
        self.tree.push(TreePoint {
            t: r(s.t, 1e6),
            cpu_pct: r(s.cpu_pct, 1e3),
            cpu_s: r(s.cpu_s, 1e6),
            rss_bytes: s.rss_bytes,
            disk_read_bytes: s.disk_read_bytes,
            disk_write_bytes: s.disk_write_bytes,
            net: s.net.as_ref().map(NetPoint::from),
            alive: s.alive as u32,
            gpu: s.gpu.map(|g| GpuPoint {
                sm_pct: r(g.sm_pct, 1e3),
                ..g
            }),
        });
        // The first snapshot has no rates yet.
        if self.times.len() > 1 {
            self.cpu.push(s.cpu_pct);
            self.read.push(s.disk_read_rate);
            self.write.push(s.disk_write_rate);
            if s.net.is_some() {
                self.tx.push(s.net_rate.tx());
                self.rx.push(s.net_rate.rx());
            }
        }
        self.rss.push(s.rss_bytes as f64);
        self.alive.push(s.alive as f64);
        for p in &s.processes {
            let Some(&cookie) = keys.get(&p.pid) else {
                continue;
            };
            let Some(rss) = p.rss_bytes else { continue };
            let cap = self.proc_cap;
            self.procs
                .entry((p.pid, cookie))
                .or_insert_with(|| Series::new(cap))
                .push(ProcPoint {
                    t: r(s.t, 1e6),
                    cpu_pct: r(p.cpu_pct, 1e3),
                    rss_bytes: rss,
                });
        }
    }

    /// Statistics of the tree.
    pub fn stats(&self) -> TreeStats {
        TreeStats {
            cpu_pct: Stat::of(&self.cpu.0),
            rss_bytes: Stat::of(&self.rss.0),
            processes_alive: Stat::of(&self.alive.0),
            disk_read_bps: Stat::of(&self.read.0),
            disk_write_bps: Stat::of(&self.write.0),
            net_tx_bps: Stat::of(&self.tx.0),
            net_rx_bps: Stat::of(&self.rx.0),
        }
    }

    /// Intervals actually achieved between samples, seconds.
    pub fn intervals(&self) -> Option<Stat> {
        let d: Vec<f64> = self.times.windows(2).map(|w| w[1] - w[0]).collect();
        Stat::of(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_exact_on_known_values() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stat::of(&v).unwrap();
        assert_eq!((s.min, s.max, s.mean, s.p95), (1.0, 100.0, 50.5, 95.0));
        assert_eq!(Stat::of(&[]), None);
        assert_eq!(Stat::of(&[7.0]).unwrap().p95, 7.0);
    }

    #[test]
    fn a_full_series_keeps_its_span_at_a_coarser_step() {
        let mut s = Series::new(8);
        for i in 0..100u64 {
            s.push(ProcPoint {
                t: i as f64,
                cpu_pct: 10.0,
                rss_bytes: i,
            });
        }
        assert!(s.points.len() <= 8);
        assert!(s.downsampled);
        assert_eq!(s.points.last().unwrap().t, 99.0, "the newest point is kept");
        assert_eq!(s.points[0].t, 0.0, "the start is still covered");
        assert!(s.points.iter().all(|p| p.cpu_pct == 10.0), "rates average");
        assert_eq!(
            s.points.iter().map(|p| p.rss_bytes).max(),
            Some(99),
            "peaks survive"
        );
        for w in s.points.windows(2) {
            assert!(w[0].t < w[1].t);
        }
    }
}
