//! The worker protocol's messages: fixed little-endian layouts, parsed without allocating.
//!
//! Every message travels as the payload of one handover frame (see `docs/protocol.md`); this
//! module only knows payloads. Each payload opens with a type byte and the protocol version,
//! so garbage is caught at the first byte or two.
//!
//! ```text
//! worker -> supervisor
//!   HELLO      type=1  ver  u16 flags=0  u32 capacity  u32 pid                   12 bytes
//!   ACK        type=2  ver  u16 0        u32 0         u64 connection id         16 bytes
//!   FINISHED   type=3  (as ACK)                                                  16 bytes
//!   REJECT     type=4  (as ACK)                                                  16 bytes
//! supervisor -> worker
//!   CONNECTION type=16 ver  u8 family  u8 name_len  u16 peer_port  u16 listener
//!              u64 connection id  [16] peer address  [name_len] listener name  32 + n bytes
//!              + exactly one socket attached to the frame
//!   DRAIN      type=17 ver  u16 0                                                 4 bytes
//!   STOP       type=18 ver  u16 0                                                 4 bytes
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;

/// Message type codes.
pub mod kind {
    /// Worker is ready; carries its capacity.
    pub const HELLO: u8 = 1;
    /// Worker took a connection.
    pub const ACK: u8 = 2;
    /// Worker is done with a connection.
    pub const FINISHED: u8 = 3;
    /// Worker hands an unread connection back.
    pub const REJECT: u8 = 4;
    /// Worker answers a PING (only workers that declared heartbeats in their HELLO).
    pub const PONG: u8 = 5;
    /// A connection for the worker, with its socket.
    pub const CONNECTION: u8 = 16;
    /// Finish what you have, take nothing new, exit.
    pub const DRAIN: u8 = 17;
    /// Exit now.
    pub const STOP: u8 = 18;
    /// Are you alive? Answer with PONG (sent only to workers that declared heartbeats).
    pub const PING: u8 = 19;
}

/// Bits of HELLO's flags field (bytes 2..4).
pub mod hello_flags {
    /// The worker answers every PING with a PONG promptly, even while it serves connections,
    /// so the supervisor may take a missing answer as a hang.
    pub const HEARTBEAT: u16 = 1;
}

/// Address family byte of a CONNECTION.
pub mod family {
    /// No IP peer (a Unix-domain connection, or the address was unavailable).
    pub const UNKNOWN: u8 = 0;
    /// IPv4: the first 4 address bytes are used.
    pub const IPV4: u8 = 4;
    /// IPv6: all 16 address bytes are used.
    pub const IPV6: u8 = 6;
}

/// Size of a HELLO payload.
pub const HELLO_LEN: usize = 12;
/// Size of an ACK, FINISHED, REJECT, PONG or PING payload.
pub const ID_MSG_LEN: usize = 16;
/// Size of a CONNECTION payload before the listener name.
pub const CONNECTION_FIXED_LEN: usize = 32;
/// Longest CONNECTION payload (255-byte listener name).
pub const CONNECTION_MAX_LEN: usize = CONNECTION_FIXED_LEN + 255;
/// Size of a DRAIN or STOP payload.
pub const CONTROL_LEN: usize = 4;

