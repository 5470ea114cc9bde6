//! Zero-downtime upgrade: a new generation of the supervisor takes the listening sockets over a
//! [`handover::Channel`]. The state machine is in `docs/upgrade.md`; in short:
//!
//! ```text
//! old: spawn new (binary on disk, same argv, HANDOVER_UPGRADE=1, a channel) ── HANDOFF + sockets ─▶ new
//! new: binds nothing it was handed, starts its workers, accepts nothing yet ── READY ──────────────▶ old
//! old: commits ─────────────────────────────────────────────────────────────── GO ──────────────────▶ new
//! new: starts accepting, renames its control socket over the old one, writes the pid file ─ TOOK_OVER ▶ old
//! old: stops accepting, drains, exits
//! ```
//!
//! Anything else before TOOK_OVER (the new generation exits, reports a failure, or is not ready
//! within `--ready-timeout`) abandons the upgrade: the new generation gets `SIGTERM` (it
//! accepted nothing, so nothing is lost), then `SIGKILL`, and the old one carries on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use handover::tokio::Channel;
use handover::{AsSocketRef, SocketRef};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Env;
use crate::model::Mode;
use crate::sys::{self, Stop};

/// Set (to `1`) in a new generation's environment.
pub(crate) const ENV_UPGRADE: &str = "HANDOVER_UPGRADE";
/// How long either side waits for a message that should come at once.
const PROMPT: Duration = Duration::from_secs(10);
/// How long an abandoned new generation gets to exit after `SIGTERM`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The first message, old to new; the sockets follow in the same message: the listeners in
/// this order, then the metrics listener if there is one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Handoff {
    /// The new generation's number.
    pub(crate) generation: u64,
    pub(crate) listeners: Vec<HandedListener>,
    /// The metrics listener's address, if one is handed over.
    pub(crate) metrics: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HandedListener {
    pub(crate) name: String,
    /// The mode it was served in: a listener cannot move between shared mode (workers accept,
    /// blocking socket) and prefork/spawn (the supervisor accepts, non-blocking).
    pub(crate) mode: Mode,
    /// A Unix socket file the receiver becomes responsible for removing.
    pub(crate) unix_path: Option<PathBuf>,
}

/// New to old.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Report {
    /// Every worker is ready; nothing accepted yet.
    Ready,
    /// The new generation cannot serve (why).
    Failed(String),
    /// Accepting, and the control socket and pid file are the new generation's.
    TookOver {
        pid: u32,
        /// Its version (absent from generations built before it was sent).
        #[serde(default)]
        version: Option<String>,
    },
}

/// Old to new: commit.
pub(crate) const GO: &[u8] = b"go";

impl Report {
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// How this process was started, read once in `main`.
#[derive(Debug, Default)]
pub(crate) struct Startup {
    /// The old generation's channel, when this process is a new generation.
    pub(crate) parent: Option<handover::Channel>,
    /// Sockets from systemd socket activation, with their `LISTEN_FDNAMES` names.
    pub(crate) activated: Vec<(String, handover::Socket)>,
    /// This process's arguments, to start the next generation with.
    pub(crate) argv: Vec<OsString>,
    /// The binary's path as it was at start.
    pub(crate) exe: Option<PathBuf>,
}

impl Startup {
    /// Picks up what the process was started with. Call once, before anything else reads
    /// descriptors.
    pub(crate) fn capture(env: &Env) -> Result<Startup> {
        let mut inherited = handover::inherited()
            .context("cannot take the sockets this process was started with")?;
        let is_upgrade = env.get(ENV_UPGRADE).is_some_and(|v| v == "1");
        let parent = inherited.channel.take();
        if is_upgrade && parent.is_none() {
            bail!("{ENV_UPGRADE} is set but no channel to the old generation was passed");
        }
        Ok(Startup {
            parent: if is_upgrade { parent } else { None },
            activated: std::mem::take(&mut inherited.sockets),
            argv: std::env::args_os().collect(),
            exe: invoked_binary(env).ok(),
        })
    }

    /// Tells the old generation (if any) that this one cannot start.
    pub(crate) fn fail(&self, why: &str) {
        if let Some(p) = &self.parent {
            let _ = p.send_timeout(&Report::Failed(why.to_owned()).encode(), &[], PROMPT);
        }
    }
}

/// This binary as it was invoked: `argv[0]` made absolute, through a `PATH` lookup when it
/// names no directory (as the shell found it), with symbolic links left alone, so that a
/// `current` link swapped to a new release names the new binary (`current_exe()` resolves
/// the link at start). `current_exe()` when `argv[0]` names nothing on disk.
pub(crate) fn invoked_binary(env: &Env) -> Result<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let found = std::env::args_os().next().and_then(|argv0| {
        sys::program_candidates(&argv0, env).into_iter().find(|p| p.is_file()).map(|p| match &cwd {
            Some(cwd) if p.is_relative() => cwd.join(p),
            _ => p,
        })
    });
    match found {
        Some(p) => Ok(p),
        None => std::env::current_exe().context("cannot find this program's binary"),
    }
}

