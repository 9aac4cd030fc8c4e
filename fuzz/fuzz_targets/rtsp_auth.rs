//! Fuzz target: the RTSP users file and Digest Authorization headers. Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use divisor_protocol::rtsp::auth::{DigestAuth, Users};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, header) = text.split_once('\n').unwrap_or((text, ""));
    let _ = Users::parse(file);
    let users = Users::parse("u:p:/\n").expect("a valid file");
    let auth = DigestAuth::new(users);
    let _ = auth.check(
        "DESCRIBE",
        "/vod/x",
        Some(header),
        std::time::SystemTime::now(),
    );
});
