//! The traced tree as OpenMetrics text (Prometheus exposition), built with
//! `prometheus-client`. Names follow the OpenTelemetry process semantic
//! conventions as Prometheus spells them; the tree's own figures are under
//! `pmet_*`. Which processes get series of their own is the exporter's
//! choice (bounded cardinality); this only writes what it is given.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

use crate::model::net::Net;

/// One process with series of its own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// Process id.
    pub pid: u32,
    /// Its parent.
    pub ppid: Option<u32>,
    /// `process.executable.name`: its comm.
    pub exe: String,
    /// `container.id`, when known.
    pub container: Option<String>,
    /// CPU seconds.
    pub cpu_user_s: f64,
    /// CPU seconds.
    pub cpu_system_s: f64,
    /// Resident memory now (0 once exited).
    pub rss_bytes: u64,
    /// Storage bytes read.
    pub disk_read_bytes: u64,
    /// Storage bytes written.
    pub disk_write_bytes: u64,
    /// Network bytes (`None` without eBPF).
    pub net: Option<Net>,
    /// GPU memory held now and SM utilisation (0 to 1) at the last look
    /// (`None` when no GPU driver is there to ask).
    pub gpu: Option<(u64, f64)>,
}

/// Counters summed over processes, as integers: a sum of integers is the
/// same in any order, so a total never reads lower than before (a sum of
/// floats can, by its last digit, and Prometheus reads that as a reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// CPU nanoseconds, user and system.
    pub cpu_ns: [u64; 2],
    /// Storage bytes read and written.
    pub disk: [u64; 2],
    /// Socket payload bytes: TCP sent, received; UDP sent, received
    /// (`None` without eBPF).
    pub net: Option<[u64; 4]>,
}

impl Counters {
    /// Adds `o`.
    pub fn add(&mut self, o: &Counters) {
        self.combine(o, u64::saturating_add);
    }

    /// Takes `o` away (what a process had when it joined a group).
    pub fn sub(&mut self, o: &Counters) {
        self.combine(o, u64::saturating_sub);
    }

    /// The larger of each.
    pub fn max(&mut self, o: &Counters) {
        self.combine(o, u64::max);
    }

    fn combine(&mut self, o: &Counters, f: impl Fn(u64, u64) -> u64) {
        for (a, b) in self.cpu_ns.iter_mut().zip(o.cpu_ns) {
            *a = f(*a, b);
        }
        for (a, b) in self.disk.iter_mut().zip(o.disk) {
            *a = f(*a, b);
        }
        if let Some(b) = o.net {
            let a = self.net.get_or_insert_default();
            for (a, b) in a.iter_mut().zip(b) {
                *a = f(*a, b);
            }
        }
    }
}

/// What the `pmet_group_*` families group processes by (`--metrics-by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// The executable name (comm), as process-exporter groups.
    #[default]
    Name,
    /// The container (empty: not in one).
    Container,
}

impl GroupBy {
    /// The label that names a group.
    pub fn label(self) -> &'static str {
        match self {
            GroupBy::Name => "process_executable_name",
            GroupBy::Container => "container_id",
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "name" => Ok(GroupBy::Name),
            "container" => Ok(GroupBy::Container),
            _ => Err(format!("`{s}`: expected name or container")),
        }
    }
}

/// Every process that ever ran in one group (a name, a container), ended
/// ones included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    /// The name, container id, …; empty for the overflow group.
    pub key: String,
    /// The processes of groups beyond `--metrics-groups`, together.
    pub overflow: bool,
    /// What they used.
    pub sums: Counters,
    /// Resident memory of the live ones now.
    pub rss_bytes: u64,
    /// Processes that ran in it (a process counts in each group it
    /// entered: an exec under another name moves it).
    pub processes: u64,
    /// Of them alive now.
    pub alive: u64,
}

/// The tree's own figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeFigures {
    /// Processes seen so far.
    pub seen: u64,
    /// Processes alive now.
    pub alive: u64,
    /// Events or figures lost so far.
    pub lost: u64,
    /// Processes pmet holds in memory: the alive, and the ended not yet
    /// forgotten (`pmet agent` forgets them once exported).
    pub held: u64,
}

