//! Plots of a report as plain SVG: CPU, memory, disk and network over time,
//! and a process timeline (one bar per process, nested under its parent).
//! Self-contained: no scripts, no fonts or styles fetched from anywhere.

use std::fmt::Write as _;

use super::units::{bytes, command_line, fit, printable, process_name};
use crate::{model::series::TreePoint, report::Report};

const W: f64 = 960.0;
const PLOT_H: f64 = 150.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const ROW_H: f64 = 16.0;
/// Most processes drawn on the timeline.
pub const MAX_ROWS: usize = 300;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart.
struct Line<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

fn rate_of(points: &[TreePoint], f: impl Fn(&TreePoint) -> Option<f64>) -> Vec<(f64, f64)> {
    points
        .windows(2)
        .filter_map(|w| {
            let dt = w[1].t - w[0].t;
            let (a, b) = (f(&w[0])?, f(&w[1])?);
            (dt > 0.0).then(|| (w[1].t, ((b - a) / dt).max(0.0)))
        })
        .collect()
}

/// A round step that covers `v` in `n` steps: 1, 2, 2.5 or 5 times a power of ten.
fn nice_step(v: f64, n: f64) -> f64 {
    let raw = (v / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn chart(
    o: &mut String,
    id: &str,
    title: &str,
    top: f64,
    t_max: f64,
    lines: &[Line<'_>],
    label: impl Fn(f64) -> String,
) {
    let plot_w = W - LEFT - RIGHT;
    let y_step = nice_step(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
        4.0,
    );
    let y_max = 4.0 * y_step;
    let t_step = nice_step(t_max, 6.0);
    let x = |t: f64| LEFT + t / t_max.max(1e-9) * plot_w;
    let y = |v: f64| top + 20.0 + PLOT_H - v / y_max * PLOT_H;
    let _ = writeln!(o, r#"<g id="{id}" class="plot">"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="{}" class="title">{}</text>"#,
        top + 12.0,
        esc(title)
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            esc(&label(v))
        );
    }
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{} s</text>"#,
            x(t),
            top + 20.0 + PLOT_H + 14.0,
            (t * 1000.0).round() / 1000.0
        );
        t += t_step;
    }
    let mut lx = W - RIGHT;
    for (k, l) in lines.iter().enumerate().rev() {
        lx -= 12.0 + 7.0 * l.name.len() as f64;
        let _ = writeln!(
            o,
            r#"<rect x="{lx:.1}" y="{}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{}" class="tick">{}</text>"#,
            top + 3.0,
            l.color,
            lx + 13.0,
            top + 12.0,
            esc(l.name)
        );
        if l.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = l
            .points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="1.5"{} points="{}"/>"#,
            esc(l.name),
            l.color,
            // A second line dashed, so one hidden behind the other still shows.
            if k > 0 {
                r#" stroke-dasharray="6 3""#
            } else {
                ""
            },
            pts.join(" ")
        );
    }
    let _ = writeln!(o, "</g>");
}

