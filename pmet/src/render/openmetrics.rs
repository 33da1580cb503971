//! The traced tree as OpenMetrics text (Prometheus exposition), built with
//! `prometheus-client`. Names follow the OpenTelemetry process semantic
//! conventions as Prometheus spells them; the tree's own figures are under
//! `pmet_*`. Which processes get series of their own is the exporter's
//! choice (bounded cardinality); this only writes what it is given.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

use crate::model::net::Net;

/// One series set: a process of its own, or every other process with one
/// executable name, summed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// `None` for an aggregate of processes.
    pub pid: Option<u32>,
    /// Its parent (per-process rows only).
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

impl Row {
    /// An empty sum for the processes named `exe`.
    pub fn summed(exe: &str, ebpf: bool) -> Self {
        Row {
            exe: exe.to_owned(),
            net: ebpf.then(Net::default),
            ..Row::default()
        }
    }

    /// Adds `other`'s figures to this sum.
    pub fn add(&mut self, other: &Row) {
        self.cpu_user_s += other.cpu_user_s;
        self.cpu_system_s += other.cpu_system_s;
        self.rss_bytes += other.rss_bytes;
        self.disk_read_bytes += other.disk_read_bytes;
        self.disk_write_bytes += other.disk_write_bytes;
        if let (Some(s), Some(n)) = (self.net.as_mut(), other.net.as_ref()) {
            s.add(n);
        }
        if let Some((m, u)) = other.gpu {
            let (sm, su) = self.gpu.get_or_insert((0, 0.0));
            *sm += m;
            *su += u;
        }
    }
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

/// The exposition of `rows` and the tree's figures, ending in `# EOF`.
pub fn exposition(rows: &[Row], tree: TreeFigures) -> String {
    let mut reg = Registry::default();
    let cpu = Family::<Cpu, Counter<f64, AtomicU64>>::default();
    let mem = Family::<Who, Gauge>::default();
    let disk = Family::<Disk, Counter>::default();
    let net = Family::<NetIo, Counter>::default();
    reg.register(
        "process_cpu_time_seconds",
        "CPU seconds used by the process, by mode",
        cpu.clone(),
    );
    reg.register(
        "process_memory_usage_bytes",
        "Resident memory of the process",
        mem.clone(),
    );
    reg.register(
        "process_disk_io_bytes",
        "Storage bytes the process caused to be read or written",
        disk.clone(),
    );
    reg.register(
        "process_network_io_bytes",
        "Socket payload bytes the process sent or received, by transport",
        net.clone(),
    );
    let gpu_mem = Family::<Who, Gauge>::default();
    let gpu_util = Family::<Who, Gauge<f64, AtomicU64>>::default();
    if rows.iter().any(|r| r.gpu.is_some()) {
        reg.register(
            "process_gpu_memory_usage_bytes",
            "GPU memory the process holds, all devices together",
            gpu_mem.clone(),
        );
        reg.register(
            "process_gpu_utilization_ratio",
            "SM (or busiest engine) utilisation of the process at the last look, 1 for a whole GPU",
            gpu_util.clone(),
        );
    }
    for r in rows {
        let who = Who {
            process_pid: r.pid.map(|p| p.to_string()).unwrap_or_default(),
            process_parent_pid: r.ppid.map(|p| p.to_string()).unwrap_or_default(),
            process_executable_name: r.exe.clone(),
            container_id: r.container.clone().unwrap_or_default(),
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
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::net::Traffic;

    #[test]
    fn names_labels_and_values_as_the_conventions_spell_them() {
        let rows = [
            Row {
                pid: Some(42),
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
            },
            Row {
                exe: "sh".into(),
                cpu_user_s: 2.0,
                ..Row::default()
            },
        ];
        let text = exposition(
            &rows,
            TreeFigures {
                seen: 7,
                alive: 2,
                lost: 0,
                held: 3,
            },
        );
        for want in [
            "# TYPE process_cpu_time_seconds counter",
            r#"process_cpu_time_seconds_total{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc",cpu_mode="user"} 1.5"#,
            r#"process_memory_usage_bytes{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc"} 4096"#,
            r#"process_disk_io_bytes_total{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc",disk_io_direction="write"} 20"#,
            r#"process_network_io_bytes_total{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc",network_io_direction="receive",network_transport="tcp"} 200"#,
            r#"process_cpu_time_seconds_total{process_pid="",process_parent_pid="",process_executable_name="sh",container_id="",cpu_mode="user"} 2.0"#,
            "pmet_processes_seen_total 7",
            "pmet_lost_events_total 0",
            "pmet_processes_alive 2",
            "pmet_processes_held 3",
            "# TYPE process_gpu_memory_usage_bytes gauge",
            r#"process_gpu_memory_usage_bytes{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc"} 3221225472"#,
            r#"process_gpu_utilization_ratio{process_pid="42",process_parent_pid="1",process_executable_name="curl",container_id="abc"} 0.875"#,
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // No network series for a row without eBPF figures, no GPU series
        // for one without GPU figures.
        assert!(!text.contains(r#"process_executable_name="sh",container_id="",network"#));
        assert!(!text.contains(r#"gpu_memory_usage_bytes{process_pid="""#));
        // No GPU driver: no GPU families at all.
        let none = exposition(&rows[1..], TreeFigures::default());
        assert!(!none.contains("gpu"), "{none}");
    }
}
