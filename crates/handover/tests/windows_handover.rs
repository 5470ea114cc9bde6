#![cfg(windows)] // WSADuplicateSocketW over named pipes, CreateProcessW; runs under Wine too.
//! Cross-process tests of the Windows backend. Each test that needs a second process re-runs
//! this test binary with `HANDOVER_TEST_ROLE` set, which makes `child_entry` play the role.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use handover::{AsSocketRef, Channel, ChannelListener, Command, Error, SocketKind};

const ROLE: &str = "HANDOVER_TEST_ROLE";
const ARG: &str = "HANDOVER_TEST_ARG";

/// Starts this test binary as a child playing `role`.
fn child<'a>(role: &str, arg: &str) -> Command<'a> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(ARG, arg);
    cmd
}

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

fn temp_path(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(unique(prefix))
}

/// The child side of every cross-process test; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let arg = std::env::var(ARG).unwrap_or_default();
    match role.as_str() {
        // Receives a TCP listener on the inherited channel, accepts one connection, greets it.
        "accept-on-received-listener" => {
            let ch = handover::inherited().unwrap().channel.expect("channel");
            let msg = ch.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(msg.bytes, b"listener");
            let listener = TcpListener::try_from(msg.sockets.into_iter().next().unwrap()).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"hello from the child").unwrap();
            ch.send(b"done", &[]).unwrap();
        }
        // Receives an accepted TCP stream and serves it: echoes one line, upper-cased.
        "serve-received-stream" => {
            let ch = handover::inherited().unwrap().channel.expect("channel");
            let msg = ch.recv_timeout(Duration::from_secs(20)).unwrap();
            let mut stream = TcpStream::try_from(msg.sockets.into_iter().next().unwrap()).unwrap();
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).unwrap();
            stream.write_all(&buf.to_ascii_uppercase()).unwrap();
        }
        // Picks up a listening socket by name (`Command::listen_socket`), with no channel.
        "listen-socket" => {
            let mut inh = handover::inherited().unwrap();
            assert!(inh.channel.is_none(), "the channel only carried the sockets");
            let listener = TcpListener::try_from(inh.take("http").expect("http socket")).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"listen-socket ok").unwrap();
        }
        // Connects to a rendezvous file and receives a stream over it.
        "rendezvous-client" => {
            let ch = Channel::connect(&arg).unwrap();
            let msg = ch.recv_timeout(Duration::from_secs(20)).unwrap();
            let mut stream = TcpStream::try_from(msg.sockets.into_iter().next().unwrap()).unwrap();
            stream.write_all(b"via rendezvous").unwrap();
        }
        // Knows the pipe name but not the secret.
        "intruder" => {
            let text = std::fs::read_to_string(&arg).unwrap();
            let pipe = text.lines().find_map(|l| l.strip_prefix("pipe ")).unwrap().to_owned();
            let mut f = OpenOptions::new().read(true).write(true).open(&pipe).unwrap();
            f.write_all(&hello([0x55; 32])).unwrap();
            let mut buf = [0u8; 48];
            // The listener hangs up instead of answering.
            assert!(f.read_exact(&mut buf).is_err());
        }
        // Reports whether the handle value in ARG is open in this process.
        "probe-handle" => {
            let value: usize = arg.parse().unwrap();
            let mut flags = 0u32;
            // SAFETY: GetHandleInformation accepts any value and fails on a closed one.
            let open = unsafe {
                windows_sys::Win32::Foundation::GetHandleInformation(value as _, &mut flags)
            } != 0;
            let ch = handover::inherited().unwrap().channel.expect("channel");
            ch.send(if open { b"open" } else { b"closed" }, &[]).unwrap();
        }
        // inetd style: the socket is stdin and stdout.
        "stdio" => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            print!("echo: {line}");
            std::io::stdout().flush().unwrap();
        }
        // inetd style through `stdin_socket`: says which peer the duplicate is connected to.
        "stdin-socket" => {
            let socket = handover::stdin_socket().unwrap().expect("standard input is a socket");
            let mut stream = TcpStream::try_from(socket).unwrap();
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).unwrap();
            stream.write_all(stream.peer_addr().unwrap().to_string().as_bytes()).unwrap();
        }
        // Standard input inherited from the test harness, which is no socket.
        "stdin-not-socket" => {
            let ch = handover::inherited().unwrap().channel.expect("channel");
            let found = handover::stdin_socket().unwrap();
            ch.send(if found.is_some() { b"socket" } else { b"none" }, &[]).unwrap();
        }
        // tokio: converts a received listener into a tokio listener and accepts on it.
        "tokio-listener" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let ch = handover::inherited().unwrap().channel.expect("channel");
                let ch = handover::tokio::Channel::try_from(ch).unwrap();
                let msg = ch.recv().await.unwrap();
                let listener =
                    tokio::net::TcpListener::try_from(msg.sockets.into_iter().next().unwrap())
                        .unwrap();
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut conn, b"tokio ok").await.unwrap();
            });
        }
        other => panic!("unknown role {other}"),
    }
}

