//! Fuzz target: the controller's XML control messages. Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let limits = divisor_reflector::control::Limits::default();
        if let Ok(msg) = divisor_reflector::control::decode_xml(text, &limits) {
            let _ = divisor_reflector::control::encode_xml(&msg);
        }
    }
});
