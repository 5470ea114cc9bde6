//! Issue 17: privileges and file-system context per program, applied between fork and exec
//! (`user`, `group` with supplementary groups dropped, `chdir` relative to the configuration
//! file, `umask`, `env_file`, `--env`), a `unix:` listener's mode and owner, and a clear
//! refusal where they are not permitted.
#![cfg(target_os = "linux")] // users, /proc, umask
#![allow(clippy::print_stderr)] // says why a test is skipped when not run as root

mod testenv;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use testenv::{runnable_by_anyone, TestEnv, HANDOVER};

fn output_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn is_root() -> bool {
    output_of("id", &["-u"]) == "0"
}

#[test]
fn issue_17_workers_run_as_the_user_group_directory_umask_and_environment_configured() {
    if !is_root() {
        eprintln!("skipped: switching users needs root (the refusal is tested without it)");
        return;
    }
    let mut env = TestEnv::new("privileges");
    let (uid, gid) = (output_of("id", &["-u", "nobody"]), output_of("id", &["-g", "nobody"]));
    let group = output_of("id", &["-gn", "nobody"]);
    let work = env.dir.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(env.dir.join("app.env"), "# the app's settings\nFROM_FILE=\"f 1\"\n").unwrap();
    let sock = env.dir.join("app.sock");
    let config = env.dir.join("handover.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[listener]]
name = "web"
address = "tcp://127.0.0.1:0"

[[listener]]
name = "sock"
address = "unix:{sock}"
mode = "0660"
owner = "nobody"
group = "{group}"

[[program]]
command = ["sh", "-c", "id -u; id -g; grep ^Groups: /proc/self/status; pwd; umask; echo \"$FROM_FILE|$FROM_FLAG|$FROM_TABLE\"; touch created"]
mode = "spawn"
listeners = ["web", "sock"]
user = "nobody"
chdir = "work"
umask = "027"
env_file = "app.env"
env = {{ FROM_TABLE = "t" }}
"#,
            sock = sock.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    env.serve(&["--config", cfg, "--env", "FROM_FLAG=g"], &[]);
    let addr = env.wait_ready(1);

    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 6, "{text}\n{}", env.log_text());
    assert_eq!(lines[0], uid, "uid");
    assert_eq!(lines[1], gid, "gid");
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["Groups:"], "root's groups kept");
    assert_eq!(lines[3], work.to_str().unwrap(), "chdir relative to the configuration file");
    assert_eq!(lines[4], "0027", "umask");
    assert_eq!(lines[5], "f 1|g|t", "env_file, --env, env");
    let created = std::fs::metadata(work.join("created")).unwrap();
    assert_eq!(created.mode() & 0o777, 0o640, "a file the worker made, under umask 027");
    assert_eq!(created.uid().to_string(), uid);

    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the socket file's mode");
    assert_eq!((meta.uid().to_string(), meta.gid().to_string()), (uid, gid), "its owner");
}

#[test]
fn issue_17_another_user_is_refused_clearly_when_the_supervisor_is_not_root() {
    if !is_root() {
        eprintln!("skipped: the test runs the supervisor as nobody, which needs root to start");
        return;
    }
    let env = TestEnv::new("privileges-refused");
    let control = env.dir.join("c.sock");
    let out = Command::new(runnable_by_anyone(HANDOVER))
        .args(["serve", "--user", "root", "--listen", "tcp://127.0.0.1:0", "--control"])
        .arg(&control)
        .args(["--", "true"])
        .uid(65534)
        .gid(65534)
        .current_dir(&env.dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot run as user \"root\": only root may start programs"), "{err}");

    let config = env.dir.join("h.toml");
    std::fs::write(
        &config,
        "[[listener]]\nname = \"s\"\naddress = \"unix:/tmp/never.sock\"\nowner = \"root\"\n\n\
         [[program]]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let out = Command::new(runnable_by_anyone(HANDOVER))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--control")
        .arg(&control)
        .uid(65534)
        .gid(65534)
        .current_dir(&env.dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("only root may give the socket file to another user"), "{err}");
}
