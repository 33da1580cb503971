//! Comparing two reports: the tree's totals, and the processes matched by
//! command line; and the limits a CI job gates on (`--fail-if`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ProcessReport, Report};
use crate::units::{bytes, command_line, duration};

/// What a figure counts, for display and for limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Seconds.
    Seconds,
    /// Bytes.
    Bytes,
    /// A count.
    Count,
}

impl Unit {
    /// `v` in this unit, for a person (its sign dropped).
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Seconds => duration(v.abs()),
            Unit::Bytes => bytes(v.abs().round() as u64),
            Unit::Count => format!("{}", v.abs().round()),
        }
    }
    /// `v` in this unit with its sign.
    pub fn signed(self, v: f64) -> String {
        format!("{}{}", if v < 0.0 { "-" } else { "+" }, self.show(v))
    }
}

/// The figures compared, by the names `--fail-if` uses.
pub const METRICS: [(&str, &str, Unit); 19] = [
    ("duration", "duration", Unit::Seconds),
    ("cpu", "CPU (user + system)", Unit::Seconds),
    ("cpu_user", "CPU, user", Unit::Seconds),
    ("cpu_system", "CPU, system", Unit::Seconds),
    ("rss", "peak memory of the tree (sampled)", Unit::Bytes),
    ("max_rss", "largest peak memory of one process", Unit::Bytes),
    (
        "pss",
        "peak memory of the tree, shared pages once (PSS)",
        Unit::Bytes,
    ),
    ("disk_read", "disk read", Unit::Bytes),
    ("disk_write", "disk written", Unit::Bytes),
    ("net_tx", "network sent (TCP + UDP)", Unit::Bytes),
    ("net_rx", "network received (TCP + UDP)", Unit::Bytes),
    ("connections", "connections (sockets used)", Unit::Count),
    (
        "failed_connections",
        "failed connections (refused, reset, timed out…)",
        Unit::Count,
    ),
    ("retransmits", "TCP retransmits", Unit::Count),
    ("processes", "processes", Unit::Count),
    ("failed", "failed processes", Unit::Count),
    ("lost", "lost events", Unit::Count),
    (
        "gpu_memory",
        "GPU memory (sum of the processes' peaks)",
        Unit::Bytes,
    ),
    ("gpu_busy", "GPU busy (SM-weighted seconds)", Unit::Seconds),
];

/// The value of metric `key` in a report (`None` when the report cannot say).
pub fn metric(r: &Report, key: &str) -> Option<f64> {
    let t = &r.totals;
    let net = |f: fn(&super::Net) -> u64| t.net.as_ref().map(|n| f(n) as f64);
    Some(match key {
        "duration" => r.duration_s,
        "cpu" => t.cpu_user_s + t.cpu_system_s,
        "cpu_user" => t.cpu_user_s,
        "cpu_system" => t.cpu_system_s,
        "rss" => r.stats.as_ref()?.rss_bytes?.max,
        "max_rss" => r.processes.iter().filter_map(|p| p.peak_rss_bytes).max()? as f64,
        "pss" => t.pss_peak_bytes? as f64,
        "disk_read" => t.disk_read_bytes as f64,
        "disk_write" => t.disk_write_bytes as f64,
        "net_tx" => return net(|n| n.tcp.tx_bytes + n.udp.tx_bytes),
        "net_rx" => return net(|n| n.tcp.rx_bytes + n.udp.rx_bytes),
        "connections" => return conns(r, |c| c.count, |_| 1),
        "failed_connections" => {
            return conns(r, |d| d.failed, |c| u64::from(c.outcome.failed()));
        }
        "retransmits" => return conns(r, |d| d.retransmits, |c| c.retransmits),
        "processes" => t.processes as f64,
        "failed" => t.failed_processes as f64,
        "lost" => r.collector.lost_events as f64,
        "gpu_memory" => t.gpu.as_ref()?.memory_peak_bytes as f64,
        "gpu_busy" => t.gpu.as_ref()?.busy_s,
        _ => return None,
    })
}