/// The binary to start the next generation from: the path this one was invoked as (see
/// [`invoked_binary`]), which now names whatever was installed there since, through any
/// links swapped meanwhile; else the path `/proc/self/exe` names, without its ` (deleted)`.
pub(crate) fn binary(startup: &Startup) -> Result<PathBuf> {
    let deleted =
        |p: &PathBuf| p.to_str().and_then(|s| s.strip_suffix(" (deleted)")).map(PathBuf::from);
    let now = std::env::current_exe().ok();
    let candidates = [startup.exe.clone(), now.as_ref().and_then(deleted), now];
    candidates.into_iter().flatten().find(|p| p.is_file()).ok_or_else(|| {
        anyhow!("cannot find this program's binary on disk to start the new generation")
    })
}

/// `handover upgrade --binary PATH`: an absolute path (the client made it so) to an
/// executable file.
pub(crate) fn check_binary(path: PathBuf) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("--binary {}: not an absolute path", path.display()));
    }
    sys::check_executable(&path).map_err(|why| format!("--binary {}: {why}", path.display()))?;
    Ok(path)
}

/// A socket to hand over.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) info: HandedListener,
    pub(crate) socket: socket2::Socket,
}

/// What the old generation hands over.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) exe: PathBuf,
    pub(crate) argv: Vec<OsString>,
    pub(crate) env: Rc<Env>,
    pub(crate) generation: u64,
    pub(crate) listeners: Vec<Handed>,
    pub(crate) metrics: Option<(String, socket2::Socket)>,
    pub(crate) ready_timeout: Duration,
    /// The control socket path (a killed new generation leaves its staged socket beside it).
    pub(crate) control: PathBuf,
}

/// A new generation that took over.
#[derive(Debug)]
pub(crate) struct NewGeneration {
    pub(crate) pid: u32,
    pub(crate) generation: u64,
    /// Its version, as it reported it.
    pub(crate) version: Option<String>,
    /// The binary it was started from.
    pub(crate) binary: PathBuf,
    /// Never waited for: it outlives this process.
    pub(crate) _child: handover::Child,
}

/// Stops the new generation unless disarmed: on failure, and when the upgrade task is
/// dropped (the old generation began to drain meanwhile).
struct Abandon(Option<(handover::Child, sys::ProcessTree)>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some((mut c, tree)) = self.0.take() {
            tree.signal(Stop::Kill);
            // Reaped on a thread of its own: the event loop never waits for a process to exit
            // (and a drop may run while the runtime shuts down, where no task can be spawned).
            let _ = std::thread::Builder::new()
                .name("reap-upgrade".into())
                .spawn(move || drop(c.wait()));
        }
    }
}

/// Runs the old generation's side. `Err` says why the upgrade was abandoned; the new
/// generation is stopped by then.
pub(crate) async fn start(plan: Plan) -> Result<NewGeneration, String> {
    let mut cmd = handover::Command::new(&plan.exe);
    cmd.args(plan.argv.iter().skip(1)).env_clear();
    for (k, v) in &plan.env.vars {
        if k != ENV_UPGRADE {
            cmd.env(k, v);
        }
    }
    cmd.env(ENV_UPGRADE, "1").channel();
    let (mut child, tree) = sys::spawn(&mut cmd, sys::TreeKind::Successor)
        .map_err(|e| format!("cannot start {}: {e}", plan.exe.display()))?;
    let pid = child.id();
    info!(pid, generation = plan.generation, "upgrade: started {}", plan.exe.display());
    let channel = child.channel.take().map(Channel::try_from);
    let mut guard = Abandon(Some((child, tree)));
    let channel = match channel {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(format!("cannot use the channel to the new generation: {e}")),
        None => return Err("the new generation has no channel".to_owned()),
    };
    let result = converse(&plan, &channel, pid).await;
    match result {
        Ok(version) => {
            let (child, _) = guard.0.take().expect("armed");
            Ok(NewGeneration {
                pid,
                generation: plan.generation,
                version,
                binary: plan.exe.clone(),
                _child: child,
            })
        }
        Err(why) => {
            let (mut child, tree) = guard.0.take().expect("armed");
            if !stop(&mut child, &tree, pid).await {
                let _ = std::fs::remove_file(crate::control::staged_path(&plan.control, pid));
            }
            Err(why)
        }
    }
}

