//! The subcommands that work on saved runs: `pmet report`, `pmet diff`,
//! `pmet history`, and what `pmet trace` does with a finished report
//! (`--record`, `--trace-events`). Each returns the exit status.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{
    cli::{DiffArgs, HistoryArgs, ReportArgs, TableFormat},
    error::Error,
    history::{HistoryError, default_path, with_store},
    privileges::{self, Credentials},
    render::{
        diff_table::diff_table,
        html::html,
        report_text::report_text,
        style::Style,
        svg::plots_svg,
        trace_events::write_trace_events,
        units::{bytes, duration, fit, printable},
    },
    report::{
        OutputTarget, Report,
        diff::{check, diff, parse_limits},
        read::{ReadError, parse_report, read_report},
    },
};

/// Exit status when the history store cannot be used (EX_IOERR).
pub const EXIT_HISTORY: i32 = crate::error::exit::HISTORY;

/// Who pmet acts for and where their history is: under sudo, the invoking
/// user (whose credentials every file access below uses) and their home.
pub struct Invoker {
    /// The user's credentials; `None` acts as pmet itself.
    pub creds: Option<Credentials>,
    /// The history store.
    pub history: PathBuf,
}

impl Invoker {
    /// From the environment; a malformed `SUDO_UID`/`SUDO_GID` is an error.
    pub fn from_env() -> Result<Self, Error> {
        let home = match privileges::invoking_user_from_env()? {
            Some(a) => {
                return Ok(Self {
                    history: default_path(&a.home),
                    creds: Some(a.credentials()),
                });
            }
            None => {
                // SAFETY: no preconditions.
                let euid = unsafe { libc::geteuid() };
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .or_else(|| privileges::account(&euid.to_string()).map(|a| a.home))
                    .unwrap_or_else(|| PathBuf::from("/"))
            }
        };
        Ok(Self {
            history: default_path(&home),
            creds: None,
        })
    }
}

fn eprint_error(e: &dyn std::fmt::Display) {
    crate::say!("pmet: error: {e}");
}

/// A report read from a file or the history, with notes on what it lacked.
pub struct Source {
    /// The report.
    pub report: Report,
    /// How to name it to a person.
    pub name: String,
    /// What it lacked, and whether a newer pmet wrote it.
    pub notes: Vec<String>,
}

/// Reads `source`: a report file, or a run id when no such file exists.
/// Both are read with the invoking user's credentials.
pub fn load(source: &str, who: &Invoker) -> Result<Source, (String, i32)> {
    let path = Path::new(source);
    let loaded = if !path.exists()
        && let Ok(id) = source.parse::<i64>()
    {
        let json = with_store(&who.history, who.creds.as_ref(), false, |h| {
            h.report_json(id)
        })
        .map_err(|e| match e {
            HistoryError::NoRun(_) | HistoryError::NoStore(_) => {
                (e.to_string(), crate::report::read::EXIT_NO_REPORT)
            }
            e => (e.to_string(), EXIT_HISTORY),
        })?;
        parse_report(json.as_bytes(), &format!("run {id}"))
    } else {
        privileges::as_user(who.creds.as_ref(), || read_report(path)).unwrap_or_else(|source| {
            Err(ReadError::Io {
                name: source_name(path),
                source,
            })
        })
    };
    let l = loaded.map_err(|e: ReadError| (e.to_string(), e.exit_code()))?;
    let mut notes = Vec::new();
    if l.newer {
        notes.push(format!(
            "written by a newer pmet (schema {}); fields this version does not know are ignored",
            l.report.schema
        ));
    }
    if !l.missing.is_empty() {
        let shown: Vec<&str> = l.missing.iter().take(6).map(String::as_str).collect();
        notes.push(format!(
            "written by an older or different pmet: lacks {}{}",
            shown.join(", "),
            if l.missing.len() > 6 { ", …" } else { "" }
        ));
    }
    Ok(Source {
        report: l.report,
        name: source.to_owned(),
        notes,
    })
}

fn source_name(p: &Path) -> String {
    p.display().to_string()
}

fn write_file(
    path: &Path,
    option: &'static str,
    who: &Invoker,
    fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send,
) -> Result<(), (String, i32)> {
    OutputTarget::File(path.to_owned())
        .prepare(who.creds.as_ref(), option)
        .and_then(|o| o.write_with(fill))
        .map_err(|e| (e.to_string(), e.exit_code()))
}

fn invoker() -> Result<Invoker, i32> {
    Invoker::from_env().map_err(|e| {
        eprint_error(&e);
        e.exit_code()
    })
}

