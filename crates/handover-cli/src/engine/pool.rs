//! Worker slots (prefork and shared mode): starting workers, replacing the dead by the restart
//! policy ([`crate::child::Restarts`]), reloading one slot at a time, recycling workers
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

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::Core;
use crate::child::{self, Cause, Death, Restart, Restarts};
use crate::output::Label;
use crate::status::WorkerStatus;
use crate::sys::{self, ProcessTree, Stop, TreeKind};

/// A worker process, unique for the supervisor's lifetime (a restarted slot gets a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WorkerId(pub(crate) u64);

/// How long a killed worker may take to exit before its slot is refilled regardless (it is
/// reaped later); also how long a worker whose channel closed may go on running before it is
/// killed.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(1);

/// One worker process, as the pool sees it.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) id: WorkerId,
    pub(crate) slot: usize,
    pub(crate) pid: u32,
    pub(crate) child: handover::Child,
    pub(crate) tree: ProcessTree,
    pub(crate) started: Instant,
    /// It became ready (prefork: said hello; shared: stayed up long enough).
    pub(crate) ready: bool,
    /// It was told to finish and exit (a reload replaced it, or the program drains).
    pub(crate) retiring: bool,
    /// Why and when the supervisor killed it.
    pub(crate) killed: Option<Killed>,
    /// Why it is being replaced while it lives (see [`Pool::recycle`]).
    pub(crate) recycled: Option<Cause>,
    /// `--max-requests` plus its share of the jitter: the connections it serves before it is
    /// recycled.
    pub(crate) max_requests: Option<u64>,
}

/// Why and when the supervisor killed a worker.
#[derive(Debug, Clone)]
pub(crate) struct Killed {
    pub(crate) why: String,
    pub(crate) at: Instant,
    /// What its restart counts as.
    pub(crate) cause: Cause,
}

impl Proc {
    /// Ready, and neither told to finish nor being killed.
    pub(crate) fn serving(&self) -> bool {
        self.ready && !self.retiring && self.killed.is_none()
    }

