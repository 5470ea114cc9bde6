//! A small HTTP load generator for `bench/run.sh`.
//!
//! ```text
//! loadgen ADDR [--mode close|connect|keepalive|hold] [--concurrency C] [--duration SECS] [--rate R]
//! ```
//!
//! `close` (what most clients do): a fresh TCP connection per request that says
//! `Connection: close`; the client reads the response and then waits for the server to end
//! the stream, and only then closes (so the server's FIN and its TIME_WAIT are in the cost,
//! and a server that does not close fails the run with timeouts).
//! `connect`: a fresh TCP connection per request (where the hand-off cost shows); the client
//! resets it (`SO_LINGER 0`) right after the full response, without waiting for the server to
//! close: no TIME_WAIT anywhere, and the server's close is not measured.
//! `keepalive`: C connections, each making requests back to back. With `--rate`, requests are
//! started on a fixed schedule (open loop) and latency counts from the scheduled start, so a
//! stalled server cannot hide behind a slowed client. `hold`: C connections, one request
//! each, all held open at once for `--duration`, then closed (for concurrency and memory
//! figures). Prints one line of `key=value`.
//! Nothing is retried: every failure is counted.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    refused: u64,
    reset: u64,
    unanswered: u64,
    timeouts: u64,
    other: u64,
}

/// How each request is made (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Close,
    Connect,
    Keepalive,
    Hold,
}

