//! `handover`: the supervisor binary. See `handover --help`, `docs/protocol.md` (workers),
//! `docs/upgrade.md` (zero-downtime upgrade state machine), `docs/systemd.md` (socket
//! activation, sd_notify, einhorn/Server::Starter variables) and `docs/multi-host.md`.
// Unsafe code is confined to `sys` (the one place that may allow it).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
// The binary reports to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod check;
mod cli;
mod config;
mod context;
mod control;
mod engine;
mod exit_codes;
mod generate;
mod init;
mod listener;
mod logging;
mod metrics;
mod model;
mod output;
mod prefork;
mod proxy;
mod restart;
mod shared;
mod spawn;
mod status;
mod supervisor;
#[allow(unsafe_code)]
mod sys;
mod upgrade;

use anyhow::Context as _;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{Config, Env};
use crate::exit_codes::ExitCode;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code.into(),
        Err((code, err)) => {
            print_error(&err);
            code.into()
        }
    }
}

fn print_error(err: &anyhow::Error) {
    // One line: the error and its causes, outermost first.
    let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    let mut line = String::new();
    for c in chain {
        if !line.contains(&c) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&c);
        }
    }
    logging::last_words(&format!("handover: {line}"));
}

fn run() -> Result<ExitCode, (ExitCode, anyhow::Error)> {
    // The environment is read here, once; children get environments built from this snapshot.
    let env = Env::capture();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { ExitCode::Usage } else { ExitCode::Success };
            let _ = e.print();
            return Ok(code);
        }
    };
    let failure = |e: anyhow::Error| (ExitCode::Failure, e);
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(cli.log.as_deref(), &env, model::LogFormat::Text);
    }
    match cli.command {
        Command::Serve(args) if init::wanted(args.subreaper, &env) => {
            init::run(args.subreaper, &env).map_err(failure)
        }
        Command::Serve(args) => {
            sys::unblock_signals().context("cannot unblock signals").map_err(failure)?;
            sys::close_inherited_on_exec().map_err(failure)?;
            // Sockets and channels this process was started with are taken first, once.
            let startup = upgrade::Startup::capture(&env).map_err(failure)?;
            let log = cli.log.clone();
            let config = match Config::from_args(*args, env.clone()) {
                Ok(c) => c,
                Err(e) => {
                    startup.fail(&format!("{e:#}"));
                    return Err((ExitCode::Usage, e));
                }
            };
            if let Some(path) = &config.log_file {
                if let Err(e) = logging::set_file(path) {
                    let e = anyhow::anyhow!("cannot open the log file {}: {e}", path.display());
                    startup.fail(&format!("{e:#}"));
                    return Err((ExitCode::Failure, e));
                }
            }
            // After the configuration, which may ask for JSON or a log file.
            init_logging(log.as_deref(), &env, config.log_format);
            let outcome = supervisor::serve(config, startup).map_err(failure)?;
            if let Some(msg) = &outcome.message {
                if outcome.code != ExitCode::Success {
                    logging::last_words(&format!("handover: {msg}"));
                }
            }
            Ok(outcome.code)
        }
        Command::Check(args) => match Config::from_args(*args, env.clone()) {
            Ok(config) => {
                print!("{}", check::plan(&config));
                println!("configuration ok");
                Ok(ExitCode::Success)
            }
            Err(e) => Err((ExitCode::Usage, e)),
        },
        Command::Status(args) => {
            let path = control_path(args.control.control, &env);
            if args.watch {
                let every = args.interval.unwrap_or(std::time::Duration::from_secs(1));
                status::watch(&path, args.json, every, args.count).map_err(failure)?;
            } else if args.json {
                let bytes = control::request(&path, control::Command::Status).map_err(failure)?;
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                let status = control::status(&path).map_err(failure)?;
                print!("{}", status::render(&status));
            }
            Ok(ExitCode::Success)
        }
        Command::Reload(args) => {
            let path = control_path(args.control.control, &env);
            if args.no_wait {
                control::request(&path, control::Command::Reload).map_err(failure)?;
                return Ok(ExitCode::Success);
            }
            reply(control::ask(&path, control::Command::ReloadWait).map_err(failure)?)
        }
        Command::Scale(args) => {
            let path = control_path(args.control.control, &env);
            let (program, n) = match &args.args[..] {
                [n] => (None, n),
                [p, n] => (Some(p.clone()), n),
                _ => unreachable!("clap takes one or two values"),
            };
            let how = engine::Scale::parse(n)
                .map_err(|e| (ExitCode::Usage, anyhow::anyhow!("scale: {e}")))?;
            reply(control::ask(&path, control::Command::Scale { program, how }).map_err(failure)?)
        }
        Command::Upgrade(args) => {
            let path = control_path(args.control.control, &env);
            let binary = match args.binary {
                None => None,
                Some(b) => {
                    let b = std::path::absolute(&b)
                        .with_context(|| format!("--binary {}", b.display()))
                        .map_err(failure)?;
                    let b = b.into_os_string().into_string().map_err(|b| {
                        let msg = format!("--binary {}: not UTF-8", b.to_string_lossy());
                        (ExitCode::Usage, anyhow::anyhow!(msg))
                    })?;
                    Some(b)
                }
            };
            reply(control::ask(&path, control::Command::Upgrade { binary }).map_err(failure)?)
        }
        Command::Stop(args) => {
            let path = control_path(args.control.control, &env);
            if args.no_wait {
                control::request(&path, control::Command::Stop).map_err(failure)?;
                return Ok(ExitCode::Success);
            }
            let every = std::time::Duration::from_secs(5);
            let stopped = control::stop_and_wait(&path, every, |so_far| {
                logging::last_words(&format!(
                    "handover: the supervisor is still draining after {}s",
                    so_far.as_secs()
                ));
            })
            .map_err(failure)?;
            if let Some(why) = stopped.message.filter(|_| stopped.code != 0) {
                logging::last_words(&format!(
                    "handover: the supervisor exited {}: {why}",
                    stopped.code
                ));
            }
            Ok(ExitCode::Reported(stopped.code))
        }
        Command::Completions(args) => {
            generate::completions(args.shell, &mut std::io::stdout().lock()).map_err(failure)?;
            Ok(ExitCode::Success)
        }
        Command::Man(args) => {
            generate::man(args.subcommand.as_deref(), &mut std::io::stdout().lock())
                .map_err(failure)?;
            Ok(ExitCode::Success)
        }
    }
}

