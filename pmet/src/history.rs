//! Runs recorded on this machine (`pmet trace --record`), in an embedded
//! SQLite store: `pmet history` lists runs of a command with their key
//! figures, and `pmet diff` takes a run id as well as a file.
//!
//! Every write is one transaction, so a crash mid-write leaves the store as
//! it was; WAL mode and a busy timeout let several pmet processes write at
//! once.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, config::DbConfig, params};

use crate::{
    privileges::{Credentials, as_user},
    report::{Report, diff::metric},
    units::command_line,
};

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite failed.
    #[error("history store {path}: {source}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The store's file or directory is unusable (cannot be created, is
    /// not a regular file).
    #[error("history store {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No such run.
    #[error("no run {0} in the history; list runs with `pmet history`")]
    NoRun(i64),
    /// Nothing recorded yet.
    #[error(
        "no runs recorded yet ({0} does not exist); record one with `sudo pmet trace --record -- COMMAND`"
    )]
    NoStore(PathBuf),
}

/// Where the store lives: `$PMET_HISTORY`, else `$XDG_DATA_HOME/pmet/`, else
/// `~/.local/share/pmet/` of `home`.
pub fn default_path(home: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("PMET_HISTORY") {
        return p.into();
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".local").join("share"));
    base.join("pmet").join("history.db")
}

/// The store.
pub struct History {
    conn: Connection,
    path: PathBuf,
}

/// One recorded run, in a listing.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunRow {
    /// Run id.
    pub id: i64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The command line.
    pub command: String,
    /// Exit status.
    pub exit_code: Option<i64>,
    /// Seconds.
    pub duration_s: f64,
    /// CPU seconds, user + system.
    pub cpu_s: f64,
    /// Peak memory of the tree (sampled), bytes.
    pub rss_bytes: Option<i64>,
    /// Network bytes sent + received.
    pub net_bytes: Option<i64>,
    /// Processes.
    pub processes: i64,
    /// Lost events.
    pub lost_events: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    command TEXT NOT NULL,
    exit_code INTEGER,
    duration_s REAL NOT NULL,
    cpu_s REAL NOT NULL,
    rss_bytes INTEGER,
    net_bytes INTEGER,
    processes INTEGER NOT NULL,
    lost_events INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_command ON runs (command, id);
";

/// Runs `f` on the store at `path`, opened with `creds` (the invoking user's,
/// so the store, its directories and SQLite's side files are the user's,
/// and root never writes where the user could not). `write` opens it for
/// recording, creating it when needed; otherwise it is only read and never
/// created.
pub fn with_store<R: Send>(
    path: &Path,
    creds: Option<&Credentials>,
    write: bool,
    f: impl FnOnce(&mut History) -> Result<R, HistoryError> + Send,
) -> Result<R, HistoryError> {
    as_user(creds, || {
        if !write && std::fs::symlink_metadata(path).is_err() {
            return Err(HistoryError::NoStore(path.to_owned()));
        }
        // SQLite would block for ever opening a FIFO nobody writes.
        if let Ok(m) = std::fs::metadata(path)
            && !m.is_file()
        {
            return Err(HistoryError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "it is not a regular file (a history store is an SQLite file); \
                     remove it or point PMET_HISTORY elsewhere",
                ),
            });
        }
        let mut h = if write {
            History::open(path)?
        } else {
            History::open_read(path)?
        };
        f(&mut h)
    })
    .map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?
}

/// The store's file may come from anyone who can write the user's home, so
/// it is read defensively: no triggers or views from its schema run, and the
/// schema cannot be used to reach SQL functions with side effects.
fn harden(conn: &Connection) -> rusqlite::Result<()> {
    for (c, on) in [
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
    ] {
        conn.set_db_config(c, on)?;
    }
    Ok(())
}

