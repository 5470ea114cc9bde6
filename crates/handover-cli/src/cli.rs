//! The command line, as clap sees it. The doc comments are the `--help` text.
//!
//! This is the raw form; [`crate::config`] turns it (or a TOML file) into a validated
//! [`Config`](crate::config::Config).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::{Compat, LogFormat, Mode, Policy, ProxyProtocol, SpawnSocket, WorkerOutput};

/// Turn any program into a multi-process server: `handover serve --help` explains the modes.
#[derive(Debug, Parser)]
#[command(name = "handover", version = env!("HANDOVER_VERSION"), verbatim_doc_comment, max_term_width = 100)]
pub(crate) struct Cli {
    /// Log filter (e.g. `info`, `debug`, `handover=trace`); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub(crate) log: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a supervisor: bind the listeners and run the workers.
    ///
    /// The supervisor owns the listening sockets and runs worker processes in one of three modes:
    ///
    ///   prefork  The supervisor accepts each connection and hands it to a running worker over the
    ///            worker's control channel; the worker acknowledges it, and a connection whose worker
    ///            dies before acknowledging goes to another worker (none is lost). Workers speak the
    ///            protocol in docs/protocol.md (Rust: the handover-worker crate; Python: only
    ///            socket.recv_fds).
    ///              handover serve --listen tcp://127.0.0.1:8080 --workers 4 -- ./worker
    ///
    ///   spawn    One process per connection, the socket on its stdin/stdout (inetd, systemd
    ///            Accept=yes), as descriptor 3 (--socket fd3), or over an inherited handover
    ///            channel (--socket channel: one CONNECTION, then DRAIN); at most --workers at
    ///            once, further connections wait in the kernel backlog.
    ///              handover serve --mode spawn --listen tcp://127.0.0.1:8080 --workers 16 -- ./serve-one
    ///
    ///   shared   Every worker gets the listening sockets as LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID
    ///            (systemd socket activation) and accepts by itself; any socket-activation-aware
    ///            program runs unchanged.
    ///              handover serve --mode shared --listen tcp://127.0.0.1:8080 --workers 4 -- ./server
    ///
    /// Signals: SIGTERM/SIGINT drain (stop accepting, let workers finish, kill after
    /// --drain-timeout); SIGHUP restarts the workers one at a time; SIGTTIN/SIGTTOU add or remove
    /// one worker (`handover scale` sets any number); SIGUSR2 (or `handover upgrade`) starts a new
    /// generation from the binary on disk, hands it the listening sockets and drains this one
    /// once the new one is ready (docs/upgrade.md); SIGQUIT is a fast shutdown (workers killed,
    /// exit 131); SIGUSR1 reopens the log file; SIGWINCH, SIGALRM and the like are logged and
    /// ignored, SIGPIPE ignored. `handover status` reports (--watch: live).
    ///
    /// Day-to-day controls (the README compares them with gunicorn, uWSGI, Puma and PM2):
    /// --max-requests/--max-requests-jitter and --max-memory recycle workers, --connection-timeout
    /// resets connections held too long, --max-starting staggers starts, and each worker's
    /// output is prefixed with PROGRAM.SLOT[PID] (--worker-output, --log-format json). Each is
    /// also a key of a [[program]] in the --config file.
    ///
    /// Started by systemd socket activation (LISTEN_FDS), the listeners are taken from systemd
    /// by name (FileDescriptorName= matching the --listen name) instead of being bound, and
    /// READY=1 / RELOADING=1 / STOPPING=1 / MAINPID= are reported (docs/systemd.md).
    #[command(verbatim_doc_comment)]
    Serve(Box<ServeArgs>),
    /// Check a configuration (the same file or flags as `serve`) without serving: every
    /// command found and executable, every address parseable, every user and group present
    /// and permitted. Prints the plan and exits 0, or says what is wrong and exits 2
    /// (nginx -t).
    Check(Box<ServeArgs>),
    /// Show a running supervisor's workers, listeners and totals (`--watch`: a live view).
    Status(StatusArgs),
    /// Restart a running supervisor's workers one at a time (as SIGHUP does), each replacement
    /// ready before the worker it replaces drains, and wait until all are replaced.
    ///
    /// Exits 0 once every program's workers have been replaced, 1 if the reload was abandoned
    /// (the new workers crash-looped and the program was given up on, or a drain began).
    Reload(ReloadArgs),
    /// Change the number of workers of a running supervisor: `handover scale 6`, `handover
    /// scale web +2`, `handover scale -1` (SIGTTIN and SIGTTOU add and remove one).
    ///
    /// New workers start at once; removed workers (the highest slots) finish what they hold
    /// and exit, they are not killed. spawn mode: changes the most children at once. Lasts
    /// until the supervisor is restarted or upgraded (which re-reads the configuration).
    #[command(verbatim_doc_comment)]
    Scale(ScaleArgs),
    /// Drain a running supervisor (as SIGTERM does) and wait until it has exited.
    ///
    /// Exits with the supervisor's own exit status (0 once it drained cleanly, 4 if the drain
    /// timed out, ...) once its listeners, control socket and pid file are gone, so
    /// `handover stop && handover serve ...` works. Says every 5 s that it is still waiting.
    Stop(StopArgs),
    /// Zero-downtime upgrade (as SIGUSR2 does): start a new generation of the supervisor from
    /// the binary now on disk (the path `handover serve` was invoked as, through any link
    /// swapped since; or --binary) with the configuration re-read, hand it the listening
    /// sockets, and drain the old generation once the new one is ready. Waits for the outcome;
    /// exits non-zero (and the old generation carries on) if the new one fails to become ready.
    Upgrade(UpgradeArgs),
    /// Print a completion script for a shell, generated from these definitions.
    ///
    ///   bash        handover completions bash > ~/.local/share/bash-completion/completions/handover
    ///   zsh         handover completions zsh > ~/.zfunc/_handover   (a directory in $fpath)
    ///   fish        handover completions fish > ~/.config/fish/completions/handover.fish
    ///   powershell  handover completions powershell | Out-String | Invoke-Expression
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),
    /// Print a man page in roff, generated from these definitions: handover(1), or with a
    /// subcommand its own page (`handover man serve`: handover-serve(1)). Read one with
    /// `handover man | man -l -`.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// The subcommand whose page to print (`serve`, `status`, ...); the main page without.
    #[arg(value_name = "SUBCOMMAND", value_parser = subcommand_name)]
    pub(crate) subcommand: Option<String>,
}

