//! contrib/docker/Dockerfile and contrib/kubernetes/, checked without a container engine or a
//! cluster (CI has neither; the image itself is built where there is one):
//!
//! - the Dockerfile's promises, read from the file: a static musl build stage; the ENTRYPOINT
//!   is where the binary is copied to; the default command's worker is copied where it says; a
//!   user that is not root; STOPSIGNAL SIGTERM; EXPOSE = the command's listener and metrics
//!   ports;
//! - the image's default command and the Deployment's args (as written, and with the commented
//!   `--proxy-protocol v2` lines turned on) run by the binary built from this checkout on
//!   loopback: `0.0.0.0:PORT` becomes `127.0.0.1:FREE`, the image's worker path the demo worker
//!   built here, and a private `--control` is added. Each serves, `GET /ready` on the metrics
//!   port turns 200, SIGTERM makes it drain (/ready stops answering 200) and exit 0 within the
//!   drain timeout;
//! - the manifests against each other, the image and those args: the readiness probe is
//!   `httpGet /ready` on the port `--metrics` names; the container ports are the args' ports;
//!   the grace period is longer than the preStop sleep plus `--drain-timeout`; no other stop
//!   signal than the image's SIGTERM; `args` without `command` (the ENTRYPOINT stays); the
//!   user is the image's; the Service selects the pods and targets the listener's port.
//!
//! The PID-1 behaviour of the container (handover as PID 1 in a PID namespace) is tested with
//! the supervisor's process model, not here.
#![cfg(unix)]

mod testenv;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testenv::{build_demo_worker, DEMO_WORKER, HANDOVER};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// --- the Dockerfile ---------------------------------------------------------------------------

/// The instructions of each stage, `(KEYWORD, arguments)`, continuation lines joined and
/// comments dropped.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            cur.push_str(part.trim());
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (keyword, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
        let keyword = keyword.to_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("FROM first").push((keyword, rest.trim().to_owned()));
        cur.clear();
    }
    stages
}

struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    stopsignal: String,
    expose: BTreeSet<u16>,
    /// Every RUN of the build stages, joined.
    build_runs: String,
    final_copies: Vec<String>,
}

fn json_array(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not an exec-form JSON array: {s}: {e}"))
}

fn image() -> Image {
    let stages = stages(&read("contrib/docker/Dockerfile"));
    assert!(stages.len() >= 2, "a multi-stage build: {} stage(s)", stages.len());
    let (last, build) = stages.split_last().unwrap();
    let one = |keyword: &str| -> String {
        let all: Vec<&String> = last.iter().filter(|(k, _)| k == keyword).map(|(_, r)| r).collect();
        assert_eq!(all.len(), 1, "exactly one {keyword} in the final stage: {all:?}");
        all[0].clone()
    };
    let expose = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    Image {
        entrypoint: json_array(&one("ENTRYPOINT")),
        cmd: json_array(&one("CMD")),
        user: one("USER"),
        stopsignal: one("STOPSIGNAL"),
        expose,
        build_runs: build
            .iter()
            .flatten()
            .filter(|(k, _)| k == "RUN")
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        final_copies: last.iter().filter(|(k, _)| k == "COPY").map(|(_, r)| r.clone()).collect(),
    }
}

/// The value after `flag` in `args` (before `--`).
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let at =
        args[..end].iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} in {args:?}"));
    &args[at + 1]
}

/// The port of `[NAME=]tcp://HOST:PORT` or `HOST:PORT`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("port in {addr}"))
}

/// `30s`, `500ms`, `2m` in seconds.
fn seconds(d: &str) -> f64 {
    let (n, unit) =
        d.split_at(d.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(d.len()));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("duration {d}"));
    n * match unit {
        "ms" => 0.001,
        "s" | "" => 1.0,
        "m" => 60.0,
        _ => panic!("unit of {d}"),
    }
}

