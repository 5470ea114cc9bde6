//! The platform seam: the only module that chooses between backends.
//!
//! Both backends implement this contract (portable code calls nothing else):
//!
//! - `RawChannel`: an owned, connected byte-stream endpoint that can carry sockets;
//!   `pair() -> io::Result<(RawChannel, RawChannel)>`.
//! - `send(&RawChannel, &[u8], handles, block) -> io::Result<usize>`: one write; the handles
//!   (an `ExactSizeIterator` of `BorrowedSocket`) travel with the first byte written. Without
//!   `block`, `WouldBlock` when nothing could be written; with it, a backend may wait inside
//!   the call (Unix does; callers still handle `WouldBlock` by `wait`ing).
//! - `recv(&RawChannel, &mut [u8], &mut Vec<OwnedSocket>, max_handles, block) ->
//!   io::Result<Received>`: one read, likewise; every handle that arrived is owned before the
//!   call returns, and `Received::truncated` says the OS cut control data off.
//! - `flush(&RawChannel) -> io::Result<()>`: `WouldBlock` while bytes accepted by `send` are
//!   still being written (Windows cancels a thread's pending I/O when the thread exits, so a
//!   send returns only after this); always `Ok` on Unix.
//! - `wait(&RawChannel, Interest, deadline) -> io::Result<bool>`: block until ready or deadline.
//! - `peer_credentials(&RawChannel) -> io::Result<PeerCredentials>`, `current_uid()`.
//! - `bind(path)`, `accept`, `connect(path)` (a refused peer is `PermissionDenied`), and on
//!   Unix `bind_abstract(name)`, `connect_abstract(name)` for the `unix` extension module.
//! - `socket_kind(&socket2::Socket) -> io::Result<SocketKind>`.
//! - `spawn(&mut Command) -> io::Result<(Child, Option<RawChannel>)>`, which consumes the
//!   command's `Stdio` settings; and on Unix `mark_cloexec_from(fd)` for the `unix` extension
//!   module.
//! - `OwnedFile`: what a `Stdio` made from a file or pipe holds (`OwnedFd`, `OwnedHandle`);
//!   `From<File>` and `From<ChildStd{in,out,err}>`, and std's `Stdio: From<OwnedFile>`.
//! - `CommandOptions` (`Default`): what only this OS's `Command` has, set through its extension
//!   module: on Unix `uid`, `gid`, `process_group`, `trust_cloexec`; on Windows `job`, an
//!   `Arc<Job>`: an owned job object with kill-on-close, `Job::new() -> io::Result<Job>`,
//!   `terminate(&Job, exit_code)`, `active_processes(&Job) -> io::Result<u32>` and
//!   `AsHandle`, which `spawn` creates the child inside (the `windows` extension module).
//! - `HANDLES_PER_FRAME`, `INLINE_HANDLE_BYTES`: how many handles one write can carry, and the
//!   bytes of inline data each handle needs in a frame (0 where they travel out of band).
//! - `encode_inline(&RawChannel, &mut Vec<u8>, sockets)`: append each socket's inline record
//!   for the channel's peer (Windows: `WSADuplicateSocketW`; nothing on Unix), and
//!   `sockets_from_inline(&[u8], &mut Vec<OwnedSocket>)`: open the sockets those records
//!   describe, each owned as soon as it exists; a bad record is `InvalidData`.
//! - `LISTEN_OVER_CHANNEL`: whether a child's listening sockets travel as the first message
//!   on its channel (Windows) rather than as inherited descriptors (Unix).
//! - `inherited() -> io::Result<Option<InheritedParts>>`: what this process was started with;
//!   environment problems are `InvalidInput`.
//! - `stdin_socket() -> io::Result<Option<OwnedSocket>>`: a duplicate of standard input if it
//!   is a socket (the inetd-style child's side of `Command::stdio_socket`).
//! - `async_io` (feature `tokio`): `AsyncChannel` wrapping `RawChannel` with
//!   `readable(|raw| ...)` / `writable(|raw| ...)`, and `wait_child(&mut Child)`: wait for
//!   an exit without blocking the thread.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use self::windows::*;

#[cfg(not(any(unix, windows)))]
compile_error!("handover supports Unix and Windows only");