fn read_all(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn assert_exits_ok(child: &mut handover::Child) {
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status:?}");
}

#[test]
fn pair_carries_bytes_and_sockets_within_a_process() {
    let (a, b) = Channel::pair().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    a.send(b"hi", &[listener.as_socket_ref()]).unwrap();
    let msg = b.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(msg.bytes, b"hi");
    assert_eq!(msg.sockets.len(), 1);
    assert_eq!(msg.sockets[0].kind().unwrap(), SocketKind::TcpListener);
    let dup = TcpListener::try_from(msg.sockets.into_iter().next().unwrap()).unwrap();
    assert_eq!(dup.local_addr().unwrap(), listener.local_addr().unwrap());
    assert_eq!(a.peer_credentials().pid, Some(std::process::id()));
    drop(a);
    assert!(matches!(b.recv_timeout(Duration::from_secs(10)), Err(Error::PeerClosed)));
}

#[test]
fn many_sockets_in_one_message_arrive_in_order() {
    let (a, b) = Channel::pair().unwrap();
    let sockets: Vec<UdpSocket> =
        (0..150).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let refs: Vec<_> = sockets.iter().map(|s| s.as_socket_ref()).collect();
    let sender = std::thread::scope(|s| {
        let t = s.spawn(|| a.send(b"many", &refs));
        let msg = b.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(msg.sockets.len(), sockets.len());
        for (got, sent) in msg.sockets.into_iter().zip(&sockets) {
            let got = UdpSocket::try_from(got).unwrap();
            assert_eq!(got.local_addr().unwrap(), sent.local_addr().unwrap());
        }
        t.join().unwrap()
    });
    sender.unwrap();
    // Then a large payload on the same channel, through the 64 KiB pipe buffers in pieces.
    let big = vec![7u8; 300_000];
    std::thread::scope(|s| {
        let t = s.spawn(|| a.send(&big, &[]));
        let msg = b.recv_timeout(Duration::from_secs(30));
        let sent = t.join().unwrap();
        assert!(sent.is_ok(), "send failed: {sent:?}");
        assert_eq!(msg.unwrap().bytes, big);
    });
}

#[test]
fn large_payloads_cross_the_pipe_buffers() {
    let (a, b) = Channel::pair().unwrap();
    for len in [65_000, 70_000, 140_000, 300_000] {
        let big = vec![7u8; len];
        std::thread::scope(|s| {
            let t = s.spawn(|| a.send(&big, &[]));
            let msg = b.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(msg.bytes, big);
            t.join().unwrap().unwrap();
        });
    }
}

#[test]
fn tcp_listener_handed_to_a_child_accepts_there() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = child("accept-on-received-listener", "").channel().spawn().unwrap();
    let ch = child.channel.take().unwrap();
    assert_eq!(ch.peer_credentials().pid, Some(child.id()));
    ch.send(b"listener", &[listener.as_socket_ref()]).unwrap();
    drop(listener);
    let got = read_all(TcpStream::connect(addr).unwrap());
    assert_eq!(got, "hello from the child");
    assert_eq!(ch.recv_timeout(Duration::from_secs(20)).unwrap().bytes, b"done");
    assert_exits_ok(&mut child);
}

#[test]
fn accepted_stream_is_served_by_a_child() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let mut child = child("serve-received-stream", "").channel().spawn().unwrap();
    let ch = child.channel.take().unwrap();
    ch.send(b"", &[accepted.as_socket_ref()]).unwrap();
    drop(accepted); // the child holds the only copy now
    client.write_all(b"hello").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HELLO");
    assert_exits_ok(&mut child);
}

#[test]
fn listen_socket_reaches_the_child_without_a_channel() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child =
        child("listen-socket", "").listen_socket("http", listener.as_socket_ref()).spawn().unwrap();
    assert!(child.channel.is_none());
    drop(listener);
    assert_eq!(read_all(TcpStream::connect(addr).unwrap()), "listen-socket ok");
    assert_exits_ok(&mut child);
}

