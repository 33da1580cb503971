//! The process tree as text: who started whom, with each process's numbers,
//! siblings that ran the same program folded into one line when there are
//! many.

use std::collections::BTreeMap;

use super::{
    style::Style,
    units::{bytes, duration, fit, signal_name},
};
use crate::report::Brief;

/// Siblings running the same program are folded from this many on.
pub const FOLD_AT: usize = 4;

fn figures(p: &Brief, st: Style) -> String {
    let mut f = Vec::new();
    if let Some(c) = p.cpu_s() {
        f.push(duration(c));
    }
    if let Some(r) = p.peak_rss_bytes() {
        f.push(bytes(r));
    }
    if let Some(n) = p.net() {
        let tx = n.tcp.tx_bytes + n.udp.tx_bytes;
        let rx = n.tcp.rx_bytes + n.udp.rx_bytes;
        if tx + rx > 0 {
            f.push(format!("↑{} ↓{}", bytes(tx), bytes(rx)));
        }
    }
    match (p.exit_code(), p.exit_signal(), p.ended()) {
        (_, Some(s), _) => f.push(st.red(&format!("killed by {}", signal_name(s)))),
        (Some(c), _, _) if c != 0 => f.push(st.red(&format!("exit {c}"))),
        (None, None, false) if !p.vanished() => f.push(st.cyan("running")),
        _ => {}
    }
    f.join(" · ")
}

struct Tree<'a> {
    procs: &'a [Brief],
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl<'a> Tree<'a> {
    fn new(procs: &'a [Brief]) -> Self {
        let mut children = vec![Vec::new(); procs.len()];
        let mut roots = Vec::new();
        for (i, p) in procs.iter().enumerate() {
            match p.parent() {
                Some(pi) if pi < procs.len() && pi != i => children[pi].push(i),
                _ => roots.push(i),
            }
        }
        Self {
            procs,
            children,
            roots,
        }
    }

    fn descendants(&self, i: usize) -> usize {
        // Iterative: a saved report may hold a chain deeper than the stack.
        let mut n = 0;
        let mut stack: Vec<usize> = self.children[i].clone();
        let mut seen = vec![false; self.procs.len()];
        while let Some(c) = stack.pop() {
            if std::mem::replace(&mut seen[c], true) {
                continue;
            }
            n += 1;
            stack.extend(&self.children[c]);
        }
        n
    }
}

