//! `handover --version`: the commit it was built from and the build date when built from git
//! (build.rs), the bare version when the source's commit is unknown.

use std::path::Path;
use std::process::Command;

// The build script itself, to run its logic in directories other than this one.
#[allow(dead_code)] // its main
#[path = "../build.rs"]
mod build_script;

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// `0.1.0 (git 0123456789ab, built 2026-12-07)` -> the commit, if the shape is right.
fn commit_of(version: &str) -> Option<&str> {
    let rest = version.strip_prefix(env!("CARGO_PKG_VERSION"))?.strip_prefix(" (git ")?;
    let (commit, date) = rest.split_once(", built ")?;
    let date = date.strip_suffix(')')?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let ok = commit.len() == 12
        && commit.bytes().all(|b| b.is_ascii_hexdigit())
        && date.len() == 10
        && date.split('-').map(|p| digits(p) && !p.is_empty()).eq([true, true, true]);
    ok.then_some(commit)
}

#[test]
fn version_names_the_commit_and_build_date_when_built_from_git() {
    let out = Command::new(HANDOVER).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let version = line.trim_end().strip_prefix("handover ").expect("handover VERSION");
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap());
    match head {
        // Built from this checkout: its HEAD (cargo reruns build.rs when HEAD moves).
        Some(head) => assert_eq!(commit_of(version), Some(&head[..12]), "{version:?}"),
        None => assert_eq!(version, env!("CARGO_PKG_VERSION")),
    }
}

/// Outside git (a source tarball, a directory that is no repository) the build script gives
/// the bare version, or the commit `cargo package` recorded in `.cargo_vcs_info.json`; it never
/// fails the build. Also the date arithmetic.
#[test]
fn build_script_outside_git() {
    let dir = std::env::temp_dir().join(format!("handover-test-version-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let in_dir = |dir: &Path| {
        // The only test in this file that changes directory; the other runs absolute paths.
        let back = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir).unwrap();
        let v = build_script::version();
        std::env::set_current_dir(back).unwrap();
        v
    };
    assert_eq!(in_dir(&dir), env!("CARGO_PKG_VERSION"));
    std::fs::write(
        dir.join(".cargo_vcs_info.json"),
        r#"{"git": {"sha1": "71cb3b699a45d02f00a793e78c85e0f513ff8180", "dirty": true}, "path_in_vcs": "crates/handover-cli"}"#,
    )
    .unwrap();
    assert_eq!(commit_of(&in_dir(&dir)), Some("71cb3b699a45"));
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(build_script::civil_from_days(0), (1970, 1, 1));
    assert_eq!(build_script::civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(build_script::civil_from_days(20_794), (2026, 12, 7));
}
