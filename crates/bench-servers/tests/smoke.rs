//! The benchmark's own smoke test: each workload bench/run.sh measures runs, briefly, against
//! the servers it compares, with no error. So a workload cannot rot unnoticed: a worker that
//! stopped ending connections on `Connection: close` fails the `close` workload with timeouts,
//! an acceptor that lost track of its workers' capacity stalls it.
#![cfg(target_os = "linux")] // SCM_RIGHTS reference servers; bench/run.sh is Linux-only

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const ACCEPTOR: &str = env!("CARGO_BIN_EXE_scm-acceptor");
const WORKER: &str = env!("CARGO_BIN_EXE_bench-worker");

/// The supervisor, built beside this package's binaries by a workspace build.
fn handover() -> PathBuf {
    let dir = PathBuf::from(LOADGEN).parent().unwrap().to_path_buf();
    let exe = dir.join("handover");
    assert!(
        exe.exists(),
        "{} is missing: build the workspace (cargo test --workspace)",
        exe.display()
    );
    exe
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server and waits until it accepts on `port`.
fn start(port: u16, cmd: &mut Command) -> Server {
    let server = Server(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// Runs the load generator; returns its figures by name.
fn load(port: u16, args: &[&str]) -> std::collections::HashMap<String, f64> {
    let out = Command::new(LOADGEN)
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .args(["--duration", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "loadgen: {}", String::from_utf8_lossy(&out.stderr));
    let line = BufReader::new(&out.stdout[..]).lines().next().unwrap().unwrap();
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

fn assert_clean(what: &str, figures: &std::collections::HashMap<String, f64>) {
    assert!(figures["requests"] >= 50.0, "{what}: {figures:?}");
    for k in ["refused", "reset", "unanswered", "timeouts", "other"] {
        assert_eq!(figures[k], 0.0, "{what}: {k}: {figures:?}");
    }
}

#[test]
fn every_workload_runs_against_the_acceptor_and_handover_with_full_workers() {
    let close = ["--mode", "close", "--concurrency", "8"];
    for cap in [None, Some("1")] {
        let port = free_port();
        let mut cmd = Command::new(ACCEPTOR);
        cmd.args([&format!("127.0.0.1:{port}"), "2", WORKER]).args(cap);
        let _server = start(port, &mut cmd);
        assert_clean(&format!("acceptor, capacity {cap:?}, close"), &load(port, &close));
        if cap.is_none() {
            for mode in ["connect", "keepalive"] {
                let f = load(port, &["--mode", mode, "--concurrency", "8"]);
                assert_clean(&format!("acceptor, {mode}"), &f);
            }
            let f = load(port, &["--mode", "close", "--concurrency", "16", "--rate", "200"]);
            assert_clean("acceptor, close at 200/s", &f);
        }
    }
    for cap in ["65536", "1"] {
        let port = free_port();
        let mut cmd = Command::new(handover());
        cmd.args(["serve", "--listen", &format!("tcp://127.0.0.1:{port}"), "--workers", "2"])
            .args(["--control", &format!("{}/smoke-{port}.sock", std::env::temp_dir().display())])
            .args(["--", WORKER, "prefork", "--capacity", cap]);
        let _server = start(port, &mut cmd);
        assert_clean(&format!("handover, capacity {cap}, close"), &load(port, &close));
        if cap != "1" {
            // (A kept-alive connection holds its worker: with capacity 1, the other clients
            // would wait for the end of the run.)
            let f = load(port, &["--mode", "keepalive", "--concurrency", "8"]);
            assert_clean(&format!("handover, capacity {cap}, keepalive"), &f);
        }
    }
}