/// Everything one exposition shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposed {
    /// The processes with series of their own.
    pub rows: Vec<Row>,
    /// What the groups are.
    pub by: GroupBy,
    /// Every group, in the order first seen.
    pub groups: Vec<Group>,
    /// Every process that ever counted, together.
    pub total: Counters,
    /// Resident memory of the live processes now.
    pub rss_bytes: u64,
    /// The tree's counts.
    pub tree: TreeFigures,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Who {
    process_pid: String,
    process_parent_pid: String,
    process_executable_name: String,
    container_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cpu {
    #[prometheus(flatten)]
    who: Who,
    cpu_mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Disk {
    #[prometheus(flatten)]
    who: Who,
    disk_io_direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetIo {
    #[prometheus(flatten)]
    who: Who,
    network_io_direction: &'static str,
    network_transport: &'static str,
}

/// A label set built at run time: the group's label, then the metric's.
type Labels = Vec<(&'static str, String)>;

/// A process's name as a label value: control characters (ESC, BEL, C1)
/// that a process may put in its own name are replaced, so a scraper's
/// terminal or log sees only text.
pub fn label_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

const CPU_MODES: [&str; 2] = ["user", "system"];
const DISK_DIRECTIONS: [&str; 2] = ["read", "write"];
/// In [`Counters::net`]'s order.
const NET_KINDS: [(&str, &str); 4] = [
    ("tcp", "transmit"),
    ("tcp", "receive"),
    ("udp", "transmit"),
    ("udp", "receive"),
];

/// The CPU, disk and network families of summed counters, one series set
/// per label set in `sets`.
fn register_sums<'a>(
    reg: &mut Registry,
    prefix: &str,
    what: &str,
    sets: impl Iterator<Item = (Labels, &'a Counters)> + Clone,
) {
    let cpu = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let disk = Family::<Labels, Counter>::default();
    let net = Family::<Labels, Counter>::default();
    let with = |l: &Labels, more: &[(&'static str, &str)]| {
        let mut l = l.clone();
        l.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
        l
    };
    let mut any_net = false;
    for (l, c) in sets {
        for (mode, ns) in CPU_MODES.iter().zip(c.cpu_ns) {
            cpu.get_or_create(&with(&l, &[("cpu_mode", mode)]))
                .inc_by(ns as f64 / 1e9);
        }
        for (dir, v) in DISK_DIRECTIONS.iter().zip(c.disk) {
            disk.get_or_create(&with(&l, &[("disk_io_direction", dir)]))
                .inc_by(v);
        }
        if let Some(n) = c.net {
            any_net = true;
            for ((transport, dir), v) in NET_KINDS.iter().zip(n) {
                net.get_or_create(&with(
                    &l,
                    &[
                        ("network_io_direction", dir),
                        ("network_transport", transport),
                    ],
                ))
                .inc_by(v);
            }
        }
    }
    reg.register(
        format!("{prefix}_cpu_time_seconds"),
        format!("CPU seconds used by {what}, by mode"),
        cpu,
    );
    reg.register(
        format!("{prefix}_disk_io_bytes"),
        format!("Storage bytes {what} caused to be read or written"),
        disk,
    );
    if any_net {
        reg.register(
            format!("{prefix}_network_io_bytes"),
            format!("Socket payload bytes {what} sent or received, by transport"),
            net,
        );
    }
}

/// The exposition of `e`, ending in `# EOF`; `label`, when given, is put on
/// every series (two textfiles in one directory are told apart by it).
pub fn exposition(e: &Exposed, label: Option<(&str, &str)>) -> String {
    let mut reg = match label {
        Some((k, v)) => {
            Registry::with_labels([(k.to_owned().into(), label_text(v).into())].into_iter())
        }
        None => Registry::default(),
    };
    register_processes(&mut reg, &e.rows);
    register_groups(&mut reg, e);
    let tree = e.tree;
    register_sums(
        &mut reg,
        "pmet",
        "every process of the traced scope, ended ones included",
        std::iter::once((Labels::new(), &e.total)),
    );
    let rss = Gauge::<i64>::default();
    rss.set(e.rss_bytes as i64);
    reg.register(
        "pmet_memory_usage_bytes",
        "Resident memory of the traced scope's live processes",
        rss,
    );
    let seen = Counter::<u64>::default();
    seen.inc_by(tree.seen);
    reg.register(
        "pmet_processes_seen",
        "Processes of the traced scope seen so far",
        seen,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(tree.lost);
    reg.register(
        "pmet_lost_events",
        "Events or figures pmet lost (0 on a healthy run)",
        lost,
    );
    let alive = Gauge::<i64>::default();
    alive.set(tree.alive as i64);
    reg.register(
        "pmet_processes_alive",
        "Processes of the traced scope alive now",
        alive,
    );
    let held = Gauge::<i64>::default();
    held.set(tree.held as i64);
    reg.register(
        "pmet_processes_held",
        "Processes pmet holds in memory: the alive, and the ended not yet forgotten",
        held,
    );
    reg.register(
        "pmet_build",
        "pmet's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The `pmet_group_*` families.
fn register_groups(reg: &mut Registry, e: &Exposed) {
    let key = |g: &Group| -> Labels {
        let mut l = vec![(e.by.label(), label_text(&g.key))];
        if g.overflow {
            l.push(("otel_metric_overflow", "true".to_owned()));
        }
        l
    };
    let what = match e.by {
        GroupBy::Name => "the processes of this name, ended ones included",
        GroupBy::Container => "the processes of this container, ended ones included",
    };
    register_sums(
        reg,
        "pmet_group",
        what,
        e.groups.iter().map(|g| (key(g), &g.sums)),
    );
    let rss = Family::<Labels, Gauge>::default();
    let procs = Family::<Labels, Counter>::default();
    let alive = Family::<Labels, Gauge>::default();
    for g in &e.groups {
        let l = key(g);
        rss.get_or_create(&l).set(g.rss_bytes as i64);
        procs.get_or_create(&l).inc_by(g.processes);
        alive.get_or_create(&l).set(g.alive as i64);
    }
    reg.register(
        "pmet_group_memory_usage_bytes",
        "Resident memory of the group's live processes",
        rss,
    );
    reg.register(
        "pmet_group_processes",
        "Processes that ran in the group (an exec under another name counts in both)",
        procs,
    );
    reg.register(
        "pmet_group_processes_alive",
        "The group's processes alive now",
        alive,
    );
}

/// The `process_*` families: one series set per process of its own.
fn register_processes(reg: &mut Registry, rows: &[Row]) {
    let cpu = Family::<Cpu, Counter<f64, AtomicU64>>::default();
    let mem = Family::<Who, Gauge>::default();
    let disk = Family::<Disk, Counter>::default();
    let net = Family::<NetIo, Counter>::default();
    let gpu_mem = Family::<Who, Gauge>::default();
    let gpu_util = Family::<Who, Gauge<f64, AtomicU64>>::default();
    for r in rows {
        let who = Who {
            process_pid: r.pid.to_string(),
            process_parent_pid: r.ppid.map(|p| p.to_string()).unwrap_or_default(),
            process_executable_name: label_text(&r.exe),
            container_id: label_text(r.container.as_deref().unwrap_or_default()),
        };
        for (mode, v) in [("user", r.cpu_user_s), ("system", r.cpu_system_s)] {
            cpu.get_or_create(&Cpu {
                who: who.clone(),
                cpu_mode: mode,
            })
            .inc_by(v);
        }
        mem.get_or_create(&who).set(r.rss_bytes as i64);
        if let Some((m, u)) = r.gpu {
            gpu_mem.get_or_create(&who).set(m as i64);
            gpu_util.get_or_create(&who).set(u);
        }
        for (dir, v) in [("read", r.disk_read_bytes), ("write", r.disk_write_bytes)] {
            disk.get_or_create(&Disk {
                who: who.clone(),
                disk_io_direction: dir,
            })
            .inc_by(v);
        }
        if let Some(n) = &r.net {
            for (transport, t) in [("tcp", &n.tcp), ("udp", &n.udp)] {
                for (dir, v) in [("transmit", t.tx_bytes), ("receive", t.rx_bytes)] {
                    net.get_or_create(&NetIo {
                        who: who.clone(),
                        network_io_direction: dir,
                        network_transport: transport,
                    })
                    .inc_by(v);
                }
            }
        }
    }
    reg.register(
        "process_cpu_time_seconds",
        "CPU seconds used by the process, by mode",
        cpu,
    );
    reg.register(
        "process_memory_usage_bytes",
        "Resident memory of the process",
        mem,
    );
    reg.register(
        "process_disk_io_bytes",
        "Storage bytes the process caused to be read or written",
        disk,
    );
    reg.register(
        "process_network_io_bytes",
        "Socket payload bytes the process sent or received, by transport",
        net,
    );
    if rows.iter().any(|r| r.gpu.is_some()) {
        reg.register(
            "process_gpu_memory_usage_bytes",
            "GPU memory the process holds, all devices together",
            gpu_mem,
        );
        reg.register(
            "process_gpu_utilization_ratio",
            "SM (or busiest engine) utilisation of the process at the last look, 1 for a whole GPU",
            gpu_util,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::net::Traffic;

    fn curl() -> Row {
        Row {
            pid: 42,
            ppid: Some(1),
            exe: "curl".into(),
            container: Some("abc".into()),
            cpu_user_s: 1.5,
            cpu_system_s: 0.25,
            rss_bytes: 4096,
            disk_read_bytes: 10,
            disk_write_bytes: 20,
            net: Some(Net {
                tcp: Traffic {
                    tx_bytes: 100,
                    rx_bytes: 200,
                    ..Traffic::default()
                },
                udp: Traffic::default(),
            }),
            gpu: Some((3 << 30, 0.875)),
        }
    }

    #[test]
    fn names_labels_and_values_as_the_conventions_spell_them() {
        let sums = Counters {
            cpu_ns: [2_000_000_001, 250_000_000],
            disk: [10, 20],
            net: Some([100, 200, 3, 4]),
        };
        let e = Exposed {
            rows: vec![curl()],
            by: GroupBy::Name,
            groups: vec![
                Group {
                    key: "curl".into(),
                    sums,
                    rss_bytes: 4096,
                    processes: 3,
                    alive: 1,
                    ..Group::default()
                },
                Group {
                    overflow: true,
                    processes: 9,
                    ..Group::default()
                },
            ],
            total: sums,
            rss_bytes: 4096,
            tree: TreeFigures {
                seen: 7,
                alive: 2,
                lost: 0,
                held: 3,
            },
        };
        let text = exposition(&e, None);
        for want in [
            "# TYPE process_cpu_time_seconds counter",
            r#"process_cpu_time_seconds_total{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc",cpu_mode="user"} 1.5"#,
            r#"process_memory_usage_bytes{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc"} 4096"#,
            r#"process_disk_io_bytes_total{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc",disk_io_direction="write"} 20"#,
            r#"process_network_io_bytes_total{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc",network_io_direction="receive",network_transport="tcp"} 200"#,
            "# TYPE process_gpu_memory_usage_bytes gauge",
            r#"process_gpu_memory_usage_bytes{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc"} 3221225472"#,
            r#"process_gpu_utilization_ratio{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc"} 0.875"#,
            // Integer nanoseconds, written once as seconds.
            r#"pmet_group_cpu_time_seconds_total{process_executable_name="curl",cpu_mode="user"} 2.000000001"#,
            r#"pmet_group_network_io_bytes_total{process_executable_name="curl",network_io_direction="transmit",network_transport="udp"} 3"#,
            r#"pmet_group_disk_io_bytes_total{process_executable_name="",otel_metric_overflow="true",disk_io_direction="read"} 0"#,
            r#"pmet_group_processes_total{process_executable_name="",otel_metric_overflow="true"} 9"#,
            r#"pmet_group_processes_alive{process_executable_name="curl"} 1"#,
            r#"pmet_group_memory_usage_bytes{process_executable_name="curl"} 4096"#,
            r#"pmet_cpu_time_seconds_total{cpu_mode="system"} 0.25"#,
            r#"pmet_network_io_bytes_total{network_io_direction="receive",network_transport="tcp"} 200"#,
            "pmet_memory_usage_bytes 4096",
            "pmet_processes_seen_total 7",
            "pmet_lost_events_total 0",
            "pmet_processes_alive 2",
            "pmet_processes_held 3",
            r#"pmet_build_info{version=""#,
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // No GPU driver, no eBPF: no GPU families, no network sums.
        let mut bare = Exposed {
            rows: vec![Row {
                net: None,
                gpu: None,
                ..curl()
            }],
            ..Exposed::default()
        };
        bare.total.net = None;
        let text = exposition(&bare, None);
        assert!(!text.contains("gpu"), "{text}");
        assert!(!text.contains("pmet_network_io"), "{text}");
        // By container, with a label on every series.
        let e = Exposed {
            by: GroupBy::Container,
            groups: vec![Group {
                key: "abc".into(),
                ..Group::default()
            }],
            ..Exposed::default()
        };
        let text = exposition(&e, Some(("pmet_textfile", "a.prom")));
        assert!(
            text.contains(
                r#"pmet_group_processes_total{pmet_textfile="a.prom",container_id="abc"} 0"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"pmet_processes_seen_total{pmet_textfile="a.prom"} 0"#));
    }

    #[test]
    fn control_characters_a_process_puts_in_its_name_are_not_served() {
        let e = Exposed {
            rows: vec![Row {
                exe: "a\u{1b}[2Jb\u{7}\u{9b}".into(),
                ..Row::default()
            }],
            groups: vec![Group {
                key: "x\u{1b}]0;owned\u{7}\"\\\n".into(),
                ..Group::default()
            }],
            ..Exposed::default()
        };
        let text = exposition(&e, None);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains(r#"process_executable_name="a�[2Jb��""#),
            "{text}"
        );
        // Quotes and backslashes escaped as the format says.
        assert!(
            text.contains(r#"process_executable_name="x�]0;owned�\"\\�""#),
            "{text}"
        );
    }
}
