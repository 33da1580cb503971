//! The command line.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum, value_parser};
use clap_complete::Shell;

use crate::render::style::ColorChoice;
pub use crate::units::{MIN_INTERVAL, parse_duration, parse_interval};

/// Follows a program and its whole process tree, and tells the truth about
/// what it used.
#[derive(Debug, Parser)]
#[command(
    name = "pmet",
    version,
    about = "Follow a program and its whole process tree; report every process's CPU, memory, disk, threads and network, exactly",
    long_about = "pmet follows a program and every process it starts, even one that lives a \
millisecond, and reports what each used: CPU time, peak memory, disk I/O, threads, and \
TCP/UDP bytes sent and received, counted in the kernel to the byte.\n\n\
It needs root to load its eBPF programs: run it with sudo. Without root (or with --no-ebpf) it \
falls back to polling /proc, and says what it cannot know.",
    after_help = "Examples:\n  \
sudo pmet trace -- make -j8\n  \
sudo pmet trace -o report.json -- python3 server.py --port 8080\n  \
sudo pmet trace --pid 4242 --duration 30s\n  \
pmet completions bash > /etc/bash_completion.d/pmet"
)]
pub struct Cli {
    /// More detail on stderr (-v, -vv, -vvv).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print nothing but errors: no live view, no summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command (or attach to a process) and report what its tree used.
    #[command(
        after_long_help = "pmet exits with the traced command's exit status (128+N if signal N \
killed it), so `pmet trace -- cargo test` can stand in for `cargo test` in CI.\n\n\
On a terminal pmet shows a live view at the bottom of the screen while the command's own \
output scrolls above it; otherwise it prints only the final summary, or one line per sample \
with --format simple|jsonl. All of pmet's output goes to stderr (or --stream), never to the \
command's stdout.\n\n\
Under sudo, the command runs as the user who ran sudo (with their groups and HOME), not as \
root; --user chooses another user, --user root keeps root.\n\n\
Ctrl+C reaches the command as it would without pmet, and pmet waits for the tree to exit; a \
second Ctrl+C stops waiting. Either way the summary is printed and the report written.\n\n\
Examples:\n  \
sudo pmet trace -- ./build.sh\n  \
sudo pmet trace -o report.json -- python3 server.py --port 8080\n  \
sudo pmet trace --format jsonl --stream samples.jsonl -- cargo test\n  \
sudo pmet trace --pid 4242 --duration 30s -o attach.json\n  \
pmet trace --no-ebpf -- make     (no root: polling only, less exact)"
    )]
    Trace(Box<TraceArgs>),
    /// What uses this machine right now: every process on the host, ranked
    /// by CPU, memory, disk or network (exact per process, short-lived ones
    /// included); full screen on a terminal, JSON Lines otherwise.
    #[command(
        after_help = "Keys (full screen): c m d n sort by CPU, memory, disk, network; t tree; / filter by command text, user:NAME or container:ID; q quit.
Piped, or with --format jsonl: one JSON object per interval on standard output.

Examples:
  sudo pmet top
  sudo pmet top --sort net --limit 5 -d 10s | jq -c '.processes[] | [.pid, .comm, .net_tx_bytes_per_s]'
  sudo pmet top --format jsonl -i 2s > top.jsonl"
    )]
    Top(TopArgs),
    /// Export every process's figures host-wide for as long as it runs:
    /// a Prometheus endpoint, OTLP, a Pushgateway or a textfile. Memory
    /// follows the live processes: an ended process is forgotten once its
    /// final figures have been exported. SIGHUP re-reads --config.
    #[command(after_help = "Examples:
  sudo pmet agent --prometheus 127.0.0.1:9464
  sudo pmet agent --otlp http://collector:4318/v1/metrics --otlp-interval 30s
  sudo pmet agent --config /etc/pmet/agent.toml     (contrib/pmet-agent.service runs this)")]
    Agent(AgentArgs),
    /// Show a saved report (a file, or a run id from `pmet history`); export
    /// it as HTML, SVG, or a trace for Perfetto.
    #[command(after_help = "Examples:\n  \
