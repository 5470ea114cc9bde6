//! SCM_RIGHTS edge cases: truncated control data, bad frames, descriptor and memory hygiene.
#![cfg(target_os = "linux")] // counts descriptors in /proc/self/fd

mod util;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use handover::{AsSocketRef, ChannelListener, Error};
use integration_tests::{fd_count, rss_kib};
use util::{assert_exit, spawn_peer, TempDir, PEER, WAIT};

/// Several tests count this process's descriptors: they must not run while another test of
/// this file opens or closes some, so every test here takes this lock.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn too_little_room_for_control_data_closes_everything_that_arrived() {
    let _serial = serial();
    let (mut child, ch) = spawn_peer("send-sockets", &["10"]);
    ch.set_recv_limits(1024, 4);
    let before = fd_count();
    match ch.recv_timeout(WAIT) {
        Err(Error::Truncated { received }) => assert_eq!(received, 4),
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert_eq!(fd_count(), before, "a received descriptor leaked");
    // The channel is unusable from now on, and says so.
    assert!(matches!(ch.recv_timeout(WAIT), Err(Error::Protocol(_))));
    drop(ch);
    assert_exit(&mut child, 0);
}

#[test]
fn a_message_over_the_socket_limit_across_batches_leaks_nothing() {
    let _serial = serial();
    // 300 sockets travel as 253 + 47: the first batch fits, the total is over the limit.
    integration_tests::raise_nofile(4096).unwrap();
    let (mut child, ch) = spawn_peer("send-sockets", &["300"]);
    ch.set_recv_limits(1024, 260);
    let before = fd_count();
    match ch.recv_timeout(WAIT) {
        Err(Error::TooLarge { what: "sockets", len: 300, max: 260 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(fd_count(), before, "a received descriptor leaked");
    drop(ch);
    assert_exit(&mut child, 0);
}

/// Has the helper write a bad frame to a rendezvous and returns what `recv` made of it.
fn recv_garbage(mode: &str) -> Error {
    let dir = TempDir::new("garbage");
    let path = dir.0.join("ch.sock");
    let listener = ChannelListener::bind(&path).unwrap();
    let mut child = std::process::Command::new(PEER)
        .args(["garbage", mode, path.to_str().unwrap()])
        .spawn()
        .unwrap();
    let ch = listener.accept().unwrap();
    let started = Instant::now();
    let err = ch.recv_timeout(WAIT).expect_err("garbage must not decode");
    assert!(started.elapsed() < WAIT, "recv waited for its timeout: it hung on {mode}");
    drop(ch);
    assert!(child.wait().unwrap().success());
    err
}

#[test]
fn garbage_is_a_protocol_error() {
    let _serial = serial();
    let err = recv_garbage("noise");
    assert!(matches!(&err, Error::Protocol(m) if m.contains("magic")), "{err}");
}

#[test]
fn unknown_version_is_a_protocol_error() {
    let _serial = serial();
    let err = recv_garbage("version");
    assert!(matches!(&err, Error::Protocol(m) if m.contains("version 9")), "{err}");
}

#[test]
fn a_frame_cut_short_by_hang_up_is_a_protocol_error() {
    let _serial = serial();
    let err = recv_garbage("truncated");
    assert!(matches!(&err, Error::Protocol(m) if m.contains("ended inside")), "{err}");
}

#[test]
fn an_oversized_frame_is_refused_from_its_header() {
    let _serial = serial();
    let err = recv_garbage("oversized");
    assert!(matches!(err, Error::TooLarge { what: "payload bytes", .. }), "{err}");
}

#[test]
fn a_frame_that_declares_sockets_it_did_not_attach_is_refused() {
    let _serial = serial();
    let err = recv_garbage("missing-sockets");
    assert!(matches!(&err, Error::Protocol(m) if m.contains("declares 3 sockets")), "{err}");
}

#[test]
fn a_hundred_thousand_hand_offs_leave_descriptors_and_memory_flat() {
    let _serial = serial();
    let (mut child, ch) = spawn_peer("handoff-loop", &[]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let round = |n: usize| {
        for _ in 0..n {
            ch.send(b"", &[socket.as_socket_ref()]).unwrap();
            let ack = ch.recv_timeout(WAIT).unwrap();
            assert_eq!(ack.bytes, 1u32.to_le_bytes());
        }
    };
    round(10_000);
    let (fds, rss) = (fd_count(), rss_kib());
    round(90_000);
    let (fds_after, rss_after) = (fd_count(), rss_kib());
    assert_eq!(fds_after, fds, "descriptor count grew over 90,000 hand-offs");
    assert!(rss_after <= rss + 512, "RSS grew from {rss} KiB to {rss_after} KiB");
    drop(ch);
    assert_exit(&mut child, 0);
}

#[test]
fn a_timed_out_recv_loses_nothing() {
    let _serial = serial();
    let (a, b) = handover::Channel::pair().unwrap();
    assert!(matches!(a.recv_timeout(Duration::from_millis(20)), Err(Error::TimedOut)));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.send(b"late", &[udp.as_socket_ref()]).unwrap();
    let msg = a.recv_timeout(WAIT).unwrap();
    assert_eq!((msg.bytes.as_slice(), msg.sockets.len()), (&b"late"[..], 1));
}
