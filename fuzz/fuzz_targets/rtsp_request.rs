//! Fuzz target: RTSP framing (requests and interleaved frames) and the parsing of each
//! request's URL, Transport, Range and Session headers. Any input must give a value or
//! an error, never a panic.
#![no_main]

use bytes::BytesMut;
use divisor_protocol::rtsp::{next_message, target, Framed};
use libfuzzer_sys::fuzz_target;
use rtsp_types::headers::{Range, Session, Transports};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        match next_message(&mut buf) {
            Framed::Request(req) => {
                let _ = target::parse(req.request_uri());
                let _ = req.typed_header::<Transports>();
                let _ = req.typed_header::<Range>();
                let _ = req.typed_header::<Session>();
            }
            Framed::Interleaved { .. } | Framed::Ignored => {}
            Framed::NeedMore | Framed::Invalid { .. } => break,
        }
    }
});
