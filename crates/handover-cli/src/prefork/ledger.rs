//! prefork's connection ledger: who holds each accepted connection, and what the worker
//! protocol allows next. No I/O: the engine feeds it what workers said and acts on what it
//! returns (closing or resetting the sockets it hands back), so every rule is unit-tested here.
//!
//! A connection is *waiting* (accepted, no worker yet, or handed back), *offered* (sent to a
//! worker, not acknowledged: the supervisor's copy is untouched and can go to another worker)
//! or *held* (acknowledged: the worker may have read the request). FINISHED ends a held
//! connection; a worker that goes away turns its offered connections back into waiting ones
//! (re-dispatched) and its held ones into losses (reset by the engine).
//!
//! With `--connection-timeout`, a connection held longer than that since its ACK *expires*:
//! the engine resets it (the client gets an error, the worker's next read or write on it
//! fails) and it counts as timed out, once. The worker still owes its FINISHED; one that has
//! not sent it a grace period after the reset is taken as hung.
//!
//! `S` is the supervisor's copy of the socket (a `socket2::Socket` in the engine; anything in
//! the tests).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(crate) use crate::engine::pool::WorkerId;

/// An accepted connection, unique for the supervisor's lifetime; what CONNECTION, ACK,
/// FINISHED and REJECT carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(pub(crate) u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection without a worker: accepted, or handed back.
#[derive(Debug)]
pub(crate) struct Waiting<S> {
    pub(crate) id: ConnId,
    pub(crate) socket: S,
    /// Index of the listener that accepted it.
    pub(crate) listener: u16,
    pub(crate) peer: Option<SocketAddr>,
}

#[derive(Debug)]
struct Entry<S> {
    worker: WorkerId,
    socket: S,
    acked: bool,
    sent_at: Instant,
    /// When it was acknowledged (its deadline counts from then).
    acked_at: Option<Instant>,
    /// When it was reset for holding past its deadline.
    expired_at: Option<Instant>,
    listener: u16,
    peer: Option<SocketAddr>,
}

/// What one worker holds, as the dispatch policies see it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Load {
    /// Dispatched and not finished (acknowledged or not).
    pub(crate) live: u32,
    /// Dispatched and not acknowledged.
    pub(crate) unacked: u32,
    /// While it has unacknowledged connections: since when none was acknowledged.
    pub(crate) ack_wait_since: Option<Instant>,
    /// Connections it finished.
    pub(crate) handled: u64,
    /// Connections offered to it in all (handed back or not): what `--max-requests` counts.
    pub(crate) offered: u64,
}

impl Load {
    /// It holds at least `unacked` unacknowledged connections and acknowledged none while
    /// others did for longer than `after`, `last_ack` being the latest acknowledgement from any
    /// worker.
    pub(crate) fn stalled(&self, last_ack: Instant, unacked: u32, after: Duration) -> bool {
        self.unacked >= unacked
            && self.ack_wait_since.is_some_and(|t| last_ack.saturating_duration_since(t) > after)
    }

    /// One of its unacknowledged connections was settled at `now`: the wait for the others
    /// starts again.
    fn settled_one(&mut self, now: Instant) {
        self.unacked -= 1;
        self.ack_wait_since = (self.unacked > 0).then_some(now);
    }
}

/// Counters the ledger keeps (the engine adds them to the program's totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Hand-offs (a re-dispatched connection counts again).
    pub(crate) dispatched: u64,
    pub(crate) handled: u64,
    pub(crate) redispatched: u64,
    pub(crate) lost_mid_request: u64,
    /// Connections reset for being held past their deadline.
    pub(crate) timed_out: u64,
}

/// A message that breaks the protocol; the worker that sent it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breach {
    /// ACK of a connection it was not offered, or acknowledged already.
    Ack(ConnId),
    /// FINISHED of a connection it does not hold (not its own, or not acknowledged).
    Finished(ConnId),
    /// REJECT of a connection it was not offered, or acknowledged already.
    Reject(ConnId),
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::Ack(c) => write!(f, "acknowledged connection {c}, which it was not waiting on"),
            Breach::Finished(c) => write!(f, "finished connection {c}, which it did not hold"),
            Breach::Reject(c) => write!(f, "rejected connection {c}, which it was not offered"),
        }
    }
}

