//! Workloads whose truth is known exactly, for pmet's end-to-end tests and
//! benchmarks: bytes sent and received, processes spawned, exit statuses.
//!
//! Every role runs as its own process (this binary re-executed), so a test can
//! check that pmet attributes each byte to the process that moved it.
//! A workload exits non-zero if its own view of the truth did not hold (a
//! short read, a lost datagram), so a test never compares against a wrong truth.

use std::{
    env,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio, exit},
    thread,
    time::Duration,
};

fn me() -> Command {
    Command::new(env::current_exe().expect("current_exe"))
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage(&format!("missing or bad {what}")))
}

fn usage(msg: &str) -> ! {
    eprintln!("workload: {msg}");
    eprintln!(
        "usage: workload exit CODE | signal SIG | sleep MS | cpu MS | threads N MS |\n\
         \x20      spawn-tree CHILDREN GRANDCHILDREN | tcp 4|6 BYTES REPLY | udp 4|6 COUNT SIZE |\n\
         \x20      unix BYTES | orphan MS | kill-child | attach-target MS |\n\
         \x20      cpu-children N MS | disk-write BYTES | memory MIB | now | alive N MS |\n\
         \x20      time CMD... | rusage CMD..."
    );
    exit(2)
}

fn loopback(family: u8) -> SocketAddr {
    match family {
        4 => (Ipv4Addr::LOCALHOST, 0).into(),
        6 => (Ipv6Addr::LOCALHOST, 0).into(),
        _ => usage("family must be 4 or 6"),
    }
}

/// Starts a role that prints its port on its first stdout line.
fn start_with_port(args: &[String]) -> (Child, u16) {
    let mut child = me()
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("port line");
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| usage("no port from server"));
    (child, port)
}

fn wait_ok(mut c: Child, what: &str) {
    let st = c.wait().expect("wait");
    if !st.success() {
        eprintln!("workload: {what} failed: {st}");
        exit(1);
    }
}

fn burn(ms: u64) {
    // Burns CPU time, not wall time: loop until this thread has used `ms`.
    let target = Duration::from_millis(ms);
    let start = thread_cpu();
    let mut x: u64 = 1;
    while thread_cpu() - start < target {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn tcp(family: u8, bytes: u64, reply: u64) {
    let (server, port) = start_with_port(&[
        "tcp-serve".into(),
        family.to_string(),
        bytes.to_string(),
        reply.to_string(),
    ]);
    // The client forks a grandchild that does the talking.
    let client = me()
        .args([
            "tcp-client",
            &family.to_string(),
            &port.to_string(),
            &bytes.to_string(),
            &reply.to_string(),
        ])
        .spawn()
        .expect("spawn client");
    wait_ok(client, "tcp client");
    wait_ok(server, "tcp server");
}

/// `BYTES` of a file sent over loopback TCP with sendfile(2) (which went
/// through `sendpage`, not `sendmsg`, before Linux 6.5): a `sendfile-recv`
/// child reads them, this process sends them.
fn sendfile_tcp(bytes: u64) {
    let (server, port) = start_with_port(&["sendfile-recv".into(), bytes.to_string()]);
    let dir = env::temp_dir().join(format!("workload-sendfile-{}", std::process::id()));
    std::fs::write(&dir, vec![7u8; bytes as usize]).expect("write the file");
    let f = std::fs::File::open(&dir).expect("open the file");
    let _ = std::fs::remove_file(&dir);
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    let mut left = bytes as usize;
    while left > 0 {
        // SAFETY: valid descriptors; a null offset uses the file's own.
        let n = unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), std::ptr::null_mut(), left) };
        if n <= 0 {
            eprintln!("workload: sendfile: {}", std::io::Error::last_os_error());
            exit(1);
        }
        left -= n as usize;
    }
    drop(s);
    wait_ok(server, "sendfile receiver");
}

fn sendfile_recv(expect: u64) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    println!("{}", l.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");
    let (mut s, _) = l.accept().expect("accept");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read");
    if got.len() as u64 != expect {
        eprintln!("workload: received {} of {expect} bytes", got.len());
        exit(1);
    }
}

