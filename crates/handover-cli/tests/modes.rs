//! spawn and shared modes with real processes on loopback.
#![cfg(unix)] // drives a Unix supervisor (tests/wine.rs drives the Windows one)

mod testenv;

use std::time::Duration;

use testenv::*;

fn serve_and_check(
    env: &mut TestEnv,
    args: &[&str],
    cmd: &[&str],
    requests: usize,
    ready: usize,
) -> Load {
    let mut all = vec!["-l", "http=tcp://127.0.0.1:0"];
    all.extend(args);
    env.serve(&all, cmd);
    let addr = env.wait_ready(ready);
    let l = load(addr, requests, 8);
    assert_eq!(l.ok, requests, "failures: {:?}\n{}", l.errors, env.log_text());
    env.signal("TERM");
    let st = env.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}\n{}", env.log_text());
    l
}

#[test]
fn spawn_mode_stdio_serves_1000_requests() {
    let mut env = TestEnv::new("spawn-stdio");
    let l = serve_and_check(&mut env, &["--mode", "spawn", "-w", "4"], &[DEMO_WORKER], 1000, 0);
    // One process per connection.
    assert_eq!(l.bodies.len(), 1000);
}

#[test]
fn spawn_mode_fd3_serves_requests() {
    let mut env = TestEnv::new("spawn-fd3");
    let l = serve_and_check(
        &mut env,
        &["--mode", "spawn", "--socket", "fd3", "-w", "4"],
        &[DEMO_WORKER],
        300,
        0,
    );
    assert_eq!(l.bodies.len(), 300);
}

#[test]
fn spawn_mode_channel_hands_each_connection_to_a_one_shot_worker() {
    // `--socket channel`: each child is a prefork worker that gets one CONNECTION and then
    // DRAIN over its channel; it serves the connection and exits (the supervisor's clean exit
    // within 10 s of SIGTERM shows none was left waiting for more).
    let mut env = TestEnv::new("spawn-channel");
    let l = serve_and_check(
        &mut env,
        &["--mode", "spawn", "--socket", "channel", "-w", "4"],
        &[DEMO_WORKER],
        300,
        0,
    );
    assert_eq!(l.bodies.len(), 300);
}

#[test]
fn spawn_mode_children_get_no_descriptor_the_supervisor_inherited() {
    // Spawn-mode children start with posix_spawn, which sweeps nothing: the supervisor marked
    // what it inherited close-on-exec at start-up instead.
    const STRAY: u32 = 7; // one digit: sh redirects no higher
    let mut env = TestEnv::new("spawn-stray");
    let script =
        "read -r line; printf 'fds'; for f in /proc/$$/fd/*; do printf ' %s' \"${f##*/}\"; done";
    env.serve_with_stray_fd(
        STRAY,
        &["-l", "tcp://127.0.0.1:0", "--mode", "spawn", "-w", "2"],
        &["sh", "-c", script],
    );
    let addr = env.wait_ready(0);
    let stray = std::fs::read_link(format!("/proc/{}/fd/{STRAY}", env.pid()));
    assert_eq!(stray.ok(), Some("/dev/null".into()), "the supervisor lacks the stray descriptor");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut s, b"hello\n").unwrap(); // one line: all of it is read
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    let fds: Vec<&str> =
        out.strip_prefix("fds ").unwrap_or_else(|| panic!("{out:?}")).split(' ').collect();
    assert!(fds.starts_with(&["0", "1", "2"]), "{fds:?}");
    assert!(!fds.contains(&STRAY.to_string().as_str()), "{fds:?} has the stray {STRAY}");
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn spawn_mode_waits_over_the_cap_instead_of_dropping() {
    // Two children at once, each taking 200ms: 12 clients at once must all be served.
    let mut env = TestEnv::new("spawn-cap");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "--mode", "spawn", "-w", "2"],
        &[DEMO_WORKER, "--delay-ms", "200"],
    );
    let addr = env.wait_ready(0);
    let start = std::time::Instant::now();
    let l = load(addr, 12, 12);
    assert_eq!(l.ok, 12, "{:?}", l.errors);
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "cap not enforced: {:?}",
        start.elapsed()
    );
}

#[test]
fn shared_mode_serves_1000_requests() {
    let mut env = TestEnv::new("shared");
    let l = serve_and_check(&mut env, &["--mode", "shared", "-w", "4"], &[DEMO_WORKER], 1000, 4);
    assert!(l.bodies.keys().all(|b| b.starts_with("hello from the rust worker")));
}

#[test]
fn shared_mode_python_worker_serves_1000_requests() {
    assert!(have_python(), "python3 (3.9+) is needed for the Python worker test");
    let py = python_worker();
    let mut env = TestEnv::new("shared-py");
    let l = serve_and_check(
        &mut env,
        &["--mode", "shared", "-w", "4"],
        &["python3", py.to_str().unwrap()],
        1000,
        4,
    );
    assert!(l.bodies.keys().all(|b| b.starts_with("hello from the python worker")));
}

#[test]
fn shared_mode_restarts_a_killed_worker_on_the_same_listener() {
    let mut env = TestEnv::new("shared-restart");
    env.serve(&["-l", "tcp://127.0.0.1:0", "--mode", "shared", "-w", "2"], &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let victim = env.worker_pids()[0];
    std::process::Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while env.status().unwrap()["totals"]["restarts"] == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", env.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    env.wait_ready(2);
    assert_eq!(load(addr, 100, 4).ok, 100);
}

fn have_node() -> bool {
    std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn node_worker() -> String {
    python_worker().with_file_name("worker.js").to_str().unwrap().to_owned()
}

#[test]
fn shared_mode_node_worker_serves_requests() {
    assert!(have_node(), "node is needed for the Node.js worker test");
    let mut env = TestEnv::new("shared-node");
    let l = serve_and_check(
        &mut env,
        &["--mode", "shared", "-w", "2"],
        &["node", &node_worker()],
        300,
        2,
    );
    assert!(l.bodies.keys().all(|b| b.starts_with("hello from the node worker")));
}

#[test]
fn spawn_mode_node_worker_serves_requests() {
    assert!(have_node(), "node is needed for the Node.js worker test");
    let mut env = TestEnv::new("spawn-node");
    let l = serve_and_check(
        &mut env,
        &["--mode", "spawn", "--socket", "fd3", "-w", "4"],
        &["node", &node_worker()],
        40,
        0,
    );
    assert_eq!(l.bodies.len(), 40);
}
