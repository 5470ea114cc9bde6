//! Worker slots (prefork and shared mode): starting workers, replacing the dead by the restart
//! policy ([`crate::restart::Restarts`]), reloading one slot at a time, recycling workers
//! (`--max-requests`, `--max-memory`), changing the number of slots at run time (`handover
//! scale`), and reaping without waiting.
//!
//! A slot has a *current* worker and, during a reload, an *incoming* one that takes over when
//! it is ready (the mode says when: prefork at HELLO, shared once it has stayed up); the one it
//! replaces *retires* (the mode tells it to finish) and stays a member until it exits. A member
//! that is gone (its channel closed, it exited, or the supervisor killed it) is *departed*: its
//! slot is refilled once its exit status is known, since how it ended decides how soon, and
//! the restart is counted under its [`Cause`].
//!
//! A *recycled* worker gets a replacement in its slot as a reload would, without counting as a
//! death: the mode retires it at once (`--max-requests`: it has served its share) or when the
//! replacement is ready (`--max-memory`: it keeps serving meanwhile). Scaling down removes the
//! highest slots: their workers retire (they drain; they are not killed) and are not replaced.
//! Scaling up adds slots whose workers start at once. `--max-starting` holds starts back while
//! that many workers are starting and not ready yet, so workers come up in batches, each
//! gated on the readiness of the one before.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::slots::{Action, Departure, Slots};
pub(crate) use super::slots::{Killed, ProcState, WorkerId};
use super::Core;
use crate::output::Label;
use crate::restart::{self, Cause, Death};
use crate::status::WorkerStatus;
use crate::sys::{self, ProcessTree, Stop, TreeKind};

/// How long a killed worker may take to exit before its slot is refilled regardless (it is
/// reaped later); also how long a worker whose channel closed may go on running before it is
/// killed.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(1);

/// One worker process, as the pool sees it (its state is kept by [`Slots`]: see
/// [`Pool::state`]).
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) id: WorkerId,
    pub(crate) slot: usize,
    pub(crate) pid: u32,
    pub(crate) child: handover::Child,
    pub(crate) tree: ProcessTree,
    pub(crate) started: Instant,
    /// `--max-requests` plus its share of the jitter: the connections it serves before it is
    /// recycled.
    pub(crate) max_requests: Option<u64>,
}

/// A pool member: a [`Proc`] and what the mode keeps about it.
pub(crate) trait Member {
    fn proc(&self) -> &Proc;
    fn proc_mut(&mut self) -> &mut Proc;
    fn into_proc(self) -> Proc;
}

/// Implements [`Member`] for a mode's worker struct whose `proc` field is its [`Proc`].
macro_rules! impl_member {
    ($t:ty) => {
        impl $crate::engine::pool::Member for $t {
            fn proc(&self) -> &$crate::engine::pool::Proc {
                &self.proc
            }
            fn proc_mut(&mut self) -> &mut $crate::engine::pool::Proc {
                &mut self.proc
            }
            fn into_proc(self) -> $crate::engine::pool::Proc {
                self.proc
            }
        }
    };
}
pub(crate) use impl_member;

/// The [`Engine`](super::Engine) methods that a mode whose workers are the [`Pool`] in its `pool`
/// field answers from the pool (prefork, shared).
macro_rules! pool_mode_methods {
    () => {
        fn reload(&mut self, _core: &mut $crate::engine::Core) {
            self.pool.reload();
        }

        fn reloading(&self) -> bool {
            self.pool.reloading()
        }

        fn reloaded(&self) -> (usize, usize) {
            self.pool.reloaded()
        }

        fn workers_wanted(&self) -> usize {
            self.pool.slots()
        }
    };
}
pub(crate) use pool_mode_methods;

/// A departed member, until it is reaped and its slot decided about.
#[derive(Debug)]
struct Departed {
    proc: Proc,
    /// What the slots said when it departed (its state: updated once the pool kills it for
    /// not exiting).
    gone: Departure,
    lived: Duration,
    /// How its end was noticed ("exited", "killed").
    how: &'static str,
    /// It was told to finish, or the program drains: its exit is no news.
    expected: bool,
    /// What the mode adds to the log line (its connections' fate).
    detail: String,
    since: Instant,
}

