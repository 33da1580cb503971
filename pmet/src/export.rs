//! The session's figures for the systems people already run, while it runs:
//! an OpenMetrics endpoint for Prometheus to scrape (`--prometheus ADDR`,
//! `/metrics`) and a textfile for node_exporter's textfile collector
//! (`--textfile PATH`, replaced atomically at every sample).
//!
//! Cardinality is bounded: at most `--metrics-top N` processes have series
//! of their own. Free slots go to the processes first seen at a sample, the
//! most active first, and are kept until the process has exited and every
//! reader has taken its final values (then the slot is free again). Every
//! other process is summed under its executable name alone. A process never
//! moves between the two, so every counter only grows, as Prometheus
//! requires.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    error::Error,
    model::{
        container::container_of_cgroup,
        figures::figures,
        tree::{Proc, Tree},
    },
    privileges::Credentials,
    render::openmetrics::{Row, TreeFigures, exposition},
    report::{Output, OutputTarget},
};

/// Processes with series of their own unless `--metrics-top` says otherwise.
pub const DEFAULT_METRICS_TOP: usize = 50;

/// OTLP is sent this often unless `--otlp-interval` says otherwise.
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(10);

/// Where the figures go: the exporter flags, or `pmet agent`'s `--config`
/// file (TOML, the flags' names with underscores), re-read on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `--prometheus HOST:PORT`.
    pub prometheus: Option<String>,
    /// `--textfile PATH`.
    pub textfile: Option<std::path::PathBuf>,
    /// `--pushgateway URL`.
    pub pushgateway: Option<String>,
    /// `--push-interval`.
    #[serde(default, deserialize_with = "some_duration")]
    pub push_interval: Option<Duration>,
    /// `--otlp URL`.
    pub otlp: Option<String>,
    /// `--otlp-interval`.
    #[serde(default = "default_otlp_interval", deserialize_with = "duration")]
    pub otlp_interval: Duration,
    /// `--metrics-top N`.
    #[serde(default = "default_metrics_top")]
    pub metrics_top: usize,
    /// How often every process is sampled (`pmet agent --interval`).
    #[serde(default, deserialize_with = "some_interval")]
    pub interval: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prometheus: None,
            textfile: None,
            pushgateway: None,
            push_interval: None,
            otlp: None,
            otlp_interval: DEFAULT_OTLP_INTERVAL,
            metrics_top: DEFAULT_METRICS_TOP,
            interval: None,
        }
    }
}

fn default_otlp_interval() -> Duration {
    DEFAULT_OTLP_INTERVAL
}

fn default_metrics_top() -> usize {
    DEFAULT_METRICS_TOP
}

/// A duration in a config file, read as on the command line.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    crate::units::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
}

fn some_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A sampling interval in a config file, read as `--interval` is.
fn some_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    crate::units::parse_interval(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
}

/// A config file is a few lines of TOML: anything larger is a mistake.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Settings {
    /// Whether any exporter is asked for.
    pub fn any(&self) -> bool {
        self.prometheus.is_some()
            || self.textfile.is_some()
            || self.pushgateway.is_some()
            || self.otlp.is_some()
    }

    /// Reads a `--config` file as the invoking user (`creds`; pmet itself
    /// with `None`), at most [`MAX_CONFIG_BYTES`]; the error names the file
    /// and what is wrong.
    pub fn read(
        path: &std::path::Path,
        creds: Option<&crate::privileges::Credentials>,
    ) -> Result<Self, String> {
        let bad = |e: &dyn std::fmt::Display| format!("--config {}: {e}", path.display());
        let bytes =
            crate::userfile::read_user(path, creds, MAX_CONFIG_BYTES).map_err(|e| bad(&e))?;
        let text = String::from_utf8(bytes).map_err(|_| bad(&"it is not UTF-8 text"))?;
        Self::parse(&text).map_err(|e| bad(&e))
    }

    /// Parses a config file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Self = toml::from_str(text).map_err(|e| {
            // toml's message spans lines (a snippet of the file): one line.
            e.message().to_owned()
                + &e.span()
                    .map(|r| {
                        let line = text[..r.start].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default()
        })?;
        s.check_for_agent(false)?;
        Ok(s)
    }

    /// What `pmet agent` needs: an exporter, and a push interval to push
    /// while it runs (it may run for weeks). `flags`: name them as the
    /// command line does, else as the config file does.
    pub fn check_for_agent(&self, flags: bool) -> Result<(), String> {
        let name = |key: &str| {
            if flags {
                format!("--{}", key.replace('_', "-"))
            } else {
                key.to_owned()
            }
        };
        if !self.any() {
            return Err(if flags {
                "no exporter is given: add --prometheus HOST:PORT, --otlp URL, --pushgateway URL with --push-interval, --textfile PATH, or --config FILE".into()
            } else {
                "no exporter is given: set prometheus, otlp, pushgateway (with push_interval) or textfile".into()
            });
        }
        if self.pushgateway.is_some() && self.push_interval.is_none() {
            return Err(format!(
                "{} needs {}: pmet agent pushes while it runs",
                name("pushgateway"),
                name("push_interval")
            ));
        }
        if let Some(g) = &self.pushgateway {
            Gateway::parse(g)?;
        }
        Ok(())
    }
}

