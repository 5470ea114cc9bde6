//! The worker slots of a pool, as a state machine without I/O (like the prefork
//! [`ledger`](crate::prefork::ledger)): [`Pool`](super::pool::Pool) spawns, signals and reaps,
//! and tells [`Slots`] what happened; `Slots` says what to do next.
//!
//! Events in: a worker started in a slot (or could not be), became ready, was told to retire,
//! was killed, departed (and, once reaped, how it died); a reload, a resize, a recycle, a
//! drain; time passing ([`Slots::due`]). Actions out ([`Action`]): start a worker in slot N,
//! retire worker `id`, restart slot N after a delay, give the program up.
//!
//! A slot has a *current* worker and, during a reload or a recycle, an *incoming* one that
//! takes over when it is ready; the one it replaces retires and keeps its [`ProcState`] until
//! it departs. The restart policy itself (backoff, crash loops) is
//! [`Restarts`](crate::restart::Restarts).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Timeouts;
use crate::restart::{Cause, Death, Restart, Restarts};

/// A worker process, unique for the supervisor's lifetime (a restarted slot gets a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WorkerId(pub(crate) u64);

/// Why and when the supervisor killed a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Killed {
    pub(crate) why: String,
    pub(crate) at: Instant,
    /// What its restart counts as.
    pub(crate) cause: Cause,
}

/// Where a worker is in its life, as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProcState {
    /// Started; not ready yet (prefork: no hello; shared: not up long enough).
    Starting,
    /// Ready and serving.
    Ready,
    /// Ready and serving, while a replacement starts in its slot (see [`Slots::recycle`]).
    Recycled(Cause),
    /// Told to finish and exit (a reload replaced it, its slot was scaled away, or the program
    /// drains). `ready`: it had become ready.
    Retiring { ready: bool },
    /// Killed by the supervisor; departs once its end is noticed.
    Killed { ready: bool, killed: Killed },
}

impl ProcState {
    /// It became ready at some point.
    pub(crate) fn was_ready(&self) -> bool {
        match self {
            ProcState::Starting => false,
            ProcState::Ready | ProcState::Recycled(_) => true,
            ProcState::Retiring { ready } | ProcState::Killed { ready, .. } => *ready,
        }
    }

    /// The same state, for a worker that has become ready.
    pub(crate) fn into_ready(self) -> ProcState {
        match self {
            ProcState::Starting => ProcState::Ready,
            ProcState::Retiring { .. } => ProcState::Retiring { ready: true },
            ProcState::Killed { killed, .. } => ProcState::Killed { ready: true, killed },
            s @ (ProcState::Ready | ProcState::Recycled(_)) => s,
        }
    }

    /// Ready, and neither told to finish nor being killed.
    pub(crate) fn serving(&self) -> bool {
        matches!(self, ProcState::Ready | ProcState::Recycled(_))
    }

    /// Why the supervisor killed it, if it did.
    pub(crate) fn killed(&self) -> Option<&Killed> {
        match self {
            ProcState::Killed { killed, .. } => Some(killed),
            _ => None,
        }
    }
}

/// What the pool is to do, as [`Slots`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a worker in `slot` now; `reload`: as the next step of a reload.
    Start { slot: usize, reload: bool },
    /// Tell this worker to finish and exit (replaced, or its slot removed).
    Retire(WorkerId),
    /// `slot`'s worker died; its replacement starts after `delay` (it is due then). `cause`:
    /// what the restart counts as ([`Cause::CrashLoop`] while the slot crash-loops).
    Restart { slot: usize, delay: Duration, cause: Cause },
    /// Give the program up: `crashes` crashes at start in a row, never ready. Every slot has
    /// stopped starting workers (the program drains).
    GiveUp { slot: usize, crashes: u32 },
}

/// What [`Slots::depart`] reports about a departed worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Departure {
    pub(crate) slot: usize,
    /// Its state when it departed.
    pub(crate) state: ProcState,
    /// Its slot needs a new worker (it was the slot's current or incoming one).
    pub(crate) restart: bool,
    /// It was a reload's replacement that died before it was ready; the slot keeps its
    /// worker.
    pub(crate) reload_failed: bool,
}