struct Opts {
    addr: SocketAddr,
    mode: Mode,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().ok_or("usage: loadgen ADDR [--mode close|connect|keepalive|hold] [--concurrency C] [--duration SECS] [--rate R]")?;
    let mut o = Opts {
        addr: addr.parse().map_err(|e| format!("bad address {addr}: {e}"))?,
        mode: Mode::Connect,
        concurrency: 32,
        duration: Duration::from_secs(5),
        rate: None,
    };
    while let Some(flag) = args.next() {
        let val = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" => {
                o.mode = match val.as_str() {
                    "close" => Mode::Close,
                    "connect" => Mode::Connect,
                    "keepalive" => Mode::Keepalive,
                    "hold" => Mode::Hold,
                    _ => return Err(format!("unknown --mode {val}")),
                }
            }
            "--concurrency" => o.concurrency = val.parse().map_err(|_| "bad --concurrency")?,
            "--duration" => {
                o.duration = Duration::from_secs_f64(val.parse().map_err(|_| "bad --duration")?)
            }
            "--rate" => o.rate = Some(val.parse().map_err(|_| "bad --rate")?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

fn main() {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stats = Rc::new(RefCell::new(Stats::default()));
    let started = Instant::now();
    rt.block_on(tokio::task::LocalSet::new().run_until(run(&opts, stats.clone())));
    let elapsed = started.elapsed().as_secs_f64();
    let mut s = stats.borrow_mut();
    s.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if s.latencies_us.is_empty() {
            return 0;
        }
        let i =
            ((s.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, s.latencies_us.len()) - 1;
        s.latencies_us[i]
    };
    let n = s.latencies_us.len();
    println!(
        "requests={n} rps={:.0} p50_us={} p99_us={} p999_us={} refused={} reset={} unanswered={} timeouts={} other={}",
        n as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        s.refused,
        s.reset,
        s.unanswered,
        s.timeouts,
        s.other
    );
}

async fn run(o: &Opts, stats: Rc<RefCell<Stats>>) {
    if o.mode == Mode::Hold {
        return hold(o, stats).await;
    }
    let start = Instant::now();
    let deadline = start + o.duration;
    let next = Rc::new(RefCell::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency {
        let (stats, next) = (stats.clone(), next.clone());
        let (addr, mode, rate) = (o.addr, o.mode, o.rate);
        tasks.push(tokio::task::spawn_local(async move {
            let mut conn: Option<TcpStream> = None;
            loop {
                // Open loop: take the next slot of the global schedule.
                let scheduled = match rate {
                    Some(r) => {
                        let i = {
                            let mut n = next.borrow_mut();
                            *n += 1;
                            *n - 1
                        };
                        let at = start + Duration::from_secs_f64(i as f64 / r);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                // Stop at the deadline even when behind schedule (an overloaded server).
                if scheduled >= deadline || Instant::now() >= deadline {
                    return;
                }
                let res = tokio::time::timeout(TIMEOUT, one(addr, mode, &mut conn)).await;
                let mut s = stats.borrow_mut();
                match res {
                    Ok(Ok(())) => s
                        .latencies_us
                        .push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Ok(Err(Failure::Refused)) => s.refused += 1,
                    Ok(Err(Failure::Reset)) => s.reset += 1,
                    Ok(Err(Failure::Unanswered)) => s.unanswered += 1,
                    Ok(Err(Failure::Other)) => s.other += 1,
                    Err(_) => {
                        s.timeouts += 1;
                        conn = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Opens `concurrency` connections, one request each, holds them all open, then closes.
async fn hold(o: &Opts, stats: Rc<RefCell<Stats>>) {
    let mut tasks = Vec::new();
    let release = Rc::new(tokio::sync::Notify::new());
    for _ in 0..o.concurrency {
        let (stats, release, addr) = (stats.clone(), release.clone(), o.addr);
        tasks.push(tokio::task::spawn_local(async move {
            let started = Instant::now();
            let mut conn = None;
            let res =
                tokio::time::timeout(Duration::from_secs(30), one(addr, Mode::Hold, &mut conn))
                    .await;
            {
                let mut s = stats.borrow_mut();
                match res {
                    Ok(Ok(())) => s
                        .latencies_us
                        .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Ok(Err(Failure::Refused)) => s.refused += 1,
                    Ok(Err(Failure::Reset)) => s.reset += 1,
                    Ok(Err(Failure::Unanswered)) => s.unanswered += 1,
                    Ok(Err(Failure::Other)) => s.other += 1,
                    Err(_) => s.timeouts += 1,
                }
            }
            release.notified().await;
            drop(conn);
        }));
        // Pace the connects a little so the listen backlog never overflows.
        tokio::task::yield_now().await;
    }
    // Wait until every connection has its answer (or failed), then hold for the duration.
    loop {
        let done = {
            let s = stats.borrow();
            s.latencies_us.len() as u64 + s.refused + s.reset + s.unanswered + s.timeouts + s.other
        };
        if done as usize >= o.concurrency {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("holding {} connections", o.concurrency);
    tokio::time::sleep(o.duration).await;
    release.notify_waiters();
    for t in tasks {
        let _ = t.await;
    }
}

enum Failure {
    Refused,
    Reset,
    Unanswered,
    Other,
}

fn classify(e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Failure::Reset,
        std::io::ErrorKind::UnexpectedEof => Failure::Unanswered,
        _ => Failure::Other,
    }
}

async fn one(addr: SocketAddr, mode: Mode, conn: &mut Option<TcpStream>) -> Result<(), Failure> {
    let mut stream = match conn.take() {
        Some(s) => s,
        None => {
            let s = TcpStream::connect(addr).await.map_err(classify)?;
            let _ = s.set_nodelay(true);
            s
        }
    };
    let request = if mode == Mode::Close { REQUEST_CLOSE } else { REQUEST };
    stream.write_all(request).await.map_err(classify)?;
    read_response(&mut stream).await?;
    match mode {
        Mode::Keepalive | Mode::Hold => *conn = Some(stream),
        // The server ends the stream: nothing more may come, and the client closes after it
        // (so the TIME_WAIT is the server's, and client ports do not run out).
        Mode::Close => {
            let mut extra = [0u8; 1];
            match stream.read(&mut extra).await.map_err(classify)? {
                0 => {}
                _ => return Err(Failure::Other),
            }
        }
        // Reset instead of FIN: no TIME_WAIT on the client, so ports do not run out.
        Mode::Connect => {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    }
    Ok(())
}

/// Reads one response: the head, then Content-Length bytes of body.
async fn read_response(stream: &mut TcpStream) -> Result<(), Failure> {
    let mut buf = [0u8; 1024];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.map_err(classify)?;
        if n == 0 {
            return Err(Failure::Unanswered);
        }
        filled += n;
        if let Some(head_end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| Failure::Other)?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
                return Err(Failure::Other);
            }
            let want = head_end + 4 + len;
            while filled < want {
                if filled == buf.len() {
                    return Err(Failure::Other);
                }
                let n = stream.read(&mut buf[filled..]).await.map_err(classify)?;
                if n == 0 {
                    return Err(Failure::Unanswered);
                }
                filled += n;
            }
            return Ok(());
        }
        if filled == buf.len() {
            return Err(Failure::Other);
        }
    }
}
