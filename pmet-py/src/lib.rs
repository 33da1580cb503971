//! pmet's native module for Python (`pmet._core`): a tracing session run on
//! a thread of its own, which Python drives (samples, signals, the end) with
//! the GIL released, and the report reader and comparison of the CLI. The
//! `pmet` package (python/pmet) builds the public API on top of it; JSON
//! crosses the boundary, written by the same serializer as the CLI's, so a
//! report from Python is the CLI's byte for byte.

use std::{
    ffi::OsString,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use pmet::{
    error::Error,
    model::snapshot::Snapshot,
    render::sink::Sink,
    report::read::{ReadError, parse_report, read_report},
    trace::{Begun, Control, Descendants, EbpfMode, Remote, TraceOptions, trace_with},
};
use pyo3::{
    create_exception,
    exceptions::{
        PyException, PyFileNotFoundError, PyNotADirectoryError, PyOSError, PyPermissionError,
        PyProcessLookupError, PyTimeoutError, PyValueError,
    },
    prelude::*,
};

create_exception!(
    _core,
    PmetError,
    PyException,
    "pmet could not do what was asked (the base of pmet's own errors)."
);

/// Samples waiting for Python to take them; past this, new ones are dropped
/// (a program that never reads them must not grow without bound).
const SAMPLES_KEPT: usize = 4096;

/// pmet's error as the Python exception a Python user expects.
fn py_err(e: &Error) -> PyErr {
    use std::io::ErrorKind as K;
    let msg = e.to_string();
    let by_kind = |k: K| match k {
        K::NotFound => PyFileNotFoundError::new_err(msg.clone()),
        K::PermissionDenied => PyPermissionError::new_err(msg.clone()),
        K::NotADirectory => PyNotADirectoryError::new_err(msg.clone()),
        _ => PmetError::new_err(msg.clone()),
    };
    match e {
        Error::CommandNotFound(_) => PyFileNotFoundError::new_err(msg),
        Error::NotExecutable { source, .. } | Error::Cwd { source, .. } => by_kind(source.kind()),
        Error::NotRoot { .. } => PyPermissionError::new_err(msg),
        Error::NoSuchPid(_) => PyProcessLookupError::new_err(msg),
        Error::Usage(_) => PyValueError::new_err(msg),
        _ => PmetError::new_err(msg),
    }
}

fn read_err(e: &ReadError) -> PyErr {
    match e {
        ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            PyPermissionError::new_err(e.to_string())
        }
        _ => PmetError::new_err(e.to_string()),
    }
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("pmet's types serialize")
}

/// How the session ended.
enum Done {
    Ok { report: String, exit_code: i32 },
    Err(Error),
}

/// What the session thread and Python share.
#[derive(Default)]
struct Shared {
    done: Mutex<Option<Done>>,
    ended: Condvar,
}

impl Shared {
    /// Waits for the end, at most `timeout` (forever when `None`): whether
    /// it has come.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let guard = self.done.lock().expect("not poisoned");
        let guard = match timeout {
            Some(t) => {
                self.ended
                    .wait_timeout_while(guard, t, |d| d.is_none())
                    .expect("not poisoned")
                    .0
            }
            None => self
                .ended
                .wait_while(guard, |d| d.is_none())
                .expect("not poisoned"),
        };
        guard.is_some()
    }
}

/// A tracing session over a command (launched at once, gated until it is
/// followed) or a running process, on a thread of its own.
#[pyclass(module = "pmet._core")]
struct Monitor {
    begun: Begun,
    /// The process's start time (/proc ticks), to tell it from a later
    /// holder of its pid.
    start_ticks: Option<u64>,
    requests: tokio::sync::mpsc::UnboundedSender<Control>,
    samples: Mutex<std::sync::mpsc::Receiver<Snapshot>>,
    last: Mutex<Option<Snapshot>>,
    shared: Arc<Shared>,
}

/// The state letter and start time (ticks) of `pid`, as /proc has them.
fn start_ticks(pid: u32) -> Option<(char, u64)> {
    pmet::collect::procfs::Procfs::default()
        .stat(pid)
        .ok()
        .map(|s| (s.state, s.starttime))
}

