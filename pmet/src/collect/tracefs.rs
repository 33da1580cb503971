//! tracefs: mounted when missing (aya resolves tracepoint ids through it), and
//! read for the field offsets of the tracepoints pmet attaches to.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use crate::error::Error;

/// Where tracefs is usually found, in the order tried.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A tracefs mount.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The declaration, e.g. `unsigned long clone_flags`.
    pub decl: String,
    /// Name, e.g. `clone_flags`.
    pub name: String,
    /// Byte offset in the record.
    pub offset: u16,
    /// Size in bytes.
    pub size: u16,
}

/// Parses a tracepoint `format` file into its fields.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("field:")?;
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                    decl = Some(part.to_owned());
                }
            }
            let decl = decl?;
            // The name is the last identifier, after dropping an array suffix
            // (`char comm[16]`); `__data_loc char[] filename` has none.
            let base = match decl.strip_suffix(']') {
                Some(d) => d.rsplit_once('[').map_or(d, |(head, _)| head).trim_end(),
                None => decl.as_str(),
            };
            let name = base
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()?
                .to_owned();
            Some(Field {
                decl,
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

impl Tracefs {
    /// Finds tracefs, mounting it when no mount exists.
    pub fn find_or_mount() -> Result<Self, Error> {
        for c in CANDIDATES {
            if Path::new(c).join("events").is_dir() {
                return Ok(Self { root: c.into() });
            }
        }
        let mut errors = Vec::new();
        for c in CANDIDATES {
            match mount_tracefs(c) {
                Ok(()) if Path::new(c).join("events").is_dir() => {
                    log::debug!("mounted tracefs at {c}");
                    return Ok(Self { root: c.into() });
                }
                Ok(()) => errors.push(format!("{c}: mounted but has no events/")),
                Err(e) => errors.push(format!("{c}: {e}")),
            }
        }
        Err(Error::Tracefs(errors.join("; ")))
    }

    /// A tracefs at a known path (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Fields of `category:name`.
    pub fn fields(&self, category: &str, name: &str) -> io::Result<Vec<Field>> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        Ok(parse_format(&fs::read_to_string(path)?))
    }

    /// Offset of one field; an error names the tracepoint and field.
    pub fn offset(&self, category: &str, name: &str, field: &str) -> Result<u16, Error> {
        self.try_offset(category, name, field)?
            .ok_or_else(|| Error::TracepointField {
                tracepoint: format!("{category}:{name}"),
                field: field.to_owned(),
            })
    }

    /// Offset of a field that some kernels lack.
    pub fn try_offset(
        &self,
        category: &str,
        name: &str,
        field: &str,
    ) -> Result<Option<u16>, Error> {
        let fields = self.fields(category, name).map_err(|e| Error::Tracepoint {
            tracepoint: format!("{category}:{name}"),
            source: e,
        })?;
        Ok(fields.iter().find(|f| f.name == field).map(|f| f.offset))
    }
}

fn mount_tracefs(target: &str) -> io::Result<()> {
    let src = CString::new("nodev").expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    let dst = CString::new(target).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWTASK: &str = "name: task_newtask
ID: 140
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:40;\tsize:2;\tsigned:1;
\tfield:__data_loc char[] filename;\toffset:44;\tsize:4;\tsigned:0;

print fmt: \"pid=%d comm=%s clone_flags=%llx oom_score_adj=%hd\", REC->pid, REC->comm, REC->clone_flags, REC->oom_score_adj
";

    #[test]
    fn parses_fields_and_offsets() {
        let f = parse_format(NEWTASK);
        let get = |n: &str| f.iter().find(|x| x.name == n).unwrap();
        assert_eq!(get("common_pid").offset, 4);
        assert_eq!(get("pid").offset, 8);
        assert_eq!(get("comm").offset, 12);
        assert_eq!(get("comm").size, 16);
        assert_eq!(get("clone_flags").offset, 32);
        assert_eq!(get("clone_flags").size, 8);
        assert_eq!(get("oom_score_adj").offset, 40);
        assert_eq!(get("filename").offset, 44);
        assert_eq!(f.len(), 9);
    }

    #[test]
    fn missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events/task/task_newtask");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("format"), NEWTASK).unwrap();
        let t = Tracefs::at(dir.path());
        assert_eq!(t.offset("task", "task_newtask", "clone_flags").unwrap(), 32);
        assert_eq!(t.try_offset("task", "task_newtask", "nope").unwrap(), None);
        let e = t
            .offset("task", "task_newtask", "nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("task:task_newtask") && e.contains("nope"), "{e}");
        assert!(t.offset("task", "missing", "pid").is_err());
    }
}
