//! `CreateProcessW` with `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`: the child inherits the handles
//! named there and nothing else, whatever other handles of ours are inheritable.
//!
//! Sockets are not given by inheritance (layered providers make socket handles unreliable to
//! inherit): the child inherits one end of a private pipe, and listening sockets travel over
//! it as the channel's first message, duplicated for the child's pid, which `CreateProcessW`
//! has just returned. The child finds the pipe in `HANDOVER_CHANNEL_FD` (a handle value) and
//! checks that its parent is the process `HANDOVER_PARENT_PID` names and that this process
//! serves the pipe, so a grandchild that inherited the environment adopts nothing. The
//! inetd-style standard handles are the one exception: a non-overlapped, inheritable
//! duplicate of the socket made for this purpose.
//!
//! A child given a job is created in it through `PROC_THREAD_ATTRIBUTE_JOB_LIST`, so it
//! never runs outside the job (Wine 8.0 honours the attribute as well).

use std::ffi::{OsStr, OsString};
use std::io;
use std::marker::PhantomData;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{
    AsHandle, AsRawHandle, AsRawSocket, FromRawHandle, FromRawSocket, OwnedHandle, OwnedSocket,
    RawHandle,
};
use std::os::windows::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

use windows_sys::Wdk::System::Threading::{NtQueryInformationProcess, ProcessBasicInformation};
use windows_sys::Win32::Foundation::{
    DuplicateHandle, SetHandleInformation, DUPLICATE_SAME_ACCESS, HANDLE, HANDLE_FLAG_INHERIT,
    INVALID_HANDLE_VALUE, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::{WSASocketW, FROM_PROTOCOL_INFO, INVALID_SOCKET};
use windows_sys::Win32::Storage::FileSystem::{GetFileType, FILE_TYPE_PIPE};
use windows_sys::Win32::System::Console::{
    GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};
use windows_sys::Win32::System::Threading::{
    CreateProcessW, DeleteProcThreadAttributeList, GetExitCodeProcess,
    InitializeProcThreadAttributeList, TerminateProcess, UpdateProcThreadAttribute,
    WaitForSingleObject, CREATE_UNICODE_ENVIRONMENT, EXTENDED_STARTUPINFO_PRESENT, INFINITE,
    LPPROC_THREAD_ATTRIBUTE_LIST, PROCESS_BASIC_INFORMATION, PROCESS_INFORMATION,
    PROC_THREAD_ATTRIBUTE_HANDLE_LIST, PROC_THREAD_ATTRIBUTE_JOB_LIST, STARTF_USESTDHANDLES,
    STARTUPINFOEXW,
};

use super::handle::current_process;
use super::named_pipe::{pipe_pair, server_pid, RawChannel};
use super::overlapped::Pipe;
use super::wsa_duplicate::duplicate_for;
use crate::spawn::{
    listen_count, listen_names, Command, InheritedParts, ENV_CHANNEL_FD, ENV_CHANNEL_INTERNAL,
    ENV_LISTEN_FDNAMES, ENV_LISTEN_FDS, ENV_PARENT_PID,
};
use crate::stdio::StdioKind;

/// What only Windows' `Command` has (`windows::CommandExt`): the job object it starts the
/// child in, shared so the builder needs no lifetime for it.
#[derive(Debug, Default)]
pub(crate) struct CommandOptions {
    pub(crate) job: Option<std::sync::Arc<super::Job>>,
}

/// A spawned child process.
#[derive(Debug)]
pub(crate) struct Child {
    process: OwnedHandle,
    pid: u32,
    status: Option<ExitStatus>,
}

impl Child {
    pub(crate) fn id(&self) -> u32 {
        self.pid
    }

    fn raw(&self) -> HANDLE {
        self.process.as_raw_handle() as HANDLE
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn process(&self) -> &OwnedHandle {
        &self.process
    }

    /// `TerminateProcess` with exit code 1; a child that has exited already is left alone.
    pub(crate) fn kill(&mut self) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: the process handle is open and has PROCESS_TERMINATE (we created it).
        syscall!(unsafe { TerminateProcess(self.raw(), 1) }, PartialEq::eq, 0)?;
        Ok(())
    }

    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.poll(INFINITE)? {
                return Ok(s);
            }
        }
    }

    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.poll(0)
    }

    fn poll(&mut self, ms: u32) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        // SAFETY: the process handle is open for the lifetime of self.
        match unsafe { WaitForSingleObject(self.raw(), ms) } {
            WAIT_OBJECT_0 => {}
            WAIT_TIMEOUT => return Ok(None),
            _ => return Err(io::Error::last_os_error()),
        }
        let mut code = 0u32;
        // SAFETY: the process handle is open; code is valid for writes.
        syscall!(unsafe { GetExitCodeProcess(self.raw(), &mut code) }, PartialEq::eq, 0)?;
        let status = ExitStatus::from_raw(code);
        self.status = Some(status);
        Ok(Some(status))
    }
}

