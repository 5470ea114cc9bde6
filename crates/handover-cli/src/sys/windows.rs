//! Windows: console control events through tokio, job objects through the handover library,
//! and the few Win32 calls the library does not wrap.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::os::windows::io::{AsRawSocket, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};

use anyhow::Result;
use handover::windows::{CommandExt, JobObject};
use socket2::{SockAddr, Socket};
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, SOCKET_ERROR, SOL_SOCKET, SO_EXCLUSIVEADDRUSE,
};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    OpenProcess, TerminateProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_TERMINATE,
    PROCESS_VM_READ,
};

use super::{Notify, Signal, Stop, TreeKind};
use crate::config::{Env, ListenAddr};

#[path = "no_init.rs"]
mod init;
pub(crate) use self::init::*;

/// `%LOCALAPPDATA%\handover\handover.ctl` (the supervisor creates the directory), else the
/// same name in the temporary directory, which comes second when `LOCALAPPDATA` is set. The
/// file names a named pipe, owner-only (the handover library's rendezvous).
pub(crate) fn default_control_paths(env: &Env) -> Vec<PathBuf> {
    let fallback = std::env::temp_dir().join("handover.ctl");
    match env.get("LOCALAPPDATA") {
        Some(dir) if !dir.is_empty() => {
            vec![Path::new(dir).join("handover").join("handover.ctl"), fallback]
        }
        _ => vec![fallback],
    }
}

/// Where to look for a worker command, as `cmd.exe` does: the name as given if it has a
/// directory part, else each directory of `PATH`; and for a name without an extension, the
/// name with each extension of `PATHEXT` first.
pub(crate) fn program_candidates(cmd: &OsStr, env: &Env) -> Vec<PathBuf> {
    let exts: Vec<OsString> = if Path::new(cmd).extension().is_some() {
        vec![OsString::new()]
    } else {
        let pathext = env.get("PATHEXT").unwrap_or(OsStr::new(".COM;.EXE;.BAT;.CMD"));
        let mut v: Vec<OsString> = pathext
            .to_string_lossy()
            .split(';')
            .filter(|e| !e.is_empty())
            .map(|e| OsString::from(e.to_ascii_lowercase()))
            .collect();
        v.push(OsString::new());
        v
    };
    let with_ext = |base: PathBuf| -> Vec<PathBuf> {
        exts.iter()
            .map(|e| {
                let mut p = base.clone().into_os_string();
                p.push(e);
                PathBuf::from(p)
            })
            .collect()
    };
    if Path::new(cmd).components().count() > 1 {
        return with_ext(PathBuf::from(cmd));
    }
    let dirs: Vec<PathBuf> =
        env.get("PATH").map(|p| std::env::split_paths(p).collect()).unwrap_or_default();
    dirs.into_iter().flat_map(|d| with_ext(d.join(cmd))).collect()
}

pub(crate) fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => e.to_string(),
    })?;
    if meta.is_dir() {
        return Err("is a directory".to_owned());
    }
    Ok(())
}

/// Unix-domain listeners are not served on Windows.
pub(crate) fn check_listen_addr(addr: &ListenAddr) -> Result<(), String> {
    match addr {
        ListenAddr::Tcp(_) => Ok(()),
        ListenAddr::Unix(_) => Err(format!(
            "{addr}: Unix-domain listeners are not supported on Windows (use tcp://HOST:PORT)"
        )),
    }
}

