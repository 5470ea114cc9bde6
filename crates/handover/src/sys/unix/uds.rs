//! The channel transport: non-blocking `AF_UNIX` stream sockets, rendezvous, peer credentials.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use crate::PeerCredentials;

/// A connected, non-blocking channel endpoint.
#[derive(Debug)]
pub(crate) struct RawChannel(UnixStream);

impl RawChannel {
    fn new(stream: UnixStream) -> io::Result<RawChannel> {
        // Blocking mode: each call chooses with or without MSG_DONTWAIT (see scm_rights.rs).
        // A program in another language that inherits the descriptor also expects it so.
        stream.set_nonblocking(false)?;
        #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
        socket2::SockRef::from(&stream).set_nosigpipe(true)?;
        Ok(RawChannel(stream))
    }

    /// Adopts a descriptor inherited from a parent.
    pub(crate) fn from_owned(fd: OwnedFd) -> io::Result<RawChannel> {
        RawChannel::new(UnixStream::from(fd))
    }
}

impl AsRawFd for RawChannel {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for RawChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// `socketpair(AF_UNIX, SOCK_STREAM)`, both ends close-on-exec.
pub(crate) fn pair() -> io::Result<(RawChannel, RawChannel)> {
    let (a, b) = UnixStream::pair()?;
    Ok((RawChannel::new(a)?, RawChannel::new(b)?))
}

/// Binds a listener at `path`, readable and writable by its owner only.
///
/// The mode is set between `bind` and `listen`, so no other user can connect in between.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// Binds a listener in the Linux abstract namespace (no file, no permissions: the peer check
/// is the only gate).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn bind_abstract(name: &[u8]) -> io::Result<UnixListener> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    UnixListener::bind_addr(&addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn bind_abstract(_name: &[u8]) -> io::Result<UnixListener> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract socket names exist on Linux only"))
}

/// Connects to a listener at `path`.
pub(crate) fn connect(path: &Path) -> io::Result<RawChannel> {
    RawChannel::new(UnixStream::connect(path)?)
}

/// Connects to a listener in the Linux abstract namespace.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn connect_abstract(name: &[u8]) -> io::Result<RawChannel> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    RawChannel::new(UnixStream::connect_addr(&addr)?)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn connect_abstract(_name: &[u8]) -> io::Result<RawChannel> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract socket names exist on Linux only"))
}

/// Accepts one connection (blocking unless the listener is non-blocking).
pub(crate) fn accept(listener: &UnixListener) -> io::Result<RawChannel> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => return RawChannel::new(stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The effective user id of this process.
pub(crate) fn current_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Who is on the other end, as the kernel recorded it at `connect`/`socketpair` time.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_credentials(ch: &RawChannel) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes and len holds the size of cred.
    syscall!(unsafe {
        libc::getsockopt(
            ch.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(PeerCredentials {
        pid: u32::try_from(cred.pid).ok().filter(|p| *p != 0),
        uid: Some(cred.uid),
        gid: Some(cred.gid),
    })
}

/// Who is on the other end (`getpeereid`, plus `LOCAL_PEERPID` on Apple systems).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer_credentials(ch: &RawChannel) -> io::Result<PeerCredentials> {
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: uid and gid are valid for writes.
    syscall!(unsafe { libc::getpeereid(ch.as_raw_fd(), &mut uid, &mut gid) })?;
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    let pid = {
        let mut pid: libc::pid_t = 0;
        let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
        // SAFETY: pid and len are valid for writes and len holds the size of pid.
        syscall!(unsafe {
            libc::getsockopt(
                ch.as_raw_fd(),
                libc::SOL_LOCAL,
                libc::LOCAL_PEERPID,
                (&mut pid as *mut libc::pid_t).cast(),
                &mut len,
            )
        })
        .ok()
        .and_then(|_| u32::try_from(pid).ok())
    };
    #[cfg(not(any(target_os = "macos", target_os = "ios")))]
    let pid = None;
    Ok(PeerCredentials { pid, uid: Some(uid), gid: Some(gid) })
}

/// What to wait for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Interest {
    Readable,
    Writable,
}

/// Blocks until the channel is ready, or the deadline passes (`Ok(false)`).
pub(crate) fn wait(
    ch: &RawChannel,
    interest: Interest,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let events = match interest {
        Interest::Readable => libc::POLLIN,
        Interest::Writable => libc::POLLOUT,
    };
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                // Round up so a sub-millisecond remainder does not spin.
                left.as_millis().saturating_add(1).min(i32::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd { fd: ch.as_raw_fd(), events, revents: 0 };
        // SAFETY: pfd is one valid pollfd.
        match syscall!(unsafe { libc::poll(&mut pfd, 1, timeout) }) {
            Ok(0) => continue,
            // Readable, writable, hang-up or error: the next call reports which.
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
