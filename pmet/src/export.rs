//! The session's figures for the systems people already run, while it runs:
//! an OpenMetrics endpoint for Prometheus to scrape (`--prometheus ADDR`,
//! `/metrics`) and a textfile for node_exporter's textfile collector
//! (`--textfile PATH`, replaced atomically at every sample).
//!
//! Cardinality is bounded: at most `--metrics-top N` processes have series
//! of their own, given to processes in the order they are first seen while
//! a slot is free, and kept until the process has exited and one scrape has
//! seen its final values (then the slot is free again). Every other process is summed
//! under its executable name alone. A process never moves between the two,
//! so every counter only grows, as Prometheus requires.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    model::{
        container::container,
        figures::figures,
        net::Net,
        tree::{Proc, Tree},
    },
    render::openmetrics::{Row, TreeFigures, exposition},
};

/// Processes with series of their own unless `--metrics-top` says otherwise.
pub const DEFAULT_METRICS_TOP: usize = 50;

/// What the endpoint serves, and how many scrapes have taken it; the rows
/// behind it, for OTLP.
#[derive(Clone, Default)]
pub struct Published {
    text: Arc<Mutex<String>>,
    scrapes: Arc<AtomicU64>,
    rows: Arc<Mutex<(Vec<Row>, TreeFigures)>>,
}

