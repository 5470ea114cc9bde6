//! Named pipes: random names, an owner-only DACL, overlapped `ConnectNamedPipe` with a timeout,
//! and the hello exchange that opens a rendezvous connection.
//!
//! A rendezvous [`bind`] at a file path creates a pipe `\\.\pipe\handover-<128 random bits>`
//! and writes its name, the server's pid and a 256-bit secret into a new file at the path,
//! created with the same owner-only DACL. [`connect`] reads the file, opens the pipe and
//! sends a hello (magic, version, its pid, the secret); the server checks the secret and that
//! the pid matches `GetNamedPipeClientProcessId`, then answers with its own hello, which the
//! client checks against `GetNamedPipeServerProcessId` and the file. The DACL keeps other
//! users out; the secret keeps out same-user processes that cannot read the file (the pid a
//! pipe reports is only a consistency check). A path that is itself a pipe name
//! (`\\.\pipe\...`) binds that name directly, with an all-zero secret: the DACL is then the
//! only gate.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, HandleOrInvalid, OwnedHandle};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_FILE_EXISTS, ERROR_IO_PENDING, ERROR_PIPE_BUSY, ERROR_PIPE_CONNECTED,
    GENERIC_READ, GENERIC_WRITE, HANDLE,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetSidSubAuthority, GetSidSubAuthorityCount, GetTokenInformation, TokenUser,
    SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, WriteFile, CREATE_NEW, FILE_ATTRIBUTE_NORMAL, FILE_FLAG_FIRST_PIPE_INSTANCE,
    FILE_FLAG_OVERLAPPED, OPEN_EXISTING, PIPE_ACCESS_DUPLEX, SECURITY_IDENTIFICATION,
    SECURITY_SQOS_PRESENT,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeClientProcessId, GetNamedPipeServerProcessId,
    WaitNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::OpenProcessToken;
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use super::handle::{current_process, event, from_wide_ptr, hex, random, wide, LocalBox};
use super::overlapped::{wait_event, Interest, Pipe, Received};
use super::{BorrowedSocket, OwnedSocket};
use crate::PeerCredentials;

/// How long `connect` keeps retrying a busy pipe, and a handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pipe instances a listener may have at once (connected ones included).
const LISTENER_INSTANCES: u32 = 64;
const PIPE_BUFFER: u32 = 64 * 1024;
const PIPE_PREFIX: &str = r"\\.\pipe\";

/// A connected, non-blocking channel endpoint, with the pid its sockets are duplicated for.
#[derive(Debug)]
pub(crate) struct RawChannel {
    pipe: Pipe,
    peer_pid: u32,
}

impl RawChannel {
    pub(crate) fn new(pipe: Pipe, peer_pid: u32) -> RawChannel {
        RawChannel { pipe, peer_pid }
    }

    pub(crate) fn pipe(&self) -> &Pipe {
        &self.pipe
    }

    /// The process that sockets sent on this channel are duplicated for.
    pub(crate) fn peer_pid(&self) -> u32 {
        self.peer_pid
    }
}

/// One non-blocking write of `bytes`. Sockets travel inline in the frame bytes, so `handles`
/// is ignored. `_block` is a hint this backend does not need: callers wait with [`wait`] on
/// `WouldBlock`.
pub(crate) fn send<'a>(
    ch: &RawChannel,
    bytes: &[u8],
    _handles: impl ExactSizeIterator<Item = BorrowedSocket<'a>>,
    _block: bool,
) -> io::Result<usize> {
    ch.pipe().write(bytes)
}

/// `WouldBlock` until the last write has completed (see [`Pipe::flush`]).
pub(crate) fn flush(ch: &RawChannel) -> io::Result<()> {
    ch.pipe().flush()
}

/// One non-blocking read. Nothing arrives out of band on Windows. `_block` as for [`send`].
pub(crate) fn recv(
    ch: &RawChannel,
    buf: &mut [u8],
    _handles: &mut Vec<OwnedSocket>,
    _max_handles: usize,
    _block: bool,
) -> io::Result<Received> {
    Ok(Received { len: ch.pipe().read(buf)?, truncated: false })
}

