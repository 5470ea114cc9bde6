//! prefork's hand-off guarantees when workers fail: workers that die, break the protocol or
//! get killed, with flags tuned for each case; drain; descriptor leaks.
//! (faults_with_default_flags.rs: the same kind of faults with the defaults a user gets.)
#![cfg(target_os = "linux")] // reads /proc (tests/wine.rs drives the Windows supervisor)
#![allow(clippy::print_stderr)] // the kill -9 test reports its figures

mod testenv;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testenv::*;

fn listen() -> [&'static str; 2] {
    ["-l", "http=tcp://127.0.0.1:0"]
}

/// Runs `requests` over 8 client threads against a supervisor whose first worker misbehaves
/// as `mode`; every request must be answered and the supervisor must stay up.
fn survives(mode: &str, extra: &[&str]) -> serde_json::Value {
    survives_holding(mode, 5, extra)
}

/// [`survives`] with the misbehaving worker acting once it holds `count` connections.
fn survives_holding(mode: &str, count: usize, extra: &[&str]) -> serde_json::Value {
    let mut env = TestEnv::new(mode);
    let once = env.dir.join("once");
    let once = once.to_str().unwrap();
    let mut args = listen().to_vec();
    args.extend(["-w", "2", "--crash-limit", "0"]);
    args.extend(extra);
    let count = count.to_string();
    env.serve(&args, &[DEMO_WORKER, "--misbehave", mode, "--once", once, "--count", &count]);
    let addr = env.wait_ready(2);
    let l = load(addr, 200, 8);
    assert_eq!(l.ok, 200, "{mode}: failures {:?}\n{}", l.errors, env.log_text());
    let t = env.totals();
    assert_eq!(t["lost_mid_request"], 0, "{t}");
    assert!(env.status().is_some(), "supervisor stays up");
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
    t
}

#[test]
fn worker_dying_before_ack_loses_nothing() {
    // It dies once it holds two unacknowledged connections: two, because a worker holding two
    // while the others acknowledge is passed over as stalled (on a busy machine it might never
    // be given a third, and would then be killed by --ack-timeout instead of dying itself).
    let t = survives_holding("die-before-ack", 2, &[]);
    assert!(t["redispatched"].as_u64().unwrap() >= 2, "{t}");
    assert_eq!(t["misbehaving_killed"], 0, "it should have died by itself: {t}");
    assert!(t["restarts"].as_u64().unwrap() >= 1, "{t}");
}

#[test]
fn worker_dying_right_after_finished_has_answered() {
    // The worker wrote the whole response and said FINISHED, then died without ending the
    // stream: what it sent before dying counts, so the connection is handled, not lost, and
    // the client gets its end of stream (from the supervisor closing its copy), not a reset.
    let t = survives("die-after-finished", &[]);
    assert_eq!(t["handled"], 200, "{t}");
    assert!(t["restarts"].as_u64().unwrap() >= 1, "the misbehaving worker never died: {t}");
}

#[test]
fn garbage_on_the_control_channel_gets_the_worker_replaced() {
    let t = survives("garbage", &[]);
    assert!(t["misbehaving_killed"].as_u64().unwrap() >= 1, "{t}");
    assert!(t["redispatched"].as_u64().unwrap() >= 1, "{t}");
}

#[test]
fn wrong_ack_id_gets_the_worker_replaced() {
    let t = survives("wrong-ack", &[]);
    assert!(t["misbehaving_killed"].as_u64().unwrap() >= 1, "{t}");
    assert!(t["redispatched"].as_u64().unwrap() >= 1, "{t}");
}

#[test]
fn worker_that_never_acks_is_replaced() {
    let t = survives("never-ack", &["--ack-timeout", "300ms"]);
    assert!(t["misbehaving_killed"].as_u64().unwrap() >= 1, "{t}");
    assert!(t["redispatched"].as_u64().unwrap() >= 1, "{t}");
}

#[test]
fn crash_loop_is_detected() {
    let mut env = TestEnv::new("crashloop");
    let mut args = listen().to_vec();
    args.extend(["-w", "2", "--crash-limit", "4"]);
    env.serve(&args, &[DEMO_WORKER, "--misbehave", "exit"]);
    let st = env.wait_exit(Duration::from_secs(15));
    assert_eq!(st.code(), Some(3), "{}", env.log_text());
    let log = env.log_text();
    assert!(log.contains("crashed 4 times in a row") && log.contains("giving up"), "{log}");
}