/// The conversation up to TOOK_OVER; the new generation's version, if it said.
async fn converse(plan: &Plan, channel: &Channel, pid: u32) -> Result<Option<String>, String> {
    let handoff = Handoff {
        generation: plan.generation,
        listeners: plan.listeners.iter().map(|h| h.info.clone()).collect(),
        metrics: plan.metrics.as_ref().map(|(a, _)| a.clone()),
    };
    let mut sockets: Vec<SocketRef<'_>> =
        plan.listeners.iter().map(|h| h.socket.as_socket_ref()).collect();
    if let Some((_, s)) = &plan.metrics {
        sockets.push(s.as_socket_ref());
    }
    let bytes = serde_json::to_vec(&handoff).map_err(|e| e.to_string())?;
    match tokio::time::timeout(PROMPT, channel.send(&bytes, &sockets)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // It may have failed at once (a bad configuration) and said why before exiting.
            return match receive(channel, Instant::now() + Duration::from_secs(1), PROMPT).await {
                Err(why) if why.starts_with("the new generation failed") => Err(why),
                _ => Err(format!("cannot hand the sockets to the new generation: {e}")),
            };
        }
        Err(_) => return Err("the new generation did not take the sockets".to_owned()),
    }
    let deadline = Instant::now() + plan.ready_timeout;
    match receive(channel, deadline, plan.ready_timeout).await? {
        Report::Ready => {}
        other => return Err(format!("unexpected message from the new generation: {other:?}")),
    }
    info!(pid, "upgrade: the new generation is ready; handing over");
    match tokio::time::timeout(PROMPT, channel.send(GO, &[])).await {
        Ok(Ok(())) => {}
        _ => return Err("cannot tell the new generation to take over".to_owned()),
    }
    match receive(channel, Instant::now() + PROMPT, PROMPT).await? {
        Report::TookOver { version, .. } => Ok(version),
        other => Err(format!("unexpected message from the new generation: {other:?}")),
    }
}

async fn receive(channel: &Channel, deadline: Instant, limit: Duration) -> Result<Report, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let msg = match tokio::time::timeout(left, channel.recv()).await {
        Err(_) => {
            return Err(format!(
                "the new generation was not ready within {limit:?} (--ready-timeout)"
            ))
        }
        Ok(Err(handover::Error::PeerClosed)) => {
            return Err("the new generation exited before it was ready (see its log)".to_owned())
        }
        Ok(Err(e)) => return Err(format!("channel to the new generation: {e}")),
        Ok(Ok(m)) => m,
    };
    match serde_json::from_slice::<Report>(&msg.bytes) {
        Ok(Report::Failed(why)) => Err(format!("the new generation failed: {why}")),
        Ok(r) => Ok(r),
        Err(_) => Err("the new generation sent something this build cannot read".to_owned()),
    }
}

/// Stops an abandoned new generation: `SIGTERM` (it accepted nothing), then `SIGKILL`.
/// Returns whether it exited by itself (and so cleaned up after itself).
async fn stop(child: &mut handover::Child, tree: &sys::ProcessTree, pid: u32) -> bool {
    tree.signal(Stop::Terminate);
    if tokio::time::timeout(STOP_GRACE, child.wait_async()).await.is_ok() {
        return true;
    }
    warn!(pid, "upgrade: the abandoned new generation did not exit; killing it");
    tree.signal(Stop::Kill);
    let _ = tokio::time::timeout(STOP_GRACE, child.wait_async()).await;
    false
}

/// The new generation's side, first step: the handoff and its sockets.
pub(crate) async fn receive_handoff(
    parent: &Channel,
) -> Result<(Handoff, Vec<handover::Socket>, Option<handover::Socket>)> {
    let msg = tokio::time::timeout(PROMPT, parent.recv())
        .await
        .map_err(|_| anyhow!("the old generation sent no sockets"))?
        .context("cannot receive the sockets from the old generation")?;
    let handoff: Handoff = serde_json::from_slice(&msg.bytes)
        .context("the old generation sent a hand-off this build cannot read")?;
    let mut sockets = msg.sockets;
    let want = handoff.listeners.len() + usize::from(handoff.metrics.is_some());
    if sockets.len() != want {
        bail!("the old generation sent {} socket(s), {want} expected", sockets.len());
    }
    let metrics = if handoff.metrics.is_some() { sockets.pop() } else { None };
    Ok((handoff, sockets, metrics))
}
