//! `serve`: binds (or adopts) everything, runs one engine per program, and turns signals and
//! control requests into engine requests; runs both sides of a zero-downtime upgrade
//! ([`crate::upgrade`]) and reports to systemd.
//!
//! Runs on a single-threaded tokio runtime: workers are spawned from the main thread, which
//! lives as long as the process (Linux `PR_SET_PDEATHSIG` fires when the *thread* that spawned
//! a child exits), and all state is owned by one task per program, with no locks.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, warn};

use crate::config::{Config, ListenerConfig};
use crate::control::{Command, ControlSocket, Reply, Stopped};
use crate::engine::{self, Context as EngineContext, Core, Outcome, Request, Scale};
use crate::exit_codes::ExitCode;
use crate::listener::{self, Bound, Listener};
use crate::metrics::{self, Metrics};
use crate::model::{Mode, WorkerOutput};
use crate::output::Output;
use crate::status::{ListenerStatus, Status, SupervisorState, Totals};
use crate::sys::{self, Notify, Signal};
use crate::upgrade::{self, Handed, HandedListener, NewGeneration, Report, Startup};

use std::net::SocketAddr;

pub(crate) fn serve(config: Config, startup: Startup) -> Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    let prefixed = config.programs.iter().any(|p| p.controls.worker_output == WorkerOutput::Prefix);
    let (output, writer) = match prefixed.then(|| Output::start(config.log_format)) {
        Some(Ok((o, w))) => (Some(o), Some(w)),
        Some(Err(e)) => {
            warn!("cannot start the thread that writes workers' output ({e}): they write to the supervisor's stdout and stderr");
            (None, None)
        }
        None => (None, None),
    };
    let outcome = local.block_on(&runtime, supervise(config, startup, output));
    // The workers' last lines: every reader is gone with the tasks, the queue is written out.
    drop(local);
    if let Some(w) = writer {
        w.finish(Duration::from_secs(1));
    }
    outcome
}

/// A program's name and its engine's requests.
type Engine = (String, mpsc::UnboundedSender<Request>);

/// What the control socket and the metrics endpoint read.
struct Shared {
    senders: Vec<Engine>,
    started: Instant,
    state: Cell<SupervisorState>,
    generation: u64,
    upgrades_failed: Cell<u64>,
    /// The binary this generation was started from, as invoked.
    binary: String,
}

impl Shared {
    async fn status(&self) -> Status {
        let mut status = Status {
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            state: self.state.get(),
            generation: self.generation,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            binary: self.binary.clone(),
            upgrades: self.generation.saturating_sub(1),
            upgrades_failed: self.upgrades_failed.get(),
            log_writes_dropped: crate::logging::dropped(),
            ..Status::default()
        };
        let mut totals = Totals::default();
        for (_, e) in &self.senders {
            let (tx, rx) = oneshot::channel();
            if e.send(Request::Status(tx)).is_err() {
                continue;
            }
            if let Ok((p, l)) = rx.await {
                totals.add(&p.totals);
                status.programs.push(p);
                status.listeners.extend(l);
            }
        }
        status.totals = totals;
        status
    }

    /// Whether every engine's workers are ready.
    async fn ready(&self) -> bool {
        for (_, e) in &self.senders {
            let (tx, rx) = oneshot::channel();
            if e.send(Request::Ready(tx)).is_err() || !rx.await.unwrap_or(false) {
                return false;
            }
        }
        true
    }

    fn broadcast(&self, req: fn() -> Request) {
        for (_, s) in &self.senders {
            let _ = s.send(req());
        }
    }

    /// Reloads every program and answers `reply` once all are done.
    fn reload(&self, reply: oneshot::Sender<Reply>) {
        let answers: Vec<_> = self
            .senders
            .iter()
            .filter_map(|(_, s)| {
                let (tx, rx) = oneshot::channel();
                s.send(Request::Reload(Some(tx))).ok().map(|()| rx)
            })
            .collect();
        tokio::task::spawn_local(gather(answers, reply));
    }

    /// Scales `program` (every program for `None` with `all`, the only one for `None`
    /// otherwise) and answers `reply`, if any.
    fn scale(
        &self,
        program: Option<&str>,
        how: Scale,
        all: bool,
        reply: Option<oneshot::Sender<Reply>>,
    ) {
        let targets: Vec<_> = match program {
            Some(p) => self.senders.iter().filter(|(n, _)| n == p).collect(),
            None if all || self.senders.len() == 1 => self.senders.iter().collect(),
            None => Vec::new(),
        };
        if targets.is_empty() {
            let names: Vec<&str> = self.senders.iter().map(|(n, _)| n.as_str()).collect();
            let message = match program {
                Some(p) => format!("no program named {p:?} (programs: {})", names.join(", ")),
                None => format!("several programs run: name one ({})", names.join(", ")),
            };
            if let Some(r) = reply {
                let _ = r.send(Reply { ok: false, message });
            }
            return;
        }
        let answers: Vec<_> = targets
            .iter()
            .filter_map(|(_, s)| {
                let (tx, rx) = oneshot::channel();
                s.send(Request::Scale(how, Some(tx))).ok().map(|()| rx)
            })
            .collect();
        if let Some(r) = reply {
            tokio::task::spawn_local(gather(answers, r));
        }
    }
}

