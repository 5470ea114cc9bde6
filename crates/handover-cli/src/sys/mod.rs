//! The supervisor's platform seam: the only module that chooses between Unix and Windows.
//!
//! Both backends provide:
//!
//! - `default_control_paths(&Env) -> Vec<PathBuf>`: where the control socket is by default,
//!   the supervisor's choice first, then the fallback a supervisor started without the
//!   variable that names the first would have used (clients try each);
//! - `program_candidates(&OsStr, &Env) -> Vec<PathBuf>`: where to look for a worker command
//!   (`PATH`; on Windows with each `PATHEXT` extension too), and
//!   `check_executable(&Path) -> Result<(), String>` for each;
//! - `check_listen_addr(&ListenAddr) -> Result<(), String>`: refuses an address kind this
//!   platform cannot serve (Unix-domain listeners on Windows);
//! - `prepare_tcp_listener(&Socket)`: options set before `bind` (`SO_REUSEADDR` on Unix,
//!   `SO_EXCLUSIVEADDRUSE` on Windows);
//! - `spawn(&mut handover::Command, TreeKind) -> handover::Result<(handover::Child,
//!   ProcessTree)>`: starts a worker, a spawn-mode child or the next generation of an upgrade
//!   (`TreeKind`), with a handle on everything it will start: its process group on Unix, a
//!   job object (kill on close, assigned at creation) on Windows; `ProcessTree::signal(Stop)`
//!   stops the lot (`Successor`: the process alone; `Terminate` is a no-op for a Windows job);
//! - `STOP_OVER_CHANNEL`: shared mode asks a worker to finish by ending its channel (Windows)
//!   rather than with `SIGTERM` (Unix);
//! - `unblock_signals() -> io::Result<()>`: at start-up, an empty signal mask (the init
//!   process's children inherit the mask it reads its signals through; no-op on Windows);
//! - `close_inherited_on_exec() -> anyhow::Result<()>`: at start-up, so no child inherits what
//!   the supervisor was started with;
//! - `killed_from_outside(&ExitStatus) -> bool`: a death by a signal someone else sent to stop
//!   the process (restarted at once), not the program's own crash;
//! - `Signals::new()?` and `Signals::recv().await -> Signal`: terminate, interrupt, reload,
//!   upgrade, reopen logs, quit, and the signals that are only logged (Windows: Ctrl-C,
//!   Ctrl-Break, console close, shutdown); `SIGPIPE` is ignored outright (a closed pipe is a
//!   failed write, never a death); `ChildExits::recv()`: a child may have exited (`SIGCHLD`;
//!   Windows: a 50 ms timer);
//! - `AsyncListener`: a listening socket accepted on through the reactor, handing out blocking
//!   sockets never registered with it;
//! - `notify(&[Notify])`: the service manager's readiness protocol (systemd `sd_notify` through
//!   the `sd-notify` crate; a no-op where there is no `NOTIFY_SOCKET` or no systemd);
//! - `socket_path(&SockAddr) -> Option<PathBuf>`: the path a Unix-domain address names;
//! - `file_identity(&Path) -> Option<(u64, u64)>`: device and inode, to tell whether a path is
//!   still the file this process created (the control socket after an upgrade renamed over it).
//! - `resident_memory(pid) -> io::Result<u64>`: a process's resident memory in bytes
//!   (`--max-memory`; `Unsupported` where it is not read yet);
//! - `abort_connection(&Socket) -> io::Result<()>`: resets a connection that another process
//!   holds too (`--connection-timeout`): the peer gets a reset where the OS can send one (the
//!   end of the stream otherwise), and every holder's next read or write fails;
//! - `ChannelWatch::new(&Rc<handover::Channel>)?` and `poll_readable(&mut Context) -> Poll<()>`:
//!   a worker's control channel registered with the reactor for read readiness, edge-triggered
//!   (ready once per arrival; the caller then reads until nothing is left). Unix: `AsyncFd`.
//!   Windows: a blocking-pool thread waits on the event of the channel's pending overlapped
//!   read (a caller that cannot watch, `Unsupported`, reads on a timer instead);
//! - `pipe() -> io::Result<(PipeWriter, PipeReader)>`: a pipe for children's standard output
//!   or error, made within the runtime: `PipeWriter::stdio() -> io::Result<handover::Stdio>`
//!   gives a child a copy of the write end (blocking, as programs expect of their standard
//!   handles), `PipeReader` is `tokio::io::AsyncRead`, registered with the runtime, and reads
//!   the end of the stream once every copy of the write end is closed (Unix: an anonymous
//!   pipe; Windows: a named pipe, since only those can be read overlapped);
//! - the init process (`crate::init`; Linux only, elsewhere `Unsupported` and never PID 1):
//!   `is_pid1()`, `become_subreaper()` (`PR_SET_CHILD_SUBREAPER`), `own_pid()`,
//!   `InitSignals::new()?` (blocks the signals it reads, before any child starts) and
//!   `next(block) -> io::Result<Option<InitEvent>>` (a `signalfd`), `reap_any()` (`waitpid(-1,
//!   WNOHANG)`: pid and exit code, 128 + signal for a death by a signal), `forward(pid,
//!   signal)`, `exists(pid)`, and `announce_to(init_pid)` (a generation says it took over);
//! - users and modes (`crate::context`): `lookup_user(name) -> Result<(uid, gid), String>`,
//!   `lookup_group(name) -> Result<gid, String>`, `check_may_become(uid, gid)` and
//!   `check_may_give(owner, group)` (root may; others only themselves and their groups),
//!   `apply_context(&mut Command, &ExecContext)` (uid, gid, umask between fork and exec),
//!   `HAS_UMASK`, and `set_socket_perms(path, &SocketPerms)` (chown, chmod). Windows refuses
//!   users and umasks when the configuration is read; its `apply_context` does nothing.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use self::windows::*;

