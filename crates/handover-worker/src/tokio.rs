//! The async worker (feature `tokio`): the same protocol as [`crate::Worker`], on tokio.
//!
//! ```no_run
//! use handover_worker::tokio::{Event, Worker};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut worker = Worker::from_env(64).await?;
//! while let Event::Connection(conn) = worker.recv().await? {
//!     tokio::spawn(async move {
//!         let (mut stream, finisher) = conn.into_tcp()?;
//!         let mut buf = [0u8; 1024];
//!         let _ = stream.read(&mut buf).await?;
//!         stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n").await?;
//!         finisher.finish().await?; // the response is complete: FINISHED first,
//!         stream.shutdown().await?; // then the client sees the end
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     });
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use handover::tokio::Channel;
use handover::Message;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{WorkerMessage, ID_MSG_LEN};
use crate::{Decoded, Error, Hello};

/// What the supervisor asked for.
#[derive(Debug)]
pub enum Event {
    /// A connection, already acknowledged.
    Connection(Connection),
    /// No more connections will come: finish the ones you hold, then exit 0.
    Drain,
    /// Exit now.
    Stop,
}

/// The worker's end of the control channel, on tokio.
#[derive(Debug)]
pub struct Worker {
    channel: Arc<Channel>,
    finished: mpsc::UnboundedSender<Report>,
    reporter: tokio::task::JoinHandle<()>,
    msg: Message,
    names: Vec<Arc<str>>,
}

async fn send(channel: &Channel, m: WorkerMessage) -> Result<(), Error> {
    let mut buf = [0u8; ID_MSG_LEN];
    let n = m.encode(&mut buf);
    channel.send(&buf[..n], &[]).await?;
    Ok(())
}

impl Worker {
    /// Takes the inherited control channel and says hello with `capacity`. Call it from within
    /// a tokio runtime; it spawns a task that reports finished connections.
    pub async fn from_env(capacity: u32) -> Result<Worker, Error> {
        Worker::from_env_with(&Hello::new(capacity)).await
    }

    /// Like [`from_env`](Worker::from_env), saying `hello` (capacity and heartbeats; see
    /// [`Hello::heartbeat`]: a tokio worker whose tasks serve the connections can answer).
    pub async fn from_env_with(hello: &Hello) -> Result<Worker, Error> {
        let inherited = handover::inherited()?;
        let channel = inherited.channel.ok_or(Error::NotSupervised)?;
        Worker::from_channel_with(Channel::try_from(channel)?, hello).await
    }

    /// Like [`from_env`](Worker::from_env), over a channel you already have.
    pub async fn from_channel(channel: Channel, capacity: u32) -> Result<Worker, Error> {
        Worker::from_channel_with(channel, &Hello::new(capacity)).await
    }

    /// Like [`from_env_with`](Worker::from_env_with), over a channel you already have.
    pub async fn from_channel_with(channel: Channel, hello: &Hello) -> Result<Worker, Error> {
        let channel = Arc::new(channel);
        send(&channel, hello.message()).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
        let ch = Arc::clone(&channel);
        let reporter = tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let sent = send(&ch, WorkerMessage::Finished(r.id)).await;
                // FINISHED is out (or the supervisor is gone): now the client may see the end.
                if let Some(socket) = r.socket {
                    let _ = socket.into_socket2().shutdown(std::net::Shutdown::Write);
                }
                if let Some(done) = r.done {
                    let _ = done.send(sent.as_ref().map_err(|e| e.to_string()).map(drop));
                }
                if sent.is_err() {
                    return;
                }
            }
        });
        Ok(Worker { channel, finished: tx, reporter, msg: Message::default(), names: Vec::new() })
    }

    /// After a drain: waits until every finished connection has been reported (call it once all
    /// connections and their finishers are dropped), then gives the channel up.
    pub async fn close(self) {
        drop(self.finished);
        let _ = self.reporter.await;
    }

    /// Waits for the next event. A connection is acknowledged before it is returned; a PING
    /// is answered here and not returned.
    pub async fn recv(&mut self) -> Result<Event, Error> {
        let c = loop {
            self.msg.sockets.clear();
            self.channel.recv_into(&mut self.msg).await?;
            match crate::decode(&mut self.msg, &mut self.names)? {
                Decoded::Connection(c) => break c,
                Decoded::Ping(nonce) => send(&self.channel, WorkerMessage::Pong(nonce)).await?,
                Decoded::Drain => return Ok(Event::Drain),
                Decoded::Stop => return Ok(Event::Stop),
            }
        };
        send(&self.channel, WorkerMessage::Ack(c.id)).await?;
        Ok(Event::Connection(Connection {
            id: c.id,
            listener: c.listener,
            peer: c.peer,
            socket: Some(c.socket),
            finisher: Finisher { tx: Some(self.finished.clone()), id: c.id },
        }))
    }
}

