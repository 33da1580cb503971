//! A recorded event stream (a small web job: a server, two clients, a
//! failing helper and a killed one), for tests of everything built from the
//! tree.

use pmet_common::NetCounters;

use super::net::Net;

use super::{
    conn::{Life, Opened, Outcome, Proto, Role},
    event::{Event, ThreadTotals},
    tree::Tree,
};
use crate::model::input::{Sample, TaskStats};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// The root's cookie is chosen by userspace (even); the kernel's are odd.
fn cookie(pid: u32) -> u64 {
    if pid == 1000 {
        2
    } else {
        u64::from(pid) * 2 + 1
    }
}

fn fork(t: u64, parent: u32, child: u32) -> Event {
    Event::Fork {
        shares_memory: false,
        ts_ns: t,
        parent_tgid: parent,
        child,
        cookie: cookie(child),
        thread: false,
        untracked: false,
        new_pid_ns: false,
        comm: "sh".into(),
    }
}

fn exec(t: u64, pid: u32, argv: &[&str]) -> [Event; 2] {
    [
        Event::ExecArgs {
            ts_ns: t,
            tid: pid,
            filename: format!("/usr/bin/{}", argv[0]),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            argv_hex: None,
            truncated: false,
        },
        Event::Exec {
            maxrss_bytes: None,
            cwd: None,
            ts_ns: t,
            tgid: pid,
            old_tid: pid,
            comm: argv[0].chars().take(15).collect(),
            ids: Default::default(),
        },
    ]
}

fn end(t: u64, pid: u32, code: u32, cpu_ms: u64, write: u64) -> [Event; 2] {
    let cookie = cookie(pid);
    [
        Event::Exit {
            maxrss_bytes: None,
            ts_ns: t,
            tgid: pid,
            tid: pid,
            cookie,
            group_dead: true,
            had_net: true,
            exit_code: Some(code),
            comm: String::new(),
            peak_rss_bytes: None,
        },
        Event::Free {
            ts_ns: t + MS,
            tgid: pid,
            tid: pid,
            cookie,
            totals: Some(ThreadTotals {
                runtime_ns: cpu_ms * MS,
                utime_ns: 3,
                stime_ns: 1,
                read_bytes: 0,
                write_bytes: write,
                cancelled_write_bytes: 0,
            }),
            kept: false,
            ctx: None,
        },
    ]
}

/// The job's first 201 ms: the root `sh -c <script>`, the server and the
/// first client started. Both the finished and the live job begin so.
fn web_job_opening(start: u64, script: &str) -> (Tree, Vec<Event>) {
    let mut t = Tree::new();
    // The root keeps cookie 2 (userspace-chosen).
    t.add_root(
        1000,
        999,
        2,
        start,
        vec!["sh".into(), "-c".into(), script.into()],
    );
    let mut evs = vec![fork(start + 10 * MS, 1000, 1001)];
    evs.extend(exec(
        start + 12 * MS,
        1001,
        &["python3", "-m", "http.server", "8080"],
    ));
    evs.push(fork(start + 200 * MS, 1000, 1002));
    evs.extend(exec(
        start + 201 * MS,
        1002,
        &["curl", "-s", "http://127.0.0.1:8080/big"],
    ));
    (t, evs)
}