/// A connection figure summed over the tree, listed and dropped alike;
/// `None` when the report's connections were not followed.
fn conns(
    r: &Report,
    dropped: fn(&super::ConnectionsDropped) -> u64,
    each: fn(&super::ConnectionReport) -> u64,
) -> Option<f64> {
    let mut followed = false;
    let mut sum = 0;
    for p in &r.processes {
        if let Some(list) = &p.connections {
            followed = true;
            sum += list.iter().map(each).sum::<u64>();
        }
        sum += p.connections_dropped.as_ref().map_or(0, dropped);
    }
    followed.then_some(sum as f64)
}

/// One compared figure.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MetricDiff {
    /// Name, as `--fail-if` knows it.
    pub name: String,
    /// What it is.
    pub label: String,
    /// Its unit.
    pub unit: Unit,
    /// Value in the base report.
    pub base: Option<f64>,
    /// Value in the new report.
    pub new: Option<f64>,
    /// new − base.
    pub change: Option<f64>,
    /// (new − base) / base, percent (`null` when base is 0).
    pub change_pct: Option<f64>,
}

/// Totals of the processes sharing one command line.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Group {
    /// How many ran.
    pub count: usize,
    /// CPU seconds, summed.
    pub cpu_s: f64,
    /// Largest peak memory.
    pub peak_rss_bytes: u64,
    /// Storage bytes read + written.
    pub disk_bytes: u64,
    /// Network bytes sent.
    pub net_tx_bytes: u64,
    /// Network bytes received.
    pub net_rx_bytes: u64,
    /// Exited non-zero or killed.
    pub failed: usize,
}

/// One command line in both reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProcessDiff {
    /// The command line.
    pub command: String,
    /// In the base report (`null`: did not run there).
    pub base: Option<Group>,
    /// In the new report.
    pub new: Option<Group>,
}

/// A whole comparison.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Diff {
    /// Every metric.
    pub metrics: Vec<MetricDiff>,
    /// Every command line, biggest CPU change first.
    pub processes: Vec<ProcessDiff>,
}

fn key(p: &ProcessReport) -> String {
    if p.argv.is_empty() {
        p.comm.clone()
    } else {
        command_line(&p.argv)
    }
}

fn groups(r: &Report) -> BTreeMap<String, Group> {
    let mut m: BTreeMap<String, Group> = BTreeMap::new();
    for p in &r.processes {
        let g = m.entry(key(p)).or_default();
        g.count += 1;
        g.cpu_s += p.cpu_user_s.unwrap_or(0.0) + p.cpu_system_s.unwrap_or(0.0);
        g.peak_rss_bytes = g.peak_rss_bytes.max(p.peak_rss_bytes.unwrap_or(0));
        g.disk_bytes += p.disk_read_bytes.unwrap_or(0) + p.disk_write_bytes.unwrap_or(0);
        if let Some(n) = p.net {
            g.net_tx_bytes += n.tcp.tx_bytes + n.udp.tx_bytes;
            g.net_rx_bytes += n.tcp.rx_bytes + n.udp.rx_bytes;
        }
        if p.exit_signal.is_some() || p.exit_code.is_some_and(|c| c != 0) {
            g.failed += 1;
        }
    }
    m
}

/// Compares `base` and `new`.
pub fn diff(base: &Report, new: &Report) -> Diff {
    let metrics = METRICS
        .iter()
        .map(|&(name, label, unit)| {
            let (b, n) = (metric(base, name), metric(new, name));
            let change = b.zip(n).map(|(b, n)| n - b);
            let change_pct = b
                .zip(n)
                .and_then(|(b, n)| (b != 0.0).then(|| (n - b) / b * 100.0));
            MetricDiff {
                name: name.into(),
                label: label.into(),
                unit,
                base: b,
                new: n,
                change,
                change_pct,
            }
        })
        .collect();
    let (gb, gn) = (groups(base), groups(new));
    let mut commands: Vec<&String> = gb.keys().chain(gn.keys()).collect();
    commands.sort();
    commands.dedup();
    let mut processes: Vec<ProcessDiff> = commands
        .into_iter()
        .map(|c| ProcessDiff {
            command: c.clone(),
            base: gb.get(c).cloned(),
            new: gn.get(c).cloned(),
        })
        .collect();
    let cpu_change = |p: &ProcessDiff| {
        p.new.as_ref().map_or(0.0, |g| g.cpu_s) - p.base.as_ref().map_or(0.0, |g| g.cpu_s)
    };
    processes.sort_by(|a, b| {
        cpu_change(b)
            .abs()
            .total_cmp(&cpu_change(a).abs())
            .then(a.command.cmp(&b.command))
    });
    Diff { metrics, processes }
}