/// What the reporting task does for one connection, in this order: write FINISHED; shut the
/// socket down for writing and close it, if it has it; say so on `done`, if asked.
#[derive(Debug)]
struct Report {
    id: u64,
    socket: Option<handover::Socket>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Reports its connection finished: with [`finish`](Finisher::finish), or when dropped.
///
/// When the response is complete, report it finished *before* ending the stream: FINISHED,
/// then `shutdown()`, then drop the stream (see [`crate::Finisher`] for why the order
/// matters). `finish().await` returns once the report is written. A plain drop leaves the
/// report to the worker's reporting task, which writes it soon after, so the order with the
/// stream is then not guaranteed.
#[derive(Debug)]
pub struct Finisher {
    tx: Option<mpsc::UnboundedSender<Report>>,
    id: u64,
}

impl Finisher {
    /// Reports the connection finished and waits until the report is written. Cancel-safe:
    /// if this future is dropped, the report is still written.
    pub async fn finish(mut self) -> Result<(), Error> {
        let (done, written) = oneshot::channel();
        self.report(None, Some(done));
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Finish(e)),
            Err(_) => Err(Error::Finish("the worker's reporting task has stopped".to_owned())),
        }
    }

    fn report(
        &mut self,
        socket: Option<handover::Socket>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Report { id: self.id, socket, done });
        }
    }

    fn take(&mut self) -> Finisher {
        Finisher { tx: self.tx.take(), id: self.id }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        self.report(None, None);
    }
}

/// An acknowledged connection. Dropping it hands it to the worker's reporting task, which
/// reports it finished, then shuts it down for writing and closes it (in that order).
#[derive(Debug)]
pub struct Connection {
    id: u64,
    listener: Arc<str>,
    peer: Option<SocketAddr>,
    socket: Option<handover::Socket>,
    finisher: Finisher,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let socket = self.socket.take();
        self.finisher.report(socket, None);
    }
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

    /// The socket (convert it with `tokio::net::TcpStream::try_from`) and its finisher. When
    /// the response is complete: `finisher.finish().await`, then `shutdown().await` the stream
    /// (the client sees the end at once), then drop it.
    pub fn into_parts(mut self) -> (handover::Socket, Finisher) {
        let socket = self.socket.take().expect("socket present until drop");
        (socket, self.finisher.take())
    }

    /// The connection as a [`tokio::net::TcpStream`], and its finisher (use them as for
    /// [`into_parts`](Connection::into_parts)).
    ///
    /// Cheaper than `TcpStream::try_from` on [`into_parts`](Connection::into_parts)'s socket:
    /// the supervisor's CONNECTION message already says this is an accepted TCP connection
    /// (it has an IP peer), so the socket's kind is not asked of the kernel again (three
    /// system calls). Fails, closing the connection, for a connection from a Unix-socket
    /// listener, outside a tokio runtime, and if the stream cannot be made non-blocking or
    /// registered with the runtime.
    pub fn into_tcp(self) -> std::io::Result<(tokio::net::TcpStream, Finisher)> {
        let (socket, finisher) = crate::tcp_parts(self.peer, self.into_parts())?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(std::io::Error::other("into_tcp: call it from within a tokio runtime"));
        }
        socket.set_nonblocking(true)?;
        Ok((tokio::net::TcpStream::from_std(socket)?, finisher))
    }
}
