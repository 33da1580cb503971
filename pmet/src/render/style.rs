//! ANSI colors, only when wanted: `--color`, `NO_COLOR`, and whether the
//! output is a terminal decide.

/// `--color` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Color on a terminal, unless `NO_COLOR` is set.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

impl ColorChoice {
    /// Whether to color output going to a terminal (`is_tty`) under this choice.
    pub fn enabled(self, is_tty: bool) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// Paints text when enabled; a no-op otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// Whether escapes are written.
    pub color: bool,
}

impl Style {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    /// Bold.
    pub fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
    /// Dim, for labels and zeros.
    pub fn dim(self, s: &str) -> String {
        self.wrap("2", s)
    }
    /// Red, for failures and losses.
    pub fn red(self, s: &str) -> String {
        self.wrap("31", s)
    }
    /// Bold red.
    pub fn alarm(self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    /// Green, for success.
    pub fn green(self, s: &str) -> String {
        self.wrap("32", s)
    }
    /// Cyan, for the spinner and headings.
    pub fn cyan(self, s: &str) -> String {
        self.wrap("36", s)
    }
}

/// The characters of `s` that show: SGR escape sequences (`ESC ... m`, the
/// only ones [`Style`] writes) left out.
fn visible_chars(s: &str) -> impl Iterator<Item = char> + '_ {
    let mut in_esc = false;
    s.chars().filter(move |&c| match (in_esc, c) {
        (false, '\x1b') => {
            in_esc = true;
            false
        }
        (true, c) => {
            in_esc = c != 'm';
            false
        }
        (false, _) => true,
    })
}

/// The visible width of `s` (escape sequences take no room).
pub fn visible_width(s: &str) -> usize {
    visible_chars(s).count()
}

/// `s` without its escape sequences.
pub fn strip(s: &str) -> String {
    visible_chars(s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_only_when_asked() {
        assert!(!ColorChoice::Auto.enabled(false));
        assert!(ColorChoice::Always.enabled(false));
        assert!(!ColorChoice::Never.enabled(true));
        let s = Style { color: true };
        assert_eq!(s.red("x"), "\x1b[31mx\x1b[0m");
        assert_eq!(visible_width(&s.red("abc")), 3);
        assert_eq!(strip(&format!("x{}y", s.red("abc"))), "xabcy");
        assert_eq!(Style { color: false }.red("x"), "x");
    }
}