/// Answers `reply` with the engines' answers joined (ok if all are).
async fn gather(answers: Vec<oneshot::Receiver<Reply>>, reply: oneshot::Sender<Reply>) {
    let mut all = Reply { ok: true, message: String::new() };
    for rx in answers {
        let r = rx.await.unwrap_or_else(|_| Reply {
            ok: false,
            message: "a program stopped before it answered".to_owned(),
        });
        all.ok &= r.ok;
        if !all.message.is_empty() {
            all.message.push_str("; ");
        }
        all.message.push_str(&r.message);
    }
    let _ = reply.send(all);
}

impl metrics::StatusSource for Shared {
    async fn status(&self) -> Status {
        Shared::status(self).await
    }
}

/// A control request the main loop acts on (status is answered by the connection's task).
enum Control {
    /// A reload; the answer, if asked for, once it is done.
    Reload(Option<oneshot::Sender<Reply>>),
    /// A stop; the connection, if the client waits, is told how the supervisor exits.
    Stop(Option<Box<handover::tokio::Channel>>),
    Upgrade(oneshot::Sender<Reply>, Option<PathBuf>),
    Scale {
        program: Option<String>,
        how: Scale,
        reply: oneshot::Sender<Reply>,
    },
}

/// What the old generation says to a new one after the hand-off.
enum FromParent {
    Go,
    Closed,
}

async fn supervise(
    config: Config,
    mut startup: Startup,
    output: Option<Output>,
) -> Result<Outcome> {
    let parent = match startup.parent.take() {
        Some(c) => Some(Rc::new(
            handover::tokio::Channel::try_from(c).context("cannot use the upgrade channel")?,
        )),
        None => None,
    };
    let result = run(config, startup, parent.clone(), output.clone()).await;
    if let Some(o) = &output {
        // The workers have exited: what they wrote last is read to the end.
        o.settle(Duration::from_secs(1)).await;
    }
    if let (Err(e), Some(p)) = (&result, &parent) {
        let report = Report::Failed(format!("{e:#}")).encode();
        let _ = tokio::time::timeout(Duration::from_secs(2), p.send(&report, &[])).await;
    }
    result
}

/// Takes the socket systemd passed for `l`: by name (`FileDescriptorName=`), or the only one
/// passed when there is only one listener.
fn take_activated(
    activated: &mut Vec<(String, handover::Socket)>,
    l: &ListenerConfig,
    listeners: usize,
) -> Option<handover::Socket> {
    if let Some(i) = activated.iter().position(|(n, _)| *n == l.name) {
        return Some(activated.remove(i).1);
    }
    if activated.len() == 1 && listeners == 1 {
        let (name, s) = activated.remove(0);
        info!("taking the socket systemd passed as {name:?} for listener {:?}", l.name);
        return Some(s);
    }
    None
}

fn write_pid_file(path: &Path) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write the pid file {}", path.display()))
}

/// Removes the pid file if it still names this process.
fn remove_pid_file(path: &Path) {
    let mine =
        std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string());
    if mine {
        let _ = std::fs::remove_file(path);
    }
}

/// Where this supervisor stands in the upgrade life cycle.
enum Generation {
    /// Started by an upgrade: starts its workers but accepts nothing until the old generation
    /// says GO (then it takes over the control socket and pid file).
    Incoming(Rc<handover::tokio::Channel>),
    /// Serving: the first generation, or one that took over.
    Serving,
    /// Serving while a new generation starts; `waiters` asked for the upgrade and get its
    /// outcome.
    Upgrading {
        task: JoinHandle<Result<NewGeneration, String>>,
        waiters: Vec<oneshot::Sender<Reply>>,
    },
    /// A newer generation took over; this one drains.
    Superseded(Box<NewGeneration>),
}

/// The metrics endpoint: its task, and a copy of its listener to hand to the next generation.
struct MetricsEndpoint {
    task: JoinHandle<()>,
    handoff: (String, socket2::Socket),
}

/// A running supervisor: one method per event.
struct Supervisor {
    config: Config,
    argv: Vec<std::ffi::OsString>,
    exe: Option<PathBuf>,
    env: Rc<crate::config::Env>,
    generation_no: u64,
    generation: Generation,
    /// Readiness announced: `READY=1` to systemd (first generation), READY to the old
    /// generation (a new one).
    announced: bool,
    /// `--listen-when-ready`: listeners that listen once readiness is announced.
    deferred: Vec<Deferred>,
    draining: bool,
    shared: Rc<Shared>,
    engines: JoinSet<Outcome>,
    control: ControlSocket,
    control_errors: listener::AcceptErrors,
    ctl_tx: mpsc::UnboundedSender<Control>,
    /// Copies of the listeners, for the next generation (closed when the drain begins).
    handoff: Vec<Handed>,
    metrics: Option<MetricsEndpoint>,
    /// Unix socket files to remove at exit (unless a newer generation took them over).
    owned_paths: Vec<PathBuf>,
    code: ExitCode,
    message: Option<String>,
    /// `handover stop` clients waiting to hear how this supervisor exits.
    stop_waiters: Vec<handover::tokio::Channel>,
}