/// `SO_EXCLUSIVEADDRUSE`: no other socket may bind the port, not even with `SO_REUSEADDR`
/// (which on Windows would let another process take connections meant for us).
pub(crate) fn prepare_tcp_listener(socket: &Socket) -> io::Result<()> {
    let on: i32 = 1;
    // SAFETY: the socket is open (borrowed for the call); the option value is a live i32 whose
    // size is passed alongside.
    let r = unsafe {
        setsockopt(
            socket.as_raw_socket() as usize,
            SOL_SOCKET,
            SO_EXCLUSIVEADDRUSE,
            (&on as *const i32).cast(),
            std::mem::size_of::<i32>() as i32,
        )
    };
    if r == SOCKET_ERROR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A child and what it started, stopped as one: its job object (the process alone for
/// [`TreeKind::Successor`]).
#[derive(Debug)]
pub(crate) enum ProcessTree {
    Job(JobObject),
    Process(OwnedHandle),
}

impl ProcessTree {
    /// Stops the tree. Windows has no polite stop for a process that has no window or console
    /// of its own: [`Stop::Terminate`] does nothing to a job (the modes ask workers to finish
    /// over their channel instead), and ends a successor like [`Stop::Kill`].
    pub(crate) fn signal(&self, how: Stop) {
        match (self, how) {
            (ProcessTree::Job(_), Stop::Terminate) => {}
            (ProcessTree::Job(job), Stop::Kill) => {
                let _ = job.terminate(1);
            }
            (ProcessTree::Process(h), _) => {
                // SAFETY: the handle is open (owned here) and was opened with PROCESS_TERMINATE;
                // a process that has exited already makes the call fail, which is ignored.
                let _ = unsafe { TerminateProcess(raw(h), 1) };
            }
        }
    }
}

/// The raw value of an owned handle, for a Win32 call.
fn raw(h: &OwnedHandle) -> HANDLE {
    use std::os::windows::io::AsRawHandle;
    h.as_raw_handle() as HANDLE
}

/// A handle on process `pid` with `access` (`OpenProcess`).
fn open_process(access: u32, pid: u32) -> io::Result<OwnedHandle> {
    // SAFETY: OpenProcess takes any pid; a failure is a null handle, checked below.
    let h = unsafe { OpenProcess(access, 0, pid) };
    if h.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `h` is a handle OpenProcess just returned; nothing else owns it.
    Ok(unsafe { OwnedHandle::from_raw_handle(h as _) })
}

/// Starts `cmd` as `kind` says.
pub(crate) fn spawn(
    cmd: &mut handover::Command<'_>,
    kind: TreeKind,
) -> handover::Result<(handover::Child, ProcessTree)> {
    match kind {
        TreeKind::Worker | TreeKind::Connection => {
            let job = JobObject::new()?;
            cmd.job(&job);
            let child = cmd.spawn()?;
            Ok((child, ProcessTree::Job(job)))
        }
        TreeKind::Successor => {
            let child = cmd.spawn()?;
            // The child is not waited for yet, so its pid cannot have been reused.
            let h = open_process(PROCESS_TERMINATE, child.id())?;
            Ok((child, ProcessTree::Process(h)))
        }
    }
}

/// Children inherit only the handles named for them (`PROC_THREAD_ATTRIBUTE_HANDLE_LIST`).
pub(crate) fn close_inherited_on_exec() -> Result<()> {
    Ok(())
}

/// There is no systemd on Windows.
/// Windows has no signal mask.
pub(crate) fn unblock_signals() -> io::Result<()> {
    Ok(())
}

pub(crate) fn notify(_states: &[Notify<'_>]) {}

pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    // No inode; the modification time and length tell two files apart well enough here.
    let m = std::fs::symlink_metadata(path).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some((m.len(), t.as_nanos() as u64))
}

/// The console control events the supervisor handles: Ctrl-C (interrupt), and Ctrl-Break, the
/// console window closing and system shutdown (terminate). Reload and upgrade come over the
/// control pipe (`handover reload`, `handover upgrade`).
#[derive(Debug)]
pub(crate) struct Signals {
    c: tokio::signal::windows::CtrlC,
    brk: tokio::signal::windows::CtrlBreak,
    close: tokio::signal::windows::CtrlClose,
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl Signals {
    pub(crate) fn new() -> io::Result<Signals> {
        use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown};
        Ok(Signals {
            c: ctrl_c()?,
            brk: ctrl_break()?,
            close: ctrl_close()?,
            shutdown: ctrl_shutdown()?,
        })
    }

    pub(crate) async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.c.recv() => Signal::Interrupt,
            _ = self.brk.recv() => Signal::Terminate,
            _ = self.close.recv() => Signal::Terminate,
            _ = self.shutdown.recv() => Signal::Terminate,
        }
    }
}

/// Windows has no `SIGCHLD`: the engines look at their children this often instead (a
/// prefork worker's death is also seen at once from its channel, which breaks).
#[derive(Debug)]
pub(crate) struct ChildExits(tokio::time::Interval);

impl ChildExits {
    pub(crate) fn new() -> io::Result<ChildExits> {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(50));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(ChildExits(every))
    }

    pub(crate) async fn recv(&mut self) {
        self.0.tick().await;
    }
}

