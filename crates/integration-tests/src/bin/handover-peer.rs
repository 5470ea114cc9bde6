//! The other process in cross-process tests: `handover-peer ROLE [ARGS]`.
//!
//! Each role does one thing with what it inherited and reports over its channel (or its exit
//! code). Exit codes: 0 success, 2 usage, 3 the operation failed as reported on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

use handover::{AsSocketRef, Channel, Error};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().map(String::as_str).unwrap_or("");
    let rest = &args[args.len().min(1)..];
    let res = match role {
        "serve-stream" => serve_stream(),
        "accept-listener" => accept_listener(),
        "udp-echo" => udp_echo(),
        "report-ports" => report_ports(),
        "send-sockets" => send_sockets(rest),
        #[cfg(unix)]
        "list-fds" => list_fds(),
        #[cfg(unix)]
        "inetd-list-fds" => inetd_list_fds(),
        #[cfg(unix)]
        "channel-is-blocking" => channel_is_blocking(),
        #[cfg(unix)]
        "listen-fds" => listen_fds(),
        #[cfg(unix)]
        "inetd-echo" => inetd_echo(),
        "handoff-loop" => handoff_loop(),
        #[cfg(unix)]
        "garbage" => garbage(rest),
        #[cfg(unix)]
        "connect-abstract" => connect_abstract(rest),
        #[cfg(unix)]
        "listen-abstract" => listen_abstract(rest),
        "tokio-serve-stream" => tokio_serve_stream(),
        "exit-after" => exit_after(rest),
        "stdio-echo" => stdio_echo(),
        "process-tree" => process_tree(rest),
        #[cfg(windows)]
        "inetd-handles" => inetd_handles(),
        "tree-leaf" => tree_leaf(rest),
        _ => {
            eprintln!("usage: handover-peer ROLE [ARGS] (unknown role {role:?})");
            std::process::exit(2);
        }
    };
    if let Err(e) = res {
        eprintln!("handover-peer {role}: {e}");
        std::process::exit(3);
    }
}

fn channel() -> Res<Channel> {
    handover::inherited()?.channel.ok_or_else(|| "no inherited channel".into())
}

/// Receives one TCP stream, answers one line on it, then reports "done".
fn serve_stream() -> Res {
    let ch = channel()?;
    let msg = ch.recv()?;
    let stream = TcpStream::try_from(msg.sockets.into_iter().next().ok_or("no socket")?)?;
    echo_line(&stream, &String::from_utf8_lossy(&msg.bytes))?;
    ch.send(b"done", &[])?;
    Ok(())
}

fn echo_line(stream: &TcpStream, tag: &str) -> Res {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    write!(&*stream, "{tag} {} {}", std::process::id(), line)?;
    Ok(())
}

/// Receives a TCP listener, accepts and serves two connections on it.
fn accept_listener() -> Res {
    let ch = channel()?;
    let msg = ch.recv()?;
    let listener = TcpListener::try_from(msg.sockets.into_iter().next().ok_or("no socket")?)?;
    ch.send(b"ready", &[])?;
    for _ in 0..2 {
        let (stream, _) = listener.accept()?;
        echo_line(&stream, "accepted")?;
    }
    ch.send(b"done", &[])?;
    Ok(())
}

/// Receives a UDP socket, answers one datagram.
fn udp_echo() -> Res {
    let ch = channel()?;
    let msg = ch.recv()?;
    let udp = UdpSocket::try_from(msg.sockets.into_iter().next().ok_or("no socket")?)?;
    ch.send(b"ready", &[])?;
    let mut buf = [0u8; 512];
    let (n, from) = udp.recv_from(&mut buf)?;
    let mut reply = b"udp ".to_vec();
    reply.extend_from_slice(&buf[..n]);
    udp.send_to(&reply, from)?;
    Ok(())
}

