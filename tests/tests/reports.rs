//! Saved reports: `pmet report`, `pmet diff` (the CI gate), `pmet history`,
//! the HTML page in a real headless browser, and trace-event export.

mod common;

use std::{path::Path, process::Command as StdCommand, time::Duration};

use assert_cmd::Command;
use common::{can_trace, pmet, pmet_bin, workload};
use serde_json::{Value, json};

fn cmd() -> Command {
    Command::new(pmet_bin())
}

fn write(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    p.to_string_lossy().into_owned()
}

/// A minimal report in the documented shape.
fn crafted(duration: f64, cpu: f64, rss_max: f64, tx: u64, failed: u64) -> Value {
    json!({
        "schema": "pmet.report.v1",
        "pmet_version": "0.1.0",
        "command": ["make", "-j8"],
        "root_pid": 10,
        "started_at": "2026-11-26T12:00:00.000Z",
        "duration_s": duration,
        "exit_code": 0,
        "exit_signal": null,
        "collector": {"ebpf": true, "interval_ms": 1000, "samples": 3, "events": 10, "lost_events": 0},
        "totals": {
            "processes": 2, "cpu_user_s": cpu, "cpu_system_s": 0.0,
            "disk_read_bytes": 0, "disk_write_bytes": 0, "failed_processes": failed,
            "net": {"tcp": {"tx_bytes": tx, "rx_bytes": 0}, "udp": {"tx_bytes": 0, "rx_bytes": 0}}
        },
        "stats": {"rss_bytes": {"min": 0.0, "max": rss_max, "mean": 1.0, "p95": 1.0}},
        "processes": [
            {"pid": 10, "ppid": 1, "comm": "make", "argv": ["make", "-j8"], "start_offset_s": 0.0,
             "end_offset_s": duration, "exit_code": 0, "exit_signal": null, "cpu_user_s": 0.1,
             "cpu_system_s": 0.0, "peak_rss_bytes": 1000, "max_threads": 1, "disk_read_bytes": 0,
             "disk_write_bytes": 0, "net": {"tcp": {"tx_bytes": 0, "rx_bytes": 0}, "udp": {"tx_bytes": 0, "rx_bytes": 0}}},
            {"pid": 11, "ppid": 10, "parent": 0, "comm": "cc", "argv": ["cc", "-c", "a.c"], "start_offset_s": 0.1,
             "end_offset_s": 1.0, "exit_code": 0, "exit_signal": null, "cpu_user_s": cpu - 0.1,
             "cpu_system_s": 0.0, "peak_rss_bytes": 2000, "max_threads": 1, "disk_read_bytes": 0,
             "disk_write_bytes": 0, "net": {"tcp": {"tx_bytes": tx, "rx_bytes": 0}, "udp": {"tx_bytes": 0, "rx_bytes": 0}}}
        ]
    })
}

#[test]
fn diff_gates_on_each_limit() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "base.json",
        &crafted(10.0, 8.0, 100e6, 1 << 20, 0),
    );
    let new = write(
        dir.path(),
        "new.json",
        &crafted(13.0, 9.0, 104e6, 3 << 20, 1),
    );
    // Within every limit.
    cmd()
        .args([
            "diff",
            &base,
            &new,
            "--fail-if",
            "cpu>+20%,rss>+5%,net_tx>+3MiB,duration>+40%,failed>1",
        ])
        .assert()
        .success();
    // Each breached alone, then all at once; each named in the message.
    for limit in [
        "cpu>+10%",
        "rss>+3%",
        "net_tx>+1MiB",
        "duration>+20%",
        "failed>0",
    ] {
        let out = cmd()
            .args(["diff", &base, &new, "--fail-if", limit])
            .assert()
            .code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            err.contains("1 limit breached") && err.contains(limit),
            "{limit}: {err}"
        );
    }
    let out = cmd()
        .args([
            "diff",
            &base,
            &new,
            "--fail-if",
            "cpu>+10%,rss>+3%,net_tx>+1MiB,duration>+20%",
        ])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("4 limits breached"), "{err}");
    // A tool reads the same verdicts.
    let out = cmd()
        .args([
            "diff",
            &base,
            &new,
            "--format",
            "json",
            "--fail-if",
            "cpu>+10%",
        ])
        .assert()
        .code(1);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["breached"], true);
    let cpu = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "cpu")
        .unwrap();
    assert_eq!(cpu["base"], 8.0);
    assert_eq!(cpu["new"], 9.0);
    assert_eq!(cpu["change_pct"], 12.5);
    assert_eq!(v["processes"][0]["command"], "cc -c a.c");
    // A bad limit is a usage error.
    cmd()
        .args(["diff", &base, &new, "--fail-if", "speed>1"])
        .assert()
        .code(2);
}