/// A listening socket accepted on through tokio. An accepted connection leaves the reactor at
/// once (mio polls sockets through an AFD handle, so the socket itself was never tied to the
/// completion port) and is made blocking, as workers expect.
#[derive(Debug)]
pub(crate) struct AsyncListener(tokio::net::TcpListener);

impl AsyncListener {
    pub(crate) fn new(socket: Socket) -> io::Result<AsyncListener> {
        socket.set_nonblocking(true)?;
        let std_listener: std::net::TcpListener = socket.into();
        Ok(AsyncListener(tokio::net::TcpListener::from_std(std_listener)?))
    }

    fn detach(stream: tokio::net::TcpStream) -> io::Result<Socket> {
        let s = Socket::from(stream.into_std()?);
        s.set_nonblocking(false)?;
        Ok(s)
    }

    /// `accept` now; `WouldBlock` when the backlog is empty.
    pub(crate) fn try_accept(&self) -> io::Result<(Socket, SockAddr)> {
        match poll_once(|cx| self.poll_accept(cx)) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Socket, SockAddr)>> {
        self.0.poll_accept(cx).map(|r| {
            let (stream, peer) = r?;
            Ok((Self::detach(stream)?, SockAddr::from(peer)))
        })
    }
}

/// A worker's control channel watched for read readiness: a thread of tokio's blocking pool
/// waits on the event of the channel's pending overlapped read
/// ([`handover::windows::ChannelExt::read_event`]), and the poll is ready once it is
/// signalled. A watch dropped while its thread waits leaves that thread waiting until the
/// read completes (the next message, or the channel's end).
#[derive(Debug)]
pub(crate) struct ChannelWatch {
    channel: std::rc::Rc<handover::Channel>,
    wait: std::cell::RefCell<Option<tokio::task::JoinHandle<()>>>,
}

