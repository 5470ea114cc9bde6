//! Shared pieces of the benchmark servers: one tiny HTTP handler, served the same way by
//! every server so that only the dispatch differs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// The response every server sends.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";

/// The response to a request that asked the server to close the connection after it.
pub const RESPONSE_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok";

/// Whether a request head (up to its blank line) asks for the connection to end after the
/// response, as HTTP/1.1 defines it: `Connection: close`, or HTTP/1.0 without
/// `Connection: keep-alive`.
pub fn wants_close(head: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let http10 = lines.next().is_some_and(|l| l.ends_with("HTTP/1.0"));
    let connection = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    match connection.as_deref() {
        Some(v) if v.split(',').any(|t| t.trim() == "close") => true,
        Some(v) if v.split(',').any(|t| t.trim() == "keep-alive") => false,
        _ => http10,
    }
}

/// The response to `head`, and whether the connection ends after it.
pub fn respond(head: &[u8]) -> (&'static [u8], bool) {
    if wants_close(head) {
        (RESPONSE_CLOSE, true)
    } else {
        (RESPONSE, false)
    }
}

/// Serves HTTP/1.1 requests on `stream` until the client closes it (keep-alive) or asks to
/// close (`Connection: close`: then it returns after the response, and the caller ends the
/// stream), answering each complete request head with [`RESPONSE`]. Bodies are not expected.
pub fn serve_http(mut stream: impl Read + Write) -> io::Result<u64> {
    let mut buf = [0u8; 4096];
    let mut filled = 0;
    let mut served = 0;
    loop {
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(served),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(served),
            Err(e) => return Err(e),
        };
        filled += n;
        // Answer every complete request head in the buffer (pipelining-safe).
        let mut start = 0;
        while let Some(end) = find_head_end(&buf[start..filled]) {
            let (response, close) = respond(&buf[start..start + end]);
            stream.write_all(response)?;
            served += 1;
            if close {
                return Ok(served);
            }
            start += end;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head over 4 KiB"));
        }
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Serves one connection and ignores errors (a benchmark client may reset).
pub fn serve_quietly(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = serve_http(&stream);
}

/// Writes `ready <pid>` to standard output so `bench/run.sh` knows the server is up.
pub fn announce_ready() {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "ready {}", std::process::id());
    let _ = out.flush();
}

/// The bare `SCM_RIGHTS` reference: one byte, one descriptor, no framing, no checks. Written
/// plainly on purpose — it is what handover is measured against.
pub mod bare {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);

    /// sendmsg(2) of one byte with one descriptor attached, blocking.
    pub fn send_fd(sock: RawFd, fd: RawFd) -> std::io::Result<()> {
        let mut byte = [0u8];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut cmsg = Cmsg([0; 64]);
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        // SAFETY: pure arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
        // SAFETY: the control buffer is aligned and larger than one cmsghdr.
        let hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        // SAFETY: cmsghdr is plain old data.
        let mut h: libc::cmsghdr = unsafe { std::mem::zeroed() };
        h.cmsg_level = libc::SOL_SOCKET;
        h.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: pure arithmetic.
        h.cmsg_len = unsafe { libc::CMSG_LEN(4) } as _;
        // SAFETY: hdr points at the start of the aligned control buffer.
        unsafe { hdr.write(h) };
        // SAFETY: hdr is a valid header; its data area has room for one int.
        let data = unsafe { libc::CMSG_DATA(hdr) }.cast::<RawFd>();
        // SAFETY: in bounds (CMSG_SPACE(4)); unaligned write is allowed.
        unsafe { data.write_unaligned(fd) };
        // SAFETY: msg points at live buffers for the call.
        if unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// recvmsg(2) of one byte and one descriptor; Ok(None) at end of stream.
    pub fn recv_fd(sock: RawFd) -> std::io::Result<Option<OwnedFd>> {
        let mut byte = [0u8];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut cmsg = Cmsg([0; 64]);
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        // SAFETY: pure arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
        // SAFETY: msg points at live buffers for the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        // SAFETY: the kernel filled in the control buffer described by msg.
        let hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if hdr.is_null() {
            return Err(std::io::Error::other("byte without a descriptor"));
        }
        // SAFETY: hdr is a valid header with one descriptor after it.
        let data = unsafe { libc::CMSG_DATA(hdr) }.cast::<RawFd>();
        // SAFETY: in bounds; unaligned read is allowed.
        let raw = unsafe { data.read_unaligned() };
        // SAFETY: the kernel installed raw for us; we are its only owner.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Duplex {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.output.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn closes_when_asked() {
        assert!(wants_close(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        assert!(wants_close(b"GET / HTTP/1.1\r\nconnection: Keep-Alive, Close\r\n\r\n"));
        assert!(wants_close(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"));
        assert!(!wants_close(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!wants_close(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        let req = [&b"GET / HTTP/1.1\r\n\r\n"[..], b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"]
            .concat()
            .repeat(2);
        let mut d = Duplex { input: io::Cursor::new(req), output: Vec::new() };
        assert_eq!(serve_http(&mut d).unwrap(), 2, "stops after the request that asked to close");
        assert_eq!(d.output, [RESPONSE, RESPONSE_CLOSE].concat());
    }

    #[test]
    fn answers_each_pipelined_request() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3);
        let mut d = Duplex { input: io::Cursor::new(req), output: Vec::new() };
        assert_eq!(serve_http(&mut d).unwrap(), 3);
        assert_eq!(d.output, RESPONSE.repeat(3));
    }
}
