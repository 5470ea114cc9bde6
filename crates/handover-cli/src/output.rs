//! Workers' standard output and error through the supervisor (`--worker-output prefix`, the
//! default): each line goes to the supervisor's own stdout or stderr (the stream it was written
//! to), prefixed with the program, slot and pid (`web.2[4242] | GET / 200`), or as one JSON
//! object per line with `--log-format json`, so the output of many processes stays readable.
//!
//! Each worker gets its own pipes (so its lines carry its slot and pid); spawn mode's
//! per-connection children share one pipe per stream and program (a pipe per connection would
//! cost the hand-off more than the rest of a child's start), so their lines carry the program
//! alone. Lines are read by tasks on the supervisor's runtime, which never block it: a task
//! that cannot hand its lines on waits (and its worker's pipe fills, so a worker that floods
//! waits in its own `write`, as it would writing to a slow terminal). One thread writes to the
//! supervisor's stdout and stderr, through a bounded queue, so a stdout nobody reads stalls
//! only the workers that write, never the supervisor. Lines longer than [`MAX_LINE`] are cut
//! into several; a last line without its newline is written when the pipe closes. At exit the
//! supervisor gives the pipes of its (exited) workers a second to be read to the end, and the
//! thread another to write what it has ([`Output::settle`], [`Writer::finish`]).

use std::cell::Cell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::logging::{OutputFile, Stream};
use crate::model::LogFormat;
use crate::sys;

/// Longest line written as one; longer lines are cut.
pub(crate) const MAX_LINE: usize = 16 * 1024;
/// Chunks (each up to one read of a pipe, formatted) queued for the writer thread.
const QUEUE: usize = 32;
const READ: usize = 16 * 1024;

#[derive(Debug)]
struct Chunk {
    stream: Stream,
    bytes: Vec<u8>,
    /// The program's file for this stream, if it has one.
    file: Option<Arc<OutputFile>>,
}

/// A program's `stdout` and `stderr` files, opened when its engine starts.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgramFiles {
    stdout: Option<Arc<OutputFile>>,
    stderr: Option<Arc<OutputFile>>,
}

impl ProgramFiles {
    pub(crate) fn open(prog: &crate::config::ProgramConfig) -> std::io::Result<ProgramFiles> {
        let open = |p: &Option<std::path::PathBuf>| {
            p.as_deref().map(crate::logging::program_file).transpose()
        };
        Ok(ProgramFiles { stdout: open(&prog.stdout_file)?, stderr: open(&prog.stderr_file)? })
    }

    fn for_stream(&self, stream: Stream) -> Option<Arc<OutputFile>> {
        match stream {
            Stream::Stdout => self.stdout.clone(),
            Stream::Stderr => self.stderr.clone(),
        }
    }
}

/// Who wrote a line.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    pub(crate) program: Rc<str>,
    /// The worker's slot and pid (none for spawn mode's children).
    pub(crate) worker: Option<(usize, u32)>,
    /// Where its lines go instead of the supervisor's streams, if anywhere.
    pub(crate) files: ProgramFiles,
}

/// The writer thread's queue, shared by every program's engine.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    tx: mpsc::Sender<Chunk>,
    format: LogFormat,
    /// Pipes being read.
    live: Rc<Cell<usize>>,
}

/// The writer thread, to be let finish at exit.
#[derive(Debug)]
pub(crate) struct Writer {
    done: std::sync::mpsc::Receiver<()>,
}

impl Writer {
    /// Once every [`Output`] is dropped: waits up to `within` for the thread to write what is
    /// queued (it may be stuck on a stdout nobody reads).
    pub(crate) fn finish(self, within: Duration) {
        let _ = self.done.recv_timeout(within);
    }
}

/// The read ends of a worker's pipes, until its pid is known.
#[derive(Debug)]
pub(crate) struct Pending {
    readers: Vec<(Stream, sys::PipeReader)>,
    output: Output,
}

impl Output {
    /// Starts the writer thread.
    pub(crate) fn start(format: LogFormat) -> std::io::Result<(Output, Writer)> {
        let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("worker-output".into()).spawn(move || {
            // Write errors (a closed stdout) drop the lines, counted: nobody is there to read
            // them.
            while let Some(c) = rx.blocking_recv() {
                match &c.file {
                    Some(f) => f.write(&c.bytes),
                    None => crate::logging::write(c.stream, &c.bytes),
                }
            }
            let _ = done_tx.send(());
        })?;
        Ok((Output { tx, format, live: Rc::default() }, Writer { done }))
    }

    /// Waits (at most `within`) until every pipe has been read to its end.
    pub(crate) async fn settle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.live.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Pipes `cmd`'s standard error, and its standard output if `stdout`, for a worker whose
    /// lines [`Pending::start`] begins to read once it runs.
    pub(crate) fn pipes(
        &self,
        cmd: &mut handover::Command<'_>,
        stdout: bool,
    ) -> std::io::Result<Pending> {
        // Both pipes first: a failure leaves `cmd` as it was.
        let err = sys::pipe()?;
        let out = if stdout { Some(sys::pipe()?) } else { None };
        let (err_stdio, out_stdio) =
            (err.0.stdio()?, out.as_ref().map(|o| o.0.stdio()).transpose()?);
        let mut readers = vec![(Stream::Stderr, err.1)];
        cmd.stderr(err_stdio);
        if let (Some(s), Some((_, r))) = (out_stdio, out) {
            cmd.stdout(s);
            readers.push((Stream::Stdout, r));
        }
        Ok(Pending { readers, output: self.clone() })
    }