#[test]
fn rendezvous_file_end_to_end() {
    let path = temp_path("handover-rv");
    let listener = ChannelListener::bind(&path).unwrap();
    assert!(
        matches!(ChannelListener::bind(&path), Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse)
    );
    let mut child = child("rendezvous-client", path.to_str().unwrap()).spawn().unwrap();
    let ch = listener.accept().unwrap();
    assert_eq!(ch.peer_credentials().pid, Some(child.id()));
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let (accepted, _) = tcp.accept().unwrap();
    ch.send(b"", &[accepted.as_socket_ref()]).unwrap();
    drop(accepted);
    assert_eq!(read_all(client), "via rendezvous");
    assert_exits_ok(&mut child);
    drop(listener);
    assert!(!path.exists(), "the rendezvous file is removed with the listener");
}

#[test]
fn a_peer_without_the_secret_is_refused() {
    let path = temp_path("handover-rv");
    let listener = ChannelListener::bind(&path).unwrap();
    let mut intruder = child("intruder", path.to_str().unwrap()).spawn().unwrap();
    match listener.accept() {
        Err(Error::PeerRejected { .. }) => {}
        other => panic!("expected PeerRejected, got {other:?}"),
    }
    assert_exits_ok(&mut intruder);
    // The listener keeps working for the real peer.
    let t = std::thread::spawn({
        let path = path.clone();
        move || Channel::connect(path).unwrap()
    });
    let ours = listener.accept().unwrap();
    let theirs = t.join().unwrap();
    ours.send(b"ok", &[]).unwrap();
    assert_eq!(theirs.recv_timeout(Duration::from_secs(10)).unwrap().bytes, b"ok");
}

fn hello(secret: [u8; 32]) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[..8].copy_from_slice(b"HNDVHELO");
    b[8] = 1;
    b[12..16].copy_from_slice(&std::process::id().to_le_bytes());
    b[16..].copy_from_slice(&secret);
    b
}

/// A channel accepted from a raw client that speaks the protocol by hand.
fn raw_peer() -> (Channel, File) {
    let name = format!(r"\\.\pipe\{}", unique("handover-test"));
    let listener = ChannelListener::bind(&name).unwrap();
    let t = std::thread::spawn(move || listener.accept());
    let mut f = OpenOptions::new().read(true).write(true).open(&name).unwrap();
    f.write_all(&hello([0; 32])).unwrap();
    let mut theirs = [0u8; 48];
    f.read_exact(&mut theirs).unwrap();
    assert_eq!(&theirs[..8], b"HNDVHELO");
    (t.join().unwrap().unwrap(), f)
}

fn header(flags: u16, payload_len: u32, handles: u32) -> Vec<u8> {
    let mut h = b"HNDV".to_vec();
    h.extend_from_slice(&[1, 1]);
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    h.extend_from_slice(&handles.to_le_bytes());
    h
}