pmet report report.json\n  \
pmet report report.json --html report.html --svg plots.svg\n  \
pmet report 42 --trace-events trace.json   (then open it in ui.perfetto.dev)")]
    Report(ReportArgs),
    /// Compare two reports (files or run ids); with --fail-if, a CI gate.
    #[command(after_help = "Limits (--fail-if), comma-separated:\n  \
METRIC>+N%      the relative change exceeds N percent\n  \
METRIC>+N<unit> the absolute change exceeds N (units: B KiB MiB GiB kB MB GB, ms s m h)\n  \
METRIC>N<unit>  the new value itself exceeds N\n  \
(also >=, < and <=)\n\
Metrics: duration, cpu, cpu_user, cpu_system, rss (the tree's sampled peak), max_rss (largest\n\
process peak), pss (the tree's peak with shared pages counted once), disk_read, disk_write,\n\
net_tx, net_rx, connections, failed_connections, retransmits, processes, failed, lost,\n\
gpu_memory (the processes' GPU memory peaks, summed), gpu_busy (SM-weighted GPU seconds).\n\
A limit whose figure is unknown in either report fails.\n\n\
Exit status: 0 within limits, 1 a limit breached, 2 bad arguments, 65 a report is damaged,\n\
66 a report file does not exist.\n\n\
Examples:\n  \
pmet diff base.json new.json\n  \
pmet diff base.json new.json --fail-if 'cpu>+10%,rss>+5%,net_tx>+1MiB,duration>+20%'\n  \
pmet diff 41 42 --format json")]
    Diff(DiffArgs),
    /// List runs recorded with `pmet trace --record`.
    History(HistoryArgs),
    /// Say what this kernel lets pmet measure, without tracing anything: the
    /// hooks that load for each capability, the ones that fell back and
    /// why, and what each missing piece needs. Exits non-zero when pmet
    /// would have to poll /proc.
    #[command(
        after_help = "Exit status: 0 when the kernel side loads (what a missing \
capability loses is said), 125 when pmet would poll /proc (not root, or no process hook loads).

Examples:
  sudo pmet check
  sudo pmet check --format json | jq '.hooks[] | [.capability, .via]'"
    )]
    Check(CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the man page (roff) to stdout.
    Man,
}

/// Options of `pmet report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A report file, or a run id from `pmet history`.
    pub source: String,
    /// Also write a self-contained HTML page with plots and the timeline.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Also write the plots and the timeline as one SVG picture.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Also write the run as Chrome/Perfetto trace-event JSON.
    #[arg(long, value_name = "FILE")]
    pub trace_events: Option<PathBuf>,
    /// When to use colors.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: ColorChoice,
}

/// Table or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    /// For people.
    Table,
    /// For tools.
    Json,
}

/// Options of `pmet check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// `text` (default) or `json`.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub format: String,
}

/// Options of `pmet diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The base: a report file or a run id.
    pub base: String,
    /// The new one: a report file or a run id.
    pub new: String,
    /// Fail (exit 1) when a limit is breached, e.g. `cpu>+10%,rss>+5%`.
    #[arg(long, value_name = "LIMITS")]
    pub fail_if: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: TableFormat,
}

/// Options of `pmet history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only runs of this command line.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Most runs to list.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: TableFormat,
}

/// What pmet prints while tracing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A live view redrawn in place (terminals only).
    Live,
    /// One plain line per sample.
    Simple,
    /// One JSON object per sample (JSON Lines).
    Jsonl,
    /// Nothing until the final summary.
    Summary,
}

impl From<Format> for crate::render::sink::SampleFormat {
    fn from(f: Format) -> Self {
        use crate::render::sink::SampleFormat as S;
        match f {
            Format::Live => S::Live,
            Format::Simple => S::Simple,
            Format::Jsonl => S::Jsonl,
            Format::Summary => S::Summary,
        }
    }
}

