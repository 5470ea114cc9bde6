//! The validated, resolved configuration: what `serve` runs, from flags or a TOML file.
//!
//! Everything that can be checked before a socket is bound or a child started is checked
//! here, so bad input fails with one clear line and exit code 2.
//!
//! ```toml
//! control = "/run/user/1000/handover.sock"   # optional
//! drain_timeout = "30s"                       # optional, as are the other durations
//! ready_timeout = "30s"                       # upgrade: how long the new generation may take
//! pid_file = "/run/handover.pid"              # optional
//! metrics = "127.0.0.1:9100"                  # optional Prometheus endpoint
//! log_format = "json"                         # optional: text (default) or json
//! log_file = "/var/log/handover.log"           # optional: as --log-file
//!
//! [[listener]]
//! name = "http"
//! address = "tcp://127.0.0.1:8080"
//! policy = "least-connections"                # prefork only
//!
//! [[program]]
//! name = "web"
//! command = ["./worker", "--flag"]
//! mode = "prefork"
//! workers = 4
//! listeners = ["http"]
//! env = { GREETING = "hello" }
//! # compat = ["einhorn", "server-starter"]  # shared mode only
//! max_requests = 1000                         # optional controls, as the serve flags
//! max_requests_jitter = 100
//! max_memory = "512M"
//! memory_check_interval = "1s"
//! connection_timeout = "30s"
//! max_starting = 1
//! worker_output = "prefix"                    # or "inherit"
//! ```
//!
//! The controls and timeouts given as flags with `--config` are defaults for every program
//! of the file; a program's own keys win.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::cli::ServeArgs;
use crate::context::{ContextSpec, ExecContext, SocketPerms};
use crate::model::{Compat, LogFormat, Mode, Policy, ProxyProtocol, SpawnSocket, WorkerOutput};

/// The process environment, read once at start. Children's environments are built from this
/// snapshot; the process environment itself is never changed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    pub(crate) vars: Vec<(OsString, OsString)>,
}

impl Env {
    pub(crate) fn capture() -> Env {
        Env { vars: std::env::vars_os().collect() }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&OsStr> {
        self.vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_os_str())
    }
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenAddr {
    pub(crate) fn parse(s: &str) -> Result<ListenAddr> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let addr = rest
                .to_socket_addrs()
                .map_err(|e| anyhow!("bad listen address {s:?}: {e} (expected tcp://HOST:PORT)"))?
                .next()
                .ok_or_else(|| anyhow!("bad listen address {s:?}: the host has no address"))?;
            Ok(ListenAddr::Tcp(addr))
        } else if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                bail!("bad listen address {s:?}: no path after unix:");
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else {
            bail!("bad listen address {s:?}: expected tcp://HOST:PORT or unix:/PATH")
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ListenerConfig {
    pub(crate) name: String,
    pub(crate) addr: ListenAddr,
    pub(crate) policy: Policy,
    pub(crate) backlog: i32,
    /// Its connections start with a PROXY header (see `proxy`).
    pub(crate) proxy: Option<ProxyProtocol>,
    /// `unix:` listeners: the socket file's mode, owner and group.
    pub(crate) perms: SocketPerms,
}

#[derive(Debug, Clone)]
pub(crate) struct ProgramConfig {
    pub(crate) name: String,
    /// The program, resolved to a path that exists and is executable.
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) mode: Mode,
    pub(crate) workers: usize,
    /// Indices into [`Config::listeners`].
    pub(crate) listeners: Vec<usize>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) socket: SpawnSocket,
    pub(crate) timeouts: Timeouts,
    /// shared mode: extra variables for programs written for other supervisors.
    pub(crate) compat: Vec<Compat>,
    pub(crate) controls: Controls,
    /// User, group, directory and umask of its children.
    pub(crate) context: ExecContext,
    /// Files its children's prefixed output goes to instead of the supervisor's streams.
    pub(crate) stdout_file: Option<PathBuf>,
    pub(crate) stderr_file: Option<PathBuf>,
}

/// The day-to-day controls of a program: recycling, deadlines, staggered starts, output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Controls {
    /// prefork: recycle a worker after this many connections, plus its share of the jitter.
    pub(crate) max_requests: Option<u64>,
    pub(crate) max_requests_jitter: u64,
    /// prefork, shared: recycle a worker whose resident memory passes this many bytes, read
    /// every `memory_check_interval`.
    pub(crate) max_memory: Option<u64>,
    pub(crate) memory_check_interval: Duration,
    /// prefork, spawn: reset a connection a worker has held for longer.
    pub(crate) connection_timeout: Option<Duration>,
    /// prefork, shared: at most this many workers starting at once (0: no limit).
    pub(crate) max_starting: usize,
    pub(crate) worker_output: WorkerOutput,
}

