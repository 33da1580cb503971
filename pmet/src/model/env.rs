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

    /// `NAME=VALUE` strings as kept: names always, values by the policy;
    /// sorted by name, and of a name given twice the last (what `getenv`
    /// in most programs and the report's JSON object both hold).
    pub fn apply(&self, vars: Vec<String>) -> Arc<[EnvVar]> {
        let mut kept: Vec<EnvVar> = vars
            .into_iter()
            .map(|v| {
                let (name, value) = v.split_once('=').unwrap_or((&v, ""));
                EnvVar {
                    name: name.to_owned(),
                    value: self.keeps(name).then(|| value.to_owned()),
                }
            })
            .collect();
        // Stable: of equal names the last stays last, and is kept.
        kept.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out: Vec<EnvVar> = Vec::with_capacity(kept.len());
        for v in kept {
            match out.last_mut() {
                Some(last) if last.name == v.name => *last = v,
                _ => out.push(v),
            }
        }
        out.into()
    }
}

/// The `NAME=VALUE` strings of a NUL-separated block.
pub fn split_block(block: &[u8]) -> Vec<String> {
    block
        .split(|&c| c == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Environments as kept, by the raw block they came from: most processes of
/// a tree exec with the same environment, and a block seen before is found
/// by a keyed 128-bit hash without splitting it again. The keys are random
/// per run, so a traced program cannot craft a block that collides with
/// another's and borrow its kept values.
#[derive(Debug, Default)]
pub struct EnvCache {
    keys: (std::hash::RandomState, std::hash::RandomState),
    by_block: std::collections::HashMap<(u64, u64), Arc<[EnvVar]>>,
    distinct: std::collections::HashSet<Arc<[EnvVar]>>,
    /// The latest block and what was kept of it: consecutive execs mostly
    /// share one, and comparing bytes is a tenth of hashing them twice.
    last: Option<Latest>,
}

/// A block, and what was kept of it.
#[derive(Debug)]
struct Latest {
    block: Arc<[u8]>,
    kept: Arc<[EnvVar]>,
}

impl EnvCache {
    /// `block` as `policy` keeps it, shared with every other process that
    /// had the same. (The decoder hands consecutive execs with the same
    /// bytes one shared block: found by address, without comparing.)
    pub fn kept(&mut self, policy: &EnvPolicy, block: &Arc<[u8]>) -> Arc<[EnvVar]> {
        if let Some(l) = &self.last
            && (Arc::ptr_eq(&l.block, block) || *l.block == **block)
        {
            return l.kept.clone();
        }
        let kept = self.kept_hashed(policy, block);
        self.last = Some(Latest {
            block: block.clone(),
            kept: kept.clone(),
        });
        kept
    }

    fn kept_hashed(&mut self, policy: &EnvPolicy, block: &[u8]) -> Arc<[EnvVar]> {
        use std::hash::BuildHasher;
        let key = (self.keys.0.hash_one(block), self.keys.1.hash_one(block));
        if let Some(env) = self.by_block.get(&key) {
            return env.clone();
        }
        let kept = policy.apply(split_block(block));
        // Blocks that differ only in dropped values keep to one copy.
        let kept = match self.distinct.get(&*kept) {
            Some(same) => same.clone(),
            None => {
                self.distinct.insert(kept.clone());
                kept
            }
        };
        self.by_block.insert(key, kept.clone());
        kept
    }
}

/// A process's environment as the report writes it: a JSON object from
/// each name to its value or `"<redacted>"`, written straight from the
/// shared, sorted copy the tree keeps (no per-process copy for the report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvReport(pub Arc<[EnvVar]>);

/// The JSON object of one kept environment.
struct EnvObject<'a>(&'a [EnvVar]);

impl serde::Serialize for EnvObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for v in self.0 {
            m.serialize_entry(&v.name, v.value.as_deref().unwrap_or(REDACTED))?;
        }
        m.end()
    }
}

type RawEnvs =
    std::collections::HashMap<*const EnvVar, (Arc<[EnvVar]>, Box<serde_json::value::RawValue>)>;

thread_local! {
    static RAW: std::cell::RefCell<Option<RawEnvs>> = const { std::cell::RefCell::new(None) };
}

/// While held, each distinct environment is turned into JSON once, and
/// every process that shares it gets those bytes copied: most processes of
/// a tree have the same environment, and writing it anew for each was most
/// of the cost of writing a report. Only for `serde_json` writers (the
/// bytes are written as they are).
pub struct JsonOnce(());

impl JsonOnce {
    /// Starts reusing environments' JSON on this thread.
    pub fn start() -> Self {
        RAW.with(|r| *r.borrow_mut() = Some(Default::default()));
        JsonOnce(())
    }
}

impl Drop for JsonOnce {
    fn drop(&mut self) {
        RAW.with(|r| *r.borrow_mut() = None);
    }
}

