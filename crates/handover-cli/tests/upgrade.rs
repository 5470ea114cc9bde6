//! Zero-downtime upgrades with real processes on loopback: under load, and to a broken config.
#![cfg(target_os = "linux")] // reads /proc (tests/wine.rs drives the Windows supervisor)
#![allow(clippy::print_stderr)] // the tests report their figures

mod testenv;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testenv::*;

/// `handover upgrade`: (exit code, stdout + stderr).
fn upgrade(control: &Path) -> (i32, String) {
    let out = Command::new(HANDOVER).args(["upgrade", "--control"]).arg(control).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Kills whichever generation the pid file names when the test ends (the later generations
/// are not the test's children, so `TestEnv` cannot).
struct Lineage(std::path::PathBuf);

impl Drop for Lineage {
    fn drop(&mut self) {
        if let Some(pid) =
            std::fs::read_to_string(&self.0).ok().and_then(|s| s.trim().parse::<u32>().ok())
        {
            if alive(pid) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// A client making connect-per-request calls at full speed until stopped, never retrying.
struct Hammer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    answered: usize,
    refused: usize,
    reset: usize,
    other: usize,
    errors: Vec<String>,
}

impl Hammer {
    fn start(addr: std::net::SocketAddr, threads: usize) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut t = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        t.sent += 1;
                        match get(addr) {
                            Ok(_) => t.answered += 1,
                            Err(e) => {
                                if e.contains("refused") {
                                    t.refused += 1;
                                } else if e.contains("reset") {
                                    t.reset += 1;
                                } else {
                                    t.other += 1;
                                }
                                if t.errors.len() < 5 {
                                    t.errors.push(e);
                                }
                            }
                        }
                    }
                    t
                })
            })
            .collect();
        Hammer { stop, threads }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Tally::default();
        for h in self.threads {
            let t = h.join().unwrap();
            all.sent += t.sent;
            all.answered += t.answered;
            all.refused += t.refused;
            all.reset += t.reset;
            all.other += t.other;
            all.errors.extend(t.errors);
        }
        all
    }
}

fn generation(env: &TestEnv) -> (u64, u32) {
    let s = env.status().expect("status");
    (s["generation"].as_u64().unwrap(), s["pid"].as_u64().unwrap() as u32)
}

/// Stops the current generation through the control socket and waits for it to exit.
fn stop_lineage(env: &TestEnv) {
    let (_, pid) = generation(env);
    let ok = Command::new(HANDOVER).args(["stop", "--control"]).arg(&env.control).status().unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "generation pid {pid} did not exit:\n{}",
            env.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!env.control.exists(), "the last generation removes its control socket");
}

#[test]
fn twenty_upgrades_under_load_lose_nothing() {
    upgrades_under_load("prefork", 20);
}

#[test]
fn upgrades_under_load_in_spawn_and_shared_modes() {
    upgrades_under_load("spawn", 5);
    upgrades_under_load("shared", 5);
}

fn upgrades_under_load(mode: &str, upgrades: u64) {
    let mut env = TestEnv::new(&format!("upgrade-{mode}"));
    let pid_file = env.dir.join("handover.pid");
    let _lineage = Lineage(pid_file.clone());
    env.serve(
        &[
            "-l",
            "http=tcp://127.0.0.1:0",
            "-w",
            "2",
            "--mode",
            mode,
            "--min-uptime",
            "50ms",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[DEMO_WORKER],
    );
    let addr = env.wait_ready(2);
    let first_pid = env.pid();
    let started = Instant::now();
    let hammer = Hammer::start(addr, 4);
    std::thread::sleep(Duration::from_millis(100));
    let mut pids = vec![first_pid];
    for n in 2..=upgrades + 1 {
        let (code, out) = upgrade(&env.control);
        assert_eq!(code, 0, "upgrade to generation {n}: {out}\n{}", env.log_text());
        let (g, pid) = generation(&env);
        assert_eq!(g, n, "{out}");
        assert!(!pids.contains(&pid));
        let in_file: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert_eq!(in_file, pid, "the pid file names the new generation");
        pids.push(pid);
    }
    std::thread::sleep(Duration::from_millis(100));
    let t = hammer.finish();
    let took = started.elapsed();
    eprintln!(
        "{mode}: {upgrades} upgrades under load in {took:?}: sent {}, answered {}, refused {}, reset {}, other {}",
        t.sent, t.answered, t.refused, t.reset, t.other
    );
    assert_eq!(t.refused, 0, "{:?}\n{}", t.errors, env.log_text());
    assert_eq!(t.reset, 0, "{:?}\n{}", t.errors, env.log_text());
    assert_eq!(t.other, 0, "{:?}\n{}", t.errors, env.log_text());
    assert_eq!(t.answered, t.sent);
    assert!(t.sent > 50, "the client ran: {}", t.sent);
    // The first generation was the test's child: it drained and exited cleanly.
    let st = env.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "{st}\n{}", env.log_text());
    // Every old generation has gone; only the last one serves.
    let deadline = Instant::now() + Duration::from_secs(15);
    let last = pids.len() - 1;
    while pids[..last].iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "old generations still running:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive(pids[last]));
    stop_lineage(&env);
    assert!(!pid_file.exists(), "the last generation removes the pid file");
}

