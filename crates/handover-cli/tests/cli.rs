//! The command line: bad input gives one clear line and a non-zero exit; help explains modes.
#![cfg(unix)] // drives a Unix supervisor (tests/wine.rs drives the Windows one)

mod testenv;

use std::process::Command;

use testenv::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(HANDOVER).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line_error(args: &[&str], code: i32, needle: &str) {
    let (c, _, err) = run(args);
    assert_eq!(c, code, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    if c != 2 || !err.contains("Usage") {
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn help_explains_every_mode() {
    let (c, out, _) = run(&["serve", "--help"]);
    assert_eq!(c, 0);
    for word in ["prefork", "spawn", "shared", "LISTEN_FDS", "handover serve --mode spawn"] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
}

#[test]
fn bad_input_fails_clearly() {
    let env = TestEnv::new("cli");
    let ctl = env.dir.join("c.sock");
    let ctl = ctl.to_str().unwrap();
    one_line_error(&["serve", "--bogus"], 2, "--bogus");
    one_line_error(
        &["serve", "-l", "tcp://999.1.1.1:80", "--control", ctl, "--", DEMO_WORKER],
        2,
        "bad listen address",
    );
    one_line_error(
        &["serve", "-l", "http://127.0.0.1:80", "--control", ctl, "--", DEMO_WORKER],
        2,
        "expected tcp://",
    );
    one_line_error(
        &["serve", "-l", "tcp://127.0.0.1:0", "--control", ctl, "--", "/nonexistent/worker"],
        2,
        "no such file",
    );
    one_line_error(
        &["serve", "-l", "tcp://127.0.0.1:0", "--control", ctl, "--", "no-such-cmd-xyz"],
        2,
        "not found in PATH",
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", busy.local_addr().unwrap());
    one_line_error(
        &["serve", "-l", &addr, "--control", ctl, "--", DEMO_WORKER],
        1,
        "address already in use",
    );
    one_line_error(&["status", "--control", ctl], 1, "cannot reach a supervisor");
}

#[test]
fn second_supervisor_on_the_same_control_socket_is_refused() {
    let mut env = TestEnv::new("twice");
    env.serve(&["-l", "tcp://127.0.0.1:0", "-w", "1"], &[DEMO_WORKER]);
    env.wait_ready(1);
    let ctl = env.control.to_str().unwrap().to_owned();
    one_line_error(
        &["serve", "-l", "tcp://127.0.0.1:0", "--control", &ctl, "--", DEMO_WORKER],
        1,
        "another supervisor",
    );
    let (c, out, _) = run(&["status", "--control", &ctl]);
    assert_eq!(c, 0);
    assert!(out.contains("SLOT") && out.contains("ready"), "{out}");
}

/// Issue 17: `handover check` validates a configuration as `serve` reads it, without serving,
/// prints the plan and exits 0, or says what is wrong and exits 2.
#[test]
fn issue_17_check_prints_the_plan_or_refuses_with_exit_2() {
    let env = TestEnv::new("check");
    let write = |name: &str, text: &str| {
        let path = env.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = write(
        "good.toml",
        r#"
[[listener]]
name = "web"
address = "tcp://127.0.0.1:0"
policy = "least-connections"

[[program]]
name = "app"
command = ["sh", "-c", "exec true"]
workers = 3
umask = "027"
env = { K = "v" }
"#,
    );
    let (c, out, err) = run(&["check", "-c", &good]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("listener web tcp://127.0.0.1:0 (policy least-connections"), "{out}");
    let sh = ["/usr/bin/sh", "/bin/sh"].into_iter().find(|p| out.contains(*p));
    assert!(sh.is_some(), "the command resolved through PATH: {out}");
    assert!(out.contains("program app: prefork mode, 3 worker(s), listeners [web]"), "{out}");
    assert!(out.contains("umask 027") && out.contains("environment sets K"), "{out}");
    assert!(out.trim_end().ends_with("configuration ok"), "{out}");

    // The same with flags; nothing is bound, so a port in use does not matter.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", busy.local_addr().unwrap());
    let (c, out, err) = run(&["check", "-l", &addr, "--", "sh"]);
    assert_eq!(c, 0, "{out}{err}");

    let bad = [
        ("command", "[[listener]]\nname = \"w\"\naddress = \"tcp://127.0.0.1:0\"\n[[program]]\ncommand = [\"no-such-program-here\"]\n", "\"no-such-program-here\" not found in PATH"),
        ("address", "[[listener]]\nname = \"w\"\naddress = \"tcp://localhost:notaport\"\n[[program]]\ncommand = [\"sh\"]\n", "listener \"w\""),
        ("user", "[[listener]]\nname = \"w\"\naddress = \"tcp://127.0.0.1:0\"\n[[program]]\ncommand = [\"sh\"]\nuser = \"no-such-user-here\"\n", "user \"no-such-user-here\": no such user"),
        ("group", "[[listener]]\nname = \"w\"\naddress = \"unix:/tmp/x.sock\"\ngroup = \"no-such-group-here\"\n[[program]]\ncommand = [\"sh\"]\n", "group \"no-such-group-here\": no such group"),
    ];
    for (what, text, needle) in bad {
        let path = write(&format!("{what}.toml"), text);
        let (c, out, err) = run(&["check", "-c", &path]);
        assert_eq!(c, 2, "{what}: {out}{err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(!out.contains("configuration ok"), "{what}: {out}");
    }
}
