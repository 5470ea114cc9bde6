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
pub(crate) use self::socket::{fd_is_socket, socket_kind};
pub(crate) use self::spawn::{inherited_fds, spawn, Child};
pub(crate) use self::uds::{
    accept, bind, bind_abstract, connect, connect_abstract, current_uid, pair, peer_credentials,
    wait, Interest, RawChannel,
};

/// Descriptors travel out of band, so frames carry no inline handle data.
pub(crate) const INLINE_HANDLE_BYTES: usize = 0;

pub(crate) type RawListener = std::os::unix::net::UnixListener;
pub(crate) type OwnedSocket = std::os::fd::OwnedFd;
pub(crate) type BorrowedSocket<'a> = std::os::fd::BorrowedFd<'a>;