/// Why a payload is not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Shorter than its type requires, or longer.
    BadLength {
        /// Message type byte.
        kind: u8,
        /// Bytes received.
        len: usize,
    },
    /// A version this build does not speak.
    UnsupportedVersion(u8),
    /// A type byte that is not a message of this direction.
    UnknownKind(u8),
    /// A reserved field is not zero, or a field is out of range.
    Malformed(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadLength { kind, len } => {
                write!(f, "message of type {kind} has the wrong length ({len} bytes)")
            }
            ProtocolError::UnsupportedVersion(v) => {
                write!(f, "protocol version {v} is not supported (this build speaks {VERSION})")
            }
            ProtocolError::UnknownKind(k) => write!(f, "unknown message type {k}"),
            ProtocolError::Malformed(what) => write!(f, "malformed message: {what}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A message from a worker to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMessage {
    /// Ready for connections; at most `capacity` at once.
    Hello {
        /// Connections the worker will hold at once (at least 1).
        capacity: u32,
        /// The worker's pid as it sees it (informational).
        pid: u32,
        /// It answers PING with PONG ([`hello_flags::HEARTBEAT`]).
        heartbeat: bool,
    },
    /// Took connection `id`: the supervisor may forget it.
    Ack(u64),
    /// Finished with connection `id` (closed it).
    Finished(u64),
    /// Gives connection `id` back unread, to go to another worker.
    Reject(u64),
    /// Answers the PING that carried this nonce.
    Pong(u64),
}

impl WorkerMessage {
    /// Encodes into `buf`, returning the bytes used.
    pub fn encode(&self, buf: &mut [u8; ID_MSG_LEN]) -> usize {
        *buf = [0; ID_MSG_LEN];
        buf[1] = VERSION;
        match *self {
            WorkerMessage::Hello { capacity, pid, heartbeat } => {
                buf[0] = kind::HELLO;
                let flags = if heartbeat { hello_flags::HEARTBEAT } else { 0 };
                buf[2..4].copy_from_slice(&flags.to_le_bytes());
                buf[4..8].copy_from_slice(&capacity.to_le_bytes());
                buf[8..12].copy_from_slice(&pid.to_le_bytes());
                HELLO_LEN
            }
            WorkerMessage::Ack(id)
            | WorkerMessage::Finished(id)
            | WorkerMessage::Reject(id)
            | WorkerMessage::Pong(id) => {
                buf[0] = match self {
                    WorkerMessage::Ack(_) => kind::ACK,
                    WorkerMessage::Finished(_) => kind::FINISHED,
                    WorkerMessage::Reject(_) => kind::REJECT,
                    _ => kind::PONG,
                };
                buf[8..16].copy_from_slice(&id.to_le_bytes());
                ID_MSG_LEN
            }
        }
    }

    /// Decodes a worker's payload. Never panics.
    pub fn decode(b: &[u8]) -> Result<WorkerMessage, ProtocolError> {
        let (k, _) = head(b)?;
        let want = match k {
            kind::HELLO => HELLO_LEN,
            kind::ACK | kind::FINISHED | kind::REJECT | kind::PONG => ID_MSG_LEN,
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        if b.len() != want {
            return Err(ProtocolError::BadLength { kind: k, len: b.len() });
        }
        let flags = u16::from_le_bytes([b[2], b[3]]);
        let known = if k == kind::HELLO { hello_flags::HEARTBEAT } else { 0 };
        if flags & !known != 0 {
            return Err(ProtocolError::Malformed("reserved bits of bytes 2..4 are not zero"));
        }
        Ok(match k {
            kind::HELLO => {
                let capacity = u32_at(b, 4);
                if capacity == 0 {
                    return Err(ProtocolError::Malformed("capacity 0"));
                }
                let heartbeat = flags & hello_flags::HEARTBEAT != 0;
                WorkerMessage::Hello { capacity, pid: u32_at(b, 8), heartbeat }
            }
            _ => {
                if b[4..8] != [0; 4] {
                    return Err(ProtocolError::Malformed("reserved bytes 4..8 are not zero"));
                }
                let id = u64_at(b, 8);
                match k {
                    kind::ACK => WorkerMessage::Ack(id),
                    kind::FINISHED => WorkerMessage::Finished(id),
                    kind::REJECT => WorkerMessage::Reject(id),
                    _ => WorkerMessage::Pong(id),
                }
            }
        })
    }
}

/// The metadata of a CONNECTION, borrowed from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo<'a> {
    /// Supervisor-wide connection id; quote it in ACK/FINISHED/REJECT.
    pub id: u64,
    /// Index of the listener in the supervisor's configuration.
    pub listener: u16,
    /// Name of the listener.
    pub listener_name: &'a str,
    /// The client's address, if it has an IP one.
    pub peer: Option<SocketAddr>,
}

impl ConnectionInfo<'_> {
    /// Encodes into `buf`, returning the bytes used. Names longer than 255 bytes are cut at a
    /// character boundary.
    pub fn encode(&self, buf: &mut [u8; CONNECTION_MAX_LEN]) -> usize {
        let mut name = self.listener_name;
        if name.len() > 255 {
            let mut end = 255;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name = &name[..end];
        }
        buf[..CONNECTION_FIXED_LEN].fill(0);
        buf[0] = kind::CONNECTION;
        buf[1] = VERSION;
        buf[3] = name.len() as u8;
        buf[6..8].copy_from_slice(&self.listener.to_le_bytes());
        buf[8..16].copy_from_slice(&self.id.to_le_bytes());
        match self.peer {
            Some(SocketAddr::V4(a)) => {
                buf[2] = family::IPV4;
                buf[4..6].copy_from_slice(&a.port().to_le_bytes());
                buf[16..20].copy_from_slice(&a.ip().octets());
            }
            Some(SocketAddr::V6(a)) => {
                buf[2] = family::IPV6;
                buf[4..6].copy_from_slice(&a.port().to_le_bytes());
                buf[16..32].copy_from_slice(&a.ip().octets());
            }
            None => buf[2] = family::UNKNOWN,
        }
        let end = CONNECTION_FIXED_LEN + name.len();
        buf[CONNECTION_FIXED_LEN..end].copy_from_slice(name.as_bytes());
        end
    }
}

