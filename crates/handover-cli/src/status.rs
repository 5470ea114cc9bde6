//! What `handover status` reports, as sent over the control socket (JSON) and as printed.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::Mode;
use crate::restart::Cause;

/// An enum of states with the names `handover status --json` and the metrics' `state` label
/// show (one name per state, in one place: a typo does not compile).
macro_rules! states {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub(crate) enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v,)+
        }

        impl $name {
            /// Every state, in the order reports list them.
            #[allow(dead_code)] // (not every enum is listed whole)
            pub(crate) const ALL: [$name; [$($s),+].len()] = [$($name::$v),+];

            /// Its name in status JSON and in metric labels.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

states! {
    /// The supervisor's state.
    SupervisorState {
        /// A new generation (an upgrade) that has not taken over yet.
        Starting = "starting",
        #[default]
        Running = "running",
        /// Serving while a new generation starts.
        Upgrading = "upgrading",
        /// A new generation took over; this one drains.
        Upgraded = "upgraded",
        Draining = "draining",
    }
}

states! {
    /// A program's state.
    ProgramState {
        #[default]
        Running = "running",
        /// Running, with a reload under way.
        Reloading = "reloading",
        Draining = "draining",
    }
}

states! {
    /// A worker's state (a row of `handover status`; a slot waiting for its next worker is a
    /// row too).
    WorkerState {
        /// Started, not ready yet (prefork: no hello; shared: not up `--min-uptime`).
        #[default]
        Starting = "starting",
        /// prefork: said hello, takes connections.
        Ready = "ready",
        /// shared: stayed up long enough to count as ready.
        Running = "running",
        /// spawn: a child serving its one connection.
        Serving = "serving",
        /// prefork: told to drain; finishing its connections, then exiting.
        Draining = "draining",
        /// prefork: killed, its end not noticed yet; shared: told to stop (`SIGTERM`).
        Stopping = "stopping",
        /// A slot waiting to restart its worker after a crash.
        Backoff = "backoff",
        /// A slot whose workers crash at start again and again.
        CrashLooping = "crash-looping",
    }
}

/// The whole supervisor.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) pid: u32,
    pub(crate) uptime_ms: u64,
    pub(crate) state: SupervisorState,
    /// 1 for the supervisor first started, one more per zero-downtime upgrade.
    #[serde(default)]
    pub(crate) generation: u64,
    /// This generation's version and the binary it was started from (as invoked: through
    /// links, not resolved).
    #[serde(default)]
    pub(crate) version: String,
    #[serde(default)]
    pub(crate) binary: String,
    /// Upgrades completed in this supervisor's lineage (`generation - 1`) and failed here.
    #[serde(default)]
    pub(crate) upgrades: u64,
    #[serde(default)]
    pub(crate) upgrades_failed: u64,
    /// Writes of log lines or worker output dropped because the stream (a closed stderr, say)
    /// or the log file failed.
    #[serde(default)]
    pub(crate) log_writes_dropped: u64,
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
    pub(crate) mode: Mode,
    pub(crate) command: String,
    pub(crate) state: ProgramState,
    /// The number of workers it runs (`--workers`, then `handover scale`); spawn mode: the
    /// most children at once.
    #[serde(default)]
    pub(crate) workers_wanted: usize,
    /// Connections accepted and waiting for a worker (prefork: none had room; spawn: over the
    /// cap during a drain). Not the kernel's backlog.
    #[serde(default)]
    pub(crate) queue: u64,
    /// The controls it runs with (`--max-requests` and the like), as configured.
    #[serde(default)]
    pub(crate) controls: ControlsStatus,
    pub(crate) workers: Vec<WorkerStatus>,
    pub(crate) totals: Totals,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerStatus {
    pub(crate) slot: usize,
    pub(crate) pid: Option<u32>,
    pub(crate) state: WorkerState,
    pub(crate) capacity: Option<u32>,
    /// Connections dispatched to it and not yet finished.
    pub(crate) live: Option<u64>,
    /// Connections it finished.
    pub(crate) handled: Option<u64>,
    /// Times this slot's worker was restarted.
    pub(crate) restarts: u64,
    /// prefork: it holds at least one connection (`live` > 0).
    #[serde(default)]
    pub(crate) busy: Option<bool>,
    /// Resident memory, read from the OS when status is asked for.
    #[serde(default)]
    pub(crate) rss_bytes: Option<u64>,
    /// prefork with `--max-requests`: the connections it serves before it is recycled (the
    /// limit plus its share of the jitter).
    #[serde(default)]
    pub(crate) max_requests: Option<u64>,
}

/// A program's controls as configured (`null`: not set).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ControlsStatus {
    pub(crate) max_requests: Option<u64>,
    pub(crate) max_requests_jitter: u64,
    pub(crate) max_memory_bytes: Option<u64>,
    pub(crate) memory_check_interval_ms: u64,
    pub(crate) connection_timeout_ms: Option<u64>,
    pub(crate) max_starting: usize,
    pub(crate) worker_output: String,
}

