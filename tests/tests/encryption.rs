//! Content encryption end to end: a VoD asset served with `[vod] encryption = "des"` and
//! `"aes"` reaches our receiver (`divisor_tests::receiver`, written from the documented
//! formats) as `X-DIVISOR-ENC` tracks; decrypted with keys derived from the master secret
//! file, its frames equal those of the same asset served in clear, and leaving half of the
//! frames to the protocol unit (`edge_share = 0.5`) gives the very same bytes on the wire.

use divisor_link::content::vod_key_name;
use divisor_tests::media::{self, CLIP_MP4};
use divisor_tests::paths::target_dir;
use divisor_tests::receiver::{self, by_media, summary, KeySource, TrackFrames};
use divisor_tests::{kind_label, Checks, Deployment, Kind, LinkTransport, Options};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

const MASTER: &str = "divisor-test-content-master-secret-0123456789";

/// Writes the master key file and a config for `mode` / `share`; returns the config path.
fn config(mode: &str, share: f64) -> PathBuf {
    let dir = target_dir().join("test-encryption");
    std::fs::create_dir_all(&dir).expect("config dir");
    let key = dir.join("content.key");
    std::fs::write(&key, format!("{MASTER}\n")).expect("key file");
    let path = dir.join(format!("{mode}-{share}.toml"));
    std::fs::write(
        &path,
        format!(
            "[vod]\nencryption = \"{mode}\"\nedge_share = {share}\n\n[encryption]\nkey_file = \"{}\"\n",
            key.display()
        ),
    )
    .expect("config file");
    path
}

/// Serves the clip with `config` (None: clear) on a fresh deployment and receives it.
fn play(
    c: &mut Checks,
    name: &str,
    kind: Kind,
    config: Option<PathBuf>,
) -> Option<Vec<TrackFrames>> {
    let options = Options {
        encoder_args: config
            .map(|p| vec![OsString::from("--config"), p.into_os_string()])
            .unwrap_or_default(),
        protocol_args: vec![],
    };
    let test = format!("enc-{name}-{}", kind_label(kind));
    let d = c.ok(
        &format!("{test}: deployment"),
        Deployment::start_with(&test, kind, options),
    )?;
    let keys = KeySource {
        master: MASTER.as_bytes().to_vec(),
        name: vod_key_name(CLIP_MP4, ""),
    };
    let r = c.ok(
        &format!("{test}: receive"),
        receiver::receive(&d, &d.url(CLIP_MP4), Some(&keys), Duration::from_secs(40)),
    );
    if r.is_none() {
        eprintln!("{}", d.logs_report(40));
    }
    r
}

fn check_same_frames(c: &mut Checks, what: &str, got: &[TrackFrames], clear: &[TrackFrames]) {
    let (g, e) = (by_media(got), by_media(clear));
    for media in ["video", "audio"] {
        let (Some(g), Some(e)) = (g.get(media), e.get(media)) else {
            c.check(false, || {
                format!("{what}: no {media} track: {}", summary(got))
            });
            continue;
        };
        c.check(g.errors.is_empty(), || {
            format!("{what}: {media} errors: {:?}", g.errors)
        });
        c.check(!g.frames.is_empty() && g.frames == e.frames, || {
            let first = g.frames.iter().zip(&e.frames).position(|(a, b)| a != b);
            format!(
                "{what}: {media} frames differ from the clear asset (first difference at \
                 frame {first:?}): got {}, clear {}",
                summary(got),
                summary(clear)
            )
        });
    }
}

#[test]
fn decrypted_frames_equal_clear_and_edge_share_gives_same_bytes() {
    media::library().expect("test media");
    let kind = Kind::Split(LinkTransport::Tcp);
    let mut c = Checks::new();
    let Some(clear) = play(&mut c, "clear", kind, None) else {
        c.finish();
        return;
    };
    for t in &clear {
        c.check(
            t.encoding != receiver::ENCRYPTED && !t.frames.is_empty(),
            || format!("clear session: {}", summary(&clear)),
        );
    }
    let video_frames = by_media(&clear).get("video").map_or(0, |t| t.frames.len());
    c.check(video_frames > 50, || {
        format!("clear session: too few video frames: {}", summary(&clear))
    });

    for mode in ["des", "aes"] {
        let mut payloads: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for share in [0.0, 0.5] {
            let what = format!("{mode} edge_share={share}");
            let Some(got) = play(
                &mut c,
                &format!("{mode}{}", share * 10.0),
                kind,
                Some(config(mode, share)),
            ) else {
                continue;
            };
            for t in &got {
                c.check(t.encoding == receiver::ENCRYPTED, || {
                    format!(
                        "{what}: track not described as encrypted: {}",
                        summary(&got)
                    )
                });
                c.check(t.key_ids == [0], || {
                    format!(
                        "{what}: key ids {:?}, expected [0] (no rotation)",
                        t.key_ids
                    )
                });
            }
            check_same_frames(&mut c, &what, &got, &clear);
            // The wire really carries ciphertext: no clear NAL unit of the first video frame
            // (SPS, PPS, IDR slice) shows up in its payload.
            if let (Some(enc), Some(plain)) =
                (by_media(&got).get("video"), by_media(&clear).get("video"))
            {
                if let (Some(p), Some(f)) = (enc.payloads.first(), plain.frames.first()) {
                    for nal in f.iter().filter(|n| n.len() >= 16) {
                        c.check(!p.windows(16).any(|w| w == &nal[..16]), || {
                            format!("{what}: clear bytes of the first frame on the wire")
                        });
                    }
                }
            }
            for t in &got {
                let entry = payloads.entry(t.media.clone());
                match entry {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(t.payloads.clone());
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        c.check(o.get() == &t.payloads, || {
                            let first = o.get().iter().zip(&t.payloads).position(|(a, b)| a != b);
                            format!(
                                "{what}: {} payloads differ from edge_share=0 (first at {first:?}, \
                                 {} vs {} frames): the protocol unit must encrypt exactly as the \
                                 encoder does",
                                t.media,
                                t.payloads.len(),
                                o.get().len()
                            )
                        });
                    }
                }
            }
        }
    }
    c.finish();
}

