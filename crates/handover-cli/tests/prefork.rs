//! prefork mode with real workers on loopback.
#![cfg(unix)] // drives a Unix supervisor (tests/wine.rs drives the Windows one)

mod testenv;

use std::time::Duration;

use testenv::*;

fn serve_1000(env: &mut TestEnv, policy: &str, cmd: &[&str]) {
    env.serve(&["-l", "http=tcp://127.0.0.1:0", "-w", "4", "--policy", policy], cmd);
    let addr = env.wait_ready(4);
    let l = load(addr, 1000, 8);
    assert_eq!(l.ok, 1000, "failures: {:?}\n{}", l.errors, env.log_text());
    // Every worker took a share (round-robin, least-connections) or, for source-hash, one
    // client address went to one worker.
    let t = env.totals();
    assert_eq!(t["handled"], 1000, "{t}");
    assert_eq!(t["lost_mid_request"], 0);
    assert_eq!(t["redispatched"], 0);
    let status = env.status().unwrap();
    let handled: Vec<u64> = status["programs"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["handled"].as_u64().unwrap())
        .collect();
    assert_eq!(handled.iter().sum::<u64>(), 1000);
    if policy == "source-hash" {
        assert_eq!(handled.iter().filter(|&&h| h > 0).count(), 1, "{handled:?}");
    } else {
        assert!(handled.iter().all(|&h| h > 0), "{handled:?}");
    }
    env.signal("TERM");
    let st = env.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}\n{}", env.log_text());
}

#[test]
fn the_client_sees_the_end_of_a_response_at_once() {
    // Each request takes 200 ms: by then the supervisor reads the worker's channel only every
    // 32 ms, so FINISHED (and the supervisor closing its copy) comes 0-32 ms late, 16 ms in
    // the middle. The worker ends the stream itself right after FINISHED, so the end follows
    // the response at once. The median of 8 is judged, so one scheduling hiccup on a busy
    // machine does not decide it.
    use std::io::{Read, Write};
    const N: usize = 8;
    let mut env = TestEnv::new("prompt-eof");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "1"], &[DEMO_WORKER, "--delay-ms", "200"]);
    let addr = env.wait_ready(1);
    let mut waits = Vec::new();
    for _ in 0..N {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let complete = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
            let len = head.lines().find_map(|l| l.strip_prefix("Content-Length: "));
            len.and_then(|l| l.trim().parse::<usize>().ok()).is_some_and(|l| body.len() >= l)
        };
        while !complete(&got) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "ended early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let t = std::time::Instant::now();
        assert_eq!(s.read(&mut buf).unwrap(), 0, "more after the response");
        waits.push(t.elapsed());
    }
    waits.sort();
    let median = waits[N / 2];
    assert!(
        median < Duration::from_millis(5),
        "the end came {median:?} after the response (median; all: {waits:?})"
    );
    let t = env.totals();
    assert_eq!(
        (t["handled"].as_u64(), t["lost_mid_request"].as_u64()),
        (Some(N as u64), Some(0)),
        "{t}"
    );
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn rust_worker_serves_1000_requests_round_robin() {
    let mut env = TestEnv::new("rr");
    serve_1000(&mut env, "round-robin", &[DEMO_WORKER]);
}

#[test]
fn rust_worker_serves_1000_requests_least_connections() {
    let mut env = TestEnv::new("lc");
    serve_1000(&mut env, "least-connections", &[DEMO_WORKER]);
}

#[test]
fn rust_worker_serves_1000_requests_source_hash() {
    let mut env = TestEnv::new("sh");
    serve_1000(&mut env, "source-hash", &[DEMO_WORKER]);
}