/// Blocks until the channel is ready, or the deadline passes (`Ok(false)`).
pub(crate) fn wait(
    ch: &RawChannel,
    interest: Interest,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    ch.pipe().wait(interest, deadline)
}

fn pipe_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what.to_owned())
}

/// The current user's SID as a string, e.g. `S-1-5-21-…-1001`.
fn user_sid() -> io::Result<&'static (String, u32)> {
    static SID: OnceLock<(String, u32)> = OnceLock::new();
    if let Some(s) = SID.get() {
        return Ok(s);
    }
    let mut token: HANDLE = std::ptr::null_mut();
    syscall!(
        // SAFETY: GetCurrentProcess returns a pseudo-handle; token is valid for writes.
        unsafe { OpenProcessToken(current_process(), TOKEN_QUERY, &mut token) },
        PartialEq::eq,
        0
    )?;
    // SAFETY: OpenProcessToken succeeded and gave us a handle we own.
    let token = unsafe { OwnedHandle::from_raw_handle(token as _) };
    let mut buf = vec![0u64; 64];
    let mut len = 0u32;
    syscall!(
        // SAFETY: buf is valid for (its length * 8) bytes of writes, aligned for TOKEN_USER.
        unsafe {
            GetTokenInformation(
                token.as_raw_handle() as HANDLE,
                TokenUser,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
                &mut len,
            )
        },
        PartialEq::eq,
        0
    )?;
    // SAFETY: GetTokenInformation wrote a TOKEN_USER at the start of buf.
    let sid = unsafe { buf.as_ptr().cast::<TOKEN_USER>().read() }.User.Sid;
    let mut text: windows_sys::core::PWSTR = std::ptr::null_mut();
    // SAFETY: sid points into buf, which outlives the call; text is valid for writes.
    syscall!(unsafe { ConvertSidToStringSidW(sid, &mut text) }, PartialEq::eq, 0)?;
    let text = LocalBox(text.cast());
    // SAFETY: ConvertSidToStringSidW returned a NUL-terminated UTF-16 string, alive in `text`.
    let s = unsafe { from_wide_ptr(text.0.cast::<u16>()) };
    // SAFETY: sid is a valid SID (from the token).
    let count = unsafe { GetSidSubAuthorityCount(sid) };
    // SAFETY: GetSidSubAuthorityCount returns a pointer into the SID.
    let count = unsafe { count.read() };
    // SAFETY: the last sub-authority index is count - 1, within the SID.
    let rid = unsafe { GetSidSubAuthority(sid, u32::from(count).saturating_sub(1)) };
    // SAFETY: GetSidSubAuthority returns a pointer into the SID.
    let rid = unsafe { rid.read() };
    Ok(SID.get_or_init(|| (s, rid)))
}

/// The relative id (last sub-authority) of the current user's SID: what stands for a uid.
pub(crate) fn current_uid() -> u32 {
    user_sid().map_or(u32::MAX, |(_, rid)| *rid)
}

/// Who is on the other end. The pid is the one the channel duplicates sockets for; the "uid"
/// is ours, because the owner-only DACL admits no other user.
pub(crate) fn peer_credentials(ch: &RawChannel) -> io::Result<PeerCredentials> {
    Ok(PeerCredentials { pid: Some(ch.peer_pid), uid: Some(current_uid()), gid: None })
}

/// Security attributes granting the current user, and no one else, full access.
struct OwnerOnly {
    sd: LocalBox,
    sa: SECURITY_ATTRIBUTES,
}

fn owner_only() -> io::Result<OwnerOnly> {
    let (sid, _) = user_sid()?;
    let sddl = wide(format!("O:{sid}D:P(A;;GA;;;{sid})"))?;
    let mut sd = std::ptr::null_mut();
    syscall!(
        // SAFETY: sddl is NUL-terminated; sd is valid for writes; the size out-pointer may be null.
        unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        },
        PartialEq::eq,
        0
    )?;
    let sd = LocalBox(sd);
    let sa = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.0,
        bInheritHandle: 0,
    };
    Ok(OwnerOnly { sd, sa })
}

