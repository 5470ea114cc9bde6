//! The command a worker (or spawn mode's child) is started with.

use std::ffi::OsStr;

use crate::config::{Env, ProgramConfig};

/// Variables the supervisor sets itself; never passed through from its own environment.
/// `NOTIFY_SOCKET` is the supervisor's own line to systemd: workers are not the main process.
const OURS: [&str; 15] = [
    "NOTIFY_SOCKET",
    "HANDOVER_UPGRADE",
    "EINHORN_FDS",
    "EINHORN_FD_COUNT",
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "HANDOVER_CHANNEL_FD",
    "HANDOVER_SLOT",
    "HANDOVER_LISTENER",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    crate::init::ENV_INIT_PID,
];

/// A command for one of `prog`'s children, with an environment built explicitly from the
/// snapshot taken at start plus the program's own variables.
pub(crate) fn command<'a>(prog: &ProgramConfig, env: &Env) -> handover::Command<'a> {
    let mut cmd = handover::Command::new(&prog.program);
    cmd.args(&prog.args).env_clear();
    for (k, v) in &env.vars {
        let einhorn_fd = k.to_str().is_some_and(|k| k.starts_with("EINHORN_FD_"));
        if !OURS.iter().any(|o| OsStr::new(o) == k) && !einhorn_fd {
            cmd.env(k, v);
        }
    }
    for (k, v) in &prog.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &prog.context.chdir {
        cmd.current_dir(dir);
    }
    crate::sys::apply_context(&mut cmd, &prog.context);
    cmd
}