/// `pmet top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// What to rank processes by.
    #[arg(long, value_enum, default_value = "cpu")]
    pub sort: crate::render::top::TopSort,

    /// How many processes each line lists.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = value_parser!(u32).range(1..=100_000))]
    pub limit: u32,

    /// Stop after this long (default: until Ctrl-C).
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// How often to print a line.
    #[arg(short, long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// `jsonl`: one JSON object per interval on standard output, the
    /// default when standard output is not a terminal.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<TopFormat>,

    /// Write one line to FILE once pmet is watching (as `pmet trace
    /// --ready`).
    #[arg(long, value_name = "FILE")]
    pub ready: Option<PathBuf>,

    /// Exporters.
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Output formats of `pmet top`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopFormat {
    /// One JSON object per interval (JSON Lines).
    Jsonl,
}

/// Where the figures go while pmet runs: the exporters of `pmet trace`,
/// `pmet top` and `pmet agent`.
#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Exporters")]
pub struct ExportArgs {
    /// Serve the figures as OpenMetrics at http://ADDR/metrics while pmet
    /// runs, for Prometheus to scrape (e.g. 127.0.0.1:9464 or [::]:9464).
    #[arg(long, value_name = "HOST:PORT")]
    pub prometheus: Option<String>,

    /// Write the same exposition to PATH at every sample, atomically, for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,

    /// Push the exposition to a Prometheus Pushgateway at the end (and
    /// every --push-interval), as job="pmet", instance=<host name>: for CI
    /// jobs that end before any scrape.
    #[arg(long, value_name = "http://HOST:PORT")]
    pub pushgateway: Option<String>,

    /// With --pushgateway, also push this often while pmet runs.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "pushgateway")]
    pub push_interval: Option<Duration>,

    /// The Pushgateway group's job label (two jobs on one host keep apart).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "pmet",
        requires = "pushgateway"
    )]
    pub push_job: String,

    /// One more label of the Pushgateway group (repeat it), e.g.
    /// --push-label run=$CI_JOB_ID; instance=NAME replaces the host's name.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_push_label, requires = "pushgateway")]
    pub push_label: Vec<(String, String)>,

    /// Send the figures as OTLP/HTTP protobuf metrics to this endpoint
    /// (e.g. http://collector:4318/v1/metrics) every --otlp-interval and at
    /// the end (waited for), with the OpenTelemetry process names.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,

    /// How often to send OTLP metrics while pmet runs.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub otlp_interval: Duration,

    /// Give at most N processes series of their own (default: 50 for
    /// trace, 0 for agent). Every process, these too, is also summed in its
    /// group (--metrics-by) and in the pmet_* totals.
    #[arg(long, value_name = "N",
          value_parser = value_parser!(u32).range(0..=100_000))]
    pub metrics_top: Option<u32>,

    /// What the pmet_group_* series sum processes by: their executable
    /// name, or their container.
    #[arg(long, value_name = "name|container", default_value = "name")]
    pub metrics_by: crate::render::openmetrics::GroupBy,

    /// At most N groups have series of their own; the processes of later
    /// ones are summed together (otel_metric_overflow="true").
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = value_parser!(u32).range(1..=100_000))]
    pub metrics_groups: u32,
}

/// `--push-label KEY=VALUE`.
fn parse_push_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: give KEY=VALUE, e.g. run=1234"))?;
    crate::export::check_push_label(k)?;
    Ok((k.to_owned(), v.to_owned()))
}

