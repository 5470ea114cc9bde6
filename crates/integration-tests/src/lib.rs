//! Shared helpers for the helper binaries and the cross-process tests.

/// Raises this process's soft descriptor limit to `want` (or the hard limit, if lower).
#[cfg(unix)]
pub fn raise_nofile(want: u64) -> std::io::Result<u64> {
    // SAFETY: an all-zero rlimit is a valid value to be overwritten.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: lim is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max.min(want as libc::rlim_t).max(lim.rlim_cur);
    // SAFETY: lim is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim.rlim_cur as u64)
}

/// Descriptor limits are a Unix notion: nothing to raise on Windows.
#[cfg(windows)]
pub fn raise_nofile(want: u64) -> std::io::Result<u64> {
    Ok(want)
}

/// Number of open descriptors of this process.
#[cfg(target_os = "linux")]
pub fn fd_count() -> usize {
    // The directory handle itself is one of the entries; it is there in every count alike.
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Resident set size of this process in KiB.
#[cfg(target_os = "linux")]
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The effective user id.
#[cfg(unix)]
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}
