//! The classic multi-process server: the parent accepts, a child process serves each client.
//!
//! ```text
//! cargo run -p handover --example classic_server -- 127.0.0.1:7000 [--mode inherit|channel|alternate] [--max-conns N] [--http]
//! ```
//!
//! For every connection the parent spawns this same program as a child and hands it the
//! accepted socket, in one of two ways:
//!
//! - `inherit`: the socket is given at spawn, systemd style (descriptor 3, `LISTEN_FDS=1`);
//! - `channel`: the child starts with a channel to the parent, and the socket is sent over it
//!   after the child is running (the Unix `SCM_RIGHTS` flow; on Windows, the
//!   `WSADuplicateSocketW` flow of the classic pattern).
//!
//! Either way the child gets only that socket — not the listener, not the parent's other
//! descriptors — and the parent drops its copy and goes back to `accept`. The child speaks a
//! tiny line protocol: it greets, then echoes each line upper-cased until `quit` or EOF. With
//! `--http` it answers one HTTP request instead (what `bench/wine.sh` measures it with).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

use handover::{AsSocketRef, Command};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("--child") => child(
            args.get(1).map(String::as_str).unwrap_or(""),
            args.get(2).is_some_and(|a| a == "--http"),
        ),
        Some(addr) if !addr.starts_with('-') => parent(addr, &args[1..]),
        _ => Err("usage: classic_server ADDR [--mode inherit|channel|alternate] [--max-conns N] \
                 [--http]"
            .into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("classic_server: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn parent(addr: &str, opts: &[String]) -> Res {
    let mut mode = "alternate".to_owned();
    let mut max_conns = usize::MAX;
    let mut http = false;
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        match opt.as_str() {
            "--http" => http = true,
            "--mode" => mode = it.next().ok_or("--mode needs a value")?.clone(),
            "--max-conns" => max_conns = it.next().ok_or("--max-conns needs a value")?.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if !["inherit", "channel", "alternate"].contains(&mode.as_str()) {
        return Err(format!("unknown mode {mode}: use inherit, channel or alternate").into());
    }
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("parent {}: listening on {}", std::process::id(), listener.local_addr()?);
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for n in 0..max_conns {
        let (stream, peer) = listener.accept()?;
        let via = match mode.as_str() {
            "alternate" if n % 2 == 0 => "inherit",
            "alternate" => "channel",
            m => m,
        };
        let flags: &[&str] = if http { &["--http"] } else { &[] };
        let child = match via {
            "inherit" => Command::new(&exe)
                .args(["--child", "inherit"])
                .args(flags)
                .listen_socket("connection", stream.as_socket_ref())
                .spawn()?,
            _ => {
                let mut child = Command::new(&exe)
                    .args(["--child", "channel"])
                    .args(flags)
                    .channel()
                    .spawn()?;
                let channel = child.channel.take().expect("spawned with a channel");
                channel.send(peer.to_string().as_bytes(), &[stream.as_socket_ref()])?;
                child
            }
        };
        // The child holds its own copy; ours closes here so only the child serves the client.
        drop(stream);
        if !http {
            println!("parent: connection {n} from {peer} -> child {} ({via})", child.id());
        }
        children.push(child);
        // Reap the children that are done, keep the rest.
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
    for mut c in children {
        c.wait()?;
    }
    Ok(())
}

fn child(via: &str, http: bool) -> Res {
    let mut inherited = handover::inherited()?;
    let socket = match via {
        "inherit" => inherited.take("connection").ok_or("no inherited connection")?,
        "channel" => {
            let channel = inherited.channel.take().ok_or("no channel to the parent")?;
            let msg = channel.recv()?;
            msg.sockets.into_iter().next().ok_or("the parent sent no socket")?
        }
        _ => return Err(format!("unknown child mode {via:?}").into()),
    };
    let stream = TcpStream::try_from(socket)?;
    if http {
        return serve_http(&stream);
    }
    serve(&stream, via)
}

/// Reads one HTTP request (up to the blank line) and answers it.
fn serve_http(stream: &TcpStream) -> Res {
    use std::io::Read;
    let (mut buf, mut len) = ([0u8; 4096], 0);
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match (&mut &*stream).read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
    }
    let body = format!("hello from the classic child {}\n", std::process::id());
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

fn serve(stream: &TcpStream, via: &str) -> Res {
    let mut out = stream;
    writeln!(
        out,
        "hello {}, this is child {} (socket received via {via}); {}",
        stream.peer_addr()?,
        std::process::id(),
        describe_descriptors()
    )?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim() == "quit" {
            writeln!(out, "bye")?;
            break;
        }
        writeln!(out, "{}", line.to_uppercase())?;
    }
    Ok(())
}

/// On Linux, what this child holds: the standard streams and the one connection.
fn describe_descriptors() -> String {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => {
            // Minus one: the directory being read.
            let n = dir.count().saturating_sub(1);
            format!("I hold {n} descriptors (stdin, stdout, stderr and your connection)")
        }
        Err(_) => "type lines, `quit` to end".to_owned(),
    }
}
