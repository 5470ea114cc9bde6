//! The benchmark HTTP worker: one process, a single-threaded tokio runtime, serving the same
//! tiny response whatever way it gets its connections.
//!
//! ```text
//! bench-worker reuseport ADDR     bind ADDR with SO_REUSEPORT and accept (the no-hand-off ceiling)
//! bench-worker inherited          accept on the LISTEN_FDS sockets (handover --mode shared)
//! bench-worker scm [--report]     receive accepted fds, one per byte, on inherited fd "scm";
//!                                 with --report, write one byte back as each one is finished
//! bench-worker prefork [--capacity N]
//!                                 receive connections from `handover serve --mode prefork`,
//!                                 declaring capacity N (default: $WORKER_CAPACITY, else 65536)
//! ```
//!
//! Every mode serves HTTP/1.1 keep-alive, and ends the connection after a response to a
//! request that says `Connection: close` (or HTTP/1.0 without keep-alive), as real servers do.
#![allow(clippy::print_stderr)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let res = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("reuseport") => reuseport(args.get(1).ok_or("ADDR")?.parse()?).await,
            Some("inherited") => inherited().await,
            Some("scm") => scm(args.get(1).map(String::as_str) == Some("--report")).await,
            Some("prefork") => {
                let capacity = match (args.get(1).map(String::as_str), args.get(2)) {
                    (Some("--capacity"), Some(n)) => Some(n.parse()?),
                    _ => std::env::var("WORKER_CAPACITY").ok().and_then(|c| c.parse().ok()),
                };
                prefork(capacity.unwrap_or(65_536)).await
            }
            _ => Err("usage: bench-worker reuseport ADDR | inherited | scm [--report] | prefork [--capacity N]".into()),
        }
    });
    if let Err(e) = res {
        eprintln!("bench-worker: {e}");
        std::process::exit(1);
    }
}

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

async fn serve(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    let mut filled = 0;
    loop {
        let n = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        let mut start = 0;
        while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let (response, close) = bench_servers::respond(&buf[start..start + end + 4]);
            if stream.write_all(response).await.is_err() || close {
                // The caller ends the stream.
                return;
            }
            start += end + 4;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return;
        }
    }
}

async fn accept_loop(listener: TcpListener) -> Res {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::task::spawn_local(async move {
            serve(&mut stream).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn reuseport(addr: SocketAddr) -> Res {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    run_local(accept_loop(socket.into())).await
}

async fn inherited() -> Res {
    let inherited = handover::inherited()?;
    let (_, socket) = inherited.sockets.into_iter().next().ok_or("no LISTEN_FDS socket")?;
    run_local(accept_loop(TcpListener::try_from(socket)?)).await
}

async fn scm(report: bool) -> Res {
    let mut inherited = handover::inherited()?;
    let socket = inherited.take("scm").ok_or("no scm socket")?;
    let unix = UnixStream::from(OwnedFd::from(socket));
    unix.set_nonblocking(true)?;
    // The acceptor reads these bytes at once, so a write never finds the socket full.
    let done = std::rc::Rc::new(unix.try_clone()?);
    // SAFETY: the UnixStream owns its descriptor for as long as the AsyncFd lives.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(unix) }?;
    run_local(async move {
        loop {
            let mut guard = fd.readable().await?;
            match guard.try_io(|u| bench_servers::bare::recv_fd(u.get_ref().as_raw_fd())) {
                Ok(Ok(Some(owned))) => {
                    let std = TcpStream::from(owned);
                    std.set_nonblocking(true)?;
                    let mut stream = tokio::net::TcpStream::from_std(std)?;
                    let done = done.clone();
                    tokio::task::spawn_local(async move {
                        serve(&mut stream).await;
                        let _ = stream.shutdown().await;
                        drop(stream);
                        if report {
                            let _ = (&*done).write(&[1]);
                        }
                    });
                }
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    })
    .await
}

async fn prefork(capacity: u32) -> Res {
    use handover_worker::tokio::{Event, Worker};
    run_local(async {
        let mut worker = Worker::from_env(capacity).await?;
        while let Event::Connection(conn) = worker.recv().await? {
            let (mut stream, finisher) = conn.into_tcp()?;
            tokio::task::spawn_local(async move {
                serve(&mut stream).await;
                // FINISHED first; then the client sees the end (not when the supervisor reads
                // FINISHED, up to 32 ms later).
                let _ = finisher.finish().await;
                let _ = stream.shutdown().await;
            });
        }
        Ok(())
    })
    .await
}

async fn run_local(f: impl std::future::Future<Output = Res>) -> Res {
    tokio::task::LocalSet::new().run_until(f).await
}
