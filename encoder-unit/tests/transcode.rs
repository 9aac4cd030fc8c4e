//! Transcoding checked with real decoders: renditions written as elementary streams (Annex
//! B, IVF) and read back with ffprobe / ffmpeg (libdav1d for AV1).
//!
//! Inputs are made with the ffmpeg command line into a temporary folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use divisor_encoder::config::{RenditionConfig, VideoCodec};
use divisor_encoder::ingest::testsrc::{read_clock_ms, read_counter, TestSource, TestSourceConfig};
use divisor_encoder::ingest::{Demuxed, FileSource};
use divisor_encoder::pipeline::Stage;
use divisor_encoder::transcode::ivf::IvfWriter;
use divisor_encoder::transcode::{obus, TranscodeStage};
use divisor_link::{Codec, Frame, FrameFlags, Message, TrackInfo};

const FRAMES: usize = 100;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 4 s 640x360 25 fps H.264 (no B-frames) + AAC MP4.
fn source(dir: &Path) -> PathBuf {
    let path = dir.join("src.mp4");
    run(Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=48000",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-bf",
            "0",
            "-g",
            "50",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ])
        .arg(&path));
    path
}

fn rendition(name: &str, codec: VideoCodec, w: u16, h: u16, tiers: bool) -> RenditionConfig {
    RenditionConfig {
        name: name.into(),
        codec,
        width: w,
        height: h,
        bitrate_kbps: 400,
        keyint: None,
        tiers,
        profile: None,
        audio: Default::default(),
    }
}

fn frames_of(out: Vec<Message>) -> impl Iterator<Item = Frame> {
    out.into_iter().filter_map(|m| match m {
        Message::Frame(f) => Some(f),
        _ => None,
    })
}

/// Every frame of `path` through `stage`: (announced tracks, output frames, input frames).
fn transcode(path: &Path, stage: &mut TranscodeStage) -> (Vec<TrackInfo>, Vec<Frame>, Vec<Frame>) {
    let mut src = FileSource::open(path).expect("open source");
    let tracks = stage.tracks(src.tracks()).expect("tracks");
    let mut output = Vec::new();
    let mut input = Vec::new();
    loop {
        let mut out = Vec::new();
        match src.next_frame().expect("read") {
            Demuxed::Frame(f) => {
                input.push(f.clone());
                stage.push(f, &mut out).expect("push");
            }
            Demuxed::End => {
                stage.flush(&mut out).expect("flush");
                output.extend(frames_of(out));
                return (tracks, output, input);
            }
        }
        output.extend(frames_of(out));
    }
}

