//! Unix: signals through tokio, process groups and `kill(2)` through nix.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Context, Poll};

use handover::unix::ChannelExt as _;

use socket2::{SockAddr, Socket};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use anyhow::{Context as _, Result};
use nix::sys::signal::{killpg, Signal as NixSignal};
use nix::unistd::{access, AccessFlags, Pid};
use tokio::signal::unix::{signal, SignalKind};

use super::{Notify, Signal, Stop, TreeKind};

#[cfg(target_os = "linux")]
mod init;
#[cfg(not(target_os = "linux"))]
#[path = "no_init.rs"]
mod init;
pub(crate) use self::init::*;
use crate::config::{Env, ListenAddr};

/// `$XDG_RUNTIME_DIR/handover.sock`, else `/tmp/handover-UID.sock` (the fallback comes second
/// when `XDG_RUNTIME_DIR` is set: a supervisor started without it, as under
/// `systemd-socket-activate`, is found there).
pub(crate) fn default_control_paths(env: &Env) -> Vec<PathBuf> {
    let fallback = PathBuf::from(format!("/tmp/handover-{}.sock", nix::unistd::geteuid().as_raw()));
    match env.get("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => vec![Path::new(dir).join("handover.sock"), fallback],
        _ => vec![fallback],
    }
}

/// Where to look for a worker command: the path itself if it names a directory, else each
/// directory of `PATH` in turn.
pub(crate) fn program_candidates(cmd: &OsStr, env: &Env) -> Vec<PathBuf> {
    if Path::new(cmd).components().count() > 1 {
        return vec![PathBuf::from(cmd)];
    }
    let path = env.get("PATH").unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(path).map(|d| d.join(cmd)).collect()
}

/// Every listen address works on Unix.
pub(crate) fn check_listen_addr(_addr: &ListenAddr) -> Result<(), String> {
    Ok(())
}

/// `SO_REUSEADDR`, so a restarted supervisor can bind while old connections linger in
/// `TIME_WAIT` (it does not let two processes listen on one port).
pub(crate) fn prepare_tcp_listener(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)
}

pub(crate) fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => e.to_string(),
    })?;
    if meta.is_dir() {
        return Err("is a directory".to_owned());
    }
    // access(2) alone is not enough: it grants root execute on any file with one x bit.
    use std::os::unix::fs::PermissionsExt;
    let not_executable = || "not executable (check its permissions)".to_owned();
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(not_executable());
    }
    access(path, AccessFlags::X_OK).map_err(|_| not_executable())
}

/// A child and what it started, stopped as one: the process group it leads (the process
/// alone for [`TreeKind::Successor`]).
#[derive(Debug)]
pub(crate) struct ProcessTree {
    pid: Pid,
    group: bool,
}

impl ProcessTree {
    /// Signals the tree. One that is gone already is not an error.
    pub(crate) fn signal(&self, how: Stop) {
        let sig = match how {
            Stop::Terminate => NixSignal::SIGTERM,
            Stop::Kill => NixSignal::SIGKILL,
        };
        let _ =
            if self.group { killpg(self.pid, sig) } else { nix::sys::signal::kill(self.pid, sig) };
    }
}

/// Starts `cmd` as `kind` says.
pub(crate) fn spawn(
    cmd: &mut handover::Command<'_>,
    kind: TreeKind,
) -> handover::Result<(handover::Child, ProcessTree)> {
    use handover::unix::CommandExt;
    match kind {
        TreeKind::Worker => cmd.process_group(0).die_with_parent(true),
        TreeKind::Connection => cmd.process_group(0).die_with_parent(false).trust_cloexec(true),
        TreeKind::Successor => cmd,
    };
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    Ok((child, ProcessTree { pid, group: kind != TreeKind::Successor }))
}

/// Marks every descriptor this process was started with close-on-exec (they are taken over,
/// if at all, by `handover::inherited`), so children get only what they are handed, even from
/// a spawn that trusts the flags (see [`TreeKind::Connection`]). Everything opened later
/// is close-on-exec already.
pub(crate) fn close_inherited_on_exec() -> Result<()> {
    handover::unix::set_cloexec_from(3).context("cannot mark inherited descriptors close-on-exec")
}

/// Whether `status` is a death by a signal someone sends to stop a process (`SIGKILL`, as
/// the OOM killer does, `SIGTERM`, `SIGINT`, `SIGHUP`, `SIGQUIT`), as opposed to the program's
/// own crash (`SIGSEGV`, `SIGABRT`, `SIGPIPE`, ...) or exit.
pub(crate) fn killed_from_outside(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let outside = [
        NixSignal::SIGKILL,
        NixSignal::SIGTERM,
        NixSignal::SIGINT,
        NixSignal::SIGHUP,
        NixSignal::SIGQUIT,
    ];
    status.signal().is_some_and(|s| outside.iter().any(|o| *o as i32 == s))
}