impl From<&crate::config::Controls> for ControlsStatus {
    fn from(c: &crate::config::Controls) -> ControlsStatus {
        ControlsStatus {
            max_requests: c.max_requests,
            max_requests_jitter: c.max_requests_jitter,
            max_memory_bytes: c.max_memory,
            memory_check_interval_ms: c.memory_check_interval.as_millis() as u64,
            connection_timeout_ms: c.connection_timeout.map(|d| d.as_millis() as u64),
            max_starting: c.max_starting,
            worker_output: match c.worker_output {
                crate::model::WorkerOutput::Prefix => "prefix",
                crate::model::WorkerOutput::Inherit => "inherit",
            }
            .to_owned(),
        }
    }
}

/// Restarts counted by what ended the worker (see `restart::Cause`); they add up to
/// [`Totals::restarts`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RestartCauses {
    pub(crate) exit: u64,
    pub(crate) signal: u64,
    pub(crate) hung: u64,
    pub(crate) misbehaved: u64,
    pub(crate) max_requests: u64,
    pub(crate) max_memory: u64,
    pub(crate) crash_loop: u64,
}

impl RestartCauses {
    fn slot(&mut self, cause: Cause) -> &mut u64 {
        match cause {
            Cause::Exit => &mut self.exit,
            Cause::Signal => &mut self.signal,
            Cause::Hung => &mut self.hung,
            Cause::Misbehaved => &mut self.misbehaved,
            Cause::MaxRequests => &mut self.max_requests,
            Cause::MaxMemory => &mut self.max_memory,
            Cause::CrashLoop => &mut self.crash_loop,
        }
    }

    pub(crate) fn count(&mut self, cause: Cause) {
        *self.slot(cause) += 1;
    }

    pub(crate) fn get(&self, cause: Cause) -> u64 {
        let mut copy = *self;
        *copy.slot(cause)
    }

    fn add(&mut self, o: &RestartCauses) {
        for c in Cause::ALL {
            *self.slot(c) += o.get(c);
        }
    }
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
    /// Workers started again after they died, or replaced by recycling.
    pub(crate) restarts: u64,
    /// The same restarts, by cause.
    #[serde(default)]
    pub(crate) restarts_by_cause: RestartCauses,
    /// Connections a worker held past `--connection-timeout`: reset by the supervisor.
    #[serde(default)]
    pub(crate) timed_out: u64,
    /// Workers killed for breaking the protocol or a timeout.
    pub(crate) misbehaving_killed: u64,
    /// Connections closed because their PROXY protocol header was missing, malformed, too long
    /// or too late.
    #[serde(default)]
    pub(crate) proxy_refused: u64,
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
        self.restarts_by_cause.add(&o.restarts_by_cause);
        self.timed_out += o.timed_out;
        self.misbehaving_killed += o.misbehaving_killed;
        self.proxy_refused += o.proxy_refused;
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
    if !s.version.is_empty() {
        let _ = writeln!(out, "version {}, binary {}", s.version, s.binary);
    }
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
        let _ = writeln!(
            out,
            "\nprogram {} ({}, {}): {} workers wanted, {} waiting for a worker: {}",
            p.name,
            p.mode.name(),
            p.state,
            p.workers_wanted,
            p.queue,
            p.command
        );
        let _ = writeln!(
            out,
            "  SLOT  PID       STATE          BUSY  CAPACITY  LIVE    HANDLED   RSS       RESTARTS"
        );
        for w in &p.workers {
            let busy = match w.busy {
                Some(true) => "busy",
                Some(false) => "idle",
                None => "-",
            };
            let mut handled = opt(&w.handled);
            if let Some(max) = w.max_requests {
                let _ = write!(handled, "/{max}");
            }
            let _ = writeln!(
                out,
                "  {:<5} {:<9} {:<14} {:<5} {:<9} {:<7} {:<9} {:<9} {}",
                w.slot,
                opt(&w.pid),
                w.state.name(),
                busy,
                opt(&w.capacity),
                opt(&w.live),
                handled,
                w.rss_bytes.map_or_else(|| "-".to_owned(), size),
                w.restarts
            );
        }
    }
    let t = &s.totals;
    let _ = writeln!(
        out,
        "\ntotals: accepted {}, dispatched {}, handled {}, live {}, redispatched {}, lost mid-request {}, \
         timed out {}, dropped {}, misbehaving workers killed {}",
        t.accepted, t.dispatched, t.handled, t.live, t.redispatched, t.lost_mid_request, t.timed_out,
        t.dropped, t.misbehaving_killed
    );
    if t.proxy_refused > 0 {
        let _ = writeln!(out, "PROXY headers refused: {}", t.proxy_refused);
    }
    let causes: Vec<String> = Cause::ALL
        .iter()
        .filter(|c| t.restarts_by_cause.get(**c) > 0)
        .map(|c| format!("{} {}", c.name().replace('_', "-"), t.restarts_by_cause.get(*c)))
        .collect();
    let _ = writeln!(
        out,
        "restarts: {}{}",
        t.restarts,
        if causes.is_empty() { String::new() } else { format!(" ({})", causes.join(", ")) }
    );
    out
}

