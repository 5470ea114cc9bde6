//! Sets `HANDOVER_VERSION`, what `handover --version` prints: the package version, and when
//! the source is known to come from a git commit, that commit and the build date —
//! `0.1.0 (git 3e1a863a2b1c, built 2026-12-07)`.
//!
//! The commit comes from `.cargo_vcs_info.json` when there is one (a `cargo package` tarball,
//! a crates.io download: the commit it was packaged from), else from `git` run in this
//! directory. Neither found (no git, a source tarball without the file): the bare version;
//! this script never fails the build. The date is UTC, from `SOURCE_DATE_EPOCH` when set
//! (reproducible builds), else the clock; it changes when this script reruns: when HEAD moves
//! or a file under `src/` changes.
// Build scripts talk to cargo on stdout.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rustc-env=HANDOVER_VERSION={}", version());
}

/// The version line's text after `handover `, for the source in the current directory.
pub(crate) fn version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match commit() {
        Some(commit) => format!("{version} (git {commit}, built {})", build_date()),
        None => version.to_owned(),
    }
}

/// The source's commit, 12 hex digits.
fn commit() -> Option<String> {
    let vcs_info = Path::new(".cargo_vcs_info.json");
    if vcs_info.is_file() {
        println!("cargo:rerun-if-changed=.cargo_vcs_info.json");
        // {"git": {"sha1": "71cb…", "dirty": true}, "path_in_vcs": "…"}: no JSON parser needed
        // for the one string.
        let text = std::fs::read_to_string(vcs_info).ok()?;
        let at = text.find("\"sha1\"")?;
        let sha = text[at + 6..].split('"').nth(1)?;
        return short(sha);
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let sha = git(&["rev-parse", "HEAD"])?;
    // Rerun when HEAD moves: HEAD itself (another branch) and the branch's ref (a commit),
    // loose or packed. (In a worktree HEAD is in its own git dir, refs in the common one.)
    let git_dir = git(&["rev-parse", "--git-dir"])?;
    let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or_else(|| git_dir.clone());
    let mut watch = vec![Path::new(&git_dir).join("HEAD"), Path::new(&common).join("packed-refs")];
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(Path::new(&common).join(head_ref));
    }
    for path in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    short(&sha)
}

fn short(sha: &str) -> Option<String> {
    let sha = sha.get(..12)?;
    sha.bytes().all(|b| b.is_ascii_hexdigit()).then(|| sha.to_owned())
}

/// Today (or `SOURCE_DATE_EPOCH`'s day), UTC, as YYYY-MM-DD.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
