//! The synthetic test source: a moving pattern with the wall-clock time and the frame
//! counter burnt in (as text for eyes, as rows of blocks for tests), and a 1 kHz tone.
//!
//! Video is H.264 from [`H264Encoder`] (keyframe every 2 s, frame-rate tiers on), audio
//! AAC-LC from libavcodec's native `aac` encoder (raw access units, the
//! AudioSpecificConfig in the track params). [`TestSource::next_frame`] yields frames of
//! both tracks in decode-time order, pts starting at 0 in each track's clock, as fast as
//! it is asked: the caller paces by pts.
//!
//! Machine-readable rows, for a picture `W` pixels wide: blocks are `W / 40` pixels square
//! (16 at 640x360), so they scale with the picture and a rendition of the source can be
//! read like the source. Row 0 holds 32 blocks, white = 1, encoding the frame counter
//! (bit 31 leftmost); row 1 encodes the wall-clock time in ms (mod 2^32) when the picture
//! was generated. [`read_counter`] and [`read_clock_ms`] read them back from a decoded
//! grey picture (`ffmpeg ... -f rawvideo -pix_fmt gray`).

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use divisor_link::{Codec, Frame, FrameFlags, TrackInfo};
use ffmpeg::{codec, encoder, format, frame, ChannelLayout, Packet};
use ffmpeg_next as ffmpeg;

use super::IngestError;
use crate::transcode::{default_keyint, EncodedPicture, FrameRate, H264Encoder, H264Settings};

/// Blocks per row of the machine-readable rows.
pub const ROW_BITS: usize = 32;
/// The picture width is this many block widths.
const BLOCKS_ACROSS: f64 = 40.0;
/// Frequency of the tone.
pub const TONE_HZ: f64 = 1000.0;
const AUDIO_RATE: u32 = 48_000;
const AUDIO_CHANNELS: u16 = 2;
const AUDIO_BITRATE: usize = 128_000;
/// Luma of white and black blocks (video range).
const WHITE: u8 = 235;
const BLACK: u8 = 16;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestSourceConfig {
    pub width: u16,
    pub height: u16,
    /// Frames per second.
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// Add the 1 kHz AAC tone track.
    pub audio: bool,
    /// Encoder threads.
    pub threads: usize,
}

impl Default for TestSourceConfig {
    fn default() -> Self {
        TestSourceConfig {
            width: 640,
            height: 360,
            fps: 25,
            bitrate_kbps: 800,
            audio: true,
            threads: 1,
        }
    }
}

fn unsupported(what: impl std::fmt::Display) -> IngestError {
    IngestError::Unsupported(format!("test source: {what}"))
}

/// The test source. Blocking (it encodes); keep it on the channel's thread.
pub struct TestSource {
    cfg: TestSourceConfig,
    rate: FrameRate,
    tracks: Vec<TrackInfo>,
    video: H264Encoder,
    picture: frame::Video,
    counter: u32,
    video_queue: VecDeque<Frame>,
    tone: Option<Tone>,
    audio_queue: VecDeque<Frame>,
    encoded: Vec<EncodedPicture>,
}

