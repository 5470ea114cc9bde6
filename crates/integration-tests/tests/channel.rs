//! Sockets handed to another process over a channel, which then serves or accepts on them.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

use handover::AsSocketRef;
use util::{assert_exit, spawn_peer, WAIT};

fn read_line(stream: &TcpStream) -> String {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

#[test]
fn tcp_stream_is_served_by_another_process() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();

    let (mut child, ch) = spawn_peer("serve-stream", &[]);
    ch.send(b"hello", &[accepted.as_socket_ref()]).unwrap();
    drop(accepted); // the child's copy is now the only one

    (&client).write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&client), format!("hello {} ping\n", child.id()));
    assert_eq!(ch.recv_timeout(WAIT).unwrap().bytes, b"done");
    assert_exit(&mut child, 0);
    // The child exited and ours was dropped: the connection is closed, not held open.
    let mut rest = Vec::new();
    assert_eq!((&client).read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn tcp_listener_accepts_in_another_process() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut child, ch) = spawn_peer("accept-listener", &[]);
    ch.send(b"", &[listener.as_socket_ref()]).unwrap();
    drop(listener);
    assert_eq!(ch.recv_timeout(WAIT).unwrap().bytes, b"ready");
    for i in 0..2 {
        let c = TcpStream::connect(addr).unwrap();
        (&c).write_all(format!("n{i}\n").as_bytes()).unwrap();
        assert_eq!(read_line(&c), format!("accepted {} n{i}\n", child.id()));
    }
    assert_eq!(ch.recv_timeout(WAIT).unwrap().bytes, b"done");
    assert_exit(&mut child, 0);
}

#[test]
fn udp_socket_answers_from_another_process() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = udp.local_addr().unwrap();
    let (mut child, ch) = spawn_peer("udp-echo", &[]);
    ch.send(b"", &[udp.as_socket_ref()]).unwrap();
    drop(udp);
    assert_eq!(ch.recv_timeout(WAIT).unwrap().bytes, b"ready");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.send_to(b"ping", server).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"udp ping"[..], server));
    assert_exit(&mut child, 0);
}

#[test]
fn a_thousand_sockets_in_one_send_arrive_complete_and_in_order() {
    integration_tests::raise_nofile(8192).unwrap();
    let sockets: Vec<UdpSocket> =
        (0..1000).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let expected: Vec<u16> = sockets.iter().map(|s| s.local_addr().unwrap().port()).collect();
    let (mut child, ch) = spawn_peer("report-ports", &[]);
    let refs: Vec<_> = sockets.iter().map(|s| s.as_socket_ref()).collect();
    ch.send(b"", &refs).unwrap();
    let report = ch.recv_timeout(WAIT).unwrap().bytes;
    let got: Vec<u16> = report.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(got, expected);
    assert_exit(&mut child, 0);
}

#[test]
fn peer_credentials_name_the_child() {
    let (mut child, ch) = spawn_peer("serve-stream", &[]);
    // The parent's end of a spawned channel knows the child's pid.
    assert_eq!(ch.peer_credentials().pid, Some(child.id()));
    drop(ch);
    assert_exit(&mut child, 3); // it was waiting for a socket and saw the channel close
}

#[test]
fn large_payloads_arrive_whole_between_small_ones() {
    let (a, b) = handover::Channel::pair().unwrap();
    let big: Vec<u8> = (0..900 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let sent = big.clone();
    let t = std::thread::spawn(move || {
        for payload in [&b"small"[..], &sent, &b"after"[..]] {
            a.send(payload, &[]).unwrap();
        }
    });
    assert_eq!(b.recv_timeout(WAIT).unwrap().bytes, b"small");
    assert_eq!(b.recv_timeout(WAIT).unwrap().bytes, big);
    assert_eq!(b.recv_timeout(WAIT).unwrap().bytes, b"after");
    t.join().unwrap();
}
