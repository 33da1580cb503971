//! Choosing, for one process, the best CPU and disk figures known and
//! saying where they come from. The report and the live view both use this.

use super::tree::{Proc, split_runtime};

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Storage I/O a process caused, as the kernel accounts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    /// Bytes read from storage.
    pub read: u64,
    /// Bytes it dirtied for writing.
    pub write: u64,
    /// Dirty bytes it dropped before writeback (truncating or deleting a
    /// file); the kernel charges them to the task that drops them, which may
    /// not be the one that wrote them.
    pub cancelled: u64,
}

impl Disk {
    /// What it wrote that reached storage as far as its own accounting goes.
    pub fn written(&self) -> u64 {
        self.write.saturating_sub(self.cancelled)
    }
}

/// CPU (user s, system s), disk and the name of their source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// User and system CPU seconds.
    pub cpu: Option<(f64, f64)>,
    /// Storage I/O.
    pub disk: Option<Disk>,
    /// Where they come from: `exit`, `taskstats`, `sample`, `partial` or `none`.
    pub source: &'static str,
}

/// The best figures known for `p`, and their source. `ticks_per_s` converts
/// /proc samples; `kernel_io` says whether free-time figures include storage I/O.
pub fn figures(p: &Proc, ticks_per_s: u64, kernel_io: bool) -> Figures {
    let b = &p.baseline;
    // Storage I/O from whole-life totals (read, write, cancelled), made
    // since attach: what ended before attach credited, the threads' use at
    // attach taken off.
    let disk_of = |[r, w, c]: [u64; 3]| Disk {
        read: (r + b.credit_read_bytes).saturating_sub(b.thread_read_bytes),
        write: (w + b.credit_write_bytes).saturating_sub(b.thread_write_bytes),
        cancelled: (c + b.credit_cancelled_write_bytes)
            .saturating_sub(b.thread_cancelled_write_bytes),
    };
    let f = &p.freed;
    let from_free = |disk: bool| {
        let rt = (p.freed.runtime_ns + b.credit_runtime_ns).saturating_sub(b.thread_runtime_ns);
        let u = (p.freed.utime_ns + b.credit_utime_ns).saturating_sub(b.thread_utime_ns);
        let s = (p.freed.stime_ns + b.credit_stime_ns).saturating_sub(b.thread_stime_ns);
        let (us, ss) = split_runtime(rt, u, s);
        Figures {
            cpu: Some((secs(us), secs(ss))),
            disk: disk.then(|| disk_of([f.read_bytes, f.write_bytes, f.cancelled_write_bytes])),
            source: "exit",
        }
    };
    if p.totals_complete() {
        return from_free(kernel_io);
    }
    let t = &p.taskstats;
    if !p.alive() && t.records > 0 {
        let rt = if t.run_ns > 0 {
            t.run_ns
        } else {
            (t.utime_us + t.stime_us) * 1000
        };
        let rt = (rt + b.credit_runtime_ns).saturating_sub(b.thread_runtime_ns);
        let (us, ss) = split_runtime(rt, t.utime_us, t.stime_us);
        return Figures {
            cpu: Some((secs(us), secs(ss))),
            disk: Some(disk_of([
                t.read_bytes,
                t.write_bytes,
                t.cancelled_write_bytes,
            ])),
            source: "taskstats",
        };
    }
    if let Some(s) = p.last_sample {
        let base = b.sample.unwrap_or_default();
        let tps = ticks_per_s.max(1) as f64;
        let disk = match (s.read_bytes, s.write_bytes) {
            // `/proc/PID/io` holds what reaped children did too: its own,
            // thread by thread, where that was read.
            _ if kernel_io && p.threads_io.is_some() => p.threads_io.map(disk_of),
            (Some(r), Some(w)) => Some(Disk {
                read: r.saturating_sub(base.read_bytes.unwrap_or(0)),
                write: w.saturating_sub(base.write_bytes.unwrap_or(0)),
                cancelled: s
                    .cancelled_write_bytes
                    .unwrap_or(0)
                    .saturating_sub(base.cancelled_write_bytes.unwrap_or(0)),
            }),
            _ => None,
        };
        return Figures {
            cpu: Some((
                s.utime_ticks.saturating_sub(base.utime_ticks) as f64 / tps,
                s.stime_ticks.saturating_sub(base.stime_ticks) as f64 / tps,
            )),
            disk,
            source: "sample",
        };
    }
    if p.freed_threads > 0 {
        // Some threads' final figures, not all: better than nothing only as a
        // lower bound, so say so.
        let mut f = from_free(kernel_io);
        f.source = "partial";
        return f;
    }
    Figures {
        cpu: None,
        disk: None,
        source: "none",
    }
}
