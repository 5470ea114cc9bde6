//! Write a worker for the `handover` supervisor's prefork mode in a few lines.
//!
//! The supervisor accepts connections and hands each one to a worker over the worker's
//! control channel (the protocol is in `docs/protocol.md`, and [`protocol`] has its
//! messages). [`Worker`] speaks that protocol for you: it announces the worker's capacity,
//! acknowledges each connection as it arrives (so the supervisor can forget it), and reports
//! it finished when the [`Connection`] is dropped.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use handover_worker::{Event, Worker};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut worker = Worker::from_env(1)?;
//! loop {
//!     match worker.recv()? {
//!         Event::Connection(mut conn) => {
//!             let mut buf = [0u8; 1024];
//!             let _ = conn.read(&mut buf)?;
//!             conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")?;
//!         } // dropped: reported finished, then shut down and closed
//!         Event::Drain | Event::Stop => break,
//!     }
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![warn(unreachable_pub)]

pub mod protocol;
#[cfg(feature = "tokio")]
pub mod tokio;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use handover::{Channel, Message};

use crate::protocol::{ProtocolError, SupervisorMessage, WorkerMessage, ID_MSG_LEN};

/// What went wrong talking to the supervisor.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// This process was not started by a supervisor in prefork mode (no inherited channel).
    NotSupervised,
    /// The channel failed (the supervisor went away, a frame was malformed, …).
    Channel(handover::Error),
    /// The supervisor sent something this build does not understand.
    Protocol(ProtocolError),
    /// A CONNECTION came without exactly one socket.
    MissingSocket,
    /// FINISHED could not be written (the supervisor went away, or the worker was closed).
    Finish(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotSupervised => f.write_str(
                "no control channel inherited: run this worker under `handover serve --mode prefork`",
            ),
            Error::Channel(e) => write!(f, "control channel: {e}"),
            Error::Protocol(e) => write!(f, "control channel: {e}"),
            Error::MissingSocket => f.write_str("control channel: a connection came without its socket"),
            Error::Finish(e) => write!(f, "control channel: cannot report the connection finished: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Channel(e) => Some(e),
            Error::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

impl From<handover::Error> for Error {
    fn from(e: handover::Error) -> Error {
        Error::Channel(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::other(e)
    }
}

/// What the supervisor asked for.
#[derive(Debug)]
pub enum Event {
    /// A connection, already acknowledged: it is this worker's to serve.
    Connection(Connection),
    /// No more connections will come: finish the ones you hold, then exit 0.
    Drain,
    /// Exit now.
    Stop,
}

/// What a worker says in its HELLO: its capacity, and whether it answers heartbeats.
///
/// ```no_run
/// # fn main() -> Result<(), handover_worker::Error> {
/// // A worker whose loop calls `recv` while other threads serve: it can answer PINGs promptly.
/// let worker = handover_worker::Worker::from_env_with(handover_worker::Hello::new(16).heartbeat(true))?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    capacity: u32,
    heartbeat: bool,
}

impl Hello {
    /// Up to `capacity` connections at once (at least 1), no heartbeats.
    pub fn new(capacity: u32) -> Hello {
        Hello { capacity: capacity.max(1), heartbeat: false }
    }

    /// Declares that this worker answers the supervisor's PINGs promptly, so that a missing
    /// answer (within the supervisor's `--heartbeat-timeout`) means it hangs and it is
    /// replaced. `recv` answers PINGs by itself: declare it only if your loop calls `recv`
    /// again soon after each connection (other threads or tasks serve them), not if it serves
    /// connections one at a time between calls.
    pub fn heartbeat(&mut self, on: bool) -> &mut Hello {
        self.heartbeat = on;
        self
    }

    pub(crate) fn message(&self) -> WorkerMessage {
        WorkerMessage::Hello {
            capacity: self.capacity,
            pid: std::process::id(),
            heartbeat: self.heartbeat,
        }
    }
}

/// The worker's end of the control channel.
#[derive(Debug)]
pub struct Worker {
    channel: Arc<Channel>,
    msg: Message,
    /// Listener names seen so far, by index: shared, not reallocated per connection.
    names: Vec<Arc<str>>,
}

impl Worker {
    /// Takes the control channel this process inherited and tells the supervisor it is ready
    /// for up to `capacity` connections at once.
    ///
    /// Call it once, early: it takes the inherited descriptors ([`handover::inherited`]).
    pub fn from_env(capacity: u32) -> Result<Worker, Error> {
        Worker::from_env_with(&Hello::new(capacity))
    }

    /// Like [`from_env`](Worker::from_env), saying `hello` (capacity and heartbeats).
    pub fn from_env_with(hello: &Hello) -> Result<Worker, Error> {
        let inherited = handover::inherited()?;
        let channel = inherited.channel.ok_or(Error::NotSupervised)?;
        Worker::from_channel_with(channel, hello)
    }

    /// Like [`from_env`](Worker::from_env), over a channel you already have.
    pub fn from_channel(channel: Channel, capacity: u32) -> Result<Worker, Error> {
        Worker::from_channel_with(channel, &Hello::new(capacity))
    }

    /// Like [`from_env_with`](Worker::from_env_with), over a channel you already have.
    pub fn from_channel_with(channel: Channel, hello: &Hello) -> Result<Worker, Error> {
        let worker =
            Worker { channel: Arc::new(channel), msg: Message::default(), names: Vec::new() };
        worker.send(hello.message())?;
        Ok(worker)
    }

    fn send(&self, m: WorkerMessage) -> Result<(), Error> {
        send(&self.channel, m)
    }

    /// Waits for the next event. A connection is acknowledged before it is returned; a PING
    /// is answered here and not returned.
    pub fn recv(&mut self) -> Result<Event, Error> {
        let c = loop {
            self.msg.sockets.clear();
            self.channel.recv_into(&mut self.msg)?;
            match decode(&mut self.msg, &mut self.names)? {
                Decoded::Connection(c) => break c,
                Decoded::Ping(nonce) => self.send(WorkerMessage::Pong(nonce))?,
                Decoded::Drain => return Ok(Event::Drain),
                Decoded::Stop => return Ok(Event::Stop),
            }
        };
        self.send(WorkerMessage::Ack(c.id))?;
        Ok(Event::Connection(Connection {
            id: c.id,
            listener: c.listener,
            peer: c.peer,
            socket: Some(c.socket.into_socket2()),
            finisher: Finisher { channel: Some(Arc::clone(&self.channel)), id: c.id },
        }))
    }
}

/// A supervisor message as both workers (blocking and tokio) handle it.
pub(crate) enum Decoded {
    Connection(Incoming),
    Drain,
    Stop,
    /// Answered inside `recv`, never returned as an event.
    Ping(u64),
}

/// A CONNECTION, not yet acknowledged.
pub(crate) struct Incoming {
    pub(crate) id: u64,
    pub(crate) listener: Arc<str>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) socket: handover::Socket,
}

/// Parses the message just received into `msg`: a CONNECTION must carry exactly one socket.
pub(crate) fn decode(msg: &mut Message, names: &mut Vec<Arc<str>>) -> Result<Decoded, Error> {
    match SupervisorMessage::decode(&msg.bytes).map_err(Error::Protocol)? {
        SupervisorMessage::Connection(info) => {
            if msg.sockets.len() != 1 {
                return Err(Error::MissingSocket);
            }
            Ok(Decoded::Connection(Incoming {
                id: info.id,
                listener: intern(names, info.listener as usize, info.listener_name),
                peer: info.peer,
                socket: msg.sockets.pop().expect("one socket"),
            }))
        }
        SupervisorMessage::Drain => Ok(Decoded::Drain),
        SupervisorMessage::Stop => Ok(Decoded::Stop),
        SupervisorMessage::Ping(nonce) => Ok(Decoded::Ping(nonce)),
    }
}

/// The shared copy of listener `index`'s name: allocated once per listener, not per connection.
fn intern(names: &mut Vec<Arc<str>>, index: usize, name: &str) -> Arc<str> {
    if names.get(index).is_none_or(|n| **n != *name) {
        if names.len() <= index {
            names.resize(index + 1, Arc::from(""));
        }
        names[index] = Arc::from(name);
    }
    Arc::clone(&names[index])
}

fn send(channel: &Channel, m: WorkerMessage) -> Result<(), Error> {
    let mut buf = [0u8; ID_MSG_LEN];
    let n = m.encode(&mut buf);
    channel.send(&buf[..n], &[])?;
    Ok(())
}

/// Reports its connection finished when dropped (the report is written before `drop`
/// returns).
///
/// Drop it when the response is complete and before ending the stream: FINISHED, then
/// `shutdown(Write)`, then close. A worker that dies after FINISHED has answered its client
/// (the end of the stream still reaches it); one that dies before has not, and the supervisor
/// resets the connection. That order keeps the supervisor's `lost_mid_request` count exact.
#[derive(Debug)]
pub struct Finisher {
    channel: Option<Arc<Channel>>,
    id: u64,
}

impl Finisher {
    fn take(&mut self) -> Finisher {
        Finisher { channel: self.channel.take(), id: self.id }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            // The supervisor may be gone already; nothing useful to do about it here.
            let _ = send(&channel, WorkerMessage::Finished(self.id));
        }
    }
}

