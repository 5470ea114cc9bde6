//! A hand-rolled acceptor, written plainly: accept, `sendmsg` the descriptor with
//! `SCM_RIGHTS` to the next of N workers round-robin, close it. No acknowledgement, no
//! framing, no re-dispatch: the bare reference the handover prefork mode is measured against.
//!
//! ```text
//! scm-acceptor ADDR WORKERS WORKER_EXE
//! ```
#![allow(clippy::print_stderr)]

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use handover::{AsSocketRef, Command};

fn main() {
    if let Err(e) = run() {
        eprintln!("scm-acceptor: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, n, worker] = &args[..] else {
        return Err("usage: scm-acceptor ADDR WORKERS WORKER_EXE".into());
    };
    let n: usize = n.parse()?;
    let listener = TcpListener::bind(addr)?;
    let mut links = Vec::new();
    let mut children = Vec::new();
    for _ in 0..n {
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new(worker)
            .arg("scm")
            .listen_socket("scm", theirs.as_socket_ref())
            .die_with_parent(true)
            .spawn()?;
        links.push(ours);
        children.push(child);
    }
    bench_servers::announce_ready();
    let mut next = 0;
    loop {
        let (stream, _) = listener.accept()?;
        bench_servers::bare::send_fd(links[next].as_raw_fd(), stream.as_raw_fd())?;
        next = (next + 1) % n;
        drop(stream);
    }
}