fn write_annexb(path: &Path, frames: &[&Frame]) {
    let mut bytes = Vec::new();
    for f in frames {
        bytes.extend_from_slice(&f.data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// (decoded frame count, width, height) by `ffprobe -count_frames`.
fn probe(path: &Path) -> (usize, u32, u32) {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in ffprobe output {text:?}"))
    };
    (
        field("nb_read_frames") as usize,
        field("width") as u32,
        field("height") as u32,
    )
}

/// What ffmpeg reports at level error while decoding `path` completely (empty = clean).
fn decode_errors(path: &Path, decoder: Option<&str>) -> String {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin"]);
    if let Some(d) = decoder {
        cmd.args(["-c:v", d]);
    }
    // Raw elementary streams carry no timestamps and ffmpeg's guesses can collide around
    // a GOP boundary with B-frames; renumbering the decoded pictures keeps the muxer's
    // complaints out of what is checked here, the decoder's.
    let out = run(cmd.arg("-i").arg(path).args([
        "-fps_mode",
        "passthrough",
        "-vf",
        "setpts=N/(25*TB)",
        "-f",
        "null",
        "-",
    ]));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The luma of every picture ffmpeg decodes from `path`, in display order.
fn decode_gray(path: &Path, w: usize, h: usize) -> Vec<Vec<u8>> {
    let out = run(Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args([
            "-fps_mode",
            "passthrough",
            "-vf",
            "setpts=N/(25*TB)",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ]));
    assert_eq!(out.stdout.len() % (w * h), 0);
    out.stdout.chunks_exact(w * h).map(<[u8]>::to_vec).collect()
}

fn video(frames: &[Frame]) -> Vec<&Frame> {
    frames.iter().filter(|f| f.track == 0).collect()
}

#[test]
fn h264_renditions_match_the_ladder() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    for (name, w, h) in [("360p", 640u16, 360u16), ("180p", 320, 180)] {
        let mut stage =
            TranscodeStage::new(&rendition(name, VideoCodec::H264, w, h, true), 2).unwrap();
        let (tracks, out, input) = transcode(&src, &mut stage);
        assert_eq!(
            (tracks[0].codec, tracks[0].width, tracks[0].height),
            (Codec::H264, w, h)
        );
        assert_eq!(tracks[0].bitrate, 400_000);
        assert_eq!(tracks[0].params.len(), 2, "SPS and PPS");
        assert_eq!(tracks[0].params[0][0] & 0x1f, 7);
        assert_eq!(tracks[0].params[1][0] & 0x1f, 8);
        assert_eq!(
            tracks[1],
            FileSource::open(&src).unwrap().tracks()[1],
            "audio unchanged"
        );

        let v = video(&out);
        assert_eq!(v.len(), FRAMES, "{name}: one output frame per input frame");
        assert!(v[0].flags.contains(FrameFlags::KEYFRAME));
        assert!(
            v.windows(2).all(|p| p[0].dts < p[1].dts),
            "{name}: dts increase"
        );
        // Keyframes every 2 s (52 frames: 25 fps rounded to whole P b B b groups), each an
        // IDR carrying SPS and PPS; nothing else is an IDR.
        for f in &v {
            let types: Vec<u8> = divisor_encoder::ingest::h264::split_annexb(&f.data)
                .iter()
                .map(|n| n[0] & 0x1f)
                .collect();
            let key = f.flags.contains(FrameFlags::KEYFRAME);
            assert_eq!(types.contains(&5), key, "{name}: {types:?}");
            assert_eq!(
                types.contains(&7) && types.contains(&8),
                key,
                "{name}: {types:?}"
            );
        }
        let keys: Vec<i64> = v
            .iter()
            .filter(|f| f.flags.contains(FrameFlags::KEYFRAME))
            .map(|f| f.pts)
            .collect();
        assert_eq!(keys, vec![0, 52 * 3600], "{name}");
        let audio_in: Vec<&Frame> = input.iter().filter(|f| f.track == 1).collect();
        let audio_out: Vec<&Frame> = out.iter().filter(|f| f.track == 1).collect();
        assert_eq!(audio_in, audio_out, "{name}: audio passes through");

        let file = dir.path().join(format!("{name}.h264"));
        write_annexb(&file, &v);
        assert_eq!(probe(&file), (FRAMES, u32::from(w), u32::from(h)), "{name}");
        assert_eq!(decode_errors(&file, None), "", "{name}");
    }
}

#[test]
fn av1_rendition_decodes_with_dav1d_frame_exact() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let mut stage =
        TranscodeStage::new(&rendition("av1", VideoCodec::Av1, 320, 180, true), 2).unwrap();
    let (tracks, out, _) = transcode(&src, &mut stage);
    assert_eq!(
        (tracks[0].codec, tracks[0].width, tracks[0].height),
        (Codec::Av1, 320, 180)
    );
    let seq = &tracks[0].params[0];
    assert_eq!(
        obus(seq).first().map(|o| o.0),
        Some(1),
        "params hold a sequence header OBU"
    );

    let v = video(&out);
    assert_eq!(v.len(), FRAMES);
    assert!(v[0].flags.contains(FrameFlags::KEYFRAME));
    for f in &v {
        let types: Vec<u8> = obus(&f.data).iter().map(|o| o.0).collect();
        assert_eq!(
            types.contains(&1),
            f.flags.contains(FrameFlags::KEYFRAME),
            "keyframes, and only they, carry the sequence header: {types:?}"
        );
    }

    let file = dir.path().join("out.ivf");
    let mut ivf = IvfWriter::new(std::fs::File::create(&file).unwrap(), 320, 180).unwrap();
    for f in &v {
        ivf.write_frame(&f.data, f.pts).unwrap();
    }
    ivf.finish().unwrap();
    let out = run(Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-c:v", "libdav1d", "-i"])
        .arg(&file)
        .args(["-f", "framemd5", "-"]));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let decoded = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    assert_eq!(decoded, FRAMES, "libdav1d decodes every frame");
}

#[test]
fn a_rung_above_the_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = FileSource::open(&source(dir.path())).unwrap();
    let mut stage =
        TranscodeStage::new(&rendition("1080p", VideoCodec::H264, 1920, 1080, true), 1).unwrap();
    let err = stage.tracks(src.tracks()).unwrap_err().to_string();
    assert_eq!(
        err,
        "rendition 1080p (1920x1080) is larger than the source (640x360)"
    );
    let mut stage =
        TranscodeStage::new(&rendition("tall", VideoCodec::Av1, 640, 480, true), 1).unwrap();
    let err = stage.tracks(src.tracks()).unwrap_err().to_string();
    assert!(err.contains("larger than the source (640x360)"), "{err}");
}

