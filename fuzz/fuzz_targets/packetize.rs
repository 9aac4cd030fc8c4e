//! Fuzz target: our H.264, AAC, Opus and AV1 packetisers on any frame payload. Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use divisor_link::{Codec, Frame, FrameFlags, TrackInfo};
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let codec = [Codec::H264, Codec::Aac, Codec::Opus, Codec::Av1][usize::from(sel & 3)];
    let video = codec.is_video();
    let track = TrackInfo {
        track: 0,
        codec,
        clock_rate: if video { 90_000 } else { 48_000 },
        width: if video { 640 } else { 0 },
        height: if video { 360 } else { 0 },
        sample_rate: if video { 0 } else { 48_000 },
        channels: if video { 0 } else { 2 },
        bitrate: 0,
        params: vec![],
    };
    let mtu = 200 + usize::from(sel >> 2) * 8;
    let Ok(mut p) = divisor_protocol::packetize::Packetizer::with_mtu(&track, mtu) else {
        return;
    };
    let frame = Frame {
        channel: 1,
        track: 0,
        codec,
        flags: FrameFlags(sel & FrameFlags::KEYFRAME.0),
        pts: 0,
        dts: 0,
        duration: 0,
        data: bytes::Bytes::copy_from_slice(payload),
    };
    if let Ok(packets) = p.packetize(&frame) {
        for _ in packets {}
    }
});
