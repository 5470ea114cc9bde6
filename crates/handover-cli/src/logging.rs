//! Where the supervisor's own log lines and its workers' prefixed output are written, and what
//! happens when a write fails.
//!
//! The supervisor must never die from its own output: a closed stderr (`handover serve … 2>&1
//! | head -1`, a log shipper that restarts) makes writes fail with `EPIPE` (`SIGPIPE` is
//! ignored, see `sys`), and such a write is dropped and counted ([`dropped`]; `status` and
//! `handover_log_writes_dropped_total`), never a panic. tracing-subscriber's own report of a
//! failed write (an `eprintln!`, which panics when stderr is closed) never runs, since this
//! writer never fails.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which standard stream a write is meant for (used when there is no log file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`, as the JSON worker output labels a line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes dropped since start because the stream or file failed.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Writes that failed and were dropped since start.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes `bytes` (whole lines) to `stream`; a failure drops them and
/// counts one.
pub(crate) fn write(stream: Stream, bytes: &[u8]) {
    let result = match stream {
        Stream::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Stream::Stderr => io::stderr().lock().write_all(bytes),
    };
    if result.is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The supervisor's own log lines: stderr; never fails.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MakeLogWriter;

/// One log event's writer (tracing-subscriber formats an event, then writes it in one call).
#[derive(Debug)]
pub(crate) struct LogWriter;

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write(Stream::Stderr, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// A line on stderr that is the program's last word (an error at exit): dropped and counted if
/// stderr is closed, never a panic as `eprintln!` would.
pub(crate) fn last_words(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    if io::stderr().lock().write_all(text.as_bytes()).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}
