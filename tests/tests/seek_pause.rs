//! Seeking (PLAY with Range) and PAUSE/PLAY resume, on the split server.

use divisor_tests::media::{self, LONG_MP4};
use divisor_tests::rtsp::{rtp_header, sdp_tracks, Interleaved, RtpHeader};
use divisor_tests::{Checks, Deployment, LinkTransport, Node, RtpTransport, RtspConn};
use std::time::{Duration, Instant};

/// `ffmpeg -noaccurate_seek -ss 5 -i rtsp://...` must start at the keyframe at or before
/// 5 s (4 s in the test asset, keyframes every 2 s).
///
/// The signal is the number of frames decoded. With `-noaccurate_seek` ffmpeg does not
/// trim decoded frames to the seek point, so the count is exactly what the server sent:
/// from the 4 s keyframe to the end, `frames_from(4.0)` (150 of 250). A server ignoring
/// Range sends all 250; one starting at the next keyframe (6 s) sends 100; one starting
/// mid-GOP at 5 s makes the decoder report missing references (caught in the error lines)
/// and yields a different count. Decoding with no error lines also shows the first frame
/// sent is a keyframe.
#[test]
fn seek_starts_at_keyframe_at_or_before_target() {
    let d = Deployment::split("seek", LinkTransport::Tcp).expect("deployment starts");
    let a = media::asset(LONG_MP4).unwrap();
    let target = 5.0;
    let kf = a.keyframe_at_or_before(target);
    let expected = a.frames_from(kf);
    let mut c = Checks::new();
    // Interleaved TCP only: over UDP, ffmpeg's own seek (PAUSE, then PLAY with Range)
    // leaves pre-seek packets in its socket buffer and reports them as missed, whatever the
    // server does.
    let tr = RtpTransport::Tcp;
    let what = format!("ffmpeg -ss {target} over {tr:?}");
    let r = d
        .ffmpeg_decode(
            &d.url(LONG_MP4),
            tr,
            &["-noaccurate_seek", "-ss", "5"],
            Duration::from_secs(40),
        )
        .unwrap();
    eprintln!("{what}: {} frames decoded (expected {expected})", r.frames);
    c.check(r.out.success(), || format!("{what}: {}", r.report()));
    c.check(r.frames == expected, || {
        format!(
            "{what}: decoded {} frames; starting at the {kf} s keyframe gives {expected} \
             (whole file {}): {}",
            r.frames,
            a.video_frames,
            r.report()
        )
    });
    c.check(r.error_lines.is_empty(), || {
        format!("{what}: decoder trouble: {:?}", r.error_lines)
    });
    c.finish();
}

/// RTP channel number -> packets received on it.
fn rtp_on(frames: &[Interleaved], channel: u8) -> Vec<(Instant, RtpHeader)> {
    frames
        .iter()
        .filter(|f| f.channel == channel)
        .filter_map(|f| rtp_header(&f.data).map(|h| (f.at, h)))
        .collect()
}

/// Reads interleaved frames for `dur`, appending them to `out`.
fn read_for(conn: &mut RtspConn, dur: Duration, out: &mut Vec<Interleaved>) {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        match conn.next(end.saturating_duration_since(Instant::now())) {
            Ok(Some(divisor_tests::rtsp::Incoming::Interleaved(f))) => out.push(f),
            Ok(Some(divisor_tests::rtsp::Incoming::Response(r))) => {
                panic!("unsolicited RTSP reply: {r:?}")
            }
            Ok(None) if conn.is_closed() => panic!("server closed the RTSP connection"),
            Ok(None) => {}
            Err(e) => panic!("reading interleaved data: {e:#}"),
        }
    }
}