impl ExportArgs {
    /// As the exporters take them.
    pub fn settings(&self, interval: Option<Duration>, agent: bool) -> crate::export::Settings {
        crate::export::Settings {
            prometheus: self.prometheus.clone(),
            textfile: self.textfile.clone(),
            pushgateway: self.pushgateway.clone(),
            push_interval: self.push_interval,
            push_job: self.push_job.clone(),
            push_labels: self.push_label.iter().cloned().collect(),
            otlp: self.otlp.clone(),
            otlp_interval: self.otlp_interval,
            metrics_top: self.metrics_top.map_or(
                if agent {
                    crate::export::AGENT_METRICS_TOP
                } else {
                    crate::export::DEFAULT_METRICS_TOP
                },
                |n| n as usize,
            ),
            metrics_by: self.metrics_by,
            metrics_groups: self.metrics_groups as usize,
            interval,
        }
    }
}

/// `pmet agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Exporters.
    #[command(flatten)]
    pub export: ExportArgs,

    /// Read the exporters and the interval from this TOML file instead of
    /// the command line, and again on SIGHUP (keys: prometheus, textfile,
    /// pushgateway, push_interval, push_job, push_labels, otlp, otlp_interval, metrics_top,
    /// metrics_by, metrics_groups, interval; see contrib/agent.toml).
    #[arg(long, value_name = "FILE",
          conflicts_with_all = ["prometheus", "textfile", "pushgateway", "push_interval", "push_job", "push_label", "otlp", "otlp_interval", "metrics_top", "metrics_by", "metrics_groups", "interval"])]
    pub config: Option<PathBuf>,

    /// How often to sample every process.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Stop after this long (default: until SIGTERM or Ctrl-C).
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Do not read /proc/PID/smaps_rollup (PSS).
    #[arg(long)]
    pub no_pss: bool,

    /// Write one line to FILE once pmet is watching (as `pmet trace
    /// --ready`; under systemd, `Type=notify` is told `READY=1` too).
    #[arg(long, value_name = "FILE")]
    pub ready: Option<PathBuf>,
}