impl Default for Controls {
    fn default() -> Controls {
        Controls {
            max_requests: None,
            max_requests_jitter: 0,
            max_memory: None,
            memory_check_interval: Duration::from_secs(1),
            connection_timeout: None,
            max_starting: 0,
            worker_output: WorkerOutput::Prefix,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) drain: Duration,
    pub(crate) ack: Duration,
    pub(crate) start: Duration,
    pub(crate) min_uptime: Duration,
    pub(crate) crash_limit: u32,
    /// prefork: how long a PING may go unanswered (zero: no heartbeats).
    pub(crate) heartbeat: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            drain: Duration::from_secs(30),
            ack: Duration::from_secs(5),
            start: Duration::from_secs(10),
            min_uptime: Duration::from_secs(1),
            crash_limit: 5,
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// What `serve` runs.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) listeners: Vec<ListenerConfig>,
    pub(crate) programs: Vec<ProgramConfig>,
    pub(crate) control: PathBuf,
    pub(crate) env: Env,
    /// How long a new generation may take to become ready in an upgrade.
    pub(crate) ready_timeout: Duration,
    pub(crate) pid_file: Option<PathBuf>,
    /// Where to serve Prometheus metrics.
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) log_format: LogFormat,
    /// `--log-file`: the log and the workers' prefixed output go there (reopened on SIGUSR1).
    pub(crate) log_file: Option<PathBuf>,
    /// Bind at start, but listen only once every program has a ready worker.
    pub(crate) listen_when_ready: bool,
}

/// The TOML file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    control: Option<PathBuf>,
    drain_timeout: Option<String>,
    ready_timeout: Option<String>,
    pid_file: Option<PathBuf>,
    metrics: Option<String>,
    log_format: Option<LogFormat>,
    log_file: Option<PathBuf>,
    #[serde(default)]
    listener: Vec<FileListener>,
    #[serde(default)]
    program: Vec<FileProgram>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    name: String,
    address: String,
    policy: Option<Policy>,
    backlog: Option<i32>,
    proxy_protocol: Option<ProxyProtocol>,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProgram {
    name: Option<String>,
    command: Vec<String>,
    mode: Option<Mode>,
    workers: Option<usize>,
    listeners: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    socket: Option<SpawnSocket>,
    ack_timeout: Option<String>,
    start_timeout: Option<String>,
    min_uptime: Option<String>,
    heartbeat_timeout: Option<String>,
    crash_limit: Option<u32>,
    #[serde(default)]
    compat: Vec<Compat>,
    max_requests: Option<u64>,
    max_requests_jitter: Option<u64>,
    max_memory: Option<FileSize>,
    memory_check_interval: Option<String>,
    connection_timeout: Option<String>,
    max_starting: Option<usize>,
    worker_output: Option<WorkerOutput>,
    user: Option<String>,
    group: Option<String>,
    chdir: Option<PathBuf>,
    umask: Option<String>,
    env_file: Option<PathBuf>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
}

/// A size in the file: bytes, or a string with a unit (`"512M"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileSize {
    Bytes(u64),
    Text(String),
}

const DEFAULT_WORKERS: usize = 4;
const DEFAULT_BACKLOG: i32 = 1024;
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

