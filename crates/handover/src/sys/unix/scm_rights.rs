//! `sendmsg`/`recvmsg` with `SCM_RIGHTS` control messages.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::uds::RawChannel;

/// `SCM_MAX_FD` on Linux: the most descriptors one `sendmsg` may carry.
pub(crate) const HANDLES_PER_FRAME: usize = 253;

const FD_SIZE: usize = mem::size_of::<RawFd>();

/// Control buffer, aligned for `cmsghdr`, with room for `HANDLES_PER_FRAME` descriptors
/// (`CMSG_SPACE(253 * 4)` is 1032 bytes on 64-bit Linux, 1024 on macOS).
#[repr(C, align(8))]
struct CmsgBuf([u8; 1088]);

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE((fds * FD_SIZE) as libc::c_uint) } as usize;
    debug_assert!(space <= mem::size_of::<CmsgBuf>());
    space
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0; // SO_NOSIGPIPE is set on the socket instead.

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
const RECV_FLAGS: libc::c_int = 0; // FD_CLOEXEC is set right after receipt instead.

/// The channel descriptor itself stays in blocking mode, so the blocking API can wait inside
/// the system call (one call per read instead of a failed read, `poll` and a read); every
/// non-blocking use says so per call.
fn dontwait(block: bool) -> libc::c_int {
    if block {
        0
    } else {
        libc::MSG_DONTWAIT
    }
}

/// One `sendmsg(2)`: `bytes`, with `fds` attached to its first byte. With `block` false
/// (`MSG_DONTWAIT`) it returns `WouldBlock` instead of waiting for room.
pub(crate) fn send<'a>(
    ch: &RawChannel,
    bytes: &[u8],
    fds: impl ExactSizeIterator<Item = BorrowedFd<'a>>,
    block: bool,
) -> io::Result<usize> {
    let count = fds.len();
    assert!(count <= HANDLES_PER_FRAME, "a frame carries at most {HANDLES_PER_FRAME} descriptors");
    let mut cmsg = CmsgBuf([0; 1088]);
    let mut iov =
        libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: msghdr is plain old data, for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if count > 0 {
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(count) as _;
        // SAFETY: msg_control points to msg_controllen bytes, aligned for cmsghdr, and
        // msg_controllen >= CMSG_SPACE(1 fd) > sizeof(cmsghdr), so the result is non-null.
        let hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        debug_assert!(!hdr.is_null());
        // SAFETY: cmsghdr is plain old data.
        let mut h: libc::cmsghdr = unsafe { mem::zeroed() };
        h.cmsg_level = libc::SOL_SOCKET;
        h.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: CMSG_LEN is pure arithmetic.
        h.cmsg_len = unsafe { libc::CMSG_LEN((count * FD_SIZE) as libc::c_uint) } as _;
        // SAFETY: hdr is non-null and points into `cmsg`, aligned for cmsghdr (see above).
        unsafe { hdr.write(h) };
        // SAFETY: hdr is a valid cmsghdr inside the buffer; CMSG_DATA points just past it.
        let data = unsafe { libc::CMSG_DATA(hdr) }.cast::<RawFd>();
        for (i, fd) in fds.enumerate() {
            // SAFETY: CMSG_SPACE(count fds) bytes were reserved, so slot i < count is in bounds.
            let slot = unsafe { data.add(i) };
            // SAFETY: slot is in bounds (above); cmsg data need not be aligned for c_int.
            unsafe { slot.write_unaligned(fd.as_raw_fd()) };
        }
    }
    loop {
        // SAFETY: msg points to a live iovec and control buffer for the duration of the call.
        match syscall!(unsafe { libc::sendmsg(ch.as_raw_fd(), &msg, SEND_FLAGS | dontwait(block)) })
        {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            res => return res.map(|n| n as usize),
        }
    }
}

/// What one `recvmsg` returned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    /// Bytes read; 0 at end of stream.
    pub(crate) len: usize,
    /// The kernel cut control data off (`MSG_CTRUNC`): descriptors were lost.
    pub(crate) truncated: bool,
}

/// One `recvmsg(2)`. Every descriptor that arrived is pushed to `fds` as an `OwnedFd`
/// (close-on-exec) before this returns, whatever else happened. With `block` false
/// (`MSG_DONTWAIT`) it returns `WouldBlock` instead of waiting for data.
pub(crate) fn recv(
    ch: &RawChannel,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
    block: bool,
) -> io::Result<Received> {
    let room = max_fds.min(HANDLES_PER_FRAME);
    let mut cmsg = CmsgBuf([0; 1088]);
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain old data, for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if room > 0 {
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(room) as _;
    }
    let len = loop {
        // SAFETY: msg points to a live iovec and control buffer for the duration of the call.
        match syscall!(unsafe {
            libc::recvmsg(ch.as_raw_fd(), &mut msg, RECV_FLAGS | dontwait(block))
        }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            res => break res? as usize,
        }
    };
    take_rights(&msg, fds);
    Ok(Received { len, truncated: msg.msg_flags & libc::MSG_CTRUNC != 0 })
}

/// Takes ownership of every descriptor in the `SCM_RIGHTS` messages of `msg`.
fn take_rights(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    #[allow(clippy::unnecessary_cast)] // socklen_t on some systems, size_t on others
    let controllen = msg.msg_controllen as usize;
    if msg.msg_control.is_null() || controllen < mem::size_of::<libc::cmsghdr>() {
        return;
    }
    // SAFETY: msg_control/msg_controllen describe the buffer the kernel filled in.
    let mut hdr = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !hdr.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header inside the buffer.
        let h = unsafe { hdr.read_unaligned() };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN is pure arithmetic.
            let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (h.cmsg_len as usize).saturating_sub(header_len) / FD_SIZE;
            // SAFETY: hdr is a valid header; its data follows it inside the buffer.
            let data = unsafe { libc::CMSG_DATA(hdr) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` descriptors after the header (cmsg_len).
                let slot = unsafe { data.add(i) };
                // SAFETY: slot is in bounds (above); cmsg data need not be aligned for c_int.
                let raw = unsafe { slot.read_unaligned() };
                // SAFETY: the kernel just installed `raw` in our table for us: nothing else
                // owns it, and it is open.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                if RECV_FLAGS == 0 {
                    // Best effort where MSG_CMSG_CLOEXEC does not exist; the window until
                    // here is documented.
                    let _ = super::socket::set_cloexec(&fd);
                }
                fds.push(fd);
            }
        }
        // SAFETY: msg and hdr are valid as above.
        hdr = unsafe { libc::CMSG_NXTHDR(msg, hdr) };
    }
}
