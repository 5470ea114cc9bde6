//! Who a program's children run as and where: `user`, `group` (supplementary groups dropped),
//! `chdir`, `umask` and the environment from `env_file` and `--env`, applied between `fork`
//! and `exec` (as gunicorn's `--user`/`--group`/`--chdir`/`--umask`/`--env`, systemd's
//! `User=`/`Group=`/`WorkingDirectory=`/`UMask=`/`EnvironmentFile=`, PM2's `cwd`/`env`);
//! and the owner and mode of a `unix:` listener's socket file (nginx and php-fpm's
//! `listen.owner`/`listen.group`/`listen.mode`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::sys;

/// A program's execution context, resolved: ids looked up, paths made absolute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExecContext {
    /// The user as given and its uid.
    pub(crate) user: Option<(String, u32)>,
    /// The group as given (or the user's primary group) and its gid.
    pub(crate) group: Option<(String, u32)>,
    pub(crate) chdir: Option<PathBuf>,
    pub(crate) umask: Option<u32>,
}

/// The context as written (flags or a `[[program]]` table), before resolution.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContextSpec {
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) chdir: Option<PathBuf>,
    pub(crate) umask: Option<String>,
    pub(crate) env_file: Option<PathBuf>,
}

impl ContextSpec {
    /// Resolves names and paths (relative ones against `base`: the configuration file's
    /// directory, or the current directory for flags); also reads the `env_file`. `what`
    /// names the program in messages.
    pub(crate) fn resolve(
        &self,
        base: &Path,
        what: &str,
    ) -> Result<(ExecContext, Vec<(OsString, OsString)>)> {
        let mut ctx = ExecContext::default();
        if let Some(name) = &self.user {
            let (uid, gid) =
                sys::lookup_user(name).map_err(|e| anyhow!("{what}: user {name:?}: {e}"))?;
            ctx.user = Some((name.clone(), uid));
            ctx.group = Some((format!("{name}'s primary group"), gid));
        }
        if let Some(name) = &self.group {
            let gid =
                sys::lookup_group(name).map_err(|e| anyhow!("{what}: group {name:?}: {e}"))?;
            ctx.group = Some((name.clone(), gid));
        }
        if ctx.user.is_some() || ctx.group.is_some() {
            let (uid, gid) = (ctx.user.as_ref().map(|u| u.1), ctx.group.as_ref().map(|g| g.1));
            sys::check_may_become(uid, gid).map_err(|e| {
                let who = match (&self.user, &self.group) {
                    (Some(u), Some(g)) => format!("user {u:?} and group {g:?}"),
                    (Some(u), None) => format!("user {u:?}"),
                    (None, Some(g)) => format!("group {g:?}"),
                    (None, None) => unreachable!("one is set"),
                };
                anyhow!("{what}: cannot run as {who}: {e}")
            })?;
        }
        if let Some(dir) = &self.chdir {
            let dir = base.join(dir);
            if !dir.is_dir() {
                bail!("{what}: chdir {}: not a directory", dir.display());
            }
            ctx.chdir = Some(dir);
        }
        if let Some(mask) = &self.umask {
            if !sys::HAS_UMASK {
                bail!("{what}: umask: not supported on Windows");
            }
            ctx.umask =
                Some(parse_umask(mask).map_err(|e| anyhow!("{what}: umask {mask:?}: {e}"))?);
        }
        let env = match &self.env_file {
            None => Vec::new(),
            Some(file) => {
                let file = base.join(file);
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("{what}: cannot read env_file {}", file.display()))?;
                parse_env_file(&text).map_err(|e| anyhow!("{what}: {}: {e}", file.display()))?
            }
        };
        Ok((ctx, env))
    }
}

/// An octal mask: `"027"`, `"0027"` or `"0o027"`.
pub(crate) fn parse_umask(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err("expected an octal mode from 000 to 777 (e.g. \"027\")".to_owned()),
    }
}

/// `KEY=VALUE` lines; blank lines and lines starting with `#` are skipped, an `export ` prefix
/// is allowed, and a value wholly in single or double quotes loses them (nothing else is
/// interpreted: no escapes, no `$` expansion).
pub(crate) fn parse_env_file(text: &str) -> Result<Vec<(OsString, OsString)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: bad variable name {k:?}", n + 1));
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
            .unwrap_or(v);
        out.push((k.into(), v.into()));
    }
    Ok(out)
}

/// `--env K=V`.
pub(crate) fn parse_env_flag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The owner and mode of a `unix:` listener's socket file, resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SocketPerms {
    pub(crate) mode: Option<u32>,
    pub(crate) owner: Option<u32>,
    pub(crate) group: Option<u32>,
}

impl SocketPerms {
    pub(crate) fn resolve(
        mode: Option<&str>,
        owner: Option<&str>,
        group: Option<&str>,
        what: &str,
    ) -> Result<SocketPerms> {
        let mode = mode
            .map(|m| parse_umask(m).map_err(|e| anyhow!("{what}: mode {m:?}: {e}")))
            .transpose()?;
        let owner = owner
            .map(|u| {
                sys::lookup_user(u)
                    .map(|(uid, _)| uid)
                    .map_err(|e| anyhow!("{what}: owner {u:?}: {e}"))
            })
            .transpose()?;
        let group = group
            .map(|g| sys::lookup_group(g).map_err(|e| anyhow!("{what}: group {g:?}: {e}")))
            .transpose()?;
        if owner.is_some() || group.is_some() {
            sys::check_may_give(owner, group).map_err(|e| anyhow!("{what}: {e}"))?;
        }
        Ok(SocketPerms { mode, owner, group })
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == SocketPerms::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umask_is_octal_up_to_777() {
        assert_eq!(parse_umask("027"), Ok(0o27));
        assert_eq!(parse_umask("0o077"), Ok(0o77));
        assert_eq!(parse_umask("0660"), Ok(0o660));
        assert!(parse_umask("8").is_err());
        assert!(parse_umask("1777").is_err());
        assert!(parse_umask("").is_err());
    }

    #[test]
    fn env_files_read_as_documented() {
        let text = "# comment\n\nA=1\nexport B = two words\nC=\"quoted\"\nD='x=y'\nE=\n";
        let got = parse_env_file(text).unwrap();
        let want: Vec<(OsString, OsString)> =
            [("A", "1"), ("B", "two words"), ("C", "quoted"), ("D", "x=y"), ("E", "")]
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect();
        assert_eq!(got, want);
        assert_eq!(parse_env_file("novalue").unwrap_err(), "line 1: expected KEY=VALUE");
        assert!(parse_env_file("BAD KEY=1").is_err());
        assert_eq!(parse_env_flag("K=a=b"), Ok(("K".into(), "a=b".into())));
        assert!(parse_env_flag("=v").is_err());
    }
}