fn write_config(path: &Path, port: u16, command: &[&str], extra: &str) {
    let cmd: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    std::fs::write(
        path,
        format!(
            "ready_timeout = \"1500ms\"\n{extra}\n[[listener]]\nname = \"http\"\naddress = \"tcp://127.0.0.1:{port}\"\n\n\
             [[program]]\ncommand = [{}]\nworkers = 2\ncrash_limit = 2\nmin_uptime = \"50ms\"\n",
            cmd.join(", ")
        ),
    )
    .unwrap();
}

#[test]
fn a_broken_upgrade_leaves_the_old_generation_serving() {
    let mut env = TestEnv::new("upgrade-broken");
    let pid_file = env.dir.join("handover.pid");
    let _lineage = Lineage(pid_file.clone());
    let config = env.dir.join("handover.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    write_config(&config, port, &[DEMO_WORKER], "");
    env.serve(
        &["--config", config.to_str().unwrap(), "--pid-file", pid_file.to_str().unwrap()],
        &[],
    );
    let addr = env.wait_ready(2);
    let hammer = Hammer::start(addr, 2);
    let me = env.pid();

    // 1. The new configuration names a worker that does not exist: the new generation cannot
    //    even start.
    write_config(&config, port, &["/nonexistent/worker"], "");
    let (code, out) = upgrade(&env.control);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("upgrade failed") && out.contains("/nonexistent/worker"), "{out}");
    assert!(out.contains("carries on serving"), "{out}");

    // 2. Its workers crash at once: the new generation gives up.
    write_config(&config, port, &[DEMO_WORKER, "--misbehave", "exit"], "");
    let (code, out) = upgrade(&env.control);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("crashed"), "{out}");

    // 3. Its workers never become ready: --ready-timeout; a second upgrade meanwhile is refused.
    write_config(&config, port, &["/bin/sleep", "60"], "");
    let control = env.control.clone();
    let first = std::thread::spawn(move || upgrade(&control));
    std::thread::sleep(Duration::from_millis(400));
    let (code2, out2) = upgrade(&env.control);
    assert_ne!(code2, 0, "{out2}");
    assert!(out2.contains("already in progress"), "{out2}");
    let (code, out) = first.join().unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not ready within"), "{out}");

    // The old generation is untouched: same pid, generation 1, control socket and pid file its own.
    let (g, pid) = generation(&env);
    assert_eq!((g, pid), (1, me));
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), me.to_string());
    assert_eq!(env.status().unwrap()["upgrades_failed"], 3);
    // Abandoned generations leave no staged control socket behind, and no process.
    let leftovers: Vec<_> = std::fs::read_dir(&env.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".new") || n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(children_of(me).len(), 2, "only the two workers: {:?}", children_of(me));

    // 4. Fixed: the upgrade goes through, on the same listener.
    write_config(&config, port, &[DEMO_WORKER], "");
    let (code, out) = upgrade(&env.control);
    assert_eq!(code, 0, "{out}\n{}", env.log_text());
    assert_eq!(generation(&env).0, 2);
    let t = hammer.finish();
    eprintln!("broken upgrades: sent {}, answered {}", t.sent, t.answered);
    assert_eq!(t.answered, t.sent, "{:?}\n{}", t.errors, env.log_text());
    assert!(t.sent > 20);
    assert!(env.wait_exit(Duration::from_secs(15)).success(), "{}", env.log_text());
    // No abandoned generation or worker is left behind.
    assert!(children_of(me).is_empty());
    stop_lineage(&env);
}

