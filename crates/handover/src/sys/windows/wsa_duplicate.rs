//! `WSADuplicateSocketW` on the sending side, `WSASocketW(FROM_PROTOCOL_INFO)` on the
//! receiving side, and socket introspection.
//!
//! A `WSAPROTOCOL_INFOW` is plain data (628 bytes on every Windows target): it travels as the
//! inline handle data of a frame, byte for byte. The receiver never trusts it: the record must
//! be whole, name a family and type we hand over, and the socket `WSASocketW` makes of it must
//! really be that type and bound (connected or listening for a stream). Wine, for one, turns
//! an all-zero record into a fresh unconnected socket instead of failing.

use std::io;
use std::mem::size_of;
use std::os::windows::io::{AsRawSocket, BorrowedSocket, FromRawSocket, OwnedSocket, RawSocket};
use std::sync::Once;

use windows_sys::Wdk::Storage::FileSystem::{
    FileReplaceCompletionInformation, NtSetInformationFile, FILE_COMPLETION_INFORMATION,
};
use windows_sys::Win32::Networking::WinSock::{
    getsockopt, WSADuplicateSocketW, WSASocketW, WSAStartup, AF_INET, AF_INET6, FROM_PROTOCOL_INFO,
    INVALID_SOCKET, SOCKET, SOCKET_ERROR, SOCK_DGRAM, SOCK_STREAM, SOL_SOCKET, SO_ACCEPTCONN,
    SO_TYPE, WSADATA, WSAPROTOCOL_INFOW, WSA_FLAG_NO_HANDLE_INHERIT, WSA_FLAG_OVERLAPPED,
};
use windows_sys::Win32::System::IO::IO_STATUS_BLOCK;

use super::named_pipe::RawChannel;
use crate::SocketKind;

/// Bytes of one `WSAPROTOCOL_INFOW` in a frame.
pub(crate) const INLINE_HANDLE_BYTES: usize = size_of::<WSAPROTOCOL_INFOW>();

const _: () = assert!(INLINE_HANDLE_BYTES == 628);

/// Winsock must be initialised before `WSASocketW`; a receiver may not have made a socket yet.
pub(super) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: WSADATA is plain old data, for which all-zero is a valid value.
        let mut data: WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: data is valid for writes. Never paired with WSACleanup, as std does.
        let _ = unsafe { WSAStartup(0x202, &mut data) };
    });
}

/// `WSADuplicateSocketW(socket, pid)`: the record that lets process `pid` open its own copy.
///
/// See [`WSADuplicateSocketW`](https://learn.microsoft.com/en-us/windows/win32/api/winsock2/nf-winsock2-wsaduplicatesocketw).
pub(crate) fn duplicate_for(socket: BorrowedSocket<'_>, pid: u32) -> io::Result<WSAPROTOCOL_INFOW> {
    init();
    // SAFETY: WSAPROTOCOL_INFOW is plain old data, for which all-zero is a valid value.
    let mut info: WSAPROTOCOL_INFOW = unsafe { std::mem::zeroed() };
    syscall!(
        // SAFETY: the socket is open for the borrow; info is valid for writes.
        unsafe { WSADuplicateSocketW(socket.as_raw_socket() as SOCKET, pid, &mut info) },
        PartialEq::eq,
        SOCKET_ERROR
    )?;
    Ok(info)
}

fn info_bytes(info: &WSAPROTOCOL_INFOW) -> &[u8] {
    // SAFETY: WSAPROTOCOL_INFOW is a repr(C) struct of integers and arrays with no padding
    // (628 bytes, asserted above); every byte is initialised.
    unsafe {
        std::slice::from_raw_parts(
            (info as *const WSAPROTOCOL_INFOW).cast::<u8>(),
            INLINE_HANDLE_BYTES,
        )
    }
}

/// Appends one `WSAPROTOCOL_INFOW` per socket, duplicated for the channel's peer.
pub(crate) fn encode_inline<'a>(
    ch: &RawChannel,
    out: &mut Vec<u8>,
    sockets: impl Iterator<Item = BorrowedSocket<'a>>,
) -> io::Result<()> {
    for s in sockets {
        let info = duplicate_for(s, ch.peer_pid())?;
        out.extend_from_slice(info_bytes(&info));
    }
    Ok(())
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Opens one socket per `WSAPROTOCOL_INFOW` in `inline`, pushing each to `out` as soon as it
/// exists. A record that is not whole or not usable is an `InvalidData` error; sockets opened
/// before it stay in `out` for the caller to close.
pub(crate) fn sockets_from_inline(inline: &[u8], out: &mut Vec<OwnedSocket>) -> io::Result<()> {
    if inline.len() % INLINE_HANDLE_BYTES != 0 {
        return Err(invalid(format!(
            "inline socket data of {} bytes is not a whole number of {INLINE_HANDLE_BYTES}-byte WSAPROTOCOL_INFOW records",
            inline.len()
        )));
    }
    for record in inline.chunks_exact(INLINE_HANDLE_BYTES) {
        out.push(socket_from_record(record)?);
    }
    Ok(())
}

fn socket_from_record(record: &[u8]) -> io::Result<OwnedSocket> {
    if record.len() != INLINE_HANDLE_BYTES {
        return Err(invalid("WSAPROTOCOL_INFOW record of the wrong size"));
    }
    let info: WSAPROTOCOL_INFOW =
        // SAFETY: record holds exactly size_of::<WSAPROTOCOL_INFOW>() bytes (checked), and any bit
        // pattern is a valid WSAPROTOCOL_INFOW; read_unaligned copes with the byte alignment.
        unsafe { record.as_ptr().cast::<WSAPROTOCOL_INFOW>().read_unaligned() };
    let family_ok =
        info.iAddressFamily == i32::from(AF_INET) || info.iAddressFamily == i32::from(AF_INET6);
    if !family_ok || (info.iSocketType != SOCK_STREAM && info.iSocketType != SOCK_DGRAM) {
        return Err(invalid(format!(
            "WSAPROTOCOL_INFOW names family {} type {}, not a TCP or UDP socket",
            info.iAddressFamily, info.iSocketType
        )));
    }
    init();
    let flags = WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT;
    let raw = syscall!(
        // SAFETY: info is a valid WSAPROTOCOL_INFOW value on our stack for the call.
        unsafe {
            WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, flags)
        },
        PartialEq::eq,
        INVALID_SOCKET
    )
    .map_err(|e| invalid(format!("WSASocketW refused the peer's WSAPROTOCOL_INFOW: {e}")))?;
    // SAFETY: WSASocketW returned a new socket that nothing else owns.
    let socket = unsafe { OwnedSocket::from_raw_socket(raw as RawSocket) };
    validate(&socket, info.iSocketType)?;
    detach_completion_port(&socket);
    Ok(socket)
}