    /// A pipe shared by many children (spawn mode), read from now on: give each child
    /// [`sys::PipeWriter::stdio`].
    pub(crate) fn shared_pipe(
        &self,
        label: Label,
        stderr: bool,
    ) -> std::io::Result<sys::PipeWriter> {
        let (w, r) = sys::pipe()?;
        let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
        tokio::task::spawn_local(pump(r, stream, label, self.clone()));
        Ok(w)
    }
}

impl Pending {
    /// The worker runs: reads its lines from now on, until its pipes close.
    pub(crate) fn start(self, label: Label) {
        for (stream, r) in self.readers {
            tokio::task::spawn_local(pump(r, stream, label.clone(), self.output.clone()));
        }
    }
}

/// Counts a pipe being read while it lives.
struct Reading(Rc<Cell<usize>>);

impl Reading {
    fn new(live: &Rc<Cell<usize>>) -> Reading {
        live.set(live.get() + 1);
        Reading(Rc::clone(live))
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Reads `r` until it closes, handing its lines on, formatted.
async fn pump(mut r: sys::PipeReader, stream: Stream, label: Label, out: Output) {
    let _reading = Reading::new(&out.live);
    let file = label.files.for_stream(stream);
    let mut buf = vec![0u8; READ];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = Vec::new();
        let mut rest = &buf[..n];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            partial.extend_from_slice(&rest[..i]);
            line(&mut chunk, &label, stream, out.format, &partial);
            partial.clear();
            rest = &rest[i + 1..];
        }
        partial.extend_from_slice(rest);
        while partial.len() >= MAX_LINE {
            line(&mut chunk, &label, stream, out.format, &partial[..MAX_LINE]);
            partial.drain(..MAX_LINE);
        }
        let send = Chunk { stream, bytes: chunk, file: file.clone() };
        if !send.bytes.is_empty() && out.tx.send(send).await.is_err() {
            return;
        }
    }
    if !partial.is_empty() {
        let mut chunk = Vec::new();
        line(&mut chunk, &label, stream, out.format, &partial);
        let _ = out.tx.send(Chunk { stream, bytes: chunk, file }).await;
    }
}

/// Appends one formatted line (with its newline) to `out`.
fn line(out: &mut Vec<u8>, label: &Label, stream: Stream, format: LogFormat, text: &[u8]) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    match format {
        LogFormat::Text => {
            let mut prefix = String::with_capacity(32);
            prefix.push_str(&label.program);
            if let Some((slot, pid)) = label.worker {
                let _ = write!(prefix, ".{slot}[{pid}]");
            }
            prefix.push_str(" | ");
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(text);
        }
        LogFormat::Json => {
            let obj = serde_json::json!({
                "timestamp": rfc3339(SystemTime::now()),
                "program": &*label.program,
                "slot": label.worker.map(|(s, _)| s),
                "pid": label.worker.map(|(_, p)| p),
                "stream": stream.name(),
                "message": String::from_utf8_lossy(text),
            });
            let _ = serde_json::to_writer(&mut *out, &obj);
        }
    }
    out.push(b'\n');
}

/// `2026-04-01T12:34:56.789012Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn label(worker: Option<(usize, u32)>) -> Label {
        Label { program: Rc::from("web"), worker, files: ProgramFiles::default() }
    }

    #[test]
    fn text_lines_carry_program_slot_and_pid() {
        let mut out = Vec::new();
        line(&mut out, &label(Some((2, 4242))), Stream::Stdout, LogFormat::Text, b"GET / 200\r");
        line(&mut out, &label(None), Stream::Stderr, LogFormat::Text, b"oops");
        assert_eq!(String::from_utf8(out).unwrap(), "web.2[4242] | GET / 200\nweb | oops\n");
    }

    #[test]
    fn json_lines_are_one_object_each_even_for_bytes_that_are_not_utf8() {
        let mut out = Vec::new();
        line(&mut out, &label(Some((0, 7))), Stream::Stderr, LogFormat::Json, b"a \"b\" \xff");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["program"], "web");
        assert_eq!((v["slot"].as_u64(), v["pid"].as_u64()), (Some(0), Some(7)));
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["message"], "a \"b\" \u{fffd}");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let at = |s: u64, us: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn long_lines_are_cut_and_a_last_line_without_newline_is_kept() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (tx, mut rx) = mpsc::channel(QUEUE);
                let out = Output { tx, format: LogFormat::Text, live: Rc::default() };
                let script = format!(
                    "head -c {} /dev/zero | tr '\\0' x; printf '\\nshort\\nno newline'",
                    MAX_LINE + 10
                );
                let task = {
                    // Our write end closes at the end of the block: the child's is the last.
                    let (w, r) = sys::pipe().unwrap();
                    let task = tokio::task::spawn_local(pump(r, Stream::Stdout, label(None), out));
                    let st = std::process::Command::new("sh")
                        .args(["-c", &script])
                        .stdout(w.stdio().unwrap())
                        .status()
                        .unwrap();
                    assert!(st.success());
                    task
                };
                task.await.unwrap();
                let mut all = Vec::new();
                while let Ok(c) = rx.try_recv() {
                    all.extend(c.bytes);
                }
                let all = String::from_utf8(all).unwrap();
                let lines: Vec<&str> = all.lines().collect();
                assert_eq!(
                    lines.len(),
                    4,
                    "{:?}",
                    lines.iter().map(|l| l.len()).collect::<Vec<_>>()
                );
                assert_eq!(lines[0].len(), "web | ".len() + MAX_LINE);
                assert_eq!(lines[1], format!("web | {}", "x".repeat(10)));
                assert_eq!(lines[2..], ["web | short", "web | no newline"]);
            })
            .await;
    }
}
