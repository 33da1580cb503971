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
    render::openmetrics::{Counters, Exposed, Group, GroupBy, Row, TreeFigures, exposition},
    report::{Output, OutputTarget},
};

/// Processes with series of their own unless `--metrics-top` says otherwise.
pub const DEFAULT_METRICS_TOP: usize = 50;

/// The same for `pmet agent`: none. On a host, slots freed by ended
/// processes go to new ones, and each new pid is a new series (10,674 in
/// 101 s on a busy host); the groups' series hold steady.
pub const AGENT_METRICS_TOP: usize = 0;

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
    /// `--push-job`: the grouping key's `job`.
    #[serde(default = "default_push_job")]
    pub push_job: String,
    /// `--push-label KEY=VALUE`: more of the grouping key (`instance` is
    /// the host's name unless given here).
    #[serde(default)]
    pub push_labels: std::collections::BTreeMap<String, String>,
    /// `--otlp URL`.
    pub otlp: Option<String>,
    /// `--otlp-interval`.
    #[serde(default = "default_otlp_interval", deserialize_with = "duration")]
    pub otlp_interval: Duration,
    /// `--metrics-top N`.
    #[serde(default = "default_agent_metrics_top")]
    pub metrics_top: usize,
    /// `--metrics-by`.
    #[serde(default)]
    pub metrics_by: GroupBy,
    /// `--metrics-groups N`.
    #[serde(default = "default_metrics_groups")]
    pub metrics_groups: usize,
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
            push_job: default_push_job(),
            push_labels: Default::default(),
            otlp: None,
            otlp_interval: DEFAULT_OTLP_INTERVAL,
            metrics_top: DEFAULT_METRICS_TOP,
            metrics_by: GroupBy::Name,
            metrics_groups: DEFAULT_METRICS_GROUPS,
            interval: None,
        }
    }
}

fn default_push_job() -> String {
    "pmet".into()
}

fn default_otlp_interval() -> Duration {
    DEFAULT_OTLP_INTERVAL
}

fn default_agent_metrics_top() -> usize {
    AGENT_METRICS_TOP
}

