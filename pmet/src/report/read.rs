//! Reading a saved report back, leniently: reports from older or newer pmet
//! versions load (unknown fields are ignored, missing ones are listed), and
//! damaged input gets a one-line error naming the file and the problem,
//! never a panic.

use std::{io, path::Path};

use serde_json::Value;

use super::{PROCESS_FIELDS, Report, SCHEMA, TOP_FIELDS, TOTALS_FIELDS};

/// Exit status for a report that cannot be read (sysexits' EX_DATAERR).
pub const EXIT_BAD_REPORT: i32 = 65;
/// Exit status for a report file that does not exist (EX_NOINPUT).
pub const EXIT_NO_REPORT: i32 = 66;

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {name}: {source}")]
    Io {
        /// The file.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is empty.
    #[error("{name} is empty: not a pmet report")]
    Empty {
        /// The file.
        name: String,
    },
    /// Not JSON, or cut short.
    #[error("{name} is not valid JSON ({detail}); was it truncated?")]
    NotJson {
        /// The file.
        name: String,
        /// serde_json's account, with line and column.
        detail: String,
    },
    /// JSON, but not a pmet report.
    #[error("{name} is not a pmet report: {why}")]
    NotAReport {
        /// The file.
        name: String,
        /// What is wrong.
        why: String,
    },
}

impl ReadError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                EXIT_NO_REPORT
            }
            _ => EXIT_BAD_REPORT,
        }
    }
}

/// A report as read, with what it lacked.
#[derive(Debug)]
pub struct Loaded {
    /// The report (missing fields at their defaults).
    pub report: Report,
    /// Documented fields the file lacks (`totals.cpu_user_s`, ...).
    pub missing: Vec<String>,
    /// Written by a newer pmet (a later schema version).
    pub newer: bool,
}

/// Reads a report file.
pub fn read_report(path: &Path) -> Result<Loaded, ReadError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        name: name.clone(),
        source,
    })?;
    parse_report(&bytes, &name)
}

/// Parses report bytes; `name` is used in errors.
pub fn parse_report(bytes: &[u8], name: &str) -> Result<Loaded, ReadError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ReadError::Empty { name: name.into() });
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ReadError::NotJson {
        name: name.into(),
        detail: e.to_string(),
    })?;
    let not = |why: String| ReadError::NotAReport {
        name: name.into(),
        why,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| not("the top level is not an object".into()))?;
    let schema = match obj.get("schema") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(not("`schema` is not a string".into())),
        None => return Err(not("it has no `schema` field".into())),
    };
    let version = schema
        .strip_prefix("pmet.report.v")
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| not(format!("schema `{schema}` is not `{SCHEMA}`")))?;
    let mut missing = Vec::new();
    for k in TOP_FIELDS {
        if !obj.contains_key(k) {
            missing.push(k.to_owned());
        }
    }
    if let Some(t) = obj.get("totals").and_then(Value::as_object) {
        for k in TOTALS_FIELDS {
            if !t.contains_key(k) {
                missing.push(format!("totals.{k}"));
            }
        }
    }
    if let Some(ps) = obj.get("processes").and_then(Value::as_array) {
        for (i, p) in ps.iter().enumerate() {
            let Some(p) = p.as_object() else {
                return Err(not(format!("processes[{i}] is not an object")));
            };
            for k in PROCESS_FIELDS {
                if !p.contains_key(k) && missing.len() < 20 {
                    missing.push(format!("processes[{i}].{k}"));
                }
            }
        }
    }
    let report: Report = serde_json::from_value(v).map_err(|e| not(e.to_string()))?;
    Ok(Loaded {
        report,
        missing,
        newer: version > 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_inputs_are_named_errors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "is empty"),
            (b"  \n", "is empty"),
            (b"{\"schema\": \"pmet.report.v1\", \"proc", "not valid JSON"),
            (b"\x7fELF\x02", "not valid JSON"),
            (b"[1, 2]", "top level is not an object"),
            (b"{\"a\": 1}", "no `schema` field"),
            (b"{\"schema\": \"other.v1\"}", "is not `pmet.report.v1`"),
        ];
        for (input, want) in cases {
            let e = parse_report(input, "x.json").unwrap_err().to_string();
            assert!(e.contains("x.json") && e.contains(want), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = parse_report(
            br#"{"schema": "pmet.report.v1", "duration_s": "long"}"#,
            "y.json",
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), EXIT_BAD_REPORT);
        assert!(e.to_string().contains("y.json"));
    }

    #[test]
    fn older_and_newer_reports_load_with_notes() {
        let old = br#"{"schema": "pmet.report.v1", "duration_s": 2.0, "totals": {"processes": 3}}"#;
        let l = parse_report(old, "old.json").unwrap();
        assert_eq!(l.report.duration_s, 2.0);
        assert_eq!(l.report.totals.processes, 3);
        assert!(
            l.missing.contains(&"totals.cpu_user_s".to_string()),
            "{:?}",
            l.missing
        );
        assert!(!l.newer);
        let new = br#"{"schema": "pmet.report.v2", "duration_s": 1.0, "brand_new": {"x": [1]}}"#;
        let l = parse_report(new, "new.json").unwrap();
        assert!(l.newer);
        assert_eq!(l.report.duration_s, 1.0);
    }

    #[test]
    fn missing_files_have_their_own_status() {
        let e = read_report(Path::new("/nonexistent/r.json")).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_NO_REPORT);
        assert!(e.to_string().contains("/nonexistent/r.json"));
    }
}