/// The workers of a prefork or shared program: the I/O (spawning, signalling, reaping,
/// reading resident memory) around a [`Slots`] machine, which decides.
#[derive(Debug)]
pub(crate) struct Pool<W> {
    members: Vec<W>,
    slots: Slots,
    departed: Vec<Departed>,
    /// Departed workers given up on waiting for; reaped when they finally exit.
    zombies: Vec<handover::Child>,
    /// What counts as a crash at start in this mode (for the give-up message).
    at_start: &'static str,
    /// See [`Pool::with`].
    reap_retired_trees: bool,
    /// When resident memory is read next (`--max-memory`).
    memory_check_at: Instant,
}

impl<W: Member> Pool<W> {
    /// A pool of `slots` slots, each to be started at once. `at_start`: what counts as a crash
    /// at start in this mode (for the give-up message); `reap_retired_trees`: whether what a
    /// worker told to finish leaves running is killed when it exits (prefork) or left to
    /// finish (shared).
    pub(crate) fn with(slots: usize, at_start: &'static str, reap_retired_trees: bool) -> Pool<W> {
        let now = Instant::now();
        Pool {
            reap_retired_trees,
            members: Vec::new(),
            slots: Slots::new(slots, now, seed()),
            departed: Vec::new(),
            zombies: Vec::new(),
            at_start,
            memory_check_at: now,
        }
    }

    /// Some worker has been ready since start, the last reload or upgrade.
    pub(crate) fn proven(&self) -> bool {
        self.slots.proven()
    }

    pub(crate) fn members(&self) -> &[W] {
        &self.members
    }

    /// The number of slots: the workers it runs (`--workers`, then `handover scale`).
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Workers a reload replaced since it began, and slots it could not (their replacement
    /// died before it was ready; they keep their worker).
    pub(crate) fn reloaded(&self) -> (usize, usize) {
        self.slots.reloaded()
    }

    pub(crate) fn get(&self, id: WorkerId) -> Option<&W> {
        self.members.iter().find(|m| m.proc().id == id)
    }

    pub(crate) fn get_mut(&mut self, id: WorkerId) -> Option<&mut W> {
        self.members.iter_mut().find(|m| m.proc().id == id)
    }

    /// Where member `id` is in its life (`Starting` for one that is not a member: it is
    /// asked about only while it is).
    pub(crate) fn state(&self, id: WorkerId) -> &ProcState {
        self.slots.state(id).unwrap_or(&ProcState::Starting)
    }

    /// The ids of the members `pick` selects (to act on each while changing the pool).
    pub(crate) fn ids(&self, pick: impl Fn(&W) -> bool) -> Vec<WorkerId> {
        self.members.iter().filter(|m| pick(m)).map(|m| m.proc().id).collect()
    }

    /// The members whose process has exited (found without waiting).
    pub(crate) fn exited(&mut self) -> Vec<WorkerId> {
        let mut ids = Vec::new();
        for m in &mut self.members {
            let p = m.proc_mut();
            if !matches!(p.child.try_wait(), Ok(None)) {
                ids.push(p.id);
            }
        }
        ids
    }

    /// Nothing runs and nothing is left to reap.
    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.departed.is_empty()
    }

    /// Only departed workers remain, to be reaped.
    pub(crate) fn only_departed(&self) -> bool {
        self.members.is_empty() && !self.departed.is_empty()
    }

    /// A reload is under way.
    pub(crate) fn reloading(&self) -> bool {
        self.slots.reloading()
    }

    /// The slots whose worker is due to start now (see [`Slots::due`]). The mode starts each
    /// with [`Pool::start`].
    pub(crate) fn due(&mut self, core: &Core) -> Vec<usize> {
        let max = core.prog.controls.max_starting;
        let due = self.slots.due(Instant::now(), max, core.running());
        let mut slots = Vec::with_capacity(due.len());
        for a in due {
            if let Action::Start { slot, reload } = a {
                if reload {
                    info!(program = %core.prog.name, slot, "reload: starting a replacement worker");
                }
                slots.push(slot);
            }
        }
        slots
    }

