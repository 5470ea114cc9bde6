//! The engine core: one task per program, whatever its mode.
//!
//! [`run`] owns what every mode shares: the program's phase (running, draining with a
//! deadline), the requests the supervisor sends ([`Request`]), the listeners and accepting
//! (with back-off on errors that concern the process), the drain (the kernel's backlog is
//! taken before the listeners close, so closing refuses only later clients), the outcome, and
//! the status report. An [`Engine`] (one per mode: prefork, spawn, shared) supplies the rest: what to do with an accepted connection,
//! how its workers start, when it is drained. Modes that run a fixed number of workers (prefork,
//! shared) keep them in a [`pool::Pool`], which owns slots, restarts and reloads.
//!
//! Nothing here waits on a worker: every handler returns at once, and timeouts are judged on
//! the mode's tick. Workers' channels that a mode registers with the reactor
//! ([`Engine::poll_channels`]) are read as soon as something arrives, ahead of accepting.

mod command;
pub(crate) mod pool;
pub(crate) mod slots;

pub(crate) use self::command::command;

use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::{Env, ProgramConfig};
use crate::exit_codes::ExitCode;
use crate::listener::{self, Accepted, Listener};
use crate::model::ProxyProtocol;
use crate::model::WorkerOutput;
use crate::output::{Label, Output, Pending};
use crate::proxy;
use crate::status::{ListenerStatus, ProgramState, ProgramStatus, Totals, WorkerStatus};
use crate::sys;

/// A request from the supervisor to one program's engine.
#[derive(Debug)]
pub(crate) enum Request {
    /// Report status.
    Status(oneshot::Sender<(ProgramStatus, Vec<ListenerStatus>)>),
    /// Restart the workers one at a time (`SIGHUP`, `handover reload`); the answer, if asked
    /// for, comes once every worker has been replaced (or the reload was abandoned).
    Reload(Option<oneshot::Sender<Reply>>),
    /// Change the number of workers (`handover scale`, `SIGTTIN`/`SIGTTOU`).
    Scale(Scale, Option<oneshot::Sender<Reply>>),
    /// Stop accepting, let workers finish, exit (`SIGTERM`).
    Drain,
    /// Kill everything now (a second `SIGTERM`).
    Kill,
    /// Whether every worker is ready (a new generation waits for this before the old drains).
    Ready(oneshot::Sender<bool>),
    /// Start accepting (a new generation was held until the old one let go).
    Start,
}

/// What the supervisor tells every engine at start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    /// Accept nothing until [`Request::Start`]: a new generation does not take connections
    /// before the upgrade is committed, so abandoning it loses none.
    pub(crate) held: bool,
    /// The supervisor's generation (1, then one more per upgrade).
    pub(crate) generation: u64,
    /// Hand-off latency (prefork: connection sent to acknowledgement), when metrics are on.
    pub(crate) handoff_latency: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Where workers' output goes with `--worker-output prefix`.
    pub(crate) output: Option<Output>,
}

pub(crate) type Requests = mpsc::UnboundedReceiver<Request>;

/// The answer to a request that changes something.
pub(crate) use crate::control::Reply;

/// The most workers `handover scale` sets.
pub(crate) const MAX_WORKERS: usize = 4096;

/// A change of the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    /// `N`: exactly this many.
    To(usize),
    /// `+N` / `-N`: this many more or fewer.
    By(i64),
}

impl Scale {
    /// Parses `N`, `+N` or `-N`.
    pub(crate) fn parse(s: &str) -> Result<Scale, String> {
        let bad = || format!("{s:?} is not a worker count (expected N, +N or -N)");
        let (sign, digits) = match s.strip_prefix('+') {
            Some(d) => (1, d),
            None => match s.strip_prefix('-') {
                Some(d) => (-1, d),
                None => return s.parse::<usize>().map(Scale::To).map_err(|_| bad()),
            },
        };
        digits.parse::<i64>().ok().filter(|n| *n >= 0).map(|n| Scale::By(sign * n)).ok_or_else(bad)
    }

    /// The new count from `now`, if it is within 1..=[`MAX_WORKERS`].
    pub(crate) fn apply(self, now: usize) -> Result<usize, String> {
        let n = match self {
            Scale::To(n) => n as i128,
            Scale::By(d) => now as i128 + i128::from(d),
        };
        if n < 1 {
            return Err(format!("cannot run fewer than 1 worker (now {now})"));
        }
        if n > MAX_WORKERS as i128 {
            return Err(format!("cannot run more than {MAX_WORKERS} workers"));
        }
        Ok(n as usize)
    }