/// Appends `arg` to a command line, quoted the way `CommandLineToArgvW` and the MSVC runtime
/// split it.
fn append_arg(cmd: &mut Vec<u16>, arg: &OsStr) -> io::Result<()> {
    let wide: Vec<u16> = arg.encode_wide().collect();
    if wide.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument contains a NUL character",
        ));
    }
    if !cmd.is_empty() {
        cmd.push(u16::from(b' '));
    }
    let quote = wide.is_empty()
        || wide
            .iter()
            .any(|&c| c == u16::from(b' ') || c == u16::from(b'\t') || c == u16::from(b'"'));
    if !quote {
        cmd.extend_from_slice(&wide);
        return Ok(());
    }
    cmd.push(u16::from(b'"'));
    let mut backslashes = 0;
    for &c in &wide {
        if c == u16::from(b'\\') {
            backslashes += 1;
        } else {
            if c == u16::from(b'"') {
                // Backslashes before a quote are doubled, and the quote escaped.
                cmd.extend(std::iter::repeat_n(u16::from(b'\\'), backslashes + 1));
            }
            backslashes = 0;
        }
        cmd.push(c);
    }
    // Backslashes before the closing quote are doubled.
    cmd.extend(std::iter::repeat_n(u16::from(b'\\'), backslashes));
    cmd.push(u16::from(b'"'));
    Ok(())
}

/// A `CREATE_UNICODE_ENVIRONMENT` block: `K=V\0…\0`, sorted case-insensitively as Windows
/// expects.
fn env_block(mut env: Vec<(OsString, OsString)>) -> io::Result<Vec<u16>> {
    env.sort_by_key(|(k, _)| k.to_string_lossy().to_uppercase());
    let mut block = Vec::new();
    for (k, v) in env {
        let entry: Vec<u16> =
            k.encode_wide().chain(Some(u16::from(b'='))).chain(v.encode_wide()).collect();
        if entry.contains(&0) || k.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an environment variable contains a NUL character",
            ));
        }
        block.extend(entry);
        block.push(0);
    }
    if block.is_empty() {
        block.push(0);
    }
    block.push(0);
    Ok(block)
}

/// An inheritable duplicate of `h` (the original stays as it is).
fn inheritable(h: HANDLE) -> io::Result<OwnedHandle> {
    let mut dup: HANDLE = std::ptr::null_mut();
    syscall!(
        // SAFETY: both process handles are the current-process pseudo-handle; h is open for the
        // call; dup is valid for writes.
        unsafe {
            DuplicateHandle(
                current_process(),
                h,
                current_process(),
                &mut dup,
                0,
                1,
                DUPLICATE_SAME_ACCESS,
            )
        },
        PartialEq::eq,
        0
    )?;
    // SAFETY: DuplicateHandle succeeded and the new handle is ours alone.
    Ok(unsafe { OwnedHandle::from_raw_handle(dup as RawHandle) })
}

/// An inheritable duplicate of this process's standard handle `i` (0 input, 1 output, 2
/// error), or `None` if it has none (or it cannot be duplicated: the child then has none
/// either, as a console-less parent's child would).
fn inherit_std(i: usize) -> Option<OwnedHandle> {
    let which = [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE][i];
    // SAFETY: GetStdHandle has no preconditions; it may return null or invalid.
    let h = unsafe { GetStdHandle(which) };
    if h.is_null() || h == INVALID_HANDLE_VALUE {
        return None;
    }
    inheritable(h).ok()
}

/// The child's standard handle `i` as `kind` says: an inheritable duplicate (`None`: it has
/// none).
fn child_stdio(kind: StdioKind, i: usize) -> io::Result<Option<OwnedHandle>> {
    match kind {
        StdioKind::Inherit => Ok(inherit_std(i)),
        StdioKind::Null => {
            let nul = std::fs::OpenOptions::new().read(i == 0).write(i > 0).open(r"\\.\NUL")?;
            inheritable(nul.as_raw_handle() as HANDLE).map(Some)
        }
        StdioKind::File(h) => inheritable(h.as_raw_handle() as HANDLE).map(Some),
        StdioKind::Std(_) => Err(io::ErrorKind::Unsupported.into()),
    }
}

