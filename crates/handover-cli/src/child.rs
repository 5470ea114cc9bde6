//! Starting worker processes, reaping them, and deciding when (and whether) to restart them.

use std::ffi::OsStr;
use std::process::ExitStatus;
use std::time::Duration;

use crate::config::{Env, ProgramConfig, Timeouts};

/// Variables the supervisor sets itself; never passed through from its own environment.
/// `NOTIFY_SOCKET` is the supervisor's own line to systemd: workers are not the main process.
const OURS: [&str; 15] = [
    "NOTIFY_SOCKET",
    "HANDOVER_UPGRADE",
    "EINHORN_FDS",
    "EINHORN_FD_COUNT",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "HANDOVER_CHANNEL_FD",
    "HANDOVER_SLOT",
    "HANDOVER_LISTENER",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    crate::init::ENV_INIT_PID,
];

/// A command for one of `prog`'s children, with an environment built explicitly from the
/// snapshot taken at start plus the program's own variables.
pub(crate) fn command<'a>(prog: &ProgramConfig, env: &Env) -> handover::Command<'a> {
    let mut cmd = handover::Command::new(&prog.program);
    cmd.args(&prog.args).env_clear();
    for (k, v) in &env.vars {
        let einhorn_fd = k.to_str().is_some_and(|k| k.starts_with("EINHORN_FD_"));
        if !OURS.iter().any(|o| OsStr::new(o) == k) && !einhorn_fd {
            cmd.env(k, v);
        }
    }
    for (k, v) in &prog.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &prog.context.chdir {
        cmd.current_dir(dir);
    }
    crate::sys::apply_context(&mut cmd, &prog.context);
    cmd
}

/// Says why the supervisor gives up on `prog` after `n` crashes at start in a row (`last`:
/// how the last one ended; `start`: what counts as a crash at start in this mode), none of its
/// workers having been ready since start, reload or upgrade. Logged here; the caller keeps it
/// as its outcome's message.
pub(crate) fn crash_loop(prog: &ProgramConfig, n: u32, start: &str, last: &str) -> String {
    let msg = format!(
        "worker {} crashed {n} times in a row {start} (within {:?}; last: {last}) and no worker of it \
         has been ready since it was started or reloaded: giving up (check the command and its log)",
        prog.program.display(),
        prog.timeouts.min_uptime
    );
    tracing::error!(program = %prog.name, "{msg}");
    msg
}

/// How a worker ended, as the restart policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Death {
    /// How long it lived.
    pub(crate) lived: Duration,
    /// It became ready (prefork: said hello; shared: stayed up long enough).
    pub(crate) ready: bool,
    /// A signal someone else sent ended it (an operator's `kill`, the OOM killer), not its own
    /// crash or exit, nor the supervisor.
    pub(crate) from_outside: bool,
    /// Some worker of the program has been ready since start, reload or upgrade.
    pub(crate) proven: bool,
}

/// Why a worker was replaced: `handover status` (`restarts_by_cause`) and the
/// `handover_worker_restarts_by_cause_total` metric count each restart under one cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// It exited by itself (any exit code), or could not be started.
    Exit,
    /// A signal ended it: its own crash (`SIGSEGV`, `SIGABRT`) or someone else's kill.
    Signal,
    /// The supervisor killed it for not answering in time: no hello within `--start-timeout`,
    /// no acknowledgement within `--ack-timeout`, no heartbeat answer, or a connection reset at
    /// `--connection-timeout` not reported finished within the grace period.
    Hung,
    /// The supervisor killed it for breaking the protocol.
    Misbehaved,
    /// Recycled after `--max-requests` connections.
    MaxRequests,
    /// Recycled because its resident memory passed `--max-memory`.
    MaxMemory,
    /// It died while its slot was crash-looping (counted here instead of its own cause).
    CrashLoop,
}

impl Cause {
    /// Every cause, in the order reports list them.
    pub(crate) const ALL: [Cause; 7] = [
        Cause::Exit,
        Cause::Signal,
        Cause::Hung,
        Cause::Misbehaved,
        Cause::MaxRequests,
        Cause::MaxMemory,
        Cause::CrashLoop,
    ];

    /// The name in status JSON and in the metric's `cause` label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cause::Exit => "exit",
            Cause::Signal => "signal",
            Cause::Hung => "hung",
            Cause::Misbehaved => "misbehaved",
            Cause::MaxRequests => "max_requests",
            Cause::MaxMemory => "max_memory",
            Cause::CrashLoop => "crash_loop",
        }
    }

    /// How a worker the supervisor did not kill ended, from its exit status.
    pub(crate) fn of_exit(status: Option<&ExitStatus>) -> Cause {
        match status {
            Some(s) if s.code().is_none() => Cause::Signal,
            _ => Cause::Exit,
        }
    }
}

/// What to do about a dead worker's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Start a replacement after this long.
    After(Duration),
    /// Give the program up: `n` crashes at start in a row and it has never been ready.
    GiveUp(u32),
}

/// Restart bookkeeping for one worker slot: capped exponential backoff after crashes at start,
/// and the crash-loop state.
///
/// The policy (README, "Restarts"): a worker killed from outside (ready or not: the signal
/// says nothing about the program), or one that was ready and then lived `--min-uptime`,
/// resets the slot and is replaced at once. Anything else (it never became ready, or crashed
/// by itself soon after) is a crash at start: the replacement waits 100 ms, doubling to 5 s;
/// after `--crash-limit` of them in a row the slot is reported crash-looping, and only a
/// program that has never been ready is given up on.
#[derive(Debug, Default, Clone)]
pub(crate) struct Restarts {
    /// Crashes at start in a row.
    streak: u32,
    /// Restarts so far.
    pub(crate) count: u64,
}

