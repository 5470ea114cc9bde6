//! The benchmark HTTP worker: one process, a single-threaded tokio runtime, serving the same
//! tiny response whatever way it gets its connections.
//!
//! ```text
//! bench-worker reuseport ADDR     bind ADDR with SO_REUSEPORT and accept (the no-hand-off ceiling)
//! bench-worker inherited          accept on the LISTEN_FDS sockets (handover --mode shared)
//! bench-worker scm                receive accepted fds, one per byte, on inherited fd "scm"
//! bench-worker prefork            receive connections from `handover serve --mode prefork`
//! ```
#![allow(clippy::print_stderr)]

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
            Some("scm") => scm().await,
            Some("prefork") => prefork().await,
            _ => Err("usage: bench-worker reuseport ADDR | inherited | scm | prefork".into()),
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
            if stream.write_all(bench_servers::RESPONSE).await.is_err() {
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
        tokio::task::spawn_local(async move { serve(&mut stream).await });
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

async fn scm() -> Res {
    let mut inherited = handover::inherited()?;
    let socket = inherited.take("scm").ok_or("no scm socket")?;
    let unix = UnixStream::from(OwnedFd::from(socket));
    unix.set_nonblocking(true)?;
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
                    tokio::task::spawn_local(async move { serve(&mut stream).await });
                }
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    })
    .await
}

async fn prefork() -> Res {
    use handover_worker::tokio::{Event, Worker};
    run_local(async {
        let capacity = std::env::var("WORKER_CAPACITY").ok().and_then(|c| c.parse().ok());
        let mut worker = Worker::from_env(capacity.unwrap_or(65_536)).await?;
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
