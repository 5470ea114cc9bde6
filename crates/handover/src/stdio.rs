//! What a child's standard input, output or error is: [`Stdio`].

use std::fs::File;
use std::process::{ChildStderr, ChildStdin, ChildStdout};

use crate::sys;

/// A child's standard input, output or error, for [`Command::stdin`], [`Command::stdout`]
/// and [`Command::stderr`](crate::Command::stderr): this process's own stream, the null
/// device, or a file, pipe or other handle given to the child.
///
/// It mirrors [`std::process::Stdio`], and converts from it, but unlike std's type it can be
/// read back, which a backend that starts the child itself needs on Windows. Anything a
/// descriptor or handle can be made of converts: [`File`], `OwnedFd` (Unix), `OwnedHandle`
/// (Windows), the pipes of a [`std::process::Child`].
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// use handover::{Command, Stdio};
///
/// let log = std::fs::File::create("worker.log")?;
/// let mut child = Command::new("worker")
///     .stdin(Stdio::null())
///     .stdout(log.try_clone()?)
///     .stderr(log)
///     .spawn()?;
/// child.wait()?;
/// # Ok(()) }
/// ```
///
/// # Platform-specific behavior
///
/// On Unix every kind becomes a [`std::process::Stdio`] and std sets descriptors 0, 1 and 2.
///
/// On Windows the child gets an inheritable duplicate of the handle, made for this spawn
/// and named in its `PROC_THREAD_ATTRIBUTE_HANDLE_LIST` (so no other child inherits it), as
/// its `hStdInput`, `hStdOutput` or `hStdError` (`STARTF_USESTDHANDLES`). Give a
/// synchronous handle (opened without `FILE_FLAG_OVERLAPPED`), as most programs use their
/// standard handles synchronously: a [`File`] or an anonymous pipe is. A
/// [`std::process::Stdio`] cannot be read back there, so a [`Command`](crate::Command) given
/// one fails to spawn with `Unsupported`; use [`Stdio::null`], [`Stdio::inherit`] or a
/// handle instead.
///
/// [`Command::stdin`]: crate::Command::stdin
/// [`Command::stdout`]: crate::Command::stdout
#[derive(Debug)]
pub struct Stdio(pub(crate) StdioKind);

#[derive(Debug)]
pub(crate) enum StdioKind {
    /// This process's own stream.
    Inherit,
    /// The null device.
    Null,
    /// A descriptor (Unix) or handle (Windows) the child gets a copy of.
    File(sys::OwnedFile),
    /// std's opaque type: passed on as it is on Unix, unsupported on Windows.
    Std(std::process::Stdio),
}

impl Stdio {
    /// The child gets this process's own stream, as it does when nothing is set.
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// handover::Command::new("worker").stderr(handover::Stdio::inherit()).spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn inherit() -> Stdio {
        Stdio(StdioKind::Inherit)
    }

    /// The child gets the null device (`/dev/null`, Windows `NUL`): it reads nothing, and
    /// what it writes is dropped.
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// handover::Command::new("worker").stdin(handover::Stdio::null()).spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn null() -> Stdio {
        Stdio(StdioKind::Null)
    }
}

impl From<std::process::Stdio> for Stdio {
    /// Takes std's setting as it is; see "Platform-specific behavior" in [`Stdio`]: on
    /// Windows a command given one fails to spawn.
    fn from(s: std::process::Stdio) -> Stdio {
        Stdio(StdioKind::Std(s))
    }
}

impl From<Stdio> for std::process::Stdio {
    /// The same setting for a [`std::process::Command`].
    fn from(s: Stdio) -> std::process::Stdio {
        match s.0 {
            StdioKind::Inherit => std::process::Stdio::inherit(),
            StdioKind::Null => std::process::Stdio::null(),
            StdioKind::File(f) => std::process::Stdio::from(f),
            StdioKind::Std(s) => s,
        }
    }
}

/// Conversions from owners of a descriptor (Unix) or handle (Windows).
macro_rules! from_owner {
    ($($ty:ty),* $(,)?) => {$(
        impl From<$ty> for Stdio {
            /// The child gets (a copy of) it.
            fn from(owner: $ty) -> Stdio {
                Stdio(StdioKind::File(sys::OwnedFile::from(owner)))
            }
        }
    )*};
}

from_owner!(File, ChildStdin, ChildStdout, ChildStderr);

#[cfg(unix)]
impl From<std::os::fd::OwnedFd> for Stdio {
    /// The child gets the descriptor as its 0, 1 or 2.
    fn from(fd: std::os::fd::OwnedFd) -> Stdio {
        Stdio(StdioKind::File(fd))
    }
}

#[cfg(windows)]
impl From<std::os::windows::io::OwnedHandle> for Stdio {
    /// The child gets an inheritable duplicate of the handle as its standard handle.
    fn from(handle: std::os::windows::io::OwnedHandle) -> Stdio {
        Stdio(StdioKind::File(handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Stdio>();
    }
}
