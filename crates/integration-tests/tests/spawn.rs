//! Spawned children: exactly the descriptors given, systemd and inetd conventions.
#![cfg(target_os = "linux")] // reads /proc/<pid>/fd

mod util;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use handover::{AsSocketRef, Command};
use util::{assert_exit, spawn_peer, TempDir, PEER, WAIT};

/// Held by the tests that leave a descriptor inheritable: one of them marks descriptors
/// close-on-exec process-wide, which must not happen to another's leak while it checks it.
static LEAKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A descriptor without FD_CLOEXEC, as careless C code would leave behind.
fn leaky_descriptor() -> OwnedFd {
    let file = File::open("/dev/null").unwrap();
    // SAFETY: dup of an open descriptor; the result is owned by the OwnedFd below.
    let raw = unsafe { libc::dup(file.as_raw_fd()) };
    assert!(raw >= 0);
    // SAFETY: raw is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

#[test]
fn a_spawned_child_has_exactly_the_descriptors_it_was_given() {
    let _serial = LEAKS.lock().unwrap_or_else(|e| e.into_inner());
    let _leak = leaky_descriptor();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(PEER)
        .arg("list-fds")
        .listen_socket("http", listener.as_socket_ref())
        .channel()
        .spawn()
        .unwrap();
    let ch = child.channel.take().unwrap();
    let report = ch.recv_timeout(util::WAIT).unwrap();
    // stdin, stdout, stderr, the listener at 3 and the channel at 4. Nothing else: not the
    // leaky descriptor, not the test harness's.
    assert_eq!(String::from_utf8(report.bytes).unwrap(), "0,1,2,3,4");
    assert_exit(&mut child, 0);
}

#[test]
fn listening_sockets_arrive_systemd_style_with_our_pid() {
    let dir = TempDir::new("listenfds");
    let out_path = dir.0.join("out");
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(PEER)
        .arg("listen-fds")
        .listen_socket("http", http.as_socket_ref())
        .listen_socket("dns", dns.as_socket_ref())
        .env("LISTEN_PID", "1") // a stale value from our own environment must not leak through
        .stdout(File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    assert_exit(&mut child, 0);
    let out = std::fs::read_to_string(&out_path).unwrap();
    let pid = child.id();
    assert!(out.contains(&format!("pid {pid}\n")), "{out}");
    assert!(out.contains(&format!("env LISTEN_PID {pid}\n")), "{out}");
    assert!(out.contains("socket http TCP listener\n"), "{out}");
    assert!(out.contains("socket dns UDP socket\n"), "{out}");
    assert!(out.contains("channel false\n"), "{out}");
}

#[test]
fn inetd_style_the_socket_is_stdin_and_stdout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, peer) = listener.accept().unwrap();
    let mut child = Command::new(PEER)
        .arg("inetd-echo")
        .stdio_socket(accepted.as_socket_ref())
        .spawn()
        .unwrap();
    drop(accepted);
    (&client).write_all(b"hi\n").unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    BufReader::new(&client).read_line(&mut line).unwrap();
    assert_eq!(line, format!("inetd {} peer={peer} hi\n", child.id()));
    assert_exit(&mut child, 0);
}

/// The descriptors an inetd-style `inetd-list-fds` child reports.
fn fds_of_inetd_child(trust_cloexec: bool) -> Vec<i32> {
    use handover::unix::CommandExt;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let mut child = Command::new(PEER)
        .arg("inetd-list-fds")
        .stdio_socket(accepted.as_socket_ref())
        .trust_cloexec(trust_cloexec)
        .spawn()
        .unwrap();
    drop(accepted);
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    BufReader::new(&client).read_line(&mut line).unwrap();
    assert_exit(&mut child, 0);
    let list = line.trim_end().strip_prefix("fds ").unwrap_or_else(|| panic!("{line:?}"));
    list.split(',').map(|fd| fd.parse().unwrap()).collect()
}

#[test]
fn trusting_cloexec_spawns_without_a_sweep_and_set_cloexec_from_makes_that_safe() {
    let _serial = LEAKS.lock().unwrap_or_else(|e| e.into_inner());
    let leak = leaky_descriptor();
    let raw = leak.as_raw_fd();
    // The default sweeps it away in the child.
    let fds = fds_of_inetd_child(false);
    assert!(!fds.contains(&raw), "{fds:?} has the leaky {raw}");
    // Trusting the flags skips the sweep (and lets std use posix_spawn): the caller's word is
    // all there is, so the leak gets through.
    let fds = fds_of_inetd_child(true);
    assert!(fds.contains(&raw), "{fds:?} lacks the leaky {raw}");
    assert!(fds.starts_with(&[0, 1, 2]), "{fds:?}");
    // Marked close-on-exec in this process, it stays here.
    handover::unix::set_cloexec_from(raw).unwrap();
    let fds = fds_of_inetd_child(true);
    assert!(!fds.contains(&raw), "{fds:?} still has {raw}");
    assert!(fds.starts_with(&[0, 1, 2]), "{fds:?}");
}

#[test]
fn the_inherited_channel_starts_blocking_for_programs_in_other_languages() {
    let (mut child, _ch) = spawn_peer("channel-is-blocking", &[]);
    assert_exit(&mut child, 0);
}

#[test]
fn a_missing_program_is_a_clear_error() {
    let err = Command::new("handover-no-such-program").spawn().unwrap_err();
    assert!(err.to_string().contains("not found in PATH"), "{err}");
}

#[test]
fn a_child_without_inherited_sockets_gets_an_empty_set() {
    // The helper's `list-fds` role requires a channel; spawned without one it must fail
    // cleanly (exit 3), not pick up a stray descriptor.
    let mut child = std::process::Command::new(PEER).arg("list-fds").spawn().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(3));
    let (mut child, ch) = spawn_peer("list-fds", &[]);
    assert_eq!(ch.recv_timeout(WAIT).unwrap().bytes, b"0,1,2,3");
    assert_exit(&mut child, 0);
}
