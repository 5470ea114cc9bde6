#![cfg(windows)] // job objects; runs under Wine too.
//! The `handover::windows::JobObject` surface within one process. Process trees in a job are
//! tested with real children in `crates/integration-tests/tests/windows_job.rs`.

use std::os::windows::io::{AsHandle, AsRawHandle};

use handover::windows::JobObject;

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

#[test]
fn job_object_is_send_and_sync() {
    assert_send::<JobObject>();
    assert_sync::<JobObject>();
}

#[test]
fn a_new_job_is_empty_and_can_be_terminated() {
    let job = JobObject::new().unwrap();
    assert_eq!(job.active_processes().unwrap(), 0);
    job.terminate(1).unwrap();
    assert_eq!(job.active_processes().unwrap(), 0);
}

#[test]
fn each_job_has_its_own_handle() {
    let (a, b) = (JobObject::new().unwrap(), JobObject::new().unwrap());
    assert!(!a.as_raw_handle().is_null());
    assert_eq!(a.as_raw_handle(), a.as_handle().as_raw_handle());
    assert_ne!(a.as_raw_handle(), b.as_raw_handle());
    assert!(format!("{a:?}").starts_with("JobObject"));
}
