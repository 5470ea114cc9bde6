//! The worker helper's connections, with a test playing the supervisor over a channel pair.
//!
//! Like the real supervisor, the test keeps its own copy of each connection's socket, so the
//! client sees the end of a response only if the worker ends the stream itself. The same tests
//! run on Unix and on Windows (under Wine too); `unix_into_tcp.rs` has the Unix-socket case.

mod util;

use std::io::{Read, Write};

use handover::{AsSocketRef, Channel};
use handover_worker::protocol::WorkerMessage;
use handover_worker::{Event, Worker};

use util::{next, offer, read_all, tcp_pair};

#[test]
fn dropping_a_connection_reports_it_finished_and_ends_the_stream() {
    let (sup, ours) = Channel::pair().unwrap();
    let mut worker = Worker::from_channel(ours, 4).unwrap();
    assert!(matches!(next(&sup), WorkerMessage::Hello { capacity: 4, .. }));
    let (client, kept, peer) = tcp_pair();
    offer(&sup, 5, Some(peer), kept.as_socket_ref());
    let Event::Connection(mut conn) = worker.recv().unwrap() else { panic!("not a connection") };
    assert_eq!(next(&sup), WorkerMessage::Ack(5));
    conn.write_all(b"pong").unwrap();
    drop(conn);
    assert_eq!(next(&sup), WorkerMessage::Finished(5));
    assert_eq!(read_all(&client), b"pong");
    drop(kept);
}

#[test]
fn finished_is_written_before_the_client_sees_the_end() {
    let (sup, ours) = Channel::pair().unwrap();
    let mut worker = Worker::from_channel(ours, 1).unwrap();
    next(&sup);
    let (client, kept, peer) = tcp_pair();
    offer(&sup, 11, Some(peer), kept.as_socket_ref());
    let Event::Connection(mut conn) = worker.recv().unwrap() else { panic!("not a connection") };
    assert_eq!(next(&sup), WorkerMessage::Ack(11));
    let serving = std::thread::spawn(move || {
        conn.write_all(b"done").unwrap();
        drop(conn);
    });
    // The end of the stream comes from the worker's shutdown, which follows FINISHED.
    assert_eq!(read_all(&client), b"done");
    let msg = sup.try_recv().unwrap().expect("FINISHED written before the stream ended");
    assert_eq!(WorkerMessage::decode(&msg.bytes).unwrap(), WorkerMessage::Finished(11));
    serving.join().unwrap();
    drop(kept);
}

#[test]
fn a_tcp_connection_becomes_a_stream() {
    let (sup, ours) = Channel::pair().unwrap();
    let mut worker = Worker::from_channel(ours, 4).unwrap();
    next(&sup);
    let (mut client, kept, peer) = tcp_pair();
    offer(&sup, 7, Some(peer), kept.as_socket_ref());
    let Event::Connection(conn) = worker.recv().unwrap() else { panic!("not a connection") };
    assert_eq!(next(&sup), WorkerMessage::Ack(7));
    let (mut stream, finisher) = conn.into_tcp().unwrap();
    assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap());
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).unwrap();
    stream.write_all(b"pong").unwrap();
    drop(finisher);
    assert_eq!(next(&sup), WorkerMessage::Finished(7));
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_all(&client), b"pong");
    drop(kept);
}

#[cfg(feature = "tokio")]
mod tokio_worker {
    use super::*;
    use handover_worker::tokio::{Event, Worker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tokio worker over a channel pair, and the supervisor's end (HELLO already read).
    async fn worker(capacity: u32) -> (Worker, Channel) {
        let (sup, ours) = Channel::pair().unwrap();
        let ours = handover::tokio::Channel::try_from(ours).unwrap();
        let worker = Worker::from_channel(ours, capacity).await.unwrap();
        let sup = tokio::task::spawn_blocking(move || {
            assert!(matches!(next(&sup), WorkerMessage::Hello { .. }));
            sup
        })
        .await
        .unwrap();
        (worker, sup)
    }

    async fn next_async(sup: Channel) -> (WorkerMessage, Channel) {
        tokio::task::spawn_blocking(move || (next(&sup), sup)).await.unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn finish_then_shutdown_reports_before_the_client_sees_the_end() {
        let (mut worker, sup) = worker(2).await;
        let (client, kept, peer) = tcp_pair();
        offer(&sup, 3, Some(peer), kept.as_socket_ref());
        let Event::Connection(conn) = worker.recv().await.unwrap() else { panic!() };
        let (ack, sup) = next_async(sup).await;
        assert_eq!(ack, WorkerMessage::Ack(3));
        let (mut stream, finisher) = conn.into_tcp().unwrap();
        let client = tokio::task::spawn_blocking(move || {
            (&client).write_all(b"ping").unwrap();
            client
        })
        .await
        .unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        stream.write_all(b"pong").await.unwrap();
        finisher.finish().await.unwrap();
        // Written by the time finish() returns: readable without waiting.
        let msg = sup.try_recv().unwrap().expect("FINISHED written before finish() returned");
        assert_eq!(WorkerMessage::decode(&msg.bytes).unwrap(), WorkerMessage::Finished(3));
        stream.shutdown().await.unwrap();
        let got = tokio::task::spawn_blocking(move || read_all(&client)).await.unwrap();
        assert_eq!(got, b"pong");
        drop(kept);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_a_tokio_connection_reports_it_finished_and_ends_the_stream() {
        let (mut worker, sup) = worker(2).await;
        let (client, kept, peer) = tcp_pair();
        offer(&sup, 4, Some(peer), kept.as_socket_ref());
        let Event::Connection(conn) = worker.recv().await.unwrap() else { panic!() };
        drop(conn);
        let (ack, sup) = next_async(sup).await;
        let (fin, _sup) = next_async(sup).await;
        assert_eq!((ack, fin), (WorkerMessage::Ack(4), WorkerMessage::Finished(4)));
        let got = tokio::task::spawn_blocking(move || read_all(&client)).await.unwrap();
        assert!(got.is_empty());
        drop(kept);
    }

    #[test]
    fn into_tcp_outside_a_runtime_is_an_error_not_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (sup, conn) = rt.block_on(async {
            let (mut worker, sup) = worker(1).await;
            let (_client, kept, peer) = tcp_pair();
            offer(&sup, 6, Some(peer), kept.as_socket_ref());
            let Event::Connection(conn) = worker.recv().await.unwrap() else { panic!() };
            (sup, conn)
        });
        let err = conn.into_tcp().unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
        drop(sup);
    }
}
