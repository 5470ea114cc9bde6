//! Socket introspection.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::SocketKind;

/// Sets `FD_CLOEXEC` on `fd`.
pub(crate) fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fd is open (borrowed from an OwnedFd); F_SETFD takes an int flag.
    syscall!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// True if `fd` is open and is a socket.
pub(crate) fn fd_is_socket(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the borrow's lifetime and st is valid for writes.
    let ok = syscall!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }).is_ok();
    ok && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

/// A duplicate of descriptor 0 if it is a socket.
pub(crate) fn stdin_socket() -> io::Result<Option<OwnedFd>> {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    if !fd_is_socket(fd) {
        return Ok(None);
    }
    Ok(Some(fd.try_clone_to_owned()?))
}

/// Classifies a socket by family, type and whether it is listening.
pub(crate) fn socket_kind(socket: &socket2::Socket) -> io::Result<SocketKind> {
    let domain = socket.local_addr()?.domain();
    let ty = socket.r#type()?;
    let listening = is_listener(socket)?;
    Ok(SocketKind::classify(domain, ty, listening))
}

fn is_listener(socket: &socket2::Socket) -> io::Result<bool> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val and len are valid for writes and len holds the size of val.
    syscall!(unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(val != 0)
}