/// Processes in tree order (parents before children) with their depth.
pub fn tree_order(r: &Report) -> Vec<(usize, usize)> {
    let n = r.processes.len();
    let mut children = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for (i, p) in r.processes.iter().enumerate() {
        match p.parent {
            Some(pi) if pi < n && pi != i => children[pi].push(i),
            _ => roots.push(i),
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    let mut seen = vec![false; n];
    while let Some((i, d)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        out.push((i, d));
        for &c in children[i].iter().rev() {
            stack.push((c, d + 1));
        }
    }
    out
}

/// The plots and the timeline as one SVG document.
pub fn plots_svg(r: &Report) -> String {
    let points: &[TreePoint] = r.series.as_ref().map_or(&[], |s| &s.tree[..]);
    let t_max = r
        .duration_s
        .max(points.last().map_or(0.0, |p| p.t))
        .max(1e-3);
    let order = tree_order(r);
    let rows = order.len().min(MAX_ROWS);
    // GPU plots when a GPU was followed.
    let gpu = points.iter().any(|p| p.gpu.is_some());
    let charts = if gpu { 6.0 } else { 4.0 };
    let timeline_top = charts * (PLOT_H + 50.0) + 10.0;
    let height = timeline_top + 30.0 + ROW_H * (rows as f64 + 1.0) + 20.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height:.0}" viewBox="0 0 {W} {height:.0}" font-family="sans-serif">"#
    );
    o.push_str(
        "<style>.title{font-size:14px;font-weight:bold}.tick{font-size:10px;fill:#444}.label{font-size:10px}</style>\n",
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let cpu = points.iter().map(|p| (p.t, p.cpu_pct)).collect();
    chart(
        &mut o,
        "cpu",
        "CPU (% of one core)",
        0.0,
        t_max,
        &[Line {
            name: "CPU %",
            color: "#d62728",
            points: cpu,
        }],
        |v| format!("{v:.0}%"),
    );
    let mem = points.iter().map(|p| (p.t, p.rss_bytes as f64)).collect();
    chart(
        &mut o,
        "memory",
        "Memory (resident, live processes)",
        PLOT_H + 50.0,
        t_max,
        &[Line {
            name: "RSS",
            color: "#1f77b4",
            points: mem,
        }],
        |v| bytes(v as u64),
    );
    let read = rate_of(points, |p| Some(p.disk_read_bytes as f64));
    let write = rate_of(points, |p| Some(p.disk_write_bytes as f64));
    chart(
        &mut o,
        "disk",
        "Disk (bytes/s)",
        2.0 * (PLOT_H + 50.0),
        t_max,
        &[
            Line {
                name: "read",
                color: "#2ca02c",
                points: read,
            },
            Line {
                name: "write",
                color: "#ff7f0e",
                points: write,
            },
        ],
        |v| format!("{}/s", bytes(v as u64)),
    );
    let tx = rate_of(points, |p| p.net.map(|n| (n.tcp_tx + n.udp_tx) as f64));
    let rx = rate_of(points, |p| p.net.map(|n| (n.tcp_rx + n.udp_rx) as f64));
    chart(
        &mut o,
        "network",
        if r.collector.counts_network() {
            "Network, TCP + UDP (bytes/s)"
        } else if r.collector.ebpf {
            "Network (unknown: no network hook on this kernel)"
        } else {
            "Network (unknown without eBPF)"
        },
        3.0 * (PLOT_H + 50.0),
        t_max,
        &[
            Line {
                name: "sent",
                color: "#9467bd",
                points: tx,
            },
            Line {
                name: "received",
                color: "#8c564b",
                points: rx,
            },
        ],
        |v| format!("{}/s", bytes(v as u64)),
    );
    if gpu {
        let held = |f: fn(&crate::model::series::GpuPoint) -> f64| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter_map(|p| p.gpu.as_ref().map(|g| (p.t, f(g))))
                .collect()
        };
        chart(
            &mut o,
            "gpu-memory",
            "GPU memory (held by the live processes)",
            4.0 * (PLOT_H + 50.0),
            t_max,
            &[Line {
                name: "GPU memory",
                color: "#76b900",
                points: held(|g| g.memory_bytes as f64),
            }],
            |v| bytes(v as u64),
        );
        chart(
            &mut o,
            "gpu-busy",
            "GPU SM utilisation (% of one GPU)",
            5.0 * (PLOT_H + 50.0),
            t_max,
            &[Line {
                name: "SM %",
                color: "#e377c2",
                points: held(|g| g.sm_pct),
            }],
            |v| format!("{v:.0}%"),
        );
    }

    // The timeline.
    let plot_w = W - LEFT - RIGHT - 200.0;
    let x0 = LEFT + 200.0;
    let start_min = r
        .processes
        .iter()
        .map(|p| p.start_offset_s)
        .fold(0.0, f64::min);
    let span = (t_max - start_min).max(1e-3);
    let x = |t: f64| x0 + (t - start_min) / span * plot_w;
    let _ = writeln!(o, r#"<g id="timeline" class="plot">"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="{:.1}" class="title">Processes ({} in all; bars from start to exit, nested under their parent)</text>"#,
        timeline_top + 12.0,
        r.processes.len()
    );
    for (row, &(i, depth)) in order.iter().take(rows).enumerate() {
        let p = &r.processes[i];
        let y = timeline_top + 24.0 + ROW_H * row as f64;
        let end = p.end_offset_s.unwrap_or(t_max);
        let failed = p.exit_signal.is_some() || p.exit_code.is_some_and(|c| c != 0);
        let color = if failed {
            "#d62728"
        } else if p.end_offset_s.is_none() {
            "#17becf"
        } else {
            "#1f77b4"
        };
        let name = process_name(&p.comm, &p.argv);
        // The program's own name, not its directory, where room is short.
        let short = match p.argv.split_first() {
            Some((exe, rest)) => {
                let mut v = vec![exe.rsplit('/').next().unwrap_or(exe).to_owned()];
                v.extend(rest.iter().cloned());
                command_line(&v)
            }
            None => printable(&p.comm).into_owned(),
        };
        let label = format!("{}{} {}", "  ".repeat(depth.min(12)), p.pid, short);
        let _ = writeln!(
            o,
            r#"<g class="proc" data-pid="{}"><title>{}</title><text x="{LEFT}" y="{:.1}" class="label">{}</text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/></g>"#,
            p.pid,
            esc(&format!("{name} (pid {})", p.pid)),
            y + 11.0,
            esc(&fit(&label, 34)),
            x(p.start_offset_s),
            y + 2.0,
            (x(end) - x(p.start_offset_s)).max(1.0),
            ROW_H - 4.0,
        );
    }
    if order.len() > rows {
        let _ = writeln!(
            o,
            r#"<text x="{LEFT}" y="{:.1}" class="label">… {} more processes (all are in the JSON report)</text>"#,
            timeline_top + 24.0 + ROW_H * rows as f64 + 11.0,
            order.len() - rows
        );
    }
    let _ = writeln!(o, "</g>\n</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ProcessReport, SeriesReport};

    #[test]
    fn draws_every_plot_and_a_bar_per_process() {
        let points: Vec<TreePoint> = (0..10)
            .map(|i| TreePoint {
                t: f64::from(i),
                cpu_pct: f64::from(i * 10),
                rss_bytes: 1 << 20,
                disk_write_bytes: u64::from(i as u32) * 4096,
                ..TreePoint::default()
            })
            .collect();
        let r = Report {
            duration_s: 9.0,
            series: Some(SeriesReport {
                tree: points,
                ..SeriesReport::default()
            }),
            processes: vec![
                ProcessReport {
                    pid: 1,
                    argv: vec!["sh".into(), "<x>".into()],
                    end_offset_s: Some(9.0),
                    ..ProcessReport::default()
                },
                ProcessReport {
                    pid: 2,
                    parent: Some(0),
                    argv: vec!["false".into()],
                    start_offset_s: 1.0,
                    end_offset_s: Some(2.0),
                    exit_code: Some(1),
                    ..ProcessReport::default()
                },
            ],
            ..Report::default()
        };
        let svg = plots_svg(&r);
        for id in ["cpu", "memory", "disk", "network", "timeline"] {
            assert!(svg.contains(&format!(r#"<g id="{id}""#)), "{id}");
        }
        assert_eq!(svg.matches("<polyline").count(), 4, "cpu, rss, read, write");
        assert_eq!(svg.matches(r#"class="proc""#).count(), 2);
        assert!(svg.contains("&lt;x&gt;"), "text is escaped");
        assert!(
            svg.contains("#d62728\"/></g>"),
            "the failed process stands out"
        );
        assert!(
            !svg.contains("http://") || svg.matches("http://").count() == 1,
            "only the xmlns"
        );
    }
}
