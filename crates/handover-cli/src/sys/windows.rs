//! Windows: not supported yet. The library's Windows backend is being built; until it lands,
//! every mode is refused with a clear error, and the rest compiles to stubs.

use std::io;
use std::path::Path;

use anyhow::{bail, Result};

use super::{Notify, Signal, Stop};
use crate::cli::Mode;

pub(crate) fn current_uid() -> u32 {
    0
}

pub(crate) fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory".to_owned());
    }
    Ok(())
}

pub(crate) fn check_mode(mode: Mode) -> Result<()> {
    match mode {
        Mode::Prefork | Mode::Shared | Mode::Spawn => bail!(
            "--mode {mode:?} is not supported on Windows yet (the handover library's Windows \
             backend is not built)"
        ),
    }
}

/// How a child is started (see the Unix backend); Windows: not built yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeKind {
    Worker,
    Connection,
    Successor,
}

/// A child and what it started.
#[derive(Debug)]
pub(crate) struct ProcessTree;

impl ProcessTree {
    pub(crate) fn signal(&self, _how: Stop) {}
}

pub(crate) fn spawn(
    cmd: &mut handover::Command<'_>,
    _kind: TreeKind,
) -> handover::Result<(handover::Child, ProcessTree)> {
    Ok((cmd.spawn()?, ProcessTree))
}

/// Children inherit only the handles named for them (`PROC_THREAD_ATTRIBUTE_HANDLE_LIST`).
pub(crate) fn close_inherited_on_exec() -> Result<()> {
    Ok(())
}

/// There is no systemd on Windows.
pub(crate) fn notify(_states: &[Notify<'_>]) {}

pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    // No inode; the modification time and length tell two files apart well enough here.
    let m = std::fs::symlink_metadata(path).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some((m.len(), t.as_nanos() as u64))
}

#[derive(Debug)]
pub(crate) struct Signals;

impl Signals {
    pub(crate) fn new() -> io::Result<Signals> {
        Ok(Signals)
    }

    pub(crate) async fn recv(&mut self) -> Signal {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}

#[derive(Debug)]
pub(crate) struct ChildExits;

impl ChildExits {
    pub(crate) fn new() -> io::Result<ChildExits> {
        Ok(ChildExits)
    }

    pub(crate) async fn recv(&mut self) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Stub: every mode is refused on Windows before a listener is registered (see `check_mode`).
#[derive(Debug)]
pub(crate) struct AsyncListener(#[allow(dead_code)] socket2::Socket);

impl AsyncListener {
    pub(crate) fn new(socket: socket2::Socket) -> io::Result<AsyncListener> {
        Ok(AsyncListener(socket))
    }

    pub(crate) fn try_accept(&self) -> io::Result<(socket2::Socket, socket2::SockAddr)> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(crate) fn poll_accept(
        &self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<(socket2::Socket, socket2::SockAddr)>> {
        std::task::Poll::Ready(Err(io::Error::from(io::ErrorKind::Unsupported)))
    }
}

pub(crate) fn is_socket_file(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Unix-domain listeners are not supported on Windows yet.
pub(crate) fn socket_path(_addr: &socket2::SockAddr) -> Option<std::path::PathBuf> {
    None
}

/// Windows has no signals: a process ended by `TerminateProcess` exits with the code its
/// killer chose, indistinguishable from its own exit, so every death counts as the program's.
pub(crate) fn killed_from_outside(_status: &std::process::ExitStatus) -> bool {
    false
}

/// Not read on Windows yet.
pub(crate) fn resident_memory(_pid: u32) -> io::Result<u64> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "resident memory is not read on Windows yet"))
}

/// The peer sees the end of the stream (no reset yet).
pub(crate) fn abort_connection(socket: &socket2::Socket) -> io::Result<()> {
    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
    socket.shutdown(std::net::Shutdown::Both)
}

/// Workers' output is not piped on Windows yet (the library cannot set a child's standard
/// handles there): `--worker-output prefix` falls back to inheriting.
#[derive(Debug)]
pub(crate) struct PipeWriter;

impl PipeWriter {
    pub(crate) fn stdio(&self) -> io::Result<std::process::Stdio> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

pub(crate) type PipeReader = tokio::io::Empty;

pub(crate) fn pipe() -> io::Result<(PipeWriter, PipeReader)> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