impl ChannelWatch {
    pub(crate) fn new(channel: &std::rc::Rc<handover::Channel>) -> io::Result<ChannelWatch> {
        Ok(ChannelWatch { channel: std::rc::Rc::clone(channel), wait: Default::default() })
    }

    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        use handover::windows::ChannelExt as _;
        let mut wait = self.wait.borrow_mut();
        let handle = match &mut *wait {
            Some(h) => h,
            None => match self.channel.read_event() {
                // The read that follows reports the channel's error.
                Err(_) => return Poll::Ready(()),
                Ok(event) => {
                    wait.insert(tokio::task::spawn_blocking(move || wait_signalled(&event)))
                }
            },
        };
        match std::pin::Pin::new(handle).poll(cx) {
            Poll::Ready(_) => {
                *wait = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Waits until `event` is signalled (or the wait fails: the caller reads the channel either way).
fn wait_signalled(event: &OwnedHandle) {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::System::Threading::{WaitForSingleObject, INFINITE};
    // SAFETY: `event` is a live handle we own for the duration of the call.
    let _ = unsafe { WaitForSingleObject(event.as_raw_handle() as HANDLE, INFINITE) };
}

pub(crate) fn is_socket_file(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Unix-domain listeners are refused on Windows (see [`check_listen_addr`]).
pub(crate) fn socket_path(_addr: &SockAddr) -> Option<PathBuf> {
    None
}

/// Windows has no signals: a process ended by `TerminateProcess` exits with the code its
/// killer chose, indistinguishable from its own exit, so every death counts as the program's.
pub(crate) fn killed_from_outside(_status: &std::process::ExitStatus) -> bool {
    false
}

/// The working set of process `pid` (`K32GetProcessMemoryInfo`), in bytes: what Task Manager
/// shows as memory in use, the counterpart of Linux's `VmRSS`.
pub(crate) fn resident_memory(pid: u32) -> io::Result<u64> {
    let h = open_process(PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_VM_READ, pid)?;
    let mut counters = PROCESS_MEMORY_COUNTERS::default();
    let size = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    // SAFETY: the handle is open with the access the call needs; `counters` is a live local
    // of the size passed.
    let ok = unsafe { K32GetProcessMemoryInfo(raw(&h), &mut counters, size) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(counters.WorkingSetSize as u64)
}

/// The peer sees the end of the stream (no reset yet).
pub(crate) fn abort_connection(socket: &socket2::Socket) -> io::Result<()> {
    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
    socket.shutdown(std::net::Shutdown::Both)
}

/// Polls once, with a waker that does nothing: for what is ready at once or not at all.
fn poll_once<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
    poll(&mut Context::from_waker(&waker))
}

/// The write end of a pipe for children's output: the client end of a named pipe, opened
/// synchronous (no `FILE_FLAG_OVERLAPPED`: programs write to their standard handles with
/// plain `WriteFile`); each child gets a copy.
#[derive(Debug)]
pub(crate) struct PipeWriter(OwnedHandle);

impl PipeWriter {
    /// A copy of the write end for a child's standard output or error (the library hands the
    /// child an inheritable duplicate of it, named in its handle list).
    pub(crate) fn stdio(&self) -> io::Result<handover::Stdio> {
        Ok(handover::Stdio::from(self.0.try_clone()?))
    }
}

/// The read end: the server end, overlapped, registered with the runtime.
pub(crate) type PipeReader = tokio::net::windows::named_pipe::NamedPipeServer;

/// A named pipe (Windows has no anonymous pipe that can be read overlapped) with a fresh
/// random name, one instance, inbound only, local clients only. The client end is opened at
/// once, by us, before the pipe is handed anywhere; one instance means no one else can be
/// connected then (and the default DACL lets other users open it only for reading, which an
/// inbound pipe gives them nothing of). Needs the runtime.
pub(crate) fn pipe() -> io::Result<(PipeWriter, PipeReader)> {
    use std::hash::{BuildHasher, Hasher};
    use tokio::net::windows::named_pipe::ServerOptions;

    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // std seeds each `RandomState` from the system's random source.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let name = format!(r"\\.\pipe\handover-output-{}-{n}-{random:016x}", std::process::id());
    let server = ServerOptions::new()
        .first_pipe_instance(true)
        .max_instances(1)
        .access_outbound(false)
        .reject_remote_clients(true)
        .create(&name)?;
    let client = std::fs::OpenOptions::new().write(true).open(&name)?;
    // Our client is connected already, so the server's connect completes at once (tokio reads
    // from the pipe only once it has seen it connected).
    match poll_once(|cx| std::pin::pin!(server.connect()).poll(cx)) {
        Poll::Ready(r) => r?,
        Poll::Pending => return Err(io::Error::other("the pipe's own client is not connected")),
    }
    Ok((PipeWriter(client.into()), server))
}

/// Shared mode asks a worker to finish by ending the channel it was started with
/// (`handover::inherited().channel` in the worker): there is no `SIGTERM` to send.
pub(crate) const STOP_OVER_CHANNEL: bool = true;

const NO_USERS: &str = "not supported on Windows (run the supervisor as the account the \
                        programs should run as)";

pub(crate) fn lookup_user(_name: &str) -> Result<(u32, u32), String> {
    Err(NO_USERS.to_owned())
}

pub(crate) fn lookup_group(_name: &str) -> Result<u32, String> {
    Err(NO_USERS.to_owned())
}

pub(crate) fn check_may_become(_uid: Option<u32>, _gid: Option<u32>) -> Result<(), String> {
    Err(NO_USERS.to_owned())
}

pub(crate) fn check_may_give(_owner: Option<u32>, _group: Option<u32>) -> Result<(), String> {
    Err(NO_USERS.to_owned())
}

/// Windows has no umask and no users to switch to (refused when the configuration is read);
/// only `chdir` applies, and it is portable.
pub(crate) fn apply_context(_cmd: &mut handover::Command<'_>, _ctx: &crate::context::ExecContext) {}

/// Windows has no umask.
pub(crate) const HAS_UMASK: bool = false;

/// No Unix-domain listeners on Windows (refused when the configuration is read).
pub(crate) fn set_socket_perms(
    _path: &Path,
    _perms: &crate::context::SocketPerms,
) -> io::Result<()> {
    Ok(())
}
