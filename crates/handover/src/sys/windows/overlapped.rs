//! A non-blocking byte stream over an overlapped pipe handle (the model is mio's `NamedPipe`).
//!
//! Each direction owns one `OVERLAPPED`, one manual-reset event and one 64 KiB buffer, all
//! boxed so their addresses stay fixed while the kernel holds them. A read fills the buffer in
//! the background and `recv` hands its bytes out; `send` copies bytes into the write buffer and
//! starts one write, so the caller sees ordinary `WouldBlock` semantics: `recv` blocks while the
//! read is pending and nothing is buffered, `send` while the previous write is pending. `wait`
//! blocks on the pending operation's event. On drop a pending write gets a bounded time to
//! finish (so a message sent just before close is delivered), then everything still pending is
//! cancelled and waited for before the buffers are freed.

use std::cell::UnsafeCell;
use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    ERROR_BROKEN_PIPE, ERROR_HANDLE_EOF, ERROR_IO_INCOMPLETE, ERROR_IO_PENDING, ERROR_NO_DATA,
    ERROR_OPERATION_ABORTED, ERROR_PIPE_NOT_CONNECTED, HANDLE, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::Threading::{WaitForSingleObject, INFINITE};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use super::handle::event;

const BUF_LEN: usize = 64 * 1024;
/// How long dropping a channel waits for its last write to reach the pipe.
const FLUSH_ON_DROP: Duration = Duration::from_secs(5);

/// What to wait for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Interest {
    Readable,
    Writable,
}

/// What one `recv` returned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    /// Bytes read; 0 at end of stream.
    pub(crate) len: usize,
    /// Never set on Windows: sockets travel inline, there is no control data to cut off.
    pub(crate) truncated: bool,
}

/// One direction's operation: the `OVERLAPPED`, its event and its buffer.
struct Op {
    ov: Box<UnsafeCell<OVERLAPPED>>,
    buf: Box<UnsafeCell<[u8; BUF_LEN]>>,
    event: OwnedHandle,
    pending: bool,
}

// SAFETY: the raw pointers inside OVERLAPPED (the event handle) are process-wide kernel
// handles, and the buffers are plain memory; the kernel's writes while an operation is
// pending are synchronised by the Mutex around each Op and by GetOverlappedResult.
unsafe impl Send for Op {}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").field("pending", &self.pending).finish_non_exhaustive()
    }
}

impl Op {
    fn new() -> io::Result<Op> {
        let event = event()?;
        // SAFETY: OVERLAPPED is plain old data, for which all-zero is a valid value.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = event.as_raw_handle() as HANDLE;
        Ok(Op {
            ov: Box::new(UnsafeCell::new(ov)),
            buf: Box::new(UnsafeCell::new([0; BUF_LEN])),
            event,
            pending: false,
        })
    }

    fn ov(&self) -> *mut OVERLAPPED {
        self.ov.get()
    }

    fn buf(&self) -> *mut u8 {
        self.buf.get().cast()
    }

    /// The result of the pending operation (`ERROR_IO_INCOMPLETE` while it runs, unless
    /// `wait`), with the bytes it transferred, which a failed or cancelled one reports too.
    fn result(&mut self, h: HANDLE, wait: bool) -> (io::Result<()>, usize) {
        let mut n = 0u32;
        let res = syscall!(
            // SAFETY: ov is the OVERLAPPED of an operation started on h, alive and pinned in its
            // Box; n is valid for writes.
            unsafe { GetOverlappedResult(h, self.ov(), &mut n, wait.into()) },
            PartialEq::eq,
            0
        );
        match res {
            Err(e) if e.raw_os_error() == Some(ERROR_IO_INCOMPLETE as i32) => (Err(e), 0),
            Err(e) => {
                self.pending = false;
                (Err(e), n as usize)
            }
            Ok(_) => {
                self.pending = false;
                (Ok(()), n as usize)
            }
        }
    }