    /// Serving, and not being replaced already: what [`Pool::recycle`] may take.
    fn recyclable(&self) -> bool {
        self.serving() && self.recycled.is_none()
    }
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

/// The [`Mode`](super::Mode) methods that a mode whose workers are the [`Pool`] in its `pool`
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

#[derive(Debug, Default)]
struct Slot {
    current: Option<WorkerId>,
    /// A reload's replacement; takes over when it is ready.
    incoming: Option<WorkerId>,
    start_at: Option<Instant>,
    restarts: Restarts,
    last_exit: Option<String>,
}

/// A departed member, until it is reaped and its slot decided about.
#[derive(Debug)]
struct Departed {
    proc: Proc,
    /// Its slot needs a new worker (it was the slot's current or incoming one).
    restart: bool,
    lived: Duration,
    /// How its end was noticed ("exited", "killed").
    how: &'static str,
    /// It was told to finish, or the program drains: its exit is no news.
    expected: bool,
    /// What the mode adds to the log line (its connections' fate).
    detail: String,
    since: Instant,
}

#[derive(Debug)]
pub(crate) struct Pool<W> {
    members: Vec<W>,
    slots: Vec<Slot>,
    next_id: u64,
    /// Some worker has been ready since start or the last reload (see [`child::Death`]).
    proven: bool,
    /// Slots still to reload, in order, and the one being reloaded.
    reload: VecDeque<usize>,
    reloading: Option<usize>,
    departed: Vec<Departed>,
    /// Departed workers given up on waiting for; reaped when they finally exit.
    zombies: Vec<handover::Child>,
    /// What counts as a crash at start in this mode (for the give-up message).
    at_start: &'static str,
    /// See [`Pool::with`].
    reap_retired_trees: bool,
    /// Workers a reload replaced since it began (reported when it is done).
    reloaded: usize,
    /// Slots whose replacement died before it was ready, in the reload under way (or the last).
    reload_failed: usize,
    /// State of the generator that draws each worker's `--max-requests` jitter.
    jitter_state: u64,
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
            slots: (0..slots).map(|_| Slot { start_at: Some(now), ..Slot::default() }).collect(),
            next_id: 1,
            proven: false,
            reload: VecDeque::new(),
            reloading: None,
            departed: Vec::new(),
            zombies: Vec::new(),
            at_start,
            reloaded: 0,
            reload_failed: 0,
            jitter_state: seed(),
            memory_check_at: now,
        }
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
        (self.reloaded, self.reload_failed)
    }

    pub(crate) fn get(&self, id: WorkerId) -> Option<&W> {
        self.members.iter().find(|m| m.proc().id == id)
    }

    pub(crate) fn get_mut(&mut self, id: WorkerId) -> Option<&mut W> {
        self.members.iter_mut().find(|m| m.proc().id == id)
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
        self.reloading.is_some() || !self.reload.is_empty()
    }

    /// The slots whose worker is due to start now: first starts, restarts whose backoff has
    /// passed, replacements of recycled workers (at most `--max-starting` workers starting at
    /// once, if set), and the next step of a reload. The mode starts each with [`Pool::start`].
    pub(crate) fn due(&mut self, core: &Core) -> Vec<usize> {
        let now = Instant::now();
        let mut due = Vec::new();
        let max = core.prog.controls.max_starting;
        let starting = self.members.iter().filter(|m| starting(m.proc())).count();
        let mut budget = if max == 0 { usize::MAX } else { max.saturating_sub(starting) };
        for (i, s) in self.slots.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            if s.start_at.is_some_and(|t| t <= now) {
                s.start_at = None;
                due.push(i);
                budget -= 1;
            }
        }
        if core.running() && self.reloading.is_none() {
            if let Some(slot) = self.reload.pop_front() {
                let s = &self.slots[slot];
                if s.current.is_some() && s.incoming.is_none() && s.start_at.is_none() {
                    info!(program = %core.prog.name, slot, "reload: starting a replacement worker");
                    self.reloading = Some(slot);
                    due.push(slot);
                }
            }
        }
        due
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
                self.slots[slot].last_exit = Some(format!("could not start: {err}"));
                let death = Death {
                    lived: Duration::ZERO,
                    ready: false,
                    from_outside: false,
                    proven: self.proven,
                };
                self.schedule_restart(core, slot, death, Cause::Exit);
                return;
            }
        };
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        let pid = child.id();
        debug!(program = %core.prog.name, slot, pid, "worker started");
        if let Some(o) = output {
            let program = std::rc::Rc::from(core.prog.name.as_str());
            o.start(Label { program, worker: Some((slot, pid)), files: core.files.clone() });
        }
        let proc = Proc {
            id,
            slot,
            pid,
            child,
            tree,
            started: Instant::now(),
            ready: false,
            retiring: false,
            killed: None,
            recycled: None,
            max_requests: self.draw_max_requests(core),
        };
        self.members.push(make(proc));
        let s = &mut self.slots[slot];
        if s.current.is_some() {
            s.incoming = Some(id);
        } else {
            s.current = Some(id);
        }
    }

    /// `id` is ready. If it replaces a worker (a reload), that worker's id is returned: the
    /// mode retires it.
    ///
    /// A worker retired before it was ready (its slot was scaled away) takes no slot.
    pub(crate) fn mark_ready(&mut self, id: WorkerId) -> Option<WorkerId> {
        let m = self.get_mut(id)?;
        let p = m.proc_mut();
        p.ready = true;
        let (slot, retiring) = (p.slot, p.retiring);
        self.proven = true;
        if retiring {
            return None;
        }
        let s = self.slots.get_mut(slot)?;
        let mut old = None;
        if s.incoming == Some(id) {
            s.incoming = None;
            old = s.current.replace(id);
        } else if s.current.is_none() {
            s.current = Some(id);
        }
        // A reload's replacement may have died and been restarted as the slot's current one.
        if self.reloading == Some(slot) && s.incoming.is_none() {
            self.reloading = None;
            self.reloaded += 1;
        }
        old
    }

    /// Every slot has a current worker that is ready.
    pub(crate) fn all_ready(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.current.and_then(|id| self.get(id)).is_some_and(|m| m.proc().serving()))
    }

    /// Starts a reload: every slot in turn. The program on disk may have changed, so it has to
    /// prove itself again.
    pub(crate) fn reload(&mut self) {
        if !self.reloading() {
            self.reloaded = 0;
            self.reload_failed = 0;
        }
        self.reload = (0..self.slots.len()).collect();
        self.proven = false;
    }

    /// Sets the number of slots to `n` (at least 1). New slots start their worker now (or when
    /// `--max-starting` lets them). The workers of the slots removed (the highest) are returned
    /// for the mode to retire: they drain, they are not killed, and nobody replaces them.
    pub(crate) fn resize(&mut self, n: usize) -> Vec<WorkerId> {
        let n = n.max(1);
        let now = Instant::now();
        let mut retire = Vec::new();
        while self.slots.len() > n {
            let s = self.slots.pop().expect("more slots than n >= 1");
            retire.extend(s.current);
            retire.extend(s.incoming);
        }
        while self.slots.len() < n {
            self.slots.push(Slot { start_at: Some(now), ..Slot::default() });
        }
        self.reload.retain(|&slot| slot < n);
        if self.reloading.is_some_and(|slot| slot >= n) {
            self.reloading = None;
        }
        retire
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
        let Some(m) = self.get_mut(id) else { return false };
        let p = m.proc_mut();
        if !p.recyclable() {
            return false;
        }
        p.recycled = Some(cause);
        let (slot, pid) = (p.slot, p.pid);
        info!(program = %core.prog.name, slot, pid, "recycling worker: {why}");
        core.totals.restarts += 1;
        core.totals.restarts_by_cause.count(cause);
        if let Some(s) = self.slots.get_mut(slot) {
            s.restarts.count += 1;
            if s.current == Some(id) && s.incoming.is_none() && core.running() {
                s.start_at = Some(Instant::now());
            }
        }
        true
    }

    /// `--max-requests` plus a share of `--max-requests-jitter` drawn at random, for a new
    /// worker (so workers that started together are not recycled together).
    fn draw_max_requests(&mut self, core: &Core) -> Option<u64> {
        let c = &core.prog.controls;
        let max = c.max_requests?;
        self.jitter_state = xorshift(self.jitter_state);
        Some(jittered(max, c.max_requests_jitter, self.jitter_state))
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
            .filter(|p| p.recyclable())
            .filter_map(|p| match sys::resident_memory(p.pid) {
                Ok(rss) if rss > limit => Some((p.id, rss)),
                _ => None,
            })
            .collect()
    }

    /// The program drains: no more starts, no more reload steps.
    pub(crate) fn drain(&mut self) {
        for s in &mut self.slots {
            s.start_at = None;
        }
        self.reload.clear();
    }

    /// Kills `id`'s tree and remembers why (`cause`: what its restart counts as); it departs
    /// when the mode notices (its channel closes, it exits).
    pub(crate) fn kill(&mut self, core: &Core, id: WorkerId, why: String, cause: Cause) {
        let Some(m) = self.get_mut(id) else { return };
        let p = m.proc_mut();
        if p.killed.is_some() {
            return;
        }
        warn!(program = %core.prog.name, slot = p.slot, pid = p.pid, "killing worker: {why}");
        p.tree.signal(Stop::Kill);
        p.killed = Some(Killed { why, at: Instant::now(), cause });
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
    /// goes into the log line about it. Its slot is refilled once it is reaped.
    pub(crate) fn depart(
        &mut self,
        core: &mut Core,
        proc: Proc,
        how: &'static str,
        detail: String,
    ) {
        // A worker the supervisor killed is signalled again (its tree: anything it started).
        // One whose channel closed by itself is left to exit: signalling it now would turn
        // its own exit or crash into a SIGKILL, which the restart policy takes for a kill
        // from outside. `reap` kills it if it has not exited within KILL_GRACE.
        if proc.killed.is_some() {
            proc.tree.signal(Stop::Kill);
        }
        let restart = match self.slots.get_mut(proc.slot) {
            // Its slot was scaled away.
            None => false,
            Some(s) if s.current == Some(proc.id) => {
                s.current = None;
                // A recycled worker's replacement may not have started yet.
                s.incoming.is_none() && s.start_at.is_none()
            }
            Some(s) if s.incoming == Some(proc.id) => {
                s.incoming = None;
                // A reload's replacement that died before it was ready: the slot keeps its
                // worker (so `settle` starts none), and the reload goes on with the next slot
                // (a reload that waited for this one would never end, and no later reload
                // would start).
                if self.reloading == Some(proc.slot) {
                    self.reloading = None;
                    if s.current.is_some() {
                        self.reload_failed += 1;
                        warn!(program = %core.prog.name, slot = proc.slot, "reload: the replacement worker died before it was ready; this slot keeps its worker");
                    }
                }
                true
            }
            Some(_) => false,
        };
        let expected = proc.retiring || proc.recycled.is_some() || !core.running();
        let lived = proc.started.elapsed();
        let since = Instant::now();
        self.departed.push(Departed { proc, restart, lived, how, expected, detail, since });
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
                Ok(None) if d.proc.killed.is_none() => {
                    // Its channel closed a while ago and it still runs: end it, and judge it
                    // as killed for that (not as a kill from outside).
                    d.proc.tree.signal(Stop::Kill);
                    let why = "closed its control channel but did not exit".to_owned();
                    let at = Instant::now();
                    d.proc.killed = Some(Killed { why, at, cause: Cause::Misbehaved });
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
            let spare = d.proc.retiring && !self.reap_retired_trees;
            if status.is_some() && d.proc.killed.is_none() && !spare {
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
        let what = match &d.proc.killed {
            Some(k) => format!("killed ({})", k.why),
            None => format!("{} ({})", d.how, child::describe(status)),
        };
        let (slot, pid, lived, detail) = (d.proc.slot, d.proc.pid, d.lived, &d.detail);
        if d.expected && d.proc.killed.is_none() {
            info!(program = %core.prog.name, slot, pid, "worker exited{detail}");
        } else {
            warn!(program = %core.prog.name, slot, pid, "worker {what} after {lived:?}{detail}");
        }
        let Some(s) = self.slots.get_mut(slot) else { return };
        s.last_exit = Some(what);
        // Both of a slot's workers (a reload's pair) may die before either is settled: the
        // slot needs one new worker, not two.
        let refilled = s.current.is_some() || s.incoming.is_some() || s.start_at.is_some();
        if d.restart && !refilled {
            let from_outside =
                d.proc.killed.is_none() && status.as_ref().is_some_and(sys::killed_from_outside);
            let death = Death { lived, ready: d.proc.ready, from_outside, proven: self.proven };
            let cause = match &d.proc.killed {
                Some(k) => k.cause,
                None => Cause::of_exit(status.as_ref()),
            };
            self.schedule_restart(core, slot, death, cause);
        }
    }

    fn schedule_restart(&mut self, core: &mut Core, slot: usize, death: Death, cause: Cause) {
        if !core.running() {
            return;
        }
        let t = core.prog.timeouts;
        match self.slots[slot].restarts.on_death(death, &t) {
            Restart::After(delay) => {
                core.totals.restarts += 1;
                let looping = self.slots[slot].restarts.crash_looping(&t);
                core.totals.restarts_by_cause.count(if looping { Cause::CrashLoop } else { cause });
                self.slots[slot].start_at = Some(Instant::now() + delay);
                let name = &core.prog.name;
                if looping {
                    warn!(program = %name, slot, "crash-looping: restarting worker in {delay:?}");
                } else if !delay.is_zero() {
                    warn!(program = %name, slot, "restarting worker in {delay:?}");
                }
            }
            Restart::GiveUp(n) => {
                let last = self.slots[slot].last_exit.as_deref().unwrap_or_default();
                let message = child::crash_loop(&core.prog, n, self.at_start, last);
                core.give_up(message);
                self.drain();
            }
        }
    }

    /// Times `slot`'s worker was restarted (0 for a slot scaled away).
    pub(crate) fn restarts(&self, slot: usize) -> u64 {
        self.slots.get(slot).map_or(0, |s| s.restarts.count)
    }

    /// Status rows for the slots waiting to start their next worker (backoff or
    /// crash-looping).
    pub(crate) fn waiting_rows(&self, core: &Core) -> Vec<WorkerStatus> {
        let t = &core.prog.timeouts;
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.start_at.is_some() && s.current.is_none())
            .map(|(slot, s)| WorkerStatus {
                slot,
                state: child::waiting_state(&s.restarts, t).to_owned(),
                restarts: s.restarts.count,
                ..WorkerStatus::default()
            })
            .collect()
    }
}

/// Started, not ready yet, and neither retiring nor killed: what `--max-starting` counts.
fn starting(p: &Proc) -> bool {
    !p.ready && !p.retiring && p.killed.is_none()
}

/// `max` plus `0..=jitter`, chosen by `random`.
fn jittered(max: u64, jitter: u64, random: u64) -> u64 {
    max.saturating_add(random % jitter.saturating_add(1))
}

/// A seed that differs between supervisors (std's per-process hash keys).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish() | 1
}

/// Marsaglia's xorshift64: plenty for spreading restarts.
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_limits_over_the_whole_range_and_no_further() {
        let mut x = seed();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            x = xorshift(x);
            let n = jittered(50, 20, x);
            assert!((50..=70).contains(&n), "{n}");
            seen.insert(n);
        }
        assert_eq!(seen.len(), 21, "every value of 50..=70 drawn: {seen:?}");
        assert_eq!(jittered(50, 0, x), 50, "no jitter: exactly the limit");
        assert_eq!(jittered(u64::MAX, 5, 3), u64::MAX);
    }
}