/// First backoff delay; doubles with every further crash at start, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// With `--crash-limit 0` (never give up), when a slot is reported crash-looping.
const DEFAULT_CRASH_LOOP: u32 = 5;

impl Restarts {
    /// Records a death and says when the replacement starts.
    pub(crate) fn on_death(&mut self, d: Death, t: &Timeouts) -> Restart {
        if d.from_outside || (d.ready && d.lived >= t.min_uptime) {
            self.streak = 0;
            self.count += 1;
            return Restart::After(Duration::ZERO);
        }
        self.streak += 1;
        if t.crash_limit > 0 && self.streak >= t.crash_limit && !d.proven && !d.from_outside {
            return Restart::GiveUp(self.streak);
        }
        self.count += 1;
        let shift = (self.streak - 1).min(16);
        Restart::After((FIRST_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF))
    }

    /// Whether the slot has crashed at start often enough in a row to be reported so.
    pub(crate) fn crash_looping(&self, t: &Timeouts) -> bool {
        let limit = if t.crash_limit == 0 { DEFAULT_CRASH_LOOP } else { t.crash_limit };
        self.streak >= limit
    }
}

/// The state a slot waiting for its next worker reports.
pub(crate) fn waiting_state(r: &Restarts, t: &Timeouts) -> &'static str {
    if r.crash_looping(t) {
        "crash-looping"
    } else {
        "backoff"
    }
}

/// "exit status 3", "killed by signal 9", for logs.
pub(crate) fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "exit status unknown".to_owned(),
        Some(s) => {
            if let Some(code) = s.code() {
                format!("exit status {code}")
            } else {
                format!("{s}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death(lived_ms: u64, ready: bool, from_outside: bool, proven: bool) -> Death {
        Death { lived: Duration::from_millis(lived_ms), ready, from_outside, proven }
    }

    const MS: fn(u64) -> Restart = |ms| Restart::After(Duration::from_millis(ms));

    #[test]
    fn a_program_never_ready_is_given_up_on() {
        let t = Timeouts { crash_limit: 4, ..Timeouts::default() };
        let mut r = Restarts::default();
        assert_eq!(r.on_death(death(0, false, false, false), &t), MS(100));
        assert_eq!(r.on_death(death(0, false, false, false), &t), MS(200));
        assert_eq!(r.on_death(death(10, true, false, false), &t), MS(400));
        assert!(!r.crash_looping(&t));
        assert_eq!(r.on_death(death(0, false, false, false), &t), Restart::GiveUp(4));
    }

    #[test]
    fn a_proven_program_backs_off_but_never_gives_up() {
        let t = Timeouts::default();
        let mut r = Restarts::default();
        for _ in 0..100 {
            match r.on_death(death(0, false, false, true), &t) {
                Restart::After(d) => assert!(d <= MAX_BACKOFF),
                Restart::GiveUp(_) => panic!("gave up on a program that has served"),
            }
        }
        assert_eq!(r.on_death(death(0, false, false, true), &t), Restart::After(MAX_BACKOFF));
        assert!(r.crash_looping(&t));
        // A worker that stays up clears it.
        assert_eq!(r.on_death(death(5000, true, false, true), &t), MS(0));
        assert!(!r.crash_looping(&t));
    }

    #[test]
    fn a_kill_from_outside_restarts_at_once_and_never_gives_up() {
        let t = Timeouts { crash_limit: 2, ..Timeouts::default() };
        let mut r = Restarts::default();
        // Killed 10 ms after hello, again and again: replaced at once every time.
        for _ in 0..50 {
            assert_eq!(r.on_death(death(10, true, true, true), &t), MS(0));
        }
        // Killed before it was ready, unproven: the same (a kill says nothing about the
        // program; a crash-at-start streak would starve the slot under repeated kills).
        for _ in 0..50 {
            assert_eq!(r.on_death(death(1, false, true, false), &t), MS(0));
        }
        assert!(!r.crash_looping(&t));
        assert_eq!(r.count, 100);
        // Its own crash still counts.
        assert_eq!(r.on_death(death(1, false, false, true), &t), MS(100));
    }

    #[test]
    fn causes_have_distinct_names_and_exits_are_told_from_signals() {
        let names: std::collections::HashSet<_> = Cause::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Cause::ALL.len());
        let exited = std::process::Command::new("sh").args(["-c", "exit 3"]).status().unwrap();
        assert_eq!(Cause::of_exit(Some(&exited)), Cause::Exit);
        let killed = std::process::Command::new("sh").args(["-c", "kill -9 $$"]).status().unwrap();
        assert_eq!(Cause::of_exit(Some(&killed)), Cause::Signal);
        assert_eq!(Cause::of_exit(None), Cause::Exit);
    }

    #[test]
    fn never_give_up_still_reports_crash_looping() {
        let t = Timeouts { crash_limit: 0, ..Timeouts::default() };
        let mut r = Restarts::default();
        for i in 1..=DEFAULT_CRASH_LOOP {
            assert!(matches!(r.on_death(death(0, false, false, false), &t), Restart::After(_)));
            assert_eq!(r.crash_looping(&t), i >= DEFAULT_CRASH_LOOP);
        }
        assert_eq!(waiting_state(&r, &t), "crash-looping");
    }
}
