//! The init process: what `handover serve` becomes when it is PID 1 of its PID namespace (a
//! container started without `--init`) or is given `--subreaper` (Linux).
//!
//! It is tini's design, built in: the first process starts the real supervisor as its child
//! (same binary, same arguments, `HANDOVER_INIT_PID` set to its own pid) and then does nothing
//! but wait on a `signalfd`:
//!
//! - `SIGCHLD`: `waitpid(-1, WNOHANG)` until nothing is left to reap. Every orphan in the
//!   container (or below the subreaper) is reparented to this process and reaped here. This
//!   process has no workers, spawn-mode children or next generation of its own, so reaping
//!   any pid steals no exit status the engines wait for: they run in the supervisor, which
//!   reaps its own children by pid, as it does without an init process.
//! - `SIGTERM`, `SIGINT`, `SIGQUIT`: passed to every generation; `SIGHUP`, `SIGUSR1`,
//!   `SIGUSR2`, `SIGTTIN`, `SIGTTOU`, `SIGWINCH`: to the newest (an upgrade goes to the
//!   generation that serves).
//! - `SIGURG` from a new generation: it took over (sent before it tells the old generation
//!   so, hence before the old one exits). An upgrade's new generation is the old one's child;
//!   when the old one exits it is reparented here, and this process now waits for it too.
//!
//! It exits when no generation is left, with the exit code of the last one to exit (128 +
//! signal for a death by a signal). As PID 1 that ends the namespace, as it must: a kernel
//! kills every process in a PID namespace when its PID 1 exits, which is why the supervisor
//! itself cannot be PID 1 and survive its own upgrade.

use anyhow::{Context, Result};

use crate::config::Env;
use crate::exit_codes::ExitCode;
use crate::sys::{self, InitEvent};

/// Set in the supervisor's environment (and so its next generations'): the init process's pid.
pub(crate) const ENV_INIT_PID: &str = "HANDOVER_INIT_PID";

/// Whether this `handover serve` should be the init process rather than the supervisor.
pub(crate) fn wanted(subreaper: bool, env: &Env) -> bool {
    env.get(ENV_INIT_PID).is_none() && (subreaper || sys::is_pid1())
}

/// A new generation's announcement to the init process, if there is one.
pub(crate) fn announce(env: &Env) {
    let Some(pid) = env.get(ENV_INIT_PID).and_then(|v| v.to_str()?.parse::<u32>().ok()) else {
        return;
    };
    if let Err(e) = sys::announce_to(pid) {
        tracing::warn!(
            "cannot tell the init process (pid {pid}) that this generation took over: {e}"
        );
    }
}

/// The generations the init process waits for, oldest first.
#[derive(Debug, Default)]
struct Generations {
    pids: Vec<u32>,
    /// The exit code of the last generation that exited.
    last_code: i32,
}

impl Generations {
    fn announce(&mut self, pid: u32) {
        if pid != 0 && !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }

    /// A child was reaped: if it was a generation, its code is the one to exit with.
    fn reaped(&mut self, pid: u32, code: i32) {
        if let Some(i) = self.pids.iter().position(|&p| p == pid) {
            self.pids.remove(i);
            self.last_code = code;
        }
    }

    /// Forgets generations that are gone without being reaped here (a new generation that
    /// failed is reaped by the old one, its parent).
    fn prune(&mut self, exists: impl Fn(u32) -> bool) {
        self.pids.retain(|&p| exists(p));
    }

    fn targets(&self, to_all: bool) -> &[u32] {
        if to_all {
            &self.pids
        } else {
            &self.pids[self.pids.len().saturating_sub(1)..]
        }
    }

    fn handle(&mut self, ev: InitEvent) -> Result<()> {
        match ev {
            InitEvent::ChildExited => {
                while let Some((pid, code)) = sys::reap_any().context("waitpid")? {
                    self.reaped(pid, code);
                }
                self.prune(sys::exists);
            }
            InitEvent::Announce(pid) => self.announce(pid),
            InitEvent::Forward { signal, to_all } => {
                for &pid in self.targets(to_all) {
                    sys::forward(pid, signal);
                }
            }
        }
        Ok(())
    }
}

/// Runs the init process until the last generation exits.
pub(crate) fn run(subreaper: bool, env: &Env) -> Result<ExitCode> {
    if subreaper && !sys::is_pid1() {
        sys::become_subreaper().context("--subreaper: cannot become a child subreaper")?;
    }
    let signals = sys::InitSignals::new().context("cannot set up the init process's signals")?;
    let first = start_supervisor(env)?;
    let mut gens = Generations::default();
    gens.announce(first);
    loop {
        if let Some(ev) = signals.next(true).context("cannot read signals")? {
            gens.handle(ev)?;
        }
        if gens.pids.is_empty() {
            // A new generation's announcement may still be pending behind the old one's
            // SIGCHLD (the kernel hands over lower-numbered signals first).
            while let Some(ev) = signals.next(false).context("cannot read signals")? {
                gens.handle(ev)?;
            }
            if gens.pids.is_empty() {
                return Ok(ExitCode::Reported(gens.last_code));
            }
        }
    }
}

/// Starts the supervisor: this binary as it was invoked, with the same arguments and the
/// sockets a service manager passed (`LISTEN_PID` must name the process that takes them).
fn start_supervisor(env: &Env) -> Result<u32> {
    let mut inherited =
        handover::inherited().context("cannot take the sockets this process was started with")?;
    let exe = crate::upgrade::invoked_binary(env)
        .context("cannot find this program's binary to start the supervisor")?;
    let sockets = std::mem::take(&mut inherited.sockets);
    let mut cmd = handover::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env(ENV_INIT_PID, sys::own_pid().to_string());
    for (name, socket) in &sockets {
        cmd.listen_socket(name.clone(), handover::AsSocketRef::as_socket_ref(socket));
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_every_generation_and_exits_with_the_last_ones_code() {
        let mut g = Generations::default();
        g.announce(10);
        g.announce(20); // the new generation took over
        assert_eq!(g.targets(false), [20]);
        assert_eq!(g.targets(true), [10, 20]);
        g.reaped(33, 1); // an orphan: not a generation
        assert_eq!(g.last_code, 0);
        g.reaped(10, 0);
        assert_eq!(g.pids, [20]);
        g.reaped(20, 143);
        assert!(g.pids.is_empty());
        assert_eq!(g.last_code, 143);
    }

    #[test]
    fn a_failed_new_generation_reaped_by_its_parent_is_forgotten() {
        let mut g = Generations::default();
        g.announce(10);
        g.announce(20);
        g.prune(|p| p != 20);
        assert_eq!(g.pids, [10]);
        assert_eq!(g.targets(false), [10]);
    }
}
