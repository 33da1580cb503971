//! A report as Chrome/Perfetto trace-event JSON (load it in ui.perfetto.dev
//! or chrome://tracing): each process a track with its lifetime, exec and
//! exit as instants, and the tree's CPU, memory, disk and network as counters.

use std::{
    collections::HashSet,
    io::{self, Write},
};

use serde_json::{Value, json};

use super::units::{printable, process_name};
use crate::report::Report;

/// The track of the tree-wide counters.
const TREE_PID: u64 = 0;

/// Events written one by one into a JSON array (a large report's trace is
/// never held whole: each event is made, written and dropped).
struct Events<'a> {
    w: &'a mut dyn Write,
    first: bool,
}

impl Events<'_> {
    fn put(&mut self, e: Value) -> io::Result<()> {
        if !std::mem::take(&mut self.first) {
            self.w.write_all(b",")?;
        }
        serde_json::to_writer(&mut *self.w, &e).map_err(io::Error::other)
    }
}

/// Writes the trace (timestamps in microseconds from the earliest start),
/// streamed: its memory is one event's, whatever the report's size.
pub fn write_trace_events(r: &Report, w: &mut dyn Write) -> io::Result<()> {
    let origin = r
        .processes
        .iter()
        .map(|p| p.start_offset_s)
        .fold(0.0, f64::min);
    let us = |t: f64| ((t - origin) * 1e6).round().max(0.0);
    let end_of_run = r.duration_s;
    w.write_all(b"{\"traceEvents\":[")?;
    let mut ev = Events { w, first: true };
    ev.put(json!({
        "name": "process_name", "ph": "M", "pid": TREE_PID,
        "args": {"name": "pmet: the whole tree"}
    }))?;
    let mut used = HashSet::new();
    for (i, p) in r.processes.iter().enumerate() {
        // Reused pids would merge two processes' tracks: give later holders
        // a pid of their own.
        let pid = if used.insert(p.pid) && p.pid != 0 {
            u64::from(p.pid)
        } else {
            10_000_000 + i as u64
        };
        let name = process_name(&p.comm, &p.argv);
        let start = us(p.start_offset_s);
        let end = us(p.end_offset_s.unwrap_or(end_of_run));
        ev.put(json!({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": format!("{} {}", p.pid, printable(&p.comm))}}))?;
        ev.put(
            json!({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": i}}),
        )?;
        ev.put(json!({
            "name": name, "cat": "process", "ph": "X", "ts": start, "dur": (end - start).max(0.0),
            "pid": pid, "tid": pid,
            "args": {
                "pid": p.pid, "ppid": p.ppid, "argv": p.argv,
                "exit_code": p.exit_code, "exit_signal": p.exit_signal,
                "cpu_user_s": p.cpu_user_s, "cpu_system_s": p.cpu_system_s,
                "peak_rss_bytes": p.peak_rss_bytes,
                "disk_read_bytes": p.disk_read_bytes, "disk_write_bytes": p.disk_write_bytes,
                "net": p.net,
            }
        }))?;
        ev.put(json!({"name": "exec", "cat": "process", "ph": "i", "s": "p", "ts": start, "pid": pid, "tid": pid, "args": {"argv": p.argv}}))?;
        if p.end_offset_s.is_some() {
            ev.put(json!({"name": "exit", "cat": "process", "ph": "i", "s": "p", "ts": end, "pid": pid, "tid": pid,
                "args": {"exit_code": p.exit_code, "exit_signal": p.exit_signal}}))?;
        }
        for s in &p.series {
            ev.put(json!({"name": "CPU %", "ph": "C", "ts": us(s.t), "pid": pid, "args": {"cpu_pct": s.cpu_pct}}))?;
            ev.put(json!({"name": "memory", "ph": "C", "ts": us(s.t), "pid": pid, "args": {"rss_bytes": s.rss_bytes}}))?;
        }
    }
    let points = r.series.as_ref().map_or(&[][..], |s| &s.tree[..]);
    for (k, p) in points.iter().enumerate() {
        let ts = us(p.t);
        ev.put(json!({"name": "CPU %", "ph": "C", "ts": ts, "pid": TREE_PID, "args": {"cpu_pct": p.cpu_pct}}))?;
        ev.put(json!({"name": "memory", "ph": "C", "ts": ts, "pid": TREE_PID, "args": {"rss_bytes": p.rss_bytes}}))?;
        ev.put(json!({"name": "processes alive", "ph": "C", "ts": ts, "pid": TREE_PID, "args": {"alive": p.alive}}))?;
        if k > 0 {
            let q = &points[k - 1];
            let dt = (p.t - q.t).max(1e-9);
            let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / dt).round();
            ev.put(json!({"name": "disk bytes/s", "ph": "C", "ts": ts, "pid": TREE_PID,
                "args": {"read": rate(p.disk_read_bytes, q.disk_read_bytes), "write": rate(p.disk_write_bytes, q.disk_write_bytes)}}))?;
            if let (Some(a), Some(b)) = (p.net, q.net) {
                ev.put(json!({"name": "network bytes/s", "ph": "C", "ts": ts, "pid": TREE_PID,
                    "args": {"sent": rate(a.tcp_tx + a.udp_tx, b.tcp_tx + b.udp_tx), "received": rate(a.tcp_rx + a.udp_rx, b.tcp_rx + b.udp_rx)}}))?;
            }
        }
    }
    let w = ev.w;
    w.write_all(b"],\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(&mut *w, &json!({"generator": "pmet", "schema": r.schema}))
        .map_err(io::Error::other)?;
    w.write_all(b"}")
}

/// Checks a trace against the trace-event format's rules; returns what is
/// wrong (empty when valid). Used by the tests, and cheap enough to run on
/// every export.
pub fn validate(v: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(evs) = v.get("traceEvents").and_then(Value::as_array) else {
        return vec!["no traceEvents array".into()];
    };
    for (i, e) in evs.iter().enumerate() {
        let mut err = |m: &str| bad.push(format!("event {i}: {m}"));
        let Some(ph) = e.get("ph").and_then(Value::as_str) else {
            err("no ph");
            continue;
        };
        if !e.get("name").is_some_and(Value::is_string) {
            err("no name");
        }
        if !e.get("pid").is_some_and(Value::is_u64) {
            err("pid is not an integer");
        }
        if ph != "M"
            && !e
                .get("ts")
                .and_then(Value::as_f64)
                .is_some_and(|t| t >= 0.0)
        {
            err("ts missing or negative");
        }
        match ph {
            "X" => {
                if !e
                    .get("dur")
                    .and_then(Value::as_f64)
                    .is_some_and(|d| d >= 0.0)
                {
                    err("X without a non-negative dur");
                }
            }
            "i" => {
                if !matches!(e.get("s").and_then(Value::as_str), Some("g" | "p" | "t")) {
                    err("i without scope g, p or t");
                }
            }
            "C" => {
                let ok = e
                    .get("args")
                    .and_then(Value::as_object)
                    .is_some_and(|a| !a.is_empty() && a.values().all(Value::is_number));
                if !ok {
                    err("C args must be numbers");
                }
            }
            "M" => {
                if !e.get("args").is_some_and(Value::is_object) {
                    err("M without args");
                }
            }
            other => err(&format!("unexpected ph {other}")),
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ProcessReport;

    #[test]
    fn reused_pids_get_their_own_tracks_and_the_trace_is_valid() {
        let p = |pid, start: f64, end| ProcessReport {
            pid,
            comm: "x".into(),
            start_offset_s: start,
            end_offset_s: end,
            ..ProcessReport::default()
        };
        let r = Report {
            duration_s: 3.0,
            processes: vec![p(5, -1.0, Some(1.0)), p(5, 1.5, Some(2.0)), p(6, 2.0, None)],
            ..Report::default()
        };
        let mut out = Vec::new();
        write_trace_events(&r, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).expect("one JSON document");
        assert_eq!(validate(&v), Vec::<String>::new());
        assert_eq!(v["otherData"]["generator"], "pmet");
        let xs: Vec<&Value> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .collect();
        assert_eq!(xs.len(), 3);
        assert_ne!(xs[0]["pid"], xs[1]["pid"]);
        assert_eq!(xs[0]["ts"], 0.0, "attach-mode negative starts are shifted");
        assert_eq!(
            xs[2]["dur"], 1.0e6,
            "a live process runs to the end of the run"
        );
        assert!(
            !validate(&json!({"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "ts": 0}]}))
                .is_empty()
        );
    }
}
