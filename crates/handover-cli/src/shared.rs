//! shared: every worker gets the listening sockets (systemd `LISTEN_FDS` convention, from
//! descriptor 3, named in `LISTEN_FDNAMES`, `LISTEN_PID` set to the worker) and accepts by
//! itself. The supervisor keeps its copies, so a restarted worker gets the same sockets and no
//! client is refused in between.
//!
//! Draining sends `SIGTERM` to each worker's process group and waits (a socket-activated
//! program handles `SIGTERM` by finishing what it has); `--drain-timeout` later, `SIGKILL`.
//! A reload starts a worker's replacement, and terminates the old one once the new one has
//! stayed up for `--min-uptime` (there is no readiness message in this mode).

use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use handover::AsSocketRef;
use tracing::{error, info, warn};

use crate::child::{self, Death, Restart, Restarts};
use crate::cli::Compat;
use crate::config::{Env, ProgramConfig};
use crate::engine::{Context, Outcome, Phase, Request, Requests};
use crate::exit_codes::ExitCode;
use crate::listener::Bound;
use crate::status::{ListenerStatus, ProgramStatus, Totals, WorkerStatus};
use crate::sys::{self, Stop};

#[derive(Debug)]
struct Proc {
    child: handover::Child,
    pid: u32,
    started: Instant,
}

#[derive(Debug, Default)]
struct Slot {
    current: Option<Proc>,
    /// A reload's replacement, promoted once it has stayed up for min_uptime.
    incoming: Option<Proc>,
    start_at: Option<Instant>,
    restarts: Restarts,
    last_exit: Option<String>,
}

struct Engine {
    prog: ProgramConfig,
    env: Rc<Env>,
    listeners: Vec<Bound>,
    listener_status: Vec<ListenerStatus>,
    slots: Vec<Slot>,
    /// Old workers told to terminate (reload or drain).
    retiring: Vec<Proc>,
    totals: Totals,
    phase: Phase,
    reload: Vec<usize>,
    give_up: Option<String>,
    /// Some worker has stayed up long enough to count as ready since start or reload.
    proven: bool,
    /// The supervisor's generation (Server::Starter's SERVER_STARTER_GENERATION).
    generation: u64,
}

/// The variables programs written for other supervisors expect, describing the sockets as
/// `Command::listen_socket` passes them (descriptor 3 + n for the n-th listener).
pub(crate) fn compat_env(
    compat: &[Compat],
    listeners: &[Bound],
    generation: u64,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let fds = || (0..listeners.len()).map(|i| i + 3);
    for c in compat {
        match c {
            Compat::Einhorn => {
                let all: Vec<String> = fds().map(|fd| fd.to_string()).collect();
                env.push(("EINHORN_FDS".to_owned(), all.join(" ")));
                env.push(("EINHORN_FD_COUNT".to_owned(), listeners.len().to_string()));
                for (n, fd) in fds().enumerate() {
                    env.push((format!("EINHORN_FD_{n}"), fd.to_string()));
                }
            }
            Compat::ServerStarter => {
                let ports: Vec<String> = listeners
                    .iter()
                    .zip(fds())
                    .map(|(l, fd)| {
                        let addr = l.local.strip_prefix("tcp://").unwrap_or(&l.local);
                        let addr = addr.strip_prefix("unix:").unwrap_or(addr);
                        format!("{addr}={fd}")
                    })
                    .collect();
                env.push(("SERVER_STARTER_PORT".to_owned(), ports.join(";")));
                env.push(("SERVER_STARTER_GENERATION".to_owned(), generation.to_string()));
            }
        }
    }
    env
}