impl TestSource {
    pub fn new(cfg: TestSourceConfig) -> Result<TestSource, IngestError> {
        super::init();
        if cfg.width < 160
            || cfg.height < 64
            || !cfg.width.is_multiple_of(2)
            || !cfg.height.is_multiple_of(2)
        {
            return Err(unsupported(format!(
                "{}x{}: the picture must be even and at least 160x64",
                cfg.width, cfg.height
            )));
        }
        let rate = FrameRate::new(cfg.fps, 1)
            .ok_or_else(|| unsupported("the frame rate must be above 0"))?;
        let settings = H264Settings {
            width: u32::from(cfg.width),
            height: u32::from(cfg.height),
            bitrate_kbps: cfg.bitrate_kbps.max(1),
            keyint: default_keyint(rate, true),
            frame_rate: rate,
            threads: cfg.threads.max(1),
            tiers: true,
            profile: None,
        };
        let video = H264Encoder::open(&settings).map_err(unsupported)?;
        let mut tracks = vec![TrackInfo {
            track: 0,
            codec: Codec::H264,
            clock_rate: 90_000,
            width: cfg.width,
            height: cfg.height,
            sample_rate: 0,
            channels: 0,
            bitrate: cfg.bitrate_kbps.saturating_mul(1000),
            params: video.params().to_vec(),
        }];
        let tone = if cfg.audio {
            let tone = Tone::open(1)?;
            tracks.push(TrackInfo {
                track: 1,
                codec: Codec::Aac,
                clock_rate: AUDIO_RATE,
                width: 0,
                height: 0,
                sample_rate: AUDIO_RATE,
                channels: AUDIO_CHANNELS as u8,
                bitrate: AUDIO_BITRATE as u32,
                params: vec![tone.asc.clone()],
            });
            Some(tone)
        } else {
            None
        };
        let picture = frame::Video::new(
            format::Pixel::YUV420P,
            u32::from(cfg.width),
            u32::from(cfg.height),
        );
        Ok(TestSource {
            cfg,
            rate,
            tracks,
            video,
            picture,
            counter: 0,
            video_queue: VecDeque::new(),
            tone,
            audio_queue: VecDeque::new(),
            encoded: Vec::new(),
        })
    }

    /// Track 0: H.264 video; track 1 (with audio on): AAC.
    pub fn tracks(&self) -> &[TrackInfo] {
        &self.tracks
    }

    /// The video frame rate (for a transcode stage fed by this source).
    pub fn frame_rate(&self) -> FrameRate {
        self.rate
    }

    /// The next frame of either track, in dts order.
    pub fn next_frame(&mut self) -> Result<Frame, IngestError> {
        while self.video_queue.is_empty() {
            self.generate_picture()?;
        }
        if let Some(tone) = self.tone.as_mut() {
            while self.audio_queue.is_empty() {
                tone.generate(&mut self.audio_queue)?;
            }
        }
        let video_first = match (self.video_queue.front(), self.audio_queue.front()) {
            (Some(v), Some(a)) => {
                // Compare dts in seconds without rounding: v/90000 <= a/48000.
                i128::from(v.dts) * i128::from(AUDIO_RATE) <= i128::from(a.dts) * 90_000
            }
            _ => true,
        };
        let queue = if video_first {
            &mut self.video_queue
        } else {
            &mut self.audio_queue
        };
        queue
            .pop_front()
            .ok_or_else(|| IngestError::Read("test source: nothing generated".into()))
    }

    fn generate_picture(&mut self) -> Result<(), IngestError> {
        let n = self.counter;
        self.counter = self.counter.wrapping_add(1);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        draw(&mut self.picture, n, now_ms);
        let pts = i64::from(n) * 90_000 * i64::from(self.rate.den) / i64::from(self.rate.num);
        self.picture.set_pts(Some(pts));
        let encode_err = |e| IngestError::Read(format!("test source: {e}"));
        self.video
            .send(&mut self.picture, false)
            .map_err(encode_err)?;
        self.video.receive(&mut self.encoded).map_err(encode_err)?;
        let duration = self.rate.frame_duration_90k();
        for p in self.encoded.drain(..) {
            let mut flags = FrameFlags::empty().with_layer(p.layer);
            if p.keyframe {
                flags.insert(FrameFlags::KEYFRAME);
            }
            if p.disposable {
                flags.insert(FrameFlags::DISPOSABLE);
            }
            self.video_queue.push_back(Frame {
                channel: 0,
                track: 0,
                codec: Codec::H264,
                flags,
                pts: p.pts,
                dts: p.dts,
                duration,
                data: p.data,
            });
        }
        Ok(())
    }

