//! The day-to-day controls (scale, recycling by requests and memory, connection
//! deadlines, staggered start, reloads that report, worker output), each seen from outside a
//! running supervisor, with the defaults users get unless a flag is the point of the test.
#![cfg(target_os = "linux")] // resident memory from /proc; the deadline's reset is Linux's

mod testenv;

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testenv::*;

fn ready_count(s: &serde_json::Value) -> usize {
    s["programs"][0]["workers"].as_array().map_or(0, |w| {
        w.iter().filter(|w| w["state"] == "ready" || w["state"] == "running").count()
    })
}

fn workers(s: &serde_json::Value) -> Vec<serde_json::Value> {
    s["programs"][0]["workers"].as_array().cloned().unwrap_or_default()
}

/// Requests answered, by the pid of the worker that answered.
fn by_pid(l: &Load) -> HashMap<u32, usize> {
    let mut m = HashMap::new();
    for (body, n) in &l.bodies {
        *m.entry(body_pid(body)).or_default() += n;
    }
    m
}

#[test]
fn scale_2_to_6_to_1_under_load_fails_nothing_and_drains_the_removed() {
    let mut env = TestEnv::new("scale");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "2"], &[DEMO_WORKER, "--delay-ms", "2"]);
    let addr = env.wait_ready(2);
    let stop = Arc::new(AtomicBool::new(false));
    let load = load_until(addr, 8, 40_000, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));

    let (ok, out) = env.handover("scale", &["6"]);
    assert!(ok && out.contains("2 -> 6"), "{out}");
    let s = env.wait_for("six ready", Duration::from_secs(10), |s| ready_count(s) == 6);
    assert_eq!(s["programs"][0]["workers_wanted"], 6);
    // The new slots take their share of the load.
    env.wait_for("new slots serving", Duration::from_secs(10), |s| {
        workers(s)
            .iter()
            .filter(|w| w["slot"].as_u64() >= Some(2))
            .all(|w| w["handled"].as_u64() > Some(0))
    });

    let (ok, out) = env.handover("scale", &["1"]);
    assert!(ok && out.contains("6 -> 1"), "{out}");
    let s = env.wait_for("one left", Duration::from_secs(10), |s| workers(s).len() == 1);
    assert_eq!(workers(&s)[0]["slot"], 0, "the highest slots go");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let l = load.join().unwrap();
    assert!(l.ok > 200, "too little load to mean anything: {}", l.ok);
    assert_eq!(l.failed, 0, "{:?}\n{}", l.errors, env.log_text());
    let t = env.totals();
    assert_eq!(t["handled"].as_u64(), Some(l.ok as u64), "{t}");
    for zero in ["lost_mid_request", "dropped", "restarts", "misbehaving_killed"] {
        assert_eq!(t[zero], 0, "{zero}: {t}");
    }
    // Removed workers drained and exited by themselves: none was killed.
    assert!(!env.log_text().contains("killing worker"), "{}", env.log_text());
    assert!(by_pid(&l).len() >= 6, "six workers served: {:?}", by_pid(&l));

    // Out of range, or a program that does not exist: refused, nothing changes.
    let (ok, out) = env.handover("scale", &["-1"]);
    assert!(!ok && out.contains("fewer than 1"), "{out}");
    let (ok, out) = env.handover("scale", &["nope", "3"]);
    assert!(!ok && out.contains("no program named \"nope\""), "{out}");
    // SIGTTIN / SIGTTOU: one more, one fewer.
    env.signal("TTIN");
    env.wait_for("TTIN", Duration::from_secs(10), |s| ready_count(s) == 2);
    env.signal("TTOU");
    env.wait_for("TTOU", Duration::from_secs(10), |s| workers(s).len() == 1);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn shared_mode_scales_up_and_down() {
    let mut env = TestEnv::new("scale-shared");
    env.serve(&["-l", "tcp://127.0.0.1:0", "--mode", "shared", "-w", "1"], &[DEMO_WORKER]);
    let addr = env.wait_ready(1);
    let (ok, out) = env.handover("scale", &["main", "3"]);
    assert!(ok && out.contains("1 -> 3"), "{out}");
    env.wait_for("three running", Duration::from_secs(10), |s| ready_count(s) == 3);
    let (ok, out) = env.handover("scale", &["-2"]);
    assert!(ok && out.contains("3 -> 1"), "{out}");
    env.wait_for("one left", Duration::from_secs(10), |s| workers(s).len() == 1);
    assert_eq!(load(addr, 50, 2).ok, 50);
    assert_eq!(env.totals()["restarts"], 0);
}

