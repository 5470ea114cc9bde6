//! `serve`: binds everything, runs one engine per program, and turns signals and control
//! requests into engine requests.
//!
//! Runs on a single-threaded tokio runtime: workers are spawned from the main thread, which
//! lives as long as the process (Linux `PR_SET_PDEATHSIG` fires when the *thread* that spawned
//! a child exits), and all state is owned by one task per program, with no locks.

use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::cli::Mode;
use crate::config::Config;
use crate::control::{self, Command};
use crate::engine::{Outcome, Request};
use crate::exit_codes::ExitCode;
use crate::listener::{self, Listener};
use crate::status::{Status, Totals};
use crate::sys::{self, Signal};

pub(crate) fn serve(config: Config) -> Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, supervise(config))
}

async fn supervise(config: Config) -> Result<Outcome> {
    let started = Instant::now();
    let mut bound: Vec<Option<listener::Bound>> =
        listener::bind_all(&config.listeners)?.into_iter().map(Some).collect();
    let control = control::bind(&config.control)?;
    let mut signals = sys::Signals::new().context("cannot install signal handlers")?;
    let env = Rc::new(config.env.clone());

    let mut engines = JoinSet::new();
    let mut senders = Vec::new();
    for prog in &config.programs {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let mine: Vec<listener::Bound> = prog
            .listeners
            .iter()
            .map(|&i| bound[i].take().expect("one program per listener"))
            .collect();
        for b in &mine {
            info!(program = %prog.name, mode = ?prog.mode, workers = prog.workers, "listening on {} ({})", b.local, b.name);
        }
        let (prog, env) = (prog.clone(), Rc::clone(&env));
        match prog.mode {
            Mode::Prefork | Mode::Spawn => {
                let listeners = mine
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| Listener::new(i as u16, b))
                    .collect::<std::io::Result<Vec<_>>>()
                    .context("cannot register the listeners")?;
                if prog.mode == Mode::Prefork {
                    engines.spawn_local(crate::prefork::run(prog, env, listeners, rx));
                } else {
                    engines.spawn_local(crate::spawn::run(prog, env, listeners, rx));
                }
            }
            Mode::Shared => {
                engines.spawn_local(crate::shared::run(prog, env, mine, rx));
            }
        }
    }
    let senders = Rc::new(senders);
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Command>();
    let state = Rc::new(std::cell::Cell::new("running"));

    let mut code = ExitCode::Success;
    let mut message = None;
    let mut draining = false;
    let broadcast = |req: fn() -> Request| {
        for s in senders.iter() {
            let _ = s.send(req());
        }
    };
    loop {
        tokio::select! {
            sig = signals.recv() => match sig {
                Signal::Reload => {
                    info!("SIGHUP: reloading workers");
                    broadcast(|| Request::Reload);
                }
                Signal::Terminate | Signal::Interrupt if draining => {
                    warn!("second {sig:?} while draining: killing the workers");
                    broadcast(|| Request::Kill);
                    while engines.join_next().await.is_some() {}
                    return Ok(Outcome { code: ExitCode::KilledBySignal(sig.number()), message: None });
                }
                Signal::Terminate | Signal::Interrupt => {
                    info!("{sig:?}: draining (again to kill the workers now)");
                    draining = true;
                    state.set("draining");
                    broadcast(|| Request::Drain);
                }
            },
            Some(cmd) = ctl_rx.recv() => match cmd {
                Command::Reload => broadcast(|| Request::Reload),
                Command::Stop if !draining => {
                    draining = true;
                    state.set("draining");
                    broadcast(|| Request::Drain);
                }
                _ => {}
            },
            conn = control.accept() => match conn {
                Ok(ch) => {
                    tokio::task::spawn_local(answer(ch, Rc::clone(&senders), ctl_tx.clone(), started, Rc::clone(&state)));
                }
                Err(e) => warn!("control socket: {e}"),
            },
            done = engines.join_next() => match done {
                None => break,
                Some(Ok(outcome)) => {
                    if outcome.code != ExitCode::Success && !draining {
                        // One program failed for good: stop the others too.
                        draining = true;
                        state.set("draining");
                        broadcast(|| Request::Drain);
                    }
                    code = code.or(outcome.code);
                    if message.is_none() {
                        message = outcome.message;
                    }
                }
                Some(Err(e)) => {
                    code = code.or(ExitCode::Failure);
                    message.get_or_insert_with(|| format!("internal error: {e}"));
                    draining = true;
                    broadcast(|| Request::Drain);
                }
            },
        }
    }
    drop(control);
    Ok(Outcome { code, message })
}

/// Serves one control connection.
async fn answer(
    ch: handover::tokio::Channel,
    engines: Rc<Vec<mpsc::UnboundedSender<Request>>>,
    ctl: mpsc::UnboundedSender<Command>,
    started: Instant,
    state: Rc<std::cell::Cell<&'static str>>,
) {
    let Ok(Ok(msg)) = tokio::time::timeout(std::time::Duration::from_secs(5), ch.recv()).await
    else {
        return;
    };
    let reply = match Command::parse(&msg.bytes) {
        Some(Command::Status) => {
            let mut status = Status {
                pid: std::process::id(),
                uptime_ms: started.elapsed().as_millis() as u64,
                state: state.get().to_owned(),
                ..Status::default()
            };
            let mut totals = Totals::default();
            for e in engines.iter() {
                let (tx, rx) = oneshot::channel();
                if e.send(Request::Status(tx)).is_err() {
                    continue;
                }
                if let Ok((p, l)) = rx.await {
                    totals.add(&p.totals);
                    status.programs.push(p);
                    status.listeners.extend(l);
                }
            }
            status.totals = totals;
            serde_json::to_vec(&status).unwrap_or_default()
        }
        Some(cmd) => {
            let _ = ctl.send(cmd);
            b"ok".to_vec()
        }
        None => b"unknown request (expected status, reload or stop)".to_vec(),
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ch.send(&reply, &[])).await;
}
