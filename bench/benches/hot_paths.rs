//! Criterion micro-benchmarks of the hot paths: link frame encode/decode, H.264 RTP
//! packetisation of one frame, the per-client RTP header rewrite of the fan-out, SRTP
//! protect of one packet (what every SRTP client costs per packet), and DES-CBC / AES-CTR
//! content encryption of a frame (the encoder unit's and the edge share's work).
//! Run with `cargo bench -p divisor-bench --bench hot_paths`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use divisor_link::content::FrameCipher;
use divisor_link::{codec, Cipher, Codec, Frame, FrameFlags, Message, TrackInfo};
use divisor_protocol::packetize::{write_rtp_header, Packetizer};
use divisor_protocol::srtp::{SrtpKeys, SrtpSession};

/// An Annex B H.264 access unit of about `size` bytes: one IDR slice NAL.
fn h264_frame(size: usize) -> Frame {
    let mut data = vec![0, 0, 0, 1, 0x65];
    data.extend((0..size).map(|i| (i % 251) as u8 | 1));
    Frame {
        channel: 1,
        track: 0,
        codec: Codec::H264,
        flags: FrameFlags::KEYFRAME,
        pts: 3600,
        dts: 3600,
        duration: 3600,
        data: Bytes::from(data),
    }
}

fn link_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("link");
    for size in [1200usize, 30_000] {
        let msg = Message::Frame(h264_frame(size));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encode {size} B frame"), |b| {
            let mut out = BytesMut::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                codec::encode(black_box(&msg), &mut out).expect("encodes");
            })
        });
        let mut enc = BytesMut::new();
        codec::encode(&msg, &mut enc).expect("encodes");
        let enc = enc.freeze();
        g.bench_function(format!("decode {size} B frame"), |b| {
            b.iter(|| codec::decode_whole(black_box(&enc)).expect("decodes"))
        });
    }
    g.finish();
}

fn packetize(c: &mut Criterion) {
    let track = TrackInfo {
        track: 0,
        codec: Codec::H264,
        clock_rate: 90_000,
        width: 640,
        height: 360,
        sample_rate: 0,
        channels: 0,
        bitrate: 1_000_000,
        params: vec![],
    };
    let frame = h264_frame(30_000);
    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Bytes(30_000));
    g.bench_function("packetize 30 kB H.264 frame", |b| {
        let mut p = Packetizer::new(&track).expect("packetizer");
        b.iter(|| p.packetize(black_box(&frame)).expect("packetizes"))
    });
    // Per client: copy the shared packet and rewrite SSRC, sequence and timestamp.
    let shared = vec![0x80u8; 1200];
    g.throughput(Throughput::Elements(1000));
    g.bench_function("header rewrite x1000 clients (1200 B packets)", |b| {
        b.iter_batched_ref(
            || vec![[0u8; 1200]; 1000],
            |outs| {
                for (i, out) in outs.iter_mut().enumerate() {
                    out.copy_from_slice(&shared);
                    let hdr: &mut [u8; 12] = (&mut out[..12]).try_into().expect("12 bytes");
                    write_rtp_header(hdr, 96, false, i as u16, 3600 + i as u32, 0x1000 + i as u32);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// SRTP (AES_CM_128_HMAC_SHA1_80) protect of one 1200-byte RTP packet, the per-client cost
/// an SRTP client adds to the header rewrite. Sequence numbers advance as in a real stream
/// so the rollover bookkeeping is exercised.
fn srtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp");
    g.throughput(Throughput::Bytes(1200));
    let mut session = SrtpSession::new(SrtpKeys::random()).expect("srtp session");
    let mut packet = vec![0x5au8; 1200];
    let mut seq: u16 = 0;
    g.bench_function("protect 1200 B RTP packet", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            write_rtp_header(
                (&mut packet[..12]).try_into().expect("12 bytes"),
                96,
                false,
                seq,
                u32::from(seq) * 3600,
                0x1234_5678,
            );
            session.protect_rtp(black_box(&packet)).expect("protects")
        })
    });
    g.finish();
}

/// Content encryption of one 30 kB frame (about a 1 Mbit/s stream's keyframe share) with
/// each cipher, as the encoder unit's encrypt stage and the protocol unit's edge share do it.
fn content_crypto(c: &mut Criterion) {
    let mut g = c.benchmark_group("content");
    let frame = vec![0x33u8; 30_000];
    g.throughput(Throughput::Bytes(frame.len() as u64));
    for (name, cipher, key) in [
        ("DES-CBC", Cipher::DesCbc, &[7u8; 8][..]),
        ("AES-128-CTR", Cipher::Aes128Ctr, &[7u8; 16][..]),
    ] {
        let fc = FrameCipher::new(cipher, 1, key).expect("cipher");
        g.bench_function(format!("encrypt 30 kB frame {name}"), |b| {
            let mut dts = 0i64;
            b.iter(|| {
                dts += 3600;
                fc.encrypt(0, dts, black_box(&frame))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, link_codec, packetize, srtp, content_crypto);
criterion_main!(benches);
