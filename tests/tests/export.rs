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

/// A local port nobody listens on (bound, then let go).
fn free_port() -> u16 {
    // Never the same port twice in this run: these tests run at once, and a
    // port one of them let go can be handed to another before the first
    // one's pmet binds it (then a test that expects its old address to go
    // quiet finds the other's server there).
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

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
    promtool_passes(&text);
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

/// `promtool check metrics` accepts an exposition (node_exporter's textfile
/// collector and the Pushgateway parse what it parses).
fn promtool_passes(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (`cargo xtask setup` installs Debian's prometheus)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GETs `path` from `addr`: (status, body).
fn get(addr: &str, path: &str) -> Option<(u32, String)> {
    get_accepting(addr, path, "*/*")
}

/// GETs `path` from `addr` with an `Accept` header.
fn get_accepting(addr: &str, path: &str, accept: &str) -> Option<(u32, String)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // HTTP/1.0: a whole body, never chunked.
    write!(
        c,
        "GET {path} HTTP/1.0\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
    )
    .ok()?;
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
    let addr = format!("127.0.0.1:{}", free_port());
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
    // The classic format to curl and promtool; OpenMetrics to whoever asks.
    promtool_passes(&body);
    let om = get_accepting(
        &addr,
        "/metrics",
        "application/openmetrics-text; version=1.0.0",
    )
    .expect("served");
    assert!(om.1.ends_with("# EOF\n"), "{}", om.1);
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
        let addr = format!("127.0.0.1:{}", free_port());
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
    let addr = format!("127.0.0.1:{}", free_port());
    // Said once and counted; the command's status stands.
    let run = pmet(&[
        "trace",
        "--pushgateway",
        &format!("http://{addr}"),
        "--otlp",
        &format!("http://{addr}/v1/metrics"),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(run.code, Some(7), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("pushing to http://").count(),
        1,
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("warning: --otlp").count(),
        1,
        "{}",
        run.stderr
    );
    assert_eq!(run.report()["exit_code"], 7);
    assert_eq!(run.report()["collector"]["export_errors"], 2);
    let bad = pmet(&["trace", "--pushgateway", "https://pg:9091", "--", "true"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("give an http:// address"),
        "{}",
        bad.stderr
    );
}

/// An OTLP/HTTP receiver: a Python server that keeps each request's body,
/// decoded with the OpenTelemetry protobuf definitions into JSON lines.
const OTLP_RECEIVER: &str = r#"
import http.server, json, sys
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
out = open(sys.argv[2], "a")
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = ms.ExportMetricsServiceRequest()
        req.ParseFromString(body)
        points = []
        for rm in req.resource_metrics:
            res = {a.key: a.value.string_value for a in rm.resource.attributes}
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    data = getattr(m, kind)
                    for dp in data.data_points:
                        v = dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
                        attrs = {a.key: (a.value.string_value or a.value.int_value) for a in dp.attributes}
                        points.append({"name": m.name, "kind": kind, "unit": m.unit,
                                       "monotonic": getattr(data, "is_monotonic", None),
                                       "value": v, "attrs": attrs, "resource": res,
                                       "path": self.path})
        out.write(json.dumps(points) + "\n"); out.flush()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn otlp_metrics_are_the_reports_numbers() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rx.py");
    std::fs::write(&script, OTLP_RECEIVER).unwrap();
    let got = dir.path().join("got.jsonl");
    let port = free_port();
    let mut rx = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(&got)
        .spawn()
        .expect("python3");
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = pmet(&[
        "trace",
        "--otlp",
        &format!("http://127.0.0.1:{port}/v1/metrics"),
        "--",
        workload(),
        "tcp",
        "4",
        "30000",
        "7000",
    ]);
    let _ = rx.kill();
    let _ = rx.wait();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let text = std::fs::read_to_string(&got).expect("the receiver got metrics");
    // The last export is the final word.
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let points = last.as_array().unwrap();
    let point = |name: &str, attrs: &[(&str, serde_json::Value)]| -> &serde_json::Value {
        let hits: Vec<&serde_json::Value> = points
            .iter()
            .filter(|p| p["name"] == name && attrs.iter().all(|(k, v)| &p["attrs"][*k] == v))
            .collect();
        assert_eq!(hits.len(), 1, "{name} {attrs:?}: {hits:#?}");
        hits[0]
    };
    let sender = run.one("tcp-send");
    let pid = sender["pid"].clone();
    let sent = point(
        "process.network.io",
        &[
            ("process.pid", pid.clone()),
            ("network.io.direction", "transmit".into()),
            ("network.transport", "tcp".into()),
        ],
    );
    assert_eq!(sent["value"], 30000);
    assert_eq!(sent["unit"], "By");
    assert_eq!(sent["monotonic"], true);
    assert_eq!(sent["path"], "/v1/metrics");
    assert_eq!(sent["resource"]["service.name"], "pmet");
    assert!(
        sent["resource"]["host.name"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    let cpu = point(
        "process.cpu.time",
        &[("process.pid", pid), ("cpu.mode", "user".into())],
    );
    assert!(
        (cpu["value"].as_f64().unwrap() - sender["cpu_user_s"].as_f64().unwrap()).abs() < 1e-6,
        "{cpu} vs {}",
        sender["cpu_user_s"]
    );
    assert_eq!(
        point("pmet.processes.seen", &[])["value"],
        run.report()["totals"]["processes"]
    );
    assert_eq!(point("pmet.lost_events", &[])["value"], 0);
}

/// Percent-encodes a query-string value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_a_traced_run() {
    if !can_trace() {
        return;
    }
    let (target, web) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: pmet\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (`cargo xtask setup` installs Debian's)");
    let web_addr = format!("127.0.0.1:{web}");
    let t0 = Instant::now();
    while get(&web_addr, "/-/ready").is_none_or(|r| r.0 != 200) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "prometheus did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its targets are set up a few seconds after it is ready.
    while get(&web_addr, "/api/v1/targets").is_none_or(|r| !r.1.contains("scrapeUrl")) {
        assert!(t0.elapsed() < Duration::from_secs(60), "no scrape target");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Known bytes, then a few scrape intervals before the tree ends.
    let script = format!("{} tcp 4 30000 7000; sleep 2", workload());
    let run = pmet(&[
        "trace",
        "--prometheus",
        &format!("127.0.0.1:{target}"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let pid = run.one("tcp-send")["pid"].to_string();
    // Over the last minute, so the series' staleness after pmet ended does
    // not hide it.
    let query = format!(
        "max_over_time(process_network_io_bytes_total{{process_pid=\"{pid}\",network_io_direction=\"transmit\",network_transport=\"tcp\"}}[1m])"
    );
    let (status, body) = get(
        &web_addr,
        &format!("/api/v1/query?query={}", encode(&query)),
    )
    .expect("query");
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let result = &v["data"]["result"];
    assert_eq!(result.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(result[0]["value"][1], "30000", "{body}");
    assert_eq!(result[0]["metric"]["job"], "pmet");
}

/// A copy of the workload under a name of its own, so its processes are
/// summed apart from every other process on the host.
fn named_workload(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::copy(workload(), &path).unwrap();
    path
}

/// Scrapes `addr` until `ready` holds for the samples, or fails after `limit`.
fn scrape_until(addr: &str, limit: Duration, ready: impl Fn(&Samples) -> bool) -> Samples {
    let t0 = Instant::now();
    loop {
        if let Some((200, body)) = get(addr, "/metrics") {
            let s = samples(&body);
            if ready(&s) {
                return s;
            }
        }
        assert!(t0.elapsed() < limit, "{addr}: not ready after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut agent: std::process::Child) -> String {
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let st = agent.wait().unwrap();
    let mut err = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        st.success(),
        "the agent ends cleanly on SIGTERM: {st:?}\n{err}"
    );
    err
}

#[test]
fn the_agent_forgets_ended_processes_and_keeps_their_sums() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("pmetchurn{}", std::process::id() % 10000);
    let churn = named_workload(dir.path(), &name);
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Command::new(pmet_bin())
        .args(["agent", "--prometheus", &addr, "--interval", "200ms"])
        .args(["--metrics-top", "0", "--duration", "120s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = |s: &Samples| value(s, "pmet_processes_seen_total", &[]);
    let held = |s: &Samples| value(s, "pmet_processes_held", &[]);
    let first = scrape_until(&addr, Duration::from_secs(20), |_| true);
    let (before, held_before) = (seen(&first), held(&first));
    // 1,500 processes, each sending one 100-byte datagram to their parent.
    let out = Command::new(&churn)
        .args(["churn", "1500", "4", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let received: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(received, 150_000.0);
    let udp = |s: &Samples, dir| {
        value(
            s,
            "process_network_io_bytes_total",
            &[
                ("process_executable_name", name.as_str()),
                ("network_io_direction", dir),
                ("network_transport", "udp"),
            ],
        )
    };
    let has_sums = |s: &Samples| {
        s.keys().any(|(n, l)| {
            n == "process_network_io_bytes_total"
                && l.iter()
                    .any(|(k, v)| k == "process_executable_name" && *v == name)
        })
    };
    // Every one of them seen, with exact bytes, while pmet still holds them…
    let s = scrape_until(&addr, Duration::from_secs(20), |s| {
        has_sums(s) && udp(s, "transmit") == 150_000.0
    });
    assert_eq!(udp(&s, "receive"), 150_000.0);
    assert!(seen(&s) - before >= 1501.0, "{} then {}", before, seen(&s));
    // …and once forgotten (a second after their end, once exported), the
    // sums stay exact while pmet holds about what it held before them
    // (other processes on the host come and go).
    let s = scrape_until(&addr, Duration::from_secs(30), |s| {
        held(s) <= held_before + 200.0
    });
    assert_eq!(udp(&s, "transmit"), 150_000.0);
    assert_eq!(udp(&s, "receive"), 150_000.0);
    assert!(seen(&s) - before >= 1501.0);
    assert_eq!(value(&s, "pmet_lost_events_total", &[]), 0.0);
    let err = stop(agent);
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn the_agent_reloads_its_config_on_sighup() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let write = |text: String| std::fs::write(&config, text).unwrap();
    write(format!(
        "prometheus = \"{a}\"\ninterval = \"200ms\"\nmetrics_top = 5\n"
    ));
    let agent = Command::new(pmet_bin())
        .args(["agent", "--config"])
        .arg(&config)
        .args(["--duration", "120s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hup = || {
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGHUP) };
    };
    let own = |s: &Samples| {
        s.keys()
            .filter(|(n, l)| {
                n == "process_memory_usage_bytes"
                    && l.iter().any(|(k, v)| k == "process_pid" && !v.is_empty())
            })
            .count()
    };
    let s = scrape_until(&a, Duration::from_secs(20), |_| true);
    assert_eq!(own(&s), 5, "metrics_top = 5");
    let seen = value(&s, "pmet_processes_seen_total", &[]);
    // A new address and a larger top: served there, no longer here.
    write(format!(
        "prometheus = \"{b}\"\ninterval = \"200ms\"\nmetrics_top = 7\n"
    ));
    hup();
    // Slots go to processes first seen from now on, while fewer than the
    // top hold one. Other tests' processes come and go (the agent sees the
    // whole host): one may take a slot and end, freeing it for a process
    // seen after that. So sleepers are started, one at a time, until 7
    // processes hold series; they outlive every wait below.
    let mut sleepers = Vec::new();
    let mut fill = |addr: &str| {
        let t0 = Instant::now();
        loop {
            sleepers.push(Command::new("sleep").arg("60").spawn().unwrap());
            std::thread::sleep(Duration::from_millis(300));
            let s = scrape_until(addr, Duration::from_secs(20), |_| true);
            if own(&s) >= 7 {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{} of 7", own(&s));
        }
    };
    let s = fill(&b);
    assert_eq!(own(&s), 7, "metrics_top = 7");
    assert!(
        value(&s, "pmet_processes_seen_total", &[]) >= seen,
        "the counters carry on over a reload"
    );
    let t0 = Instant::now();
    while get(&a, "/metrics").is_some() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{a} still served");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A file with a mistake changes nothing: still served at b, still 7 at
    // most, however many new processes come.
    write(format!("prometheus = \"{a}\"\nmetric_top = 3\n"));
    hup();
    std::thread::sleep(Duration::from_secs(1));
    let s = fill(&b);
    assert_eq!(own(&s), 7);
    // More new processes than free slots: still no more than 7 (a holder
    // that ends meanwhile can make it fewer).
    for _ in 0..3 {
        sleepers.push(Command::new("sleep").arg("60").spawn().unwrap());
    }
    std::thread::sleep(Duration::from_secs(1));
    let held = own(&scrape_until(&b, Duration::from_secs(5), |_| true));
    assert!(held <= 7, "{held} series: metrics_top is still 7");
    assert!(get(&a, "/metrics").is_none());
    for mut p in sleepers {
        let _ = p.kill();
        p.wait().unwrap();
    }
    let err = stop(agent);
    assert!(err.contains("reloaded"), "{err}");
    assert!(
        err.contains("reload: --config") && err.contains("unknown field `metric_top`"),
        "{err}"
    );
    assert!(err.contains("the previous settings stay in force"), "{err}");
}

/// systemd's side of `Type=notify`: the service says `READY=1` on the
/// socket within 60 s.
fn assert_told_ready(sock: &std::os::unix::net::UnixDatagram) {
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
}

#[test]
fn the_shipped_systemd_unit_verifies_and_its_command_starts() {
    if !can_trace() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("contrib/pmet-agent.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        exec,
        "/usr/local/bin/pmet agent --config /etc/pmet/agent.toml"
    );
    // The unit as installed, with this build in place of /usr/local/bin/pmet.
    let dir = tempfile::tempdir().unwrap();
    let bin = pmet_bin();
    let path = dir.path().join("pmet-agent.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/pmet", &bin.to_string_lossy()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd; `cargo xtask test` installs it)");
    assert!(out.status.success(), "{out:?}");
    // Its command line, with the shipped config pointed at a free port.
    let config = dir.path().join("agent.toml");
    let addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        std::fs::read_to_string(root.join("contrib/agent.toml"))
            .unwrap()
            .replace("0.0.0.0:9464", &addr),
    )
    .unwrap();
    // Type=notify: started means READY=1 on $NOTIFY_SOCKET, here in the
    // abstract namespace (`@name`), as systemd may give it.
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    use std::os::linux::net::SocketAddrExt;
    let name = format!("pmet-test-notify-{}", std::process::id());
    let sock = std::os::unix::net::UnixDatagram::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap(),
    )
    .unwrap();
    let agent = Command::new(&bin)
        .args(["agent", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_told_ready(&sock);
    let s = scrape_until(&addr, Duration::from_secs(20), |_| true);
    assert!(value(&s, "pmet_processes_alive", &[]) > 1.0);
    stop(agent);
}

#[test]
fn the_agent_tells_systemd_and_its_ready_file_once_watching() {
    if !can_trace() {
        return;
    }
    // systemd's side of Type=notify: a datagram socket named by
    // $NOTIFY_SOCKET, told "READY=1" once the service is up.
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let ready = dir.path().join("ready");
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Command::new(pmet_bin())
        .args(["agent", "--prometheus", &addr, "--duration", "120s"])
        .arg("--ready")
        .arg(&ready)
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_told_ready(&sock);
    // Told once only, and the file said the same moment.
    let line = common::read_ready(&ready, || false).unwrap();
    assert_eq!(line["ready"], true);
    assert_eq!(line["ebpf"], true);
    // By then the metrics port answers.
    let s = scrape_until(&addr, Duration::from_secs(5), |_| true);
    assert!(value(&s, "pmet_processes_held", &[]) > 0.0);
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(sock.recv(&mut [0u8; 64]).is_err(), "READY=1 is said once");
    stop(agent);
}