#[test]
fn damaged_reports_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", &crafted(1.0, 1.0, 1.0, 0, 0));
    let full = std::fs::read_to_string(&good).unwrap();
    let cases: Vec<(&str, String, i32, &str)> = vec![
        (
            "truncated.json",
            full[..full.len() / 2].to_owned(),
            65,
            "not valid JSON",
        ),
        (
            "binary.json",
            "\u{7f}ELF\u{1}".to_owned(),
            65,
            "not valid JSON",
        ),
        ("empty.json", String::new(), 65, "is empty"),
        (
            "other.json",
            "{\"hello\": 1}".to_owned(),
            65,
            "no `schema` field",
        ),
        ("list.json", "[1,2,3]".to_owned(), 65, "not an object"),
    ];
    for (name, content, code, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        for sub in [
            &["diff", &good, p.to_str().unwrap()][..],
            &["report", p.to_str().unwrap()],
        ] {
            let out = cmd().args(sub).assert().code(code);
            let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), 1, "{name}: {err}");
            assert!(
                lines[0].contains(name) && lines[0].contains(want),
                "{name}: {err}"
            );
        }
    }
    let out = cmd()
        .args(["diff", &good, "/nonexistent/r.json"])
        .assert()
        .code(66);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("/nonexistent/r.json"));
}

#[test]
fn older_and_newer_reports_are_compared_with_notes() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = crafted(1.0, 1.0, 1.0, 0, 0);
    old["totals"]
        .as_object_mut()
        .unwrap()
        .remove("disk_read_bytes");
    old.as_object_mut().unwrap().remove("stats");
    let mut newer = crafted(1.0, 1.5, 1.0, 0, 0);
    newer["schema"] = json!("pmet.report.v2");
    newer["brand_new_section"] = json!({"x": [1, 2, {"y": null}]});
    let (a, b) = (
        write(dir.path(), "old.json", &old),
        write(dir.path(), "newer.json", &newer),
    );
    let out = cmd()
        .args(["diff", &a, &b, "--fail-if", "cpu>+10%"])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("lacks totals.disk_read_bytes"), "{err}");
    assert!(err.contains("newer pmet"), "{err}");
    // rss needs the stats the old report lacks: that gate cannot pass.
    let out = cmd()
        .args(["diff", &a, &b, "--fail-if", "rss>+10%"])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("unknown in the base report"), "{err}");
}

#[test]
fn diff_of_real_runs_sees_the_extra_traffic() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut paths = vec![];
    for (name, bytes) in [("base.json", "1000000"), ("new.json", "4000000")] {
        let run = pmet(&["trace", "--", workload(), "tcp", "4", bytes, "0"]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        paths.push(write(dir.path(), name, run.report()));
    }
    let out = cmd()
        .args([
            "diff",
            &paths[0],
            &paths[1],
            "--format",
            "json",
            "--fail-if",
            "net_tx>+2MiB,processes>+0",
        ])
        .assert()
        .code(1);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let tx = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "net_tx")
        .unwrap();
    assert_eq!(
        tx["change"], 3_000_000.0,
        "exact bytes, so an exact difference"
    );
    let verdicts = v["limits"].as_array().unwrap();
    assert_eq!(verdicts[0]["ok"], false, "3 MB more than base");
    assert_eq!(verdicts[1]["ok"], true, "same processes");
}

