//! A hand-rolled acceptor, written plainly: accept, `sendmsg` the descriptor with
//! `SCM_RIGHTS` to the next of N workers round-robin, close it. No acknowledgement, no
//! framing, no re-dispatch: the bare reference the handover prefork mode is measured against.
//!
//! ```text
//! scm-acceptor ADDR WORKERS WORKER_EXE
//! ```
#![allow(clippy::print_stderr)]

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
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
        send_fd(links[next].as_raw_fd(), stream.as_raw_fd())?;
        next = (next + 1) % n;
        drop(stream);
    }
}

fn send_fd(sock: RawFd, fd: RawFd) -> std::io::Result<()> {
    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);
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
