//! Peer checks on a rendezvous: another user is refused by default, on both sides.
#![cfg(target_os = "linux")] // abstract socket names; dropping to `nobody` needs root

mod util;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;

use handover::unix::{ChannelExt, ChannelListenerExt};
use handover::{Channel, ChannelListener, Error, PeerPolicy};
use util::PEER;

const NOBODY: u32 = 65534;

fn unique_name(tag: &str) -> String {
    format!("handover-test-{tag}-{}", std::process::id())
}

/// A copy of the helper program that `nobody` can run, removed on drop: the build directory
/// may sit in a directory only its owner can enter (a clone under `mktemp -d`, mode 0700).
struct PeerForNobody(std::path::PathBuf);

impl PeerForNobody {
    fn new(tag: &str) -> PeerForNobody {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("{}-peer", unique_name(tag)));
        // A hard link, where it can be: a copy is open for writing for a moment, and a fork by
        // another test thread just then would make running it fail with ETXTBSY.
        if std::fs::hard_link(PEER, &path).is_err() {
            std::fs::copy(PEER, &path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        PeerForNobody(path)
    }
}

impl Drop for PeerForNobody {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// These tests need to start a process as another user; CI runs as root.
fn root_or_skip(test: &str) -> bool {
    if integration_tests::euid() == 0 {
        return true;
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("SKIPPED {test}: needs root to run a peer as another user");
    }
    false
}

#[test]
fn a_peer_running_as_another_user_is_refused_by_the_listener() {
    if !root_or_skip("a_peer_running_as_another_user_is_refused_by_the_listener") {
        return;
    }
    let name = unique_name("listener");
    let listener = ChannelListener::bind_abstract(name.as_bytes()).unwrap();
    let peer = PeerForNobody::new("listener");
    let mut child = std::process::Command::new(&peer.0)
        .args(["connect-abstract", &name])
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .unwrap();
    match listener.accept() {
        Err(Error::PeerRejected { uid, pid }) => {
            assert_eq!(uid, Some(NOBODY));
            assert_eq!(pid, Some(child.id()));
        }
        other => panic!("expected PeerRejected, got {other:?}"),
    }
    // The peer, running as `nobody`, applies the same default to us (root) and refuses too.
    assert_eq!(child.wait().unwrap().code(), Some(10));
}

#[test]
fn a_listener_owned_by_another_user_is_refused_by_the_connecting_side() {
    if !root_or_skip("a_listener_owned_by_another_user_is_refused_by_the_connecting_side") {
        return;
    }
    let name = unique_name("squat");
    let peer = PeerForNobody::new("squat");
    let mut squatter = std::process::Command::new(&peer.0)
        .args(["listen-abstract", &name])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(squatter.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "listening\n");
    match Channel::connect_abstract(name.as_bytes(), &PeerPolicy::SameUser) {
        Err(Error::PeerRejected { uid, pid }) => {
            assert_eq!(uid, Some(NOBODY));
            assert_eq!(pid, Some(squatter.id()));
        }
        other => panic!("expected PeerRejected, got {other:?}"),
    }
    // An explicit policy admits that user (the connection waits in the squatter's backlog).
    let admitted = Channel::connect_abstract(name.as_bytes(), &PeerPolicy::Uids(vec![NOBODY]));
    assert!(admitted.is_ok(), "{admitted:?}");
    let _ = squatter.kill();
    let _ = squatter.wait();
}

#[test]
fn the_same_user_is_admitted_and_its_pid_is_known() {
    let name = unique_name("same");
    let listener = ChannelListener::bind_abstract(name.as_bytes()).unwrap();
    let mut child =
        std::process::Command::new(PEER).args(["connect-abstract", &name]).spawn().unwrap();
    let ch = listener.accept().unwrap();
    assert_eq!(ch.peer_credentials().pid, Some(child.id()));
    assert_eq!(ch.peer_credentials().uid, Some(integration_tests::euid()));
    ch.send(b"welcome", &[]).unwrap();
    assert!(child.wait().unwrap().success());
}
