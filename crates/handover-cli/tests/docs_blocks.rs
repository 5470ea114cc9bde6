//! Every shell block (```sh, ```bash, ```shell, ```console) in README.md and docs/*.md either
//! runs somewhere or says it does not, on the line before its fence:
//!
//! - `<!-- illustrative -->` or `<!-- illustrative: why -->`: not run (needs root, systemd,
//!   other hosts, a container engine, Wine, a package from another branch, or never ends);
//! - `<!-- scripts/install-test.sh runs the next block ... -->`: the Quick start block, run as
//!   written after a fresh `cargo install` (checked here: that script still looks for the marker);
//!   `<!-- scripts/install-test.sh runs this command ... -->`: its `cargo install` line;
//! - `<!-- .ci/run runs the next block ... -->`: every command of the block is a line of .ci/run;
//! - `<!-- crates/handover-cli/tests/docs_blocks.rs runs the next block: ID -->`: run by
//!   [`the_blocks_marked_for_this_test_run`] below, with `bash -eu`, from the checkout, with
//!   these substitutions (other programs on the machine may hold the ports, and /run, /tmp are
//!   shared):
//!   - `127.0.0.1:8080` and `127.0.0.1:9100` become free loopback ports;
//!   - `/tmp/h.` and `/run/handover` become paths in the test's own directory, `sudo ` goes;
//!   - `--config handover.toml` is docs/config.md's tested example, written there with the
//!     same substitutions;
//!   - PATH is the `handover` built for this test (then /usr/bin:/bin), XDG_RUNTIME_DIR (the
//!     default control socket's directory) and HOME are the test's own.
//!
//!   Each block must exit 0 within 90 s and print what [`RUN`] expects of it.
#![cfg(unix)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");
const THIS_TEST: &str = "crates/handover-cli/tests/docs_blocks.rs";

/// The blocks this test runs: (file, id, what the output must contain, each alternative
/// separated by `|`; an entry given twice must be there twice).
const RUN: &[(&str, &str, &[&str])] = &[
    ("README.md", "upgrade", &["generation 2"]),
    (
        "README.md",
        "metrics",
        &["handover_generation", "handover_workers", "200 OK|503 Service Unavailable"],
    ),
    (
        "docs/config.md",
        "config",
        // web's answer, admin's over the unix socket, then both programs in the status table
        &["hello from the python worker", "hello from the python worker", "web", "admin"],
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Block {
    file: String,
    line: usize,
    /// The line before the fence.
    marker: String,
    text: String,
}

/// The shell blocks of README.md and docs/*.md.
fn blocks() -> Vec<Block> {
    let mut files = vec!["README.md".to_owned()];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let fence = lines[i].trim_start();
            let lang = fence.strip_prefix("```").map(str::trim);
            if let Some(lang @ ("sh" | "bash" | "shell" | "console")) = lang {
                let _ = lang;
                let end = (i + 1..lines.len())
                    .find(|&j| lines[j].trim_start().starts_with("```"))
                    .unwrap_or_else(|| panic!("{file}:{}: unterminated block", i + 1));
                out.push(Block {
                    file: file.clone(),
                    line: i + 1,
                    marker: if i > 0 { lines[i - 1].trim().to_owned() } else { String::new() },
                    text: lines[i + 1..end].join("\n"),
                });
                i = end + 1;
            } else if lang.is_some() {
                // Another language's block (or a closing fence): skip to its end.
                let end = (i + 1..lines.len()).find(|&j| lines[j].trim_start().starts_with("```"));
                i = end.map_or(lines.len(), |e| e + 1);
            } else {
                i += 1;
            }
        }
    }
    out
}

