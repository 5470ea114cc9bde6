//! The inetd-style child's side: the socket `spawn` made its standard input.

use std::io;
use std::mem::size_of;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedSocket, OwnedSocket, RawSocket};

use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
use windows_sys::Win32::Networking::WinSock::{
    getsockname, SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR,
};

use super::wsa_duplicate::init;

/// A duplicate of the standard input handle if it is a bound socket.
pub(crate) fn stdin_socket() -> io::Result<Option<OwnedSocket>> {
    init();
    let stdin = io::stdin();
    let handle = stdin.as_handle();
    let raw = handle.as_raw_handle();
    if raw.is_null() || raw == INVALID_HANDLE_VALUE || !is_bound_socket(raw as SOCKET) {
        return Ok(None);
    }
    // SAFETY: the handle is a socket (above) and stays open while `handle` borrows `stdin`
    // (std's `AsHandle for Stdin`); the borrowed socket does not outlive it.
    let socket = unsafe { BorrowedSocket::borrow_raw(raw as RawSocket) };
    // WSADuplicateSocketW for this process: overlapped, not inheritable.
    Ok(Some(socket.try_clone_to_owned()?))
}

/// `getsockname` fails with `WSAENOTSOCK` on consoles, files and pipes (and `WSAEINVAL` on an
/// unbound socket). Not `getsockopt(SO_TYPE)`: Wine answers that only for sockets this process
/// created, so an inherited socket would look like no socket there.
fn is_bound_socket(raw: SOCKET) -> bool {
    // SAFETY: SOCKADDR_STORAGE is plain old data, for which all-zero is a valid value.
    let mut addr: SOCKADDR_STORAGE = unsafe { std::mem::zeroed() };
    let mut len = size_of::<SOCKADDR_STORAGE>() as i32;
    syscall!(
        // SAFETY: addr and len are valid for writes and len holds the size of addr; any handle
        // value is accepted (one that is not a socket is an error).
        unsafe { getsockname(raw, (&mut addr as *mut SOCKADDR_STORAGE).cast(), &mut len) },
        PartialEq::eq,
        SOCKET_ERROR
    )
    .is_ok()
}
