//! Starting a child process that begins life with sockets, and picking them up in the child.
//!
//! The parent names what the child gets — listening sockets as systemd-style descriptors,
//! one socket as standard input/output (inetd style), a [`Channel`] — and the child inherits
//! exactly those, nothing else. The child side is one call, [`inherited`], which also reads
//! what systemd socket activation passes.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::socket::{Socket, SocketRef};
use crate::sys;
use crate::{Channel, Error, PeerCredentials, Result, Stdio};

/// Number of listening descriptors passed, systemd convention.
pub(crate) const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
/// The process the descriptors are meant for, systemd convention.
pub(crate) const ENV_LISTEN_PID: &str = "LISTEN_PID";
/// Colon-separated names of the descriptors, systemd convention.
pub(crate) const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The descriptor (Windows: handle value) of the child's channel end.
pub(crate) const ENV_CHANNEL_FD: &str = "HANDOVER_CHANNEL_FD";
/// Windows: the spawning process, which the child checks is its parent.
pub(crate) const ENV_PARENT_PID: &str = "HANDOVER_PARENT_PID";
/// Windows: the channel only carries the listening sockets; the child closes it after.
pub(crate) const ENV_CHANNEL_INTERNAL: &str = "HANDOVER_CHANNEL_INTERNAL";

/// How long a child waits for the listening sockets that travel over its channel.
const LISTEN_ON_CHANNEL_TIMEOUT: Duration = Duration::from_secs(30);

/// The variables this module manages; never passed through from our own environment.
const MANAGED_ENV: [&str; 6] = [
    ENV_LISTEN_FDS,
    ENV_LISTEN_PID,
    ENV_LISTEN_FDNAMES,
    ENV_CHANNEL_FD,
    ENV_PARENT_PID,
    ENV_CHANNEL_INTERNAL,
];

/// `LISTEN_FDS`: how many sockets were passed (0 when unset). Errors are `InvalidInput`.
pub(crate) fn listen_count() -> std::io::Result<usize> {
    match std::env::var(ENV_LISTEN_FDS).ok() {
        None => Ok(0),
        Some(n) => n.parse::<usize>().ok().filter(|n| *n < 4096).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{ENV_LISTEN_FDS}={n:?} is not a descriptor count"),
            )
        }),
    }
}

/// `LISTEN_FDNAMES`, split at `:`.
pub(crate) fn listen_names() -> Vec<String> {
    std::env::var(ENV_LISTEN_FDNAMES)
        .ok()
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// What a backend found at start-up, before the portable layer wraps it.
#[derive(Debug)]
pub(crate) struct InheritedParts {
    /// The channel to the parent, if one was passed.
    pub(crate) channel: Option<sys::RawChannel>,
    /// Sockets passed as descriptors (Unix), in order.
    pub(crate) sockets: Vec<sys::OwnedSocket>,
    /// Sockets that arrive as the channel's first message (Windows), after `sockets`.
    pub(crate) on_channel: usize,
    /// Names of all the sockets, in order.
    pub(crate) names: Vec<String>,
    /// Whether the channel is the user's (`Command::channel`) or only carried the sockets.
    pub(crate) keep_channel: bool,
}

/// A builder for a child process that starts with sockets.
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// use handover::AsSocketRef;
/// let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
/// let mut child = handover::Command::new("my-server")
///     .arg("--verbose")
///     .listen_socket("http", listener.as_socket_ref())
///     .spawn()?;
/// child.wait()?;
/// # Ok(()) }
/// ```
///
/// # Platform-specific behavior
///
/// On Unix the listening sockets become descriptors 3, 4, … with `LISTEN_FDS`,
/// `LISTEN_FDNAMES` and `LISTEN_PID` set as systemd does, and the channel (if any) the next
/// descriptor, named in `HANDOVER_CHANNEL_FD`. Every other descriptor of the parent is closed
/// in the child (marked close-on-exec between `fork` and `exec`), whatever its flags, unless
/// the caller vouches for them with `unix::CommandExt::trust_cloexec`.
///
/// On Windows the child is started with `CreateProcessW` and inherits only the handles named
/// in its `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`: its standard handles and, when a channel or
/// listening sockets are given, one end of a private named pipe. Sockets are not inherited
/// (layered providers make that unreliable): listening sockets are duplicated for the child's
/// pid and sent as the first message on that pipe, which [`inherited`] reads. A
/// [`stdio_socket`](Command::stdio_socket) becomes the child's standard input and output as
/// an inheritable duplicate. Standard handles given as a [`Stdio`] become inheritable
/// duplicates too, each named in the handle list; one given as a [`std::process::Stdio`]
/// (which cannot be read back there) makes `spawn` fail with `Unsupported`.
/// [`die_with_parent`](Command::die_with_parent) is ignored; `windows::CommandExt::job`
/// creates the child inside a job object instead, which ends it and what it started.
#[derive(Debug)]
pub struct Command<'a> {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) listen: Vec<(String, SocketRef<'a>)>,
    pub(crate) stdio_socket: Option<SocketRef<'a>>,
    pub(crate) channel: bool,
    pub(crate) stdin: Option<Stdio>,
    pub(crate) stdout: Option<Stdio>,
    pub(crate) stderr: Option<Stdio>,
    pub(crate) die_with_parent: bool,
    // Set through `unix::CommandExt`; other backends have no such options.
    #[allow(dead_code)]
    pub(crate) uid: Option<u32>,
    #[allow(dead_code)]
    pub(crate) gid: Option<u32>,
    #[allow(dead_code)]
    pub(crate) process_group: Option<i32>,
    #[allow(dead_code)]
    pub(crate) trust_cloexec: bool,
    #[allow(dead_code)]
    pub(crate) umask: Option<u32>,
    // Set through `windows::CommandExt`; shared so the builder needs no lifetime for it.
    #[allow(dead_code)]
    pub(crate) job: Option<std::sync::Arc<sys::Job>>,
}