fn recv_error(bytes: &[u8]) -> Error {
    let (ch, mut f) = raw_peer();
    f.write_all(bytes).unwrap();
    drop(f);
    match ch.recv_timeout(Duration::from_secs(10)) {
        Ok(m) => panic!("garbage was accepted: {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn garbage_and_truncated_frames_are_errors() {
    assert!(matches!(recv_error(b"GET / HTTP/1.1\r\n\r\n"), Error::Protocol(_)));
    let mut truncated = header(0, 10, 0);
    truncated.extend_from_slice(b"abc");
    assert!(matches!(recv_error(&truncated), Error::Protocol(_)));
    assert!(matches!(recv_error(&header(0, u32::MAX, 0)), Error::TooLarge { .. }));
    assert!(matches!(recv_error(&header(0, 0, 1_000_000)), Error::TooLarge { .. }));
}

#[test]
fn bad_wsaprotocol_info_records_are_errors() {
    // A record cut short by the end of the stream.
    let mut short = header(0, 0, 1);
    short.extend_from_slice(&[0u8; 100]);
    assert!(matches!(recv_error(&short), Error::Protocol(_)));
    // A whole record of zeroes (Wine would make a fresh socket of it).
    let mut zeroed = header(0, 0, 1);
    zeroed.extend_from_slice(&[0u8; 628]);
    assert!(matches!(recv_error(&zeroed), Error::Protocol(_)), "zeroed record");
    // A record of garbage.
    let mut garbage = header(0, 0, 1);
    garbage.extend((0..628).map(|i| (i * 7) as u8));
    assert!(matches!(recv_error(&garbage), Error::Protocol(_)), "garbage record");
    // The channel stays unusable after the error, without hanging.
    let (ch, mut f) = raw_peer();
    f.write_all(&zeroed).unwrap();
    assert!(ch.recv_timeout(Duration::from_secs(10)).is_err());
    assert!(ch.recv_timeout(Duration::from_secs(10)).is_err());
}

#[test]
fn a_silent_peer_times_out() {
    let (ch, _f) = raw_peer();
    assert!(matches!(ch.recv_timeout(Duration::from_millis(200)), Err(Error::TimedOut)));
}

#[test]
fn spawned_child_holds_only_the_handles_given() {
    use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
    // An inheritable handle the child must not get.
    // SAFETY: null attributes and name are allowed.
    let raw = unsafe {
        windows_sys::Win32::System::Threading::CreateEventW(
            std::ptr::null(),
            1,
            0,
            std::ptr::null(),
        )
    };
    assert!(!raw.is_null());
    // SAFETY: CreateEventW returned a new handle that we own.
    let event = unsafe { OwnedHandle::from_raw_handle(raw as _) };
    let value = event.as_raw_handle() as usize;
    // SAFETY: the handle is open and ours.
    let ok = unsafe {
        windows_sys::Win32::Foundation::SetHandleInformation(
            raw, 1, /* HANDLE_FLAG_INHERIT */
            1,
        )
    };
    assert_ne!(ok, 0);
    let mut child = child("probe-handle", &value.to_string()).channel().spawn().unwrap();
    let ch = child.channel.take().unwrap();
    let answer = ch.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_exits_ok(&mut child);
    assert_eq!(
        String::from_utf8_lossy(&answer.bytes),
        "closed",
        "an inheritable handle leaked into the child"
    );
}

#[test]
fn a_std_process_stdio_cannot_be_read_back_and_is_refused() {
    let err = child("stdio", "").stdout(std::process::Stdio::null()).spawn().unwrap_err();
    assert!(matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::Unsupported), "{err:?}");
    // handover's own `Stdio` says the same and is honoured.
    let mut ok = Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--test-threads=1"]) // no role: passes at once
        .stdout(handover::Stdio::null())
        .spawn()
        .unwrap();
    assert_exits_ok(&mut ok);
}

#[test]
fn inetd_style_stdio_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let mut child = child("stdio", "").stdio_socket(accepted.as_socket_ref()).spawn().unwrap();
    drop(accepted);
    client.write_all(b"ping\n").unwrap();
    // The child is this test binary: its harness writes to stdout (the socket) too.
    let got = read_all(client);
    assert!(got.contains("echo: ping"), "{got:?}");
    assert_exits_ok(&mut child);
}

#[test]
fn stdin_socket_is_the_connection_given_as_standard_input() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let mut inetd =
        child("stdin-socket", "").stdio_socket(accepted.as_socket_ref()).spawn().unwrap();
    drop(accepted);
    client.write_all(b"ping").unwrap();
    let local = client.local_addr().unwrap().to_string();
    // The child is this test binary: its harness writes to stdout (the socket) too.
    let got = read_all(client);
    assert!(got.contains(&local), "wanted {local} in {got:?}");
    assert_exits_ok(&mut inetd);

    let mut plain = child("stdin-not-socket", "").channel().spawn().unwrap();
    let ch = plain.channel.take().unwrap();
    assert_eq!(ch.recv_timeout(Duration::from_secs(20)).unwrap().bytes, b"none");
    assert_exits_ok(&mut plain);
}

#[test]
fn tokio_receiver_registers_a_listener_the_sender_had_registered() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut child = child("tokio-listener", "").channel().spawn().unwrap();
        let ch = handover::tokio::Channel::try_from(child.channel.take().unwrap()).unwrap();
        ch.send(b"", &[listener.as_socket_ref()]).await.unwrap();
        drop(listener);
        let got = tokio::task::spawn_blocking(move || read_all(TcpStream::connect(addr).unwrap()))
            .await
            .unwrap();
        assert_eq!(got, "tokio ok");
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success());
    });
}

#[test]
fn tokio_pair_round_trip() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (a, b) = handover::tokio::Channel::pair().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let big = vec![1u8; 200_000];
        let refs = [udp.as_socket_ref()];
        let (sent, got) = tokio::join!(a.send(&big, &refs), b.recv());
        sent.unwrap();
        let got = got.unwrap();
        assert_eq!(got.bytes, big);
        assert_eq!(got.sockets.len(), 1);
    });
}
