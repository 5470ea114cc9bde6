//! The init process's system calls (Linux): a child subreaper, signals read from a
//! `signalfd`, `waitpid(-1)` and `kill`.

use std::io;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys::InitEvent;

/// Passed on to the generations (`SIGWINCH` too: nginx's "stop the old workers").
const FORWARDED: [NixSignal; 9] = [
    NixSignal::SIGTERM,
    NixSignal::SIGINT,
    NixSignal::SIGQUIT,
    NixSignal::SIGHUP,
    NixSignal::SIGUSR1,
    NixSignal::SIGUSR2,
    NixSignal::SIGTTIN,
    NixSignal::SIGTTOU,
    NixSignal::SIGWINCH,
];
/// A new generation's "I took over" (see `crate::init`).
const ANNOUNCE: NixSignal = NixSignal::SIGURG;

/// Whether this process is PID 1 of its PID namespace.
pub(crate) fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// `PR_SET_CHILD_SUBREAPER`: orphans below this process are reparented to it.
pub(crate) fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// This process's id, for the generations to announce themselves to.
pub(crate) fn own_pid() -> u32 {
    nix::unistd::getpid().as_raw().unsigned_abs()
}

/// The signals the init process acts on, blocked and read from a `signalfd` (children get an
/// empty mask back: std's `Command` resets it).
#[derive(Debug)]
pub(crate) struct InitSignals {
    wait: SignalFd,
    drain: SignalFd,
}

impl InitSignals {
    /// Blocks the signals; call before the first child is started, on the only thread.
    pub(crate) fn new() -> io::Result<InitSignals> {
        let mut mask = SigSet::empty();
        for s in FORWARDED.iter().chain(&[NixSignal::SIGCHLD, ANNOUNCE]) {
            mask.add(*s);
        }
        mask.thread_block()?;
        Ok(InitSignals {
            wait: SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)?,
            drain: SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?,
        })
    }

    /// The next signal, waiting for one (`block`) or `None` if none is pending.
    pub(crate) fn next(&self, block: bool) -> io::Result<Option<InitEvent>> {
        loop {
            let fd = if block { &self.wait } else { &self.drain };
            let info = match fd.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            return Ok(Some(match NixSignal::try_from(signo) {
                Ok(NixSignal::SIGCHLD) => InitEvent::ChildExited,
                Ok(ANNOUNCE) => InitEvent::Announce(info.ssi_pid),
                Ok(s) => InitEvent::Forward {
                    signal: signo,
                    to_all: matches!(
                        s,
                        NixSignal::SIGTERM | NixSignal::SIGINT | NixSignal::SIGQUIT
                    ),
                },
                Err(_) => continue,
            }));
        }
    }
}

/// Reaps one exited child, whichever it is: its pid and exit code (128 + signal for a death
/// by a signal, as a shell reports it). `None` when no child has exited (or none is left).
pub(crate) fn reap_any() -> io::Result<Option<(u32, i32)>> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                return Ok(Some((pid.as_raw().unsigned_abs(), code)))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                return Ok(Some((pid.as_raw().unsigned_abs(), 128 + sig as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends signal `signal` to `pid`; one that is gone is not an error.
pub(crate) fn forward(pid: u32, signal: i32) {
    if let (Ok(pid), Ok(sig)) = (i32::try_from(pid), NixSignal::try_from(signal)) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Whether `pid` still exists (a zombie does).
pub(crate) fn exists(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None) != Err(Errno::ESRCH))
}

/// Tells the init process `pid` that this process is now a generation to wait for.
pub(crate) fn announce_to(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    kill(Pid::from_raw(pid), ANNOUNCE).map_err(io::Error::from)
}