/// What became of a departed worker's connections.
#[derive(Debug)]
pub(crate) struct Gone<S> {
    /// Offered and not acknowledged: waiting again, first in line.
    pub(crate) redispatched: u64,
    /// Acknowledged and not finished: the engine resets them (their requests may have been
    /// read and cannot be replayed).
    pub(crate) lost: Vec<S>,
    /// Connections it had finished.
    pub(crate) handled: u64,
    /// Connections it held that had been reset at their deadline already (closed now, counted
    /// then).
    pub(crate) timed_out: u64,
}

#[derive(Debug)]
pub(crate) struct Ledger<S> {
    entries: HashMap<ConnId, Entry<S>>,
    waiting: VecDeque<Waiting<S>>,
    loads: HashMap<WorkerId, Load>,
    next_id: u64,
    /// When an acknowledgement was last recorded, from any worker.
    last_ack: Instant,
    counts: Counts,
}

impl<S> Default for Ledger<S> {
    fn default() -> Self {
        Ledger {
            entries: HashMap::new(),
            waiting: VecDeque::new(),
            loads: HashMap::new(),
            next_id: 1,
            last_ack: Instant::now(),
            counts: Counts::default(),
        }
    }
}

impl<S> Ledger<S> {
    /// Gives a newly accepted connection its id.
    pub(crate) fn admit(
        &mut self,
        socket: S,
        listener: u16,
        peer: Option<SocketAddr>,
    ) -> Waiting<S> {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        Waiting { id, socket, listener, peer }
    }

    /// Queues a connection that found no worker, behind the others.
    pub(crate) fn wait(&mut self, c: Waiting<S>) {
        self.waiting.push_back(c);
    }

    /// Puts a connection back at the head of the queue (its worker's channel refused it).
    pub(crate) fn wait_first(&mut self, c: Waiting<S>) {
        self.waiting.push_front(c);
    }

    /// The next waiting connection, if any.
    pub(crate) fn next_waiting(&mut self) -> Option<Waiting<S>> {
        self.waiting.pop_front()
    }

    /// Connections waiting for a worker.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Removes every waiting connection (nobody left to serve them).
    pub(crate) fn take_waiting(&mut self) -> Vec<S> {
        self.waiting.drain(..).map(|w| w.socket).collect()
    }