/// Who takes the published figures. A process's own series go once every
/// reader in use has taken them after its final values were published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A scrape of `/metrics`.
    Scrape = 0,
    /// An OTLP collection.
    Otlp = 1,
    /// A push to the Pushgateway.
    Push = 2,
}

/// What the endpoint serves, and how many times each reader has taken it;
/// the rows behind it, for OTLP.
#[derive(Clone, Default)]
pub struct Published {
    text: Arc<Mutex<String>>,
    rows: Arc<Mutex<(Vec<Row>, TreeFigures)>>,
    reads: Arc<[AtomicU64; 3]>,
    readers: Arc<[AtomicBool; 3]>,
}

impl Published {
    /// The exposition now.
    pub fn text(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Says whether `r` takes the figures (a reload may change it).
    pub fn uses(&self, r: Reader, yes: bool) {
        self.readers[r as usize].store(yes, Ordering::Relaxed);
    }

    /// Counts a read by `r`, made before it takes the figures: a read that
    /// races an update is counted as older than it is, never newer.
    fn read_by(&self, r: Reader) {
        self.reads[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn reads(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.reads[i].load(Ordering::Relaxed))
    }

    /// Every reader in use has read since `at`.
    fn read_since(&self, at: [u64; 3]) -> bool {
        let now = self.reads();
        (0..3).all(|i| !self.readers[i].load(Ordering::Relaxed) || now[i] > at[i])
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

/// How busy a process has been, to rank the ones competing for a slot:
/// CPU seconds, then a second's worth for each MiB it moved (disk or
/// network).
fn activity(p: &Proc, ticks_per_s: u64, kernel_io: bool) -> f64 {
    let f = figures(p, ticks_per_s, kernel_io);
    let cpu = f.cpu.map_or(0.0, |(u, s)| u + s);
    let disk = f.disk.map_or(0, |d| d.read + d.write);
    let net = p.net.tcp.tx_bytes + p.net.tcp.rx_bytes + p.net.udp.tx_bytes + p.net.udp.rx_bytes;
    cpu + (disk + net) as f64 / f64::from(1 << 20)
}

/// Builds the exposition from the tree at each sample.
pub struct Exporter {
    published: Published,
    top: usize,
    /// Processes with series of their own, and the readers' counts when
    /// their final values were first published (`None` while alive).
    own: HashMap<(u32, u64), Option<[u64; 3]>>,
    /// Processes whose own series are gone (exited and read).
    retired: HashSet<(u32, u64)>,
    shown: HashMap<(u32, u64), Shown>,
    /// The sums by executable name of the summed processes the session has
    /// forgotten ([`Exporter::forget`]): what they added stays.
    gone: HashMap<String, Row>,
    /// Container ids by cgroup id, looked up once each.
    containers: HashMap<u64, Option<String>>,
    /// The tree's GPU figures are known (a GPU source is looking).
    gpu_known: bool,
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
            gone: HashMap::new(),
            gpu_known: false,
            containers: HashMap::new(),
        }
    }

    /// What the endpoint serves.
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    /// Processes first seen from now on get series of their own while fewer
    /// than `top` have them (a reload; those that have them keep them).
    pub fn set_top(&mut self, top: usize) {
        self.top = top;
    }

    /// Whether the session may forget `p` (ended, its final figures taken
    /// in by an update): its own series have been read, or it is summed
    /// under its name.
    pub fn forgettable(&self, p: &Proc) -> bool {
        let key = (p.pid, p.cookie);
        self.retired.contains(&key)
            || (!self.own.contains_key(&key) && self.shown.contains_key(&key))
    }

    /// The session forgot these processes: the summed ones' final figures
    /// stay in their names' sums.
    pub fn forget<'a>(
        &mut self,
        procs: impl IntoIterator<Item = &'a Proc>,
        ticks_per_s: u64,
        kernel_io: bool,
        ebpf: bool,
    ) {
        for p in procs {
            let key = (p.pid, p.cookie);
            if !self.retired.remove(&key) && !self.own.contains_key(&key) {
                let row = self.row(p, ticks_per_s, kernel_io, ebpf);
                let sum = self
                    .gone
                    .entry(row.exe.clone())
                    .or_insert_with(|| Row::summed(&row.exe, ebpf));
                sum.add(&row);
            }
            self.shown.remove(&key);
        }
    }

    fn container_of(&mut self, p: &Proc) -> Option<String> {
        let id = p.ids?.cgroup_id;
        self.containers
            .entry(id)
            .or_insert_with(|| container_of_cgroup(id))
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
            gpu: self.gpu_known.then(|| {
                if p.alive() {
                    (p.gpu.now.0, p.gpu.now.1 / 100.0)
                } else {
                    (0, 0.0)
                }
            }),
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
        self.gpu_known = tree.gpu_known;
        // Exited processes whose final values every reader has taken give
        // their slot back.
        let done: Vec<_> = self
            .own
            .iter()
            .filter(|(_, at)| at.is_some_and(|at| self.published.read_since(at)))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            self.own.remove(&k);
            self.retired.insert(k);
        }
        // Free slots go to the processes seen for the first time now, the
        // most active first (one that has already exited too: its final
        // values are shown to every reader once).
        let free = self.top.saturating_sub(self.own.len());
        if free > 0 {
            let mut new: Vec<(f64, (u32, u64))> = tree
                .procs
                .iter()
                .map(|p| (p, (p.pid, p.cookie)))
                // Not shown yet: new (a retired process was shown).
                .filter(|(_, k)| !self.shown.contains_key(k))
                .map(|(p, k)| (activity(p, ticks_per_s, kernel_io), k))
                .collect();
            new.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, k) in new.into_iter().take(free) {
                self.own.insert(k, None);
            }
        }
        let mut rows = Vec::new();
        let mut others = self.gone.clone();
        let mut now_final = Vec::new();
        for p in &tree.procs {
            let key = (p.pid, p.cookie);
            if self.retired.contains(&key) {
                continue;
            }
            let row = self.row(p, ticks_per_s, kernel_io, ebpf);
            match self.own.get(&key) {
                Some(at) => {
                    if !p.alive() && at.is_none() {
                        now_final.push(key);
                    }
                    rows.push(row);
                }
                None => others
                    .entry(row.exe.clone())
                    .or_insert_with(|| Row::summed(&row.exe, ebpf))
                    .add(&row),
            }
        }
        let mut others: Vec<Row> = others.into_values().collect();
        others.sort_by(|a, b| a.exe.cmp(&b.exe));
        rows.extend(others);
        let figures = TreeFigures {
            seen: tree.seen_count(),
            alive: tree.alive_count() as u64,
            lost,
            held: tree.procs.len() as u64,
        };
        let text = exposition(&rows, figures);
        if let Ok(mut t) = self.published.text.lock() {
            *t = text;
        }
        if let Ok(mut r) = self.published.rows.lock() {
            *r = (rows, figures);
        }
        // Counted from after publishing: a read must come later still.
        let at = self.published.reads();
        for k in now_final {
            self.own.insert(k, Some(at));
        }
    }
}