#[test]
fn a_keyframe_request_gives_an_idr_at_the_next_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = source(dir.path());
    let mut src = FileSource::open(&path).unwrap();
    // No tiers: no B-frames, so the next frame out is the next frame in.
    let mut r = rendition("360p", VideoCodec::H264, 640, 360, false);
    r.keyint = Some(1000);
    let mut stage = TranscodeStage::new(&r, 1).unwrap();
    stage.tracks(src.tracks()).unwrap();
    let mut video_out = Vec::new();
    let mut requested_pts = None;
    let mut pushed = 0;
    while pushed < 60 {
        let Demuxed::Frame(f) = src.next_frame().unwrap() else {
            panic!("source too short")
        };
        if f.track != 0 {
            continue;
        }
        if pushed == 30 {
            stage.request_keyframe(0);
            requested_pts = Some(f.pts);
        }
        let mut out = Vec::new();
        stage.push(f, &mut out).unwrap();
        video_out.extend(frames_of(out));
        pushed += 1;
    }
    let mut out = Vec::new();
    stage.flush(&mut out).unwrap();
    video_out.extend(frames_of(out));
    assert_eq!(video_out.len(), 60);
    let keys: Vec<i64> = video_out
        .iter()
        .filter(|f| f.flags.contains(FrameFlags::KEYFRAME))
        .map(|f| f.pts)
        .collect();
    assert_eq!(keys, vec![video_out[0].pts, requested_pts.unwrap()]);
    let idr = video_out
        .iter()
        .find(|f| Some(f.pts) == requested_pts)
        .map(|f| {
            divisor_encoder::ingest::h264::split_annexb(&f.data)
                .iter()
                .any(|n| n[0] & 0x1f == 5)
        });
    assert_eq!(
        idr,
        Some(true),
        "the frame pushed after the request is an IDR"
    );
}

