//! The error type of the public API.

use std::io;

use crate::socket::SocketKind;

/// Everything that can go wrong while handing sockets over.
///
/// The blocking and the tokio APIs return the same type. Variants callers usually branch on
/// are named; anything else from the operating system is [`Error::Io`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed its end of the channel between two messages.
    #[error("the peer closed the channel")]
    PeerClosed,

    /// The operating system cut control data off: more sockets came than the receiver had
    /// room for (its socket limit), or its descriptor table was full. Every socket that did
    /// arrive has been closed, and the channel can no longer be used.
    #[error(
        "control data truncated: sockets were discarded after {received} arrived (raise the \
         receiver's socket limit, or its descriptor limit with `ulimit -n`)"
    )]
    Truncated {
        /// Sockets that arrived before the rest were cut off (and have now been closed).
        received: usize,
    },

    /// The peer sent bytes that are not a valid handover frame, or ended the stream inside one.
    /// Sockets received with it have been closed; the channel can no longer be used.
    #[error("protocol error from peer: {0}")]
    Protocol(String),

    /// A message over a size limit. On receive the channel can no longer be used; on send
    /// nothing was sent.
    #[error("message too large: {len} {what}, the limit is {max}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// How many there were.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// The process on the other end is not allowed by the channel's [`PeerPolicy`].
    ///
    /// [`PeerPolicy`]: crate::PeerPolicy
    #[error(
        "peer refused by policy: pid {pid:?}, uid {uid:?} (by default only the same user may \
         connect; widen it with PeerPolicy if that is intended)"
    )]
    PeerRejected {
        /// The peer's process id, where the OS reports it.
        pid: Option<u32>,
        /// The peer's user id, where the OS reports it.
        uid: Option<u32>,
    },

    /// The operation did not complete within its timeout.
    #[error("timed out waiting for the peer")]
    TimedOut,

    /// A socket was converted to a type it is not.
    #[error("wrong socket kind: expected {expected}, found {found}")]
    WrongKind {
        /// What the conversion needed.
        expected: SocketKind,
        /// What the socket is.
        found: SocketKind,
    },

    /// The environment does not describe inherited sockets as expected (missing or malformed
    /// `LISTEN_FDS`/`LISTEN_PID`/`HANDOVER_CHANNEL_FD`, or already taken by an earlier call).
    #[error("inherited sockets: {0}")]
    Inherit(String),

    /// An error from the operating system.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the library was doing when the operating system reported an error: the same
/// condition means different things at different steps (see [`Error::from_os`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum During {
    /// Sending or receiving on a connected channel.
    Transfer,
    /// Accepting a peer at a rendezvous.
    Accept,
    /// Opening the sockets a message described inline (Windows).
    OpenSockets,
}

impl Error {
    /// The one mapping from an OS error to the variants callers branch on: a broken or reset
    /// connection during a transfer is the peer gone; a refusal while accepting (Windows: the
    /// peer did not know the rendezvous secret) is a rejected peer; a bad inline socket record
    /// is a protocol error. Anything else stays [`Error::Io`].
    pub(crate) fn from_os(e: io::Error, during: During) -> Error {
        use io::ErrorKind as K;
        match (during, e.kind()) {
            (During::Transfer, K::BrokenPipe | K::ConnectionReset) => Error::PeerClosed,
            (During::Accept, K::PermissionDenied) => Error::PeerRejected { pid: None, uid: None },
            (During::OpenSockets, K::InvalidData) => Error::Protocol(e.to_string()),
            _ => Error::Io(e),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e {
            Error::Io(inner) => return inner,
            Error::PeerClosed => io::ErrorKind::UnexpectedEof,
            Error::Truncated { .. } | Error::Protocol(_) => io::ErrorKind::InvalidData,
            Error::TooLarge { .. } => io::ErrorKind::InvalidInput,
            Error::PeerRejected { .. } => io::ErrorKind::PermissionDenied,
            Error::TimedOut => io::ErrorKind::TimedOut,
            Error::WrongKind { .. } | Error::Inherit(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

impl From<crate::frame::DecodeError> for Error {
    fn from(e: crate::frame::DecodeError) -> Error {
        use crate::frame::DecodeError;
        match e {
            DecodeError::TooLarge { what, len, max } => Error::TooLarge { what, len, max },
            other => Error::Protocol(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_the_os_error() {
        let e = Error::Io(io::Error::from_raw_os_error(24));
        let io: io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(24));
        let io: io::Error = Error::TimedOut.into();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn os_errors_map_by_what_was_being_done() {
        let os = |kind| io::Error::new(kind, "x");
        use io::ErrorKind as K;
        for kind in [K::BrokenPipe, K::ConnectionReset] {
            assert!(matches!(Error::from_os(os(kind), During::Transfer), Error::PeerClosed));
            assert!(matches!(Error::from_os(os(kind), During::Accept), Error::Io(_)));
        }
        let e = Error::from_os(os(K::PermissionDenied), During::Accept);
        assert!(matches!(e, Error::PeerRejected { pid: None, uid: None }));
        let e = Error::from_os(os(K::PermissionDenied), During::Transfer);
        assert!(matches!(e, Error::Io(_)));
        let e = Error::from_os(os(K::InvalidData), During::OpenSockets);
        assert!(matches!(e, Error::Protocol(_)));
        let e = Error::from_os(os(K::InvalidData), During::Transfer);
        assert!(matches!(e, Error::Io(_)));
        let e = Error::from_os(os(K::WouldBlock), During::Transfer);
        assert!(matches!(e, Error::Io(e) if e.kind() == K::WouldBlock));
    }
}