    /// The configuration this source was made with.
    pub fn config(&self) -> &TestSourceConfig {
        &self.cfg
    }
}

/// The tone: a sine wave through the AAC encoder.
struct Tone {
    encoder: encoder::Audio,
    track: u8,
    asc: Bytes,
    frame_size: usize,
    samples: u64,
    packets: i64,
    packet: Packet,
}

impl Tone {
    fn open(track: u8) -> Result<Tone, IngestError> {
        let codec = encoder::find_by_name("aac")
            .ok_or_else(|| unsupported("libavcodec has no native AAC encoder"))?;
        let ctx = codec::context::Context::new_with_codec(codec);
        let mut enc = ctx.encoder().audio().map_err(unsupported)?;
        enc.set_rate(AUDIO_RATE as i32);
        enc.set_format(format::Sample::F32(format::sample::Type::Planar));
        enc.set_channel_layout(ChannelLayout::STEREO);
        enc.set_channels(i32::from(AUDIO_CHANNELS));
        // SAFETY: setting the (new-style) channel layout of a context we own, before open.
        unsafe {
            ffmpeg::ffi::av_channel_layout_default(
                &mut (*enc.as_mut_ptr()).ch_layout,
                i32::from(AUDIO_CHANNELS),
            );
        }
        enc.set_bit_rate(AUDIO_BITRATE);
        enc.set_time_base(ffmpeg::Rational::new(1, AUDIO_RATE as i32));
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let encoder = enc.open_as(codec).map_err(unsupported)?;
        // SAFETY: extradata of an opened encoder is null or `extradata_size` bytes.
        let asc = unsafe {
            let p = &*encoder.as_ptr();
            if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            }
        };
        if asc.is_empty() {
            return Err(unsupported("the AAC encoder gave no AudioSpecificConfig"));
        }
        let frame_size = match encoder.frame_size() {
            0 => 1024,
            n => n as usize,
        };
        Ok(Tone {
            encoder,
            track,
            asc: Bytes::from(asc),
            frame_size,
            samples: 0,
            packets: 0,
            packet: Packet::empty(),
        })
    }

    /// Encode one more frame of samples; append the packets that come out.
    fn generate(&mut self, out: &mut VecDeque<Frame>) -> Result<(), IngestError> {
        let err = |e: ffmpeg::Error| IngestError::Read(format!("test source: AAC: {e}"));
        let mut f = frame::Audio::new(
            format::Sample::F32(format::sample::Type::Planar),
            self.frame_size,
            ChannelLayout::STEREO,
        );
        // SAFETY: as above, for the frame we own.
        unsafe {
            ffmpeg::ffi::av_channel_layout_default(
                &mut (*f.as_mut_ptr()).ch_layout,
                i32::from(AUDIO_CHANNELS),
            );
        }
        f.set_rate(AUDIO_RATE);
        let step = 2.0 * std::f64::consts::PI * TONE_HZ / f64::from(AUDIO_RATE);
        for ch in 0..usize::from(AUDIO_CHANNELS) {
            // (`plane_mut`, not `data_mut`: libavutil sets only the first line size of
            // planar audio.)
            for (i, s) in f.plane_mut::<f32>(ch).iter_mut().enumerate() {
                // Phase modulo one second keeps the argument small for ever.
                let t = (self.samples + i as u64) % u64::from(AUDIO_RATE);
                *s = (0.25 * (step * t as f64).sin()) as f32;
            }
        }
        f.set_pts(Some(self.samples as i64));
        self.samples += self.frame_size as u64;
        self.encoder.send_frame(&f).map_err(err)?;
        loop {
            match self.encoder.receive_packet(&mut self.packet) {
                Ok(()) => {
                    let data = self.packet.data().unwrap_or_default();
                    if data.is_empty() {
                        continue;
                    }
                    // Number the access units from 0: the priming delay is inside the
                    // first one, as with any raw AAC stream.
                    let pts = self.packets * self.frame_size as i64;
                    self.packets += 1;
                    out.push_back(Frame {
                        channel: 0,
                        track: self.track,
                        codec: Codec::Aac,
                        flags: FrameFlags::KEYFRAME,
                        pts,
                        dts: pts,
                        duration: self.frame_size as u32,
                        data: Bytes::copy_from_slice(data),
                    });
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    return Ok(())
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
}

/// Block size (square) of the machine-readable rows for a picture `width` wide.
fn block_size(width: usize) -> f64 {
    width as f64 / BLOCKS_ACROSS
}

/// Draw picture number `n` generated at `now_ms` (Unix time) into `pic` (YUV 4:2:0).
fn draw(pic: &mut frame::Video, n: u32, now_ms: u128) {
    let (w, h) = (pic.width() as usize, pic.height() as usize);
    let shift = (n as usize).wrapping_mul(4);
    // Luma: a diagonal ramp sliding right, a white box sweeping across.
    let ys = pic.stride(0);
    let luma = pic.data_mut(0);
    let box_size = (h / 5).max(8);
    let box_x = (n as usize * 6) % (w.saturating_sub(box_size).max(1));
    let box_y = h / 2;
    for y in 0..h {
        let row = &mut luma[y * ys..y * ys + w];
        for (x, px) in row.iter_mut().enumerate() {
            let v = (x + y * 2).wrapping_sub(shift) & 0xff;
            *px = (16 + v * 219 / 255) as u8;
        }
        if (box_y..box_y + box_size).contains(&y) {
            for px in row.iter_mut().skip(box_x).take(box_size) {
                *px = WHITE;
            }
        }
    }
    // Chroma: slow colour drift.
    for plane in 1..3 {
        let cs = pic.stride(plane);
        let (cw, ch) = (w / 2, h / 2);
        let data = pic.data_mut(plane);
        for y in 0..ch {
            for x in 0..cw {
                let v = if plane == 1 {
                    x * 255 / cw.max(1)
                } else {
                    (y * 255 / ch.max(1) + n as usize) & 0xff
                };
                data[y * cs + x] = (64 + v / 2) as u8;
            }
        }
    }
    let clock = (now_ms % (1u128 << 32)) as u32;
    let b = block_size(w);
    let rows_bottom = ((2.0 * b).ceil() as usize).min(h);
    // Neutral chroma under the rows and the text so they stay black and white.
    let text_scale = ((b / 4.0).floor() as usize).max(1);
    let text_bottom = (rows_bottom + 2 * (8 * text_scale + 2) + 4).min(h);
    for plane in 1..3 {
        let cs = pic.stride(plane);
        let data = pic.data_mut(plane);
        for y in 0..text_bottom.div_ceil(2) {
            data[y * cs..y * cs + w / 2].fill(128);
        }
    }
    let luma = pic.data_mut(0);
    for y in 0..rows_bottom {
        let row_index = (y as f64 / b) as usize;
        let value = if row_index == 0 { n } else { clock };
        let row = &mut luma[y * ys..y * ys + w];
        for (x, px) in row.iter_mut().enumerate() {
            let i = (x as f64 / b) as usize;
            *px = if i < ROW_BITS {
                if value >> (31 - i) & 1 == 1 {
                    WHITE
                } else {
                    BLACK
                }
            } else {
                128
            };
        }
    }
    // Text: the UTC time of day and the counter, on a black band.
    for y in rows_bottom..text_bottom {
        luma[y * ys..y * ys + w].fill(BLACK);
    }
    let secs = (now_ms / 1000) % 86_400;
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now_ms % 1000
    );
    let top = rows_bottom + 2;
    draw_text(luma, ys, w, h, 4, top, text_scale, &time);
    draw_text(
        luma,
        ys,
        w,
        h,
        4,
        top + 8 * text_scale + 2,
        text_scale,
        &n.to_string(),
    );
}

/// 5x7 glyphs, one byte per row (bit 4 = leftmost column).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        _ => [0; 7],
    }
}

