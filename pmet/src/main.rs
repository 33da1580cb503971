//! The `pmet` binary: parse the command line, run, exit with the right status.

use std::{io::Write, process::ExitCode};

use clap::{CommandFactory, Parser};
use pmet::{
    cli::{Cli, Command, Format, TraceArgs},
    commands,
    error::{Error, exit},
    out,
    render::{
        sink::Sink,
        style::Style,
        summary::{summary, summary_of},
        term::{size, stderr_is_tty},
        units::command_line,
    },
    report::OutputTarget,
    say,
    trace::{Descendants, EbpfMode, TraceOptions, trace},
};

/// `--kill-descendants` without a value: SIGKILL after this.
const DEFAULT_KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn terminal_width() -> usize {
    size()
        .map(|(_, c)| c as usize)
        .or_else(|| std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()))
        .unwrap_or(100)
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

fn stdout_is_tty() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

fn fail(e: &Error) -> ExitCode {
    say!("pmet: error: {e}");
    ExitCode::from(e.exit_code() as u8)
}

/// `pmet top`: a host-wide session (`--all`) whose samples are the top
/// processes as JSON Lines on standard output, with no summary or report.
fn run_top(a: pmet::cli::TopArgs) -> ExitCode {
    let full_screen = a.format.is_none() && stdout_is_tty();
    let argv = host_wide(
        "pmet-top",
        a.interval,
        a.duration,
        &["--stream", "/dev/stdout"],
    );
    let format = if full_screen {
        pmet::render::sink::SampleFormat::TopView(a.sort)
    } else {
        pmet::render::sink::SampleFormat::Top(a.sort, a.limit as usize)
    };
    match Only::try_parse_from(argv) {
        Ok(mut o) => {
            o.args.export = a.export;
            o.args.ready = a.ready;
            run_trace_as(o.args, true, Some(format), None)
        }
        Err(e) => fail(&Error::Usage(e.to_string())),
    }
}

fn run_trace(args: TraceArgs, quiet: bool) -> ExitCode {
    run_trace_as(args, quiet, None, None)
}

/// `pmet agent`: a host-wide session (`--all`) that exports and forgets,
/// with no summary or report.
fn run_agent(a: pmet::cli::AgentArgs) -> ExitCode {
    let settings = match &a.config {
        // Read as the user who ran sudo: pmet must not read for them what
        // they could not.
        Some(path) => match pmet::privileges::invoking_user_from_env() {
            Ok(who) => pmet::export::Settings::read(path, who.map(|a| a.credentials()).as_ref()),
            Err(e) => return fail(&e),
        },
        None => {
            let s = a.export.settings(a.interval, true);
            s.check_for_agent(true)
                .map(|()| s)
                .map_err(|e| format!("pmet agent: {e}"))
        }
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return fail(&Error::Usage(e)),
    };
    let interval = settings
        .interval
        .unwrap_or(std::time::Duration::from_secs(5));
    let argv = host_wide(
        "pmet-agent",
        interval,
        a.duration,
        if a.no_pss { &["--no-pss"] } else { &[] },
    );
    let agent = pmet::trace::Agent { config: a.config };
    match Only::try_parse_from(argv) {
        Ok(mut o) => {
            o.args.ready = a.ready;
            run_trace_as(o.args, true, None, Some((settings, agent)))
        }
        Err(e) => fail(&Error::Usage(e.to_string())),
    }
}

