//! A supervisor left running in production, as an operator of nginx or gunicorn
//! would treat it: signals, its own log output, `stop`, the control socket's path, log files.
#![cfg(target_os = "linux")] // signals by name, /proc, logrotate

mod testenv;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testenv::*;

/// Waits until the supervisor's log holds `text`.
fn wait_log(env: &TestEnv, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.log_text().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether signal `n` is ignored (`SIG_IGN`) by process `pid`.
fn ignores(pid: u32, n: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).unwrap().trim();
    u64::from_str_radix(mask, 16).unwrap() & (1 << (n - 1)) != 0
}

#[test]
fn usr1_and_other_stray_signals_leave_the_supervisor_and_its_workers_serving() {
    let mut env = TestEnv::new("stray-signals");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "2"], &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let mut workers = env.worker_pids();
    workers.sort();
    assert_eq!(workers.len(), 2);

    env.signal("USR1");
    wait_log(&env, "SIGUSR1: no --log-file to reopen");
    let ignored = ["WINCH", "ALRM", "VTALRM", "PROF", "IO", "XCPU", "XFSZ", "PWR", "STKFLT"];
    for sig in ignored {
        env.signal(sig);
        wait_log(&env, &format!("SIG{sig}: ignored"));
    }
    // SIGPIPE is ignored outright (logging it could fail the same way again).
    assert!(ignores(env.pid(), 13), "SIGPIPE is not ignored");
    env.signal("PIPE");

    std::thread::sleep(Duration::from_millis(200));
    assert!(env.running(), "{}", env.log_text());
    let l = load(addr, 40, 2);
    assert_eq!((l.ok, l.failed), (40, 0), "{:?}", l.errors);
    let mut now = env.worker_pids();
    now.sort();
    assert_eq!(now, workers, "no worker was replaced");
    assert_eq!(env.totals()["restarts"], 0);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

#[test]
fn quit_is_a_fast_shutdown_with_exit_131_and_a_log_line() {
    let mut env = TestEnv::new("quit");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "2", "--drain-timeout", "60s"], &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let workers = env.worker_pids();
    // A request that would hold a graceful drain for 20 s.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /sleep/20000 HTTP/1.0\r\n\r\n").unwrap();
    env.wait_for("the slow request in a worker", Duration::from_secs(10), |s| {
        s["totals"]["live"].as_u64() == Some(1)
    });

    let started = Instant::now();
    env.signal("QUIT");
    let st = env.wait_exit(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(5), "not fast: {:?}", started.elapsed());
    assert_eq!(st.code(), Some(131), "{}", env.log_text());
    assert!(env.log_text().contains("SIGQUIT: fast shutdown"), "{}", env.log_text());
    std::thread::sleep(Duration::from_millis(200));
    for w in workers {
        assert!(!alive(w), "worker {w} outlived the supervisor");
    }
    // The slow request's connection is cut, not answered.
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = slow.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("200"), "{got:?}");
}

#[test]
fn a_closed_stdout_and_stderr_never_kill_the_supervisor() {
    let mut env = TestEnv::new("closed-stderr");
    let mut c = std::process::Command::new(HANDOVER);
    c.args(["serve", "-l", "tcp://127.0.0.1:0", "-w", "2", "--control"]).arg(&env.control);
    c.args(["--", DEMO_WORKER, "--log-requests"]);
    c.env("RUST_LOG", "info").stdin(std::process::Stdio::null());
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    // As `handover serve … 2>&1 | head -1` once head has exited: nobody reads either pipe.
    drop(child.stdout.take());
    drop(child.stderr.take());
    env.child = Some(child);
    let addr = env.wait_ready(2);

    // Worker output (a line per request) and the supervisor's own lines (a worker killed and
    // restarted) are all written to the closed pipes.
    let l = load(addr, 20, 2);
    assert_eq!((l.ok, l.failed), (20, 0), "{:?}", l.errors);
    let victim = env.worker_pids()[0];
    signal_pid(victim, "KILL");
    env.wait_for("the killed worker replaced", Duration::from_secs(10), |s| {
        s["totals"]["restarts"] == 1
            && s["programs"][0]["workers"]
                .as_array()
                .is_some_and(|w| w.iter().filter(|w| w["state"] == "ready").count() == 2)
    });
    let l = load(addr, 20, 2);
    assert_eq!((l.ok, l.failed), (20, 0), "{:?}", l.errors);
    assert!(env.running(), "the supervisor died of its own output");
    let s = env.status().unwrap();
    assert!(s["log_writes_dropped"].as_u64() > Some(0), "{s}");

    env.signal("TERM");
    let st = env.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}");
}