/// What the loop does after an event.
enum Flow {
    Continue,
    Exit,
}

/// The listeners: handed over by the old generation, passed by systemd, or bound here. Also
/// returns the Unix socket files this generation is responsible for removing.
/// A listener bound but not listening yet (`--listen-when-ready`).
#[derive(Debug)]
struct Deferred {
    name: String,
    socket: socket2::Socket,
    backlog: i32,
}

/// What [`bind_listeners`] gives.
struct Listeners {
    bound: Vec<Option<Bound>>,
    /// Unix socket files this generation removes when it exits for good.
    owned_paths: Vec<PathBuf>,
    deferred: Vec<Deferred>,
}

/// Binds or adopts every listener. With `defer_listen` (`--listen-when-ready`, first
/// generation) the ones bound here are not listening yet: copies of them come back too, to
/// listen on once the workers are ready.
fn bind_listeners(
    config: &Config,
    mut handed: Vec<(HandedListener, handover::Socket)>,
    mut activated: Vec<(String, handover::Socket)>,
    defer_listen: bool,
) -> Result<Listeners> {
    let mut deferred = Vec::new();
    let mode_of = |i: usize| {
        config.programs.iter().find(|p| p.listeners.contains(&i)).map_or(Mode::Prefork, |p| p.mode)
    };
    let mut owned_paths: Vec<PathBuf> = Vec::new();
    let mut bound: Vec<Option<Bound>> = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let b = if let Some(k) = handed.iter().position(|(h, _)| h.name == l.name) {
            let (info, socket) = handed.remove(k);
            let mode = mode_of(i);
            if !Bound::matches(&socket, &l.addr) {
                warn!(
                    "listener {:?} now listens on {}: binding it afresh (the old address closes with the old generation)",
                    l.name, l.addr
                );
                owned_paths.extend(info.unix_path);
                listener::bind(l, true)?
            } else if (info.mode == Mode::Shared) != (mode == Mode::Shared) {
                bail!(
                    "listener {:?} would move from {:?} to {mode:?} mode, which an upgrade cannot do \
                     (shared-mode sockets are blocking, the others non-blocking): restart instead",
                    l.name,
                    info.mode
                );
            } else {
                Bound::adopt(l, socket, info.unix_path)?
            }
        } else if let Some(socket) = take_activated(&mut activated, l, config.listeners.len()) {
            // systemd owns the socket (and its file, if any).
            Bound::adopt(l, socket, None)?
        } else {
            let b = listener::bind(l, !defer_listen)?;
            if defer_listen {
                let copy = b.socket.try_clone().context("cannot duplicate a listener")?;
                deferred.push(Deferred { name: l.name.clone(), socket: copy, backlog: l.backlog });
            }
            b
        };
        owned_paths.extend(b.unix_path.clone());
        bound.push(Some(b));
    }
    for (info, _) in handed {
        info!(
            "listener {:?} is not in the new configuration: it closes with the old generation",
            info.name
        );
        owned_paths.extend(info.unix_path);
    }
    for (name, _) in activated {
        warn!("systemd passed a socket named {name:?}, which no listener is named: closing it");
    }
    Ok(Listeners { bound, owned_paths, deferred })
}

/// The metrics listener: handed over (two processes cannot bind one port), or bound here.
/// Returns it with its address and a copy for the next generation.
fn metrics_listener(
    addr: SocketAddr,
    handed: Option<handover::Socket>,
) -> Result<(tokio::net::TcpListener, String, socket2::Socket)> {
    let std_listener = match handed {
        Some(s)
            if s.try_clone()
                .ok()
                .and_then(|s| s.into_socket2().local_addr().ok())
                .and_then(|a| a.as_socket())
                == Some(addr)
                || addr.port() == 0 =>
        {
            std::net::TcpListener::try_from(s)
                .context("the metrics socket from the old generation")?
        }
        _ => std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?,
    };
    let local = std_listener.local_addr().map_or(addr.to_string(), |a| a.to_string());
    std_listener.set_nonblocking(true)?;
    let dup = socket2::Socket::from(std_listener.try_clone()?);
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    Ok((listener, local, dup))
}