#[test]
fn tiers_drop_to_half_and_quarter_rate() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let mut r = rendition("360p", VideoCodec::H264, 640, 360, true);
    r.keyint = Some(48);
    let mut stage = TranscodeStage::new(&r, 2).unwrap();
    let (_, out, _) = transcode(&src, &mut stage);
    let v = video(&out);
    assert_eq!(v.len(), FRAMES);
    for f in &v {
        assert_eq!(
            f.flags.contains(FrameFlags::DISPOSABLE),
            f.flags.layer() == 2,
            "layer 2 = disposable"
        );
    }
    // The pattern in presentation order: I/P b B b P ...
    let mut by_pts = v.clone();
    by_pts.sort_by_key(|f| f.pts);
    let layers: Vec<u8> = by_pts.iter().take(44).map(|f| f.flags.layer()).collect();
    let want: Vec<u8> = (0..44).map(|i| [0, 2, 1, 2][i % 4]).collect();
    assert_eq!(layers, want);

    // A tier is right when every picture it keeps decodes to exactly the pixels the full
    // stream gives for that picture (same references, deterministic decoder).
    let full_file = dir.path().join("full.h264");
    write_annexb(&full_file, &v);
    let full = decode_gray(&full_file, 640, 360);
    assert_eq!(full.len(), FRAMES);
    assert_eq!(decode_errors(&full_file, None), "");
    let tier_matches = |kept: &[&Frame], name: &str| -> bool {
        let file = dir.path().join(format!("{name}.h264"));
        write_annexb(&file, kept);
        let errors = decode_errors(&file, None);
        let got = decode_gray(&file, 640, 360);
        let mut pts: Vec<i64> = kept.iter().map(|f| f.pts).collect();
        pts.sort();
        let want: Vec<&Vec<u8>> = pts
            .iter()
            .map(|p| &full[by_pts.iter().position(|f| f.pts == *p).unwrap()])
            .collect();
        errors.is_empty() && got.len() == kept.len() && got.iter().zip(want).all(|(g, w)| g == w)
    };
    for (keep, lo, hi) in [(1u8, 48, 56), (0, 24, 32)] {
        let kept: Vec<&Frame> = v
            .iter()
            .copied()
            .filter(|f| f.flags.layer() <= keep)
            .collect();
        assert!(
            (lo..=hi).contains(&kept.len()),
            "layers 0..={keep}: {} frames",
            kept.len()
        );
        assert!(
            tier_matches(&kept, &format!("tier{keep}")),
            "layers 0..={keep} decode cleanly to the same pictures"
        );
    }
    // Control: the check sees a broken stream. Without layer 1, the layer-2 pictures miss
    // the reference B they predict from.
    let broken: Vec<&Frame> = v.iter().copied().filter(|f| f.flags.layer() != 1).collect();
    assert!(
        !tier_matches(&broken, "broken"),
        "dropping a referenced layer is noticed"
    );
}

