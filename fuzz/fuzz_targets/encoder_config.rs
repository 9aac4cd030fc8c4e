//! Fuzz target: the encoder unit's TOML configuration. Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = divisor_encoder::config::Config::parse(text);
    }
});