#[test]
fn spawn_mode_children_s_stderr_is_prefixed_with_the_program() {
    let mut env = TestEnv::new("output-spawn");
    let script = "echo \"child $$ says hi\" >&2; read -r line; echo \"got $line\"";
    env.serve(&["-l", "tcp://127.0.0.1:0", "--mode", "spawn"], &["sh", "-c", script]);
    let addr = env.wait_ready(0);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "got ping\n", "standard output is still the connection");
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success());
    let log = env.log_text();
    assert!(
        log.lines().any(|l| l.starts_with("main | child ") && l.ends_with(" says hi")),
        "{log}"
    );
}

#[test]
fn spawn_mode_scale_changes_the_cap() {
    let mut env = TestEnv::new("scale-spawn");
    env.serve(&["-l", "tcp://127.0.0.1:0", "--mode", "spawn", "-w", "2"], &[DEMO_WORKER]);
    env.wait_ready(0);
    let (ok, out) = env.handover("scale", &["+3"]);
    assert!(ok && out.contains("2 -> 5"), "{out}");
    assert_eq!(env.status().unwrap()["programs"][0]["workers_wanted"], 5);
}

#[test]
fn max_requests_with_jitter_recycles_workers_at_staggered_points_and_fails_nothing() {
    let mut env = TestEnv::new("max-requests");
    env.serve(
        &[
            "-l",
            "tcp://127.0.0.1:0",
            "-w",
            "4",
            "--max-requests",
            "50",
            "--max-requests-jitter",
            "20",
        ],
        &[DEMO_WORKER],
    );
    let addr = env.wait_ready(4);
    let l = load(addr, 800, 4);
    assert_eq!(l.failed, 0, "{:?}\n{}", l.errors, env.log_text());
    let counts = by_pid(&l);
    // Recycled workers exit once they have finished their last connection.
    let s = env.wait_for("recycled workers gone", Duration::from_secs(10), |s| {
        let current: BTreeSet<u64> = workers(s).iter().filter_map(|w| w["pid"].as_u64()).collect();
        let gone = counts.keys().filter(|p| !current.contains(&u64::from(**p))).count() as u64;
        s["totals"]["restarts_by_cause"]["max_requests"].as_u64() == Some(gone)
            && counts.keys().filter(|p| !current.contains(&u64::from(**p))).all(|p| !alive(*p))
    });
    let current: BTreeSet<u64> = workers(&s).iter().filter_map(|w| w["pid"].as_u64()).collect();
    let recycled: Vec<usize> = counts
        .iter()
        .filter(|(p, _)| !current.contains(&u64::from(**p)))
        .map(|(_, n)| *n)
        .collect();
    assert!(recycled.len() >= 8, "800 requests over 4 workers recycle at least 8: {recycled:?}");
    // Each recycled worker served exactly its limit: 50 plus 0..=20.
    for n in &recycled {
        assert!((50..=70).contains(n), "a recycled worker served {n}: {recycled:?}");
    }
    let distinct: BTreeSet<_> = recycled.iter().collect();
    assert!(distinct.len() >= 3, "limits are staggered: {recycled:?}");
    let c = &s["programs"][0]["controls"];
    assert_eq!(
        (c["max_requests"].as_u64(), c["max_requests_jitter"].as_u64()),
        (Some(50), Some(20))
    );
    assert_eq!(c["worker_output"], "prefix", "the default");
    let t = &s["totals"];
    assert_eq!(t["restarts"], t["restarts_by_cause"]["max_requests"], "{t}");
    for zero in ["lost_mid_request", "dropped", "redispatched", "misbehaving_killed"] {
        assert_eq!(t[zero], 0, "{zero}: {t}");
    }
    // Current workers show their limit and are below it.
    for w in workers(&s) {
        let (handled, max) = (w["handled"].as_u64().unwrap(), w["max_requests"].as_u64().unwrap());
        assert!((50..=70).contains(&max) && handled < max, "{w}");
    }
}

