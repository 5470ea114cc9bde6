//! The workspace's `rust-version` is true of the locked dependencies: no dependency a build
//! of the crates needs (normal and build dependencies, all features, per Cargo.lock) declares a
//! newer one. (The crates' own code is held to it by clippy's incompatible_msrv, which checks
//! standard-library calls against the field.) Development dependencies (proptest, criterion) are left out: they are needed to run
//! the tests, not to build the crates. Reads the lock file only (`--offline --locked`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn parse(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("version {v}")));
    (it.next().unwrap(), it.next().unwrap_or(0))
}

fn cargo(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .args(args)
        .args(["--offline", "--locked"])
        .current_dir(root)
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "cargo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn rust_version_is_the_newest_a_build_dependency_needs() {
    let ours = parse(env!("CARGO_PKG_RUST_VERSION"));
    let tree = cargo(&[
        "tree",
        "--workspace",
        "--all-features",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    // "name v1.2.3 (...)" -> (name, 1.2.3)
    let built: BTreeSet<(String, String)> = tree
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.strip_prefix('v')?.to_owned()))
        })
        .collect();
    assert!(built.iter().any(|(n, _)| n == "tokio"), "parsed nothing from cargo tree: {tree}");

    let meta: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1"])).unwrap();
    let mut needs: Vec<((u32, u32), String)> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            let key =
                (p["name"].as_str().unwrap().to_owned(), p["version"].as_str().unwrap().to_owned());
            built.contains(&key) && p["source"].is_string() // a registry dependency, not ours
        })
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            Some((parse(v), format!("{} {}", p["name"].as_str()?, p["version"].as_str()?)))
        })
        .collect();
    needs.sort();
    let (newest, which) = needs.last().expect("some dependency declares a rust-version");
    assert!(
        *newest <= ours,
        "{which} needs Rust {newest:?}, newer than the workspace's rust-version {ours:?}: raise it"
    );
}