pub(crate) async fn run(
    prog: ProgramConfig,
    env: Rc<Env>,
    listeners: Vec<Bound>,
    mut requests: Requests,
    ctx: Context,
) -> Outcome {
    let listener_status = listeners
        .iter()
        .map(|l| ListenerStatus::open(&l.name, &l.local, &prog.name, None, None))
        .collect();
    let mut e = Engine {
        slots: (0..prog.workers).map(|_| Slot::default()).collect(),
        prog,
        env,
        listeners,
        listener_status,
        retiring: Vec::new(),
        totals: Totals::default(),
        phase: Phase::Running,
        reload: Vec::new(),
        give_up: None,
        proven: false,
        generation: ctx.generation,
    };
    for slot in 0..e.slots.len() {
        e.slots[slot].start_at = Some(Instant::now());
    }
    let mut exits = match sys::ChildExits::new() {
        Ok(x) => x,
        Err(err) => return Outcome::cannot_watch_children(&err),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests_open = true;
    loop {
        e.maintain();
        if let Phase::Draining { deadline } = e.phase {
            let code = if e.give_up.is_some() { ExitCode::CrashLoop } else { ExitCode::Success };
            if e.alive() == 0 {
                return Outcome { code, message: e.give_up.clone() };
            }
            if Instant::now() >= deadline {
                warn!(program = %e.prog.name, "drain timed out: killing {} worker(s)", e.alive());
                e.kill_all();
                return Outcome {
                    code: code.or(ExitCode::DrainTimedOut),
                    message: e
                        .give_up
                        .clone()
                        .or(Some("drain timed out; remaining workers were killed".into())),
                };
            }
        }
        tokio::select! {
            biased;
            req = requests.recv(), if requests_open => match req {
                Some(Request::Status(tx)) => { let _ = tx.send(e.status()); }
                Some(Request::Reload) => {
                    if e.phase == Phase::Running {
                        info!(program = %e.prog.name, "reload: restarting workers one at a time");
                        e.reload = (0..e.slots.len()).rev().collect();
                        e.proven = false;
                    }
                }
                Some(Request::Drain) => e.begin_drain(),
                Some(Request::Kill) => { e.kill_all(); return Outcome::success(); }
                Some(Request::Ready(tx)) => { let _ = tx.send(e.all_ready()); }
                // Workers accept by themselves from the moment they start.
                Some(Request::Start) => {}
                None => { requests_open = false; e.begin_drain(); }
            },
            _ = exits.recv() => e.reap(),
            _ = tick.tick() => e.reap(),
        }
    }
}

impl Engine {
    fn alive(&self) -> usize {
        self.retiring.len()
            + self
                .slots
                .iter()
                .map(|s| s.current.is_some() as usize + s.incoming.is_some() as usize)
                .sum::<usize>()
    }

    /// With no readiness message in this mode, a worker is taken as ready once it has stayed
    /// up as long as a reload waits for (`--min-uptime`, at least 200ms).
    fn all_ready(&self) -> bool {
        let settle = self.settle();
        self.slots.iter().all(|s| s.current.as_ref().is_some_and(|p| p.started.elapsed() >= settle))
    }

    fn spawn(&mut self, slot: usize) -> Option<Proc> {
        let mut cmd = child::command(&self.prog, &self.env);
        for l in &self.listeners {
            cmd.listen_socket(l.name.as_str(), l.socket.as_socket_ref());
        }
        for (k, v) in compat_env(&self.prog.compat, &self.listeners, self.generation) {
            cmd.env(k, v);
        }
        cmd.env("HANDOVER_SLOT", slot.to_string());
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                info!(program = %self.prog.name, slot, pid, "worker started");
                Some(Proc { child, pid, started: Instant::now() })
            }
            Err(err) => {
                error!(program = %self.prog.name, slot, "cannot start worker {}: {err}", self.prog.program.display());
                self.slots[slot].last_exit = Some(format!("could not start: {err}"));
                self.schedule_restart(slot, Duration::ZERO, None);
                None
            }
        }
    }

    /// How long a worker must stay up to count as ready (there is no readiness message in this
    /// mode): `--min-uptime`, at least 200ms.
    fn settle(&self) -> Duration {
        self.prog.timeouts.min_uptime.max(Duration::from_millis(200))
    }

    fn schedule_restart(&mut self, slot: usize, lived: Duration, status: Option<ExitStatus>) {
        if self.phase != Phase::Running {
            return;
        }
        let t = self.prog.timeouts;
        let death = Death {
            lived,
            ready: lived >= self.settle(),
            from_outside: status.as_ref().is_some_and(sys::killed_from_outside),
            proven: self.proven,
        };
        match self.slots[slot].restarts.on_death(death, &t) {
            Restart::After(delay) => {
                self.totals.restarts += 1;
                self.slots[slot].start_at = Some(Instant::now() + delay);
            }
            Restart::GiveUp(n) => {
                let last = self.slots[slot].last_exit.as_deref().unwrap_or_default();
                self.give_up = Some(child::crash_loop(&self.prog, n, "at start", last));
                self.begin_drain();
            }
        }
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].start_at.is_some_and(|t| t <= now) {
                self.slots[slot].start_at = None;
                if let Some(p) = self.spawn(slot) {
                    let s = &mut self.slots[slot];
                    if s.current.is_none() {
                        s.current = Some(p);
                    } else {
                        s.incoming = Some(p);
                    }
                }
            }
        }
        if self.phase != Phase::Running {
            return;
        }
        // Promote a replacement that has stayed up; then start the next one.
        let settle = self.settle();
        if !self.proven
            && self.slots.iter().any(|s| {
                [&s.current, &s.incoming]
                    .into_iter()
                    .flatten()
                    .any(|p| p.started.elapsed() >= settle)
            })
        {
            self.proven = true;
        }
        for s in &mut self.slots {
            if s.incoming.as_ref().is_some_and(|p| p.started.elapsed() >= settle) {
                if let Some(old) = s.current.take() {
                    sys::signal_group(old.pid, Stop::Terminate);
                    self.retiring.push(old);
                }
                s.current = s.incoming.take();
            }
        }
        let busy = self.slots.iter().any(|s| s.incoming.is_some());
        if !busy {
            if let Some(slot) = self.reload.pop() {
                if self.slots[slot].current.is_some() && self.slots[slot].start_at.is_none() {
                    self.slots[slot].start_at = Some(now);
                }
            }
        }
    }

    fn reap(&mut self) {
        self.retiring.retain_mut(|p| matches!(p.child.try_wait(), Ok(None)));
        for slot in 0..self.slots.len() {
            for incoming in [false, true] {
                let s = &mut self.slots[slot];
                let p = if incoming { &mut s.incoming } else { &mut s.current };
                let Some(proc_) = p.as_mut() else { continue };
                let Ok(Some(status)) = proc_.child.try_wait() else { continue };
                let lived = proc_.started.elapsed();
                let pid = proc_.pid;
                *p = None;
                sys::signal_group(pid, Stop::Kill);
                let what = child::describe(Some(status));
                s.last_exit = Some(what.clone());
                if self.phase == Phase::Running {
                    warn!(program = %self.prog.name, slot, pid, "worker {what} after {lived:?}");
                    self.schedule_restart(slot, lived, Some(status));
                } else {
                    info!(program = %self.prog.name, slot, pid, "worker {what}");
                }
            }
        }
    }

    fn begin_drain(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        self.phase = Phase::Draining { deadline: Instant::now() + self.prog.timeouts.drain };
        self.reload.clear();
        for s in &mut self.slots {
            s.start_at = None;
            for p in [s.current.take(), s.incoming.take()].into_iter().flatten() {
                sys::signal_group(p.pid, Stop::Terminate);
                self.retiring.push(p);
            }
        }
        // The workers hold their own copies; ours close now, so the sockets close when the
        // last worker exits.
        self.listeners.clear();
        for l in &mut self.listener_status {
            l.open = false;
        }
        info!(program = %self.prog.name, workers = self.retiring.len(), "draining");
    }

    fn kill_all(&mut self) {
        for s in &mut self.slots {
            for p in [s.current.take(), s.incoming.take()].into_iter().flatten() {
                self.retiring.push(p);
            }
        }
        for p in &self.retiring {
            sys::signal_group(p.pid, Stop::Kill);
        }
        // Not waited for: they are killed, and the supervisor exits next.
        for mut p in self.retiring.drain(..) {
            let _ = p.child.try_wait();
        }
    }

    fn status(&self) -> (ProgramStatus, Vec<ListenerStatus>) {
        let mut workers = Vec::new();
        for (slot, s) in self.slots.iter().enumerate() {
            let mut push = |p: &Proc, state: &str| {
                workers.push(WorkerStatus {
                    slot,
                    pid: Some(p.pid),
                    state: state.to_owned(),
                    capacity: None,
                    live: None,
                    handled: None,
                    restarts: s.restarts.count,
                })
            };
            if let Some(p) = &s.current {
                push(p, "running");
            }
            if let Some(p) = &s.incoming {
                push(p, "starting");
            }
            if s.current.is_none() && s.incoming.is_none() && s.start_at.is_some() {
                workers.push(WorkerStatus {
                    slot,
                    state: child::waiting_state(&s.restarts, &self.prog.timeouts).into(),
                    restarts: s.restarts.count,
                    ..Default::default()
                });
            }
        }
        for p in &self.retiring {
            workers.push(WorkerStatus {
                slot: usize::MAX,
                pid: Some(p.pid),
                state: "stopping".into(),
                ..Default::default()
            });
        }
        let p = ProgramStatus {
            name: self.prog.name.clone(),
            mode: "shared".to_owned(),
            command: self.prog.program.display().to_string(),
            state: if self.reload.is_empty() { self.phase.name() } else { "reloading" }.to_owned(),
            workers,
            totals: self.totals,
        };
        (p, self.listener_status.clone())
    }
}
