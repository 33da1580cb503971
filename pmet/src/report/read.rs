//! Reading a saved report back, leniently: reports from older or newer pmet
//! versions load (unknown fields are ignored, missing ones are listed), and
//! damaged input gets a one-line error naming the file and the problem,
//! never a panic.

use std::{io, path::Path};

use serde::{
    Deserialize,
    de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

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
    /// Larger than any report pmet writes.
    #[error("{name} is larger than {limit} bytes: not a pmet report")]
    TooLarge {
        /// The file.
        name: String,
        /// [`MAX_REPORT_BYTES`].
        limit: u64,
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

/// Largest report read. Reports are streamed as they are written and a
/// 10,000-process run is a few tens of MB; past this the input is not a
/// report pmet wrote (`/dev/zero`, say), and reading on would only exhaust
/// memory.
pub const MAX_REPORT_BYTES: u64 = 2 << 30;

/// Reads a report file (or a device or pipe holding one), at most
/// [`MAX_REPORT_BYTES`].
pub fn read_report(path: &Path) -> Result<Loaded, ReadError> {
    use std::io::Read;
    let name = path.display().to_string();
    let io = |source| ReadError::Io {
        name: name.clone(),
        source,
    };
    let mut bytes = Vec::new();
    let mut f = std::fs::File::open(path).map_err(io)?;
    (&mut f)
        .take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    // A report is an object: anything else (`/dev/zero`) is named now, not
    // after reading gigabytes of it.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') && bytes.len() == 64 * 1024 {
        return parse_report(&bytes, &name);
    }
    f.take(MAX_REPORT_BYTES + 1 - bytes.len() as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_REPORT_BYTES {
        return Err(ReadError::TooLarge {
            name,
            limit: MAX_REPORT_BYTES,
        });
    }
    parse_report(&bytes, &name)
}

/// Parses report bytes; `name` is used in errors. Memory stays in proportion
/// to what the report really holds: nothing is built for fields pmet does
/// not know, and the check for missing fields keeps no values.
pub fn parse_report(bytes: &[u8], name: &str) -> Result<Loaded, ReadError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ReadError::Empty { name: name.into() });
    }
    let not = |why: String| ReadError::NotAReport {
        name: name.into(),
        why,
    };
    let json_error = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => not(e.to_string()),
        _ => ReadError::NotJson {
            name: name.into(),
            detail: e.to_string(),
        },
    };
    let shape = {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let shape =
            serde::de::Deserializer::deserialize_any(&mut de, ShapeVisitor).map_err(json_error)?;
        de.end().map_err(json_error)?;
        shape.ok_or_else(|| not("the top level is not an object".into()))?
    };
    let schema = match shape.schema {
        Some(Some(s)) => s,
        Some(None) => return Err(not("`schema` is not a string".into())),
        None => return Err(not("it has no `schema` field".into())),
    };
    let version = schema
        .strip_prefix("pmet.report.v")
        .and_then(|n| n.parse::<u32>().ok())
        // Debug quoting: the text may hold terminal controls.
        .ok_or_else(|| not(format!("schema {schema:?} is not `{SCHEMA}`")))?;
    if let Some(i) = shape.not_object {
        return Err(not(format!("processes[{i}] is not an object")));
    }
    let report: Report = serde_json::from_slice(bytes).map_err(|e| not(e.to_string()))?;
    Ok(Loaded {
        report,
        missing: shape.missing,
        newer: version > 1,
    })
}

/// What [`ShapeVisitor`] learns of a report's top level.
#[derive(Default)]
struct Shape {
    /// `Some(None)`: present, not a string.
    schema: Option<Option<String>>,
    /// Documented fields absent, at most [`MAX_MISSING`] of the per-process ones.
    missing: Vec<String>,
    /// The first element of `processes` that is not an object.
    not_object: Option<usize>,
}

/// Per-process absences listed before the rest are left out.
const MAX_MISSING: usize = 20;

/// Walks the top level; `None` when it is not an object.
struct ShapeVisitor;

/// The keys of one object that are among `fields`; `None` when not an object.
struct KeysSeed(&'static [&'static str]);

