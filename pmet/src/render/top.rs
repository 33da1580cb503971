//! `pmet top` as a stream: one JSON object per interval with the top
//! processes of the host by the chosen figure, those that ended during the
//! interval included.

use serde::Serialize;

use crate::model::snapshot::{ProcLine, Snapshot};

/// What `pmet top` ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopSort {
    /// CPU use over the interval.
    Cpu,
    /// Resident memory now.
    Mem,
    /// Storage bytes read and written over the interval.
    Disk,
    /// Socket bytes sent and received over the interval.
    Net,
}

impl TopSort {
    /// Its name, as `--sort` and the JSON lines spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TopSort::Cpu => "cpu",
            TopSort::Mem => "mem",
            TopSort::Disk => "disk",
            TopSort::Net => "net",
        }
    }
}

#[derive(Serialize)]
struct Row<'a> {
    pid: u32,
    ppid: Option<u32>,
    comm: &'a str,
    argv: &'a [String],
    cpu_pct: f64,
    rss_bytes: Option<u64>,
    disk_read_bytes_per_s: f64,
    disk_write_bytes_per_s: f64,
    net_tx_bytes_per_s: Option<f64>,
    net_rx_bytes_per_s: Option<f64>,
    ended: bool,
    user: Option<&'a str>,
    container: Option<&'a str>,
}

#[derive(Serialize)]
struct Line<'a> {
    t: f64,
    sort: TopSort,
    alive: usize,
    lost: u64,
    processes: Vec<Row<'a>>,
}

fn key(p: &ProcLine, sort: TopSort) -> f64 {
    match sort {
        TopSort::Cpu => p.cpu_pct,
        TopSort::Mem => p.rss_bytes.unwrap_or(0) as f64,
        TopSort::Disk => p.disk_read_rate + p.disk_write_rate,
        TopSort::Net => {
            let r = &p.net_rate;
            r.tcp_tx + r.tcp_rx + r.udp_tx + r.udp_rx
        }
    }
}

/// The top `limit` processes of `s` by `sort`, as one JSON line.
pub fn top_line(s: &Snapshot, sort: TopSort, limit: usize) -> String {
    let mut all: Vec<&ProcLine> = s.processes.iter().chain(&s.ended).collect();
    all.sort_by(|a, b| {
        key(b, sort)
            .total_cmp(&key(a, sort))
            .then(a.pid.cmp(&b.pid))
    });
    all.truncate(limit);
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let processes = all
        .into_iter()
        .map(|p| {
            let r = &p.net_rate;
            Row {
                pid: p.pid,
                ppid: p.ppid,
                comm: &p.comm,
                argv: &p.argv,
                cpu_pct: round(p.cpu_pct),
                rss_bytes: p.rss_bytes,
                disk_read_bytes_per_s: round(p.disk_read_rate),
                disk_write_bytes_per_s: round(p.disk_write_rate),
                net_tx_bytes_per_s: p.net.map(|_| round(r.tcp_tx + r.udp_tx)),
                net_rx_bytes_per_s: p.net.map(|_| round(r.tcp_rx + r.udp_rx)),
                ended: p.ended,
                user: p.user.as_deref(),
                container: p.container.as_deref(),
            }
        })
        .collect();
    serde_json::to_string(&Line {
        t: round(s.t),
        sort,
        alive: s.alive,
        lost: s.lost,
        processes,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranked_by_the_figure_asked_for_ended_ones_included() {
        let mut s = crate::render::live::tests::snapshot();
        let mut gone = s.processes[2].clone();
        gone.pid = 4300;
        gone.cpu_pct = 60.0;
        gone.ended = true;
        s.ended.push(gone);
        let line: serde_json::Value = serde_json::from_str(&top_line(&s, TopSort::Cpu, 3)).unwrap();
        let pids: Vec<u64> = line["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect();
        assert_eq!(pids, [4242, 4300, 4250]);
        assert_eq!(line["processes"][1]["ended"], true);
        let by_net: serde_json::Value =
            serde_json::from_str(&top_line(&s, TopSort::Net, 1)).unwrap();
        assert_eq!(by_net["processes"][0]["pid"], 4250);
        assert_eq!(by_net["processes"][0]["net_rx_bytes_per_s"], 10240.0);
        assert_eq!(by_net["processes"][0]["user"], "www-data");
        assert_eq!(by_net["processes"][0]["container"], "3f4e5d6c7b8a");
    }

    #[test]
    fn the_view_filters_by_user_container_or_text() {
        use crate::render::top_view::matches;
        let s = crate::render::live::tests::snapshot();
        let pids = |f: &str| -> Vec<u32> {
            s.processes
                .iter()
                .filter(|p| matches(f, p))
                .map(|p| p.pid)
                .collect()
        };
        assert_eq!(pids("user:www-data"), [4250]);
        assert_eq!(
            pids("user:www"),
            Vec::<u32>::new(),
            "a user is named exactly"
        );
        assert_eq!(pids("container:3f4e"), [4250]);
        assert_eq!(pids("container:"), Vec::<u32>::new());
        assert_eq!(pids("").len(), s.processes.len());
        let text = s.processes[0].comm.to_uppercase();
        assert!(pids(&text).contains(&s.processes[0].pid));
    }
}
