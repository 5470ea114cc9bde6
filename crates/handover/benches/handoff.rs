//! One socket hand-off between two processes, against a bare `sendmsg`/`recvmsg` loop written
//! here by hand, in the same run; and batched throughput.
//!
//! ```text
//! cargo bench -p handover --bench handoff
//! ```
//!
//! Each iteration is a round trip: the parent sends a socket, the child process receives it,
//! closes it and answers with a small acknowledgement. The bare loop does the same with
//! blocking sockets, one `sendmsg` with one `SCM_RIGHTS` descriptor and one `recvmsg`, no
//! framing and no checks: the floor for what a hand-off can cost.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

#[cfg(unix)]
mod bench {
    use std::io::{Read, Write};
    use std::net::UdpSocket;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use criterion::{Criterion, Throughput};
    use handover::{AsSocketRef, Channel, Command, Message};

    const ROLE: &str = "HANDOVER_BENCH_ROLE";
    const BATCH: usize = 64;

    /// Runs as the child when the bench re-executes itself.
    pub(crate) fn child(role: &str) {
        let mut inherited = handover::inherited().expect("inherited");
        match role {
            "handover" => {
                let ch = inherited.channel.take().expect("channel");
                let mut msg = Message::default();
                while ch.recv_into(&mut msg).is_ok() {
                    let n = msg.sockets.len() as u32;
                    msg.sockets.clear(); // close them
                    ch.send(&n.to_le_bytes(), &[]).expect("ack");
                }
            }
            "bare" => {
                let socket = inherited.take("bare").expect("bare socket");
                let stream = UnixStream::from(OwnedFd::from(socket));
                let mut ack = [1u8];
                while let Some(fd) = bare_recv(&stream) {
                    drop(fd);
                    (&stream).write_all(&ack).expect("ack");
                    ack[0] = ack[0].wrapping_add(1);
                }
            }
            _ => panic!("unknown bench role {role}"),
        }
    }

    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);

    /// sendmsg(2) of one byte with one descriptor, blocking.
    fn bare_send(stream: &UnixStream, fd: BorrowedFd<'_>) {
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
        unsafe { data.write_unaligned(fd.as_raw_fd()) };
        // SAFETY: msg points at live buffers for the call.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        assert_eq!(n, 1, "sendmsg: {}", std::io::Error::last_os_error());
    }

    /// recvmsg(2) of one byte with one descriptor, blocking; None at end of stream.
    fn bare_recv(stream: &UnixStream) -> Option<OwnedFd> {
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
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n <= 0 {
            return None;
        }
        // SAFETY: the kernel filled in the control buffer described by msg.
        let hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        assert!(!hdr.is_null(), "no control message");
        // SAFETY: hdr is a valid header with one descriptor after it.
        let data = unsafe { libc::CMSG_DATA(hdr) }.cast::<RawFd>();
        // SAFETY: in bounds; unaligned read is allowed.
        let raw = unsafe { data.read_unaligned() };
        // SAFETY: the kernel installed raw for us; we are its only owner.
        Some(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    pub(crate) fn run() {
        let exe = std::env::current_exe().expect("current_exe");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let sockets: Vec<UdpSocket> =
            (0..BATCH).map(|_| UdpSocket::bind("127.0.0.1:0").expect("udp")).collect();

        let mut handover_child = Command::new(&exe)
            .env(ROLE, "handover")
            .channel()
            .die_with_parent(true)
            .spawn()
            .expect("spawn handover child");
        let ch: Channel = handover_child.channel.take().expect("channel");

        let (ours, theirs) = UnixStream::pair().expect("pair");
        let mut bare_child = Command::new(&exe)
            .env(ROLE, "bare")
            .listen_socket("bare", theirs.as_socket_ref())
            .die_with_parent(true)
            .spawn()
            .expect("spawn bare child");
        drop(theirs);

        let mut c = Criterion::default()
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1))
            .configure_from_args();
        let mut g = c.benchmark_group("handoff");
        g.throughput(Throughput::Elements(1));
        let mut ack = [0u8];
        g.bench_function("bare_sendmsg_recvmsg", |b| {
            b.iter(|| {
                bare_send(&ours, socket.as_fd());
                (&ours).read_exact(&mut ack).expect("ack");
            })
        });
        let mut msg = Message::default();
        g.bench_function("handover_channel", |b| {
            b.iter(|| {
                ch.send(b"", &[socket.as_socket_ref()]).expect("send");
                ch.recv_into(&mut msg).expect("ack");
            })
        });
        g.throughput(Throughput::Elements(BATCH as u64));
        let refs: Vec<_> = sockets.iter().map(|s| s.as_socket_ref()).collect();
        g.bench_function("handover_channel_batch64", |b| {
            b.iter(|| {
                ch.send(b"", &refs).expect("send");
                ch.recv_into(&mut msg).expect("ack");
            })
        });
        g.finish();
        c.final_summary();

        drop(ch);
        drop(ours);
        let _ = handover_child.wait();
        let _ = bare_child.wait();
    }
}

fn main() {
    #[cfg(unix)]
    {
        if let Ok(role) = std::env::var("HANDOVER_BENCH_ROLE") {
            bench::child(&role);
            return;
        }
        bench::run();
    }
}
