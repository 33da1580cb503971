//! The live view's content: what a snapshot looks like in `width` columns and
//! at most `max_lines` lines. Pure, so it is snapshot-tested; `term.rs` puts
//! it on the screen.

use super::{
    style::{Style, strip, visible_width},
    units::{bytes, fit, process_name},
};
use crate::model::snapshot::{ProcLine, Snapshot};

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// A rate in human units: `0 B/s`, `1.5 KiB/s`.
pub fn rate(bps: f64) -> String {
    format!("{}/s", bytes(bps.max(0.0).round() as u64))
}

/// CPU seconds, compact: `0.02s`, `3.2s`, `125s`.
fn seconds(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.2}s")
    } else if v < 100.0 {
        format!("{v:.1}s")
    } else {
        format!("{v:.0}s")
    }
}

/// Elapsed time as `12.3s`, `4m05s`, `1h02m`.
pub fn elapsed(t: f64) -> String {
    if t < 60.0 {
        format!("{t:.1}s")
    } else if t < 3600.0 {
        format!("{}m{:02}s", (t / 60.0) as u64, (t % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (t / 3600.0) as u64,
            ((t % 3600.0) / 60.0) as u64
        )
    }
}

fn cut(s: &str, width: usize) -> String {
    if visible_width(s) <= width {
        return s.to_owned();
    }
    // Styled lines are built so that cutting the plain text is enough: fall
    // back to plain when a styled line does not fit.
    let plain: String = strip(s);
    fit(&plain, width)
}

fn proc_name(p: &ProcLine) -> String {
    process_name(&p.comm, &p.argv)
}

/// Renders the live panel.
pub fn live_lines(
    s: &Snapshot,
    what: &str,
    frame: usize,
    width: usize,
    max_lines: usize,
    st: Style,
) -> Vec<String> {
    let width = width.max(20);
    let mut out = Vec::new();
    let spin = st.cyan(SPINNER[frame % SPINNER.len()]);
    let mut procs = format!("{} alive · {} seen", s.alive, s.seen);
    if s.failed > 0 {
        procs = format!("{procs} · {}", st.red(&format!("{} failed", s.failed)));
    }
    let head = format!("{spin} {} │ {procs} │ ", st.bold(&elapsed(s.t)));
    let room = width.saturating_sub(visible_width(&head));
    out.push(cut(&format!("{head}{}", fit(what, room.max(1))), width));
    if max_lines <= 1 {
        return out;
    }
    out.push(cut(
        &format!(
            "{} {:.0}% {} │ {} {} │ {} read {} · write {} ({})",
            st.dim("CPU"),
            s.cpu_pct,
            seconds(s.cpu_s),
            st.dim("RSS"),
            bytes(s.rss_bytes),
            st.dim("disk"),
            bytes(s.disk_read_bytes),
            bytes(s.disk_write_bytes),
            rate(s.disk_read_rate + s.disk_write_rate),
        ),
        width,
    ));
    if max_lines > 2 {
        let mut line = match &s.net {
            Some(n) => format!(
                "{} TCP ↑ {} {} ↓ {} {} │ UDP ↑ {} {} ↓ {} {}",
                st.dim("net"),
                bytes(n.tcp.tx_bytes),
                st.dim(&rate(s.net_rate.tcp_tx)),
                bytes(n.tcp.rx_bytes),
                st.dim(&rate(s.net_rate.tcp_rx)),
                bytes(n.udp.tx_bytes),
                st.dim(&rate(s.net_rate.udp_tx)),
                bytes(n.udp.rx_bytes),
                st.dim(&rate(s.net_rate.udp_rx)),
            ),
            None => format!("{} unknown without eBPF", st.dim("net")),
        };
        if s.lost > 0 {
            line = format!("{line} │ {}", st.alarm(&format!("LOST {}", s.lost)));
        }
        out.push(cut(&line, width));
    }
    // A GPU line once the tree holds or uses a GPU.
    if let Some(g) = s.gpu.filter(|g| g.memory_bytes > 0 || g.sm_pct > 0.0)
        && max_lines > out.len() + 2
    {
        out.push(cut(
            &format!(
                "{} SM {:.0}% │ {} held",
                st.dim("gpu"),
                g.sm_pct,
                bytes(g.memory_bytes)
            ),
            width,
        ));
    }
    let room = max_lines.saturating_sub(out.len());
    if room < 2 || s.processes.is_empty() {
        return out;
    }
    let talkers: Vec<&ProcLine> = {
        let mut v: Vec<&ProcLine> = s
            .processes
            .iter()
            .filter(|p| p.net_rate.tx() + p.net_rate.rx() > 0.0)
            .collect();
        v.sort_by(|a, b| {
            (b.net_rate.tx() + b.net_rate.rx()).total_cmp(&(a.net_rate.tx() + a.net_rate.rx()))
        });
        v
    };
    // Split the room between the CPU table and, when anything is talking, the
    // network table.
    let (cpu_rows, net_rows) = if talkers.is_empty() || room < 6 {
        (room - 1, 0)
    } else {
        let net = (talkers.len()).min((room - 2) / 2);
        (room - 2 - net, net)
    };
    let head = format!("{:>7} {:>6} {:>9} {:>9}  ", "PID", "CPU%", "CPU", "RSS");
    out.push(st.dim(&cut(&format!("{head}COMMAND"), width)));
    for p in s.processes.iter().take(cpu_rows) {
        let row = format!(
            "{:>7} {:>6.1} {:>9} {:>9}  ",
            p.pid,
            p.cpu_pct,
            p.cpu_s.map(seconds).unwrap_or_else(|| "-".into()),
            p.rss_bytes.map(bytes).unwrap_or_else(|| "-".into()),
        );
        let room = width.saturating_sub(row.chars().count());
        out.push(format!("{row}{}", fit(&proc_name(p), room)));
    }
    if net_rows > 0 {
        let head = format!("{:>7} {:>12} {:>12}  ", "PID", "SENT/s", "RECEIVED/s");
        out.push(st.dim(&cut(
            &format!("{head}COMMAND (busiest on the network)"),
            width,
        )));
        for p in talkers.iter().take(net_rows) {
            let row = format!(
                "{:>7} {:>12} {:>12}  ",
                p.pid,
                rate(p.net_rate.tx()),
                rate(p.net_rate.rx())
            );
            let room = width.saturating_sub(row.chars().count());
            out.push(format!("{row}{}", fit(&proc_name(p), room)));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{
        net::{Net, Traffic},
        snapshot::NetRate,
    };

    pub(crate) fn snapshot() -> Snapshot {
        let p = |pid, cpu_pct, cpu_s, rx: f64, argv: &[&str]| ProcLine {
            pid,
            comm: argv[0].into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cpu_pct,
            cpu_s: Some(cpu_s),
            rss_bytes: Some(12 << 20),
            net: Some(Net::default()),
            net_rate: NetRate {
                tcp_rx: rx,
                ..NetRate::default()
            },
            ppid: Some(1),
            disk_read_rate: 0.0,
            disk_write_rate: 0.0,
            ended: false,
            user: Some(if pid == 4250 { "www-data" } else { "alice" }.into()),
            container: (pid == 4250).then(|| "3f4e5d6c7b8a".into()),
        };
        Snapshot {
            t: 12.34,
            alive: 3,
            seen: 17,
            failed: 1,
            cpu_pct: 143.0,
            cpu_s: 3.21,
            rss_bytes: 412 << 20,
            disk_read_bytes: 1 << 20,
            disk_write_bytes: 34 << 20,
            disk_read_rate: 0.0,
            disk_write_rate: 2.5 * 1048576.0,
            net: Some(Net {
                tcp: Traffic {
                    tx_bytes: 1536 << 10,
                    rx_bytes: 200 << 10,
                    ..Traffic::default()
                },
                ..Net::default()
            }),
            net_rate: NetRate {
                tcp_tx: 120.0 * 1024.0,
                tcp_rx: 10240.0,
                ..NetRate::default()
            },
            lost: 0,
            gpu: None,
            processes: vec![
                p(
                    4242,
                    98.0,
                    2.1,
                    0.0,
                    &["python3", "train.py", "--epochs", "3"],
                ),
                p(
                    4250,
                    40.5,
                    0.9,
                    10240.0,
                    &["curl", "-s", "http://127.0.0.1:8080/data"],
                ),
                p(
                    4200,
                    0.0,
                    0.01,
                    0.0,
                    &["sh", "-c", "python3 train.py --epochs 3"],
                ),
            ],
            ended: Vec::new(),
        }
    }

    #[test]
    fn a_gpu_line_once_the_tree_uses_a_gpu() {
        let mut s = snapshot();
        let lines = |s: &Snapshot| live_lines(s, "job", 0, 100, 12, Style::default());
        assert!(!lines(&s).iter().any(|l| l.starts_with("gpu")));
        s.gpu = Some(crate::model::series::GpuPoint::default());
        assert!(
            !lines(&s).iter().any(|l| l.starts_with("gpu")),
            "known, unused"
        );
        s.gpu = Some(crate::model::series::GpuPoint {
            memory_bytes: 3 << 30,
            sm_pct: 87.4,
        });
        assert!(
            lines(&s).iter().any(|l| l == "gpu SM 87% │ 3.0 GiB held"),
            "{:?}",
            lines(&s)
        );
    }

    #[test]
    fn fits_the_width_and_height() {
        for (w, h) in [(100, 20), (60, 8), (40, 4), (120, 1)] {
            let lines = live_lines(
                &snapshot(),
                "sh -c 'python3 train.py'",
                3,
                w,
                h,
                Style::default(),
            );
            assert!(lines.len() <= h.max(1), "{w}x{h}: {lines:#?}");
            for l in &lines {
                assert!(l.chars().count() <= w, "{w}x{h}: too wide: {l}");
            }
        }
    }

    #[test]
    fn shows_totals_and_busiest() {
        let lines = live_lines(
            &snapshot(),
            "sh -c 'python3 train.py'",
            0,
            100,
            20,
            Style::default(),
        );
        let all = lines.join("\n");
        assert!(
            all.starts_with("⠋ 12.3s │ 3 alive · 17 seen · 1 failed │ sh -c 'python3 train.py'"),
            "{all}"
        );
        assert!(
            all.contains(
                "CPU 143% 3.2s │ RSS 412 MiB │ disk read 1.0 MiB · write 34.0 MiB (2.5 MiB/s)"
            ),
            "{all}"
        );
        assert!(
            all.contains("TCP ↑ 1.5 MiB 120 KiB/s ↓ 200 KiB 10.0 KiB/s"),
            "{all}"
        );
        let cpu_first = lines
            .iter()
            .position(|l| l.contains("train.py --epochs"))
            .unwrap();
        let curl = lines.iter().position(|l| l.contains("curl")).unwrap();
        assert!(cpu_first < curl);
        assert!(all.contains("busiest on the network"), "{all}");
        assert!(!all.contains('\x1b'), "no escapes without color");
        let colored = live_lines(&snapshot(), "x", 0, 100, 20, Style { color: true }).join("\n");
        assert!(colored.contains("\x1b[31m1 failed"), "{colored}");
    }
}