/// `pmet trace` options for a host-wide session sampled every `interval`
/// exactly, for `top` and `agent`.
fn host_wide(
    name: &str,
    interval: std::time::Duration,
    duration: Option<std::time::Duration>,
    more: &[&str],
) -> Vec<String> {
    let every = humantime::format_duration(interval).to_string();
    let mut argv: Vec<String> = [
        name,
        "--all",
        "--interval",
        &every,
        "--min-interval",
        &every,
        "--max-interval",
        &every,
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(d) = duration {
        argv.extend([
            "--duration".into(),
            humantime::format_duration(d).to_string(),
        ]);
    }
    argv.extend(more.iter().map(|m| (*m).to_owned()));
    argv
}

/// Parses options as `pmet trace` does, for `top` and `agent`.
#[derive(Parser)]
struct Only {
    #[command(flatten)]
    args: TraceArgs,
}

/// A trace session; `top` makes its samples `pmet top`'s lines, `agent`
/// makes it `pmet agent`.
fn run_trace_as(
    args: TraceArgs,
    quiet: bool,
    top: Option<pmet::render::sink::SampleFormat>,
    agent: Option<(pmet::export::Settings, pmet::trace::Agent)>,
) -> ExitCode {
    // Before any thread exists, so every thread inherits it: the signals
    // pmet passes on are only ever read from its signalfd.
    pmet::signals::block();
    let intervals = match args.validate() {
        Ok(i) => i,
        Err(e) => return fail(&Error::Usage(e)),
    };
    let tty = stderr_is_tty();
    let format = match (quiet, args.format) {
        _ if top.is_some() => Format::Summary,
        // -q quiets the terminal, not a stream file asked for by name.
        (true, Some(f @ (Format::Simple | Format::Jsonl))) if args.stream.is_some() => f,
        (true, _) => Format::Summary,
        (false, Some(f)) => f,
        (false, None) if tty => Format::Live,
        (false, None) => Format::Summary,
    };
    if format == Format::Live && !tty {
        return fail(&Error::Usage(
            "--format live needs a terminal on stderr; use --format simple or jsonl".into(),
        ));
    }
    // Colors for what goes to the terminal: the live view and the summary.
    let style = Style {
        color: args.color.enabled(tty),
    };
    let what = if args.command.is_empty() {
        format!("pid {}", args.pid.unwrap_or(0))
    } else {
        command_line(
            &args
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        )
    };
    let output = args.output.as_deref().map(OutputTarget::parse);
    let (record, trace_events) = (args.record, args.trace_events.clone());
    let opts = TraceOptions {
        command: args.command,
        // Every process on the host descends from pid 1.
        pid: if args.all { Some(1) } else { args.pid },
        all: args.all,
        cgroup: args.cgroup,
        container: args.container,
        duration: args.duration,
        preserve_status: args.preserve_status,
        intervals,
        output: output.clone(),
        stream: args.stream,
        trace_events: args.trace_events,
        ready: args.ready,
        exclude_children: args.exclude_children,
        since_process_start: args.since_process_start,
        ebpf: if args.no_ebpf {
            EbpfMode::Off
        } else {
            EbpfMode::Auto
        },
        user: args.user,
        record,
        max_threads_listed: args.max_threads_listed as usize,
        max_connections: args.max_connections as usize,
        no_pss: args.no_pss,
        export: match &agent {
            Some((x, _)) => x.clone(),
            None => args.export.settings(None, false),
        },
        agent: agent.map(|(_, a)| a),
        env: None,
        cwd: None,
        embedded: false,
        env_policy: pmet::model::env::EnvPolicy {
            all: args.env_all,
            names: args.env,
        },
        descendants: match (args.wait_descendants, args.kill_descendants) {
            (Some(limit), _) => Descendants::Wait(limit),
            (_, Some(grace)) => Descendants::Kill(grace.unwrap_or(DEFAULT_KILL_GRACE)),
            _ => Descendants::Leave,
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Error::Other(format!("cannot start the runtime: {e}"))),
    };
    let sample_format = top.unwrap_or_else(|| format.into());
    let make_sink = move |stream| Sink::new(sample_format, what, style, stream);
    match rt.block_on(trace(opts, make_sink)) {
        Ok(outcome) => {
            if !quiet {
                let text = match &outcome.briefs {
                    Some(b) => summary_of(&outcome.report, b, terminal_width(), style, true),
                    None => summary(&outcome.report, terminal_width(), style),
                };
                say!("{}", text.strip_suffix('\n').unwrap_or(&text));
                if let (Some(OutputTarget::File(p)), None) = (&output, &outcome.write_error) {
                    say!("  report written to {}", p.display());
                }
            }
            if let Some(p) = &trace_events
                && outcome.trace_events_error.is_none()
                && !quiet
            {
                say!("  trace events written to {}", p.display());
            }
            let mut record_error = None;
            if record {
                match commands::record(&outcome.report) {
                    Ok(id) if !quiet => {
                        say!("  recorded as run {id} (`pmet history`, `pmet diff {id} ...`)")
                    }
                    Ok(_) => {}
                    Err(e) => record_error = Some(e),
                }
            }
            // Results first, then the (slow) detach.
            drop(outcome.loaded);
            // Every failed write is said; the status is the first one's.
            let mut errors = [
                outcome.write_error,
                outcome.trace_events_error,
                record_error,
            ]
            .into_iter()
            .flatten();
            if let Some(first) = errors.next() {
                for e in errors {
                    say!("pmet: error: {e}");
                }
                return fail(&first);
            }
            ExitCode::from(outcome.exit_code.clamp(0, 255) as u8)
        }
        Err(e) => fail(&e),
    }
}

fn main() -> ExitCode {
    // One malloc arena: pmet's work is on one thread, and the threads that
    // verify its programs at start-up would otherwise leave their own arena
    // holding ~6 MB resident for the whole run (the BTF they parsed, pinned
    // by a few objects that live on).
    // (glibc's allocator only: musl's has no arenas.)
    // SAFETY: called before any other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
    // Before pmet opens anything of its own: `/dev/fd/N` may only name
    // what pmet was handed.
    pmet::userfile::note_inherited_fds();
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        (false, 2) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("PMET_LOG")
        .format(|f, r| {
            let level = match r.level() {
                log::Level::Warn => "warning".to_owned(),
                l => l.as_str().to_lowercase(),
            };
            writeln!(f, "pmet: {level}: {}", r.args())
        })
        .init();

    match cli.command {
        Command::Trace(args) => run_trace(*args, cli.quiet),
        Command::Top(a) => run_top(a),
        Command::Agent(a) => run_agent(a),
        Command::Report(a) => code(commands::report(&a, terminal_width(), stdout_is_tty())),
        Command::Diff(a) => code(commands::diff_cmd(&a)),
        Command::History(a) => code(commands::history_cmd(&a, terminal_width())),
        Command::Check(a) => code(commands::check_cmd(&a)),
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pmet", &mut text);
            code(out::stdout_or_status(&text).unwrap_or(0))
        }
        Command::Man => {
            let mut text = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut text) {
                Ok(()) => code(out::stdout_or_status(&text).unwrap_or(0)),
                Err(e) => {
                    say!("pmet: error: writing the man page: {e}");
                    ExitCode::from(exit::CANNOT_TRACE as u8)
                }
            }
        }
    }
}