#[allow(clippy::too_many_arguments)]
fn draw_text(
    luma: &mut [u8],
    stride: usize,
    w: usize,
    h: usize,
    left: usize,
    top: usize,
    scale: usize,
    text: &str,
) {
    for (k, c) in text.chars().enumerate() {
        let x0 = left + k * 6 * scale;
        for (gy, bits) in glyph(c).iter().enumerate() {
            for gx in 0..5 {
                if bits >> (4 - gx) & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    let y = top + gy * scale + dy;
                    for dx in 0..scale {
                        let x = x0 + gx * scale + dx;
                        if x < w && y < h {
                            luma[y * stride + x] = WHITE;
                        }
                    }
                }
            }
        }
    }
}

/// Read row `row` of blocks from a grey picture `width` pixels wide; `None` when the
/// picture is too small or a block is neither clearly black nor clearly white.
fn read_row(gray: &[u8], width: usize, row: usize) -> Option<u32> {
    if width == 0 {
        return None;
    }
    let height = gray.len() / width;
    let b = block_size(width);
    if b < 2.0 || ((row + 1) as f64 * b).ceil() as usize > height {
        return None;
    }
    // The middle half of each block, away from edges that compression smears.
    let y0 = (row as f64 * b + b / 4.0).ceil() as usize;
    let y1 = ((row + 1) as f64 * b - b / 4.0).floor() as usize;
    let mut value = 0u32;
    for i in 0..ROW_BITS {
        let x0 = (i as f64 * b + b / 4.0).ceil() as usize;
        let x1 = ((i + 1) as f64 * b - b / 4.0).floor() as usize;
        if x1 <= x0 || y1 <= y0 || x1 > width {
            return None;
        }
        let mut sum = 0u64;
        for y in y0..y1 {
            sum += gray[y * width + x0..y * width + x1]
                .iter()
                .map(|&p| u64::from(p))
                .sum::<u64>();
        }
        let avg = sum / ((x1 - x0) * (y1 - y0)) as u64;
        let bit = match avg {
            0..=95 => 0,
            161.. => 1,
            _ => return None,
        };
        value = (value << 1) | bit;
    }
    Some(value)
}