/// `handover man`'s argument: one of this command line's subcommands.
fn subcommand_name(s: &str) -> Result<String, String> {
    use clap::CommandFactory;
    let cli = Cli::command();
    if cli.find_subcommand(s).is_some() {
        return Ok(s.to_owned());
    }
    let names: Vec<&str> = cli.get_subcommands().map(clap::Command::get_name).collect();
    Err(format!("not a subcommand (one of: {})", names.join(", ")))
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen: `tcp://HOST:PORT` or `unix:/PATH`, optionally named `NAME=ADDR`
    /// (the name workers see). Repeat for several listeners.
    #[arg(long = "listen", short = 'l', value_name = "[NAME=]ADDR")]
    pub(crate) listen: Vec<String>,

    /// Number of workers (spawn mode: most connections served at once). Default 4. `handover
    /// scale` changes it at run time.
    #[arg(long, short = 'w', value_name = "N")]
    pub(crate) workers: Option<usize>,

    /// How connections reach the program. Default prefork.
    #[arg(long, short = 'm', value_enum)]
    pub(crate) mode: Option<Mode>,

    /// prefork: how a connection picks its worker. Default round-robin.
    #[arg(long, value_enum)]
    pub(crate) policy: Option<Policy>,

    /// Every --listen address's connections start with a PROXY protocol header (behind
    /// HAProxy's send-proxy/send-proxy-v2 or a cloud L4 balancer): the supervisor reads it
    /// before the connection reaches a worker, which then sees the real client's address.
    /// prefork and spawn modes; TCP listeners.
    #[arg(long, value_enum, value_name = "VERSION")]
    pub(crate) proxy_protocol: Option<ProxyProtocol>,

    /// spawn: how the child gets its connection (stdio, fd3, channel). Default stdio.
    #[arg(long, value_enum)]
    pub(crate) socket: Option<SpawnSocket>,

    /// A TOML file with several listeners and programs (docs/config.md lists every key);
    /// replaces --listen/--workers/--mode/--policy/--socket and the command.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// How long workers get to finish after SIGTERM before they are killed. Default 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) drain_timeout: Option<std::time::Duration>,

    /// prefork: a worker that has not acknowledged a connection after this long is killed and
    /// the connection goes to another worker. Default 5s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ack_timeout: Option<std::time::Duration>,

    /// prefork: a worker that has not said hello after this long is killed. Default 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) start_timeout: Option<std::time::Duration>,

    /// prefork: a worker that declared heartbeats in its hello (docs/protocol.md) and has not
    /// answered a PING after this long is taken as hung, killed and replaced, even while it
    /// holds no connection. 0 turns heartbeats off. Default 5s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) heartbeat_timeout: Option<std::time::Duration>,

    /// A worker that dies sooner than this after starting (or before it is ready) counts as a
    /// crash at start: its slot restarts after a backoff (100ms doubling to 5s). Default 1s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) min_uptime: Option<std::time::Duration>,

    /// After this many crashes at start in a row a slot is reported crash-looping (it keeps
    /// restarting with backoff). A program none of whose workers has been ready since start,
    /// reload or upgrade is given up on then instead: the supervisor drains and exits 3.
    /// 0: never give up (slots are reported crash-looping after 5). Default 5.
    #[arg(long, value_name = "N")]
    pub(crate) crash_limit: Option<u32>,

    /// prefork: recycle a worker after it has been handed this many connections: it gets no
    /// more, finishes what it holds and exits, and a new worker takes its slot (gunicorn's
    /// --max-requests, uWSGI's --max-requests, PM2 has none). Default: never.
    #[arg(long, value_name = "N")]
    pub(crate) max_requests: Option<u64>,

    /// prefork, with --max-requests: each worker's limit is --max-requests plus a random
    /// 0..=J, so workers started together are not recycled together. Default 0.
    #[arg(long, value_name = "J")]
    pub(crate) max_requests_jitter: Option<u64>,

    /// prefork, shared: recycle a worker whose resident memory (RSS, read from the OS every
    /// --memory-check-interval) passes SIZE (bytes, or with K, M, G: powers of 1024). Its
    /// replacement starts at once; it goes on serving until the replacement is ready, then
    /// drains. Default: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_memory: Option<u64>,

    /// How often --max-memory reads the workers' resident memory. Default 1s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) memory_check_interval: Option<std::time::Duration>,

    /// prefork, spawn: a connection a worker has held (acknowledged) for longer is reset (the
    /// client gets a connection reset, the worker's next read or write on it fails) and counted
    /// as timed out; a worker that has not reported it finished 5s later is taken as hung,
    /// killed and replaced (uWSGI's harakiri). spawn mode: the child is killed. Default: none.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) connection_timeout: Option<std::time::Duration>,

    /// prefork, shared: start at most N workers at once: at start, when scaling up and when
    /// replacing workers, the next starts once one of those starting is ready (staggered start).
    /// A reload always replaces one worker at a time. Default 0: all at once.
    #[arg(long, value_name = "N")]
    pub(crate) max_starting: Option<usize>,

    /// What becomes of the workers' standard output and error: `prefix` (each line goes to the
    /// supervisor's stdout or stderr prefixed with `PROGRAM.SLOT[PID] | `, or as a JSON object
    /// with --log-format json) or `inherit` (workers write to the supervisor's own stdout and
    /// stderr, unprefixed). spawn mode prefixes standard error only (and standard output with
    /// --socket fd3 or channel), with the program alone. Default prefix.
    #[arg(long, value_enum, value_name = "HOW")]
    pub(crate) worker_output: Option<WorkerOutput>,

    /// The supervisor's log lines (and, with --worker-output prefix, the workers' lines):
    /// `text` or `json` (one object per line). Default text.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,

    /// Write the supervisor's log lines and the workers' prefixed output (--worker-output
    /// prefix) to this file, appending, instead of stderr and stdout. SIGUSR1 reopens it, so
    /// logrotate's `postrotate kill -USR1 $(cat PIDFILE)` works as for nginx and gunicorn.
    #[arg(long, value_name = "PATH")]
    pub(crate) log_file: Option<PathBuf>,

    /// Listen backlog of each socket. Default 1024.
    #[arg(long, value_name = "N")]
    pub(crate) backlog: Option<i32>,

    /// How long a new generation (upgrade) has to get its workers ready before the upgrade is
    /// abandoned and the old generation carries on. Default 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) ready_timeout: Option<std::time::Duration>,

    /// Write the supervisor's pid here; an upgrade replaces it atomically with the new
    /// generation's.
    #[arg(long, value_name = "PATH")]
    pub(crate) pid_file: Option<PathBuf>,

    /// Linux: reap every orphaned process below this one (`PR_SET_CHILD_SUBREAPER`), as PID 1
    /// of a container does by itself. Either way a thin first process starts the supervisor,
    /// passes signals on, reaps, and exits with the status of the last generation, so an
    /// upgrade survives (tini's design; docs/multi-host.md).
    #[arg(long)]
    pub(crate) subreaper: bool,

    /// prefork, spawn: bind at start (so a taken port fails at once) but listen only once
    /// every program has a ready worker: until then connections are refused instead of
    /// queued in the backlog, so a TCP health check fails until the service can answer.
    /// Sockets passed by systemd or an older generation listen already and are unaffected.
    #[arg(long)]
    pub(crate) listen_when_ready: bool,

    /// Run the workers as this user (name or uid; its primary group unless --group), with
    /// supplementary groups dropped. The supervisor must run as root to use it (it binds
    /// first, so ports below 1024 work: gunicorn's --user).
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,

    /// Run the workers as this group (name or gid).
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,

    /// Start the workers in this directory (gunicorn's --chdir).
    #[arg(long, value_name = "DIR")]
    pub(crate) chdir: Option<PathBuf>,

    /// The workers' file mode creation mask, octal (e.g. 027; gunicorn's --umask).
    #[arg(long, value_name = "MASK")]
    pub(crate) umask: Option<String>,

    /// Set a variable in the workers' environment. Repeat for more.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = crate::context::parse_env_flag)]
    pub(crate) env: Vec<(String, String)>,

    /// Read variables for the workers' environment from this file (KEY=VALUE lines, # comments).
    #[arg(long, value_name = "PATH")]
    pub(crate) env_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics: Option<String>,

    /// shared mode: also describe the sockets the way other supervisors do, so programs written
    /// for them run unchanged: `einhorn` (EINHORN_FDS, EINHORN_FD_COUNT, EINHORN_FD_<n>) or
    /// `server-starter` (SERVER_STARTER_PORT). Repeat for both.
    #[arg(long, value_enum, value_name = "KIND")]
    pub(crate) compat: Vec<Compat>,

    /// The control socket `handover status` talks to (logged at start).
    /// Default $XDG_RUNTIME_DIR/handover.sock, else /tmp/handover-UID.sock (Windows:
    /// %LOCALAPPDATA%\handover\handover.ctl, the directory created if missing).
    #[arg(long, value_name = "PATH")]
    pub(crate) control: Option<PathBuf>,

    /// The worker program and its arguments.
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,

    /// Report again every --interval: in place on a terminal (Ctrl-C to quit), one report
    /// after another otherwise.
    #[arg(long)]
    pub(crate) watch: bool,

    /// With --watch: how often. Default 1s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "watch")]
    pub(crate) interval: Option<std::time::Duration>,

    /// With --watch: stop after N reports.
    #[arg(long, value_name = "N", requires = "watch")]
    pub(crate) count: Option<u64>,

    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    /// Start the reload and return at once, without waiting for it to finish.
    #[arg(long)]
    pub(crate) no_wait: bool,

    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpgradeArgs {
    /// Start the new generation from this binary instead (made absolute here; links are not
    /// resolved, so later upgrades start whatever it names then).
    #[arg(long, value_name = "PATH")]
    pub(crate) binary: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StopArgs {
    /// Ask the supervisor to stop and return at once, without waiting for it to exit.
    #[arg(long)]
    pub(crate) no_wait: bool,

    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ScaleArgs {
    /// The program (may be left out when the supervisor runs only one), then the number of
    /// workers: N, +N or -N.
    #[arg(value_name = "[PROGRAM] N", num_args = 1..=2, required = true, allow_negative_numbers = true)]
    pub(crate) args: Vec<String>,

    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// The supervisor's control socket (as given to `serve --control`). Default: the first of
    /// $XDG_RUNTIME_DIR/handover.sock and /tmp/handover-UID.sock that exists.
    #[arg(long, value_name = "PATH")]
    pub(crate) control: Option<PathBuf>,
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (try 500ms, 5s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size: bytes, or with `K`, `M`, `G`, `T` (powers of 1024; `KB`, `KiB`, `MB`, ...
/// mean the same).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (try 512M, 2G)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("unknown unit in {s:?} (use K, M, G or T)")),
    };
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("300M"), Ok(300 << 20));
        assert_eq!(parse_size("300MB"), Ok(300 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999T").is_err());
    }

    #[test]
    fn scale_takes_negative_counts_and_an_optional_program() {
        for (argv, want) in [
            (&["handover", "scale", "-1"][..], &["-1"][..]),
            (&["handover", "scale", "web", "+2"], &["web", "+2"]),
            (&["handover", "scale", "--control", "/x", "6"], &["6"]),
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Scale(a) = cli.command else { panic!("{argv:?}") };
            assert_eq!(a.args, want);
        }
        assert!(Cli::try_parse_from(["handover", "scale"]).is_err());
        assert!(Cli::try_parse_from(["handover", "scale", "a", "b", "c"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