/// Receives one message of sockets and reports their local ports, in order.
fn report_ports() -> Res {
    raise_nofile()?;
    let ch = channel()?;
    let msg = ch.recv()?;
    let mut ports = Vec::with_capacity(msg.sockets.len() * 2);
    for s in msg.sockets {
        let udp = UdpSocket::try_from(s)?;
        ports.extend_from_slice(&udp.local_addr()?.port().to_le_bytes());
    }
    ch.send(&ports, &[])?;
    Ok(())
}

/// Sends N fresh UDP sockets in one message, then waits for the parent's word to exit.
fn send_sockets(args: &[String]) -> Res {
    let n: usize = args.first().ok_or("missing count")?.parse()?;
    let ch = channel()?;
    let sockets: Vec<UdpSocket> =
        (0..n).map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let refs: Vec<_> = sockets.iter().map(|s| s.as_socket_ref()).collect();
    ch.send(b"sockets", &refs)?;
    // Wait until the parent closes its end.
    let _ = ch.recv();
    Ok(())
}

#[cfg(unix)]
/// Open descriptors, without the one that reads the directory.
fn fd_list() -> Res<Vec<u32>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy().ends_with("/fd") {
            continue;
        }
        fds.push(entry.file_name().to_string_lossy().parse()?);
    }
    fds.sort();
    Ok(fds)
}

#[cfg(unix)]
/// Reports the descriptors it has, excluding the one used to list them.
fn list_fds() -> Res {
    let open: Vec<String> = fd_list()?.iter().map(u32::to_string).collect();
    let ch = channel()?;
    ch.send(open.join(",").as_bytes(), &[])?;
    Ok(())
}

#[cfg(unix)]
/// Writes its open descriptors to standard output (a socket, inetd-style), as `fds 0,1,2\n`.
fn inetd_list_fds() -> Res {
    let open: Vec<String> = fd_list()?.iter().map(u32::to_string).collect();
    let mut out = std::io::stdout();
    writeln!(out, "fds {}", open.join(","))?;
    out.flush()?;
    Ok(())
}

#[cfg(unix)]
/// Exits 0 if the inherited channel descriptor is blocking before adoption, as a program in
/// another language expects; 4 if it is non-blocking.
fn channel_is_blocking() -> Res {
    let fd: i32 = std::env::var("HANDOVER_CHANNEL_FD")?.parse()?;
    // SAFETY: F_GETFL only reads the descriptor's status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if flags & libc::O_NONBLOCK != 0 {
        std::process::exit(4);
    }
    Ok(())
}

#[cfg(unix)]
/// Takes systemd-style sockets and prints "name=kind" lines plus its pid to stdout.
fn listen_fds() -> Res {
    let before = fd_list()?;
    let inherited = handover::inherited()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid {}", std::process::id())?;
    writeln!(out, "env LISTEN_PID {}", std::env::var("LISTEN_PID").unwrap_or_default())?;
    writeln!(out, "fds {:?}", before)?;
    for (name, socket) in &inherited.sockets {
        writeln!(out, "socket {name} {}", socket.kind()?)?;
    }
    writeln!(out, "channel {}", inherited.channel.is_some())?;
    Ok(())
}

#[cfg(unix)]
/// inetd style: serves one line on standard input/output, which is a socket.
fn inetd_echo() -> Res {
    let socket = handover::unix::stdin_socket()?.ok_or("stdin is not a socket")?;
    let stream = TcpStream::try_from(socket)?;
    let mut line = String::new();
    BufReader::new(std::io::stdin()).read_line(&mut line)?;
    let mut out = std::io::stdout();
    write!(out, "inetd {} peer={} {}", std::process::id(), stream.peer_addr()?, line)?;
    out.flush()?;
    Ok(())
}