#[cfg(not(any(unix, windows)))]
compile_error!("the handover supervisor supports Unix and Windows only");

/// How a child is started, and what its `ProcessTree` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeKind {
    /// A worker: it and everything it starts can be stopped as one (Unix: it leads its own
    /// process group; Windows: it is created inside a job object of its own), and it dies with
    /// the supervisor (Linux: `PR_SET_PDEATHSIG`, which needs the spawning thread to outlive
    /// the child, as it does on the supervisor's one thread; Windows: the job is kill-on-close
    /// and the system closes the supervisor's handle when it dies).
    Worker,
    /// A spawn-mode child, stopped as one like a worker. On Unix it finishes its one client even
    /// if the supervisor dies (as under inetd or systemd's `Accept=yes`) and is started with
    /// `posix_spawn` instead of `fork`, which `close_inherited_on_exec` makes safe; on Windows it
    /// dies with the supervisor (a job that outlived it would need a handle nobody closes).
    Connection,
    /// The next generation of an upgrade: it outlives this process, and only the process
    /// itself is ever stopped (Unix: signalled; Windows: `TerminateProcess`).
    Successor,
}

/// How to stop a process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Ask it to exit (`SIGTERM`).
    Terminate,
    /// End it now (`SIGKILL`).
    Kill,
}

/// A signal (or console event) the supervisor acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(windows, allow(dead_code))] // Windows has no reload or upgrade signal
pub(crate) enum Signal {
    /// `SIGTERM`: drain and exit.
    Terminate,
    /// `SIGINT` (Ctrl-C): drain and exit.
    Interrupt,
    /// `SIGHUP`: restart the workers one at a time.
    Reload,
    /// `SIGUSR2`: zero-downtime upgrade to the binary now on disk (as nginx does).
    Upgrade,
    /// `SIGTTIN`: one more worker (as gunicorn does).
    AddWorker,
    /// `SIGTTOU`: one worker fewer (as gunicorn does).
    RemoveWorker,
    /// `SIGUSR1`: reopen the log file (as nginx and gunicorn do, for logrotate).
    ReopenLogs,
    /// `SIGQUIT`: fast shutdown, the workers killed at once (gunicorn's `QUIT`, nginx's `TERM`).
    Quit,
    /// A signal whose default action would end the process but that means nothing to the
    /// supervisor (`SIGWINCH`, `SIGALRM`, ...): logged and ignored. The name is the signal's.
    Ignored(&'static str),
}

/// What woke the init process (`crate::init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) enum InitEvent {
    /// `SIGCHLD`: reap.
    ChildExited,
    /// A new generation announced itself (its pid): wait for it too.
    Announce(u32),
    /// A signal for the generations: to every one (`to_all`: terminate, interrupt, quit) or to
    /// the newest.
    Forward { signal: i32, to_all: bool },
}

/// A state reported to the service manager (`sd_notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notify<'a> {
    /// `READY=1`: serving (start-up, a reload or an upgrade finished).
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC=`: a reload or upgrade began.
    Reloading,
    /// `STOPPING=1`: draining before exit.
    Stopping,
    /// `MAINPID=`: the process systemd should track from now on (the new generation).
    MainPid(u32),
    /// `STATUS=`: one line for `systemctl status`.
    Status(&'a str),
}

impl Signal {
    /// The signal number reported in an exit status (128 + n).
    pub(crate) fn number(self) -> i32 {
        match self {
            Signal::Terminate => 15,
            Signal::Interrupt => 2,
            Signal::Reload => 1,
            Signal::Upgrade => 12,
            Signal::AddWorker => 21,
            Signal::RemoveWorker => 22,
            Signal::ReopenLogs => 10,
            Signal::Quit => 3,
            Signal::Ignored(_) => 0,
        }
    }
}
