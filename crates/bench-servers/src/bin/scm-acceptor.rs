//! A hand-rolled acceptor, written plainly: accept, `sendmsg` the descriptor with
//! `SCM_RIGHTS` to the next of N workers round-robin, close it. No acknowledgement, no
//! framing, no re-dispatch: the bare reference the handover prefork mode is measured against.
//!
//! ```text
//! scm-acceptor ADDR WORKERS WORKER_EXE [CAPACITY]
//! ```
//!
//! With CAPACITY, each worker serves at most that many connections at once: it writes one
//! byte back as it finishes one, and the acceptor `poll(2)`s the workers' sockets and the
//! listener together, accepting only while some worker has room (the kernel's backlog holds
//! the rest), and giving each connection to the next worker with room.
#![allow(clippy::print_stderr)]

use std::io::{ErrorKind, Read};
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
    let (addr, n, worker, capacity) = match &args[..] {
        [addr, n, worker] => (addr, n, worker, None),
        [addr, n, worker, c] => (addr, n, worker, Some(c.parse::<u32>()?)),
        _ => return Err("usage: scm-acceptor ADDR WORKERS WORKER_EXE [CAPACITY]".into()),
    };
    let n: usize = n.parse()?;
    let listener = TcpListener::bind(addr)?;
    let mut links = Vec::new();
    let mut children = Vec::new();
    for _ in 0..n {
        let (ours, theirs) = UnixStream::pair()?;
        let mut cmd = Command::new(worker);
        cmd.arg("scm");
        if capacity.is_some() {
            cmd.arg("--report");
        }
        let child =
            cmd.listen_socket("scm", theirs.as_socket_ref()).die_with_parent(true).spawn()?;
        links.push(ours);
        children.push(child);
    }
    bench_servers::announce_ready();
    match capacity {
        None => {
            let mut next = 0;
            loop {
                let (stream, _) = listener.accept()?;
                bench_servers::bare::send_fd(links[next].as_raw_fd(), stream.as_raw_fd())?;
                next = (next + 1) % n;
                drop(stream);
            }
        }
        Some(capacity) => with_capacity(&listener, &links, capacity),
    }
}

fn with_capacity(
    listener: &TcpListener,
    links: &[UnixStream],
    capacity: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    listener.set_nonblocking(true)?;
    for l in links {
        l.set_nonblocking(true)?;
    }
    let mut load = vec![0u32; links.len()];
    let mut next = 0;
    let mut fds: Vec<libc::pollfd> = links
        .iter()
        .map(|l| libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    fds.push(libc::pollfd { fd: listener.as_raw_fd(), events: 0, revents: 0 });
    let mut bytes = [0u8; 256];
    loop {
        let room = load.iter().any(|&l| l < capacity);
        let last = fds.len() - 1;
        fds[last].events = if room { libc::POLLIN } else { 0 };
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for (i, l) in links.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            match (&*l).read(&mut bytes) {
                Ok(0) => return Err("a worker exited".into()),
                Ok(k) => load[i] = load[i].saturating_sub(k as u32),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        while load.iter().any(|&l| l < capacity) {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            };
            while load[next] >= capacity {
                next = (next + 1) % links.len();
            }
            bench_servers::bare::send_fd(links[next].as_raw_fd(), stream.as_raw_fd())?;
            load[next] += 1;
            next = (next + 1) % links.len();
        }
    }
}