fn owned_or_invalid(raw: HANDLE) -> io::Result<OwnedHandle> {
    // SAFETY: raw was just returned by a Create* call: a handle we own or INVALID_HANDLE_VALUE.
    let h = unsafe { HandleOrInvalid::from_raw_handle(raw as _) };
    OwnedHandle::try_from(h).map_err(|_| io::Error::last_os_error())
}

/// `\\.\pipe\handover-<32 hex digits>`.
fn random_pipe_name() -> io::Result<String> {
    let mut r = [0u8; 16];
    random(&mut r)?;
    Ok(format!("{PIPE_PREFIX}handover-{}", hex(&r)))
}

/// One server instance of the pipe `name` ([`CreateNamedPipeW`]): byte mode, overlapped,
/// local clients only, owner-only DACL.
///
/// [`CreateNamedPipeW`]: https://learn.microsoft.com/en-us/windows/win32/api/winbase/nf-winbase-createnamedpipew
fn create_instance(name: &[u16], first: bool, max_instances: u32) -> io::Result<OwnedHandle> {
    let sec = owner_only()?;
    let first_flag = if first { FILE_FLAG_FIRST_PIPE_INSTANCE } else { 0 };
    // SAFETY: name is NUL-terminated; sec.sa points at sec.sd, both alive for the call.
    let raw = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | first_flag,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            max_instances,
            PIPE_BUFFER,
            PIPE_BUFFER,
            0,
            &sec.sa,
        )
    };
    drop(sec.sd);
    owned_or_invalid(raw)
}

