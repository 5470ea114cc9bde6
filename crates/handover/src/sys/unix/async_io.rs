//! tokio glue: the channel and listener registered with the reactor through `AsyncFd`.

use std::io;
use std::os::unix::net::UnixListener;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::spawn::Child;
use super::uds::RawChannel;

/// Registering outside a runtime would panic; report it instead.
pub(crate) fn require_runtime() -> io::Result<()> {
    tokio::runtime::Handle::try_current().map(drop).map_err(|_| {
        io::Error::other("not inside a tokio runtime with I/O enabled: call from within one")
    })
}

/// A [`RawChannel`] registered with the current tokio runtime.
#[derive(Debug)]
pub(crate) struct AsyncChannel(AsyncFd<RawChannel>);

impl AsyncChannel {
    pub(crate) fn new(raw: RawChannel) -> io::Result<AsyncChannel> {
        require_runtime()?;
        // SAFETY: RawChannel owns its descriptor, which stays open and unchanged until the
        // AsyncFd is dropped or `into_inner` gives it back.
        Ok(AsyncChannel(unsafe { AsyncFd::register(raw) }?))
    }

    pub(crate) fn into_inner(self) -> RawChannel {
        self.0.into_inner()
    }

    pub(crate) fn raw(&self) -> &RawChannel {
        self.0.get_ref()
    }

    /// Runs `f` until it does not return `WouldBlock`, waiting for readiness in between.
    /// `f` must return `WouldBlock` only when the system call did.
    pub(crate) async fn readable<R>(&self, mut f: impl FnMut(&RawChannel) -> io::Result<R>) -> io::Result<R> {
        self.0.async_io(Interest::READABLE, |raw| f(raw)).await
    }

    /// As [`readable`](Self::readable), for writing.
    pub(crate) async fn writable<R>(&self, mut f: impl FnMut(&RawChannel) -> io::Result<R>) -> io::Result<R> {
        self.0.async_io(Interest::WRITABLE, |raw| f(raw)).await
    }
}

/// A channel listener registered with the current tokio runtime.
#[derive(Debug)]
pub(crate) struct AsyncListener(AsyncFd<UnixListener>);

impl AsyncListener {
    pub(crate) fn new(listener: UnixListener) -> io::Result<AsyncListener> {
        require_runtime()?;
        listener.set_nonblocking(true)?;
        // SAFETY: the UnixListener owns its descriptor, which stays open and unchanged until
        // the AsyncFd is dropped.
        Ok(AsyncListener(unsafe { AsyncFd::register(listener) }?))
    }

    pub(crate) async fn accept(&self) -> io::Result<RawChannel> {
        self.0.async_io(Interest::READABLE, super::uds::accept).await
    }
}

/// Waits for `child` to exit without blocking the thread: looks again at every `SIGCHLD`.
pub(crate) async fn wait_child(child: &mut Child) -> io::Result<std::process::ExitStatus> {
    require_runtime()?;
    // Listen before looking, so an exit between the look and the wait is not missed.
    let mut exits = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if exits.recv().await.is_none() {
            return child.wait(); // no more signals will come (the runtime is going away)
        }
    }
}
