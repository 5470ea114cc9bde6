//! Helpers shared by the worker tests: the test plays the supervisor over a channel pair.
#![allow(dead_code)] // each test file uses a different part

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use handover::Channel;
use handover_worker::protocol::{ConnectionInfo, WorkerMessage, CONNECTION_MAX_LEN};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Sends CONNECTION `id` with `socket`, naming `peer` as the client.
pub(crate) fn offer(
    sup: &Channel,
    id: u64,
    peer: Option<SocketAddr>,
    socket: handover::SocketRef<'_>,
) {
    let mut buf = [0u8; CONNECTION_MAX_LEN];
    let n = ConnectionInfo { id, listener: 0, listener_name: "l", peer }.encode(&mut buf);
    sup.send(&buf[..n], &[socket]).unwrap();
}

pub(crate) fn next(sup: &Channel) -> WorkerMessage {
    WorkerMessage::decode(&sup.recv_timeout(WAIT).unwrap().bytes).unwrap()
}

/// A client, and the server side of its connection (the "supervisor's copy").
pub(crate) fn tcp_pair() -> (TcpStream, TcpStream, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, peer) = listener.accept().unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    (client, accepted, peer)
}

/// Everything the client receives up to the end of the stream.
pub(crate) fn read_all(mut client: &TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .expect("the end of the stream, while the supervisor's copy is open");
    got
}
