//! A plain fork+exec-per-connection server: accept, start PROGRAM with the connection as its
//! standard input and output, close our copy, reap finished children. The reference for
//! `handover serve --mode spawn`.
//!
//! ```text
//! forkexec-server ADDR PROGRAM [ARGS...]
//! ```
#![allow(clippy::print_stderr)]

use std::net::TcpListener;
use std::process::{Command, Stdio};

fn main() {
    if let Err(e) = run() {
        eprintln!("forkexec-server: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, program) = match &args[..] {
        [addr, program, ..] => (addr, program),
        _ => return Err("usage: forkexec-server ADDR PROGRAM [ARGS...]".into()),
    };
    let listener = TcpListener::bind(addr)?;
    bench_servers::announce_ready();
    let mut children = Vec::new();
    loop {
        let (stream, _) = listener.accept()?;
        let child = Command::new(program)
            .args(&args[2..])
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(stream.try_clone()?)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(stream)))
            .spawn()?;
        children.push(child);
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
}
