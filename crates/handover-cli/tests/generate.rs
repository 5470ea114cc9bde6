//! `handover completions SHELL` and `handover man`: what they print loads in the real tools.
#![cfg(unix)] // bash and man(1)

use std::io::Write;
use std::process::{Command, Output, Stdio};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

fn handover(args: &[&str]) -> Output {
    let out = Command::new(HANDOVER).args(args).output().expect("run handover");
    assert!(out.status.success(), "handover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `bash -c SCRIPT` with the completion script as `$1`; returns its stdout.
fn bash(completions: &std::path::Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script, "bash"])
        .arg(completions)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(out.status.success(), "bash -c {script:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_completions_load_and_complete_subcommands_flags_and_values() {
    let script = handover(&["completions", "bash"]).stdout;
    let dir =
        std::env::temp_dir().join(format!("handover-test-completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("handover.bash");
    std::fs::File::create(&file).unwrap().write_all(&script).unwrap();

    // It parses, and once sourced bash completes `handover` with it.
    bash(&file, "bash -n \"$1\"");
    let registered = bash(&file, "source \"$1\" && complete -p handover");
    assert!(registered.contains("-F _handover handover"), "complete -p: {registered}");

    // And it completes from the clap definition: subcommands, flags, and a flag's values.
    let complete = |words: &str, cword: usize| {
        let s = format!(
            "source \"$1\"; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _handover handover \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        bash(&file, &s)
    };
    assert_eq!(complete("handover se", 1).trim(), "serve");
    assert!(complete("handover serve --dr", 2).lines().any(|l| l == "--drain-timeout"));
    let modes = complete("handover serve --mode ''", 3);
    assert_eq!(modes.split_whitespace().collect::<Vec<_>>(), ["prefork", "spawn", "shared"]);
    let shells = complete("handover completions ''", 2);
    assert!(shells.split_whitespace().any(|s| s == "powershell"), "{shells}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_for_every_shell_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = String::from_utf8(handover(&["completions", shell]).stdout).unwrap();
        for sub in
            ["serve", "check", "status", "reload", "scale", "stop", "upgrade", "completions", "man"]
        {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = Command::new(HANDOVER).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    let out = Command::new(HANDOVER).args(["man", "serv"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "so is an unknown subcommand's page");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one of: serve, check, status"), "{err}");
}

/// `man -l` renders the page (man-db, from scripts/setup.sh) with its sections.
#[test]
fn man_pages_render_with_man() {
    for (args, title, wants) in [
        (&["man"][..], "handover(1)", &["SYNOPSIS", "SUBCOMMANDS", "handover-serve(1)"][..]),
        (&["man", "serve"], "handover-serve(1)", &["--drain-timeout", "prefork", "shared"]),
    ] {
        let page = handover(args).stdout;
        let mut man = Command::new("man")
            .args(["-l", "-"])
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run man (apt-get install man-db; scripts/setup.sh does)");
        man.stdin.take().unwrap().write_all(&page).unwrap();
        let out = man.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "man -l: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.trim_start().starts_with(title), "{args:?} renders as:\n{text}");
        for want in wants {
            assert!(text.contains(want), "{args:?}: no {want:?} in:\n{text}");
        }
        // Warnings from the formatter mean a malformed page.
        assert!(out.stderr.is_empty(), "man -l warns: {}", String::from_utf8_lossy(&out.stderr));
    }
}