    /// Waits for the pending operation, at most until `deadline`; then cancels it and waits
    /// for the cancellation, so the kernel no longer touches the buffers.
    fn settle(&mut self, h: HANDLE, deadline: Option<Instant>) {
        if !self.pending {
            return;
        }
        if let Some(deadline) = deadline {
            let _ = wait_event(&self.event, Some(deadline));
        }
        // SAFETY: ov belongs to an operation started on h; cancelling a finished operation
        // fails harmlessly with ERROR_NOT_FOUND.
        let _ = unsafe { CancelIoEx(h, self.ov()) };
        let _ = self.result(h, true);
        self.pending = false;
    }
}

#[derive(Debug)]
struct ReadState {
    op: Op,
    start: usize,
    end: usize,
    eof: bool,
}

#[derive(Debug)]
struct WriteState {
    op: Op,
    /// Bytes of the buffer the write in flight covers, from `done`.
    len: usize,
    /// Bytes of the buffer already written by earlier completions.
    done: usize,
}

/// An overlapped pipe handle with one read and one write in flight at most.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: Mutex<ReadState>,
    write: Mutex<WriteState>,
    handle: OwnedHandle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_eof(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(|c| c as u32),
        Some(ERROR_BROKEN_PIPE | ERROR_PIPE_NOT_CONNECTED | ERROR_HANDLE_EOF | ERROR_NO_DATA)
    )
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl Pipe {
    /// Adopts `handle`, which must have been opened with `FILE_FLAG_OVERLAPPED`.
    pub(crate) fn new(handle: OwnedHandle) -> io::Result<Pipe> {
        Ok(Pipe {
            read: Mutex::new(ReadState { op: Op::new()?, start: 0, end: 0, eof: false }),
            write: Mutex::new(WriteState { op: Op::new()?, len: 0, done: 0 }),
            handle,
        })
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// Copies buffered bytes into `buf`, starting a read when none are buffered; 0 at end of
    /// stream, `WouldBlock` while a read is in flight.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let h = self.raw();
        let mut st = lock(&self.read);
        loop {
            if st.op.pending {
                match st.op.result(h, false) {
                    (Ok(()), n) => {
                        debug_assert!(n <= BUF_LEN);
                        (st.start, st.end) = (0, n.min(BUF_LEN));
                    }
                    (Err(e), _) if e.raw_os_error() == Some(ERROR_IO_INCOMPLETE as i32) => {
                        return Err(would_block())
                    }
                    (Err(e), _) if is_eof(&e) => st.eof = true,
                    // The thread that started the read has exited, which cancels its I/O; a
                    // cancelled pipe read took no data. Start another.
                    (Err(e), 0) if e.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) => {}
                    (Err(e), _) => return Err(e),
                }
            }
            if st.start < st.end {
                let n = (st.end - st.start).min(buf.len());
                // SAFETY: no read is pending (checked above), so nothing else touches the
                // buffer; start..start + n lies inside the BUF_LEN bytes the last read filled.
                let at = unsafe { st.op.buf().add(st.start) };
                // SAFETY: as above: n initialised bytes from `at`, untouched by the kernel.
                let src = unsafe { std::slice::from_raw_parts(at, n) };
                buf[..n].copy_from_slice(src);
                st.start += n;
                return Ok(n);
            }
            if st.eof || buf.is_empty() {
                return Ok(0);
            }
            let (ptr, ov) = (st.op.buf(), st.op.ov());
            let started = syscall!(
                // SAFETY: buffer and OVERLAPPED are boxed and stay alive and unmoved until the
                // operation completes (Drop settles it before freeing them); no read is pending.
                unsafe { ReadFile(h, ptr, BUF_LEN as u32, std::ptr::null_mut(), ov) },
                PartialEq::eq,
                0
            );
            match started {
                Ok(_) => st.op.pending = true,
                Err(e) if e.raw_os_error() == Some(ERROR_IO_PENDING as i32) => st.op.pending = true,
                Err(e) if is_eof(&e) => st.eof = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts writing up to 64 KiB of `bytes`; `WouldBlock` while the previous write is in
    /// flight. An error of a write shows up at the next call.
    pub(crate) fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let h = self.raw();
        let mut st = lock(&self.write);
        Self::finish_write(h, &mut st)?;
        let n = bytes.len().min(BUF_LEN);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: no write is pending, so nothing else touches the buffer; n <= BUF_LEN.
        let dst = unsafe { std::slice::from_raw_parts_mut(st.op.buf(), n) };
        dst.copy_from_slice(&bytes[..n]);
        (st.done, st.len) = (0, n);
        Self::start_write(h, &mut st.op, 0, n)?;
        Ok(n)
    }

    /// `Ok` once no write is in flight: every byte handed to [`write`](Self::write) is in the
    /// pipe. Windows cancels a thread's pending I/O when the thread exits, so a send must not
    /// return before this.
    pub(crate) fn flush(&self) -> io::Result<()> {
        Self::finish_write(self.raw(), &mut lock(&self.write))
    }

    fn finish_write(h: HANDLE, st: &mut WriteState) -> io::Result<()> {
        while st.op.pending {
            let (res, n) = st.op.result(h, false);
            match res {
                Ok(()) if n >= st.len => {}
                Err(e) if e.raw_os_error() == Some(ERROR_IO_INCOMPLETE as i32) => {
                    return Err(would_block())
                }
                // Completed short (seen under Wine), or cancelled because the thread that
                // started it exited: write the rest.
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) => {}
                Err(e) => return Err(e),
            }
            if n < st.len {
                st.done += n;
                st.len -= n;
                let (done, len) = (st.done, st.len);
                Self::start_write(h, &mut st.op, done, len)?;
            }
        }
        Ok(())
    }

    /// Starts writing `len` bytes of the write buffer from `from`.
    fn start_write(h: HANDLE, op: &mut Op, from: usize, len: usize) -> io::Result<()> {
        debug_assert!(from + len <= BUF_LEN);
        // SAFETY: from + len <= BUF_LEN, so the range is inside the buffer.
        let ptr = unsafe { op.buf().add(from) };
        let ov = op.ov();
        let started = syscall!(
            // SAFETY: buffer and OVERLAPPED stay alive and unmoved until the operation completes
            // (Drop settles it before freeing them); no other write is pending.
            unsafe { WriteFile(h, ptr, len as u32, std::ptr::null_mut(), ov) },
            PartialEq::eq,
            0
        );
        match started {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(ERROR_IO_PENDING as i32) => {}
            Err(e) => return Err(e),
        }
        op.pending = true;
        Ok(())
    }

    /// Blocks until the direction is ready, or the deadline passes (`Ok(false)`).
    pub(crate) fn wait(&self, interest: Interest, deadline: Option<Instant>) -> io::Result<bool> {
        let event = match interest {
            Interest::Readable => {
                let st = lock(&self.read);
                if !st.op.pending || st.start < st.end || st.eof {
                    return Ok(true);
                }
                st.op.event.as_raw_handle()
            }
            Interest::Writable => {
                let st = lock(&self.write);
                if !st.op.pending {
                    return Ok(true);
                }
                st.op.event.as_raw_handle()
            }
        };
        // The event lives as long as self; it is signalled when the operation completes.
        wait_raw(event as HANDLE, deadline)
    }

    /// The event to wait on for `interest` (for the tokio glue).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn event(&self, interest: Interest) -> io::Result<OwnedHandle> {
        match interest {
            Interest::Readable => lock(&self.read).op.event.try_clone(),
            Interest::Writable => lock(&self.write).op.event.try_clone(),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let h = self.raw();
        let flush = Some(Instant::now() + FLUSH_ON_DROP);
        lock(&self.write).op.settle(h, flush);
        lock(&self.read).op.settle(h, None);
    }
}

/// Waits for `event` until `deadline`: `Ok(true)` when signalled.
pub(crate) fn wait_event(event: &OwnedHandle, deadline: Option<Instant>) -> io::Result<bool> {
    wait_raw(event.as_raw_handle() as HANDLE, deadline)
}

fn wait_raw(event: HANDLE, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let ms = match deadline {
            None => INFINITE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                left.as_millis().saturating_add(1).min(u128::from(INFINITE - 1)) as u32
            }
        };
        // SAFETY: the caller guarantees event is a live handle for the duration of the call.
        match unsafe { WaitForSingleObject(event, ms) } {
            WAIT_OBJECT_0 => return Ok(true),
            WAIT_TIMEOUT => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}