impl<'a> Command<'a> {
    /// A command that runs `program` (looked up in the child's `PATH` if it has no `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Command<'a> {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            cwd: None,
            listen: Vec::new(),
            stdio_socket: None,
            channel: false,
            stdin: None,
            stdout: None,
            stderr: None,
            die_with_parent: false,
            uid: None,
            gid: None,
            process_group: None,
            trust_cloexec: false,
            umask: None,
            job: None,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(&mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), Some(val.as_ref().to_owned())));
        self
    }

    /// Sets several environment variables for the child.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Removes an environment variable from the child's environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts the child with an empty environment (plus what [`env`](Command::env) adds and
    /// the variables that describe its sockets).
    pub fn env_clear(&mut self) -> &mut Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Sets the child's working directory.
    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Passes a (listening) socket under `name`, systemd style: the n-th one becomes
    /// descriptor 3 + n, and `LISTEN_FDNAMES` carries the names. The name must not contain
    /// `:`.
    pub fn listen_socket(&mut self, name: impl Into<String>, socket: SocketRef<'a>) -> &mut Self {
        self.listen.push((name.into(), socket));
        self
    }

    /// Makes `socket` the child's standard input and output (inetd style).
    pub fn stdio_socket(&mut self, socket: SocketRef<'a>) -> &mut Self {
        self.stdio_socket = Some(socket);
        self
    }

    /// Gives the child a [`Channel`] to this process; the parent's end is
    /// [`Child::channel`]. The child gets its end from [`inherited`].
    pub fn channel(&mut self) -> &mut Self {
        self.channel = true;
        self
    }

    /// The child's standard input: a [`Stdio`], or anything that converts into one (a
    /// [`std::process::Stdio`], a [`File`](std::fs::File), an owned descriptor or handle).
    /// Unset, the child inherits this process's, or gets the
    /// [`stdio_socket`](Command::stdio_socket) if one is set; set, it replaces the socket as
    /// standard input.
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// let input = std::fs::File::open("request.txt")?;
    /// handover::Command::new("worker").stdin(input).spawn()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Platform-specific behavior
    ///
    /// On Windows the child gets an inheritable duplicate of the handle, named in its
    /// `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`; a [`std::process::Stdio`] is not supported there
    /// (see [`Stdio`]).
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.stdin = Some(cfg.into());
        self
    }

    /// The child's standard output; like [`stdin`](Command::stdin), it replaces the
    /// [`stdio_socket`](Command::stdio_socket) as standard output if both are set (the socket
    /// stays standard input).
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// let log = std::fs::File::create("worker.log")?;
    /// handover::Command::new("worker").stdout(log).spawn()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Platform-specific behavior
    ///
    /// As for [`stdin`](Command::stdin).
    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.stdout = Some(cfg.into());
        self
    }

    /// The child's standard error; unset, it inherits this process's (also with a
    /// [`stdio_socket`](Command::stdio_socket), which is never standard error).
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// handover::Command::new("worker").stderr(handover::Stdio::null()).spawn()?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Platform-specific behavior
    ///
    /// As for [`stdin`](Command::stdin).
    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.stderr = Some(cfg.into());
        self
    }

    /// Kills the child when this process dies.
    ///
    /// # Platform-specific behavior
    ///
    /// Linux `PR_SET_PDEATHSIG` (`SIGKILL`). Linux ties it to the *thread* that spawned the
    /// child: spawn from a thread that lives as long as the process (not from a short-lived
    /// or pooled thread), or the child is killed when that thread exits. Ignored elsewhere —
    /// use process groups or job objects there.
    pub fn die_with_parent(&mut self, yes: bool) -> &mut Self {
        self.die_with_parent = yes;
        self
    }

    /// Spawns the child. The standard stream settings are consumed: set them again before
    /// spawning another child from the same builder.
    pub fn spawn(&mut self) -> Result<Child> {
        if let Some((name, _)) =
            self.listen.iter().find(|(n, _)| n.contains(':') || n.contains('\0'))
        {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "socket name {name:?} contains ':' or NUL, which LISTEN_FDNAMES cannot carry"
                ),
            )));
        }
        let (inner, raw) = sys::spawn(self)?;
        let mut channel = raw.map(|raw| {
            let peer = PeerCredentials { pid: Some(inner.id()), uid: None, gid: None };
            Channel::from_raw(raw, peer)
        });
        if sys::LISTEN_OVER_CHANNEL && !self.listen.is_empty() {
            // Windows: the sockets can only be duplicated for the child now that its pid is
            // known; they wait in the pipe until the child's `inherited()` reads them.
            let sockets: Vec<SocketRef<'_>> = self.listen.iter().map(|(_, s)| *s).collect();
            let ch = channel
                .as_ref()
                .ok_or_else(|| Error::Inherit("no channel for the sockets".into()))?;
            ch.send_timeout(b"", &sockets, LISTEN_ON_CHANNEL_TIMEOUT)?;
            if !self.channel {
                channel = None;
            }
        }
        Ok(Child { inner, channel })
    }

    /// The environment the child starts with, before the socket variables are added.
    pub(crate) fn resolved_env(&self) -> Vec<(OsString, OsString)> {
        let mut env: std::collections::BTreeMap<OsString, OsString> =
            if self.env_clear { Default::default() } else { std::env::vars_os().collect() };
        for (k, v) in &self.env {
            match v {
                Some(v) => env.insert(k.clone(), v.clone()),
                None => env.remove(k),
            };
        }
        for m in MANAGED_ENV {
            env.remove(OsStr::new(m));
        }
        env.into_iter().collect()
    }
}

