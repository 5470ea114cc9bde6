//! Any byte string, with any number of descriptors delivered alongside, decodes to messages
//! or to an error: never a panic, never unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, bytes)) = data.split_first() else { return };
    let _ = handover::__fuzz::decode(bytes, n as usize * 3);
});
