//! Hand live sockets — listeners and accepted connections — from one process to another.
//!
//! A classic multi-process server accepts a connection in one process and serves it in
//! another. `handover` does that safely on Unix (`SCM_RIGHTS`) and on Windows
//! (`WSADuplicateSocketW` records over named pipes) behind one portable API:
//!
//! - [`Channel`]: a connected endpoint carrying messages of bytes plus sockets, made by
//!   [`Channel::pair`], a [`ChannelListener`] rendezvous, or inherited at spawn.
//! - [`Socket`]: an owned socket of any kind, converted to and from `std::net`, `socket2` and
//!   (feature `tokio`) tokio types, checked against its real [`SocketKind`].
//! - [`Command`]: spawn a child that starts with exactly the sockets you name — systemd-style
//!   descriptors, inetd-style stdio, or a channel — and [`inherited`] to pick them up.
//! - [`tokio`] (feature `tokio`): the async channel.
//!
//! Secure by default: a rendezvous admits only peers running as the same user
//! ([`PeerPolicy`]), every received descriptor is owned (and close-on-exec) before anything can
//! fail, and truncated control data or a malformed frame closes what arrived and returns an
//! error.
//!
//! ```no_run
//! # fn main() -> handover::Result<()> {
//! use handover::{AsSocketRef, Command};
//!
//! // Parent: accept, then give the connection to a child process that serves it.
//! let listener = std::net::TcpListener::bind("127.0.0.1:7000")?;
//! let (stream, _) = listener.accept()?;
//! let mut child = Command::new("./serve-one").stdio_socket(stream.as_socket_ref()).spawn()?;
//! drop(stream); // the child has its own copy now
//! child.wait()?;
//! # Ok(()) }
//! ```
//!
//! The wire format and ownership rules are in `docs/protocol.md`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]
#![doc(test(attr(deny(warnings))))]

mod macros;

mod channel;
mod error;
mod frame;
mod socket;
mod spawn;
mod stdio;
#[allow(unsafe_code)]
mod sys;

#[cfg(unix)]
pub mod unix;
#[cfg(windows)]
pub mod windows;

macros::cfg_tokio! {
    pub mod tokio;
}

pub use crate::channel::{
    Channel, ChannelListener, Message, PeerCredentials, PeerPolicy, SendStatus,
    DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_SOCKETS,
};
pub use crate::error::{Error, Result};
pub use crate::socket::{AsSocketRef, Socket, SocketKind, SocketRef};
pub use crate::spawn::{inherited, stdin_socket, Child, Command, Inherited};
pub use crate::stdio::Stdio;

/// Entry points for the fuzz targets; not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    /// Decodes `bytes` as a stream of frames with `handles` descriptors delivered up front.
    pub fn decode(bytes: &[u8], handles: usize) -> Result<usize, String> {
        crate::frame::decode_all(bytes, handles)
    }
}
