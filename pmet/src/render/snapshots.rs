//! Snapshot tests (insta) of everything a person or a tool reads, built from
//! the recorded event stream in `model::fixture`.

use crate::{
    model::{fixture, snapshot::Snapshotter},
    render::{
        live::live_lines,
        stream::{json_line, simple_line},
        style::Style,
        summary::summary,
    },
    report::{Collector, Lost, RunInfo, build},
};

/// What a session would say about `tree`.
fn info(tree: &crate::model::tree::Tree, start: u64) -> RunInfo {
    let lost = Lost::measure(None, 0, 0, tree, None);
    RunInfo {
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "./serve & ./fetch; ./fetch".into(),
        ]),
        start_ns: start,
        end_ns: start + 2_510_000_000,
        started_at: "2026-11-26T12:00:00.000Z".into(),
        ticks_per_s: 100,
        collector: Collector {
            ebpf: true,
            interval_ms: 1000,
            samples: 3,
            taskstats: true,
            exit_totals: true,
            events: tree.events,
            lost_events: lost.total(),
            lost,
            ..Collector::default()
        },
        kernel_io: true,
        counting_from: "process_start".into(),
        connections: true,
        ..RunInfo::default()
    }
}

#[test]
fn summary_of_a_recorded_run() {
    let (tree, start) = fixture::web_job();
    let report = build(&tree, &info(&tree, start), None);
    insta::assert_snapshot!(summary(&report, 100, Style::default()));
}

#[test]
fn report_of_a_recorded_run() {
    let (tree, start) = fixture::web_job();
    let report = build(&tree, &info(&tree, start), None);
    insta::assert_json_snapshot!(report);
}

#[test]
fn sample_lines_of_a_recorded_run() {
    let (mut tree, start) = fixture::web_job_live();
    let mut snaps = Snapshotter::new(start, 100, true, true);
    fixture::live_at(&mut tree, 1);
    let _ = snaps.take(&tree, start + 1_000_000_000, 0);
    fixture::live_at(&mut tree, 2);
    let s = snaps.take(&tree, start + 2_000_000_000, 0);
    insta::assert_snapshot!("simple", simple_line(&s));
    insta::assert_snapshot!("jsonl", json_line(&s));
    let live = live_lines(
        &s,
        "sh -c './serve & ./fetch'",
        4,
        100,
        12,
        Style::default(),
    );
    insta::assert_snapshot!("live", live.join("\n"));
}

#[test]
fn html_lists_every_connection() {
    let (tree, start) = fixture::web_job();
    let report = build(&tree, &info(&tree, start), None);
    let html = crate::render::html::html(&report);
    let table = &html[html
        .find("<table id=\"connections\">")
        .expect("a connections table")..];
    let table = &table[..table.find("</table>").expect("closed")];
    // Five rows and the header; the refused one marked as failed.
    assert_eq!(table.matches("<tr").count(), 6, "{table}");
    assert_eq!(table.matches("class=\"failed\"").count(), 1, "{table}");
    assert!(
        table.contains("<td class=\"cmd\">[::1]:8080</td>"),
        "{table}"
    );
    assert!(table.contains("<td>refused</td>"), "{table}");
}

#[test]
fn connection_metrics_count_every_connection_a_report_has() {
    let (tree, start) = fixture::web_job();
    let report = build(&tree, &info(&tree, start), None);
    let m = |k| crate::report::diff::metric(&report, k);
    assert_eq!(m("connections"), Some(5.0));
    assert_eq!(m("failed_connections"), Some(1.0));
    assert_eq!(m("retransmits"), Some(2.0));
    let without = build(
        &tree,
        &RunInfo {
            connections: false,
            ..info(&tree, start)
        },
        None,
    );
    assert_eq!(crate::report::diff::metric(&without, "connections"), None);
}