/// An inheritable, non-overlapped socket duplicate for a child's standard handles (ReadFile
/// and WriteFile on a standard handle are synchronous).
fn stdio_socket(socket: super::BorrowedSocket<'_>) -> io::Result<OwnedSocket> {
    let info = duplicate_for(socket, std::process::id())?;
    let raw = syscall!(
        // SAFETY: info is a WSAPROTOCOL_INFOW just filled by WSADuplicateSocketW for this process.
        unsafe {
            WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, 0)
        },
        PartialEq::eq,
        INVALID_SOCKET
    )?;
    // SAFETY: WSASocketW returned a new socket that nothing else owns.
    let s = unsafe { OwnedSocket::from_raw_socket(raw as u64) };
    syscall!(
        // SAFETY: the socket handle is open.
        unsafe {
            SetHandleInformation(
                s.as_raw_socket() as HANDLE,
                HANDLE_FLAG_INHERIT,
                HANDLE_FLAG_INHERIT,
            )
        },
        PartialEq::eq,
        0
    )?;
    Ok(s)
}

/// An initialised `PROC_THREAD_ATTRIBUTE_LIST`, deleted on drop. The lifetime keeps the
/// values it points to alive until the list is gone (`CreateProcessW` reads them).
struct AttributeList<'a>(Vec<u64>, PhantomData<&'a [HANDLE]>);

impl<'a> AttributeList<'a> {
    fn new(count: u32) -> io::Result<AttributeList<'a>> {
        let mut size = 0usize;
        // SAFETY: a null list with a size out-pointer asks for the size (and fails with
        // ERROR_INSUFFICIENT_BUFFER, expected).
        unsafe { InitializeProcThreadAttributeList(std::ptr::null_mut(), count, 0, &mut size) };
        let mut buf = vec![0u64; size.div_ceil(8).max(1)];
        syscall!(
            // SAFETY: buf has at least `size` bytes, aligned for the list.
            unsafe {
                InitializeProcThreadAttributeList(buf.as_mut_ptr().cast(), count, 0, &mut size)
            },
            PartialEq::eq,
            0
        )?;
        Ok(AttributeList(buf, PhantomData))
    }

    /// Sets `attribute` to the array `handles` (`PROC_THREAD_ATTRIBUTE_HANDLE_LIST` or
    /// `PROC_THREAD_ATTRIBUTE_JOB_LIST`), which must not be empty.
    fn set_handles(&mut self, attribute: u32, handles: &'a [HANDLE]) -> io::Result<()> {
        debug_assert!(!handles.is_empty());
        syscall!(
            // SAFETY: the list is initialised (new) with room for each attribute set; the
            // lifetime keeps `handles` alive and unchanged for as long as the list exists.
            unsafe {
                UpdateProcThreadAttribute(
                    self.ptr(),
                    0,
                    attribute as usize,
                    handles.as_ptr().cast(),
                    std::mem::size_of_val(handles),
                    std::ptr::null_mut(),
                    std::ptr::null(),
                )
            },
            PartialEq::eq,
            0
        )?;
        Ok(())
    }

    fn ptr(&mut self) -> LPPROC_THREAD_ATTRIBUTE_LIST {
        self.0.as_mut_ptr().cast()
    }
}

impl Drop for AttributeList<'_> {
    fn drop(&mut self) {
        // SAFETY: the list was initialised in new().
        unsafe { DeleteProcThreadAttributeList(self.ptr()) };
    }
}