impl serde::Serialize for EnvReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut s = Some(s);
        let done = RAW.with(|r| {
            let mut r = r.borrow_mut();
            let cache = r.as_mut()?;
            // Keyed by the shared copy's address, which the entry keeps
            // alive: no other environment can take it meanwhile.
            let entry = cache.entry(self.0.as_ptr()).or_insert_with(|| {
                let text = serde_json::to_string(&EnvObject(&self.0)).unwrap_or_default();
                (
                    self.0.clone(),
                    serde_json::value::RawValue::from_string(text)
                        .expect("serde_json wrote valid JSON"),
                )
            });
            Some(entry.1.serialize(s.take()?))
        });
        match (done, s) {
            (Some(written), _) => written,
            (None, Some(s)) => EnvObject(&self.0).serialize(s),
            (None, None) => unreachable!("the serializer is used once"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for EnvReport {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, String>::deserialize(d)?;
        Ok(EnvReport(
            m.into_iter()
                .map(|(name, value)| EnvVar {
                    name,
                    value: (value != REDACTED).then_some(value),
                })
                .collect(),
        ))
    }
}

impl EnvReport {
    /// The value of `name` as the report has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        let v = self.0.iter().find(|v| v.name == name)?;
        Some(v.value.as_deref().unwrap_or(REDACTED))
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
    fn environments_written_once_read_the_same() {
        let p = EnvPolicy {
            all: false,
            names: vec!["PATH".into()],
        };
        let a = p.apply(vec![
            "PATH=/bin".into(),
            "HOME=/root".into(),
            "Q=\"x\"".into(),
        ]);
        let b = p.apply(vec!["PATH=/usr/bin".into()]);
        let procs: Vec<Option<EnvReport>> = vec![
            Some(EnvReport(a.clone())),
            None,
            Some(EnvReport(b.clone())),
            Some(EnvReport(a.clone())),
        ];
        let plain = serde_json::to_string(&procs).unwrap();
        let once = {
            let _once = JsonOnce::start();
            serde_json::to_string(&procs).unwrap()
        };
        assert_eq!(once, plain);
        assert_eq!(
            plain,
            r#"[{"HOME":"<redacted>","PATH":"/bin","Q":"<redacted>"},null,{"PATH":"/usr/bin"},{"HOME":"<redacted>","PATH":"/bin","Q":"<redacted>"}]"#
        );
        // Released: the next writer starts afresh.
        assert!(RAW.with(|r| r.borrow().is_none()));
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_value_and_the_report_round_trips() {
        let env = EnvPolicy {
            all: true,
            names: vec![],
        }
        .apply(vec!["B=1".into(), "A=x".into(), "B=2".into()]);
        assert_eq!(env.len(), 2);
        assert_eq!(
            (env[1].name.as_str(), env[1].value.as_deref()),
            ("B", Some("2"))
        );
        let redacted = EnvPolicy::default().apply(vec!["A=x".into()]);
        let json = serde_json::to_string(&EnvReport(redacted.clone())).unwrap();
        assert_eq!(json, r#"{"A":"<redacted>"}"#);
        let back: EnvReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, EnvReport(redacted));
        assert_eq!(back.get("A"), Some(REDACTED));
    }

    fn block(b: &[u8]) -> Arc<[u8]> {
        b.into()
    }

    #[test]
    fn one_copy_of_each_environment_however_many_processes_had_it() {
        let policy = EnvPolicy {
            all: false,
            names: vec!["KEEP".into()],
        };
        let mut c = EnvCache::default();
        let a = c.kept(&policy, &block(b"KEEP=1\0SECRET=x\0"));
        let again = c.kept(&policy, &block(b"KEEP=1\0SECRET=x\0"));
        let other_secret = c.kept(&policy, &block(b"KEEP=1\0SECRET=y\0"));
        let other_kept = c.kept(&policy, &block(b"KEEP=2\0SECRET=x\0"));
        assert!(Arc::ptr_eq(&a, &again));
        assert!(
            Arc::ptr_eq(&a, &other_secret),
            "differs only in a dropped value"
        );
        assert!(!Arc::ptr_eq(&a, &other_kept));
        assert_eq!(other_kept[0].value.as_deref(), Some("2"));
        assert_eq!(a[1].value, None);
        // The latest block is found by its bytes; an earlier one by its hash.
        let back = c.kept(&policy, &block(b"KEEP=1\0SECRET=x\0"));
        assert!(Arc::ptr_eq(&a, &back));
        assert!(Arc::ptr_eq(
            &back,
            &c.kept(&policy, &block(b"KEEP=1\0SECRET=x\0"))
        ));
        assert!(Arc::ptr_eq(
            &other_kept,
            &c.kept(&policy, &block(b"KEEP=2\0SECRET=x\0"))
        ));
        // One shared block (as the decoder hands consecutive execs with the
        // same bytes) is found by its address.
        let shared = block(b"KEEP=3\0");
        let three = c.kept(&policy, &shared);
        assert!(Arc::ptr_eq(&three, &c.kept(&policy, &shared)));
        assert_eq!(three[0].value.as_deref(), Some("3"));
        assert_eq!(split_block(b"A=1\0\0B=2\0"), ["A=1", "B=2"]);
    }

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
            ["AWS_SECRET_ACCESS_KEY", "CI_JOB_ID", "EMPTY", "HOME", "ODD"],
            "sorted by name"
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
        assert_eq!(kept, [("CI_JOB_ID", "42"), ("HOME", "/root")]);
        let all = EnvPolicy {
            all: true,
            names: vec![],
        }
        .apply(vars());
        assert_eq!(
            all[0].value.as_deref(),
            Some("hunter2"),
            "AWS_SECRET_ACCESS_KEY"
        );
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
