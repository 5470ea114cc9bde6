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

use crate::cli::Mode;
use crate::config::{Config, ListenerConfig};
use crate::control::{Command, ControlSocket, UpgradeReply};
use crate::engine::{self, Context as EngineContext, Core, Outcome, Request};
use crate::exit_codes::ExitCode;
use crate::listener::{self, Bound, Listener};
use crate::metrics::{self, Metrics};
use crate::status::{ListenerStatus, Status, Totals};
use crate::sys::{self, Notify, Signal};
use crate::upgrade::{self, Handed, HandedListener, NewGeneration, Report, Startup};

pub(crate) fn serve(config: Config, startup: Startup) -> Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, supervise(config, startup))
}

/// What the control socket and the metrics endpoint read.
struct Shared {
    senders: Vec<mpsc::UnboundedSender<Request>>,
    started: Instant,
    state: Cell<&'static str>,
    generation: u64,
    upgrades_failed: Cell<u64>,
}

impl Shared {
    async fn status(&self) -> Status {
        let mut status = Status {
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            state: self.state.get().to_owned(),
            generation: self.generation,
            upgrades: self.generation.saturating_sub(1),
            upgrades_failed: self.upgrades_failed.get(),
            ..Status::default()
        };
        let mut totals = Totals::default();
        for e in &self.senders {
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
        for e in &self.senders {
            let (tx, rx) = oneshot::channel();
            if e.send(Request::Ready(tx)).is_err() || !rx.await.unwrap_or(false) {
                return false;
            }
        }
        true
    }

    fn broadcast(&self, req: fn() -> Request) {
        for s in &self.senders {
            let _ = s.send(req());
        }
    }
}

impl metrics::StatusSource for Shared {
    async fn status(&self) -> Status {
        Shared::status(self).await
    }
}

/// A control request the main loop acts on (status is answered by the connection's task).
enum Control {
    Reload,
    Stop,
    Upgrade(oneshot::Sender<UpgradeReply>),
}

/// What the old generation says to a new one after the hand-off.
enum FromParent {
    Go,
    Closed,
}

async fn supervise(config: Config, mut startup: Startup) -> Result<Outcome> {
    let parent = match startup.parent.take() {
        Some(c) => Some(Rc::new(
            handover::tokio::Channel::try_from(c).context("cannot use the upgrade channel")?,
        )),
        None => None,
    };
    let result = run(config, startup, parent.clone()).await;
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

async fn run(
    config: Config,
    startup: Startup,
    parent: Option<Rc<handover::tokio::Channel>>,
) -> Result<Outcome> {
    let started = Instant::now();

    // What the previous generation hands over, if this is a new one.
    let (mut generation, mut handed, mut handed_metrics) = (1, Vec::new(), None);
    if let Some(p) = &parent {
        let (h, sockets, m) = upgrade::receive_handoff(p).await?;
        generation = h.generation;
        handed = h.listeners.into_iter().zip(sockets).collect::<Vec<_>>();
        handed_metrics = m;
        info!(
            generation,
            "upgrade: received {} listening socket(s) from the old generation",
            handed.len()
        );
    }
    let mut activated = startup.activated;
    if !activated.is_empty() {
        info!("socket activation: {} socket(s) passed", activated.len());
    }

    // The listeners: handed over, passed by systemd, or bound here.
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
                listener::bind(l)?
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
            listener::bind(l)?
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

    // Metrics: the listener is handed over too (two processes cannot bind one port).
    let metrics = match config.metrics {
        None => None,
        Some(addr) => {
            let std_listener = match handed_metrics.take() {
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
            info!("metrics on http://{local}/metrics");
            Some((Rc::new(Metrics::new()), listener, (local, dup)))
        }
    };

    let mut control = if parent.is_some() {
        ControlSocket::bind_staged(&config.control)?
    } else {
        ControlSocket::bind(&config.control)?
    };
    if parent.is_none() {
        if let Some(p) = &config.pid_file {
            write_pid_file(p)?;
        }
    }
    let mut signals = sys::Signals::new().context("cannot install signal handlers")?;
    let env = Rc::new(config.env.clone());

    let ctx = EngineContext {
        held: parent.is_some(),
        generation,
        handoff_latency: metrics.as_ref().map(|(m, _, _)| m.handoff_latency.clone()),
    };
    let mut engines = JoinSet::new();
    let mut senders = Vec::new();
    let mut handoff: Vec<Handed> = Vec::new();
    for prog in &config.programs {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let mine: Vec<Bound> = prog
            .listeners
            .iter()
            .map(|&i| bound[i].take().expect("one program per listener"))
            .collect();
        for b in &mine {
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
        let (prog, env, ctx) = (prog.clone(), Rc::clone(&env), ctx.clone());
        let status: Vec<ListenerStatus> = mine
            .iter()
            .map(|b| {
                let policy =
                    (prog.mode == Mode::Prefork).then(|| crate::cli::policy_name(b.policy));
                let accepted = (prog.mode != Mode::Shared).then_some(0);
                ListenerStatus::open(&b.name, &b.local, &prog.name, policy, accepted)
            })
            .collect();
        if prog.mode == Mode::Shared {
            let core = Core::new(prog, env, Vec::new(), status, ctx);
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
        let core = Core::new(prog, env, listeners, status, ctx);
        if core.prog.mode == Mode::Prefork {
            let mode = crate::prefork::Prefork::new(&core);
            engines.spawn_local(engine::run(core, mode, rx));
        } else {
            let mode = crate::spawn::Spawn::new(&core);
            engines.spawn_local(engine::run(core, mode, rx));
        }
    }
    let shared = Rc::new(Shared {
        senders,
        started,
        state: Cell::new(if parent.is_some() { "starting" } else { "running" }),
        generation,
        upgrades_failed: Cell::new(0),
    });
    let (mut metrics_task, mut metrics_handoff) = (None::<JoinHandle<()>>, None);
    if let Some((m, listener, dup)) = metrics {
        metrics_task =
            Some(tokio::task::spawn_local(metrics::serve(listener, m, Rc::clone(&shared))));
        metrics_handoff = Some(dup);
    }
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Control>();
    let (parent_tx, mut parent_rx) = mpsc::unbounded_channel::<FromParent>();
    if let Some(p) = &parent {
        tokio::task::spawn_local(read_parent(Rc::clone(p), parent_tx));
    }

    let mut code = ExitCode::Success;
    let mut message = None;
    let mut draining = false;
    // Ready announced: READY=1 to systemd (generation 1), READY to the old generation.
    let mut announced = false;
    // A new generation: committed (accepting, control socket and pid file moved).
    let mut took_over = parent.is_none();
    let mut upgrading: Option<JoinHandle<Result<NewGeneration, String>>> = None;
    let mut waiters: Vec<oneshot::Sender<UpgradeReply>> = Vec::new();
    let mut upgraded: Option<NewGeneration> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut control_errors = listener::AcceptErrors::default();

    // Starts draining (for any reason): the copies kept for an upgrade close too, so the
    // listeners close once the engines let go of theirs.
    macro_rules! drain {
        () => {{
            draining = true;
            handoff.clear();
            if let Some(t) = upgrading.take() {
                t.abort(); // the guard in the task stops the new generation
                for w in waiters.drain(..) {
                    let _ = w.send(UpgradeReply {
                        ok: false,
                        message: "the supervisor began to drain; upgrade abandoned".into(),
                    });
                }
            }
            if upgraded.is_none() {
                shared.state.set("draining");
                if took_over {
                    sys::notify(&[Notify::Stopping]);
                }
            }
            shared.broadcast(|| Request::Drain);
        }};
    }

    loop {
        // The upgrade request, from SIGUSR2 (no waiter) or the control socket.
        let mut want_upgrade: Option<Option<oneshot::Sender<UpgradeReply>>> = None;
        tokio::select! {
            sig = signals.recv() => match sig {
                Signal::Reload => {
                    info!("SIGHUP: reloading workers");
                    shared.broadcast(|| Request::Reload);
                }
                Signal::Upgrade => {
                    info!("SIGUSR2: upgrading");
                    want_upgrade = Some(None);
                }
                Signal::Terminate | Signal::Interrupt if draining => {
                    warn!("second {sig:?} while draining: killing the workers");
                    shared.broadcast(|| Request::Kill);
                    while engines.join_next().await.is_some() {}
                    code = ExitCode::KilledBySignal(sig.number());
                    break;
                }
                Signal::Terminate | Signal::Interrupt => {
                    info!("{sig:?}: draining (again to kill the workers now)");
                    drain!();
                }
            },
            Some(cmd) = ctl_rx.recv() => match cmd {
                Control::Reload => shared.broadcast(|| Request::Reload),
                Control::Stop => if !draining { drain!() },
                Control::Upgrade(reply) => want_upgrade = Some(Some(reply)),
            },
            Some(ev) = parent_rx.recv() => match ev {
                FromParent::Go if !took_over && !draining => {
                    match take_over(&mut control, config.pid_file.as_deref()) {
                        Ok(()) => {
                            took_over = true;
                            shared.broadcast(|| Request::Start);
                            shared.state.set("running");
                            if let Some(p) = &parent {
                                report_to(p, Report::TookOver { pid: std::process::id() });
                            }
                            info!(generation, "upgrade: generation {generation} took over");
                        }
                        Err(e) => {
                            error!("upgrade: cannot take over: {e:#}");
                            if let Some(p) = &parent {
                                report_to(p, Report::Failed(format!("{e:#}")));
                            }
                            drain!();
                        }
                    }
                }
                FromParent::Closed if !took_over && !draining => {
                    // The old generation is gone without a word: nobody else serves now.
                    warn!("upgrade: the old generation went away before the hand-over finished; taking over");
                    if let Err(e) = take_over(&mut control, config.pid_file.as_deref()) {
                        warn!("{e:#}");
                    }
                    took_over = true;
                    shared.broadcast(|| Request::Start);
                    shared.state.set("running");
                }
                _ => {}
            },
            result = async { upgrading.as_mut().expect("guarded").await }, if upgrading.is_some() => {
                upgrading = None;
                let result = result.unwrap_or_else(|e| Err(format!("internal error: {e}")));
                match result {
                    Ok(new) => {
                        let msg = format!(
                            "upgraded: generation {} (pid {}) is serving; generation {generation} (pid {}) drains and exits",
                            new.generation, new.pid, std::process::id()
                        );
                        info!("{msg}");
                        let status = format!("handed over to generation {} (pid {})", new.generation, new.pid);
                        sys::notify(&[Notify::MainPid(new.pid), Notify::Ready, Notify::Status(&status)]);
                        for w in waiters.drain(..) {
                            let _ = w.send(UpgradeReply { ok: true, message: msg.clone() });
                        }
                        upgraded = Some(new);
                        shared.state.set("upgraded");
                        owned_paths.clear(); // the new generation's now
                        if let Some(t) = metrics_task.take() {
                            t.abort();
                        }
                        metrics_handoff = None;
                        drain!();
                    }
                    Err(why) => {
                        shared.upgrades_failed.set(shared.upgrades_failed.get() + 1);
                        let msg = format!(
                            "upgrade failed: {why}; generation {generation} (pid {}) carries on serving",
                            std::process::id()
                        );
                        error!("{msg}");
                        sys::notify(&[Notify::Ready, Notify::Status(&msg)]);
                        for w in waiters.drain(..) {
                            let _ = w.send(UpgradeReply { ok: false, message: msg.clone() });
                        }
                        shared.state.set("running");
                    }
                }
            },
            conn = control.accept(), if !control_errors.paused() => match conn {
                Ok(ch) => {
                    tokio::task::spawn_local(answer(ch, Rc::clone(&shared), ctl_tx.clone()));
                }
                // Out of descriptors, say: back off instead of spinning on a ready listener.
                Err(handover::Error::Io(e)) => control_errors.failed("control socket", &e),
                Err(e) => warn!("control socket: {e}"),
            },
            _ = engine::sleep_until(control_errors.resume_at()) => {}
            _ = tick.tick(), if !announced && !draining => {
                if shared.ready().await {
                    announced = true;
                    match &parent {
                        None => {
                            info!(generation, "ready");
                            sys::notify(&[Notify::Ready, Notify::Status("serving")]);
                        }
                        Some(p) => {
                            info!(generation, "upgrade: ready; waiting for the old generation to let go");
                            report_to(p, Report::Ready);
                        }
                    }
                }
            },
            done = engines.join_next() => match done {
                None => break,
                Some(Ok(outcome)) => {
                    if outcome.code != ExitCode::Success && !draining {
                        // One program failed for good: stop the others too.
                        drain!();
                    }
                    code = code.or(outcome.code);
                    if message.is_none() {
                        message = outcome.message;
                    }
                }
                Some(Err(e)) => {
                    code = code.or(ExitCode::Failure);
                    message.get_or_insert_with(|| format!("internal error: {e}"));
                    if !draining {
                        drain!();
                    }
                }
            },
        }
        if let Some(reply) = want_upgrade {
            let refused = if draining {
                Some("the supervisor is draining".to_owned())
            } else if upgrading.is_some() {
                Some("an upgrade is already in progress".to_owned())
            } else if !took_over {
                Some("this generation has not taken over from the previous one yet".to_owned())
            } else {
                None
            };
            let plan = match refused {
                Some(why) => Err(why),
                None => plan_upgrade(
                    &config,
                    &startup.argv,
                    startup.exe.as_deref(),
                    &env,
                    generation,
                    &handoff,
                    metrics_handoff.as_ref(),
                ),
            };
            match plan {
                Ok(plan) => {
                    shared.state.set("upgrading");
                    sys::notify(&[Notify::Reloading, Notify::Status("upgrading")]);
                    upgrading = Some(tokio::task::spawn_local(upgrade::start(plan)));
                    waiters.extend(reply);
                }
                Err(why) => {
                    let msg = format!("upgrade refused: {why}");
                    warn!("{msg}");
                    if let Some(r) = reply {
                        let _ = r.send(UpgradeReply { ok: false, message: msg });
                    }
                }
            }
        }
    }
    if let (Some(p), false) = (&parent, took_over) {
        let why = message.clone().unwrap_or_else(|| "it stopped before taking over".to_owned());
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            p.send(&Report::Failed(why).encode(), &[]),
        )
        .await;
    }
    control.close();
    if upgraded.is_none() {
        for p in &owned_paths {
            let _ = std::fs::remove_file(p);
        }
    }
    if let Some(p) = &config.pid_file {
        remove_pid_file(p);
    }
    drop(metrics_task);
    Ok(Outcome { code, message })
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

#[allow(clippy::too_many_arguments)]
fn plan_upgrade(
    config: &Config,
    argv: &[std::ffi::OsString],
    exe: Option<&Path>,
    env: &Rc<crate::config::Env>,
    generation: u64,
    handoff: &[Handed],
    metrics: Option<&(String, socket2::Socket)>,
) -> Result<upgrade::Plan, String> {
    let startup = Startup { exe: exe.map(Path::to_path_buf), ..Startup::default() };
    let exe = upgrade::binary(&startup).map_err(|e| e.to_string())?;
    let dup = |s: &socket2::Socket| {
        s.try_clone().map_err(|e| format!("cannot duplicate a listener: {e}"))
    };
    let listeners = handoff
        .iter()
        .map(|h| Ok(Handed { info: h.info.clone(), socket: dup(&h.socket)? }))
        .collect::<Result<Vec<_>, String>>()?;
    let metrics = match metrics {
        Some((a, s)) => Some((a.clone(), dup(s)?)),
        None => None,
    };
    Ok(upgrade::Plan {
        exe,
        argv: argv.to_vec(),
        env: Rc::clone(env),
        generation: generation + 1,
        listeners,
        metrics,
        ready_timeout: config.ready_timeout,
        control: config.control.clone(),
    })
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
        Some(Command::Upgrade) => {
            let (tx, rx) = oneshot::channel();
            let _ = ctl.send(Control::Upgrade(tx));
            let r = rx.await.unwrap_or(UpgradeReply {
                ok: false,
                message: "the supervisor stopped before the upgrade finished".into(),
            });
            serde_json::to_vec(&r).unwrap_or_default()
        }
        Some(Command::Reload) => {
            let _ = ctl.send(Control::Reload);
            b"ok".to_vec()
        }
        Some(Command::Stop) => {
            let _ = ctl.send(Control::Stop);
            b"ok".to_vec()
        }
        None => b"unknown request (expected status, reload, upgrade or stop)".to_vec(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ch.send(&reply, &[])).await;
}
