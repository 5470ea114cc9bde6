//! Owned kernel objects: events, `LocalAlloc` memory, UTF-16 strings, random bytes.

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{HandleOrNull, OwnedHandle};

use windows_sys::Win32::Foundation::{LocalFree, HANDLE, HLOCAL};
use windows_sys::Win32::Security::Cryptography::{
    BCryptGenRandom, BCRYPT_USE_SYSTEM_PREFERRED_RNG,
};
use windows_sys::Win32::System::Threading::{CreateEventW, GetCurrentProcess};

/// The pseudo-handle of the current process.
pub(crate) fn current_process() -> HANDLE {
    // SAFETY: GetCurrentProcess has no preconditions and cannot fail.
    unsafe { GetCurrentProcess() }
}

/// A manual-reset event, initially signalled ([`CreateEventW`]).
///
/// [`CreateEventW`]: https://learn.microsoft.com/en-us/windows/win32/api/synchapi/nf-synchapi-createeventw
pub(crate) fn event() -> io::Result<OwnedHandle> {
    // SAFETY: null security attributes and name are allowed; the result is checked below.
    let raw = unsafe { CreateEventW(std::ptr::null(), 1, 1, std::ptr::null()) };
    // SAFETY: CreateEventW returns a new handle we own, or null on failure.
    let h = unsafe { HandleOrNull::from_raw_handle(raw as _) };
    OwnedHandle::try_from(h).map_err(|_| io::Error::last_os_error())
}

/// Memory the system allocated with `LocalAlloc`, freed with `LocalFree` on drop.
#[derive(Debug)]
pub(crate) struct LocalBox(pub(crate) HLOCAL);

impl Drop for LocalBox {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a system allocation documented to be freed with
            // LocalFree, and this is the only owner.
            unsafe { LocalFree(self.0) };
        }
    }
}

// SAFETY: the allocation is plain memory, not tied to the thread that made it.
unsafe impl Send for LocalBox {}
// SAFETY: LocalBox exposes the pointer only; readers do not mutate through it.
unsafe impl Sync for LocalBox {}

/// `s` as a NUL-terminated UTF-16 string; an interior NUL is an error.
pub(crate) fn wide(s: impl AsRef<OsStr>) -> io::Result<Vec<u16>> {
    let mut v: Vec<u16> = s.as_ref().encode_wide().collect();
    if v.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL character"));
    }
    v.push(0);
    Ok(v)
}

/// Fills `buf` from the system's preferred CSPRNG ([`BCryptGenRandom`]).
///
/// [`BCryptGenRandom`]: https://learn.microsoft.com/en-us/windows/win32/api/bcrypt/nf-bcrypt-bcryptgenrandom
pub(crate) fn random(buf: &mut [u8]) -> io::Result<()> {
    let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("random buffer too large"))?;
    // SAFETY: buf is valid for len bytes of writes; a null algorithm handle is allowed with
    // BCRYPT_USE_SYSTEM_PREFERRED_RNG.
    let status = unsafe {
        BCryptGenRandom(
            std::ptr::null_mut(),
            buf.as_mut_ptr(),
            len,
            BCRYPT_USE_SYSTEM_PREFERRED_RNG,
        )
    };
    if status < 0 {
        return Err(io::Error::other(format!("BCryptGenRandom failed: NTSTATUS {status:#x}")));
    }
    Ok(())
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The UTF-16 string at `p`, up to its NUL.
///
/// # Safety
///
/// `p` must point to a NUL-terminated UTF-16 string that stays valid for the call.
pub(crate) unsafe fn from_wide_ptr(p: *const u16) -> String {
    let mut len = 0;
    loop {
        // SAFETY: the caller guarantees a NUL at or after p + len, so p + len is in bounds.
        let at = unsafe { p.add(len) };
        // SAFETY: in bounds, as above; u16 reads of the string are aligned.
        if unsafe { at.read() } == 0 {
            break;
        }
        len += 1;
    }
    // SAFETY: the len units before the NUL are initialised (counted above).
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) })
}
