//! Human units.

use std::time::Duration;

/// Shortest polling interval accepted: below this, /proc polling costs more
/// than it tells.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds: `0.004 s`, `2.51 s`, `1m 05s`, `2h 03m`.
pub fn duration(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3} s")
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h {:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// A signal's name, e.g. `SIGKILL`.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

/// A character a traced program (or a file) must not hand a terminal or a
/// page raw: a control character (escape sequences), or a bidirectional
/// formatting character, which reorders what follows it on screen
/// (U+202E makes `gpj.exe` read as `exe.jpg`).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `c`, a [`hidden`] character, as an escape a reader can see.
fn escaped(c: char) -> String {
    if (c as u32) < 0x100 {
        format!("\\x{:02x}", c as u32)
    } else {
        format!("\\u{:04x}", c as u32)
    }
}

/// Text from a file, a store or a traced program, made safe for a
/// terminal: control and bidirectional formatting characters are shown as
/// `\xNN` / `\uNNNN` instead of being sent.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(hidden) {
        return s.into();
    }
    s.chars()
        .map(|c| if hidden(c) { escaped(c) } else { c.to_string() })
        .collect::<String>()
        .into()
}

/// Quotes an argument for display the way a shell would need it (control
/// characters such as newlines as `$'\n'`, so one command stays one line;
/// bidirectional formatting characters as `$'\u202e'`, so none reorders it).
pub fn shell_quote(a: &str) -> String {
    if a.chars().any(hidden) {
        let mut out = String::from("$'");
        for c in a.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if hidden(c) => out.push_str(&escaped(c)),
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// A process as one display line: its command line, else (no argv read)
/// its name, either made safe for a terminal.
pub fn process_name(comm: &str, argv: &[String]) -> String {
    if argv.is_empty() {
        printable(comm).into_owned()
    } else {
        command_line(argv)
    }
}

/// An argv as one display line.
pub fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Cuts `s` to `width` characters, ending with `…` when cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// Parses a human duration; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err("must not be negative".into());
    }
    let d = if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs > 1e12 {
            return Err("must be a finite number of seconds".into());
        }
        Duration::from_secs_f64(secs)
    } else {
        humantime::parse_duration(s).map_err(|e| format!("{e} (try 30s, 5m or 1h30m)"))?
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > MAX_DURATION {
        return Err("must be at most 10 years".into());
    }
    Ok(d)
}

/// Longest duration or interval accepted: past it, clocks overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86400);

/// Parses a sampling interval: a duration of at least [`MIN_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!("must be at least {}ms", MIN_INTERVAL.as_millis()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20_000_000), "19.1 MiB");
        assert_eq!(bytes(200 << 20), "200 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0.0042), "0.004 s");
        assert_eq!(duration(2.514), "2.514 s");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(65.0), "1m 05s");
        assert_eq!(duration(7380.0), "2h 03m");
    }

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("2026-11-26T10:00:00Z"), "2026-11-26T10:00:00Z");
        assert_eq!(printable("a\u{1b}]0;pwned\u{7}b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(printable("\u{9b}2J"), "\\x9b2J");
        assert_eq!(printable("invoice\u{202e}fdp.exe"), "invoice\\u202efdp.exe");
        assert_eq!(printable("a\u{2067}b\u{200f}"), "a\\u2067b\\u200f");
        assert_eq!(printable("naïve 日本"), "naïve 日本", "other text is kept");
    }

    #[test]
    fn quoting_and_fitting() {
        assert_eq!(
            command_line(&["sh".into(), "-c".into(), "echo 'hi'".into()]),
            "sh -c 'echo '\\''hi'\\'''"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a\nb's"), "$'a\\nb\\'s'");
        assert_eq!(shell_quote("x\u{202e}txt.sh"), "$'x\\u202etxt.sh'");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "signal 40");
    }
}
