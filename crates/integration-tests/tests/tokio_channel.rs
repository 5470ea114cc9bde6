//! The tokio API passes the same round trips as the blocking one.

mod util;

use std::time::Duration;

use handover::{AsSocketRef, Error};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use util::{assert_exit, spawn_peer, WAIT};

#[tokio::test]
async fn tokio_stream_is_served_by_a_tokio_peer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();

    let (mut child, ch) = spawn_peer("tokio-serve-stream", &[]);
    let ch = handover::tokio::Channel::try_from(ch).unwrap();
    ch.send(b"async", &[accepted.as_socket_ref()]).await.unwrap();
    drop(accepted);

    client.write_all(b"ping\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(&mut client).read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, format!("async {} ping\n", child.id()));
    let done = tokio::time::timeout(WAIT, ch.recv()).await.unwrap().unwrap();
    assert_eq!(done.bytes, b"done");
    assert_exit(&mut child, 0);
}

#[tokio::test]
async fn tokio_thousand_sockets_round_trip_in_order() {
    integration_tests::raise_nofile(8192).unwrap();
    let (a, b) = handover::tokio::Channel::pair().unwrap();
    let sockets: Vec<std::net::UdpSocket> =
        (0..1000).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let refs: Vec<_> = sockets.iter().map(|s| s.as_socket_ref()).collect();
    let (sent, got) = tokio::join!(a.send(b"many", &refs), b.recv());
    sent.unwrap();
    let got = got.unwrap();
    let ports: Vec<u16> = got
        .sockets
        .into_iter()
        .map(|s| std::net::UdpSocket::try_from(s).unwrap().local_addr().unwrap().port())
        .collect();
    let expected: Vec<u16> = sockets.iter().map(|s| s.local_addr().unwrap().port()).collect();
    assert_eq!(ports, expected);
}

#[tokio::test]
async fn a_cancelled_tokio_recv_loses_nothing() {
    let (a, b) = handover::tokio::Channel::pair().unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(20), a.recv()).await.is_err());
    b.send(b"after", &[]).await.unwrap();
    assert_eq!(a.recv().await.unwrap().bytes, b"after");
}

#[tokio::test]
async fn blocking_and_tokio_ends_interoperate() {
    let (a, b) = handover::Channel::pair().unwrap();
    let a = handover::tokio::Channel::try_from(a).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    let t = std::thread::spawn(move || b.send(b"x", &[udp.as_socket_ref()]));
    let msg = a.recv().await.unwrap();
    t.join().unwrap().unwrap();
    let got = std::net::UdpSocket::try_from(msg.sockets.into_iter().next().unwrap()).unwrap();
    assert_eq!(got.local_addr().unwrap().port(), port);
    drop(a);
}

#[tokio::test]
async fn tokio_peer_closed_is_reported() {
    let (a, b) = handover::tokio::Channel::pair().unwrap();
    drop(b);
    assert!(matches!(a.recv().await, Err(Error::PeerClosed)));
}

#[test]
fn registering_outside_a_runtime_is_an_error_not_a_panic() {
    let (a, _b) = handover::Channel::pair().unwrap();
    let err = handover::tokio::Channel::try_from(a).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn tokio_unix_stream_crosses_a_channel() {
    use tokio::io::AsyncReadExt;
    let (a, b) = handover::tokio::Channel::pair().unwrap();
    let (mine, theirs) = tokio::net::UnixStream::pair().unwrap();
    a.send(b"", &[theirs.as_socket_ref()]).await.unwrap();
    drop(theirs);
    let msg = b.recv().await.unwrap();
    let mut got =
        tokio::net::UnixStream::try_from(msg.sockets.into_iter().next().unwrap()).unwrap();
    let mut mine = mine;
    mine.write_all(b"over").await.unwrap();
    let mut buf = [0u8; 4];
    got.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over");
    // And back: a tokio socket converts into a Socket of the right kind.
    let back = handover::Socket::try_from(got).unwrap();
    assert_eq!(back.kind().unwrap(), handover::SocketKind::UnixStream);
}

#[tokio::test(flavor = "current_thread")]
async fn a_child_is_waited_for_without_blocking_the_runtime_and_the_wait_is_cancel_safe() {
    let mut child =
        handover::Command::new(util::PEER).args(["exit-after", "400", "7"]).spawn().unwrap();
    // A wait given up on loses nothing.
    let early = tokio::time::timeout(Duration::from_millis(50), child.wait_async()).await;
    assert!(early.is_err(), "the child exited early: {early:?}");
    // On this single thread, a ticker keeps running while we wait: a blocking wait would
    // stop it for the 400 ms.
    let mut ticks = 0u32;
    let status = tokio::select! {
        s = child.wait_async() => s.unwrap(),
        _ = async {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks += 1;
            }
        } => unreachable!(),
    };
    assert_eq!(status.code(), Some(7));
    assert!(ticks >= 10, "the runtime stalled while waiting ({ticks} ticks)");
    // The status stays available.
    assert_eq!(child.wait().unwrap().code(), Some(7));
}