/// Opens the client end of `name`, retrying with `WaitNamedPipeW` while every instance is
/// busy, until `deadline`.
fn open_client(name: &[u16], deadline: Instant) -> io::Result<OwnedHandle> {
    loop {
        // SAFETY: name is NUL-terminated; null security attributes and template are allowed.
        let raw = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                std::ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
                std::ptr::null_mut(),
            )
        };
        match owned_or_invalid(raw) {
            Ok(h) => return Ok(h),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let ms = left.as_millis().clamp(1, 1000) as u32;
                // SAFETY: name is NUL-terminated. A false return (timeout, or the pipe gone)
                // is handled by the next CreateFileW.
                unsafe { WaitNamedPipeW(name.as_ptr(), ms) };
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits for a client on `server` ([`ConnectNamedPipe`], overlapped) until `deadline`;
/// `Ok(false)` on expiry, after cancelling the wait (`CancelIoEx`).
///
/// [`ConnectNamedPipe`]: https://learn.microsoft.com/en-us/windows/win32/api/namedpipeapi/nf-namedpipeapi-connectnamedpipe
fn connect_server(server: &OwnedHandle, deadline: Option<Instant>) -> io::Result<bool> {
    let h = server.as_raw_handle() as HANDLE;
    let ev = event()?;
    // SAFETY: OVERLAPPED is plain old data, for which all-zero is a valid value.
    let mut ov: Box<OVERLAPPED> = Box::new(unsafe { std::mem::zeroed() });
    ov.hEvent = ev.as_raw_handle() as HANDLE;
    let ov = Box::into_raw(ov);
    let res = connect_server_with(h, &ev, ov, deadline);
    // SAFETY: connect_server_with returns only once the operation is over (completed or
    // cancelled and waited for), so the kernel no longer uses ov; it came from Box::into_raw.
    drop(unsafe { Box::from_raw(ov) });
    res
}

fn connect_server_with(
    h: HANDLE,
    ev: &OwnedHandle,
    ov: *mut OVERLAPPED,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    // SAFETY: h is a pipe server handle opened overlapped; ov lives until this function
    // returns and every path below waits for the operation to finish first.
    if unsafe { ConnectNamedPipe(h, ov) } != 0 {
        return Ok(true);
    }
    // SAFETY: GetLastError has no preconditions.
    match unsafe { GetLastError() } {
        ERROR_PIPE_CONNECTED => return Ok(true),
        ERROR_IO_PENDING => {}
        _ => return Err(io::Error::last_os_error()),
    }
    let signalled = wait_event(ev, deadline);
    if !matches!(signalled, Ok(true)) {
        // SAFETY: ov belongs to the pending ConnectNamedPipe on h.
        unsafe { CancelIoEx(h, ov) };
    }
    let mut n = 0u32;
    // SAFETY: ov belongs to the operation on h; bWait = TRUE returns once it is over.
    let done = syscall!(unsafe { GetOverlappedResult(h, ov, &mut n, 1) }, PartialEq::eq, 0);
    match (signalled, done) {
        (Err(e), _) => Err(e),
        (_, Ok(_)) => Ok(true),
        (Ok(false), Err(_)) => Ok(false),
        (Ok(true), Err(e)) => Err(e),
    }
}

fn client_pid(server: &OwnedHandle) -> io::Result<u32> {
    let mut pid = 0u32;
    syscall!(
        // SAFETY: server is a pipe server handle; pid is valid for writes.
        unsafe { GetNamedPipeClientProcessId(server.as_raw_handle() as HANDLE, &mut pid) },
        PartialEq::eq,
        0
    )?;
    Ok(pid)
}

pub(crate) fn server_pid(client: &OwnedHandle) -> io::Result<u32> {
    let mut pid = 0u32;
    syscall!(
        // SAFETY: client is a pipe handle; pid is valid for writes.
        unsafe { GetNamedPipeServerProcessId(client.as_raw_handle() as HANDLE, &mut pid) },
        PartialEq::eq,
        0
    )?;
    Ok(pid)
}

/// A connected pipe within this process: the server end and the client end, both overlapped
/// and not inheritable. One instance only, and the client checked to be us, so no other
/// process can have slipped in between `CreateNamedPipeW` and `CreateFileW`.
pub(crate) fn pipe_pair() -> io::Result<(OwnedHandle, OwnedHandle)> {
    let name = wide(random_pipe_name()?)?;
    let server = create_instance(&name, true, 1)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let client = open_client(&name, deadline)?;
    if !connect_server(&server, Some(deadline))? {
        return Err(io::ErrorKind::TimedOut.into());
    }
    if client_pid(&server)? != std::process::id() {
        return Err(pipe_error("another process connected to a private pipe"));
    }
    Ok((server, client))
}

/// Two connected endpoints in this process.
pub(crate) fn pair() -> io::Result<(RawChannel, RawChannel)> {
    let (server, client) = pipe_pair()?;
    let me = std::process::id();
    Ok((RawChannel::new(Pipe::new(server)?, me), RawChannel::new(Pipe::new(client)?, me)))
}

// --- rendezvous ---------------------------------------------------------------------------

const HELLO_MAGIC: [u8; 8] = *b"HNDVHELO";
const HELLO_VERSION: u8 = 1;
const HELLO_LEN: usize = 48;
const SECRET_LEN: usize = 32;

fn hello(secret: &[u8; SECRET_LEN]) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..8].copy_from_slice(&HELLO_MAGIC);
    b[8] = HELLO_VERSION;
    b[12..16].copy_from_slice(&std::process::id().to_le_bytes());
    b[16..].copy_from_slice(secret);
    b
}

/// Checks a peer's hello; returns the pid it claims.
fn check_hello(b: &[u8; HELLO_LEN], secret: &[u8; SECRET_LEN]) -> io::Result<u32> {
    if b[..8] != HELLO_MAGIC || b[8] != HELLO_VERSION || b[9..12] != [0, 0, 0] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "peer did not send a handover hello",
        ));
    }
    // Constant time: the comparison must not tell a guesser how many bytes were right.
    let diff = b[16..].iter().zip(secret).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if diff != 0 {
        return Err(pipe_error("peer does not know the channel secret"));
    }
    Ok(u32::from_le_bytes([b[12], b[13], b[14], b[15]]))
}

