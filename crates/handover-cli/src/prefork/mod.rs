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
//! 4. The worker serves it, closes its copy and sends FINISHED; the supervisor closes its copy,
//!    which is what ends the connection for the client (so the end of a response is only
//!    seen once the worker vouched for it).
//! 5. A worker that dies between ACK and FINISHED may have consumed the request, which cannot
//!    be replayed at this layer: the supervisor resets those connections (`SO_LINGER` 0, so
//!    the client sees an error, never a truncated response that looks complete) and counts
//!    them as `lost_mid_request`.
//!
//! The engine is one task owning all its state. Worker channels are not registered with the
//! reactor: a message from a worker would wake the supervisor, twice per connection (ACK and
//! FINISHED), which at a moderate rate costs more than the hand-off itself. The engine reads
//! them without waiting instead (`Engine::poll_worker`): [`FLUSH`] after a dispatch, then at
//! intervals doubling up to [`FLUSH_MAX`] while reads find nothing, for the workers that hold
//! connections or are starting, draining or dying; whenever no worker
//! appears to have room; before answering a status request; on `SIGCHLD` (what a dead worker
//! sent is still readable, and is read before its end of the channel reports closed); and every
//! [`SWEEP`] ticks for all workers. Each worker declares a capacity in its HELLO; when every
//! ready worker is full the engine stops accepting and the kernel's backlog holds new clients.
//!
//! Nothing here waits: writes to a worker never block (a worker whose channel is full gets no
//! connection until it has taken what it was sent, and control messages queue for it), and
//! exited workers are reaped on `SIGCHLD`. A worker that stops acknowledging (stopped, hung,
//! swamped) gets no new connection once [`STALL_UNACKED`] of its connections have waited
//! [`STALL_AFTER`] with none acknowledged while other workers acknowledged theirs; it is
//! replaced after `--ack-timeout`, or, idle, when it misses a heartbeat
//! (`--heartbeat-timeout`, for workers that declared them).

mod dispatch;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use handover::{AsSocketRef, Channel, Message, SendStatus};
use handover_worker::protocol::{
    kind, ConnectionInfo, SupervisorMessage, WorkerMessage, CONNECTION_MAX_LEN,
};
use socket2::Socket;
use tracing::{debug, error, info, warn};

use self::dispatch::{choose, Candidate};
use crate::child::{self, Death, Restart, Restarts};
use crate::config::{Env, ProgramConfig};
use crate::engine::{Context, Outcome, Phase, Request, Requests};
use crate::exit_codes::ExitCode;
use crate::listener::{self, Accepted, Listener};
use crate::status::{ListenerStatus, ProgramStatus, Totals, WorkerStatus};
use crate::sys::{self, Stop};

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
/// How long a killed worker's channel may stay open before we stop waiting for it; also how
/// long an exited worker may stay unreaped before its slot restarts regardless.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// Timer resolution for timeouts and restarts.
const TICK: Duration = Duration::from_millis(20);
/// Longest wait before reading the channels of workers that may have sent something (they
/// hold connections, or are starting, draining or dying). Bounds how long the supervisor keeps
/// its copy of a finished connection (so, for a worker that does not shut its connections
/// down itself, how late the client sees the end of the stream) and how stale the live counts
/// the policies see are.
const FLUSH: Duration = Duration::from_millis(1);
/// While reads of the active workers' channels find nothing, the interval doubles from
/// [`FLUSH`] up to this, so long-lived idle connections cost a few wake-ups a second, not a
/// thousand; the next dispatch brings it back to [`FLUSH`].
const FLUSH_MAX: Duration = Duration::from_millis(32);
/// Every this many ticks, the channels of idle workers are read too (a worker that closed its
/// channel without exiting, or sent something unasked).
const SWEEP: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WState {
    /// Spawned; no HELLO yet.
    Starting,
    Ready,
    /// Sent DRAIN: finishing its connections, then exiting.
    Draining,
    /// Killed; waiting for its channel to close.
    Dying,
}

impl WState {
    fn name(self) -> &'static str {
        match self {
            WState::Starting => "starting",
            WState::Ready => "ready",
            WState::Draining => "draining",
            WState::Dying => "stopping",
        }
    }
}

#[derive(Debug)]
struct Worker {
    id: u64,
    slot: usize,
    pid: u32,
    child: handover::Child,
    channel: Rc<Channel>,
    state: WState,
    started: Instant,
    ready: bool,
    capacity: u32,
    /// Dispatched and not finished (acknowledged or not).
    live: u32,
    unacked: u32,
    handled: u64,
    killed_at: Option<Instant>,
    kill_reason: Option<String>,
    /// Its channel has bytes or messages it has not taken yet (see [`Engine::send_control`]):
    /// no connection goes to it until they are written.
    blocked: bool,
    /// Control messages waiting for room in its channel.
    outbox: VecDeque<Vec<u8>>,
    /// When its channel last refused a connection (full): it gets none until it has sent
    /// something since, or [`REFUSED_RETRY`] has passed.
    refused_at: Option<Instant>,
    /// While it holds unacknowledged connections: since when none was acknowledged.
    ack_wait_since: Option<Instant>,
    /// When a dispatch last re-read its channel (a stalled worker is re-read at most every
    /// [`FLUSH`]).
    polled_at: Instant,
    /// It declared heartbeats in its hello.
    heartbeat: bool,
    /// The PING it has not answered yet: nonce and when it was sent.
    ping: Option<(u64, Instant)>,
    next_ping: Instant,
}

