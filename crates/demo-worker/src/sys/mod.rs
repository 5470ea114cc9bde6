//! The demo worker's platform seam: the only module that chooses between Unix and Windows.
//!
//! Both backends provide, for shared mode:
//!
//! - `Listener::new(handover::Socket) -> Result<Listener, Box<dyn Error>>`: an inherited
//!   listening socket registered with the current tokio runtime (TCP; on Unix also Unix
//!   sockets), and `Listener::poll_accept(&self, cx) -> Poll<io::Result<socket2::Socket>>`;
//! - `stop_requested() -> io::Result<impl Future<Output = ()>>`: completes when the
//!   supervisor asks the worker to stop. Listening starts when it is called (inside the
//!   runtime), so a request that comes before the future is first polled is not lost.
//!
//! and, for `--misbehave stray-fds`, `send_with_stray_fds(&[u8], usize) -> io::Result<()>`:
//! sends a message as one well-formed frame on the inherited control channel, with that many
//! descriptors attached that the frame does not declare (Unix `SCM_RIGHTS`; `Unsupported` on
//! Windows, where sockets travel inline).
//!
//! Everything else (prefork, spawn, the other `--misbehave` modes) is the same code on both.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use self::windows::*;

#[cfg(not(any(unix, windows)))]
compile_error!("handover-demo-worker supports Unix and Windows only");