fn write_all(pipe: &Pipe, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        match pipe.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !pipe.wait(Interest::Writable, Some(deadline))? {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_exact(pipe: &Pipe, mut buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        match pipe.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !pipe.wait(Interest::Readable, Some(deadline))? {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A rendezvous: the pipe name, the secret, and the instance waiting for the next client.
#[derive(Debug)]
pub(crate) struct RawListener {
    name: Vec<u16>,
    secret: [u8; SECRET_LEN],
    next: Mutex<Option<OwnedHandle>>,
}

fn is_pipe_name(path: &Path) -> bool {
    path.to_str().is_some_and(|p| {
        p.len() > PIPE_PREFIX.len() && p[..PIPE_PREFIX.len()].eq_ignore_ascii_case(PIPE_PREFIX)
    })
}

/// Binds a rendezvous at `path`: a file naming a fresh random pipe (see the module docs), or
/// the pipe `path` itself if it is a pipe name.
pub(crate) fn bind(path: &Path) -> io::Result<RawListener> {
    let mut secret = [0u8; SECRET_LEN];
    let pipe = if is_pipe_name(path) {
        path.to_str().unwrap_or_default().to_owned()
    } else {
        random(&mut secret)?;
        random_pipe_name()?
    };
    let name = wide(&pipe)?;
    let first = create_instance(&name, true, LISTENER_INSTANCES).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(io::ErrorKind::AddrInUse, format!("pipe {pipe} exists already: {e}"))
        } else {
            e
        }
    })?;
    if !is_pipe_name(path) {
        let text = format!(
            "handover-rendezvous 1\npipe {pipe}\npid {}\nsecret {}\n",
            std::process::id(),
            hex(&secret)
        );
        write_new_file(path, text.as_bytes())?;
    }
    Ok(RawListener { name, secret, next: Mutex::new(Some(first)) })
}

/// Creates `path` (failing with `AddrInUse` if it exists) with the owner-only DACL, and
/// writes `bytes` to it.
fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let sec = owner_only()?;
    let wpath = wide(path)?;
    // SAFETY: wpath is NUL-terminated; sec.sa points at sec.sd, both alive for the call.
    let raw = unsafe {
        CreateFileW(
            wpath.as_ptr(),
            GENERIC_WRITE,
            0,
            &sec.sa,
            CREATE_NEW,
            FILE_ATTRIBUTE_NORMAL,
            std::ptr::null_mut(),
        )
    };
    let file = owned_or_invalid(raw).map_err(|e| {
        if e.raw_os_error() == Some(ERROR_FILE_EXISTS as i32) {
            io::Error::new(io::ErrorKind::AddrInUse, format!("{} exists already", path.display()))
        } else {
            e
        }
    })?;
    let mut written = 0u32;
    syscall!(
        // SAFETY: the file was opened for synchronous writing; bytes is valid for its length.
        unsafe {
            WriteFile(
                file.as_raw_handle() as HANDLE,
                bytes.as_ptr(),
                bytes.len() as u32,
                &mut written,
                std::ptr::null_mut(),
            )
        },
        PartialEq::eq,
        0
    )?;
    if written as usize != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "rendezvous file cut short"));
    }
    Ok(())
}

/// Accepts one connection and checks its hello.
pub(crate) fn accept(l: &RawListener) -> io::Result<RawChannel> {
    loop {
        if let Some(ch) = accept_until(l, None)? {
            return Ok(ch);
        }
    }
}

