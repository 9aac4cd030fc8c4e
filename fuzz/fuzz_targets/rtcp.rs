//! Fuzz target: RTCP compound packets from clients. Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = divisor_protocol::rtcp::parse_incoming(data);
});