#[test]
fn a_worker_that_allocates_past_max_memory_is_replaced() {
    max_memory_in("prefork");
}

#[test]
fn a_shared_mode_worker_that_allocates_past_max_memory_is_replaced() {
    max_memory_in("shared");
}

fn max_memory_in(mode: &str) {
    let mut env = TestEnv::new("max-memory");
    env.serve(
        &[
            "-l",
            "tcp://127.0.0.1:0",
            "--mode",
            mode,
            "-w",
            "2",
            "--max-memory",
            "40M",
            "--memory-check-interval",
            "50ms",
        ],
        &[DEMO_WORKER, "--leak-kb", "1024"],
    );
    let addr = env.wait_ready(2);
    let first: Vec<u64> =
        workers(&env.status().unwrap()).iter().filter_map(|w| w["pid"].as_u64()).collect();
    for w in workers(&env.status().unwrap()) {
        assert!(w["rss_bytes"].as_u64().unwrap() < 40 << 20, "{w}");
    }
    // About 1 MiB per request: each worker passes 40 MiB within its first 40 or so.
    let l = load(addr, 200, 2);
    assert_eq!(l.failed, 0, "{:?}\n{}", l.errors, env.log_text());
    let s = env.wait_for("recycled for memory", Duration::from_secs(10), |s| {
        s["totals"]["restarts_by_cause"]["max_memory"].as_u64() >= Some(2)
            && first.iter().all(|p| !alive(*p as u32))
    });
    let t = &s["totals"];
    assert_eq!(t["restarts"], t["restarts_by_cause"]["max_memory"], "{t}");
    assert_eq!(t["lost_mid_request"], 0, "{t}");
    assert!(env.log_text().contains("passed --max-memory 40 MiB"), "{}", env.log_text());
    // The replacements started small.
    let s = env.wait_for("replacements ready", Duration::from_secs(10), |s| ready_count(s) == 2);
    for w in workers(&s) {
        assert!(!first.contains(&w["pid"].as_u64().unwrap()), "{w}");
    }
}

/// Sends a request and reads until the end: the error the client sees, and when.
fn request_outcome(addr: std::net::SocketAddr) -> (Result<usize, ErrorKind>, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    (s.read_to_end(&mut buf).map_err(|e| e.kind()), t0.elapsed())
}

#[test]
fn a_connection_held_past_the_deadline_is_reset_and_counted() {
    let mut env = TestEnv::new("deadline");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "1", "--connection-timeout", "500ms"],
        &[DEMO_WORKER, "--delay-ms", "1500"],
    );
    let addr = env.wait_ready(1);
    let (outcome, took) = request_outcome(addr);
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset), "after {took:?}\n{}", env.log_text());
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1400), "{took:?}");
    assert_eq!(env.totals()["timed_out"], 1);
    // The worker finds out when it writes, reports it finished, and is kept.
    let s = env.wait_for("finished", Duration::from_secs(5), |s| s["totals"]["handled"] == 1);
    assert_eq!(s["totals"]["restarts"], 0, "{s}");
    assert_eq!(s["totals"]["lost_mid_request"], 0, "{s}");
}

