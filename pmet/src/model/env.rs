//! A process's environment as pmet keeps it: every variable's name, and a
//! value only for the names the user asked for (`--env NAME,GLOB*`,
//! `--env-all`). The values of the others are dropped as the exec's record
//! is taken in, so they cannot reach any output.

use std::sync::Arc;

/// What `REDACTED` stands for in reports: a value that was not kept.
pub const REDACTED: &str = "<redacted>";

/// One environment variable; `value` is `None` when it was not kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// Its value, when the policy keeps it.
    pub value: Option<String>,
}

/// Which values are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvPolicy {
    /// Every value (`--env-all`).
    pub all: bool,
    /// Names whose values are kept; `*` matches any run of characters and
    /// `?` one character (`--env NAME,GLOB*`).
    pub names: Vec<String>,
}

impl EnvPolicy {
    /// Whether the value of `name` is kept.
    pub fn keeps(&self, name: &str) -> bool {
        self.all
            || self
                .names
                .iter()
                .any(|p| glob(p.as_bytes(), name.as_bytes()))
    }

    /// `NAME=VALUE` strings as kept: names always, values by the policy.
    pub fn apply(&self, vars: Vec<String>) -> Arc<[EnvVar]> {
        vars.into_iter()
            .map(|v| {
                let (name, value) = v.split_once('=').unwrap_or((&v, ""));
                EnvVar {
                    name: name.to_owned(),
                    value: self.keeps(name).then(|| value.to_owned()),
                }
            })
            .collect()
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.split_first(), s.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => glob(rest, s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some((b'?', rest)), Some((_, srest))) => glob(rest, srest),
        (Some((a, rest)), Some((b, srest))) if a == b => glob(rest, srest),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_values_asked_for_are_kept() {
        let vars = || {
            vec![
                "HOME=/root".to_string(),
                "AWS_SECRET_ACCESS_KEY=hunter2".into(),
                "CI_JOB_ID=42".into(),
                "EMPTY=".into(),
                "ODD".into(),
            ]
        };
        let none = EnvPolicy::default().apply(vars());
        assert!(none.iter().all(|v| v.value.is_none()), "{none:?}");
        assert_eq!(
            none.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["HOME", "AWS_SECRET_ACCESS_KEY", "CI_JOB_ID", "EMPTY", "ODD"]
        );
        let some = EnvPolicy {
            all: false,
            names: vec!["HOME".into(), "CI_*".into()],
        }
        .apply(vars());
        let kept: Vec<_> = some
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.value.as_deref()?)))
            .collect();
        assert_eq!(kept, [("HOME", "/root"), ("CI_JOB_ID", "42")]);
        let all = EnvPolicy {
            all: true,
            names: vec![],
        }
        .apply(vars());
        assert_eq!(all[1].value.as_deref(), Some("hunter2"));
    }

    #[test]
    fn globs_match_whole_names() {
        for (p, s, want) in [
            ("CI_*", "CI_JOB_ID", true),
            ("CI_*", "XCI_JOB", false),
            ("*_TOKEN", "GITHUB_TOKEN", true),
            ("*_TOKEN", "GITHUB_TOKENS", false),
            ("A?C", "ABC", true),
            ("A?C", "AC", false),
            ("*", "", true),
            ("HOME", "HOME2", false),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} ~ {s}");
        }
    }
}
