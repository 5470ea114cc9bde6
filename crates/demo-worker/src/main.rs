//! The example Rust worker: answers every connection with a tiny HTTP response, in whichever
//! mode the supervisor runs it.
//!
//! - prefork: a control channel was inherited; connections arrive over it
//!   ([`handover_worker::Worker`] speaks the protocol), served by a pool of `--capacity`
//!   threads.
//! - shared: listening sockets were inherited (`LISTEN_FDS`; on Windows they arrive as the
//!   first message on an inherited channel); accepted connections are served on tokio's
//!   blocking pool until the supervisor asks it to stop (`SIGTERM`; on Windows Ctrl-Break,
//!   Ctrl-C or the console closing).
//! - spawn: one connected socket on standard input/output, or as descriptor 3 (`LISTEN_FDS=1`;
//!   on Windows the socket arrives over the inherited channel like shared mode's listeners).
//!
//! The program is the same on Unix and Windows; what differs (Unix-socket listeners, how a
//! stop is requested) is in `sys/`.
//!
//! ```text
//! cargo build -p handover-demo-worker      # not installed with handover: a package of its own
//! handover serve --listen tcp://127.0.0.1:8080 -- target/debug/handover-demo-worker
//! curl http://127.0.0.1:8080/
//! ```
//!
//! `--misbehave MODE` makes it break the protocol on purpose (the supervisor's tests use it):
//! `exit` (exit 1 at once), `garbage` (garbage instead of an ACK), `wrong-ack`, `never-ack`,
//! `die-before-ack` (take connections, never acknowledge, exit after `--count` of them),
//! `die-after-finished` (serve one, say FINISHED, exit 3 before ending the stream),
//! `stray-fds` (a well-formed hello with 50 descriptors beside it that no frame declares;
//! Unix).
//! With `--once FILE` only the first worker to create FILE misbehaves.
//!
//! Every mode serves HTTP/1.1 keep-alive: requests on a connection are answered one after
//! another until the client closes it, or asks to with `Connection: close` (or HTTP/1.0
//! without `Connection: keep-alive`), after which the worker ends the connection; a connection
//! idle for 10 s between requests is closed.
//!
//! Also for the tests: `--gap-file FILE` (prefork, blocking) appends, for each connection it
//! receives after finishing one, the microseconds from its FINISHED for the last to the
//! arrival of the next (how long the supervisor took to hand it more work once it had room).
//! `--leak-kb N` keeps N KiB (touched) per request served, `--log-requests`
//! writes a line to stdout per request (and to stderr at start and exit), `--flood-stdout`
//! writes to stdout without end, `--start-delay-ms N` waits before its hello (or before
//! accepting). A request for `/sleep/MS` is answered after MS milliseconds (instead of
//! `--delay-ms`); one for `/peer` is answered with the client's address as the worker was
//! given it (the CONNECTION message, `REMOTE_ADDR`/`REMOTE_PORT`, or the socket's peer).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)] // a program, not a library

mod sys;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use handover::{Channel, SocketKind};
use handover_worker::protocol::{SupervisorMessage, WorkerMessage, ID_MSG_LEN};
use handover_worker::{Event, Hello, Worker};

#[derive(Debug, Default)]
struct Opts {
    capacity: u32,
    delay: Duration,
    misbehave: Option<String>,
    count: usize,
    tokio: bool,
    once: Option<std::path::PathBuf>,
    /// How long it takes to start (before its hello, or before it accepts).
    start_delay: Duration,
    /// `--gap-file`: where to append the gaps between a FINISHED and the next connection.
    gap_file: Option<std::path::PathBuf>,
}

/// `--leak-kb`: memory kept (and touched) per request served, to test `--max-memory`.
static LEAK_KB: AtomicUsize = AtomicUsize::new(0);
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// `--log-requests`: a line on stdout per request served.
static LOG_REQUESTS: AtomicBool = AtomicBool::new(false);
static SERVED: AtomicU64 = AtomicU64::new(0);

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts { capacity: 16, count: 1, ..Opts::default() };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--capacity" => o.capacity = val()?.parse().map_err(|e| format!("--capacity: {e}"))?,
            "--delay-ms" => {
                o.delay =
                    Duration::from_millis(val()?.parse().map_err(|e| format!("--delay-ms: {e}"))?)
            }
            "--misbehave" => o.misbehave = Some(val()?),
            "--count" => o.count = val()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--once" => o.once = Some(val()?.into()),
            "--gap-file" => o.gap_file = Some(val()?.into()),
            "--start-delay-ms" => {
                o.start_delay = Duration::from_millis(
                    val()?.parse().map_err(|e| format!("--start-delay-ms: {e}"))?,
                )
            }
            "--leak-kb" => {
                LEAK_KB.store(val()?.parse().map_err(|e| format!("--leak-kb: {e}"))?, Relaxed)
            }
            "--log-requests" => LOG_REQUESTS.store(true, Relaxed),
            // Writes lines to stdout without end (blocking when nobody reads them).
            "--flood-stdout" => {
                thread::spawn(|| {
                    let line = format!("flood from {} {}\n", std::process::id(), "x".repeat(64));
                    let mut out = std::io::stdout();
                    while out.write_all(line.as_bytes()).is_ok() {}
                });
            }
            "--tokio" => o.tokio = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("handover-demo-worker: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(opts) {
        eprintln!("handover-demo-worker[{}]: {e}", std::process::id());
        std::process::exit(1);
    }
}

