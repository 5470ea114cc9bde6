//! Helpers shared by the cross-process tests.
#![allow(dead_code)]

use std::time::Duration;

use handover::{Channel, Child, Command};

/// The helper program (`src/bin/handover-peer.rs`).
pub(crate) const PEER: &str = env!("CARGO_BIN_EXE_handover-peer");

/// Generous bound for any single wait in a test: a hang fails instead of blocking CI.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Spawns the helper in `role` with a channel, and returns it with the parent's end.
pub(crate) fn spawn_peer(role: &str, args: &[&str]) -> (Child, Channel) {
    let mut child = Command::new(PEER)
        .arg(role)
        .args(args)
        .channel()
        .die_with_parent(true)
        .spawn()
        .expect("spawn handover-peer");
    let ch = child.channel.take().expect("channel");
    (child, ch)
}

/// Waits for the child and asserts it exited with `code`.
pub(crate) fn assert_exit(child: &mut Child, code: i32) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert_eq!(status.code(), Some(code), "child {} exited with {status}", child.id());
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {} did not exit within {WAIT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A fresh temporary directory, removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("handover-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An anonymous pipe, (read end, write end), neither end inheritable.
#[cfg(unix)]
pub(crate) fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    for fd in fds {
        // SAFETY: fd is open (pipe succeeded); FD_CLOEXEC is a valid flag for F_SETFD.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }, 0, "fcntl");
    }
    // SAFETY: pipe returned two fresh descriptors that nothing else owns.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    (r.into(), w.into())
}

/// An anonymous pipe, (read end, write end), neither end inheritable.
#[cfg(windows)]
pub(crate) fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::windows::io::{FromRawHandle, OwnedHandle};
    let (mut r, mut w) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: both out-pointers are valid for writes; null security attributes make the
    // handles non-inheritable.
    let ok = unsafe {
        windows_sys::Win32::System::Pipes::CreatePipe(&mut r, &mut w, std::ptr::null(), 0)
    };
    assert_ne!(ok, 0, "CreatePipe: {}", std::io::Error::last_os_error());
    // SAFETY: CreatePipe returned two fresh handles that nothing else owns.
    let r = unsafe { OwnedHandle::from_raw_handle(r) };
    // SAFETY: as above.
    let w = unsafe { OwnedHandle::from_raw_handle(w) };
    (r.into(), w.into())
}
