//! Demux and catalog against real files made by the ffmpeg CLI.

mod common;

use common::{ffprobe_video_frames, media};
use divisor_encoder::ingest::{h264, Demuxed, FileSource, IngestError};
use divisor_encoder::{Catalog, Library};
use divisor_link::{Codec, Frame, FrameFlags};

fn all_frames(src: &mut FileSource) -> Vec<Frame> {
    let mut out = Vec::new();
    loop {
        match src.next_frame().expect("demux") {
            Demuxed::Frame(f) => out.push(f),
            Demuxed::End => return out,
        }
    }
}

#[test]
fn catalog_probes_assets_and_rejects_the_rest() {
    let lib = Library::open(&media().root).unwrap();
    let cat = Catalog::scan(&lib);
    let mp4 = cat.get("av.mp4").expect("av.mp4 in catalog");
    assert_eq!(mp4.tracks.len(), 2);
    let v = &mp4.tracks[0];
    assert_eq!(
        (v.codec, v.width, v.height, v.clock_rate),
        (Codec::H264, 320, 240, 90000)
    );
    assert_eq!(v.params.len(), 2, "SPS + PPS");
    assert_eq!(h264::nal_type(&v.params[0]), h264::NAL_SPS);
    assert_eq!(h264::nal_type(&v.params[1]), h264::NAL_PPS);
    let a = &mp4.tracks[1];
    assert_eq!(
        (a.codec, a.sample_rate, a.clock_rate, a.channels),
        (Codec::Aac, 44100, 44100, 1)
    );
    assert_eq!(a.params.len(), 1);
    let d = mp4.duration_ms.unwrap();
    assert!((5900..=6100).contains(&d), "duration {d}");

    let opus = cat.get("opus.mkv").expect("opus.mkv");
    assert_eq!(opus.tracks[1].codec, Codec::Opus);
    assert_eq!(opus.tracks[1].clock_rate, 48000);
    for name in ["av.mkv", "av.ts", "truncated.mp4"] {
        assert!(cat.get(name).is_some(), "{name} playable");
    }

    let rejected: std::collections::HashMap<_, _> = cat.rejected().into_iter().collect();
    let txt = rejected.get("notes.txt").expect("notes.txt rejected");
    assert!(txt.contains("not playable media"), "{txt}");
    let avi = rejected.get("old.avi").expect("old.avi rejected");
    assert!(
        avi.contains("no H.264, AAC or Opus track (found: mpeg4, mp3)"),
        "{avi}"
    );
    assert!(rejected.contains_key("cut.mp4"));
}

#[test]
fn video_frame_count_matches_ffprobe() {
    for name in ["av.mp4", "av.mkv", "av.ts"] {
        let path = media().root.join(name);
        let mut src = FileSource::open(&path).unwrap();
        let frames = all_frames(&mut src);
        let video = frames.iter().filter(|f| f.track == 0).count() as u64;
        assert_eq!(video, ffprobe_video_frames(&path), "{name}");
        let audio = frames.iter().filter(|f| f.track == 1).count();
        assert!(audio > 200, "{name}: {audio} audio frames");
    }
}

#[test]
fn frames_are_annexb_with_params_on_keyframes_and_timed_from_zero() {
    for name in ["av.mp4", "av.mkv", "av.ts"] {
        let mut src = FileSource::open(&media().root.join(name)).unwrap();
        let tracks = src.tracks().to_vec();
        let frames = all_frames(&mut src);
        let video: Vec<&Frame> = frames.iter().filter(|f| f.track == 0).collect();
        let first = video[0];
        assert!(first.flags.contains(FrameFlags::KEYFRAME), "{name}");
        // 0 for MP4 and TS; the MKV remux starts video 23 ms after audio.
        assert!(
            (0..=9000).contains(&first.pts),
            "{name}: first video pts {}",
            first.pts
        );
        let mut keyframes = 0;
        let mut disposable = 0;
        let mut pts_sorted: Vec<i64> = Vec::new();
        for f in &video {
            assert!(h264::looks_annexb(&f.data), "{name}: Annex B");
            if f.flags.contains(FrameFlags::DISPOSABLE) {
                disposable += 1;
            }
            assert!(f.dts <= f.pts, "{name}: dts {} > pts {}", f.dts, f.pts);
            let types: Vec<u8> = h264::split_annexb(&f.data)
                .iter()
                .map(|n| h264::nal_type(n))
                .collect();
            if f.flags.contains(FrameFlags::KEYFRAME) {
                keyframes += 1;
                assert!(
                    types.contains(&h264::NAL_SPS) && types.contains(&h264::NAL_PPS),
                    "{name}: {types:?}"
                );
                assert!(types.contains(&h264::NAL_IDR), "{name}: {types:?}");
            }
            pts_sorted.push(f.pts);
        }
        assert!(keyframes >= 6, "{name}: {keyframes} keyframes");
        assert!(
            disposable > 0,
            "{name}: non-reference B-frames are disposable"
        );
        // B-frames: pts not monotonic in decode order, but dts is.
        assert!(
            video.windows(2).all(|w| w[0].dts < w[1].dts),
            "{name}: dts increasing"
        );
        assert!(
            video.windows(2).any(|w| w[1].pts < w[0].pts),
            "{name}: B-frames reorder"
        );
        pts_sorted.sort();
        // 25 fps in a 90 kHz clock.
        assert_eq!(pts_sorted[1] - pts_sorted[0], 3600, "{name}");

        // Audio: raw AAC (no ADTS), timed from about 0 in the 44.1 kHz clock.
        let audio: Vec<&Frame> = frames.iter().filter(|f| f.track == 1).collect();
        assert_eq!(tracks[1].params.len(), 1);
        // AudioSpecificConfig: AAC-LC, 44100 Hz (index 4), mono.
        assert_eq!(&tracks[1].params[0][..2], &[0x12, 0x08], "{name}");
        for f in &audio {
            assert!(
                !(f.data.len() >= 2 && f.data[0] == 0xff && f.data[1] & 0xf0 == 0xf0),
                "{name}: ADTS left"
            );
        }
        assert!(
            audio[0].pts.abs() < 44100 / 10,
            "{name}: first audio pts {}",
            audio[0].pts
        );
        assert!(audio.windows(2).all(|w| w[0].pts < w[1].pts), "{name}");
    }
}