fn run(mut opts: Opts) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(file) = &opts.once {
        // Only the first worker to claim the file misbehaves; it writes its pid there.
        match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
            Ok(mut f) => write!(f, "{}", std::process::id())?,
            Err(_) => opts.misbehave = None,
        }
    }
    if opts.misbehave.as_deref() == Some("exit") {
        std::process::exit(1);
    }
    if LOG_REQUESTS.load(Relaxed) {
        eprintln!("demo worker {} starting", std::process::id());
    }
    if !opts.start_delay.is_zero() {
        thread::sleep(opts.start_delay);
    }
    let mut inherited = handover::inherited()?;
    let listening = match inherited.sockets.first() {
        Some((_, s)) => matches!(s.kind()?, SocketKind::TcpListener | SocketKind::UnixListener),
        None => false,
    };
    if listening {
        // shared mode (with a channel too on Windows, whose end asks us to stop).
        let sockets = inherited.sockets.into_iter().map(|(_, s)| s).collect();
        return shared(sockets, inherited.channel.take(), &opts);
    }
    if let Some(channel) = inherited.channel.take() {
        return match opts.misbehave.clone() {
            Some(mode) => misbehave(channel, &mode, &opts),
            None if opts.tokio => prefork_tokio(channel, &opts),
            // The main thread only hands connections to the pool: it answers heartbeats.
            None => prefork(
                Worker::from_channel_with(channel, Hello::new(opts.capacity).heartbeat(true))?,
                &opts,
            ),
        };
    }
    if !inherited.sockets.is_empty() {
        let (_, socket) = inherited.sockets.remove(0);
        let s = socket.into_socket2();
        return serve(&mut &s, &mut &s, opts.delay, remote_addr());
    }
    if let Some(socket) = handover::stdin_socket()? {
        let s = socket.into_socket2();
        return serve(&mut &s, &mut std::io::stdout(), opts.delay, remote_addr());
    }
    Err("not started by `handover serve` (no channel, no sockets, stdin is not a socket)".into())
}

/// The end of a request head (after its blank line) in `buf`, if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// What a request head asks for: how long to take (`GET /sleep/MS`), whether the connection
/// ends after the response (`Connection: close`, or HTTP/1.0 without `Connection:
/// keep-alive`), and whether it asks for the peer address the worker was given (`GET /peer`).
fn parse_head(head: &[u8]) -> (Option<Duration>, bool, bool) {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let sleep = first
        .split(' ')
        .nth(1)
        .and_then(|path| path.strip_prefix("/sleep/")?.parse().ok())
        .map(Duration::from_millis);
    let connection = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let has = |token: &str| {
        connection.as_deref().is_some_and(|v| v.split(',').any(|t| t.trim() == token))
    };
    let close = has("close") || (first.ends_with("HTTP/1.0") && !has("keep-alive"));
    let peer = first.split(' ').nth(1) == Some("/peer");
    (sleep, close, peer)
}

/// The response: a greeting, or (`/peer`) the client's address as the worker was given it.
fn response(worker: &str, close: bool, peer: Option<Option<SocketAddr>>) -> String {
    let body = match peer {
        Some(Some(addr)) => format!("peer {addr}\n"),
        Some(None) => "peer unknown\n".to_owned(),
        None => format!("hello from the rust {worker} {}\n", std::process::id()),
    };
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
}