#[test]
fn a_second_term_during_the_drain_kills_the_workers_and_exits_143() {
    let mut env = TestEnv::new("second-term");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "1", "--drain-timeout", "60s"], &[DEMO_WORKER]);
    let addr = env.wait_ready(1);
    let slow = slow_request(addr, 20_000);
    env.wait_for("the slow request in a worker", Duration::from_secs(10), |s| {
        s["totals"]["live"].as_u64() == Some(1)
    });
    env.signal("TERM");
    wait_log(&env, "draining");
    let started = Instant::now();
    env.signal("TERM");
    let st = env.wait_exit(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(st.code(), Some(143), "{}", env.log_text());
    assert!(!slow.join().unwrap().contains("200 OK"), "the request was cut, not answered");
}

#[test]
fn stop_still_stops_a_supervisor_of_an_older_version() {
    let env = TestEnv::new("stop-older");
    // What an older supervisor's control socket does: `stop` only.
    let listener = handover::ChannelListener::bind(&env.control).unwrap();
    let path = env.control.clone();
    let older = std::thread::spawn(move || {
        let mut asked = Vec::new();
        loop {
            let ch = listener.accept().unwrap();
            let Ok(m) = ch.recv_timeout(Duration::from_secs(5)) else { continue };
            asked.push(String::from_utf8_lossy(&m.bytes).into_owned());
            if m.bytes == b"stop" {
                ch.send(b"ok", &[]).unwrap();
                std::thread::sleep(Duration::from_millis(300)); // its drain
                std::fs::remove_file(&path).unwrap();
                return asked;
            }
            let unknown =
                b"unknown request (expected status, reload, reload wait, scale, upgrade or stop)";
            ch.send(unknown, &[]).unwrap();
        }
    });
    let started = Instant::now();
    let (ok, out) = env.handover("stop", &[]);
    assert!(ok, "{out}");
    assert!(started.elapsed() >= Duration::from_millis(300), "returned before the drain ended");
    assert_eq!(older.join().unwrap(), ["stop wait", "stop"]);
    assert!(!env.control.exists());
}

/// Sends `GET /sleep/MS` and returns the whole answer, on a thread.
fn slow_request(addr: std::net::SocketAddr, ms: u64) -> std::thread::JoinHandle<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(format!("GET /sleep/{ms} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        got
    })
}

#[test]
fn stop_waits_for_the_exit_so_the_next_serve_starts_at_once() {
    let mut env = TestEnv::new("stop-waits");
    let pid_file = env.dir.join("h.pid");
    let pid_file = pid_file.to_str().unwrap();
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "2", "--pid-file", pid_file], &[DEMO_WORKER]);
    let addr = env.wait_ready(2);
    let listen = format!("tcp://{addr}");
    // A request in flight holds the drain for 5.5 s.
    let slow = slow_request(addr, 5500);
    env.wait_for("the slow request in a worker", Duration::from_secs(10), |s| {
        s["totals"]["live"].as_u64() == Some(1)
    });

    let started = Instant::now();
    let (ok, out) = env.handover("stop", &[]);
    let took = started.elapsed();
    assert!(ok, "{out}");
    assert!(took >= Duration::from_secs(5), "returned before the drain ended: {took:?}");
    assert!(out.contains("still draining after 5s"), "no progress line: {out:?}");
    assert!(slow.join().unwrap().starts_with("HTTP/1.1 200"), "the drain let it finish");
    // Exited, not just about to.
    assert!(env.wait_exit(Duration::from_millis(500)).success(), "{}", env.log_text());

    // The same control socket, address and pid file, at once.
    env.serve(&["-l", &listen, "-w", "1", "--pid-file", pid_file], &[DEMO_WORKER]);
    assert_eq!(env.wait_ready(1), addr, "{}", env.log_text());
    assert_eq!(get(addr).map(|b| body_pid(&b)), Ok(env.worker_pids()[0]));
    let pid = std::fs::read_to_string(env.dir.join("h.pid")).unwrap();
    assert_eq!(pid.trim(), env.pid().to_string());

    // --no-wait: asks and returns; the supervisor exits by itself.
    let (ok, out) = env.handover("stop", &["--no-wait"]);
    assert!(ok, "{out}");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

