//! What every mode's engine shares: the requests the supervisor sends it and how it ends.

use tokio::sync::{mpsc, oneshot};

use crate::exit_codes::ExitCode;
use crate::status::{ListenerStatus, ProgramStatus};

/// A request from the supervisor to one program's engine.
#[derive(Debug)]
pub(crate) enum Request {
    /// Report status.
    Status(oneshot::Sender<(ProgramStatus, Vec<ListenerStatus>)>),
    /// Restart the workers one at a time (`SIGHUP`).
    Reload,
    /// Stop accepting, let workers finish, exit (`SIGTERM`).
    Drain,
    /// Kill everything now (a second `SIGTERM`).
    Kill,
    /// Whether every worker is ready (a new generation waits for this before the old drains).
    Ready(oneshot::Sender<bool>),
    /// Start accepting (a new generation was held until the old one let go).
    Start,
}

/// What the supervisor tells every engine at start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    /// Accept nothing until [`Request::Start`]: a new generation does not take connections
    /// before the upgrade is committed, so abandoning it loses none.
    pub(crate) held: bool,
    /// The supervisor's generation (1, then one more per upgrade).
    pub(crate) generation: u64,
    /// Hand-off latency (prefork: connection sent to acknowledgement), when metrics are on.
    pub(crate) handoff_latency: Option<prometheus_client::metrics::histogram::Histogram>,
}

pub(crate) type Requests = mpsc::UnboundedReceiver<Request>;

/// How an engine ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) code: ExitCode,
    /// A one-line explanation for a non-success code.
    pub(crate) message: Option<String>,
}

impl Outcome {
    pub(crate) fn success() -> Outcome {
        Outcome { code: ExitCode::Success, message: None }
    }

    /// An engine that cannot watch its children's exits cannot run.
    pub(crate) fn cannot_watch_children(err: &std::io::Error) -> Outcome {
        Outcome { code: ExitCode::Failure, message: Some(format!("cannot watch children: {err}")) }
    }
}

/// The engine's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Draining { deadline: std::time::Instant },
}

impl Phase {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Draining { .. } => "draining",
        }
    }
}

/// Waits until `at`; never, for `None`.
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
