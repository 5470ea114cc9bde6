//! tokio glue: the same overlapped engine, with readiness waits on the blocking pool.
//!
//! The pipe's I/O is the sync engine's (`overlapped.rs`): a `WouldBlock` there means a read or
//! write is in flight, and its event is signalled when it completes. Waiting for that event
//! happens on tokio's blocking pool (on a duplicate of the event handle, so a wait never keeps
//! the pipe open), and the operation is retried. A cancelled future leaves at most one pool
//! thread waiting until the operation completes or the channel is dropped (which cancels it).
//! The pipe handle is never registered with tokio's completion port, so a channel converts
//! back and forth between the blocking and the async API freely.

use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::named_pipe::{accept_until, RawChannel, RawListener};
use super::spawn::Child;
use super::overlapped::{wait_event, Interest};

/// Registering outside a runtime would panic; report it instead.
pub(crate) fn require_runtime() -> io::Result<()> {
    tokio::runtime::Handle::try_current().map(drop).map_err(|_| {
        io::Error::other("not inside a tokio runtime with I/O enabled: call from within one")
    })
}

/// A [`RawChannel`] driven from async code.
#[derive(Debug)]
pub(crate) struct AsyncChannel(RawChannel);

async fn wait_for(event: OwnedHandle) -> io::Result<()> {
    tokio::task::spawn_blocking(move || wait_event(&event, None).map(drop))
        .await
        .map_err(|e| io::Error::other(format!("readiness wait failed: {e}")))?
}

impl AsyncChannel {
    pub(crate) fn new(raw: RawChannel) -> io::Result<AsyncChannel> {
        require_runtime()?;
        Ok(AsyncChannel(raw))
    }

    pub(crate) fn into_inner(self) -> RawChannel {
        self.0
    }

    pub(crate) fn raw(&self) -> &RawChannel {
        &self.0
    }

    async fn ready<R>(
        &self,
        interest: Interest,
        mut f: impl FnMut(&RawChannel) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match f(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let event = self.0.pipe().event(interest)?;
                    debug_assert!(!event.as_raw_handle().is_null());
                    wait_for(event).await?;
                }
                other => return other,
            }
        }
    }

    /// Runs `f` until it does not return `WouldBlock`, waiting for the pending read between.
    pub(crate) async fn readable<R>(
        &self,
        f: impl FnMut(&RawChannel) -> io::Result<R>,
    ) -> io::Result<R> {
        self.ready(Interest::Readable, f).await
    }

    /// As [`readable`](Self::readable), for writing.
    pub(crate) async fn writable<R>(
        &self,
        f: impl FnMut(&RawChannel) -> io::Result<R>,
    ) -> io::Result<R> {
        self.ready(Interest::Writable, f).await
    }
}

/// A channel listener whose accepts run on the blocking pool.
#[derive(Debug)]
pub(crate) struct AsyncListener(Arc<RawListener>);

/// Tells an abandoned accept on the blocking pool to stop at its next check.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl AsyncListener {
    pub(crate) fn new(listener: RawListener) -> io::Result<AsyncListener> {
        require_runtime()?;
        Ok(AsyncListener(Arc::new(listener)))
    }

    pub(crate) async fn accept(&self) -> io::Result<RawChannel> {
        let listener = Arc::clone(&self.0);
        let stop = Arc::new(AtomicBool::new(false));
        let _guard = StopOnDrop(Arc::clone(&stop));
        tokio::task::spawn_blocking(move || loop {
            if stop.load(Ordering::SeqCst) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "accept abandoned"));
            }
            if let Some(ch) =
                accept_until(&listener, Some(Instant::now() + Duration::from_millis(200)))?
            {
                return Ok(ch);
            }
        })
        .await
        .map_err(|e| io::Error::other(format!("accept task failed: {e}")))?
    }
}

/// Waits for `child` to exit without blocking the runtime's threads: a pool thread waits on a
/// duplicate of the process handle (if the future is dropped, that thread waits on until the
/// child exits).
pub(crate) async fn wait_child(child: &mut Child) -> io::Result<std::process::ExitStatus> {
    require_runtime()?;
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let process = child.process().try_clone()?;
    tokio::task::spawn_blocking(move || wait_event(&process, None).map(drop))
        .await
        .map_err(|e| io::Error::other(format!("wait for the child failed: {e}")))??;
    child.wait() // it has exited: this returns at once
}
