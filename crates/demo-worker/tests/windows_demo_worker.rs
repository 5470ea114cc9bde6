//! The demo worker built for Windows, driven by this test playing the supervisor: prefork over
//! a spawned channel (blocking and `--tokio`, and some `--misbehave` modes), spawn mode with
//! the connection as standard input/output or passed like a listening socket, and shared mode.
//! The Linux supervisor tests (crates/handover-cli/tests: `prefork.rs`, `modes.rs`, …) cover the
//! same worker on Unix.
#![cfg(windows)] // named-pipe channels, WSADuplicateSocketW, CreateProcessW; runs under Wine

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use handover::{AsSocketRef, Channel, Child, Command, Error};
use handover_worker::protocol::{
    ConnectionInfo, SupervisorMessage, WorkerMessage, CONNECTION_MAX_LEN,
};

const WORKER: &str = env!("CARGO_BIN_EXE_handover-demo-worker");
/// Generous: Wine starts processes slowly, more so on a loaded machine.
const WAIT: Duration = Duration::from_secs(30);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

/// The demo worker with `args`, given a channel (prefork).
fn spawn_prefork(args: &[&str]) -> (Child, Channel) {
    let mut child = Command::new(WORKER).args(args).channel().spawn().unwrap();
    let channel = child.channel.take().expect("a channel");
    (child, channel)
}

fn next(sup: &Channel) -> WorkerMessage {
    let msg = sup.recv_timeout(WAIT).expect("a message from the worker");
    assert!(msg.sockets.is_empty(), "a worker sends no sockets");
    WorkerMessage::decode(&msg.bytes).expect("a worker message")
}

/// A client connected to a fresh listener, the accepted end, and the client's address.
fn tcp_pair() -> (TcpStream, TcpStream, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, peer) = listener.accept().unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    (client, accepted, peer)
}

/// Sends CONNECTION `id` for `accepted` (the test keeps its copy, as the supervisor does).
fn offer(sup: &Channel, id: u64, accepted: &TcpStream, peer: SocketAddr) {
    let mut buf = [0u8; CONNECTION_MAX_LEN];
    let n = ConnectionInfo { id, listener: 0, listener_name: "http", peer: Some(peer) }
        .encode(&mut buf);
    sup.send(&buf[..n], &[accepted.as_socket_ref()]).unwrap();
}

/// Sends the request and reads the response up to the end of the stream.
fn request(mut client: &TcpStream) -> String {
    client.write_all(REQUEST).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("the end of the response");
    String::from_utf8(got).unwrap()
}

fn assert_response(got: &str, body: &str) {
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
    assert!(got.ends_with(&format!("\r\n\r\n{body}\n")), "wanted body {body:?} in {got:?}");
}