/// The program after `--`.
fn worker(args: &[String]) -> &str {
    let at = args.iter().position(|a| a == "--").expect("`--` before the worker");
    &args[at + 1]
}

#[test]
fn the_dockerfile_keeps_its_promises() {
    let img = image();
    // Build: a static binary, from the lock file.
    for what in ["cargo build --release --locked", "--target x86_64-unknown-linux-musl"] {
        assert!(img.build_runs.contains(what), "the build stage runs {what}: {}", img.build_runs);
    }
    // The entrypoint is the binary, copied from the build to where ENTRYPOINT says.
    assert_eq!(img.entrypoint.len(), 1, "ENTRYPOINT is the binary alone: {:?}", img.entrypoint);
    let entry = &img.entrypoint[0];
    assert!(
        img.final_copies.iter().any(|c| c == "--from=build /out/ /"),
        "the final stage copies the build's /out/ to /: {:?}",
        img.final_copies
    );
    assert!(
        img.build_runs.contains(&format!("x86_64-unknown-linux-musl/release/handover /out{entry}")),
        "the musl handover is installed at /out{entry}, which lands at the ENTRYPOINT {entry}"
    );
    // The default command's worker is installed where the command says.
    let worker = worker(&img.cmd);
    assert!(
        img.build_runs.contains(&format!("release/handover-demo-worker /out{worker}")),
        "the worker the CMD runs ({worker}) is installed there"
    );
    // Not root.
    let uid = img.user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0" && !uid.is_empty(), "USER {}", img.user);
    assert!(uid.parse::<u32>().is_ok(), "USER is numeric (runAsNonRoot can verify it): {uid}");
    // Stopped with SIGTERM: the supervisor's drain.
    assert_eq!(img.stopsignal, "SIGTERM");
    // EXPOSE is what the default command listens on.
    assert_eq!(img.cmd[0], "serve", "{:?}", img.cmd);
    let wanted: BTreeSet<u16> =
        [port_of(flag(&img.cmd, "--listen")), port_of(flag(&img.cmd, "--metrics"))].into();
    assert_eq!(img.expose, wanted, "EXPOSE vs the CMD's --listen and --metrics ports");
    for a in [flag(&img.cmd, "--listen"), flag(&img.cmd, "--metrics")] {
        assert!(a.contains("0.0.0.0:"), "{a}: a container listens on every interface");
    }
}

// --- running the args for real ------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.0 GET; the whole answer, or why there was none.
fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").map_err(|e| e.to_string())?;
    let mut got = String::new();
    s.read_to_string(&mut got).map_err(|e| e.to_string())?;
    Ok(got)
}

struct Supervisor {
    child: Child,
    log: PathBuf,
    dir: PathBuf,
}