/// Options of `pmet trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Attach to this running process and its descendants instead of launching a command.
    #[arg(short, long, value_name = "PID", conflicts_with = "command",
          value_parser = value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Trace every process on the host during the run (those already running
    /// count from now, as with --pid); pmet itself is left out. Ends with
    /// --duration or Ctrl-C.
    #[arg(long, conflicts_with_all = ["command", "pid", "user", "wait_descendants", "kill_descendants"])]
    pub all: bool,

    /// Trace every process in this cgroup (v2 path, e.g.
    /// /system.slice/nginx.service) and the cgroups below it: those in it
    /// now, and any that forks or execs there during the run.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["command", "pid", "all", "user", "wait_descendants", "kill_descendants"])]
    pub cgroup: Option<String>,

    /// Trace every process of this container (docker, containerd, CRI-O,
    /// podman or LXC id, or a unique prefix of at least 4 characters),
    /// found through its cgroup: no runtime socket is asked.
    #[arg(long, value_name = "ID", conflicts_with_all = ["command", "pid", "all", "cgroup", "user", "wait_descendants", "kill_descendants"])]
    pub container: Option<String>,

    /// Stop after this long (e.g. 30s, 5m, 1h30m; a bare number is seconds).
    /// A launched command is then sent SIGTERM, as timeout(1) does, and
    /// SIGKILL if it is still running 5 s later.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// With --duration: exit with the command's own status even when the
    /// duration ran out (by default pmet then exits 124, as timeout(1) does).
    #[arg(long, requires = "duration")]
    pub preserve_status: bool,

    /// When the command exits, keep following the processes it left running
    /// until they end too (at most DURATION, when given). By default pmet
    /// returns as soon as the command exits, as time(1) does, and reports
    /// those processes as still running.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true,
          value_parser = parse_duration, conflicts_with = "pid")]
    pub wait_descendants: Option<Option<Duration>>,

    /// When the command exits, end the processes it left running: SIGTERM,
    /// then SIGKILL after GRACE (default 5s). How each ended is reported.
    #[arg(long, value_name = "GRACE", num_args = 0..=1, require_equals = true,
          value_parser = parse_duration, conflicts_with_all = ["pid", "wait_descendants"])]
    pub kill_descendants: Option<Option<Duration>>,

    /// How often to sample live processes at first; sampling speeds up while
    /// the tree is busy or changing and slows down when it is idle.
    #[arg(short, long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Shortest adaptive interval [default: 200ms, or --interval if shorter].
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub min_interval: Option<Duration>,

    /// Longest adaptive interval [default: 5s, or --interval if longer].
    /// Set both bounds to --interval for a fixed rate.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub max_interval: Option<Duration>,

    /// Write the JSON report to FILE (`-` for standard output).
    #[arg(short, long, visible_alias = "json", value_name = "FILE")]
    pub output: Option<String>,

    /// What to print while tracing [default: live on a terminal, summary otherwise].
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Send the per-sample lines of --format simple|jsonl to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub stream: Option<PathBuf>,

    /// When to use colors (NO_COLOR is honored under auto).
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: ColorChoice,

    /// Follow only the root process, not its children.
    #[arg(long)]
    pub exclude_children: bool,

    /// With --pid: count CPU and disk from each process's start rather than
    /// from the moment pmet attached (network is always counted from attach).
    #[arg(long)]
    pub since_process_start: bool,

    /// Do not use eBPF: poll /proc only (works without root; misses short
    /// processes, exit statuses and network, and says so).
    #[arg(long)]
    pub no_ebpf: bool,

    /// List at most N threads per process in the report, the most CPU first;
    /// the rest are summed in `threads_dropped`.
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = value_parser!(u32).range(0..=1_000_000))]
    pub max_threads_listed: u32,

    /// List at most N connections per process in the report, in the order
    /// they were first used; the rest are summed in `connections_dropped`.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = value_parser!(u32).range(0..=10_000_000))]
    pub max_connections: u32,

    /// Exporters.
    #[command(flatten)]
    pub export: ExportArgs,

    /// Do not read /proc/PID/smaps_rollup: each process's PSS, private and
    /// shared memory (and the tree's PSS) are then null. It costs about
    /// 3.7 times a status read, read when a process's RSS reaches a new high
    /// or every tenth sample (see BENCHMARKS.md for what it adds).
    #[arg(long)]
    pub no_pss: bool,

    /// Keep the values of these environment variables in the report
    /// (comma-separated; `*` and `?` match). Every variable's name is always
    /// listed; any other value is "<redacted>" and is never kept.
    #[arg(long, value_name = "NAME[,NAME...]", value_delimiter = ',')]
    pub env: Vec<String>,

    /// Keep every environment variable's value (secrets included: mind where
    /// the report goes).
    #[arg(long, conflicts_with = "env")]
    pub env_all: bool,

    /// Also store the run in the history (see `pmet history`).
    #[arg(long)]
    pub record: bool,

    /// Also write the run as Chrome/Perfetto trace-event JSON.
    #[arg(long, value_name = "FILE")]
    pub trace_events: Option<PathBuf>,

    /// Write one line to FILE once pmet is watching (its kernel side
    /// attached, its first look taken), so a script can wait for it before
    /// starting what is to be traced: `{"ready":true,"pid":N,"ebpf":true}`.
    /// A FIFO or `/dev/fd/N` works (see README).
    #[arg(long, value_name = "FILE")]
    pub ready: Option<PathBuf>,

    /// Run the command as this user (default under sudo: the user who ran sudo).
    #[arg(short, long, value_name = "USER", conflicts_with = "pid")]
    pub user: Option<String>,

    /// The command to run, with its arguments (put it after `--`).
    #[arg(value_name = "COMMAND", trailing_var_arg = true,
          required_unless_present_any = ["pid", "all", "cgroup", "container"], num_args = 1..)]
    pub command: Vec<OsString>,
}

