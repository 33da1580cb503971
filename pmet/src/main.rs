//! The `pmet` binary: parse the command line, run, exit with the right status.

use std::process::ExitCode;

use clap::Parser;
use pmet::{
    cli::{Cli, Command},
    error::exit,
    render::summary::summary,
    report::OutputTarget,
    trace::{TraceOptions, trace},
};

fn terminal_width() -> usize {
    // SAFETY: ioctl on stderr with a valid winsize buffer.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return ws.ws_col as usize;
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

fn main() -> ExitCode {
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
        .format_timestamp(None)
        .format_target(false)
        .init();

    let Command::Trace(args) = cli.command;
    let opts = TraceOptions {
        command: args.command,
        pid: args.pid,
        duration: args.duration,
        interval: args.interval,
        output: args.output.as_deref().map(OutputTarget::parse),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pmet: error: cannot start the runtime: {e}");
            return ExitCode::from(exit::CANNOT_TRACE as u8);
        }
    };
    match rt.block_on(trace(opts.clone())) {
        Ok(outcome) => {
            if !cli.quiet {
                eprint!("{}", summary(&outcome.report, terminal_width()));
                if let (Some(OutputTarget::File(p)), None) = (&opts.output, &outcome.write_error) {
                    eprintln!("  report written to {}", p.display());
                }
            }
            if let Some(e) = outcome.write_error {
                eprintln!("pmet: error: {e}");
                return ExitCode::from(e.exit_code() as u8);
            }
            ExitCode::from(outcome.exit_code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("pmet: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
