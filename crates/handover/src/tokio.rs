//! The tokio API: the same channel, with `async` send and receive.
//!
//! [`Channel`] here mirrors [`crate::Channel`] (same messages, same errors, same wire
//! format: one end may be blocking and the other async). It is a thin layer over the same
//! non-blocking engine, driven by the tokio reactor instead of `poll`.
//!
//! Both `send` and `recv` are cancel-safe in the sense that matters for a byte stream: a
//! cancelled `recv` loses nothing (the next call continues where it stopped), and a cancelled
//! `send` delivers its message whole or not at all.

use std::path::Path;

use tokio::sync::Mutex;

use crate::channel::{RemoveOnDrop, RxState, TxState};
use crate::error::During;
use crate::sys::async_io::{AsyncChannel, AsyncListener};
use crate::{Error, Message, PeerCredentials, PeerPolicy, Result, SocketRef};

/// An async [`crate::Channel`], registered with the tokio runtime it was created in.
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn demo() -> handover::Result<()> {
/// use handover::AsSocketRef;
/// let (ours, theirs) = handover::Channel::pair()?;
/// let ours = handover::tokio::Channel::try_from(ours)?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// ours.send(b"listener", &[listener.as_socket_ref()]).await?;
/// # drop(theirs); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Channel {
    io: AsyncChannel,
    peer: PeerCredentials,
    tx: Mutex<TxState>,
    rx: Mutex<RxState>,
}

impl TryFrom<crate::Channel> for Channel {
    type Error = Error;

    /// Registers the channel with the current tokio runtime (call from within one).
    fn try_from(ch: crate::Channel) -> Result<Channel> {
        let (raw, peer, tx, rx) = ch.into_parts();
        Ok(Channel { io: AsyncChannel::new(raw)?, peer, tx: Mutex::new(tx), rx: Mutex::new(rx) })
    }
}

impl TryFrom<Channel> for crate::Channel {
    type Error = Error;

    /// Deregisters the channel; it can then be used with the blocking API.
    fn try_from(ch: Channel) -> Result<crate::Channel> {
        let (tx, rx) = (ch.tx.into_inner(), ch.rx.into_inner());
        let mut out = crate::Channel::from_raw(ch.io.into_inner(), ch.peer);
        out.restore(tx, rx);
        Ok(out)
    }
}

/// Writes the leftover of a cancelled send back into the state when a send future is dropped.
struct SendGuard<'a> {
    tx: &'a mut TxState,
    done: bool,
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.tx.cancel();
        }
    }
}

impl Channel {
    /// Two connected async endpoints.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = crate::Channel::pair()?;
        Ok((Channel::try_from(a)?, Channel::try_from(b)?))
    }

    /// Connects to a listener at `path` whose owner `policy` allows.
    pub async fn connect_with_policy(path: impl AsRef<Path>, policy: &PeerPolicy) -> Result<Channel> {
        // connect(2) on a Unix socket does not wait for the peer to accept, but a Windows
        // rendezvous waits for the listener's hello: keep that off the runtime's threads.
        let (path, policy) = (path.as_ref().to_owned(), policy.clone());
        let ch = tokio::task::spawn_blocking(move || crate::Channel::connect_with_policy(path, &policy))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("connect task failed: {e}"))))??;
        Channel::try_from(ch)
    }

    /// Connects to a listener at `path` owned by the same user.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Channel> {
        Channel::connect_with_policy(path, &PeerPolicy::SameUser).await
    }

    /// The peer's credentials.
    pub fn peer_credentials(&self) -> PeerCredentials {
        self.peer
    }

    /// As [`crate::Channel::set_recv_limits`].
    pub async fn set_recv_limits(&self, max_payload: usize, max_sockets: usize) {
        self.rx.lock().await.set_limits(Some(max_payload), Some(max_sockets));
    }

    /// Sends `bytes` and lends `sockets` to the peer.
    pub async fn send(&self, bytes: &[u8], sockets: &[SocketRef<'_>]) -> Result<()> {
        let mut tx = self.tx.lock().await;
        tx.begin(self.io.raw(), bytes, sockets)?;
        let mut guard = SendGuard { tx: &mut tx, done: false };
        let res = self.io.writable(|raw| guard.tx.advance(raw, sockets, false)).await;
        guard.done = res.is_ok();
        res.map_err(|e| Error::from_os(e, During::Transfer))
    }

    /// Receives the next message.
    pub async fn recv(&self) -> Result<Message> {
        let mut msg = Message::default();
        self.recv_into(&mut msg).await?;
        Ok(msg)
    }

    /// Receives into `msg`, reusing its allocations (see [`crate::Channel::recv_into`]).
    pub async fn recv_into(&self, msg: &mut Message) -> Result<()> {
        let mut rx = self.rx.lock().await;
        let res = self
            .io
            .readable(|raw| match rx.try_recv(raw, msg, false) {
                Err(Error::Io(e)) => Err(e),
                other => Ok(other),
            })
            .await;
        match res {
            Ok(inner) => inner,
            Err(e) => Err(Error::from_os(e, During::Transfer)),
        }
    }
}

/// An async [`crate::ChannelListener`].
#[derive(Debug)]
pub struct ChannelListener {
    inner: AsyncListener,
    policy: PeerPolicy,
    path: RemoveOnDrop,
}

impl TryFrom<crate::ChannelListener> for ChannelListener {
    type Error = Error;

    /// Registers the listener with the current tokio runtime.
    fn try_from(l: crate::ChannelListener) -> Result<ChannelListener> {
        let (raw, policy, path) = l.into_parts();
        Ok(ChannelListener { inner: AsyncListener::new(raw)?, policy, path })
    }
}

impl ChannelListener {
    /// Binds at `path` (see [`crate::ChannelListener::bind`]).
    pub fn bind(path: impl AsRef<Path>) -> Result<ChannelListener> {
        ChannelListener::try_from(crate::ChannelListener::bind(path)?)
    }

    /// Replaces the peer policy.
    pub fn set_policy(&mut self, policy: PeerPolicy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Leaves the rendezvous file in place when dropped (see
    /// [`crate::ChannelListener::keep_path`]).
    pub fn keep_path(&mut self) -> &mut Self {
        self.path.0 = None;
        self
    }

    /// Waits for a connection and checks the peer (see [`crate::ChannelListener::accept`]).
    pub async fn accept(&self) -> Result<Channel> {
        let raw = self.inner.accept().await.map_err(|e| Error::from_os(e, During::Accept))?;
        let peer = self.policy.check(&raw)?;
        Channel::try_from(crate::Channel::from_raw(raw, peer))
    }
}
