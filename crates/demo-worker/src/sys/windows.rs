//! Windows: TCP listeners only (the library hands over no `AF_UNIX` sockets there). Windows has
//! no `SIGTERM`: `handover serve` asks a shared-mode worker to stop by ending the channel it
//! started it with (see `shared` in main.rs); run by hand, Ctrl-Break, Ctrl-C or the console
//! closing stop it too.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};

pub(crate) struct Listener(tokio::net::TcpListener);

impl Listener {
    pub(crate) fn new(l: handover::Socket) -> Result<Listener, Box<dyn std::error::Error>> {
        Ok(Listener(l.try_into()?))
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<socket2::Socket>> {
        self.0.poll_accept(cx).map(|r| r.and_then(|(s, _)| s.into_std()).map(socket2::Socket::from))
    }
}

pub(crate) fn stop_requested() -> io::Result<impl Future<Output = ()>> {
    let (mut brk, mut int, mut close) = (ctrl_break()?, ctrl_c()?, ctrl_close()?);
    Ok(async move {
        tokio::select! {
            _ = brk.recv() => {}
            _ = int.recv() => {}
            _ = close.recv() => {}
        }
    })
}

/// Windows sends sockets inline, declared by the frame: there is no stray descriptor to send.
pub(crate) fn send_with_stray_fds(_payload: &[u8], _count: usize) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "stray descriptors are a Unix notion"))
}