#[test]
fn sigusr2_upgrades_too() {
    let mut env = TestEnv::new("upgrade-usr2");
    let pid_file = env.dir.join("handover.pid");
    let _lineage = Lineage(pid_file.clone());
    env.serve(
        &["-l", "tcp://127.0.0.1:0", "-w", "1", "--pid-file", pid_file.to_str().unwrap()],
        &[DEMO_WORKER],
    );
    let addr = env.wait_ready(1);
    env.signal("USR2");
    assert!(env.wait_exit(Duration::from_secs(15)).success(), "{}", env.log_text());
    assert_eq!(generation(&env).0, 2);
    assert!(get(addr).is_ok());
    stop_lineage(&env);
}

/// Issue 17: an upgrade starts the binary the user installed. Two releases, a `current` link
/// swapped from the first to the second (as Capistrano, stow or a Nix profile do): the upgrade
/// runs the second, through the link as invoked; `--binary` starts another one; the reply,
/// `status` and `handover_build_info` name the binary of each generation.
#[test]
fn issue_17_upgrade_starts_the_binary_a_swapped_link_names_and_binary_overrides_it() {
    let mut env = TestEnv::new("symlink-upgrade");
    for r in ["1", "2"] {
        let dir = env.dir.join("releases").join(r);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(HANDOVER, dir.join("handover")).unwrap();
    }
    let current = env.dir.join("current");
    std::os::unix::fs::symlink("releases/1", &current).unwrap();
    let invoked = current.join("handover");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = std::fs::File::create(&env.log).unwrap();
    let child = Command::new(&invoked)
        .args(["serve", "--mode", "spawn", "--listen", "tcp://127.0.0.1:0", "--metrics"])
        .arg(metrics.to_string())
        .arg("--pid-file")
        .arg(env.dir.join("pid"))
        .arg("--control")
        .arg(&env.control)
        .args(["--", "sh", "-c", "echo hi"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    env.child = Some(child);
    let _lineage = Lineage(env.dir.join("pid"));
    env.wait_ready(1);
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let release = |r: &str| std::fs::canonicalize(env.dir.join("releases").join(r)).unwrap();
    let status = env.status().unwrap();
    assert_eq!(status["binary"], invoked.to_str().unwrap(), "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");

    // Swap the link atomically (a new link renamed over the old one), then upgrade.
    std::os::unix::fs::symlink("releases/2", env.dir.join("current.new")).unwrap();
    std::fs::rename(env.dir.join("current.new"), &current).unwrap();
    let (code, text) = upgrade(&env.control);
    assert_eq!(code, 0, "{text}\n{}", env.log_text());
    assert!(text.contains(&format!("binary {}", invoked.display())), "{text}");
    assert!(text.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))), "{text}");
    let (generation2, pid2) = generation(&env);
    assert_eq!(generation2, 2);
    assert_eq!(exe_of(pid2), release("2").join("handover"), "the upgrade ran the old release");
    assert_eq!(env.status().unwrap()["binary"], invoked.to_str().unwrap());

    // --binary: a relative path, made absolute by the client; links not resolved.
    let out = Command::new(HANDOVER)
        .current_dir(&env.dir)
        .args(["upgrade", "--binary", "releases/1/handover", "--control"])
        .arg(&env.control)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let named = env.dir.join("releases/1/handover");
    assert!(text.contains(&format!("binary {}", named.display())), "{text}");
    let (generation3, pid3) = generation(&env);
    assert_eq!(generation3, 3);
    assert_eq!(exe_of(pid3), release("1").join("handover"));
    let status = env.status().unwrap();
    assert_eq!(status["binary"], named.to_str().unwrap(), "{status}");
    let body = get_metrics(metrics);
    let line = format!(
        "handover_build_info{{version=\"{}\",binary=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        named.display()
    );
    assert!(body.lines().any(|l| l == line), "no {line} in:\n{body}");

    // A path that is not an executable file is refused; the generation serves on.
    let out = Command::new(HANDOVER)
        .args(["upgrade", "--binary", "/nonexistent/handover", "--control"])
        .arg(&env.control)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--binary /nonexistent/handover"), "{err}");
    assert_eq!(generation(&env).0, 3);
    stop_lineage(&env);
}

/// `GET /metrics`: the body.
fn get_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or(resp)
}
