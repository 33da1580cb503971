//! pmet's own output on its standard streams, without the panics of
//! `print!`/`eprint!`: a reader that went away (`| head -1`) ends the output
//! quietly, and a full device is an error to report, never exit 101.

use std::io::{self, Write};

/// Writes a line to stderr. Failing to say something on stderr is not a
/// reason to fail: `pmet trace` must still return the command's status.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::out::to_stderr(::std::format_args!($($t)*))
    };
}

#[doc(hidden)]
pub fn to_stderr(args: std::fmt::Arguments<'_>) {
    let mut e = io::stderr().lock();
    let _ = e.write_fmt(args).and_then(|()| e.write_all(b"\n"));
}

/// Writes `text` to stdout. A closed pipe is not an error (the reader has
/// what it wanted); anything else (a full disk) is, with what failed.
pub fn to_stdout(text: &[u8]) -> io::Result<()> {
    let mut o = io::stdout().lock();
    match o.write_all(text).and_then(|()| o.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("writing to standard output: {e}"),
        )),
        Ok(()) => Ok(()),
    }
}

/// Like [`to_stdout`], ending pmet's part with `status` on a real failure
/// (said on stderr) and `None` otherwise.
pub fn stdout_or_status(text: &[u8]) -> Option<i32> {
    to_stdout(text).err().map(|e| {
        say!("pmet: error: {e}");
        crate::error::exit::IO
    })
}
