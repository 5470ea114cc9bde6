//! Unix-only extensions.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

use crate::{
    sys, Channel, ChannelListener, Command, Error, PeerPolicy, Result, Socket, SocketKind,
};

/// Linux abstract-namespace rendezvous for [`ChannelListener`].
pub trait ChannelListenerExt: Sized {
    /// Binds `name` in the Linux abstract namespace: no file to clean up and no file
    /// permissions, so the peer policy is the only gate (by default: same user).
    ///
    /// # Platform-specific behavior
    ///
    /// Linux and Android only; elsewhere this returns an `Unsupported` error.
    fn bind_abstract(name: &[u8]) -> Result<Self>;
}

impl ChannelListenerExt for ChannelListener {
    fn bind_abstract(name: &[u8]) -> Result<ChannelListener> {
        Ok(ChannelListener::from_raw(sys::bind_abstract(name)?))
    }
}

/// Unix-only operations on a [`Channel`]: Linux abstract-namespace rendezvous, and the
/// channel's descriptor for readiness.
pub trait ChannelExt: Sized {
    /// Connects to a listener bound with [`ChannelListenerExt::bind_abstract`], checking its
    /// owner against `policy`.
    fn connect_abstract(name: &[u8], policy: &PeerPolicy) -> Result<Self>;

    /// The channel's socket, to register with an event loop (`epoll`, `kqueue`, tokio's
    /// `AsyncFd`) and learn when a message may be waiting or room to send has come. Read and
    /// write through the channel's own methods only ([`Channel::try_recv_into`],
    /// [`Channel::try_send`]): a byte read or written past them breaks the framing.
    ///
    /// ```no_run
    /// use handover::unix::ChannelExt;
    /// # fn main() -> handover::Result<()> {
    /// let (ours, _theirs) = handover::Channel::pair()?;
    /// let fd = ours.readiness_fd(); // e.g. for poll(2) with POLLIN
    /// # let _ = fd; Ok(()) }
    /// ```
    fn readiness_fd(&self) -> BorrowedFd<'_>;
}

impl ChannelExt for Channel {
    fn connect_abstract(name: &[u8], policy: &PeerPolicy) -> Result<Channel> {
        let raw = sys::connect_abstract(name)?;
        let peer = policy.check(&raw)?;
        Ok(Channel::from_raw(raw, peer))
    }

    fn readiness_fd(&self) -> BorrowedFd<'_> {
        self.raw().as_fd()
    }
}

/// Unix process options for [`Command`].
pub trait CommandExt {
    /// Runs the child as user `uid` (the parent needs the privilege to do so). A parent
    /// running as root also drops the child's supplementary groups (`setgroups(0)`, as
    /// `std::process::Command` does), so it keeps none of root's.
    fn uid(&mut self, uid: u32) -> &mut Self;
    /// Runs the child as group `gid`.
    fn gid(&mut self, gid: u32) -> &mut Self;
    /// Sets the child's file mode creation mask ([`umask(2)`](https://man7.org/linux/man-pages/man2/umask.2.html))
    /// between `fork` and `exec`; this process's own is left alone.
    fn umask(&mut self, mask: u32) -> &mut Self;
    /// Puts the child in process group `pgroup` (0: a new group led by the child).
    fn process_group(&mut self, pgroup: i32) -> &mut Self;
    /// Trusts that every descriptor of this process not given to the child is close-on-exec,
    /// instead of making sure of it in the child (the default).
    ///
    /// Rust's standard library, socket2, tokio and this crate open every descriptor
    /// close-on-exec; [`set_cloexec_from`] covers what the process inherited or opened
    /// otherwise. With nothing left to do between `fork` and `exec` (no sockets passed by
    /// descriptor number or channel, so no `LISTEN_PID` to write, and no
    /// [`die_with_parent`](Command::die_with_parent)), the child is then started with
    /// `posix_spawn`, which does not copy this process's page tables the way `fork` does:
    /// cheaper for a process that spawns often. An inheritable descriptor this process has
    /// does leak into such a child.
    fn trust_cloexec(&mut self, yes: bool) -> &mut Self;
}

impl CommandExt for Command<'_> {
    fn uid(&mut self, uid: u32) -> &mut Self {
        self.os.uid = Some(uid);
        self
    }
    fn gid(&mut self, gid: u32) -> &mut Self {
        self.os.gid = Some(gid);
        self
    }
    fn umask(&mut self, mask: u32) -> &mut Self {
        self.os.umask = Some(mask & 0o777);
        self
    }
    fn process_group(&mut self, pgroup: i32) -> &mut Self {
        self.os.process_group = Some(pgroup);
        self
    }
    fn trust_cloexec(&mut self, yes: bool) -> &mut Self {
        self.os.trust_cloexec = yes;
        self
    }
}

/// Marks every descriptor of this process from `first` up close-on-exec (one `close_range`
/// on Linux 5.11 and later, else one `fcntl` per possible descriptor).
///
/// Call it once at start-up, before opening anything meant to be inherited, so that what
/// this process inherited does not leak into the children it spawns with
/// [`CommandExt::trust_cloexec`].
pub fn set_cloexec_from(first: std::os::fd::RawFd) -> Result<()> {
    Ok(sys::mark_cloexec_from(first)?)
}

/// Unix-only operations on a spawned [`crate::Child`].
pub trait ChildExt {
    /// The child as a `std::process::Child`.
    fn into_std(self) -> std::process::Child;
}

impl ChildExt for crate::Child {
    fn into_std(self) -> std::process::Child {
        self.into_inner().into_std()
    }
}

macro_rules! unix_conversions {
    ($($ty:ty => $kind:expr),* $(,)?) => {$(
        impl From<$ty> for Socket {
            fn from(s: $ty) -> Socket {
                Socket::from(std::os::fd::OwnedFd::from(s))
            }
        }

        impl TryFrom<Socket> for $ty {
            type Error = Error;

            /// Checks the socket's kind, then converts.
            fn try_from(s: Socket) -> Result<$ty> {
                let found = s.kind()?;
                if found != $kind {
                    return Err(Error::WrongKind { expected: $kind, found });
                }
                Ok(<$ty>::from(std::os::fd::OwnedFd::from(s)))
            }
        }
    )*};
}

unix_conversions! {
    UnixListener => SocketKind::UnixListener,
    UnixStream => SocketKind::UnixStream,
    UnixDatagram => SocketKind::UnixDatagram,
}

/// The socket on standard input, for programs started inetd style
/// ([`Command::stdio_socket`], inetd, `systemd Accept=yes`): a duplicate of descriptor 0, or
/// `None` if standard input is not a socket. The same as the portable
/// [`crate::stdin_socket`].
pub fn stdin_socket() -> Result<Option<Socket>> {
    crate::stdin_socket()
}

crate::macros::cfg_tokio! {
    crate::macros::tokio_conversions! {
        tokio::net::UnixListener => UnixListener,
        tokio::net::UnixStream => UnixStream,
        tokio::net::UnixDatagram => UnixDatagram,
    }
}
