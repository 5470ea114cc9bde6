//! prefork: the supervisor accepts, workers serve.
//!
//! Ownership of a connection, step by step:
//!
//! 1. The supervisor accepts it and gives it an id.
//! 2. It sends a CONNECTION with the socket to a worker chosen by the listener's policy, and
//!    **keeps its own copy**.
//! 3. The worker sends ACK: from now on the worker may read the request. If the worker dies,
//!    is killed, or REJECTs before this point, the supervisor still holds the untouched
//!    connection and gives it to another worker: nothing accepted is lost.
//! 4. The worker serves it, sends FINISHED and ends the stream itself; the supervisor closes
//!    its copy when it reads FINISHED.
//! 5. A worker that dies between ACK and FINISHED may have consumed the request, which cannot
//!    be replayed at this layer: the supervisor resets those connections (`SO_LINGER` 0, so
//!    the client sees an error, never a truncated response that looks complete) and counts
//!    them as `lost_mid_request`.
//!
//! [`ledger`] keeps those rules, without I/O; this module does the I/O and runs the workers
//! (in a [`Pool`]). Each worker declares a capacity in its HELLO; when every ready worker is
//! full the engine stops accepting and the kernel's backlog holds new clients.
//!
//! When worker channels are read (`Prefork::poll_worker`): the channel of a worker that
//! cannot take a connection now (full, its channel full, starting, draining, dying) is
//! registered with the reactor ([`Prefork::sync_watches`]), so the FINISHED that frees it is
//! read the moment it arrives and the next connection is accepted and dispatched at once. The
//! others are not waited on: a message from a worker with room would wake the supervisor twice
//! per connection (ACK and FINISHED) for nothing urgent. They are read while the supervisor is
//! awake anyway, at most every [`READ_EVERY`] ([`Prefork::read_stale`]); when a worker looks
//! full or stalled to the policy; before answering a status request; on `SIGCHLD` (what a dead
//! worker sent is still readable, and is read before its end of the channel reports closed);
//! on every tick; and every [`SWEEP`] ticks for all workers. Should watching a channel fail
//! (out of resources), channels are read on a timer instead: [`FLUSH`] after a dispatch, then
//! at intervals doubling up to [`FLUSH_MAX`] while reads find nothing, and whenever no worker
//! has room.
//!
//! Nothing here waits: writes to a worker never block (a worker whose channel is full gets no
//! connection until it has taken what it was sent, and control messages queue for it), and
//! exited workers are reaped on `SIGCHLD`. A worker that stops acknowledging (stopped, hung,
//! swamped) gets no new connection once [`STALL_UNACKED`] of its connections have waited
//! [`STALL_AFTER`] with none acknowledged while other workers acknowledged theirs; it is
//! replaced after `--ack-timeout`, or, idle, when it misses a heartbeat
//! (`--heartbeat-timeout`, for workers that declared them).
//!
//! Controls (see [`Pool`] for what they share with shared mode): `--max-requests` counts the
//! connections handed to each worker; at its limit a worker gets no more, is told to drain,
//! and a replacement starts in its slot. `--max-memory` recycles a worker too, but it goes on
//! serving until the replacement has said hello. `--connection-timeout` resets a connection
//! held too long (the [`ledger`] says which) and kills a worker that has not reported it
//! finished [`DEADLINE_GRACE`] later. Scaling down drains the workers of the slots removed.

mod dispatch;
pub(crate) mod ledger;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use handover::{AsSocketRef, Channel, Message, SendStatus};
use handover_worker::protocol::{
    ConnectionInfo, SupervisorMessage, WorkerMessage, CONNECTION_MAX_LEN,
};
use socket2::Socket;
use tracing::{debug, info, warn};

use self::dispatch::{choose, Candidate};
use self::ledger::{ConnId, Ledger, Load, Waiting};
use crate::engine::pool::{
    impl_member, pool_mode_methods, Member, Pool, Proc, ProcState, WorkerId, KILL_GRACE,
};
use crate::engine::{Core, Drained, Engine, ModeStatus};
use crate::listener::{self, Accepted};
use crate::model::Policy;
use crate::restart::Cause;
use crate::status::{Totals, WorkerState, WorkerStatus};
use crate::sys;