#[test]
fn test_source_counter_reads_back_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = TestSource::new(TestSourceConfig::default()).unwrap();
    let tracks = src.tracks().to_vec();
    assert_eq!(tracks.len(), 2);
    assert_eq!(
        (tracks[0].codec, tracks[0].width, tracks[0].height),
        (Codec::H264, 640, 360)
    );
    assert_eq!(tracks[1].codec, Codec::Aac);
    assert_eq!(tracks[1].params[0][0] >> 3, 2, "AAC-LC AudioSpecificConfig");

    let mut frames = Vec::new();
    while frames.iter().filter(|f: &&Frame| f.track == 0).count() < 60 {
        frames.push(src.next_frame().unwrap());
    }
    // Interleaved in dts order (seconds), pts from 0 in each track.
    let secs = |f: &Frame| f.dts as f64 / f64::from(tracks[usize::from(f.track)].clock_rate);
    assert!(frames.windows(2).all(|p| secs(&p[0]) <= secs(&p[1])));
    let audio: Vec<&Frame> = frames.iter().filter(|f| f.track == 1).collect();
    assert!(audio.len() > 80, "about 2.4 s of audio: {}", audio.len());
    assert_eq!(audio[0].pts, 0);
    let mut video: Vec<Frame> = frames.iter().filter(|f| f.track == 0).cloned().collect();
    // Cut before the last base-layer frame: what precedes it in decode order is a whole
    // run of pictures in display order (no B-frame still waiting for a later P).
    let last_base = video.iter().rposition(|f| f.flags.layer() == 0).unwrap();
    video.truncate(last_base);
    assert!(video.len() > 50);
    assert_eq!(video.iter().map(|f| f.pts).min(), Some(0));
    assert!(video[0].flags.contains(FrameFlags::KEYFRAME));
    assert!(video.iter().any(|f| f.flags.layer() == 2));

    // Through a half-size rendition too: the rows scale with the picture.
    let mut stage = TranscodeStage::new(&rendition("180p", VideoCodec::H264, 320, 180, true), 1)
        .unwrap()
        .with_frame_rate(src.frame_rate());
    stage.tracks(&tracks).unwrap();
    let mut small = Vec::new();
    for f in &video {
        let mut out = Vec::new();
        stage.push(f.clone(), &mut out).unwrap();
        small.extend(frames_of(out));
    }
    let mut out = Vec::new();
    stage.flush(&mut out).unwrap();
    small.extend(frames_of(out));

    for (name, frames, w, h) in [
        ("source", video, 640usize, 360usize),
        ("180p", small, 320, 180),
    ] {
        let file = dir.path().join(format!("{name}.h264"));
        write_annexb(&file, &frames.iter().collect::<Vec<_>>());
        let out = run(Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(&file)
            .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"]));
        let pictures: Vec<&[u8]> = out.stdout.chunks_exact(w * h).collect();
        assert_eq!(pictures.len(), frames.len(), "{name}");
        let counters: Vec<Option<u32>> = pictures.iter().map(|p| read_counter(p, w)).collect();
        let want: Vec<Option<u32>> = (0..frames.len() as u32).map(Some).collect();
        assert_eq!(counters, want, "{name}: the counter advances without gaps");
        let clocks: Vec<u32> = pictures
            .iter()
            .map(|p| read_clock_ms(p, w).expect("clock row readable"))
            .collect();
        assert!(
            clocks.windows(2).all(|c| c[1].wrapping_sub(c[0]) < 10_000),
            "{name}: the clock row moves forward"
        );
    }
}

#[test]
fn passthrough_tiers_from_mark_layers_decode_exactly() {
    use divisor_encoder::transcode::LayerMarker;
    let dir = tempfile::tempdir().unwrap();
    // A stored file as ffmpeg makes them by default: B-frames, adaptive, normal pyramid.
    let path = dir.path().join("bframes.mp4");
    run(Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=25",
        ])
        .args([
            "-t", "4", "-c:v", "libx264", "-bf", "3", "-pix_fmt", "yuv420p",
        ])
        .arg(&path));
    let mut src = FileSource::open(&path).unwrap();
    let mut marker = LayerMarker;
    marker.tracks(src.tracks()).unwrap();
    let mut v = Vec::new();
    while let Demuxed::Frame(f) = src.next_frame().unwrap() {
        let mut out = Vec::new();
        marker.push(f, &mut out).unwrap();
        v.extend(frames_of(out).filter(|f| f.track == 0));
    }
    assert_eq!(v.len(), FRAMES);
    let disposable = v.iter().filter(|f| f.flags.layer() == 2).count();
    assert!(
        disposable > 10,
        "the file has non-reference B-frames: {disposable}"
    );
    let mut by_pts: Vec<&Frame> = v.iter().collect();
    by_pts.sort_by_key(|f| f.pts);
    let full_file = dir.path().join("full.h264");
    write_annexb(&full_file, &v.iter().collect::<Vec<_>>());
    let full = decode_gray(&full_file, 320, 180);
    let kept: Vec<&Frame> = v.iter().filter(|f| f.flags.layer() < 2).collect();
    let file = dir.path().join("half.h264");
    write_annexb(&file, &kept);
    assert_eq!(decode_errors(&file, None), "");
    let got = decode_gray(&file, 320, 180);
    assert_eq!(got.len(), kept.len());
    let mut pts: Vec<i64> = kept.iter().map(|f| f.pts).collect();
    pts.sort();
    for (g, p) in got.iter().zip(pts) {
        let i = by_pts.iter().position(|f| f.pts == p).unwrap();
        assert!(*g == full[i], "picture at pts {p} differs without layer 2");
    }
}