/// Receives sockets until the channel closes, dropping each and acknowledging with one byte.
fn handoff_loop() -> Res {
    let ch = channel()?;
    let mut msg = handover::Message::default();
    loop {
        msg.sockets.clear();
        match ch.recv_into(&mut msg) {
            Ok(()) => {}
            Err(Error::PeerClosed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let n = msg.sockets.len() as u32;
        msg.sockets.clear();
        ch.send(&n.to_le_bytes(), &[])?;
    }
}

#[cfg(unix)]
/// Connects to a channel rendezvous at PATH with a raw Unix stream and writes a bad frame.
fn garbage(args: &[String]) -> Res {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    let (mode, path) = (args.first().ok_or("mode")?, args.get(1).ok_or("path")?);
    let mut s = UnixStream::connect(path)?;
    let header = |payload_len: u32, handles: u32| {
        let mut h = b"HNDV\x01\x01\x00\x00".to_vec();
        h.extend_from_slice(&payload_len.to_le_bytes());
        h.extend_from_slice(&handles.to_le_bytes());
        h
    };
    match mode.as_str() {
        "noise" => s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?,
        "truncated" => {
            let mut f = header(100, 0);
            f.extend_from_slice(&[7; 10]);
            s.write_all(&f)?;
        }
        "oversized" => s.write_all(&header(u32::MAX, 0))?,
        "missing-sockets" => s.write_all(&header(0, 3))?,
        "version" => s.write_all(b"HNDV\x09\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")?,
        _ => return Err(format!("unknown garbage mode {mode}").into()),
    }
    // Keep the connection open for a moment unless told to hang up, so the receiver has to
    // decide from the bytes alone.
    if mode != "truncated" {
        let mut buf = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = s.read(&mut buf);
    }
    Ok(())
}

#[cfg(unix)]
/// Connects to an abstract rendezvous; exit 0 if accepted, 10 if refused by our own check.
fn connect_abstract(args: &[String]) -> Res {
    use handover::unix::ChannelExt;
    use handover::PeerPolicy;
    use std::time::Duration;
    let name = args.first().ok_or("name")?;
    match Channel::connect_abstract(name.as_bytes(), &PeerPolicy::SameUser) {
        Ok(ch) => {
            // The listener may still refuse us: wait for its word or for it to hang up.
            match ch.recv_timeout(Duration::from_secs(5)) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("listener hung up: {e}").into()),
            }
        }
        Err(Error::PeerRejected { .. }) => std::process::exit(10),
        Err(e) => Err(e.into()),
    }
}

#[cfg(unix)]
/// Listens on an abstract name and accepts one connection; prints what happened.
fn listen_abstract(args: &[String]) -> Res {
    use handover::unix::ChannelListenerExt;
    use std::time::Duration;
    let name = args.first().ok_or("name")?;
    let listener = handover::ChannelListener::bind_abstract(name.as_bytes())?;
    println!("listening");
    std::io::stdout().flush()?;
    match listener.accept() {
        Ok(ch) => ch.send(b"welcome", &[])?,
        Err(e) => println!("refused: {e}"),
    }
    // Stay listening (a second connection may wait in the backlog) until killed.
    std::thread::sleep(Duration::from_secs(10));
    Ok(())
}

/// As `serve-stream`, with the tokio API on both the channel and the stream.
fn tokio_serve_stream() -> Res {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let ch = handover::tokio::Channel::try_from(channel()?)?;
        let msg = ch.recv().await?;
        let socket = msg.sockets.into_iter().next().ok_or("no socket")?;
        let stream = tokio::net::TcpStream::try_from(socket)?;
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        tokio::io::BufReader::new(r).read_line(&mut line).await?;
        let tag = String::from_utf8_lossy(&msg.bytes);
        w.write_all(format!("{tag} {} {line}", std::process::id()).as_bytes()).await?;
        ch.send(b"done", &[]).await?;
        Ok(())
    })
}

fn raise_nofile() -> Res {
    integration_tests::raise_nofile(8192)?;
    Ok(())
}

/// `stdio-echo`: reads standard input to its end, then writes `out [TEXT]` to standard output
/// and `err [TEXT]` to standard error (TEXT without its trailing newline).
fn stdio_echo() -> Res {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let text = text.trim_end();
    let mut out = std::io::stdout();
    writeln!(out, "out [{text}]")?;
    out.flush()?;
    writeln!(std::io::stderr(), "err [{text}]")?;
    Ok(())
}