/// `handover ARGS` run as user `uid` (no such user needed: root may take any id), with
/// `XDG_RUNTIME_DIR` set to `xdg` or unset.
fn handover_as(uid: u32, xdg: Option<&std::path::Path>, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    let id = uid.to_string();
    c.args(["--reuid", &id, "--regid", &id, "--clear-groups"]);
    c.arg(runnable_by_anyone(HANDOVER)).args(args).current_dir(std::env::temp_dir());
    match xdg {
        Some(dir) => c.env("XDG_RUNTIME_DIR", dir),
        None => c.env_remove("XDG_RUNTIME_DIR"),
    };
    c.env("RUST_LOG", "info").stdin(std::process::Stdio::null());
    c
}

#[test]
fn clients_find_a_supervisor_started_without_xdg_runtime_dir_at_the_tmp_fallback() {
    let mut env = TestEnv::new("control-fallback");
    // A user of this test's own, so /tmp/handover-UID.sock is nobody else's.
    let uid = 40_000 + std::process::id() % 20_000;
    let fallback = std::path::PathBuf::from(format!("/tmp/handover-{uid}.sock"));
    let _ = std::fs::remove_file(&fallback);
    let xdg = env.dir.join("xdg");
    std::fs::create_dir(&xdg).unwrap();

    // As under systemd-socket-activate, which clears XDG_RUNTIME_DIR.
    let log = std::fs::File::create(&env.log).unwrap();
    let mut serve = handover_as(uid, None, &["serve", "-l", "tcp://127.0.0.1:0", "-w", "1"]);
    serve.args(["--", &runnable_by_anyone(DEMO_WORKER)]);
    serve.stdout(log.try_clone().unwrap()).stderr(log);
    env.child = Some(serve.spawn().unwrap());
    wait_log(&env, &format!("control socket at {}", fallback.display()));

    // A client whose XDG_RUNTIME_DIR is set finds it at the fallback, and says so.
    let out = handover_as(uid, Some(&xdg), &["status", "--json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", env.log_text());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["pid"].as_u64(), Some(u64::from(env.pid())));
    let said = format!(
        "no control socket at {}; using {}",
        xdg.join("handover.sock").display(),
        fallback.display()
    );
    assert!(stderr.contains(&said), "{stderr:?}");

    let out = handover_as(uid, Some(&xdg), &["stop"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
    assert!(!fallback.exists(), "the supervisor removes its control socket");
}

/// Lines of `path` that a demo worker run with `--log-requests` wrote for a request.
fn served_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| l.contains("served request")).map(str::to_owned).collect()
}