/// Spawns `cmd`. Returns the child and the parent's end of its channel, which exists if a
/// channel was asked for or listening sockets must travel over it.
pub(crate) fn spawn(cmd: &mut Command<'_>) -> io::Result<(Child, Option<RawChannel>)> {
    let given = [cmd.stdin.take(), cmd.stdout.take(), cmd.stderr.take()];
    if given.iter().flatten().any(|s| matches!(s.0, StdioKind::Std(_))) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a std::process::Stdio cannot be read back on Windows: give a handover::Stdio \
             (null, inherit, or made from a file or handle)",
        ));
    }
    let mut env = cmd.resolved_env();
    let want_pipe = cmd.channel || !cmd.listen.is_empty();
    let pipe = if want_pipe { Some(pipe_pair()?) } else { None };
    let mut keep: Vec<OwnedHandle> = Vec::new();
    let mut list: Vec<HANDLE> = Vec::new();
    if let Some((_, client)) = &pipe {
        let h = inheritable(client.as_raw_handle() as HANDLE)?;
        env.push((ENV_CHANNEL_FD.into(), (h.as_raw_handle() as usize).to_string().into()));
        env.push((ENV_PARENT_PID.into(), std::process::id().to_string().into()));
        if !cmd.channel {
            env.push((ENV_CHANNEL_INTERNAL.into(), "1".into()));
        }
        list.push(h.as_raw_handle() as HANDLE);
        keep.push(h);
    }
    if !cmd.listen.is_empty() {
        env.push((ENV_LISTEN_FDS.into(), cmd.listen.len().to_string().into()));
        let names: Vec<&str> = cmd.listen.iter().map(|(n, _)| n.as_str()).collect();
        env.push((ENV_LISTEN_FDNAMES.into(), names.join(":").into()));
    }

    // Standard handles: inheritable duplicates of what was given, of ours, or of the socket
    // (inetd style: standard input and output, unless given otherwise).
    let mut std_handles: [HANDLE; 3] = [std::ptr::null_mut(); 3];
    let socket_used = cmd.stdio_socket.is_some() && (given[0].is_none() || given[1].is_none());
    let stdio_sock = match &cmd.stdio_socket {
        Some(s) if socket_used => Some(stdio_socket(s.0)?),
        _ => None,
    };
    for (i, given) in given.into_iter().enumerate() {
        let dup = match (given, &stdio_sock) {
            (Some(s), _) => child_stdio(s.0, i)?,
            (None, Some(s)) if i < 2 => {
                std_handles[i] = s.as_raw_socket() as HANDLE;
                continue;
            }
            (None, _) => inherit_std(i),
        };
        if let Some(dup) = dup {
            std_handles[i] = dup.as_raw_handle() as HANDLE;
            list.push(std_handles[i]);
            keep.push(dup);
        }
    }
    if let Some(s) = &stdio_sock {
        list.push(s.as_raw_socket() as HANDLE);
    }

    let mut cmdline = Vec::new();
    append_arg(&mut cmdline, &cmd.program)?;
    for a in &cmd.args {
        append_arg(&mut cmdline, a)?;
    }
    cmdline.push(0);
    let env = env_block(env)?;
    let cwd = cmd.cwd.as_ref().map(super::handle::wide).transpose()?;

    // SAFETY: STARTUPINFOEXW is plain old data, for which all-zero is a valid value.
    let mut si: STARTUPINFOEXW = unsafe { std::mem::zeroed() };
    si.StartupInfo.cb = std::mem::size_of::<STARTUPINFOEXW>() as u32;
    si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
    si.StartupInfo.hStdInput = std_handles[0];
    si.StartupInfo.hStdOutput = std_handles[1];
    si.StartupInfo.hStdError = std_handles[2];
    let jobs: Vec<HANDLE> =
        cmd.os.job.iter().map(|j| j.as_handle().as_raw_handle() as HANDLE).collect();
    let count = u32::from(!list.is_empty()) + u32::from(!jobs.is_empty());
    let mut attrs = None;
    if count > 0 {
        let mut a = AttributeList::new(count)?;
        if !list.is_empty() {
            a.set_handles(PROC_THREAD_ATTRIBUTE_HANDLE_LIST, &list)?;
        }
        if !jobs.is_empty() {
            a.set_handles(PROC_THREAD_ATTRIBUTE_JOB_LIST, &jobs)?;
        }
        si.lpAttributeList = a.ptr();
        attrs = Some(a);
    }
    // SAFETY: PROCESS_INFORMATION is plain old data, for which all-zero is a valid value.
    let mut pi: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
    let inherit = i32::from(!list.is_empty());
    syscall!(
        // SAFETY: cmdline is a mutable NUL-terminated buffer; env is a valid Unicode environment
        // block; cwd is NUL-terminated or null; si (with its attribute list, alive in `attrs`) and
        // pi are valid for the call.
        unsafe {
            CreateProcessW(
                std::ptr::null(),
                cmdline.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                inherit,
                EXTENDED_STARTUPINFO_PRESENT | CREATE_UNICODE_ENVIRONMENT,
                env.as_ptr().cast(),
                cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                &si.StartupInfo,
                &mut pi,
            )
        },
        PartialEq::eq,
        0
    )?;
    drop(attrs);
    // SAFETY: CreateProcessW succeeded; both handles are ours to own.
    let process = unsafe { OwnedHandle::from_raw_handle(pi.hProcess as RawHandle) };
    // SAFETY: as above; the thread handle is not needed.
    drop(unsafe { OwnedHandle::from_raw_handle(pi.hThread as RawHandle) });
    let child = Child { process, pid: pi.dwProcessId, status: None };
    // Our copies of what the child inherited close here (keep, stdio_sock, the client end).
    let channel = match pipe {
        Some((server, _client)) => Some(RawChannel::new(Pipe::new(server)?, child.pid)),
        None => None,
    };
    Ok((child, channel))
}

