//! A saved report as one self-contained HTML page: the summary, the plots
//! and the timeline (inline SVG), and a table of every process. Nothing is
//! fetched from the network.

use std::fmt::Write as _;

use super::{
    style::Style,
    summary::summary,
    svg::{plots_svg, tree_order},
    units::{bytes, command_line, duration, process_name, signal_name},
};
use crate::report::Report;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page.
pub fn html(r: &Report) -> String {
    let what = match &r.command {
        Some(c) => command_line(c),
        None => format!("pid {}", r.root_pid),
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>pmet: {}</title>",
        esc(&what)
    );
    o.push_str(
        "<style>body{font-family:sans-serif;margin:2em;color:#222}pre{background:#f6f6f6;padding:1em;overflow-x:auto}\
         table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}\
         td.cmd,th.cmd{text-align:left;font-family:monospace}tr.failed td{color:#b00}</style>\n</head>\n<body>\n",
    );
    let _ = writeln!(
        o,
        "<h1>pmet report</h1>\n<p><code>{}</code> · started {} · {}</p>",
        esc(&what),
        esc(&r.started_at),
        esc(&duration(r.duration_s))
    );
    let _ = writeln!(
        o,
        "<pre id=\"summary\">{}</pre>",
        esc(&summary(r, 110, Style::default()))
    );
    let _ = writeln!(
        o,
        "<h2>Over time</h2>\n<div id=\"plots\">\n{}</div>",
        plots_svg(r)
    );
    let _ = writeln!(
        o,
        "<h2>Every process</h2>\n<table id=\"processes\">\n<tr><th>pid</th><th class=\"cmd\">command</th><th>start s</th><th>end s</th><th>status</th><th>CPU</th><th>peak RSS</th><th>disk r/w</th><th>net sent/received</th></tr>"
    );
    for (i, depth) in tree_order(r) {
        let p = &r.processes[i];
        let failed = p.exit_signal.is_some() || p.exit_code.is_some_and(|c| c != 0);
        let status = match (p.exit_code, p.exit_signal) {
            (_, Some(s)) => signal_name(s),
            (Some(c), _) => format!("exit {c}"),
            _ => "running".into(),
        };
        let name = process_name(&p.comm, &p.argv);
        let cpu = p
            .cpu_user_s
            .zip(p.cpu_system_s)
            .map_or("—".into(), |(u, s)| duration(u + s));
        let net = p.net.map_or("—".into(), |n| {
            format!(
                "{} / {}",
                bytes(n.tcp.tx_bytes + n.udp.tx_bytes),
                bytes(n.tcp.rx_bytes + n.udp.rx_bytes)
            )
        });
        let disk = p
            .disk_read_bytes
            .zip(p.disk_write_bytes)
            .map_or("—".into(), |(a, b)| {
                format!("{} / {}", bytes(a), bytes(b))
            });
        let _ = writeln!(
            o,
            "<tr{}><td>{}</td><td class=\"cmd\">{}{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if failed { " class=\"failed\"" } else { "" },
            p.pid,
            "&nbsp;&nbsp;".repeat(depth.min(12)),
            esc(&name),
            p.start_offset_s,
            p.end_offset_s.map_or("—".into(), |e| format!("{e:.3}")),
            esc(&status),
            cpu,
            p.peak_rss_bytes.map_or("—".into(), bytes),
            disk,
            net
        );
    }
    o.push_str("</table>\n");
    connections_table(r, &mut o);
    gpu_table(r, &mut o);
    o.push_str("</body>\n</html>\n");
    o
}

/// The processes that used a GPU; nothing when none did.
fn gpu_table(r: &Report, o: &mut String) {
    let used: Vec<_> = tree_order(r)
        .into_iter()
        .map(|(i, _)| &r.processes[i])
        .filter_map(|p| Some((p, p.gpu.as_ref().filter(|g| !g.devices.is_empty())?)))
        .collect();
    if used.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "<h2>GPU</h2>\n<table id=\"gpu\">\n<tr><th>pid</th><th class=\"cmd\">command</th><th class=\"cmd\">devices</th><th>memory peak</th><th>SM mean</th><th>SM max</th><th>memory ctl mean</th><th>busy s</th></tr>"
    );
    for (p, g) in used {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"cmd\">{}</td><td class=\"cmd\">{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{}</td><td>{:.3}{}</td></tr>",
            p.pid,
            esc(&command_line(&p.argv)),
            esc(&g.devices.join(", ")),
            bytes(g.memory_peak_bytes),
            g.sm_pct_mean,
            g.sm_pct_max,
            g.mem_pct_mean.map_or("—".into(), |m| format!("{m:.1}%")),
            g.busy_s,
            if g.accounting {
                " (driver's lifetime figures)"
            } else {
                ""
            }
        );
    }
    o.push_str("</table>\n");
}

/// Every connection, grouped by process in tree order; nothing when
/// connections were not followed.
fn connections_table(r: &Report, o: &mut String) {
    if r.processes.iter().all(|p| p.connections.is_none()) {
        return;
    }
    let _ = writeln!(
        o,
        "<h2>Connections</h2>\n<table id=\"connections\">\n<tr><th>pid</th><th>proto</th><th>role</th><th class=\"cmd\">local</th><th class=\"cmd\">remote</th><th>sent</th><th>received</th><th>opened s</th><th>closed s</th><th>outcome</th><th>retransmits</th></tr>"
    );
    for (i, _) in tree_order(r) {
        let p = &r.processes[i];
        for c in p.connections.iter().flatten() {
            let _ = writeln!(
                o,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td class=\"cmd\">{}</td><td class=\"cmd\">{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if c.outcome.failed() {
                    " class=\"failed\""
                } else {
                    ""
                },
                p.pid,
                c.proto.as_str(),
                c.role.as_str(),
                esc(c.local.as_deref().unwrap_or("—")),
                esc(c.remote.as_deref().unwrap_or("—")),
                bytes(c.tx_bytes),
                bytes(c.rx_bytes),
                c.opened_offset_s,
                c.closed_offset_s.map_or("—".into(), |e| format!("{e:.3}")),
                c.outcome.as_str(),
                c.retransmits
            );
        }
        if let Some(d) = &p.connections_dropped {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td colspan=\"4\" class=\"cmd\">{} more, not listed (--max-connections), and bytes not tied to a socket</td><td>{}</td><td>{}</td><td></td><td></td><td>{} failed</td><td>{}</td></tr>",
                p.pid,
                d.count,
                bytes(d.tx_bytes),
                bytes(d.rx_bytes),
                d.failed,
                d.retransmits
            );
        }
    }
    o.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_contained() {
        let r = Report {
            command: Some(vec!["echo".into(), "<b>".into()]),
            ..Report::default()
        };
        let h = html(&r);
        assert!(h.starts_with("<!doctype html>"));
        assert!(h.contains("echo '&lt;b&gt;'"));
        for fetch in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!h.contains(fetch), "{fetch}");
        }
    }
}