    /// Connections held by workers or waiting for one.
    pub(crate) fn live(&self) -> usize {
        self.entries.len() + self.waiting.len()
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    pub(crate) fn load(&self, w: WorkerId) -> Load {
        self.loads.get(&w).copied().unwrap_or_default()
    }

    /// When an acknowledgement was last recorded, from any worker.
    pub(crate) fn last_ack(&self) -> Instant {
        self.last_ack
    }

    /// Records that `c` went to `worker` at `now` (its CONNECTION message is on its way).
    pub(crate) fn offered(&mut self, worker: WorkerId, c: Waiting<S>, now: Instant) {
        let load = self.loads.entry(worker).or_default();
        load.live += 1;
        load.unacked += 1;
        load.offered += 1;
        if load.unacked == 1 {
            load.ack_wait_since = Some(now);
        }
        self.counts.dispatched += 1;
        let entry = Entry {
            worker,
            socket: c.socket,
            acked: false,
            sent_at: now,
            acked_at: None,
            expired_at: None,
            listener: c.listener,
            peer: c.peer,
        };
        self.entries.insert(c.id, entry);
    }

    /// ACK: the worker holds `id` from now on. Returns how long the hand-off took.
    pub(crate) fn ack(
        &mut self,
        worker: WorkerId,
        id: ConnId,
        now: Instant,
    ) -> Result<Duration, Breach> {
        match self.entries.get_mut(&id) {
            Some(e) if e.worker == worker && !e.acked => {
                e.acked = true;
                e.acked_at = Some(now);
                self.last_ack = now;
                self.loads.entry(worker).or_default().settled_one(now);
                Ok(now.saturating_duration_since(e.sent_at))
            }
            _ => Err(Breach::Ack(id)),
        }
    }

    /// FINISHED: the worker is done with `id`. Returns the supervisor's copy, to close.
    pub(crate) fn finish(&mut self, worker: WorkerId, id: ConnId) -> Result<S, Breach> {
        match self.entries.get(&id) {
            Some(e) if e.worker == worker && e.acked => {
                let e = self.entries.remove(&id).expect("present");
                let load = self.loads.entry(worker).or_default();
                load.live -= 1;
                load.handled += 1;
                self.counts.handled += 1;
                Ok(e.socket)
            }
            _ => Err(Breach::Finished(id)),
        }
    }

    /// REJECT: the worker hands `id` back before reading it; it waits again, first in line.
    pub(crate) fn reject(
        &mut self,
        worker: WorkerId,
        id: ConnId,
        now: Instant,
    ) -> Result<(), Breach> {
        match self.entries.get(&id) {
            Some(e) if e.worker == worker && !e.acked => {
                let e = self.entries.remove(&id).expect("present");
                let load = self.loads.entry(worker).or_default();
                load.live -= 1;
                load.settled_one(now);
                self.counts.redispatched += 1;
                let (socket, listener, peer) = (e.socket, e.listener, e.peer);
                self.waiting.push_front(Waiting { id, socket, listener, peer });
                Ok(())
            }
            _ => Err(Breach::Reject(id)),
        }
    }

    /// The worker is gone (exited, killed, its channel broke): its offered connections wait
    /// again, ahead of the others and in the order they were accepted; its held ones are
    /// returned to be reset.
    pub(crate) fn worker_gone(&mut self, worker: WorkerId) -> Gone<S> {
        let mut ids: Vec<ConnId> =
            self.entries.iter().filter(|(_, e)| e.worker == worker).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let mut gone = Gone { redispatched: 0, lost: Vec::new(), handled: 0, timed_out: 0 };
        for id in ids.into_iter().rev() {
            let e = self.entries.remove(&id).expect("present");
            if e.expired_at.is_some() {
                gone.timed_out += 1;
            } else if e.acked {
                gone.lost.push(e.socket);
            } else {
                gone.redispatched += 1;
                let (socket, listener, peer) = (e.socket, e.listener, e.peer);
                self.waiting.push_front(Waiting { id, socket, listener, peer });
            }
        }
        gone.handled = self.loads.remove(&worker).map_or(0, |l| l.handled);
        self.counts.redispatched += gone.redispatched;
        self.counts.lost_mid_request += gone.lost.len() as u64;
        gone
    }

    /// Expires the connections held for longer than `timeout` since their ACK at `now`:
    /// `reset` is called with each (once per connection), and each counts as timed out.
    /// Returns how many expired.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        mut reset: impl FnMut(&S),
    ) -> usize {
        let mut n = 0;
        for e in self.entries.values_mut() {
            let due = e.acked_at.is_some_and(|t| now.saturating_duration_since(t) > timeout);
            if due && e.expired_at.is_none() {
                e.expired_at = Some(now);
                reset(&e.socket);
                n += 1;
            }
        }
        self.counts.timed_out += n as u64;
        n
    }

