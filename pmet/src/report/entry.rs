//! A report entry (`processes[]`) written as JSON by hand: byte for byte
//! what serde's derive writes for [`ProcessReport`] (a test holds the two
//! equal), for less. serde_json spends most of an entry's ~2.3 µs on its ~65
//! keys, each escaped and written in pieces; here each key is one constant.
//! The derive stays the definition: reading a report, the Python package
//! and everything else use it. Every field is named below (no `..`), so a
//! field added to the struct does not compile until it is written here too;
//! the test then holds its place and form.

use std::io::{self, Write};

use serde::Serialize;

use super::{ProcessReport, Report, ThreadReport};
use crate::model::net::{Net, Traffic};

/// Appends `s` as is.
fn raw(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
}

/// Appends an integer.
fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    raw(out, itoa::Buffer::new().format(v).as_bytes());
}

/// Appends what serde_json writes for `v`: the rarer and the intricate
/// values (floats among them, whose shortest form is serde_json's own).
fn serde(out: &mut Vec<u8>, v: &impl Serialize) {
    serde_json::to_writer(&mut *out, v).expect("a report value always serializes");
}

/// Appends a string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        raw(out, s.as_bytes());
        out.push(b'"');
    } else {
        serde(out, &s);
    }
}

/// Appends `v`, or `null`.
fn opt<T>(out: &mut Vec<u8>, v: &Option<T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
    match v {
        Some(v) => write(out, v),
        None => raw(out, b"null"),
    }
}

fn traffic(out: &mut Vec<u8>, t: &Traffic) {
    let Traffic {
        tx_bytes,
        rx_bytes,
        tx_calls,
        rx_calls,
    } = *t;
    raw(out, b"{\"tx_bytes\":");
    int(out, tx_bytes);
    raw(out, b",\"rx_bytes\":");
    int(out, rx_bytes);
    raw(out, b",\"tx_calls\":");
    int(out, tx_calls);
    raw(out, b",\"rx_calls\":");
    int(out, rx_calls);
    out.push(b'}');
}

fn net(out: &mut Vec<u8>, n: &Net) {
    let Net { tcp, udp } = n;
    raw(out, b"{\"tcp\":");
    traffic(out, tcp);
    raw(out, b",\"udp\":");
    traffic(out, udp);
    out.push(b'}');
}

fn thread(out: &mut Vec<u8>, t: &ThreadReport) {
    let ThreadReport {
        tid,
        comm,
        cpu_user_s,
        cpu_system_s,
        start_offset_s,
        end_offset_s,
    } = t;
    raw(out, b"{\"tid\":");
    int(out, *tid);
    raw(out, b",\"comm\":");
    string(out, comm);
    raw(out, b",\"cpu_user_s\":");
    serde(out, cpu_user_s);
    raw(out, b",\"cpu_system_s\":");
    serde(out, cpu_system_s);
    raw(out, b",\"start_offset_s\":");
    serde(out, start_offset_s);
    raw(out, b",\"end_offset_s\":");
    serde(out, end_offset_s);
    out.push(b'}');
}

