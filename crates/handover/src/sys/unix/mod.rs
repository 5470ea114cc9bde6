//! Unix backend: `SCM_RIGHTS` over `AF_UNIX` stream sockets.

/// Turns a libc return value of `-1` into `io::Error::last_os_error()`.
///
/// The call itself is written at the call site, inside its own `unsafe` block with its own
/// `SAFETY:` comment: `syscall!(unsafe { libc::close(fd) })`.
macro_rules! syscall {
    ($call:expr) => {{
        let res = $call;
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

mod scm_rights;
mod socket;
mod spawn;
mod uds;

crate::macros::cfg_tokio! {
    pub(crate) mod async_io;
}

pub(crate) use self::scm_rights::{recv, send, HANDLES_PER_FRAME};
pub(crate) use self::socket::{socket_kind, stdin_socket};
pub(crate) use self::spawn::{inherited, mark_cloexec_from, spawn, Child, CommandOptions};
pub(crate) use self::uds::{
    accept, bind, bind_abstract, connect, connect_abstract, current_uid, pair, peer_credentials,
    wait, Interest, RawChannel,
};

/// Descriptors travel out of band, so frames carry no inline handle data.
pub(crate) const INLINE_HANDLE_BYTES: usize = 0;

/// Listening sockets reach a child as descriptors, not over its channel.
pub(crate) const LISTEN_OVER_CHANNEL: bool = false;

/// A completed `sendmsg` has handed its bytes to the kernel: nothing is ever in flight.
pub(crate) fn flush(_ch: &RawChannel) -> std::io::Result<()> {
    Ok(())
}

/// Descriptors travel out of band: nothing to write inline.
pub(crate) fn encode_inline<'a>(
    _ch: &RawChannel,
    _out: &mut Vec<u8>,
    _sockets: impl Iterator<Item = BorrowedSocket<'a>>,
) -> std::io::Result<()> {
    Ok(())
}

/// Descriptors travel out of band: frames carry no inline data (the decoder is configured
/// with `INLINE_HANDLE_BYTES = 0`, so `inline` is always empty).
pub(crate) fn sockets_from_inline(
    inline: &[u8],
    _out: &mut Vec<OwnedSocket>,
) -> std::io::Result<()> {
    debug_assert!(inline.is_empty());
    Ok(())
}

pub(crate) type RawListener = std::os::unix::net::UnixListener;
pub(crate) type OwnedSocket = std::os::fd::OwnedFd;
pub(crate) type OwnedFile = std::os::fd::OwnedFd;
pub(crate) type BorrowedSocket<'a> = std::os::fd::BorrowedFd<'a>;