/// Tells the service manager about a state change. Without `NOTIFY_SOCKET` this does nothing;
/// the environment is read, never changed (`unset_env` false).
pub(crate) fn notify(states: &[Notify<'_>]) {
    use sd_notify::NotifyState;
    let mut out: Vec<NotifyState<'_>> = Vec::with_capacity(states.len() + 1);
    for s in states {
        match *s {
            Notify::Ready => out.push(NotifyState::Ready),
            Notify::Reloading => {
                out.push(NotifyState::Reloading);
                if let Ok(now) = NotifyState::monotonic_usec_now() {
                    out.push(now);
                }
            }
            Notify::Stopping => out.push(NotifyState::Stopping),
            Notify::MainPid(pid) => out.push(NotifyState::MainPid(pid)),
            Notify::Status(text) => out.push(NotifyState::Status(text)),
        }
    }
    if let Err(e) = sd_notify::notify(false, &out) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Device and inode of `path` (not following a final symlink).
pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Signals whose default action ends the process, that people or the system send to servers,
/// and that the supervisor has no use for: each is logged and otherwise ignored, so a stray
/// `kill -WINCH` (gunicorn's "stop the workers") or an expired alarm cannot take the service
/// down. `SIGPIPE` is not here: it is ignored outright ([`ignore_sigpipe`]), since logging it
/// could fail the same way again.
const IGNORED: [(&str, i32); 7] = [
    ("SIGWINCH", nix::libc::SIGWINCH),
    ("SIGALRM", nix::libc::SIGALRM),
    ("SIGVTALRM", nix::libc::SIGVTALRM),
    ("SIGPROF", nix::libc::SIGPROF),
    ("SIGIO", nix::libc::SIGIO),
    ("SIGXCPU", nix::libc::SIGXCPU),
    ("SIGXFSZ", nix::libc::SIGXFSZ),
];

/// The same, for the signals only Linux has.
#[cfg(any(target_os = "linux", target_os = "android"))]
const IGNORED_HERE: [(&str, i32); 2] =
    [("SIGPWR", nix::libc::SIGPWR), ("SIGSTKFLT", nix::libc::SIGSTKFLT)];
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const IGNORED_HERE: [(&str, i32); 0] = [];

/// The signals the supervisor handles, registered once.
#[derive(Debug)]
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    ttin: tokio::signal::unix::Signal,
    ttou: tokio::signal::unix::Signal,
    ignored: Vec<(&'static str, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub(crate) fn new() -> io::Result<Signals> {
        ignore_sigpipe()?;
        let ignored = IGNORED
            .iter()
            .chain(&IGNORED_HERE)
            .map(|&(name, n)| Ok((name, signal(SignalKind::from_raw(n))?)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            quit: signal(SignalKind::quit())?,
            ttin: signal(SignalKind::from_raw(NixSignal::SIGTTIN as i32))?,
            ttou: signal(SignalKind::from_raw(NixSignal::SIGTTOU as i32))?,
            ignored,
        })
    }

    pub(crate) async fn recv(&mut self) -> Signal {
        let ignored = &mut self.ignored;
        let any_ignored = std::future::poll_fn(|cx| {
            for (name, s) in ignored.iter_mut() {
                if s.poll_recv(cx).is_ready() {
                    return Poll::Ready(*name);
                }
            }
            Poll::Pending
        });
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.hup.recv() => Signal::Reload,
            _ = self.usr1.recv() => Signal::ReopenLogs,
            _ = self.usr2.recv() => Signal::Upgrade,
            _ = self.quit.recv() => Signal::Quit,
            _ = self.ttin.recv() => Signal::AddWorker,
            _ = self.ttou.recv() => Signal::RemoveWorker,
            name = any_ignored => Signal::Ignored(name),
        }
    }
}

/// `SIGPIPE` ignored: a write to a closed pipe or socket fails with `EPIPE` instead of ending
/// the process (Rust's runtime does this before `main` too; this does not depend on it).
/// Children get the default action back (std's `Command`, which starts every child, resets it).
fn ignore_sigpipe() -> io::Result<()> {
    use nix::sys::signal::{signal as set_handler, SigHandler};
    // SAFETY: `SigIgn` installs no handler code, so no async-signal-safety requirement applies,
    // and nothing else in this process relies on a SIGPIPE handler of its own.
    unsafe { set_handler(NixSignal::SIGPIPE, SigHandler::SigIgn) }.map_err(io::Error::from)?;
    Ok(())
}