/// As [`accept`], giving up at `deadline` (`Ok(None)`).
pub(crate) fn accept_until(
    l: &RawListener,
    deadline: Option<Instant>,
) -> io::Result<Option<RawChannel>> {
    let mut next = l.next.lock().unwrap_or_else(|p| p.into_inner());
    let instance = match next.take() {
        Some(h) => h,
        None => create_instance(&l.name, false, LISTENER_INSTANCES)?,
    };
    match connect_server(&instance, deadline) {
        Ok(true) => {}
        Ok(false) => {
            *next = Some(instance);
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    // Have the next instance ready before the handshake, so other clients can connect.
    *next = create_instance(&l.name, false, LISTENER_INSTANCES).ok();
    drop(next);
    let os_pid = client_pid(&instance)?;
    let pipe = Pipe::new(instance)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut theirs = [0u8; HELLO_LEN];
    read_exact(&pipe, &mut theirs, deadline)?;
    let pid = check_hello(&theirs, &l.secret)?;
    if pid != os_pid {
        return Err(pipe_error("peer's hello names another process than the pipe reports"));
    }
    write_all(&pipe, &hello(&l.secret), deadline)?;
    Ok(Some(RawChannel::new(pipe, pid)))
}

/// What a rendezvous file says.
struct Rendezvous {
    pipe: String,
    pid: Option<u32>,
    secret: [u8; SECRET_LEN],
}

fn parse_rendezvous(text: &str) -> Option<Rendezvous> {
    let mut lines = text.lines();
    if lines.next()? != "handover-rendezvous 1" {
        return None;
    }
    let (mut pipe, mut pid, mut secret) = (None, None, None);
    for line in lines {
        let (k, v) = line.split_once(' ')?;
        match k {
            "pipe" if v.starts_with(PIPE_PREFIX) && v.len() < 256 => pipe = Some(v.to_owned()),
            "pid" => pid = Some(v.parse().ok()?),
            "secret" if v.len() == 2 * SECRET_LEN => {
                let mut s = [0u8; SECRET_LEN];
                for (i, b) in s.iter_mut().enumerate() {
                    *b = u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                secret = Some(s);
            }
            _ => return None,
        }
    }
    Some(Rendezvous { pipe: pipe?, pid: Some(pid?), secret: secret? })
}

/// Connects to the rendezvous at `path` (a file written by [`bind`], or a pipe name).
pub(crate) fn connect(path: &Path) -> io::Result<RawChannel> {
    let rv = if is_pipe_name(path) {
        Rendezvous {
            pipe: path.to_str().unwrap_or_default().to_owned(),
            pid: None,
            secret: [0; SECRET_LEN],
        }
    } else {
        let text = std::fs::read(path)?;
        if text.len() > 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "rendezvous file too large"));
        }
        let text = String::from_utf8(text).ok();
        text.as_deref().and_then(parse_rendezvous).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a handover rendezvous file", path.display()),
            )
        })?
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let handle = open_client(&wide(&rv.pipe)?, deadline)?;
    let os_pid = server_pid(&handle)?;
    if rv.pid.is_some_and(|p| p != os_pid) {
        return Err(pipe_error("the pipe is served by another process than the rendezvous names"));
    }
    let pipe = Pipe::new(handle)?;
    write_all(&pipe, &hello(&rv.secret), deadline)?;
    let mut theirs = [0u8; HELLO_LEN];
    read_exact(&pipe, &mut theirs, deadline)?;
    let pid = check_hello(&theirs, &rv.secret)?;
    if pid != os_pid {
        return Err(pipe_error("server's hello names another process than the pipe reports"));
    }
    Ok(RawChannel::new(pipe, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_wrong_secret() {
        let secret = [7u8; SECRET_LEN];
        let h = hello(&secret);
        assert_eq!(check_hello(&h, &secret).unwrap(), std::process::id());
        let err = check_hello(&h, &[8u8; SECRET_LEN]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(check_hello(&bad, &secret).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn rendezvous_file_parsing() {
        let s = "handover-rendezvous 1\npipe \\\\.\\pipe\\handover-ab\npid 12\nsecret ".to_owned()
            + &"0f".repeat(32)
            + "\n";
        let rv = parse_rendezvous(&s).unwrap();
        assert_eq!(rv.pid, Some(12));
        assert_eq!(rv.secret, [0x0f; 32]);
        assert!(parse_rendezvous("handover-rendezvous 2\n").is_none());
        assert!(parse_rendezvous(&s.replace("pid 12", "pid x")).is_none());
        assert!(parse_rendezvous(&s.replace("secret ", "secret 1")).is_none());
        assert!(is_pipe_name(Path::new(r"\\.\pipe\x")));
        assert!(!is_pipe_name(Path::new(r"C:\x")));
    }
}
