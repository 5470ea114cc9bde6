//! A per-connection program (inetd style): serves HTTP on standard input/output until the
//! client closes, then exits. Used by `handover serve --mode spawn`, socat and
//! forkexec-server alike.

use std::io::{Read, Write};

struct Stdio;

impl Read for Stdio {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        std::io::stdin().read(b)
    }
}

impl Write for Stdio {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout();
        let n = out.write(b)?;
        out.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn main() {
    let _ = bench_servers::serve_http(Stdio);
}