#[derive(Debug, Default)]
struct Slot {
    current: Option<WorkerId>,
    /// A reload's (or a recycle's) replacement; takes over when it is ready.
    incoming: Option<WorkerId>,
    start_at: Option<Instant>,
    restarts: Restarts,
    /// How its last worker ended, for the give-up message.
    last_exit: Option<String>,
}

impl Slot {
    fn due_at(now: Instant) -> Slot {
        Slot { start_at: Some(now), ..Slot::default() }
    }

    /// It has a worker, or one is due.
    fn filled(&self) -> bool {
        self.current.is_some() || self.incoming.is_some() || self.start_at.is_some()
    }
}

#[derive(Debug)]
struct Entry {
    id: WorkerId,
    slot: usize,
    state: ProcState,
}

/// The slots of a pool and the state of each of its workers (see the module docs).
#[derive(Debug)]
pub(crate) struct Slots {
    slots: Vec<Slot>,
    workers: Vec<Entry>,
    next_id: u64,
    /// Some worker has been ready since start or the last reload (see [`Restarts::on_death`]).
    proven: bool,
    /// Slots still to reload, in order, and the one being reloaded.
    reload: VecDeque<usize>,
    reloading: Option<usize>,
    /// Workers a reload replaced since it began (reported when it is done).
    reloaded: usize,
    /// Slots whose replacement died before it was ready, in the reload under way (or the last).
    reload_failed: usize,
    /// State of the generator that draws each worker's `--max-requests` jitter.
    jitter_state: u64,
}

impl Slots {
    /// Some worker has been ready since start, the last reload or upgrade.
    pub(crate) fn proven(&self) -> bool {
        self.proven
    }

    /// `n` slots, each due to start at `now`; `seed`: for the jitter (not zero).
    pub(crate) fn new(n: usize, now: Instant, seed: u64) -> Slots {
        Slots {
            slots: (0..n).map(|_| Slot::due_at(now)).collect(),
            workers: Vec::new(),
            next_id: 1,
            proven: false,
            reload: VecDeque::new(),
            reloading: None,
            reloaded: 0,
            reload_failed: 0,
            jitter_state: seed | 1,
        }
    }

    /// The number of slots.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The state of worker `id` (none once it departed).
    pub(crate) fn state(&self, id: WorkerId) -> Option<&ProcState> {
        self.entry(id).map(|e| &e.state)
    }

    fn entry(&self, id: WorkerId) -> Option<&Entry> {
        self.workers.iter().find(|e| e.id == id)
    }

    fn entry_mut(&mut self, id: WorkerId) -> Option<&mut Entry> {
        self.workers.iter_mut().find(|e| e.id == id)
    }

    /// A reload is under way.
    pub(crate) fn reloading(&self) -> bool {
        self.reloading.is_some() || !self.reload.is_empty()
    }

    /// Workers a reload replaced since it began, and slots it could not.
    pub(crate) fn reloaded(&self) -> (usize, usize) {
        (self.reloaded, self.reload_failed)
    }

    /// Times `slot`'s worker was restarted (0 for a slot scaled away).
    pub(crate) fn restarts(&self, slot: usize) -> u64 {
        self.slots.get(slot).map_or(0, |s| s.restarts.count)
    }