#[test]
fn a_worker_that_never_finishes_a_reset_connection_is_replaced_as_hung() {
    let mut env = TestEnv::new("deadline-hung");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "1", "--connection-timeout", "300ms"],
        &[DEMO_WORKER, "--delay-ms", "60000"],
    );
    let addr = env.wait_ready(1);
    let pid = env.worker_pids()[0];
    let (outcome, _) = request_outcome(addr);
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset));
    // 5 s of grace after the reset, then it is killed and replaced.
    let s = env.wait_for("hung worker replaced", Duration::from_secs(10), |s| {
        s["totals"]["restarts_by_cause"]["hung"] == 1 && ready_count(s) == 1
    });
    assert!(!alive(pid));
    let t = &s["totals"];
    assert_eq!(
        (t["timed_out"].as_u64(), t["lost_mid_request"].as_u64()),
        (Some(1), Some(0)),
        "{t}"
    );
}

#[test]
fn spawn_mode_kills_a_child_past_the_deadline_and_resets_its_connection() {
    let mut env = TestEnv::new("deadline-spawn");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "--mode", "spawn", "--connection-timeout", "300ms"],
        &[DEMO_WORKER, "--delay-ms", "10000"],
    );
    let addr = env.wait_ready(0);
    let (outcome, took) = request_outcome(addr);
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset), "after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    env.wait_for("child gone", Duration::from_secs(5), |s| workers(s).is_empty());
    assert_eq!(env.totals()["timed_out"], 1);
}

#[test]
fn reload_reports_when_done_and_keeps_n_minus_1_ready_under_load() {
    let mut env = TestEnv::new("reload");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "4"], &[DEMO_WORKER, "--start-delay-ms", "200"]);
    let addr = env.wait_ready(4);
    let before: BTreeSet<u64> =
        workers(&env.status().unwrap()).iter().filter_map(|w| w["pid"].as_u64()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = load_until(addr, 4, 40_000, Arc::clone(&stop));
    // Watch the ready count throughout the reload.
    let watching = Arc::new(AtomicBool::new(true));
    let control = env.control.clone();
    let w2 = Arc::clone(&watching);
    let watcher = std::thread::spawn(move || {
        let mut least = usize::MAX;
        while w2.load(Ordering::SeqCst) {
            let ch = handover::Channel::connect(&control).unwrap();
            ch.send(b"status", &[]).unwrap();
            let reply = ch.recv_timeout(Duration::from_secs(5)).unwrap();
            let s: serde_json::Value = serde_json::from_slice(&reply.bytes).unwrap();
            least = least.min(ready_count(&s));
            std::thread::sleep(Duration::from_millis(5));
        }
        least
    });
    let t0 = Instant::now();
    let (ok, out) = env.handover("reload", &[]);
    let took = t0.elapsed();
    watching.store(false, Ordering::SeqCst);
    assert!(ok && out.contains("4 worker(s) replaced"), "{out}");
    // One at a time, each 200 ms to start: it waited for all of them.
    assert!(took >= Duration::from_millis(800), "{took:?}: {out}");
    let s = env.status().unwrap();
    let after: BTreeSet<u64> = workers(&s)
        .iter()
        .filter(|w| w["state"] == "ready")
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    assert_eq!(after.len(), 4);
    assert!(after.is_disjoint(&before), "every worker replaced: {before:?} {after:?}");
    assert!(watcher.join().unwrap() >= 3, "fewer than N-1 ready during the reload");
    stop.store(true, Ordering::SeqCst);
    let l = load.join().unwrap();
    assert_eq!(l.failed, 0, "{:?}", l.errors);
    // --no-wait answers at once.
    let t0 = Instant::now();
    let (ok, out) = env.handover("reload", &["--no-wait"]);
    assert!(ok && t0.elapsed() < Duration::from_millis(500), "{out}");
}