/// The exporters' endpoints, checked and opened before anything is
/// launched (and, at a reload, before anything running is replaced), so a
/// request that cannot succeed changes nothing.
#[derive(Debug, Default)]
pub struct Endpoints {
    listener: Option<std::net::TcpListener>,
    textfile: Option<Output>,
    gateway: Option<Gateway>,
}

impl Endpoints {
    /// Opens what `x` asks for, files as `owner`. `running`: the settings
    /// in use (a reload), whose unchanged address is not bound again.
    pub fn open(
        x: &Settings,
        owner: Option<&Credentials>,
        running: Option<&Settings>,
    ) -> Result<Self, Error> {
        let listener = match &x.prometheus {
            Some(addr) if running.is_none_or(|r| r.prometheus.as_ref() != Some(addr)) => {
                let listen = |source| Error::Listen {
                    addr: addr.clone(),
                    source,
                };
                let l = std::net::TcpListener::bind(addr.as_str()).map_err(listen)?;
                l.set_nonblocking(true).map_err(listen)?;
                Some(l)
            }
            _ => None,
        };
        let textfile = x
            .textfile
            .as_ref()
            .map(|p| OutputTarget::File(p.clone()).prepare(owner, "--textfile"))
            .transpose()?;
        let gateway = x
            .pushgateway
            .as_deref()
            .map(Gateway::parse)
            .transpose()
            .map_err(Error::Usage)?;
        Ok(Self {
            listener,
            textfile,
            gateway,
        })
    }
}