/// The pid of the process that created this one.
fn parent_pid() -> io::Result<u32> {
    // SAFETY: PROCESS_BASIC_INFORMATION is plain old data, for which all-zero is valid.
    let mut info: PROCESS_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
    let mut len = 0u32;
    // SAFETY: the pseudo-handle names this process; info is valid for its size in writes.
    let status = unsafe {
        NtQueryInformationProcess(
            current_process(),
            ProcessBasicInformation,
            (&mut info as *mut PROCESS_BASIC_INFORMATION).cast(),
            std::mem::size_of::<PROCESS_BASIC_INFORMATION>() as u32,
            &mut len,
        )
    };
    if status < 0 {
        return Err(io::Error::other(format!(
            "NtQueryInformationProcess failed: NTSTATUS {status:#x}"
        )));
    }
    Ok(info.InheritedFromUniqueProcessId as u32)
}

static TAKEN: AtomicBool = AtomicBool::new(false);

fn inherit_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Adopts the channel pipe this process was spawned with, if the environment names one meant
/// for us. Listening sockets arrive later, as the channel's first message.
pub(crate) fn inherited() -> io::Result<Option<InheritedParts>> {
    let var = |k: &str| std::env::var(k).ok();
    let (Some(handle), Some(parent)) = (var(ENV_CHANNEL_FD), var(ENV_PARENT_PID)) else {
        return Ok(None);
    };
    let parent: u32 = parent
        .parse()
        .map_err(|_| inherit_error(format!("{ENV_PARENT_PID}={parent:?} is not a pid")))?;
    if parent_pid()? != parent {
        // Inherited through a process in between: the handle is not ours.
        return Ok(None);
    }
    let value: usize = handle.parse().ok().filter(|v| *v != 0).ok_or_else(|| {
        inherit_error(format!("{ENV_CHANNEL_FD}={handle:?} is not a handle value"))
    })?;
    let count = listen_count()?;
    let names = listen_names();
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(inherit_error("already taken by an earlier call to inherited()".into()));
    }
    let raw = value as HANDLE;
    // SAFETY: GetFileType accepts any value and fails on one that is not an open handle.
    if unsafe { GetFileType(raw) } != FILE_TYPE_PIPE {
        return Err(inherit_error(format!("{ENV_CHANNEL_FD}={value} is not an open pipe")));
    }
    // SAFETY: the handle is open (above), was passed to this process to own (the parent
    // check above), and the TAKEN guard makes this the only place that adopts it.
    let owned = unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) };
    if server_pid(&owned)? != parent {
        return Err(inherit_error(format!(
            "{ENV_CHANNEL_FD}={value} is not a pipe served by the parent"
        )));
    }
    // Our children must not inherit it in turn.
    // SAFETY: the handle is open and ours.
    syscall!(unsafe { SetHandleInformation(raw, HANDLE_FLAG_INHERIT, 0) }, PartialEq::eq, 0)?;
    let channel = RawChannel::new(Pipe::new(owned)?, parent);
    Ok(Some(InheritedParts {
        channel: Some(channel),
        sockets: Vec::new(),
        on_channel: count,
        names,
        keep_channel: var(ENV_CHANNEL_INTERNAL).is_none(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> String {
        let mut v = Vec::new();
        for a in args {
            append_arg(&mut v, OsStr::new(a)).unwrap();
        }
        String::from_utf16(&v).unwrap()
    }

    #[test]
    fn quoting_follows_the_msvc_rules() {
        assert_eq!(line(&["a", "b c", ""]), r#"a "b c" """#);
        assert_eq!(line(&[r#"x"y"#]), r#""x\"y""#);
        assert_eq!(line(&[r"dir\ "]), r#""dir\ ""#);
        assert_eq!(line(&[r"trail\", r"sp ace\"]), r#"trail\ "sp ace\\""#);
    }

    #[test]
    fn env_block_is_sorted_and_double_terminated() {
        let b = env_block(vec![("b".into(), "2".into()), ("A".into(), "1".into())]).unwrap();
        assert_eq!(String::from_utf16(&b).unwrap(), "A=1\0b=2\0\0");
        assert_eq!(env_block(vec![]).unwrap(), vec![0, 0]);
    }
}
