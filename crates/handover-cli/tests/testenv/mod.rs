//! TestEnv: a supervisor started as a real process, with a private control socket, plus an
//! HTTP client that never retries (so a lost connection fails the test).
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");
/// The demo worker, `handover-demo-worker` beside `handover` in the target directory. It is a
/// package of its own (crates/demo-worker, unpublished, so that installing the supervisor
/// installs no demo program), and cargo sets `CARGO_BIN_EXE_*` only for binaries of the test's
/// own package: [`TestEnv::new`] builds it first (see [`build_demo_worker`]).
pub const DEMO_WORKER: &str = concat!(env!("CARGO_BIN_EXE_handover"), "-demo-worker");

/// Runs `cargo build -p handover-demo-worker`, once per test process, into the target
/// directory `handover` was built in, so the worker is never missing or stale when only this
/// package's tests are run. Cheap when it is fresh; after `cargo test --workspace
/// --all-features` the first call may rebuild it once, since its dependencies' features are
/// then resolved for it alone.
pub fn build_demo_worker() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let profile = Path::new(HANDOVER).parent().expect("the profile directory");
        let target = profile.parent().expect("the target directory");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "-p", "handover-demo-worker", "--target-dir"]).arg(target);
        if profile.ends_with("release") {
            cargo.arg("--release");
        }
        let out = cargo.current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run cargo");
        assert!(
            out.status.success(),
            "cargo build -p handover-demo-worker failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(Path::new(DEMO_WORKER).is_file(), "{DEMO_WORKER} missing after cargo build");
    });
}

/// The Python example worker, from the repository.
pub fn python_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workers/worker.py")
}

