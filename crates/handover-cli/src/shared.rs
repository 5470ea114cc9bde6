//! shared: every worker gets the listening sockets (systemd `LISTEN_FDS` convention, from
//! descriptor 3, named in `LISTEN_FDNAMES`, `LISTEN_PID` set to the worker) and accepts by
//! itself. The supervisor keeps its copies, so a restarted worker gets the same sockets and no
//! client is refused in between.
//!
//! Draining sends `SIGTERM` to each worker's process group and waits (a socket-activated
//! program handles `SIGTERM` by finishing what it has); `--drain-timeout` later, `SIGKILL`.
//! Windows has no `SIGTERM`: there each worker is started with a handover channel too (the
//! listeners arrive over it anyway), and the supervisor ends that channel instead; the worker
//! sees it end (`recv` returns `PeerClosed`) and finishes.
//! A reload starts a worker's replacement, and terminates the old one once the new one has
//! stayed up for `--min-uptime` (there is no readiness message in this mode).
//!
//! Workers are the engine's [`Pool`]: restarts, crash-loop detection, reloads, scaling and
//! `--max-memory` work as in prefork (a recycled or scaled-away worker gets `SIGTERM`). The
//! supervisor never sees a connection in this mode, so `--max-requests` and
//! `--connection-timeout` are refused, and status reports no per-worker connection counts.

use std::time::Duration;

use handover::AsSocketRef;
use tracing::info;

use crate::engine::pool::{impl_member, pool_mode_methods, Pool, Proc, ProcState, WorkerId};
use crate::engine::{Core, Drained, Engine, ModeStatus};
use crate::listener::{Accepted, Bound};
use crate::model::Compat;
use crate::status::{Totals, WorkerState, WorkerStatus};
use crate::sys::{self, Stop};

#[derive(Debug)]
struct Worker {
    proc: Proc,
    /// Where workers are asked to finish by the end of their channel (Windows), our end.
    channel: Option<handover::Channel>,
}

impl_member!(Worker);

impl Worker {
    /// Asks it to finish what it has and exit: `SIGTERM` to its process group, or (Windows) the
    /// end of its channel.
    fn retire(&mut self) {
        self.channel = None;
        self.proc.tree.signal(Stop::Terminate);
    }
}

/// The shared mode (see the module docs).
#[derive(Debug)]
pub(crate) struct Shared {
    pool: Pool<Worker>,
    /// Our copies of the listening sockets, passed to every worker; closed when the drain
    /// begins (the workers' copies keep them open until the last one exits).
    listeners: Vec<Bound>,
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

impl Shared {
    pub(crate) fn new(core: &Core, listeners: Vec<Bound>) -> Shared {
        Shared { pool: Pool::with(core.prog.workers, "at start", false), listeners }
    }

    /// How long a worker must stay up to count as ready (there is no readiness message in this
    /// mode): `--min-uptime`, at least 200ms.
    fn settle(core: &Core) -> Duration {
        core.prog.timeouts.min_uptime.max(Duration::from_millis(200))
    }

    fn start_worker(&mut self, core: &mut Core, slot: usize) {
        let mut cmd = crate::engine::command(&core.prog, &core.env);
        for l in &self.listeners {
            cmd.listen_socket(l.name.as_str(), l.socket.as_socket_ref());
        }
        for (k, v) in compat_env(&core.prog.compat, &self.listeners, core.generation) {
            cmd.env(k, v);
        }
        if sys::STOP_OVER_CHANNEL {
            cmd.channel();
        }
        let name = core.prog.name.clone();
        self.pool.start(core, slot, &mut cmd, |mut proc| {
            info!(program = %name, slot, pid = proc.pid, "worker started");
            let channel = proc.child.channel.take();
            Worker { proc, channel }
        });
    }

    /// Asks worker `id` to finish what it has and exit (once).
    fn retire(&mut self, id: WorkerId) {
        if self.pool.retire(id) {
            if let Some(w) = self.pool.get_mut(id) {
                w.retire();
            }
        }
    }