    /// The slots waiting for their next worker (backoff or crash-looping), with their restart
    /// bookkeeping.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = (usize, &Restarts)> {
        let waiting = |s: &Slot| s.start_at.is_some() && s.current.is_none();
        self.slots
            .iter()
            .enumerate()
            .filter(move |(_, s)| waiting(s))
            .map(|(i, s)| (i, &s.restarts))
    }

    /// Every slot has a current worker that is serving.
    pub(crate) fn all_ready(&self) -> bool {
        let serving = |id| self.state(id).is_some_and(ProcState::serving);
        self.slots.iter().all(|s| s.current.is_some_and(serving))
    }

    /// Time passing: the slots whose worker is due to start at `now` (first starts, restarts
    /// whose backoff has passed, replacements of recycled workers: at most `max_starting`
    /// workers starting at once, 0 for no limit), and, while `running`, the next step of a
    /// reload. The pool starts each and reports [`Slots::started`] or [`Slots::start_failed`].
    pub(crate) fn due(&mut self, now: Instant, max_starting: usize, running: bool) -> Vec<Action> {
        let mut due = Vec::new();
        let starting = self.workers.iter().filter(|e| e.state == ProcState::Starting).count();
        let mut budget =
            if max_starting == 0 { usize::MAX } else { max_starting.saturating_sub(starting) };
        for (slot, s) in self.slots.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            if s.start_at.is_some_and(|t| t <= now) {
                s.start_at = None;
                due.push(Action::Start { slot, reload: false });
                budget -= 1;
            }
        }
        if running && self.reloading.is_none() {
            if let Some(slot) = self.reload.pop_front() {
                let s = &self.slots[slot];
                if s.current.is_some() && s.incoming.is_none() && s.start_at.is_none() {
                    self.reloading = Some(slot);
                    due.push(Action::Start { slot, reload: true });
                }
            }
        }
        due
    }

    /// A worker started in `slot`: its id. It is the slot's current worker, or its incoming
    /// one if the slot has a worker already.
    pub(crate) fn started(&mut self, slot: usize) -> WorkerId {
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        self.workers.push(Entry { id, slot, state: ProcState::Starting });
        let s = &mut self.slots[slot];
        if s.current.is_some() {
            s.incoming = Some(id);
        } else {
            s.current = Some(id);
        }
        id
    }

    /// No worker could be started in `slot` (`why`): a crash at start.
    pub(crate) fn start_failed(
        &mut self,
        slot: usize,
        why: String,
        now: Instant,
        running: bool,
        t: &Timeouts,
    ) -> Option<Action> {
        self.slots[slot].last_exit = Some(why);
        let death =
            Death { lived: Duration::ZERO, ready: false, from_outside: false, cause: Cause::Exit };
        self.restart(slot, death, now, running, t)
    }

    /// Worker `id` is ready. If it replaces a worker (a reload, a recycle), that worker is to
    /// retire. A worker retiring or killed before it was ready takes no slot.
    pub(crate) fn ready(&mut self, id: WorkerId) -> Option<Action> {
        let e = self.entry_mut(id)?;
        let slot = e.slot;
        let was = std::mem::replace(&mut e.state, ProcState::Starting);
        let takes_slot = was == ProcState::Starting;
        e.state = was.into_ready();
        self.proven = true;
        if !takes_slot {
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
        old.map(Action::Retire)
    }

    /// Worker `id` is told to finish and exit. Returns whether that is news (it was neither
    /// retiring nor killed already).
    pub(crate) fn retire(&mut self, id: WorkerId) -> bool {
        let Some(e) = self.entry_mut(id) else { return false };
        match e.state {
            ProcState::Retiring { .. } | ProcState::Killed { .. } => false,
            _ => {
                e.state = ProcState::Retiring { ready: e.state.was_ready() };
                true
            }
        }
    }

    /// Worker `id` is killed (`killed`: why, when, what its restart counts as). Returns
    /// whether that is news (it was not killed already).
    pub(crate) fn kill(&mut self, id: WorkerId, killed: Killed) -> bool {
        let Some(e) = self.entry_mut(id) else { return false };
        if e.state.killed().is_some() {
            return false;
        }
        e.state = ProcState::Killed { ready: e.state.was_ready(), killed };
        true
    }

    /// A reload: every slot in turn gets a replacement, which takes over when ready. The
    /// program on disk may have changed, so it has to prove itself again.
    pub(crate) fn reload(&mut self) {
        if !self.reloading() {
            self.reloaded = 0;
            self.reload_failed = 0;
        }
        self.reload = (0..self.slots.len()).collect();
        self.proven = false;
    }

    /// Sets the number of slots to `n` (at least 1). New slots are due at `now`. The workers
    /// of the slots removed (the highest) are to retire; nobody replaces them.
    pub(crate) fn resize(&mut self, n: usize, now: Instant) -> Vec<Action> {
        let n = n.max(1);
        let mut retire = Vec::new();
        while self.slots.len() > n {
            let s = self.slots.pop().expect("more slots than n >= 1");
            retire.extend(s.current.map(Action::Retire));
            retire.extend(s.incoming.map(Action::Retire));
        }
        while self.slots.len() < n {
            self.slots.push(Slot::due_at(now));
        }
        self.reload.retain(|&slot| slot < n);
        if self.reloading.is_some_and(|slot| slot >= n) {
            self.reloading = None;
        }
        retire
    }

    /// Replaces the serving worker `id` because of `cause`: a replacement is due in its slot
    /// at `now` (while `running`), and the restart is counted. The worker serves on until the
    /// pool retires it (at once, or when [`Slots::ready`] says). Returns whether `id` was
    /// taken (only a serving worker not recycled already is).
    pub(crate) fn recycle(
        &mut self,
        id: WorkerId,
        cause: Cause,
        now: Instant,
        running: bool,
    ) -> bool {
        let Some(e) = self.entry_mut(id) else { return false };
        if e.state != ProcState::Ready {
            return false;
        }
        e.state = ProcState::Recycled(cause);
        let slot = e.slot;
        if let Some(s) = self.slots.get_mut(slot) {
            s.restarts.count += 1;
            if s.current == Some(id) && s.incoming.is_none() && running {
                s.start_at = Some(now);
            }
        }
        true
    }

    /// The program drains: no more starts, no more reload steps.
    pub(crate) fn drain(&mut self) {
        for s in &mut self.slots {
            s.start_at = None;
        }
        self.reload.clear();
    }

    /// Worker `id` is gone (its channel closed, it exited, or it was killed): it leaves its
    /// slot, which is refilled once [`Slots::settle`] knows how it died.
    pub(crate) fn depart(&mut self, id: WorkerId) -> Option<Departure> {
        let i = self.workers.iter().position(|e| e.id == id)?;
        let Entry { slot, state, .. } = self.workers.swap_remove(i);
        let mut reload_failed = false;
        let restart = match self.slots.get_mut(slot) {
            // Its slot was scaled away.
            None => false,
            Some(s) if s.current == Some(id) => {
                s.current = None;
                // A recycled worker's replacement may not have started yet.
                s.incoming.is_none() && s.start_at.is_none()
            }
            Some(s) if s.incoming == Some(id) => {
                s.incoming = None;
                // A reload's replacement that died before it was ready: the slot keeps its
                // worker (so `settle` starts none), and the reload goes on with the next slot
                // (a reload that waited for this one would never end, and no later reload
                // would start).
                if self.reloading == Some(slot) {
                    self.reloading = None;
                    if s.current.is_some() {
                        self.reload_failed += 1;
                        reload_failed = true;
                    }
                }
                true
            }
            Some(_) => false,
        };
        Some(Departure { slot, state, restart, reload_failed })
    }

    /// A departed worker (`d`, from [`Slots::depart`]) is reaped or given up on (`how`: how it
    /// ended, for the give-up message; `death`: what the restart policy judges). If its slot
    /// needs a new worker and has none coming, the policy decides when, or gives up.
    pub(crate) fn settle(
        &mut self,
        d: &Departure,
        how: String,
        death: Death,
        now: Instant,
        running: bool,
        t: &Timeouts,
    ) -> Option<Action> {
        let s = self.slots.get_mut(d.slot)?;
        s.last_exit = Some(how);
        // Both of a slot's workers (a reload's pair) may die before either is settled: the
        // slot needs one new worker, not two.
        if !d.restart || s.filled() {
            return None;
        }
        self.restart(d.slot, death, now, running, t)
    }

    fn restart(
        &mut self,
        slot: usize,
        death: Death,
        now: Instant,
        running: bool,
        t: &Timeouts,
    ) -> Option<Action> {
        if !running {
            return None;
        }
        let s = &mut self.slots[slot];
        match s.restarts.on_death(death, self.proven, t) {
            Restart::After(delay) => {
                s.start_at = Some(now + delay);
                let cause =
                    if s.restarts.crash_looping(t) { Cause::CrashLoop } else { death.cause };
                Some(Action::Restart { slot, delay, cause })
            }
            Restart::GiveUp(crashes) => {
                self.drain();
                Some(Action::GiveUp { slot, crashes })
            }
        }
    }

    /// How `slot`'s last worker ended (or why none could start).
    pub(crate) fn last_exit(&self, slot: usize) -> &str {
        self.slots.get(slot).and_then(|s| s.last_exit.as_deref()).unwrap_or_default()
    }

    /// `max` plus a share of `jitter` drawn at random: a new worker's `--max-requests`, so
    /// workers that started together are not recycled together.
    pub(crate) fn jittered_limit(&mut self, max: u64, jitter: u64) -> u64 {
        self.jitter_state = xorshift(self.jitter_state);
        jittered(max, jitter, self.jitter_state)
    }
}

