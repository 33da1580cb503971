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

#[test]
fn gpu_use_reaches_the_report_summary_html_plots_and_diff() {
    use crate::collect::gpu::{Device, Use};
    let (mut tree, start) = fixture::web_job();
    tree.gpu_known = true;
    // The two curls: one trains on GPU-a, the other holds memory idle.
    let look = |pid, memory, sm: Option<f64>| Use {
        pid,
        device: "GPU-a".into(),
        memory_bytes: memory,
        sm_pct: sm,
        mem_pct: sm.map(|s| s / 2.0),
    };
    let curls: Vec<usize> = (0..tree.procs.len())
        .filter(|&i| tree.procs[i].comm == "curl")
        .collect();
    let (busy, idle) = (curls[0], curls[1]);
    tree.procs[busy]
        .gpu
        .look(&[&look(1, 2 << 30, Some(90.0))], 1.0);
    tree.procs[busy]
        .gpu
        .look(&[&look(1, 3 << 30, Some(70.0))], 1.0);
    tree.procs[idle].gpu.look(&[&look(2, 1 << 20, None)], 1.0);
    let mut info = info(&tree, start);
    info.collector.gpu = Some(crate::report::GpuCollector {
        source: "nvml".into(),
        devices: vec![Device {
            uuid: "GPU-a".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            driver: "nvidia 550.54.15".into(),
            memory_total_bytes: Some(80 << 30),
            accounting: Some(false),
        }],
    });
    let report = build(&tree, &info, None);
    let g = report
        .processes
        .iter()
        .find_map(|p| p.gpu.as_ref().filter(|g| g.memory_peak_bytes == 3 << 30));
    let g = g.expect("the busy curl");
    assert_eq!(g.devices, ["GPU-a"]);
    assert_eq!((g.sm_pct_mean, g.sm_pct_max), (80.0, 90.0));
    assert_eq!(g.mem_pct_mean, Some(40.0));
    assert_eq!(g.busy_s, 1.6);
    // Processes that never touched a GPU are at 0, not unknown.
    let sh = report.processes.iter().find(|p| p.comm == "sh").unwrap();
    let zero = sh.gpu.as_ref().unwrap();
    assert_eq!(
        (zero.memory_peak_bytes, zero.busy_s, zero.sm_pct_mean),
        (0, 0.0, 0.0)
    );
    let t = report.totals.gpu.as_ref().unwrap();
    assert_eq!(
        (t.processes, t.memory_peak_bytes, t.busy_s),
        (2, (3 << 30) + (1 << 20), 1.6)
    );
    let text = summary(&report, 100, Style::default());
    assert!(
        text.contains("gpu   2 processes on 1 GPU · 3.0 GiB memory at the peaks · 1.600 s busy"),
        "{text}"
    );
    let html = crate::render::html::html(&report);
    assert!(
        html.contains("<table id=\"gpu\">") && html.contains("GPU-a"),
        "{html}"
    );
    use crate::report::diff::metric;
    assert_eq!(
        metric(&report, "gpu_memory"),
        Some(((3u64 << 30) + (1 << 20)) as f64)
    );
    assert_eq!(metric(&report, "gpu_busy"), Some(1.6));
    // A recorded series with GPU points gets the two GPU plots.
    let mut rec = crate::model::series::Recorder::new(720, 120);
    let mut snaps = Snapshotter::new(start, 100, true, true);
    for secs in [0, 1, 2] {
        let mut s = snaps.take(&tree, start + secs * 1_000_000_000, 0);
        s.gpu = Some(crate::model::series::GpuPoint {
            memory_bytes: (secs + 1) << 30,
            sm_pct: 50.0,
        });
        rec.record(&s, &std::collections::HashMap::new());
    }
    let with_series = build(&tree, &info, Some(&rec));
    let svg = crate::render::svg::plots_svg(&with_series);
    assert!(svg.contains("id=\"gpu-memory\"") && svg.contains("id=\"gpu-busy\""));
    assert!(!crate::render::svg::plots_svg(&report).contains("gpu-memory"));
}
