//! `pmet diff` as a table for people.

use std::fmt::Write as _;

use crate::{
    report::diff::{Diff, Group, MetricDiff, Verdict},
    units::{duration, fit},
};

fn change_text(m: &MetricDiff) -> String {
    match (m.change, m.change_pct) {
        (Some(c), Some(p)) => format!("{} ({:+.1} %)", m.unit.signed(c), p),
        (Some(c), None) => m.unit.signed(c),
        _ => "-".into(),
    }
}

/// The comparison as a table for people.
pub fn diff_table(
    d: &Diff,
    base_name: &str,
    new_name: &str,
    verdicts: &[Verdict],
    top: usize,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "pmet diff: {base_name} → {new_name}");
    let _ = writeln!(o, "  {:<36} {:>12} {:>12}  change", "", "base", "new");
    for m in &d.metrics {
        let show = |v: Option<f64>| v.map_or("unknown".into(), |v| m.unit.show(v));
        let _ = writeln!(
            o,
            "  {:<36} {:>12} {:>12}  {}",
            m.label,
            show(m.base),
            show(m.new),
            change_text(m)
        );
    }
    let _ = writeln!(
        o,
        "  processes, matched by command line (biggest CPU change first):"
    );
    for p in d.processes.iter().take(top) {
        let cpu = |g: &Option<Group>| {
            g.as_ref().map_or("—".into(), |g| {
                format!("{}×{}", g.count, duration(g.cpu_s))
            })
        };
        let _ = writeln!(
            o,
            "    {:>18} → {:<18}  {}",
            cpu(&p.base),
            cpu(&p.new),
            fit(&p.command, 60)
        );
    }
    if d.processes.len() > top {
        let _ = writeln!(
            o,
            "    … {} more (see --format json)",
            d.processes.len() - top
        );
    }
    if !verdicts.is_empty() {
        let _ = writeln!(o, "  limits:");
        for v in verdicts {
            let _ = writeln!(
                o,
                "    {} {}",
                if v.ok { "ok  " } else { "FAIL" },
                v.message
            );
        }
    }
    o
}
