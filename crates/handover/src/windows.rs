//! Windows-only extensions: [job objects] for supervising a child and everything it starts.
//!
//! A supervisor on Unix kills a worker's whole process group; on Windows the equivalent is a
//! job object. Give each child its own [`JobObject`] with [`CommandExt::job`]: the child is
//! created inside the job, every process it starts joins the job too (the job does not allow
//! `CREATE_BREAKAWAY_FROM_JOB`), [`JobObject::terminate`] ends them all at once, and dropping
//! the last handle to the job ends them as well — including when the supervisor itself dies,
//! since the system then closes its handles.
//!
//! ```no_run
//! # fn main() -> handover::Result<()> {
//! use handover::windows::{CommandExt, JobObject};
//!
//! let job = JobObject::new()?;
//! let mut child = handover::Command::new("worker.exe").job(&job).spawn()?;
//! // ... later: stop the worker and anything it started.
//! job.terminate(1)?;
//! child.wait()?;
//! # Ok(()) }
//! ```
//!
//! [job objects]: https://learn.microsoft.com/en-us/windows/win32/procthread/job-objects

use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, RawHandle};
use std::sync::Arc;

use crate::{sys, Command, Result};

/// An anonymous [job object] whose processes are killed when its last handle closes
/// (`JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`).
///
/// The handle is not inheritable, so children do not keep the job alive. A [`Command`] given
/// the job with [`CommandExt::job`] shares this handle until the command is dropped: the job
/// is closed, and its processes killed, once the `JobObject` and every such command are gone.
///
/// ```no_run
/// # fn main() -> handover::Result<()> {
/// use handover::windows::{CommandExt, JobObject};
///
/// let job = JobObject::new()?;
/// handover::Command::new("worker.exe").job(&job).spawn()?;
/// drop(job); // kills the worker and everything it started
/// # Ok(()) }
/// ```
///
/// [job object]: https://learn.microsoft.com/en-us/windows/win32/procthread/job-objects
#[derive(Debug)]
pub struct JobObject {
    inner: Arc<sys::Job>,
}

impl JobObject {
    /// Creates an anonymous job object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` set
    /// ([`CreateJobObjectW`], [`SetInformationJobObject`]).
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// let job = handover::windows::JobObject::new()?;
    /// assert_eq!(job.active_processes()?, 0);
    /// # Ok(()) }
    /// ```
    ///
    /// [`CreateJobObjectW`]: https://learn.microsoft.com/en-us/windows/win32/api/jobapi2/nf-jobapi2-createjobobjectw
    /// [`SetInformationJobObject`]: https://learn.microsoft.com/en-us/windows/win32/api/jobapi2/nf-jobapi2-setinformationjobobject
    pub fn new() -> Result<JobObject> {
        Ok(JobObject { inner: Arc::new(sys::Job::new()?) })
    }

    /// Ends every process in the job, each with `exit_code` ([`TerminateJobObject`]).
    ///
    /// The processes are ended as by `TerminateProcess`: no clean-up code of theirs runs. The
    /// job itself stays usable; a child spawned into it later is not affected by this call.
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// use handover::windows::{CommandExt, JobObject};
    ///
    /// let job = JobObject::new()?;
    /// let mut child = handover::Command::new("worker.exe").job(&job).spawn()?;
    /// job.terminate(3)?;
    /// assert_eq!(child.wait()?.code(), Some(3));
    /// # Ok(()) }
    /// ```
    ///
    /// [`TerminateJobObject`]: https://learn.microsoft.com/en-us/windows/win32/api/jobapi2/nf-jobapi2-terminatejobobject
    pub fn terminate(&self, exit_code: u32) -> Result<()> {
        Ok(self.inner.terminate(exit_code)?)
    }