#[test]
fn sigterm_during_load_completes_in_flight_requests() {
    let mut env = TestEnv::new("sigterm");
    let mut args = listen().to_vec();
    args.extend(["-w", "2"]);
    env.serve(&args, &[DEMO_WORKER, "--delay-ms", "300"]);
    let addr = env.wait_ready(2);
    let clients: Vec<_> = (0..16).map(|_| std::thread::spawn(move || get(addr))).collect();
    std::thread::sleep(Duration::from_millis(100));
    env.signal("TERM");
    for c in clients {
        let r = c.join().unwrap();
        assert!(r.is_ok(), "in-flight request failed: {r:?}\n{}", env.log_text());
    }
    let st = env.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}\n{}", env.log_text());
    // The listener is closed now: new clients are refused, not left hanging.
    let err = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn sighup_restarts_workers_without_refusing_clients() {
    let mut env = TestEnv::new("sighup");
    let mut args = listen().to_vec();
    args.extend(["-w", "2", "--min-uptime", "50ms"]);
    env.serve(&args, &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let before = env.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let client = std::thread::spawn(move || {
        let mut l = Load::default();
        while !s2.load(Ordering::SeqCst) {
            match get(addr) {
                Ok(_) => l.ok += 1,
                Err(e) => {
                    l.failed += 1;
                    l.errors.push(e);
                }
            }
        }
        l
    });
    env.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = env.worker_pids();
        if now.len() == 2 && now.iter().all(|p| !before.contains(p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers not replaced: {before:?} -> {now:?}\n{}",
            env.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let l = client.join().unwrap();
    assert_eq!(l.failed, 0, "{:?}", l.errors);
    assert!(l.ok > 0);
}

#[test]
fn kill_9_under_load_loses_only_acknowledged_mid_request_connections() {
    let mut env = TestEnv::new("kill9");
    let mut args = listen().to_vec();
    // Tuned flags (never give up, a short min-uptime) with 5,000 requests and a 3 ms service
    // time; faults_with_default_flags.rs runs the same schedule with the defaults a user gets.
    args.extend(["-w", "4", "--crash-limit", "0", "--min-uptime", "10ms"]);
    // A 3 ms service time keeps requests in flight, so kills land mid-request too.
    env.serve(&args, &[DEMO_WORKER, "--capacity", "4", "--delay-ms", "3"]);
    let addr = env.wait_ready(4);
    let stop = Arc::new(AtomicBool::new(false));
    let killer = kill_randomly(env.pid(), Duration::from_millis(50), Arc::clone(&stop));
    let started = Instant::now();
    let l = load(addr, 5000, 8);
    stop.store(true, Ordering::SeqCst);
    let kills = killer.join().unwrap();
    // Let the supervisor settle the last deaths before reading its counters.
    std::thread::sleep(Duration::from_millis(300));
    let t = env.totals();
    let lost = t["lost_mid_request"].as_u64().unwrap() as usize;
    eprintln!(
        "kill -9 every 50ms: {kills} kills in {:?}; answered {}/5000 ({:.2}%); lost mid-request {lost}; \
         re-dispatched {}; refused {}",
        started.elapsed(),
        l.ok,
        100.0 * l.ok as f64 / 5000.0,
        t["redispatched"],
        l.connect_failed
    );
    assert!(kills >= 5, "the killer ran");
    assert_eq!(l.connect_failed, 0, "no connection refused: {:?}", l.errors);
    assert_eq!(l.failed, lost, "unanswered == acknowledged-then-died: {:?}\n{t}", l.errors);
    assert_eq!(l.ok + l.failed, 5000);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn no_descriptor_growth_after_20000_hand_offs() {
    let mut env = TestEnv::new("fds");
    let mut args = listen().to_vec();
    args.extend(["-w", "4"]);
    env.serve(&args, &[DEMO_WORKER]);
    let addr = env.wait_ready(4);
    let warm = load(addr, 500, 8);
    assert_eq!(warm.ok, 500, "{:?}", warm.errors);
    let _ = env.status(); // the control path has run once too
    std::thread::sleep(Duration::from_millis(100));
    let before = env.fd_count();
    let l = load(addr, 20_000, 8);
    assert_eq!(l.ok, 20_000, "{:?}", l.errors);
    let _ = env.status();
    std::thread::sleep(Duration::from_millis(200));
    let after = env.fd_count();
    assert_eq!(
        before, after,
        "supervisor descriptors: {before} before, {after} after 20,000 hand-offs"
    );
    assert_eq!(env.totals()["handled"], 20_500);
}
