//! The supervisor's domain: how a program runs (its [`Mode`], a listener's [`Policy`] and
//! [`ProxyProtocol`], [`SpawnSocket`], [`Compat`], [`WorkerOutput`]) and how the supervisor
//! logs ([`LogFormat`]). The command line ([`crate::cli`]: clap parses each with its
//! `ValueEnum`, and the doc comments are the `--help` text), the TOML file and the upgrade
//! message (serde, the same kebab-case names), `status` and the engines all use these.

use clap::ValueEnum;

/// How connections reach the program.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// Running workers receive accepted connections over a control channel.
    #[default]
    Prefork,
    /// One child process per connection.
    Spawn,
    /// Workers receive the listening sockets and accept themselves.
    Shared,
}

impl Mode {
    /// Its name, as `--mode` takes it and status shows it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Prefork => "prefork",
            Mode::Spawn => "spawn",
            Mode::Shared => "shared",
        }
    }
}

/// prefork dispatch policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Policy {
    /// Each worker in turn.
    RoundRobin,
    /// The worker with the fewest live connections.
    LeastConnections,
    /// The same client address goes to the same worker while it is up (sticky sessions).
    SourceHash,
}

impl Policy {
    /// Its name, as `--policy` takes it and status shows it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastConnections => "least-connections",
            Policy::SourceHash => "source-hash",
        }
    }
}

/// Which PROXY protocol header (HAProxy's) a listener's connections start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ProxyProtocol {
    /// The text header (`PROXY TCP4 ...`), HAProxy's `send-proxy`.
    V1,
    /// The binary header, HAProxy's `send-proxy-v2` (cloud L4 balancers send this one).
    V2,
    /// Either.
    Any,
}

/// Environment variables other supervisors pass, for programs written for them (shared mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Compat {
    /// einhorn: EINHORN_FDS="3 4", EINHORN_FD_COUNT=2, EINHORN_FD_0=3, EINHORN_FD_1=4.
    Einhorn,
    /// Server::Starter: SERVER_STARTER_PORT="127.0.0.1:8080=3;/run/app.sock=4".
    ServerStarter,
}

/// Where the workers' standard output and error go.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum WorkerOutput {
    /// Through the supervisor, each line prefixed with the program and slot.
    #[default]
    Prefix,
    /// Straight to the supervisor's own stdout and stderr.
    Inherit,
}

/// How the supervisor writes log lines.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// spawn mode: where the child finds its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SpawnSocket {
    /// Standard input and output (inetd style).
    Stdio,
    /// Descriptor 3, with LISTEN_FDS=1 (systemd Accept=yes style).
    Fd3,
    /// Over a handover channel the child inherits, as one CONNECTION message followed by
    /// DRAIN (docs/protocol.md): a prefork worker serves one connection and exits. On Windows
    /// this is the classic flow: the socket is duplicated for the child's pid and sent over a
    /// named pipe.
    Channel,
}
