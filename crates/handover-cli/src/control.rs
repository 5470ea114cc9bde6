//! The control socket: `handover status`, `reload`, `upgrade` and `stop` talk to a running
//! supervisor.
//!
//! A [`handover::ChannelListener`] at a path: the socket file is created `0600` and every
//! peer is checked to run as the same user, so only the owner can query or steer the
//! supervisor. One request per connection: the client sends `status`, `reload`, `reload wait`,
//! `scale [PROGRAM] N|+N|-N`, `upgrade` or `stop`; the supervisor answers with JSON
//! ([`Status`], [`Reply`]) or `ok` (`reload`, `stop`).
//!
//! In an upgrade the new generation binds its control socket at a temporary path and renames
//! it over the old one once it has taken over, so a client always finds exactly one live
//! supervisor at the path, and never none. Each generation removes the path at exit only if it
//! still names the socket it created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::engine::Scale;
use crate::status::Status;

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Status,
    /// Start a reload; answered `ok` at once.
    Reload,
    /// Reload, answered with a [`Reply`] once every worker has been replaced.
    ReloadWait,
    Stop,
    /// Stop, answered with [`Stopped`] once the supervisor has cleaned up and is about to exit.
    StopWait,
    /// An upgrade, to `binary` if given (else the binary as this generation was invoked).
    Upgrade {
        binary: Option<String>,
    },
    /// Change the number of workers of `program` (the only program if `None`).
    Scale {
        program: Option<String>,
        how: Scale,
    },
}

impl Command {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        match self {
            Command::Status => b"status".to_vec(),
            Command::Reload => b"reload".to_vec(),
            Command::ReloadWait => b"reload wait".to_vec(),
            Command::Stop => b"stop".to_vec(),
            Command::StopWait => b"stop wait".to_vec(),
            Command::Upgrade { binary: None } => b"upgrade".to_vec(),
            Command::Upgrade { binary: Some(b) } => format!("upgrade --binary {b}").into(),
            Command::Scale { program: Some(p), how } => {
                format!("scale {p} {}", how.to_arg()).into()
            }
            Command::Scale { program: None, how } => format!("scale {}", how.to_arg()).into(),
        }
    }

    pub(crate) fn parse(b: &[u8]) -> Option<Command> {
        match b {
            b"status" => Some(Command::Status),
            b"reload" => Some(Command::Reload),
            b"reload wait" => Some(Command::ReloadWait),
            b"stop" => Some(Command::Stop),
            b"stop wait" => Some(Command::StopWait),
            b"upgrade" => Some(Command::Upgrade { binary: None }),
            _ => {
                let text = std::str::from_utf8(b).ok()?;
                if let Some(path) = text.strip_prefix("upgrade --binary ") {
                    return (!path.is_empty())
                        .then(|| Command::Upgrade { binary: Some(path.to_owned()) });
                }
                let words: Vec<&str> = text.strip_prefix("scale ")?.split(' ').collect();
                let (program, n) = match words[..] {
                    [n] => (None, n),
                    [p, n] if !p.is_empty() => (Some(p.to_owned()), n),
                    _ => return None,
                };
                Some(Command::Scale { program, how: Scale::parse(n).ok()? })
            }
        }
    }
}

/// The answer to `upgrade`, `reload wait` and `scale`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Reply {
    pub(crate) ok: bool,
    pub(crate) message: String,
}

/// The answer to `stop wait`, sent as the supervisor exits: its listeners, control socket and
/// pid file are gone by then, so another supervisor can start at once.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stopped {
    /// The supervisor's exit status.
    pub(crate) code: i32,
    /// Why it is not 0, when there is more to say.
    pub(crate) message: Option<String>,
}