/// A raw RTSP session over interleaved TCP: play 1 s, PAUSE for 1.5 s, PLAY again.
/// RTP sequence numbers must run on without a gap, and the RTP timestamp across the pause
/// must advance by media time (about one frame), not by the 1.5 s of wall time.
#[test]
fn pause_and_resume_continue_media_time() {
    let d = Deployment::split("pause", LinkTransport::Tcp).expect("deployment starts");
    let url = d.url(LONG_MP4);
    let mut conn = RtspConn::connect(&d, Node::Client, d.rtsp_addr).unwrap();
    let desc = conn
        .request("DESCRIBE", &url, &[("Accept", "application/sdp")])
        .unwrap();
    assert_eq!(desc.status, 200, "DESCRIBE: {desc:?}");
    let base = desc
        .header("Content-Base")
        .map(|b| b.trim().to_string())
        .unwrap_or_else(|| url.clone());
    let tracks = sdp_tracks(&desc.body_text(), &base);
    assert_eq!(tracks.len(), 2, "SDP tracks: {}", desc.body_text());
    let mut video_channel = None;
    let mut audio_channel = None;
    for (i, t) in tracks.iter().enumerate() {
        let ch = (2 * i) as u8;
        let transport = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", ch, ch + 1);
        let r = conn
            .request("SETUP", &t.control, &[("Transport", &transport)])
            .unwrap();
        assert_eq!(r.status, 200, "SETUP {}: {r:?}", t.control);
        let got = r.header("Transport").unwrap_or_default();
        assert!(
            got.contains(&format!("interleaved={}-{}", ch, ch + 1)),
            "SETUP reply Transport {got:?}, asked for {transport}"
        );
        match t.media.as_str() {
            "video" => video_channel = Some(ch),
            "audio" => audio_channel = Some(ch),
            _ => {}
        }
    }
    let (video, audio) = (video_channel.unwrap(), audio_channel.unwrap());
    assert!(conn.session.is_some(), "no Session header in SETUP replies");

    let play = conn.request("PLAY", &base, &[("Range", "npt=0-")]).unwrap();
    assert_eq!(play.status, 200, "PLAY: {play:?}");
    let mut before = Vec::new();
    read_for(&mut conn, Duration::from_secs(1), &mut before);

    let pause = conn.request("PAUSE", &base, &[]).unwrap();
    assert_eq!(pause.status, 200, "PAUSE: {pause:?}");
    let paused_at = Instant::now();
    before.extend(conn.pending.drain(..));
    let mut during = Vec::new();
    read_for(&mut conn, Duration::from_millis(1500), &mut during);

    let resume = conn.request("PLAY", &base, &[]).unwrap();
    assert_eq!(resume.status, 200, "PLAY after PAUSE: {resume:?}");
    let mut after: Vec<Interleaved> = conn.pending.drain(..).collect();
    read_for(&mut conn, Duration::from_secs(1), &mut after);
    let teardown = conn.request("TEARDOWN", &base, &[]).unwrap();

    let mut c = Checks::new();
    c.check(teardown.status == 200, || format!("TEARDOWN: {teardown:?}"));
    // Packets a paced sender had already queued may trail the PAUSE reply briefly; nothing
    // may be sent once the pause has settled.
    let late: Vec<_> = [video, audio]
        .iter()
        .flat_map(|&ch| rtp_on(&during, ch))
        .filter(|(at, _)| at.duration_since(paused_at) > Duration::from_millis(200))
        .collect();
    c.check(late.is_empty(), || {
        format!(
            "{} RTP packets arrived while paused, e.g. {:?}",
            late.len(),
            late.first()
        )
    });

    for (name, ch, clock) in [("video", video, 90_000.0), ("audio", audio, 48_000.0)] {
        let all: Vec<_> = [&before, &during, &after]
            .iter()
            .flat_map(|f| rtp_on(f, ch))
            .collect();
        let pre: Vec<_> = rtp_on(&before, ch)
            .into_iter()
            .chain(rtp_on(&during, ch))
            .collect();
        let post = rtp_on(&after, ch);
        let (Some(last), Some(first)) = (pre.last(), post.first()) else {
            c.check(false, || {
                format!(
                    "{name}: packets before pause {}, after resume {}",
                    pre.len(),
                    post.len()
                )
            });
            continue;
        };
        // Sequence numbers: one continuous run, no gap or reset.
        let gaps: Vec<(u16, u16)> = all
            .windows(2)
            .filter(|w| w[1].1.seq != w[0].1.seq.wrapping_add(1))
            .map(|w| (w[0].1.seq, w[1].1.seq))
            .collect();
        c.check(gaps.is_empty(), || {
            format!("{name}: sequence gaps {gaps:?}")
        });
        // Timestamps: media time across the pause. Wall time would be >= 1.5 s.
        let dts = first.1.timestamp.wrapping_sub(last.1.timestamp) as i32 as f64 / clock;
        let wall = first.0.duration_since(last.0).as_secs_f64();
        eprintln!(
            "{name}: {} packets before PAUSE, {} after PLAY; across the pause: seq {} -> {}, \
             RTP time +{dts:.3} s, wall {wall:.3} s",
            pre.len(),
            post.len(),
            last.1.seq,
            first.1.seq
        );
        c.check((0.0..0.25).contains(&dts), || {
            format!(
                "{name}: RTP timestamp advanced {dts:.3} s across a {wall:.3} s pause \
                 (expected media time: about one frame)"
            )
        });
        c.check(wall >= 1.4, || {
            format!("{name}: only {wall:.3} s between the last packet before PAUSE and the first after PLAY")
        });
        // Both sides of the pause carry real-time media.
        let span = |p: &[(Instant, RtpHeader)]| {
            p.last().unwrap().1.timestamp.wrapping_sub(p[0].1.timestamp) as f64 / clock
        };
        let (pre_media, post_media) = (span(&pre), span(&post));
        c.check((0.6..1.6).contains(&pre_media), || {
            format!("{name}: {pre_media:.3} s of media in the first 1 s of playback")
        });
        c.check((0.6..1.6).contains(&post_media), || {
            format!("{name}: {post_media:.3} s of media in the 1 s after resume")
        });
    }
    c.finish();
}