/// Unblocks every signal: a supervisor started with some blocked (the init process's
/// children inherit its mask, which blocks what it reads from its `signalfd`) would never
/// see them. Call before the runtime starts its threads, which inherit the mask.
pub(crate) fn unblock_signals() -> io::Result<()> {
    nix::sys::signal::SigSet::empty().thread_set_mask().map_err(io::Error::from)
}

/// Wakes when a child process may have exited (`SIGCHLD`).
#[derive(Debug)]
pub(crate) struct ChildExits(tokio::signal::unix::Signal);

impl ChildExits {
    pub(crate) fn new() -> io::Result<ChildExits> {
        Ok(ChildExits(signal(SignalKind::child())?))
    }

    pub(crate) async fn recv(&mut self) {
        self.0.recv().await;
    }
}

/// A non-blocking listening socket registered with the reactor. Accepted sockets are never
/// registered: they only pass through the supervisor.
#[derive(Debug)]
pub(crate) struct AsyncListener(AsyncFd<Socket>);

impl AsyncListener {
    /// Registers a listening socket (made non-blocking) with the current runtime's reactor.
    pub(crate) fn new(socket: Socket) -> io::Result<AsyncListener> {
        socket.set_nonblocking(true)?;
        // SAFETY: the AsyncFd takes ownership of `socket`, which owns its descriptor: it stays
        // open, and `as_raw_fd` returns the same descriptor, until the AsyncFd drops it.
        Ok(AsyncListener(unsafe { AsyncFd::register(socket) }?))
    }

    /// `accept(2)` now; `WouldBlock` when the backlog is empty.
    pub(crate) fn try_accept(&self) -> io::Result<(Socket, SockAddr)> {
        self.0.get_ref().accept()
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Socket, SockAddr)>> {
        loop {
            let mut guard = match self.0.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|io| io.get_ref().accept()) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A worker's control channel registered with the reactor, for read readiness only: the
/// supervisor reads (and writes) through the channel itself. Edge-triggered: after
/// [`ChannelWatch::poll_readable`] says ready, read until the channel has nothing whole left.
/// Write readiness is not asked for: on a Unix socket it would fire each time the worker
/// reads, a wake-up per message sent.
#[derive(Debug)]
pub(crate) struct ChannelWatch(AsyncFd<WatchedChannel>);

#[derive(Debug)]
struct WatchedChannel(Rc<handover::Channel>);

impl AsRawFd for WatchedChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.0.readiness_fd().as_raw_fd()
    }
}

impl ChannelWatch {
    /// Registers `channel` with the current runtime's reactor (it stays open as long as the
    /// watch holds it).
    pub(crate) fn new(channel: &Rc<handover::Channel>) -> io::Result<ChannelWatch> {
        let watched = WatchedChannel(Rc::clone(channel));
        // SAFETY: the watch holds the channel (an Rc), which owns its descriptor: it stays open,
        // and `as_raw_fd` returns the same descriptor, until the AsyncFd is dropped.
        Ok(ChannelWatch(unsafe { AsyncFd::register_with_interest(watched, Interest::READABLE) }?))
    }

    /// Ready once something arrived since the last time it was ready (or the channel closed,
    /// or failed): the readiness is cleared, so the caller reads until nothing is left.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                Poll::Ready(())
            }
            // The read that follows reports the channel's error.
            Poll::Ready(Err(_)) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Shared mode asks a worker to finish with `SIGTERM`, as systemd does.
pub(crate) const STOP_OVER_CHANNEL: bool = false;

/// Whether `path` is a Unix-domain socket file.
pub(crate) fn is_socket_file(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_socket()
}

/// The path a Unix-domain socket address names, if any.
pub(crate) fn socket_path(addr: &SockAddr) -> Option<std::path::PathBuf> {
    addr.as_pathname().map(Path::to_path_buf)
}

/// Resident memory of process `pid`, in bytes: Linux's `VmRSS` (`/proc/PID/status`).
pub(crate) fn resident_memory(pid: u32) -> io::Result<u64> {
    if cfg!(target_os = "linux") {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        vm_rss(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
    } else {
        Err(io::Error::new(io::ErrorKind::Unsupported, "resident memory is read on Linux only"))
    }
}

/// `VmRSS:   1234 kB` in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kb.checked_mul(1024)
}

/// Linux disconnects a TCP socket on `connect(2)` to an `AF_UNSPEC` address, sending the peer
/// a reset; other systems and Unix-domain sockets get `shutdown(2)` both ways.
pub(crate) fn abort_connection(socket: &Socket) -> io::Result<()> {
    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
    if cfg!(target_os = "linux") {
        let len = std::mem::size_of::<nix::libc::sa_family_t>() as socket2::socklen_t;
        // SAFETY: a zeroed storage has family 0, AF_UNSPEC, whose address is the family alone,
        // and `len` covers exactly that.
        let unspec = unsafe { SockAddr::new(socket2::SockAddrStorage::zeroed(), len) };
        if socket.connect(&unspec).is_ok() {
            return Ok(());
        }
    }
    socket.shutdown(std::net::Shutdown::Both)
}

