//! A long run's ended processes, written out as their figures become final,
//! so that pmet's memory follows the processes alive rather than every
//! process ever seen: a build of 100,000 processes is traced in under 60 MB.
//!
//! Each process leaves behind its report entry, as JSON, in an unnamed
//! scratch file (`O_TMPFILE`: no path another user could reach or plant),
//! its share of the totals ([`Sums`]), and a [`Brief`] for the summary. At
//! the end the report is written in one pass: the entries in report order,
//! each copied from the scratch file with its `parent` position filled in,
//! the processes still held made then.

use std::{
    fs::File,
    io::{self, Write},
    os::unix::fs::{FileExt, MetadataExt},
    path::Path,
};

use super::{
    Brief, ProcessReport, Report, RunInfo,
    build::{Sums, entry, head, report_order},
};
use crate::model::{
    figures::figures,
    series::{ProcPoint, Recorder, Series},
    tree::{Proc, Tree},
};

/// Ended processes are written out once the tree holds more than this many
/// processes: below it, a run keeps everything (and writes nothing twice).
pub const SPILL_AFTER: usize = 1024;

/// Where the scratch file goes: directories only root can replace.
const SCRATCH_DIRS: [&str; 2] = ["/var/tmp", "/tmp"];

/// Adds to a list that only grows, by a quarter at a time rather than
/// doubling: a long run's lists are most of what it holds at its end.
fn push<T>(v: &mut Vec<T>, x: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.capacity() / 4 + 256);
    }
    v.push(x);
}

/// Entries are gathered up to this many bytes for one write: few writes,
/// and little held.
const WRITE_AT: usize = 48 << 10;
/// Entries are read back this many bytes at a time.
const READ_WINDOW: usize = 64 << 10;

/// `"parent":null`, as serde_json writes it in an entry made without one.
const NO_PARENT: &[u8] = b"\"parent\":null";
/// `"env":null`, likewise.
const NO_ENV_JSON: &[u8] = b"\"env\":null";
/// [`Spilled::env`] of an entry whose environment is unknown.
const NO_ENV: u32 = u32::MAX;

/// Where `what` first starts in `bytes`. (`"env"` sits ~800 bytes into an
/// entry: a window-by-window compare there was ~13 % of writing a process
/// out.)
fn find(bytes: &[u8], what: &[u8]) -> Option<u32> {
    memchr::memmem::find(bytes, what).map(|p| p as u32)
}

/// One process written out (48 bytes).
#[derive(Debug)]
struct Spilled {
    start_ns: u64,
    seq: u64,
    /// Its parent's seq; `u64::MAX`: none.
    parent_seq: u64,
    /// Where its entry starts in the scratch file, and how long it is.
    at: u64,
    len: u32,
    /// Where `"parent":null` starts in the entry.
    parent_at: u32,
    /// Where `"env":null` starts in the entry, and the environment that
    /// goes there (an index in [`Spill::envs`]; [`NO_ENV`]: none).
    env_at: u32,
    env: u32,
}

/// The ended processes written out so far.
#[derive(Debug)]
pub struct Spill {
    /// What each entry needs to know of the run (names filled in as found).
    info: RunInfo,
    /// A report will be written: entries are kept for it (otherwise only
    /// the totals and the briefs are).
    write: bool,
    /// Opened at the first process taken.
    file: Option<File>,
    end: u64,
    spilled: Vec<Spilled>,
    /// Entries the scratch file could not take, by index in `spilled`.
    kept: std::collections::HashMap<usize, Box<[u8]>>,
    briefs: Vec<Brief>,
    names: super::Interned,
    /// The environments of the entries written out, each once.
    envs: Vec<crate::model::env::EnvReport>,
    /// Their indices by the address of the shared copy, which `envs`
    /// keeps alive: no other environment can take that address meanwhile.
    env_ids: std::collections::HashMap<usize, u32>,
    sums: Sums,
    buf: Vec<u8>,
    said: bool,
}