pub fn have_python() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct TestEnv {
    pub dir: PathBuf,
    pub control: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl TestEnv {
    /// A fresh directory for one test.
    pub fn new(name: &str) -> TestEnv {
        build_demo_worker();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("handover-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let control = dir.join("control.sock");
        let log = dir.join("supervisor.log");
        TestEnv { dir, control, child: None, log }
    }

    /// Starts `handover serve ARGS --control … -- CMD…`, logging to a file.
    pub fn serve(&mut self, args: &[&str], cmd: &[&str]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut c = Command::new(HANDOVER);
        c.arg("serve").args(args).arg("--control").arg(&self.control);
        if !cmd.is_empty() {
            c.arg("--").args(cmd);
        }
        c.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(c.spawn().expect("start handover"));
    }

    /// Like [`serve`](TestEnv::serve), with descriptor `fd` open and inheritable in the
    /// supervisor (as a careless parent would leave it), by way of a shell.
    pub fn serve_with_stray_fd(&mut self, fd: u32, args: &[&str], cmd: &[&str]) {
        self.serve_after(&format!("exec {fd}</dev/null"), args, cmd);
    }

    /// Like [`serve`](TestEnv::serve), started by way of a shell that first runs `prefix`
    /// (`ulimit -n 64`, say).
    pub fn serve_after(&mut self, prefix: &str, args: &[&str], cmd: &[&str]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("{prefix} && exec \"$@\"")).arg("sh").arg(HANDOVER);
        c.arg("serve").args(args).arg("--control").arg(&self.control).arg("--").args(cmd);
        c.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(c.spawn().expect("start handover"));
    }

    /// How long the supervisor takes to answer a status request on its control socket
    /// (measured in this process: no `handover status` process start in the figure).
    pub fn status_latency(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let ch = handover::Channel::connect(&self.control).map_err(|e| e.to_string())?;
        ch.send(b"status", &[]).map_err(|e| e.to_string())?;
        let reply = ch.recv_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?;
        serde_json::from_slice::<serde_json::Value>(&reply.bytes).map_err(|e| e.to_string())?;
        Ok(started.elapsed())
    }

    /// Whether the supervisor is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `handover status --json`, parsed; `None` while the supervisor is not answering.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(HANDOVER)
            .args(["status", "--json", "--control"])
            .arg(&self.control)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until `n` workers report `ready` (prefork) or `running` (shared), or any state
    /// for spawn, and returns the first listener's TCP address.
    pub fn wait_ready(&mut self, n: usize) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.status() {
                let ready = s["programs"][0]["workers"].as_array().map_or(0, |w| {
                    w.iter().filter(|w| w["state"] == "ready" || w["state"] == "running").count()
                });
                let mode = s["programs"][0]["mode"].as_str().unwrap_or("");
                if ready >= n || mode == "spawn" {
                    let addr = s["listeners"][0]["address"].as_str().unwrap();
                    return addr.trim_start_matches("tcp://").parse().unwrap();
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("supervisor exited early ({st}):\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "workers not ready in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn totals(&self) -> serde_json::Value {
        self.status().expect("status")["totals"].clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let log = self.log.clone();
        wait_exit(self.child.as_mut().unwrap(), within, &log)
    }

    /// Worker pids: the supervisor's direct children.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// The supervisor's open descriptors and what each is, for an assertion's message.
    #[allow(dead_code)]
    pub fn fd_list(&self) -> String {
        let dir = format!("/proc/{}/fd", self.pid());
        let mut fds: Vec<(u32, String)> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_str()?.parse().ok()?;
                        let target = std::fs::read_link(e.path()).ok()?;
                        Some((n, target.display().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        fds.sort();
        fds.iter().map(|(n, t)| format!("{n}={t}")).collect::<Vec<_>>().join(" ")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        clean_up(self.child.take(), &self.dir);
    }
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may contain spaces, so parse after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut f = rest.split_whitespace();
        let state = f.next();
        if state == Some("Z") {
            continue;
        }
        if f.next().and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Kills a random child of `supervisor` with `SIGKILL` every `every` until `stop` is set, on
/// a thread; returns the number of kills when joined.
pub fn kill_randomly(
    supervisor: u32,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut kills = 0u32;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(supervisor);
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(every);
            let pids = children_of(supervisor);
            if pids.is_empty() {
                continue;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let victim = pids[(seed % pids.len() as u64) as usize];
            let _ = Command::new("kill").args(["-9", &victim.to_string()]).status();
            kills += 1;
        }
        kills
    })
}

/// Sends `sig` (`STOP`, `CONT`, ...) to `pid`.
/// The supervisor's log with `--log-format json` after one worker (slot 0 of program `main`,
/// run with `--log-requests`) served three requests: every line is a JSON object, the worker's
/// three lines are there, labelled, in order, and the supervisor's own lines are JSON too.
/// Returns the lines and the worker's pid.
pub fn json_output_of_three_requests(log: &str) -> (Vec<serde_json::Value>, u64) {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{log}")))
        .collect();
    let served: Vec<_> = lines.iter().filter(|v| v["stream"] == "stdout").collect();
    assert_eq!(served.len(), 3, "{log}");
    assert_eq!(served[2]["message"], "served request 3");
    assert_eq!(
        (served[0]["program"].as_str(), served[0]["slot"].as_u64()),
        (Some("main"), Some(0))
    );
    let pid = served[0]["pid"].as_u64().expect("pid");
    assert!(
        lines.iter().any(|v| v["message"] == "worker ready"),
        "the supervisor's own lines are JSON too"
    );
    (lines, pid)
}

/// Kills a supervisor still running at the end of a test, and removes the test's directory
/// unless the test failed (its log stays for a look).
pub fn clean_up(child: Option<Child>, dir: &Path) {
    if let Some(mut c) = child {
        if c.try_wait().ok().flatten().is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    if !std::thread::panicking() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Waits for a supervisor to exit; kills it and fails with its log (at `log`) if it has not
/// within `within`.
pub fn wait_exit(child: &mut Child, within: Duration, log: &Path) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("supervisor did not exit in {within:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// One HTTP/1.0 request on a fresh connection, no retry. `Ok(body)` only for a complete
/// response followed by a clean end of stream.
pub fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("no header end: {text:?}"));
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("bad status: {head:?}"));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .ok_or("no content-length")?;
    if body.len() != len || !body.starts_with("hello from") {
        return Err(format!("truncated or wrong body: {body:?}"));
    }
    Ok(body.to_owned())
}

/// Result of a load run.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: usize,
    pub failed: usize,
    pub connect_failed: usize,
    pub errors: Vec<String>,
    pub bodies: std::collections::HashMap<String, usize>,
}

/// `total` requests over `threads` client threads, each a new connection.
pub fn load(addr: SocketAddr, total: usize, threads: usize) -> Load {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    load_while(addr, total, threads, stop, None)
}

/// `total` requests over `threads` client threads until `stop` is set or `deadline` passes.
fn load_while(
    addr: SocketAddr,
    total: usize,
    threads: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    deadline: Option<Instant>,
) -> Load {
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, stop) = (std::sync::Arc::clone(&next), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut l = Load::default();
                while !stop.load(Ordering::SeqCst)
                    && deadline.is_none_or(|d| Instant::now() < d)
                    && (next.fetch_add(1, Ordering::SeqCst) as usize) < total
                {
                    match get(addr) {
                        Ok(body) => {
                            l.ok += 1;
                            *l.bodies.entry(body).or_default() += 1;
                        }
                        Err(e) => {
                            if e.starts_with("connect") {
                                l.connect_failed += 1;
                            }
                            l.failed += 1;
                            if l.errors.len() < 5 {
                                l.errors.push(e);
                            }
                        }
                    }
                }
                l
            })
        })
        .collect();
    let mut all = Load::default();
    for h in handles {
        let l = h.join().unwrap();
        all.ok += l.ok;
        all.failed += l.failed;
        all.connect_failed += l.connect_failed;
        all.errors.extend(l.errors);
        for (k, v) in l.bodies {
            *all.bodies.entry(k).or_default() += v;
        }
    }
    all
}