/// A child process started by [`Command::spawn`].
#[derive(Debug)]
pub struct Child {
    inner: sys::Child,
    /// The parent's end of the child's channel, if [`Command::channel`] was set.
    pub channel: Option<Channel>,
}

impl Child {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// Forces the child to exit (`SIGKILL` on Unix).
    pub fn kill(&mut self) -> Result<()> {
        Ok(self.inner.kill()?)
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.inner.wait()?)
    }

    /// Reports the exit status if the child has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.inner.try_wait()?)
    }

    /// Waits for the child to exit without blocking the thread (feature `tokio`; call it from
    /// within a tokio runtime with I/O enabled). Cancel-safe: dropping the future loses
    /// nothing, and a later call or [`wait`](Child::wait) still gets the status.
    ///
    /// # Platform-specific behavior
    ///
    /// Unix: looks again at every `SIGCHLD` (through tokio's signal handling, which this
    /// installs for the process). Windows: a thread of tokio's blocking pool waits on the
    /// process handle, and keeps waiting if the future is dropped, until the child exits (so
    /// each call given up on holds a pool thread, and a runtime shutting down waits for it).
    /// Like tokio's own I/O types, this needs a runtime with I/O enabled.
    #[cfg(feature = "tokio")]
    pub async fn wait_async(&mut self) -> Result<ExitStatus> {
        Ok(sys::async_io::wait_child(&mut self.inner).await?)
    }

    #[allow(dead_code)] // Used by the OS extension modules, which not every OS has.
    pub(crate) fn into_inner(self) -> sys::Child {
        self.inner
    }
}