/// Starts one engine per program on the listeners it serves; returns the copies of those
/// listeners kept for an upgrade.
fn start_engines(
    config: &Config,
    env: &Rc<crate::config::Env>,
    mut bound: Vec<Option<Bound>>,
    ctx: &EngineContext,
    engines: &mut JoinSet<Outcome>,
) -> Result<(Vec<Engine>, Vec<Handed>)> {
    let mut senders = Vec::new();
    let mut handoff = Vec::new();
    for prog in &config.programs {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push((prog.name.clone(), tx));
        let mine: Vec<Bound> = prog
            .listeners
            .iter()
            .map(|&i| bound[i].take().expect("one program per listener"))
            .collect();
        for b in &mine {
            let generation = ctx.generation;
            info!(program = %prog.name, mode = ?prog.mode, workers = prog.workers, generation, "listening on {} ({})", b.local, b.name);
            handoff.push(Handed {
                info: HandedListener {
                    name: b.name.clone(),
                    mode: prog.mode,
                    unix_path: b.unix_path.clone(),
                },
                socket: b.socket.try_clone().context("cannot keep a copy of a listener")?,
            });
        }
        let files = crate::output::ProgramFiles::open(prog).with_context(|| {
            format!("program {:?}: cannot open its stdout or stderr file", prog.name)
        })?;
        let (prog, env, ctx) = (prog.clone(), Rc::clone(env), ctx.clone());
        let status: Vec<ListenerStatus> = mine
            .iter()
            .map(|b| {
                let policy = (prog.mode == Mode::Prefork).then(|| b.policy.name());
                let accepted = (prog.mode != Mode::Shared).then_some(0);
                ListenerStatus::open(&b.name, &b.local, &prog.name, policy, accepted)
            })
            .collect();
        if prog.mode == Mode::Shared {
            let mut core = Core::new(prog, env, Vec::new(), status, ctx);
            core.files = files;
            let mode = crate::shared::Shared::new(&core, mine);
            engines.spawn_local(engine::run(core, mode, rx));
            continue;
        }
        let listeners = mine
            .into_iter()
            .enumerate()
            .map(|(i, b)| Listener::new(i as u16, b))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot register the listeners")?;
        let mut core = Core::new(prog, env, listeners, status, ctx);
        core.files = files;
        if core.prog.mode == Mode::Prefork {
            let mode = crate::prefork::Prefork::new(&core);
            engines.spawn_local(engine::run(core, mode, rx));
        } else {
            let mode = crate::spawn::Spawn::new(&core);
            engines.spawn_local(engine::run(core, mode, rx));
        }
    }
    Ok((senders, handoff))
}

async fn run(
    config: Config,
    startup: Startup,
    parent: Option<Rc<handover::tokio::Channel>>,
    output: Option<Output>,
) -> Result<Outcome> {
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<Control>();
    let (parent_tx, parent_rx) = mpsc::unbounded_channel::<FromParent>();
    let sup = Supervisor::start(config, startup, parent, output, ctl_tx, parent_tx).await?;
    sup.run(ctl_rx, parent_rx).await
}