/// The tree after the whole run; `start` is the run's start (CLOCK_BOOTTIME).
pub fn web_job() -> (Tree, u64) {
    let start = 100 * S;
    let (mut t, mut evs) = web_job_opening(start, "./serve & ./fetch; ./fetch");
    evs.push(fork(start + 300 * MS, 1000, 1003));
    evs.extend(exec(
        start + 301 * MS,
        1003,
        &["curl", "-s", "http://127.0.0.1:8080/small"],
    ));
    evs.push(fork(start + 400 * MS, 1000, 1004));
    evs.extend(exec(
        start + 401 * MS,
        1004,
        &["grep", "-q", "needle", "haystack"],
    ));
    evs.extend(end(start + 420 * MS, 1004, 1 << 8, 2, 0));
    evs.push(fork(start + 450 * MS, 1000, 1005));
    evs.extend(exec(start + 451 * MS, 1005, &["sleep", "60"]));
    // Each client's connection, the server's side of it, and a connect to
    // [::1]:8080 refused before the second client fell back to IPv4.
    let conns = [
        (
            1002,
            11,
            Role::Connect,
            "127.0.0.1:40001",
            "127.0.0.1:8080",
            205,
            1490,
            2,
        ),
        (
            1001,
            21,
            Role::Accept,
            "127.0.0.1:8080",
            "127.0.0.1:40001",
            206,
            1495,
            0,
        ),
        (
            1003,
            12,
            Role::Connect,
            "127.0.0.1:40002",
            "127.0.0.1:8080",
            305,
            890,
            0,
        ),
        (
            1001,
            22,
            Role::Accept,
            "127.0.0.1:8080",
            "127.0.0.1:40002",
            306,
            895,
            0,
        ),
    ];
    evs.push(Event::Conn {
        tgid: 1003,
        proc_cookie: cookie(1003),
        opened: Opened {
            sock_cookie: 13,
            proto: Proto::Tcp,
            role: Role::Connect,
            local: None,
            remote: "[::1]:8080".parse().ok(),
            ts_ns: start + 302 * MS,
        },
    });
    evs.push(Event::ConnEnd {
        sock_cookie: 13,
        life: Life {
            opened_ns: start + 302 * MS,
            closed_ns: Some(start + 303 * MS),
            local: None,
            remote: "[::1]:8080".parse().ok(),
            role: Role::Connect,
            outcome: Outcome::Refused,
            retransmits: 0,
            ended: true,
        },
    });
    for (pid, sock, role, local, remote, open_ms, _, _) in conns {
        evs.push(Event::Conn {
            tgid: pid,
            proc_cookie: cookie(pid),
            opened: Opened {
                sock_cookie: sock,
                proto: Proto::Tcp,
                role,
                local: local.parse().ok(),
                remote: remote.parse().ok(),
                ts_ns: start + open_ms * MS,
            },
        });
    }
    for (_, sock, role, local, remote, open_ms, close_ms, rtx) in conns {
        evs.push(Event::ConnEnd {
            sock_cookie: sock,
            life: Life {
                opened_ns: start + open_ms * MS,
                closed_ns: Some(start + close_ms * MS),
                local: local.parse().ok(),
                remote: remote.parse().ok(),
                role,
                outcome: Outcome::Closed,
                retransmits: rtx,
                ended: true,
            },
        });
    }
    evs.extend(end(start + 900 * MS, 1003, 0, 30, 0));
    evs.extend(end(start + 1500 * MS, 1002, 0, 180, 4096));
    evs.extend(end(start + 1600 * MS, 1005, 9, 1, 0));
    evs.extend(end(start + 2400 * MS, 1001, 15, 950, 8192));
    evs.extend(end(start + 2500 * MS, 1000, 0, 12, 0));
    for e in evs {
        t.apply(e);
    }
    let net = |tcp_tx, tcp_rx| {
        Net::from(&NetCounters {
            tcp_tx_bytes: tcp_tx,
            tcp_rx_bytes: tcp_rx,
            tcp_tx_calls: 3,
            tcp_rx_calls: 7,
            ..NetCounters::default()
        })
    };
    t.set_net(1001, 2003, net(10_485_760 + 262_144, 300), true);
    t.set_net(1002, 2005, net(150, 10_485_760), true);
    t.set_net(1003, 2007, net(150, 262_144), true);
    for (pid, sock, tx, rx) in [
        (1002, 11, 150, 10_485_760),
        (1001, 21, 10_485_760, 150),
        (1003, 12, 150, 262_144),
        (1001, 22, 262_144, 150),
    ] {
        t.set_conn_bytes((pid, cookie(pid)), sock, tx, rx, true);
    }
    for (pid, rss_kb) in [
        (1001u32, 21_500u64),
        (1002, 9_800),
        (1003, 9_700),
        (1004, 2_100),
        (1005, 1_600),
        (1000, 1_700),
    ] {
        t.apply_taskstats(&TaskStats {
            tid: pid,
            tgid: pid,
            hiwater_rss_kb: rss_kb,
            nvcsw: 10,
            nivcsw: 2,
            ..TaskStats::default()
        });
    }
    (t, start)
}

/// The same job seen live, half-way: the server and one client running.
pub fn web_job_live() -> (Tree, u64) {
    let start = 100 * S;
    let (mut t, evs) = web_job_opening(start, "./serve & ./fetch");
    for e in evs {
        t.apply(e);
    }
    (t, start)
}

/// Advances [`web_job_live`] to `secs` seconds in: samples and counters.
pub fn live_at(t: &mut Tree, secs: u64) {
    let sample = |ticks: u64, rss_kb: u64| Sample {
        utime_ticks: ticks,
        rss_bytes: rss_kb * 1024,
        hwm_bytes: rss_kb * 1024,
        threads: 1,
        read_bytes: Some(0),
        write_bytes: Some(4096 * secs),
        ..Sample::default()
    };
    t.apply_sample(1000, sample(1, 1_700));
    t.apply_sample(1001, sample(40 * secs, 21_500));
    t.apply_sample(1002, sample(15 * secs, 9_800));
    let net = |tx: u64, rx: u64| {
        Net::from(&NetCounters {
            tcp_tx_bytes: tx,
            tcp_rx_bytes: rx,
            ..NetCounters::default()
        })
    };
    t.set_net(1001, 2003, net(2_000_000 * secs, 300), false);
    t.set_net(1002, 2005, net(150, 2_000_000 * secs), false);
}