    /// Starts a worker in `slot` from `cmd`, as a member made by `make`. A worker that cannot
    /// be started counts as a crash at start.
    pub(crate) fn start(
        &mut self,
        core: &mut Core,
        slot: usize,
        cmd: &mut handover::Command<'_>,
        make: impl FnOnce(Proc) -> W,
    ) {
        cmd.env("HANDOVER_SLOT", slot.to_string());
        let output = core.output_pipes(cmd, true);
        let (child, tree) = match sys::spawn(cmd, TreeKind::Worker) {
            Ok(x) => x,
            Err(err) => {
                let program = core.prog.program.display();
                error!(program = %core.prog.name, slot, "cannot start worker {program}: {err}");
                let why = format!("could not start: {err}");
                let t = core.prog.timeouts;
                let a = self.slots.start_failed(slot, why, Instant::now(), core.running(), &t);
                self.act(core, a);
                return;
            }
        };
        let max_requests = self.draw_max_requests(core);
        let id = self.slots.started(slot);
        let pid = child.id();
        debug!(program = %core.prog.name, slot, pid, "worker started");
        if let Some(o) = output {
            let program = std::rc::Rc::from(core.prog.name.as_str());
            o.start(Label { program, worker: Some((slot, pid)), files: core.files.clone() });
        }
        let started = Instant::now();
        let proc = Proc { id, slot, pid, child, tree, started, max_requests };
        self.members.push(make(proc));
    }

    /// `id` is ready. If it replaces a worker (a reload), that worker's id is returned: the
    /// mode retires it ([`Pool::retire`]).
    ///
    /// A worker retired before it was ready (its slot was scaled away) takes no slot.
    pub(crate) fn mark_ready(&mut self, id: WorkerId) -> Option<WorkerId> {
        match self.slots.ready(id)? {
            Action::Retire(old) => Some(old),
            _ => None,
        }
    }

    /// `id` is told to finish and exit; returns whether that is news (the mode tells it then).
    pub(crate) fn retire(&mut self, id: WorkerId) -> bool {
        self.slots.retire(id)
    }

    /// Every slot has a current worker that is ready.
    pub(crate) fn all_ready(&self) -> bool {
        self.slots.all_ready()
    }

    /// Starts a reload: every slot in turn. The program on disk may have changed, so it has to
    /// prove itself again.
    pub(crate) fn reload(&mut self) {
        self.slots.reload();
    }

