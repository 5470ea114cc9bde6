//! Unix: TCP and Unix-socket listeners; `SIGTERM` asks for a stop.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use handover::SocketKind;
use tokio::signal::unix::{signal, SignalKind};

pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub(crate) fn new(l: handover::Socket) -> Result<Listener, Box<dyn std::error::Error>> {
        Ok(match l.kind()? {
            SocketKind::UnixListener => Listener::Unix(l.try_into()?),
            _ => Listener::Tcp(l.try_into()?),
        })
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<socket2::Socket>> {
        match self {
            Listener::Tcp(t) => t
                .poll_accept(cx)
                .map(|r| r.and_then(|(s, _)| s.into_std()).map(socket2::Socket::from)),
            Listener::Unix(u) => u
                .poll_accept(cx)
                .map(|r| r.and_then(|(s, _)| s.into_std()).map(socket2::Socket::from)),
        }
    }
}

pub(crate) fn stop_requested() -> io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        term.recv().await;
    })
}