/// Writes a report as a file's contents.
type Renderer = dyn Fn(&Report, &mut dyn std::io::Write) -> std::io::Result<()> + Sync;

/// `pmet report`.
pub fn report(a: &ReportArgs, width: usize, tty: bool) -> i32 {
    let who = match invoker() {
        Ok(w) => w,
        Err(code) => return code,
    };
    let src = match load(&a.source, &who) {
        Ok(s) => s,
        Err((e, code)) => {
            eprint_error(&e);
            return code;
        }
    };
    let style = Style {
        color: a.color.enabled(tty),
    };
    if let Some(code) = crate::out::stdout_or_status(
        report_text(&src.report, &src.name, &src.notes, width, style).as_bytes(),
    ) {
        return code;
    }
    let exports: [(&Option<PathBuf>, &'static str, &Renderer); 3] = [
        (&a.html, "--html", &|r, w| w.write_all(html(r).as_bytes())),
        (&a.svg, "--svg", &|r, w| {
            w.write_all(plots_svg(r).as_bytes())
        }),
        // Streamed: a trace is many small events, ~100 times a report's
        // size as one JSON value in memory.
        (&a.trace_events, "--trace-events", &write_trace_events),
    ];
    for (path, option, render) in exports {
        if let Some(p) = path {
            let report = &src.report;
            if let Err((e, code)) = write_file(p, option, &who, |w| render(report, w)) {
                eprint_error(&e);
                return code;
            }
            crate::say!("  written to {}", p.display());
        }
    }
    0
}

/// `pmet diff`.
pub fn diff_cmd(a: &DiffArgs) -> i32 {
    let limits = match a.fail_if.as_deref().map(parse_limits).transpose() {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => {
            eprint_error(&format!("--fail-if {e}"));
            return crate::error::exit::USAGE;
        }
    };
    let who = match invoker() {
        Ok(w) => w,
        Err(code) => return code,
    };
    let (base, new) = match (load(&a.base, &who), load(&a.new, &who)) {
        (Ok(b), Ok(n)) => (b, n),
        (Err((e, code)), _) | (_, Err((e, code))) => {
            eprint_error(&e);
            return code;
        }
    };
    let d = diff(&base.report, &new.report);
    let verdicts = check(&d, &limits);
    let breached = verdicts.iter().any(|v| !v.ok);
    match a.format {
        TableFormat::Table => {
            for (src, n) in [(&base, &base.notes), (&new, &new.notes)] {
                for note in n {
                    crate::say!("pmet: note: {}: {note}", src.name);
                }
            }
            if let Some(code) = crate::out::stdout_or_status(
                diff_table(&d, &base.name, &new.name, &verdicts, 15).as_bytes(),
            ) {
                return code;
            }
        }
        TableFormat::Json => {
            let v = serde_json::json!({
                "base": {"source": base.name, "command": base.report.command, "started_at": base.report.started_at, "notes": base.notes},
                "new": {"source": new.name, "command": new.report.command, "started_at": new.report.started_at, "notes": new.notes},
                "metrics": d.metrics,
                "processes": d.processes,
                "limits": verdicts,
                "breached": breached,
            });
            let text = serde_json::to_string_pretty(&v).expect("serializes") + "\n";
            if let Some(code) = crate::out::stdout_or_status(text.as_bytes()) {
                return code;
            }
        }
    }
    if breached {
        let n = verdicts.iter().filter(|v| !v.ok).count();
        crate::say!(
            "pmet: {n} limit{} breached: {}",
            if n == 1 { "" } else { "s" },
            verdicts
                .iter()
                .filter(|v| !v.ok)
                .map(|v| v.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        return 1;
    }
    0
}

/// `pmet history`.
pub fn history_cmd(a: &HistoryArgs, width: usize) -> i32 {
    let who = match invoker() {
        Ok(w) => w,
        Err(code) => return code,
    };
    let path = &who.history;
    if !path.exists() {
        crate::say!(
            "pmet: no runs recorded yet ({} does not exist); record one with `sudo pmet trace --record -- COMMAND`",
            path.display()
        );
        return 0;
    }
    let cmd = (!a.command.is_empty()).then(|| crate::render::units::command_line(&a.command));
    let rows = match with_store(path, who.creds.as_ref(), false, |h| {
        h.list(cmd.as_deref(), a.limit)
    }) {
        Ok(r) => r,
        Err(e) => {
            eprint_error(&e);
            return EXIT_HISTORY;
        }
    };
    let mut out = String::new();
    match a.format {
        TableFormat::Json => {
            out = serde_json::to_string_pretty(&rows).expect("serializes") + "\n";
        }
        TableFormat::Table => {
            let _ = writeln!(
                out,
                "{:>5}  {:<24}  {:>5}  {:>9}  {:>9}  {:>10}  {:>10}  {:>6}  command",
                "run", "started", "exit", "duration", "cpu", "peak rss", "net", "procs"
            );
            for r in rows {
                let head = format!(
                    "{:>5}  {:<24}  {:>5}  {:>9}  {:>9}  {:>10}  {:>10}  {:>6}  ",
                    r.id,
                    fit(&printable(&r.started_at), 24),
                    r.exit_code.map_or("-".into(), |c| c.to_string()),
                    duration(r.duration_s),
                    duration(r.cpu_s),
                    r.rss_bytes.map_or("-".into(), |b| bytes(b as u64)),
                    r.net_bytes.map_or("-".into(), |b| bytes(b as u64)),
                    r.processes
                );
                let room = width.saturating_sub(head.chars().count()).max(10);
                // The store is the user's: its text may hold escape sequences.
                let _ = writeln!(out, "{head}{}", fit(&printable(&r.command), room));
            }
        }
    }
    crate::out::stdout_or_status(out.as_bytes()).unwrap_or(0)
}

/// After `pmet trace --record`: stores the run, as the invoking user;
/// returns its id.
pub fn record(r: &Report) -> Result<i64, Error> {
    let who = Invoker::from_env()?;
    with_store(&who.history, who.creds.as_ref(), true, |h| h.record(r))
        .map_err(|e| Error::History(e.to_string()))
}

/// Before `pmet trace --record` launches anything: the store opens for
/// writing (created when needed), as the invoking user.
pub fn check_record() -> Result<(), Error> {
    let who = Invoker::from_env()?;
    with_store(&who.history, who.creds.as_ref(), true, |_| Ok(()))
        .map_err(|e| Error::History(e.to_string()))
}

/// `pmet check`: loads the kernel side as `pmet trace` would, says how each
/// capability is measured here, and unloads it. Its status is 0 when eBPF
/// works, `CANNOT_TRACE` when pmet would poll.
pub fn check_cmd(a: &crate::cli::CheckArgs) -> i32 {
    use crate::collect::hooks::TABLE;
    let release = crate::trace::kernel_release().unwrap_or_else(|| "unknown".into());
    let loaded = crate::trace::load_kernel(true, false);
    let (hooks, error) = match &loaded {
        Ok(k) => (k.hooks.clone(), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    drop(loaded);
    if a.format == "json" {
        let v = serde_json::json!({
            "kernel_release": release,
            "ebpf": error.is_none(),
            "error": error,
            "hooks": hooks,
        });
        let mut text = v.to_string();
        text.push('\n');
        if let Some(status) = crate::out::stdout_or_status(text.as_bytes()) {
            return status;
        }
    } else {
        let mut o = format!("pmet check: kernel {release}\n");
        if let Some(e) = &error {
            o.push_str(&format!(
                "  eBPF: does not load: {e}\n  pmet would poll /proc: short processes, exit \
                 statuses and network would be unknown\n"
            ));
        }
        for h in &hooks {
            let via = h.via.map_or("-", |v| v.name());
            o.push_str(&format!("  {:<12} {:<10} ", h.capability.name(), via));
            if h.via.is_some() {
                o.push_str(&h.programs.join(", "));
            } else {
                o.push_str(&format!("missing: {}", h.capability.without()));
            }
            o.push('\n');
            for r in &h.fell_back {
                o.push_str(&format!(
                    "  {:<12}   not {}: {}\n",
                    "",
                    r.via.name(),
                    first_line(&r.reason)
                ));
            }
            if h.via.is_none() {
                for alt in TABLE.iter().filter(|t| t.capability == h.capability) {
                    o.push_str(&format!(
                        "  {:<12}   {} needs {}\n",
                        "",
                        alt.via.name(),
                        alt.needs
                    ));
                }
            }
        }
        if error.is_none() {
            let missing = hooks.iter().filter(|h| h.via.is_none()).count();
            o.push_str(&match missing {
                0 => "  every capability loaded: every figure is measured in the kernel\n".into(),
                n => format!(
                    "  {n} capabilit{} missing (see above)\n",
                    if n == 1 { "y" } else { "ies" }
                ),
            });
        }
        let _ = crate::out::stdout_or_status(o.as_bytes());
    }
    if error.is_some() {
        crate::error::exit::CANNOT_TRACE
    } else {
        0
    }
}

/// The first line of a (verifier's, multi-line) reason.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
