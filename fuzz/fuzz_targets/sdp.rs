//! Fuzz target: SDP, as RTSP and WHEP read it. Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = divisor_protocol::sdp::parse(text);
        let _ = divisor_protocol::whep::negotiate::parse_offer(text);
        let _ = divisor_protocol::sdp::parse_track_id(text);
    }
});
