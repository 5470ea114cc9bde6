//! Where there is no init process to be (Windows, and Unix other than Linux): `--subreaper`
//! is refused, and PID 1 is never seen.

use std::io;

use crate::sys::InitEvent;

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "--subreaper needs Linux")
}

pub(crate) fn is_pid1() -> bool {
    false
}

pub(crate) fn become_subreaper() -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn own_pid() -> u32 {
    std::process::id()
}

#[derive(Debug)]
pub(crate) struct InitSignals;

impl InitSignals {
    pub(crate) fn new() -> io::Result<InitSignals> {
        Err(unsupported())
    }

    pub(crate) fn next(&self, _block: bool) -> io::Result<Option<InitEvent>> {
        Err(unsupported())
    }
}

pub(crate) fn reap_any() -> io::Result<Option<(u32, i32)>> {
    Err(unsupported())
}

pub(crate) fn forward(_pid: u32, _signal: i32) {}

pub(crate) fn exists(_pid: u32) -> bool {
    false
}

pub(crate) fn announce_to(_pid: u32) -> io::Result<()> {
    Err(unsupported())
}