/// A worker holding this many unacknowledged connections, none acknowledged while other
/// workers went on acknowledging for [`STALL_AFTER`], gets no new connection until it
/// acknowledges one: so a worker that stops (`SIGSTOP`, a deadlock, a long pause) strands only
/// a few clients until `--ack-timeout` replaces it. Measured against the other workers, not
/// the clock: when no worker acknowledges (the supervisor itself kept the CPU, all are
/// equally busy), none is passed over.
const STALL_UNACKED: u32 = 2;
const STALL_AFTER: Duration = Duration::from_millis(2);
/// How long a worker whose channel refused a connection (full) waits before it is offered
/// another, unless it reads (and answers) meanwhile.
const REFUSED_RETRY: Duration = Duration::from_millis(10);
/// The longest interval between heartbeats (PING) to a worker that declared them; shorter
/// with a short `--heartbeat-timeout` (a quarter of it).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait before reading the channels of workers that may have sent something (they
/// hold connections, or are starting, draining or dying). Bounds how long the supervisor keeps
/// its copy of a finished connection (so, for a worker that does not shut its connections
/// down itself, how late the client sees the end of the stream) and how stale the live counts
/// the policies see are.
const FLUSH: Duration = Duration::from_millis(1);
/// How often, at most, the channel of a worker with room is read while the supervisor is
/// awake anyway (its ACKs and FINISHEDs: the live counts the policies see, the copies of
/// finished connections the supervisor closes). Each read takes whatever arrived meanwhile.
const READ_EVERY: Duration = Duration::from_millis(5);
/// While reads of the active workers' channels find nothing, the interval doubles from
/// [`FLUSH`] up to this, so long-lived idle connections cost a few wake-ups a second, not a
/// thousand; the next dispatch brings it back to [`FLUSH`].
const FLUSH_MAX: Duration = Duration::from_millis(32);
/// Every this many ticks, the channels of idle workers are read too (a worker that closed its
/// channel without exiting, or sent something unasked).
const SWEEP: u32 = 50;
/// How long a worker has, after the supervisor reset a connection it held past
/// `--connection-timeout`, to report that connection finished before it is taken as hung.
pub(crate) const DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// A prefork worker's state, from its [`ProcState`]: spawned, no HELLO yet (`Starting`);
/// said hello (`Ready`); sent DRAIN, finishing its connections, then exiting (`Draining`);
/// killed, its channel not closed yet (`Stopping`).
fn worker_state(state: &ProcState) -> WorkerState {
    match state {
        ProcState::Killed { .. } => WorkerState::Stopping,
        ProcState::Retiring { .. } => WorkerState::Draining,
        ProcState::Ready | ProcState::Recycled(_) => WorkerState::Ready,
        ProcState::Starting => WorkerState::Starting,
    }
}

#[derive(Debug)]
struct Worker {
    proc: Proc,
    channel: Rc<Channel>,
    capacity: u32,
    /// Its channel has bytes or messages it has not taken yet (see [`Prefork::send_control`]):
    /// no connection goes to it until they are written.
    blocked: bool,
    /// Control messages waiting for room in its channel.
    outbox: VecDeque<Vec<u8>>,
    /// When its channel last refused a connection (full): it gets none until it has sent
    /// something since, or [`REFUSED_RETRY`] has passed.
    refused_at: Option<Instant>,
    /// When a dispatch last re-read its channel (a stalled worker is re-read at most every
    /// [`FLUSH`]).
    polled_at: Instant,
    /// It declared heartbeats in its hello.
    heartbeat: bool,
    /// The PING it has not answered yet: nonce and when it was sent.
    ping: Option<(u64, Instant)>,
    next_ping: Instant,
    /// Its channel registered with the reactor, while it cannot take a connection (see
    /// [`Prefork::sync_watches`]): read as soon as something arrives.
    watch: Option<sys::ChannelWatch>,
}

impl_member!(Worker);

impl Worker {
    fn id(&self) -> WorkerId {
        self.proc.id
    }

    fn state(&self, pool: &Pool<Worker>) -> WorkerState {
        worker_state(pool.state(self.id()))
    }

    /// It may take a connection now (but see [`Load::stalled`]).
    fn open(&self, pool: &Pool<Worker>, load: Load) -> bool {
        self.state(pool) == WorkerState::Ready && load.live < self.capacity && !self.blocked
    }

    fn stalled(&self, ledger: &Ledger<Socket>) -> bool {
        ledger.load(self.id()).stalled(ledger.last_ack(), STALL_UNACKED, STALL_AFTER)
    }
}

/// Why a program whose workers never said hello is given up on, and what to do.
fn not_a_worker(prog: &crate::config::ProgramConfig, start: Duration) -> String {
    let msg = format!(
        "{} did not say hello within --start-timeout {start:?}: it does not speak the handover \
         worker protocol (docs/protocol.md), or it needs longer to start (raise --start-timeout). \
         A server that accepts connections by itself runs with --mode shared (or --mode spawn \
         for one process per connection); a Python WSGI or ASGI app runs in prefork as \
         `python3 -m handover_worker wsgi|asgi module:app` (docs/python.md)",
        prog.program.display()
    );
    tracing::error!(program = %prog.name, "{msg}");
    msg
}

