//! pmet's errors, each with the exit status it maps to and words that name
//! the problem and its fix.

use std::{io, path::PathBuf};

/// Exit statuses of pmet itself (the traced command's own status passes
/// through unchanged; these apply when pmet fails before or instead of it).
pub mod exit {
    /// Invalid arguments (clap also uses 2).
    pub const USAGE: i32 = 2;
    /// The report file cannot be written.
    pub const OUTPUT: i32 = 3;
    /// `--pid` names no running process.
    pub const NO_SUCH_PID: i32 = 4;
    /// The history store cannot be used, or pmet's own stdout cannot be
    /// written (a full disk): sysexits' EX_IOERR.
    pub const IO: i32 = 74;
    /// The history store cannot be used.
    pub const HISTORY: i32 = IO;
    /// pmet cannot trace on this machine or with these privileges.
    pub const CANNOT_TRACE: i32 = 125;
    /// The command exists but cannot be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
}

/// Everything that can stop pmet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Missing privileges.
    #[error(
        "pmet needs root to load its eBPF programs (missing {missing}); run it as `sudo pmet ...`"
    )]
    NotRoot {
        /// Capabilities that are missing, comma-separated.
        missing: String,
    },
    /// pmet runs inside a pid namespace (a container), where its kernel
    /// programs see host pids and pmet its own: it cannot follow a tree.
    #[error(
        "pmet runs inside a pid namespace ({0}; a container?), where its kernel programs see \
         other pids than it does; run pmet in the host's pid namespace for exact figures"
    )]
    PidNamespace(String),
    /// tracefs is neither mounted nor mountable.
    #[error(
        "tracefs is not mounted and could not be mounted ({0}); mount it with \
         `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    Tracefs(String),
    /// A tracepoint's format could not be read.
    #[error("tracepoint {tracepoint} is not available on this kernel: {source}")]
    Tracepoint {
        /// `category:name`.
        tracepoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A tracepoint lacks a field pmet reads.
    #[error("tracepoint {tracepoint} has no field `{field}` on this kernel")]
    TracepointField {
        /// `category:name`.
        tracepoint: String,
        /// The field.
        field: String,
    },
    /// BTF is missing or lacks what pmet needs.
    #[error("kernel BTF at {path}: {what}")]
    Btf {
        /// The BTF file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The eBPF object failed to load.
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    /// One program failed to load or attach.
    #[error("eBPF program `{program}` ({hook}) failed to {action}: {detail}")]
    Program {
        /// Program name in the object.
        program: String,
        /// The hook, e.g. `tracepoint sched:sched_process_exit`.
        hook: String,
        /// `load` or `attach`.
        action: &'static str,
        /// The error chain.
        detail: String,
    },
    /// A map the loader needs is missing or of the wrong type.
    #[error("eBPF map `{map}`: {detail}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The command to launch does not exist.
    #[error("command not found: {0}")]
    CommandNotFound(String),
    /// The command cannot be executed.
    #[error("cannot execute {path}: {source}")]
    NotExecutable {
        /// The path tried.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Launching failed for another reason.
    /// The working directory given for the command cannot be used.
    #[error("cannot start the command in {path}: {source}; give a directory it can enter")]
    Cwd {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    #[error("could not start the command: {0}")]
    Launch(#[source] io::Error),
    /// `--pid` names nothing.
    #[error("no process with pid {0} is running; check the pid with `ps -p {0}`")]
    NoSuchPid(u32),
    /// A file pmet writes for the user (report, stream, export) cannot be
    /// written there.
    #[error("cannot write {path}: {source}; choose a path you can write to with {option}")]
    Output {
        /// The path.
        path: PathBuf,
        /// The option that named it (`-o`, `--stream`, ...).
        option: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The metrics endpoint cannot listen where it was asked to.
    #[error(
        "cannot listen on {addr}: {source}; choose a free address with --prometheus (HOST:PORT)"
    )]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An invalid argument that clap cannot check by itself.
    #[error("{0}")]
    Usage(String),
    /// The history store cannot be used (`--record`).
    #[error("{0}; check it, or choose another with PMET_HISTORY=FILE")]
    History(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The exit status pmet ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandNotFound(_) => exit::NOT_FOUND,
            Error::NotExecutable { .. } => exit::NOT_EXECUTABLE,
            Error::NoSuchPid(_) => exit::NO_SUCH_PID,
            Error::Output { .. } | Error::Listen { .. } => exit::OUTPUT,
            Error::Usage(_) | Error::Cwd { .. } => exit::USAGE,
            Error::History(_) => exit::HISTORY,
            Error::NotRoot { .. }
            | Error::Tracefs(_)
            | Error::PidNamespace(_)
            | Error::Tracepoint { .. }
            | Error::TracepointField { .. }
            | Error::Btf { .. }
            | Error::Load(_)
            | Error::Program { .. }
            | Error::Map { .. }
            | Error::Launch(_)
            | Error::Other(_) => exit::CANNOT_TRACE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_class() {
        let cases = [
            (Error::CommandNotFound("x".into()).exit_code(), 127),
            (
                Error::NotExecutable {
                    path: "x".into(),
                    source: io::Error::from_raw_os_error(libc::EACCES),
                }
                .exit_code(),
                126,
            ),
            (Error::NoSuchPid(1).exit_code(), 4),
            (
                Error::Output {
                    path: "/x".into(),
                    option: "-o",
                    source: io::Error::from_raw_os_error(libc::EACCES),
                }
                .exit_code(),
                3,
            ),
            (Error::Usage("x".into()).exit_code(), 2),
            (Error::History("x".into()).exit_code(), 74),
            (
                Error::NotRoot {
                    missing: "CAP_BPF".into(),
                }
                .exit_code(),
                125,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn messages_name_the_fix() {
        let e = Error::NotRoot {
            missing: "CAP_BPF, CAP_PERFMON".into(),
        };
        assert!(e.to_string().contains("sudo pmet"));
        assert!(Error::NoSuchPid(9).to_string().contains("ps -p 9"));
    }
}