/// An acknowledged connection. Read and write it directly; dropping it tells the supervisor
/// it is finished (which frees a slot of the worker's capacity), then shuts it down for
/// writing, so the client sees the end of the response at once, and closes it.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    listener: Arc<str>,
    peer: Option<SocketAddr>,
    socket: Option<socket2::Socket>,
    finisher: Finisher,
}

impl Connection {
    /// The supervisor's id for this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name of the listener it came in on.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The client's address, when it has an IP one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The socket, for options (timeouts, `TCP_NODELAY`).
    pub fn socket(&self) -> &socket2::Socket {
        self.socket.as_ref().expect("socket present until drop")
    }

    /// Splits off the socket. The supervisor is told the connection is finished when the
    /// returned [`Finisher`] is dropped. When the response is complete: drop the finisher,
    /// then shut the socket down for writing (`shutdown(Write)`: the client sees the end at
    /// once, not when the supervisor has read FINISHED, up to 32 ms later), then close it.
    pub fn into_parts(mut self) -> (socket2::Socket, Finisher) {
        let socket = self.socket.take().expect("socket present until drop");
        (socket, self.finisher.take())
    }

    /// The connection as a [`std::net::TcpStream`] (blocking), and its finisher: when the
    /// response is complete, drop the finisher, then shut the stream down and drop it (as for
    /// [`into_parts`](Connection::into_parts)).
    ///
    /// The supervisor's CONNECTION message already says this is an accepted TCP connection (it
    /// has an IP peer), so no system call is made. Fails, closing the connection, for a
    /// connection from a Unix-socket listener.
    pub fn into_tcp(self) -> io::Result<(std::net::TcpStream, Finisher)> {
        tcp_parts(self.peer, self.into_parts())
    }
}

/// The TCP stream of a connection whose CONNECTION message named IP peer `peer`.
fn tcp_parts<S: Into<socket2::Socket>, F>(
    peer: Option<SocketAddr>,
    (socket, finisher): (S, F),
) -> io::Result<(std::net::TcpStream, F)> {
    match peer {
        // The supervisor accepts on stream listeners only, so an IP peer means TCP.
        Some(_) => Ok((std::net::TcpStream::from(socket.into()), finisher)),
        None => {
            drop(finisher);
            drop(socket);
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection came from a Unix-socket listener, not TCP: use into_parts",
            ))
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        drop(self.finisher.take()); // FINISHED is written here
        if let Some(socket) = self.socket.take() {
            let _ = socket.shutdown(std::net::Shutdown::Write);
        } // and closed here
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket().read(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
