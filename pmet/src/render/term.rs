//! Putting the live panel on a terminal that the traced command writes to as
//! well: the panel owns the bottom lines, and a scroll region keeps the
//! command's output scrolling above it. The terminal is restored on every
//! exit path that runs destructors.

use std::io::{self, Write};

/// Terminal size of stderr: (rows, columns).
pub fn size() -> Option<(u16, u16)> {
    // SAFETY: ioctl with a valid winsize buffer.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) == 0
            && ws.ws_row > 0
            && ws.ws_col > 0)
            .then_some((ws.ws_row, ws.ws_col))
    }
}

/// Whether stderr is a terminal.
pub fn stderr_is_tty() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// The bottom-of-screen panel.
pub struct Panel {
    rows: u16,
    cols: u16,
    height: u16,
    active: bool,
}

/// How many lines the panel takes on a terminal of `rows` rows: enough for
/// the totals and a few processes, never more than 40 % of the screen.
pub fn panel_height(rows: u16) -> u16 {
    (rows * 2 / 5).clamp(1, 16)
}

impl Panel {
    /// Reserves the bottom lines (scrolling what is on screen up).
    pub fn start() -> io::Result<Self> {
        let (rows, cols) = size().unwrap_or((24, 80));
        let mut p = Panel {
            rows,
            cols,
            height: panel_height(rows),
            active: false,
        };
        p.setup()?;
        Ok(p)
    }

    fn setup(&mut self) -> io::Result<()> {
        let mut e = io::stderr().lock();
        let h = self.height;
        // Make room below the cursor, go back up, and keep everything above
        // the panel scrolling on its own. DECSTBM homes the cursor: save and
        // restore around it.
        write!(e, "{}", "\n".repeat(h as usize))?;
        write!(e, "\x1b[{h}A\x1b7\x1b[1;{}r\x1b8", self.rows - h)?;
        e.flush()?;
        self.active = true;
        Ok(())
    }

    /// Columns available.
    pub fn width(&self) -> usize {
        self.cols as usize
    }

    /// Lines available.
    pub fn height(&self) -> usize {
        self.height as usize
    }

    /// Redraws the panel with `lines` (at most `height()` are shown).
    pub fn draw(&mut self, lines: &[String]) -> io::Result<()> {
        if !self.active {
            return Ok(());
        }
        let mut buf = String::from("\x1b7");
        let top = self.rows - self.height + 1;
        for i in 0..self.height {
            buf.push_str(&format!("\x1b[{};1H\x1b[2K", top + i));
            if let Some(l) = lines.get(i as usize) {
                buf.push_str(l);
            }
        }
        buf.push_str("\x1b8");
        // One write, so the command's output is unlikely to land mid-panel.
        let mut e = io::stderr().lock();
        e.write_all(buf.as_bytes())?;
        e.flush()
    }

    /// Follows a terminal resize.
    pub fn resize(&mut self) -> io::Result<()> {
        let Some((rows, cols)) = size() else {
            return Ok(());
        };
        if (rows, cols) == (self.rows, self.cols) {
            return Ok(());
        }
        self.clear()?;
        self.rows = rows;
        self.cols = cols;
        self.height = panel_height(rows);
        // The cursor is where the command left it; start the new panel below.
        self.setup()
    }

    fn clear(&mut self) -> io::Result<()> {
        if !self.active {
            return Ok(());
        }
        let mut e = io::stderr().lock();
        let top = self.rows - self.height + 1;
        write!(e, "\x1b7")?;
        for i in 0..self.height {
            write!(e, "\x1b[{};1H\x1b[2K", top + i)?;
        }
        write!(e, "\x1b[r\x1b8")?;
        e.flush()?;
        self.active = false;
        Ok(())
    }

    /// Removes the panel and gives the whole screen back.
    pub fn finish(&mut self) -> io::Result<()> {
        self.clear()
    }
}

impl Drop for Panel {
    fn drop(&mut self) {
        let _ = self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_takes_at_most_two_fifths() {
        assert_eq!(panel_height(24), 9);
        assert_eq!(panel_height(60), 16);
        assert_eq!(panel_height(3), 1);
        assert_eq!(panel_height(1), 1);
    }
}