/// Waits for the child to exit; kills it and fails after `WAIT`.
fn exit_status(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The whole prefork exchange: HELLO, PING/PONG, two connections (ACK, response, FINISHED
/// before the client sees the end), DRAIN, exit 0.
fn prefork_protocol(args: &[&str], body: &str) {
    let (mut child, sup) = spawn_prefork(args);
    let pid = child.id();
    match next(&sup) {
        WorkerMessage::Hello { capacity, pid: said, heartbeat } => {
            assert_eq!((capacity, said, heartbeat), (16, pid, true));
        }
        other => panic!("wanted HELLO, got {other:?}"),
    }
    sup.send(&SupervisorMessage::ping(0x5eed), &[]).unwrap();
    assert_eq!(next(&sup), WorkerMessage::Pong(0x5eed));

    let conns: Vec<_> = (1..=2).map(|_| tcp_pair()).collect();
    for (id, (_, accepted, peer)) in (1..).zip(&conns) {
        offer(&sup, id, accepted, *peer);
    }
    assert_eq!(next(&sup), WorkerMessage::Ack(1));
    assert_eq!(next(&sup), WorkerMessage::Ack(2));
    let mut finished = Vec::new();
    for (client, _, _) in &conns {
        assert_response(&request(client), &format!("{body} {pid}"));
        // The worker reports FINISHED before it ends the stream, and the test still holds its
        // copy of the connection: the report is already in the channel.
        let msg = sup.try_recv().unwrap().expect("FINISHED written before the stream ended");
        finished.push(WorkerMessage::decode(&msg.bytes).unwrap());
    }
    finished.sort_by_key(|m| match m {
        WorkerMessage::Finished(id) => *id,
        other => panic!("wanted FINISHED, got {other:?}"),
    });
    assert_eq!(finished, [WorkerMessage::Finished(1), WorkerMessage::Finished(2)]);
    drop(conns);

    sup.send(&SupervisorMessage::drain(), &[]).unwrap();
    assert_eq!(exit_status(&mut child).code(), Some(0));
    assert!(matches!(sup.recv_timeout(WAIT), Err(Error::PeerClosed)), "nothing after the drain");
}

#[test]
fn prefork_blocking_worker_speaks_the_protocol() {
    prefork_protocol(&[], "hello from the rust worker");
}

#[test]
fn prefork_tokio_worker_speaks_the_protocol() {
    prefork_protocol(&["--tokio"], "hello from the rust tokio worker");
}

#[test]
fn prefork_worker_exits_at_stop() {
    let (mut child, sup) = spawn_prefork(&["--capacity", "2"]);
    assert!(matches!(next(&sup), WorkerMessage::Hello { capacity: 2, .. }));
    sup.send(&SupervisorMessage::stop(), &[]).unwrap();
    assert_eq!(exit_status(&mut child).code(), Some(0));
}

#[test]
fn misbehaving_workers_break_the_protocol_as_asked() {
    let (mut child, _sup) = spawn_prefork(&["--misbehave", "exit"]);
    assert_eq!(exit_status(&mut child).code(), Some(1));

    let (mut child, sup) = spawn_prefork(&["--misbehave", "wrong-ack"]);
    assert!(matches!(next(&sup), WorkerMessage::Hello { heartbeat: false, .. }));
    let (_client, accepted, peer) = tcp_pair();
    offer(&sup, 7, &accepted, peer);
    assert_eq!(next(&sup), WorkerMessage::Ack(1_000_007));
    child.kill().unwrap();

    let (mut child, sup) = spawn_prefork(&["--misbehave", "garbage"]);
    next(&sup);
    let (_client, accepted, peer) = tcp_pair();
    offer(&sup, 8, &accepted, peer);
    let msg = sup.recv_timeout(WAIT).unwrap();
    assert!(WorkerMessage::decode(&msg.bytes).is_err(), "{:?}", msg.bytes);
    child.kill().unwrap();

    // Answers, says FINISHED, and dies (status 3) without ending the stream itself.
    let (mut child, sup) = spawn_prefork(&["--misbehave", "die-after-finished"]);
    next(&sup);
    let (client, accepted, peer) = tcp_pair();
    offer(&sup, 9, &accepted, peer);
    assert_eq!(next(&sup), WorkerMessage::Ack(9));
    client.try_clone().unwrap().write_all(REQUEST).unwrap();
    assert_eq!(next(&sup), WorkerMessage::Finished(9));
    assert_eq!(exit_status(&mut child).code(), Some(3));
    drop(accepted); // the last copy: now the client sees the end
    let mut got = String::new();
    (&client).read_to_string(&mut got).unwrap();
    assert_response(&got, &format!("hello from the rust worker {}", child.id()));

    let (mut child, sup) = spawn_prefork(&["--misbehave", "die-before-ack", "--count", "2"]);
    next(&sup);
    let pairs: Vec<_> = (0..2).map(|_| tcp_pair()).collect();
    for (id, (_, accepted, peer)) in (1..).zip(&pairs) {
        offer(&sup, id, accepted, *peer);
    }
    assert_eq!(exit_status(&mut child).code(), Some(3));
    assert!(matches!(sup.recv_timeout(WAIT), Err(Error::PeerClosed)), "no ACK");
}

#[test]
fn spawn_mode_serves_the_socket_on_standard_input_and_output() {
    let (client, accepted, _) = tcp_pair();
    let mut child = Command::new(WORKER).stdio_socket(accepted.as_socket_ref()).spawn().unwrap();
    drop(accepted);
    assert_response(&request(&client), &format!("hello from the rust worker {}", child.id()));
    assert_eq!(exit_status(&mut child).code(), Some(0));
}

#[test]
fn spawn_mode_serves_a_connection_passed_like_a_listener() {
    // `--socket fd3` on Unix: LISTEN_FDS=1 names one connected socket.
    let (client, accepted, _) = tcp_pair();
    let mut child =
        Command::new(WORKER).listen_socket("conn", accepted.as_socket_ref()).spawn().unwrap();
    drop(accepted);
    assert_response(&request(&client), &format!("hello from the rust worker {}", child.id()));
    assert_eq!(exit_status(&mut child).code(), Some(0));
}

#[test]
fn shared_mode_accepts_on_the_inherited_listeners() {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(WORKER)
        .listen_socket("http", http.as_socket_ref())
        .listen_socket("admin", admin.as_socket_ref())
        .spawn()
        .unwrap();
    let body = format!("hello from the rust worker {}", child.id());
    for addr in
        [http.local_addr().unwrap(), admin.local_addr().unwrap(), http.local_addr().unwrap()]
    {
        // Only the worker accepts: the test never calls accept on its copies.
        let client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        assert_response(&request(&client), &body);
    }
    // The graceful stop is a console control event on Windows, which needs a console shared
    // with the worker; the test has none, so it ends the worker the hard way.
    child.kill().unwrap();
    assert!(!exit_status(&mut child).success());
}
