//! Unix: TCP and Unix-socket listeners; `SIGTERM` asks for a stop.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use handover::SocketKind;
use tokio::signal::unix::{signal, SignalKind};

pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub(crate) fn new(l: handover::Socket) -> Result<Listener, Box<dyn std::error::Error>> {
        Ok(match l.kind()? {
            SocketKind::UnixListener => Listener::Unix(l.try_into()?),
            _ => Listener::Tcp(l.try_into()?),
        })
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<socket2::Socket>> {
        match self {
            Listener::Tcp(t) => t
                .poll_accept(cx)
                .map(|r| r.and_then(|(s, _)| s.into_std()).map(socket2::Socket::from)),
            Listener::Unix(u) => u
                .poll_accept(cx)
                .map(|r| r.and_then(|(s, _)| s.into_std()).map(socket2::Socket::from)),
        }
    }
}

pub(crate) fn stop_requested() -> io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        term.recv().await;
    })
}

/// Sends `payload` as one frame that declares no sockets (the wire format of
/// docs/protocol.md: magic, version 1, kind 1, no flags, lengths), on the control channel
/// inherited as `HANDOVER_CHANNEL_FD`, with `count` descriptors of `/dev/null` attached, as a
/// hostile or buggy worker could.
pub(crate) fn send_with_stray_fds(payload: &[u8], count: usize) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd: i32 = std::env::var("HANDOVER_CHANNEL_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no HANDOVER_CHANNEL_FD"))?;
    let mut frame = Vec::with_capacity(16 + payload.len());
    frame.extend_from_slice(b"HNDV");
    frame.extend_from_slice(&[1, 1, 0, 0]);
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(payload);
    let files =
        (0..count).map(|_| std::fs::File::open("/dev/null")).collect::<io::Result<Vec<_>>>()?;
    let fds: Vec<i32> = files.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = sendmsg::<UnixAddr>(
        fd,
        &[io::IoSlice::new(&frame)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    if sent != frame.len() {
        return Err(io::Error::other(format!("short write: {sent} of {} bytes", frame.len())));
    }
    Ok(())
}