/// `1.5M`, `312K`: a resident size for the table.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 30 => format!("{}G", b >> 30),
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 10 << 20 => format!("{}M", b >> 20),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b => format!("{}K", b >> 10),
    }
}

/// `handover status --watch`: a report every `every` (`count` of them, or until interrupted);
/// on a terminal each report replaces the last in place, elsewhere they follow each other.
/// A supervisor that cannot be reached is said so, and asked again next time.
pub(crate) fn watch(
    path: &std::path::Path,
    json: bool,
    every: std::time::Duration,
    count: Option<u64>,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal() && !json;
    let mut shown = 0u64;
    loop {
        let text = if json {
            match crate::control::request(path, crate::control::Command::Status) {
                Ok(bytes) => format!("{}\n", String::from_utf8_lossy(&bytes)),
                Err(e) => format!("{{\"error\":{:?}}}\n", format!("{e:#}")),
            }
        } else {
            let head = format!(
                "every {:.1}s ({})\n",
                every.as_secs_f64(),
                if tty { "Ctrl-C to quit" } else { "--watch" }
            );
            match crate::control::status(path) {
                Ok(s) => format!("{head}{}", render(&s)),
                Err(e) => format!("{head}{e:#}\n"),
            }
        };
        let mut out = std::io::stdout().lock();
        let written = if tty {
            // Home, each line cleared to its end, then everything below: no flicker.
            let body = text.replace('\n', "\x1b[K\n");
            write!(out, "\x1b[H{body}\x1b[J")
        } else if json {
            write!(out, "{text}")
        } else {
            writeln!(out, "{text}")
        };
        // Whoever reads our output went away: stop quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        drop(out);
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_per_worker_state_and_restarts_by_cause() {
        let mut totals = Totals { restarts: 3, ..Totals::default() };
        totals.restarts_by_cause.count(Cause::MaxRequests);
        totals.restarts_by_cause.count(Cause::MaxRequests);
        totals.restarts_by_cause.count(Cause::Hung);
        let s = Status {
            programs: vec![ProgramStatus {
                name: "web".into(),
                mode: Mode::Prefork,
                workers_wanted: 2,
                queue: 7,
                workers: vec![WorkerStatus {
                    slot: 1,
                    pid: Some(42),
                    state: WorkerState::Ready,
                    busy: Some(true),
                    live: Some(3),
                    handled: Some(17),
                    max_requests: Some(57),
                    rss_bytes: Some(3 << 19),
                    ..WorkerStatus::default()
                }],
                ..ProgramStatus::default()
            }],
            totals,
            ..Status::default()
        };
        let text = render(&s);
        assert!(text.contains("2 workers wanted, 7 waiting"), "{text}");
        let row = text.lines().find(|l| l.trim_start().starts_with("1 ")).unwrap();
        for cell in ["42", "ready", "busy", "17/57", "1.5M"] {
            assert!(row.contains(cell), "{cell} in {row:?}");
        }
        assert!(text.contains("restarts: 3 (hung 1, max-requests 2)"), "{text}");
        assert_eq!(size(512 << 10), "512K");
        assert_eq!(size(25 << 20), "25M");
    }
}
