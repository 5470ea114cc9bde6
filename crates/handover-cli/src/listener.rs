//! The supervisor's listening sockets: bound once at start, accepted without registering each
//! accepted connection with the reactor (it only passes through this process).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::task::{Context, Poll};

use anyhow::{bail, Context as _, Result};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::cli::Policy;
use crate::config::{ListenAddr, ListenerConfig};

/// A bound, listening socket and what the status report says about it.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) name: String,
    pub(crate) socket: Socket,
    /// The address actually bound (port 0 resolved).
    pub(crate) local: String,
    pub(crate) policy: Policy,
    /// Removed when the listener closes.
    unix_path: Option<PathBuf>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds every listener, failing on the first that cannot be bound (port in use, …).
pub(crate) fn bind_all(listeners: &[ListenerConfig]) -> Result<Vec<Bound>> {
    listeners.iter().map(bind).collect()
}

fn bind(l: &ListenerConfig) -> Result<Bound> {
    let what = || format!("cannot listen on {} ({})", l.addr, l.name);
    let (socket, unix_path) = match &l.addr {
        ListenAddr::Tcp(addr) => {
            let socket =
                Socket::new(Domain::for_address(*addr), Type::STREAM, None).with_context(what)?;
            socket.set_reuse_address(true).with_context(what)?;
            socket.bind(&SockAddr::from(*addr)).map_err(explain).with_context(what)?;
            (socket, None)
        }
        ListenAddr::Unix(path) => {
            remove_stale_unix_socket(path).with_context(what)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None).with_context(what)?;
            socket
                .bind(&SockAddr::unix(path).with_context(what)?)
                .map_err(explain)
                .with_context(what)?;
            (socket, Some(path.clone()))
        }
    };
    socket.listen(l.backlog).with_context(what)?;
    let local = match &l.addr {
        ListenAddr::Tcp(_) => match socket.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(a) => format!("tcp://{a}"),
            None => l.addr.to_string(),
        },
        ListenAddr::Unix(_) => l.addr.to_string(),
    };
    Ok(Bound { name: l.name.clone(), socket, local, policy: l.policy, unix_path })
}

fn explain(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::AddrInUse => io::Error::new(e.kind(), "address already in use"),
        io::ErrorKind::PermissionDenied => {
            io::Error::new(e.kind(), "permission denied (ports below 1024 need privileges)")
        }
        _ => e,
    }
}

/// A Unix socket file nobody listens on is left over from an earlier run: remove it. A live
/// one, or anything that is not a socket, is an error.
fn remove_stale_unix_socket(path: &std::path::Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !crate::sys::is_socket_file(&meta) {
        bail!("{} exists and is not a socket", path.display());
    }
    match Socket::new(Domain::UNIX, Type::STREAM, None)?.connect(&SockAddr::unix(path)?) {
        Ok(()) => bail!("address already in use (another process listens on {})", path.display()),
        Err(_) => std::fs::remove_file(path).context("cannot remove stale socket file")?,
    }
    Ok(())
}

/// A non-blocking listener driven by the tokio reactor.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) index: u16,
    pub(crate) name: String,
    pub(crate) local: String,
    pub(crate) policy: Policy,
    pub(crate) accepted: u64,
    io: crate::sys::AsyncListener,
    _bound_path: Option<PathBuf>,
}

/// An accepted connection, still a plain (blocking) socket never registered with the reactor.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) listener: u16,
    pub(crate) socket: Socket,
    pub(crate) peer: Option<SocketAddr>,
}

impl Listener {
    pub(crate) fn new(index: u16, mut bound: Bound) -> io::Result<Listener> {
        let socket = bound.socket.try_clone()?;
        let path = bound.unix_path.take();
        let (name, local, policy) = (bound.name.clone(), bound.local.clone(), bound.policy);
        drop(bound);
        Ok(Listener {
            index,
            name,
            local,
            policy,
            accepted: 0,
            io: crate::sys::AsyncListener::new(socket)?,
            _bound_path: path,
        })
    }

    fn accepted(&self, (socket, addr): (Socket, SockAddr)) -> Accepted {
        // Non-blocking mode belongs to the listener's file description only: accept4 without
        // SOCK_NONBLOCK gives a blocking socket, which is what workers expect.
        Accepted { listener: self.index, socket, peer: addr.as_socket() }
    }

    /// Accepts one connection without waiting (`Ok(None)` when the backlog is empty).
    pub(crate) fn try_accept(&self) -> io::Result<Option<Accepted>> {
        match self.io.try_accept() {
            Ok(a) => Ok(Some(self.accepted(a))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        self.io.poll_accept(cx).map(|r| r.map(|a| self.accepted(a)))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self._bound_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Waits for a connection on any of `listeners`, starting the scan at `*start` (rotated for
/// fairness between listeners).
pub(crate) async fn accept_any(listeners: &[Listener], start: &mut usize) -> io::Result<Accepted> {
    std::future::poll_fn(|cx| {
        let n = listeners.len();
        for k in 0..n {
            let i = (*start + k) % n;
            if let Poll::Ready(r) = listeners[i].poll_accept(cx) {
                *start = (i + 1) % n;
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
    .await
}

/// Accept errors that only concern one connection (retry at once) rather than the process
/// (back off: out of descriptors, memory).
pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Closes a connection with a reset (`SO_LINGER` 0) so the client cannot mistake a cut-off
/// response for a complete one.
pub(crate) fn reset(socket: Socket) {
    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
    drop(socket);
}
