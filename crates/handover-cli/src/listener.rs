//! The supervisor's listening sockets: bound once at start (or adopted: from systemd socket
//! activation, or from the previous generation in an upgrade), accepted without registering
//! each accepted connection with the reactor (it only passes through this process).
//!
//! A Unix socket file is removed by the supervisor when it exits for good, not when a listener
//! closes: after an upgrade the file belongs to the next generation.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{ListenAddr, ListenerConfig};
use crate::model::{Policy, ProxyProtocol};

/// A bound, listening socket and what the status report says about it.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) name: String,
    pub(crate) socket: Socket,
    /// The address actually bound (port 0 resolved).
    pub(crate) local: String,
    pub(crate) policy: Policy,
    /// Its connections start with a PROXY header.
    pub(crate) proxy: Option<ProxyProtocol>,
    /// The socket file this supervisor created (and removes when it exits for good); `None`
    /// for TCP and for sockets systemd created.
    pub(crate) unix_path: Option<PathBuf>,
}

impl Bound {
    /// Adopts a listening socket someone else bound (systemd, the previous generation) for the
    /// listener `l`, checking it is a listening stream socket. `owned_path`: a Unix socket file
    /// this supervisor is now responsible for removing.
    pub(crate) fn adopt(
        l: &ListenerConfig,
        socket: handover::Socket,
        owned_path: Option<PathBuf>,
    ) -> Result<Bound> {
        use handover::SocketKind;
        let kind = socket.kind().with_context(|| format!("listener {:?}", l.name))?;
        if !matches!(kind, SocketKind::TcpListener | SocketKind::UnixListener) {
            bail!("listener {:?}: the socket passed for it is a {kind}, not a listening stream socket", l.name);
        }
        let socket = socket.into_socket2();
        let local = describe_local(&socket, &l.addr);
        Ok(Bound {
            name: l.name.clone(),
            socket,
            local,
            policy: l.policy,
            proxy: l.proxy,
            unix_path: owned_path,
        })
    }

    /// Whether this socket listens where `addr` says (a TCP port 0 matches any port).
    pub(crate) fn matches(socket: &handover::Socket, addr: &ListenAddr) -> bool {
        let Ok(s) = socket.try_clone() else { return false };
        let Ok(local) = s.into_socket2().local_addr() else { return false };
        match addr {
            ListenAddr::Tcp(want) => local.as_socket().is_some_and(|got| {
                got.ip() == want.ip() && (want.port() == 0 || got.port() == want.port())
            }),
            ListenAddr::Unix(want) => {
                crate::sys::socket_path(&local).is_some_and(|got| got == want.as_path())
            }
        }
    }
}

fn describe_local(socket: &Socket, addr: &ListenAddr) -> String {
    match addr {
        ListenAddr::Tcp(_) => match socket.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(a) => format!("tcp://{a}"),
            None => addr.to_string(),
        },
        ListenAddr::Unix(_) => addr.to_string(),
    }
}

/// Binds a listener, failing clearly if it cannot be bound (port in use, …), and listens
/// unless `listen` is false (`--listen-when-ready`: see [`listen`]).
pub(crate) fn bind(l: &ListenerConfig, listen_now: bool) -> Result<Bound> {
    let what = || format!("cannot listen on {} ({})", l.addr, l.name);
    let (socket, unix_path) = match &l.addr {
        ListenAddr::Tcp(addr) => {
            let socket =
                Socket::new(Domain::for_address(*addr), Type::STREAM, None).with_context(what)?;
            crate::sys::prepare_tcp_listener(&socket).with_context(what)?;
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
            crate::sys::set_socket_perms(path, &l.perms)
                .with_context(|| format!("cannot set the owner or mode of {}", path.display()))
                .with_context(what)?;
            (socket, Some(path.clone()))
        }
    };
    if listen_now {
        socket.listen(l.backlog).with_context(what)?;
    }
    let local = describe_local(&socket, &l.addr);
    Ok(Bound { name: l.name.clone(), socket, local, policy: l.policy, proxy: l.proxy, unix_path })
}

/// Starts listening on a socket [`bind`] left bound only.
pub(crate) fn listen(socket: &Socket, backlog: i32) -> io::Result<()> {
    socket.listen(backlog)
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
    pub(crate) policy: Policy,
    /// Its connections start with a PROXY header, read before they are handed on.
    pub(crate) proxy: Option<ProxyProtocol>,
    io: crate::sys::AsyncListener,
}

/// An accepted connection, still a plain (blocking) socket never registered with the reactor.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) listener: u16,
    pub(crate) socket: Socket,
    pub(crate) peer: Option<SocketAddr>,
}

impl Listener {
    pub(crate) fn new(index: u16, bound: Bound) -> io::Result<Listener> {
        let Bound { socket, policy, proxy, .. } = bound;
        Ok(Listener { index, policy, proxy, io: crate::sys::AsyncListener::new(socket)? })
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

/// Closes `listeners` for a drain and marks them closed in `status`. First, unless `held`
/// (a new generation being abandoned: the old one serves those clients), it takes every
/// connection the kernel has accepted already, without waiting, and returns them: so closing
/// refuses only clients that arrive later, and resets none.
pub(crate) fn close_for_drain(
    listeners: &mut Vec<Listener>,
    status: &mut [crate::status::ListenerStatus],
    held: bool,
) -> Vec<Accepted> {
    let mut backlog = Vec::new();
    for l in std::mem::take(listeners).iter().filter(|_| !held) {
        loop {
            match l.try_accept() {
                Ok(Some(a)) => backlog.push(a),
                Ok(None) => break,
                Err(err) if is_transient(&err) => continue,
                Err(_) => break,
            }
        }
    }
    for s in status {
        s.open = false;
    }
    backlog
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

/// Backs accepts off while they fail for a reason that concerns the process, not one
/// connection (out of descriptors: `EMFILE`/`ENFILE`; out of memory): clients wait in the
/// kernel's backlog meanwhile, so none is lost, and the loop never spins on the error. Logs
/// the first failure, then at most one line per [`ACCEPT_LOG_EVERY`] with how many followed.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    paused_until: Option<Instant>,
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// How long accepts pause after such an error.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this long about failing accepts.
pub(crate) const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);

impl AcceptErrors {
    /// Records a failed accept on `what` (a listener's or socket's name).
    pub(crate) fn failed(&mut self, what: &str, err: &io::Error) {
        let now = Instant::now();
        self.paused_until = Some(now + ACCEPT_PAUSE);
        if self.logged_at.is_some_and(|t| now.duration_since(t) < ACCEPT_LOG_EVERY) {
            self.unlogged += 1;
            return;
        }
        let also = match std::mem::take(&mut self.unlogged) {
            0 => String::new(),
            n => format!(" ({n} more failures since the last report)"),
        };
        tracing::warn!(
            "{what}: accept failed: {err}{also}; pausing accepts for {ACCEPT_PAUSE:?} \
             (clients wait in the backlog)"
        );
        self.logged_at = Some(now);
    }

    /// Whether accepts are paused now.
    pub(crate) fn paused(&self) -> bool {
        self.paused_until.is_some_and(|t| Instant::now() < t)
    }

    /// When a pause ends, if one is on.
    pub(crate) fn resume_at(&self) -> Option<Instant> {
        self.paused_until.filter(|t| Instant::now() < *t)
    }
}

/// Closes a connection with a reset (`SO_LINGER` 0) so the client cannot mistake a cut-off
/// response for a complete one.
pub(crate) fn reset(socket: Socket) {
    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
    drop(socket);
}
