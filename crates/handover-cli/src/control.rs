//! The control socket: `handover status`, `reload` and `stop` talk to a running supervisor.
//!
//! A [`handover::ChannelListener`] at a path: the socket file is created `0600` and every
//! peer is checked to run as the same user, so only the owner can query or steer the
//! supervisor. One request per connection: the client sends `status`, `reload` or `stop`; the
//! supervisor answers with JSON ([`Status`]) or `ok`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::status::Status;

/// What a client may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Status,
    Reload,
    Stop,
}

impl Command {
    pub(crate) fn as_bytes(self) -> &'static [u8] {
        match self {
            Command::Status => b"status",
            Command::Reload => b"reload",
            Command::Stop => b"stop",
        }
    }

    pub(crate) fn parse(b: &[u8]) -> Option<Command> {
        match b {
            b"status" => Some(Command::Status),
            b"reload" => Some(Command::Reload),
            b"stop" => Some(Command::Stop),
            _ => None,
        }
    }
}

/// Binds the control socket, replacing a stale one but never a live supervisor's.
pub(crate) fn bind(path: &Path) -> Result<handover::tokio::ChannelListener> {
    let what = || format!("cannot create the control socket {}", path.display());
    let listener = match handover::ChannelListener::bind(path) {
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
    handover::tokio::ChannelListener::try_from(listener).with_context(what)
}

/// Sends one request and returns the answer.
pub(crate) fn request(path: &Path, cmd: Command) -> Result<Vec<u8>> {
    let channel = handover::Channel::connect(path).map_err(|e| {
        anyhow!(
            "cannot reach a supervisor at {}: {e} (is `handover serve` running? see --control)",
            path.display()
        )
    })?;
    channel.send(cmd.as_bytes(), &[])?;
    let reply = channel
        .recv_timeout(Duration::from_secs(10))
        .with_context(|| format!("no answer from the supervisor at {}", path.display()))?;
    Ok(reply.bytes)
}

pub(crate) fn status(path: &Path) -> Result<Status> {
    let bytes = request(path, Command::Status)?;
    serde_json::from_slice(&bytes).context("the supervisor sent a status this build cannot read")
}