impl Worker {
    /// It holds connections it has not acknowledged while others did, `last_ack` being the
    /// latest acknowledgement read from any worker (see [`STALL_UNACKED`]).
    fn stalled(&self, last_ack: Instant) -> bool {
        self.unacked >= STALL_UNACKED
            && self
                .ack_wait_since
                .is_some_and(|t| last_ack.saturating_duration_since(t) > STALL_AFTER)
    }

    /// One of its unacknowledged connections was settled (acknowledged or handed back) at
    /// `now`: the wait for the others starts again.
    fn settled_one(&mut self, now: Instant) {
        self.unacked -= 1;
        self.ack_wait_since = (self.unacked > 0).then_some(now);
    }

    /// It may take a connection now (but see [`Worker::stalled`]).
    fn open(&self) -> bool {
        self.state == WState::Ready && self.live < self.capacity && !self.blocked
    }
}

/// A worker whose channel closed or that was killed, until it is reaped: the restart policy
/// needs to know how it ended.
#[derive(Debug)]
struct Exited {
    child: handover::Child,
    pid: u32,
    slot: usize,
    /// Its slot needs a new worker (it was the slot's current or incoming one).
    restart: bool,
    lived: Duration,
    ready: bool,
    /// Why the supervisor killed it, if it did.
    kill_reason: Option<String>,
    /// How its end was noticed ("exited", "killed").
    how: &'static str,
    /// It was told to drain, or the program is draining.
    expected: bool,
    handled: u64,
    redispatched: u64,
    lost: u64,
    since: Instant,
}

#[derive(Debug)]
struct Conn {
    worker: u64,
    socket: Socket,
    acked: bool,
    sent_at: Instant,
    listener: u16,
    peer: Option<SocketAddr>,
}

/// A connection waiting for a worker.
#[derive(Debug)]
struct Pending {
    id: u64,
    socket: Socket,
    listener: u16,
    peer: Option<SocketAddr>,
}

#[derive(Debug, Default)]
struct Slot {
    current: Option<u64>,
    /// A replacement being started by a reload; takes over at its HELLO.
    incoming: Option<u64>,
    start_at: Option<Instant>,
    restarts: Restarts,
    last_exit: Option<String>,
}

struct Engine {
    prog: ProgramConfig,
    env: Rc<Env>,
    listeners: Vec<Listener>,
    listener_status: Vec<ListenerStatus>,
    policies: Vec<crate::cli::Policy>,
    cursors: Vec<usize>,
    next_listener: usize,
    workers: Vec<Worker>,
    slots: Vec<Slot>,
    conns: HashMap<u64, Conn>,
    pending: VecDeque<Pending>,
    next_conn: u64,
    next_worker: u64,
    /// Receive buffer for worker messages, reused.
    scratch: Message,
    /// When the active workers' channels are read next (see [`FLUSH`]).
    flush_at: Instant,
    /// The current interval between reads (see [`FLUSH_MAX`]).
    flush_every: Duration,
    ticks: u32,
    exited: Vec<Exited>,
    /// Exited workers given up on waiting for; reaped when they finally exit.
    zombies: Vec<handover::Child>,
    /// Some worker has said hello since start or the last reload (see [`child::Death`]).
    proven: bool,
    /// When an acknowledgement was last read, from any worker (see [`Worker::stalled`]).
    last_ack: Instant,
    next_nonce: u64,
    totals: Totals,
    phase: Phase,
    drain_sent: bool,
    reload: VecDeque<usize>,
    reloading: Option<usize>,
    accept_errors: listener::AcceptErrors,
    give_up: Option<String>,
    /// Scratch for the policy, reused so a hand-off allocates nothing.
    candidates: Vec<Candidate>,
    /// Not accepting until the supervisor says so (a new generation in an upgrade).
    held: bool,
    handoff_latency: Option<prometheus_client::metrics::histogram::Histogram>,
}

