//! `pmet report FILE`: a saved report for a person. Failures first, then the
//! story of the run (totals and the process tree), then the top processes
//! by CPU, memory, disk and network.

use std::fmt::Write as _;

use super::{
    style::Style,
    summary::{failure_list, summary_of},
    units::{bytes, duration, fit, printable, process_name},
};
use crate::report::{ProcessReport, Report};

/// Rows per ranking.
const TOP: usize = 5;

fn name(p: &ProcessReport) -> String {
    process_name(&p.comm, &p.argv)
}

fn ranking(
    o: &mut String,
    title: &str,
    r: &Report,
    width: usize,
    value: impl Fn(&ProcessReport) -> Option<f64>,
    show: impl Fn(f64) -> String,
) {
    let mut v: Vec<(&ProcessReport, f64)> = r
        .processes
        .iter()
        .filter_map(|p| Some((p, value(p)?)))
        .filter(|(_, x)| *x > 0.0)
        .collect();
    if v.is_empty() {
        return;
    }
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
    let _ = writeln!(o, "  top by {title}:");
    for (p, x) in v.into_iter().take(TOP) {
        let head = format!("    {:>7}  {:>12}  ", p.pid, show(x));
        let room = width.saturating_sub(head.chars().count()).max(10);
        let _ = writeln!(o, "{head}{}", fit(&name(p), room));
    }
}

/// Renders a report; `notes` are shown first (what the file lacked).
pub fn report_text(r: &Report, source: &str, notes: &[String], width: usize, st: Style) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {source} · pmet {} · started {} · {} mode",
        st.bold("report:"),
        // Raw from the file, which the traced user may have written.
        printable(if r.pmet_version.is_empty() {
            "?"
        } else {
            &r.pmet_version
        }),
        printable(if r.started_at.is_empty() {
            "?"
        } else {
            &r.started_at
        }),
        printable(if r.mode.is_empty() { "launch" } else { &r.mode })
    );
    for n in notes {
        let _ = writeln!(o, "  {} {n}", st.dim("note:"));
    }
    let ps = crate::report::briefs(r);
    let failed = ps.iter().filter(|p| p.failed()).count();
    o.push_str(&failure_list(
        &ps,
        &st.red(&format!("{failed} process(es) failed:")),
        20,
        width,
        st,
    ));
    o.push_str(&summary_of(r, &ps, width, st, false));
    ranking(
        &mut o,
        "CPU",
        r,
        width,
        |p| Some(p.cpu_user_s? + p.cpu_system_s?),
        duration,
    );
    ranking(
        &mut o,
        "memory (peak RSS)",
        r,
        width,
        |p| p.peak_rss_bytes.map(|b| b as f64),
        |x| bytes(x as u64),
    );
    ranking(
        &mut o,
        "disk (read + written)",
        r,
        width,
        |p| Some((p.disk_read_bytes? + p.disk_write_bytes?) as f64),
        |x| bytes(x as u64),
    );
    ranking(
        &mut o,
        "network (sent + received)",
        r,
        width,
        |p| {
            p.net
                .map(|n| (n.tcp.tx_bytes + n.tcp.rx_bytes + n.udp.tx_bytes + n.udp.rx_bytes) as f64)
        },
        |x| bytes(x as u64),
    );
    if let Some(s) = &r.stats {
        let stat =
            |name: &str, st: Option<crate::model::series::Stat>, f: &dyn Fn(f64) -> String| {
                st.map(|s| {
                    format!(
                        "    {name:<22} min {:>10}  mean {:>10}  p95 {:>10}  max {:>10}\n",
                        f(s.min),
                        f(s.mean),
                        f(s.p95),
                        f(s.max)
                    )
                })
                .unwrap_or_default()
            };
        let pct = |v: f64| format!("{v:.0}%");
        let b = |v: f64| bytes(v as u64);
        let bps = |v: f64| format!("{}/s", bytes(v as u64));
        let _ = writeln!(o, "  over time ({} samples):", r.collector.samples);
        o.push_str(&stat("CPU (% of a core)", s.cpu_pct, &pct));
        o.push_str(&stat("memory (live RSS)", s.rss_bytes, &b));
        o.push_str(&stat("disk read", s.disk_read_bps, &bps));
        o.push_str(&stat("disk write", s.disk_write_bps, &bps));
        o.push_str(&stat("network sent", s.net_tx_bps, &bps));
        o.push_str(&stat("network received", s.net_rx_bps, &bps));
    }
    o
}