/// A reload whose new workers die before they are ready keeps the old workers, says so, and
/// does not stop a later reload (regression: the first failed slot used to hold the reload
/// "under way" forever, so every later reload was ignored).
fn a_failed_reload_keeps_the_workers_and_a_later_reload_works(mode: &str) {
    let mut env = TestEnv::new("reload-fails");
    let flag = env.dir.join("broken");
    let script = format!("if [ -e '{}' ]; then exit 1; fi; exec '{DEMO_WORKER}'", flag.display());
    env.serve(&["-l", "tcp://127.0.0.1:0", "--mode", mode, "-w", "2"], &["sh", "-c", &script]);
    let addr = env.wait_ready(2);
    let pids = |env: &TestEnv| -> BTreeSet<u64> {
        workers(&env.status().unwrap()).iter().filter_map(|w| w["pid"].as_u64()).collect()
    };
    let before = pids(&env);
    std::fs::write(&flag, b"").unwrap();
    let (ok, out) = env.handover("reload", &[]);
    assert!(!ok && out.contains("2 kept their worker"), "{out}");
    assert_eq!(pids(&env), before, "the old workers serve on");
    assert_eq!(env.status().unwrap()["programs"][0]["state"], "running");
    assert!(get(addr).is_ok());
    std::fs::remove_file(&flag).unwrap();
    let (ok, out) = env.handover("reload", &[]);
    assert!(ok && out.contains("2 worker(s) replaced"), "{out}\n{}", env.log_text());
    // The old workers are gone once they have drained.
    let after = env.wait_for("replaced", Duration::from_secs(10), |s| {
        ready_count(s) == 2 && workers(s).len() == 2
    });
    let after: BTreeSet<u64> = workers(&after).iter().filter_map(|w| w["pid"].as_u64()).collect();
    assert!(after.is_disjoint(&before), "{before:?} {after:?}");
}

#[test]
fn prefork_a_failed_reload_keeps_the_workers_and_a_later_reload_works() {
    a_failed_reload_keeps_the_workers_and_a_later_reload_works("prefork");
}

#[test]
fn shared_a_failed_reload_keeps_the_workers_and_a_later_reload_works() {
    a_failed_reload_keeps_the_workers_and_a_later_reload_works("shared");
}

#[test]
fn max_starting_staggers_the_start_and_the_default_does_not() {
    let run = |extra: &[&str]| -> (usize, Duration) {
        let mut env = TestEnv::new("stagger");
        let mut args = vec!["-l", "tcp://127.0.0.1:0", "-w", "3"];
        args.extend(extra);
        let t0 = Instant::now();
        env.serve(&args, &[DEMO_WORKER, "--start-delay-ms", "300"]);
        let mut most_starting = 0;
        loop {
            if let Some(s) = env.status() {
                let starting = workers(&s).iter().filter(|w| w["state"] == "starting").count();
                most_starting = most_starting.max(starting);
                if ready_count(&s) == 3 {
                    return (most_starting, t0.elapsed());
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{}", env.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (most, took) = run(&["--max-starting", "1"]);
    assert_eq!(most, 1, "one at a time");
    assert!(took >= Duration::from_millis(900), "three starts of 300 ms in a row: {took:?}");
    let (most, _) = run(&[]);
    assert!(most >= 2, "by default all start at once: at most {most} seen starting");
}

#[test]
fn worker_output_is_prefixed_by_default_and_json_on_request() {
    let mut env = TestEnv::new("output");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "2"], &[DEMO_WORKER, "--log-requests"]);
    let addr = env.wait_ready(2);
    assert_eq!(load(addr, 10, 1).ok, 10);
    let pids = env.worker_pids();
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success());
    let log = env.log_text();
    for pid in pids {
        let slot_line = log.lines().find(|l| l.contains(&format!("[{pid}] | served request 1")));
        let line = slot_line.unwrap_or_else(|| panic!("no prefixed stdout line of {pid}:\n{log}"));
        assert!(line.starts_with("main.0[") || line.starts_with("main.1["), "{line}");
        assert!(log.contains(&format!("[{pid}] | demo worker {pid} starting")), "stderr:\n{log}");
        // Its last line, written as it exited in the drain, is not lost with the supervisor.
        assert!(log.contains(&format!("[{pid}] | demo worker {pid} exiting")), "at exit:\n{log}");
    }

    let mut env = TestEnv::new("output-json");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "1", "--log-format", "json"],
        &[DEMO_WORKER, "--log-requests"],
    );
    let addr = env.wait_ready(1);
    assert_eq!(load(addr, 3, 1).ok, 3);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success());
    let log = env.log_text();
    json_output_of_three_requests(&log);

    // inherit: the worker's lines as it wrote them.
    let mut env = TestEnv::new("output-inherit");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "1", "--worker-output", "inherit"],
        &[DEMO_WORKER, "--log-requests"],
    );
    let addr = env.wait_ready(1);
    assert_eq!(load(addr, 1, 1).ok, 1);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success());
    assert!(env.log_text().lines().any(|l| l == "served request 1"), "{}", env.log_text());
}

