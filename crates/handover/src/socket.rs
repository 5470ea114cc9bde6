//! The portable owned socket that crosses process boundaries, and the borrowed form it is sent as.

use std::fmt;
use std::net::{TcpListener, TcpStream, UdpSocket};

use crate::{sys, Error, Result};

/// What kind of socket a [`Socket`] is, read from the socket itself.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// A listening TCP socket.
    TcpListener,
    /// A connected (or unconnected) TCP stream socket that is not listening.
    TcpStream,
    /// A UDP socket.
    Udp,
    /// A listening Unix-domain stream socket.
    UnixListener,
    /// A Unix-domain stream socket that is not listening.
    UnixStream,
    /// A Unix-domain datagram socket.
    UnixDatagram,
    /// Anything else (raw, SCTP, `SOCK_SEQPACKET`, …).
    Other,
}

impl SocketKind {
    pub(crate) fn classify(
        domain: socket2::Domain,
        ty: socket2::Type,
        listening: bool,
    ) -> SocketKind {
        use socket2::{Domain, Type};
        let inet = domain == Domain::IPV4 || domain == Domain::IPV6;
        match (inet, domain == Domain::UNIX, ty, listening) {
            (true, _, Type::STREAM, true) => SocketKind::TcpListener,
            (true, _, Type::STREAM, false) => SocketKind::TcpStream,
            (true, _, Type::DGRAM, _) => SocketKind::Udp,
            (_, true, Type::STREAM, true) => SocketKind::UnixListener,
            (_, true, Type::STREAM, false) => SocketKind::UnixStream,
            (_, true, Type::DGRAM, _) => SocketKind::UnixDatagram,
            _ => SocketKind::Other,
        }
    }
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketKind::TcpListener => "TCP listener",
            SocketKind::TcpStream => "TCP stream",
            SocketKind::Udp => "UDP socket",
            SocketKind::UnixListener => "Unix listener",
            SocketKind::UnixStream => "Unix stream",
            SocketKind::UnixDatagram => "Unix datagram socket",
            SocketKind::Other => "other socket",
        })
    }
}

/// An owned socket received from (or about to be given to) another process.
///
/// Convert it to the type you need with `TryFrom` (checked against [`Socket::kind`]) or
/// [`Socket::into_socket2`]; build one from any std, socket2 or tokio socket with `From`.
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// let (parent, child) = handover::Channel::pair()?;
/// let msg = child.recv()?;
/// for socket in msg.sockets {
///     let stream = std::net::TcpStream::try_from(socket)?;
///     println!("serving {}", stream.peer_addr()?);
/// }
/// # drop(parent); Ok(()) }
/// ```
pub struct Socket {
    inner: socket2::Socket,
}

impl Socket {
    pub(crate) fn from_sys(owned: sys::OwnedSocket) -> Socket {
        Socket { inner: socket2::Socket::from(owned) }
    }

    pub(crate) fn into_sys(self) -> sys::OwnedSocket {
        self.inner.into()
    }

    /// What kind of socket this is: family, type and whether it is listening.
    pub fn kind(&self) -> Result<SocketKind> {
        Ok(sys::socket_kind(&self.inner)?)
    }

    /// Borrows it for sending.
    pub fn as_socket_ref(&self) -> SocketRef<'_> {
        AsSocketRef::as_socket_ref(&self.inner)
    }

    /// The socket as a [`socket2::Socket`], for options and conversions this crate lacks.
    pub fn into_socket2(self) -> socket2::Socket {
        self.inner
    }

    /// Duplicates the socket within this process.
    pub fn try_clone(&self) -> Result<Socket> {
        Ok(Socket { inner: self.inner.try_clone()? })
    }

    /// Moves the socket in or out of non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        Ok(self.inner.set_nonblocking(nonblocking)?)
    }

    fn expect(self, expected: SocketKind) -> Result<socket2::Socket> {
        let found = self.kind()?;
        if found != expected {
            return Err(Error::WrongKind { expected, found });
        }
        Ok(self.inner)
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("kind", &self.kind().ok())
            .field("local", &self.inner.local_addr().ok().and_then(|a| a.as_socket()))
            .finish()
    }
}

