//! The `classic_server` example end to end: the parent accepts, each client is served by its
//! own child process, by both hand-over routes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn example_exe() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/classic_server
    let exe = std::env::current_exe().unwrap();
    let name = format!("classic_server{}", std::env::consts::EXE_SUFFIX);
    exe.parent().unwrap().parent().unwrap().join("examples").join(name)
}

#[test]
fn each_client_is_served_by_its_own_child_by_both_routes() {
    let exe = example_exe();
    assert!(exe.exists(), "{} not built (cargo test builds examples)", exe.display());
    let mut parent = Command::new(&exe)
        .args(["127.0.0.1:0", "--max-conns", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(parent.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first.trim().rsplit(' ').next().unwrap().to_owned();
    let mut seen = Vec::new();
    for i in 0..2 {
        let c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (&c).write_all(format!("line {i}\nquit\n").as_bytes()).unwrap();
        let lines: Vec<String> = BufReader::new(&c).lines().map(Result::unwrap).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        if cfg!(target_os = "linux") {
            // The child holds the standard streams and the connection, not the listener.
            assert!(lines[0].contains("I hold 4 descriptors"), "{}", lines[0]);
        }
        assert_eq!(lines[1], format!("LINE {i}"));
        assert_eq!(lines[2], "bye");
        seen.push(lines[0].clone());
    }
    assert!(seen[0].contains("via inherit") && seen[1].contains("via channel"), "{seen:?}");
    let pid = |s: &str| s.split("child ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    assert_ne!(pid(&seen[0]), pid(&seen[1]), "both clients served by one process");
    assert_ne!(pid(&seen[0]), parent.id().to_string());
    assert!(parent.wait().unwrap().success());
}