/// What a process was started with: listening sockets (systemd convention) and a channel.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The parent's channel, if the process was spawned with [`Command::channel`].
    pub channel: Option<Channel>,
    /// The passed sockets with their names (`LISTEN_FDNAMES`, `"unknown"` where none was
    /// given, as systemd does), in descriptor order.
    pub sockets: Vec<(String, Socket)>,
}

impl Inherited {
    /// Takes the first socket called `name`.
    pub fn take(&mut self, name: &str) -> Option<Socket> {
        let i = self.sockets.iter().position(|(n, _)| n == name)?;
        Some(self.sockets.remove(i).1)
    }
}

/// Picks up the sockets and the channel this process was started with.
///
/// Works for children spawned by [`Command`] and for programs started by systemd socket
/// activation (or anything else that follows its `LISTEN_FDS` convention). Nothing passed
/// gives an empty [`Inherited`]. Variables meant for another process (`LISTEN_PID` is not
/// ours) are ignored. The environment is read, never changed.
///
/// The descriptors become owned by the returned value, so only the first call takes them; a
/// later call that finds descriptors meant for this process returns [`Error::Inherit`].
///
/// # Platform-specific behavior
///
/// On Windows the channel is the pipe handle named in `HANDOVER_CHANNEL_FD`, adopted only if
/// the parent process is the one `HANDOVER_PARENT_PID` names and serves that pipe (so a
/// grandchild that inherited the environment takes nothing); listening sockets are then
/// received from it, waiting up to 30 seconds.
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// let mut inherited = handover::inherited()?;
/// let listener = std::net::TcpListener::try_from(inherited.take("http").expect("no http socket"))?;
/// for stream in listener.incoming() {
///     let _stream = stream?; // serve it
/// }
/// # Ok(()) }
/// ```
pub fn inherited() -> Result<Inherited> {
    let parts = sys::inherited().map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => Error::Inherit(e.to_string()),
        _ => Error::Io(e),
    })?;
    let Some(parts) = parts else { return Ok(Inherited::default()) };
    let channel = match parts.channel {
        Some(raw) => {
            let peer = sys::peer_credentials(&raw)?;
            Some(Channel::from_raw(raw, peer))
        }
        None => None,
    };
    let mut sockets: Vec<Socket> = parts.sockets.into_iter().map(Socket::from_sys).collect();
    if parts.on_channel > 0 {
        let ch = channel
            .as_ref()
            .ok_or_else(|| Error::Inherit("sockets announced, but no channel".into()))?;
        let msg = ch.recv_timeout(LISTEN_ON_CHANNEL_TIMEOUT)?;
        if msg.sockets.len() != parts.on_channel {
            return Err(Error::Inherit(format!(
                "{ENV_LISTEN_FDS}={} but {} sockets arrived",
                parts.on_channel,
                msg.sockets.len()
            )));
        }
        sockets.extend(msg.sockets);
    }
    let channel = if parts.keep_channel { channel } else { None };
    let sockets = sockets
        .into_iter()
        .enumerate()
        .map(|(i, s)| (parts.names.get(i).cloned().unwrap_or_else(|| "unknown".to_owned()), s))
        .collect();
    Ok(Inherited { channel, sockets })
}

/// The socket on standard input, for programs started inetd style
/// ([`Command::stdio_socket`], inetd, systemd `Accept=yes`): a duplicate of it, or `None` if
/// standard input is not a socket.
///
/// Standard output is the same connection: write the response to either.
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// use std::io::{Read, Write};
/// let Some(socket) = handover::stdin_socket()? else {
///     return Err(handover::Error::Inherit("standard input is not a socket".into()));
/// };
/// let mut stream = std::net::TcpStream::try_from(socket)?;
/// let mut request = [0u8; 1024];
/// let n = stream.read(&mut request)?;
/// stream.write_all(&request[..n])?;
/// # Ok(()) }
/// ```
///
/// # Platform-specific behavior
///
/// Unix: a duplicate of descriptor 0 (close-on-exec). Windows: standard input counts as a
/// socket when `getsockopt(SO_TYPE)` accepts its handle; the duplicate is made for this
/// process with `WSADuplicateSocketW`, so unlike the standard handle (which
/// [`Command::stdio_socket`] makes synchronous, for `ReadFile`/`WriteFile`) it is
/// overlapped: usable for blocking calls and with tokio. It is not inheritable.
pub fn stdin_socket() -> Result<Option<Socket>> {
    Ok(sys::stdin_socket()?.map(Socket::from_sys))
}