/// The commands of a block: lines without comments, blank lines and trailing `# ...`.
fn commands(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(" #").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The id of a block this test runs, if it is one.
fn run_id(b: &Block) -> Option<&str> {
    b.marker
        .strip_prefix(&format!("<!-- {THIS_TEST} runs the next block: "))
        .and_then(|rest| rest.strip_suffix(" -->"))
}

#[test]
fn every_shell_block_runs_or_says_it_is_illustrative() {
    let blocks = blocks();
    assert!(blocks.len() >= 10, "found only {} shell blocks: is the scan broken?", blocks.len());
    let install_test = read("scripts/install-test.sh");
    let ci = read(".ci/run");
    let ci_lines: Vec<&str> = ci.lines().map(str::trim).collect();
    let mut unmarked = Vec::new();
    for b in &blocks {
        let at = format!("{}:{}", b.file, b.line);
        let m = b.marker.as_str();
        if m == "<!-- illustrative -->" || m.starts_with("<!-- illustrative: ") {
            continue;
        }
        if m.starts_with("<!-- scripts/install-test.sh runs the next block") {
            assert_eq!(b.file, "README.md", "{at}: install-test.sh reads the README only");
            assert!(
                install_test.contains("/^<!-- scripts\\/install-test.sh runs the next block/"),
                "{at}: scripts/install-test.sh no longer looks for this marker"
            );
            continue;
        }
        if m.starts_with("<!-- scripts/install-test.sh runs this command") {
            let cmds = commands(&b.text);
            assert_eq!(cmds, ["cargo install --locked --path crates/handover-cli"], "{at}");
            for part in ["cargo install", "--locked", "--path crates/handover-cli"] {
                assert!(install_test.contains(part), "{at}: install-test.sh has no {part}");
            }
            continue;
        }
        if m.starts_with("<!-- .ci/run runs the next block") {
            for c in commands(&b.text) {
                assert!(ci_lines.contains(&c.as_str()), "{at}: `{c}` is not a line of .ci/run");
            }
            continue;
        }
        if let Some(id) = run_id(b) {
            assert!(
                RUN.iter().any(|(f, i, _)| *f == b.file && *i == id),
                "{at}: marked to run as `{id}`, which {THIS_TEST} does not know"
            );
            continue;
        }
        unmarked.push(at);
    }
    assert!(
        unmarked.is_empty(),
        "shell blocks neither run nor marked <!-- illustrative -->: {unmarked:?}"
    );
    // And every block this test means to run is still there, once.
    for (file, id, _) in RUN {
        let n = blocks.iter().filter(|b| b.file == *file && run_id(b) == Some(id)).count();
        assert_eq!(n, 1, "{file}: the block marked `{id}`");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The ```toml block after docs/config.md's marker line (the one tests/config_doc.rs serves).
fn config_example() -> String {
    let doc = read("docs/config.md");
    let marker = "<!-- crates/handover-cli/tests/config_doc.rs loads this block";
    let after = &doc[doc.find(marker).expect("the marker in docs/config.md")..];
    let block = after.split_once("```toml\n").unwrap().1;
    block.split_once("\n```").unwrap().0.to_owned()
}

#[test]
fn the_blocks_marked_for_this_test_run() {
    let blocks = blocks();
    let bin_dir = Path::new(HANDOVER).parent().unwrap();
    let user = std::env::var("USER").ok().unwrap_or_else(|| {
        let out = Command::new("id").arg("-un").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    });
    for (file, id, expect) in RUN {
        let b = blocks
            .iter()
            .find(|b| b.file == *file && run_id(b) == Some(id))
            .unwrap_or_else(|| panic!("{file}: no block marked `{id}`"));
        let dir = std::env::temp_dir().join(format!("handover-docs-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let d = dir.display().to_string();
        let (http, metrics) = (free_port(), free_port());
        let subst = |t: &str| {
            t.replace("sudo ", "")
                .replace("/run/handover", &format!("{d}/run-handover"))
                .replace("/tmp/h.", &format!("{d}/h."))
                .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
                .replace("127.0.0.1:9100", &format!("127.0.0.1:{metrics}"))
                .replace("--config handover.toml", &format!("--config {d}/handover.toml"))
        };
        std::fs::write(dir.join("handover.toml"), subst(&config_example())).unwrap();
        let script = format!(
            "set -eu\n[ \"$(command -v handover)\" = '{HANDOVER}' ]\n{}\nwait\n",
            subst(&b.text)
        );
        // Output to a file, not a pipe: a supervisor left running (a block that failed
        // half-way, an upgraded generation) would hold a pipe open.
        let out_path = dir.join("out");
        let out = std::fs::File::create(&out_path).unwrap();
        let status = Command::new("timeout")
            .args(["90", "bash", "-c", &script])
            .current_dir(repo())
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("HOME", &dir)
            .env("USER", &user)
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("LANG", "C.UTF-8")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap();
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        // Whatever the block left running goes.
        for control in ["h.sock", "run/handover.sock", "run-handover/control.sock"] {
            let control = dir.join(control);
            if control.exists() {
                let _ = Command::new("timeout")
                    .args(["20", HANDOVER, "stop", "--control"])
                    .arg(&control)
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            status.success(),
            "{file} `{id}`: {status}\n--- script\n{script}\n--- output\n{output}"
        );
        for e in *expect {
            let wanted = expect.iter().filter(|x| *x == e).count();
            assert!(
                e.split('|').any(|alt| output.matches(alt).count() >= wanted),
                "{file} `{id}`: no {e} in the output\n--- script\n{script}\n--- output\n{output}"
            );
        }
    }
}