/// How a limit is compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The relative change, percent.
    Relative(f64),
    /// The absolute change, in the metric's unit.
    Change(f64),
    /// The new value itself.
    Value(f64),
}

/// One `--fail-if` condition, e.g. `cpu>+10%`.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    /// As written.
    pub text: String,
    /// The metric.
    pub metric: String,
    /// `>`, `>=`, `<` or `<=`.
    pub op: String,
    /// The bound.
    pub bound: Bound,
}

fn parse_amount(s: &str, unit: Unit) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a number"))?;
    let mult = match (unit, suffix.trim()) {
        (_, "") => 1.0,
        (Unit::Bytes, "B") => 1.0,
        (Unit::Bytes, "KiB") => 1024.0,
        (Unit::Bytes, "MiB") => 1024.0 * 1024.0,
        (Unit::Bytes, "GiB") => 1024.0 * 1024.0 * 1024.0,
        (Unit::Bytes, "TiB") => 1024f64.powi(4),
        (Unit::Bytes, "kB" | "KB") => 1e3,
        (Unit::Bytes, "MB") => 1e6,
        (Unit::Bytes, "GB") => 1e9,
        (Unit::Bytes, "TB") => 1e12,
        (Unit::Seconds, "s") => 1.0,
        (Unit::Seconds, "ms") => 1e-3,
        (Unit::Seconds, "m" | "min") => 60.0,
        (Unit::Seconds, "h") => 3600.0,
        (u, other) => {
            return Err(format!(
                "unit `{other}` does not fit: this figure counts {}",
                match u {
                    Unit::Bytes => "bytes (use B, KiB, MiB, GiB, kB, MB, GB)",
                    Unit::Seconds => "time (use ms, s, m, h)",
                    Unit::Count => "things (use a plain number)",
                }
            ));
        }
    };
    Ok(n * mult)
}

/// Parses `--fail-if`: comma-separated conditions such as
/// `cpu>+10%,rss>+5%,net_tx>+1MiB,duration>+20%,failed>0`.
///
/// `+N%`/`-N%` bound the relative change, `+N<unit>`/`-N<unit>` the absolute
/// change, and a bare `N<unit>` the new value itself.
pub fn parse_limits(s: &str) -> Result<Vec<Limit>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let opos = part.find(['>', '<']).ok_or_else(|| {
            format!("`{part}`: expected METRIC>VALUE or METRIC<VALUE, e.g. cpu>+10%")
        })?;
        let metric = part[..opos].trim();
        let rest = &part[opos..];
        let (op, value) = if let Some(v) = rest.strip_prefix(">=") {
            (">=", v)
        } else if let Some(v) = rest.strip_prefix("<=") {
            ("<=", v)
        } else {
            (&rest[..1], &rest[1..])
        };
        let Some(&(_, _, unit)) = METRICS.iter().find(|(n, ..)| *n == metric) else {
            let known: Vec<&str> = METRICS.iter().map(|(n, ..)| *n).collect();
            return Err(format!(
                "`{part}`: unknown metric `{metric}` (known: {})",
                known.join(", ")
            ));
        };
        let value = value.trim();
        let bound = if let Some(pct) = value.strip_suffix('%') {
            let v: f64 = pct
                .trim_start_matches('+')
                .parse()
                .map_err(|_| format!("`{part}`: `{value}` is not a percentage"))?;
            if !(pct.starts_with('+') || pct.starts_with('-')) {
                return Err(format!(
                    "`{part}`: a percentage is a change: write +{pct}% or -{pct}%"
                ));
            }
            Bound::Relative(v)
        } else if let Some(v) = value.strip_prefix('+') {
            Bound::Change(parse_amount(v, unit).map_err(|e| format!("`{part}`: {e}"))?)
        } else if let Some(v) = value.strip_prefix('-') {
            Bound::Change(-parse_amount(v, unit).map_err(|e| format!("`{part}`: {e}"))?)
        } else {
            Bound::Value(parse_amount(value, unit).map_err(|e| format!("`{part}`: {e}"))?)
        };
        let n = match &bound {
            Bound::Relative(v) | Bound::Change(v) | Bound::Value(v) => *v,
        };
        // NaN compares false with everything, so the gate could never trip.
        if !n.is_finite() {
            return Err(format!("`{part}`: `{value}` is not a finite number"));
        }
        out.push(Limit {
            text: part.to_owned(),
            metric: metric.to_owned(),
            op: op.to_owned(),
            bound,
        });
    }
    if out.is_empty() {
        return Err("--fail-if is empty; e.g. --fail-if cpu>+10%,rss>+5%".into());
    }
    Ok(out)
}

