//! The blocking channel: a connected endpoint that carries messages made of bytes and sockets.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::During;
use crate::frame::{self, Batch, Decoded, Decoder};
use crate::socket::{Socket, SocketRef};
use crate::sys::{self, Interest, RawChannel};
use crate::{Error, Result};

/// Default limit on the payload of one received message.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// Default limit on the sockets in one received message.
pub const DEFAULT_MAX_SOCKETS: usize = 4096;

/// A received message: its bytes and the sockets that came with it, in the order sent.
#[derive(Debug, Default)]
pub struct Message {
    /// The payload.
    pub bytes: Vec<u8>,
    /// The sockets, now owned by this process.
    pub sockets: Vec<Socket>,
}

/// Who is on the other end of a channel, as the operating system reports it.
///
/// # Platform-specific behavior
///
/// On Linux every field comes from `SO_PEERCRED`, recorded when the connection was made. On
/// macOS the uid/gid come from `getpeereid` and the pid from `LOCAL_PEERPID`; other BSDs report
/// no pid. For a [`Channel::pair`] both ends report the process that created the pair.
///
/// On Windows the pid is the process sockets are duplicated for (`WSADuplicateSocketW` needs
/// it): the spawned child, the parent, or the peer of a rendezvous, whose hello must agree with
/// the pid the pipe reports. Windows has no uid: `uid` is the relative id (last
/// sub-authority) of the current user's SID, reported for every peer because the pipe's
/// owner-only DACL admits no other user, and `gid` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id.
    pub pid: Option<u32>,
    /// The peer's effective user id.
    pub uid: Option<u32>,
    /// The peer's effective group id.
    pub gid: Option<u32>,
}

/// Which peers a rendezvous accepts. Checked on both sides: by the listener on `accept` and
/// by the connecting side on `connect` (so a squatted rendezvous owned by another user is
/// refused too).
#[derive(Clone, Default)]
pub enum PeerPolicy {
    /// Only a process running as the same (effective) user. The default.
    #[default]
    SameUser,
    /// Any process that can reach the rendezvous.
    AnyUser,
    /// Only processes running as one of these user ids.
    Uids(Vec<u32>),
    /// A predicate of your own.
    Custom(Arc<dyn Fn(&PeerCredentials) -> bool + Send + Sync>),
}

impl PeerPolicy {
    /// Whether `peer` may talk to us.
    pub fn allows(&self, peer: &PeerCredentials) -> bool {
        match self {
            PeerPolicy::SameUser => peer.uid.is_some() && peer.uid == Some(sys::current_uid()),
            PeerPolicy::AnyUser => true,
            PeerPolicy::Uids(uids) => peer.uid.is_some_and(|u| uids.contains(&u)),
            PeerPolicy::Custom(f) => f(peer),
        }
    }