/// `max` plus `0..=jitter`, chosen by `random`.
fn jittered(max: u64, jitter: u64, random: u64) -> u64 {
    max.saturating_add(random % jitter.saturating_add(1))
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

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn t() -> Timeouts {
        Timeouts { crash_limit: 3, ..Timeouts::default() }
    }

    fn starts(actions: &[Action]) -> Vec<usize> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { slot, .. } => Some(*slot),
                _ => None,
            })
            .collect()
    }

    /// `n` slots, each with a ready worker (ids 1..=n, slot i has id i + 1).
    fn running(n: usize, now: Instant) -> Slots {
        let mut s = Slots::new(n, now, 7);
        for a in s.due(now, 0, true) {
            let Action::Start { slot, .. } = a else { panic!("{a:?}") };
            let id = s.started(slot);
            assert_eq!(s.ready(id), None);
        }
        assert!(s.all_ready());
        s
    }

    fn crash(lived: Duration) -> Death {
        Death { lived, ready: false, from_outside: false, cause: Cause::Exit }
    }

    /// Departs and settles `id` as `death`: the action that follows.
    fn dies(s: &mut Slots, id: WorkerId, death: Death, now: Instant) -> Option<Action> {
        let d = s.depart(id).expect("a member");
        s.settle(&d, "exited".to_owned(), death, now, true, &t())
    }

    #[test]
    fn every_slot_starts_at_once_and_max_starting_batches_them() {
        let now = Instant::now();
        let mut s = Slots::new(3, now, 7);
        let first = s.due(now, 2, true);
        assert_eq!(starts(&first), [0, 1]);
        let (a, b) = (s.started(0), s.started(1));
        assert_eq!(s.due(now, 2, true), [], "two starting: the third waits");
        assert_eq!(s.ready(a), None);
        assert_eq!(starts(&s.due(now, 2, true)), [2]);
        assert!(!s.all_ready());
        let c = s.started(2);
        s.ready(b);
        s.ready(c);
        assert!(s.all_ready());
        assert_eq!(s.state(a), Some(&ProcState::Ready));
    }

    #[test]
    fn a_worker_that_dies_is_restarted_with_backoff_then_at_once_once_it_served() {
        let now = Instant::now();
        let mut s = running(1, now);
        let a = dies(&mut s, WorkerId(1), crash(MS(10)), now);
        // The program was proven (a worker was ready): backoff, never give up.
        assert_eq!(a, Some(Action::Restart { slot: 0, delay: MS(100), cause: Cause::Exit }));
        assert_eq!(s.waiting().count(), 1);
        assert_eq!(s.due(now, 0, true), [], "not before the backoff");
        assert_eq!(starts(&s.due(now + MS(100), 0, true)), [0]);
        let id = s.started(0);
        s.ready(id);
        let served = Death {
            lived: Duration::from_secs(5),
            ready: true,
            from_outside: false,
            cause: Cause::Signal,
        };
        let a = dies(&mut s, id, served, now);
        assert_eq!(
            a,
            Some(Action::Restart { slot: 0, delay: Duration::ZERO, cause: Cause::Signal })
        );
        assert_eq!(s.restarts(0), 2);
    }

    #[test]
    fn a_crash_loop_never_ready_gives_up_and_stops_every_slot() {
        let now = Instant::now();
        let mut s = Slots::new(2, now, 7);
        assert_eq!(starts(&s.due(now, 0, true)), [0, 1]);
        let other = s.started(1);
        let t = t();
        for n in 1..=3u64 {
            let a = s.start_failed(0, "could not start".to_owned(), now, true, &t);
            if n < 3 {
                let delay = MS(100 << (n - 1));
                assert_eq!(a, Some(Action::Restart { slot: 0, delay, cause: Cause::Exit }));
            } else {
                assert_eq!(a, Some(Action::GiveUp { slot: 0, crashes: 3 }));
            }
        }
        assert_eq!(s.last_exit(0), "could not start");
        // Given up: nothing starts any more, not even the other slot's restart.
        let d = s.depart(other).unwrap();
        assert_eq!(s.settle(&d, "x".to_owned(), crash(MS(1)), now, false, &t), None);
        assert_eq!(s.due(now + Duration::from_secs(60), 0, true), []);
    }

    #[test]
    fn a_crash_loop_of_a_proven_program_is_counted_as_such_and_goes_on() {
        let now = Instant::now();
        let mut s = running(1, now);
        let mut id = WorkerId(1);
        let mut causes = Vec::new();
        for _ in 0..4 {
            match dies(&mut s, id, crash(MS(1)), now) {
                Some(Action::Restart { cause, .. }) => causes.push(cause),
                a => panic!("{a:?}"),
            }
            s.due(now + Duration::from_secs(10), 0, true);
            id = s.started(0);
        }
        assert_eq!(causes, [Cause::Exit, Cause::Exit, Cause::CrashLoop, Cause::CrashLoop]);
    }

    #[test]
    fn reload_replaces_one_slot_at_a_time_under_scale() {
        let now = Instant::now();
        let mut s = running(3, now);
        s.reload();
        assert!(s.reloading());
        let mut retired = Vec::new();
        for slot in 0..3 {
            let due = s.due(now, 0, true);
            assert_eq!(due, [Action::Start { slot, reload: true }]);
            assert_eq!(s.due(now, 0, true), [], "one slot at a time");
            let new = s.started(slot);
            assert!(s.all_ready(), "the old worker serves until its replacement is ready");
            match s.ready(new) {
                Some(Action::Retire(old)) => {
                    assert!(s.retire(old));
                    assert!(!s.retire(old), "once");
                    retired.push(old);
                }
                a => panic!("{a:?}"),
            }
            assert!(s.all_ready());
        }
        assert_eq!(retired, [WorkerId(1), WorkerId(2), WorkerId(3)]);
        assert!(!s.reloading());
        assert_eq!(s.reloaded(), (3, 0));
        // The retired depart with nothing to restart.
        for id in retired {
            let d = s.depart(id).unwrap();
            assert_eq!(d.state, ProcState::Retiring { ready: true });
            assert!(!d.restart);
        }
    }

    #[test]
    fn scaling_down_during_a_reload_retires_both_workers_and_ends_the_reload() {
        let now = Instant::now();
        let mut s = running(3, now);
        s.reload();
        s.due(now, 0, true);
        let new0 = s.started(0);
        s.ready(new0);
        assert_eq!(s.due(now, 0, true), [Action::Start { slot: 1, reload: true }]);
        let new1 = s.started(1);
        // Slot 1 is being reloaded (old worker 2, incoming new1) when the pool shrinks to 1.
        let retire = s.resize(1, now);
        assert_eq!(
            retire,
            [Action::Retire(WorkerId(3)), Action::Retire(WorkerId(2)), Action::Retire(new1)]
        );
        assert!(!s.reloading(), "slots 1 and 2 are gone: nothing left to reload");
        assert_eq!(s.len(), 1);
        // The incoming worker of a removed slot takes no slot when it gets ready.
        assert!(s.retire(new1));
        assert_eq!(s.ready(new1), None);
        assert!(s.depart(new1).is_some_and(|d| !d.restart));
        assert_eq!(s.restarts(2), 0);
        // Scaling up again: new slots start at once.
        s.resize(2, now);
        assert_eq!(starts(&s.due(now, 0, true)), [1]);
    }

    #[test]
    fn a_reload_whose_replacement_dies_before_ready_keeps_the_old_worker_and_goes_on() {
        let now = Instant::now();
        let mut s = running(2, now);
        s.reload();
        s.due(now, 0, true);
        let new0 = s.started(0);
        let d = s.depart(new0).unwrap();
        assert!(d.reload_failed);
        assert!(d.restart);
        // The slot keeps its worker: no restart.
        assert_eq!(s.settle(&d, "exited".to_owned(), crash(MS(1)), now, true, &t()), None);
        assert_eq!(s.due(now, 0, true), [Action::Start { slot: 1, reload: true }]);
        let new1 = s.started(1);
        assert_eq!(s.ready(new1), Some(Action::Retire(WorkerId(2))));
        assert_eq!(s.reloaded(), (1, 1));
        assert!(!s.reloading());
        assert_eq!(s.state(WorkerId(1)), Some(&ProcState::Ready), "slot 0 kept its worker");
    }

    #[test]
    fn a_reload_of_a_slot_whose_worker_died_waits_for_its_restart_to_be_ready() {
        let now = Instant::now();
        let mut s = running(1, now);
        s.reload();
        s.due(now, 0, true);
        let new = s.started(0);
        // The old worker dies meanwhile: the replacement is the slot's only one.
        let d = s.depart(WorkerId(1)).unwrap();
        assert!(!d.restart, "its replacement is coming");
        assert!(s.reloading());
        assert_eq!(s.ready(new), None);
        assert!(!s.reloading());
        assert_eq!(s.reloaded(), (1, 0));
    }

    #[test]
    fn recycle_starts_a_replacement_once_and_the_old_worker_retires_when_it_is_ready() {
        let now = Instant::now();
        let mut s = running(1, now);
        let old = WorkerId(1);
        assert!(s.recycle(old, Cause::MaxMemory, now, true));
        assert!(!s.recycle(old, Cause::MaxMemory, now, true), "once");
        assert_eq!(s.state(old), Some(&ProcState::Recycled(Cause::MaxMemory)));
        assert!(s.all_ready(), "it serves on");
        assert_eq!(s.restarts(0), 1);
        assert_eq!(starts(&s.due(now, 0, true)), [0]);
        let new = s.started(0);
        assert_eq!(s.ready(new), Some(Action::Retire(old)));
        // Recycled and retired at once (--max-requests): the replacement's start remains due.
        let mut s = running(1, now);
        assert!(s.recycle(old, Cause::MaxRequests, now, true));
        assert!(s.retire(old));
        assert!(!s.recycle(old, Cause::MaxRequests, now, true));
        let d = s.depart(old).unwrap();
        assert!(!d.restart, "its replacement is due already");
        assert_eq!(starts(&s.due(now, 0, true)), [0]);
        // Not while draining, and never a worker that is not ready.
        let mut s = Slots::new(1, now, 7);
        s.due(now, 0, true);
        let id = s.started(0);
        assert!(!s.recycle(id, Cause::MaxMemory, now, true));
    }

    #[test]
    fn recycled_limits_are_jittered_over_the_whole_range() {
        let mut s = Slots::new(1, Instant::now(), 12345);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let n = s.jittered_limit(50, 20);
            assert!((50..=70).contains(&n), "{n}");
            seen.insert(n);
        }
        assert_eq!(seen.len(), 21, "every value of 50..=70 drawn: {seen:?}");
        assert_eq!(s.jittered_limit(50, 0), 50, "no jitter: exactly the limit");
        assert_eq!(jittered(u64::MAX, 5, 3), u64::MAX);
    }

    #[test]
    fn a_killed_worker_keeps_its_readiness_and_departs_with_its_cause() {
        let now = Instant::now();
        let mut s = running(1, now);
        let id = WorkerId(1);
        let killed = Killed { why: "hung".to_owned(), at: now, cause: Cause::Hung };
        assert!(s.kill(id, killed.clone()));
        assert!(!s.kill(id, killed.clone()), "once");
        assert!(!s.retire(id), "a killed worker is not told to drain");
        assert!(!s.all_ready());
        let d = s.depart(id).unwrap();
        assert_eq!(d.state, ProcState::Killed { ready: true, killed });
        assert!(d.restart);
        assert!(d.state.was_ready());
    }

    #[test]
    fn draining_stops_starts_and_reload_steps() {
        let now = Instant::now();
        let mut s = running(2, now);
        s.reload();
        s.drain();
        assert_eq!(s.due(now, 0, true), []);
        let d = s.depart(WorkerId(1)).unwrap();
        assert_eq!(s.settle(&d, "x".to_owned(), crash(MS(1)), now, false, &t()), None);
        assert_eq!(s.due(now + Duration::from_secs(9), 0, true), []);
        // A worker retiring before it was ready takes no slot when it gets ready.
        let mut s = Slots::new(1, now, 7);
        s.due(now, 0, true);
        let id = s.started(0);
        assert!(s.retire(id));
        assert_eq!(s.ready(id), None);
        assert_eq!(s.state(id), Some(&ProcState::Retiring { ready: true }));
    }
}
