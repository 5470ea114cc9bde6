//! The PROXY protocol (HAProxy's, versions 1 and 2): behind an L4 balancer, each connection
//! starts with a header naming the real client, which the supervisor reads before it hands the
//! connection on, so that a worker's peer address (the CONNECTION message, `REMOTE_ADDR`) and
//! `source-hash` see the client, not the balancer.
//!
//! The header is read off the accept path: a task per connection peeks at what has arrived,
//! parses it ([`parse`], with the `ppp` crate), and then reads exactly the header's bytes, so
//! the request that follows stays in the socket for the worker. It is bounded: at most
//! [`MAX_HEADER`] bytes, within [`HEADER_TIMEOUT`] of the accept, at most [`MAX_PENDING`]
//! connections at once per program (beyond that the program stops accepting and the kernel's
//! backlog holds the rest). A connection whose header is missing, malformed, of the version not
//! asked for, too long or too late is closed (with a reset) and counted
//! (`proxy_refused`). A v2 `LOCAL` header (the balancer's own health check) and a v1
//! `UNKNOWN` one keep the connection's own peer address.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use socket2::Socket;

use crate::model::ProxyProtocol;

/// The longest header taken (a v1 header is at most 107 bytes; a v2 one carries TLVs).
pub(crate) const MAX_HEADER: usize = 4096;
/// How long after the accept the whole header may take.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections of one program whose header is being read at once.
pub(crate) const MAX_PENDING: usize = 1024;
/// How long to wait before looking again when only part of a header has arrived (rare: a
/// balancer sends the header in one segment).
const PARTIAL_RETRY: Duration = Duration::from_millis(5);

/// What the bytes at the start of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not enough yet to tell.
    Incomplete,
    /// A header of `len` bytes naming `client` (`None`: keep the connection's own peer).
    Header { len: usize, client: Option<SocketAddr> },
    /// Not a header this listener takes.
    Invalid(String),
}

/// Parses the start of a connection as a PROXY header of the version `want` allows.
pub(crate) fn parse(buf: &[u8], want: ProxyProtocol) -> Parsed {
    let v2_signature = b"\r\n\r\n\0\r\nQUIT\n";
    let v1_prefix = b"PROXY ";
    let could_be = |sig: &[u8]| buf[..buf.len().min(sig.len())] == sig[..buf.len().min(sig.len())];
    let (v1_ok, v2_ok) = match want {
        ProxyProtocol::V1 => (true, false),
        ProxyProtocol::V2 => (false, true),
        ProxyProtocol::Any => (true, true),
    };
    let v1_maybe = v1_ok && could_be(v1_prefix);
    let v2_maybe = v2_ok && could_be(v2_signature);
    if !v1_maybe && !v2_maybe {
        let expected = match want {
            ProxyProtocol::V1 => "a PROXY v1 header",
            ProxyProtocol::V2 => "a PROXY v2 header",
            ProxyProtocol::Any => "a PROXY header",
        };
        return Parsed::Invalid(format!("{expected} was expected"));
    }
    match HeaderResult::parse(buf) {
        r if r.is_incomplete() => Parsed::Incomplete,
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Parsed::Header { len: h.header.len(), client }
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => None,
            };
            Parsed::Header { len: h.len(), client }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("malformed PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("malformed PROXY v2 header: {e}")),
    }
}

/// Reads the PROXY header at the start of `socket` (blocking, as accepted), leaving what
/// follows it unread; returns the socket (blocking again) and the client the header names.
/// Gives up after [`HEADER_TIMEOUT`].
pub(crate) async fn read_header(
    socket: Socket,
    want: ProxyProtocol,
) -> Result<(Socket, Option<SocketAddr>), String> {
    match tokio::time::timeout(HEADER_TIMEOUT, read(socket, want)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no whole PROXY header within {HEADER_TIMEOUT:?}")),
    }
}