/// The write end of a pipe for children's output; each child gets a copy.
#[derive(Debug)]
pub(crate) struct PipeWriter(std::os::fd::OwnedFd);

impl PipeWriter {
    /// A copy of the write end for a child's standard output or error.
    pub(crate) fn stdio(&self) -> io::Result<handover::Stdio> {
        Ok(handover::Stdio::from(self.0.try_clone()?))
    }
}

/// The read end, registered with the reactor.
pub(crate) type PipeReader = tokio::net::unix::pipe::Receiver;

/// A pipe whose write end (blocking, close-on-exec until a child gets it as 1 or 2) is for
/// children and whose read end is the supervisor's. Needs the runtime.
pub(crate) fn pipe() -> io::Result<(PipeWriter, PipeReader)> {
    let (tx, rx) = tokio::net::unix::pipe::pipe()?;
    Ok((PipeWriter(tx.into_blocking_fd()?), rx))
}

/// A user by name or number: its uid and primary gid (a number with no account: the same
/// number for both).
pub(crate) fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    use nix::unistd::{Uid, User};
    let number = name.parse::<u32>().ok();
    let user = match number {
        Some(n) => User::from_uid(Uid::from_raw(n)),
        None => User::from_name(name),
    }
    .map_err(|e| format!("cannot look it up: {e}"))?;
    match (user, number) {
        (Some(u), _) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        (None, Some(n)) => Ok((n, n)),
        (None, None) => Err("no such user".to_owned()),
    }
}

/// A group by name or number: its gid.
pub(crate) fn lookup_group(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err("no such group".to_owned()),
        Err(e) => Err(format!("cannot look it up: {e}")),
    }
}

/// Whether this process may start children as `uid` and `gid`: root may; anyone else only
/// as themselves.
pub(crate) fn check_may_become(uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
    let (euid, egid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    if euid == 0 || (uid.is_none_or(|u| u == euid) && gid.is_none_or(|g| g == egid)) {
        return Ok(());
    }
    Err(format!(
        "only root may start programs as another user or group (the supervisor runs as uid \
         {euid}, gid {egid}; start it as root, or leave user and group out)"
    ))
}

/// Whether this process may give a file to `owner` and `group`: root may; anyone else may
/// keep it and give it to one of their own groups.
pub(crate) fn check_may_give(owner: Option<u32>, group: Option<u32>) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 || (owner.is_none_or(|u| u == euid) && group.is_none_or(in_group)) {
        return Ok(());
    }
    Err(format!(
        "only root may give the socket file to another user, or to a group it is not in (the \
         supervisor runs as uid {euid})"
    ))
}

/// Whether this process is in group `gid`.
fn in_group(gid: u32) -> bool {
    gid == nix::unistd::getegid().as_raw() || supplementary_groups().contains(&gid)
}

#[cfg(not(target_vendor = "apple"))]
fn supplementary_groups() -> Vec<u32> {
    nix::unistd::getgroups().map(|gs| gs.iter().map(|g| g.as_raw()).collect()).unwrap_or_default()
}

/// macOS: nix offers no `getgroups` there (its list is not fixed); the effective group only.
#[cfg(target_vendor = "apple")]
fn supplementary_groups() -> Vec<u32> {
    Vec::new()
}

/// Applies a program's user, group and umask to a child's command (the directory is
/// portable: `Command::current_dir`).
pub(crate) fn apply_context(cmd: &mut handover::Command<'_>, ctx: &crate::context::ExecContext) {
    use handover::unix::CommandExt;
    if let Some((_, gid)) = &ctx.group {
        cmd.gid(*gid);
    }
    if let Some((_, uid)) = &ctx.user {
        cmd.uid(*uid);
    }
    if let Some(mask) = ctx.umask {
        cmd.umask(mask);
    }
}

/// Programs may be given a umask.
pub(crate) const HAS_UMASK: bool = true;

/// Gives a Unix socket file its owner, group and mode.
pub(crate) fn set_socket_perms(path: &Path, perms: &crate::context::SocketPerms) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if perms.owner.is_some() || perms.group.is_some() {
        std::os::unix::fs::chown(path, perms.owner, perms.group)?;
    }
    if let Some(mode) = perms.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(vm_rss(status), Some(1234 * 1024));
        assert_eq!(vm_rss("VmRSS: lots\n"), None);
        assert_eq!(vm_rss("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            let me = resident_memory(std::process::id()).unwrap();
            assert!(me > 100 << 10, "{me}");
        }
    }
}