/// A scratch file no one else can open: unnamed, in a directory owned by
/// root that is not a link.
fn scratch() -> io::Result<File> {
    let mut last = io::Error::other("no scratch directory");
    for dir in SCRATCH_DIRS {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() && m.uid() == 0 => match tempfile::tempfile_in(Path::new(dir)) {
                Ok(f) => return Ok(f),
                Err(e) => last = e,
            },
            Ok(_) => last = io::Error::other(format!("{dir} is not a directory owned by root")),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Spill {
    /// Ready to take processes; `write` when a report will be written (their
    /// entries are kept for it). `info` is what is known of the run at its
    /// start.
    pub fn new(info: RunInfo, write: bool) -> Self {
        Self {
            info,
            write,
            file: None,
            end: 0,
            spilled: Vec::new(),
            kept: Default::default(),
            briefs: Vec::new(),
            names: Default::default(),
            envs: Vec::new(),
            env_ids: Default::default(),
            sums: Sums::default(),
            buf: Vec::new(),
            said: false,
        }
    }

    /// Processes written out so far.
    pub fn len(&self) -> usize {
        self.spilled.len()
    }

    /// Nothing written out.
    pub fn is_empty(&self) -> bool {
        self.spilled.is_empty()
    }

    /// The user and cgroup names entries show, to be filled in for the
    /// processes about to be taken.
    pub fn names_mut(&mut self) -> &mut super::Names {
        &mut self.info.names
    }

    /// Takes ended processes (as [`crate::session::Session::prune_with_series`]
    /// hands them over) out of memory: their entries go to the scratch file
    /// in one write.
    pub fn take(&mut self, procs: Vec<(Box<Proc>, Option<Series<ProcPoint>>)>, gpu_known: bool) {
        if self.write && self.file.is_none() && !self.said {
            match scratch() {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.said = true;
                    log::warn!("no scratch file for ended processes ({e}); keeping them in memory");
                }
            }
        }
        self.buf.clear();
        let mut first = self.spilled.len();
        for (p, series) in procs {
            self.take_one(&p, series.as_ref(), gpu_known);
            if self.buf.len() >= WRITE_AT {
                self.flush(first);
                first = self.spilled.len();
            }
        }
        self.flush(first);
    }

    /// Writes out the entries made since `first`, gathered in `buf`.
    fn flush(&mut self, first: usize) {
        if !self.write || self.spilled.len() == first {
            return;
        }
        let written = match &self.file {
            Some(f) => f.write_all_at(&self.buf, self.end),
            None => Err(io::Error::other("no scratch file")),
        };
        match written {
            Ok(()) => self.end += self.buf.len() as u64,
            Err(err) => {
                // Nothing is lost: the entries stay in memory.
                if !std::mem::replace(&mut self.said, true) {
                    log::warn!(
                        "writing ended processes out failed ({err}); keeping them in memory"
                    );
                }
                for i in first..self.spilled.len() {
                    let s = &self.spilled[i];
                    let from = (s.at - self.end) as usize;
                    self.kept.insert(
                        i,
                        self.buf[from..from + s.len as usize]
                            .to_vec()
                            .into_boxed_slice(),
                    );
                }
            }
        }
        self.buf.clear();
    }

    fn take_one(&mut self, p: &Proc, series: Option<&Series<ProcPoint>>, gpu_known: bool) {
        let f = figures(p, self.info.ticks_per_s, self.info.kernel_io);
        let mut e = entry(p, &self.info, series, gpu_known, &f);
        self.sums.add(&e, &f);
        push(&mut self.briefs, Brief::of(&e, &mut self.names));
        let mut s = Spilled {
            start_ns: p.start_ns,
            seq: p.seq,
            parent_seq: p.parent_seq.unwrap_or(u64::MAX),
            at: self.end + self.buf.len() as u64,
            len: 0,
            parent_at: 0,
            env_at: 0,
            env: NO_ENV,
        };
        if self.write {
            // The environment, shared by many, is written once at the end:
            // the entry holds its place.
            if let Some(env) = e.env.take() {
                let next = self.envs.len() as u32;
                s.env = *self.env_ids.entry(env.0.as_ptr() as usize).or_insert(next);
                if s.env == next {
                    self.envs.push(env);
                }
            }
            let from = self.buf.len();
            super::entry::write(&mut self.buf, &e);
            let bytes = &self.buf[from..];
            s.len = bytes.len() as u32;
            // Third, after two numbers.
            s.parent_at = find(bytes, NO_PARENT).expect("an entry made without a parent says so");
            // Its only `"env"`: strings escape their quotes, and no field
            // before it holds an object with such a key.
            s.env_at = find(bytes, NO_ENV_JSON).expect("an entry without env says so");
        }
        push(&mut self.spilled, s);
    }

    /// The report of the run: the processes written out, and those `tree`
    /// still holds, in report order.
    pub fn finish(mut self, tree: &Tree, info: &RunInfo, recorded: Option<&Recorder>) -> Streamed {
        let held = report_order(tree);
        let n = self.spilled.len();
        log::debug!(
            "{n} processes were written out ({} bytes, {} distinct environments)",
            self.end,
            self.envs.len()
        );
        // Indices below `n` are processes written out; the rest, held ones.
        let key = |i: u32| {
            let i = i as usize;
            match i.checked_sub(n) {
                None => (self.spilled[i].start_ns, self.spilled[i].seq),
                Some(h) => {
                    let p = &tree.procs[held[h]];
                    (p.start_ns, p.seq)
                }
            }
        };
        let mut order: Vec<u32> = (0..(n + held.len()) as u32).collect();
        order.sort_by_key(|&i| key(i));
        // Each process's position, by its seq: seqs run from 0 to the
        // number of processes seen, so a plain list does (4 bytes each).
        let mut position = vec![u32::MAX; tree.seen_count() as usize];
        for (pos, &i) in order.iter().enumerate() {
            if let Some(p) = position.get_mut(key(i).1 as usize) {
                *p = pos as u32;
            }
        }
        let position_of = |seq: u64| {
            position
                .get(usize::try_from(seq).ok()?)
                .copied()
                .filter(|&p| p != u32::MAX)
        };
        let _once = crate::model::env::JsonOnce::start();
        let mut entries = Vec::with_capacity(held.len());
        for &i in &held {
            let p = &tree.procs[i];
            let series = recorded.and_then(|r| r.procs.get(&(p.pid, p.cookie)));
            let f = figures(p, info.ticks_per_s, info.kernel_io);
            let e = ProcessReport {
                parent: p.parent_seq.and_then(position_of).map(|x| x as usize),
                ..entry(p, info, series, tree.gpu_known, &f)
            };
            self.sums.add(&e, &f);
            self.briefs.push(Brief::of(&e, &mut self.names));
            entries.push(e);
        }
        let parents: Vec<u32> = order
            .iter()
            .map(|&i| match self.spilled.get(i as usize) {
                Some(s) => position_of(s.parent_seq).unwrap_or(u32::MAX),
                None => u32::MAX,
            })
            .collect();
        drop(position);
        // The briefs into report order in place (briefs[pos] takes what was
        // at order[pos]), cycle by cycle: a second list of them would double
        // what a long run holds at its end.
        let mut briefs = std::mem::take(&mut self.briefs);
        let mut done = vec![false; briefs.len()];
        for start in 0..briefs.len() {
            let mut pos = start;
            while !done[pos] {
                done[pos] = true;
                let from = order[pos] as usize;
                if from == start {
                    break;
                }
                briefs.swap(pos, from);
                pos = from;
            }
        }
        for (b, &p) in briefs.iter_mut().zip(&parents) {
            if p != u32::MAX {
                b.set_parent(Some(p));
            }
        }
        let totals = self.sums.totals(tree, info.collector.counts_network());
        Streamed {
            report: head(tree, info, recorded, totals, Vec::new()),
            briefs,
            order,
            parents,
            entries,
            spill: self,
        }
    }
}

/// A report whose processes are written from where they are, not held.
#[derive(Debug)]
pub struct Streamed {
    /// The report without its processes (`processes` is empty; `totals`
    /// counts them all).
    pub report: Report,
    /// Every process, in report order, for the summary.
    pub briefs: Vec<Brief>,
    /// Report order: an index in the processes written out, or past them,
    /// in `entries`.
    order: Vec<u32>,
    /// The parent position of each written-out process in `order`
    /// (`u32::MAX`: none).
    parents: Vec<u32>,
    entries: Vec<ProcessReport>,
    spill: Spill,
}

impl Streamed {
    /// The report without its processes, and every process in brief.
    pub fn into_parts(self) -> (Report, Vec<Brief>) {
        (self.report, self.briefs)
    }

    /// Writes the whole report as compact JSON, as [`Report`]'s own
    /// serialization would with every process in it.
    pub fn write_json(&self, w: &mut dyn Write) -> io::Result<()> {
        let _once = crate::model::env::JsonOnce::start();
        super::entry::write_report(&self.report, w, |w| self.write_entries(w))
    }

    /// The entries, in report order, separated by commas.
    fn write_entries(&self, w: &mut dyn Write) -> io::Result<()> {
        // Entries were written in the order processes ended, which is
        // nearly the order they started in: read a window at a time, not
        // an entry at a time.
        let mut win = Vec::new();
        let mut win_at = 0u64;
        let mut one = Vec::new();
        let spilled = self.spill.spilled.len();
        for (n, &i) in self.order.iter().enumerate() {
            if n > 0 {
                w.write_all(b",")?;
            }
            let i = i as usize;
            let Some(s) = self.spill.spilled.get(i) else {
                one.clear();
                super::entry::write(&mut one, &self.entries[i - spilled]);
                w.write_all(&one)?;
                continue;
            };
            let bytes: &[u8] = match (self.spill.kept.get(&i), &self.spill.file) {
                (Some(k), _) => k,
                // Opened only when a report is to be written.
                (None, Some(f)) => {
                    let end = s.at + u64::from(s.len);
                    if s.at < win_at || end > win_at + win.len() as u64 {
                        let want = (s.len as usize)
                            .max(READ_WINDOW)
                            .min((self.spill.end - s.at) as usize);
                        win.resize(want, 0);
                        f.read_exact_at(&mut win, s.at)?;
                        win_at = s.at;
                    }
                    &win[(s.at - win_at) as usize..(end - win_at) as usize]
                }
                _ => {
                    return Err(io::Error::other(
                        "ended processes were not kept for a report",
                    ));
                }
            };
            let (p, v) = (s.parent_at as usize, s.env_at as usize);
            w.write_all(&bytes[..p])?;
            match self.parents[n] {
                u32::MAX => w.write_all(NO_PARENT)?,
                pos => write!(w, "\"parent\":{pos}")?,
            }
            w.write_all(&bytes[p + NO_PARENT.len()..v])?;
            match self.spill.envs.get(s.env as usize) {
                Some(env) => {
                    w.write_all(b"\"env\":")?;
                    serde_json::to_writer(&mut *w, env).map_err(io::Error::other)?;
                }
                None => w.write_all(NO_ENV_JSON)?,
            }
            w.write_all(&bytes[v + NO_ENV_JSON.len()..])?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        model::{
            env::EnvVar,
            event::{Event, ThreadTotals},
            series::Recorder,
        },
        report::{Collector, build},
    };

    pub(crate) fn info() -> RunInfo {
        RunInfo {
            command: Some(vec!["sh".into()]),
            start_ns: 1_000_000_000,
            end_ns: 9_000_000_000,
            started_at: "2026-11-27T12:00:00.000Z".into(),
            ticks_per_s: 100,
            collector: Collector {
                ebpf: true,
                ..Collector::default()
            },
            kernel_io: true,
            connections: true,
            ..RunInfo::default()
        }
    }

    /// A root, its children and grandchildren; all but the last two ended
    /// (two of them failed), with environments shared and not.
    pub(crate) fn tree() -> (Tree, Recorder) {
        let mut t = Tree::new();
        t.add_root(100, 1, 1, 1_000_000_000, vec!["sh".into(), "-c".into()]);
        let shared: Arc<[EnvVar]> = vec![EnvVar {
            name: "PATH".into(),
            value: Some("/bin".into()),
        }]
        .into();
        // Children start out of pid order, some at the same instant.
        let kids: [(u32, u32, u64); 8] = [
            (100, 201, 2_000),
            (100, 202, 2_000),
            (201, 301, 2_500),
            (100, 203, 1_500),
            (301, 401, 3_000),
            (202, 302, 3_000),
            (100, 204, 4_000),
            (204, 402, 4_500),
        ];
        for (n, &(parent, child, ms)) in kids.iter().enumerate() {
            t.apply(Event::Fork {
                shares_memory: false,
                ts_ns: ms * 1_000_000,
                parent_tgid: parent,
                child,
                cookie: u64::from(child) * 10,
                thread: false,
                untracked: false,
                new_pid_ns: false,
                comm: format!("c{child}"),
            });
            let i = t.procs.len() - 1;
            t.procs[i].argv = vec![format!("/bin/c{child}"), format!("{n}")].into();
            t.procs[i].env = Some(if n % 2 == 0 {
                shared.clone()
            } else {
                vec![EnvVar {
                    name: "N".into(),
                    value: Some(n.to_string()),
                }]
                .into()
            });
        }
        for &(_, pid, ms) in &kids[..6] {
            t.apply(Event::Exit {
                maxrss_bytes: None,
                ts_ns: (ms + 100) * 1_000_000,
                tgid: pid,
                tid: pid,
                cookie: u64::from(pid) * 10,
                group_dead: true,
                had_net: false,
                exit_code: Some(if pid == 202 || pid == 401 { 1 << 8 } else { 0 }),
                comm: format!("c{pid}"),
                peak_rss_bytes: None,
            });
            t.apply(Event::Free {
                ts_ns: (ms + 101) * 1_000_000,
                tgid: pid,
                tid: pid,
                cookie: u64::from(pid) * 10,
                totals: Some(ThreadTotals {
                    runtime_ns: u64::from(pid) * 1_000_000,
                    utime_ns: 2,
                    stime_ns: 1,
                    read_bytes: u64::from(pid),
                    write_bytes: 4096,
                    cancelled_write_bytes: 0,
                }),
                kept: false,
                ctx: None,
            });
        }
        let mut r = Recorder::new(720, 120);
        let mut s = Series::new(120);
        for k in 0..3 {
            s.push(ProcPoint {
                t: f64::from(k),
                cpu_pct: 10.0 * f64::from(k),
                rss_bytes: 1 << 20,
            });
        }
        r.procs.insert((301, 3010), s);
        (t, r)
    }

    /// The tree with what `forget` agrees to taken out of it, and what was
    /// taken, with its series.
    #[allow(clippy::type_complexity)]
    fn pruned(
        forget: impl Fn(&Proc) -> bool,
    ) -> (Tree, Recorder, Vec<(Box<Proc>, Option<Series<ProcPoint>>)>) {
        let (mut t, mut rec) = tree();
        let gone = t
            .prune(info().ticks_per_s, info().kernel_io, forget)
            .into_iter()
            .map(|p| {
                let s = rec.procs.remove(&(p.pid, p.cookie));
                (p, s)
            })
            .collect();
        (t, rec, gone)
    }

    /// Everything `forget` agrees to written out, then the report.
    fn streamed(forget: impl Fn(&Proc) -> bool, write: bool) -> Streamed {
        let (t, rec, gone) = pruned(forget);
        let mut spill = Spill::new(info(), write);
        spill.take(gone, t.gpu_known);
        spill.finish(&t, &info(), Some(&rec))
    }

    fn json(s: &Streamed) -> String {
        let mut out = Vec::new();
        s.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_streamed_report_is_the_report_byte_for_byte() {
        let (t, rec) = tree();
        let whole = serde_json::to_string(&build(&t, &info(), Some(&rec))).unwrap();
        // Some written out, some held: parents on both sides of the line.
        for forget in [
            (|p: &Proc| p.pid % 2 == 1) as fn(&Proc) -> bool,
            |p| p.pid % 2 == 0,
            |_| true,
            |_| false,
        ] {
            let s = streamed(forget, true);
            assert_eq!(json(&s), whole);
            let back: Report = serde_json::from_str(&whole).unwrap();
            assert_eq!(s.briefs, crate::report::briefs(&back));
        }
        let back: Report = serde_json::from_str(&whole).unwrap();
        assert_eq!(back.processes.len(), 9);
        assert_eq!(back.totals.processes, 9);
        assert_eq!(back.totals.failed_processes, 2);
        assert_eq!(back.totals.processes_running, 3);
        // 401's parent is 301, whatever was written out.
        let pos = |pid| back.processes.iter().position(|p| p.pid == pid);
        assert_eq!(back.processes[pos(401).unwrap()].parent, pos(301));
        assert_eq!(back.processes[pos(301).unwrap()].series.len(), 3);
    }

    #[test]
    fn entries_the_scratch_file_refuses_stay_in_memory_and_nothing_is_lost() {
        let (t, rec) = tree();
        let whole = serde_json::to_string(&build(&t, &info(), Some(&rec))).unwrap();
        let (t, rec, gone) = pruned(|_| true);
        let mut spill = Spill::new(info(), true);
        // Read-only: every write fails, as on a full disk.
        spill.file = Some(File::open("/dev/null").unwrap());
        spill.take(gone, t.gpu_known);
        assert_eq!(spill.kept.len(), spill.len());
        assert_eq!(json(&spill.finish(&t, &info(), Some(&rec))), whole);
    }

    #[test]
    fn what_is_kept_of_a_process_written_out_is_small() {
        // What a run of 100,000 processes holds of each (the goal is under
        // 60 MB in all).
        assert_eq!(std::mem::size_of::<Brief>(), 64);
        assert_eq!(std::mem::size_of::<Spilled>(), 48);
    }

    #[test]
    fn without_a_report_to_write_only_totals_and_briefs_are_kept() {
        let s = streamed(|_| true, false);
        assert!(s.spill.file.is_none());
        assert_eq!(s.report.totals.processes, 9);
        assert_eq!(s.briefs.len(), 9);
        assert!(s.write_json(&mut Vec::new()).is_err());
    }
}