    /// As written on the command line and in the control request.
    pub(crate) fn to_arg(self) -> String {
        match self {
            Scale::To(n) => n.to_string(),
            Scale::By(d) if d >= 0 => format!("+{d}"),
            Scale::By(d) => d.to_string(),
        }
    }
}

/// How an engine ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) code: ExitCode,
    /// A one-line explanation for a non-success code.
    pub(crate) message: Option<String>,
}

/// The engine's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Draining { deadline: Instant },
}

impl Phase {
    pub(crate) fn state(&self) -> ProgramState {
        match self {
            Phase::Running => ProgramState::Running,
            Phase::Draining { .. } => ProgramState::Draining,
        }
    }
}

/// Where a draining mode stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing left: the engine ends.
    Done,
    /// Connections or workers remain: the drain deadline applies.
    Busy,
    /// Only exited workers remain to be reaped (bounded by the mode itself).
    Reaping,
}

/// What a mode reports for `status`.
#[derive(Debug, Default)]
pub(crate) struct ModeStatus {
    pub(crate) workers: Vec<WorkerStatus>,
    /// Connections held by workers or waiting for one.
    pub(crate) live: u64,
    /// A reload is under way.
    pub(crate) reloading: bool,
    /// Connections waiting for a worker.
    pub(crate) queue: u64,
}

/// What makes prefork, spawn and shared differ. Every method is called from the engine's one
/// task, with the core it may change; none waits.
pub(crate) trait Engine {
    /// Which mode it is (status reports it, and spawn mode has no reload).
    const KIND: crate::model::Mode;
    /// How often [`Engine::on_tick`] runs (timeouts are judged then).
    const TICK: Duration;

    /// Starts what runs from the beginning.
    fn start(&mut self, core: &mut Core);
    /// Whether it can take a connection now (only asked of modes whose core has listeners).
    fn has_room(&self) -> bool {
        false
    }
    /// A connection was accepted (and counted).
    fn on_accept(&mut self, _core: &mut Core, _conn: Accepted) {}
    /// What happens without an outside event: restarts that are due, reload steps, waiting
    /// connections. Runs before every wait.
    fn maintain(&mut self, core: &mut Core);
    /// When the mode wants to run next without an outside event.
    fn wake_at(&self) -> Option<Instant> {
        None
    }
    /// [`Engine::wake_at`] has come.
    fn on_wake(&mut self, _core: &mut Core) {}
    /// Ready when a worker's channel has something to read (registered with the reactor,
    /// `sys::ChannelWatch`); the engine then calls [`Engine::on_channels`] at once. Polled ahead
    /// of the listeners, so a full worker's FINISHED makes room before accepting is judged.
    fn poll_channels(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<()> {
        Poll::Pending
    }
    /// Reads the channels [`Engine::poll_channels`] found ready.
    fn on_channels(&mut self, _core: &mut Core) {}
    /// A child process may have exited.
    fn on_child_exit(&mut self, core: &mut Core);
    fn on_tick(&mut self, core: &mut Core);
    /// Restart the workers one at a time (only while running).
    fn reload(&mut self, core: &mut Core);
    /// A reload is under way.
    fn reloading(&self) -> bool {
        false
    }
    /// Workers the reload under way (or the last one) replaced, and slots it could not.
    fn reloaded(&self) -> (usize, usize) {
        (0, 0)
    }
    /// The number of workers it runs (spawn mode: the most children at once).
    fn workers_wanted(&self) -> usize;
    /// Runs `n` workers from now on (only while running; `n` is within 1..=[`MAX_WORKERS`]).
    /// Workers removed finish what they hold; they are not killed.
    fn scale(&mut self, core: &mut Core, n: usize);
    /// Every worker is ready.
    fn ready(&mut self, core: &mut Core) -> bool;
    /// The drain began: the listeners are closed, and `backlog` holds the connections the
    /// kernel had accepted before they closed (already counted).
    fn drain(&mut self, core: &mut Core, backlog: Vec<Accepted>);
    fn drained(&mut self, core: &mut Core) -> Drained;
    /// Kills everything now; what was waiting for a worker is dropped (and counted).
    fn kill_all(&mut self, core: &mut Core);
    /// Its part of the status report; it adds its own counters (prefork: the ledger's) to
    /// `totals`, which starts at zero (the core's are added after).
    fn status(&mut self, core: &mut Core, totals: &mut Totals) -> ModeStatus;
}

/// What every mode's engine shares.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) prog: ProgramConfig,
    pub(crate) env: Rc<Env>,
    /// The listeners the engine accepts on (none in shared mode: its workers accept).
    pub(crate) listeners: Vec<Listener>,
    pub(crate) listener_status: Vec<ListenerStatus>,
    next_listener: usize,
    pub(crate) phase: Phase,
    /// Not accepting until the supervisor says so (a new generation in an upgrade).
    pub(crate) held: bool,
    accept_errors: listener::AcceptErrors,
    pub(crate) totals: Totals,
    /// Why the program was given up on (the engine drains, then exits 3).
    give_up: Option<String>,
    /// A drain was asked for from inside the engine (giving up); begun before the next wait.
    drain_wanted: bool,
    /// Who waits for the reload under way to finish, and when it began.
    reload_waiters: Vec<oneshot::Sender<Reply>>,
    reload_began: Option<Instant>,
    pub(crate) generation: u64,
    pub(crate) handoff_latency: Option<prometheus_client::metrics::histogram::Histogram>,
    output: Option<Output>,
    /// The program's `stdout`/`stderr` files, where its prefixed lines go if set.
    pub(crate) files: crate::output::ProgramFiles,
    /// Piping workers' output failed once (said so; they inherit it from then on).
    output_failed: bool,
    /// Each listener's PROXY protocol setting, by index (kept when the listeners close for a
    /// drain: the backlog they leave is read too).
    proxy: Vec<Option<ProxyProtocol>>,
    /// Connections whose PROXY header is being read, and where the readers report.
    pub(crate) proxy_pending: usize,
    proxied_tx: mpsc::UnboundedSender<ProxyRead>,
    proxied_rx: Option<mpsc::UnboundedReceiver<ProxyRead>>,
}

