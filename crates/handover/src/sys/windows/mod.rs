//! Windows backend: `WSADuplicateSocketW` protocol records carried inline in the frames, over
//! overlapped named pipes.
//!
//! A socket cannot be given to another process before that process is known:
//! `WSADuplicateSocketW(socket, target_pid, &info)` fills a 628-byte `WSAPROTOCOL_INFOW` valid
//! for `target_pid` only, which the target turns into its own socket with
//! `WSASocketW(FROM_PROTOCOL_INFO, …, &info, 0, WSA_FLAG_OVERLAPPED)`. So every channel end
//! knows its peer's pid before anything is sent: by construction for [`pair`] and
//! [`spawn`] (the pid `CreateProcessW` returns, the pid that created the inherited pipe), and
//! through a hello exchange for a rendezvous (see `named_pipe.rs`).

/// Turns a Windows return value for which `$fail(&res, &$value)` holds into
/// `io::Error::last_os_error()`, as socket2 does. `WSAGetLastError` and `GetLastError` read the
/// same per-thread slot, so one macro serves Win32 and Winsock calls alike.
///
/// The call itself is written at the call site, inside its own `unsafe` block with its own
/// `SAFETY:` comment: `syscall!(unsafe { CloseHandle(h) }, PartialEq::eq, 0)`.
macro_rules! syscall {
    ($call:expr, $fail:expr, $value:expr) => {{
        let res = $call;
        if $fail(&res, &$value) {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

mod handle;
mod job;
mod named_pipe;
mod overlapped;
mod spawn;
mod stdio;
mod wsa_duplicate;

crate::macros::cfg_tokio! {
    pub(crate) mod async_io;
}

pub(crate) use self::job::Job;
pub(crate) use self::named_pipe::{
    accept, bind, connect, current_uid, flush, pair, peer_credentials, recv, send, wait,
    RawChannel, RawListener,
};
pub(crate) use self::overlapped::Interest;
pub(crate) use self::spawn::{inherited, spawn, Child, CommandOptions};
pub(crate) use self::stdio::stdin_socket;
pub(crate) use self::wsa_duplicate::{
    encode_inline, socket_kind, sockets_from_inline, INLINE_HANDLE_BYTES,
};

/// Sockets per frame: each carries a 628-byte record, so 64 keep a frame near 40 KiB, inside
/// one pipe write.
pub(crate) const HANDLES_PER_FRAME: usize = 64;

/// Listening sockets given to a child travel as the first message on its channel.
pub(crate) const LISTEN_OVER_CHANNEL: bool = true;

pub(crate) type OwnedSocket = std::os::windows::io::OwnedSocket;
pub(crate) type OwnedFile = std::os::windows::io::OwnedHandle;
pub(crate) type BorrowedSocket<'a> = std::os::windows::io::BorrowedSocket<'a>;
