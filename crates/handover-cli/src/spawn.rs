//! spawn: one child process per connection (inetd, `systemd Accept=yes`).
//!
//! The child gets the connection as standard input and output (`--socket stdio`) or as
//! descriptor 3 with `LISTEN_FDS=1` (`--socket fd3`), plus `REMOTE_ADDR`/`REMOTE_PORT` and
//! `HANDOVER_LISTENER`. At most `workers` children run at once; over the cap the supervisor
//! stops accepting and new clients wait in the kernel backlog (none is dropped).

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use handover::AsSocketRef;
use tracing::{debug, error, info, warn};

use crate::cli::SpawnSocket;
use crate::config::{Env, ProgramConfig};
use crate::engine::{Context, Outcome, Phase, Request, Requests};
use crate::exit_codes::ExitCode;
use crate::listener::{self, Accepted, Listener};
use crate::status::{ListenerStatus, ProgramStatus, Totals, WorkerStatus};
use crate::sys::{self, Stop};

#[derive(Debug)]
struct Running {
    child: handover::Child,
    pid: u32,
}

struct Engine {
    prog: ProgramConfig,
    env: Rc<Env>,
    listeners: Vec<Listener>,
    listener_status: Vec<ListenerStatus>,
    next_listener: usize,
    children: Vec<Running>,
    pending: VecDeque<Accepted>,
    totals: Totals,
    phase: Phase,
    accept_errors: listener::AcceptErrors,
    /// Not accepting until the supervisor says so (a new generation in an upgrade).
    held: bool,
}

pub(crate) async fn run(
    prog: ProgramConfig,
    env: Rc<Env>,
    listeners: Vec<Listener>,
    mut requests: Requests,
    ctx: Context,
) -> Outcome {
    let listener_status = listeners
        .iter()
        .map(|l| ListenerStatus::open(&l.name, &l.local, &prog.name, None, Some(0)))
        .collect();
    let mut e = Engine {
        prog,
        env,
        listeners,
        listener_status,
        next_listener: 0,
        children: Vec::new(),
        pending: VecDeque::new(),
        totals: Totals::default(),
        phase: Phase::Running,
        accept_errors: listener::AcceptErrors::default(),
        held: ctx.held,
    };
    let mut exits = match sys::ChildExits::new() {
        Ok(x) => x,
        Err(err) => return Outcome::cannot_watch_children(&err),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests_open = true;
    loop {
        while e.children.len() < e.prog.workers {
            let Some(a) = e.pending.pop_front() else { break };
            e.start(a);
        }
        if let Phase::Draining { deadline } = e.phase {
            if e.children.is_empty() && e.pending.is_empty() {
                return Outcome::success();
            }
            if Instant::now() >= deadline {
                warn!(program = %e.prog.name, "drain timed out: killing {} child(ren)", e.children.len());
                e.kill_all();
                return Outcome {
                    code: ExitCode::DrainTimedOut,
                    message: Some("drain timed out; remaining children were killed".to_owned()),
                };
            }
        }
        let accepting = e.phase == Phase::Running
            && !e.held
            && e.children.len() < e.prog.workers
            && !e.accept_errors.paused();
        tokio::select! {
            biased;
            req = requests.recv(), if requests_open => match req {
                Some(Request::Status(tx)) => { let _ = tx.send(e.status()); }
                Some(Request::Reload) => info!(program = %e.prog.name, "reload: nothing to do in spawn mode (every connection gets a fresh process)"),
                Some(Request::Drain) => e.begin_drain(),
                Some(Request::Kill) => { e.kill_all(); return Outcome::success(); }
                Some(Request::Ready(tx)) => { let _ = tx.send(true); }
                Some(Request::Start) => e.held = false,
                None => { requests_open = false; e.begin_drain(); }
            },
            _ = exits.recv() => e.reap(),
            r = listener::accept_any(&e.listeners, &mut e.next_listener), if accepting => match r {
                Ok(a) => {
                    e.count_accept(a.listener);
                    e.start(a);
                }
                Err(err) if listener::is_transient(&err) => {}
                Err(err) => e.accept_errors.failed(&e.prog.name, &err),
            },
            _ = tick.tick() => e.reap(),
        }
    }
}

impl Engine {
    fn count_accept(&mut self, listener: u16) {
        self.totals.accepted += 1;
        if let Some(s) = self.listener_status.get_mut(listener as usize) {
            s.accepted = Some(s.accepted.unwrap_or(0) + 1);
        }
    }

    fn start(&mut self, a: Accepted) {
        let name = self.listener_status.get(a.listener as usize).map_or("", |l| l.name.as_str());
        let mut cmd = crate::child::command(&self.prog, &self.env);
        crate::sys::prepare_connection_child(&mut cmd);
        match self.prog.socket {
            SpawnSocket::Stdio => cmd.stdio_socket(a.socket.as_socket_ref()),
            SpawnSocket::Fd3 => cmd.listen_socket(name, a.socket.as_socket_ref()),
        };
        cmd.env("HANDOVER_LISTENER", name);
        if let Some(peer) = a.peer {
            cmd.env("REMOTE_ADDR", peer.ip().to_string())
                .env("REMOTE_PORT", peer.port().to_string());
        }
        match cmd.spawn() {
            Ok(child) => {
                self.totals.dispatched += 1;
                let pid = child.id();
                debug!(program = %self.prog.name, pid, "child started");
                self.children.push(Running { child, pid });
            }
            Err(err) => {
                self.totals.dropped += 1;
                error!(program = %self.prog.name, "cannot start {}: {err}", self.prog.program.display());
            }
        }
        // Our copy closes here (the child has its own): a.socket drops with `a`.
        drop(cmd);
        drop(a);
    }

    fn reap(&mut self) {
        let before = self.children.len();
        self.children.retain_mut(|r| match r.child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    debug!(pid = r.pid, "child {}", crate::child::describe(Some(status)));
                }
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
        self.totals.handled += (before - self.children.len()) as u64;
    }

    fn begin_drain(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        self.phase = Phase::Draining { deadline: Instant::now() + self.prog.timeouts.drain };
        let backlog =
            listener::close_for_drain(&mut self.listeners, &mut self.listener_status, self.held);
        for a in backlog {
            self.count_accept(a.listener);
            self.pending.push_back(a);
        }
        info!(program = %self.prog.name, running = self.children.len(), waiting = self.pending.len(), "draining");
    }

    fn kill_all(&mut self) {
        for r in &self.children {
            sys::signal_group(r.pid, Stop::Kill);
        }
        // Not waited for: they are killed, and the supervisor exits next.
        for mut r in self.children.drain(..) {
            let _ = r.child.try_wait();
        }
        self.totals.dropped += self.pending.len() as u64;
        self.pending.clear();
    }

    fn status(&self) -> (ProgramStatus, Vec<ListenerStatus>) {
        let workers = self
            .children
            .iter()
            .enumerate()
            .map(|(slot, r)| WorkerStatus {
                slot,
                pid: Some(r.pid),
                state: "serving".to_owned(),
                capacity: Some(1),
                live: Some(1),
                handled: None,
                restarts: 0,
            })
            .collect();
        let mut totals = self.totals;
        totals.live = (self.children.len() + self.pending.len()) as u64;
        let p = ProgramStatus {
            name: self.prog.name.clone(),
            mode: "spawn".to_owned(),
            command: self.prog.program.display().to_string(),
            state: self.phase.name().to_owned(),
            workers,
            totals,
        };
        (p, self.listener_status.clone())
    }
}