impl Supervisor {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `args` (a `serve` command line written for a container) as described in the module
/// docs: serves, /ready turns 200, SIGTERM drains and exits 0 in time. `image_worker` is the
/// path the image has the worker at. Returns the listener's address while still serving, for
/// `more` to check.
fn serve_for_real(name: &str, args: &[String], image_worker: &str, more: impl FnOnce(SocketAddr)) {
    build_demo_worker();
    let (listen, metrics) = (port_of(flag(args, "--listen")), port_of(flag(args, "--metrics")));
    let (http, admin) = (free_port(), free_port());
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace(&format!("0.0.0.0:{listen}"), &format!("127.0.0.1:{http}"))
                .replace(&format!("0.0.0.0:{metrics}"), &format!("127.0.0.1:{admin}"))
                .replace(image_worker, DEMO_WORKER)
        })
        .collect();
    assert!(!args.iter().any(|a| a.contains("0.0.0.0")), "a port left unreplaced: {args:?}");
    let dir = std::env::temp_dir().join(format!("handover-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("supervisor.log");
    let dashdash = args.iter().position(|a| a == "--").unwrap();
    let mut cmd = Command::new(HANDOVER);
    cmd.args(&args[..dashdash])
        .arg("--control")
        .arg(dir.join("control.sock"))
        .args(&args[dashdash..]);
    let out = std::fs::File::create(&log).unwrap();
    let child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut sup = Supervisor { child, log, dir };
    let (http, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{http}").parse().unwrap(),
        format!("127.0.0.1:{admin}").parse().unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(admin, "/ready") {
            Ok(r) if r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200") => break,
            Ok(r) => assert!(r.contains(" 503 "), "/ready before ready: {r}"),
            Err(_) => {} // not bound yet
        }
        assert!(sup.child.try_wait().unwrap().is_none(), "{name}: exited:\n{}", sup.log());
        assert!(Instant::now() < deadline, "{name}: /ready not 200 in 30 s:\n{}", sup.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    more(http);

    // SIGTERM, as `docker stop` and the kubelet send it: drain, then exit 0 within the drain
    // timeout (plus slack); once /ready stops saying 200 it does not say it again.
    let drain = seconds(flag(&args, "--drain-timeout"));
    let pid = nix::unistd::Pid::from_raw(sup.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(drain + 10.0);
    let mut stopped_ready = false;
    let status = loop {
        if let Some(st) = sup.child.try_wait().unwrap() {
            break st;
        }
        // The signal is handled asynchronously: the first answers may predate it; once /ready
        // has stopped saying 200 it must not say it again.
        match get(admin, "/ready") {
            Ok(r) if r.contains(" 200 ") => {
                assert!(!stopped_ready, "{name}: /ready said 200 again while draining: {r}")
            }
            _ => stopped_ready = true,
        }
        assert!(Instant::now() < deadline, "{name}: still running {drain}+10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{name}: {status} after SIGTERM:\n{}", sup.log());
}

#[test]
fn the_images_default_command_serves_and_drains() {
    let img = image();
    serve_for_real("image-cmd", &img.cmd, worker(&img.cmd), |http| {
        let r = get(http, "/").unwrap();
        assert!(r.contains("hello from the rust"), "{r}");
    });
}

// --- the Kubernetes manifests ---------------------------------------------------------------------

fn yaml(path: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.into_iter().next().unwrap()
}

fn str_list(y: &Yaml, what: &str) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what} is a list: {y:?}"))
        .iter()
        .map(|v| match v {
            Yaml::String(s) => s.clone(),
            other => panic!("{what}: a non-string item {other:?} (quote it)"),
        })
        .collect()
}

struct Pod {
    args: Vec<String>,
    /// containerPort by name.
    ports: BTreeMap<String, i64>,
}

fn pod(deployment: &Yaml) -> Pod {
    let containers =
        deployment["spec"]["template"]["spec"]["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let ports = c["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("named port").to_owned(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    Pod { args: str_list(&c["args"], "args"), ports }
}

/// deployment.yaml with its commented `# - --proxy-protocol` / `# - v2` lines turned on.
fn with_proxy_protocol(text: &str) -> String {
    let mut found = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t == "# - --proxy-protocol" || (found == 1 && t == "# - v2") {
                found += 1;
                l.replacen("# - ", "- ", 1)
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_eq!(found, 2, "the commented `--proxy-protocol v2` option in deployment.yaml");
    out.join("\n")
}

#[test]
fn the_kubernetes_manifests_match_the_image_and_the_binary() {
    let img = image();
    let dep = yaml("contrib/kubernetes/deployment.yaml");
    let svc = yaml("contrib/kubernetes/service.yaml");
    assert_eq!(dep["kind"].as_str(), Some("Deployment"));
    assert_eq!(svc["kind"].as_str(), Some("Service"));
    let spec = &dep["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let pod = pod(&dep);

    // The image's entrypoint stays; the args are a `serve` command line whose worker the image has.
    assert!(c["command"].is_badvalue(), "`command` would replace handover as the entrypoint");
    assert_eq!(pod.args[0], "serve");
    assert_eq!(worker(&pod.args), worker(&img.cmd), "the worker is the one the image installs");
    assert!(
        !pod.args.iter().any(|a| a == "--proxy-protocol"),
        "--proxy-protocol is an option to turn on with the balancer's, commented out by default"
    );

    // Ports: the listener and the metrics port are the container's named ports, which the image
    // EXPOSEs.
    let (listen, metrics) =
        (port_of(flag(&pod.args, "--listen")), port_of(flag(&pod.args, "--metrics")));
    assert_eq!(pod.ports.get("http"), Some(&i64::from(listen)), "{:?}", pod.ports);
    assert_eq!(pod.ports.get("metrics"), Some(&i64::from(metrics)), "{:?}", pod.ports);
    assert_eq!(img.expose, BTreeSet::from([listen, metrics]), "the image EXPOSEs the pod's ports");

    // Readiness: GET /ready on the metrics port.
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/ready"));
    let probe_port = match &probe["port"] {
        Yaml::String(name) => {
            *pod.ports.get(name).unwrap_or_else(|| panic!("no port named {name}"))
        }
        Yaml::Integer(n) => *n,
        other => panic!("probe port {other:?}"),
    };
    assert_eq!(probe_port, i64::from(metrics), "the probe asks the --metrics port");

    // Stopping: SIGTERM (the image's STOPSIGNAL; no other set here), and the grace period
    // outlasts the preStop sleep plus the drain.
    assert_eq!(img.stopsignal, "SIGTERM");
    let stop = &c["lifecycle"]["stopSignal"];
    assert!(stop.is_badvalue() || stop.as_str() == Some("SIGTERM"), "stopSignal {stop:?}");
    let grace =
        spec["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64().unwrap_or(0);
    let drain = seconds(flag(&pod.args, "--drain-timeout"));
    assert!(
        grace as f64 > pre_stop as f64 + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} s + --drain-timeout {drain} s: \
         the kubelet would SIGKILL a draining supervisor"
    );

    // The user is the image's.
    let uid: i64 = img.user.split(':').next().unwrap().parse().unwrap();
    assert_eq!(spec["securityContext"]["runAsUser"].as_i64(), Some(uid));
    assert_eq!(spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // The Deployment selects its pods, the Service selects them too and targets the listener.
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&svc["spec"]["selector"], labels);
    let target = &svc["spec"]["ports"][0]["targetPort"];
    let target = match target {
        Yaml::String(name) => {
            *pod.ports.get(name).unwrap_or_else(|| panic!("no port named {name}"))
        }
        Yaml::Integer(n) => *n,
        other => panic!("targetPort {other:?}"),
    };
    assert_eq!(target, i64::from(listen), "the Service sends to the listener");

    // And the binary takes these args: it serves, is ready, drains on SIGTERM.
    serve_for_real("k8s-args", &pod.args, worker(&img.cmd), |http| {
        let r = get(http, "/").unwrap();
        assert!(r.contains("hello from the rust"), "{r}");
    });
}

#[test]
fn the_kubernetes_proxy_protocol_option_is_taken() {
    let img = image();
    let dep = with_proxy_protocol(&read("contrib/kubernetes/deployment.yaml"));
    let dep = YamlLoader::load_from_str(&dep).unwrap().remove(0);
    let pod = pod(&dep);
    assert_eq!(flag(&pod.args, "--proxy-protocol"), "v2");
    serve_for_real("k8s-proxy", &pod.args, worker(&img.cmd), |http| {
        // With a PROXY v2 header the client is served; without one it is refused (closed).
        let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend([0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 address bytes
        header.extend([192, 0, 2, 7, 127, 0, 0, 1, 0xd4, 0x31, 0x1f, 0x90]); // 192.0.2.7:54321
        s.write_all(&header).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert!(got.contains("hello from the rust"), "with a header: {got}");
        let without = get(http, "/").unwrap_or_default();
        assert!(!without.contains("hello"), "without a header: {without}");
    });
}
