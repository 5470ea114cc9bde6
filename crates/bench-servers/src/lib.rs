//! Shared pieces of the benchmark servers: one tiny HTTP handler, served the same way by
//! every server so that only the dispatch differs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// The response every server sends.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";

/// Serves HTTP/1.1 requests on `stream` until the client closes it (keep-alive), answering
/// each complete request head with [`RESPONSE`]. Bodies are not expected.
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
            stream.write_all(RESPONSE)?;
            served += 1;
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
    fn answers_each_pipelined_request() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3);
        let mut d = Duplex { input: io::Cursor::new(req), output: Vec::new() };
        assert_eq!(serve_http(&mut d).unwrap(), 3);
        assert_eq!(d.output, RESPONSE.repeat(3));
    }
}