    /// How many processes are in the job now: the `ActiveProcesses` count of
    /// [`JOBOBJECT_BASIC_ACCOUNTING_INFORMATION`], read with [`QueryInformationJobObject`].
    ///
    /// A supervisor can tell from it whether a child that exited left processes behind.
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// use handover::windows::{CommandExt, JobObject};
    ///
    /// let job = JobObject::new()?;
    /// let mut child = handover::Command::new("worker.exe").job(&job).spawn()?;
    /// child.wait()?;
    /// if job.active_processes()? > 0 {
    ///     job.terminate(1)?; // the worker's own children outlived it
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// [`JOBOBJECT_BASIC_ACCOUNTING_INFORMATION`]: https://learn.microsoft.com/en-us/windows/win32/api/winnt/ns-winnt-jobobject_basic_accounting_information
    /// [`QueryInformationJobObject`]: https://learn.microsoft.com/en-us/windows/win32/api/jobapi2/nf-jobapi2-queryinformationjobobject
    pub fn active_processes(&self) -> Result<u32> {
        Ok(self.inner.active_processes()?)
    }
}

impl AsHandle for JobObject {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.inner.as_handle()
    }
}

impl AsRawHandle for JobObject {
    fn as_raw_handle(&self) -> RawHandle {
        self.inner.as_handle().as_raw_handle()
    }
}

/// Windows process options for [`Command`].
pub trait CommandExt {
    /// Creates the child inside `job`, so that it and every process it starts belong to the
    /// job from their first instruction on: there is no moment in which the child runs, or
    /// starts a process, outside it.
    ///
    /// The command keeps a reference to the job (not a new kernel handle) until it is
    /// dropped, so the job's kill-on-close waits for the command too.
    ///
    /// ```no_run
    /// # fn main() -> handover::Result<()> {
    /// use handover::windows::{CommandExt, JobObject};
    ///
    /// let job = JobObject::new()?;
    /// let child = handover::Command::new("worker.exe").job(&job).spawn()?;
    /// assert_eq!(job.active_processes()?, 1);
    /// # drop(child);
    /// # Ok(()) }
    /// ```
    ///
    /// # Platform-specific behavior
    ///
    /// The job is named in the child's [`PROC_THREAD_ATTRIBUTE_JOB_LIST`], so
    /// `CreateProcessW` creates the process in the job (Windows 10 and later, which Rust
    /// requires anyway; Wine 8.0 honours the attribute too). A job may be nested in another
    /// since Windows 8, so this works when the supervisor itself runs in a job (a service
    /// manager's, a CI runner's). If the job cannot take the child, `CreateProcessW` fails,
    /// and so does `spawn`.
    ///
    /// [`PROC_THREAD_ATTRIBUTE_JOB_LIST`]: https://learn.microsoft.com/en-us/windows/win32/api/processthreadsapi/nf-processthreadsapi-updateprocthreadattribute
    fn job(&mut self, job: &JobObject) -> &mut Self;
}

impl CommandExt for Command<'_> {
    fn job(&mut self, job: &JobObject) -> &mut Self {
        self.os.job = Some(Arc::clone(&job.inner));
        self
    }
}

/// Windows-only operations on a [`Channel`](crate::Channel).
pub trait ChannelExt {
    /// A new handle to the event that is signalled when the channel's pending read completes:
    /// something arrived, or the channel closed or failed. To wait for a message without
    /// blocking in [`recv`](crate::Channel::recv) (an event loop that watches many channels),
    /// wait on the event (`WaitForSingleObject`, `RegisterWaitForSingleObject`), then call
    /// [`try_recv_into`](crate::Channel::try_recv_into) until it returns `false`: that call
    /// starts the next read, and the event is reset until that read completes. The event is
    /// manual-reset and starts signalled, so a first wait returns at once.
    ///
    /// ```no_run
    /// use handover::windows::ChannelExt;
    /// # fn main() -> handover::Result<()> {
    /// let (ours, _theirs) = handover::Channel::pair()?;
    /// let event = ours.read_event()?; // wait on it, then try_recv until nothing is left
    /// # let _ = event; Ok(()) }
    /// ```
    fn read_event(&self) -> Result<std::os::windows::io::OwnedHandle>;
}

impl ChannelExt for crate::Channel {
    fn read_event(&self) -> Result<std::os::windows::io::OwnedHandle> {
        Ok(self.raw().pipe().event(sys::Interest::Readable)?)
    }
}