impl Published {
    /// The exposition now.
    pub fn text(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// The figures one process last showed, so none of its counters goes down
/// (a live process's CPU split from ticks can exceed the exact split its
/// exit brings by a tick).
#[derive(Clone, Copy, Default)]
struct Shown {
    user: f64,
    system: f64,
    read: u64,
    write: u64,
}

/// Builds the exposition from the tree at each sample.
pub struct Exporter {
    published: Published,
    top: usize,
    /// Processes with series of their own, and the scrape count when their
    /// final values were first published (`None` while alive).
    own: HashMap<(u32, u64), Option<u64>>,
    /// Processes whose own series are gone (exited and scraped).
    retired: HashSet<(u32, u64)>,
    shown: HashMap<(u32, u64), Shown>,
    /// Container ids by cgroup id, looked up once each.
    containers: HashMap<u64, Option<String>>,
}

impl Exporter {
    /// An exporter giving at most `top` processes series of their own.
    pub fn new(top: usize) -> Self {
        Self {
            published: Published::default(),
            top,
            own: HashMap::new(),
            retired: HashSet::new(),
            shown: HashMap::new(),
            containers: HashMap::new(),
        }
    }

    /// What the endpoint serves.
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    fn container_of(&mut self, p: &Proc) -> Option<String> {
        let id = p.ids?.cgroup_id;
        if id == 0 {
            return None;
        }
        self.containers
            .entry(id)
            .or_insert_with(|| {
                let paths = crate::collect::cgroup::paths_of(&HashSet::from([id]));
                paths
                    .get(&id)
                    .and_then(|path| container(path))
                    .map(|c| c.id)
            })
            .clone()
    }

    /// One process's row, its counters never below what was shown before.
    fn row(&mut self, p: &Proc, ticks_per_s: u64, kernel_io: bool, ebpf: bool) -> Row {
        let f = figures(p, ticks_per_s, kernel_io);
        let key = (p.pid, p.cookie);
        let s = self.shown.entry(key).or_default();
        if let Some((u, sy)) = f.cpu {
            s.user = s.user.max(u);
            s.system = s.system.max(sy);
        }
        if let Some(d) = f.disk {
            s.read = s.read.max(d.read);
            s.write = s.write.max(d.written());
        }
        let s = *s;
        Row {
            pid: Some(p.pid),
            ppid: p.ppid,
            exe: p.comm.clone(),
            container: self.container_of(p),
            cpu_user_s: s.user,
            cpu_system_s: s.system,
            rss_bytes: if p.alive() {
                p.last_sample.map_or(0, |x| x.rss_bytes)
            } else {
                0
            },
            disk_read_bytes: s.read,
            disk_write_bytes: s.write,
            net: ebpf.then_some(p.net),
        }
    }

    /// Rebuilds what is served from the tree as it is now.
    pub fn update(
        &mut self,
        tree: &Tree,
        ticks_per_s: u64,
        kernel_io: bool,
        ebpf: bool,
        lost: u64,
    ) {
        let scrapes = self.published.scrapes.load(Ordering::Relaxed);
        // Exited processes whose final values a scrape has seen give their
        // slot back.
        let done: Vec<_> = self
            .own
            .iter()
            .filter(|(_, at)| at.is_some_and(|at| scrapes > at))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            self.own.remove(&k);
            self.retired.insert(k);
        }
        let mut rows = Vec::new();
        let mut others: HashMap<String, Row> = HashMap::new();
        for p in &tree.procs {
            let key = (p.pid, p.cookie);
            if self.retired.contains(&key) {
                continue;
            }
            // A process gets a slot when first seen, if one is free (one
            // that has already exited too: its final values are shown to
            // one scrape).
            if !self.shown.contains_key(&key) && self.own.len() < self.top {
                self.own.insert(key, None);
            }
            let row = self.row(p, ticks_per_s, kernel_io, ebpf);
            match self.own.get_mut(&key) {
                Some(at) => {
                    if !p.alive() && at.is_none() {
                        *at = Some(scrapes);
                    }
                    rows.push(row);
                }
                None => {
                    let sum = others.entry(row.exe.clone()).or_insert_with(|| Row {
                        exe: row.exe.clone(),
                        net: ebpf.then(Net::default),
                        ..Row::default()
                    });
                    sum.cpu_user_s += row.cpu_user_s;
                    sum.cpu_system_s += row.cpu_system_s;
                    sum.rss_bytes += row.rss_bytes;
                    sum.disk_read_bytes += row.disk_read_bytes;
                    sum.disk_write_bytes += row.disk_write_bytes;
                    if let (Some(s), Some(n)) = (sum.net.as_mut(), row.net.as_ref()) {
                        s.add(n);
                    }
                }
            }
        }
        let mut others: Vec<Row> = others.into_values().collect();
        others.sort_by(|a, b| a.exe.cmp(&b.exe));
        rows.extend(others);
        let figures = TreeFigures {
            seen: tree.procs.len() as u64,
            alive: tree.alive_count() as u64,
            lost,
        };
        let text = exposition(&rows, figures);
        if let Ok(mut t) = self.published.text.lock() {
            *t = text;
        }
        if let Ok(mut r) = self.published.rows.lock() {
            *r = (rows, figures);
        }
    }
}

/// Serves `/metrics` on `listener` until the session ends. Anyone who can
/// reach the address can read the figures (no secrets: no argv, no
/// environment); requests are bounded in size and time.
pub async fn serve(listener: TcpListener, published: Published) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let published = published.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = async {
                while len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let line = request.lines().next().unwrap_or_default();
            let path = line.split(' ').nth(1).unwrap_or_default();
            let get = line.starts_with("GET ");
            // OpenMetrics to a scraper that asks for it (Prometheus does);
            // the classic text format to anything else (curl, promtool).
            let openmetrics = request.lines().any(|h| {
                h.to_ascii_lowercase().starts_with("accept:")
                    && h.contains("application/openmetrics-text")
            });
            let response = if get && (path == "/metrics" || path.starts_with("/metrics?")) {
                let (body, kind) = if openmetrics {
                    (
                        published.text(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                } else {
                    (
                        classic(&published.text()),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                };
                published.scrapes.fetch_add(1, Ordering::Relaxed);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                let body = "pmet serves its figures at /metrics\n";
                format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// OTLP/HTTP (protobuf) metrics, with the OpenTelemetry SDK: the same
/// rows as the Prometheus exposition, under the semantic conventions' own
/// names (`process.cpu.time`, `process.memory.usage`, `process.disk.io`,
/// `process.network.io`; `pmet.*` for the tree), pushed every `interval`
/// and once more at the end. The SDK and its blocking HTTP client live on a
/// thread of their own, away from the session's async loop.
pub struct Otlp {
    done: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Otlp {
    /// Starts exporting `published`'s rows to `endpoint`
    /// (`http://HOST:4318/v1/metrics`).
    pub fn start(endpoint: String, interval: Duration, published: Published, host: String) -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || -> Result<(), String> {
            use opentelemetry::{KeyValue, metrics::MeterProvider as _};
            use opentelemetry_otlp::{MetricExporter, WithExportConfig};
            use opentelemetry_sdk::{
                Resource,
                metrics::{PeriodicReader, SdkMeterProvider},
            };
            let exporter = MetricExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| format!("--otlp {endpoint}: {e}"))?;
            let reader = PeriodicReader::builder(exporter)
                .with_interval(interval)
                .build();
            let provider = SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(
                    Resource::builder()
                        .with_service_name("pmet")
                        .with_attribute(KeyValue::new("host.name", host))
                        .build(),
                )
                .build();
            let meter = provider.meter("pmet");
            let who = |r: &Row| {
                let mut a = vec![KeyValue::new("process.executable.name", r.exe.clone())];
                if let Some(p) = r.pid {
                    a.push(KeyValue::new("process.pid", i64::from(p)));
                }
                if let Some(p) = r.ppid {
                    a.push(KeyValue::new("process.parent_pid", i64::from(p)));
                }
                if let Some(c) = &r.container {
                    a.push(KeyValue::new("container.id", c.clone()));
                }
                a
            };
            let with = |mut a: Vec<KeyValue>, more: &[(&'static str, &'static str)]| {
                a.extend(more.iter().map(|(k, v)| KeyValue::new(*k, *v)));
                a
            };
            let rows = published.rows.clone();
            let _cpu = meter
                .f64_observable_counter("process.cpu.time")
                .with_unit("s")
                .with_description("CPU seconds used by the process, by mode")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        for row in &r.0 {
                            o.observe(row.cpu_user_s, &with(who(row), &[("cpu.mode", "user")]));
                            o.observe(row.cpu_system_s, &with(who(row), &[("cpu.mode", "system")]));
                        }
                    }
                })
                .build();
            let rows = published.rows.clone();
            let _mem = meter
                .i64_observable_up_down_counter("process.memory.usage")
                .with_unit("By")
                .with_description("Resident memory of the process")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        for row in &r.0 {
                            o.observe(row.rss_bytes as i64, &who(row));
                        }
                    }
                })
                .build();
            let rows = published.rows.clone();
            let _disk = meter
                .u64_observable_counter("process.disk.io")
                .with_unit("By")
                .with_description("Storage bytes the process caused to be read or written")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        for row in &r.0 {
                            o.observe(
                                row.disk_read_bytes,
                                &with(who(row), &[("disk.io.direction", "read")]),
                            );
                            o.observe(
                                row.disk_write_bytes,
                                &with(who(row), &[("disk.io.direction", "write")]),
                            );
                        }
                    }
                })
                .build();
            let rows = published.rows.clone();
            let _net = meter
                .u64_observable_counter("process.network.io")
                .with_unit("By")
                .with_description("Socket payload bytes the process sent or received")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        for row in &r.0 {
                            let Some(n) = &row.net else { continue };
                            for (transport, t) in [("tcp", &n.tcp), ("udp", &n.udp)] {
                                for (dir, v) in [("transmit", t.tx_bytes), ("receive", t.rx_bytes)]
                                {
                                    o.observe(
                                        v,
                                        &with(
                                            who(row),
                                            &[
                                                ("network.io.direction", dir),
                                                ("network.transport", transport),
                                            ],
                                        ),
                                    );
                                }
                            }
                        }
                    }
                })
                .build();
            let rows = published.rows.clone();
            let _seen = meter
                .u64_observable_counter("pmet.processes.seen")
                .with_description("Processes of the traced scope seen so far")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        o.observe(r.1.seen, &[]);
                    }
                })
                .build();
            let rows = published.rows.clone();
            let _lost = meter
                .u64_observable_counter("pmet.lost_events")
                .with_description("Events or figures pmet lost (0 on a healthy run)")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        o.observe(r.1.lost, &[]);
                    }
                })
                .build();
            let rows = published.rows.clone();
            let _alive = meter
                .i64_observable_gauge("pmet.processes.alive")
                .with_description("Processes of the traced scope alive now")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        o.observe(r.1.alive as i64, &[]);
                    }
                })
                .build();
            // Until the session ends; then the last word, waited for.
            let _ = wait.recv();
            let flushed = provider
                .force_flush()
                .map_err(|e| format!("--otlp {endpoint}: {e}"));
            let _ = provider.shutdown();
            flushed
        });
        Self {
            done,
            thread: Some(thread),
        }
    }

    /// Pushes the figures as they are now and stops: the result of that push.
    pub fn finish(mut self) -> Result<(), String> {
        let _ = self.done.send(());
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err("the OTLP thread failed".into()),
        }
    }
}

