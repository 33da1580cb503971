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

use common::{can_trace, pmet, pmet_bin, pmet_with, workload};

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
    // Two processes that end samples before the last: the last textfile
    // holds them too.
    let w = workload();
    let script = format!("{w} exit 0; {w} exit 0; sleep 0.5; {w} tcp 4 30000 7000");
    let run = pmet(&[
        "trace",
        "-i",
        "100ms",
        "--textfile",
        prom.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    // sh, two exits, sleep, and tcp with its server, client and sender.
    assert_eq!(r["totals"]["processes"], 8);
    assert_eq!(
        value(
            &samples(&std::fs::read_to_string(&prom).unwrap()),
            "pmet_network_io_bytes_total",
            &[
                ("network_io_direction", "transmit"),
                ("network_transport", "tcp")
            ]
        ),
        r["totals"]["net"]["tcp"]["tx_bytes"].as_f64().unwrap()
    );
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

/// A server of its own (a Pushgateway, a node_exporter) on a free port,
/// answering `/metrics`; stopped when dropped.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    /// Starts `program` with `args` and `--web.listen-address`.
    fn start(program: &str, args: &[String]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(program)
            .arg(format!("--web.listen-address={addr}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} (`cargo xtask test` installs it): {e}"));
        // Made first, so a server that never answers is still stopped.
        let server = Server { child, addr };
        let t0 = Instant::now();
        while get(&server.addr, "/metrics").is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{program} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn pushgateway() -> Self {
        Self::start("prometheus-pushgateway", &[])
    }

    /// A Pushgateway that takes pushes only from user `ci` with password
    /// `s3cret-pw` (`config` holds its web config).
    fn pushgateway_with_auth(config: &std::path::Path) -> Self {
        // bcrypt("s3cret-pw"), 2^4 rounds.
        std::fs::write(
            config,
            "basic_auth_users:\n  ci: $2b$04$8uuIBH0AqTkGbokeSpLNAe.0Ahy3rHXxD125iUqbMhLHazmMf3g7C\n",
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--web.config.file={}", config.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-pushgateway");
        let server = Server { child, addr };
        let t0 = Instant::now();
        // Up once it refuses an anonymous read.
        while get(&server.addr, "/metrics").is_none_or(|(code, _)| code != 401) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the gateway did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// A node_exporter reading `dir` with its textfile collector alone.
    fn node_exporter(dir: &std::path::Path) -> Self {
        Self::start(
            "prometheus-node-exporter",
            &[
                format!("--collector.textfile.directory={}", dir.display()),
                "--collector.disable-defaults".into(),
                "--collector.textfile".into(),
            ],
        )
    }
}

impl Drop for Server {
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
    let gw = Server::pushgateway();
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
fn pushes_while_the_tree_runs_keep_what_ended_processes_sent() {
    if !can_trace() {
        return;
    }
    let gw = Server::pushgateway();
    // Six senders of 1 MiB each, one after another, each ended pushes
    // before the last.
    let w = workload();
    let script = format!("for i in 1 2 3 4 5 6; do {w} tcp 4 1048576 0; sleep 0.3; done");
    let run = pmet(&[
        "trace",
        "-i",
        "100ms",
        "--push-interval",
        "100ms",
        "--pushgateway",
        &format!("http://{}", gw.addr),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    assert_eq!(r["totals"]["net"]["tcp"]["tx_bytes"], 6 * 1048576);
    let (_, body) = get(&gw.addr, "/metrics").expect("the gateway answers");
    let s = samples(&body);
    let tx = [
        ("job", "pmet"),
        ("network_io_direction", "transmit"),
        ("network_transport", "tcp"),
    ];
    assert_eq!(
        value(&s, "pmet_network_io_bytes_total", &tx),
        6.0 * 1048576.0
    );
    let mut group = tx.to_vec();
    group.push(("process_executable_name", "workload"));
    assert_eq!(
        value(&s, "pmet_group_network_io_bytes_total", &group),
        6.0 * 1048576.0
    );
    assert_eq!(
        value(&s, "pmet_processes_seen_total", &[("job", "pmet")]),
        r["totals"]["processes"].as_f64().unwrap()
    );
}

#[test]
fn node_exporter_serves_two_pmet_textfiles_in_one_directory() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sent = Vec::new();
    for (file, bytes) in [("build.prom", "30000"), ("tests.prom", "50000")] {
        let path = dir.path().join(file);
        let run = pmet(&[
            "trace",
            "--textfile",
            path.to_str().unwrap(),
            "--",
            workload(),
            "tcp",
            "4",
            bytes,
            "0",
        ]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        sent.push((file, run.report().clone()));
    }
    let ne = Server::node_exporter(dir.path());
    let (status, body) = get(&ne.addr, "/metrics").expect("node_exporter answers");
    assert_eq!(status, 200);
    let s = samples(&body);
    // Both files read, neither refused.
    assert_eq!(value(&s, "node_textfile_scrape_error", &[]), 0.0, "{body}");
    for (file, r) in sent {
        let of = [("pmet_textfile", file)];
        assert_eq!(
            value(&s, "pmet_processes_seen_total", &of),
            r["totals"]["processes"].as_f64().unwrap()
        );
        let tx = [
            ("pmet_textfile", file),
            ("network_io_direction", "transmit"),
            ("network_transport", "tcp"),
        ];
        assert_eq!(
            value(&s, "pmet_network_io_bytes_total", &tx),
            r["totals"]["net"]["tcp"]["tx_bytes"].as_f64().unwrap()
        );
    }
}

#[test]
fn two_jobs_on_one_host_push_to_groups_of_their_own() {
    if !can_trace() {
        return;
    }
    let gw = Server::pushgateway();
    let url = format!("http://{}", gw.addr);
    let mut sent = Vec::new();
    for (job, branch, bytes) in [("build", "main", "30000"), ("tests", "feature/x", "50000")] {
        let label = format!("branch={branch}");
        let run = pmet(&[
            "trace",
            "--pushgateway",
            &url,
            "--push-job",
            job,
            "--push-label",
            &label,
            "--",
            workload(),
            "tcp",
            "4",
            bytes,
            "0",
        ]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        sent.push((job, branch, run.report().clone()));
    }
    let (_, body) = get(&gw.addr, "/metrics").expect("the gateway answers");
    let s = samples(&body);
    for (job, branch, r) in sent {
        let tx = [
            ("job", job),
            ("branch", branch),
            ("network_io_direction", "transmit"),
            ("network_transport", "tcp"),
        ];
        assert_eq!(
            value(&s, "pmet_network_io_bytes_total", &tx),
            r["totals"]["net"]["tcp"]["tx_bytes"].as_f64().unwrap(),
            "{job}"
        );
    }
}

#[test]
fn a_gateway_that_wants_a_password_gets_it_and_says_why_when_wrong() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Server::pushgateway_with_auth(&dir.path().join("web.yml"));
    let push = |userinfo: &str| {
        pmet(&[
            "trace",
            "--pushgateway",
            &format!("http://{userinfo}@{}", gw.addr),
            "--",
            "true",
        ])
    };
    let run = push("ci:s3cret-pw");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.report()["collector"]["export_errors"],
        0,
        "{}",
        run.stderr
    );
    let bad = push("ci:wrong");
    assert_eq!(bad.code, Some(0), "{}", bad.stderr);
    assert_eq!(bad.report()["collector"]["export_errors"], 1);
    // The cause, and never the password.
    assert!(bad.stderr.contains("401 Unauthorized"), "{}", bad.stderr);
    assert!(
        !bad.stderr.contains("wrong") && !run.stderr.contains("s3cret"),
        "{}",
        bad.stderr
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
def val(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = ms.ExportMetricsServiceRequest()
        req.ParseFromString(body)
        points = []
        for rm in req.resource_metrics:
            res = {a.key: val(a.value) for a in rm.resource.attributes}
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    data = getattr(m, kind)
                    for dp in data.data_points:
                        v = dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
                        attrs = {a.key: val(a.value) for a in dp.attributes}
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

/// An OTLP receiver of its own on a free port, stopped when dropped.
struct Receiver {
    child: std::process::Child,
    port: u16,
    got: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("rx.py");
        std::fs::write(&script, OTLP_RECEIVER).unwrap();
        let got = dir.path().join("got.jsonl");
        let port = free_port();
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&got)
            .spawn()
            .expect("python3");
        let rx = Receiver {
            child,
            port,
            got,
            _dir: dir,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rx
    }

    /// Every request so far, as decoded points.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.got)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn otlp_metrics_are_the_reports_numbers() {
    if !can_trace() {
        return;
    }
    let rx = Receiver::start();
    let port = rx.port;
    // No path: the SDKs' /v1/metrics is taken.
    let run = pmet_with(
        &[
            "trace",
            "--otlp",
            &format!("http://127.0.0.1:{port}"),
            "--",
            workload(),
            "tcp",
            "4",
            "30000",
            "7000",
        ],
        |c| {
            c.env("OTEL_SERVICE_NAME", "ci-job")
                .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test");
        },
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // The last export is the final word.
    let last = rx.requests().pop().expect("the receiver got metrics");
    let points = last.as_array().unwrap();
    // `on`: the resource's attributes; `attrs`: the point's.
    let point = |name: &str,
                 on: &[(&str, serde_json::Value)],
                 attrs: &[(&str, serde_json::Value)]|
     -> &serde_json::Value {
        let hits: Vec<&serde_json::Value> = points
            .iter()
            .filter(|p| {
                p["name"] == name
                    && on.iter().all(|(k, v)| &p["resource"][*k] == v)
                    && attrs.iter().all(|(k, v)| &p["attrs"][*k] == v)
            })
            .collect();
        assert_eq!(hits.len(), 1, "{name} {on:?} {attrs:?}: {hits:#?}");
        hits[0]
    };
    let sender = run.one("tcp-send");
    let pid = sender["pid"].clone();
    let tx = [
        ("network.io.direction", "transmit".into()),
        ("network.transport", "tcp".into()),
    ];
    // Each process a resource of its own, as the Collector's hostmetrics
    // receiver has them: its attributes on the resource, not the points.
    let sent = point("process.network.io", &[("process.pid", pid.clone())], &tx);
    assert_eq!(sent["value"], 30000);
    assert_eq!(sent["unit"], "By");
    assert_eq!(sent["monotonic"], true);
    assert_eq!(sent["path"], "/v1/metrics");
    assert_eq!(sent["attrs"].as_object().unwrap().len(), 2, "{sent}");
    assert_eq!(sent["resource"]["process.executable.name"], "workload");
    assert_eq!(sent["resource"]["service.name"], "ci-job");
    assert_eq!(sent["resource"]["deployment.environment"], "test");
    assert!(
        sent["resource"]["host.name"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    let cpu = point(
        "process.cpu.time",
        &[("process.pid", pid)],
        &[("cpu.mode", "user".into())],
    );
    assert!(
        (cpu["value"].as_f64().unwrap() - sender["cpu_user_s"].as_f64().unwrap()).abs() < 1e-6,
        "{cpu} vs {}",
        sender["cpu_user_s"]
    );
    // The host's resource: the totals, the groups, the tree's counts.
    let r = run.report();
    let host = [("process.pid", serde_json::Value::Null)];
    assert_eq!(
        point("pmet.network.io", &host, &tx)["value"],
        r["totals"]["net"]["tcp"]["tx_bytes"]
    );
    let mut workload_tx = tx.to_vec();
    workload_tx.push(("process.executable.name", "workload".into()));
    assert_eq!(
        point("pmet.group.network.io", &host, &workload_tx)["value"],
        r["totals"]["net"]["tcp"]["tx_bytes"]
    );
    assert_eq!(
        point("pmet.processes.seen", &host, &[])["value"],
        r["totals"]["processes"]
    );
    assert_eq!(point("pmet.lost_events", &host, &[])["value"], 0);
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

/// Debian's Prometheus scraping 127.0.0.1:`target` every `every`, killed
/// when dropped.
struct Prometheus {
    child: std::process::Child,
    web: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16, every: &str) -> Self {
        let web = format!("127.0.0.1:{}", free_port());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: {every}\nscrape_configs:\n  - job_name: pmet\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (`cargo xtask setup` installs Debian's)");
        // Made first, so a server that never answers is still stopped.
        let p = Prometheus {
            child,
            web,
            _dir: dir,
        };
        let t0 = Instant::now();
        while get(&p.web, "/-/ready").is_none_or(|r| r.0 != 200) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "prometheus did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Its targets are set up a few seconds after it is ready.
        while get(&p.web, "/api/v1/targets").is_none_or(|r| !r.1.contains("scrapeUrl")) {
            assert!(t0.elapsed() < Duration::from_secs(60), "no scrape target");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The results of an instant query.
    fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let (status, body) =
            get(&self.web, &format!("/api/v1/query?query={}", encode(query))).expect("query");
        assert_eq!(status, 200, "{query}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The one value an instant query gives.
    fn one(&self, query: &str) -> f64 {
        let r = self.query(query);
        assert_eq!(r.len(), 1, "{query}: {r:?}");
        r[0]["value"][1].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_a_traced_run() {
    if !can_trace() {
        return;
    }
    let target = free_port();
    let prom = Prometheus::start(target, "500ms");
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
    let result = prom.query(&query);
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0]["value"][1], "30000", "{result:?}");
    assert_eq!(result[0]["metric"]["job"], "pmet");
}

#[test]
fn prometheus_sees_every_byte_of_short_processes_and_no_total_going_back() {
    if !can_trace() {
        return;
    }
    let target = free_port();
    let prom = Prometheus::start(target, "200ms");
    let dir = tempfile::tempdir().unwrap();
    let name = format!("pmetshort{}", std::process::id() % 10000);
    let churn = named_workload(dir.path(), &name);
    // Scraped at 0 first; then 300 processes of a few milliseconds, each
    // sending 1,000 UDP bytes to their parent (most live between two
    // scrapes, and none gets a series of its own); then time for a scrape
    // of the end.
    let script = format!("sleep 1.5; {} churn 300 2 1000; sleep 1.5", churn.display());
    let run = pmet(&[
        "trace",
        "-i",
        "100ms",
        "--metrics-top",
        "0",
        "--prometheus",
        &format!("127.0.0.1:{target}"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.report();
    assert_eq!(r["totals"]["net"]["udp"]["tx_bytes"], 300_000);
    let udp_tx = "network_transport=\"udp\",network_io_direction=\"transmit\"";
    for series in [
        format!("pmet_network_io_bytes_total{{{udp_tx}}}"),
        format!("pmet_group_network_io_bytes_total{{process_executable_name=\"{name}\",{udp_tx}}}"),
    ] {
        // The whole run's increase, first scrape to last: exact.
        let first = prom.one(&format!("min_over_time({series}[1m])"));
        let last = prom.one(&format!("max_over_time({series}[1m])"));
        assert_eq!((first, last), (0.0, 300_000.0), "{series}");
        assert_eq!(prom.one(&format!("resets({series}[1m])")), 0.0, "{series}");
    }
    // No counter of a total or a group ever went back (the CPU seconds are
    // summed from integers).
    for family in [
        "pmet_cpu_time_seconds_total",
        "pmet_disk_io_bytes_total",
        "pmet_group_cpu_time_seconds_total",
        "pmet_group_network_io_bytes_total",
        "pmet_group_processes_total",
    ] {
        let resets = prom.query(&format!("resets({family}[1m]) > 0"));
        assert!(resets.is_empty(), "{family}: {resets:?}");
    }
    // The churn and its 300; with the sh and two sleeps.
    let procs = prom.one(&format!(
        "max_over_time(pmet_group_processes_total{{process_executable_name=\"{name}\"}}[1m])"
    ));
    assert_eq!(procs, 301.0);
    assert_eq!(r["totals"]["processes"], 304);
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

/// A running `pmet agent` (its stderr kept), killed if the test ends
/// without stopping it.
struct Agent(Option<std::process::Child>);

impl Agent {
    fn spawn(c: &mut Command) -> Self {
        Agent(Some(c.stderr(Stdio::piped()).spawn().unwrap()))
    }

    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stops the agent with SIGTERM: it must end cleanly. Its stderr.
fn stop(mut agent: Agent) -> String {
    let mut agent = agent.0.take().expect("running");
    // SAFETY: plain kill of our own child, not yet reaped.
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
    let agent = Agent::spawn(
        Command::new(pmet_bin())
            .args(["agent", "--prometheus", &addr, "--interval", "200ms"])
            .args(["--duration", "120s"]),
    );
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
            "pmet_group_network_io_bytes_total",
            &[
                ("process_executable_name", name.as_str()),
                ("network_io_direction", dir),
                ("network_transport", "udp"),
            ],
        )
    };
    let has_sums = |s: &Samples| {
        s.keys().any(|(n, l)| {
            n == "pmet_group_network_io_bytes_total"
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
    let group = [("process_executable_name", name.as_str())];
    assert_eq!(value(&s, "pmet_group_processes_total", &group), 1501.0);
    // …and once forgotten (a second after their end, once exported), the
    // sums stay exact while pmet holds about what it held before them
    // (other processes on the host come and go).
    let s = scrape_until(&addr, Duration::from_secs(30), |s| {
        held(s) <= held_before + 200.0
    });
    assert_eq!(udp(&s, "transmit"), 150_000.0);
    assert_eq!(udp(&s, "receive"), 150_000.0);
    assert_eq!(value(&s, "pmet_group_processes_total", &group), 1501.0);
    assert_eq!(value(&s, "pmet_group_processes_alive", &group), 0.0);
    // The agent serves no pid series by default: a host's churn of pids
    // makes no churn of series.
    assert!(!s.keys().any(|(n, _)| n.starts_with("process_")));
    assert!(seen(&s) - before >= 1501.0);
    assert_eq!(value(&s, "pmet_lost_events_total", &[]), 0.0);
    let err = stop(agent);
    assert!(!err.contains("error"), "{err}");
}

/// A collector that fails every request with a body that never ends.
const ENDLESS_COLLECTOR: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
def serve(c):
    try:
        c.recv(65536)
        c.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nno room: ")
        chunk = b"x" * 65536
        while True:
            c.sendall(chunk)
    except OSError:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn an_otlp_answer_that_never_ends_costs_no_memory_and_is_named() {
    if !can_trace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("endless.py");
    std::fs::write(&script, ENDLESS_COLLECTOR).unwrap();
    let port = free_port();
    let mut collector = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the collector did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sent every 100 ms for 2 s, and at the end.
    let t0 = Instant::now();
    let run = pmet(&[
        "trace",
        "--otlp",
        &format!("http://127.0.0.1:{port}"),
        "--otlp-interval",
        "100ms",
        "--",
        "sleep",
        "2",
    ]);
    let took = t0.elapsed();
    let _ = collector.kill();
    let _ = collector.wait();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let c = &run.report()["collector"];
    assert_eq!(c["export_errors"], 1, "{}", run.stderr);
    // Said once while running, once at the end, each with the cause.
    assert_eq!(
        run.stderr
            .matches("500 Internal Server Error`: no room: xxx")
            .count(),
        2,
        "{}",
        run.stderr
    );
    // pmet reads the start of an answer, no more: a few MB of the body
    // at each of about 20 sends would show here (a trace of `sleep` holds
    // about 55 MB in a debug build).
    let rss = c["self_peak_rss_bytes"].as_u64().unwrap();
    assert!(rss < 120 << 20, "{rss}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// User and system CPU seconds `pid` has used.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[0] + f[1]) as f64 / hz
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The sockets `pid` holds.
fn sockets(pid: u32) -> usize {
    (std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap())
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn a_flood_of_idle_connections_neither_spins_nor_stops_the_agent() {
    if !can_trace() {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::spawn(
        Command::new(pmet_bin())
            .args(["agent", "--prometheus", &addr, "--interval", "200ms"])
            .args(["--duration", "120s"]),
    );
    let pid = agent.id();
    let seen = |s: &Samples| value(s, "pmet_processes_seen_total", &[]);
    scrape_until(&addr, Duration::from_secs(20), |_| true);
    // Few descriptors to spare: the flood runs pmet out of them.
    let limit = (open_fds(pid) + 8) as u64;
    let own_sockets = sockets(pid);
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a plain prlimit on our own child.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0);
    // 200 connections that never send a request, as fast as they go in.
    let mut idle = Vec::new();
    for _ in 0..200 {
        if let Ok(c) =
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(100))
        {
            idle.push(c);
        }
    }
    assert!(idle.len() >= 40, "{}", idle.len());
    // Out of descriptors, pmet waits rather than spins on accept: over 2 s
    // a spin takes a whole core (2 s).
    let before = cpu_s(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_s(pid) - before;
    assert!(used < 0.5, "{used} s of CPU in 2 s");
    // Never more connections than it serves at once (32).
    assert!(sockets(pid) <= own_sockets + 32, "{}", sockets(pid));
    // Scrapes are still served (the connections beyond what pmet can hold
    // are refused, not queued in front of them), and tracing went on.
    let s = scrape_until(&addr, Duration::from_secs(20), |_| true);
    let at = seen(&s);
    assert!(Command::new("true").status().unwrap().success());
    let s = scrape_until(&addr, Duration::from_secs(20), |s| seen(s) > at);
    assert_eq!(value(&s, "pmet_lost_events_total", &[]), 0.0);
    drop(idle);
    let err = stop(agent);
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn otlp_from_the_agent_drops_a_process_once_forgotten() {
    if !can_trace() {
        return;
    }
    let rx = Receiver::start();
    let agent = Agent::spawn(
        Command::new(pmet_bin())
            .args(["agent", "--interval", "200ms", "--metrics-top", "50"])
            .args(["--otlp", &format!("http://127.0.0.1:{}", rx.port)])
            .args(["--otlp-interval", "200ms", "--duration", "120s"]),
    );
    let has = |req: &serde_json::Value, pid: u64| {
        (req.as_array().unwrap().iter()).any(|p| p["resource"]["process.pid"] == pid)
    };
    // Wait until the agent exports, then a process of half a second.
    let t0 = Instant::now();
    while rx.requests().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no export");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("sh")
        .args(["-c", "echo $$; exec sleep 0.5"])
        .output()
        .unwrap();
    let pid: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // Exported while it ran and once ended (its final figures), then
    // forgotten: in no request after (a second after its end at most, and
    // a few exports for good measure).
    let t0 = Instant::now();
    let (first, gone) = loop {
        let reqs = rx.requests();
        let first = reqs.iter().position(|r| has(r, pid));
        if let Some(f) = first
            && let Some(g) = reqs[f..].iter().position(|r| !has(r, pid))
            && reqs.len() > f + g + 5
        {
            break (f, f + g);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not exported, then dropped"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let reqs = rx.requests();
    assert!(
        reqs[gone..].iter().all(|r| !has(r, pid)),
        "exported again after {gone}"
    );
    assert!(gone > first);
    let err = stop(agent);
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn names_a_local_user_makes_up_cost_the_agent_no_more_series() {
    if !can_trace() {
        return;
    }
    // 40 processes, each under a name never seen before (the name a
    // process gets is its program's file name: here links to `true`).
    let dir = tempfile::tempdir().unwrap();
    let tag = std::process::id() % 10000;
    let names: Vec<String> = (0..40).map(|i| format!("pmetuniq{tag}x{i}")).collect();
    for n in &names {
        std::os::unix::fs::symlink("/bin/true", dir.path().join(n)).unwrap();
    }
    let rx = Receiver::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Agent::spawn(
        Command::new(pmet_bin())
            .args(["agent", "--prometheus", &addr, "--interval", "200ms"])
            .args(["--otlp", &format!("http://127.0.0.1:{}", rx.port)])
            .args(["--otlp-interval", "300ms", "--metrics-groups", "10"])
            .args(["--duration", "120s"]),
    );
    let first = scrape_until(&addr, Duration::from_secs(20), |_| true);
    let seen = |s: &Samples| value(s, "pmet_processes_seen_total", &[]);
    let before = seen(&first);
    for n in &names {
        let st = Command::new(dir.path().join(n)).status().unwrap();
        assert!(st.success());
    }
    // However few names the host had, at least 30 of ours are beyond the
    // ten: summed together (a new series reads 0 until first scraped, so
    // wait for them).
    let overflow = |s: &Samples| {
        (s.iter())
            .find(|((n, l), _)| {
                n == "pmet_group_processes_total"
                    && l.iter()
                        .any(|(k, v)| k == "otel_metric_overflow" && v == "true")
            })
            .map_or(0.0, |(_, v)| *v)
    };
    let s = scrape_until(&addr, Duration::from_secs(20), |s| {
        seen(s) - before >= 40.0 && overflow(s) >= 30.0
    });
    let groups: Vec<_> = (s.keys())
        .filter(|(n, _)| n == "pmet_group_processes_total")
        .collect();
    // Ten names, and every other name together.
    assert_eq!(groups.len(), 11, "{groups:?}");
    let key = [
        ("otel_metric_overflow", "true"),
        ("process_executable_name", ""),
    ];
    assert_eq!(value(&s, "pmet_group_processes_total", &key), overflow(&s));
    let ours: std::collections::BTreeSet<_> = (s.keys())
        .flat_map(|(_, l)| l.iter().map(|(_, v)| v))
        .filter(|v| v.starts_with("pmetuniq"))
        .collect();
    assert!(ours.len() <= 10, "{ours:?}");
    // OTLP: the same bound, and no process of its own (the agent gives
    // none series by default).
    std::thread::sleep(Duration::from_millis(1000));
    let err = stop(agent);
    assert!(!err.contains("warning"), "{err}");
    let reqs = rx.requests();
    assert!(reqs.len() >= 2, "{}", reqs.len());
    for points in &reqs {
        let points = points.as_array().unwrap();
        assert!(
            points
                .iter()
                .all(|p| p["resource"]["process.pid"].is_null())
        );
        let group_series = points
            .iter()
            .filter(|p| p["name"] == "pmet.group.processes")
            .count();
        assert!(group_series <= 11, "{group_series}");
    }
    let last = reqs.last().unwrap().as_array().unwrap();
    let over = last
        .iter()
        .find(|p| p["name"] == "pmet.group.processes" && p["attrs"]["otel.metric.overflow"] == true)
        .expect("the overflow group");
    assert!(over["value"].as_f64().unwrap() >= 30.0, "{over}");
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
    let agent = Agent::spawn(
        Command::new(pmet_bin())
            .args(["agent", "--config"])
            .arg(&config)
            .args(["--duration", "120s"]),
    );
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
            .replace("127.0.0.1:9464", &addr),
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
    let agent = Agent::spawn(
        Command::new(&bin)
            .args(["agent", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", format!("@{name}")),
    );
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
    let agent = Agent::spawn(
        Command::new(pmet_bin())
            .args(["agent", "--prometheus", &addr, "--duration", "120s"])
            .arg("--ready")
            .arg(&ready)
            .env("NOTIFY_SOCKET", &sock_path),
    );
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
