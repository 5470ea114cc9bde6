//! A child's standard input, output and error given as files, pipes, the null device, and
//! together with an inetd-style socket. The same tests on Unix and Windows (there the handles
//! become inheritable duplicates named in `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`).

mod util;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use handover::{AsSocketRef, Command, Stdio};
use util::{assert_exit, TempDir, PEER, WAIT};

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn stdin_stdout_and_stderr_are_the_files_given() {
    let dir = TempDir::new("stdio-files");
    let (input, out, err) = (dir.0.join("in"), dir.0.join("out"), dir.0.join("err"));
    std::fs::write(&input, "hello\n").unwrap();
    let mut child = Command::new(PEER)
        .arg("stdio-echo")
        .stdin(File::open(&input).unwrap())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    assert_exit(&mut child, 0);
    assert_eq!(read(&out), "out [hello]\n");
    assert_eq!(read(&err), "err [hello]\n");
}

#[test]
fn null_stdin_reads_nothing_and_null_stderr_takes_what_is_written() {
    let dir = TempDir::new("stdio-null");
    let out = dir.0.join("out");
    let mut child = Command::new(PEER)
        .arg("stdio-echo")
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A child whose write to standard error failed would exit 3.
    assert_exit(&mut child, 0);
    assert_eq!(read(&out), "out []\n");
}

#[test]
fn a_pipe_given_as_stdout_ends_when_the_child_exits() {
    let (mut reader, writer) = util::pipe();
    let dir = TempDir::new("stdio-pipe");
    let err = dir.0.join("err");
    let mut child = Command::new(PEER)
        .arg("stdio-echo")
        .stdin(Stdio::null())
        .stdout(writer) // our only copy of the write end goes to the child
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // The end of the stream comes only once no process holds the write end: neither this
    // one (spawn closed the duplicate it made) nor a child that should not have it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = String::new();
        let r = reader.read_to_string(&mut got).map(|_| got);
        let _ = tx.send(r);
    });
    let got = rx.recv_timeout(WAIT).expect("the pipe never reached its end").unwrap();
    assert_eq!(got, "out []\n");
    assert_exit(&mut child, 0);
    assert_eq!(read(&err), "err []\n");
}

/// An accepted connection and its client.
fn connection() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    (accepted, client)
}

#[test]
fn with_a_stdio_socket_stderr_is_what_is_given_and_stdout_can_replace_the_socket() {
    let dir = TempDir::new("stdio-socket");
    let (out, err) = (dir.0.join("out"), dir.0.join("err"));

    // The socket is standard input and output; standard error is the file.
    let (accepted, mut client) = connection();
    let mut child = Command::new(PEER)
        .arg("stdio-echo")
        .stdio_socket(accepted.as_socket_ref())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    drop(accepted);
    client.write_all(b"ping\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    client.read_to_string(&mut got).unwrap();
    assert_eq!(got, "out [ping]\n");
    assert_exit(&mut child, 0);
    assert_eq!(read(&err), "err [ping]\n");

    // Standard output given too: the socket stays standard input only.
    let (accepted, mut client) = connection();
    let mut child = Command::new(PEER)
        .arg("stdio-echo")
        .stdio_socket(accepted.as_socket_ref())
        .stdout(File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(accepted);
    client.write_all(b"pong\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    client.read_to_string(&mut got).unwrap();
    assert_eq!(got, "", "nothing is written to the socket");
    assert_exit(&mut child, 0);
    assert_eq!(read(&out), "out [pong]\n");
}

#[test]
fn a_stdio_converts_back_for_std_commands() {
    // What a `handover::Stdio` says, std's `Command` does too (here: the null device).
    let status = std::process::Command::new(PEER)
        .arg("stdio-echo")
        .stdin(std::process::Stdio::from(Stdio::null()))
        .stdout(std::process::Stdio::from(Stdio::null()))
        .stderr(std::process::Stdio::from(Stdio::null()))
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
}