fn parse_metrics(s: &str) -> Result<SocketAddr> {
    let s = s.strip_prefix("http://").unwrap_or(s);
    s.to_socket_addrs()
        .map_err(|e| anyhow!("bad metrics address {s:?}: {e} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow!("bad metrics address {s:?}: the host has no address"))
}

impl Config {
    /// Builds and validates the configuration for `serve`.
    pub(crate) fn from_args(args: ServeArgs, env: Env) -> Result<Config> {
        let mut base = Timeouts::default();
        if let Some(d) = args.drain_timeout {
            base.drain = d;
        }
        if let Some(d) = args.ack_timeout {
            base.ack = d;
        }
        if let Some(d) = args.start_timeout {
            base.start = d;
        }
        if let Some(d) = args.min_uptime {
            base.min_uptime = d;
        }
        if let Some(d) = args.heartbeat_timeout {
            base.heartbeat = d;
        }
        if let Some(n) = args.crash_limit {
            base.crash_limit = n;
        }
        let mut controls = Controls::default();
        if args.max_requests.is_some() {
            controls.max_requests = args.max_requests;
        }
        if let Some(j) = args.max_requests_jitter {
            controls.max_requests_jitter = j;
        }
        if args.max_memory.is_some() {
            controls.max_memory = args.max_memory;
        }
        if let Some(d) = args.memory_check_interval {
            controls.memory_check_interval = d;
        }
        if args.connection_timeout.is_some() {
            controls.connection_timeout = args.connection_timeout;
        }
        if let Some(n) = args.max_starting {
            controls.max_starting = n;
        }
        if let Some(o) = args.worker_output {
            controls.worker_output = o;
        }
        let control = match args.control.clone() {
            Some(p) => p,
            None => default_control_path(&env),
        };
        let config = match &args.config {
            Some(path) => {
                if !args.listen.is_empty()
                    || !args.command.is_empty()
                    || args.workers.is_some()
                    || args.mode.is_some()
                    || args.policy.is_some()
                    || args.socket.is_some()
                    || !args.compat.is_empty()
                {
                    bail!(
                        "--config replaces --listen, --workers, --mode, --policy, --socket and \
                         the command; give either the file or the flags"
                    );
                }
                from_file(path, &args, base, controls, control, env)?
            }
            None => from_flags(&args, base, controls, control, env)?,
        };
        let mut config = config;
        if let Some(d) = args.ready_timeout {
            config.ready_timeout = d;
        }
        if let Some(p) = args.pid_file {
            config.pid_file = Some(p);
        }
        if let Some(m) = &args.metrics {
            config.metrics = Some(parse_metrics(m)?);
        }
        if let Some(f) = args.log_format {
            config.log_format = f;
        }
        if let Some(p) = args.log_file {
            config.log_file = Some(p);
        }
        config.listen_when_ready = args.listen_when_ready;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.listeners.is_empty() {
            bail!("no listener: give --listen tcp://HOST:PORT (or unix:/PATH)");
        }
        if self.programs.is_empty() {
            bail!("no program: give the worker command after `--`");
        }
        let mut seen = std::collections::HashSet::new();
        for l in &self.listeners {
            if l.name.is_empty() || l.name.len() > 255 || l.name.contains([':', '\0']) {
                bail!("bad listener name {:?}: 1-255 bytes, no ':'", l.name);
            }
            if !seen.insert(l.name.as_str()) {
                bail!("two listeners are named {:?}", l.name);
            }
            if l.backlog < 1 {
                bail!("listener {:?}: backlog must be at least 1", l.name);
            }
            crate::sys::check_listen_addr(&l.addr)
                .map_err(|why| anyhow!("listener {:?}: {why}", l.name))?;
        }
        let mut owner = vec![None; self.listeners.len()];
        for p in &self.programs {
            if p.workers == 0 {
                bail!("program {:?}: --workers must be at least 1", p.name);
            }
            if p.listeners.is_empty() {
                bail!("program {:?} has no listener", p.name);
            }
            for &i in &p.listeners {
                if let Some(other) = owner[i].replace(&p.name) {
                    bail!(
                        "listener {:?} is used by both {other:?} and {:?}",
                        self.listeners[i].name,
                        p.name
                    );
                }
            }
            if p.listeners.len() > u16::MAX as usize {
                bail!("program {:?}: too many listeners", p.name);
            }
            p.controls.validate(&p.name, p.mode)?;
            if (p.stdout_file.is_some() || p.stderr_file.is_some())
                && p.controls.worker_output != WorkerOutput::Prefix
            {
                bail!(
                    "program {:?}: stdout and stderr files take the prefixed output, which \
                     worker_output = \"inherit\" turns off",
                    p.name
                );
            }
            if self.listen_when_ready && p.mode == Mode::Shared {
                bail!(
                    "program {:?}: --listen-when-ready is not for shared mode, whose workers \
                     accept on the listening socket themselves (use prefork or spawn)",
                    p.name
                );
            }
            if !p.compat.is_empty() && p.mode != Mode::Shared {
                bail!(
                    "program {:?}: --compat describes listening sockets, which only shared mode \
                     passes to workers",
                    p.name
                );
            }
        }
        if let Some(i) = owner.iter().position(Option::is_none) {
            bail!("listener {:?} is not used by any program", self.listeners[i].name);
        }
        Ok(())
    }
}

/// Where the control socket is when `--control` is not given (see `sys`).
pub(crate) fn default_control_path(env: &Env) -> PathBuf {
    default_control_paths(env).swap_remove(0)
}

/// Where clients look for the control socket when `--control` is not given: the default
/// first, then the fallback of a supervisor started without `XDG_RUNTIME_DIR` (Unix) or
/// `LOCALAPPDATA` (Windows).
pub(crate) fn default_control_paths(env: &Env) -> Vec<PathBuf> {
    crate::sys::default_control_paths(env)
}

fn parse_listen_flag(s: &str, i: usize) -> Result<(String, ListenAddr)> {
    // NAME=ADDR, where NAME has no ':' or '/' (so a bare address is never mistaken for one).
    if let Some((name, addr)) = s.split_once('=') {
        if !name.contains([':', '/']) {
            return Ok((name.to_owned(), ListenAddr::parse(addr)?));
        }
    }
    Ok((format!("listen{i}"), ListenAddr::parse(s)?))
}

impl Controls {
    /// Refuses controls the program's mode cannot honour, rather than ignoring them.
    fn validate(&self, program: &str, mode: Mode) -> Result<()> {
        let refuse = |what: &str, why: &str| -> Result<()> {
            bail!("program {program:?}: {what} does not apply in {} mode: {why}", mode.name())
        };
        if self.max_requests == Some(0) {
            bail!("program {program:?}: --max-requests must be at least 1");
        }
        if self.max_requests_jitter > 0 && self.max_requests.is_none() {
            bail!("program {program:?}: --max-requests-jitter needs --max-requests");
        }
        if self.connection_timeout.is_some_and(|d| d.is_zero()) {
            bail!("program {program:?}: --connection-timeout must be more than 0");
        }
        if self.max_memory.is_some() {
            if let Err(e) = crate::sys::resident_memory(std::process::id()) {
                bail!("program {program:?}: --max-memory needs processes' resident memory, which this build cannot read ({e})");
            }
        }
        if self.memory_check_interval < Duration::from_millis(10) {
            bail!("program {program:?}: --memory-check-interval must be at least 10ms");
        }
        match mode {
            Mode::Prefork => Ok(()),
            Mode::Shared if self.max_requests.is_some() => refuse(
                "--max-requests",
                "its workers accept connections themselves, so the supervisor cannot count them",
            ),
            Mode::Shared if self.connection_timeout.is_some() => refuse(
                "--connection-timeout",
                "its workers accept connections themselves, so the supervisor never holds them",
            ),
            Mode::Shared => Ok(()),
            Mode::Spawn if self.max_requests.is_some() => {
                refuse("--max-requests", "every connection gets a process of its own")
            }
            Mode::Spawn if self.max_memory.is_some() => refuse(
                "--max-memory",
                "a per-connection child is not replaced (limit it with ulimit -v or a cgroup)",
            ),
            Mode::Spawn if self.max_starting > 0 => {
                refuse("--max-starting", "children start one per connection, at most --workers")
            }
            Mode::Spawn => Ok(()),
        }
    }
}

/// Settings given explicitly for one program (as flags, or keys of its `[[program]]` and its
/// listeners) that only one mode uses.
#[derive(Debug, Default, Clone, Copy)]
struct ModeOnly {
    policy: bool,
    proxy: bool,
    socket: bool,
    ack_timeout: bool,
    start_timeout: bool,
    heartbeat_timeout: bool,
}

impl ModeOnly {
    /// Refuses a setting the program's mode would ignore, as [`Controls::validate`] does for the
    /// controls: `--socket fd3` in prefork mode does nothing, and saying so beats ignoring it.
    fn validate(self, program: &str, mode: Mode) -> Result<()> {
        let refuse = |what: &str, why: &str| -> Result<()> {
            bail!("program {program:?}: {what} does not apply in {} mode: {why}", mode.name())
        };
        let protocol = "only prefork workers speak the worker protocol (hello, ACK, PING)";
        match mode {
            Mode::Prefork if self.socket => refuse(
                "--socket",
                "connections reach prefork workers over their control channel (spawn mode only)",
            ),
            Mode::Shared if self.socket => refuse(
                "--socket",
                "its workers accept connections themselves, from the listening sockets they are \
                 passed (spawn mode only)",
            ),
            Mode::Shared if self.policy => refuse(
                "--policy",
                "its workers accept connections themselves, so the supervisor picks no worker",
            ),
            Mode::Spawn if self.policy => {
                refuse("--policy", "every connection gets a process of its own")
            }
            Mode::Shared if self.proxy => refuse(
                "--proxy-protocol",
                "its workers accept connections themselves, so the supervisor never reads a \
                 header (a worker must read the PROXY header itself)",
            ),
            Mode::Shared | Mode::Spawn if self.ack_timeout => refuse("--ack-timeout", protocol),
            Mode::Shared | Mode::Spawn if self.start_timeout => refuse("--start-timeout", protocol),
            Mode::Shared | Mode::Spawn if self.heartbeat_timeout => {
                refuse("--heartbeat-timeout", protocol)
            }
            _ => Ok(()),
        }
    }
}

/// The PROXY protocol is read on TCP listeners only.
fn check_proxy(name: &str, addr: &ListenAddr, proxy: Option<ProxyProtocol>) -> Result<()> {
    if proxy.is_some() && matches!(addr, ListenAddr::Unix(_)) {
        bail!(
            "listener {name:?}: the PROXY protocol is read on TCP listeners only ({addr} is a \
             Unix socket, whose peers are local)"
        );
    }
    Ok(())
}

fn from_flags(
    args: &ServeArgs,
    timeouts: Timeouts,
    controls: Controls,
    control: PathBuf,
    env: Env,
) -> Result<Config> {
    let mut listeners = Vec::new();
    for (i, s) in args.listen.iter().enumerate() {
        let (name, addr) = parse_listen_flag(s, i)?;
        check_proxy(&name, &addr, args.proxy_protocol)?;
        listeners.push(ListenerConfig {
            name,
            addr,
            policy: args.policy.unwrap_or(Policy::RoundRobin),
            backlog: args.backlog.unwrap_or(DEFAULT_BACKLOG),
            proxy: args.proxy_protocol,
            perms: SocketPerms::default(),
        });
    }
    let mut programs = Vec::new();
    if let Some((cmd, rest)) = args.command.split_first() {
        let given = ModeOnly {
            policy: args.policy.is_some(),
            proxy: args.proxy_protocol.is_some(),
            socket: args.socket.is_some(),
            ack_timeout: args.ack_timeout.is_some(),
            start_timeout: args.start_timeout.is_some(),
            heartbeat_timeout: args.heartbeat_timeout.is_some(),
        };
        given.validate("main", args.mode.unwrap_or(Mode::Prefork))?;
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let (context, mut prog_env) = flag_context(args).resolve(&cwd, "the program")?;
        prog_env.extend(flag_env(args));
        programs.push(ProgramConfig {
            name: "main".to_owned(),
            program: resolve_program(cmd, &env)?,
            args: rest.to_vec(),
            mode: args.mode.unwrap_or(Mode::Prefork),
            workers: args.workers.unwrap_or(DEFAULT_WORKERS),
            listeners: (0..listeners.len()).collect(),
            env: prog_env,
            socket: args.socket.unwrap_or(SpawnSocket::Stdio),
            timeouts,
            compat: args.compat.clone(),
            controls,
            context,
            stdout_file: None,
            stderr_file: None,
        });
    }
    Ok(Config {
        listeners,
        programs,
        control,
        env,
        ready_timeout: DEFAULT_READY_TIMEOUT,
        pid_file: None,
        metrics: None,
        log_format: LogFormat::Text,
        log_file: None,
        listen_when_ready: false,
    })
}

fn from_file(
    path: &Path,
    args: &ServeArgs,
    base: Timeouts,
    base_controls: Controls,
    control: PathBuf,
    env: Env,
) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        anyhow!("{}: {}", path.display(), e.to_string().lines().collect::<Vec<_>>().join(" "))
    })?;
    let dur = |s: &Option<String>, what: &str, default: Duration| -> Result<Duration> {
        match s {
            None => Ok(default),
            Some(s) => crate::cli::parse_duration(s)
                .map_err(|e| anyhow!("{}: {what}: {e}", path.display())),
        }
    };
    let mut timeouts = base;
    if args.drain_timeout.is_none() {
        timeouts.drain = dur(&file.drain_timeout, "drain_timeout", base.drain)?;
    }
    let control = if args.control.is_some() { control } else { file.control.unwrap_or(control) };
    let mut listeners = Vec::new();
    for l in &file.listener {
        let addr =
            ListenAddr::parse(&l.address).with_context(|| format!("listener {:?}", l.name))?;
        let proxy = l.proxy_protocol.or(args.proxy_protocol);
        check_proxy(&l.name, &addr, proxy)?;
        let what = format!("listener {:?}", l.name);
        let perms =
            SocketPerms::resolve(l.mode.as_deref(), l.owner.as_deref(), l.group.as_deref(), &what)?;
        if !perms.is_empty() && !matches!(addr, ListenAddr::Unix(_)) {
            bail!("{what}: mode, owner and group apply to unix: listeners only");
        }
        listeners.push(ListenerConfig {
            name: l.name.clone(),
            addr,
            policy: l.policy.unwrap_or(Policy::RoundRobin),
            backlog: l.backlog.or(args.backlog).unwrap_or(DEFAULT_BACKLOG),
            proxy,
            perms,
        });
    }
    let mut programs = Vec::new();
    for (n, p) in file.program.iter().enumerate() {
        let name = p.name.clone().unwrap_or_else(|| format!("program{n}"));
        let Some((cmd, rest)) = p.command.split_first() else {
            bail!("program {name:?}: empty command");
        };
        let wanted: Vec<String> = match &p.listeners {
            Some(l) => l.clone(),
            None if file.program.len() == 1 => listeners.iter().map(|l| l.name.clone()).collect(),
            None => bail!("program {name:?}: say which listeners it serves (listeners = [...])"),
        };
        let mut idx = Vec::new();
        for w in &wanted {
            let i = listeners
                .iter()
                .position(|l| &l.name == w)
                .ok_or_else(|| anyhow!("program {name:?}: no listener named {w:?}"))?;
            idx.push(i);
        }
        // The flags given with --config are defaults for every program, whatever its mode; the
        // file's own keys are the program's.
        let given = ModeOnly {
            policy: idx.iter().any(|&i| file.listener[i].policy.is_some()),
            proxy: idx.iter().any(|&i| listeners[i].proxy.is_some()),
            socket: p.socket.is_some(),
            ack_timeout: p.ack_timeout.is_some(),
            start_timeout: p.start_timeout.is_some(),
            heartbeat_timeout: p.heartbeat_timeout.is_some(),
        };
        given.validate(&name, p.mode.unwrap_or(Mode::Prefork))?;
        let mut t = timeouts;
        t.ack = dur(&p.ack_timeout, "ack_timeout", t.ack)?;
        t.start = dur(&p.start_timeout, "start_timeout", t.start)?;
        t.min_uptime = dur(&p.min_uptime, "min_uptime", t.min_uptime)?;
        t.heartbeat = dur(&p.heartbeat_timeout, "heartbeat_timeout", t.heartbeat)?;
        t.crash_limit = p.crash_limit.unwrap_or(t.crash_limit);
        let mut c = base_controls;
        c.max_requests = p.max_requests.or(c.max_requests);
        c.max_requests_jitter = p.max_requests_jitter.unwrap_or(c.max_requests_jitter);
        c.max_memory =
            match &p.max_memory {
                None => c.max_memory,
                Some(FileSize::Bytes(n)) => Some(*n),
                Some(FileSize::Text(s)) => Some(crate::cli::parse_size(s).map_err(|e| {
                    anyhow!("{}: program {name:?}: max_memory: {e}", path.display())
                })?),
            };
        c.memory_check_interval =
            dur(&p.memory_check_interval, "memory_check_interval", c.memory_check_interval)?;
        if p.connection_timeout.is_some() {
            c.connection_timeout =
                Some(dur(&p.connection_timeout, "connection_timeout", Duration::ZERO)?);
        }
        c.max_starting = p.max_starting.unwrap_or(c.max_starting);
        c.worker_output = p.worker_output.unwrap_or(c.worker_output);
        // The program's keys, else the flags; relative paths in the file are the file's.
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::path::absolute(&base).unwrap_or(base);
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let flags = flag_context(args);
        let spec = ContextSpec {
            user: p.user.clone().or(flags.user),
            group: p.group.clone().or(flags.group),
            chdir: p.chdir.as_ref().map(|d| base.join(d)).or(flags.chdir.map(|d| cwd.join(d))),
            umask: p.umask.clone().or(flags.umask),
            env_file: p
                .env_file
                .as_ref()
                .map(|f| base.join(f))
                .or(flags.env_file.map(|f| cwd.join(f))),
        };
        let (context, mut prog_env) = spec.resolve(&base, &format!("program {name:?}"))?;
        prog_env.extend(flag_env(args));
        prog_env.extend(p.env.iter().map(|(k, v)| (k.into(), v.into())));
        programs.push(ProgramConfig {
            program: resolve_program(OsStr::new(cmd), &env)
                .with_context(|| format!("program {name:?}"))?,
            name,
            args: rest.iter().map(OsString::from).collect(),
            mode: p.mode.unwrap_or(Mode::Prefork),
            workers: p.workers.unwrap_or(DEFAULT_WORKERS),
            listeners: idx,
            env: prog_env,
            socket: p.socket.unwrap_or(SpawnSocket::Stdio),
            timeouts: t,
            compat: p.compat.clone(),
            controls: c,
            context,
            stdout_file: p.stdout.as_ref().map(|f| base.join(f)),
            stderr_file: p.stderr.as_ref().map(|f| base.join(f)),
        });
    }
    Ok(Config {
        listeners,
        programs,
        control,
        env,
        ready_timeout: dur(&file.ready_timeout, "ready_timeout", DEFAULT_READY_TIMEOUT)?,
        pid_file: file.pid_file.clone(),
        metrics: file.metrics.as_deref().map(parse_metrics).transpose()?,
        log_format: file.log_format.unwrap_or_default(),
        log_file: file.log_file.clone(),
        listen_when_ready: false,
    })
}

