//! systemd integration with real processes: socket activation (LISTEN_FDS/LISTEN_FDNAMES from
//! a harness, and from `systemd-socket-activate` where installed), sd_notify messages on a
//! NOTIFY_SOCKET the test listens on, and the einhorn / Server::Starter variables.
#![cfg(target_os = "linux")]
#![allow(clippy::print_stderr)]

mod testenv;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover::AsSocketRef;
use testenv::*;

/// The NOTIFY_SOCKET a service manager would listen on.
struct Notifications(UnixDatagram);

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let s = UnixDatagram::bind(path).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Notifications(s)
    }

    /// Waits for a message containing `line` (a whole line, e.g. `READY=1`); returns it and
    /// every message before it.
    fn wait_for(&self, line: &str, log: &dyn Fn() -> String) -> (String, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.0.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == line) {
                    return (msg, seen);
                }
                seen.push(msg);
            }
            assert!(Instant::now() < deadline, "no {line} (got {seen:?}):\n{}", log());
        }
    }
}

fn value<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn handover_cmd(args: &[&str], control: &Path) -> std::process::Output {
    Command::new(HANDOVER).args(args).arg("--control").arg(control).output().unwrap()
}

#[test]
fn socket_activation_serves_on_the_passed_socket_and_notifies() {
    let env = TestEnv::new("activation");
    let notify_path = env.dir.join("notify.sock");
    let notes = Notifications::bind(&notify_path);
    let log_path = env.log.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    // The "systemd" side: bind, then start handover with the socket as LISTEN_FDS.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let listen = format!("http=tcp://{addr}");
    let logf = std::fs::File::create(&env.log).unwrap();
    let mut cmd = handover::Command::new(HANDOVER);
    cmd.args(["serve", "-l", &listen, "-w", "2", "--control"])
        .arg(&env.control)
        .args(["--", DEMO_WORKER])
        .listen_socket("http", listener.as_socket_ref())
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(logf);
    let mut child = cmd.spawn().unwrap();
    // Handover cannot have bound the address itself: this test still holds it until here.
    drop(listener);

    let (ready, _) = notes.wait_for("READY=1", &log);
    assert!(value(&ready, "STATUS").is_some(), "{ready}");
    let l = load(addr, 200, 4);
    assert_eq!(l.ok, 200, "{:?}\n{}", l.errors, log());
    assert!(log().contains("socket activation: 1 socket(s) passed"), "{}", log());

    // An upgrade: RELOADING=1 with MONOTONIC_USEC, then MAINPID= the new generation, READY=1.
    let out = handover_cmd(&["upgrade"], &env.control);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), log());
    let (handed, before) = notes.wait_for("READY=1", &log);
    let reloading = before.iter().find(|m| m.lines().any(|l| l == "RELOADING=1"));
    let reloading =
        reloading.unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {before:?}"));
    let usec: u64 = value(reloading, "MONOTONIC_USEC").expect("MONOTONIC_USEC").parse().unwrap();
    assert!(usec > 0);
    let status = env.status().unwrap();
    let new_pid = status["pid"].as_u64().unwrap();
    assert_eq!(value(&handed, "MAINPID"), Some(new_pid.to_string().as_str()), "{handed}");
    assert_eq!(status["generation"], 2);
    let l = load(addr, 100, 4);
    assert_eq!(l.ok, 100, "{:?}\n{}", l.errors, log());
    // The first generation exits once drained.
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Stop: STOPPING=1 from the new main process.
    assert!(handover_cmd(&["stop"], &env.control).status.success());
    notes.wait_for("STOPPING=1", &log);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(new_pid as u32) {
        assert!(Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn socket_activate_bin() -> Option<&'static str> {
    [
        "/usr/bin/systemd-socket-activate",
        "/usr/lib/systemd/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

#[test]
fn systemd_socket_activate_starts_handover() {
    let Some(bin) = socket_activate_bin() else {
        eprintln!("systemd-socket-activate is not installed (Debian package systemd): skipped");
        return;
    };
    let mut env = TestEnv::new("socket-activate");
    let notify_path = env.dir.join("notify.sock");
    let notes = Notifications::bind(&notify_path);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let logf = std::fs::File::create(&env.log).unwrap();
    let listen = format!("http=tcp://{addr}");
    // systemd-socket-activate binds, waits for the first connection, then execs handover with
    // the socket as LISTEN_FDS=1, LISTEN_FDNAMES=http.
    let child = Command::new(bin)
        .args(["-l", &addr.to_string(), "--fdname=http"])
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .args(["-E", "RUST_LOG=info", HANDOVER, "serve", "-l", &listen, "-w", "2", "--control"])
        .arg(&env.control)
        .args(["--", DEMO_WORKER])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap();
    env.child = Some(child);
    // It listens before it execs: wait for the port.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{}", env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log_path = env.log.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    notes.wait_for("READY=1", &log);
    let l = load(addr, 200, 4);
    assert_eq!(l.ok, 200, "{:?}\n{}", l.errors, log());
    assert!(log().contains("socket activation: 1 socket(s) passed"), "{}", log());
    env.signal("TERM");
    notes.wait_for("STOPPING=1", &log);
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", log());
}

#[test]
fn compat_variables_for_einhorn_and_server_starter_programs() {
    let mut env = TestEnv::new("compat");
    let out = env.dir.join("env.txt");
    let script = format!(
        "{{ env; echo fd3=$(readlink /proc/$$/fd/3); }} > {}.tmp && mv {0}.tmp {0}; exec sleep 60",
        out.display()
    );
    env.serve(
        &[
            "-l",
            "http=tcp://127.0.0.1:0",
            "-l",
            &format!("app=unix:{}", env.dir.join("app.sock").display()),
            "--mode",
            "shared",
            "-w",
            "1",
            "--compat",
            "einhorn",
            "--compat",
            "server-starter",
        ],
        &["/bin/sh", "-c", &script],
    );
    let addr = env.wait_ready(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.exists() {
        assert!(Instant::now() < deadline, "{}", env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let var = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('=').map(str::to_owned))
            .unwrap_or_else(|| panic!("{k} missing:\n{text}"))
    };
    assert_eq!(var("EINHORN_FDS"), "3 4");
    assert_eq!(var("EINHORN_FD_COUNT"), "2");
    assert_eq!(var("EINHORN_FD_0"), "3");
    assert_eq!(var("EINHORN_FD_1"), "4");
    assert_eq!(
        var("SERVER_STARTER_PORT"),
        format!("{addr}=3;{}=4", env.dir.join("app.sock").display())
    );
    assert_eq!(var("SERVER_STARTER_GENERATION"), "1");
    assert_eq!(var("LISTEN_FDS"), "2");
    assert!(var("fd3").starts_with("socket:"), "{text}");
    env.signal("TERM");
    assert!(env.wait_exit(Duration::from_secs(10)).success(), "{}", env.log_text());
}