fn default_metrics_groups() -> usize {
    DEFAULT_METRICS_GROUPS
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
        if !(1..=MAX_METRICS_GROUPS).contains(&s.metrics_groups) {
            return Err(format!(
                "metrics_groups = {}: give 1 to {MAX_METRICS_GROUPS}",
                s.metrics_groups
            ));
        }
        if s.metrics_top > MAX_METRICS_GROUPS {
            return Err(format!(
                "metrics_top = {}: give 0 to {MAX_METRICS_GROUPS}",
                s.metrics_top
            ));
        }
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
        for k in self.push_labels.keys() {
            check_push_label(k)?;
        }
        if self.push_job.is_empty() {
            return Err(format!(
                "{} is empty: give the job a name",
                name("push_job")
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
    rows: Arc<Mutex<Exposed>>,
    reads: Arc<[AtomicU64; 3]>,
    readers: Arc<[AtomicBool; 3]>,
}

impl Published {
    /// The exposition now.
    pub fn text(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The exposition now, with `label` on every series.
    pub fn text_labelled(&self, label: (&str, &str)) -> String {
        self.rows
            .lock()
            .map(|e| exposition(&e, Some(label)))
            .unwrap_or_default()
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
/// exit brings by a tick), and where it is summed.
#[derive(Clone, Copy, Default)]
struct Shown {
    user: f64,
    system: f64,
    /// The same as integers, with the network bytes.
    counters: Counters,
    /// Its group now, and what it had when it joined it (counted in the
    /// group it left).
    group: usize,
    joined: Counters,
    /// The readers' counts when its own series were first published.
    born: Option<[u64; 3]>,
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

/// A row as a new series shows it before every reader has taken it at
/// zero: its counters 0, its gauges as they are.
fn unborn(row: Row) -> Row {
    Row {
        cpu_user_s: 0.0,
        cpu_system_s: 0.0,
        disk_read_bytes: 0,
        disk_write_bytes: 0,
        net: row.net.map(|_| Default::default()),
        ..row
    }
}

/// The most groups, and processes with series of their own, one may ask
/// for (as on the command line).
pub const MAX_METRICS_GROUPS: usize = 100_000;

/// Groups of summed processes unless `--metrics-groups` says otherwise.
pub const DEFAULT_METRICS_GROUPS: usize = 500;

/// One group's figures that do not come from the tree as it is now.
struct GroupState {
    key: String,
    overflow: bool,
    /// What its processes added before they were forgotten or left it.
    gone: Counters,
    /// Processes that entered it.
    processes: u64,
    /// The readers' counts when its series were first published.
    born: Option<[u64; 3]>,
}

/// Builds the exposition from the tree at each sample.
pub struct Exporter {
    published: Published,
    top: usize,
    by: GroupBy,
    max_groups: usize,
    /// Processes with series of their own, and the readers' counts when
    /// their final values were first published (`None` while alive).
    own: HashMap<(u32, u64), Option<[u64; 3]>>,
    /// Processes whose own series are gone (exited and read).
    retired: HashSet<(u32, u64)>,
    shown: HashMap<(u32, u64), Shown>,
    /// Every group so far, and the index of each by its key (the overflow
    /// group is not in it).
    groups: Vec<GroupState>,
    group_of: HashMap<String, usize>,
    overflow: Option<usize>,
    /// Container ids by cgroup id, looked up once each.
    containers: HashMap<u64, Option<String>>,
    /// The tree's GPU figures are known (a GPU source is looking).
    gpu_known: bool,
    /// The run is over: what comes next is its last word.
    last: bool,
    /// The readers' counts when the totals were first published.
    born: Option<[u64; 3]>,
}

impl Exporter {
    /// An exporter giving at most `top` processes series of their own, and
    /// summing every process into at most `max_groups` groups by `by` (the
    /// rest together in one more).
    pub fn new(top: usize, by: GroupBy, max_groups: usize) -> Self {
        Self {
            published: Published::default(),
            top,
            by,
            max_groups,
            own: HashMap::new(),
            retired: HashSet::new(),
            shown: HashMap::new(),
            groups: Vec::new(),
            group_of: HashMap::new(),
            overflow: None,
            gpu_known: false,
            containers: HashMap::new(),
            last: false,
            born: None,
        }
    }

    /// The run is over: from the next update on, every process that had
    /// series of its own and is still held has them again, so the last
    /// textfile and push hold the report's processes, not only those that
    /// ended since the last read.
    pub fn last_word(&mut self) {
        self.last = true;
    }

    /// What the endpoint serves.
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    /// Processes first seen from now on get series of their own while fewer
    /// than `top` have them (a reload; those that have them keep them).
    /// The grouping stays as it started: regrouping would move figures
    /// between series, which Prometheus reads as resets.
    pub fn set_top(&mut self, top: usize) {
        self.top = top;
    }

    /// Whether the session may forget `p` (ended, its final figures taken
    /// in by an update): its own series have been read, or it has none.
    pub fn forgettable(&self, p: &Proc) -> bool {
        let key = (p.pid, p.cookie);
        self.retired.contains(&key)
            || (!self.own.contains_key(&key) && self.shown.contains_key(&key))
    }

    /// The session forgot these processes: what they added stays in their
    /// groups' sums and in the totals.
    pub fn forget<'a>(
        &mut self,
        procs: impl IntoIterator<Item = &'a Proc>,
        ticks_per_s: u64,
        kernel_io: bool,
        ebpf: bool,
    ) {
        for p in procs {
            let key = (p.pid, p.cookie);
            let (_, s) = self.look(p, ticks_per_s, kernel_io, ebpf);
            let mut added = s.counters;
            added.sub(&s.joined);
            self.groups[s.group].gone.add(&added);
            self.retired.remove(&key);
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

    /// The group a process of `key` goes in: its own while there is room.
    fn group_for(&mut self, key: String) -> usize {
        if let Some(&g) = self.group_of.get(&key) {
            return g;
        }
        let new = |groups: &mut Vec<GroupState>, key, overflow| {
            groups.push(GroupState {
                key,
                overflow,
                gone: Counters::default(),
                processes: 0,
                born: None,
            });
            groups.len() - 1
        };
        if self.group_of.len() < self.max_groups {
            let g = new(&mut self.groups, key.clone(), false);
            self.group_of.insert(key, g);
            g
        } else {
            *self
                .overflow
                .get_or_insert_with(|| new(&mut self.groups, String::new(), true))
        }
    }

    /// One process's row and what it shows, its counters never below what
    /// was shown before; it enters a group at its first look, and another
    /// when its group's key changes (an exec under a new name).
    fn look(&mut self, p: &Proc, ticks_per_s: u64, kernel_io: bool, ebpf: bool) -> (Row, Shown) {
        let f = figures(p, ticks_per_s, kernel_io);
        let container = self.container_of(p);
        let key = match self.by {
            GroupBy::Name => p.comm.clone(),
            GroupBy::Container => container.clone().unwrap_or_default(),
        };
        let group = self.group_for(key);
        let pkey = (p.pid, p.cookie);
        let first = !self.shown.contains_key(&pkey);
        let s = self.shown.entry(pkey).or_default();
        if let Some((u, sy)) = f.cpu {
            s.user = s.user.max(u);
            s.system = s.system.max(sy);
        }
        let net = |t: &crate::model::net::Traffic| [t.tx_bytes, t.rx_bytes];
        let now = Counters {
            // Whole nanoseconds: the figures are exact to the microsecond.
            cpu_ns: [s.user, s.system].map(|v| (v * 1e9).round() as u64),
            disk: f.disk.map_or([0; 2], |d| [d.read, d.written()]),
            net: ebpf.then(|| {
                let [a, b] = net(&p.net.tcp);
                let [c, d] = net(&p.net.udp);
                [a, b, c, d]
            }),
        };
        s.counters.max(&now);
        if first || s.group != group {
            if !first {
                let mut added = s.counters;
                added.sub(&s.joined);
                self.groups[s.group].gone.add(&added);
            }
            s.group = group;
            s.joined = if first {
                Counters::default()
            } else {
                s.counters
            };
            self.groups[group].processes += 1;
        }
        let s = *s;
        let row = Row {
            pid: p.pid,
            ppid: p.ppid,
            exe: p.comm.clone(),
            container,
            cpu_user_s: s.user,
            cpu_system_s: s.system,
            rss_bytes: if p.alive() {
                p.last_sample.map_or(0, |x| x.rss_bytes)
            } else {
                0
            },
            disk_read_bytes: s.counters.disk[0],
            disk_write_bytes: s.counters.disk[1],
            net: ebpf.then_some(p.net),
            gpu: self.gpu_known.then(|| {
                if p.alive() {
                    (p.gpu.now.0, p.gpu.now.1 / 100.0)
                } else {
                    (0, 0.0)
                }
            }),
        };
        (row, s)
    }

    /// Gives free slots to the processes seen for the first time now, the
    /// most active first (one that has already exited too: its final
    /// values are shown to every reader once); exited processes whose
    /// final values every reader has taken give theirs back first.
    fn assign_slots(&mut self, tree: &Tree, ticks_per_s: u64, kernel_io: bool) {
        let done: Vec<_> = (self.own.iter())
            .filter(|(_, at)| at.is_some_and(|at| self.published.read_since(at)))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            self.own.remove(&k);
            self.retired.insert(k);
        }
        let free = self.top.saturating_sub(self.own.len());
        if free == 0 {
            return;
        }
        let mut new: Vec<(f64, (u32, u64))> = (tree.procs.iter())
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

    /// Whether series first published at `born` show their values: every
    /// reader has taken them at zero (or the run is over). Until then a
    /// new series' counters read 0, so that Prometheus's `rate()` and
    /// `increase()`, which take a series' first value as its start, count
    /// all of it: a group born with a process that had already sent
    /// 233 kB would lose them.
    fn counts(&self, born: Option<[u64; 3]>) -> bool {
        self.last || born.is_some_and(|at| self.published.read_since(at))
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
        self.assign_slots(tree, ticks_per_s, kernel_io);
        // Every look first: one may move a process to another group, which
        // adds what it had to the group it left.
        let looks: Vec<_> = (tree.procs.iter())
            .map(|p| (p, self.look(p, ticks_per_s, kernel_io, ebpf)))
            .collect();
        let zero = Counters {
            net: ebpf.then_some([0; 4]),
            ..Counters::default()
        };
        let mut groups: Vec<Group> = (self.groups.iter())
            .map(|g| Group {
                key: g.key.clone(),
                overflow: g.overflow,
                sums: Counters {
                    net: g.gone.net.or(zero.net),
                    ..g.gone
                },
                processes: g.processes,
                ..Group::default()
            })
            .collect();
        let mut rows = Vec::new();
        let mut now_final = Vec::new();
        let mut rss_bytes = 0;
        for (p, (row, s)) in looks {
            let key = (p.pid, p.cookie);
            let g = &mut groups[s.group];
            let mut added = s.counters;
            added.sub(&s.joined);
            g.sums.add(&added);
            if p.alive() {
                g.alive += 1;
                g.rss_bytes += row.rss_bytes;
                rss_bytes += row.rss_bytes;
            }
            let counts = self.counts(s.born);
            if let Some(at) = self.own.get(&key) {
                // Final once shown as they are.
                if !p.alive() && at.is_none() && counts {
                    now_final.push(key);
                }
                rows.push(if counts { row } else { unborn(row) });
            } else if self.last && self.retired.contains(&key) {
                rows.push(row);
            }
        }
        let mut total = zero;
        for g in &groups {
            total.add(&g.sums);
        }
        if !self.counts(self.born) {
            total = zero;
        }
        for (g, st) in groups.iter_mut().zip(&self.groups) {
            if !self.counts(st.born) {
                g.sums = zero;
                g.processes = 0;
            }
        }
        let exposed = Exposed {
            rows,
            by: self.by,
            groups,
            total,
            rss_bytes,
            tree: TreeFigures {
                seen: tree.seen_count(),
                alive: tree.alive_count() as u64,
                lost,
                held: tree.procs.len() as u64,
            },
        };
        let text = exposition(&exposed, None);
        if let Ok(mut t) = self.published.text.lock() {
            *t = text;
        }
        if let Ok(mut r) = self.published.rows.lock() {
            *r = exposed;
        }
        // Counted from after publishing: a read must come later still.
        let at = self.published.reads();
        for k in now_final {
            self.own.insert(k, Some(at));
        }
        self.born.get_or_insert(at);
        for g in &mut self.groups {
            g.born.get_or_insert(at);
        }
        for k in self.own.keys() {
            if let Some(s) = self.shown.get_mut(k) {
                s.born.get_or_insert(at);
            }
        }
    }
}

/// Checks `--prometheus ADDR` before binding it: a malformed address is a
/// usage error, and a user who is not root (`uid`, the invoking user under
/// sudo) gets no port below `ip_unprivileged_port_start` (1024) through
/// pmet: binding one is root's to give, not a tracer's.
fn check_listen_address(addr: &str, uid: Option<u32>) -> Result<(), Error> {
    use std::net::ToSocketAddrs as _;
    let bad = |why: &str| {
        Error::Usage(format!(
            "--prometheus {addr}: {why}; give HOST:PORT, e.g. 127.0.0.1:9464"
        ))
    };
    let Some((_, port)) = addr.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    addr.to_socket_addrs()
        .map_err(|e| bad(&format!("not an address ({e})")))?
        .next()
        .ok_or_else(|| bad("it names no address"))?;
    let unprivileged = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(1024);
    if let Some(uid) = uid
        && uid != 0
        && port != 0
        && u32::from(port) < unprivileged
    {
        return Err(Error::Usage(format!(
            "--prometheus {addr}: port {port} is privileged and you (uid {uid}) are not root; choose a port from {unprivileged} up"
        )));
    }
    Ok(())
}

/// The exporters' endpoints, checked and opened before anything is
/// launched (and, at a reload, before anything running is replaced), so a
/// request that cannot succeed changes nothing.
#[derive(Debug, Default)]
pub struct Endpoints {
    listener: Option<std::net::TcpListener>,
    textfile: Option<Output>,
    gateway: Option<Gateway>,
    otlp: Option<OtlpTarget>,
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
                check_listen_address(addr, owner.map(|c| c.uid))?;
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
        let otlp = (x.otlp.as_deref())
            .map(OtlpTarget::parse)
            .transpose()
            .map_err(Error::Usage)?;
        Ok(Self {
            listener,
            textfile,
            gateway,
            otlp,
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
            exporter: Exporter::new(x.metrics_top, x.metrics_by, x.metrics_groups),
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
        if (&x.pushgateway, &x.push_job, &x.push_labels)
            != (
                &self.settings.pushgateway,
                &self.settings.push_job,
                &self.settings.push_labels,
            )
        {
            if let Some(p) = self.pusher.take() {
                let text = published.text();
                self.said(p.finish(&text));
            }
            self.pusher = ends.gateway.map(|g| {
                let path = g.group_path(&x.push_job, &self.host, &x.push_labels);
                Pusher::start(g, path, published.clone())
            });
        }
        if (&x.otlp, x.otlp_interval) != (&self.settings.otlp, self.settings.otlp_interval) {
            if let Some(o) = self.otlp.take() {
                self.said(o.finish());
            }
            self.otlp = (ends.otlp)
                .map(|t| Otlp::start(t, x.otlp_interval, published.clone(), self.host.clone()));
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
            // format, as the Pushgateway does. Every series names the file:
            // node_exporter refuses a series two files both hold, and two
            // files in one directory have different names.
            let name = (self.settings.textfile.as_ref())
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = classic(
                &self
                    .exporter
                    .published()
                    .text_labelled(("pmet_textfile", &name)),
            );
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

/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 32;

/// Time a client has to send its request, and again to take the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` on `listener` until the session ends. Anyone who can
/// reach the address can read the figures (no secrets: no argv, no
/// environment); requests are bounded in size and time.
pub async fn serve(listener: TcpListener, published: Published) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // A descriptor held in reserve for when there are none left.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            // Out of descriptors: the pending connection stays queued, so
            // trying again at once would spin, and waiting would keep
            // every scrape behind it waiting too. The reserve lets one in
            // to be closed at once (refused), as nginx and libuv do.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                if reserve.take().is_some() {
                    let next = listener.accept();
                    if let Ok(Ok((c, _))) =
                        tokio::time::timeout(Duration::from_millis(10), next).await
                    {
                        drop(c);
                    }
                    reserve = std::fs::File::open("/dev/null").ok();
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    reserve = std::fs::File::open("/dev/null").ok();
                }
                continue;
            }
            // Out of memory, say: wait rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Beyond the limit a connection is closed at once (refused, not
        // held): idle clients cannot take every descriptor.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(conn);
            continue;
        };
        let published = published.clone();
        tokio::spawn(async move {
            let _slot = slot;
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
            if tokio::time::timeout(REQUEST_TIMEOUT, read).await.is_err() {
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
            // A client that does not read is dropped after the timeout,
            // with what it had not taken.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            })
            .await;
        });
    }
}

/// OTLP/HTTP (protobuf) metrics: what the Prometheus exposition shows,
/// under the semantic conventions' own names (`process.cpu.time`,
/// `process.memory.usage`, `process.disk.io`, `process.network.io`;
/// `pmet.*` for the totals, the groups and the tree), sent every
/// `interval` and once more at the end, on a thread of its own, away from
/// the session's async loop. Each request holds what is published now, no
/// more: a forgotten process is in no later request.
pub struct Otlp {
    done: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Otlp {
    /// Starts sending `published`'s figures to `target`, as `host` (with
    /// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` from pmet's
    /// environment).
    pub fn start(
        mut target: OtlpTarget,
        interval: Duration,
        published: Published,
        host: String,
    ) -> Self {
        use prost::Message as _;
        let var = |k| std::env::var(k).ok();
        if let Some(h) =
            var("OTEL_EXPORTER_OTLP_METRICS_HEADERS").or(var("OTEL_EXPORTER_OTLP_HEADERS"))
        {
            target.headers = crate::render::otlp::pairs(&h);
        }
        let resource = crate::render::otlp::host_resource(
            &host,
            var("OTEL_SERVICE_NAME").as_deref(),
            var("OTEL_RESOURCE_ATTRIBUTES").as_deref(),
        );
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let start_ns = unix_ns();
            let mut said = false;
            loop {
                let last = !matches!(
                    wait.recv_timeout(interval),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                // Counted before the figures are taken.
                published.read_by(Reader::Otlp);
                let body = published
                    .rows
                    .lock()
                    .map(|e| {
                        let t = crate::render::otlp::Times {
                            start_ns,
                            now_ns: unix_ns(),
                        };
                        crate::render::otlp::request(&e, &resource, t).encode_to_vec()
                    })
                    .map_err(|_| "the exporter's figures were lost".to_owned())?;
                let r = target.post(&body);
                if last {
                    return r;
                }
                if let Err(e) = r
                    && !said
                {
                    said = true;
                    crate::say!(
                        "pmet: warning: {e}; trying again every {}",
                        crate::units::duration(interval.as_secs_f64())
                    );
                }
            }
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
    // The classic format has no info type: an info family is the gauge
    // of its `_info` series, as Prometheus' own exporters write it.
    let infos: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" info"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|head| {
            let rest = l.strip_prefix(head)?;
            let (name, tail) = rest.split_once(' ')?;
            if infos.contains(name) {
                let tail = if *head == "# TYPE " { "gauge" } else { tail };
                return Some(format!("{head}{name}_info {tail}"));
            }
            counters
                .contains(name)
                .then(|| format!("{head}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// A label name of the Pushgateway's grouping key: Prometheus's rule,
/// without `job` (that is `--push-job`).
pub fn check_push_label(k: &str) -> Result<(), String> {
    let mut c = k.chars();
    let ok = c
        .next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with("__");
    if !ok || k == "job" {
        return Err(format!(
            "--push-label {k}: give a label name of letters, digits and _ (not job: that is --push-job)"
        ));
    }
    Ok(())
}

/// Where a Pushgateway is: `http://[USER:PASSWORD@]HOST:PORT[/PREFIX]`
/// (no TLS).
#[derive(Clone, PartialEq, Eq)]
pub struct Gateway {
    /// `HOST:PORT`.
    pub authority: String,
    /// Path prefix, without a trailing slash.
    pub prefix: String,
    /// `Authorization: Basic` credentials, encoded.
    auth: Option<String>,
}

impl std::fmt::Debug for Gateway {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("authority", &self.authority)
            .field("prefix", &self.prefix)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Gateway {
    /// Parses `--pushgateway URL`; the error names what to give instead
    /// (and never the password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let u = HttpUrl::parse("--pushgateway", url, "http://localhost:9091")?;
        Ok(Gateway {
            authority: u.authority.to_owned(),
            prefix: if u.path.is_empty() {
                String::new()
            } else {
                format!("/{}", u.path)
            },
            auth: u.auth,
        })
    }

    /// The path of the group `job`, `instance` and `labels`, each value
    /// base64url-encoded as the Pushgateway reads `KEY@base64/VALUE` (a
    /// value may hold `/`, or be empty), and the group as it is said.
    pub fn group_path(
        &self,
        job: &str,
        instance: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> (String, String) {
        use base64::Engine as _;
        let enc = |v: &str| {
            let v = base64::engine::general_purpose::URL_SAFE.encode(v);
            // The gateway reads an empty value as `=`.
            if v.is_empty() { "=".to_owned() } else { v }
        };
        let instance = labels.get("instance").map_or(instance, String::as_str);
        let mut path = format!(
            "{}/metrics/job@base64/{}/instance@base64/{}",
            self.prefix,
            enc(job),
            enc(instance)
        );
        let mut said = format!("job={job:?}, instance={instance:?}");
        for (k, v) in labels.iter().filter(|(k, _)| *k != "instance") {
            path += &format!("/{k}@base64/{}", enc(v));
            said += &format!(", {k}={v:?}");
        }
        (path, crate::render::openmetrics::label_text(&said))
    }

    /// Replaces the group at `group` (its path, and as it is said) with
    /// `body`.
    pub fn push(&self, group: &(String, String), body: &str) -> Result<(), String> {
        let (path, said) = group;
        let fail = |what: String| {
            format!(
                "pushing to http://{}{} ({said}): {what}",
                self.authority, self.prefix
            )
        };
        let auth = self.auth.as_ref().map(|a| format!("Basic {a}"));
        let headers: Vec<(&str, &str)> = (auth.iter())
            .map(|a| ("Authorization", a.as_str()))
            .collect();
        send(
            "PUT",
            &self.authority,
            path,
            "text/plain; version=0.0.4; charset=utf-8",
            &headers,
            body.as_bytes(),
        )
        .map_err(|e| fail(e.replace("the server", "the gateway")))
    }
}

/// An `http://[USER:PASSWORD@]HOST:PORT[/PATH]` exporter address, split.
struct HttpUrl<'a> {
    /// `HOST:PORT`.
    authority: &'a str,
    /// The path without its slashes at either end; empty when none.
    path: &'a str,
    /// `USER:PASSWORD`, percent-decoded and base64-encoded for
    /// `Authorization: Basic`.
    auth: Option<String>,
}

impl<'a> HttpUrl<'a> {
    /// Splits `url` given to `flag`; the error names what to give instead
    /// (`example`), and never the password.
    fn parse(flag: &str, url: &'a str, example: &str) -> Result<Self, String> {
        let said = redact_userinfo(url);
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{flag} {said}: give an http:// address, e.g. {example} (HTTPS is not supported yet)")
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (auth, authority) = match authority.rsplit_once('@') {
            Some((user, host)) => {
                use base64::Engine as _;
                let decoded = crate::render::otlp::percent_decode(user).ok_or_else(|| {
                    format!("{flag} {said}: the user or password is not percent-encoded UTF-8")
                })?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(decoded);
                (Some(encoded), host)
            }
            None => (None, authority),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!("{flag} {said}: give the port too, e.g. {example}"));
        }
        Ok(Self {
            authority,
            path: path.trim_matches('/'),
            auth,
        })
    }
}

/// `url` with any `user:password@` taken out, to be said.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((_, host)) => {
            let slash = if rest.contains('/') { "/" } else { "" };
            format!("{scheme}://<user>@{host}{slash}{path}")
        }
        None => url.to_owned(),
    }
}

/// The most of an answer read: its status line and the start of an error's
/// body. A server that streams an endless answer costs no more.
const MAX_ANSWER_BYTES: usize = 4096;

/// Time to connect, and then to send the request and read the answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one HTTP/1.1 request and reads at most [`MAX_ANSWER_BYTES`] of the
/// answer, within [`SEND_TIMEOUT`] in all; a status other than 2xx is an
/// error that quotes the status line and the start of the body.
fn send(
    method: &str,
    authority: &str,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + SEND_TIMEOUT;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {authority}: no address"))?;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    let _ = c.set_write_timeout(Some(left()));
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        // A value that could end the header and start another is left out.
        if !v.contains(['\r', '\n']) && !k.contains(['\r', '\n', ':']) {
            head += &format!("{k}: {v}\r\n");
        }
    }
    head += "\r\n";
    c.write_all(head.as_bytes())
        .and_then(|()| c.write_all(body))
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The status line first; an error's body up to the bound.
    while answer.len() < MAX_ANSWER_BYTES && std::time::Instant::now() < deadline {
        let _ = c.set_read_timeout(Some(left()));
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n.min(MAX_ANSWER_BYTES - answer.len())]),
            Err(e) if answer.is_empty() => return Err(format!("reading the answer: {e}")),
            Err(_) => break,
        }
        // A success is known from its status line alone.
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.") && text.split(' ').nth(1).is_some_and(|c| c.starts_with('2'))
        {
            return Ok(());
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default().trim();
    if status.is_empty() {
        return Err("the server closed the connection without answering".into());
    }
    let said: String = (text.split_once("\r\n\r\n").map_or("", |(_, b)| b).chars())
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    let said = said.trim();
    Err(if said.is_empty() {
        format!(
            "the server answered `{}`",
            crate::render::openmetrics::label_text(status)
        )
    } else {
        format!(
            "the server answered `{}`: {said}",
            crate::render::openmetrics::label_text(status)
        )
    })
}

/// Where OTLP goes: `http://HOST:PORT[/PATH]`, the path `/v1/metrics` when
/// none is given (as the OpenTelemetry SDKs complete
/// `OTEL_EXPORTER_OTLP_ENDPOINT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    /// `HOST:PORT`.
    pub authority: String,
    /// The request's path.
    pub path: String,
    /// Headers every request carries (`OTEL_EXPORTER_OTLP_HEADERS`: an
    /// API key, say).
    pub headers: Vec<(String, String)>,
}

impl OtlpTarget {
    /// Parses `--otlp URL`; the error names what to give instead (and
    /// never the password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let u = HttpUrl::parse("--otlp", url, "http://localhost:4318")?;
        Ok(Self {
            authority: u.authority.to_owned(),
            path: if u.path.is_empty() {
                "/v1/metrics".into()
            } else {
                format!("/{}", u.path)
            },
            // Basic auth from the URL, as for the Pushgateway.
            headers: (u.auth.into_iter())
                .map(|a| ("Authorization".to_owned(), format!("Basic {a}")))
                .collect(),
        })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }

    /// Posts one request's protobuf body.
    fn post(&self, body: &[u8]) -> Result<(), String> {
        let headers: Vec<(&str, &str)> = (self.headers.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        send(
            "POST",
            &self.authority,
            &self.path,
            "application/x-protobuf",
            &headers,
            body,
        )
        .map_err(|e| {
            format!(
                "--otlp {}: {}",
                self.url(),
                e.replace("the server", "the collector")
            )
        })
    }
}

/// Pushes on a thread of its own, so a slow gateway never stalls tracing:
/// the latest exposition replaces any not yet sent.
pub struct Pusher {
    tx: std::sync::mpsc::Sender<Option<String>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Pusher {
    /// Starts pushing to `gateway`'s `group` (see [`Gateway::group_path`]).
    pub fn start(gateway: Gateway, group: (String, String), published: Published) -> Self {
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
                        last = gateway.push(&group, &b);
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
        let om = "# HELP a_seconds What.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total{x=\"1\"} 2.5\n# HELP g A gauge.\n# TYPE g gauge\ng 3\n# HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP a_seconds_total What.\n# TYPE a_seconds_total counter\na_seconds_total{x=\"1\"} 2.5\n# HELP g A gauge.\n# TYPE g gauge\ng 3\n# HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n"
        );
    }

    #[test]
    fn the_shipped_agent_config_is_valid_and_mistakes_are_named() {
        let s = Settings::parse(include_str!("../../contrib/agent.toml")).unwrap();
        assert_eq!(s.prometheus.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(
            (s.metrics_by, s.metrics_groups, s.metrics_top),
            (GroupBy::Name, 500, 0)
        );
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
            err("prometheus = \":1\"\nmetrics_groups = 0\n"),
            "metrics_groups = 0: give 1 to 100000"
        );
        assert!(err("prometheus = \":1\"\nmetrics_by = \"pid\"\n").contains("name"));
        let push = "pushgateway = \"http://pg:9091\"\npush_interval = \"1m\"\n";
        let s = Settings::parse(&format!("{push}push_labels = {{ team = \"a/b\" }}\n")).unwrap();
        assert_eq!(s.push_labels["team"], "a/b");
        assert_eq!(s.push_job, "pmet");
        assert!(err(&format!("{push}push_labels = {{ job = \"x\" }}\n")).contains("--push-job"));
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
                prefix: "/base".into(),
                auth: None,
            }
        );
        let g = Gateway::parse("http://ci:p%40ss@pg:9091").unwrap();
        // base64("ci:p@ss")
        assert_eq!(g.auth.as_deref(), Some("Y2k6cEBzcw=="));
        assert!(!format!("{g:?}").contains("Y2k6"));
        assert_eq!(g.authority, "pg:9091");
        let labels = [("branch".to_owned(), "feature/x".to_owned())].into();
        assert_eq!(
            g.group_path("build", "host-a", &labels),
            (
                "/metrics/job@base64/YnVpbGQ=/instance@base64/aG9zdC1h/branch@base64/ZmVhdHVyZS94"
                    .into(),
                r#"job="build", instance="host-a", branch="feature/x""#.into()
            )
        );
        let err = Gateway::parse("https://ci:secret@pg:9091").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(check_push_label("job").is_err() && check_push_label("9x").is_err());
        assert!(check_push_label("run_id").is_ok());
        // OTLP reads its address the same way, and adds the SDKs' path.
        let o = OtlpTarget::parse("http://u:p@c:4318/").unwrap();
        assert_eq!(
            (o.authority.as_str(), o.path.as_str()),
            ("c:4318", "/v1/metrics")
        );
        assert_eq!(o.headers, [("Authorization".into(), "Basic dTpw".into())]);
        assert!(
            !OtlpTarget::parse("https://u:secret@c:4318")
                .unwrap_err()
                .contains("secret")
        );
        assert!(
            Gateway::parse("https://pg:9091")
                .unwrap_err()
                .contains("http://")
        );
        assert!(Gateway::parse("http://pg").unwrap_err().contains("port"));
    }

    /// The value of the one series that starts with `series`.
    fn val(text: &str, series: &str) -> f64 {
        let hits: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
        assert_eq!(hits.len(), 1, "{series}: {hits:?}\n{text}");
        hits[0].rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Every group, total and count series: what must never change when
    /// processes are forgotten (sorted: a family's series come in hash
    /// order).
    fn sums(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| {
                (l.starts_with("pmet_") && !l.starts_with("pmet_processes_held"))
                    && !l.contains("memory_usage")
                    && !l.contains("alive")
            })
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    const CURL_RX: &str = "pmet_group_network_io_bytes_total{process_executable_name=\"curl\",network_io_direction=\"receive\",network_transport=\"tcp\"}";
    const TOTAL_RX: &str =
        "pmet_network_io_bytes_total{network_io_direction=\"receive\",network_transport=\"tcp\"}";

    #[test]
    fn at_most_n_processes_have_series_and_every_process_is_in_its_group_and_the_totals() {
        let (tree, _) = fixture::web_job();
        let mut x = Exporter::new(2, GroupBy::Name, 100);
        x.published.uses(Reader::Scrape, true);
        x.update(&tree, 100, true, true, 0);
        // New series read 0 until a scrape has taken them so: Prometheus
        // counts from a series' first value.
        for _ in 0..2 {
            let text = x.published().text();
            assert_eq!(val(&text, CURL_RX), 0.0);
            assert_eq!(val(&text, TOTAL_RX), 0.0);
            assert_eq!(
                val(
                    &text,
                    "pmet_group_processes_total{process_executable_name=\"curl\"}"
                ),
                0.0
            );
            assert_eq!(
                val(&text, "pmet_cpu_time_seconds_total{cpu_mode=\"user\"}"),
                0.0
            );
            assert!(text.contains("pmet_processes_seen_total 6"), "{text}");
            x.update(&tree, 100, true, true, 0);
        }
        x.published.read_by(Reader::Scrape);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        // The two most active (the server and the curl that fetched the
        // big file) have their own series.
        assert_eq!(pids(&text, "process_memory_usage_bytes"), ["1001", "1002"]);
        let own_rx = val(
            &text,
            "process_network_io_bytes_total{process_pid=\"1002\",process_parent_pid=\"1000\",process_executable_name=\"curl\",container_id=\"\",network_io_direction=\"receive\",network_transport=\"tcp\"}",
        );
        // Both curls, the one with series of its own too, are in curl's
        // group; every process is in the totals.
        let want: u64 = (tree.procs.iter().filter(|p| p.comm == "curl"))
            .map(|p| p.net.tcp.rx_bytes)
            .sum();
        assert_eq!(want, 10747904);
        assert_eq!(val(&text, CURL_RX), want as f64);
        assert!(own_rx < want as f64 && own_rx > 0.0);
        let all: u64 = tree.procs.iter().map(|p| p.net.tcp.rx_bytes).sum();
        assert_eq!(val(&text, TOTAL_RX), all as f64);
        for (exe, n) in [("sh", 1.0), ("curl", 2.0), ("grep", 1.0), ("sleep", 1.0)] {
            let series = format!("pmet_group_processes_total{{process_executable_name=\"{exe}\"}}");
            assert_eq!(val(&text, &series), n, "{exe}");
        }
        // Both own processes have exited: once a scrape has seen their
        // final values, their series go and their slots are free; the
        // groups and totals keep everything they had.
        let before = sums(&text);
        x.published.read_by(Reader::Scrape);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert!(pids(&text, "process_memory_usage_bytes").is_empty());
        assert_eq!(sums(&text), before);
        assert!(text.contains("pmet_processes_seen_total 6"), "{text}");
        // The run's last word (its final textfile and push) has them again.
        x.last_word();
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert_eq!(pids(&text, "process_memory_usage_bytes"), ["1001", "1002"]);
        assert_eq!(sums(&text), before);
    }

    #[test]
    fn forgotten_processes_leave_their_sums_and_counts_unchanged() {
        let (mut tree, _) = fixture::web_job();
        let mut x = Exporter::new(2, GroupBy::Name, 100);
        x.published.uses(Reader::Scrape, true);
        x.update(&tree, 100, true, true, 0);
        x.published.read_by(Reader::Scrape);
        x.update(&tree, 100, true, true, 0);
        let before = sums(&x.published().text());
        assert!(
            before
                .iter()
                .any(|l| l.starts_with(CURL_RX) && !l.ends_with(" 0"))
        );
        // The two with series of their own have not been scraped since
        // they ended: only the others may go.
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
        // Scraped: those two go as well, and the sums stay.
        x.published.read_by(Reader::Scrape);
        x.update(&tree, 100, true, true, 0);
        let gone = tree.prune(100, true, |p| x.forgettable(p));
        assert_eq!(gone.iter().map(|p| p.pid).collect::<Vec<_>>(), [1001, 1002]);
        x.forget(gone.iter().map(|p| &**p), 100, true, true);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert_eq!(sums(&text), before);
        assert!(text.contains("pmet_processes_held 1"), "{text}");
        assert_eq!(tree.gone.procs, 5);
    }

    #[test]
    fn a_process_that_execs_under_a_new_name_leaves_its_old_group_what_it_had() {
        let (mut tree, _) = fixture::web_job_live();
        fixture::live_at(&mut tree, 1);
        let mut x = Exporter::new(0, GroupBy::Name, 100);
        // Shown at 0 first, then as they are (no reader to wait for).
        x.update(&tree, 100, true, true, 0);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        let serve_tx = "pmet_group_network_io_bytes_total{process_executable_name=\"python3\",network_io_direction=\"transmit\",network_transport=\"tcp\"}";
        assert_eq!(val(&text, serve_tx), 2e6);
        // The server execs another name (seen at the next look: what it
        // did until then is its old name's), then sends as much again.
        let i = tree.procs.iter().position(|p| p.pid == 1001).unwrap();
        tree.procs[i].comm = "serve2".into();
        x.update(&tree, 100, true, true, 0);
        fixture::live_at(&mut tree, 2);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        assert_eq!(val(&text, serve_tx), 2e6, "what it sent as serve");
        assert_eq!(val(&text, &serve_tx.replace("python3\"", "serve2\"")), 2e6);
        let total_tx = "pmet_network_io_bytes_total{network_io_direction=\"transmit\",network_transport=\"tcp\"}";
        assert_eq!(val(&text, total_tx), 4e6 + 150.0);
    }

    #[test]
    fn groups_beyond_the_limit_are_summed_together() {
        let (mut tree, _) = fixture::web_job();
        let mut x = Exporter::new(0, GroupBy::Name, 2);
        x.update(&tree, 100, true, true, 0);
        x.update(&tree, 100, true, true, 0);
        let text = x.published().text();
        let groups = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with("pmet_group_processes_total"))
                .count()
        };
        assert_eq!(groups(&text), 3, "{text}");
        let overflow = "pmet_group_processes_total{process_executable_name=\"\",otel_metric_overflow=\"true\"}";
        // sh and serve first (the tree's order); curl ×2, grep, sleep after.
        assert_eq!(val(&text, overflow), 4.0);
        // However many names come later, no more series.
        for p in &mut tree.procs {
            p.comm.push('x');
        }
        x.update(&tree, 100, true, true, 0);
        assert_eq!(groups(&x.published().text()), 3);
        let all: u64 = tree.procs.iter().map(|p| p.net.tcp.rx_bytes).sum();
        assert_eq!(val(&x.published().text(), TOTAL_RX), all as f64);
    }
}
