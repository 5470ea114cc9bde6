//! The supervisor with the flags a user gets, under faults from outside: workers killed or
//! stopped by someone else, programs that cannot start, bad input to the supervisor's own
//! sockets, descriptor exhaustion. Every test here runs with default flags unless it says why
//! not. (prefork_worker_failures.rs: the hand-off's guarantees when workers fail or break the
//! protocol, with flags tuned for each case.)
#![cfg(target_os = "linux")] // reads /proc, sends signals
#![allow(clippy::print_stderr)] // the load tests report their figures

mod testenv;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testenv::*;

const LISTEN: [&str; 2] = ["-l", "http=tcp://127.0.0.1:0"];

/// 3,000 connect-per-request clients over 16 threads while a random worker is killed with
/// `SIGKILL` every 50 ms, all with default flags: at least 97% answered, every unanswered
/// request one the supervisor counted as lost mid-request, none refused, and the supervisor
/// still running at the end.
fn kill_9_with_defaults(name: &str, cmd: &[&str]) {
    const TOTAL: usize = 3000;
    let mut env = TestEnv::new(name);
    let mut args = LISTEN.to_vec();
    args.extend(["-w", "4"]);
    env.serve(&args, cmd);
    let addr = env.wait_ready(4);
    let stop = Arc::new(AtomicBool::new(false));
    let killer = kill_randomly(env.pid(), Duration::from_millis(50), Arc::clone(&stop));
    let started = Instant::now();
    let l = load(addr, TOTAL, 16);
    stop.store(true, Ordering::SeqCst);
    let kills = killer.join().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // the last deaths are settled
    assert!(env.running(), "the supervisor gave up:\n{}", env.log_text());
    let t = env.totals();
    let lost = t["lost_mid_request"].as_u64().unwrap() as usize;
    eprintln!(
        "{name}: kill -9 every 50ms, default flags: {kills} kills in {:?}; answered {}/{TOTAL} \
         ({:.2}%); lost mid-request {lost}; re-dispatched {}; restarts {}; refused {}",
        started.elapsed(),
        l.ok,
        100.0 * l.ok as f64 / TOTAL as f64,
        t["redispatched"],
        t["restarts"],
        l.connect_failed
    );
    assert!(kills >= 5, "the killer ran");
    assert_eq!(l.connect_failed, 0, "refused: {:?}", l.errors);
    assert_eq!(l.failed, lost, "unanswered == acknowledged-then-died: {:?}\n{t}", l.errors);
    assert!(l.ok * 100 >= TOTAL * 97, "only {} of {TOTAL} answered: {:?}", l.ok, l.errors);
    // Every slot has a worker again.
    env.wait_ready(4);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(15)).success(), "{}", env.log_text());
}

#[test]
fn kill_9_with_default_flags_rust_worker() {
    // A 1 ms service time (the worker's own flag, not the supervisor's) keeps requests in
    // flight, so kills land mid-request too.
    kill_9_with_defaults("kill9-rust", &[DEMO_WORKER, "--delay-ms", "1"]);
}

#[test]
fn kill_9_with_default_flags_python_worker() {
    assert!(have_python(), "python3 is needed (scripts/setup.sh installs it)");
    let worker = python_worker();
    kill_9_with_defaults("kill9-python", &["python3", worker.to_str().unwrap()]);
}

/// Runs connect-per-request clients on `threads` threads until `stop`; counts answers and
/// failures as they happen.
struct Clients {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(addr: SocketAddr, threads: usize) -> Clients {
        let c = Clients {
            ok: Arc::default(),
            failed: Arc::default(),
            refused: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let threads = (0..threads)
            .map(|_| {
                let (ok, failed, refused, errors, stop) = (
                    Arc::clone(&c.ok),
                    Arc::clone(&c.failed),
                    Arc::clone(&c.refused),
                    Arc::clone(&c.errors),
                    Arc::clone(&c.stop),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match get(addr) {
                            Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                            Err(e) => {
                                if e.starts_with("connect") {
                                    refused.fetch_add(1, Ordering::SeqCst);
                                }
                                errors.lock().unwrap().push(e);
                                failed.fetch_add(1, Ordering::SeqCst)
                            }
                        };
                    }
                })
            })
            .collect();
        Clients { threads, ..c }
    }

    fn answered(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops the clients and waits for the requests in flight.
    fn finish(self) -> (usize, usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.refused.load(Ordering::SeqCst),
            errors,
        )
    }
}