impl From<socket2::Socket> for Socket {
    fn from(inner: socket2::Socket) -> Socket {
        Socket { inner }
    }
}

impl From<Socket> for socket2::Socket {
    fn from(s: Socket) -> socket2::Socket {
        s.inner
    }
}

macro_rules! std_conversions {
    ($($ty:ty => $kind:expr),* $(,)?) => {$(
        impl From<$ty> for Socket {
            fn from(s: $ty) -> Socket {
                Socket { inner: socket2::Socket::from(s) }
            }
        }

        impl TryFrom<Socket> for $ty {
            type Error = Error;

            /// Checks the socket's kind, then converts.
            fn try_from(s: Socket) -> Result<$ty> {
                Ok(<$ty>::from(s.expect($kind)?))
            }
        }
    )*};
}

std_conversions! {
    TcpListener => SocketKind::TcpListener,
    TcpStream => SocketKind::TcpStream,
    UdpSocket => SocketKind::Udp,
}

/// A socket borrowed for sending: any std, socket2 or tokio socket (or a [`Socket`]) turns
/// into one through [`AsSocketRef`].
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// use handover::AsSocketRef;
/// let (parent, _child) = handover::Channel::pair()?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// parent.send(b"listener", &[listener.as_socket_ref()])?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SocketRef<'a>(pub(crate) sys::BorrowedSocket<'a>);

/// Types that can lend their socket for sending.
///
/// Implemented for everything that implements `AsFd` on Unix and `AsSocket` on Windows: std,
/// socket2 and tokio sockets, [`Socket`] itself.
pub trait AsSocketRef {
    /// Borrows the socket.
    fn as_socket_ref(&self) -> SocketRef<'_>;
}

#[cfg(unix)]
impl<T: std::os::fd::AsFd> AsSocketRef for T {
    fn as_socket_ref(&self) -> SocketRef<'_> {
        SocketRef(self.as_fd())
    }
}

#[cfg(windows)]
impl<T: std::os::windows::io::AsSocket> AsSocketRef for T {
    fn as_socket_ref(&self) -> SocketRef<'_> {
        SocketRef(self.as_socket())
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

#[cfg(unix)]
impl From<std::os::fd::OwnedFd> for Socket {
    /// Adopts a descriptor. It is not checked to be a socket: [`Socket::kind`] will say.
    fn from(fd: std::os::fd::OwnedFd) -> Socket {
        Socket::from_sys(fd)
    }
}

#[cfg(unix)]
impl From<Socket> for std::os::fd::OwnedFd {
    fn from(s: Socket) -> std::os::fd::OwnedFd {
        s.into_sys()
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Socket {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        self.inner.as_socket()
    }
}

#[cfg(windows)]
impl From<std::os::windows::io::OwnedSocket> for Socket {
    fn from(s: std::os::windows::io::OwnedSocket) -> Socket {
        Socket::from_sys(s)
    }
}

#[cfg(windows)]
impl From<Socket> for std::os::windows::io::OwnedSocket {
    fn from(s: Socket) -> std::os::windows::io::OwnedSocket {
        s.into_sys()
    }
}

crate::macros::cfg_tokio! {
    crate::macros::tokio_conversions! {
        tokio::net::TcpListener => TcpListener,
        tokio::net::TcpStream => TcpStream,
        tokio::net::UdpSocket => UdpSocket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Socket>();
        assert_send_sync::<SocketRef<'_>>();
        assert_send_sync::<SocketKind>();
    }

    #[test]
    fn kinds_and_checked_conversions() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let l = Socket::from(listener);
        let s = Socket::from(stream);
        let u = Socket::from(udp);
        assert_eq!(l.kind().unwrap(), SocketKind::TcpListener);
        assert_eq!(s.kind().unwrap(), SocketKind::TcpStream);
        assert_eq!(u.kind().unwrap(), SocketKind::Udp);
        match TcpStream::try_from(l) {
            Err(Error::WrongKind { expected, found }) => {
                assert_eq!((expected, found), (SocketKind::TcpStream, SocketKind::TcpListener));
            }
            other => panic!("expected WrongKind, got {other:?}"),
        }
        assert!(UdpSocket::try_from(u).is_ok());
    }
}
