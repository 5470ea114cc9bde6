//! `--metrics`: the endpoint parses as Prometheus (OpenMetrics) text and its counters match
//! what the test did.
#![cfg(target_os = "linux")]

mod testenv;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use testenv::*;

/// Samples by `name{labels}` (labels as written), after checking every line is well formed.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut f = rest.splitn(3, ' ');
            let (kw, name, val) =
                (f.next().unwrap(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            assert!(matches!(kw, "HELP" | "TYPE" | "UNIT"), "bad comment line {line:?}");
            assert!(name_ok(name), "bad metric name in {line:?}");
            if kw == "TYPE" {
                assert!(
                    matches!(
                        val,
                        "counter" | "gauge" | "histogram" | "info" | "unknown" | "summary"
                    ),
                    "{line:?}"
                );
                types.insert(name.to_owned(), val.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad name in {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                let inner = inner.unwrap_or_else(|| panic!("bad labels in {line:?}"));
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(name_ok(k) && v.starts_with('"') && v.ends_with('"'), "{line:?}");
                }
            }
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {name} has no # TYPE");
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    parse(body)
}

#[test]
fn metrics_count_what_happened() {
    let mut env = TestEnv::new("metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let maddr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    env.serve(
        &[
            "-l",
            "http=tcp://127.0.0.1:0",
            "-w",
            "2",
            "--metrics",
            &maddr.to_string(),
            "--min-uptime",
            "10ms",
        ],
        &[DEMO_WORKER],
    );
    let addr = env.wait_ready(2);
    let m = scrape(maddr);
    assert_eq!(m["handover_connections_accepted_total"], 0.0);
    assert_eq!(m["handover_generation"], 1.0);
    assert_eq!(m["handover_upgrades_total"], 0.0);
    assert_eq!(m["handover_workers{program=\"main\",state=\"ready\"}"], 2.0);

    let l = load(addr, 300, 4);
    assert_eq!(l.ok, 300, "{:?}", l.errors);
    let m = scrape(maddr);
    for c in ["accepted", "dispatched", "handled"] {
        assert_eq!(m[&format!("handover_connections_{c}_total")], 300.0, "{c}");
    }
    for c in ["redispatched", "refused", "lost_mid_request"] {
        assert_eq!(m[&format!("handover_connections_{c}_total")], 0.0, "{c}");
    }
    assert_eq!(m["handover_handoff_latency_seconds_count"], 300.0);
    assert!(m["handover_handoff_latency_seconds_sum"] > 0.0);
    assert_eq!(m["handover_handoff_latency_seconds_bucket{le=\"+Inf\"}"], 300.0);
    assert_eq!(m["handover_worker_restarts_total"], 0.0);

    // A worker killed: one restart.
    let victim = env.worker_pids()[0];
    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(maddr);
        if m["handover_worker_restarts_total"] == 1.0
            && m["handover_workers{program=\"main\",state=\"ready\"}"] == 2.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{m:?}\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    // An upgrade: the endpoint moves to the new generation on the same port.
    let out =
        Command::new(HANDOVER).args(["upgrade", "--control"]).arg(&env.control).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = scrape(maddr);
    assert_eq!(m["handover_generation"], 2.0);
    assert_eq!(m["handover_upgrades_total"], 1.0);
    assert_eq!(m["handover_connections_accepted_total"], 0.0, "a new process counts afresh");
    assert!(env.wait_exit(Duration::from_secs(15)).success(), "{}", env.log_text());
    let l = load(addr, 50, 2);
    assert_eq!(l.ok, 50);
    assert_eq!(scrape(maddr)["handover_connections_accepted_total"], 50.0);
    let new_pid = env.status().unwrap()["pid"].as_u64().unwrap();
    Command::new(HANDOVER).args(["stop", "--control"]).arg(&env.control).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(new_pid as u32) {
        assert!(Instant::now() < deadline, "{}", env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sample's value from a scrape parsed by `prometheus-parse`, by name and labels; histogram
/// samples are left out (their `_count` and `_sum` are plain samples).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn scrape_parsed(addr: SocketAddr) -> prometheus_parse::Scrape {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (_, body) = resp.split_once("\r\n\r\n").unwrap();
    parse(body); // every line well formed, every sample typed
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

#[test]
fn per_worker_metrics_and_restarts_by_cause_match_what_the_test_did() {
    let mut env = TestEnv::new("metrics-controls");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let maddr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    env.serve(
        &[
            "-l",
            "tcp://127.0.0.1:0",
            "-w",
            "2",
            "--metrics",
            &maddr.to_string(),
            "--max-requests",
            "20",
            "--connection-timeout",
            "300ms",
        ],
        &[DEMO_WORKER],
    );
    let addr = env.wait_ready(2);
    let m = scrape_parsed(maddr);
    let main = [("program", "main")];
    assert_eq!(sample(&m, "handover_workers_wanted", &main), Some(2.0));
    assert_eq!(sample(&m, "handover_queue_length", &main), Some(0.0));

    // One request held past the deadline: reset, counted, and (the worker finishes it when
    // its write fails) handled.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET /sleep/800 HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let e = slow.read_to_end(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    // 100 more, which recycle workers at 20 connections each.
    let l = load(addr, 100, 4);
    assert_eq!(l.failed, 0, "{:?}", l.errors);
    let (ok, out) = env.handover("scale", &["3"]);
    assert!(ok, "{out}");
    let mut by_pid: HashMap<u64, u64> = HashMap::new();
    for (body, n) in &l.bodies {
        *by_pid.entry(u64::from(body_pid(body))).or_default() += *n as u64;
    }
    // Settled: three ready, every recycled worker gone, the slow connection finished.
    let s = env.wait_for("settled", Duration::from_secs(10), |s| {
        let ws = s["programs"][0]["workers"].as_array().unwrap();
        let current: Vec<u64> = ws.iter().filter_map(|w| w["pid"].as_u64()).collect();
        let gone = by_pid.keys().filter(|p| !current.contains(p)).count() as u64;
        ws.len() == 3
            && ws.iter().all(|w| w["state"] == "ready")
            && s["totals"]["handled"] == 101
            && s["totals"]["restarts_by_cause"]["max_requests"].as_u64() == Some(gone)
            && by_pid.keys().filter(|p| !current.contains(p)).all(|p| !alive(*p as u32))
    });
    let ws = s["programs"][0]["workers"].as_array().unwrap().clone();
    let current: Vec<u64> = ws.iter().filter_map(|w| w["pid"].as_u64()).collect();
    let recycled = by_pid.keys().filter(|p| !current.contains(p)).count() as f64;
    assert!(recycled >= 4.0, "101 connections over 2 workers recycle at least 4: {by_pid:?}");

    let m = scrape_parsed(maddr);
    let total = |n: &str| sample(&m, &format!("handover_{n}_total"), &[]).unwrap();
    assert_eq!(total("connections_accepted"), 101.0);
    assert_eq!(total("connections_handled"), 101.0);
    assert_eq!(total("connections_timed_out"), 1.0);
    assert_eq!(total("connections_lost_mid_request"), 0.0);
    assert_eq!(sample(&m, "handover_handoff_latency_seconds_count", &[]), Some(101.0));
    let cause = |c: &str| {
        sample(&m, "handover_worker_restarts_by_cause_total", &[("program", "main"), ("cause", c)])
            .unwrap()
    };
    assert_eq!(cause("max_requests"), recycled);
    for c in ["exit", "signal", "hung", "misbehaved", "max_memory", "crash_loop"] {
        assert_eq!(cause(c), 0.0, "{c}");
    }
    assert_eq!(total("worker_restarts"), recycled, "the causes add up to the total");
    assert_eq!(sample(&m, "handover_workers_wanted", &main), Some(3.0));
    assert_eq!(
        sample(&m, "handover_workers", &[("program", "main"), ("state", "ready")]),
        Some(3.0)
    );
    assert_eq!(sample(&m, "handover_queue_length", &main), Some(0.0));
    for w in &ws {
        let slot = w["slot"].as_u64().unwrap().to_string();
        let labels = [("program", "main"), ("slot", slot.as_str())];
        let pid = w["pid"].as_u64().unwrap();
        let served = by_pid.get(&pid).copied().unwrap_or(0) as f64;
        assert_eq!(
            sample(&m, "handover_worker_connections_handled_total", &labels),
            Some(served),
            "slot {slot}: its worker answered {served} of the test's requests"
        );
        assert_eq!(sample(&m, "handover_worker_connections", &labels), Some(0.0));
        assert_eq!(sample(&m, "handover_worker_busy", &labels), Some(0.0));
        let rss = sample(&m, "handover_worker_resident_memory_bytes", &labels).unwrap();
        assert!(rss > 100_000.0, "slot {slot}: {rss}");
    }
}