#[pymethods]
impl Monitor {
    #[new]
    #[pyo3(signature = (argv, pid, base_interval_ms, max_interval_ms, include_children, since_process_start, backend, env, cwd))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        argv: Option<Vec<OsString>>,
        pid: Option<u32>,
        base_interval_ms: u64,
        max_interval_ms: u64,
        include_children: bool,
        since_process_start: bool,
        backend: &str,
        env: Option<Vec<(OsString, OsString)>>,
        cwd: Option<PathBuf>,
    ) -> PyResult<Self> {
        if base_interval_ms == 0 || max_interval_ms < base_interval_ms {
            return Err(PyValueError::new_err(format!(
                "intervals: base_interval_ms ({base_interval_ms}) must be at least 1 and at most max_interval_ms ({max_interval_ms})"
            )));
        }
        let ebpf = match backend {
            "ebpf" => EbpfMode::Required,
            "procfs" => EbpfMode::Off,
            // Without the rights, straight to polling: nothing to try.
            "auto" if pmet::privileges::check_ebpf().is_ok() => EbpfMode::Auto,
            "auto" => EbpfMode::Off,
            other => {
                return Err(PyValueError::new_err(format!(
                    "backend {other:?}: choose \"auto\", \"ebpf\" or \"procfs\""
                )));
            }
        };
        let base = Duration::from_millis(base_interval_ms);
        let opts = TraceOptions {
            command: argv.unwrap_or_default(),
            pid,
            duration: None,
            preserve_status: false,
            intervals: (base, base, Duration::from_millis(max_interval_ms)),
            output: None,
            stream: None,
            trace_events: None,
            ready: None,
            exclude_children: !include_children,
            since_process_start,
            ebpf,
            user: None,
            record: false,
            descendants: Descendants::Leave,
            max_threads_listed: 64,
            max_connections: 1000,
            no_pss: false,
            export: pmet::export::Settings::default(),
            agent: None,
            all: false,
            cgroup: None,
            container: None,
            env_policy: pmet::model::env::EnvPolicy::default(),
            env,
            cwd,
            embedded: true,
        };
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let (started, begun) = std::sync::mpsc::channel();
        let (sample_tx, samples) = std::sync::mpsc::sync_channel(SAMPLES_KEPT);
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("pmet-session".into())
            .spawn(move || {
                let done = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => match rt.block_on(trace_with(
                        opts,
                        move |_| Sink::Channel(sample_tx),
                        Some(Remote {
                            requests: rx,
                            started,
                        }),
                    )) {
                        Ok(outcome) => {
                            let report = json(&outcome.report);
                            // Detached before the end is told.
                            drop(outcome.loaded);
                            Done::Ok {
                                report,
                                exit_code: outcome.exit_code,
                            }
                        }
                        Err(e) => Done::Err(e),
                    },
                    Err(e) => Done::Err(Error::Other(format!("cannot start the runtime: {e}"))),
                };
                *theirs.done.lock().expect("not poisoned") = Some(done);
                theirs.ended.notify_all();
            })
            .map_err(|e| PmetError::new_err(format!("cannot start pmet's thread: {e}")))?;
        // Started, or failed before it could (the error is the session's).
        let begun = py.detach(move || begun.recv());
        let Ok(begun) = begun else {
            py.detach(|| shared.wait(None));
            return match shared.done.lock().expect("not poisoned").take() {
                Some(Done::Err(e)) => Err(py_err(&e)),
                _ => Err(PmetError::new_err("the session ended before it started")),
            };
        };
        Ok(Self {
            begun,
            start_ticks: start_ticks(begun.pid).map(|(_, t)| t),
            requests,
            samples: Mutex::new(samples),
            last: Mutex::new(None),
            shared,
        })
    }

    /// The command's (or attached process's) pid.
    #[getter]
    fn pid(&self) -> u32 {
        self.begun.pid
    }

    /// `"ebpf"` or `"procfs"`: what follows the tree.
    #[getter]
    fn backend(&self) -> &'static str {
        if self.begun.ebpf { "ebpf" } else { "procfs" }
    }

    /// The next sample the session took (JSON), waiting at most
    /// `timeout_s`; `None` when none came (or the session has ended and
    /// every sample was taken).
    fn next_sample(&self, py: Python<'_>, timeout_s: f64) -> Option<String> {
        let got = py.detach(|| {
            self.samples
                .lock()
                .expect("not poisoned")
                .recv_timeout(Duration::from_secs_f64(timeout_s.max(0.0)))
                .ok()
        })?;
        let text = json(&got);
        *self.last.lock().expect("not poisoned") = Some(got);
        Some(text)
    }

    /// A sample taken now (JSON); once the session has ended, its last.
    fn sample_now(&self, py: Python<'_>) -> Option<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let fresh = if self.requests.send(Control::Sample(tx)).is_ok() {
            py.detach(move || rx.recv_timeout(Duration::from_secs(30)).ok())
        } else {
            None
        };
        let mut last = self.last.lock().expect("not poisoned");
        match fresh {
            Some(s) => *last = Some(s),
            // Ended: the final sample is the last one it sent.
            None => {
                while let Ok(s) = self.samples.lock().expect("not poisoned").try_recv() {
                    *last = Some(s);
                }
            }
        }
        last.as_ref().map(json)
    }

    /// Passes `signo` to the session as if sent by another process: SIGINT
    /// or SIGTERM reach the command's tree (launched), or end the session
    /// (attached).
    fn signal(&self, signo: i32) {
        let _ = self.requests.send(Control::Signal(signo));
    }

    /// Waits for the session to end, at most `timeout_s` (forever when
    /// `None`), with the GIL released: whether it has.
    #[pyo3(signature = (timeout_s=None))]
    fn wait(&self, py: Python<'_>, timeout_s: Option<f64>) -> bool {
        py.detach(|| {
            self.shared
                .wait(timeout_s.map(|t| Duration::from_secs_f64(t.max(0.0))))
        })
    }

    /// Whether the process itself (not its descendants) still runs.
    fn running(&self) -> bool {
        if self.shared.done.lock().expect("not poisoned").is_some() {
            return false;
        }
        matches!(start_ticks(self.begun.pid), Some((state, t))
            if state != 'Z' && state != 'X' && Some(t) == self.start_ticks)
    }

    /// The report (JSON) and the status pmet would exit with; raises the
    /// session's error if it failed.
    fn result(&self) -> PyResult<(String, i32)> {
        match &*self.shared.done.lock().expect("not poisoned") {
            Some(Done::Ok { report, exit_code }) => Ok((report.clone(), *exit_code)),
            Some(Done::Err(e)) => Err(py_err(e)),
            None => Err(PmetError::new_err("the session is still running")),
        }
    }
}

