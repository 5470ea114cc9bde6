//! Starting worker processes, reaping them, and deciding when (and whether) to restart them.

use std::ffi::OsStr;
use std::process::ExitStatus;
use std::time::Duration;

use crate::config::{Env, ProgramConfig, Timeouts};
use crate::sys;

/// Variables the supervisor sets itself; never passed through from its own environment.
/// `NOTIFY_SOCKET` is the supervisor's own line to systemd: workers are not the main process.
const OURS: [&str; 14] = [
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
    sys::prepare_child(&mut cmd);
    cmd
}

/// Reaps `child` if it has exited, waiting up to `patience` for it (it was just killed, or
/// its channel just closed, so it is exiting).
pub(crate) fn reap(child: &mut handover::Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            _ => return None,
        }
    }
}

/// Says why the supervisor gives up on `prog` after `n` crashes at start in a row (`last`:
/// how the last one ended; `start`: what counts as a crash at start in this mode). Logged
/// here; the caller keeps it as its outcome's message.
pub(crate) fn crash_loop(prog: &ProgramConfig, n: u32, start: &str, last: &str) -> String {
    let msg = format!(
        "worker {} crashed {n} times in a row {start} (within {:?}; last: {last}); giving up",
        prog.program.display(),
        prog.timeouts.min_uptime
    );
    tracing::error!(program = %prog.name, "{msg}");
    msg
}

/// Restart bookkeeping for one worker slot: exponential backoff after crashes at start, and
/// crash-loop detection.
#[derive(Debug, Default, Clone)]
pub(crate) struct Restarts {
    /// Crashes at start in a row.
    quick: u32,
    /// Restarts so far.
    pub(crate) count: u64,
}

/// First backoff delay; doubles with every further crash at start, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Restarts {
    /// Records the death of a worker that lived `lived` (and became ready or not). Returns the
    /// delay before its replacement starts, or `Err(n)` once `n` crashes at start in a row
    /// reach the crash limit.
    pub(crate) fn on_death(
        &mut self,
        lived: Duration,
        ready: bool,
        t: &Timeouts,
    ) -> Result<Duration, u32> {
        let quick = !ready || lived < t.min_uptime;
        if !quick {
            self.quick = 0;
            self.count += 1;
            return Ok(Duration::ZERO);
        }
        self.quick += 1;
        if t.crash_limit > 0 && self.quick >= t.crash_limit {
            return Err(self.quick);
        }
        self.count += 1;
        let shift = (self.quick - 1).min(16);
        Ok((FIRST_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF))
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

    #[test]
    fn backoff_grows_then_gives_up() {
        let t = Timeouts { crash_limit: 4, ..Timeouts::default() };
        let mut r = Restarts::default();
        assert_eq!(r.on_death(Duration::ZERO, false, &t), Ok(Duration::from_millis(100)));
        assert_eq!(r.on_death(Duration::ZERO, false, &t), Ok(Duration::from_millis(200)));
        assert_eq!(r.on_death(Duration::from_millis(10), true, &t), Ok(Duration::from_millis(400)));
        assert_eq!(r.on_death(Duration::ZERO, false, &t), Err(4));
    }

    #[test]
    fn a_worker_that_lived_resets_the_count() {
        let t = Timeouts { crash_limit: 2, ..Timeouts::default() };
        let mut r = Restarts::default();
        assert!(r.on_death(Duration::ZERO, false, &t).is_ok());
        assert_eq!(r.on_death(Duration::from_secs(5), true, &t), Ok(Duration::ZERO));
        assert!(r.on_death(Duration::ZERO, false, &t).is_ok());
        assert_eq!(r.count, 3);
        let never = Timeouts { crash_limit: 0, ..Timeouts::default() };
        for _ in 0..100 {
            assert!(r.on_death(Duration::ZERO, false, &never).unwrap() <= MAX_BACKOFF);
        }
    }
}