/// The verdict on one limit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Verdict {
    /// The limit as written.
    pub limit: String,
    /// It held.
    pub ok: bool,
    /// What happened, in words.
    pub message: String,
}

/// Checks each limit; a limit that cannot be evaluated (a figure missing in
/// either report) fails: a gate must not pass on what it could not see.
pub fn check(d: &Diff, limits: &[Limit]) -> Vec<Verdict> {
    limits
        .iter()
        .map(|l| {
            let m = d
                .metrics
                .iter()
                .find(|m| m.name == l.metric)
                .expect("parsed metrics exist");
            let (Some(b), Some(n)) = (m.base, m.new) else {
                let which = if m.base.is_none() { "base" } else { "new" };
                return Verdict {
                    limit: l.text.clone(),
                    ok: false,
                    message: format!("{}: {} is unknown in the {which} report", l.text, m.label),
                };
            };
            let (x, bound, shown) = match l.bound {
                Bound::Relative(p) => {
                    let rel = if b == 0.0 {
                        if n == 0.0 {
                            0.0
                        } else {
                            f64::INFINITY * (n - b).signum()
                        }
                    } else {
                        (n - b) / b * 100.0
                    };
                    (rel, p, format!("{:+.1} %", rel))
                }
                Bound::Change(c) => (n - b, c, m.unit.signed(n - b)),
                Bound::Value(v) => (n, v, m.unit.show(n)),
            };
            let breached = match l.op.as_str() {
                ">" => x > bound,
                ">=" => x >= bound,
                "<" => x < bound,
                _ => x <= bound,
            };
            let message = format!(
                "{}: {} {} ({} → {})",
                l.text,
                m.label,
                match l.bound {
                    Bound::Value(_) => format!("is {shown}"),
                    _ => format!("changed {shown}"),
                },
                m.unit.show(b),
                m.unit.show(n)
            );
            Verdict {
                limit: l.text.clone(),
                ok: !breached,
                message,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_gates_like_any_figure_and_fails_when_a_report_lacks_it() {
        let with = |pss: Option<u64>| Report {
            totals: crate::report::Totals {
                pss_peak_bytes: pss,
                ..Default::default()
            },
            ..Report::default()
        };
        let d = diff(&with(Some(100 << 20)), &with(Some(120 << 20)));
        let limits = parse_limits("pss>+10%").unwrap();
        assert!(!check(&d, &limits)[0].ok, "20 % more");
        assert!(check(&d, &parse_limits("pss>+25%").unwrap())[0].ok);
        let d = diff(&with(None), &with(Some(1)));
        assert!(!check(&d, &limits)[0].ok, "an older report cannot say");
    }

    #[test]
    fn limits_that_could_never_trip_are_refused() {
        for l in [
            "cpu>+NaN%",
            "duration>+inf%",
            "cpu>-inf%",
            "rss>NaN",
            "cpu>+1e999%",
        ] {
            let e = parse_limits(l).unwrap_err();
            assert!(e.contains("finite") || e.contains("not a"), "{l}: {e}");
        }
        assert!(parse_limits("cpu>+10%").is_ok());
    }
    use crate::{
        model::series::{Stat, TreeStats},
        report::{Collector, Net, Totals, Traffic},
    };

    fn report(duration_s: f64, cpu: f64, rss: f64, tx: u64, procs: &[(&str, f64)]) -> Report {
        Report {
            schema: "pmet.report.v1".into(),
            duration_s,
            totals: Totals {
                processes: procs.len() as u64,
                cpu_user_s: cpu,
                net: Some(Net {
                    tcp: Traffic {
                        tx_bytes: tx,
                        ..Traffic::default()
                    },
                    ..Net::default()
                }),
                ..Totals::default()
            },
            stats: Some(TreeStats {
                rss_bytes: Stat::of(&[rss]),
                ..TreeStats::default()
            }),
            collector: Collector::default(),
            processes: procs
                .iter()
                .map(|(cmd, cpu)| ProcessReport {
                    argv: cmd.split(' ').map(String::from).collect(),
                    cpu_user_s: Some(*cpu),
                    cpu_system_s: Some(0.0),
                    ..ProcessReport::default()
                })
                .collect(),
            ..Report::default()
        }
    }

    #[test]
    fn each_limit_kind_breached_and_not() {
        let base = report(10.0, 8.0, 100e6, 1 << 20, &[("make", 0.5), ("cc a.c", 7.5)]);
        let new = report(
            13.0,
            9.0,
            104e6,
            3 << 20,
            &[("make", 0.5), ("cc a.c", 8.0), ("cc b.c", 0.5)],
        );
        let d = diff(&base, &new);
        let cases = [
            ("cpu>+10%", true), // +12.5 %
            ("cpu>+20%", false),
            ("rss>+5%", false), // +4 %
            ("rss>+3%", true),
            ("net_tx>+1MiB", true), // +2 MiB
            ("net_tx>+3MiB", false),
            ("duration>+20%", true), // +30 %
            ("duration>+40%", false),
            ("processes>2", true), // new value 3
            ("processes>=3", true),
            ("processes>3", false),
            ("duration<+5s", true), // changed +3 s, which is < 5 s
            ("cpu_user>+0.5s", true),
        ];
        for (expr, breached) in cases {
            let limits = parse_limits(expr).unwrap();
            let v = check(&d, &limits);
            assert_eq!(v[0].ok, !breached, "{expr}: {}", v[0].message);
        }
        let v = check(&d, &parse_limits("cpu>+10%").unwrap());
        assert_eq!(
            v[0].message,
            "cpu>+10%: CPU (user + system) changed +12.5 % (8.000 s → 9.000 s)"
        );
    }

    #[test]
    fn processes_match_by_command_line() {
        let base = report(
            1.0,
            1.0,
            1.0,
            0,
            &[("cc a.c", 1.0), ("cc a.c", 1.0), ("ld", 0.1)],
        );
        let new = report(1.0, 1.0, 1.0, 0, &[("cc a.c", 3.0), ("cc b.c", 0.2)]);
        let d = diff(&base, &new);
        assert_eq!(d.processes[0].command, "cc a.c");
        assert_eq!(d.processes[0].base.as_ref().unwrap().count, 2);
        assert_eq!(d.processes[0].base.as_ref().unwrap().cpu_s, 2.0);
        assert_eq!(d.processes[0].new.as_ref().unwrap().cpu_s, 3.0);
        let ld = d.processes.iter().find(|p| p.command == "ld").unwrap();
        assert!(ld.new.is_none());
        let b = d.processes.iter().find(|p| p.command == "cc b.c").unwrap();
        assert!(b.base.is_none());
    }

    #[test]
    fn unknown_figures_fail_the_gate() {
        let base = report(1.0, 1.0, 1.0, 0, &[]);
        let mut new = report(1.0, 1.0, 1.0, 0, &[]);
        new.totals.net = None;
        let v = check(&diff(&base, &new), &parse_limits("net_tx>+1MiB").unwrap());
        assert!(!v[0].ok);
        assert!(
            v[0].message.contains("unknown in the new report"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn bad_limits_are_explained() {
        for (expr, want) in [
            ("cpu", "expected METRIC>VALUE"),
            ("speed>+1%", "unknown metric `speed`"),
            ("cpu>10%", "a percentage is a change"),
            ("rss>+5s", "this figure counts bytes"),
            ("cpu>+lots", "is not a number"),
            ("", "--fail-if is empty"),
        ] {
            let e = parse_limits(expr).unwrap_err();
            assert!(e.contains(want), "{expr}: {e}");
        }
        assert_eq!(
            parse_limits("net_rx>=+1.5GiB").unwrap()[0].bound,
            Bound::Change(1.5 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(parse_limits("duration<=90s").unwrap()[0].op, "<=");
    }
}