/// A report file read as `pmet report` reads it, as the CLI writes it.
#[pyfunction]
fn load_report(path: PathBuf) -> PyResult<String> {
    read_report(&path)
        .map(|l| json(&l.report))
        .map_err(|e| read_err(&e))
}

/// A report's JSON text checked and written as the CLI writes it.
#[pyfunction]
fn canonical_report(text: &str) -> PyResult<String> {
    parse_report(text.as_bytes(), "the report")
        .map(|l| json(&l.report))
        .map_err(|e| read_err(&e))
}

/// Writes a report's JSON text where `-o` would: as the user who ran sudo
/// (when run through it), never into another user's file or FIFO in a
/// sticky world-writable directory, a regular file replaced whole, a FIFO
/// with no reader given up on rather than waited on for ever.
#[pyfunction]
fn write_report(py: Python<'_>, path: PathBuf, text: &str) -> PyResult<()> {
    use std::io::ErrorKind as K;
    let who = pmet::privileges::invoking_user_from_env().map_err(|e| py_err(&e))?;
    let creds = who.map(|a| a.credentials());
    let written = py.detach(|| {
        let f = pmet::userfile::UserFile::prepare(&path, creds.as_ref())?;
        f.write_with(|w| {
            w.write_all(text.as_bytes())?;
            w.write_all(b"\n")
        })
    });
    written.map_err(|e| {
        let msg = format!("cannot write {}: {e}", path.display());
        match e.kind() {
            K::NotFound => PyFileNotFoundError::new_err(msg),
            K::PermissionDenied => PyPermissionError::new_err(msg),
            K::NotADirectory => PyNotADirectoryError::new_err(msg),
            K::TimedOut => PyTimeoutError::new_err(msg),
            _ => PyOSError::new_err(msg),
        }
    })
}

/// `pmet diff --format json` of two reports' JSON texts.
#[pyfunction]
#[pyo3(signature = (base, new, fail_if=None))]
fn diff(base: &str, new: &str, fail_if: Option<&str>) -> PyResult<String> {
    use pmet::report::diff::{check, diff, parse_limits};
    let limits = fail_if
        .map(parse_limits)
        .transpose()
        .map_err(|e| PyValueError::new_err(format!("fail_if: {e}")))?
        .unwrap_or_default();
    let read = |text: &str, which| {
        parse_report(text.as_bytes(), which)
            .map(|l| l.report)
            .map_err(|e| read_err(&e))
    };
    let (b, n) = (read(base, "base")?, read(new, "new")?);
    let d = diff(&b, &n);
    let verdicts = check(&d, &limits);
    let breached = verdicts.iter().any(|v| !v.ok);
    Ok(json(&serde_json::json!({
        "metrics": d.metrics,
        "processes": d.processes,
        "limits": verdicts,
        "breached": breached,
    })))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Monitor>()?;
    m.add_function(wrap_pyfunction!(load_report, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_report, m)?)?;
    m.add_function(wrap_pyfunction!(write_report, m)?)?;
    m.add_function(wrap_pyfunction!(diff, m)?)?;
    m.add("PmetError", m.py().get_type::<PmetError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