#[test]
fn seek_lands_on_a_keyframe_at_or_before_the_target() {
    for name in ["av.mp4", "av.mkv", "av.ts"] {
        let mut src = FileSource::open(&media().root.join(name)).unwrap();
        let start = src.seek(2500).unwrap();
        assert!((1000..=2500).contains(&start), "{name}: start {start}");
        let mut first_video = None;
        let mut audio_pts = Vec::new();
        for _ in 0..60 {
            let Demuxed::Frame(f) = src.next_frame().unwrap() else {
                break;
            };
            if f.track == 0 && first_video.is_none() {
                first_video = Some(f.clone());
            }
            if f.track == 1 {
                audio_pts.push(f.pts);
            }
        }
        let v = first_video.expect("video after seek");
        assert!(v.flags.contains(FrameFlags::KEYFRAME), "{name}");
        assert_eq!(v.pts * 1000 / 90000, start as i64, "{name}");
        assert!(!audio_pts.is_empty());
        // Audio starts together with video.
        for p in audio_pts {
            assert!(
                p * 1000 / 44100 >= start as i64,
                "{name}: audio {p} before {start} ms"
            );
        }
        // Back to the start, and past the end.
        assert!(src.seek(0).unwrap() <= 100, "{name}");
        let end = src.seek(60_000).unwrap();
        assert!(end <= 6000, "{name}: {end}");
    }
}

#[test]
fn opus_track_passes_through() {
    let mut src = FileSource::open(&media().root.join("opus.mkv")).unwrap();
    let frames = all_frames(&mut src);
    let opus: Vec<&Frame> = frames.iter().filter(|f| f.track == 1).collect();
    assert!(opus.len() > 100);
    assert!(opus
        .iter()
        .all(|f| f.codec == Codec::Opus && !f.data.is_empty()));
    // 20 ms packets in a 48 kHz clock.
    assert_eq!(opus[2].pts - opus[1].pts, 960);
}

#[test]
fn truncated_files_end_cleanly_or_fail_with_a_reason() {
    let mut src = FileSource::open(&media().root.join("truncated.mp4")).unwrap();
    let mut n = 0;
    loop {
        match src.next_frame() {
            Ok(Demuxed::Frame(_)) => n += 1,
            Ok(Demuxed::End) => break,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
    assert!(n > 10, "{n} frames before the cut");
    match FileSource::open(&media().root.join("cut.mp4")) {
        Err(IngestError::Open { reason, .. }) => assert!(!reason.is_empty()),
        Err(e) => panic!("unexpected error kind {e}"),
        Ok(_) => panic!("cut.mp4 opened"),
    }
    match FileSource::open(&media().root.join("notes.txt")) {
        Err(e) => assert!(e.to_string().contains("not playable media"), "{e}"),
        Ok(_) => panic!("text opened"),
    }
}

#[test]
fn corrupted_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["av.mp4", "av.mkv", "av.ts"] {
        let clean = std::fs::read(media().root.join(name)).unwrap();
        // Deterministic xorshift: overwrite 1 byte in 500 past the first 4 KiB.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut bytes = clean.clone();
        for b in bytes.iter_mut().skip(4096) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(500) {
                *b = (x >> 32) as u8;
            }
        }
        let path = dir.path().join(format!("corrupt-{name}"));
        std::fs::write(&path, &bytes).unwrap();
        let Ok(mut src) = FileSource::open(&path) else {
            continue;
        };
        let mut n = 0;
        while let Ok(Demuxed::Frame(_)) = src.next_frame() {
            n += 1;
            assert!(n < 100_000, "{name}: runaway demux");
        }
        let _ = src.seek(2500);
        while let Ok(Demuxed::Frame(_)) = src.next_frame() {}
    }
}