/// The bound control socket. The path may have been taken over by the next generation, so the
/// listener keeps its path when dropped ([`keep_path`](handover::ChannelListener::keep_path))
/// and [`ControlSocket::close`] removes it only if it is still ours.
pub(crate) struct ControlSocket {
    listener: handover::tokio::ChannelListener,
    /// Where clients find it (after [`ControlSocket::publish`] for a new generation).
    path: PathBuf,
    /// Where it was bound (a temporary path for a new generation).
    bound_at: PathBuf,
    identity: Option<(u64, u64)>,
}

impl ControlSocket {
    /// Binds at `path`, replacing a stale socket but never a live supervisor's.
    pub(crate) fn bind(path: &Path) -> Result<ControlSocket> {
        let listener = bind_at(path)?;
        Ok(ControlSocket::new(listener, path, path))
    }

    /// Binds at a temporary path beside `path`, for a new generation that takes `path` over
    /// with [`publish`](ControlSocket::publish) once the upgrade is committed.
    pub(crate) fn bind_staged(path: &Path) -> Result<ControlSocket> {
        let staged = staged_path(path, std::process::id());
        let _ = std::fs::remove_file(&staged);
        let listener = bind_at(&staged)?;
        Ok(ControlSocket::new(listener, path, &staged))
    }

    fn new(listener: handover::tokio::ChannelListener, path: &Path, at: &Path) -> ControlSocket {
        ControlSocket {
            listener,
            path: path.to_owned(),
            bound_at: at.to_owned(),
            identity: crate::sys::file_identity(at),
        }
    }

    /// Moves a staged socket to the real path, atomically replacing the old generation's.
    pub(crate) fn publish(&mut self) -> Result<()> {
        if self.bound_at != self.path {
            std::fs::rename(&self.bound_at, &self.path).with_context(|| {
                format!("cannot move the control socket to {}", self.path.display())
            })?;
            self.bound_at = self.path.clone();
        }
        Ok(())
    }

    pub(crate) async fn accept(&self) -> handover::Result<handover::tokio::Channel> {
        self.listener.accept().await
    }

    /// Removes the socket file if it is still the one this process bound (not a newer
    /// generation's), at exit.
    pub(crate) fn close(&self) {
        if self.identity.is_some() && crate::sys::file_identity(&self.bound_at) == self.identity {
            let _ = std::fs::remove_file(&self.bound_at);
        }
    }
}

/// Where a new generation with process id `pid` binds its control socket before taking over.
pub(crate) fn staged_path(path: &Path, pid: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{pid}.new"));
    PathBuf::from(name)
}

fn bind_at(path: &Path) -> Result<handover::tokio::ChannelListener> {
    let what = || format!("cannot create the control socket {}", path.display());
    let mut listener = match handover::ChannelListener::bind(path) {
        Ok(l) => l,
        Err(handover::Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if handover::Channel::connect(path).is_ok() {
                bail!(
                    "another supervisor is running (its control socket is {}); stop it or pass --control",
                    path.display()
                );
            }
            std::fs::remove_file(path).with_context(what)?;
            handover::ChannelListener::bind(path).with_context(what)?
        }
        Err(e) => return Err(anyhow!(e)).with_context(what),
    };
    listener.keep_path();
    handover::tokio::ChannelListener::try_from(listener).with_context(what)
}

/// Sends one request and returns the answer, waiting up to `patience` for it.
pub(crate) fn request_within(path: &Path, cmd: Command, patience: Duration) -> Result<Vec<u8>> {
    let channel = send(path, cmd)?;
    let reply = channel
        .recv_timeout(patience)
        .with_context(|| format!("no answer from the supervisor at {}", path.display()))?;
    Ok(reply.bytes)
}

/// Connects and sends one request.
fn send(path: &Path, cmd: Command) -> Result<handover::Channel> {
    let channel = handover::Channel::connect(path).map_err(|e| {
        anyhow!(
            "cannot reach a supervisor at {}: {e} (is `handover serve` running? see --control)",
            path.display()
        )
    })?;
    channel.send(&cmd.to_bytes(), &[])?;
    Ok(channel)
}