impl Supervisor {
    /// Binds (or adopts) everything, starts the engines, the metrics endpoint and the control
    /// socket.
    async fn start(
        config: Config,
        startup: Startup,
        parent: Option<Rc<handover::tokio::Channel>>,
        output: Option<Output>,
        ctl_tx: mpsc::UnboundedSender<Control>,
        parent_tx: mpsc::UnboundedSender<FromParent>,
    ) -> Result<Supervisor> {
        let started = Instant::now();
        // What the previous generation hands over, if this is a new one.
        let (mut generation_no, mut handed, mut handed_metrics) = (1, Vec::new(), None);
        if let Some(p) = &parent {
            let (h, sockets, m) = upgrade::receive_handoff(p).await?;
            generation_no = h.generation;
            handed = h.listeners.into_iter().zip(sockets).collect::<Vec<_>>();
            handed_metrics = m;
            info!(
                generation = generation_no,
                "upgrade: received {} listening socket(s) from the old generation",
                handed.len()
            );
        }
        if !startup.activated.is_empty() {
            info!("socket activation: {} socket(s) passed", startup.activated.len());
        }
        let defer = config.listen_when_ready && parent.is_none();
        let Listeners { bound, owned_paths, deferred } =
            bind_listeners(&config, handed, startup.activated, defer)?;
        let metrics = match config.metrics {
            None => None,
            Some(addr) => {
                let (listener, local, dup) = metrics_listener(addr, handed_metrics.take())?;
                info!("metrics on http://{local}/metrics");
                Some((Rc::new(Metrics::new()), listener, (local, dup)))
            }
        };
        if config.control == crate::config::default_control_path(&config.env) {
            // `%LOCALAPPDATA%\handover\` on first use (Unix's defaults are directories that
            // exist).
            if let Some(dir) = config.control.parent().filter(|d| !d.exists()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the control socket's directory {}", dir.display())
                })?;
            }
        }
        let control = if parent.is_some() {
            ControlSocket::bind_staged(&config.control)?
        } else {
            ControlSocket::bind(&config.control)?
        };
        info!("control socket at {} (handover status --control PATH)", config.control.display());
        if parent.is_none() {
            if let Some(p) = &config.pid_file {
                write_pid_file(p)?;
            }
        }
        let env = Rc::new(config.env.clone());
        let ctx = EngineContext {
            // Until GO from the old generation, or until the deferred listeners listen.
            held: parent.is_some() || !deferred.is_empty(),
            generation: generation_no,
            handoff_latency: metrics.as_ref().map(|(m, _, _)| m.handoff_latency.clone()),
            output,
        };
        let mut engines = JoinSet::new();
        let (senders, handoff) = start_engines(&config, &env, bound, &ctx, &mut engines)?;
        let shared = Rc::new(Shared {
            senders,
            started,
            state: Cell::new(if parent.is_some() {
                SupervisorState::Starting
            } else {
                SupervisorState::Running
            }),
            generation: generation_no,
            upgrades_failed: Cell::new(0),
            binary: startup.exe.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        });
        let metrics = metrics.map(|(m, listener, handoff)| MetricsEndpoint {
            task: tokio::task::spawn_local(metrics::serve(listener, m, Rc::clone(&shared))),
            handoff,
        });
        let generation = match parent {
            Some(p) => {
                tokio::task::spawn_local(read_parent(Rc::clone(&p), parent_tx));
                Generation::Incoming(p)
            }
            None => Generation::Serving,
        };
        Ok(Supervisor {
            config,
            argv: startup.argv,
            exe: startup.exe,
            env,
            generation_no,
            generation,
            announced: false,
            deferred,
            draining: false,
            shared,
            engines,
            control,
            control_errors: listener::AcceptErrors::default(),
            ctl_tx,
            handoff,
            metrics,
            owned_paths,
            code: ExitCode::Success,
            message: None,
            stop_waiters: Vec::new(),
        })
    }

    async fn run(
        mut self,
        mut ctl_rx: mpsc::UnboundedReceiver<Control>,
        mut parent_rx: mpsc::UnboundedReceiver<FromParent>,
    ) -> Result<Outcome> {
        let mut signals = sys::Signals::new().context("cannot install signal handlers")?;
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let upgrading = matches!(self.generation, Generation::Upgrading { .. });
            let flow = tokio::select! {
                sig = signals.recv() => self.on_signal(sig).await,
                Some(cmd) = ctl_rx.recv() => self.on_control(cmd),
                Some(ev) = parent_rx.recv() => self.on_parent(ev),
                result = upgrade_done(&mut self.generation), if upgrading => self.on_upgrade_done(result),
                conn = self.control.accept(), if !self.control_errors.paused() => self.on_control_conn(conn),
                _ = engine::sleep_until(self.control_errors.resume_at()) => Flow::Continue,
                _ = tick.tick(), if !self.announced && !self.draining => self.on_tick().await,
                done = self.engines.join_next() => self.on_engine_done(done),
            };
            if let Flow::Exit = flow {
                break;
            }
        }
        Ok(self.finish().await)
    }

    async fn on_signal(&mut self, sig: Signal) -> Flow {
        match sig {
            Signal::Reload => {
                info!("SIGHUP: reloading workers");
                self.shared.broadcast(|| Request::Reload(None));
            }
            Signal::AddWorker | Signal::RemoveWorker if self.draining => {}
            Signal::AddWorker => {
                info!("SIGTTIN: one more worker for every program");
                self.shared.scale(None, Scale::By(1), true, None);
            }
            Signal::RemoveWorker => {
                info!("SIGTTOU: one worker fewer for every program");
                self.shared.scale(None, Scale::By(-1), true, None);
            }
            Signal::Upgrade => {
                info!("SIGUSR2: upgrading");
                self.upgrade(None, None);
            }
            Signal::Terminate | Signal::Interrupt if self.draining => {
                warn!("second {sig:?} while draining: killing the workers");
                return self.kill_all(sig).await;
            }
            Signal::Quit => {
                warn!("SIGQUIT: fast shutdown, killing the workers now");
                return self.kill_all(sig).await;
            }
            Signal::ReopenLogs => {
                let (done, failed) = crate::logging::reopen();
                if done.is_empty() && failed.is_empty() {
                    info!("SIGUSR1: no --log-file to reopen");
                }
                for path in done {
                    info!("SIGUSR1: reopened the log file {}", path.display());
                }
                for (path, e) in failed {
                    error!(
                        "SIGUSR1: cannot reopen the log file {} ({e}); writing on to the old one",
                        path.display()
                    );
                }
            }
            Signal::Ignored(name) => {
                info!(
                    "{name}: ignored (it means nothing to handover; see the README's signal table)"
                );
            }
            Signal::Terminate | Signal::Interrupt => {
                info!("{sig:?}: draining (again to kill the workers now)");
                self.drain();
            }
        }
        Flow::Continue
    }

    /// Kills every worker now and exits with 128 + the signal's number, as a shell reports a
    /// process that signal killed: a second `SIGTERM`/`SIGINT` during a drain, or `SIGQUIT`.
    async fn kill_all(&mut self, sig: Signal) -> Flow {
        self.drain();
        self.shared.broadcast(|| Request::Kill);
        while self.engines.join_next().await.is_some() {}
        self.code = ExitCode::KilledBySignal(sig.number());
        Flow::Exit
    }

    fn on_control(&mut self, cmd: Control) -> Flow {
        match cmd {
            Control::Reload(None) => self.shared.broadcast(|| Request::Reload(None)),
            Control::Reload(Some(reply)) => self.shared.reload(reply),
            Control::Stop(waiter) => {
                self.stop_waiters.extend(waiter.map(|w| *w));
                self.drain();
            }
            Control::Upgrade(reply, binary) => self.upgrade(Some(reply), binary),
            Control::Scale { program, how, reply } => {
                self.shared.scale(program.as_deref(), how, false, Some(reply))
            }
        }
        Flow::Continue
    }

    /// The old generation said GO, or went away (a new generation's).
    fn on_parent(&mut self, ev: FromParent) -> Flow {
        let Generation::Incoming(parent) = &self.generation else { return Flow::Continue };
        if self.draining {
            return Flow::Continue;
        }
        let parent = Rc::clone(parent);
        match ev {
            FromParent::Go => match take_over(&mut self.control, self.config.pid_file.as_deref()) {
                Ok(()) => {
                    self.serve();
                    // Before the old generation hears of it, so before it exits.
                    crate::init::announce(&self.env);
                    report_to(
                        &parent,
                        Report::TookOver {
                            pid: std::process::id(),
                            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                        },
                    );
                    let generation = self.generation_no;
                    info!(generation, "upgrade: generation {generation} took over");
                }
                Err(e) => {
                    error!("upgrade: cannot take over: {e:#}");
                    report_to(&parent, Report::Failed(format!("{e:#}")));
                    self.drain();
                }
            },
            FromParent::Closed => {
                // The old generation is gone without a word: nobody else serves now.
                warn!("upgrade: the old generation went away before the hand-over finished; taking over");
                if let Err(e) = take_over(&mut self.control, self.config.pid_file.as_deref()) {
                    warn!("{e:#}");
                }
                self.serve();
            }
        }
        Flow::Continue
    }

    /// A new generation commits: it serves from now on.
    fn serve(&mut self) {
        self.generation = Generation::Serving;
        self.shared.broadcast(|| Request::Start);
        self.shared.state.set(SupervisorState::Running);
    }

    fn on_upgrade_done(&mut self, result: Result<NewGeneration, String>) -> Flow {
        if !matches!(self.generation, Generation::Upgrading { .. }) {
            return Flow::Continue;
        }
        let Generation::Upgrading { waiters, .. } =
            std::mem::replace(&mut self.generation, Generation::Serving)
        else {
            unreachable!("matched above")
        };
        let generation = self.generation_no;
        match result {
            Ok(new) => {
                let msg = format!(
                    "upgraded: generation {} (pid {}, version {}, binary {}) is serving; generation {generation} (pid {}, version {}) drains and exits",
                    new.generation,
                    new.pid,
                    new.version.as_deref().unwrap_or("unknown"),
                    new.binary.display(),
                    std::process::id(),
                    env!("CARGO_PKG_VERSION"),
                );
                info!("{msg}");
                let status =
                    format!("handed over to generation {} (pid {})", new.generation, new.pid);
                sys::notify(&[Notify::MainPid(new.pid), Notify::Ready, Notify::Status(&status)]);
                for w in waiters {
                    let _ = w.send(Reply { ok: true, message: msg.clone() });
                }
                self.generation = Generation::Superseded(Box::new(new));
                self.shared.state.set(SupervisorState::Upgraded);
                self.owned_paths.clear(); // the new generation's now
                if let Some(m) = self.metrics.take() {
                    m.task.abort();
                }
                self.drain();
            }
            Err(why) => {
                self.shared.upgrades_failed.set(self.shared.upgrades_failed.get() + 1);
                let msg = format!(
                    "upgrade failed: {why}; generation {generation} (pid {}) carries on serving",
                    std::process::id()
                );
                error!("{msg}");
                sys::notify(&[Notify::Ready, Notify::Status(&msg)]);
                for w in waiters {
                    let _ = w.send(Reply { ok: false, message: msg.clone() });
                }
                self.shared.state.set(SupervisorState::Running);
            }
        }
        Flow::Continue
    }

    fn on_control_conn(&mut self, conn: handover::Result<handover::tokio::Channel>) -> Flow {
        match conn {
            Ok(ch) => {
                tokio::task::spawn_local(answer(ch, Rc::clone(&self.shared), self.ctl_tx.clone()));
            }
            // Out of descriptors, say: back off instead of spinning on a ready listener.
            Err(handover::Error::Io(e)) => self.control_errors.failed("control socket", &e),
            Err(e) => warn!("control socket: {e}"),
        }
        Flow::Continue
    }

    /// Until readiness is announced: announces it once every engine's workers are ready.
    async fn on_tick(&mut self) -> Flow {
        if !self.shared.ready().await {
            return Flow::Continue;
        }
        self.announced = true;
        let generation = self.generation_no;
        match &self.generation {
            Generation::Incoming(parent) => {
                info!(generation, "upgrade: ready; waiting for the old generation to let go");
                report_to(parent, Report::Ready);
            }
            _ => {
                if !self.deferred.is_empty() {
                    for d in std::mem::take(&mut self.deferred) {
                        if let Err(e) = listener::listen(&d.socket, d.backlog) {
                            error!("cannot listen on listener {:?}: {e}", d.name);
                            self.code = self.code.or(ExitCode::Failure);
                            self.drain();
                            return Flow::Continue;
                        }
                    }
                    info!("listening now that the workers are ready (--listen-when-ready)");
                    self.shared.broadcast(|| Request::Start);
                }
                info!(generation, "ready");
                sys::notify(&[Notify::Ready, Notify::Status("serving")]);
            }
        }
        Flow::Continue
    }

    fn on_engine_done(&mut self, done: Option<Result<Outcome, tokio::task::JoinError>>) -> Flow {
        match done {
            None => return Flow::Exit,
            Some(Ok(outcome)) => {
                if outcome.code != ExitCode::Success {
                    // One program failed for good: stop the others too.
                    self.drain();
                }
                self.code = self.code.or(outcome.code);
                if self.message.is_none() {
                    self.message = outcome.message;
                }
            }
            Some(Err(e)) => {
                self.code = self.code.or(ExitCode::Failure);
                self.message.get_or_insert_with(|| format!("internal error: {e}"));
                self.drain();
            }
        }
        Flow::Continue
    }

    /// Starts draining (for any reason): the copies kept for an upgrade close too, so the
    /// listeners close once the engines let go of theirs; an upgrade under way is abandoned.
    fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.handoff.clear();
        if let Generation::Upgrading { .. } = self.generation {
            let Generation::Upgrading { task, waiters } =
                std::mem::replace(&mut self.generation, Generation::Serving)
            else {
                unreachable!("matched above")
            };
            task.abort(); // the guard in the task stops the new generation
            for w in waiters {
                let _ = w.send(Reply {
                    ok: false,
                    message: "the supervisor began to drain; upgrade abandoned".into(),
                });
            }
        }
        match &self.generation {
            Generation::Superseded(_) => {}
            g => {
                self.shared.state.set(SupervisorState::Draining);
                if !matches!(g, Generation::Incoming(_)) {
                    sys::notify(&[Notify::Stopping]);
                }
            }
        }
        self.shared.broadcast(|| Request::Drain);
    }

    /// An upgrade was asked for (by `SIGUSR2`: no `reply`, or the control socket).
    fn upgrade(&mut self, reply: Option<oneshot::Sender<Reply>>, binary: Option<PathBuf>) {
        let refused = if self.draining {
            Some("the supervisor is draining")
        } else if !self.deferred.is_empty() {
            Some("the supervisor is not listening yet (--listen-when-ready: no worker is ready)")
        } else {
            match self.generation {
                Generation::Upgrading { .. } => Some("an upgrade is already in progress"),
                Generation::Incoming(_) => {
                    Some("this generation has not taken over from the previous one yet")
                }
                Generation::Serving | Generation::Superseded(_) => None,
            }
        };
        let plan = match refused {
            Some(why) => Err(why.to_owned()),
            None => self.plan_upgrade(binary),
        };
        match plan {
            Ok(plan) => {
                self.shared.state.set(SupervisorState::Upgrading);
                sys::notify(&[Notify::Reloading, Notify::Status("upgrading")]);
                let task = tokio::task::spawn_local(upgrade::start(plan));
                self.generation =
                    Generation::Upgrading { task, waiters: reply.into_iter().collect() };
            }
            Err(why) => {
                let msg = format!("upgrade refused: {why}");
                warn!("{msg}");
                if let Some(r) = reply {
                    let _ = r.send(Reply { ok: false, message: msg });
                }
            }
        }
    }

    fn plan_upgrade(&self, binary: Option<PathBuf>) -> Result<upgrade::Plan, String> {
        let exe = match binary {
            Some(path) => upgrade::check_binary(path)?,
            None => {
                let startup = Startup { exe: self.exe.clone(), ..Startup::default() };
                upgrade::binary(&startup).map_err(|e| e.to_string())?
            }
        };
        let dup = |s: &socket2::Socket| {
            s.try_clone().map_err(|e| format!("cannot duplicate a listener: {e}"))
        };
        let listeners = self
            .handoff
            .iter()
            .map(|h| Ok(Handed { info: h.info.clone(), socket: dup(&h.socket)? }))
            .collect::<Result<Vec<_>, String>>()?;
        let metrics = match &self.metrics {
            Some(MetricsEndpoint { handoff: (a, s), .. }) => Some((a.clone(), dup(s)?)),
            None => None,
        };
        Ok(upgrade::Plan {
            exe,
            argv: self.argv.clone(),
            env: Rc::clone(&self.env),
            generation: self.generation_no + 1,
            listeners,
            metrics,
            ready_timeout: self.config.ready_timeout,
            control: self.config.control.clone(),
        })
    }

    /// After the loop: tells an old generation this one never took over, and cleans up.
    async fn finish(self) -> Outcome {
        if let Generation::Superseded(new) = &self.generation {
            let (generation, pid) = (new.generation, new.pid);
            info!(
                generation = self.generation_no,
                "drained; generation {generation} (pid {pid}) serves on"
            );
        }
        if let Generation::Incoming(p) = &self.generation {
            let why =
                self.message.clone().unwrap_or_else(|| "it stopped before taking over".to_owned());
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                p.send(&Report::Failed(why).encode(), &[]),
            )
            .await;
        }
        self.control.close();
        if !matches!(self.generation, Generation::Superseded(_)) {
            for p in &self.owned_paths {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(p) = &self.config.pid_file {
            remove_pid_file(p);
        }
        if let Some(m) = self.metrics {
            m.task.abort();
            // Its listener is closed once the task is dropped, before anyone is told.
            let _ = m.task.await;
        }
        // Every listener is closed now (the engines have ended, the copies for an upgrade were
        // dropped when the drain began), and so are the control socket and pid file: a waiting
        // `handover stop` may start the next supervisor at once.
        let stopped = Stopped { code: self.code.code(), message: self.message.clone() };
        let report = serde_json::to_vec(&stopped).unwrap_or_default();
        for w in &self.stop_waiters {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.send(&report, &[])).await;
        }
        // Their connections stay open until the process has exited, which is how a waiting
        // `handover stop` knows it has (the end of the stream), on every OS.
        std::mem::forget(self.stop_waiters);
        Outcome { code: self.code, message: self.message }
    }
}