    /// Sets the number of slots to `n` (at least 1). New slots start their worker now (or when
    /// `--max-starting` lets them). The workers of the slots removed (the highest) are returned
    /// for the mode to retire: they drain, they are not killed, and nobody replaces them.
    pub(crate) fn resize(&mut self, n: usize) -> Vec<WorkerId> {
        let retire = self.slots.resize(n, Instant::now());
        retire
            .into_iter()
            .filter_map(|a| match a {
                Action::Retire(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Replaces `id` because of `cause` (`why` says more, for the log): a replacement starts
    /// in its slot now, and the restart is counted. The mode retires `id`: at once, or once the
    /// replacement is ready ([`Pool::mark_ready`] returns it then). Only a ready worker that is
    /// not retiring, being killed or recycled already is taken; returns whether it was.
    pub(crate) fn recycle(
        &mut self,
        core: &mut Core,
        id: WorkerId,
        cause: Cause,
        why: &str,
    ) -> bool {
        if !self.slots.recycle(id, cause, Instant::now(), core.running()) {
            return false;
        }
        if let Some(p) = self.get(id).map(Member::proc) {
            info!(program = %core.prog.name, slot = p.slot, pid = p.pid, "recycling worker: {why}");
        }
        core.totals.restarts += 1;
        core.totals.restarts_by_cause.count(cause);
        true
    }

    /// `--max-requests` plus a share of `--max-requests-jitter` drawn at random, for a new
    /// worker (so workers that started together are not recycled together).
    fn draw_max_requests(&mut self, core: &Core) -> Option<u64> {
        let c = &core.prog.controls;
        Some(self.slots.jittered_limit(c.max_requests?, c.max_requests_jitter))
    }

    /// Recycles every worker whose resident memory passed `--max-memory` (see
    /// [`Pool::over_memory`], [`Pool::recycle`]).
    pub(crate) fn recycle_over_memory(&mut self, core: &mut Core) {
        let limit = core.prog.controls.max_memory.unwrap_or_default();
        for (id, rss) in self.over_memory(core) {
            let why = format!(
                "resident memory {} MiB passed --max-memory {} MiB",
                rss >> 20,
                limit >> 20
            );
            self.recycle(core, id, Cause::MaxMemory, &why);
        }
    }

    /// With `--max-memory`, every `--memory-check-interval`: the ready workers whose
    /// resident memory has passed the limit, with it (read from the OS; a worker whose memory
    /// cannot be read is left alone). Workers retiring or being recycled are not counted.
    pub(crate) fn over_memory(&mut self, core: &Core) -> Vec<(WorkerId, u64)> {
        let c = &core.prog.controls;
        let Some(limit) = c.max_memory else { return Vec::new() };
        let now = Instant::now();
        if now < self.memory_check_at || !core.running() {
            return Vec::new();
        }
        self.memory_check_at = now + c.memory_check_interval;
        self.members
            .iter()
            .map(Member::proc)
            .filter(|p| *self.state(p.id) == ProcState::Ready)
            .filter_map(|p| match sys::resident_memory(p.pid) {
                Ok(rss) if rss > limit => Some((p.id, rss)),
                _ => None,
            })
            .collect()
    }

    /// The program drains: no more starts, no more reload steps.
    pub(crate) fn drain(&mut self) {
        self.slots.drain();
    }

    /// Kills `id`'s tree and remembers why (`cause`: what its restart counts as); it departs
    /// when the mode notices (its channel closes, it exits).
    pub(crate) fn kill(&mut self, core: &Core, id: WorkerId, why: String, cause: Cause) {
        let Some(p) = self.get(id).map(Member::proc) else { return };
        let (slot, pid) = (p.slot, p.pid);
        let at = Instant::now();
        if !self.slots.kill(id, Killed { why: why.clone(), at, cause }) {
            return;
        }
        warn!(program = %core.prog.name, slot, pid, "killing worker: {why}");
        if let Some(m) = self.get(id) {
            m.proc().tree.signal(Stop::Kill);
        }
    }

    /// Records `id` as killed (`why`, `cause`) if it is not already, without signalling it
    /// (see [`Pool::kill_all`]).
    pub(crate) fn mark_killed(&mut self, id: WorkerId, why: &str, cause: Cause) {
        let at = Instant::now();
        self.slots.kill(id, Killed { why: why.to_owned(), at, cause });
    }

    /// Kills every member's tree now (the supervisor exits next: nobody is reaped).
    pub(crate) fn kill_all(&mut self) {
        for m in &self.members {
            m.proc().tree.signal(Stop::Kill);
        }
        for d in &self.departed {
            d.proc.tree.signal(Stop::Kill);
        }
    }

    /// Takes `id` out of the pool. The mode settles what it held, then hands its [`Proc`]
    /// back with [`Pool::depart`].
    pub(crate) fn take(&mut self, id: WorkerId) -> Option<W> {
        let i = self.members.iter().position(|m| m.proc().id == id)?;
        Some(self.members.remove(i))
    }

    /// A member taken out with [`Pool::take`] is gone (`how`: "exited", "killed"); `detail`
    /// goes into the log line about it; `ready`: it counts as having been ready whatever its
    /// state says (shared mode: it stayed up long enough, but died before the tick that would
    /// have found it ready). Its slot is refilled once it is reaped.
    pub(crate) fn depart(
        &mut self,
        core: &mut Core,
        proc: Proc,
        how: &'static str,
        detail: String,
        ready: bool,
    ) {
        // (Every member is in the slots; were one not, it would still be reaped.)
        let mut gone = self.slots.depart(proc.id).unwrap_or(Departure {
            slot: proc.slot,
            state: ProcState::Starting,
            restart: false,
            reload_failed: false,
        });
        if ready {
            gone.state = gone.state.into_ready();
        }
        let state = &gone.state;
        // A worker the supervisor killed is signalled again (its tree: anything it started).
        // One whose channel closed by itself is left to exit: signalling it now would turn
        // its own exit or crash into a SIGKILL, which the restart policy takes for a kill
        // from outside. `reap` kills it if it has not exited within KILL_GRACE.
        if state.killed().is_some() {
            proc.tree.signal(Stop::Kill);
        }
        if gone.reload_failed {
            warn!(program = %core.prog.name, slot = gone.slot, "reload: the replacement worker died before it was ready; this slot keeps its worker");
        }
        let expected =
            matches!(state, ProcState::Retiring { .. } | ProcState::Recycled(_)) || !core.running();
        let lived = proc.started.elapsed();
        let since = Instant::now();
        self.departed.push(Departed { proc, gone, lived, how, expected, detail, since });
        self.reap(core);
    }

    /// Reaps the departed workers that can be, without waiting, and decides about their
    /// slots. One still running [`KILL_GRACE`] after its channel closed by itself is killed;
    /// one still unreaped [`KILL_GRACE`] after the supervisor killed it is decided about
    /// without its exit status (and reaped later, as a zombie).
    pub(crate) fn reap(&mut self, core: &mut Core) {
        self.zombies.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        let mut i = 0;
        while i < self.departed.len() {
            let d = &mut self.departed[i];
            let status = match d.proc.child.try_wait() {
                Ok(Some(st)) => Some(st),
                Ok(None) if d.since.elapsed() < KILL_GRACE => {
                    i += 1;
                    continue;
                }
                Ok(None) if d.gone.state.killed().is_none() => {
                    // Its channel closed a while ago and it still runs: end it, and judge it
                    // as killed for that (not as a kill from outside).
                    d.proc.tree.signal(Stop::Kill);
                    let why = "closed its control channel but did not exit".to_owned();
                    let at = Instant::now();
                    let killed = Killed { why, at, cause: Cause::Misbehaved };
                    d.gone.state = ProcState::Killed { ready: d.gone.state.was_ready(), killed };
                    d.since = Instant::now();
                    i += 1;
                    continue;
                }
                Ok(None) | Err(_) => None,
            };
            let d = self.departed.swap_remove(i);
            // Whatever it started goes with it (its leader is reaped; the group lives on
            // only while members remain); except, where the mode says so, what a worker told
            // to finish started (shared mode: children finishing in-flight requests after
            // their parent exited on SIGTERM).
            let spare =
                matches!(d.gone.state, ProcState::Retiring { .. }) && !self.reap_retired_trees;
            if status.is_some() && d.gone.state.killed().is_none() && !spare {
                d.proc.tree.signal(Stop::Kill);
            }
            self.settle(core, &d, status);
            if status.is_none() {
                self.zombies.push(d.proc.child);
            }
        }
    }

    /// Logs how a departed worker ended and refills its slot by the restart policy.
    fn settle(&mut self, core: &mut Core, d: &Departed, status: Option<ExitStatus>) {
        let killed = d.gone.state.killed();
        let what = match killed {
            Some(k) => format!("killed ({})", k.why),
            None => format!("{} ({})", d.how, restart::describe(status)),
        };
        let (slot, pid, lived, detail) = (d.proc.slot, d.proc.pid, d.lived, &d.detail);
        if d.expected && killed.is_none() {
            info!(program = %core.prog.name, slot, pid, "worker exited{detail}");
        } else {
            warn!(program = %core.prog.name, slot, pid, "worker {what} after {lived:?}{detail}");
        }
        let from_outside =
            killed.is_none() && status.as_ref().is_some_and(sys::killed_from_outside);
        let cause = match killed {
            Some(k) => k.cause,
            None => Cause::of_exit(status.as_ref()),
        };
        let exit = Death { lived, ready: d.gone.state.was_ready(), from_outside, cause };
        let t = core.prog.timeouts;
        let (now, running) = (Instant::now(), core.running());
        let a = self.slots.settle(&d.gone, what, exit, now, running, &t);
        self.act(core, a);
    }

    /// Counts and logs a restart the slots decided, or gives the program up.
    fn act(&mut self, core: &mut Core, action: Option<Action>) {
        match action {
            Some(Action::Restart { slot, delay, cause }) => {
                core.totals.restarts += 1;
                core.totals.restarts_by_cause.count(cause);
                let name = &core.prog.name;
                if cause == Cause::CrashLoop {
                    warn!(program = %name, slot, "crash-looping: restarting worker in {delay:?}");
                } else if !delay.is_zero() {
                    warn!(program = %name, slot, "restarting worker in {delay:?}");
                }
            }
            Some(Action::GiveUp { slot, crashes }) => {
                let last = self.slots.last_exit(slot);
                let message = restart::crash_loop(&core.prog, crashes, self.at_start, last);
                core.give_up(message);
            }
            Some(Action::Start { .. } | Action::Retire(_)) | None => {}
        }
    }

    /// Times `slot`'s worker was restarted (0 for a slot scaled away).
    pub(crate) fn restarts(&self, slot: usize) -> u64 {
        self.slots.restarts(slot)
    }

    /// Status rows for the slots waiting to start their next worker (backoff or
    /// crash-looping).
    pub(crate) fn waiting_rows(&self, core: &Core) -> Vec<WorkerStatus> {
        let t = &core.prog.timeouts;
        self.slots
            .waiting()
            .map(|(slot, r)| WorkerStatus {
                slot,
                state: restart::waiting_state(r, t),
                restarts: r.count,
                ..WorkerStatus::default()
            })
            .collect()
    }
}

/// A seed that differs between supervisors (std's per-process hash keys).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish() | 1
}
