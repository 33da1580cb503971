//! The command line.

use std::{ffi::OsString, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, value_parser};

/// Shortest polling interval accepted: below this, /proc polling costs more
/// than it tells.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

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
It needs root to load its eBPF programs: run it with sudo.",
    after_help = "Examples:\n  \
sudo pmet trace -- make -j8\n  \
sudo pmet trace -o report.json -- python3 server.py --port 8080\n  \
sudo pmet trace --pid 4242 --duration 30s"
)]
pub struct Cli {
    /// More detail on stderr (repeat for more).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print nothing but errors.
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
        after_help = "pmet exits with the traced command's exit status (128+N if signal N \
killed it), so `pmet trace -- cargo test` can stand in for `cargo test` in CI.\n\n\
Examples:\n  \
sudo pmet trace -- ./build.sh\n  \
sudo pmet trace -o report.json -- python3 server.py --port 8080\n  \
sudo pmet trace --pid 4242 --duration 30s -o attach.json"
    )]
    Trace(TraceArgs),
}

/// Options of `pmet trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Attach to this running process and its descendants instead of launching a command.
    #[arg(short, long, value_name = "PID", conflicts_with = "command",
          value_parser = value_parser!(u32).range(1..))]
    pub pid: Option<u32>,

    /// Stop after this long (e.g. 30s, 5m, 1h30m; a bare number is seconds).
    /// A launched command is then sent SIGTERM, as timeout(1) does.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// How often to sample live processes from /proc (e.g. 500ms, 2s).
    #[arg(short, long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Write the JSON report to FILE (`-` for standard output).
    #[arg(short, long, visible_alias = "json", value_name = "FILE")]
    pub output: Option<String>,

    /// The command to run, with its arguments (put it after `--`).
    #[arg(value_name = "COMMAND", trailing_var_arg = true,
          required_unless_present = "pid", num_args = 1..)]
    pub command: Vec<OsString>,
}

/// Parses a human duration; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err("must not be negative".into());
    }
    let d = if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return Err("must be a finite number of seconds".into());
        }
        Duration::from_secs_f64(secs)
    } else {
        humantime::parse_duration(s).map_err(|e| format!("{e} (try 30s, 5m or 1h30m)"))?
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!("must be at least {}ms", MIN_INTERVAL.as_millis()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        assert!(parse_interval("1ms").unwrap_err().contains("at least 10ms"));
    }

    #[test]
    fn trace_forms() {
        let c = Cli::try_parse_from(["pmet", "trace", "--", "ls", "-l"]).unwrap();
        let Command::Trace(t) = c.command;
        assert_eq!(t.command, ["ls", "-l"]);
        let c = Cli::try_parse_from(["pmet", "trace", "-o", "r.json", "sh", "-c", "x"]).unwrap();
        let Command::Trace(t) = c.command;
        assert_eq!(t.command, ["sh", "-c", "x"]);
        assert_eq!(t.output.as_deref(), Some("r.json"));
        let c = Cli::try_parse_from(["pmet", "trace", "--pid", "42", "-d", "5s"]).unwrap();
        let Command::Trace(t) = c.command;
        assert_eq!(
            (t.pid, t.duration),
            (Some(42), Some(Duration::from_secs(5)))
        );
        assert!(Cli::try_parse_from(["pmet", "trace"]).is_err());
        assert!(Cli::try_parse_from(["pmet", "trace", "--pid", "0"]).is_err());
        assert!(Cli::try_parse_from(["pmet", "trace", "--pid", "1", "--", "ls"]).is_err());
        assert!(Cli::try_parse_from(["pmet", "trace", "--interval", "0", "--", "ls"]).is_err());
    }
}
