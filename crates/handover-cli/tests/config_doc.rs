//! docs/config.md, the configuration reference, against the code: its complete example loads
//! and serves as written (paths and ports moved to this test's own), and its tables list
//! exactly the keys the file reader accepts.
#![cfg(unix)] // the example has a unix: listener

mod testenv;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testenv::{get, TestEnv, HANDOVER};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

/// The ```toml block right after the marker line.
fn example(doc: &str) -> String {
    let marker = "<!-- crates/handover-cli/tests/config_doc.rs loads this block";
    let after = &doc[doc.find(marker).expect("the marker line in docs/config.md")..];
    let block = after.split_once("```toml\n").expect("a toml block after the marker").1;
    block.split_once("\n```").expect("the block's end").0.to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_over(mut s: impl Read + Write, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    got
}

#[test]
fn the_complete_example_serves() {
    assert!(testenv::have_python(), "python3 missing (scripts/setup.sh installs it)");
    let mut env = TestEnv::new("config-doc");
    let toml = example(&read("docs/config.md"));
    for written in ["/run/handover/", "127.0.0.1:8080", "127.0.0.1:9100"] {
        assert!(toml.contains(written), "the example no longer has {written}: update this test");
    }
    let (http, metrics) = (free_port(), free_port());
    let toml = toml
        .replace("/run/handover/", &format!("{}/", env.dir.display()))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:9100", &format!("127.0.0.1:{metrics}"));
    let file = env.dir.join("handover.toml");
    std::fs::write(&file, &toml).unwrap();
    assert_eq!(env.control, env.dir.join("control.sock"), "the file's control is the test's");

    // As the page says: from the checkout, only --config.
    let log = std::fs::File::create(&env.log).unwrap();
    let child = Command::new(HANDOVER)
        .args(["serve", "--config"])
        .arg(&file)
        .current_dir(repo())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    env.child = Some(child);

    // Both programs up: web's 4 prefork workers ready, admin's shared worker running.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = env.status() {
            let count = |i: usize, state: &str| {
                s["programs"][i]["workers"]
                    .as_array()
                    .map_or(0, |w| w.iter().filter(|w| w["state"] == state).count())
            };
            if count(0, "ready") == 4 && count(1, "running") + count(1, "ready") == 1 {
                break s;
            }
        }
        assert!(env.running(), "the supervisor exited:\n{}", env.log_text());
        assert!(Instant::now() < deadline, "not ready in time:\n{}", env.log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    let programs: Vec<(&str, &str)> = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(programs, [("web", "prefork"), ("admin", "shared")], "{status}");

    let web = get(format!("127.0.0.1:{http}").parse().unwrap()).unwrap();
    assert!(web.contains("hello from the python worker"), "web: {web}");
    let admin = UnixStream::connect(env.dir.join("admin.sock")).unwrap();
    admin.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let admin = http_over(admin, "/");
    assert!(
        admin.starts_with("HTTP/1.") && admin.contains("hello from the python worker"),
        "{admin}"
    );
    let m = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let m = http_over(m, "/metrics");
    assert!(m.contains("handover_workers{program=\"web\""), "metrics: {m}");
    let pid: u32 =
        std::fs::read_to_string(env.dir.join("handover.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(pid, env.pid(), "pid_file");

    let (ok, out) = env.handover("stop", &[]);
    assert!(ok, "stop: {out}");
    let st = env.wait_exit(Duration::from_secs(40));
    assert!(st.success(), "{st}:\n{}", env.log_text());
}

/// The `name: Type` fields of `struct NAME { ... }` in config.rs: the keys the file takes.
fn fields(src: &str, name: &str) -> Vec<String> {
    let start = src.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("struct {name}"));
    let body = &src[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .skip(1)
        .filter_map(|l| l.trim().strip_suffix(',')?.split_once(':'))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.starts_with("//") && !k.starts_with('#'))
        .collect()
}

/// The `key` column of the table under `heading` in config.md.
fn documented(doc: &str, heading: &str) -> Vec<String> {
    let at = doc.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("{heading}"));
    let section = &doc[at + heading.len() + 2..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once('`'))
        .map(|(k, _)| k.to_owned())
        .collect()
}

#[test]
fn every_key_the_file_takes_is_documented_and_no_other() {
    let src = read("crates/handover-cli/src/config.rs");
    let doc = read("docs/config.md");
    for (structure, heading) in [
        ("FileConfig", "## Top-level keys"),
        ("FileListener", "## `[[listener]]`"),
        ("FileProgram", "## `[[program]]`"),
    ] {
        let mut keys = fields(&src, structure);
        let mut docs = documented(&doc, heading);
        assert!(keys.len() >= 4, "{structure}: parsed {keys:?}");
        keys.sort();
        docs.sort();
        assert_eq!(keys, docs, "{structure} (left) vs docs/config.md {heading} (right)");
    }
}

/// The TOML in the docs cannot drift either: the example above is the only TOML block in the
/// README and docs/ that is not marked `<!-- illustrative -->` on the line before it, so a new
/// one has to come with a test of its own (or be added here), or say it is not run.
#[test]
fn the_tested_example_is_the_only_toml_block_in_the_docs() {
    let mut files = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "md") {
            files.push(path);
        }
    }
    let mut blocks = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let marked = i > 0 && lines[i - 1].trim() == "<!-- illustrative -->";
            if line.trim_start().starts_with("```toml") && !marked {
                blocks.push(format!("{}:{}", f.strip_prefix(repo()).unwrap().display(), i + 1));
            }
        }
    }
    assert_eq!(blocks.len(), 1, "TOML blocks: {blocks:?}");
    assert!(blocks[0].starts_with("docs/config.md:"), "{blocks:?}");
}
