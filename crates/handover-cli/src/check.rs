//! `handover check`: validates a configuration as `serve` would read it (every command found
//! and executable, every address parseable, every user and group present, and switching to
//! them permitted), without binding or starting anything, and prints the plan. nginx's
//! `nginx -t`, gunicorn's `--check-config`.

use std::fmt::Write as _;

use clap::ValueEnum;

use crate::config::Config;

/// The plan `serve` would carry out, one line per listener and program.
pub(crate) fn plan(c: &Config) -> String {
    let name = |v: Option<clap::builder::PossibleValue>| {
        v.map(|v| v.get_name().to_owned()).unwrap_or_default()
    };
    let mut out = String::new();
    let _ = writeln!(out, "control socket {}", c.control.display());
    if let Some(m) = c.metrics {
        let _ = writeln!(out, "metrics http://{m}/metrics");
    }
    if let Some(p) = &c.pid_file {
        let _ = writeln!(out, "pid file {}", p.display());
    }
    if let Some(p) = &c.log_file {
        let _ = writeln!(out, "log file {}", p.display());
    }
    for l in &c.listeners {
        let _ = write!(
            out,
            "listener {} {} (policy {}, backlog {}",
            l.name,
            l.addr,
            name(l.policy.to_possible_value()),
            l.backlog
        );
        if let Some(p) = l.proxy {
            let _ = write!(out, ", PROXY protocol {}", name(p.to_possible_value()));
        }
        if let Some(m) = l.perms.mode {
            let _ = write!(out, ", mode {m:04o}");
        }
        if let Some(u) = l.perms.owner {
            let _ = write!(out, ", owner uid {u}");
        }
        if let Some(g) = l.perms.group {
            let _ = write!(out, ", group gid {g}");
        }
        let _ = writeln!(out, ")");
    }
    for p in &c.programs {
        let listeners: Vec<&str> =
            p.listeners.iter().map(|&i| c.listeners[i].name.as_str()).collect();
        let _ = write!(
            out,
            "program {}: {} mode, {} worker(s), listeners [{}]: {}",
            p.name,
            name(p.mode.to_possible_value()),
            p.workers,
            listeners.join(", "),
            p.program.display()
        );
        for a in &p.args {
            let _ = write!(out, " {}", a.to_string_lossy());
        }
        let _ = writeln!(out);
        let ctx = &p.context;
        if let Some((u, uid)) = &ctx.user {
            let _ = writeln!(out, "  user {u} (uid {uid})");
        }
        if let Some((g, gid)) = &ctx.group {
            let _ = writeln!(out, "  group {g} (gid {gid})");
        }
        if let Some(d) = &ctx.chdir {
            let _ = writeln!(out, "  chdir {}", d.display());
        }
        if let Some(m) = ctx.umask {
            let _ = writeln!(out, "  umask {m:03o}");
        }
        if !p.env.is_empty() {
            let keys: Vec<String> = p.env.iter().map(|(k, _)| k.to_string_lossy().into()).collect();
            let _ = writeln!(out, "  environment sets {}", keys.join(", "));
        }
    }
    out
}