/// Runs a prefork program until it has drained (or gave up).
pub(crate) async fn run(
    prog: ProgramConfig,
    env: Rc<Env>,
    listeners: Vec<Listener>,
    mut requests: Requests,
    ctx: Context,
) -> Outcome {
    let listener_status = listeners
        .iter()
        .map(|l| {
            let policy = Some(crate::cli::policy_name(l.policy));
            ListenerStatus::open(&l.name, &l.local, &prog.name, policy, Some(0))
        })
        .collect();
    let mut e = Engine {
        cursors: vec![0; listeners.len()],
        policies: listeners.iter().map(|l| l.policy).collect(),
        slots: (0..prog.workers).map(|_| Slot::default()).collect(),
        prog,
        env,
        listeners,
        listener_status,
        next_listener: 0,
        workers: Vec::new(),
        conns: HashMap::new(),
        pending: VecDeque::new(),
        next_conn: 1,
        next_worker: 1,
        scratch: Message::default(),
        flush_at: Instant::now(),
        flush_every: FLUSH,
        ticks: 0,
        exited: Vec::new(),
        zombies: Vec::new(),
        proven: false,
        last_ack: Instant::now(),
        next_nonce: 1,
        totals: Totals::default(),
        phase: Phase::Running,
        drain_sent: false,
        reload: VecDeque::new(),
        reloading: None,
        accept_errors: listener::AcceptErrors::default(),
        give_up: None,
        candidates: Vec::new(),
        held: ctx.held,
        handoff_latency: ctx.handoff_latency,
    };
    for slot in 0..e.slots.len() {
        e.spawn_worker(slot);
    }
    let mut exits = match sys::ChildExits::new() {
        Ok(x) => x,
        Err(err) => return Outcome::cannot_watch_children(&err),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests_open = true;
    loop {
        e.maintain();
        if let Some(outcome) = e.finished() {
            return outcome;
        }
        let accepting = e.phase == Phase::Running
            && !e.held
            && e.pending.is_empty()
            && e.has_room()
            && !e.accept_errors.paused();
        let flush = e.needs_flush().then_some(e.flush_at);
        tokio::select! {
            biased;
            req = requests.recv(), if requests_open => match req {
                Some(Request::Kill) => return e.kill_all(),
                Some(req) => e.on_request(req),
                None => {
                    requests_open = false;
                    e.begin_drain();
                }
            },
            _ = exits.recv() => {
                // A worker may have died: what it sent first still counts, then its channel
                // reports closed.
                e.poll_all();
                e.reap_exited();
            }
            r = listener::accept_any(&e.listeners, &mut e.next_listener), if accepting => {
                e.on_accept(r);
            }
            _ = crate::engine::sleep_until(flush) => e.flush(),
            _ = tick.tick() => e.on_tick(),
        }
    }
}

impl Engine {
    fn has_room(&self) -> bool {
        self.workers.iter().any(Worker::open)
    }

    fn index(&self, id: u64) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    fn spawn_worker(&mut self, slot: usize) {
        let mut cmd = child::command(&self.prog, &self.env);
        cmd.env("HANDOVER_SLOT", slot.to_string()).channel();
        let spawned = cmd.spawn().map(|mut c| {
            let ch = c.channel.take().expect("spawned with a channel");
            (c, ch)
        });
        let (child, channel) = match spawned {
            Ok(x) => x,
            Err(err) => {
                error!(program = %self.prog.name, slot, "cannot start worker {}: {err}", self.prog.program.display());
                self.slots[slot].last_exit = Some(format!("could not start: {err}"));
                let death = Death {
                    lived: Duration::ZERO,
                    ready: false,
                    from_outside: false,
                    proven: self.proven,
                };
                self.schedule_restart(slot, death);
                return;
            }
        };
        let id = self.next_worker;
        self.next_worker += 1;
        let channel = Rc::new(channel);
        let pid = child.id();
        debug!(program = %self.prog.name, slot, pid, "worker started");
        self.workers.push(Worker {
            id,
            slot,
            pid,
            child,
            channel,
            state: WState::Starting,
            started: Instant::now(),
            ready: false,
            capacity: 0,
            live: 0,
            unacked: 0,
            handled: 0,
            killed_at: None,
            kill_reason: None,
            blocked: false,
            outbox: VecDeque::new(),
            refused_at: None,
            polled_at: Instant::now(),
            ack_wait_since: None,
            heartbeat: false,
            ping: None,
            next_ping: Instant::now(),
        });
        let s = &mut self.slots[slot];
        if s.current.is_some() {
            s.incoming = Some(id);
        } else {
            s.current = Some(id);
        }
    }

    fn schedule_restart(&mut self, slot: usize, death: Death) {
        if self.phase != Phase::Running {
            return;
        }
        let t = self.prog.timeouts;
        match self.slots[slot].restarts.on_death(death, &t) {
            Restart::After(delay) => {
                self.totals.restarts += 1;
                self.slots[slot].start_at = Some(Instant::now() + delay);
                if self.slots[slot].restarts.crash_looping(&t) {
                    warn!(program = %self.prog.name, slot, "crash-looping: restarting worker in {delay:?}");
                } else if !delay.is_zero() {
                    warn!(program = %self.prog.name, slot, "restarting worker in {delay:?}");
                }
            }
            Restart::GiveUp(n) => {
                let last = self.slots[slot].last_exit.as_deref().unwrap_or_default();
                let start = "at start or before it said hello";
                self.give_up = Some(child::crash_loop(&self.prog, n, start, last));
                self.begin_drain();
            }
        }
    }

    /// Everything that happens without an outside event: restarts that are due, reload steps,
    /// hand-offs of waiting connections, the drain protocol.
    fn maintain(&mut self) {
        let now = Instant::now();
        if now >= self.flush_at || !self.has_room() {
            self.flush();
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].start_at.is_some_and(|t| t <= now) {
                self.slots[slot].start_at = None;
                self.spawn_worker(slot);
            }
        }
        if self.phase == Phase::Running && self.reloading.is_none() {
            if let Some(slot) = self.reload.pop_front() {
                let s = &self.slots[slot];
                if s.current.is_some() && s.incoming.is_none() && s.start_at.is_none() {
                    info!(program = %self.prog.name, slot, "reload: starting a replacement worker");
                    self.reloading = Some(slot);
                    self.spawn_worker(slot);
                }
            }
        }
        while let Some(p) = self.pending.pop_front() {
            match self.pick(p.listener, p.peer) {
                Some(i) => self.send_connection(i, p),
                None => {
                    self.pending.push_front(p);
                    break;
                }
            }
        }
        if matches!(self.phase, Phase::Draining { .. }) && !self.drain_sent {
            if self.workers.iter().all(|w| w.state == WState::Dying || w.state == WState::Draining)
                && !self.pending.is_empty()
            {
                // Nobody left to serve what is waiting.
                for p in self.pending.drain(..) {
                    self.totals.dropped += 1;
                    listener::reset(p.socket);
                }
            }
            if self.pending.is_empty() && self.workers.iter().all(|w| w.unacked == 0) {
                self.drain_sent = true;
                // A worker that has not said hello holds no connection: it is stopped at once
                // rather than waited for (it may never answer, e.g. in an abandoned upgrade).
                let starting: Vec<u64> = self
                    .workers
                    .iter()
                    .filter(|w| w.state == WState::Starting)
                    .map(|w| w.id)
                    .collect();
                for id in starting {
                    self.kill_worker(id, "draining before it said hello".to_owned());
                }
                let ids: Vec<u64> = self
                    .workers
                    .iter()
                    .filter(|w| w.state == WState::Ready)
                    .map(|w| w.id)
                    .collect();
                for id in ids {
                    self.send_drain(id);
                }
            }
        }
    }

    fn finished(&mut self) -> Option<Outcome> {
        let Phase::Draining { deadline } = self.phase else { return None };
        let code = if self.give_up.is_some() { ExitCode::CrashLoop } else { ExitCode::Success };
        // Done once every worker is gone and reaped (so how each ended is logged; that takes
        // at most KILL_GRACE after its channel closed).
        self.reap_exited();
        if self.workers.is_empty() && self.pending.is_empty() && self.exited.is_empty() {
            return Some(Outcome { code, message: self.give_up.clone() });
        }
        let waiting = !self.workers.is_empty() || !self.pending.is_empty();
        if waiting && Instant::now() >= deadline {
            warn!(program = %self.prog.name, "drain timed out: killing {} worker(s)", self.workers.len());
            let mut out = self.kill_all();
            out.code = code.or(ExitCode::DrainTimedOut);
            if out.message.is_none() {
                out.message = Some("drain timed out; remaining workers were killed".to_owned());
            }
            return Some(out);
        }
        None
    }

    fn kill_all(&mut self) -> Outcome {
        for w in &self.workers {
            sys::signal_group(w.pid, Stop::Kill);
        }
        let ids: Vec<u64> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.cleanup(id, "killed at exit");
        }
        for p in self.pending.drain(..) {
            self.totals.dropped += 1;
            listener::reset(p.socket);
        }
        Outcome { code: ExitCode::Success, message: self.give_up.clone() }
    }

    fn pick(&mut self, listener: u16, peer: Option<SocketAddr>) -> Option<usize> {
        // A worker that looks full may have finished connections we have not read about yet
        // (their clients saw the end already: workers shut connections down themselves).
        // Read those first, so a policy does not pass over a worker that has room. (Only
        // while some worker looks full: then this costs a read per such worker.)
        // The same for a worker that looks stalled (acknowledgements may be unread) or whose
        // channel was full (it may have room now).
        let now = Instant::now();
        let recheck = |w: &Worker| w.stalled(self.last_ack) && now >= w.polled_at + FLUSH;
        let doubtful: Vec<u64> = self
            .workers
            .iter()
            .filter(|w| {
                w.state == WState::Ready && (w.live >= w.capacity || w.blocked || recheck(w))
            })
            .map(|w| w.id)
            .collect();
        for id in doubtful {
            self.poll_worker(id);
            self.unblock(id);
            if let Some(i) = self.index(id) {
                self.workers[i].polled_at = now;
            }
        }
        let last_ack = self.last_ack;
        self.candidates.clear();
        self.candidates.extend(self.workers.iter().map(|w| Candidate {
            slot: w.slot,
            live: w.live,
            open: w.open(),
            stalled: w.stalled(last_ack),
        }));
        let l = listener as usize;
        choose(self.policies[l], &self.candidates, &mut self.cursors[l], peer, self.slots.len())
    }

    fn on_accept(&mut self, r: std::io::Result<Accepted>) {
        let a = match r {
            Ok(a) => a,
            Err(err) if listener::is_transient(&err) => return,
            Err(err) => {
                // Out of descriptors or memory: the backlog holds clients while we back off.
                self.accept_errors.failed(&self.prog.name, &err);
                return;
            }
        };
        let p = self.admit(a);
        match self.pick(p.listener, p.peer) {
            Some(i) => self.send_connection(i, p),
            None => self.pending.push_back(p),
        }
    }

    /// Counts an accepted connection and gives it its id.
    fn admit(&mut self, a: Accepted) -> Pending {
        self.count_accept(a.listener);
        let id = self.next_conn;
        self.next_conn += 1;
        Pending { id, socket: a.socket, listener: a.listener, peer: a.peer }
    }

    fn count_accept(&mut self, listener: u16) {
        self.totals.accepted += 1;
        if let Some(l) = self.listeners.get_mut(listener as usize) {
            l.accepted += 1;
        }
        if let Some(s) = self.listener_status.get_mut(listener as usize) {
            s.accepted = Some(s.accepted.unwrap_or(0) + 1);
        }
    }

    fn send_connection(&mut self, i: usize, p: Pending) {
        let mut buf = [0u8; CONNECTION_MAX_LEN];
        let name = self.listener_status.get(p.listener as usize).map_or("", |l| l.name.as_str());
        let n =
            ConnectionInfo { id: p.id, listener: p.listener, listener_name: name, peer: p.peer }
                .encode(&mut buf);
        let w = &self.workers[i];
        let (id, channel) = (w.id, Rc::clone(&w.channel));
        // Never waits: a worker whose channel is full gets the connection later, or never.
        let sent = channel.try_send(&buf[..n], &[p.socket.as_socket_ref()]);
        match sent {
            Ok(status @ (SendStatus::Written | SendStatus::Buffered)) => {
                let now = Instant::now();
                let w = &mut self.workers[i];
                w.live += 1;
                w.unacked += 1;
                if w.unacked == 1 {
                    w.ack_wait_since = Some(now);
                }
                // The rest of the message waits in the channel: nothing more goes to this
                // worker until it is written.
                w.blocked |= status == SendStatus::Buffered;
                self.totals.dispatched += 1;
                // An ACK and a FINISHED will follow: read soon again.
                self.flush_every = FLUSH;
                self.flush_at = self.flush_at.min(now + FLUSH);
                let conn = Conn {
                    worker: id,
                    socket: p.socket,
                    acked: false,
                    sent_at: now,
                    listener: p.listener,
                    peer: p.peer,
                };
                self.conns.insert(p.id, conn);
            }
            Ok(_) => {
                // Full: nothing of it went out. It waits for another worker, and this one
                // takes nothing until its channel has room again.
                self.workers[i].blocked = true;
                self.workers[i].refused_at = Some(Instant::now());
                self.pending.push_front(p);
            }
            Err(err) => {
                // The message was not delivered (a send fails whole): the connection waits for
                // another worker, and this one's channel is broken.
                self.pending.push_front(p);
                self.kill_worker(id, format!("control channel send failed: {err}"));
            }
        }
    }

    fn send_drain(&mut self, id: u64) {
        let Some(i) = self.index(id) else { return };
        self.workers[i].state = WState::Draining;
        self.send_control(id, &SupervisorMessage::control(kind::DRAIN));
    }

    /// Sends a control message (DRAIN, PING) without waiting: behind whatever the worker's
    /// channel has not taken yet, in order.
    fn send_control(&mut self, id: u64, msg: &[u8]) {
        let Some(i) = self.index(id) else { return };
        let w = &mut self.workers[i];
        if w.blocked {
            w.outbox.push_back(msg.to_vec());
            return self.unblock(id);
        }
        match w.channel.try_send(msg, &[]) {
            Ok(SendStatus::Written) => {}
            Ok(SendStatus::Buffered) => w.blocked = true,
            Ok(_) => {
                w.blocked = true;
                w.outbox.push_back(msg.to_vec());
            }
            Err(err) => self.kill_worker(id, format!("control channel send failed: {err}")),
        }
    }

    /// Writes what a blocked worker's channel could not take before; once all of it is out,
    /// the worker may take connections again.
    fn unblock(&mut self, id: u64) {
        let Some(i) = self.index(id) else { return };
        let w = &mut self.workers[i];
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
            Err(err) => self.kill_worker(id, format!("control channel send failed: {err}")),
        }
    }

    /// Whether some worker may have sent something: it holds connections, or is starting,
    /// draining or dying.
    fn needs_flush(&self) -> bool {
        self.workers.iter().any(|w| w.live > 0 || w.state != WState::Ready || w.blocked)
    }

    /// Reads the channels of the workers that may have sent something (see [`FLUSH`]).
    fn flush(&mut self) {
        let ids: Vec<u64> = self
            .workers
            .iter()
            .filter(|w| w.live > 0 || w.state != WState::Ready || w.blocked)
            .map(|w| w.id)
            .collect();
        let mut read = 0;
        for id in ids {
            read += self.poll_worker(id);
            self.unblock(id);
        }
        self.flush_every = if read == 0 { (self.flush_every * 2).min(FLUSH_MAX) } else { FLUSH };
        self.flush_at = Instant::now() + self.flush_every;
    }

    /// Reads every worker's channel.
    fn poll_all(&mut self) {
        self.flush_at = Instant::now() + self.flush_every;
        let ids: Vec<u64> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.poll_worker(id);
        }
    }

    /// Handles every message the worker has sent so far, without waiting. A channel that
    /// closed settles the worker; one that breaks the protocol gets it killed.
    /// Returns how many messages it handled.
    fn poll_worker(&mut self, id: u64) -> usize {
        let Some(i) = self.index(id) else { return 0 };
        let channel = Rc::clone(&self.workers[i].channel);
        let mut msg = std::mem::take(&mut self.scratch);
        let mut handled = 0;
        while self.index(id).is_some() {
            msg.sockets.clear(); // closes anything a misbehaving worker sent
            let got = channel.try_recv_into(&mut msg);
            handled += 1;
            match got {
                Ok(false) => {
                    handled -= 1;
                    break;
                }
                Ok(true) if !msg.sockets.is_empty() => {
                    let n = msg.sockets.len();
                    self.misbehaved(id, format!("sent {n} socket(s); workers never send sockets"));
                }
                Ok(true) => match WorkerMessage::decode(&msg.bytes) {
                    Ok(m) => self.on_message(id, m),
                    Err(err) => self.misbehaved(id, format!("sent a bad message: {err}")),
                },
                Err(handover::Error::PeerClosed) => self.cleanup(id, "exited"),
                Err(handover::Error::Io(err))
                    if err.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    self.cleanup(id, "exited")
                }
                Err(err) => self.misbehaved(id, format!("broke the control channel: {err}")),
            }
        }
        msg.sockets.clear();
        self.scratch = msg;
        handled
    }

    fn on_message(&mut self, id: u64, m: WorkerMessage) {
        let Some(i) = self.index(id) else { return };
        // It is reading its channel: a connection it refused may fit now.
        self.workers[i].refused_at = None;
        // Late messages from a worker being killed still count: an ACK or FINISHED that made
        // it out before the kill tells the truth about its connections.
        match m {
            WorkerMessage::Hello { capacity, pid, heartbeat } => {
                let w = &mut self.workers[i];
                if w.state != WState::Starting {
                    return self.misbehaved(id, "sent a second hello".to_owned());
                }
                w.state = WState::Ready;
                w.ready = true;
                w.capacity = capacity;
                w.heartbeat = heartbeat;
                w.next_ping = Instant::now() + HEARTBEAT_EVERY;
                self.proven = true;
                let slot = w.slot;
                info!(program = %self.prog.name, slot, pid = w.pid, capacity, heartbeat, "worker ready");
                if pid != w.pid {
                    debug!(slot, "worker reports pid {pid}, spawned as {}", w.pid);
                }
                self.on_ready(slot, id);
            }
            WorkerMessage::Ack(cid) => match self.conns.get_mut(&cid) {
                Some(c) if c.worker == id && !c.acked => {
                    c.acked = true;
                    let now = Instant::now();
                    self.last_ack = now;
                    self.workers[i].settled_one(now);
                    if let Some(h) = &self.handoff_latency {
                        h.observe(c.sent_at.elapsed().as_secs_f64());
                    }
                }
                _ => self.misbehaved(
                    id,
                    format!("acknowledged connection {cid}, which it was not waiting on"),
                ),
            },
            WorkerMessage::Finished(cid) => match self.conns.get(&cid) {
                Some(c) if c.worker == id && c.acked => {
                    let c = self.conns.remove(&cid).expect("present");
                    drop(c.socket); // our copy: the client sees the end of the response now
                    let w = &mut self.workers[i];
                    w.live -= 1;
                    w.handled += 1;
                    self.totals.handled += 1;
                }
                _ => {
                    self.misbehaved(id, format!("finished connection {cid}, which it did not hold"))
                }
            },
            WorkerMessage::Reject(cid) => match self.conns.get(&cid) {
                Some(c) if c.worker == id && !c.acked => {
                    let c = self.conns.remove(&cid).expect("present");
                    let w = &mut self.workers[i];
                    w.live -= 1;
                    w.settled_one(Instant::now());
                    self.totals.redispatched += 1;
                    self.pending.push_front(Pending {
                        id: cid,
                        socket: c.socket,
                        listener: c.listener,
                        peer: c.peer,
                    });
                }
                _ => self
                    .misbehaved(id, format!("rejected connection {cid}, which it was not offered")),
            },
            WorkerMessage::Pong(nonce) => match self.workers[i].ping {
                Some((sent, _)) if sent == nonce => self.workers[i].ping = None,
                _ => self
                    .misbehaved(id, format!("answered heartbeat {nonce}, which it was not sent")),
            },
        }
    }

    /// A worker said hello: if it replaces a worker (reload), the old one drains now.
    fn on_ready(&mut self, slot: usize, id: u64) {
        let s = &mut self.slots[slot];
        if s.incoming == Some(id) {
            s.incoming = None;
            let old = s.current.replace(id);
            if let Some(old) = old {
                // Connections already sent to it arrive before the DRAIN, in order.
                self.send_drain(old);
            }
        } else if s.current.is_none() {
            s.current = Some(id);
        }
        // A reload's replacement may have died and been restarted as the slot's current one.
        if self.reloading == Some(slot) && self.slots[slot].incoming.is_none() {
            self.reloading = None;
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Status(tx) => {
                self.poll_all(); // counts as of now
                let _ = tx.send(self.status());
            }
            Request::Reload => {
                if self.phase == Phase::Running {
                    info!(program = %self.prog.name, "reload: restarting workers one at a time");
                    self.reload = (0..self.slots.len()).collect();
                    // The program on disk may have changed: it has to prove itself again.
                    self.proven = false;
                }
            }
            Request::Drain => self.begin_drain(),
            Request::Kill => {}
            Request::Ready(tx) => {
                self.flush(); // hellos
                let _ = tx.send(self.all_ready());
            }
            Request::Start => self.held = false,
        }
    }

    /// Every slot has a worker that said hello.
    fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| {
            s.current
                .and_then(|id| self.index(id))
                .is_some_and(|i| self.workers[i].state == WState::Ready)
        })
    }

    fn begin_drain(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        self.phase = Phase::Draining { deadline: Instant::now() + self.prog.timeouts.drain };
        let backlog =
            listener::close_for_drain(&mut self.listeners, &mut self.listener_status, self.held);
        for a in backlog {
            let p = self.admit(a);
            self.pending.push_back(p);
        }
        for s in &mut self.slots {
            s.start_at = None;
        }
        self.reload.clear();
        info!(program = %self.prog.name, waiting = self.pending.len(), live = self.conns.len(), "draining");
    }

    fn on_tick(&mut self) {
        // Late acknowledgements count before the ack timeout is judged.
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % SWEEP == 0 {
            self.poll_all();
        } else {
            self.flush();
        }
        let now = Instant::now();
        let ack = self.prog.timeouts.ack;
        let mut stuck: Vec<(u64, String)> = Vec::new();
        for (cid, c) in &self.conns {
            if !c.acked && now.duration_since(c.sent_at) > ack {
                stuck.push((
                    c.worker,
                    format!("did not acknowledge connection {cid} within {ack:?}"),
                ));
            }
        }
        let start = self.prog.timeouts.start;
        for w in &self.workers {
            if w.state == WState::Starting && now.duration_since(w.started) > start {
                stuck.push((w.id, format!("did not say hello within {start:?}")));
            }
        }
        self.heartbeats(now, &mut stuck);
        for (id, why) in stuck {
            if self.index(id).is_some_and(|i| self.workers[i].state != WState::Dying) {
                self.totals.misbehaving_killed += 1;
                self.kill_worker(id, why);
            }
        }
        let gone: Vec<u64> = self
            .workers
            .iter()
            .filter(|w| w.killed_at.is_some_and(|t| now.duration_since(t) > KILL_GRACE))
            .map(|w| w.id)
            .collect();
        for id in gone {
            self.cleanup(id, "killed");
        }
        self.reap_exited();
    }

    /// Sends the PINGs that are due to ready workers that declared heartbeats, and adds those
    /// that have not answered one within `--heartbeat-timeout` to `stuck`. (Draining workers
    /// are not asked: one may stop reading its channel once it has been told to drain.)
    fn heartbeats(&mut self, now: Instant, stuck: &mut Vec<(u64, String)>) {
        let timeout = self.prog.timeouts.heartbeat;
        if timeout.is_zero() {
            return;
        }
        let asked = |w: &Worker| w.heartbeat && w.state == WState::Ready;
        let late = |w: &Worker| w.ping.is_some_and(|(_, at)| now.duration_since(at) > timeout);
        let suspects: Vec<u64> =
            self.workers.iter().filter(|w| asked(w) && late(w)).map(|w| w.id).collect();
        for id in suspects {
            self.poll_worker(id); // its answer may be there, unread
            if self.index(id).is_some_and(|i| late(&self.workers[i])) {
                stuck.push((id, format!("did not answer a heartbeat within {timeout:?}")));
            }
        }
        let every = (timeout / 4).min(HEARTBEAT_EVERY);
        let due: Vec<u64> = self
            .workers
            .iter()
            .filter(|w| asked(w) && w.ping.is_none() && now >= w.next_ping)
            .map(|w| w.id)
            .collect();
        for id in due {
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            if let Some(i) = self.index(id) {
                self.workers[i].ping = Some((nonce, now));
                self.workers[i].next_ping = now + every;
            }
            self.send_control(id, &SupervisorMessage::ping(nonce));
        }
    }

    /// Kills a worker; its connections are settled when its channel closes ([`cleanup`]), so
    /// messages it sent before dying still count.
    fn kill_worker(&mut self, id: u64, why: String) {
        let Some(i) = self.index(id) else { return };
        let w = &mut self.workers[i];
        if w.state == WState::Dying {
            return;
        }
        warn!(program = %self.prog.name, slot = w.slot, pid = w.pid, "killing worker: {why}");
        sys::signal_group(w.pid, Stop::Kill);
        w.state = WState::Dying;
        w.killed_at = Some(Instant::now());
        w.kill_reason = Some(why);
    }

    /// A worker broke the protocol: it is killed and settled at once (nothing more is read).
    fn misbehaved(&mut self, id: u64, why: String) {
        let Some(i) = self.index(id) else { return };
        if self.workers[i].state != WState::Dying {
            self.totals.misbehaving_killed += 1;
        }
        self.kill_worker(id, why);
        self.cleanup(id, "killed");
    }

    /// The worker is gone: settle its connections now; reaping it and restarting its slot
    /// follow in [`Engine::reap_exited`], once its exit status is known.
    fn cleanup(&mut self, id: u64, how: &'static str) {
        let Some(i) = self.index(id) else { return };
        let w = self.workers.remove(i);
        // A worker the supervisor killed is signalled again (its group: anything it started).
        // One whose channel closed by itself is left to exit: signalling it now would turn
        // its own exit or crash into a SIGKILL, which the restart policy takes for a kill
        // from outside. `reap_exited` kills it if it has not exited within KILL_GRACE.
        if w.kill_reason.is_some() {
            sys::signal_group(w.pid, Stop::Kill);
        }
        let mut redispatched = 0;
        let mut lost = 0;
        let ids: Vec<u64> =
            self.conns.iter().filter(|(_, c)| c.worker == id).map(|(k, _)| *k).collect();
        for cid in ids {
            let c = self.conns.remove(&cid).expect("present");
            if c.acked {
                lost += 1;
                listener::reset(c.socket);
            } else {
                redispatched += 1;
                self.pending.push_front(Pending {
                    id: cid,
                    socket: c.socket,
                    listener: c.listener,
                    peer: c.peer,
                });
            }
        }
        self.totals.redispatched += redispatched;
        self.totals.lost_mid_request += lost;
        let s = &mut self.slots[w.slot];
        let restart = if s.current == Some(id) {
            s.current = None;
            s.incoming.is_none()
        } else if s.incoming == Some(id) {
            s.incoming = None;
            true
        } else {
            false
        };
        let expected = w.state == WState::Draining || matches!(self.phase, Phase::Draining { .. });
        self.exited.push(Exited {
            child: w.child,
            pid: w.pid,
            slot: w.slot,
            restart,
            lived: w.started.elapsed(),
            ready: w.ready,
            kill_reason: w.kill_reason,
            how,
            expected,
            handled: w.handled,
            redispatched,
            lost,
            since: Instant::now(),
        });
        self.reap_exited();
    }

    /// Reaps the exited workers that can be, without waiting, and decides about their slots.
    /// One still running [`KILL_GRACE`] after its channel closed by itself is killed; one
    /// still unreaped [`KILL_GRACE`] after the supervisor killed it is decided about without
    /// its exit status (and reaped later, as a zombie).
    fn reap_exited(&mut self) {
        self.zombies.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        let mut i = 0;
        while i < self.exited.len() {
            let x = &mut self.exited[i];
            let status = match x.child.try_wait() {
                Ok(Some(st)) => Some(st),
                Ok(None) if x.since.elapsed() < KILL_GRACE => {
                    i += 1;
                    continue;
                }
                Ok(None) if x.kill_reason.is_none() => {
                    // Its channel closed a while ago and it still runs: end it, and judge it as
                    // killed for that (not as a kill from outside).
                    sys::signal_group(x.pid, Stop::Kill);
                    x.kill_reason = Some("closed its control channel but did not exit".to_owned());
                    x.since = Instant::now();
                    i += 1;
                    continue;
                }
                Ok(None) | Err(_) => None,
            };
            let x = self.exited.swap_remove(i);
            // Whatever it started goes with it (its leader is reaped; the group lives on only
            // while members remain).
            if status.is_some() && x.kill_reason.is_none() {
                sys::signal_group(x.pid, Stop::Kill);
            }
            self.settle(&x, status);
            if status.is_none() {
                self.zombies.push(x.child);
            }
        }
    }

    /// Logs how an exited worker ended and restarts its slot by the restart policy.
    fn settle(&mut self, x: &Exited, status: Option<std::process::ExitStatus>) {
        let what = match &x.kill_reason {
            Some(r) => format!("killed ({r})"),
            None => format!("{} ({})", x.how, child::describe(status)),
        };
        let (slot, pid, lived) = (x.slot, x.pid, x.lived);
        if x.expected && x.kill_reason.is_none() {
            info!(program = %self.prog.name, slot, pid, handled = x.handled, "worker exited");
        } else {
            warn!(
                program = %self.prog.name, slot, pid, redispatched = x.redispatched,
                lost_mid_request = x.lost, "worker {what} after {lived:?}"
            );
        }
        self.slots[slot].last_exit = Some(what);
        // Both of a slot's workers (a reload's pair) may die before either is settled: the
        // slot needs one new worker, not two.
        let s = &self.slots[slot];
        let refilled = s.current.is_some() || s.incoming.is_some() || s.start_at.is_some();
        if x.restart && !refilled {
            let from_outside =
                x.kill_reason.is_none() && status.as_ref().is_some_and(sys::killed_from_outside);
            let death = Death { lived, ready: x.ready, from_outside, proven: self.proven };
            self.schedule_restart(slot, death);
        }
    }

    fn status(&self) -> (ProgramStatus, Vec<ListenerStatus>) {
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|w| WorkerStatus {
                slot: w.slot,
                pid: Some(w.pid),
                state: w.state.name().to_owned(),
                capacity: w.ready.then_some(w.capacity),
                live: Some(u64::from(w.live)),
                handled: Some(w.handled),
                restarts: self.slots[w.slot].restarts.count,
            })
            .collect();
        for (slot, s) in self.slots.iter().enumerate() {
            if s.start_at.is_some() && s.current.is_none() {
                workers.push(WorkerStatus {
                    slot,
                    state: child::waiting_state(&s.restarts, &self.prog.timeouts).to_owned(),
                    restarts: s.restarts.count,
                    ..WorkerStatus::default()
                });
            }
        }
        workers.sort_by_key(|w| w.slot);
        let mut totals = self.totals;
        totals.live = (self.conns.len() + self.pending.len()) as u64;
        let state = if self.reloading.is_some() || !self.reload.is_empty() {
            "reloading"
        } else {
            self.phase.name()
        };
        let p = ProgramStatus {
            name: self.prog.name.clone(),
            mode: "prefork".to_owned(),
            command: self.prog.program.display().to_string(),
            state: state.to_owned(),
            workers,
            totals,
        };
        (p, self.listener_status.clone())
    }
}
