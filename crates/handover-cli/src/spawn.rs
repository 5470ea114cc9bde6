//! spawn: one child process per connection (inetd, `systemd Accept=yes`).
//!
//! The child gets the connection as standard input and output (`--socket stdio`), as
//! descriptor 3 with `LISTEN_FDS=1` (`--socket fd3`), or over a handover channel it inherits
//! as one CONNECTION message followed by DRAIN (`--socket channel`: what a prefork worker
//! understands; on Windows the classic `WSADuplicateSocketW` flow), plus
//! `REMOTE_ADDR`/`REMOTE_PORT` and `HANDOVER_LISTENER`. At most `workers` children run at once; over the cap the supervisor
//! stops accepting and new clients wait in the kernel backlog (none is dropped).
//! `handover scale` changes the cap (children over a lowered cap finish; none is killed).
//!
//! With `--connection-timeout` the supervisor keeps a copy of each connection: a child that
//! runs longer is killed, and its connection reset and counted as timed out.

use std::collections::VecDeque;
use std::time::Duration;

use handover::{AsSocketRef, SendStatus};
use handover_worker::protocol::{ConnectionInfo, SupervisorMessage, CONNECTION_MAX_LEN};
use tracing::{debug, error, info, warn};

use crate::engine::{Core, Drained, Engine, ModeStatus};
use crate::listener::Accepted;
use crate::model::SpawnSocket;
use crate::status::{Totals, WorkerState, WorkerStatus};
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
    /// `--socket channel`: our end. It stays open while the child runs (a worker writes HELLO,
    /// ACK and FINISHED, which nobody reads; a closed channel would fail those writes).
    channel: Option<handover::Channel>,
    /// `--socket channel`: what is still to be written.
    owed: Owed,
    /// `--socket channel`: its connection could not be handed over (killed, counted as
    /// dropped, so not as handled when it exits).
    failed: bool,
}

/// What a `--socket channel` child has not been sent in full yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Nothing,
    /// The rest of what was sent (Windows: a write still in progress).
    Flush,
    /// The rest of the CONNECTION message, then DRAIN.
    Drain,
}

/// The spawn mode (see the module docs).
#[derive(Debug)]
pub(crate) struct Spawn {
    /// At most this many children at once (`--workers`).
    cap: usize,
    children: Vec<Running>,
    /// Accepted during the drain (the kernel's backlog), waiting for room under the cap.
    pending: VecDeque<Accepted>,
    /// The pipes every child's standard error (and, unless `--socket stdio`, output) is given,
    /// with `--worker-output prefix`; made at the first child.
    output: Option<(Option<sys::PipeWriter>, Option<sys::PipeWriter>)>,
    /// Ids for `--socket channel`'s CONNECTION messages.
    next_id: u64,
}

impl Spawn {
    pub(crate) fn new(core: &Core) -> Spawn {
        Spawn {
            cap: core.prog.workers,
            children: Vec::new(),
            pending: VecDeque::new(),
            output: None,
            next_id: 1,
        }
    }

    fn start_child(&mut self, core: &mut Core, a: Accepted) {
        let name = core.listener_name(a.listener).to_owned();
        let mut cmd = crate::engine::command(&core.prog, &core.env);
        match core.prog.socket {
            SpawnSocket::Stdio => cmd.stdio_socket(a.socket.as_socket_ref()),
            SpawnSocket::Fd3 => cmd.listen_socket(name.as_str(), a.socket.as_socket_ref()),
            SpawnSocket::Channel => cmd.channel(),
        };
        cmd.env("HANDOVER_LISTENER", &name);
        // stdio mode: standard output is the connection itself.
        let stdout = core.prog.socket != SpawnSocket::Stdio;
        let (err, out) = self.output.get_or_insert_with(|| {
            (core.shared_output(true), stdout.then(|| core.shared_output(false)).flatten())
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
            Ok((mut child, tree)) => {
                let pid = child.id();
                let channel = child.channel.take();
                // With --connection-timeout, our copy of its connection stays to reset it.
                let socket = core.prog.controls.connection_timeout.and(a.socket.try_clone().ok());
                let mut running = Running {
                    channel,
                    owed: Owed::Nothing,
                    child,
                    tree,
                    pid,
                    started: Instant::now(),
                    socket,
                    timed_out: false,
                    failed: false,
                };
                if running.channel.is_some() {
                    let id = self.next_id;
                    self.next_id += 1;
                    if let Err(err) = hand_over(&mut running, id, &a, &name) {
                        error!(program = %core.prog.name, pid, "cannot hand the connection to the child: {err}");
                        running.tree.signal(Stop::Kill);
                        running.failed = true;
                        core.totals.dropped += 1;
                        self.children.push(running);
                        return;
                    }
                }
                core.totals.dispatched += 1;
                debug!(program = %core.prog.name, pid, "child started");
                self.children.push(running);
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
        // `--socket channel`: finish writing what a full channel did not take at once.
        for r in &mut self.children {
            if let Err(err) = write_rest(r) {
                debug!(pid = r.pid, "cannot finish handing the connection over: {err}");
                if r.owed == Owed::Drain {
                    // The CONNECTION message did not get through whole: the child cannot
                    // serve it.
                    r.tree.signal(Stop::Kill);
                    r.failed = true;
                    core.totals.dispatched -= 1;
                    core.totals.dropped += 1;
                }
                r.owed = Owed::Nothing;
            }
        }
        let mut handled = 0;
        self.children.retain_mut(|r| {
            let done = match r.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        debug!(pid = r.pid, "child {}", crate::restart::describe(Some(status)));
                    }
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            };
            if done && !r.failed {
                handled += 1;
            }
            !done
        });
        core.totals.handled += handled;
    }
}

/// `--socket channel`: sends the child its connection (a CONNECTION message with the socket)
/// and then DRAIN, without waiting. A fresh channel takes both at once; what it could not is
/// written on later ticks ([`write_rest`]).
fn hand_over(r: &mut Running, id: u64, a: &Accepted, name: &str) -> handover::Result<()> {
    let Some(ch) = &r.channel else { return Ok(()) };
    let mut buf = [0u8; CONNECTION_MAX_LEN];
    let info = ConnectionInfo { id, listener: a.listener, listener_name: name, peer: a.peer };
    let n = info.encode(&mut buf);
    match ch.try_send(&buf[..n], &[a.socket.as_socket_ref()])? {
        SendStatus::Written | SendStatus::Buffered => r.owed = Owed::Drain,
        _ => return Err(std::io::Error::other("the child's new channel is full").into()),
    }
    write_rest(r)
}

/// Writes what [`hand_over`] left: the rest of a message, then DRAIN if it is still owed.
fn write_rest(r: &mut Running) -> handover::Result<()> {
    let Some(ch) = &r.channel else { return Ok(()) };
    if r.owed == Owed::Nothing || !ch.try_flush()? {
        return Ok(());
    }
    r.owed = match r.owed {
        Owed::Drain => match ch.try_send(&SupervisorMessage::drain(), &[])? {
            SendStatus::Written => Owed::Nothing,
            SendStatus::Buffered => Owed::Flush,
            _ => Owed::Drain,
        },
        _ => Owed::Nothing,
    };
    Ok(())
}

impl Engine for Spawn {
    const KIND: crate::model::Mode = crate::model::Mode::Spawn;
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
                state: WorkerState::Serving,
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