/// A message from the supervisor to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisorMessage<'a> {
    /// A connection; its socket came with the frame.
    Connection(ConnectionInfo<'a>),
    /// Take nothing new; finish the connections you hold, then exit 0.
    Drain,
    /// Exit now.
    Stop,
    /// Answer with a PONG carrying this nonce.
    Ping(u64),
}

impl<'a> SupervisorMessage<'a> {
    /// Decodes a supervisor's payload. Never panics.
    pub fn decode(b: &'a [u8]) -> Result<SupervisorMessage<'a>, ProtocolError> {
        let (k, _) = head(b)?;
        match k {
            kind::DRAIN | kind::STOP => {
                if b.len() != CONTROL_LEN {
                    return Err(ProtocolError::BadLength { kind: k, len: b.len() });
                }
                Ok(if k == kind::DRAIN {
                    SupervisorMessage::Drain
                } else {
                    SupervisorMessage::Stop
                })
            }
            kind::CONNECTION => {
                if b.len() < CONNECTION_FIXED_LEN || b.len() != CONNECTION_FIXED_LEN + b[3] as usize
                {
                    return Err(ProtocolError::BadLength { kind: k, len: b.len() });
                }
                let port = u16::from_le_bytes([b[4], b[5]]);
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&b[16..32]);
                let peer = match b[2] {
                    family::UNKNOWN => None,
                    family::IPV4 => Some(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                        port,
                    )),
                    family::IPV6 => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
                    _ => return Err(ProtocolError::Malformed("unknown address family")),
                };
                let listener_name = std::str::from_utf8(&b[CONNECTION_FIXED_LEN..])
                    .map_err(|_| ProtocolError::Malformed("listener name is not UTF-8"))?;
                Ok(SupervisorMessage::Connection(ConnectionInfo {
                    id: u64_at(b, 8),
                    listener: u16::from_le_bytes([b[6], b[7]]),
                    listener_name,
                    peer,
                }))
            }
            kind::PING => {
                if b.len() != ID_MSG_LEN {
                    return Err(ProtocolError::BadLength { kind: k, len: b.len() });
                }
                if b[2..8] != [0; 6] {
                    return Err(ProtocolError::Malformed("reserved bytes 2..8 are not zero"));
                }
                Ok(SupervisorMessage::Ping(u64_at(b, 8)))
            }
            other => Err(ProtocolError::UnknownKind(other)),
        }
    }

    /// Encodes a PING carrying `nonce`.
    pub fn ping(nonce: u64) -> [u8; ID_MSG_LEN] {
        let mut b = [0u8; ID_MSG_LEN];
        b[0] = kind::PING;
        b[1] = VERSION;
        b[8..16].copy_from_slice(&nonce.to_le_bytes());
        b
    }

    /// Encodes a DRAIN: finish what you hold, take nothing new, exit. (CONNECTION goes
    /// through [`ConnectionInfo::encode`].)
    pub fn drain() -> [u8; CONTROL_LEN] {
        [kind::DRAIN, VERSION, 0, 0]
    }

    /// Encodes a STOP: exit now.
    pub fn stop() -> [u8; CONTROL_LEN] {
        [kind::STOP, VERSION, 0, 0]
    }
}

