//! The PROXY protocol: behind HAProxy (Debian's, `send-proxy-v2`) and with headers written by
//! hand, a worker sees the client the header names; what is not a header is refused and
//! counted, and a client that sends nothing holds up nobody else.
#![cfg(target_os = "linux")] // HAProxy from Debian; 127.0.0.2 is loopback on Linux

mod testenv;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testenv::*;

/// One request for `/peer` on `s`, after `prefix`; the body the worker answered, or nothing
/// (a refused connection is closed unanswered, with a reset since its bytes were not read).
fn ask_peer(mut s: TcpStream, prefix: &[u8]) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[prefix, b"GET /peer HTTP/1.0\r\n\r\n"].concat()).unwrap();
    let mut got = String::new();
    match s.read_to_string(&mut got) {
        Ok(_) => got.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("reading the answer: {e}"),
    }
}

/// A connection from `local` (an address on the loopback) to `to`.
fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&local.parse::<SocketAddr>().unwrap().into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy in TCP mode on a free port of 127.0.0.1, sending a PROXY v2 header to `backend`.
fn haproxy(env: &TestEnv, backend: SocketAddr) -> (Haproxy, SocketAddr) {
    let port = free_port();
    let cfg = env.dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 256\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  server handover {backend} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let exe = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|p| Command::new(p).arg("-v").output().is_ok())
        .expect("haproxy is installed by scripts/setup.sh");
    let child = Command::new(exe)
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(front).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not listen on {front}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Haproxy(child), front)
}

#[test]
fn behind_haproxy_send_proxy_v2_workers_see_the_real_client() {
    let mut env = TestEnv::new("proxy-haproxy");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "2", "--proxy-protocol", "v2"], &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let (_haproxy, front) = haproxy(&env, addr);
    for _ in 0..5 {
        // The client is 127.0.0.2; HAProxy connects to handover from 127.0.0.1.
        let s = connect_from("127.0.0.2:0", front);
        let client = s.local_addr().unwrap();
        assert_eq!(ask_peer(s, b""), format!("peer {client}"), "{}", env.log_text());
    }
    assert_eq!(env.totals()["proxy_refused"], 0);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn a_v1_header_names_the_client_in_prefork_and_spawn_and_garbage_is_refused() {
    for mode in ["prefork", "spawn"] {
        let mut env = TestEnv::new(&format!("proxy-v1-{mode}"));
        let args =
            ["-l", "tcp://127.0.0.1:0", "-w", "2", "--mode", mode, "--proxy-protocol", "any"];
        env.serve(&args, &[DEMO_WORKER]);
        let addr = env.wait_ready(2);
        let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 80\r\n";
        let s = TcpStream::connect(addr).unwrap();
        assert_eq!(ask_peer(s, header), "peer 203.0.113.7:4242", "{mode}: {}", env.log_text());
        // v6, and UNKNOWN (the connection's own peer is kept).
        let s = TcpStream::connect(addr).unwrap();
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n";
        assert_eq!(ask_peer(s, v6), "peer [2001:db8::7]:4242", "{mode}");
        let s = TcpStream::connect(addr).unwrap();
        let own = s.local_addr().unwrap();
        assert_eq!(ask_peer(s, b"PROXY UNKNOWN\r\n"), format!("peer {own}"), "{mode}");
        // No header, or a broken one: closed without an answer, and counted.
        for bad in [&b""[..], b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n"] {
            let s = TcpStream::connect(addr).unwrap();
            assert_eq!(ask_peer(s, bad), "", "{mode}: {:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(env.totals()["proxy_refused"], 2, "{mode}");
        let s = TcpStream::connect(addr).unwrap();
        assert_eq!(ask_peer(s, header), "peer 203.0.113.7:4242", "{mode}: still serving");
        env.signal("TERM");
        assert!(env.wait_exit(Duration::from_secs(10)).success(), "{mode}: {}", env.log_text());
    }
}

#[test]
fn a_client_that_sends_no_header_holds_up_nobody_and_is_cut_off() {
    let mut env = TestEnv::new("proxy-slow");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "1", "--proxy-protocol", "v1"], &[DEMO_WORKER]);
    let addr = env.wait_ready(1);
    let mut silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let began = Instant::now();
    for i in 0..20 {
        let s = TcpStream::connect(addr).unwrap();
        let header = format!("PROXY TCP4 198.51.100.{i} 127.0.0.1 1000 80\r\n");
        assert_eq!(ask_peer(s, header.as_bytes()), format!("peer 198.51.100.{i}:1000"));
    }
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "20 requests took {:?} beside 20 silent connections",
        began.elapsed()
    );
    // The silent ones are closed once the header deadline (5 s) has passed, and counted.
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a silent connection got an answer");
    }
    let waited = began.elapsed();
    assert!(waited > Duration::from_secs(4) && waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(env.totals()["proxy_refused"], 20);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn the_proxy_protocol_is_refused_where_no_header_would_be_read() {
    let dir = TestEnv::new("proxy-refused");
    let sock = format!("unix:{}", dir.dir.join("s.sock").display());
    for (args, says) in [
        (
            vec!["-l", "tcp://127.0.0.1:0", "--mode", "shared", "--proxy-protocol", "v2"],
            "accept connections themselves",
        ),
        (vec!["-l", sock.as_str(), "--proxy-protocol", "v1"], "TCP listeners only"),
    ] {
        let out = Command::new(HANDOVER)
            .arg("serve")
            .args(&args)
            .args(["--control"])
            .arg(dir.dir.join("c.sock"))
            .arg("--")
            .arg(DEMO_WORKER)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
