//! Spawning a child with exactly the descriptors it is given, and adopting them in the child.
//!
//! `std::process::Command` does the fork, the standard streams, uid/gid, the working
//! directory and error reporting; a `pre_exec` hook then lays the passed descriptors out at
//! 3, 4, …, marks every other descriptor close-on-exec, writes the child's own pid into the
//! `LISTEN_PID=` slot of an environment block built before the fork, and calls `execve` itself.
//! Everything the hook touches was allocated before `fork`, so it only makes system calls.
//! When the caller vouches for its descriptors (`CommandExt::trust_cloexec`) and there is
//! nothing else for the hook to do, there is no hook, and std uses `posix_spawn` instead.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use super::uds::{pair, RawChannel};
use crate::spawn::{
    listen_count, listen_names, Command, InheritedParts, ENV_CHANNEL_FD, ENV_LISTEN_FDNAMES,
    ENV_LISTEN_FDS, ENV_LISTEN_PID,
};

/// A spawned child process.
#[derive(Debug)]
pub(crate) struct Child(std::process::Child);

/// What only Unix's `Command` has (`unix::CommandExt`).
#[derive(Debug, Default)]
pub(crate) struct CommandOptions {
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) process_group: Option<i32>,
    pub(crate) trust_cloexec: bool,
    pub(crate) umask: Option<u32>,
}

impl Child {
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }
    pub(crate) fn kill(&mut self) -> io::Result<()> {
        self.0.kill()
    }
    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        self.0.wait()
    }
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.0.try_wait()
    }
    pub(crate) fn into_std(self) -> std::process::Child {
        self.0
    }
}

/// Width reserved for the pid in `LISTEN_PID=`.
const PID_DIGITS: usize = 10;

/// Everything the `pre_exec` hook needs, allocated before the fork.
struct ExecPlan {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<Box<[u8]>>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Points at the `PID_DIGITS + 1` bytes after `LISTEN_PID=` inside `_envp`.
    pid_slot: *mut u8,
    /// Descriptors to place at 3, 4, …; temporaries above them during the shuffle.
    sources: Vec<RawFd>,
    temps: Vec<RawFd>,
    die_with_parent: bool,
    parent_pid: libc::pid_t,
    umask: Option<libc::mode_t>,
}

// SAFETY: the raw pointers point into buffers owned by the same ExecPlan, which are never
// reallocated; the plan is only used in the forked child, which has a single thread.
unsafe impl Send for ExecPlan {}
// SAFETY: as above; `&ExecPlan` exposes nothing that mutates.
unsafe impl Sync for ExecPlan {}

impl ExecPlan {
    /// Runs in the child between `fork` and `exec`: system calls only, no allocation.
    fn exec(&mut self) -> io::Result<()> {
        let n = self.sources.len();
        let first_free = 3 + n as RawFd;
        for (i, src) in self.sources.iter().enumerate() {
            // Move every source above the target range first, so no dup2 clobbers a source.
            // SAFETY: src is open in the child (inherited from the parent's borrow).
            let tmp = syscall!(unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, first_free) })?;
            self.temps[i] = tmp;
        }
        for (i, tmp) in self.temps.iter().enumerate() {
            // dup2 clears FD_CLOEXEC on the target: these are the only descriptors inherited
            // beyond the standard streams.
            // SAFETY: tmp is open; 3 + i is a valid descriptor number.
            syscall!(unsafe { libc::dup2(*tmp, 3 + i as RawFd) })?;
        }
        mark_cloexec_from(first_free)?;
        if !self.pid_slot.is_null() {
            // SAFETY: getpid cannot fail.
            let pid = unsafe { libc::getpid() };
            write_pid(self.pid_slot, pid as u32);
        }
        if self.die_with_parent {
            set_parent_death_signal(self.parent_pid)?;
        }
        if let Some(mask) = self.umask {
            // SAFETY: umask cannot fail and touches nothing but the process's mask.
            unsafe { libc::umask(mask) };
        }
        // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays that
        // live in this plan. execve returns only on failure.
        unsafe {
            libc::execve(self.path.as_ptr(), self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr())
        };
        Err(io::Error::last_os_error())
    }
}

/// Writes `pid` as decimal digits followed by NUL at `slot` (room for `PID_DIGITS + 1`).
fn write_pid(slot: *mut u8, pid: u32) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = pid;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: slot has PID_DIGITS + 1 bytes and i < len <= PID_DIGITS (a u32 has at most
        // 10 digits), so slot + i is in bounds.
        let at = unsafe { slot.add(i) };
        // SAFETY: in bounds, as above; u8 needs no alignment.
        unsafe { at.write(digits[len - 1 - i]) };
    }
    // SAFETY: len <= PID_DIGITS, so slot + len is the last byte of the slot.
    let end = unsafe { slot.add(len) };
    // SAFETY: in bounds, as above.
    unsafe { end.write(0) };
}