#[test]
fn series_and_statistics_are_in_the_report_and_bounded() {
    if !can_trace() {
        return;
    }
    let run = pmet(&[
        "trace",
        "--min-interval",
        "10ms",
        "--max-interval",
        "10ms",
        "-i",
        "10ms",
        "--",
        workload(),
        "threads",
        "1",
        "9000",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    let s = &r["series"];
    let points = s["tree"].as_array().unwrap();
    assert!(
        r["collector"]["samples"].as_u64().unwrap() > 720,
        "more samples than points kept"
    );
    assert!(points.len() <= 720, "{}", points.len());
    assert_eq!(s["downsampled"], true);
    assert!(points[0]["t"].as_f64().unwrap() < 0.1, "the start is kept");
    assert!(
        points.last().unwrap()["t"].as_f64().unwrap() > 8.5,
        "and the end"
    );
    let iv = &s["interval_s"];
    assert!(iv["mean"].as_f64().unwrap() < 0.03, "{iv}");
    let cpu = &r["stats"]["cpu_pct"];
    // One thread burning a core the whole time (each 10 ms sample is coarse:
    // /proc counts CPU in 10 ms ticks; the mean is what holds). On a busy
    // machine it gets less than a core: the mean must match what it got.
    let mean = cpu["mean"].as_f64().unwrap();
    let t = &r["totals"];
    let got = (t["cpu_user_s"].as_f64().unwrap() + t["cpu_system_s"].as_f64().unwrap())
        / r["duration_s"].as_f64().unwrap()
        * 100.0;
    assert!(got > 30.0, "the burner ran: {got} %");
    assert!(
        (mean - got).abs() < 15.0,
        "{cpu} against {got} % over the run"
    );
    assert!(cpu["p95"].as_f64().unwrap() >= mean, "{cpu}");
    assert!(cpu["min"].as_f64().unwrap() <= cpu["mean"].as_f64().unwrap());
    let p = &r["processes"][0];
    assert!(p["series"].as_array().unwrap().len() <= 120);
    assert!(p["stats"]["rss_bytes"]["max"].as_f64().unwrap() > 0.0);
}

#[test]
fn history_under_concurrent_writers_and_diff_by_run_id() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let children: Vec<_> = (0..6)
        .map(|i| {
            StdCommand::new(pmet_bin())
                .env("PMET_HISTORY", &db)
                .args([
                    "trace",
                    "-q",
                    "--record",
                    "--",
                    workload(),
                    "exit",
                    &(i % 2).to_string(),
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        c.wait().unwrap();
    }
    let out = cmd()
        .env("PMET_HISTORY", &db)
        .args(["history", "--format", "json"])
        .assert()
        .success();
    let runs: Vec<Value> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(runs.len(), 6, "every concurrent run landed");
    let ids: Vec<i64> = runs.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let out = cmd()
        .env("PMET_HISTORY", &db)
        .args(["history", "--format", "json", workload(), "exit", "1"])
        .assert()
        .success();
    let ones: Vec<Value> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(ones.len(), 3, "runs of the same command");
    let out = cmd()
        .env("PMET_HISTORY", &db)
        .args([
            "diff",
            &ids[1].to_string(),
            &ids[0].to_string(),
            "--format",
            "json",
        ])
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["base"]["source"], ids[1].to_string());
    cmd()
        .env("PMET_HISTORY", &db)
        .args(["report", "99999"])
        .assert()
        .code(66);
}

fn chromium() -> Option<&'static str> {
    let ok = StdCommand::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing in CI: `cargo xtask test` installs it"
        );
        eprintln!("skipping: chromium is not installed");
        return None;
    }
    Some("chromium")
}