impl TestEnv {
    /// Like [`serve`](TestEnv::serve), but the supervisor's stdout is a pipe nobody reads
    /// (kept open until the TestEnv drops), stderr the log file.
    pub fn serve_stdout_unread(&mut self, args: &[&str], cmd: &[&str]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut c = Command::new(HANDOVER);
        c.arg("serve").args(args).arg("--control").arg(&self.control).arg("--").args(cmd);
        c.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        self.child = Some(c.spawn().expect("start handover"));
    }

    /// Runs `handover SUBCOMMAND --control … ARGS` and returns its exit status and output.
    pub fn handover(&self, sub: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(HANDOVER)
            .arg(sub)
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .output()
            .expect("run handover");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Polls `status --json` every 20 ms until `done` holds, for at most `within`.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status() {
                if done(&s) {
                    return s;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {within:?}: {s:#}\n{}",
                    self.log_text()
                );
            } else {
                assert!(Instant::now() < deadline, "{what}: no status\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Requests over `threads` client threads, each a new connection, until `stop` is set (or
/// `max` requests, or 30 s, whichever comes first).
pub fn load_until(
    addr: SocketAddr,
    threads: usize,
    max: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Load> {
    let deadline = Instant::now() + Duration::from_secs(30);
    std::thread::spawn(move || load_while(addr, max, threads, stop, Some(deadline)))
}

/// The pid in a demo worker's answer ("hello from the rust worker PID").
pub fn body_pid(body: &str) -> u32 {
    body.trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{body:?}"))
}

/// The demo worker's `--gap-file`: microseconds from each FINISHED to the next connection,
/// sorted, and their median.
pub fn read_gaps(path: &Path) -> (Vec<u64>, u64) {
    let mut gaps: Vec<u64> =
        std::fs::read_to_string(path).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    gaps.sort_unstable();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or(u64::MAX);
    (gaps, median)
}

/// A copy of the program at `path` that any user may run (in a world-readable directory of
/// this test process's own): tests that switch users cannot run programs from a checkout that
/// other users cannot enter (one made with `mktemp -d` is 0700).
pub fn runnable_by_anyone(path: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("handover-test-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.join(Path::new(path).file_name().unwrap());
    if !to.exists() {
        // Copied under another name, then renamed: a parallel test never runs a half copy.
        let tmp = PathBuf::from(format!("{}.{:?}", to.display(), std::thread::current().id()));
        std::fs::copy(path, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &to).unwrap();
    }
    to.to_str().unwrap().to_owned()
}