fn tcp_serve(family: u8, expect: u64, reply: u64) {
    note_role("tcp-serve");
    let l = TcpListener::bind(loopback(family)).expect("bind");
    println!("{}", l.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");
    let (mut s, _) = l.accept().expect("accept");
    // A peek must not be counted: these bytes are read again below.
    let mut peek = [0u8; 100];
    // SAFETY: valid fd and buffer.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            peek.as_mut_ptr().cast(),
            peek.len(),
            libc::MSG_PEEK,
        )
    };
    if n <= 0 {
        exit(1);
    }
    let got = read_to_end_counting(&mut s);
    if got != expect {
        eprintln!("tcp-serve: got {got}, expected {expect}");
        exit(1);
    }
    write_n(&mut s, reply);
}

/// Reads until EOF; returns the byte count.
fn read_to_end_counting(r: &mut impl Read) -> u64 {
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            return got;
        }
        got += n as u64;
    }
}

fn write_n(w: &mut impl Write, mut n: u64) {
    let buf = vec![0x5au8; 64 * 1024];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        w.write_all(&buf[..k]).expect("write");
        n -= k as u64;
    }
}

fn tcp_send(family: u8, port: u16, bytes: u64, reply: u64) {
    note_role("tcp-send");
    let mut addr = loopback(family);
    addr.set_port(port);
    let mut s = TcpStream::connect(addr).expect("connect");
    write_n(&mut s, bytes);
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let got = read_to_end_counting(&mut s);
    if got != reply {
        eprintln!("tcp-send: got {got} back, expected {reply}");
        exit(1);
    }
}

/// Connects to a port nobody listens on (found by binding and closing it):
/// the connect is refused.
fn refused(family: u8) {
    let port = TcpListener::bind(loopback(family))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut addr = loopback(family);
    addr.set_port(port);
    match TcpStream::connect(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("{port}"),
        other => {
            eprintln!("refused: connect to {addr} gave {other:?}");
            exit(1);
        }
    }
}