/// The context flags, as given.
fn flag_context(args: &ServeArgs) -> ContextSpec {
    ContextSpec {
        user: args.user.clone(),
        group: args.group.clone(),
        chdir: args.chdir.clone(),
        umask: args.umask.clone(),
        env_file: args.env_file.clone(),
    }
}

/// `--env K=V`, in order.
fn flag_env(args: &ServeArgs) -> Vec<(OsString, OsString)> {
    args.env.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// Finds the program as `execvp` would, in the captured `PATH`, and checks it can run.
fn resolve_program(cmd: &OsStr, env: &Env) -> Result<PathBuf> {
    let shown = Path::new(cmd).display().to_string();
    if cmd.is_empty() {
        bail!("empty worker command");
    }
    let candidates = crate::sys::program_candidates(cmd, env);
    for c in &candidates {
        match crate::sys::check_executable(c) {
            Ok(()) => return Ok(c.clone()),
            Err(e) if candidates.len() == 1 => bail!("worker command {shown}: {e}"),
            Err(_) => continue,
        }
    }
    bail!("worker command {shown:?} not found in PATH")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve(argv: &[&str]) -> Result<Config> {
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| anyhow!("{e}"))?;
        match cli.command {
            crate::cli::Command::Serve(args) => Config::from_args(*args, Env::capture()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_make_one_program() {
        let c = serve(&[
            "handover",
            "serve",
            "-l",
            "http=tcp://127.0.0.1:0",
            "-w",
            "3",
            "--",
            "sh",
            "-c",
            "x",
        ])
        .unwrap();
        assert_eq!(c.listeners[0].name, "http");
        assert_eq!(c.programs[0].workers, 3);
        assert_eq!(c.programs[0].args, ["-c", "x"]);
        assert!(c.programs[0].program.ends_with("sh"));
    }

    #[test]
    fn bad_input_is_one_clear_line() {
        let e = serve(&["handover", "serve", "-l", "tcp://nope", "--", "sh"]).unwrap_err();
        assert!(e.to_string().contains("bad listen address"), "{e}");
        let e = serve(&["handover", "serve", "-l", "udp://1.2.3.4:5", "--", "sh"]).unwrap_err();
        assert!(e.to_string().contains("expected tcp://"), "{e}");
        let e =
            serve(&["handover", "serve", "-l", "tcp://127.0.0.1:0", "--", "no-such-program-xyz"])
                .unwrap_err();
        assert!(e.to_string().contains("not found in PATH"), "{e}");
        let plain = std::env::temp_dir().join(format!("handover-not-exec-{}", std::process::id()));
        std::fs::write(&plain, "data").unwrap();
        let e =
            serve(&["handover", "serve", "-l", "tcp://127.0.0.1:0", "--", plain.to_str().unwrap()])
                .unwrap_err();
        std::fs::remove_file(&plain).unwrap();
        assert!(e.to_string().contains("not executable"), "{e}");
        let e = serve(&["handover", "serve", "-l", "tcp://127.0.0.1:0"]).unwrap_err();
        assert!(e.to_string().contains("no program"), "{e}");
        let e = serve(&["handover", "serve", "-w", "0", "-l", "tcp://127.0.0.1:0", "--", "sh"])
            .unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn controls_from_flags_and_from_the_file_per_program() {
        let c = serve(&[
            "handover",
            "serve",
            "-l",
            "tcp://127.0.0.1:0",
            "--max-requests",
            "50",
            "--max-requests-jitter",
            "20",
            "--max-memory",
            "64M",
            "--connection-timeout",
            "30s",
            "--max-starting",
            "1",
            "--worker-output",
            "inherit",
            "--log-format",
            "json",
            "--",
            "sh",
        ])
        .unwrap();
        let want = Controls {
            max_requests: Some(50),
            max_requests_jitter: 20,
            max_memory: Some(64 << 20),
            memory_check_interval: Duration::from_secs(1),
            connection_timeout: Some(Duration::from_secs(30)),
            max_starting: 1,
            worker_output: WorkerOutput::Inherit,
        };
        assert_eq!(c.programs[0].controls, want);
        assert_eq!(c.log_format, LogFormat::Json);

        let dir = std::env::temp_dir().join(format!("handover-controls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("h.toml");
        std::fs::write(
            &file,
            r#"
            log_format = "json"
            [[listener]]
            name = "a"
            address = "tcp://127.0.0.1:0"
            [[listener]]
            name = "b"
            address = "tcp://127.0.0.1:0"
            [[program]]
            name = "web"
            command = ["sh"]
            listeners = ["a"]
            max_requests = 1000
            max_requests_jitter = 100
            max_memory = "512M"
            memory_check_interval = "250ms"
            worker_output = "inherit"
            [[program]]
            name = "other"
            command = ["sh"]
            mode = "shared"
            listeners = ["b"]
            max_memory = 1048576
            max_starting = 2
            "#,
        )
        .unwrap();
        let path = file.to_str().unwrap();
        // A flag is the default for every program; the file's keys win.
        let c = serve(&["handover", "serve", "--config", path, "--max-starting", "3"]).unwrap();
        let web = c.programs[0].controls;
        assert_eq!((web.max_requests, web.max_requests_jitter), (Some(1000), 100));
        assert_eq!(web.max_memory, Some(512 << 20));
        assert_eq!(web.memory_check_interval, Duration::from_millis(250));
        assert_eq!((web.max_starting, web.worker_output), (3, WorkerOutput::Inherit));
        let other = c.programs[1].controls;
        assert_eq!((other.max_memory, other.max_starting), (Some(1 << 20), 2));
        assert_eq!(c.log_format, LogFormat::Json);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn controls_a_mode_cannot_honour_are_refused() {
        let cases: [(&[&str], &str); 7] = [
            (&["--mode", "shared", "--max-requests", "5"], "cannot count them"),
            (&["--mode", "shared", "--connection-timeout", "1s"], "never holds them"),
            (&["--mode", "spawn", "--max-requests", "5"], "process of its own"),
            (&["--mode", "spawn", "--max-memory", "1G"], "not replaced"),
            (&["--mode", "spawn", "--max-starting", "1"], "one per connection"),
            (&["--max-requests-jitter", "5"], "needs --max-requests"),
            (&["--max-requests", "0"], "at least 1"),
        ];
        for (flags, want) in cases {
            let mut argv = vec!["handover", "serve", "-l", "tcp://127.0.0.1:0"];
            argv.extend(flags);
            argv.extend(["--", "sh"]);
            let e = serve(&argv).unwrap_err().to_string();
            assert!(e.contains(want), "{flags:?}: {e}");
        }
        // What each mode does honour.
        for flags in [
            &["--mode", "shared", "--max-memory", "1G", "--max-starting", "1"][..],
            &["--mode", "spawn", "--connection-timeout", "1s"],
        ] {
            let mut argv = vec!["handover", "serve", "-l", "tcp://127.0.0.1:0"];
            argv.extend(flags);
            argv.extend(["--", "sh"]);
            serve(&argv).unwrap();
        }
    }

    #[test]
    fn settings_only_another_mode_uses_are_refused() {
        let cases: [(&[&str], &str); 9] = [
            (&["--socket", "fd3"], "--socket does not apply in prefork mode"),
            (&["--mode", "shared", "--socket", "fd3"], "--socket does not apply in shared mode"),
            (&["--mode", "shared", "--policy", "least-connections"], "picks no worker"),
            (&["--mode", "spawn", "--policy", "source-hash"], "process of its own"),
            (&["--mode", "shared", "--ack-timeout", "1s"], "--ack-timeout does not apply"),
            (&["--mode", "spawn", "--start-timeout", "1s"], "--start-timeout does not apply"),
            (&["--mode", "shared", "--heartbeat-timeout", "1s"], "--heartbeat-timeout does not"),
            (&["--mode", "spawn", "--heartbeat-timeout", "0s"], "worker protocol"),
            (&["--mode", "prefork", "--socket", "channel"], "spawn mode only"),
        ];
        for (flags, want) in cases {
            let mut argv = vec!["handover", "serve", "-l", "tcp://127.0.0.1:0"];
            argv.extend(flags);
            argv.extend(["--", "sh"]);
            let e = serve(&argv).unwrap_err().to_string();
            assert!(e.contains(want), "{flags:?}: {e}");
        }
        // Each where it applies.
        for flags in [
            &["--policy", "least-connections", "--ack-timeout", "1s", "--start-timeout", "1s"][..],
            &["--heartbeat-timeout", "0s"],
            &["--mode", "spawn", "--socket", "fd3"],
        ] {
            let mut argv = vec!["handover", "serve", "-l", "tcp://127.0.0.1:0"];
            argv.extend(flags);
            argv.extend(["--", "sh"]);
            serve(&argv).unwrap();
        }
        // The same in a file: a listener's policy for a shared program, a prefork socket.
        let dir = std::env::temp_dir().join(format!("handover-mode-only-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("h.toml");
        let listener = "[[listener]]\nname = \"a\"\naddress = \"tcp://127.0.0.1:0\"\n";
        for (extra, program, want) in [
            ("policy = \"source-hash\"\n", "mode = \"shared\"\n", "--policy does not apply"),
            ("", "socket = \"fd3\"\n", "--socket does not apply in prefork"),
            ("", "mode = \"spawn\"\nack_timeout = \"1s\"\n", "--ack-timeout"),
        ] {
            let text = format!("{listener}{extra}[[program]]\ncommand = [\"sh\"]\n{program}");
            std::fs::write(&file, text).unwrap();
            let e = serve(&["handover", "serve", "--config", file.to_str().unwrap()]).unwrap_err();
            assert!(e.to_string().contains(want), "{program:?}: {e}");
        }
        // Flags given with --config are defaults for programs of every mode: not refused.
        std::fs::write(
            &file,
            format!("{listener}[[program]]\ncommand = [\"sh\"]\nmode = \"shared\"\n"),
        )
        .unwrap();
        serve(&["handover", "serve", "--ack-timeout", "1s", "--config", file.to_str().unwrap()])
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_file_with_two_programs() {
        let dir = std::env::temp_dir().join(format!("handover-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("h.toml");
        std::fs::write(
            &file,
            r#"
            drain_timeout = "2s"
            [[listener]]
            name = "a"
            address = "tcp://127.0.0.1:0"
            policy = "source-hash"
            [[listener]]
            name = "b"
            address = "unix:/tmp/x.sock"
            [[program]]
            command = ["sh"]
            listeners = ["a"]
            [[program]]
            name = "other"
            command = ["sh", "-c", "true"]
            mode = "spawn"
            socket = "fd3"
            listeners = ["b"]
            env = { K = "v" }
            connection_timeout = "2s"
            "#,
        )
        .unwrap();
        let c = serve(&["handover", "serve", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.listeners[0].policy, Policy::SourceHash);
        assert_eq!(c.listeners[1].addr, ListenAddr::Unix("/tmp/x.sock".into()));
        assert_eq!(c.programs[1].mode, Mode::Spawn);
        assert_eq!(c.programs[1].socket, SpawnSocket::Fd3);
        assert_eq!(c.programs[1].listeners, [1]);
        assert_eq!(c.programs[0].timeouts.drain, Duration::from_secs(2));
        assert_eq!(c.programs[0].controls, Controls::default(), "defaults users get");
        assert_eq!(c.programs[0].controls.worker_output, WorkerOutput::Prefix);
        assert_eq!(c.programs[1].controls.connection_timeout, Some(Duration::from_secs(2)));
        std::fs::write(
            &file,
            "[[listener]]\nname = \"a\"\naddress = \"tcp://127.0.0.1:0\"\nbogus = 1\n",
        )
        .unwrap();
        let e = serve(&["handover", "serve", "--config", file.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