#[test]
fn log_file_rotated_by_logrotate_keeps_every_line_and_new_ones_go_to_the_new_file() {
    let mut env = TestEnv::new("logrotate");
    let (log, pid) = (env.dir.join("handover.log"), env.dir.join("handover.pid"));
    let rotated = env.dir.join("handover.log.1");
    let args = [
        "-l",
        "tcp://127.0.0.1:0",
        "-w",
        "2",
        "--log-file",
        log.to_str().unwrap(),
        "--pid-file",
        pid.to_str().unwrap(),
    ];
    env.serve(&args, &[DEMO_WORKER, "--log-requests"]);
    let addr = env.wait_ready(2);
    let wait_lines = |path: &std::path::Path, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while served_lines(path).len() < n {
            assert!(Instant::now() < deadline, "{:?}", std::fs::read_to_string(path));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let l = load(addr, 30, 2);
    assert_eq!((l.ok, l.failed), (30, 0), "{:?}", l.errors);
    wait_lines(&log, 30);

    // What an operator puts in /etc/logrotate.d/handover.
    let conf = env.dir.join("logrotate.conf");
    let rules = format!(
        "{} {{\n    rotate 1\n    nocompress\n    postrotate\n        kill -USR1 $(cat {})\n    endscript\n}}\n",
        log.display(),
        pid.display()
    );
    std::fs::write(&conf, rules).unwrap();
    // /usr/sbin is not on every user's PATH.
    let logrotate = ["/usr/sbin/logrotate", "/usr/bin/logrotate"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("logrotate");
    let out = std::process::Command::new(logrotate)
        .arg("-f")
        .arg("-s")
        .arg(env.dir.join("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("logrotate (Debian package logrotate; scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reopened = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reopened().contains("SIGUSR1: reopened the log file") {
        assert!(Instant::now() < deadline, "not reopened: {:?}", reopened());
        std::thread::sleep(Duration::from_millis(20));
    }

    let l = load(addr, 30, 2);
    assert_eq!((l.ok, l.failed), (30, 0), "{:?}", l.errors);
    wait_lines(&log, 30);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success());

    let (old, new) = (served_lines(&rotated), served_lines(&log));
    assert_eq!((old.len(), new.len()), (30, 30), "old: {old:?}\nnew: {new:?}");
    let old_text = std::fs::read_to_string(&rotated).unwrap();
    assert!(old_text.contains("listening on"), "the start is in the old file: {old_text}");
    let new_text = std::fs::read_to_string(&log).unwrap();
    assert!(new_text.contains("draining"), "the end is in the new file: {new_text}");
    assert!(!env.log_text().contains("served request"), "nothing on stdout or stderr");
}

#[test]
fn a_worker_sending_descriptors_no_frame_declares_is_replaced_and_they_are_closed_at_once() {
    let mut env = TestEnv::new("stray-fds");
    let once = env.dir.join("once");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "2", "--crash-limit", "0"],
        &[DEMO_WORKER, "--misbehave", "stray-fds", "--once", once.to_str().unwrap()],
    );
    // The hostile worker says a well-formed hello with 50 descriptors beside it: it is killed
    // and its slot refilled by a worker that behaves.
    let s = env.wait_for("the hostile worker replaced", Duration::from_secs(15), |s| {
        s["totals"]["misbehaving_killed"] == 1
            && s["programs"][0]["workers"]
                .as_array()
                .is_some_and(|w| w.iter().filter(|w| w["state"] == "ready").count() == 2)
    });
    assert_eq!(s["totals"]["restarts_by_cause"]["misbehaved"], 1, "{s}");
    let hostile: u32 = std::fs::read_to_string(&once).unwrap().trim().parse().unwrap();
    assert!(!alive(hostile), "the hostile worker {hostile} still runs");
    assert!(
        env.log_text().contains("sockets arrived that no frame declares"),
        "{}",
        env.log_text()
    );
    // None of the 50 is held (the supervisor has its stdin and one more of its own).
    let devnull = env.fd_list().matches("/dev/null").count();
    assert!(devnull < 5, "descriptors held: {}", env.fd_list());
    let addr: std::net::SocketAddr = s["listeners"][0]["address"]
        .as_str()
        .unwrap()
        .trim_start_matches("tcp://")
        .parse()
        .unwrap();
    let l = load(addr, 40, 2);
    assert_eq!((l.ok, l.failed), (40, 0), "{:?}", l.errors);
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

/// `GET PATH` on the metrics address: the status code and body, or `None` if it cannot connect.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((code, body))
}

#[test]
fn ready_is_503_until_a_worker_is_ready_and_again_while_draining() {
    let mut env = TestEnv::new("ready");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let maddr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics = maddr.to_string();
    let args = ["-l", "tcp://127.0.0.1:0", "-w", "2", "--metrics", &metrics];
    // Workers take 1.5 s to say hello: a probe must not pass before.
    env.serve(&args, &[DEMO_WORKER, "--start-delay-ms", "1500"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(r) = http_get(maddr, "/ready") {
            break r;
        }
        assert!(Instant::now() < deadline, "no metrics endpoint:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(first.0, 503, "{first:?}");
    assert!(first.1.contains("no ready worker"), "{first:?}");
    assert_eq!(http_get(maddr, "/metrics").map(|r| r.0), Some(200), "metrics answer regardless");

    let deadline = Instant::now() + Duration::from_secs(15);
    while http_get(maddr, "/ready").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "never ready:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = env.wait_ready(1);
    assert_eq!(http_get(maddr, "/ready"), Some((200, "ready\n".to_owned())));

    // A drain held open by a slow request: not ready while it lasts.
    let slow = slow_request(addr, 2000);
    env.wait_for("the slow request in a worker", Duration::from_secs(10), |s| {
        s["totals"]["live"].as_u64() == Some(1)
    });
    env.signal("TERM");
    wait_log(&env, "draining");
    let during = http_get(maddr, "/ready").expect("the endpoint answers during the drain");
    assert_eq!(during.0, 503, "{during:?}");
    assert!(during.1.contains("draining"), "{during:?}");
    assert!(slow.join().unwrap().starts_with("HTTP/1.1 200"));
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}

/// Issue 17: `--listen-when-ready` binds at start but refuses connections (rather than
/// queueing them in the backlog, where a TCP health check counts them as served) until a
/// worker is ready.
#[test]
fn issue_17_listen_when_ready_refuses_connections_until_a_worker_is_ready() {
    let mut env = TestEnv::new("listen-when-ready");
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "1", "--listen-when-ready"],
        &[DEMO_WORKER, "--start-delay-ms", "1500"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: std::net::SocketAddr = loop {
        if let Some(s) = env.status() {
            let a = s["listeners"][0]["address"].as_str().unwrap().to_owned();
            break a.trim_start_matches("tcp://").parse().unwrap();
        }
        assert!(env.running(), "exited:\n{}", env.log_text());
        assert!(Instant::now() < deadline, "no status:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    let early = std::net::TcpStream::connect(addr);
    assert_eq!(
        early.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "a connection before any worker is ready: {early:?}"
    );
    // Listening starts when readiness is announced (the supervisor's next check after the
    // worker said hello), logged just before `ready`.
    wait_log(&env, "listening now that the workers are ready");
    let body = get(addr).expect("served once ready");
    assert!(!body.is_empty());
}

/// Issue 17: per-program `stdout` and `stderr` files (paths relative to the configuration
/// file) take that program's prefixed lines instead of the supervisor's streams, and are
/// opened again on `SIGUSR1`, as the log file is.
#[test]
fn issue_17_program_stdout_and_stderr_files_take_its_lines_and_reopen_on_usr1() {
    let mut env = TestEnv::new("program-files");
    let config = env.dir.join("handover.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"tcp://127.0.0.1:0\"\n\n[[program]]\n\
             name = \"app\"\ncommand = [\"{DEMO_WORKER}\", \"--log-requests\"]\nworkers = 1\n\
             stdout = \"app.out\"\nstderr = \"app.err\"\n"
        ),
    )
    .unwrap();
    env.serve(&["--config", config.to_str().unwrap()], &[]);
    let addr = env.wait_ready(1);
    let (out, err) = (env.dir.join("app.out"), env.dir.join("app.err"));
    get(addr).expect("request");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_lines(&out).is_empty() {
        assert!(Instant::now() < deadline, "nothing in {}:\n{}", out.display(), env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served_lines(&out)[0].starts_with("app.0["), "prefixed: {:?}", served_lines(&out));
    let errors = std::fs::read_to_string(&err).unwrap();
    assert!(errors.contains("starting"), "the worker's stderr: {errors}");
    assert!(!env.log_text().contains("served request"), "{}", env.log_text());

    // logrotate's way: rename, then USR1; new lines go to a new file at the path.
    std::fs::rename(&out, env.dir.join("app.out.1")).unwrap();
    env.signal("USR1");
    wait_log(&env, &format!("SIGUSR1: reopened the log file {}", out.display()));
    get(addr).expect("request");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_lines(&out).is_empty() {
        assert!(Instant::now() < deadline, "nothing in the new {}", out.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(served_lines(&env.dir.join("app.out.1")).len(), 1);
}