/// The exposition in Prometheus' classic text format (0.0.4), which the
/// Pushgateway takes: counter families named with their `_total` suffix,
/// no `# UNIT` and no `# EOF`.
pub fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|head| {
            let rest = l.strip_prefix(head)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{head}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// Where a Pushgateway is: `http://HOST:PORT[/PREFIX]` (no TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// `HOST:PORT`.
    pub authority: String,
    /// Path prefix, without a trailing slash.
    pub prefix: String,
}

impl Gateway {
    /// Parses `--pushgateway URL`; the error names what to give instead.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--pushgateway {url}: give an http:// address (HTTPS is not supported yet)")
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!(
                "--pushgateway {url}: give the port too, e.g. http://localhost:9091"
            ));
        }
        Ok(Gateway {
            authority: authority.to_owned(),
            prefix: if path.is_empty() {
                String::new()
            } else {
                format!("/{}", path.trim_end_matches('/'))
            },
        })
    }

    /// Replaces the group `job="pmet", instance=INSTANCE` with `body`.
    pub fn push(&self, instance: &str, body: &str) -> Result<(), String> {
        use std::io::{Read, Write};
        let instance: String = instance
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = format!("{}/metrics/job/pmet/instance/{instance}", self.prefix);
        let fail = |what: String| format!("pushing to http://{}{path}: {what}", self.authority);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&self.authority)
            .map_err(|e| fail(e.to_string()))?
            .next()
            .ok_or_else(|| fail("no address".into()))?;
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| fail(e.to_string()))?;
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
        write!(
            c,
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.authority,
            body.len()
        )
        .map_err(|e| fail(e.to_string()))?;
        let mut head = [0u8; 512];
        let n = c.read(&mut head).map_err(|e| fail(e.to_string()))?;
        let status = String::from_utf8_lossy(&head[..n]);
        let status = status.lines().next().unwrap_or_default();
        match status.split(' ').nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(fail(format!("the gateway answered `{status}`"))),
        }
    }
}