    /// Checks the peer of a fresh connection.
    pub(crate) fn check(&self, raw: &RawChannel) -> Result<PeerCredentials> {
        let peer = sys::peer_credentials(raw)?;
        if !self.allows(&peer) {
            return Err(Error::PeerRejected { pid: peer.pid, uid: peer.uid });
        }
        Ok(peer)
    }
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerPolicy::SameUser => f.write_str("SameUser"),
            PeerPolicy::AnyUser => f.write_str("AnyUser"),
            PeerPolicy::Uids(u) => f.debug_tuple("Uids").field(u).finish(),
            PeerPolicy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What [`Channel::try_send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendStatus {
    /// All of it is written.
    Written,
    /// It is on its way whole: its sockets and first bytes went out, and the rest waits in
    /// the channel for [`Channel::try_flush`] (or the next send).
    Buffered,
    /// The channel had no room: nothing of it was sent, and nothing of it will arrive.
    Full,
}

/// Sending half of the engine shared by the blocking and the tokio channel.
///
/// A message is encoded into `buf` as frames; `advance` writes it with each batch of sockets
/// attached to the first byte of its frame. A send abandoned midway (timeout, cancelled
/// future) leaves the stream at a frame boundary: the rest of a frame whose sockets already
/// went out is kept and written first by the next send, followed by an abort frame if more
/// frames of the message were due. So a message is delivered whole or not at all.
#[derive(Debug, Default)]
pub(crate) struct TxState {
    buf: Vec<u8>,
    batches: Vec<Batch>,
    /// Bytes at the start of `buf` left over from an abandoned send.
    leftover: usize,
    pos: usize,
    next_batch: usize,
}

impl TxState {
    /// Encodes one message after any leftover bytes. Where the transport carries sockets
    /// inline (Windows), their records for the channel's peer are written into the frames here.
    pub(crate) fn begin(
        &mut self,
        raw: &RawChannel,
        payload: &[u8],
        sockets: &[SocketRef<'_>],
    ) -> Result<()> {
        self.encode(payload, sockets.len(), |out, first, count| {
            let batch = sockets[first..first + count].iter().map(|s| s.0);
            sys::encode_inline(raw, out, batch).map_err(Error::Io)
        })
    }

    fn encode(
        &mut self,
        payload: &[u8],
        sockets: usize,
        inline: impl FnMut(&mut Vec<u8>, usize, usize) -> Result<()>,
    ) -> Result<()> {
        if payload.len() > frame::MAX_PAYLOAD {
            return Err(Error::TooLarge {
                what: "payload bytes",
                len: payload.len(),
                max: frame::MAX_PAYLOAD,
            });
        }
        if sockets > frame::MAX_HANDLES {
            return Err(Error::TooLarge { what: "sockets", len: sockets, max: frame::MAX_HANDLES });
        }
        self.leftover = self.buf.len();
        self.pos = 0;
        self.batches.clear();
        self.next_batch = 0;
        let res = frame::encode_message::<Error>(
            &mut self.buf,
            &mut self.batches,
            payload,
            sockets,
            sys::HANDLES_PER_FRAME,
            inline,
        );
        if res.is_err() {
            // Nothing of this message goes out: keep only the leftover.
            self.buf.truncate(self.leftover);
            self.batches.clear();
        }
        res
    }

    /// Writes until the message is out (`Ok`) or the socket would block (`WouldBlock`). With
    /// `block`, writes wait inside the system call instead.
    pub(crate) fn advance(
        &mut self,
        raw: &RawChannel,
        sockets: &[SocketRef<'_>],
        block: bool,
    ) -> io::Result<()> {
        while self.pos < self.buf.len() {
            let (end, attach) = match self.batches.get(self.next_batch) {
                Some(b) if b.offset == self.pos => {
                    let end =
                        self.batches.get(self.next_batch + 1).map_or(self.buf.len(), |n| n.offset);
                    (end, &sockets[b.first..b.first + b.count])
                }
                Some(b) => (b.offset, &[][..]),
                None => (self.buf.len(), &[][..]),
            };
            let n = sys::send(raw, &self.buf[self.pos..end], attach.iter().map(|s| s.0), block)?;
            if !attach.is_empty() {
                self.next_batch += 1;
            }
            self.pos += n;
        }
        // Where writes complete in the background (Windows), wait until the last one has.
        sys::flush(raw)?;
        self.buf.clear();
        self.pos = 0;
        self.leftover = 0;
        Ok(())
    }

    /// Abandons the message in flight, keeping the stream consistent (see the type's docs).
    /// Returns whether the message will still arrive whole: its first bytes and all its
    /// sockets went out, and the rest is kept to be written first by the next send or flush.
    pub(crate) fn cancel(&mut self) -> bool {
        let keep_end = if self.pos <= self.leftover {
            self.leftover
        } else {
            self.batches.iter().map(|b| b.offset).find(|&o| o >= self.pos).unwrap_or(self.buf.len())
        };
        let abort = self.pos > self.leftover && keep_end < self.buf.len();
        let whole = self.pos > self.leftover && !abort;
        self.buf.truncate(keep_end);
        self.buf.drain(..self.pos.min(keep_end));
        if abort {
            self.buf.extend_from_slice(&frame::abort_frame());
        }
        self.pos = 0;
        self.leftover = self.buf.len();
        self.batches.clear();
        self.next_batch = 0;
        whole
    }
}

/// Receiving half of the engine shared by the blocking and the tokio channel.
#[derive(Debug)]
pub(crate) struct RxState {
    decoder: Decoder<sys::OwnedSocket>,
    /// Read buffer: starts small (control messages are small, and a supervisor holds one per
    /// worker), doubles up to [`MAX_CHUNK`] while reads fill it.
    chunk: Vec<u8>,
    arrived: Vec<sys::OwnedSocket>,
    out: Decoded<sys::OwnedSocket>,
    failed: Option<String>,
}

impl Default for RxState {
    fn default() -> RxState {
        RxState {
            decoder: Decoder::new(limits(DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_SOCKETS)),
            chunk: vec![0; MIN_CHUNK],
            arrived: Vec::new(),
            out: Decoded::default(),
            failed: None,
        }
    }
}

const MIN_CHUNK: usize = 4 * 1024;
const MAX_CHUNK: usize = 64 * 1024;

fn limits(max_payload: usize, max_sockets: usize) -> frame::Limits {
    frame::Limits {
        max_payload,
        max_handles: max_sockets,
        max_handles_per_frame: sys::HANDLES_PER_FRAME,
        inline_handle_bytes: sys::INLINE_HANDLE_BYTES,
    }
}

impl RxState {
    pub(crate) fn set_limits(&mut self, max_payload: Option<usize>, max_sockets: Option<usize>) {
        let old = self.decoder.limits();
        let new =
            limits(max_payload.unwrap_or(old.max_payload), max_sockets.unwrap_or(old.max_handles));
        self.decoder.set_limits(new);
    }

    /// Reads until one whole message is decoded into `out`, or the socket would block
    /// (`Err(Error::Io(WouldBlock))`). Any other error is final for the channel: every socket
    /// received and not yet delivered is closed.
    ///
    /// With `block`, the read waits inside the system call instead.
    pub(crate) fn try_recv(
        &mut self,
        raw: &RawChannel,
        out: &mut Message,
        block: bool,
    ) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::Protocol(format!("channel unusable after an earlier error: {why}")));
        }
        match self.try_recv_inner(raw, block) {
            Ok(()) => {
                std::mem::swap(&mut out.bytes, &mut self.out.payload);
                self.out.payload.clear();
                out.sockets.extend(self.out.handles.drain(..).map(Socket::from_sys));
                Ok(())
            }
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(Error::Io(e)),
            Err(e) => {
                self.failed = Some(e.to_string());
                self.decoder = Decoder::new(self.decoder.limits());
                self.out = Decoded::default();
                self.arrived.clear();
                Err(e)
            }
        }
    }

    fn try_recv_inner(&mut self, raw: &RawChannel, block: bool) -> Result<()> {
        loop {
            if self.decoder.next_into(&mut self.out)? {
                // Inline socket records (Windows) become sockets now; each is owned as soon
                // as it exists, so an error here closes the ones made before it.
                let inline = std::mem::take(&mut self.out.inline);
                sys::sockets_from_inline(&inline, &mut self.out.handles)
                    .map_err(|e| Error::from_os(e, During::OpenSockets))?;
                return Ok(());
            }
            let room = self.decoder.limits().max_handles;
            let got = sys::recv(raw, &mut self.chunk, &mut self.arrived, room, block)?;
            let received = self.arrived.len();
            self.decoder.push_handles(self.arrived.drain(..))?;
            if got.truncated {
                return Err(Error::Truncated { received });
            }
            if got.len == 0 {
                self.decoder.finish()?;
                return Err(Error::PeerClosed);
            }
            self.decoder.push_bytes(&self.chunk[..got.len]);
            if got.len == self.chunk.len() && self.chunk.len() < MAX_CHUNK {
                self.chunk.resize(self.chunk.len() * 2, 0);
            }
        }
    }
}

/// A connected endpoint that carries messages made of bytes plus sockets, between two processes.
///
/// Sending lends the sockets: the receiver gets its own duplicates and the sender keeps its
/// copies (drop them if the receiver is now the only one meant to use them). Messages arrive
/// whole and in order. `send` and `recv` may be called from different threads at once; two
/// concurrent sends are serialised.
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// use handover::{AsSocketRef, Channel};
/// let (ours, theirs) = Channel::pair()?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// ours.send(b"http", &[listener.as_socket_ref()])?;
/// let msg = theirs.recv()?;
/// assert_eq!(msg.bytes, b"http");
/// let listener = std::net::TcpListener::try_from(msg.sockets.into_iter().next().unwrap())?;
/// println!("now also listening on {}", listener.local_addr()?);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Channel {
    raw: RawChannel,
    peer: PeerCredentials,
    tx: Mutex<TxState>,
    rx: Mutex<RxState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the state half-updated in a way that
    // matters more than the panic itself; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Channel {
    pub(crate) fn from_raw(raw: RawChannel, peer: PeerCredentials) -> Channel {
        Channel { raw, peer, tx: Mutex::default(), rx: Mutex::default() }
    }

    /// For `unix::ChannelExt` and `windows::ChannelExt`.
    pub(crate) fn raw(&self) -> &RawChannel {
        &self.raw
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn into_parts(self) -> (RawChannel, PeerCredentials, TxState, RxState) {
        let tx = self.tx.into_inner().unwrap_or_else(|p| p.into_inner());
        let rx = self.rx.into_inner().unwrap_or_else(|p| p.into_inner());
        (self.raw, self.peer, tx, rx)
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn restore(&mut self, tx: TxState, rx: RxState) {
        self.tx = Mutex::new(tx);
        self.rx = Mutex::new(rx);
    }

    /// Two connected endpoints: keep one, give the other to a child process (see
    /// [`Command::channel`](crate::Command::channel), which does this for you).
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = sys::pair()?;
        let peer_a = sys::peer_credentials(&a)?;
        let peer_b = sys::peer_credentials(&b)?;
        Ok((Channel::from_raw(a, peer_a), Channel::from_raw(b, peer_b)))
    }

    /// Connects to a [`ChannelListener`] bound at `path`, accepting it only if its owner is the
    /// same user as ours.
    pub fn connect(path: impl AsRef<Path>) -> Result<Channel> {
        Channel::connect_with_policy(path, &PeerPolicy::SameUser)
    }

    /// Connects to a [`ChannelListener`] bound at `path`, checking the listener's owner
    /// against `policy`.
    pub fn connect_with_policy(path: impl AsRef<Path>, policy: &PeerPolicy) -> Result<Channel> {
        let raw = sys::connect(path.as_ref())?;
        let peer = policy.check(&raw)?;
        Ok(Channel::from_raw(raw, peer))
    }

    /// The peer's credentials, read when the connection was made.
    pub fn peer_credentials(&self) -> PeerCredentials {
        self.peer
    }

    /// Limits what one received message may carry: payload bytes and sockets (defaults
    /// [`DEFAULT_MAX_PAYLOAD`] and [`DEFAULT_MAX_SOCKETS`]). A message over a limit is an error
    /// and every socket that came with it is closed. Applies to frames read from now on.
    ///
    /// # Platform-specific behavior
    ///
    /// On Unix the kernel enforces the socket limit per frame of up to 253 sockets: the
    /// control buffer only has room for that many, and the rest are discarded
    /// ([`Error::Truncated`]).
    pub fn set_recv_limits(&self, max_payload: usize, max_sockets: usize) {
        lock(&self.rx).set_limits(Some(max_payload), Some(max_sockets));
    }

    /// Sends `bytes` and lends `sockets` to the peer, blocking until all of it is written.
    ///
    /// More than 253 sockets are sent in batches and arrive together as one message.
    pub fn send(&self, bytes: &[u8], sockets: &[SocketRef<'_>]) -> Result<()> {
        self.send_until(bytes, sockets, None)
    }

    /// Like [`send`](Channel::send), giving up after `timeout` ([`Error::TimedOut`]). A message
    /// that timed out is delivered whole or not at all.
    pub fn send_timeout(
        &self,
        bytes: &[u8],
        sockets: &[SocketRef<'_>],
        timeout: Duration,
    ) -> Result<()> {
        self.send_until(bytes, sockets, Some(Instant::now() + timeout))
    }

    fn send_until(
        &self,
        bytes: &[u8],
        sockets: &[SocketRef<'_>],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let mut tx = lock(&self.tx);
        tx.begin(&self.raw, bytes, sockets)?;
        loop {
            // Without a deadline, wait inside the system call; with one, poll for it.
            match tx.advance(&self.raw, sockets, deadline.is_none()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match sys::wait(&self.raw, Interest::Writable, deadline) {
                        Ok(true) => continue,
                        Ok(false) => {
                            tx.cancel();
                            return Err(Error::TimedOut);
                        }
                        Err(e) => {
                            tx.cancel();
                            return Err(e.into());
                        }
                    }
                }
                Err(e) => {
                    tx.cancel();
                    return Err(Error::from_os(e, During::Transfer));
                }
            }
        }
    }

    /// Sends without waiting for room. The message is delivered whole or not at all:
    /// [`SendStatus::Written`] or [`SendStatus::Buffered`] when it is on its way,
    /// [`SendStatus::Full`] when the channel had no room and nothing of it will arrive.
    ///
    /// `Buffered` means every socket and the first bytes went out; the rest is kept and
    /// written, before anything else, by the next send of any kind or by
    /// [`try_flush`](Channel::try_flush). An event loop that must never block (a supervisor
    /// writing to workers that may stop reading) calls `try_send`, keeps what was `Full` for
    /// later, and calls `try_flush` until it returns `Ok(true)`.
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// use handover::SendStatus;
    /// let (a, _b) = handover::Channel::pair()?;
    /// match a.try_send(b"ping", &[])? {
    ///     SendStatus::Written => {}
    ///     SendStatus::Buffered => { /* call a.try_flush() until it says Ok(true) */ }
    ///     SendStatus::Full => { /* keep the message and try again later */ }
    ///     _ => {}
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Platform-specific behavior
    ///
    /// On Windows a write that the pipe could not complete at once finishes in the background
    /// (`Buffered`); `try_flush` or the next send completes it, and must be called from the
    /// same thread before that thread exits (Windows cancels a thread's pending I/O then).
    pub fn try_send(&self, bytes: &[u8], sockets: &[SocketRef<'_>]) -> Result<SendStatus> {
        let mut tx = lock(&self.tx);
        tx.begin(&self.raw, bytes, sockets)?;
        match tx.advance(&self.raw, sockets, false) {
            Ok(()) => Ok(SendStatus::Written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Ok(if tx.cancel() { SendStatus::Buffered } else { SendStatus::Full })
            }
            Err(e) => {
                tx.cancel();
                Err(Error::from_os(e, During::Transfer))
            }
        }
    }

    /// Writes what earlier sends left unwritten (see [`try_send`](Channel::try_send)) without
    /// waiting: `Ok(true)` when nothing is left.
    pub fn try_flush(&self) -> Result<bool> {
        let mut tx = lock(&self.tx);
        // Between sends the state holds only leftover bytes, with no sockets to attach.
        match tx.advance(&self.raw, &[], false) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tx.cancel();
                Ok(false)
            }
            Err(e) => {
                tx.cancel();
                Err(Error::from_os(e, During::Transfer))
            }
        }
    }

    /// Receives the next message, blocking until it has arrived whole.
    ///
    /// Returns [`Error::PeerClosed`] when the peer has closed the channel between messages.
    pub fn recv(&self) -> Result<Message> {
        let mut msg = Message::default();
        self.recv_until(&mut msg, None)?;
        Ok(msg)
    }

    /// Like [`recv`](Channel::recv), giving up after `timeout` ([`Error::TimedOut`]; nothing is
    /// lost, a later call picks up where this one stopped).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message> {
        let mut msg = Message::default();
        self.recv_until(&mut msg, Some(Instant::now() + timeout))?;
        Ok(msg)
    }

    /// Receives into `msg`, reusing its allocations: the payload replaces `msg.bytes`, the
    /// sockets are appended to `msg.sockets`. For loops that receive many messages.
    pub fn recv_into(&self, msg: &mut Message) -> Result<()> {
        self.recv_until(msg, None)
    }

    /// Receives a message if one has arrived whole, without waiting: `Ok(None)` when there is
    /// nothing (or only part of a message) to read yet. It never waits.
    ///
    /// For event loops that read a channel opportunistically instead of waiting on it; a later
    /// call (of any receive method) picks up where this one stopped.
    pub fn try_recv(&self) -> Result<Option<Message>> {
        let mut msg = Message::default();
        Ok(self.try_recv_into(&mut msg)?.then_some(msg))
    }

    /// Like [`try_recv`](Channel::try_recv), into `msg` (see [`recv_into`](Channel::recv_into)):
    /// `Ok(true)` when a message was received, `Ok(false)` when none is there whole yet.
    pub fn try_recv_into(&self, msg: &mut Message) -> Result<bool> {
        let mut rx = lock(&self.rx);
        match rx.try_recv(&self.raw, msg, false) {
            Ok(()) => Ok(true),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(Error::Io(e)) => Err(Error::from_os(e, During::Transfer)),
            Err(e) => Err(e),
        }
    }

    fn recv_until(&self, msg: &mut Message, deadline: Option<Instant>) -> Result<()> {
        let mut rx = lock(&self.rx);
        loop {
            match rx.try_recv(&self.raw, msg, deadline.is_none()) {
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sys::wait(&self.raw, Interest::Readable, deadline)? {
                        return Err(Error::TimedOut);
                    }
                }
                Err(Error::Io(e)) => return Err(Error::from_os(e, During::Transfer)),
                other => return other,
            }
        }
    }
}

/// A rendezvous where processes connect to get a [`Channel`].
///
/// On Unix it is a Unix-domain socket at a path (created with mode `0600`, removed on drop)
/// or, on Linux, an abstract name (see `unix::ChannelListenerExt`). Every connecting
/// peer is checked against the listener's [`PeerPolicy`] (by default: same user only).
///
/// # Platform-specific behavior
///
/// On Windows the path names a file (created new, readable by the current user only, removed
/// on drop) that holds the name of a named pipe with 128 random bits in it and a 256-bit
/// secret; [`Channel::connect`] reads it, opens the pipe and proves it knows the secret in a
/// hello, and both sides exchange pids. The pipe admits local clients of the current user only
/// (owner-only DACL, `PIPE_REJECT_REMOTE_CLIENTS`). A path that is itself a pipe name
/// (`\\.\pipe\name`) binds that pipe directly, with no secret: the DACL is then the only
/// gate. A peer without the secret is refused with [`Error::PeerRejected`].
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// let listener = handover::ChannelListener::bind("/run/user/1000/app.sock")?;
/// let channel = listener.accept()?;
/// println!("peer pid {:?}", channel.peer_credentials().pid);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChannelListener {
    inner: sys::RawListener,
    policy: PeerPolicy,
    #[allow(dead_code)] // held for its Drop
    path: RemoveOnDrop,
}

/// Removes the rendezvous file when the listener goes away.
#[derive(Debug)]
pub(crate) struct RemoveOnDrop(pub(crate) Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl ChannelListener {
    /// Binds at `path`. Fails with `AddrInUse` if something exists there (remove a stale
    /// socket file first).
    pub fn bind(path: impl AsRef<Path>) -> Result<ChannelListener> {
        let path = path.as_ref();
        let inner = sys::bind(path)?;
        let path = RemoveOnDrop(Some(path.to_owned()));
        Ok(ChannelListener { inner, policy: PeerPolicy::SameUser, path })
    }

    #[allow(dead_code)] // Used by the OS extension modules, which not every OS has.
    pub(crate) fn from_raw(inner: sys::RawListener) -> ChannelListener {
        ChannelListener { inner, policy: PeerPolicy::SameUser, path: RemoveOnDrop(None) }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn into_parts(self) -> (sys::RawListener, PeerPolicy, RemoveOnDrop) {
        (self.inner, self.policy, self.path)
    }

    /// Replaces the peer policy (default [`PeerPolicy::SameUser`]).
    pub fn set_policy(&mut self, policy: PeerPolicy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Leaves the rendezvous file in place when the listener is dropped (by default
    /// [`bind`](ChannelListener::bind)'s path is removed then). For a path that may name
    /// another listener by then, such as one a newer process renamed over it: remove it
    /// yourself if it is still yours.
    pub fn keep_path(&mut self) -> &mut Self {
        self.path.0 = None;
        self
    }

    /// Waits for a connection and checks the peer. A refused peer is disconnected and
    /// reported as [`Error::PeerRejected`]; call `accept` again for the next one.
    pub fn accept(&self) -> Result<Channel> {
        let raw = sys::accept(&self.inner).map_err(|e| Error::from_os(e, During::Accept))?;
        let peer = self.policy.check(&raw)?;
        Ok(Channel::from_raw(raw, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn a_listener_removes_its_path_when_dropped_unless_told_to_keep_it() {
        let dir = std::env::temp_dir();
        let path = |what: &str| dir.join(format!("handover-keep-{}-{what}", std::process::id()));
        let (removed, kept) = (path("removed"), path("kept"));
        drop(ChannelListener::bind(&removed).unwrap());
        assert!(!removed.exists(), "{} is still there", removed.display());
        let mut listener = ChannelListener::bind(&kept).unwrap();
        listener.keep_path();
        drop(listener);
        assert!(kept.exists(), "{} was removed", kept.display());
        std::fs::remove_file(&kept).unwrap();
    }

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Channel>();
        assert_send_sync::<ChannelListener>();
        assert_send_sync::<Message>();
        assert_send_sync::<PeerPolicy>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn try_recv_never_waits() {
        let (a, b) = Channel::pair().unwrap();
        assert!(b.try_recv().unwrap().is_none());
        a.send(b"one", &[]).unwrap();
        a.send(b"two", &[]).unwrap();
        let mut msg = Message::default();
        assert!(b.try_recv_into(&mut msg).unwrap());
        assert_eq!(msg.bytes, b"one");
        assert_eq!(b.try_recv().unwrap().unwrap().bytes, b"two");
        assert!(b.try_recv().unwrap().is_none());
        // Nothing was lost by the empty reads: the blocking API carries on.
        a.send(b"three", &[]).unwrap();
        assert_eq!(b.recv().unwrap().bytes, b"three");
        drop(a);
        assert!(matches!(b.try_recv(), Err(Error::PeerClosed)));
    }

    #[test]
    fn try_send_never_waits_and_never_duplicates() {
        // Fill the channel with messages carrying a socket until it says full, then read
        // everything: each message it accepted arrives once, whole, in order, and none of
        // those it refused arrives at all.
        let (a, b) = Channel::pair().unwrap();
        let keep = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload = [7u8; 700];
        let mut accepted = 0u32;
        let mut refused = 0u32;
        let started = Instant::now();
        while refused < 3 {
            let mut msg = payload.to_vec();
            msg.extend_from_slice(&accepted.to_le_bytes());
            match a.try_send(&msg, &[crate::AsSocketRef::as_socket_ref(&keep)]).unwrap() {
                SendStatus::Written | SendStatus::Buffered => accepted += 1,
                SendStatus::Full => refused += 1,
            }
            assert!(accepted < 1_000_000, "the channel never filled");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "try_send waited");
        assert!(accepted > 0);
        let mut flushed = a.try_flush().unwrap();
        let mut got = 0u32;
        let mut msg = Message::default();
        while got < accepted {
            msg.sockets.clear();
            if b.try_recv_into(&mut msg).unwrap() {
                assert_eq!(msg.bytes.len(), payload.len() + 4);
                assert_eq!(msg.bytes[payload.len()..], got.to_le_bytes());
                assert_eq!(msg.sockets.len(), 1);
                got += 1;
            } else {
                flushed = a.try_flush().unwrap();
            }
            assert!(started.elapsed() < Duration::from_secs(10), "stuck at {got}/{accepted}");
        }
        assert!(flushed || a.try_flush().unwrap());
        assert!(b.try_recv().unwrap().is_none(), "a refused message arrived");
        // The channel carries on normally.
        a.send(b"after", &[]).unwrap();
        assert_eq!(b.recv().unwrap().bytes, b"after");
    }

    #[test]
    fn cancel_between_frames_appends_an_abort() {
        let mut tx = TxState::default();
        tx.encode(b"p", 300, |_, _, _| Ok(())).unwrap();
        let second = tx.batches[1].offset;
        // Pretend the first frame went out whole.
        tx.pos = second;
        tx.cancel();
        assert_eq!(tx.buf, frame::abort_frame());
        // The next message goes after the abort frame.
        tx.encode(b"q", 0, |_, _, _| Ok(())).unwrap();
        assert_eq!(&tx.buf[..frame::HEADER_LEN], &frame::abort_frame());
        assert_eq!(tx.leftover, frame::HEADER_LEN);
    }

    #[test]
    fn cancel_inside_a_frame_keeps_its_tail() {
        let mut tx = TxState::default();
        tx.encode(b"hello", 1, |_, _, _| Ok(())).unwrap();
        let total = tx.buf.len();
        tx.pos = 3;
        tx.cancel();
        assert_eq!(tx.buf.len(), total - 3);
        let mut tx = TxState::default();
        tx.encode(b"hello", 0, |_, _, _| Ok(())).unwrap();
        tx.cancel(); // nothing written: nothing kept
        assert!(tx.buf.is_empty());
    }
}