/// Asks the supervisor to stop and waits until it has exited, calling `waiting` with the time
/// so far every `every` meanwhile; returns the exit status it reported.
pub(crate) fn stop_and_wait(
    path: &Path,
    every: Duration,
    mut waiting: impl FnMut(Duration),
) -> Result<Stopped> {
    let channel = send(path, Command::StopWait)?;
    let started = std::time::Instant::now();
    let bytes = loop {
        match channel.recv_timeout(every) {
            Ok(m) => break m.bytes,
            Err(handover::Error::TimedOut) => waiting(started.elapsed()),
            Err(handover::Error::PeerClosed) => bail!(
                "the supervisor at {} closed the connection without saying how it exited \
                 (killed?)",
                path.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("lost the supervisor at {} while it stopped", path.display())
                })
            }
        }
    };
    if bytes.starts_with(b"unknown request") {
        // A supervisor started from an older binary, which knows only `stop`.
        return stop_older(path, started, every, waiting);
    }
    let stopped: Stopped = serde_json::from_slice(&bytes).map_err(|_| {
        anyhow!("unexpected answer from the supervisor: {}", String::from_utf8_lossy(&bytes))
    })?;
    // The connection ends when the supervisor's process does (it writes out the workers' last
    // lines first, for up to a second).
    let _ = channel.recv_timeout(Duration::from_secs(5));
    Ok(stopped)
}

/// `handover stop` for a supervisor that cannot say how it exits: asks it to stop, then waits
/// until its control socket is gone (it removes it as it exits), reporting exit status 0.
fn stop_older(
    path: &Path,
    started: std::time::Instant,
    every: Duration,
    mut waiting: impl FnMut(Duration),
) -> Result<Stopped> {
    request(path, Command::Stop)?;
    let mut next = every;
    while handover::Channel::connect(path).is_ok() {
        if started.elapsed() >= next {
            waiting(started.elapsed());
            next += every;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let message = "a supervisor of an older version stopped; its exit status is unknown";
    Ok(Stopped { code: 0, message: Some(message.to_owned()) })
}

/// Sends one request and returns the answer.
pub(crate) fn request(path: &Path, cmd: Command) -> Result<Vec<u8>> {
    request_within(path, cmd, Duration::from_secs(10))
}

pub(crate) fn status(path: &Path) -> Result<Status> {
    let bytes = request(path, Command::Status)?;
    serde_json::from_slice(&bytes).context("the supervisor sent a status this build cannot read")
}

/// Asks for an upgrade, a reload that is waited for, or a scale, and waits for its outcome
/// (a new generation may take up to its `--ready-timeout`; a reload as long as its workers take
/// to start).
pub(crate) fn ask(path: &Path, cmd: Command) -> Result<Reply> {
    let bytes = request_within(path, cmd, Duration::from_secs(3600))?;
    serde_json::from_slice(&bytes).map_err(|_| {
        anyhow!("unexpected answer from the supervisor: {}", String::from_utf8_lossy(&bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let all = [
            Command::Status,
            Command::Reload,
            Command::ReloadWait,
            Command::Stop,
            Command::StopWait,
            Command::Upgrade { binary: None },
            Command::Upgrade { binary: Some("/srv/app/releases/2 b/handover".into()) },
            Command::Scale { program: None, how: Scale::To(6) },
            Command::Scale { program: Some("web".into()), how: Scale::By(-1) },
            Command::Scale { program: Some("web".into()), how: Scale::By(2) },
        ];
        for c in all {
            assert_eq!(Command::parse(&c.to_bytes()), Some(c.clone()), "{c:?}");
        }
        for bad in [
            &b"scale"[..],
            b"scale ",
            b"scale a b c",
            b"scale web",
            b"scale  3",
            b"nope",
            b"upgrade --binary ",
        ] {
            assert_eq!(Command::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