fn head(b: &[u8]) -> Result<(u8, u8), ProtocolError> {
    if b.len() < 2 {
        return Err(ProtocolError::BadLength {
            kind: b.first().copied().unwrap_or(0),
            len: b.len(),
        });
    }
    if b[1] != VERSION {
        return Err(ProtocolError::UnsupportedVersion(b[1]));
    }
    Ok((b[0], b[1]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_messages_round_trip() {
        let mut buf = [0u8; ID_MSG_LEN];
        for m in [
            WorkerMessage::Hello { capacity: 64, pid: 4242, heartbeat: false },
            WorkerMessage::Hello { capacity: 1, pid: 1, heartbeat: true },
            WorkerMessage::Ack(u64::MAX),
            WorkerMessage::Finished(7),
            WorkerMessage::Reject(0),
            WorkerMessage::Pong(0xfeed),
        ] {
            let n = m.encode(&mut buf);
            assert_eq!(WorkerMessage::decode(&buf[..n]), Ok(m));
        }
        let ping = SupervisorMessage::ping(0xfeed);
        assert_eq!(SupervisorMessage::decode(&ping), Ok(SupervisorMessage::Ping(0xfeed)));
    }

    #[test]
    fn unknown_flag_bits_are_rejected() {
        let mut hello = [1, 1, 2, 0, 1, 0, 0, 0, 1, 0, 0, 0];
        assert!(WorkerMessage::decode(&hello).is_err());
        hello[2] = 1;
        assert!(WorkerMessage::decode(&hello).is_ok());
        let ack_with_flag = [2, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert!(WorkerMessage::decode(&ack_with_flag).is_err());
    }

    #[test]
    fn connection_round_trips_with_every_family() {
        let mut buf = [0u8; CONNECTION_MAX_LEN];
        for peer in
            [None, Some("10.1.2.3:4567".parse().unwrap()), Some("[::1]:80".parse().unwrap())]
        {
            let info = ConnectionInfo { id: 99, listener: 3, listener_name: "http", peer };
            let n = info.encode(&mut buf);
            assert_eq!(n, CONNECTION_FIXED_LEN + 4);
            assert_eq!(
                SupervisorMessage::decode(&buf[..n]),
                Ok(SupervisorMessage::Connection(info))
            );
        }
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let mut buf = [0u8; ID_MSG_LEN];
        let n = WorkerMessage::Hello { capacity: 2, pid: 1, heartbeat: false }.encode(&mut buf);
        assert_eq!(&buf[..n], &[1, 1, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        let n = WorkerMessage::Hello { capacity: 2, pid: 1, heartbeat: true }.encode(&mut buf);
        assert_eq!(&buf[..n], &[1, 1, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            SupervisorMessage::ping(0x0102),
            [19, 1, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        let n = WorkerMessage::Ack(0x0102).encode(&mut buf);
        assert_eq!(&buf[..n], &[2, 1, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(SupervisorMessage::drain(), [17, 1, 0, 0]);
        assert_eq!(SupervisorMessage::stop(), [18, 1, 0, 0]);
        assert!(matches!(
            SupervisorMessage::decode(&SupervisorMessage::drain()),
            Ok(SupervisorMessage::Drain)
        ));
        assert!(matches!(
            SupervisorMessage::decode(&SupervisorMessage::stop()),
            Ok(SupervisorMessage::Stop)
        ));
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        assert!(WorkerMessage::decode(b"").is_err());
        assert!(WorkerMessage::decode(b"GET / HTTP/1.1\r\n").is_err());
        assert_eq!(WorkerMessage::decode(&[2, 9]), Err(ProtocolError::UnsupportedVersion(9)));
        assert_eq!(WorkerMessage::decode(&[16, 1]), Err(ProtocolError::UnknownKind(16)));
        assert!(WorkerMessage::decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err()); // capacity 0
                                                                                        // Exhaustive over short inputs: never panics.
        for len in 0..40usize {
            for fill in [0u8, 1, 2, 3, 4, 16, 17, 255] {
                let mut b = vec![fill; len];
                if len > 1 {
                    b[1] = VERSION;
                }
                let _ = WorkerMessage::decode(&b);
                let _ = SupervisorMessage::decode(&b);
            }
        }
    }
}