/// `processes`: the missing keys of each element, and the first non-object.
struct ProcessesSeed<'a>(&'a mut Shape);

macro_rules! not_an_object {
    ($($f:ident: $t:ty),*) => {
        $(fn $f<E: serde::de::Error>(self, _: $t) -> Result<Self::Value, E> { Ok(None) })*
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    };
}

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Option<Shape>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    not_an_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut shape = Shape::default();
        let mut seen = [false; TOP_FIELDS.len()];
        let mut totals: Option<Vec<bool>> = None;
        while let Some(key) = map.next_key::<String>()? {
            if let Some(i) = TOP_FIELDS.iter().position(|f| *f == key) {
                seen[i] = true;
            }
            match key.as_str() {
                "schema" => shape.schema = Some(map.next_value::<StrOrOther>()?.0),
                "totals" => totals = map.next_value_seed(KeysSeed(&TOTALS_FIELDS))?,
                "processes" => map.next_value_seed(ProcessesSeed(&mut shape))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let mut missing: Vec<String> = TOP_FIELDS
            .iter()
            .zip(seen)
            .filter(|(_, s)| !s)
            .map(|(f, _)| (*f).to_owned())
            .collect();
        if let Some(t) = totals {
            missing.extend(
                TOTALS_FIELDS
                    .iter()
                    .zip(t)
                    .filter(|(_, s)| !s)
                    .map(|(f, _)| format!("totals.{f}")),
            );
        }
        missing.append(&mut shape.missing);
        shape.missing = missing;
        Ok(Some(shape))
    }
}

/// A string, or anything else (skipped).
struct StrOrOther(Option<String>);

impl<'de> Deserialize<'de> for StrOrOther {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Some(s.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
        d.deserialize_any(V).map(StrOrOther)
    }
}

impl<'de> DeserializeSeed<'de> for KeysSeed {
    type Value = Option<Vec<bool>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed {
    type Value = Option<Vec<bool>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    not_an_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = vec![false; self.0.len()];
        while let Some(key) = map.next_key::<String>()? {
            if let Some(i) = self.0.iter().position(|f| *f == key) {
                seen[i] = true;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(Some(seen))
    }
}

impl<'de> DeserializeSeed<'de> for ProcessesSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ProcessesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of processes")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while let Some(seen) = seq.next_element_seed(KeysSeed(&PROCESS_FIELDS))? {
            match seen {
                None => {
                    self.0.not_object.get_or_insert(i);
                }
                Some(seen) => {
                    for (f, s) in PROCESS_FIELDS.iter().zip(seen) {
                        if !s && self.0.missing.len() < MAX_MISSING {
                            self.0.missing.push(format!("processes[{i}].{f}"));
                        }
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }
    // Not an array: the typed parse names the problem.
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
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
    fn endless_and_hostile_inputs_end_with_an_error() {
        let e = read_report(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        assert_eq!(e.exit_code(), EXIT_BAD_REPORT);
        // Unknown fields are skipped, not built: a huge array of nothing
        // under an unknown key costs no memory beyond the bytes.
        let mut big = br#"{"schema": "pmet.report.v1", "x": ["#.to_vec();
        for _ in 0..200_000 {
            big.extend_from_slice(b"[[]],");
        }
        big.extend_from_slice(b"[]]}");
        let l = parse_report(&big, "big.json").unwrap();
        assert!(l.missing.contains(&"duration_s".to_string()));
        let e = parse_report(
            br#"{"schema": "pmet.report.v1", "processes": [{}, 3]}"#,
            "p.json",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("processes[1] is not an object"),
            "{e}"
        );
        let e = parse_report(b"{\"schema\": \"\x1b[2J\"}", "esc.json").unwrap_err();
        assert!(!e.to_string().contains('\x1b'), "{e}");
    }

    #[test]
    fn missing_files_have_their_own_status() {
        let e = read_report(Path::new("/nonexistent/r.json")).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_NO_REPORT);
        assert!(e.to_string().contains("/nonexistent/r.json"));
    }
}