/// A PROXY header read (or not) for a connection accepted on `listener` from `peer`.
#[derive(Debug)]
struct ProxyRead {
    listener: u16,
    peer: Option<std::net::SocketAddr>,
    result: Result<(socket2::Socket, Option<std::net::SocketAddr>), String>,
}

impl Core {
    /// A core for `prog` accepting on `listeners`; `status` describes every listener of the
    /// program (shared mode's included, which the core does not accept on).
    pub(crate) fn new(
        prog: ProgramConfig,
        env: Rc<Env>,
        listeners: Vec<Listener>,
        listener_status: Vec<ListenerStatus>,
        ctx: Context,
    ) -> Core {
        let (proxied_tx, proxied_rx) = mpsc::unbounded_channel();
        let proxy = listeners.iter().map(|l| l.proxy).collect();
        Core {
            prog,
            env,
            listeners,
            listener_status,
            next_listener: 0,
            phase: Phase::Running,
            held: ctx.held,
            accept_errors: listener::AcceptErrors::default(),
            totals: Totals::default(),
            give_up: None,
            drain_wanted: false,
            reload_waiters: Vec::new(),
            reload_began: None,
            generation: ctx.generation,
            handoff_latency: ctx.handoff_latency,
            output: ctx.output,
            files: crate::output::ProgramFiles::default(),
            output_failed: false,
            proxy,
            proxy_pending: 0,
            proxied_tx,
            proxied_rx: Some(proxied_rx),
        }
    }

    /// The PROXY protocol setting of listener `index`.
    fn proxy_of(&self, index: u16) -> Option<ProxyProtocol> {
        self.proxy.get(index as usize).copied().flatten()
    }

    /// An accepted connection goes to the mode, or, on a listener whose connections start
    /// with a PROXY header, to a task that reads that header first (off the accept path;
    /// [`Core::on_proxy_read`] takes it from there).
    fn hand_on<M: Engine>(&mut self, mode: &mut M, a: Accepted) {
        match self.proxy_of(a.listener) {
            None => mode.on_accept(self, a),
            Some(want) => {
                self.proxy_pending += 1;
                let tx = self.proxied_tx.clone();
                tokio::task::spawn_local(async move {
                    let result = proxy::read_header(a.socket, want).await;
                    let _ = tx.send(ProxyRead { listener: a.listener, peer: a.peer, result });
                });
            }
        }
    }