/// Sends `bytes` over a loopback connection while an nftables rule drops
/// every segment to the server for `ms`: the kernel retransmits until the
/// rule is gone. Needs root and `nft`; meant for a network namespace of its
/// own, where the rule touches nothing else.
fn retransmit(bytes: u64, ms: u64) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (mut s, _) = l.accept().expect("accept");
    let nft = |script: &str| {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("nft script");
        wait_ok(child, "nft");
    };
    nft(&format!(
        "table inet pmet_rtx {{\n chain inp {{\n  type filter hook input priority 0;\n  tcp dport {port} drop\n }}\n}}\n"
    ));
    // Written beside the loss (more than a socket buffer holds while
    // nothing is acknowledged), read once the loss is over.
    let writer = thread::spawn(move || {
        write_n(&mut c, bytes);
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    thread::sleep(Duration::from_millis(ms));
    nft("delete table inet pmet_rtx\n");
    let got = read_to_end_counting(&mut s);
    writer.join().expect("writer");
    if got != bytes {
        eprintln!("retransmit: got {got}, expected {bytes}");
        exit(1);
    }
    println!("{port}");
}

/// With `connect_late`, the receiver `connect()`s to the sender after the
/// first datagram (as iperf3's UDP server does).
fn udp(family: u8, count: u32, size: usize, connect_late: bool) {
    let mut recv_args = vec![
        "udp-recv".into(),
        family.to_string(),
        count.to_string(),
        size.to_string(),
    ];
    if connect_late {
        recv_args.push("connect".into());
    }
    let (recv, port) = start_with_port(&recv_args);
    let send = me()
        .args([
            "udp-send",
            &family.to_string(),
            &port.to_string(),
            &count.to_string(),
            &size.to_string(),
        ])
        .spawn()
        .expect("spawn sender");
    wait_ok(send, "udp sender");
    wait_ok(recv, "udp receiver");
}

/// Sends `count` UDP datagrams of `size` payload bytes to a closed port on
/// 127.0.0.1 through a raw socket (IPPROTO_UDP), header built by hand, then
/// the same through an ordinary UDP socket. Only the second is UDP payload
/// as a tracer should count it. Needs CAP_NET_RAW.
fn raw_udp(count: u32, size: usize) {
    // SAFETY: plain socket calls with valid buffers and lengths below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut dst: libc::sockaddr_in = std::mem::zeroed();
        dst.sin_family = libc::AF_INET as u16;
        dst.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut pkt = vec![0u8; 8 + size];
        pkt[0..2].copy_from_slice(&40000u16.to_be_bytes());
        pkt[2..4].copy_from_slice(&9u16.to_be_bytes()); // discard
        pkt[4..6].copy_from_slice(&((8 + size) as u16).to_be_bytes());
        for _ in 0..count {
            let n = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&raw const dst).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(n, pkt.len() as isize, "{}", std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..count {
        s.send_to(&vec![0u8; size], "127.0.0.1:9").expect("send");
    }
}

fn udp_recv(family: u8, count: u32, size: usize, connect_late: bool) {
    note_role("udp-recv");
    let s = UdpSocket::bind(loopback(family)).expect("bind");
    println!("{}", s.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = vec![0u8; size + 1];
    for i in 0..count {
        if i == 0 {
            s.peek_from(&mut buf).expect("peek");
        }
        let (n, from) = s.recv_from(&mut buf).expect("recv");
        if n != size {
            eprintln!("udp-recv: datagram of {n}, expected {size}");
            exit(1);
        }
        if connect_late && i == 0 {
            s.connect(from).expect("connect");
        }
        // One-byte ack: the sender waits for it, so no datagram is ever lost.
        s.send_to(&[1], from).expect("ack");
    }
}

fn udp_send(family: u8, port: u16, count: u32, size: usize) {
    note_role("udp-send");
    let s = UdpSocket::bind(loopback(family)).expect("bind");
    let mut addr = loopback(family);
    addr.set_port(port);
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let payload = vec![0xa5u8; size];
    let mut ack = [0u8; 8];
    for _ in 0..count {
        s.send_to(&payload, addr).expect("send");
        let (n, _) = s.recv_from(&mut ack).expect("ack");
        if n != 1 {
            exit(1);
        }
    }
}

fn unix(bytes: u64) {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let t = thread::spawn(move || {
        write_n(&mut a, bytes);
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while got < bytes {
        got += b.read(&mut buf).expect("read") as u64;
    }
    t.join().expect("join");
}

fn spawn_tree(children: u32, grandchildren: u32) {
    let mut kids = Vec::new();
    for i in 0..children {
        kids.push(
            me().args(["tree-child", &i.to_string(), &grandchildren.to_string()])
                .spawn()
                .expect("spawn child"),
        );
    }
    for mut k in kids {
        k.wait().expect("wait");
    }
}

fn tree_child(i: u32, grandchildren: u32) {
    for j in 0..grandchildren {
        let code = (i * grandchildren + j) % 7;
        me().args(["exit", &code.to_string()])
            .status()
            .expect("grandchild");
    }
    exit((i % 5) as i32);
}

fn orphan(ms: u64) {
    let mid = me()
        .args(["orphan-mid", &ms.to_string()])
        .status()
        .expect("mid");
    exit(mid.code().unwrap_or(1));
}

#[expect(
    clippy::zombie_processes,
    reason = "the point: exit without waiting, so it is re-parented"
)]
fn orphan_mid(ms: u64) {
    // Start the grandchild and exit at once: it is re-parented and outlives us.
    me().args(["sleep", &ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("grandchild");
}

fn kill_child() {
    let mut c = me().args(["sleep", "10000"]).spawn().expect("spawn");
    thread::sleep(Duration::from_millis(50));
    c.kill().expect("kill");
    let st = c.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    exit(if st.signal() == Some(9) { 0 } else { 1 });
}

/// A long-running tree to attach to: one sleeping child from the start; after
/// `ms`, a new child does a TCP exchange, then everything exits.
/// Once a line comes on stdin: a child that writes `bytes` to disk, waited
/// for (reaped: the kernel then adds its I/O to this process's
/// `/proc/PID/io`), then "reaped" on stdout and `ms` of sleep.
fn reap_write(bytes: u64, ms: u64) {
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("stdin");
    let status = me()
        .args(["disk-write", &bytes.to_string()])
        .status()
        .expect("disk-write");
    assert!(status.success());
    println!("reaped");
    std::io::stdout().flush().expect("flush");
    thread::sleep(Duration::from_millis(ms));
}

fn attach_target(ms: u64) {
    let mut sleeper = me()
        .args(["sleep", &(ms * 2).to_string()])
        .spawn()
        .expect("spawn");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    thread::sleep(Duration::from_millis(ms));
    me().args(["tcp", "4", "30000", "7000"])
        .status()
        .expect("tcp");
    sleeper.wait().expect("wait");
}

/// Children that each burn `ms` of CPU; prints what wait4 says they used,
/// in microseconds (the ground truth /usr/bin/time would show).
fn cpu_children(n: u32, ms: u64) {
    let kids: Vec<Child> = (0..n)
        .map(|_| me().args(["cpu", &ms.to_string()]).spawn().expect("spawn"))
        .collect();
    for k in kids {
        wait_ok(k, "cpu child");
    }
    // SAFETY: valid pointer to a zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    println!("{} {}", us(ru.ru_utime), us(ru.ru_stime));
}

/// An exec storm: `n` short children (each `/bin/true`), at most `par` at
/// once; then prints RUSAGE_CHILDREN (user µs, system µs), the truth that
/// `/usr/bin/time` would show.
fn storm(n: u32, par: u32) {
    let mut running = std::collections::VecDeque::new();
    for _ in 0..n {
        if running.len() >= par as usize {
            wait_ok(running.pop_front().expect("one running"), "storm child");
        }
        running.push_back(Command::new("/bin/true").spawn().expect("spawn"));
    }
    for c in running {
        wait_ok(c, "storm child");
    }
    // SAFETY: valid pointer to a zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    println!("{} {}", us(ru.ru_utime), us(ru.ru_stime));
}

/// `n` short processes (this binary again), at most `par` at once, each
/// sending one datagram of `bytes` to a socket of this process, which reads
/// them all: prints the bytes it received (every datagram, or it fails).
fn churn(n: u32, par: u32, bytes: usize) {
    let sink = UdpSocket::bind(loopback(4)).expect("bind");
    sink.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Room for every datagram even if the reader falls behind (root may
    // exceed rmem_max; otherwise the reader keeps up at this rate).
    let room: libc::c_int = 16 << 20;
    // SAFETY: a valid socket and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            sink.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&room as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let port = sink.local_addr().expect("addr").port();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; bytes.max(1)];
        let mut got = 0usize;
        let mut left = n;
        while left > 0 {
            match sink.recv(&mut buf) {
                Ok(k) => {
                    got += k;
                    left -= 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("every datagram arrives: {e}"),
            }
        }
        got
    });
    let mut running = std::collections::VecDeque::new();
    for _ in 0..n {
        if running.len() >= par as usize {
            wait_ok(running.pop_front().expect("one running"), "churn child");
        }
        running.push_back(
            me().args(["udp-blip", &port.to_string(), &bytes.to_string()])
                .spawn()
                .expect("spawn"),
        );
    }
    for c in running {
        wait_ok(c, "churn child");
    }
    println!("{}", reader.join().expect("reader"));
}

/// One datagram of `bytes` to `port` on 127.0.0.1.
fn udp_blip(port: u16, bytes: usize) {
    let s = UdpSocket::bind(loopback(4)).expect("bind");
    s.send_to(&vec![0x5au8; bytes], (Ipv4Addr::LOCALHOST, port))
        .expect("send");
}

/// Writes `bytes` (a multiple of 4096) to a new file and syncs it.
fn disk_write(bytes: u64) {
    let dir = env::temp_dir().join(format!("pmet-workload-{}", std::process::id()));
    let path = dir.with_extension("dat");
    let mut f = std::fs::File::create(&path).expect("create");
    write_n(&mut f, bytes);
    f.sync_all().expect("fsync");
    drop(f);
    std::fs::remove_file(&path).expect("remove");
}

/// `shared` MiB of a shared anonymous mapping touched by it and by a child
/// it forks, then (once the child has touched it too) `private` MiB of its
/// own: its PSS is then private + shared / 2 (plus its binary's pages), the
/// child's shared / 2. Allocated after the fork, the private memory is not
/// shared copy-on-write with the child. Both hold for `ms`; the child ends
/// when the parent lets it, after the parent freed its own memory.
fn shared_memory(private: usize, shared: usize, ms: u64) {
    // SAFETY: a fresh anonymous shared mapping of the size asked, touched
    // within bounds below, and unmapped at exit.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            shared << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap");
    let touch = || {
        for i in (0..shared << 20).step_by(4096) {
            // SAFETY: within the mapping.
            unsafe { *(map as *mut u8).add(i) = 1 };
        }
    };
    touch();
    let (mut fds, mut go) = ([0; 2], [0; 2]);
    // SAFETY: pipes for the child to say it has touched the mapping, and
    // for the parent to let it go.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
    // SAFETY: fork; the child only touches the mapping, writes one byte,
    // waits to be let go and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        touch();
        let mut b = [0u8; 1];
        // SAFETY: valid fds and buffers.
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        unsafe { libc::read(go[0], b.as_mut_ptr().cast(), 1) };
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut b = [0u8; 1];
    // SAFETY: valid fd and buffer.
    unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    let mut own = vec![0u8; private << 20];
    for i in (0..own.len()).step_by(4096) {
        own[i] = 1;
    }
    thread::sleep(Duration::from_millis(ms));
    // Its own memory let go before the child is: once the child is gone,
    // the shared pages are this process's alone, and had it kept the rest
    // its PSS would then be 300 MiB (a child that ended first, under load,
    // made a sample see that).
    drop(std::hint::black_box(own));
    // SAFETY: valid fd and buffer.
    unsafe { libc::write(go[1], b"x".as_ptr().cast(), 1) };
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
}

/// Allocates and touches `mib` MiB, so peak RSS is at least that.
/// `mib` MiB of this process's own, every page touched (resident).
fn resident(mib: usize) -> Vec<u8> {
    let mut v = vec![0u8; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(v)
}

fn memory(mib: usize) {
    let v = resident(mib);
    thread::sleep(Duration::from_millis(20));
    drop(v);
}

fn memory_then(mib: usize, cmd: &[String], exec: bool) {
    let v = resident(mib);
    if exec {
        use std::os::unix::process::CommandExt;
        let e = Command::new(&cmd[0]).args(&cmd[1..]).exec();
        panic!("exec {}: {e}", cmd[0]);
    }
    rusage(cmd);
    std::hint::black_box(&v);
}

/// Records "ROLE PID" in the file named by WORKLOAD_ROLES, so tools that
/// only see pids (bpftrace, nethogs) can be checked against the truth.
fn note_role(role: &str) {
    if let Some(path) = env::var_os("WORKLOAD_ROLES") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("roles file");
        writeln!(f, "{role} {}", std::process::id()).expect("write role");
    }
}

/// Prints CLOCK_BOOTTIME ns: when this program started running.
fn now() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    println!("{}", ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
}

/// Runs a command and writes its wall time (seconds) to the file named by
/// WORKLOAD_TIME_FILE: the bench's measure of a workload, the same whether a
/// tracer's own start and stop are around it or not.
fn time_cmd(cmd: &[String]) {
    let start = std::time::Instant::now();
    let st = Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .expect("spawn");
    let secs = start.elapsed().as_secs_f64();
    if let Some(path) = env::var_os("WORKLOAD_TIME_FILE") {
        std::fs::write(path, format!("{secs}\n")).expect("time file");
    }
    exit(st.code().unwrap_or(1));
}

/// Runs a command, reaps it with wait4(2), and prints what wait4 said of
/// it as one JSON line: the kernel's own account of the child, for a test
/// to hold pmet's figures against.
fn rusage(cmd: &[String]) {
    // Reaped below by wait4 itself, which is the point: std's wait would
    // not hand back the rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; both pointers are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `child` is not waited for by anyone else.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(got, pid, "wait4");
    println!(
        "{{\"pid\":{pid},\"status\":{status},\"nvcsw\":{},\"nivcsw\":{},\"majflt\":{},\"minflt\":{},\"maxrss_kb\":{}}}",
        ru.ru_nvcsw, ru.ru_nivcsw, ru.ru_majflt, ru.ru_minflt, ru.ru_maxrss
    );
}

/// `n` children alive at once, each sleeping `ms`.
fn alive(n: u32, ms: u64) {
    let kids: Vec<Child> = (0..n)
        .map(|_| {
            me().args(["sleep", &ms.to_string()])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for k in kids {
        wait_ok(k, "sleeper");
    }
}

/// `n` threads named `burn-0`, `burn-1`, ... (pthread_setname_np), each
/// burning `ms` of its own CPU.
fn threads(n: u32, ms: u64) {
    let hs: Vec<_> = (0..n)
        .map(|i| {
            thread::Builder::new()
                .name(format!("burn-{i}"))
                .spawn(move || burn(ms))
                .expect("spawn thread")
        })
        .collect();
    for h in hs {
        h.join().expect("join");
    }
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        usage("no workload")
    };
    match cmd.as_str() {
        "exit" => exit(arg(&args, 1, "code")),
        "signal" => {
            let sig: i32 = arg(&args, 1, "signal");
            // SAFETY: plain signal to ourselves; default action applies.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            thread::sleep(Duration::from_secs(5));
            exit(1)
        }
        "sleep" => thread::sleep(Duration::from_millis(arg(&args, 1, "ms"))),
        "cpu" => burn(arg(&args, 1, "ms")),
        "threads" => threads(arg(&args, 1, "count"), arg(&args, 2, "ms")),
        "cpu-children" => cpu_children(arg(&args, 1, "count"), arg(&args, 2, "ms")),
        "storm" => storm(arg(&args, 1, "count"), arg(&args, 2, "parallel")),
        "churn" => churn(
            arg(&args, 1, "count"),
            arg(&args, 2, "parallel"),
            arg(&args, 3, "bytes"),
        ),
        "udp-blip" => udp_blip(arg(&args, 1, "port"), arg(&args, 2, "bytes")),
        "shared-memory" => shared_memory(
            arg(&args, 1, "private MiB"),
            arg(&args, 2, "shared MiB"),
            arg(&args, 3, "ms"),
        ),
        "raw-udp" => raw_udp(arg(&args, 1, "count"), arg(&args, 2, "bytes")),
        "disk-write" => disk_write(arg(&args, 1, "bytes")),
        "memory" => memory(arg(&args, 1, "mib")),
        // Holds MIB of its own, then runs the rest: in its place (exec), or
        // as a child it spawns (posix_spawn: the child runs in this memory
        // until its exec) and reaps with wait4, printing what it says.
        "memory-exec" => memory_then(arg(&args, 1, "mib"), &args[2..], true),
        "memory-spawn" => memory_then(arg(&args, 1, "mib"), &args[2..], false),
        "now" => now(),
        "rusage" => rusage(&args[1..]),
        "time" if args.len() > 1 => time_cmd(&args[1..]),
        "sendfile" => sendfile_tcp(arg(&args, 1, "bytes")),
        "sendfile-recv" => sendfile_recv(arg(&args, 1, "bytes")),
        "alive" => alive(arg(&args, 1, "count"), arg(&args, 2, "ms")),
        "spawn-tree" => spawn_tree(arg(&args, 1, "children"), arg(&args, 2, "grandchildren")),
        "tree-child" => tree_child(arg(&args, 1, "index"), arg(&args, 2, "grandchildren")),
        "tcp" => tcp(
            arg(&args, 1, "family"),
            arg(&args, 2, "bytes"),
            arg(&args, 3, "reply"),
        ),
        "tcp-serve" => tcp_serve(
            arg(&args, 1, "family"),
            arg(&args, 2, "bytes"),
            arg(&args, 3, "reply"),
        ),
        "tcp-client" => {
            // The grandchild talks; this process only waits.
            let st = me()
                .arg("tcp-send")
                .args(&args[1..])
                .status()
                .expect("spawn sender");
            exit(st.code().unwrap_or(1));
        }
        "tcp-send" => tcp_send(
            arg(&args, 1, "family"),
            arg(&args, 2, "port"),
            arg(&args, 3, "bytes"),
            arg(&args, 4, "reply"),
        ),
        "udp" => udp(
            arg(&args, 1, "family"),
            arg(&args, 2, "count"),
            arg(&args, 3, "size"),
            args.get(4).is_some_and(|a| a == "connect"),
        ),
        "udp-recv" => udp_recv(
            arg(&args, 1, "family"),
            arg(&args, 2, "count"),
            arg(&args, 3, "size"),
            args.get(4).is_some_and(|a| a == "connect"),
        ),
        "udp-send" => udp_send(
            arg(&args, 1, "family"),
            arg(&args, 2, "port"),
            arg(&args, 3, "count"),
            arg(&args, 4, "size"),
        ),
        "unix" => unix(arg(&args, 1, "bytes")),
        "refused" => refused(arg(&args, 1, "family")),
        "retransmit" => retransmit(arg(&args, 1, "bytes"), arg(&args, 2, "ms")),
        "orphan" => orphan(arg(&args, 1, "ms")),
        "orphan-mid" => orphan_mid(arg(&args, 1, "ms")),
        "kill-child" => kill_child(),
        "attach-target" => attach_target(arg(&args, 1, "ms")),
        "reap-write" => reap_write(arg(&args, 1, "bytes"), arg(&args, 2, "ms")),
        other => usage(&format!("unknown workload {other}")),
    }
}