/// Pushes on a thread of its own, so a slow gateway never stalls tracing:
/// the latest exposition replaces any not yet sent.
pub struct Pusher {
    tx: std::sync::mpsc::Sender<Option<String>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Pusher {
    /// Starts pushing to `gateway` as instance `instance`.
    pub fn start(gateway: Gateway, instance: String) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
        let thread = std::thread::spawn(move || {
            let mut last = Ok(());
            let mut done = false;
            while !done && let Ok(msg) = rx.recv() {
                // Only the newest exposition counts; `None` ends the thread
                // once what came before it is pushed.
                let mut body = msg;
                while let Ok(newer) = rx.try_recv() {
                    match newer {
                        Some(b) => body = Some(b),
                        None => done = true,
                    }
                }
                match body {
                    Some(b) => last = gateway.push(&instance, &b),
                    None => done = true,
                }
            }
            last
        });
        Self {
            tx,
            thread: Some(thread),
        }
    }

    /// Queues an exposition (OpenMetrics text) for pushing.
    pub fn push(&self, openmetrics: &str) {
        let _ = self.tx.send(Some(classic(openmetrics)));
    }

    /// Pushes `openmetrics` as the last word and waits for it: the result
    /// of that final push.
    pub fn finish(mut self, openmetrics: &str) -> Result<(), String> {
        let _ = self.tx.send(Some(classic(openmetrics)));
        let _ = self.tx.send(None);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err("the push thread failed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixture;

    fn pids(text: &str, metric: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| {
                l.split("process_pid=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn the_classic_format_names_counters_as_it_wants_them() {
        let om = "# HELP a_seconds What.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total{x=\"1\"} 2.5\n# HELP g A gauge.\n# TYPE g gauge\ng 3\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP a_seconds_total What.\n# TYPE a_seconds_total counter\na_seconds_total{x=\"1\"} 2.5\n# HELP g A gauge.\n# TYPE g gauge\ng 3\n"
        );
    }

    #[test]
    fn gateway_addresses_are_checked() {
        assert_eq!(
            Gateway::parse("http://pg:9091/base/").unwrap(),
            Gateway {
                authority: "pg:9091".into(),
                prefix: "/base".into()
            }
        );
        assert!(
            Gateway::parse("https://pg:9091")
                .unwrap_err()
                .contains("http://")
        );
        assert!(Gateway::parse("http://pg").unwrap_err().contains("port"));
    }

    #[test]
    fn at_most_n_processes_have_series_and_the_rest_are_summed_by_name() {
        let (tree, _) = fixture::web_job();
        let mut x = Exporter::new(2);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        // The first two seen have their own series; the others (all
        // exited) are summed under their names.
        assert_eq!(
            pids(&text, "process_memory_usage_bytes"),
            ["", "1000", "1001"]
        );
        for exe in ["curl", "grep", "sleep"] {
            assert!(
                text.contains(&format!(
                    "process_memory_usage_bytes{{process_pid=\"\",process_parent_pid=\"\",process_executable_name=\"{exe}\""
                )),
                "{exe}: {text}"
            );
        }
        // The two curls' bytes, summed.
        assert!(text.contains(
            "process_executable_name=\"curl\",container_id=\"\",network_io_direction=\"receive\",network_transport=\"tcp\"} 10747904"
        ), "{text}");
        // Both own processes have exited: once a scrape has seen their
        // final values, their series go and their slots are free; the sums
        // keep everything they had.
        x.published.scrapes.fetch_add(1, Ordering::Relaxed);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert_eq!(pids(&text, "process_memory_usage_bytes"), [""]);
        assert!(text.contains("pmet_processes_seen_total 6"), "{text}");
    }
}
