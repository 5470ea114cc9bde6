//! The supervisor's platform seam: the only module that chooses between Unix and Windows.
//!
//! Both backends provide:
//!
//! - `current_uid() -> u32` (for the default control socket path);
//! - `check_executable(&Path) -> Result<(), String>`;
//! - `check_mode(Mode) -> anyhow::Result<()>`: refuses a mode this platform cannot run yet;
//! - `prepare_child(&mut handover::Command)`: its own process group (Unix), so the whole tree
//!   can be signalled;
//! - `signal_group(pid, Kill | Terminate)`;
//! - `Signals::new()?` and `Signals::recv().await -> Signal`: terminate, interrupt, reload,
//!   child-exited notifications.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use self::windows::*;

#[cfg(not(any(unix, windows)))]
compile_error!("the handover supervisor supports Unix and Windows only");

/// What to send a worker's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Ask it to exit (`SIGTERM`).
    Terminate,
    /// End it now (`SIGKILL`).
    Kill,
}

/// A signal (or console event) the supervisor acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(windows, allow(dead_code))] // Windows only has Ctrl-C so far
pub(crate) enum Signal {
    /// `SIGTERM`: drain and exit.
    Terminate,
    /// `SIGINT` (Ctrl-C): drain and exit.
    Interrupt,
    /// `SIGHUP`: restart the workers one at a time.
    Reload,
}

impl Signal {
    /// The signal number reported in an exit status (128 + n).
    pub(crate) fn number(self) -> i32 {
        match self {
            Signal::Terminate => 15,
            Signal::Interrupt => 2,
            Signal::Reload => 1,
        }
    }
}
