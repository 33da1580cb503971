//! The exporters: an OpenMetrics endpoint and a node_exporter textfile,
//! whose numbers must be the report's.

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{can_trace, pmet, pmet_bin, workload};

/// An exposition's samples: (name, labels) to value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// The samples of an exposition.
fn samples(text: &str) -> Samples {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let rest = rest.strip_suffix('}').expect("closed labels");
                let labels = rest
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("k=v");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), vec![]),
        };
        out.insert((name, labels), value.parse().expect("a number"));
    }
    out
}

fn value(s: &Samples, name: &str, want: &[(&str, &str)]) -> f64 {
    let hits: Vec<f64> = s
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(hits.len(), 1, "{name} {want:?}: {hits:?}");
    hits[0]
}

#[test]
fn the_textfile_holds_the_reports_numbers() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("pmet.prom");
    let run = pmet(&[
        "trace",
        "--textfile",
        prom.to_str().unwrap(),
        "--",
        workload(),
        "tcp",
        "4",
        "30000",
        "7000",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let s = samples(&text);
    assert_eq!(
        value(&s, "pmet_processes_seen_total", &[]),
        r["totals"]["processes"].as_f64().unwrap()
    );
    assert_eq!(value(&s, "pmet_lost_events_total", &[]), 0.0);
    assert_eq!(value(&s, "pmet_processes_alive", &[]), 0.0);
    for p in r["processes"].as_array().unwrap() {
        let pid = p["pid"].to_string();
        let who = |extra: &[(&'static str, &'static str)]| {
            let mut l = vec![("process_pid", pid.as_str())];
            l.extend_from_slice(extra);
            l
        };
        for (dir, json) in [("transmit", "tx_bytes"), ("receive", "rx_bytes")] {
            assert_eq!(
                value(
                    &s,
                    "process_network_io_bytes_total",
                    &who(&[("network_io_direction", dir), ("network_transport", "tcp")])
                ),
                p["net"]["tcp"][json].as_f64().unwrap(),
                "pid {pid} {dir}"
            );
        }
        for (mode, json) in [("user", "cpu_user_s"), ("system", "cpu_system_s")] {
            let m = value(
                &s,
                "process_cpu_time_seconds_total",
                &who(&[("cpu_mode", mode)]),
            );
            // The report rounds to microseconds.
            assert!(
                (m - p[json].as_f64().unwrap()).abs() < 1e-6,
                "pid {pid} {mode}: {m} vs {}",
                p[json]
            );
        }
        let ppid = p["ppid"].to_string();
        assert_eq!(
            value(
                &s,
                "process_memory_usage_bytes",
                &[
                    ("process_pid", pid.as_str()),
                    ("process_parent_pid", ppid.as_str())
                ]
            ),
            0.0,
            "exited: holds nothing"
        );
    }
}

/// GETs `path` from `addr`: (status, body).
fn get(addr: &str, path: &str) -> Option<(u32, String)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // HTTP/1.0: a whole body, never chunked.
    write!(c, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[test]
fn prometheus_scrapes_the_running_tree() {
    if !can_trace() {
        return;
    }
    // A free port: bound, then let go.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(pmet_bin())
        .args(["trace", "-q", "--prometheus", &addr, "-o"])
        .arg(dir.path().join("r.json"))
        .args(["--", workload(), "cpu", "2500"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let body = loop {
        // The first sample is taken at once; the busy child shows up there.
        if let Some((200, body)) = get(&addr, "/metrics")
            && body.contains("pmet_processes_alive 1")
            && body.contains("cpu_mode=\"user\"")
        {
            break body;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no metrics served");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(get(&addr, "/elsewhere").map(|r| r.0), Some(404));
    let pid = child.id();
    let st = child.wait().unwrap();
    assert!(st.success());
    let s = samples(&body);
    let root = s
        .keys()
        .filter(|(n, _)| n == "process_memory_usage_bytes")
        .find_map(|(_, l)| {
            l.iter()
                .find(|(k, _)| k == "process_parent_pid")
                .map(|(_, v)| v.clone())
        });
    assert_eq!(root, Some(pid.to_string()), "the command is pmet's child");
    assert!(
        value(
            &s,
            "process_memory_usage_bytes",
            &[("process_parent_pid", &pid.to_string())]
        ) > 0.0
    );
}

#[test]
fn an_address_that_cannot_be_listened_on_is_refused_before_launch() {
    if !can_trace() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let run = pmet(&[
        "trace",
        "--prometheus",
        &addr,
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(!marker.exists(), "nothing was launched");
}

/// A Pushgateway of its own, on a free port, stopped when dropped.
struct Gateway {
    child: std::process::Child,
    addr: String,
}

impl Gateway {
    fn start() -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-pushgateway (`cargo xtask setup` installs it)");
        // Made first, so a gateway that never answers is still stopped.
        let gw = Gateway { child, addr };
        let t0 = Instant::now();
        while get(&gw.addr, "/metrics").is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the gateway did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        gw
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_ci_job_pushes_its_figures_to_a_pushgateway() {
    if !can_trace() {
        return;
    }
    let gw = Gateway::start();
    let run = pmet(&[
        "trace",
        "--pushgateway",
        &format!("http://{}", gw.addr),
        "--",
        workload(),
        "tcp",
        "4",
        "30000",
        "7000",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let sender = run.one("tcp-send");
    let pid = sender["pid"].to_string();
    let (status, body) = get(&gw.addr, "/metrics").expect("the gateway answers");
    assert_eq!(status, 200);
    let s = samples(&body);
    assert_eq!(
        value(
            &s,
            "process_network_io_bytes_total",
            &[
                ("job", "pmet"),
                ("process_pid", pid.as_str()),
                ("network_io_direction", "transmit"),
                ("network_transport", "tcp")
            ]
        ),
        30000.0
    );
    assert_eq!(
        value(&s, "pmet_processes_seen_total", &[("job", "pmet")]),
        run.report()["totals"]["processes"].as_f64().unwrap()
    );
    // The gateway took them as counters, not untyped samples.
    assert!(
        body.contains("# TYPE process_network_io_bytes_total counter"),
        "{body}"
    );
}

#[test]
fn a_push_that_fails_is_said_and_the_report_is_still_written() {
    if !can_trace() {
        return;
    }
    // A port nobody listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let run = pmet(&[
        "trace",
        "--pushgateway",
        &format!("http://{addr}"),
        "--",
        "true",
    ]);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(run.stderr.contains("pushing to http://"), "{}", run.stderr);
    assert_eq!(run.report()["exit_code"], 0);
    let bad = pmet(&["trace", "--pushgateway", "https://pg:9091", "--", "true"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("give an http:// address"),
        "{}",
        bad.stderr
    );
}
