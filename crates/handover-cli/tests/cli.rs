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
