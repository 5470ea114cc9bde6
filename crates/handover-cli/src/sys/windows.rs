//! Windows: not supported yet. The library's Windows backend is being built; until it lands,
//! every mode is refused with a clear error, and the rest compiles to stubs.

use std::io;
use std::path::Path;

use anyhow::{bail, Result};

use super::{Signal, Stop};
use crate::cli::Mode;

pub(crate) fn current_uid() -> u32 {
    0
}

pub(crate) fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory".to_owned());
    }
    Ok(())
}

pub(crate) fn check_mode(mode: Mode) -> Result<()> {
    match mode {
        Mode::Prefork | Mode::Shared | Mode::Spawn => bail!(
            "--mode {mode:?} is not supported on Windows yet (the handover library's Windows \
             backend is not built)"
        ),
    }
}

pub(crate) fn prepare_child(cmd: &mut handover::Command<'_>) {
    cmd.die_with_parent(true);
}

pub(crate) fn signal_group(_pid: u32, _how: Stop) {}

#[derive(Debug)]
pub(crate) struct Signals;

impl Signals {
    pub(crate) fn new() -> io::Result<Signals> {
        Ok(Signals)
    }

    pub(crate) async fn recv(&mut self) -> Signal {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}

#[derive(Debug)]
pub(crate) struct ChildExits;

impl ChildExits {
    pub(crate) fn new() -> io::Result<ChildExits> {
        Ok(ChildExits)
    }

    pub(crate) async fn recv(&mut self) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