async fn read(socket: Socket, want: ProxyProtocol) -> Result<(Socket, Option<SocketAddr>), String> {
    let io = |e: std::io::Error| format!("reading its PROXY header: {e}");
    socket.set_nonblocking(true).map_err(io)?;
    let std: std::net::TcpStream = socket.into();
    let stream = tokio::net::TcpStream::from_std(std).map_err(io)?;
    let mut buf = vec![0u8; MAX_HEADER];
    let (len, client) = loop {
        let n = stream.peek(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err("closed before its PROXY header was whole".to_owned());
        }
        match parse(&buf[..n], want) {
            Parsed::Header { len, client } => break (len, client),
            Parsed::Invalid(why) => return Err(why),
            Parsed::Incomplete if n == buf.len() => {
                return Err(format!("PROXY header longer than {MAX_HEADER} bytes"))
            }
            // Peeking does not consume, so readiness stays set: wait a little instead.
            Parsed::Incomplete => tokio::time::sleep(PARTIAL_RETRY).await,
        }
    };
    // The header's bytes are all there (peeked): take exactly them.
    let mut taken = 0;
    while taken < len {
        stream.readable().await.map_err(io)?;
        match stream.try_read(&mut buf[taken..len]) {
            Ok(0) => return Err("closed while its PROXY header was read".to_owned()),
            Ok(n) => taken += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io(e)),
        }
    }
    let std = stream.into_std().map_err(io)?;
    std.set_nonblocking(false).map_err(io)?;
    Ok((Socket::from(std), client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_names_the_client_and_its_length_stops_before_the_request() {
        let head = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 80\r\n";
        let buf = [&head[..], b"GET / HTTP/1.1\r\n\r\n"].concat();
        let want =
            Parsed::Header { len: head.len(), client: Some("203.0.113.7:4242".parse().unwrap()) };
        assert_eq!(parse(&buf, ProxyProtocol::V1), want);
        assert_eq!(parse(&buf, ProxyProtocol::Any), want);
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n";
        assert_eq!(
            parse(v6, ProxyProtocol::Any),
            Parsed::Header { len: v6.len(), client: Some("[2001:db8::7]:4242".parse().unwrap()) }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown, ProxyProtocol::V1),
            Parsed::Header { len: unknown.len(), client: None }
        );
    }

    #[test]
    fn v2_names_the_client_and_local_keeps_the_peer() {
        let client: SocketAddr = "198.51.100.9:5555".parse().unwrap();
        let server: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let proxy = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, server),
        )
        .write_tlv(v2::Type::NoOp, &[0u8; 20][..])
        .unwrap()
        .build()
        .unwrap();
        let buf = [&proxy[..], b"GET / HTTP/1.1\r\n\r\n"].concat();
        let want = Parsed::Header { len: proxy.len(), client: Some(client) };
        assert_eq!(parse(&buf, ProxyProtocol::V2), want);
        assert_eq!(parse(&buf, ProxyProtocol::Any), want);
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&local, ProxyProtocol::V2),
            Parsed::Header { len: local.len(), client: None }
        );
    }

    #[test]
    fn partial_headers_wait_and_anything_else_is_refused() {
        let head = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 80\r\n";
        for cut in [1, 6, 20, head.len() - 1] {
            assert_eq!(parse(&head[..cut], ProxyProtocol::Any), Parsed::Incomplete, "{cut}");
        }
        assert_eq!(parse(b"\r\n\r\n\0\r", ProxyProtocol::V2), Parsed::Incomplete);
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 not-an-address 192.0.2.1 4242 80\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 80\r\n",
        ] {
            assert!(matches!(parse(bad, ProxyProtocol::Any), Parsed::Invalid(_)), "{bad:?}");
        }
        // Each version only where it is asked for.
        assert!(matches!(parse(head, ProxyProtocol::V2), Parsed::Invalid(_)));
        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            ("198.51.100.9:5555".parse::<SocketAddr>().unwrap(), "192.0.2.1:443".parse().unwrap()),
        )
        .build()
        .unwrap();
        assert!(matches!(parse(&v2, ProxyProtocol::V1), Parsed::Invalid(_)));
    }
}