/// Waits for the upgrade task (only polled while there is one).
async fn upgrade_done(g: &mut Generation) -> Result<NewGeneration, String> {
    match g {
        Generation::Upgrading { task, .. } => {
            task.await.unwrap_or_else(|e| Err(format!("internal error: {e}")))
        }
        _ => std::future::pending().await,
    }
}

/// Sends `report` to the old generation on a task of its own, so the main loop (signals, the
/// control socket) never waits on a parent that is slow to read; reports keep their order
/// (each is sent only after the parent's answer to the previous one has arrived).
fn report_to(parent: &Rc<handover::tokio::Channel>, report: Report) {
    let p = Rc::clone(parent);
    tokio::task::spawn_local(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), p.send(&report.encode(), &[])).await;
    });
}

/// A new generation commits: the control socket and pid file become its own.
fn take_over(control: &mut ControlSocket, pid_file: Option<&Path>) -> Result<()> {
    control.publish()?;
    if let Some(p) = pid_file {
        write_pid_file(p)?;
    }
    Ok(())
}

/// Reads the old generation's channel (a new generation's): GO, or its end.
async fn read_parent(p: Rc<handover::tokio::Channel>, tx: mpsc::UnboundedSender<FromParent>) {
    loop {
        match p.recv().await {
            Ok(m) if m.bytes == upgrade::GO => {
                let _ = tx.send(FromParent::Go);
            }
            Ok(_) => {}
            Err(_) => {
                let _ = tx.send(FromParent::Closed);
                return;
            }
        }
    }
}

