//! Writing the report: checked before anything is launched, written
//! atomically (a temporary file in the same directory, then rename) so a
//! reader never sees half a report.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::error::Error;

/// Where the report goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// A file, replaced atomically.
    File(PathBuf),
    /// Standard output (`-o -`).
    Stdout,
}

impl OutputTarget {
    /// `-` means standard output.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            OutputTarget::Stdout
        } else {
            OutputTarget::File(s.into())
        }
    }

    /// Fails now, before anything is launched, if the report could not be
    /// written later: the directory must exist and accept a new file, and the
    /// path must not be a directory.
    pub fn check_writable(&self) -> Result<(), Error> {
        let OutputTarget::File(path) = self else {
            return Ok(());
        };
        let err = |source: io::Error| Error::Output {
            path: path.clone(),
            source,
        };
        if path.is_dir() {
            return Err(err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory",
            )));
        }
        let dir = parent_dir(path);
        if !dir.is_dir() {
            return Err(err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            )));
        }
        let probe = temp_path(path);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(err)?;
        drop(f);
        let _ = fs::remove_file(&probe);
        Ok(())
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    parent_dir(path).join(format!(".{name}.pmet-tmp.{}", std::process::id()))
}

/// Writes `bytes` to `target` atomically.
pub fn write_atomic(target: &OutputTarget, bytes: &[u8]) -> Result<(), Error> {
    write_atomic_with(target, |w| w.write_all(bytes))
}

/// Writes to `target` atomically through `fill`, which streams into a
/// buffered writer (a large report is never held whole in memory).
pub fn write_atomic_with(
    target: &OutputTarget,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), Error> {
    match target {
        OutputTarget::Stdout => {
            let mut out = io::BufWriter::new(io::stdout().lock());
            fill(&mut out)
                .and_then(|()| out.flush())
                .map_err(|source| Error::Output {
                    path: "-".into(),
                    source,
                })
        }
        OutputTarget::File(path) => {
            let tmp = temp_path(path);
            let res = (|| {
                let mut f = io::BufWriter::new(File::create(&tmp)?);
                fill(&mut f)?;
                let f = f.into_inner().map_err(io::IntoInnerError::into_error)?;
                f.sync_all()?;
                fs::rename(&tmp, path)
            })();
            if res.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            res.map_err(|source| Error::Output {
                path: path.clone(),
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let t = OutputTarget::parse(p.to_str().unwrap());
        t.check_writable().unwrap();
        write_atomic(&t, b"{\"a\":1}").unwrap();
        write_atomic(&t, b"{\"a\":2}").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"a\":2}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_targets_fail_early_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = OutputTarget::File(dir.path().into())
            .check_writable()
            .unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let missing = dir.path().join("no/such/dir/r.json");
        let e = OutputTarget::File(missing.clone())
            .check_writable()
            .unwrap_err();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::OUTPUT);
        assert_eq!(OutputTarget::parse("-"), OutputTarget::Stdout);
    }
}