/// Renders the tree in at most `max_lines` lines of `width` columns.
pub fn tree_lines(procs: &[Brief], width: usize, max_lines: usize, st: Style) -> Vec<String> {
    let t = Tree::new(procs);
    let mut out = Vec::new();
    let mut shown = 0usize;
    for &root in &t.roots {
        walk(&t, root, "", "", width, max_lines, st, &mut out, &mut shown);
    }
    let hidden = procs.len().saturating_sub(shown);
    if hidden > 0 {
        out.push(st.dim(&format!(
            "… {hidden} more process{} (all of them are in the JSON report)",
            if hidden == 1 { "" } else { "es" }
        )));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn walk(
    t: &Tree<'_>,
    i: usize,
    lead: &str,
    branch: &str,
    width: usize,
    max_lines: usize,
    st: Style,
    out: &mut Vec<String>,
    shown: &mut usize,
) {
    if out.len() >= max_lines {
        return;
    }
    let p = &t.procs[i];
    push_line(
        out,
        &format!("{lead}{branch}"),
        &format!("{} {}", p.pid, p.name()),
        &figures(p, st),
        width,
    );
    *shown += 1;
    let child_lead = format!(
        "{lead}{}",
        match branch {
            "├─ " => "│  ",
            "└─ " => "   ",
            _ => "",
        }
    );
    // Group the children by program, keeping the order of first appearance.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut first_of: BTreeMap<&str, usize> = BTreeMap::new();
    for &c in &t.children[i] {
        let k = t.procs[c].fold_key();
        let first = *first_of.entry(k).or_insert(c);
        groups.entry(first).or_default().push(c);
    }
    let n = groups.len();
    for (gi, members) in groups.values().enumerate() {
        if out.len() >= max_lines {
            return;
        }
        let branch = if gi + 1 == n { "└─ " } else { "├─ " };
        if members.len() < FOLD_AT {
            for (mi, &c) in members.iter().enumerate() {
                let b = if gi + 1 == n && mi + 1 == members.len() {
                    "└─ "
                } else {
                    "├─ "
                };
                walk(t, c, &child_lead, b, width, max_lines, st, out, shown);
            }
            continue;
        }
        // Folded: one line for the lot.
        let ps: Vec<&Brief> = members.iter().map(|&c| &t.procs[c]).collect();
        let total_cpu: f64 = ps.iter().filter_map(|p| p.cpu_s()).sum();
        let peak = ps.iter().filter_map(|p| p.peak_rss_bytes()).max();
        let nfailed = ps.iter().filter(|p| p.failed()).count();
        let below: usize = members.iter().map(|&c| t.descendants(c)).sum();
        let mut f = vec![format!("{} in all", duration(total_cpu))];
        if let Some(pk) = peak {
            f.push(format!("peak {}", bytes(pk)));
        }
        if nfailed > 0 {
            f.push(st.red(&format!("{nfailed} failed")));
        }
        if below > 0 {
            f.push(format!("+{below} below"));
        }
        push_line(
            out,
            &format!("{child_lead}{branch}"),
            &format!("{} × {} …", ps.len(), ps[0].fold_key()),
            &f.join(" · "),
            width,
        );
        *shown += ps.len() + below;
    }
}

fn push_line(out: &mut Vec<String>, prefix: &str, what: &str, figs: &str, width: usize) {
    let figs_w = super::style::visible_width(figs);
    let room = width
        .saturating_sub(prefix.chars().count() + figs_w + 3)
        .max(12);
    let what = fit(what, room);
    if figs.is_empty() {
        out.push(format!("{prefix}{what}"));
    } else {
        out.push(format!("{prefix}{what} · {figs}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Collector, ProcessReport, Report, Totals};

    fn proc(pid: u32, parent: Option<usize>, argv: &[&str], code: i32) -> ProcessReport {
        ProcessReport {
            pid,
            parent,
            comm: argv[0].into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            end_offset_s: Some(1.0),
            exit_code: Some(code),
            cpu_user_s: Some(0.001),
            cpu_system_s: Some(0.0),
            peak_rss_bytes: Some(1 << 20),
            ..ProcessReport::default()
        }
    }

    fn report(processes: Vec<ProcessReport>) -> Report {
        Report {
            schema: "pmet.report.v1".into(),
            pmet_version: "0".into(),
            command: None,
            root_pid: 1,
            started_at: String::new(),
            duration_s: 1.0,
            exit_code: Some(0),
            exit_signal: None,
            collector: Collector::default(),
            totals: Totals::default(),
            processes,
            mode: "launch".into(),
            stopped_early: None,
            host: None,
            counting_from: String::new(),
            ..Report::default()
        }
    }

    #[test]
    fn many_alike_siblings_fold_into_one_line() {
        let mut ps = vec![proc(1, None, &["make", "-j8"], 0)];
        for i in 0..500 {
            ps.push(proc(
                100 + i,
                Some(0),
                &["cc", "-c", &format!("f{i}.c")],
                i32::from(i % 100 == 0),
            ));
        }
        ps.push(proc(2, Some(0), &["ld", "-o", "app"], 0));
        let lines = tree_lines(
            &crate::report::briefs(&report(ps)),
            100,
            30,
            Style::default(),
        );
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("1 make -j8"));
        assert_eq!(
            lines[1],
            "├─ 500 × cc -c … · 0.500 s in all · peak 1.0 MiB · 5 failed"
        );
        assert!(lines[2].starts_with("└─ 2 ld -o app"));
    }

    #[test]
    fn a_long_tree_is_cut_and_says_so() {
        let mut ps = vec![proc(1, None, &["sh"], 0)];
        for i in 0..50u32 {
            // Each a different program: nothing folds.
            ps.push(proc(10 + i, Some(i as usize), &[&format!("step{i}")], 0));
        }
        let lines = tree_lines(
            &crate::report::briefs(&report(ps)),
            200,
            10,
            Style::default(),
        );
        assert_eq!(lines.len(), 11);
        assert_eq!(
            lines[10],
            "… 41 more processes (all of them are in the JSON report)"
        );
        assert!(
            lines[3].trim_start().starts_with("└─ 12 step2"),
            "{lines:#?}"
        );
    }
}