#[test]
fn python_worker_serves_1000_requests() {
    assert!(have_python(), "python3 (3.9+) is needed for the Python worker test");
    let py = python_worker();
    let mut env = TestEnv::new("py");
    env.serve(&["-l", "http=tcp://127.0.0.1:0", "-w", "4"], &["python3", py.to_str().unwrap()]);
    let addr = env.wait_ready(4);
    let l = load(addr, 1000, 8);
    assert_eq!(l.ok, 1000, "failures: {:?}\n{}", l.errors, env.log_text());
    assert!(l.bodies.keys().all(|b| b.starts_with("hello from the python worker")));
    assert_eq!(l.bodies.len(), 4, "every worker served: {:?}", l.bodies);
    let t = env.totals();
    assert_eq!(t["handled"], 1000, "{t}");
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn tokio_worker_serves_1000_requests() {
    let mut env = TestEnv::new("tokio");
    env.serve(&["-l", "http=tcp://127.0.0.1:0", "-w", "4"], &[DEMO_WORKER, "--tokio"]);
    let addr = env.wait_ready(4);
    let l = load(addr, 1000, 8);
    assert_eq!(l.ok, 1000, "failures: {:?}\n{}", l.errors, env.log_text());
    assert!(l.bodies.keys().all(|b| b.starts_with("hello from the rust tokio worker")));
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
    assert_eq!(env.log_text().matches("worker exited").count(), 4);
}

/// A worker at its declared capacity gets its next connection as soon as it reports one
/// finished, not when a timer next looks: a worker of capacity 1 taking 40 ms per request,
/// with clients always waiting in the backlog, logs how long after each FINISHED the next
/// connection reached it. Reading on a timer (every 20 ms, or 1 ms after a dispatch doubling
/// to 32 ms while nothing arrives) gives gaps of up to 20 ms, about 10 ms in the middle;
/// reading on arrival gives a fraction of a millisecond. Judged on the median, 2 ms.
#[test]
fn a_full_worker_gets_its_next_connection_as_soon_as_it_reports_one_finished() {
    const N: usize = 24;
    let mut env = TestEnv::new("full-worker");
    let gaps_file = env.dir.join("gaps");
    let gaps_arg = gaps_file.to_str().unwrap().to_owned();
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "1"],
        &[DEMO_WORKER, "--capacity", "1", "--delay-ms", "40", "--gap-file", &gaps_arg],
    );
    let addr = env.wait_ready(1);
    let l = load(addr, N, 4);
    assert_eq!(l.ok, N, "failures: {:?}\n{}", l.errors, env.log_text());
    let (gaps, median) = read_gaps(&gaps_file);
    // Every connection after the first found one finished before it (the clients' next
    // connections wait in the backlog meanwhile), bar the few a client had not reopened yet.
    assert!(gaps.len() >= N - 4, "{} gaps for {N} connections: {gaps:?}", gaps.len());
    assert!(
        median < 2_000,
        "the next connection came {median} us after FINISHED (median; all: {gaps:?})"
    );
    env.signal("TERM");
    let st = env.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}\n{}", env.log_text());
}

/// A program that does not speak the worker protocol (a server that accepts by itself), run in
/// prefork with the default flags, is given up on at the first --start-timeout (10 s) with a
/// message that says what to do, not after five of them; and a client that connected
/// meanwhile is not held for the drain timeout (30 s) too.
#[test]
fn a_server_that_does_not_speak_the_protocol_fails_fast_and_says_what_to_do() {
    if !have_python() {
        panic!("python3 is needed (scripts/setup.sh installs it)");
    }
    let mut env = TestEnv::new("not-a-worker");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "2"],
        &["python3", "-m", "http.server", "--bind", "127.0.0.1", "0"],
    );
    let began = std::time::Instant::now();
    // The listener is up before any worker: find its address in the log.
    let addr = loop {
        let log = env.log_text();
        if let Some(a) = log.split("listening on tcp://").nth(1) {
            break a.split_whitespace().next().unwrap().to_owned();
        }
        assert!(began.elapsed() < Duration::from_secs(10), "no listener:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    use std::io::{Read, Write};
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let st = env.wait_exit(Duration::from_secs(30));
    let took = began.elapsed();
    assert_eq!(st.code(), Some(3), "{}", env.log_text());
    assert!(took < Duration::from_secs(16), "gave up after {took:?}:\n{}", env.log_text());
    let log = env.log_text();
    for says in ["does not speak the handover worker protocol", "--mode shared", "handover_worker"]
    {
        assert!(log.contains(says), "the log does not say {says:?}:\n{log}");
    }
    // The client got no answer and was let go (reset or closed), not held.
    let mut buf = [0u8; 64];
    let n = client.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
}