#[test]
fn a_stopped_worker_is_replaced_and_the_others_keep_serving() {
    // One of 4 workers is stopped (SIGSTOP) for 8 s under load. Its unacknowledged connections
    // go to other workers after --ack-timeout (default 5 s); no new connection goes to it
    // meanwhile; the rate holds; the supervisor answers status at once throughout. The
    // workers take up to 512 connections each, so a supervisor that sent to the stopped one
    // until it was full, or waited on its full channel, would stall or strand every client.
    let mut env = TestEnv::new("sigstop");
    let mut args = LISTEN.to_vec();
    args.extend(["-w", "4"]);
    env.serve(&args, &[DEMO_WORKER, "--capacity", "512"]);
    let addr = env.wait_ready(4);
    let clients = Clients::start(addr, 16);
    std::thread::sleep(Duration::from_millis(500)); // warm up
    let (n0, t0) = (clients.answered(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let before = (clients.answered() - n0) as f64 / t0.elapsed().as_secs_f64();

    let victim = env.worker_pids()[1];
    signal_pid(victim, "STOP");
    let (n1, t1) = (clients.answered(), Instant::now());
    // What it holds now includes every connection it had acknowledged when it stopped: those
    // cannot finish while it is stopped, and they are the only ones that may be lost.
    let held = env.status().expect("status")["programs"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == victim)
        .map_or(0, |w| w["live"].as_u64().unwrap()) as usize;
    let mut latencies = Vec::new();
    while t1.elapsed() < Duration::from_secs(8) {
        latencies.push(env.status_latency().expect("status while a worker is stopped"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = (clients.answered() - n1) as f64 / t1.elapsed().as_secs_f64();
    // If it is still there, it may carry on (it should be gone: checked below).
    let _ = std::process::Command::new("kill").args(["-CONT", &victim.to_string()]).status();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, refused, errors) = clients.finish();
    std::thread::sleep(Duration::from_millis(200));
    let t = env.totals();
    let lost = t["lost_mid_request"].as_u64().unwrap() as usize;
    latencies.sort();
    let slow = latencies.iter().filter(|d| **d > Duration::from_millis(50)).count();
    eprintln!(
        "SIGSTOP of 1 of 4 workers for 8s: {before:.0} req/s before, {during:.0} req/s during \
         ({:.0}%); answered {ok}, failed {failed} (lost mid-request {lost} of {held} it held), \
         re-dispatched {}; \
         status latency median {:?}, max {:?}, {slow}/{} over 50ms",
        100.0 * during / before,
        t["redispatched"],
        latencies[latencies.len() / 2],
        latencies.last().unwrap(),
        latencies.len()
    );
    assert_eq!(refused, 0, "{errors:?}");
    // A request the stopped worker had already acknowledged dies with it when it is replaced:
    // only those may fail.
    assert_eq!(failed, lost, "{errors:?}\n{t}");
    assert!(lost <= held, "lost {lost}, more than the {held} the stopped worker held: {t}");
    assert!(!alive(victim), "the stopped worker was not replaced:\n{}", env.log_text());
    assert!(t["misbehaving_killed"].as_u64().unwrap() >= 1, "{t}");
    assert!(during >= 0.6 * before, "rate fell from {before:.0} to {during:.0} req/s");
    assert!(slow * 10 <= latencies.len(), "status was slow: {latencies:?}");
    assert!(*latencies.last().unwrap() < Duration::from_secs(1), "status stalled: {latencies:?}");
    env.wait_ready(4);
}

#[test]
fn an_idle_hung_worker_misses_its_heartbeat_and_is_replaced() {
    // No load at all: only the heartbeat can tell that this worker hangs.
    let mut env = TestEnv::new("heartbeat");
    let mut args = LISTEN.to_vec();
    args.extend(["-w", "2"]);
    env.serve(&args, &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let victim = env.worker_pids()[0];
    signal_pid(victim, "STOP");
    let stopped = Instant::now();
    while alive(victim) {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "a stopped idle worker was not replaced:\n{}",
            env.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = stopped.elapsed();
    eprintln!("idle worker stopped: replaced after {took:?} (default --heartbeat-timeout 5s)");
    assert!(took >= Duration::from_secs(4), "replaced before the heartbeat timeout: {took:?}");
    assert!(env.log_text().contains("did not answer a heartbeat"), "{}", env.log_text());
    env.wait_ready(2);
    assert!(get(addr).is_ok());
}

#[test]
fn a_program_that_cannot_start_fails_fast() {
    // `false` exits 1 at once; python3 with a missing script exits 2; the shell closes its
    // control channel, then exits 1 a little later (its own failure, not a kill from outside,
    // though the channel said it was gone first): all are given up on with exit code 3,
    // quickly, with the reason.
    let missing = std::env::temp_dir().join("handover-no-such-app.py");
    let missing = missing.to_str().unwrap();
    let slow_exit = ["sh", "-c", "exec 3>&-; sleep 0.2; exit 1"];
    for cmd in [&["false"][..], &["python3", missing][..], &slow_exit[..]] {
        let mut env = TestEnv::new("cannot-start");
        env.serve(&LISTEN, cmd);
        let started = Instant::now();
        let st = env.wait_exit(Duration::from_secs(15));
        let log = env.log_text();
        assert_eq!(st.code(), Some(3), "{cmd:?}: {st}\n{log}");
        assert!(started.elapsed() < Duration::from_secs(8), "{cmd:?} took {:?}", started.elapsed());
        assert!(log.contains("crashed 5 times in a row") && log.contains("giving up"), "{log}");
    }
    // A program that is not there at all is refused before anything starts.
    let mut env = TestEnv::new("no-program");
    env.serve(&LISTEN, &["/nonexistent/handover-worker"]);
    let st = env.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(2), "{}", env.log_text());
    assert!(env.log_text().contains("no such file"), "{}", env.log_text());
}

#[test]
fn a_program_that_has_served_is_never_given_up_on() {
    // The workers start fine; then (the flag file exists) every new one exits at start. The
    // killed worker's slot crash-loops with backoff, reported as such, while the other
    // workers serve and the supervisor stays up; once the program starts again, so does the
    // slot.
    let mut env = TestEnv::new("proven");
    let flag = env.dir.join("broken");
    let script = format!("[ -e {} ] && exit 1; exec {DEMO_WORKER}", flag.display());
    let mut args = LISTEN.to_vec();
    args.extend(["-w", "2"]);
    env.serve(&args, &["sh", "-c", &script]);
    let addr = env.wait_ready(2);
    std::fs::write(&flag, b"").unwrap();
    let victim = env.worker_pids()[0];
    signal_pid(victim, "KILL");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = env.status().expect("status");
        let states: Vec<String> = s["programs"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["state"].as_str().unwrap().to_owned())
            .collect();
        if states.iter().any(|s| s == "crash-looping") {
            break;
        }
        assert!(Instant::now() < deadline, "never crash-looping: {states:?}\n{}", env.log_text());
        assert!(get(addr).is_ok(), "the other worker stopped serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(env.running(), "gave up on a program that had served:\n{}", env.log_text());
    let l = load(addr, 100, 4);
    assert_eq!(l.ok, 100, "{:?}", l.errors);
    std::fs::remove_file(&flag).unwrap();
    env.wait_ready(2); // within the 5 s cap of the backoff
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

/// Opens `n` connections to `connect()` that each misbehave in one of three ways: garbage,
/// half a request then silence, or silence. Returns them, held open.
fn misbehaving_clients<S: Write>(n: usize, mut connect: impl FnMut() -> S, half: &[u8]) -> Vec<S> {
    (0..n)
        .map(|i| {
            let mut s = connect();
            match i % 3 {
                0 => {
                    let _ = s.write_all(b"\x00\xffGARBAGE\r\n\r\n not a frame at all \x7f\x01");
                }
                1 => {
                    let _ = s.write_all(half);
                }
                _ => {}
            }
            s
        })
        .collect()
}

#[test]
fn bad_input_to_the_control_socket_and_metrics_port_changes_nothing() {
    let mut env = TestEnv::new("badinput");
    let mut args = LISTEN.to_vec();
    args.extend(["-w", "2", "--metrics", "127.0.0.1:0"]);
    env.serve(&args, &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let log = env.log_text();
    let metrics: SocketAddr = log
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("metrics address in the log");
    let _ = env.status();
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = env.fd_count();

    // 200 each, held open at once; half a frame header on the control socket, half an HTTP
    // request on the metrics port.
    let control = env.control.clone();
    let ctl = misbehaving_clients(
        200,
        || std::os::unix::net::UnixStream::connect(&control).unwrap(),
        b"HNDV\x01\x01",
    );
    let web = misbehaving_clients(200, || TcpStream::connect(metrics).unwrap(), b"GET /metr");
    // Meanwhile: status answers at once, and the server serves.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        worst = worst.max(env.status_latency().expect("status under bad input"));
    }
    let l = load(addr, 200, 8);
    assert_eq!(l.ok, 200, "{:?}", l.errors);
    eprintln!("status under 400 bad connections: worst of 10 {worst:?}");
    assert!(worst < Duration::from_millis(500), "status was slow: {worst:?}");
    // The slow ones are cut off by their deadlines (5 s); garbage is dropped at once.
    std::thread::sleep(Duration::from_secs(6));
    for mut s in web {
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.read_to_end(&mut rest); // ended by the supervisor: EOF or reset, no hang
    }
    drop(ctl);
    // A real scrape works, and nothing leaked.
    let mut s = TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("handover_workers"), "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = env.fd_count();
    assert_eq!(fds_before, fds_after, "supervisor descriptors {fds_before} -> {fds_after}");
    assert!(env.running());
}

#[test]
fn out_of_descriptors_backs_off_and_loses_nothing() {
    // `ulimit -n 64`: with 4 workers of 16 slow connections each, the supervisor's copies
    // exhaust its descriptors and accept fails with EMFILE. It backs off, logs once per
    // interval, and every client is answered once connections finish.
    let mut env = TestEnv::new("emfile");
    let mut args = LISTEN.to_vec();
    args.extend(["-w", "4"]);
    env.serve_after("ulimit -n 64", &args, &[DEMO_WORKER, "--delay-ms", "200"]);
    let addr = env.wait_ready(4);
    let _ = env.status();
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = env.fd_count();
    let list_before = env.fd_list();
    let started = Instant::now();
    let l = load(addr, 600, 96);
    let took = started.elapsed();
    assert_eq!(l.ok, 600, "{:?}\n{}", l.errors, env.log_text());
    let log = env.log_text();
    let lines = log.matches("accept failed").count();
    eprintln!("ulimit -n 64: 600 requests from 96 clients answered in {took:?}; {lines} log lines");
    assert!(lines >= 1, "EMFILE never happened (the test did not test anything):\n{log}");
    assert!(lines as u64 <= took.as_secs() / 5 + 2, "logged {lines} times in {took:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.totals()["handled"], 600);
    // The status request's own control connection may still be open for a moment after its
    // reply arrived (the supervisor closes it once the send returns): a leak stays, that
    // does not.
    let deadline = Instant::now() + Duration::from_secs(2);
    while env.fd_count() != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        env.fd_count(),
        fds_before,
        "descriptors after the storm: {}\nbefore: {list_before}",
        env.fd_list()
    );
}

#[test]
fn a_stopped_sticky_worker_whose_channel_fills_never_stalls_the_supervisor() {
    // source-hash keeps every client of 127.0.0.1 on one home worker, even while it is slow.
    // Stopped, with room for 512 connections, its control channel fills long before its
    // capacity: from then on the supervisor must send elsewhere, never wait on that channel
    // and never spin on it, and still answer status; after --ack-timeout the stopped worker is
    // replaced and what it had not acknowledged is served by the other.
    let mut env = TestEnv::new("sticky-full");
    let mut args = LISTEN.to_vec();
    args.extend(["-w", "2", "--policy", "source-hash"]);
    env.serve(&args, &[DEMO_WORKER, "--capacity", "512"]);
    let addr = env.wait_ready(2);
    let home: u32 = get(addr).unwrap().trim().rsplit(' ').next().unwrap().parse().unwrap();
    signal_pid(home, "STOP");
    let clients = std::thread::spawn(move || load(addr, 450, 450));
    let stopped = Instant::now();
    let mut worst = Duration::ZERO;
    while stopped.elapsed() < Duration::from_secs(3) {
        worst = worst.max(env.status_latency().expect("status while the channel is full"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = clients.join().unwrap();
    let _ = std::process::Command::new("kill").args(["-CONT", &home.to_string()]).status();
    let t = env.totals();
    eprintln!(
        "stopped sticky worker: {}/450 answered in {:?}, re-dispatched {}; status worst {worst:?}",
        l.ok,
        stopped.elapsed(),
        t["redispatched"]
    );
    assert_eq!(l.ok, 450, "{:?}\n{t}", l.errors);
    assert!(worst < Duration::from_secs(1), "status stalled: {worst:?}");
    assert!(!alive(home), "the stopped worker was not replaced");
}