    /// A PROXY header was read: the connection goes on with the client it names; or it was
    /// refused (closed, counted).
    fn on_proxy_read<M: Engine>(&mut self, mode: &mut M, r: ProxyRead) {
        self.proxy_pending -= 1;
        match r.result {
            Ok((socket, client)) => {
                let peer = client.or(r.peer);
                mode.on_accept(self, Accepted { listener: r.listener, socket, peer });
            }
            Err(why) => {
                self.totals.proxy_refused += 1;
                let peer = r.peer.map(|p| p.to_string()).unwrap_or_default();
                debug!(program = %self.prog.name, %peer, "connection refused: {why}");
            }
        }
    }

    /// With `--worker-output prefix`: pipes for the standard error of the worker `cmd` starts
    /// (and its standard output, if `stdout`), to be read once it runs. `None` when its output
    /// is inherited (as asked, or because pipes cannot be had: said once).
    pub(crate) fn output_pipes(
        &mut self,
        cmd: &mut handover::Command<'_>,
        stdout: bool,
    ) -> Option<Pending> {
        self.piped("workers'", |o| o.pipes(cmd, stdout))
    }

    /// With `--worker-output prefix`: a pipe shared by all the program's children (spawn mode)
    /// for their standard error (or output), with lines labelled by the program alone.
    pub(crate) fn shared_output(&mut self, stderr: bool) -> Option<crate::sys::PipeWriter> {
        let label = Label {
            program: std::rc::Rc::from(self.prog.name.as_str()),
            worker: None,
            files: self.files.clone(),
        };
        self.piped("children's", |o| o.shared_pipe(label, stderr))
    }

    /// With `--worker-output prefix`, what `make` makes of the output pipes; `None` when
    /// output is inherited: as asked, or because pipes cannot be had (said once, about
    /// `whose` output, and inherited from then on).
    fn piped<T>(
        &mut self,
        whose: &str,
        make: impl FnOnce(&Output) -> std::io::Result<T>,
    ) -> Option<T> {
        if self.prog.controls.worker_output != WorkerOutput::Prefix || self.output_failed {
            return None;
        }
        match make(self.output.as_ref()?) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(program = %self.prog.name, "{whose} output is not prefixed ({e}): they write to the supervisor's stdout and stderr");
                self.output_failed = true;
                None
            }
        }
    }

    /// Gives the program up (`message` says why): the engine drains and exits 3.
    pub(crate) fn give_up(&mut self, message: String) {
        self.give_up.get_or_insert(message);
        self.drain_wanted = true;
    }

    /// The program was given up on (it drains, then the engine exits 3).
    pub(crate) fn gave_up(&self) -> bool {
        self.give_up.is_some()
    }

    /// Running, and not about to drain (a give-up takes effect before the next wait; until
    /// then nothing more is started).
    pub(crate) fn running(&self) -> bool {
        self.phase == Phase::Running && !self.drain_wanted
    }

    /// Counts a connection accepted on `listener`.
    pub(crate) fn count_accept(&mut self, listener: u16) {
        self.totals.accepted += 1;
        if let Some(s) = self.listener_status.get_mut(listener as usize) {
            s.accepted = Some(s.accepted.unwrap_or(0) + 1);
        }
    }

    /// The name of listener `index`, as workers are told it.
    pub(crate) fn listener_name(&self, index: u16) -> &str {
        self.listener_status.get(index as usize).map_or("", |l| l.name.as_str())
    }

    fn accepting(&self) -> bool {
        self.running()
            && !self.held
            && !self.listeners.is_empty()
            && !self.accept_errors.paused()
            && self.proxy_pending < proxy::MAX_PENDING
    }

    fn on_accept(&mut self, r: std::io::Result<Accepted>) -> Option<Accepted> {
        match r {
            Ok(a) => {
                self.count_accept(a.listener);
                Some(a)
            }
            Err(err) if listener::is_transient(&err) => None,
            Err(err) => {
                // Out of descriptors or memory: the backlog holds clients while we back off.
                self.accept_errors.failed(&self.prog.name, &err);
                None
            }
        }
    }

    fn outcome(&mut self, code: ExitCode) -> Outcome {
        let why = self.give_up.clone().unwrap_or_else(|| "the program stopped".to_owned());
        self.answer_reload(false, format!("program {}: reload abandoned: {why}", self.prog.name));
        Outcome { code, message: self.give_up.clone() }
    }

    /// Answers whoever waits for the reload.
    fn answer_reload(&mut self, ok: bool, message: String) {
        self.reload_began = None;
        for w in self.reload_waiters.drain(..) {
            let _ = w.send(Reply { ok, message: message.clone() });
        }
    }

    fn code(&self) -> ExitCode {
        if self.give_up.is_some() {
            ExitCode::CrashLoop
        } else {
            ExitCode::Success
        }
    }
}

