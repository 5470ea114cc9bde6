//! What `handover status` reports, as sent over the control socket (JSON) and as printed.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole supervisor.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) pid: u32,
    pub(crate) uptime_ms: u64,
    pub(crate) state: String,
    /// 1 for the supervisor first started, one more per zero-downtime upgrade.
    #[serde(default)]
    pub(crate) generation: u64,
    /// Upgrades completed in this supervisor's lineage (`generation - 1`) and failed here.
    #[serde(default)]
    pub(crate) upgrades: u64,
    #[serde(default)]
    pub(crate) upgrades_failed: u64,
    pub(crate) listeners: Vec<ListenerStatus>,
    pub(crate) programs: Vec<ProgramStatus>,
    pub(crate) totals: Totals,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct ListenerStatus {
    pub(crate) name: String,
    /// The bound address (`tcp://127.0.0.1:PORT` with the real port).
    pub(crate) address: String,
    pub(crate) program: String,
    pub(crate) policy: Option<String>,
    /// Connections accepted by the supervisor (prefork and spawn; `None` in shared mode).
    pub(crate) accepted: Option<u64>,
    pub(crate) open: bool,
}

impl ListenerStatus {
    /// The row of an open listener run by `program`.
    pub(crate) fn open(
        name: &str,
        address: &str,
        program: &str,
        policy: Option<&str>,
        accepted: Option<u64>,
    ) -> ListenerStatus {
        ListenerStatus {
            name: name.to_owned(),
            address: address.to_owned(),
            program: program.to_owned(),
            policy: policy.map(str::to_owned),
            accepted,
            open: true,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct ProgramStatus {
    pub(crate) name: String,
    pub(crate) mode: String,
    pub(crate) command: String,
    pub(crate) state: String,
    pub(crate) workers: Vec<WorkerStatus>,
    pub(crate) totals: Totals,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerStatus {
    pub(crate) slot: usize,
    pub(crate) pid: Option<u32>,
    pub(crate) state: String,
    pub(crate) capacity: Option<u32>,
    /// Connections dispatched to it and not yet finished.
    pub(crate) live: Option<u64>,
    /// Connections it finished.
    pub(crate) handled: Option<u64>,
    /// Times this slot's worker was restarted.
    pub(crate) restarts: u64,
}

/// Counters, per program and summed for the supervisor.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Totals {
    /// Connections accepted.
    pub(crate) accepted: u64,
    /// Hand-offs to workers (a re-dispatched connection counts again).
    pub(crate) dispatched: u64,
    /// Connections finished by a worker (prefork) or children exited (spawn).
    pub(crate) handled: u64,
    /// Connections given to another worker because theirs died, was killed or handed them back
    /// before acknowledging.
    pub(crate) redispatched: u64,
    /// Connections a worker had acknowledged and not finished when it died: their requests may
    /// have been read and cannot be replayed, so they were reset. The only connections lost.
    pub(crate) lost_mid_request: u64,
    /// Connections closed without being served (drain cut short, no worker left, spawn failed).
    pub(crate) dropped: u64,
    /// Workers started again after they died.
    pub(crate) restarts: u64,
    /// Workers killed for breaking the protocol or a timeout.
    pub(crate) misbehaving_killed: u64,
    /// Connections currently held by workers or waiting for one.
    pub(crate) live: u64,
}

impl Totals {
    pub(crate) fn add(&mut self, o: &Totals) {
        self.accepted += o.accepted;
        self.dispatched += o.dispatched;
        self.handled += o.handled;
        self.redispatched += o.redispatched;
        self.lost_mid_request += o.lost_mid_request;
        self.dropped += o.dropped;
        self.restarts += o.restarts;
        self.misbehaving_killed += o.misbehaving_killed;
        self.live += o.live;
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The human-readable form.
pub(crate) fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "supervisor pid {} ({}), generation {}, up {}s, upgrades {} ({} failed)",
        s.pid,
        s.state,
        s.generation,
        s.uptime_ms / 1000,
        s.upgrades,
        s.upgrades_failed
    );
    let _ = writeln!(out, "\nLISTENER        ADDRESS                          PROGRAM     POLICY              ACCEPTED");
    for l in &s.listeners {
        let _ = writeln!(
            out,
            "{:<15} {:<32} {:<11} {:<19} {}{}",
            l.name,
            l.address,
            l.program,
            l.policy.as_deref().unwrap_or("-"),
            opt(&l.accepted),
            if l.open { "" } else { " (closed)" }
        );
    }
    for p in &s.programs {
        let _ = writeln!(out, "\nprogram {} ({}, {}): {}", p.name, p.mode, p.state, p.command);
        let _ = writeln!(out, "  SLOT  PID       STATE      CAPACITY  LIVE    HANDLED   RESTARTS");
        for w in &p.workers {
            let _ = writeln!(
                out,
                "  {:<5} {:<9} {:<10} {:<9} {:<7} {:<9} {}",
                w.slot,
                opt(&w.pid),
                w.state,
                opt(&w.capacity),
                opt(&w.live),
                opt(&w.handled),
                w.restarts
            );
        }
    }
    let t = &s.totals;
    let _ = writeln!(
        out,
        "\ntotals: accepted {}, dispatched {}, handled {}, live {}, redispatched {}, lost mid-request {}, \
         dropped {}, restarts {}, misbehaving workers killed {}",
        t.accepted, t.dispatched, t.handled, t.live, t.redispatched, t.lost_mid_request, t.dropped,
        t.restarts, t.misbehaving_killed
    );
    out
}