#[test]
fn what_workers_write_as_they_exit_is_not_lost_when_the_supervisor_exits() {
    // shared mode (the workers need not accept): on SIGTERM the worker writes 20,000 lines,
    // more than a pipe holds, and exits; the supervisor exits right after reaping it.
    let mut env = TestEnv::new("output-last");
    let script = "trap 'seq 1 20000; echo last line; exit 0' TERM; while :; do sleep 0.05; done";
    env.serve(&["-l", "tcp://127.0.0.1:0", "--mode", "shared", "-w", "1"], &["sh", "-c", script]);
    env.wait_ready(1);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
    let log = env.log_text();
    // (sh also says "Terminated" for its sleep, which got the SIGTERM too.)
    let numbers: Vec<u32> = log
        .lines()
        .filter(|l| l.starts_with("main.0["))
        .filter_map(|l| l.rsplit_once(" | ")?.1.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 20_000, "every line");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order");
    assert!(log.lines().any(|l| l.starts_with("main.0[") && l.ends_with("| last line")));
}

#[test]
fn a_worker_flooding_an_unread_stdout_stalls_neither_the_supervisor_nor_other_workers() {
    let mut env = TestEnv::new("flood");
    env.serve_stdout_unread(
        &["-l", "tcp://127.0.0.1:0", "-w", "2"],
        &[DEMO_WORKER, "--flood-stdout"],
    );
    let addr = env.wait_ready(2);
    std::thread::sleep(Duration::from_millis(500)); // the pipes and the queue fill
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        slowest = slowest.max(env.status_latency().unwrap());
    }
    assert!(slowest < Duration::from_millis(500), "status took {slowest:?}");
    // The flooding workers block in their own writes; their serving threads do not write.
    let l = load(addr, 200, 4);
    assert_eq!(l.failed, 0, "{:?}", l.errors);
    // The supervisor itself holds a bounded amount (its queue), not the flood.
    let rss = std::fs::read_to_string(format!("/proc/{}/status", env.pid())).unwrap();
    let kb: u64 = rss
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(kb < 32 * 1024, "supervisor RSS {kb} kB");
}

#[test]
fn status_watch_reports_again_and_in_place_on_a_terminal() {
    let mut env = TestEnv::new("watch");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "1"], &[DEMO_WORKER]);
    env.wait_ready(1);
    let (ok, out) = env.handover("status", &["--watch", "--interval", "50ms", "--count", "3"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("supervisor pid").count(), 3, "{out}");
    assert!(!out.contains('\x1b'), "no escapes when not on a terminal: {out:?}");
    // On a terminal (script(1) gives it one): each report replaces the last in place.
    let Ok(o) = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{HANDOVER} status --control {} --watch --interval 50ms --count 2",
            env.control.display()
        ))
        .arg("/dev/null")
        .output()
    else {
        return; // no script(1) here: the terminal half is not checked
    };
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert_eq!(tty.matches("\x1b[H").count(), 2, "{tty:?}");
    assert!(tty.contains("Ctrl-C to quit"), "{tty:?}");
}