/// Answers the requests of one connection (keep-alive) until the client closes it, asks to
/// close it, or leaves it idle past its read timeout; the caller then ends the stream.
fn serve(
    input: &mut impl Read,
    output: &mut impl Write,
    delay: Duration,
    peer: Option<SocketAddr>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut buf = [0u8; 8192];
    let mut len = 0;
    loop {
        while head_end(&buf[..len]).is_none() {
            if len == buf.len() {
                return Err("request head over 8 KiB".into());
            }
            let n = match input.read(&mut buf[len..]) {
                Ok(n) => n,
                // Idle between requests past the read timeout: the connection ends quietly.
                Err(e)
                    if len == 0
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Ok(()); // the client closed (or sent half a request)
            }
            len += n;
        }
        let end = head_end(&buf[..len]).unwrap_or(len);
        let (asked, close, ask_peer) = parse_head(&buf[..end]);
        let delay = asked.unwrap_or(delay);
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        output.write_all(response("worker", close, ask_peer.then_some(peer)).as_bytes())?;
        output.flush()?;
        served();
        if close {
            return Ok(());
        }
        buf.copy_within(end..len, 0);
        len -= end;
    }
}

/// The client's address in spawn mode, as the supervisor set it (`REMOTE_ADDR`, `REMOTE_PORT`).
fn remote_addr() -> Option<SocketAddr> {
    let ip = std::env::var("REMOTE_ADDR").ok()?.parse().ok()?;
    let port = std::env::var("REMOTE_PORT").ok()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// What `--leak-kb` and `--log-requests` do after each request.
fn served() {
    let n = SERVED.fetch_add(1, Relaxed) + 1;
    let kb = LEAK_KB.load(Relaxed);
    if kb > 0 {
        // Non-zero bytes: the pages are touched, so they count as resident.
        let block = vec![1u8; kb * 1024];
        if let Ok(mut l) = LEAKED.lock() {
            l.push(block);
        }
    }
    if LOG_REQUESTS.load(Relaxed) {
        println!("served request {n}");
    }
}

fn prefork(mut worker: Worker, opts: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let (tx, rx) = mpsc::channel::<handover_worker::Connection>();
    let rx = Arc::new(Mutex::new(rx));
    // `--gap-file`: when the last connection was reported finished.
    let finished_at: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
    let mut gaps = match &opts.gap_file {
        Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        None => None,
    };
    let pool: Vec<_> = (0..opts.capacity.max(1))
        .map(|_| {
            let rx = Arc::clone(&rx);
            let finished_at = Arc::clone(&finished_at);
            let delay = opts.delay;
            thread::spawn(move || loop {
                let next = rx.lock().map(|r| r.recv());
                let Ok(Ok(conn)) = next else { return };
                let _ = conn.socket().set_read_timeout(Some(Duration::from_secs(10)));
                let (mut r, mut w) = (conn.socket(), conn.socket());
                if let Err(e) = serve(&mut r, &mut w, delay, conn.peer_addr()) {
                    eprintln!("handover-demo-worker: connection {}: {e}", conn.id());
                }
                // Dropping `conn` reports it finished, then shuts it down and closes it.
                drop(conn);
                if let Ok(mut at) = finished_at.lock() {
                    *at = Some(std::time::Instant::now());
                }
            })
        })
        .collect();
    loop {
        match worker.recv()? {
            Event::Connection(conn) => {
                if let Some(file) = &mut gaps {
                    let last = finished_at.lock().ok().and_then(|mut at| at.take());
                    if let Some(at) = last {
                        writeln!(file, "{}", at.elapsed().as_micros())?;
                    }
                }
                tx.send(conn)?
            }
            Event::Drain => break,
            Event::Stop => std::process::exit(0),
        }
    }
    drop(tx);
    for t in pool {
        let _ = t.join();
    }
    if LOG_REQUESTS.load(Relaxed) {
        eprintln!("demo worker {} exiting", std::process::id());
    }
    Ok(())
}

/// prefork on tokio, through `handover_worker::tokio` (`--tokio`).
fn prefork_tokio(channel: Channel, opts: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let delay = opts.delay;
    let capacity = opts.capacity;
    runtime.block_on(async move {
        let channel = handover::tokio::Channel::try_from(channel)?;
        let mut worker = handover_worker::tokio::Worker::from_channel_with(
            channel,
            Hello::new(capacity).heartbeat(true),
        )
        .await?;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            match worker.recv().await? {
                handover_worker::tokio::Event::Connection(conn) => {
                    tasks.spawn(async move {
                        let peer = conn.peer_addr();
                        let (mut stream, finisher) = conn.into_tcp()?;
                        let mut buf = [0u8; 8192];
                        let mut len = 0;
                        // Keep-alive, as `serve` does; idle for 10 s between requests ends it.
                        'requests: loop {
                            while head_end(&buf[..len]).is_none() {
                                if len == buf.len() {
                                    break 'requests;
                                }
                                let read = stream.read(&mut buf[len..]);
                                match tokio::time::timeout(Duration::from_secs(10), read).await {
                                    Ok(Ok(0)) | Err(_) => break 'requests,
                                    Ok(Ok(n)) => len += n,
                                    Ok(Err(e)) => return Err(e.into()),
                                }
                            }
                            let end = head_end(&buf[..len]).unwrap_or(len);
                            let (asked, close, ask_peer) = parse_head(&buf[..end]);
                            let delay = asked.unwrap_or(delay);
                            // A zero sleep would still wait for the timer wheel (about 1 ms).
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let reply = response("tokio worker", close, ask_peer.then_some(peer));
                            stream.write_all(reply.as_bytes()).await?;
                            served();
                            if close {
                                break;
                            }
                            buf.copy_within(end..len, 0);
                            len -= end;
                        }
                        finisher.finish().await?;
                        stream.shutdown().await?; // the client sees the end now
                        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                    });
                    while tasks.try_join_next().is_some() {}
                }
                handover_worker::tokio::Event::Drain => break,
                handover_worker::tokio::Event::Stop => std::process::exit(0),
            }
        }
        while tasks.join_next().await.is_some() {}
        worker.close().await;
        Ok(())
    })
}