/// Checks that a received socket is what the record said and is in use: bound, and for a
/// stream listening or connected.
fn validate(socket: &OwnedSocket, ty: i32) -> io::Result<()> {
    let got = getsockopt_int(socket.as_raw_socket() as SOCKET, SO_TYPE)?;
    if got != ty {
        return Err(invalid(format!("received socket has type {got}, its record said {ty}")));
    }
    let s = socket2::SockRef::from(socket);
    let in_use = if ty == SOCK_STREAM {
        getsockopt_int(socket.as_raw_socket() as SOCKET, SO_ACCEPTCONN)? != 0
            || s.peer_addr().is_ok()
    } else {
        s.local_addr().is_ok()
    };
    if !in_use {
        return Err(invalid(
            "received socket is neither bound nor connected: not the sender's socket",
        ));
    }
    Ok(())
}

/// A socket the sender had registered with an I/O completion port (tokio, mio) stays bound to
/// that port in every process; unbinding it lets our own runtime register it. Windows 8.1 and
/// later support this; where the call fails (older systems, Wine) the socket still works for
/// blocking use and with runtimes that did not register it on the sending side.
fn detach_completion_port(socket: &OwnedSocket) {
    let info =
        FILE_COMPLETION_INFORMATION { Port: std::ptr::null_mut(), Key: std::ptr::null_mut() };
    // SAFETY: IO_STATUS_BLOCK is plain old data, for which all-zero is a valid value.
    let mut status: IO_STATUS_BLOCK = unsafe { std::mem::zeroed() };
    // SAFETY: the socket handle is open; info and status are valid for the call and the size
    // matches the information class.
    let _ = unsafe {
        NtSetInformationFile(
            socket.as_raw_socket() as _,
            &mut status,
            (&info as *const FILE_COMPLETION_INFORMATION).cast(),
            size_of::<FILE_COMPLETION_INFORMATION>() as u32,
            FileReplaceCompletionInformation,
        )
    };
}

fn getsockopt_int(s: SOCKET, opt: i32) -> io::Result<i32> {
    let mut val: i32 = 0;
    let mut len = size_of::<i32>() as i32;
    syscall!(
        // SAFETY: val and len are valid for writes and len holds the size of val.
        unsafe { getsockopt(s, SOL_SOCKET, opt, (&mut val as *mut i32).cast(), &mut len) },
        PartialEq::eq,
        SOCKET_ERROR
    )?;
    Ok(val)
}

/// Classifies a socket by family, type and whether it is listening.
pub(crate) fn socket_kind(socket: &socket2::Socket) -> io::Result<SocketKind> {
    let domain = socket.local_addr()?.domain();
    let ty = socket.r#type()?;
    let listening = getsockopt_int(socket.as_raw_socket() as SOCKET, SO_ACCEPTCONN)? != 0;
    Ok(SocketKind::classify(domain, ty, listening))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::windows::io::AsSocket;

    #[test]
    fn partial_and_zeroed_records_are_refused() {
        let mut out = Vec::new();
        let err = sockets_from_inline(&[0u8; 100], &mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = sockets_from_inline(&[0u8; INLINE_HANDLE_BYTES], &mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(out.is_empty());
    }

    #[test]
    fn a_fresh_socket_record_is_refused() {
        // A record for a socket that is neither bound nor connected: what Wine makes of zeroes.
        let fresh =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let info = duplicate_for(fresh.as_socket(), std::process::id()).unwrap();
        let mut out = Vec::new();
        let err = sockets_from_inline(info_bytes(&info), &mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn round_trip_within_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let info = duplicate_for(listener.as_socket(), std::process::id()).unwrap();
        let mut out = Vec::new();
        sockets_from_inline(info_bytes(&info), &mut out).unwrap();
        let dup = std::net::TcpListener::from(out.pop().unwrap());
        assert_eq!(dup.local_addr().unwrap(), listener.local_addr().unwrap());
    }
}