    /// Settles the workers that have exited.
    fn reap(&mut self, core: &mut Core) {
        let settle = Self::settle(core);
        let exited = self.pool.exited();
        for id in exited {
            let Some(Worker { proc, .. }) = self.pool.take(id) else { continue };
            // It may have died before the tick that would have found it ready.
            let ready = proc.started.elapsed() >= settle;
            self.pool.depart(core, proc, "exited", String::new(), ready);
        }
        self.pool.reap(core);
    }
}

impl Engine for Shared {
    const KIND: crate::model::Mode = crate::model::Mode::Shared;
    const TICK: Duration = Duration::from_millis(20);

    fn start(&mut self, _core: &mut Core) {}

    fn maintain(&mut self, core: &mut Core) {
        for slot in self.pool.due(core) {
            self.start_worker(core, slot);
        }
        if !core.running() {
            return;
        }
        // A worker that has stayed up is ready; a reload's replacement then takes over and
        // the worker it replaces is asked to finish.
        let settle = Self::settle(core);
        let pool = &self.pool;
        let ready =
            pool.ids(|w| !pool.state(w.proc.id).was_ready() && w.proc.started.elapsed() >= settle);
        for id in ready {
            if let Some(old) = self.pool.mark_ready(id) {
                self.retire(old);
            }
        }
    }

    fn on_child_exit(&mut self, core: &mut Core) {
        self.reap(core);
    }

    fn on_tick(&mut self, core: &mut Core) {
        self.reap(core);
        // One that passed --max-memory serves on until its replacement has stayed up (then it
        // gets SIGTERM).
        self.pool.recycle_over_memory(core);
    }

    pool_mode_methods!();

    fn scale(&mut self, _core: &mut Core, n: usize) {
        for id in self.pool.resize(n) {
            self.retire(id);
        }
    }

    /// With no readiness message in this mode, a worker is taken as ready once it has stayed
    /// up as long as a reload waits for (`--min-uptime`, at least 200ms).
    fn ready(&mut self, _core: &mut Core) -> bool {
        self.pool.all_ready()
    }

    fn drain(&mut self, core: &mut Core, _backlog: Vec<Accepted>) {
        self.pool.drain();
        for id in self.pool.ids(|_| true) {
            self.retire(id);
        }
        // The workers hold their own copies; ours close now, so the sockets close when the
        // last worker exits.
        self.listeners.clear();
        let workers = self.pool.members().len();
        info!(program = %core.prog.name, workers, "draining");
    }

    fn drained(&mut self, core: &mut Core) -> Drained {
        self.reap(core);
        if self.pool.is_empty() {
            Drained::Done
        } else if self.pool.only_departed() {
            Drained::Reaping
        } else {
            Drained::Busy
        }
    }

    fn kill_all(&mut self, _core: &mut Core) {
        // Not waited for: they are killed, and the supervisor exits next.
        self.pool.kill_all();
    }

    fn status(&mut self, core: &mut Core, _totals: &mut Totals) -> ModeStatus {
        let mut workers: Vec<WorkerStatus> = self
            .pool
            .members()
            .iter()
            .map(|w| {
                let p = &w.proc;
                let state = match self.pool.state(p.id) {
                    ProcState::Retiring { .. } => WorkerState::Stopping,
                    s if s.was_ready() => WorkerState::Running,
                    _ => WorkerState::Starting,
                };
                WorkerStatus {
                    slot: p.slot,
                    pid: Some(p.pid),
                    state,
                    restarts: self.pool.restarts(p.slot),
                    rss_bytes: sys::resident_memory(p.pid).ok(),
                    ..WorkerStatus::default()
                }
            })
            .collect();
        workers.extend(self.pool.waiting_rows(core));
        ModeStatus { workers, live: 0, reloading: self.pool.reloading(), queue: 0 }
    }
}
