//! `Connection::into_tcp`, with a test playing the supervisor over a channel pair.
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use handover::{AsSocketRef, Channel};
use handover_worker::protocol::{ConnectionInfo, WorkerMessage, CONNECTION_MAX_LEN};
use handover_worker::{Event, Worker};

const WAIT: Duration = Duration::from_secs(10);

/// Sends CONNECTION `id` with `socket`, naming `peer` as the client.
fn offer(sup: &Channel, id: u64, peer: Option<SocketAddr>, socket: handover::SocketRef<'_>) {
    let mut buf = [0u8; CONNECTION_MAX_LEN];
    let n = ConnectionInfo { id, listener: 0, listener_name: "l", peer }.encode(&mut buf);
    sup.send(&buf[..n], &[socket]).unwrap();
}

fn next(sup: &Channel) -> WorkerMessage {
    WorkerMessage::decode(&sup.recv_timeout(WAIT).unwrap().bytes).unwrap()
}

fn tcp_pair() -> (TcpStream, TcpStream, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, peer) = listener.accept().unwrap();
    (client, accepted, peer)
}

#[test]
fn a_tcp_connection_becomes_a_stream_and_finishes_after_it_closes() {
    let (sup, ours) = Channel::pair().unwrap();
    let mut worker = Worker::from_channel(ours, 4).unwrap();
    assert!(matches!(next(&sup), WorkerMessage::Hello { capacity: 4, .. }));

    let (mut client, accepted, peer) = tcp_pair();
    offer(&sup, 7, Some(peer), accepted.as_socket_ref());
    drop(accepted); // the worker's copy is the only one left
    let Event::Connection(conn) = worker.recv().unwrap() else { panic!("not a connection") };
    assert_eq!(next(&sup), WorkerMessage::Ack(7));
    let (mut stream, finisher) = conn.into_tcp().unwrap();
    assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap());
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).unwrap();
    stream.write_all(b"pong").unwrap();
    drop(stream);
    drop(finisher);
    assert_eq!(next(&sup), WorkerMessage::Finished(7));
    let mut reply = Vec::new();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.read_to_end(&mut reply).unwrap(); // ends: the stream was closed
    assert_eq!(reply, b"pong");
}

#[test]
fn a_connection_from_a_unix_listener_is_refused_and_still_finished() {
    let (sup, ours) = Channel::pair().unwrap();
    let mut worker = Worker::from_channel(ours, 1).unwrap();
    next(&sup);
    let (mut client, accepted) = UnixStream::pair().unwrap();
    offer(&sup, 9, None, accepted.as_socket_ref());
    drop(accepted);
    let Event::Connection(conn) = worker.recv().unwrap() else { panic!("not a connection") };
    assert_eq!(next(&sup), WorkerMessage::Ack(9));
    let err = conn.into_tcp().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("into_parts"), "{err}");
    assert_eq!(next(&sup), WorkerMessage::Finished(9));
    // Closed before FINISHED went out.
    let mut rest = Vec::new();
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn the_tokio_worker_gives_a_registered_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sup, ours) = Channel::pair().unwrap();
    let ours = handover::tokio::Channel::try_from(ours).unwrap();
    let mut worker = handover_worker::tokio::Worker::from_channel(ours, 2).await.unwrap();
    let sup = tokio::task::spawn_blocking(move || {
        assert!(matches!(next(&sup), WorkerMessage::Hello { capacity: 2, .. }));
        sup
    })
    .await
    .unwrap();
    let (client, accepted, peer) = tcp_pair();
    offer(&sup, 3, Some(peer), accepted.as_socket_ref());
    drop(accepted);
    let handover_worker::tokio::Event::Connection(conn) = worker.recv().await.unwrap() else {
        panic!("not a connection")
    };
    let (mut stream, finisher) = conn.into_tcp().unwrap();
    let client = tokio::task::spawn_blocking(move || {
        let mut client = client;
        client.write_all(b"ping").unwrap();
        client
    });
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    stream.write_all(b"pong").await.unwrap();
    drop(stream);
    drop(finisher);
    let mut client = client.await.unwrap();
    let (ack, fin) = tokio::task::spawn_blocking(move || (next(&sup), next(&sup))).await.unwrap();
    assert_eq!((ack, fin), (WorkerMessage::Ack(3), WorkerMessage::Finished(3)));
    let mut reply = Vec::new();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"pong");
}
