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