/// Serves one control connection.
async fn answer(
    ch: handover::tokio::Channel,
    shared: Rc<Shared>,
    ctl: mpsc::UnboundedSender<Control>,
) {
    let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), ch.recv()).await else {
        return;
    };
    let reply = match Command::parse(&msg.bytes) {
        Some(Command::Status) => serde_json::to_vec(&shared.status().await).unwrap_or_default(),
        Some(Command::Upgrade { binary }) => {
            let (tx, rx) = oneshot::channel();
            let _ = ctl.send(Control::Upgrade(tx, binary.map(PathBuf::from)));
            let r = rx.await.unwrap_or(Reply {
                ok: false,
                message: "the supervisor stopped before the upgrade finished".into(),
            });
            serde_json::to_vec(&r).unwrap_or_default()
        }
        Some(Command::Reload) => {
            let _ = ctl.send(Control::Reload(None));
            b"ok".to_vec()
        }
        Some(Command::ReloadWait) => {
            let (tx, rx) = oneshot::channel();
            let _ = ctl.send(Control::Reload(Some(tx)));
            let r = rx.await.unwrap_or(Reply {
                ok: false,
                message: "the supervisor stopped before the reload finished".into(),
            });
            serde_json::to_vec(&r).unwrap_or_default()
        }
        Some(Command::Scale { program, how }) => {
            let (tx, rx) = oneshot::channel();
            let _ = ctl.send(Control::Scale { program, how, reply: tx });
            let r = rx.await.unwrap_or(Reply {
                ok: false,
                message: "the supervisor stopped before it answered".into(),
            });
            serde_json::to_vec(&r).unwrap_or_default()
        }
        Some(Command::Stop) => {
            let _ = ctl.send(Control::Stop(None));
            b"ok".to_vec()
        }
        Some(Command::StopWait) => {
            // Answered by `Supervisor::finish`, as the supervisor exits.
            let _ = ctl.send(Control::Stop(Some(Box::new(ch))));
            return;
        }
        None => b"unknown request (expected status, reload, reload wait, scale, upgrade, stop or stop wait)"
            .to_vec(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ch.send(&reply, &[])).await;
}
