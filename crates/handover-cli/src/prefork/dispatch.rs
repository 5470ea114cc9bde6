//! Choosing the worker for a connection: pure, so every policy is unit-tested.

use std::net::{IpAddr, SocketAddr};

use crate::model::Policy;

/// What the policy knows about one worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    /// The worker's slot (stable across restarts: what source-hash maps clients to).
    pub(crate) slot: usize,
    /// Connections dispatched and not finished.
    pub(crate) live: u32,
    /// Ready, below its capacity, and its channel has room.
    pub(crate) open: bool,
    /// Slow to acknowledge what it was sent (stopped, hung or swamped): round-robin and
    /// least-connections pass it over; source-hash keeps a client on its home worker anyway
    /// (stickiness is what that policy is for; a home worker that hangs holds its clients
    /// until `--ack-timeout` replaces it).
    pub(crate) stalled: bool,
}

impl Candidate {
    fn takes(&self) -> bool {
        self.open && !self.stalled
    }
}

/// Picks an index into `workers`, or `None` when every worker is full or not ready.
///
/// `cursor` is the listener's round-robin position (advanced here); `slots` is the configured
/// number of workers.
pub(crate) fn choose(
    policy: Policy,
    workers: &[Candidate],
    cursor: &mut usize,
    peer: Option<SocketAddr>,
    slots: usize,
) -> Option<usize> {
    let n = workers.len();
    if n == 0 {
        return None;
    }
    match policy {
        Policy::RoundRobin => {
            let start = *cursor % n;
            let i = (0..n).map(|k| (start + k) % n).find(|&i| workers[i].takes())?;
            *cursor = i + 1;
            Some(i)
        }
        Policy::LeastConnections => {
            // Ties go round-robin, so idle workers share the load evenly.
            let start = *cursor % n;
            let i = (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| workers[i].takes())
                .min_by_key(|&i| workers[i].live)?;
            *cursor = i + 1;
            Some(i)
        }
        Policy::SourceHash => {
            let slots = slots.max(1);
            let h = peer.map_or(0, |p| hash_ip(p.ip())) as usize;
            // The client's home slot; if its worker is full or restarting, the next slot.
            (0..slots)
                .map(|k| (h + k) % slots)
                .find_map(|slot| workers.iter().position(|w| w.slot == slot && w.open))
        }
    }
}

/// FNV-1a over the address bytes: stable across runs and platforms.
fn hash_ip(ip: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match ip {
        IpAddr::V4(a) => eat(&a.octets()),
        IpAddr::V6(a) => eat(&a.octets()),
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(slot: usize, live: u32, open: bool) -> Candidate {
        Candidate { slot, live, open, stalled: false }
    }

    #[test]
    fn round_robin_skips_full_workers() {
        let ws = [w(0, 0, true), w(1, 9, false), w(2, 0, true)];
        let mut c = 0;
        let picks: Vec<_> =
            (0..4).map(|_| choose(Policy::RoundRobin, &ws, &mut c, None, 3)).collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
        assert_eq!(choose(Policy::RoundRobin, &[w(0, 1, false)], &mut c, None, 1), None);
    }

    #[test]
    fn least_connections_prefers_the_idlest() {
        let ws = [w(0, 3, true), w(1, 1, true), w(2, 2, true)];
        let mut c = 0;
        assert_eq!(choose(Policy::LeastConnections, &ws, &mut c, None, 3), Some(1));
        let ties = [w(0, 0, true), w(1, 0, true)];
        let a = choose(Policy::LeastConnections, &ties, &mut c, None, 2);
        let b = choose(Policy::LeastConnections, &ties, &mut c, None, 2);
        assert_ne!(a, b);
    }

    #[test]
    fn source_hash_is_sticky_and_falls_over() {
        let ws = [w(0, 0, true), w(1, 0, true), w(2, 0, true), w(3, 0, true)];
        let mut c = 0;
        let peer: SocketAddr = "10.0.0.7:1234".parse().unwrap();
        let first = choose(Policy::SourceHash, &ws, &mut c, Some(peer), 4).unwrap();
        let other_port: SocketAddr = "10.0.0.7:999".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(choose(Policy::SourceHash, &ws, &mut c, Some(other_port), 4), Some(first));
        }
        let mut down = ws;
        down[first].open = false;
        let next = choose(Policy::SourceHash, &down, &mut c, Some(peer), 4).unwrap();
        assert_ne!(next, first);
        // Clients spread over the slots.
        let mut seen = std::collections::HashSet::new();
        for i in 0..64u8 {
            let p = SocketAddr::new(IpAddr::from([192, 168, 1, i]), 80);
            seen.insert(choose(Policy::SourceHash, &ws, &mut c, Some(p), 4).unwrap());
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn a_stalled_worker_is_passed_over_except_by_source_hash() {
        let mut ws = [w(0, 0, true), w(1, 0, true)];
        ws[1].stalled = true;
        let mut c = 0;
        for _ in 0..4 {
            assert_eq!(choose(Policy::RoundRobin, &ws, &mut c, None, 2), Some(0));
            assert_eq!(choose(Policy::LeastConnections, &ws, &mut c, None, 2), Some(0));
        }
        ws[0].stalled = true;
        assert_eq!(choose(Policy::RoundRobin, &ws, &mut c, None, 2), None);
        // Source-hash keeps each client on its home worker.
        let peer: SocketAddr = "10.0.0.7:1234".parse().unwrap();
        let home =
            choose(Policy::SourceHash, &[w(0, 0, true), w(1, 0, true)], &mut c, Some(peer), 2);
        assert_eq!(choose(Policy::SourceHash, &ws, &mut c, Some(peer), 2), home);
    }
}