/// Appends `e` as compact JSON, as `serde_json::to_writer(out, e)` would.
pub fn write(out: &mut Vec<u8>, e: &ProcessReport) {
    let ProcessReport {
        pid,
        ppid,
        parent,
        comm,
        argv,
        start_offset_s,
        end_offset_s,
        exit_code,
        exit_signal,
        cpu_user_s,
        cpu_system_s,
        peak_rss_bytes,
        max_threads,
        disk_read_bytes,
        disk_write_bytes,
        disk_cancelled_write_bytes,
        net: traffic,
        exe,
        argv_truncated,
        argv_hex,
        core_dumped,
        figures,
        voluntary_ctxt_switches,
        involuntary_ctxt_switches,
        major_faults,
        preexisting,
        vanished,
        series,
        stats,
        started_at,
        uid,
        gid,
        user,
        cgroup,
        container,
        k8s_pod_uid,
        pid_ns,
        ns_pid,
        cwd,
        env,
        env_truncated,
        memory,
        threads,
        threads_dropped,
        connections,
        connections_dropped,
        gpu,
    } = e;
    let bool = |out: &mut Vec<u8>, b: bool| raw(out, if b { b"true" } else { b"false" });
    let oint = |out: &mut Vec<u8>, v: &Option<u64>| opt(out, v, |o, v| int(o, *v));
    let ou32 = |out: &mut Vec<u8>, v: &Option<u32>| opt(out, v, |o, v| int(o, *v));
    let oi32 = |out: &mut Vec<u8>, v: &Option<i32>| opt(out, v, |o, v| int(o, *v));
    let ostr = |out: &mut Vec<u8>, v: &Option<String>| opt(out, v, |o, v| string(o, v));
    raw(out, b"{\"pid\":");
    int(out, *pid);
    raw(out, b",\"ppid\":");
    ou32(out, ppid);
    raw(out, b",\"parent\":");
    opt(out, parent, |o, v| int(o, *v));
    raw(out, b",\"comm\":");
    string(out, comm);
    raw(out, b",\"argv\":[");
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, a);
    }
    raw(out, b"],\"start_offset_s\":");
    serde(out, start_offset_s);
    raw(out, b",\"end_offset_s\":");
    serde(out, end_offset_s);
    raw(out, b",\"exit_code\":");
    oi32(out, exit_code);
    raw(out, b",\"exit_signal\":");
    oi32(out, exit_signal);
    raw(out, b",\"cpu_user_s\":");
    serde(out, cpu_user_s);
    raw(out, b",\"cpu_system_s\":");
    serde(out, cpu_system_s);
    raw(out, b",\"peak_rss_bytes\":");
    oint(out, peak_rss_bytes);
    raw(out, b",\"max_threads\":");
    ou32(out, max_threads);
    raw(out, b",\"disk_read_bytes\":");
    oint(out, disk_read_bytes);
    raw(out, b",\"disk_write_bytes\":");
    oint(out, disk_write_bytes);
    raw(out, b",\"disk_cancelled_write_bytes\":");
    oint(out, disk_cancelled_write_bytes);
    raw(out, b",\"net\":");
    opt(out, traffic, net);
    raw(out, b",\"exe\":");
    ostr(out, exe);
    raw(out, b",\"argv_truncated\":");
    bool(out, *argv_truncated);
    raw(out, b",\"argv_hex\":");
    opt(out, argv_hex, |o, hex| {
        o.push(b'[');
        for (i, h) in hex.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            ostr(o, h);
        }
        o.push(b']');
    });
    raw(out, b",\"core_dumped\":");
    bool(out, *core_dumped);
    raw(out, b",\"figures\":");
    string(out, figures);
    raw(out, b",\"voluntary_ctxt_switches\":");
    oint(out, voluntary_ctxt_switches);
    raw(out, b",\"involuntary_ctxt_switches\":");
    oint(out, involuntary_ctxt_switches);
    raw(out, b",\"major_faults\":");
    oint(out, major_faults);
    raw(out, b",\"preexisting\":");
    bool(out, *preexisting);
    raw(out, b",\"vanished\":");
    bool(out, *vanished);
    // Left out when empty, as the derive's `skip_serializing_if` says.
    if !series.is_empty() {
        raw(out, b",\"series\":");
        serde(out, series);
    }
    if let Some(stats) = stats {
        raw(out, b",\"stats\":");
        serde(out, stats);
    }
    raw(out, b",\"started_at\":");
    ostr(out, started_at);
    raw(out, b",\"uid\":");
    ou32(out, uid);
    raw(out, b",\"gid\":");
    ou32(out, gid);
    raw(out, b",\"user\":");
    ostr(out, user);
    raw(out, b",\"cgroup\":");
    ostr(out, cgroup);
    raw(out, b",\"container\":");
    serde(out, container);
    raw(out, b",\"k8s_pod_uid\":");
    ostr(out, k8s_pod_uid);
    raw(out, b",\"pid_ns\":");
    ou32(out, pid_ns);
    raw(out, b",\"ns_pid\":");
    ou32(out, ns_pid);
    raw(out, b",\"cwd\":");
    ostr(out, cwd);
    // Through its own serialization: a report's environments are turned
    // into JSON once each (`JsonOnce`).
    raw(out, b",\"env\":");
    serde(out, env);
    raw(out, b",\"env_truncated\":");
    bool(out, *env_truncated);
    raw(out, b",\"memory\":");
    serde(out, memory);
    raw(out, b",\"threads\":[");
    for (i, t) in threads.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        thread(out, t);
    }
    raw(out, b"],\"threads_dropped\":");
    serde(out, threads_dropped);
    raw(out, b",\"connections\":");
    serde(out, connections);
    raw(out, b",\"connections_dropped\":");
    serde(out, connections_dropped);
    raw(out, b",\"gpu\":");
    serde(out, gpu);
    out.push(b'}');
}