/// The prefork mode (see the module docs).
#[derive(Debug)]
pub(crate) struct Prefork {
    pool: Pool<Worker>,
    ledger: Ledger<Socket>,
    policies: Vec<Policy>,
    cursors: Vec<usize>,
    /// Receive buffer for worker messages, reused.
    scratch: Message,
    /// When the active workers' channels are read next (see [`FLUSH`]).
    flush_at: Instant,
    /// The current interval between reads (see [`FLUSH_MAX`]).
    flush_every: Duration,
    ticks: u32,
    next_nonce: u64,
    drain_sent: bool,
    /// Scratch for the policy, reused so a hand-off allocates nothing.
    candidates: Vec<Candidate>,
    /// Workers whose channels the reactor found readable, to read now.
    readable: Vec<WorkerId>,
    /// Channels can be watched (see [`Prefork::sync_watches`]); after registering one failed,
    /// they are read on the [`FLUSH`] timer instead.
    watchable: bool,
}

impl Prefork {
    /// A prefork mode for the program `core` runs (its listeners' policies).
    pub(crate) fn new(core: &Core) -> Prefork {
        Prefork {
            pool: Pool::with(core.prog.workers, "at start or before it said hello", true),
            ledger: Ledger::default(),
            policies: core.listeners.iter().map(|l| l.policy).collect(),
            cursors: vec![0; core.listeners.len()],
            scratch: Message::default(),
            flush_at: Instant::now(),
            flush_every: FLUSH,
            ticks: 0,
            next_nonce: 1,
            drain_sent: false,
            candidates: Vec::new(),
            readable: Vec::new(),
            watchable: true,
        }
    }

    fn any_open(&self) -> bool {
        self.pool.members().iter().any(|w| w.open(&self.pool, self.ledger.load(w.id())))
    }

    fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.pool.get(id)
    }

    fn start_worker(&mut self, core: &mut Core, slot: usize) {
        let mut cmd = crate::engine::command(&core.prog, &core.env);
        cmd.channel();
        self.pool.start(core, slot, &mut cmd, |mut proc| {
            let channel = Rc::new(proc.child.channel.take().expect("spawned with a channel"));
            let now = Instant::now();
            Worker {
                proc,
                channel,
                capacity: 0,
                blocked: false,
                outbox: VecDeque::new(),
                refused_at: None,
                polled_at: now,
                heartbeat: false,
                ping: None,
                next_ping: now,
                watch: None,
            }
        });
    }

    /// Picks the worker for a connection from `listener`, or none.
    fn pick(
        &mut self,
        core: &mut Core,
        listener: u16,
        peer: Option<SocketAddr>,
    ) -> Option<WorkerId> {
        // A worker that looks full may have finished connections we have not read about yet
        // (their clients saw the end already: workers shut connections down themselves).
        // Read those first, so a policy does not pass over a worker that has room. (Only
        // while some worker looks full: then this costs a read per such worker.)
        // The same for a worker that looks stalled (acknowledgements may be unread) or whose
        // channel was full (it may have room now).
        let now = Instant::now();
        let ledger = &self.ledger;
        // (Watched channels too: while the engine is busy accepting, the reactor may not have
        // looked for their readiness yet.)
        let pool = &self.pool;
        let doubtful = pool.ids(|w| {
            let recheck = w.stalled(ledger) && now >= w.polled_at + FLUSH;
            w.state(pool) == WorkerState::Ready
                && (ledger.load(w.id()).live >= w.capacity || w.blocked || recheck)
        });
        for id in doubtful {
            self.poll_worker(core, id);
            self.unblock(core, id);
            if let Some(w) = self.pool.get_mut(id) {
                w.polled_at = now;
            }
        }
        let (ledger, pool) = (&self.ledger, &self.pool);
        self.candidates.clear();
        self.candidates.extend(pool.members().iter().map(|w| {
            let load = ledger.load(w.id());
            Candidate {
                slot: w.proc.slot,
                live: load.live,
                open: w.open(pool, load),
                stalled: w.stalled(ledger),
            }
        }));
        let l = listener as usize;
        let slots = self.pool.slots();
        let i = choose(self.policies[l], &self.candidates, &mut self.cursors[l], peer, slots)?;
        Some(self.pool.members()[i].id())
    }

    fn dispatch(&mut self, core: &mut Core, c: Waiting<Socket>) {
        match self.pick(core, c.listener, c.peer) {
            Some(id) => self.send_connection(core, id, c),
            None => self.ledger.wait(c),
        }
    }

    fn send_connection(&mut self, core: &mut Core, id: WorkerId, c: Waiting<Socket>) {
        let mut buf = [0u8; CONNECTION_MAX_LEN];
        let name = core.listener_name(c.listener);
        let info =
            ConnectionInfo { id: c.id.0, listener: c.listener, listener_name: name, peer: c.peer };
        let n = info.encode(&mut buf);
        let Some(w) = self.pool.get_mut(id) else { return self.ledger.wait_first(c) };
        let limit = w.proc.max_requests;
        // Never waits: a worker whose channel is full gets the connection later, or never.
        match w.channel.try_send(&buf[..n], &[c.socket.as_socket_ref()]) {
            Ok(status @ (SendStatus::Written | SendStatus::Buffered)) => {
                // The rest of the message waits in the channel: nothing more goes to this
                // worker until it is written.
                w.blocked |= status == SendStatus::Buffered;
                let now = Instant::now();
                self.ledger.offered(id, c, now);
                // An ACK and a FINISHED will follow: read soon again.
                self.flush_every = FLUSH;
                self.flush_at = self.flush_at.min(now + FLUSH);
                let offered = self.ledger.load(id).offered;
                if limit.is_some_and(|n| offered >= n) {
                    let why = format!("it was handed {offered} connections (--max-requests)");
                    if self.pool.recycle(core, id, Cause::MaxRequests, &why) {
                        self.send_drain(core, id);
                    }
                }
            }
            Ok(_) => {
                // Full: nothing of it went out. It waits for another worker, and this one
                // takes nothing until its channel has room again.
                w.blocked = true;
                w.refused_at = Some(Instant::now());
                self.ledger.wait_first(c);
            }
            Err(err) => {
                // The message was not delivered (a send fails whole): the connection waits for
                // another worker, and this one's channel is broken.
                self.ledger.wait_first(c);
                let why = format!("control channel send failed: {err}");
                self.pool.kill(core, id, why, Cause::Misbehaved);
            }
        }
    }

    /// Tells a worker to finish what it holds and exit (once).
    fn send_drain(&mut self, core: &mut Core, id: WorkerId) {
        if !self.pool.retire(id) {
            return;
        }
        self.send_control(core, id, &SupervisorMessage::drain());
    }

    /// Sends a control message (DRAIN, PING) without waiting: behind whatever the worker's
    /// channel has not taken yet, in order.
    fn send_control(&mut self, core: &mut Core, id: WorkerId, msg: &[u8]) {
        let Some(w) = self.pool.get_mut(id) else { return };
        if w.blocked {
            w.outbox.push_back(msg.to_vec());
            return self.unblock(core, id);
        }
        match w.channel.try_send(msg, &[]) {
            Ok(SendStatus::Written) => {}
            Ok(SendStatus::Buffered) => w.blocked = true,
            Ok(_) => {
                w.blocked = true;
                w.outbox.push_back(msg.to_vec());
            }
            Err(err) => {
                let why = format!("control channel send failed: {err}");
                self.pool.kill(core, id, why, Cause::Misbehaved)
            }
        }
    }

    /// Writes what a blocked worker's channel could not take before; once all of it is out,
    /// the worker may take connections again.
    fn unblock(&mut self, core: &mut Core, id: WorkerId) {
        let Some(w) = self.pool.get_mut(id) else { return };
        if !w.blocked {
            return;
        }
        // A full channel with nothing of ours pending looks writable to a flush: retry it
        // only once the worker has read something (it sent a message since) or a while later.
        if w.refused_at.is_some_and(|t| t.elapsed() < REFUSED_RETRY) {
            return;
        }
        w.refused_at = None;
        let written = (|| -> handover::Result<bool> {
            if !w.channel.try_flush()? {
                return Ok(false);
            }
            while let Some(m) = w.outbox.front() {
                match w.channel.try_send(m, &[])? {
                    SendStatus::Written => drop(w.outbox.pop_front()),
                    SendStatus::Buffered => {
                        w.outbox.pop_front();
                        return Ok(false);
                    }
                    _ => return Ok(false),
                }
            }
            Ok(true)
        })();
        match written {
            Ok(done) => w.blocked = !done,
            Err(err) => {
                let why = format!("control channel send failed: {err}");
                self.pool.kill(core, id, why, Cause::Misbehaved)
            }
        }
    }

    /// Whether `w` may have sent something: it holds connections, or is starting, draining or
    /// dying.
    fn active(&self, w: &Worker) -> bool {
        self.ledger.load(w.id()).live > 0 || w.state(&self.pool) != WorkerState::Ready || w.blocked
    }

    /// Registers with the reactor the channels of the workers that cannot take a connection
    /// now (full, blocked, starting, draining, dying), so that the message that changes that
    /// (FINISHED, an ACK after a full channel, HELLO) is read the moment it arrives, and
    /// unregisters the others. A worker with room is not watched: its ACKs and FINISHEDs would
    /// wake the supervisor twice per connection, for nothing that cannot wait; they are read
    /// when the supervisor is awake anyway ([`Prefork::read_stale`]) and on its tick.
    fn sync_watches(&mut self, core: &Core) {
        if !self.watchable {
            return;
        }
        let (ledger, pool) = (&self.ledger, &self.pool);
        // Those whose watch is to change: watched and open, or unwatched and not open.
        let change = pool.ids(|w| w.open(pool, ledger.load(w.id())) == w.watch.is_some());
        for id in change {
            let Some(w) = self.pool.get_mut(id) else { continue };
            if w.watch.take().is_some() {
                continue;
            }
            match sys::ChannelWatch::new(&w.channel) {
                Ok(watch) => w.watch = Some(watch),
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::Unsupported {
                        warn!(program = %core.prog.name, "workers' channels are read on a timer from now on: cannot watch one ({e})");
                    }
                    self.watchable = false;
                    for id in self.pool.ids(|w| w.watch.is_some()) {
                        if let Some(w) = self.pool.get_mut(id) {
                            w.watch = None;
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Reads the channels of active workers not read for [`READ_EVERY`]: while the supervisor
    /// is awake anyway, so the live counts the policies see stay fresh without a wake-up.
    fn read_stale(&mut self, core: &mut Core) {
        let now = Instant::now();
        let stale = self.pool.ids(|w| self.active(w) && now >= w.polled_at + READ_EVERY);
        for id in stale {
            self.poll_worker(core, id);
            self.unblock(core, id);
            if let Some(w) = self.pool.get_mut(id) {
                w.polled_at = now;
            }
        }
    }

    /// Reads the channels of the workers that may have sent something (see [`FLUSH`]), and
    /// writes what blocked workers' channels could not take before.
    fn flush(&mut self, core: &mut Core) {
        let ids = self.pool.ids(|w| self.active(w));
        let mut read = 0;
        for id in ids {
            read += self.poll_worker(core, id);
            self.unblock(core, id);
        }
        self.flush_every = if read == 0 { (self.flush_every * 2).min(FLUSH_MAX) } else { FLUSH };
        self.flush_at = Instant::now() + self.flush_every;
    }

    /// Reads every worker's channel.
    fn poll_all(&mut self, core: &mut Core) {
        self.flush_at = Instant::now() + self.flush_every;
        for id in self.pool.ids(|_| true) {
            self.poll_worker(core, id);
        }
    }

    /// Handles every message the worker has sent so far, without waiting. A channel that
    /// closed settles the worker; one that breaks the protocol gets it killed.
    /// Returns how many messages it handled.
    fn poll_worker(&mut self, core: &mut Core, id: WorkerId) -> usize {
        let Some(w) = self.worker(id) else { return 0 };
        let channel = Rc::clone(&w.channel);
        let mut msg = std::mem::take(&mut self.scratch);
        let mut handled = 0;
        while self.worker(id).is_some() {
            msg.sockets.clear(); // closes anything a misbehaving worker sent
            match channel.try_recv_into(&mut msg) {
                Ok(false) => break,
                Ok(true) if !msg.sockets.is_empty() => {
                    let n = msg.sockets.len();
                    let why = format!("sent {n} socket(s); workers never send sockets");
                    self.misbehaved(core, id, why);
                }
                Ok(true) => match WorkerMessage::decode(&msg.bytes) {
                    Ok(m) => self.on_message(core, id, m),
                    Err(err) => self.misbehaved(core, id, format!("sent a bad message: {err}")),
                },
                Err(handover::Error::PeerClosed) => self.cleanup(core, id, "exited"),
                Err(handover::Error::Io(err))
                    if err.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    self.cleanup(core, id, "exited")
                }
                Err(err) => self.misbehaved(core, id, format!("broke the control channel: {err}")),
            }
            handled += 1;
        }
        msg.sockets.clear();
        self.scratch = msg;
        handled
    }

    fn on_message(&mut self, core: &mut Core, id: WorkerId, m: WorkerMessage) {
        let state = worker_state(self.pool.state(id));
        let Some(w) = self.pool.get_mut(id) else { return };
        // It is reading its channel: a connection it refused may fit now.
        w.refused_at = None;
        // Late messages from a worker being killed still count: an ACK or FINISHED that made
        // it out before the kill tells the truth about its connections.
        let now = Instant::now();
        let breach = match m {
            WorkerMessage::Hello { capacity, pid, heartbeat } => {
                if state != WorkerState::Starting {
                    return self.misbehaved(core, id, "sent a second hello".to_owned());
                }
                w.capacity = capacity;
                w.heartbeat = heartbeat;
                w.next_ping = now + HEARTBEAT_EVERY;
                let (slot, spawned) = (w.proc.slot, w.proc.pid);
                info!(program = %core.prog.name, slot, pid = spawned, capacity, heartbeat, "worker ready");
                if pid != spawned {
                    debug!(slot, "worker reports pid {pid}, spawned as {spawned}");
                }
                if let Some(old) = self.pool.mark_ready(id) {
                    // A reload's replacement: connections already sent to the old worker
                    // arrive before the DRAIN, in order.
                    self.send_drain(core, old);
                }
                return;
            }
            WorkerMessage::Ack(cid) => match self.ledger.ack(id, ConnId(cid), now) {
                Ok(latency) => {
                    if let Some(h) = &core.handoff_latency {
                        h.observe(latency.as_secs_f64());
                    }
                    return;
                }
                Err(b) => b,
            },
            WorkerMessage::Finished(cid) => match self.ledger.finish(id, ConnId(cid)) {
                // Our copy: closing it ends the connection for the client if the worker did
                // not end the stream itself.
                Ok(socket) => return drop(socket),
                Err(b) => b,
            },
            WorkerMessage::Reject(cid) => match self.ledger.reject(id, ConnId(cid), now) {
                Ok(()) => return,
                Err(b) => b,
            },
            WorkerMessage::Pong(nonce) => {
                match w.ping {
                    Some((sent, _)) if sent == nonce => w.ping = None,
                    _ => self.misbehaved(
                        core,
                        id,
                        format!("answered heartbeat {nonce}, which it was not sent"),
                    ),
                }
                return;
            }
        };
        self.misbehaved(core, id, breach.to_string());
    }

    /// A worker broke the protocol: it is killed and settled at once (nothing more is read).
    fn misbehaved(&mut self, core: &mut Core, id: WorkerId, why: String) {
        let Some(w) = self.worker(id) else { return };
        if w.state(&self.pool) != WorkerState::Stopping {
            core.totals.misbehaving_killed += 1;
        }
        self.pool.kill(core, id, why, Cause::Misbehaved);
        self.cleanup(core, id, "killed");
    }

    /// The worker is gone: settle its connections now; reaping it and refilling its slot
    /// follow in the pool, once its exit status is known.
    fn cleanup(&mut self, core: &mut Core, id: WorkerId, how: &'static str) {
        let Some(w) = self.pool.take(id) else { return };
        let gone = self.ledger.worker_gone(id);
        let lost = gone.lost.len();
        for socket in gone.lost {
            listener::reset(socket);
        }
        let mut detail = format!(
            ": handled {}, re-dispatched {}, lost mid-request {lost}",
            gone.handled, gone.redispatched
        );
        if gone.timed_out > 0 {
            detail.push_str(&format!(", timed out {}", gone.timed_out));
        }
        self.pool.depart(core, w.into_proc(), how, detail, false);
    }

    /// Sends the PINGs that are due to ready workers that declared heartbeats, and adds those
    /// that have not answered one within `--heartbeat-timeout` to `stuck`. (Draining workers
    /// are not asked: one may stop reading its channel once it has been told to drain.)
    fn heartbeats(&mut self, core: &mut Core, now: Instant, stuck: &mut Vec<(WorkerId, String)>) {
        let timeout = core.prog.timeouts.heartbeat;
        if timeout.is_zero() {
            return;
        }
        let asked =
            |pool: &Pool<Worker>, w: &Worker| w.heartbeat && w.state(pool) == WorkerState::Ready;
        let late = |w: &Worker| w.ping.is_some_and(|(_, at)| now.duration_since(at) > timeout);
        let pool = &self.pool;
        for id in pool.ids(|w| asked(pool, w) && late(w)) {
            self.poll_worker(core, id); // its answer may be there, unread
            if self.worker(id).is_some_and(late) {
                stuck.push((id, format!("did not answer a heartbeat within {timeout:?}")));
            }
        }
        let every = (timeout / 4).min(HEARTBEAT_EVERY);
        let pool = &self.pool;
        for id in pool.ids(|w| asked(pool, w) && w.ping.is_none() && now >= w.next_ping) {
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            if let Some(w) = self.pool.get_mut(id) {
                w.ping = Some((nonce, now));
                w.next_ping = now + every;
            }
            self.send_control(core, id, &SupervisorMessage::ping(nonce));
        }
    }

    /// Once nothing waits and no connection is unacknowledged, a draining program tells its
    /// workers to drain.
    fn drain_step(&mut self, core: &mut Core) {
        // Only once the drain has begun (not merely been asked for: until then the listeners
        // are open and the kernel's backlog has not been taken).
        if core.phase == crate::engine::Phase::Running {
            return;
        }
        if core.gave_up() {
            // No worker that has not said hello yet will: waiting connections are not held
            // for the drain timeout on their account (they are reset just below).
            let starting = self.pool.ids(|w| w.state(&self.pool) == WorkerState::Starting);
            for id in starting {
                self.pool.kill(core, id, "the program was given up on".to_owned(), Cause::Hung);
            }
        }
        let pool = &self.pool;
        let members = pool.members();
        let gave_up = core.gave_up();
        let serving = |w: &Worker| match w.state(pool) {
            WorkerState::Ready => true,
            WorkerState::Starting => !gave_up,
            _ => false,
        };
        if self.ledger.waiting() > 0 && !members.iter().any(serving) {
            // Nobody left to serve what is waiting.
            for socket in self.ledger.take_waiting() {
                core.totals.dropped += 1;
                listener::reset(socket);
            }
        }
        let unacked = members.iter().any(|w| self.ledger.load(w.id()).unacked > 0);
        // (Connections whose PROXY header is being read come to the workers too.)
        if self.drain_sent || self.ledger.waiting() > 0 || unacked || core.proxy_pending > 0 {
            return;
        }
        self.drain_sent = true;
        // A worker that has not said hello holds no connection: it is stopped at once rather
        // than waited for (it may never answer, e.g. in an abandoned upgrade).
        let pool = &self.pool;
        for id in pool.ids(|w| w.state(pool) == WorkerState::Starting) {
            self.pool.kill(core, id, "draining before it said hello".to_owned(), Cause::Hung);
        }
        let pool = &self.pool;
        for id in pool.ids(|w| w.state(pool) == WorkerState::Ready) {
            self.send_drain(core, id);
        }
    }
}

impl Engine for Prefork {
    const KIND: crate::model::Mode = crate::model::Mode::Prefork;
    /// Timer resolution for timeouts and restarts.
    const TICK: Duration = Duration::from_millis(20);

    fn start(&mut self, _core: &mut Core) {}

    fn has_room(&self) -> bool {
        self.ledger.waiting() == 0 && self.any_open()
    }

    fn on_accept(&mut self, core: &mut Core, a: Accepted) {
        let c = self.ledger.admit(a.socket, a.listener, a.peer);
        self.dispatch(core, c);
    }

    fn maintain(&mut self, core: &mut Core) {
        if self.watchable {
            self.read_stale(core);
        } else if Instant::now() >= self.flush_at || !self.any_open() {
            self.flush(core);
        }
        for slot in self.pool.due(core) {
            self.start_worker(core, slot);
        }
        while let Some(c) = self.ledger.next_waiting() {
            match self.pick(core, c.listener, c.peer) {
                Some(id) => self.send_connection(core, id, c),
                None => {
                    self.ledger.wait_first(c);
                    break;
                }
            }
        }
        self.drain_step(core);
        self.sync_watches(core);
    }

    fn wake_at(&self) -> Option<Instant> {
        let timed = !self.watchable && self.pool.members().iter().any(|w| self.active(w));
        timed.then_some(self.flush_at)
    }

    fn on_wake(&mut self, core: &mut Core) {
        self.flush(core);
    }

    fn poll_channels(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Every watched channel is polled, so each registers this task to be woken.
        for w in self.pool.members() {
            if w.watch.as_ref().is_some_and(|watch| watch.poll_readable(cx).is_ready()) {
                self.readable.push(w.id());
            }
        }
        if self.readable.is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    }

    fn on_channels(&mut self, core: &mut Core) {
        let mut ids = std::mem::take(&mut self.readable);
        for &id in &ids {
            self.poll_worker(core, id);
            self.unblock(core, id);
        }
        ids.clear();
        self.readable = ids;
    }

    fn on_child_exit(&mut self, core: &mut Core) {
        // A worker may have died: what it sent first still counts, then its channel reports
        // closed.
        self.poll_all(core);
        self.pool.reap(core);
    }

    fn on_tick(&mut self, core: &mut Core) {
        // Late acknowledgements count before the ack timeout is judged.
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % SWEEP == 0 {
            self.poll_all(core);
        } else {
            self.flush(core);
        }
        let now = Instant::now();
        let ack = core.prog.timeouts.ack;
        let mut stuck: Vec<(WorkerId, String)> = self
            .ledger
            .overdue(now, ack)
            .into_iter()
            .map(|(w, c)| (w, format!("did not acknowledge connection {c} within {ack:?}")))
            .collect();
        let start = core.prog.timeouts.start;
        let mut silent = false;
        for w in self.pool.members() {
            if w.state(&self.pool) == WorkerState::Starting
                && now.duration_since(w.proc.started) > start
            {
                stuck.push((w.id(), format!("did not say hello within {start:?}")));
                silent = true;
            }
        }
        // A program none of whose workers has ever said hello, whose worker runs but stays
        // silent for the whole --start-timeout, most likely does not speak the protocol (a
        // server that accepts by itself): retrying it would only hold clients in the backlog
        // for more start timeouts. It is given up on now, saying what to do.
        if silent && !self.pool.proven() && core.prog.timeouts.crash_limit != 0 && core.running() {
            core.give_up(not_a_worker(&core.prog, start));
        }
        self.heartbeats(core, now, &mut stuck);
        if let Some(timeout) = core.prog.controls.connection_timeout {
            let n = self.ledger.expire(now, timeout, |socket| {
                let _ = sys::abort_connection(socket);
            });
            if n > 0 {
                warn!(program = %core.prog.name, "reset {n} connection(s) held longer than --connection-timeout {timeout:?}");
            }
            for (id, c) in self.ledger.unfinished(now, DEADLINE_GRACE) {
                let why = format!(
                    "did not finish connection {c} within {DEADLINE_GRACE:?} of its reset at --connection-timeout"
                );
                stuck.push((id, why));
            }
        }
        for (id, why) in stuck {
            if self.worker(id).is_some_and(|w| w.state(&self.pool) != WorkerState::Stopping) {
                core.totals.misbehaving_killed += 1;
                self.pool.kill(core, id, why, Cause::Hung);
            }
        }
        // One that passed --max-memory serves on until its replacement says hello (then it
        // drains).
        self.pool.recycle_over_memory(core);
        let pool = &self.pool;
        let overdue = |w: &Worker| {
            pool.state(w.id()).killed().is_some_and(|k| now.duration_since(k.at) > KILL_GRACE)
        };
        for id in pool.ids(overdue) {
            self.cleanup(core, id, "killed");
        }
        self.pool.reap(core);
    }

    pool_mode_methods!();

    fn scale(&mut self, core: &mut Core, n: usize) {
        for id in self.pool.resize(n) {
            match self.worker(id).map(|w| w.state(&self.pool)) {
                // It holds nothing yet: stopped now rather than waited for.
                Some(WorkerState::Starting) => self.pool.kill(
                    core,
                    id,
                    "scaled down before it said hello".to_owned(),
                    Cause::Hung,
                ),
                Some(_) => self.send_drain(core, id),
                None => {}
            }
        }
    }

    fn ready(&mut self, core: &mut Core) -> bool {
        self.flush(core); // hellos
        self.pool.all_ready()
    }

    fn drain(&mut self, core: &mut Core, backlog: Vec<Accepted>) {
        for a in backlog {
            let c = self.ledger.admit(a.socket, a.listener, a.peer);
            self.ledger.wait(c);
        }
        self.pool.drain();
        let (waiting, live) = (self.ledger.waiting(), self.ledger.live() - self.ledger.waiting());
        info!(program = %core.prog.name, waiting, live, "draining");
    }

    fn drained(&mut self, core: &mut Core) -> Drained {
        // Done once every worker is gone and reaped (so how each ended is logged; that takes
        // at most KILL_GRACE after its channel closed).
        self.pool.reap(core);
        if self.pool.is_empty() && self.ledger.waiting() == 0 {
            Drained::Done
        } else if self.pool.only_departed() && self.ledger.waiting() == 0 {
            Drained::Reaping
        } else {
            Drained::Busy
        }
    }

    fn kill_all(&mut self, core: &mut Core) {
        self.pool.kill_all();
        for id in self.pool.ids(|_| true) {
            self.pool.mark_killed(id, "killed at exit", Cause::Exit);
            self.cleanup(core, id, "killed at exit");
        }
        for socket in self.ledger.take_waiting() {
            core.totals.dropped += 1;
            listener::reset(socket);
        }
    }

    fn status(&mut self, core: &mut Core, totals: &mut Totals) -> ModeStatus {
        self.poll_all(core); // counts as of now
        let mut workers: Vec<WorkerStatus> = self
            .pool
            .members()
            .iter()
            .map(|w| {
                let load = self.ledger.load(w.id());
                WorkerStatus {
                    slot: w.proc.slot,
                    pid: Some(w.proc.pid),
                    state: w.state(&self.pool),
                    capacity: self.pool.state(w.id()).was_ready().then_some(w.capacity),
                    live: Some(u64::from(load.live)),
                    handled: Some(load.handled),
                    restarts: self.pool.restarts(w.proc.slot),
                    busy: Some(load.live > 0),
                    rss_bytes: sys::resident_memory(w.proc.pid).ok(),
                    max_requests: w.proc.max_requests,
                }
            })
            .collect();
        workers.extend(self.pool.waiting_rows(core));
        let c = self.ledger.counts();
        totals.dispatched += c.dispatched;
        totals.handled += c.handled;
        totals.redispatched += c.redispatched;
        totals.lost_mid_request += c.lost_mid_request;
        totals.timed_out += c.timed_out;
        ModeStatus {
            workers,
            live: self.ledger.live() as u64,
            reloading: self.pool.reloading(),
            queue: self.ledger.waiting() as u64,
        }
    }
}