impl History {
    /// Opens the store at `path` for reading only; it must exist. A store in
    /// a directory the reader cannot write is still read (as immutable, since
    /// SQLite cannot create its side files there).
    pub fn open_read(path: &Path) -> Result<Self, HistoryError> {
        let sql = |source| HistoryError::Sql {
            path: path.to_owned(),
            source,
        };
        let open = |flags: OpenFlags, uri: bool| -> rusqlite::Result<Connection> {
            let conn = if uri {
                let mut u = String::from("file:");
                for b in path.as_os_str().as_encoded_bytes() {
                    match b {
                        b'/' | b'.' | b'-' | b'_' | b'~' => u.push(*b as char),
                        b if b.is_ascii_alphanumeric() => u.push(*b as char),
                        b => u.push_str(&format!("%{b:02X}")),
                    }
                }
                u.push_str("?immutable=1");
                Connection::open_with_flags(u, flags | OpenFlags::SQLITE_OPEN_URI)?
            } else {
                Connection::open_with_flags(path, flags)?
            };
            harden(&conn)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            // Reading the schema makes SQLite open the journal files now.
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(conn)
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match open(flags, false) {
            Ok(c) => c,
            Err(e)
                if path.exists()
                    && matches!(
                        e.sqlite_error_code(),
                        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
                    ) =>
            {
                open(flags, true).map_err(sql)?
            }
            Err(e) => return Err(sql(e)),
        };
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens (creating when needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let sql = |source| HistoryError::Sql {
            path: path.to_owned(),
            source,
        };
        // Several pmet processes may create the store at once: switching it
        // to WAL needs a moment alone, and SQLite answers "busy" at once
        // there instead of waiting. Retry for a while.
        let mut delay = Duration::from_millis(5);
        let started = std::time::Instant::now();
        let existed = std::fs::symlink_metadata(path).is_ok();
        let busy = |e: &rusqlite::Error| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            )
        };
        let conn = loop {
            match Self::init(path) {
                Ok(c) => break c,
                // A store this call created and could not set up (a full
                // disk) is removed, not left as an empty file that every
                // later reader would call corrupt.
                Err(e) if !existed && !busy(&e) => {
                    for suffix in ["", "-wal", "-shm", "-journal"] {
                        let mut p = path.as_os_str().to_owned();
                        p.push(suffix);
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(sql(e));
                }
                Err(e) if busy(&e) && started.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(sql(e)),
            }
        };
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn init(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        harden(&conn)?;
        // Concurrent writers wait for each other instead of failing.
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(conn)
    }

    fn sql(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a run; returns its id.
    pub fn record(&mut self, r: &Report) -> Result<i64, HistoryError> {
        let json = serde_json::to_string(r).expect("a report always serializes");
        let path = self.path.clone();
        let sql = |source| HistoryError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        let net = metric(r, "net_tx")
            .zip(metric(r, "net_rx"))
            .map(|(a, b)| (a + b) as i64);
        tx.execute(
            "INSERT INTO runs (started_at, command, exit_code, duration_s, cpu_s, rss_bytes, net_bytes, processes, lost_events, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.started_at,
                key(r),
                r.exit_code,
                r.duration_s,
                r.totals.cpu_user_s + r.totals.cpu_system_s,
                metric(r, "rss").map(|v| v as i64),
                net,
                r.totals.processes as i64,
                r.collector.lost_events as i64,
                json,
            ],
        )
        .map_err(sql)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(sql)?;
        Ok(id)
    }

    /// Runs, newest first; only those of `command` when given.
    pub fn list(&self, command: Option<&str>, limit: usize) -> Result<Vec<RunRow>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, started_at, command, exit_code, duration_s, cpu_s, rss_bytes, net_bytes, processes, lost_events
                 FROM runs WHERE (?1 IS NULL OR command = ?1) ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![command, limit as i64], |row| {
                Ok(RunRow {
                    id: row.get(0)?,
                    started_at: row.get(1)?,
                    command: row.get(2)?,
                    exit_code: row.get(3)?,
                    duration_s: row.get(4)?,
                    cpu_s: row.get(5)?,
                    rss_bytes: row.get(6)?,
                    net_bytes: row.get(7)?,
                    processes: row.get(8)?,
                    lost_events: row.get(9)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }

    /// The full report of run `id`, as stored (JSON).
    pub fn report_json(&self, id: i64) -> Result<String, HistoryError> {
        self.conn
            .query_row("SELECT report FROM runs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?
            .ok_or(HistoryError::NoRun(id))
    }
}

/// The command line a run is filed under.
pub fn key(r: &Report) -> String {
    match &r.command {
        Some(c) => command_line(c),
        None => format!("(attached to pid {})", r.root_pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Totals;

    fn report(cmd: &str, cpu: f64) -> Report {
        Report {
            schema: "pmet.report.v1".into(),
            command: Some(cmd.split(' ').map(String::from).collect()),
            duration_s: 1.0,
            totals: Totals {
                cpu_user_s: cpu,
                processes: 2,
                ..Totals::default()
            },
            ..Report::default()
        }
    }

    #[test]
    fn records_lists_and_returns_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/history.db");
        let mut h = History::open(&path).unwrap();
        let a = h.record(&report("make -j8", 1.0)).unwrap();
        let b = h.record(&report("make -j8", 2.0)).unwrap();
        h.record(&report("cargo test", 3.0)).unwrap();
        let runs = h.list(Some("make -j8"), 10).unwrap();
        assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [b, a]);
        assert_eq!(runs[0].cpu_s, 2.0);
        assert_eq!(h.list(None, 10).unwrap().len(), 3);
        let back: Report = serde_json::from_str(&h.report_json(a).unwrap()).unwrap();
        assert_eq!(back.totals.cpu_user_s, 1.0);
        assert!(matches!(h.report_json(999), Err(HistoryError::NoRun(999))));
    }

    #[test]
    fn concurrent_writers_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        History::open(&path).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut h = History::open(&path).unwrap();
                    for i in 0..25 {
                        h.record(&report(&format!("job {t}"), f64::from(i)))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let h = History::open(&path).unwrap();
        assert_eq!(h.list(None, 1000).unwrap().len(), 200);
        for t in 0..8 {
            assert_eq!(h.list(Some(&format!("job {t}")), 1000).unwrap().len(), 25);
        }
    }
}