/// The frame counter of a decoded test-source picture (8-bit grey, `width` pixels per
/// row, rows packed), or `None` if it cannot be read.
pub fn read_counter(gray: &[u8], width: usize) -> Option<u32> {
    read_row(gray, width, 0)
}

/// The wall-clock time (Unix ms mod 2^32) at which a decoded test-source picture was
/// generated.
pub fn read_clock_ms(gray: &[u8], width: usize) -> Option<u32> {
    read_row(gray, width, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The luma plane of a drawn picture, packed.
    fn drawn(w: u32, h: u32, n: u32, ms: u128) -> Vec<u8> {
        super::super::init();
        let mut pic = frame::Video::new(format::Pixel::YUV420P, w, h);
        draw(&mut pic, n, ms);
        let s = pic.stride(0);
        (0..h as usize)
            .flat_map(|y| pic.data(0)[y * s..y * s + w as usize].to_vec())
            .collect()
    }

    #[test]
    fn rows_read_back() {
        for (w, h) in [(640, 360), (320, 180), (1280, 720), (176, 144)] {
            let gray = drawn(w, h, 0x8000_0001, 0x1_2345_6789);
            assert_eq!(
                read_counter(&gray, w as usize),
                Some(0x8000_0001),
                "{w}x{h}"
            );
            assert_eq!(
                read_clock_ms(&gray, w as usize),
                Some(0x2345_6789),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn unreadable_is_none() {
        assert_eq!(read_counter(&[], 640), None);
        assert_eq!(read_counter(&[128; 640 * 360], 640), None);
        assert_eq!(read_counter(&[0; 10], 0), None);
    }
}