/// Prints a successful answer; a failed one is the command's error.
fn reply(r: control::Reply) -> Result<ExitCode, (ExitCode, anyhow::Error)> {
    if r.ok {
        println!("{}", r.message);
        Ok(ExitCode::Success)
    } else {
        Err((ExitCode::Failure, anyhow::anyhow!(r.message)))
    }
}

/// The control socket a client command talks to: `--control`, else the first default path
/// that exists (saying so on stderr when it is not the first), else the first.
fn control_path(given: Option<std::path::PathBuf>, env: &Env) -> std::path::PathBuf {
    if let Some(path) = given {
        return path;
    }
    let candidates = config::default_control_paths(env);
    let reached = candidates.iter().position(|p| p.exists());
    match reached {
        Some(0) | None => candidates.into_iter().next().unwrap_or_default(),
        Some(i) => {
            let (first, path) = (&candidates[0], candidates[i].clone());
            logging::last_words(&format!(
                "handover: no control socket at {}; using {} (a supervisor started without \
                 XDG_RUNTIME_DIR, as under systemd-socket-activate, or LOCALAPPDATA binds there)",
                first.display(),
                path.display()
            ));
            path
        }
    }
}

fn init_logging(flag: Option<&str>, env: &Env, format: model::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let spec = flag
        .map(str::to_owned)
        .or_else(|| env.get("RUST_LOG").and_then(|v| v.to_str()).map(str::to_owned))
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        logging::last_words(&format!("handover: bad log filter {spec:?} ({e}); using info"));
        EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    // A closed stderr drops and counts lines, never panics (see `logging`).
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(logging::MakeLogWriter)
        .log_internal_errors(false);
    match format {
        model::LogFormat::Text => {
            let ansi = !logging::to_file() && std::io::stderr().is_terminal();
            fmt.with_ansi(ansi).with_target(false).init()
        }
        model::LogFormat::Json => fmt.json().flatten_event(true).with_target(false).init(),
    }
}
