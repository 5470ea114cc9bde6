//! The dispatch path, one connection at a time: connect → the server accepts → hands the
//! connection to a worker process (→ the worker acknowledges) → the worker answers one HTTP
//! request → close. The same client and the same worker code for each server; only the
//! dispatch differs. Run after `cargo build --release -p handover-cli` (bench/run.sh does):
//!
//! ```text
//! cargo bench -p bench-servers --bench dispatch
//! ```
#![allow(clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

const WORKER: &str = env!("CARGO_BIN_EXE_bench-worker");
const SCM_ACCEPTOR: &str = env!("CARGO_BIN_EXE_scm-acceptor");

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server on {addr} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
}

fn one_request(addr: SocketAddr, buf: &mut [u8]) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
    let mut got = 0;
    while got < bench_servers::RESPONSE.len() {
        let n = s.read(&mut buf[got..]).expect("read");
        assert!(n > 0, "connection closed before the response");
        got += n;
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn handover_exe() -> Option<PathBuf> {
    // target/release/deps/dispatch-… -> target/release/handover
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("handover");
    p.exists().then_some(p)
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("dispatch_one_connection");
    g.throughput(Throughput::Elements(1));
    let mut buf = [0u8; 256];

    let addr = free_addr();
    let _s = Server(
        Command::new(WORKER)
            .args(["reuseport", &addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(addr);
    g.bench_function("no_hand_off_reuseport", |b| b.iter(|| one_request(addr, &mut buf)));
    drop(_s);

    let addr = free_addr();
    let _s = Server(
        Command::new(SCM_ACCEPTOR)
            .args([&addr.to_string(), "1", WORKER])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(addr);
    g.bench_function("hand_rolled_scm_rights", |b| b.iter(|| one_request(addr, &mut buf)));
    drop(_s);

    match handover_exe() {
        Some(exe) => {
            let addr = free_addr();
            let _s = Server(
                Command::new(exe)
                    .args(["serve", "--listen", &format!("tcp://{addr}"), "--workers", "1", "--"])
                    .args([WORKER, "prefork"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            wait_ready(addr);
            g.bench_function("handover_prefork_acked", |b| b.iter(|| one_request(addr, &mut buf)));
        }
        None => eprintln!("skipped handover_prefork_acked: build target/release/handover first"),
    }
    g.finish();
    c.final_summary();
}