/// A session's exporters at work: the exposition kept up to date, served,
/// written, pushed and sent; a reload swaps the endpoints that changed.
pub struct Running {
    /// Builds what is published.
    pub exporter: Exporter,
    settings: Settings,
    host: String,
    serve: Option<tokio::task::JoinHandle<()>>,
    textfile: Option<Output>,
    /// A textfile write failed (said once).
    failed: bool,
    /// Exports that failed, for the report.
    pub errors: u64,
    pusher: Option<Pusher>,
    last_push: std::time::Instant,
    otlp: Option<Otlp>,
}

impl Running {
    /// Starts the exporters `x` asks for (inside the session's runtime).
    pub fn start(x: Settings, ends: Endpoints, host: String) -> Result<Self, Error> {
        let mut r = Self {
            exporter: Exporter::new(x.metrics_top),
            // Nothing running yet: `apply` starts what `x` asks for.
            settings: Settings::default(),
            host,
            serve: None,
            textfile: None,
            failed: false,
            errors: 0,
            pusher: None,
            last_push: std::time::Instant::now(),
            otlp: None,
        };
        r.apply(x, ends)?;
        Ok(r)
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Puts `x` in place: what changed is stopped (a pending push or OTLP
    /// export is finished first) and started anew; the rest keeps running.
    /// The counters carry on: a reload is not a restart for Prometheus.
    pub fn apply(&mut self, x: Settings, ends: Endpoints) -> Result<(), Error> {
        let published = self.exporter.published();
        if x.prometheus != self.settings.prometheus {
            if let Some(h) = self.serve.take() {
                h.abort();
            }
            if let (Some(l), Some(addr)) = (ends.listener, &x.prometheus) {
                let l = TcpListener::from_std(l).map_err(|source| Error::Listen {
                    addr: addr.clone(),
                    source,
                })?;
                self.serve = Some(tokio::spawn(serve(l, published.clone())));
            }
        }
        self.textfile = ends.textfile;
        if x.pushgateway != self.settings.pushgateway {
            if let Some(p) = self.pusher.take() {
                let text = published.text();
                self.said(p.finish(&text));
            }
            self.pusher = ends
                .gateway
                .map(|g| Pusher::start(g, self.host.clone(), published.clone()));
        }
        if (&x.otlp, x.otlp_interval) != (&self.settings.otlp, self.settings.otlp_interval) {
            if let Some(o) = self.otlp.take() {
                self.said(o.finish());
            }
            self.otlp = x
                .otlp
                .clone()
                .map(|url| Otlp::start(url, x.otlp_interval, published.clone(), self.host.clone()));
        }
        published.uses(Reader::Scrape, self.serve.is_some());
        published.uses(Reader::Push, self.pusher.is_some());
        published.uses(Reader::Otlp, self.otlp.is_some());
        self.exporter.set_top(x.metrics_top);
        self.settings = x;
        Ok(())
    }

    fn said(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.errors += 1;
            crate::say!("pmet: warning: {e}; the report is written all the same");
        }
    }

    /// After an update of the exporter: the textfile is rewritten, and a
    /// push made when one is due.
    pub fn published_anew(&mut self) {
        if let (Some(p), Some(every)) = (&self.pusher, self.settings.push_interval)
            && self.last_push.elapsed() >= every
        {
            p.push(&self.exporter.published().text());
            self.last_push = std::time::Instant::now();
        }
        if let Some(t) = &self.textfile {
            // node_exporter's textfile collector reads the classic text
            // format, as the Pushgateway does.
            let text = classic(&self.exporter.published().text());
            if let Err(e) = t.write_with(|w| w.write_all(text.as_bytes())) {
                self.errors += 1;
                if !self.failed {
                    self.failed = true;
                    crate::say!(
                        "pmet: warning: --textfile: {e}; the report is written all the same"
                    );
                }
                // A FIFO whose reader took nothing for the whole patience is
                // given up: waiting it out at every sample would stall the
                // trace each time.
                if matches!(&e, Error::Output { source, .. } if source.kind() == std::io::ErrorKind::TimedOut)
                {
                    crate::say!("pmet: warning: --textfile: its reader is gone; no longer written");
                    self.textfile = None;
                }
            }
        }
    }

    /// The last word to the Pushgateway and the OTLP endpoint, waited for
    /// (a CI job's figures). A failure is said and counted; it never
    /// changes the command's status.
    pub fn finish(&mut self) {
        let text = self.exporter.published().text();
        if let Some(p) = self.pusher.take() {
            let r = p.finish(&text);
            self.said(r);
        }
        if let Some(o) = self.otlp.take() {
            let r = o.finish();
            self.said(r);
        }
        if let Some(h) = self.serve.take() {
            h.abort();
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
                published.read_by(Reader::Scrape);
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
            let _gpu_mem = meter
                .i64_observable_up_down_counter("process.gpu.memory.usage")
                .with_unit("By")
                .with_description("GPU memory the process holds, all devices together")
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        for row in &r.0 {
                            if let Some((m, _)) = row.gpu {
                                o.observe(m as i64, &who(row));
                            }
                        }
                    }
                })
                .build();
            let rows = published.rows.clone();
            let _gpu_util = meter
                .f64_observable_gauge("process.gpu.utilization")
                .with_unit("1")
                .with_description(
                    "SM (or busiest engine) utilisation of the process, 1 for a whole GPU",
                )
                .with_callback(move |o| {
                    if let Ok(r) = rows.lock() {
                        for row in &r.0 {
                            if let Some((_, u)) = row.gpu {
                                o.observe(u, &who(row));
                            }
                        }
                    }
                })
                .build();
            let rows = published.rows.clone();
            let reads = published.clone();
            let _seen = meter
                .u64_observable_counter("pmet.processes.seen")
                .with_description("Processes of the traced scope seen so far")
                .with_callback(move |o| {
                    // One collection, counted once (this instrument is one
                    // of several read in it).
                    reads.read_by(Reader::Otlp);
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
    pub fn start(gateway: Gateway, instance: String, published: Published) -> Self {
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
                    Some(b) => {
                        published.read_by(Reader::Push);
                        last = gateway.push(&instance, &b);
                    }
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
    fn the_shipped_agent_config_is_valid_and_mistakes_are_named() {
        let s = Settings::parse(include_str!("../../contrib/agent.toml")).unwrap();
        assert_eq!(s.prometheus.as_deref(), Some("0.0.0.0:9464"));
        assert_eq!(s.interval, Some(Duration::from_secs(5)));
        assert_eq!(s.otlp_interval, DEFAULT_OTLP_INTERVAL);
        let err = |t: &str| Settings::parse(t).unwrap_err();
        assert_eq!(
            err("otlp = \"http://c:4318/v1/metrics\"\ninterval = \"soon\"\n"),
            "`soon`: expected number at 0 (try 30s, 5m or 1h30m) (line 2)"
        );
        // As on the command line: bare seconds, and no interval under 10 ms.
        let s = Settings::parse("otlp = \"http://c:4318\"\notlp_interval = \"2.5\"\n").unwrap();
        assert_eq!(s.otlp_interval, Duration::from_millis(2500));
        assert_eq!(
            err("otlp = \"http://c:4318\"\ninterval = \"1ms\"\n"),
            "`1ms`: must be at least 10ms (line 2)"
        );
        assert!(err("metrics_top = 5\n").starts_with("no exporter is given"));
        assert_eq!(
            err("pushgateway = \"http://pg:9091\"\n"),
            "pushgateway needs push_interval: pmet agent pushes while it runs"
        );
        assert!(err("prometheus = \":1\"\nprometheus = \":2\"\n").contains("line 2"));
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
        // The two most active (the server and the curl that fetched the
        // big file) have their own series; the others are summed under
        // their names.
        assert_eq!(
            pids(&text, "process_memory_usage_bytes"),
            ["", "1001", "1002"]
        );
        for exe in ["sh", "curl", "grep", "sleep"] {
            assert!(
                text.contains(&format!(
                    "process_memory_usage_bytes{{process_pid=\"\",process_parent_pid=\"\",process_executable_name=\"{exe}\""
                )),
                "{exe}: {text}"
            );
        }
        // The big fetch on its own; the other curl summed under its name.
        let rx = |who: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("process_network_io_bytes_total")
                        && l.contains(who)
                        && l.contains("network_io_direction=\"receive\",network_transport=\"tcp\"")
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        let (own, summed) = (
            rx("process_pid=\"1002\"").unwrap(),
            rx("process_pid=\"\",process_parent_pid=\"\",process_executable_name=\"curl\"")
                .unwrap(),
        );
        assert_eq!(own + summed, 10747904, "{text}");
        assert!(own > summed);
        // Both own processes have exited: once a scrape has seen their
        // final values, their series go and their slots are free; the sums
        // keep everything they had.
        x.published.uses(Reader::Scrape, true);
        x.published.read_by(Reader::Scrape);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert_eq!(pids(&text, "process_memory_usage_bytes"), [""]);
        assert!(text.contains("pmet_processes_seen_total 6"), "{text}");
    }

    #[test]
    fn forgotten_processes_leave_their_sums_and_counts_unchanged() {
        let (mut tree, _) = fixture::web_job();
        let mut x = Exporter::new(2);
        x.published.uses(Reader::Scrape, true);
        x.update(&tree, 100, true, true, 0);
        // The summed series and the count of processes seen (in any order:
        // a family's series come in hash order).
        let sums = |text: &str| -> Vec<String> {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| l.contains("process_pid=\"\"") || l.starts_with("pmet_processes_seen"))
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        let before = sums(&x.published().text());
        // The two with series of their own have not been scraped since
        // they ended: only the summed ones may go.
        let gone = tree.prune(100, true, |p| x.forgettable(p));
        assert_eq!(
            gone.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [1003, 1004, 1005]
        );
        x.forget(gone.iter().map(|p| &**p), 100, true, true);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert_eq!(sums(&text), before);
        // The root (which never goes) and the two with series of their own.
        assert!(text.contains("pmet_processes_held 3"), "{text}");
        // Scraped: those two go as well, and the totals stay.
        x.published.read_by(Reader::Scrape);
        x.update(&tree, 100, true, true, 0);
        let gone = tree.prune(100, true, |p| x.forgettable(p));
        assert_eq!(gone.iter().map(|p| p.pid).collect::<Vec<_>>(), [1001, 1002]);
        x.forget(gone.iter().map(|p| &**p), 100, true, true);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert!(text.contains("pmet_processes_seen_total 6"), "{text}");
        assert!(text.contains("pmet_processes_held 1"), "{text}");
        assert_eq!(tree.gone.procs, 5);
    }
}