fn headless(profile: &Path) -> StdCommand {
    let mut c = StdCommand::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn html_report_renders_in_a_headless_browser() {
    if !can_trace() || chromium().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = pmet(&[
        "trace",
        "-i",
        "100ms",
        "--",
        workload(),
        "tcp",
        "4",
        "200000000",
        "0",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report = write(dir.path(), "r.json", run.report());
    let page = dir.path().join("r.html");
    let svg = dir.path().join("r.svg");
    cmd()
        .args(["report", &report, "--html"])
        .arg(&page)
        .arg("--svg")
        .arg(&svg)
        .assert()
        .success();
    let url = format!("file://{}", page.display());
    let dom = headless(&dir.path().join("profile"))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in ["cpu", "memory", "disk", "network", "timeline"] {
        assert!(
            dom.contains(&format!("id=\"{id}\"")),
            "plot {id} missing from the rendered page"
        );
    }
    assert!(
        dom.matches("<polyline").count() >= 5,
        "the plots have lines"
    );
    assert_eq!(
        dom.matches("class=\"proc\"").count(),
        4,
        "a bar per process"
    );
    assert!(dom.contains("id=\"processes\""));
    let shot = dir.path().join("shot.png");
    let status = headless(&dir.path().join("profile2"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1100,1600")
        .arg(&url)
        .status()
        .unwrap();
    assert!(status.success());
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "a drawn page, not a blank one ({} bytes)",
        png.len()
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("id=\"timeline\""));
}

/// The trace-event format's rules, checked independently of pmet's code.
fn check_trace_events(v: &Value) {
    let evs = v["traceEvents"].as_array().expect("traceEvents array");
    assert!(!evs.is_empty());
    for e in evs {
        let ph = e["ph"].as_str().expect("ph");
        assert!(e["name"].is_string(), "{e}");
        assert!(e["pid"].is_u64(), "{e}");
        if ph != "M" {
            assert!(e["ts"].as_f64().is_some_and(|t| t >= 0.0), "{e}");
        }
        match ph {
            "X" => assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}"),
            "i" => assert!(matches!(e["s"].as_str(), Some("g" | "p" | "t")), "{e}"),
            "C" => assert!(
                e["args"]
                    .as_object()
                    .is_some_and(|a| !a.is_empty() && a.values().all(Value::is_number)),
                "{e}"
            ),
            "M" => assert!(
                e["args"]["name"].is_string() || e["args"]["sort_index"].is_number(),
                "{e}"
            ),
            other => panic!("unexpected ph {other}"),
        }
    }
}

#[test]
fn trace_events_load_by_the_formats_rules() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let te = dir.path().join("trace.json");
    let run = pmet(&[
        "trace",
        "--trace-events",
        te.to_str().unwrap(),
        "-i",
        "50ms",
        "--",
        workload(),
        "spawn-tree",
        "5",
        "2",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let v: Value = serde_json::from_slice(&std::fs::read(&te).unwrap()).unwrap();
    check_trace_events(&v);
    let evs = v["traceEvents"].as_array().unwrap();
    let spans = evs.iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(spans, 16, "one span per process");
    let exits = evs
        .iter()
        .filter(|e| e["ph"] == "i" && e["name"] == "exit")
        .count();
    assert_eq!(exits, 16);
    assert!(evs.iter().any(|e| e["ph"] == "C" && e["name"] == "CPU %"));
    // The same export from a saved report.
    let saved = write(dir.path(), "r.json", run.report());
    let te2 = dir.path().join("t2.json");
    cmd()
        .args(["report", &saved, "--trace-events"])
        .arg(&te2)
        .assert()
        .success();
    check_trace_events(&serde_json::from_slice(&std::fs::read(&te2).unwrap()).unwrap());
    let _ = Duration::ZERO;
}

#[test]
fn without_a_gpu_driver_gpu_figures_are_null_and_verbose_output_says_why() {
    if !can_trace() {
        return;
    }
    // Where a GPU driver is (the device machine), the other side is checked
    // by `cargo xtask gpu-check`.
    let gpu_here = std::path::Path::new("/dev/nvidiactl").exists()
        || std::fs::read_dir("/dev/dri").is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        });
    if gpu_here {
        return;
    }
    let run = pmet(&["-v", "trace", "--", workload(), "cpu", "50"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    assert!(r["collector"]["gpu"].is_null(), "{}", r["collector"]);
    assert!(r["totals"]["gpu"].is_null());
    assert!(r["processes"][0]["gpu"].is_null());
    assert!(
        run.stderr
            .lines()
            .filter(|l| l.contains("no GPU figures: no NVIDIA GPU: NVML"))
            .count()
            == 1,
        "one line saying why: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("gpu "), "no GPU line in the summary");
    // And the comparison says it cannot compare GPU figures: a gate on them
    // fails rather than passing on what it could not see.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    std::fs::write(&path, r.to_string()).unwrap();
    let out = StdCommand::new(pmet_bin())
        .args(["diff"])
        .args([&path, &path])
        .args(["--fail-if", "gpu_memory>+10%"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("gpu_memory"));
}