/// Runs one program's engine until it has drained (or was killed, or gave up).
pub(crate) async fn run<M: Engine>(mut core: Core, mut mode: M, mut requests: Requests) -> Outcome {
    // SIGCHLD is watched before the first child starts, so no exit goes unnoticed.
    let mut exits = match sys::ChildExits::new() {
        Ok(x) => x,
        Err(err) => {
            let message = Some(format!("cannot watch children: {err}"));
            return Outcome { code: ExitCode::Failure, message };
        }
    };
    let mut proxied = core.proxied_rx.take().expect("an engine runs once");
    mode.start(&mut core);
    let mut tick = tokio::time::interval(M::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests_open = true;
    loop {
        mode.maintain(&mut core);
        if core.drain_wanted {
            core.drain_wanted = false;
            begin_drain(&mut core, &mut mode);
        }
        if let Some(began) = core.reload_began {
            if !mode.reloading() {
                let ((n, failed), took) = (mode.reloaded(), began.elapsed());
                let msg = match M::KIND {
                    crate::model::Mode::Spawn => {
                        "nothing to reload (spawn mode starts a fresh process per connection)"
                            .to_owned()
                    }
                    _ if failed > 0 => format!(
                        "{n} worker(s) replaced in {took:.1?}; {failed} kept their worker \
                         because the replacement died before it was ready (see the log)"
                    ),
                    _ => format!("{n} worker(s) replaced in {took:.1?}"),
                };
                if failed > 0 {
                    warn!(program = %core.prog.name, "reload done: {msg}");
                } else {
                    info!(program = %core.prog.name, "reload done: {msg}");
                }
                core.answer_reload(failed == 0, format!("program {}: {msg}", core.prog.name));
            }
        }
        if let Some(outcome) = finished(&mut core, &mut mode) {
            return outcome;
        }
        let accepting = core.accepting() && mode.has_room();
        let wake_at = mode.wake_at();
        tokio::select! {
            biased;
            req = requests.recv(), if requests_open => match req {
                Some(Request::Status(tx)) => {
                    let _ = tx.send(status(&mut core, &mut mode));
                }
                Some(Request::Reload(reply)) => {
                    if core.running() {
                        info!(program = %core.prog.name, "reload: restarting workers one at a time");
                        mode.reload(&mut core);
                        core.reload_began.get_or_insert_with(Instant::now);
                        core.reload_waiters.extend(reply);
                    } else if let Some(r) = reply {
                        let message = format!("program {}: draining; not reloaded", core.prog.name);
                        let _ = r.send(Reply { ok: false, message });
                    }
                }
                Some(Request::Scale(how, reply)) => {
                    let r = scale(&mut core, &mut mode, how);
                    if let Some(tx) = reply {
                        let _ = tx.send(r);
                    }
                }
                Some(Request::Drain) => begin_drain(&mut core, &mut mode),
                Some(Request::Kill) => {
                    mode.kill_all(&mut core);
                    return core.outcome(ExitCode::Success);
                }
                Some(Request::Ready(tx)) => {
                    let _ = tx.send(mode.ready(&mut core));
                }
                Some(Request::Start) => core.held = false,
                None => {
                    requests_open = false;
                    begin_drain(&mut core, &mut mode);
                }
            },
            _ = exits.recv() => mode.on_child_exit(&mut core),
            () = std::future::poll_fn(|cx| mode.poll_channels(cx)) => mode.on_channels(&mut core),
            r = listener::accept_any(&core.listeners, &mut core.next_listener), if accepting => {
                if let Some(a) = core.on_accept(r) {
                    core.hand_on(&mut mode, a);
                }
            }
            Some(r) = proxied.recv() => core.on_proxy_read(&mut mode, r),
            _ = sleep_until(wake_at) => mode.on_wake(&mut core),
            _ = tick.tick() => mode.on_tick(&mut core),
        }
    }
}

/// Applies a scale request; the answer says what changed.
fn scale<M: Engine>(core: &mut Core, mode: &mut M, how: Scale) -> Reply {
    let name = core.prog.name.clone();
    if !core.running() {
        return Reply { ok: false, message: format!("program {name}: draining; not scaled") };
    }
    let now = mode.workers_wanted();
    match how.apply(now) {
        Ok(n) => {
            if n != now {
                info!(program = %name, "scaling from {now} to {n} worker(s)");
                mode.scale(core, n);
                core.prog.workers = n;
            }
            Reply { ok: true, message: format!("program {name}: {now} -> {n} worker(s)") }
        }
        Err(why) => Reply { ok: false, message: format!("program {name}: {why}") },
    }
}

fn begin_drain<M: Engine>(core: &mut Core, mode: &mut M) {
    if core.phase != Phase::Running {
        return;
    }
    if !core.reload_waiters.is_empty() {
        let message = format!("program {}: reload abandoned: draining", core.prog.name);
        core.answer_reload(false, message);
    }
    core.phase = Phase::Draining { deadline: Instant::now() + core.prog.timeouts.drain };
    let backlog =
        listener::close_for_drain(&mut core.listeners, &mut core.listener_status, core.held);
    for a in &backlog {
        core.count_accept(a.listener);
    }
    // What the kernel had accepted on a PROXY listener is read like the rest (and reaches the
    // mode when its header has been).
    let (proxied, backlog): (Vec<_>, Vec<_>) =
        backlog.into_iter().partition(|a| core.proxy_of(a.listener).is_some());
    mode.drain(core, backlog);
    for a in proxied {
        core.hand_on(mode, a);
    }
}

/// The outcome, once a draining engine is done or its deadline has passed.
fn finished<M: Engine>(core: &mut Core, mode: &mut M) -> Option<Outcome> {
    let Phase::Draining { deadline } = core.phase else { return None };
    let drained = match mode.drained(core) {
        // Connections whose PROXY header is being read are still to be served (each for at
        // most proxy::HEADER_TIMEOUT).
        Drained::Done | Drained::Reaping if core.proxy_pending > 0 => Drained::Busy,
        d => d,
    };
    match drained {
        Drained::Done => Some(core.outcome(core.code())),
        Drained::Busy if Instant::now() >= deadline => {
            warn!(program = %core.prog.name, "drain timed out: killing what is left");
            mode.kill_all(core);
            let mut out = core.outcome(core.code().or(ExitCode::DrainTimedOut));
            out.message
                .get_or_insert_with(|| "drain timed out; remaining workers were killed".to_owned());
            Some(out)
        }
        Drained::Busy | Drained::Reaping => None,
    }
}

fn status<M: Engine>(core: &mut Core, mode: &mut M) -> (ProgramStatus, Vec<ListenerStatus>) {
    // The mode first (prefork reads its workers' channels, which may settle a death and so
    // change the core's counters), then the core's counters as of now.
    let mut totals = Totals::default();
    let m = mode.status(core, &mut totals);
    totals.add(&core.totals);
    totals.live = m.live;
    let state =
        if m.reloading && core.running() { ProgramState::Reloading } else { core.phase.state() };
    let mut workers = m.workers;
    workers.sort_by_key(|w| w.slot);
    let p = ProgramStatus {
        name: core.prog.name.clone(),
        mode: M::KIND,
        command: core.prog.program.display().to_string(),
        state,
        workers_wanted: mode.workers_wanted(),
        queue: m.queue,
        controls: (&core.prog.controls).into(),
        workers,
        totals,
    };
    (p, core.listener_status.clone())
}

/// Waits until `at`; never, for `None`.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_parses_and_stays_in_range() {
        assert_eq!(Scale::parse("6"), Ok(Scale::To(6)));
        assert_eq!(Scale::parse("+2"), Ok(Scale::By(2)));
        assert_eq!(Scale::parse("-1"), Ok(Scale::By(-1)));
        for bad in ["", "x", "+", "-", "+-1", "--1", "1.5", "-x"] {
            assert!(Scale::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Scale::To(6).apply(2), Ok(6));
        assert_eq!(Scale::By(2).apply(2), Ok(4));
        assert_eq!(Scale::By(-1).apply(2), Ok(1));
        assert!(Scale::By(-2).apply(2).is_err(), "never below one worker");
        assert!(Scale::To(0).apply(2).is_err());
        assert!(Scale::To(MAX_WORKERS + 1).apply(2).is_err());
        assert!(Scale::By(i64::MAX).apply(2).is_err());
        assert!(Scale::By(i64::MIN).apply(2).is_err());
        for s in [Scale::To(3), Scale::By(2), Scale::By(-4), Scale::By(0)] {
            assert_eq!(Scale::parse(&s.to_arg()), Ok(s));
        }
    }
}
