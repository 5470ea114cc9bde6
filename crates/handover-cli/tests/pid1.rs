//! Issue 17: the supervisor as PID 1 of a PID namespace (a container), made here with
//! `unshare --pid --fork --mount-proc`: orphans are reaped, `SIGTERM` drains, and an upgrade
//! keeps serving without taking the namespace down.
#![cfg(target_os = "linux")] // PID namespaces, /proc
#![allow(clippy::print_stderr)] // says why the test is skipped where no namespace can be made

mod testenv;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testenv::{TestEnv, HANDOVER};

/// Why a PID namespace cannot be made here (not root, no user namespaces, no `unshare`).
fn no_pid_namespace() -> Option<String> {
    match Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// `(pid, ppid, state)` of every process.
fn processes() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}

/// The zombies among the descendants of `root`.
fn zombies_below(root: u32) -> Vec<u32> {
    let all = processes();
    let mut below = vec![root];
    let mut i = 0;
    while i < below.len() {
        let parent = below[i];
        below.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    all.iter().filter(|p| p.2 == 'Z' && below.contains(&p.0)).map(|p| p.0).collect()
}

/// What a spawn-mode child answers with, after leaving an orphan behind: a subshell starts a
/// background `sleep` and exits, so the `sleep` is reparented to PID 1 of the namespace.
fn answer(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    text
}

/// Waits (5 s at most) until no process below `root` is a zombie.
fn wait_no_zombies(root: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let zombies = zombies_below(root);
        if zombies.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "zombies left in the namespace: {zombies:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue_17_as_pid_1_orphans_are_reaped_an_upgrade_keeps_serving_and_sigterm_drains() {
    if let Some(why) = no_pid_namespace() {
        eprintln!("skipped: cannot make a PID namespace here ({why})");
        return;
    }
    let mut env = TestEnv::new("pid1");
    let log = std::fs::File::create(&env.log).unwrap();
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(HANDOVER)
        .args(["serve", "--mode", "spawn", "--listen", "tcp://127.0.0.1:0", "--control"])
        .arg(&env.control)
        .args(["--", "sh", "-c"])
        .arg("(sleep 0.2 </dev/null >/dev/null 2>&1 &); echo served by $$")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start unshare");
    let unshare = child.id();
    env.child = Some(child);
    let addr = env.wait_ready(1);

    // Orphans: each answer leaves a `sleep` that outlives its parent by 200 ms.
    for _ in 0..5 {
        assert!(answer(addr).starts_with("served by"));
    }
    wait_no_zombies(unshare);

    // An upgrade as PID 1: generation 2 answers, and the namespace outlives generation 1.
    let (ok, text) = env.handover("upgrade", &[]);
    assert!(ok, "upgrade failed: {text}\n{}", env.log_text());
    std::thread::sleep(Duration::from_millis(500)); // generation 1 drains and exits meanwhile
    assert!(env.running(), "the namespace died with generation 1:\n{}", env.log_text());
    let status = env.status().expect("status after the upgrade");
    assert_eq!(status["generation"], 2, "{status}");
    assert!(answer(addr).starts_with("served by"), "generation 2 does not answer");
    wait_no_zombies(unshare);

    // SIGTERM to PID 1 (from outside, as `docker stop` sends it): the generation drains.
    let pid1 = testenv::children_of(unshare);
    assert_eq!(pid1.len(), 1, "PID 1 of the namespace: {pid1:?}");
    testenv::signal_pid(pid1[0], "TERM");
    let st = env.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "exit {st}:\n{}", env.log_text());
    assert!(env.log_text().contains("Terminate: draining"), "{}", env.log_text());
}

#[test]
fn issue_17_subreaper_adopts_and_reaps_orphans_without_being_pid_1() {
    let mut env = TestEnv::new("subreaper");
    env.serve(
        &["--subreaper", "--mode", "spawn", "--listen", "tcp://127.0.0.1:0"],
        &["sh", "-c", "(sleep 1 </dev/null >/dev/null 2>&1 &); echo served by $$"],
    );
    let addr = env.wait_ready(1);
    assert!(answer(addr).starts_with("served by"));
    // The orphaned `sleep` is reparented to the init process (the one the test started), not
    // to the system's init.
    let init = env.pid();
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !testenv::children_of(init).iter().any(|&p| comm(p).trim() == "sleep") {
        assert!(Instant::now() < deadline, "the orphan was not adopted:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1100));
    wait_no_zombies(init);
    env.signal("TERM");
    let st = env.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "exit {st}:\n{}", env.log_text());
}