/// A live channel (`loop:` of the clip) with `encryption = "aes"` and half of the frames left
/// to the protocol unit: described as encrypted, every frame decrypts with keys derived
/// from the master secret, and the decrypted video frames are frames of the clip.
#[test]
fn live_channel_encrypted_with_edge_share_decrypts_to_the_clip() {
    media::library().expect("test media");
    let kind = Kind::Split(LinkTransport::Tcp);
    let mut c = Checks::new();
    let Some(clear) = play(&mut c, "live-ref", kind, None) else {
        c.finish();
        return;
    };
    let dir = target_dir().join("test-encryption");
    std::fs::create_dir_all(&dir).expect("config dir");
    let key = dir.join("content-live.key");
    std::fs::write(&key, format!("{MASTER}\n")).expect("key file");
    let path = dir.join("live-aes.toml");
    std::fs::write(
        &path,
        format!(
            "[[channel]]\nname = \"enc\"\nsource = \"loop:{CLIP_MP4}\"\nencryption = \"aes\"\n\
             edge_share = 0.5\n\n[encryption]\nkey_file = \"{}\"\n",
            key.display()
        ),
    )
    .expect("config file");
    let options = Options {
        encoder_args: vec![OsString::from("--config"), path.into_os_string()],
        protocol_args: vec![],
    };
    let test = format!("enc-live-{}", kind_label(kind));
    let Some(d) = c.ok(
        &format!("{test}: deployment"),
        Deployment::start_with(&test, kind, options),
    ) else {
        c.finish();
        return;
    };
    let keys = KeySource {
        master: MASTER.as_bytes().to_vec(),
        name: divisor_link::content::live_key_name("enc", ""),
    };
    // Live never ends: receive for a few seconds.
    let got = c.ok(
        &format!("{test}: receive"),
        receiver::receive(
            &d,
            &format!("rtsp://{}/live/enc", d.rtsp_addr),
            Some(&keys),
            Duration::from_secs(6),
        ),
    );
    let Some(got) = got else {
        eprintln!("{}", d.logs_report(40));
        c.finish();
        return;
    };
    let clear_video: Vec<Vec<Vec<u8>>> = by_media(&clear)
        .get("video")
        .map(|t| t.frames.clone())
        .unwrap_or_default();
    for t in &got {
        c.check(t.encoding == receiver::ENCRYPTED, || {
            format!("live: track not described as encrypted: {}", summary(&got))
        });
        c.check(t.errors.is_empty(), || {
            format!("live: {} errors: {:?}", t.media, t.errors)
        });
        c.check(!t.key_ids.is_empty(), || {
            format!("live: {} frames named no key", t.media)
        });
    }
    match by_media(&got).get("video") {
        Some(v) => {
            c.check(v.frames.len() > 100, || {
                format!("live: too few video frames: {}", summary(&got))
            });
            // The channel loops the clip: every decrypted frame is the clip's frame after
            // the one before (a frame the edge failed to encrypt would be missing here, as
            // the receiver only takes fragments of the encrypted format).
            let (mismatch, skips) = follow_clip(&v.frames, &clear_video);
            c.check(mismatch == 0 && skips == 0, || {
                format!(
                    "live: of {} decrypted video frames, {mismatch} are not frames of the clip \
                     and {skips} do not follow the frame before",
                    v.frames.len()
                )
            });
        }
        None => {
            c.check(false, || format!("live: no video track: {}", summary(&got)));
        }
    }
    c.finish();
}

/// Walks `got` along the looped `clip`: (frames not in the clip, frames that are not the
/// clip's next frame after the previous one).
fn follow_clip(got: &[Vec<Vec<u8>>], clip: &[Vec<Vec<u8>>]) -> (usize, usize) {
    let (mut mismatch, mut skips) = (0, 0);
    let mut at: Option<usize> = None;
    for f in got {
        if let Some(i) = at {
            let next = (i + 1) % clip.len();
            if &clip[next] == f {
                at = Some(next);
                continue;
            }
            skips += 1;
        }
        at = clip.iter().position(|c| c == f);
        if at.is_none() {
            mismatch += 1;
        }
    }
    (mismatch, skips)
}