/// shared mode: accepts on the inherited listeners until asked to stop (`SIGTERM`; see
/// [`sys::stop_requested`]), then stops accepting and finishes the connections it has (what a
/// socket-activated program should do, so that a drain or an upgrade loses nothing). Accepting
/// is non-blocking (tokio), so no connection is taken off the queue after the stop request.
fn shared(
    listeners: Vec<handover::Socket>,
    channel: Option<Channel>,
    opts: &Opts,
) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let delay = opts.delay;
    rt.block_on(async move {
        let signalled = sys::stop_requested()?;
        // The supervisor ends the channel it started us with to ask us to stop (Windows).
        let channel = channel.map(handover::tokio::Channel::try_from).transpose()?;
        let stop = async move {
            let ended = async {
                match &channel {
                    Some(ch) => while ch.recv().await.is_ok() {},
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = signalled => {}
                () = ended => {}
            }
        };
        tokio::pin!(stop);
        let mut all = Vec::new();
        for l in listeners {
            all.push(sys::Listener::new(l)?);
        }
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                r = accept_any(&all) => r,
            };
            if let Ok(s) = accepted {
                tasks.spawn_blocking(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let peer = s.peer_addr().ok().and_then(|a| a.as_socket());
                    let _ = serve(&mut &s, &mut &s, delay, peer);
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        drop(all);
        while tasks.join_next().await.is_some() {}
        Ok(())
    })
}

/// Accepts one connection from whichever listener has one, as a blocking-capable socket.
async fn accept_any(all: &[sys::Listener]) -> std::io::Result<socket2::Socket> {
    std::future::poll_fn(|cx| {
        for l in all {
            let r = l.poll_accept(cx);
            if r.is_ready() {
                return r;
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn send(ch: &Channel, m: WorkerMessage) -> handover::Result<()> {
    let mut buf = [0u8; ID_MSG_LEN];
    let n = m.encode(&mut buf);
    ch.send(&buf[..n], &[])
}

/// Breaks the protocol in the way `mode` names.
fn misbehave(ch: Channel, mode: &str, opts: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let hello =
        WorkerMessage::Hello { capacity: opts.capacity, pid: std::process::id(), heartbeat: false };
    if mode == "stray-fds" {
        // A well-formed hello with 50 descriptors beside it that no frame declares.
        let mut buf = [0u8; ID_MSG_LEN];
        let n = hello.encode(&mut buf);
        sys::send_with_stray_fds(&buf[..n], 50)?;
        loop {
            ch.recv()?;
        }
    }
    send(&ch, hello)?;
    let mut held = Vec::new();
    loop {
        let msg = ch.recv()?;
        let id = match SupervisorMessage::decode(&msg.bytes)? {
            SupervisorMessage::Connection(info) => info.id,
            _ => return Ok(()),
        };
        held.push(msg.sockets);
        match mode {
            // A well-formed frame whose payload is not a protocol message.
            "garbage" => ch.send(b"GET / HTTP/1.1\r\n\r\n", &[])?,
            "wrong-ack" => send(&ch, WorkerMessage::Ack(id + 1_000_000))?,
            "never-ack" => {}
            // Serves the connection whole, says FINISHED, and dies before ending the stream.
            "die-after-finished" => {
                send(&ch, WorkerMessage::Ack(id))?;
                let socket = held.last_mut().and_then(Vec::pop).ok_or("no socket")?;
                let s = socket.into_socket2();
                serve(&mut &s, &mut &s, opts.delay, None)?;
                send(&ch, WorkerMessage::Finished(id))?;
                std::process::exit(3);
            }
            "die-before-ack" => {
                if held.len() >= opts.count {
                    std::process::exit(3);
                }
            }
            other => return Err(format!("unknown --misbehave mode {other:?}").into()),
        }
    }
}
