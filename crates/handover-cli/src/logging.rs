//! Where the supervisor's own log lines and its workers' prefixed output are written, and what
//! happens when a write fails.
//!
//! The supervisor must never die from its own output: a closed stderr (`handover serve … 2>&1
//! | head -1`, a log shipper that restarts) makes writes fail with `EPIPE` (`SIGPIPE` is
//! ignored, see `sys`), and such a write is dropped and counted ([`dropped`]; `status` and
//! `handover_log_writes_dropped_total`), never a panic. tracing-subscriber's own report of a
//! failed write (an `eprintln!`, which panics when stderr is closed) never runs, since this
//! writer never fails.
//!
//! With `--log-file PATH` both go to that file instead (opened for appending), and
//! [`reopen`] (on `SIGUSR1`) opens the path again, so `logrotate` can rename the file and ask
//! for a new one, as it does for nginx and gunicorn. A line is written whole by one `write`
//! under a lock, so lines never interleave and each lands in exactly one of the two files.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

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

/// The log file, once `--log-file` is set.
static FILE: Mutex<Option<LogFile>> = Mutex::new(None);

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
}

fn open(path: &Path) -> io::Result<File> {
    File::options().create(true).append(true).open(path)
}

/// From now on, everything goes to the file at `path` (created if missing, appended to).
pub(crate) fn set_file(path: &Path) -> io::Result<()> {
    let file = open(path)?;
    *lock() = Some(LogFile { path: path.to_owned(), file });
    Ok(())
}

/// Opens the log file's path and every program's `stdout`/`stderr` file again (after
/// logrotate renamed them): the paths reopened, and those that could not be (writing goes on
/// to the file already open).
pub(crate) fn reopen() -> (Vec<PathBuf>, Vec<(PathBuf, io::Error)>) {
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    let mut reopen_one = |path: &Path, file: &mut File| match open(path) {
        Ok(f) => {
            *file = f;
            done.push(path.to_owned());
        }
        Err(e) => failed.push((path.to_owned(), e)),
    };
    if let Some(current) = lock().as_mut() {
        reopen_one(&current.path, &mut current.file);
    }
    for f in program_files().iter().filter_map(Weak::upgrade) {
        let mut file = f.file.lock().unwrap_or_else(|e| e.into_inner());
        reopen_one(&f.path, &mut file);
    }
    (done, failed)
}

/// A program's `stdout` or `stderr` file (`[[program]]` keys): its workers' prefixed lines
/// from that stream are appended to it instead, whole lines under its lock; reopened by
/// [`reopen`] with the log file.
#[derive(Debug)]
pub(crate) struct OutputFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl OutputFile {
    /// Writes whole lines; a failure drops them and counts one.
    pub(crate) fn write(&self, bytes: &[u8]) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.write_all(bytes).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The program files open, so [`reopen`] finds them.
static PROGRAM_FILES: Mutex<Vec<Weak<OutputFile>>> = Mutex::new(Vec::new());

fn program_files() -> std::sync::MutexGuard<'static, Vec<Weak<OutputFile>>> {
    PROGRAM_FILES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The file at `path`, opened for appending (created if missing), or the one already open
/// there (two programs, or both streams, may share a file).
pub(crate) fn program_file(path: &Path) -> io::Result<Arc<OutputFile>> {
    let mut files = program_files();
    files.retain(|w| w.strong_count() > 0);
    if let Some(f) = files.iter().filter_map(Weak::upgrade).find(|f| f.path == path) {
        return Ok(f);
    }
    let f = Arc::new(OutputFile { path: path.to_owned(), file: Mutex::new(open(path)?) });
    files.push(Arc::downgrade(&f));
    Ok(f)
}

/// Whether the log goes to a file.
pub(crate) fn to_file() -> bool {
    lock().is_some()
}

fn lock() -> std::sync::MutexGuard<'static, Option<LogFile>> {
    // A writer that panicked mid-write leaves the file usable.
    FILE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes that failed and were dropped since start.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes `bytes` (whole lines) to the log file, or else to `stream`; a failure drops them and
/// counts one.
pub(crate) fn write(stream: Stream, bytes: &[u8]) {
    let mut file = lock();
    let result = match file.as_mut() {
        Some(f) => f.file.write_all(bytes),
        None => {
            // Not under the file's lock: a stdout nobody reads blocks only its own writer (the
            // worker-output thread), never the supervisor's log lines on stderr.
            drop(file);
            match stream {
                Stream::Stdout => {
                    let mut out = io::stdout().lock();
                    out.write_all(bytes).and_then(|()| out.flush())
                }
                Stream::Stderr => io::stderr().lock().write_all(bytes),
            }
        }
    };
    if result.is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The supervisor's own log lines: stderr, or the log file; never fails.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_file_is_appended_to_and_reopened_at_its_path() {
        let dir = std::env::temp_dir().join(format!("handover-logging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.log");
        let _ = std::fs::remove_file(&path);
        set_file(&path).unwrap();
        write(Stream::Stdout, b"one\n");
        std::fs::rename(&path, dir.join("h.log.1")).unwrap();
        write(Stream::Stderr, b"two\n");
        let (done, failed) = reopen();
        assert_eq!(done, std::slice::from_ref(&path));
        assert!(failed.is_empty());
        write(Stream::Stderr, b"three\n");
        assert_eq!(std::fs::read_to_string(dir.join("h.log.1")).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        assert_eq!(dropped(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