/// Marks every descriptor from `first` up close-on-exec.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn mark_cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let res = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if res == 0 {
        return Ok(());
    }
    // Kernels before 5.11: fall back to one fcntl per possible descriptor.
    mark_cloexec_loop(first)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn mark_cloexec_from(first: RawFd) -> io::Result<()> {
    mark_cloexec_loop(first)
}

fn mark_cloexec_loop(first: RawFd) -> io::Result<()> {
    // SAFETY: an all-zero rlimit is a valid value to be overwritten.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: lim is valid for writes.
    syscall!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let max = (lim.rlim_cur as u64).min(1 << 20) as RawFd;
    for fd in first..max {
        // SAFETY: F_SETFD on a closed descriptor fails with EBADF, which is ignored.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_parent_death_signal(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    syscall!(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })?;
    // The parent may have died before prctl: then we were already reparented.
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::other("parent exited during spawn"));
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_parent_death_signal(_parent: libc::pid_t) -> io::Result<()> {
    Ok(())
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte"))
    })
}

/// Finds `program` the way `execvp` would, in the child's `PATH`.
fn resolve_program(program: &OsStr, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("program {:?} not found in PATH", program)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Spawns `cmd`. Returns the child and, if asked for, the parent's end of its channel.
pub(crate) fn spawn(cmd: &mut Command<'_>) -> io::Result<(Child, Option<RawChannel>)> {
    let mut env = cmd.resolved_env();
    let mut sources: Vec<RawFd> = cmd.listen.iter().map(|(_, s)| s.0.as_raw_fd()).collect();
    let channel = if cmd.channel { Some(pair()?) } else { None };
    if let Some((_, theirs)) = &channel {
        env.push((ENV_CHANNEL_FD.into(), (3 + sources.len()).to_string().into()));
        sources.push(theirs.as_raw_fd());
    }
    if !cmd.listen.is_empty() {
        env.push((ENV_LISTEN_FDS.into(), cmd.listen.len().to_string().into()));
        let names: Vec<&str> = cmd.listen.iter().map(|(n, _)| n.as_str()).collect();
        env.push((ENV_LISTEN_FDNAMES.into(), names.join(":").into()));
    }
    let path = resolve_program(&cmd.program, &env)?;
    let direct = cmd.os.trust_cloexec
        && sources.is_empty()
        && !cmd.die_with_parent
        && cmd.os.umask.is_none();
    let plan = if direct { None } else { Some(exec_plan(cmd, &path, &mut env, sources)?) };

    let mut std_cmd = std::process::Command::new(&path);
    if let Some(dir) = &cmd.cwd {
        std_cmd.current_dir(dir);
    }
    if let Some(socket) = &cmd.stdio_socket {
        let fd = socket.0.as_raw_fd();
        std_cmd.stdin(Stdio::from(dup_cloexec(fd)?));
        std_cmd.stdout(Stdio::from(dup_cloexec(fd)?));
    }
    if let Some(s) = cmd.stdin.take() {
        std_cmd.stdin(Stdio::from(s));
    }
    if let Some(s) = cmd.stdout.take() {
        std_cmd.stdout(Stdio::from(s));
    }
    if let Some(s) = cmd.stderr.take() {
        std_cmd.stderr(Stdio::from(s));
    }
    if let Some(uid) = cmd.os.uid {
        std_cmd.uid(uid);
    }
    if let Some(gid) = cmd.os.gid {
        std_cmd.gid(gid);
    }
    if let Some(pgroup) = cmd.os.process_group {
        std_cmd.process_group(pgroup);
    }
    match plan {
        // SAFETY: the hook only makes async-signal-safe system calls on memory allocated
        // before the fork (see ExecPlan::exec).
        Some(mut plan) => unsafe { std_cmd.pre_exec(move || plan.exec()) },
        // Nothing to do between fork and exec, so std starts the child with posix_spawn.
        // (The other descriptors are the caller's word: see `CommandExt::trust_cloexec`.)
        None => std_cmd.arg0(&cmd.program).args(&cmd.args).env_clear().envs(env),
    };
    let child = std_cmd.spawn()?;
    // Our copy of the child's channel end closes here; the child holds its own.
    Ok((Child(child), channel.map(|(ours, _theirs)| ours)))
}

/// The environment block, arguments and descriptor layout for `ExecPlan::exec`.
fn exec_plan(
    cmd: &Command<'_>,
    path: &Path,
    env: &mut Vec<(OsString, OsString)>,
    sources: Vec<RawFd>,
) -> io::Result<ExecPlan> {
    let mut envp: Vec<Box<[u8]>> = Vec::with_capacity(env.len() + 1);
    for (k, v) in env.drain(..) {
        let mut entry = k.into_vec();
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        cstring(&entry, "an environment variable")?;
        entry.push(0);
        envp.push(entry.into_boxed_slice());
    }
    let mut pid_slot = std::ptr::null_mut();
    if !sources.is_empty() {
        let mut entry = format!("{ENV_LISTEN_PID}=").into_bytes();
        let at = entry.len();
        entry.resize(at + PID_DIGITS + 1, 0);
        let mut entry = entry.into_boxed_slice();
        pid_slot = entry[at..].as_mut_ptr();
        // Valid even if the hook never runs: "LISTEN_PID=" followed by NUL.
        envp.push(entry);
    }
    let envp_ptrs: Vec<*const libc::c_char> =
        envp.iter().map(|e| e.as_ptr().cast()).chain(std::iter::once(std::ptr::null())).collect();
    let argv: Vec<CString> = std::iter::once(cmd.program.as_os_str())
        .chain(cmd.args.iter().map(OsString::as_os_str))
        .map(|a| cstring(a.as_bytes(), "an argument"))
        .collect::<io::Result<_>>()?;
    let argv_ptrs: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    Ok(ExecPlan {
        path: cstring(path.as_os_str().as_bytes(), "the program path")?,
        _argv: argv,
        argv_ptrs,
        _envp: envp,
        envp_ptrs,
        pid_slot,
        temps: vec![-1; sources.len()],
        sources,
        die_with_parent: cmd.die_with_parent,
        // SAFETY: getpid cannot fail.
        parent_pid: unsafe { libc::getpid() },
        umask: cmd.os.umask.map(|m| m as libc::mode_t),
    })
}

fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fd is open for the duration of the borrow it came from.
    let new = syscall!(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

static TAKEN: AtomicBool = AtomicBool::new(false);

fn inherit_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Adopts what the environment says this process was started with (`LISTEN_PID` must name
/// us): descriptors 3, 4, … and, after them, the channel. Environment problems are
/// `InvalidInput` errors.
pub(crate) fn inherited() -> io::Result<Option<InheritedParts>> {
    let var = |k: &str| std::env::var(k).ok();
    let Some(pid) = var(ENV_LISTEN_PID) else { return Ok(None) };
    let pid: u32 =
        pid.parse().map_err(|_| inherit_error(format!("{ENV_LISTEN_PID}={pid:?} is not a pid")))?;
    if pid != std::process::id() {
        return Ok(None);
    }
    let count = listen_count()?;
    let names = listen_names();
    let channel_fd = match var(ENV_CHANNEL_FD) {
        None => None,
        Some(n) => Some(n.parse::<usize>().ok().filter(|n| *n == 3 + count).ok_or_else(|| {
            inherit_error(format!(
                "{ENV_CHANNEL_FD}={n:?} does not follow the {count} listening descriptors"
            ))
        })?),
    };
    let mut fds = inherited_fds(count + channel_fd.map_or(0, |_| 1))
        .map_err(|e| inherit_error(e.to_string()))?;
    let channel = match channel_fd {
        Some(_) => Some(RawChannel::from_owned(fds.pop().expect("channel descriptor"))?),
        None => None,
    };
    Ok(Some(InheritedParts { channel, sockets: fds, on_channel: 0, names, keep_channel: true }))
}

/// Adopts the inherited descriptors `3..3 + count`, marking them close-on-exec.
///
/// Only the first call adopts anything (later calls fail), and the caller only asks when
/// `LISTEN_PID` names this process: the descriptors were passed to it to own.
fn inherited_fds(count: usize) -> io::Result<Vec<OwnedFd>> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("already taken by an earlier call to inherited()"));
    }
    let first: RawFd = 3;
    let mut out = Vec::with_capacity(count);
    for fd in first..first + count as RawFd {
        // SAFETY: F_GETFD has no side effects; it fails with EBADF if fd is not open.
        syscall!(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map_err(|e| {
            io::Error::new(e.kind(), format!("inherited descriptor {fd} is not open: {e}"))
        })?;
        // SAFETY: fd is open, was passed to this process to own, and the TAKEN guard makes
        // this the only place that adopts it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        super::socket::set_cloexec(&owned)?;
        out.push(owned);
    }
    Ok(out)
}