impl TraceArgs {
    /// Checks what clap cannot, and returns the adaptive interval bounds:
    /// (shortest, first, longest).
    pub fn validate(&self) -> Result<(Duration, Duration, Duration), String> {
        if self.since_process_start && self.pid.is_none() {
            return Err(
                "--since-process-start goes with --pid (a launched command is counted from its start anyway)"
                    .into(),
            );
        }
        let min = self
            .min_interval
            .unwrap_or_else(|| self.interval.min(Duration::from_millis(200)));
        let max = self
            .max_interval
            .unwrap_or_else(|| self.interval.max(Duration::from_secs(5)));
        if min > max {
            return Err(format!(
                "--min-interval ({}) is longer than --max-interval ({})",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok((min, self.interval.clamp(min, max), max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_that_overflow_clocks_are_refused() {
        for d in ["18446744073709551615s", "11years", "1e300"] {
            assert!(parse_duration(d).is_err(), "{d}");
            assert!(trace(&["-d", d, "--", "true"]).is_err(), "{d}");
            assert!(trace(&["-i", d, "--", "true"]).is_err(), "{d}");
        }
        assert_eq!(
            parse_duration("3650d"),
            Ok(Duration::from_secs(3650 * 86400))
        );
    }

    fn trace(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        let mut v = vec!["pmet", "trace"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v)?.command {
            Command::Trace(t) => Ok(*t),
            other => panic!("not trace: {other:?}"),
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-3s").unwrap_err().contains("negative"));
        assert!(
            parse_duration("0")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_interval("1ms").unwrap_err().contains("at least 10ms"));
    }

    #[test]
    fn trace_forms() {
        let t = trace(&["--", "ls", "-l"]).unwrap();
        assert_eq!(t.command, ["ls", "-l"]);
        let t = trace(&["-o", "r.json", "sh", "-c", "x"]).unwrap();
        assert_eq!(t.command, ["sh", "-c", "x"]);
        assert_eq!(t.output.as_deref(), Some("r.json"));
        let t = trace(&["--pid", "42", "-d", "5s", "--since-process-start"]).unwrap();
        assert_eq!(
            (t.pid, t.duration),
            (Some(42), Some(Duration::from_secs(5)))
        );
        assert!(t.since_process_start);
        let t = trace(&["--format", "jsonl", "--color", "never", "--", "true"]).unwrap();
        assert_eq!(
            (t.format, t.color),
            (Some(Format::Jsonl), ColorChoice::Never)
        );
        for bad in [
            &[][..],
            &["--pid", "0"],
            &["--pid", "1", "--", "ls"],
            &["--interval", "0", "--", "ls"],
            &["--user", "x", "--pid", "3"],
            &["--format", "fancy", "--", "ls"],
            &["--color", "sometimes", "--", "ls"],
        ] {
            assert!(trace(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn interval_bounds() {
        let t = trace(&["--", "x"]).unwrap();
        assert_eq!(
            t.validate().unwrap(),
            (
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(5)
            )
        );
        let t = trace(&["-i", "50ms", "--", "x"]).unwrap();
        assert_eq!(t.validate().unwrap().0, Duration::from_millis(50));
        let t = trace(&["-i", "10s", "--", "x"]).unwrap();
        assert_eq!(t.validate().unwrap().2, Duration::from_secs(10));
        let t = trace(&["--min-interval", "2s", "--max-interval", "1s", "--", "x"]).unwrap();
        assert!(t.validate().unwrap_err().contains("longer than"));
        let t = trace(&["--since-process-start", "--", "x"]).unwrap();
        assert!(t.validate().unwrap_err().contains("goes with --pid"));
        let t = trace(&[
            "-i",
            "1s",
            "--min-interval",
            "1s",
            "--max-interval",
            "1s",
            "--",
            "x",
        ])
        .unwrap();
        let (a, b, c) = t.validate().unwrap();
        assert!(a == b && b == c, "fixed rate");
    }
}