/// `exit-after MS CODE`: sleeps, then exits with `CODE`.
fn exit_after(args: &[String]) -> Res {
    let [ms, code] = args else { return Err("exit-after MS CODE".into()) };
    std::thread::sleep(std::time::Duration::from_millis(ms.parse()?));
    std::process::exit(code.parse()?);
}

/// `process-tree ADDR`: connects to ADDR and says `child PID`, starts a grandchild
/// (`tree-leaf ADDR`) with std's `Command`, then holds the connection until the other side
/// closes it. Each process's connection stays open exactly as long as the process lives.
fn process_tree(args: &[String]) -> Res {
    let addr = args.first().ok_or("process-tree ADDR")?;
    let stream = TcpStream::connect(addr)?;
    writeln!(&stream, "child {}", std::process::id())?;
    let mut leaf = std::process::Command::new(std::env::current_exe()?)
        .args(["tree-leaf", addr])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    hold(stream)?;
    leaf.wait()?;
    Ok(())
}

/// `tree-leaf ADDR`: connects to ADDR, says `leaf PID`, holds the connection until closed.
fn tree_leaf(args: &[String]) -> Res {
    let stream = TcpStream::connect(args.first().ok_or("tree-leaf ADDR")?)?;
    writeln!(&stream, "leaf {}", std::process::id())?;
    hold(stream)
}

/// Reads until the peer closes the stream.
fn hold(stream: TcpStream) -> Res {
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut &stream, &mut sink)?;
    Ok(())
}

/// inetd style on Windows: answers the HTTP client on its standard input with the socket
/// handles it holds. Every handle value up to 0x4000 is probed with `getsockname` (Wine's
/// `getsockopt` does not know inherited sockets); the body says whether the standard-input
/// socket itself was seen (so the probe finds inherited sockets at all) and lists every other
/// socket handle (none expected: a child gets only its own connection).
#[cfg(windows)]
fn inetd_handles() -> Res {
    use std::io::Read;
    use std::os::windows::io::AsRawSocket;
    use windows_sys::Win32::Networking::WinSock::{getsockname, SOCKADDR_STORAGE};
    use windows_sys::Win32::System::Console::{GetStdHandle, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE};

    // Pids are reused quickly on Windows: the start time tells processes apart.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let sock = handover::stdin_socket()?.ok_or("standard input is not a socket")?.into_socket2();
    // SAFETY: GetStdHandle has no preconditions.
    let std_in = unsafe { GetStdHandle(STD_INPUT_HANDLE) } as usize;
    // SAFETY: as above.
    let std_out = unsafe { GetStdHandle(STD_OUTPUT_HANDLE) } as usize;
    let own = sock.as_raw_socket() as usize;
    let is_socket = |h: usize| {
        // SAFETY: zeroed bytes are a valid SOCKADDR_STORAGE.
        let mut addr: SOCKADDR_STORAGE = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<SOCKADDR_STORAGE>() as i32;
        // SAFETY: getsockname takes any handle value and fails on one that is not a socket;
        // the address buffer and its length are live locals.
        unsafe { getsockname(h, (&mut addr as *mut SOCKADDR_STORAGE).cast(), &mut len) == 0 }
    };
    let found: Vec<usize> = (1..0x1000).map(|i| i * 4).filter(|&h| is_socket(h)).collect();
    let others: Vec<usize> =
        found.iter().copied().filter(|h| ![std_in, std_out, own].contains(h)).collect();
    let stdin_seen = found.contains(&std_in);
    let mut req = [0u8; 1024];
    let _ = (&sock).read(&mut req)?;
    let body = format!(
        "hello from the peer {} started {started}: stdin socket seen {stdin_seen}, other sockets \
         {others:?}\n",
        std::process::id()
    );
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    (&sock).write_all(resp.as_bytes())?;
    sock.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
