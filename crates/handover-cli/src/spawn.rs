//! spawn: one child process per connection (inetd, `systemd Accept=yes`).
//!
//! The child gets the connection as standard input and output (`--socket stdio`) or as
//! descriptor 3 with `LISTEN_FDS=1` (`--socket fd3`), plus `REMOTE_ADDR`/`REMOTE_PORT` and
//! `HANDOVER_LISTENER`. At most `workers` children run at once; over the cap the supervisor
//! stops accepting and new clients wait in the kernel backlog (none is dropped). `handover
//! scale` changes the cap (children over a lowered cap finish; none is killed).
//!
//! With `--connection-timeout` the supervisor keeps a copy of each connection: a child that
//! runs longer is killed, and its connection reset and counted as timed out.

use std::collections::VecDeque;
use std::time::Duration;

use handover::AsSocketRef;
use tracing::{debug, error, info, warn};

use crate::cli::SpawnSocket;
use crate::engine::{Core, Drained, Mode, ModeStatus};
use crate::listener::Accepted;
use crate::status::{Totals, WorkerStatus};
use crate::sys::{self, ProcessTree, Stop, TreeKind};
use std::time::Instant;

#[derive(Debug)]
struct Running {
    child: handover::Child,
    tree: ProcessTree,
    pid: u32,
    started: Instant,
    /// Our copy of its connection, kept only with `--connection-timeout` (to reset it).
    socket: Option<socket2::Socket>,
    /// It outlived `--connection-timeout`: killed, its connection reset.
    timed_out: bool,
}

/// The spawn mode (see the module docs).
#[derive(Debug)]
pub(crate) struct Spawn {
    /// At most this many children at once (`--workers`).
    cap: usize,
    children: Vec<Running>,
    /// Accepted during the drain (the kernel's backlog), waiting for room under the cap.
    pending: VecDeque<Accepted>,
    /// The pipes every child's standard error (and, with `--socket fd3`, output) is given,
    /// with `--worker-output prefix`; made at the first child.
    output: Option<(Option<sys::PipeWriter>, Option<sys::PipeWriter>)>,
}

impl Spawn {
    pub(crate) fn new(core: &Core) -> Spawn {
        Spawn {
            cap: core.prog.workers,
            children: Vec::new(),
            pending: VecDeque::new(),
            output: None,
        }
    }

    fn start_child(&mut self, core: &mut Core, a: Accepted) {
        let name = core.listener_name(a.listener).to_owned();
        let mut cmd = crate::child::command(&core.prog, &core.env);
        match core.prog.socket {
            SpawnSocket::Stdio => cmd.stdio_socket(a.socket.as_socket_ref()),
            SpawnSocket::Fd3 => cmd.listen_socket(name.as_str(), a.socket.as_socket_ref()),
        };
        cmd.env("HANDOVER_LISTENER", &name);
        // stdio mode: standard output is the connection itself.
        let fd3 = core.prog.socket == SpawnSocket::Fd3;
        let (err, out) = self.output.get_or_insert_with(|| {
            (core.shared_output(true), fd3.then(|| core.shared_output(false)).flatten())
        });
        if let Some(s) = err.as_ref().and_then(|w| w.stdio().ok()) {
            cmd.stderr(s);
        }
        if let Some(s) = out.as_ref().and_then(|w| w.stdio().ok()) {
            cmd.stdout(s);
        }
        if let Some(peer) = a.peer {
            cmd.env("REMOTE_ADDR", peer.ip().to_string())
                .env("REMOTE_PORT", peer.port().to_string());
        }
        match sys::spawn(&mut cmd, TreeKind::Connection) {
            Ok((child, tree)) => {
                core.totals.dispatched += 1;
                let pid = child.id();
                debug!(program = %core.prog.name, pid, "child started");
                let socket = core.prog.controls.connection_timeout.and(a.socket.try_clone().ok());
                let started = Instant::now();
                self.children.push(Running { child, tree, pid, started, socket, timed_out: false });
            }
            Err(err) => {
                core.totals.dropped += 1;
                error!(program = %core.prog.name, "cannot start {}: {err}", core.prog.program.display());
            }
        }
        // Our copy closes here (the child has its own): a.socket drops with `a`.
        drop(cmd);
        drop(a);
    }

    fn reap(&mut self, core: &mut Core) {
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
        core.totals.handled += (before - self.children.len()) as u64;
    }
}

impl Mode for Spawn {
    const NAME: &'static str = "spawn";
    const TICK: Duration = Duration::from_millis(50);

    fn start(&mut self, _core: &mut Core) {}

    fn has_room(&self) -> bool {
        self.children.len() < self.cap && self.pending.is_empty()
    }

    fn on_accept(&mut self, core: &mut Core, a: Accepted) {
        self.start_child(core, a);
    }

    fn maintain(&mut self, core: &mut Core) {
        while self.children.len() < self.cap {
            let Some(a) = self.pending.pop_front() else { break };
            self.start_child(core, a);
        }
    }

    fn on_child_exit(&mut self, core: &mut Core) {
        self.reap(core);
    }

    fn on_tick(&mut self, core: &mut Core) {
        self.reap(core);
        let Some(timeout) = core.prog.controls.connection_timeout else { return };
        for r in self.children.iter_mut().filter(|r| !r.timed_out && r.started.elapsed() > timeout)
        {
            r.timed_out = true;
            if let Some(s) = &r.socket {
                let _ = sys::abort_connection(s);
            }
            r.tree.signal(Stop::Kill);
            core.totals.timed_out += 1;
            warn!(program = %core.prog.name, pid = r.pid, "child held its connection longer than --connection-timeout {timeout:?}: killed, connection reset");
        }
    }

    fn reload(&mut self, core: &mut Core) {
        info!(program = %core.prog.name, "reload: nothing to do in spawn mode (every connection gets a fresh process)");
    }

    fn workers_wanted(&self) -> usize {
        self.cap
    }

    fn scale(&mut self, _core: &mut Core, n: usize) {
        self.cap = n;
    }

    fn ready(&mut self, _core: &mut Core) -> bool {
        true
    }

    fn drain(&mut self, core: &mut Core, backlog: Vec<Accepted>) {
        self.pending.extend(backlog);
        let (running, waiting) = (self.children.len(), self.pending.len());
        info!(program = %core.prog.name, running, waiting, "draining");
    }

    fn drained(&mut self, _core: &mut Core) -> Drained {
        if self.children.is_empty() && self.pending.is_empty() {
            Drained::Done
        } else {
            Drained::Busy
        }
    }

    fn kill_all(&mut self, core: &mut Core) {
        for r in &self.children {
            r.tree.signal(Stop::Kill);
        }
        // Not waited for: they are killed, and the supervisor exits next.
        for mut r in self.children.drain(..) {
            let _ = r.child.try_wait();
        }
        core.totals.dropped += self.pending.len() as u64;
        self.pending.clear();
    }

    fn status(&mut self, _core: &mut Core, _totals: &mut Totals) -> ModeStatus {
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
                busy: Some(true),
                rss_bytes: None,
                max_requests: None,
            })
            .collect();
        ModeStatus {
            workers,
            live: (self.children.len() + self.pending.len()) as u64,
            reloading: false,
            queue: self.pending.len() as u64,
        }
    }
}
