//! Fuzz target: link codec: any bytes as a link message (and its length prefix). Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = divisor_link::codec::peek_len(data);
    if let Ok(Some((msg, used))) = divisor_link::codec::decode(data) {
        assert!(used <= data.len());
        // What decodes must encode again.
        let mut out = Vec::new();
        let _ = divisor_link::codec::encode(&msg, &mut out);
    }
});