    /// Expired connections whose worker has not reported them finished `grace` after they were
    /// reset, with the worker holding each.
    pub(crate) fn unfinished(&self, now: Instant, grace: Duration) -> Vec<(WorkerId, ConnId)> {
        let mut late: Vec<(WorkerId, ConnId)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expired_at.is_some_and(|t| now.saturating_duration_since(t) > grace))
            .map(|(id, e)| (e.worker, *id))
            .collect();
        late.sort_unstable();
        late
    }

    /// Offered connections that have waited longer than `timeout` for their ACK, with the
    /// worker holding each.
    pub(crate) fn overdue(&self, now: Instant, timeout: Duration) -> Vec<(WorkerId, ConnId)> {
        let mut late: Vec<(WorkerId, ConnId)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.acked && now.saturating_duration_since(e.sent_at) > timeout)
            .map(|(id, e)| (e.worker, *id))
            .collect();
        late.sort_unstable();
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: WorkerId = WorkerId(1);
    const B: WorkerId = WorkerId(2);

    /// Offers `n` connections (sockets named by their order) to `w`, returning their ids.
    fn offer(l: &mut Ledger<&'static str>, w: WorkerId, names: &[&'static str]) -> Vec<ConnId> {
        let now = Instant::now();
        names
            .iter()
            .map(|n| {
                let c = l.admit(*n, 0, None);
                let id = c.id;
                l.offered(w, c, now);
                id
            })
            .collect()
    }

    #[test]
    fn ack_then_finish_hands_back_our_copy_and_counts_handled() {
        let mut l = Ledger::default();
        let [c] = offer(&mut l, A, &["s1"])[..] else { panic!() };
        assert_eq!(l.load(A).unacked, 1);
        assert!(l.ack(A, c, Instant::now()).is_ok());
        assert_eq!((l.load(A).live, l.load(A).unacked), (1, 0));
        assert_eq!(l.finish(A, c), Ok("s1"));
        assert_eq!((l.load(A).live, l.load(A).handled), (0, 1));
        assert_eq!(l.counts(), Counts { dispatched: 1, handled: 1, ..Counts::default() });
        assert_eq!(l.live(), 0);
    }

    #[test]
    fn protocol_breaches_are_refused_and_change_nothing() {
        let mut l = Ledger::default();
        let [c] = offer(&mut l, A, &["s1"])[..] else { panic!() };
        let now = Instant::now();
        assert_eq!(l.finish(A, c), Err(Breach::Finished(c)), "finished before its ACK");
        assert_eq!(l.ack(B, c, now), Err(Breach::Ack(c)), "another worker's connection");
        assert_eq!(l.ack(A, ConnId(99), now), Err(Breach::Ack(ConnId(99))), "unknown id");
        assert!(l.ack(A, c, now).is_ok());
        assert_eq!(l.ack(A, c, now), Err(Breach::Ack(c)), "acknowledged twice");
        assert_eq!(l.reject(A, c, now), Err(Breach::Reject(c)), "rejected after its ACK");
        assert_eq!(l.finish(B, c), Err(Breach::Finished(c)));
        assert_eq!(l.load(A).live, 1);
        assert_eq!(l.counts().handled, 0);
    }

    #[test]
    fn reject_puts_the_connection_first_in_line_and_counts_it_redispatched() {
        let mut l = Ledger::default();
        let w = l.admit("waiting", 0, None);
        l.wait(w);
        let [c] = offer(&mut l, A, &["rejected"])[..] else { panic!() };
        assert_eq!(l.reject(A, c, Instant::now()), Ok(()));
        assert_eq!(l.load(A).live, 0);
        assert_eq!(l.counts().redispatched, 1);
        let first = l.next_waiting().unwrap();
        assert_eq!((first.id, first.socket), (c, "rejected"));
        assert_eq!(l.next_waiting().unwrap().socket, "waiting");
    }

    #[test]
    fn a_gone_worker_loses_only_what_it_acknowledged() {
        let mut l = Ledger::default();
        let ids = offer(&mut l, A, &["a1", "a2", "a3", "a4"]);
        let [b1] = offer(&mut l, B, &["b1"])[..] else { panic!() };
        let now = Instant::now();
        l.ack(A, ids[1], now).unwrap();
        l.ack(A, ids[3], now).unwrap();
        l.ack(A, ids[0], now).unwrap();
        l.finish(A, ids[0]).unwrap();
        let gone = l.worker_gone(A);
        assert_eq!(gone.redispatched, 1); // a3
        let mut lost = gone.lost.clone();
        lost.sort_unstable();
        assert_eq!(lost, ["a2", "a4"]);
        assert_eq!(gone.handled, 1);
        assert_eq!(l.next_waiting().map(|w| w.socket), Some("a3"));
        assert_eq!(
            l.counts(),
            Counts {
                dispatched: 5,
                handled: 1,
                redispatched: 1,
                lost_mid_request: 2,
                timed_out: 0
            }
        );
        // B is untouched.
        assert_eq!(l.load(B).live, 1);
        assert!(l.ack(B, b1, now).is_ok());
        // Late messages from the gone worker are breaches now.
        assert_eq!(l.finish(A, ids[1]), Err(Breach::Finished(ids[1])));
    }

    #[test]
    fn redispatched_connections_keep_their_order_ahead_of_the_queue() {
        let mut l = Ledger::default();
        let w = l.admit("queued", 0, None);
        l.wait(w);
        offer(&mut l, A, &["first", "second", "third"]);
        assert_eq!(l.worker_gone(A).redispatched, 3);
        let order: Vec<_> = std::iter::from_fn(|| l.next_waiting()).map(|w| w.socket).collect();
        assert_eq!(order, ["first", "second", "third", "queued"]);
    }

    #[test]
    fn overdue_lists_offers_older_than_the_timeout() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        let c1 = l.admit("old", 0, None);
        let id1 = c1.id;
        l.offered(A, c1, t0);
        let c2 = l.admit("acked", 0, None);
        let id2 = c2.id;
        l.offered(B, c2, t0);
        l.ack(B, id2, t0).unwrap();
        let later = t0 + Duration::from_secs(6);
        assert_eq!(l.overdue(later, Duration::from_secs(5)), [(A, id1)]);
        assert!(l.overdue(t0 + Duration::from_secs(1), Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn offered_counts_every_hand_off_to_a_worker_for_max_requests() {
        let mut l = Ledger::default();
        let ids = offer(&mut l, A, &["a1", "a2", "a3"]);
        let now = Instant::now();
        l.reject(A, ids[0], now).unwrap();
        l.ack(A, ids[1], now).unwrap();
        l.finish(A, ids[1]).unwrap();
        let load = l.load(A);
        assert_eq!((load.offered, load.live, load.handled), (3, 1, 1));
        assert_eq!(l.load(B).offered, 0);
    }

    #[test]
    fn connections_held_past_the_deadline_expire_once_from_their_ack() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let c = |l: &mut Ledger<&'static str>, w, name| {
            let c = l.admit(name, 0, None);
            let id = c.id;
            l.offered(w, c, t0);
            id
        };
        let slow = c(&mut l, A, "slow");
        let quick = c(&mut l, A, "quick");
        let unacked = c(&mut l, B, "unacked");
        l.ack(A, slow, t0).unwrap();
        l.ack(A, quick, t0 + 5 * sec).unwrap();
        let mut reset = Vec::new();
        // Not past the deadline yet (10 s from its ACK).
        assert_eq!(l.expire(t0 + 10 * sec, 10 * sec, |s| reset.push(*s)), 0);
        assert_eq!(l.expire(t0 + 11 * sec, 10 * sec, |s| reset.push(*s)), 1);
        assert_eq!(reset, ["slow"]);
        // Once only; the one acknowledged later and the unacknowledged one (the ack timeout's
        // business) are not reset.
        assert_eq!(l.expire(t0 + 12 * sec, 10 * sec, |s| reset.push(*s)), 0);
        assert_eq!(l.counts().timed_out, 1);
        // Not finished within the grace period: its worker is named.
        assert!(l.unfinished(t0 + 12 * sec, 5 * sec).is_empty());
        assert_eq!(l.unfinished(t0 + 17 * sec, 5 * sec), [(A, slow)]);
        // A worker that finishes it late still may.
        assert_eq!(l.finish(A, slow), Ok("slow"));
        assert!(l.unfinished(t0 + 17 * sec, 5 * sec).is_empty());
        // A worker gone with an expired connection: not lost again, and not reset twice.
        assert_eq!(l.expire(t0 + 16 * sec, 10 * sec, |s| reset.push(*s)), 1);
        let gone = l.worker_gone(A);
        assert!(gone.lost.is_empty());
        assert_eq!(gone.timed_out, 1);
        assert_eq!(l.counts().lost_mid_request, 0);
        assert_eq!(l.counts().timed_out, 2);
        let _ = unacked;
    }

    #[test]
    fn a_worker_is_stalled_only_relative_to_others_acknowledging() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        for name in ["a1", "a2"] {
            let c = l.admit(name, 0, None);
            l.offered(A, c, t0);
        }
        let c = l.admit("b1", 0, None);
        let b = c.id;
        l.offered(B, c, t0);
        let after = Duration::from_millis(2);
        // Nobody acknowledged: nobody is stalled, however long it has been.
        assert!(!l.load(A).stalled(l.last_ack(), 2, after));
        l.ack(B, b, t0 + Duration::from_millis(10)).unwrap();
        assert!(l.load(A).stalled(l.last_ack(), 2, after));
        assert!(!l.load(A).stalled(l.last_ack(), 3, after), "holds only two");
    }
}
