//! The example Rust worker: answers every connection with a tiny HTTP response, in whichever
//! mode the supervisor runs it.
//!
//! - prefork: a control channel was inherited; connections arrive over it
//!   ([`handover_worker::Worker`] speaks the protocol), served by a pool of `--capacity`
//!   threads.
//! - shared: listening sockets were inherited (`LISTEN_FDS`); `--capacity` threads accept.
//! - spawn: one connected socket as descriptor 3 (`LISTEN_FDS=1`) or on standard input.
//!
//! ```text
//! handover serve --listen tcp://127.0.0.1:8080 -- target/debug/handover-demo-worker
//! curl http://127.0.0.1:8080/
//! ```
//!
//! `--misbehave MODE` makes it break the protocol on purpose (the supervisor's tests use it):
//! `exit` (exit 1 at once), `garbage` (garbage instead of an ACK), `wrong-ack`, `never-ack`,
//! `die-before-ack` (take connections, never acknowledge, exit after `--count` of them).
//! With `--once FILE` only the first worker to create FILE misbehaves.
//!
//! Also for the tests: `--leak-kb N` keeps N KiB (touched) per request served, `--log-requests`
//! writes a line to stdout per request (and one to stderr at start), `--flood-stdout` writes to
//! stdout without end, `--start-delay-ms N` waits before its hello (or before accepting).
//! A request for `/sleep/MS` is answered after MS milliseconds (instead of `--delay-ms`).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)] // a program, not a library

#[cfg(unix)]
mod unix;

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("handover-demo-worker: Unix only until the Windows supervisor modes exist");
    std::process::exit(2);
}
