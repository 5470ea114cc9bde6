#![cfg(windows)] // job objects; runs under Wine too.
//! `handover::windows::JobObject` with real process trees: the helper's `process-tree` role
//! starts a grandchild, and each of the two holds a TCP connection to the test for exactly as
//! long as it lives, so the test sees a process end as the end of its connection.

mod util;

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use handover::windows::{CommandExt, JobObject};
use handover::{Child, Command};
use util::{PEER, WAIT};

/// How long a process that should live is watched for an unexpected end.
const STILL_ALIVE: Duration = Duration::from_millis(700);

/// A child (`process-tree`) and its grandchild (`tree-leaf`), each with its connection.
struct Tree {
    child: Child,
    child_conn: TcpStream,
    leaf_conn: TcpStream,
}

/// Starts `process-tree` from `cmd` and waits until both processes have reported in.
fn start_tree(listener: &TcpListener, cmd: &mut Command<'_>) -> Tree {
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = cmd.arg("process-tree").arg(&addr).spawn().unwrap();
    let mut child_conn = None;
    let mut leaf_conn = None;
    for _ in 0..2 {
        let (conn, line) = match accept_line(listener) {
            Some(c) => c,
            None => {
                let _ = child.kill();
                panic!("process-tree did not report in within {WAIT:?}");
            }
        };
        match line.split_whitespace().next() {
            Some("child") => child_conn = Some(conn),
            Some("leaf") => leaf_conn = Some(conn),
            _ => panic!("unexpected report {line:?}"),
        }
    }
    Tree { child, child_conn: child_conn.unwrap(), leaf_conn: leaf_conn.unwrap() }
}

/// Accepts one connection within `WAIT` and reads its first line.
fn accept_line(listener: &TcpListener) -> Option<(TcpStream, String)> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    Some((conn, line))
}

/// Whether the process at the other end of `conn` ended within `within` (its end of the
/// connection closed: end of stream, or reset).
fn ended_within(conn: &TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 16];
    match (&*conn).read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected {n} bytes from a tree process"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// Waits up to `WAIT` for `child` to exit.
fn exit_status(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {} did not exit within {WAIT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_child_spawned_with_job_is_in_the_job() {
    let job = JobObject::new().unwrap();
    assert_eq!(job.active_processes().unwrap(), 0);
    let mut child =
        Command::new(PEER).args(["exit-after", "60000", "0"]).job(&job).spawn().unwrap();
    let count = job.active_processes().unwrap();
    let _ = child.kill();
    assert_eq!(count, 1, "the freshly spawned child is the job's one process");
    exit_status(&mut child);
    let deadline = Instant::now() + WAIT;
    while job.active_processes().unwrap() != 0 {
        assert!(Instant::now() < deadline, "the job still counts the killed child");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn terminate_ends_the_child_and_its_grandchild() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let job = JobObject::new().unwrap();
    let mut tree = start_tree(&listener, Command::new(PEER).job(&job));
    assert_eq!(job.active_processes().unwrap(), 2, "child and grandchild are in the job");
    job.terminate(7).unwrap();
    assert_eq!(exit_status(&mut tree.child).code(), Some(7));
    assert!(ended_within(&tree.child_conn, WAIT), "the child lives on");
    assert!(ended_within(&tree.leaf_conn, WAIT), "the grandchild lives on");
    assert_eq!(job.active_processes().unwrap(), 0);
}

#[test]
fn dropping_the_last_job_handle_kills_the_tree() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let job = JobObject::new().unwrap();
    let mut tree = start_tree(&listener, Command::new(PEER).job(&job));
    assert!(!ended_within(&tree.leaf_conn, STILL_ALIVE), "the grandchild ended by itself");
    drop(job);
    exit_status(&mut tree.child);
    assert!(ended_within(&tree.child_conn, WAIT), "the child outlived its job");
    assert!(ended_within(&tree.leaf_conn, WAIT), "the grandchild outlived its job");
}

#[test]
fn a_command_without_job_is_unaffected() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let job = JobObject::new().unwrap();
    let mut inside = start_tree(&listener, Command::new(PEER).job(&job));
    let mut outside = start_tree(&listener, &mut Command::new(PEER));
    assert_eq!(job.active_processes().unwrap(), 2, "only the tree spawned with .job counts");

    job.terminate(7).unwrap();
    assert_eq!(exit_status(&mut inside.child).code(), Some(7));
    assert!(ended_within(&inside.leaf_conn, WAIT));
    drop(job);
    assert!(!ended_within(&outside.child_conn, STILL_ALIVE), "terminate reached a non-member");
    assert!(!ended_within(&outside.leaf_conn, STILL_ALIVE), "terminate reached a non-member");
    assert!(outside.child.try_wait().unwrap().is_none());

    // Closing our ends lets both go.
    drop(outside.leaf_conn);
    drop(outside.child_conn);
    assert_eq!(exit_status(&mut outside.child).code(), Some(0));
}
