//! Writing the report: checked and anchored before anything is launched,
//! written with the invoking user's credentials (see [`crate::userfile`]),
//! atomically for a regular file so a reader never sees half a report.

use std::{
    io::{self, Write},
    path::PathBuf,
};

use crate::{error::Error, privileges::Credentials, userfile::UserFile};

/// Where the report goes, as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// A file (or a device, FIFO or `/dev/fd/N`).
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

    /// The path as shown to a person.
    pub fn shown(&self) -> PathBuf {
        match self {
            OutputTarget::File(p) => p.clone(),
            OutputTarget::Stdout => "-".into(),
        }
    }

    /// Checks now, as `creds`, that the report can be written there later,
    /// and anchors its directory (see [`UserFile::prepare`]).
    /// `option` names the option that gave the path, for the error.
    pub fn prepare(
        &self,
        creds: Option<&Credentials>,
        option: &'static str,
    ) -> Result<Output, Error> {
        let path = self.shown();
        UserFile::prepare(&path, creds)
            .map(|f| Output(f, option))
            .map_err(|source| Error::Output {
                path,
                option,
                source,
            })
    }
}

/// A prepared report destination.
#[derive(Debug)]
pub struct Output(UserFile, &'static str);

impl Output {
    /// Writes `bytes`.
    pub fn write(&self, bytes: &[u8]) -> Result<(), Error> {
        self.write_with(|w| w.write_all(bytes))
    }

    /// Writes through `fill`, which streams into a buffered writer (a large
    /// report is never held whole in memory).
    pub fn write_with(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send,
    ) -> Result<(), Error> {
        self.0.write_with(fill).map_err(|source| Error::Output {
            path: self.0.path().to_owned(),
            option: self.1,
            source,
        })
    }

    /// Opens it for writing as it goes (`--stream`).
    pub fn open_stream(&self) -> Result<Box<dyn std::io::Write + Send>, Error> {
        self.0.open_stream().map_err(|source| Error::Output {
            path: self.0.path().to_owned(),
            option: self.1,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_targets_fail_early_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = OutputTarget::File(dir.path().into())
            .prepare(None, "-o")
            .unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let missing = dir.path().join("no/such/dir/r.json");
        let e = OutputTarget::File(missing.clone())
            .prepare(None, "-o")
            .unwrap_err();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::OUTPUT);
        assert_eq!(OutputTarget::parse("-"), OutputTarget::Stdout);
    }
}
