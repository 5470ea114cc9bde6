//! Job objects: an anonymous `CreateJobObjectW` with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`.
//!
//! `spawn` creates a child inside its job with `PROC_THREAD_ATTRIBUTE_JOB_LIST` (Windows 10
//! and later, which Rust requires anyway; Wine 8.0 honours it too). Processes the child
//! creates join the job by default.

use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, HandleOrNull, OwnedHandle};

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::JobObjects::{
    CreateJobObjectW, JobObjectBasicAccountingInformation, JobObjectExtendedLimitInformation,
    QueryInformationJobObject, SetInformationJobObject, TerminateJobObject,
    JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};

/// An owned job object whose processes are killed when its last handle closes.
#[derive(Debug)]
pub(crate) struct Job(OwnedHandle);

impl Job {
    pub(crate) fn new() -> io::Result<Job> {
        // SAFETY: null security attributes (not inheritable) and a null name (anonymous) are
        // allowed; the result is checked below.
        let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        // SAFETY: CreateJobObjectW returns a new handle we own, or null on failure.
        let h = unsafe { HandleOrNull::from_raw_handle(raw as _) };
        let job = Job(OwnedHandle::try_from(h).map_err(|_| io::Error::last_os_error())?);
        let mut limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        syscall!(
            // SAFETY: the job handle is open; limits is a JOBOBJECT_EXTENDED_LIMIT_INFORMATION
            // of the size passed, as JobObjectExtendedLimitInformation requires.
            unsafe {
                SetInformationJobObject(
                    job.raw(),
                    JobObjectExtendedLimitInformation,
                    (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                )
            },
            PartialEq::eq,
            0
        )?;
        Ok(job)
    }

    fn raw(&self) -> HANDLE {
        self.0.as_raw_handle() as HANDLE
    }

    /// Ends every process in the job with `exit_code`.
    pub(crate) fn terminate(&self, exit_code: u32) -> io::Result<()> {
        // SAFETY: the job handle is open and has JOB_OBJECT_ALL_ACCESS (we created it).
        syscall!(unsafe { TerminateJobObject(self.raw(), exit_code) }, PartialEq::eq, 0)?;
        Ok(())
    }

    /// How many processes are in the job now.
    pub(crate) fn active_processes(&self) -> io::Result<u32> {
        let mut info = JOBOBJECT_BASIC_ACCOUNTING_INFORMATION::default();
        syscall!(
            // SAFETY: the job handle is open; info is a JOBOBJECT_BASIC_ACCOUNTING_INFORMATION
            // of the size passed, valid for writes; the returned length may be null.
            unsafe {
                QueryInformationJobObject(
                    self.raw(),
                    JobObjectBasicAccountingInformation,
                    (&mut info as *mut JOBOBJECT_BASIC_ACCOUNTING_INFORMATION).cast(),
                    std::mem::size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                    std::ptr::null_mut(),
                )
            },
            PartialEq::eq,
            0
        )?;
        Ok(info.ActiveProcesses)
    }
}

impl AsHandle for Job {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.0.as_handle()
    }
}