/// Writes the report `head` (whose `processes` is empty) as compact JSON,
/// with what `entries` writes in place of that empty list: what
/// `serde_json::to_writer` writes for the whole report, its entries written
/// by [`write`] (or copied from where they were written out).
pub fn write_report(
    head: &Report,
    w: &mut dyn Write,
    entries: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let head = serde_json::to_vec(head).map_err(io::Error::other)?;
    const EMPTY: &[u8] = b"\"processes\":[]";
    // The only array of that name: `totals.processes` is a number, and a
    // quote inside a string is escaped.
    let at = memchr::memmem::find(&head, EMPTY)
        .ok_or_else(|| io::Error::other("report without an empty processes field"))?;
    let (before, after) = head.split_at(at + EMPTY.len() - 1);
    w.write_all(before)?;
    entries(w)?;
    w.write_all(after)
}

/// Writes a whole report: what `serde_json::to_writer(w, r)` writes, its
/// entries by [`write`]. They are set apart while the rest is written by
/// its derive, and put back whatever happens.
pub fn write_whole(r: &mut Report, w: &mut dyn Write) -> io::Result<()> {
    let _once = crate::model::env::JsonOnce::start();
    let entries = std::mem::take(&mut r.processes);
    let written = write_report(r, w, |w| {
        let mut one = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            one.clear();
            if i > 0 {
                one.push(b',');
            }
            write(&mut one, e);
            w.write_all(&one)?;
        }
        Ok(())
    });
    r.processes = entries;
    written
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        model::{
            container::Container,
            env::{EnvReport, EnvVar},
            series::ProcPoint,
        },
        report::{ConnectionReport, ConnectionsDropped, GpuReport, ThreadsDropped},
    };

    fn same(e: &ProcessReport) {
        let mut fast = Vec::new();
        write(&mut fast, e);
        let derive = serde_json::to_vec(e).unwrap();
        assert_eq!(
            String::from_utf8(fast).unwrap(),
            String::from_utf8(derive).unwrap()
        );
    }

    #[test]
    fn an_empty_entry_is_what_the_derive_writes() {
        same(&ProcessReport::default());
    }

    #[test]
    fn a_full_entry_is_what_the_derive_writes_byte_for_byte() {
        let mut e: ProcessReport = serde_json::from_value(serde_json::json!({
            "pid": 4_000_000, "ppid": 1, "parent": 0, "comm": "wo\"rk\\er\u{1}",
            "argv": ["/usr/bin/x", "a b", "é€😀", "\n\t\r\u{8}\u{c}\u{1f}\u{7f}"],
            "start_offset_s": -0.000_001, "end_offset_s": 1e21, "exit_code": -1,
            "exit_signal": 9, "cpu_user_s": 0.1, "cpu_system_s": 123_456.789_012,
            "peak_rss_bytes": u64::MAX, "max_threads": 3, "disk_read_bytes": 0,
            "disk_write_bytes": 4096, "disk_cancelled_write_bytes": 1,
            "net": {"tcp": {"tx_bytes": 1, "rx_bytes": 2, "tx_calls": 3, "rx_calls": 4},
                    "udp": {"tx_bytes": 5, "rx_bytes": 6, "tx_calls": 7, "rx_calls": 8}},
            "exe": "/usr/bin/x", "argv_truncated": true, "core_dumped": true,
            "figures": "exit", "voluntary_ctxt_switches": 10,
            "involuntary_ctxt_switches": 11, "major_faults": 12, "preexisting": true,
            "vanished": true, "started_at": "2026-11-27T12:00:00.000Z", "uid": 1000,
            "gid": 1000, "user": "alice", "cgroup": "/user.slice/x.scope",
            "k8s_pod_uid": "0b8f", "pid_ns": 4_026_531_836u64, "ns_pid": 1,
            "cwd": "/home/alice/dir with \"quotes\"", "env_truncated": true,
            "memory": {"pss_peak_bytes": 1, "private_peak_bytes": null, "swap_peak_bytes": 3},
            "threads_dropped": {"count": 2, "cpu_user_s": 0.5, "cpu_system_s": 0.0},
        }))
        .unwrap();
        e.argv_hex = Some(vec![None, None, None, Some("0aff".into())]);
        e.series = vec![ProcPoint {
            t: 0.5,
            cpu_pct: 12.5,
            rss_bytes: 1 << 20,
        }];
        e.container = Some(Container {
            id: "ab".repeat(32),
            runtime: "docker".into(),
        });
        e.env = Some(EnvReport(Arc::from(vec![EnvVar {
            name: "PATH".into(),
            value: Some("/bin".into()),
        }])));
        e.threads = vec![
            ThreadReport {
                tid: 7,
                comm: "t\"1".into(),
                cpu_user_s: Some(0.25),
                cpu_system_s: None,
                start_offset_s: Some(1e-7),
                end_offset_s: Some(f64::NAN),
            },
            ThreadReport::default(),
        ];
        e.threads_dropped
            .get_or_insert_with(ThreadsDropped::default);
        e.connections = Some(vec![
            serde_json::from_value::<ConnectionReport>(serde_json::json!({
                "proto": "tcp", "role": "connect", "local": "127.0.0.1:1",
                "remote": null, "tx_bytes": 1, "rx_bytes": 2, "opened_offset_s": 0.5,
                "closed_offset_s": null, "outcome": "closed", "retransmits": 0,
            }))
            .unwrap(),
        ]);
        e.connections_dropped = Some(ConnectionsDropped::default());
        e.gpu = Some(GpuReport {
            devices: vec!["GPU-1".into()],
            ..GpuReport::default()
        });
        same(&e);
        // Every key the derive writes is there, in its order.
        let v: serde_json::Value = serde_json::from_slice(&{
            let mut out = Vec::new();
            write(&mut out, &e);
            out
        })
        .unwrap();
        assert!(v["stats"].is_null() && v["series"].is_array());
        // The entry above is whole: no field fell back to its default.
        for (k, want) in [
            ("pid", serde_json::json!(4_000_000)),
            ("peak_rss_bytes", serde_json::json!(u64::MAX)),
            ("pid_ns", serde_json::json!(4_026_531_836u64)),
            ("k8s_pod_uid", serde_json::json!("0b8f")),
            ("env_truncated", serde_json::json!(true)),
        ] {
            assert_eq!(v[k], want, "{k}");
        }
        assert_eq!(v["net"]["udp"]["rx_calls"], 8);
        assert_eq!(v["memory"]["swap_peak_bytes"], 3);
        assert_eq!(v["threads_dropped"]["count"], 2);
        assert_eq!(v["container"]["runtime"], "docker");
        assert_eq!(v["connections"][0]["local"], "127.0.0.1:1");
        assert_eq!(v["env"]["PATH"], "/bin");
        assert_eq!(v["threads"][1]["tid"], 0);
        assert!(v["threads"][0]["end_offset_s"].is_null(), "NaN is null");
    }

    #[test]
    fn entries_of_a_real_run_are_what_the_derive_writes() {
        let (t, rec) = crate::report::spill::tests::tree();
        let mut r = crate::report::build(&t, &crate::report::spill::tests::info(), Some(&rec));
        assert!(r.processes.len() > 5);
        for e in &r.processes {
            same(e);
        }
        // And the whole report, whose entries are back in it after.
        let whole = serde_json::to_vec(&r).unwrap();
        let n = r.processes.len();
        let mut out = Vec::new();
        write_whole(&mut r, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(whole).unwrap()
        );
        assert_eq!(r.processes.len(), n);
    }
}
