//! File demuxer (MP4, MOV, MKV, MPEG-TS, and whatever else libavformat opens) producing
//! link [`Frame`]s: H.264 as Annex B with SPS/PPS in band on keyframes, AAC raw, Opus as is,
//! timestamps in the track clock relative to the file start.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use divisor_link::{Codec, Frame, FrameFlags, TrackInfo};
use ffmpeg::{codec, ffi, format, media, Packet, Rational, Rescale};
use ffmpeg_next as ffmpeg;

use super::{aac, h264, IngestError};

/// Consecutive read errors after which a file is given up as corrupt.
const MAX_CONSECUTIVE_READ_ERRORS: u32 = 64;
/// How many packets [`FileSource::open`] may read ahead looking for codec parameters.
const MAX_PROBE_PACKETS: usize = 2000;
/// How many packets a seek may read looking for the first keyframe.
const MAX_SEEK_SCAN_PACKETS: usize = 5000;

const MICROS: Rational = Rational(1, 1_000_000);
const MILLIS: Rational = Rational(1, 1000);

/// What [`FileSource::next_frame`] yields.
#[derive(Debug)]
pub enum Demuxed {
    /// The next frame, in file (interleaved, per-track dts) order. `channel` is 0: the
    /// session fills it in.
    Frame(Frame),
    /// The end of the file: no more frames until a seek.
    End,
}

/// How a track's packets are turned into frame data.
#[derive(Clone, Copy, Debug)]
enum Payload {
    /// H.264 with `Some(n)`: n-byte length prefixes (AVCC); `None`: already Annex B.
    H264 {
        nal_length_size: Option<usize>,
    },
    /// AAC; `adts` when packets carry ADTS headers to strip.
    Aac {
        adts: bool,
    },
    Opus,
}

struct Track {
    info: TrackInfo,
    stream_index: usize,
    time_base: Rational,
    clock: Rational,
    /// The file start in this track's clock, subtracted from every timestamp.
    offset: i64,
    payload: Payload,
    last_pts: i64,
    last_dts: i64,
    last_duration: i64,
}

/// One open media file. Blocking: keep it on its own thread.
pub struct FileSource {
    input: format::context::Input,
    path: PathBuf,
    tracks: Vec<Track>,
    infos: Vec<TrackInfo>,
    duration_ms: Option<u64>,
    /// The file start in AV_TIME_BASE (µs).
    start_us: i64,
    /// Packets read ahead (while probing for parameters or looking for a keyframe).
    pending: VecDeque<Packet>,
    /// After a seek: frames of non-anchor tracks earlier than this (ms) are dropped.
    drop_before_ms: Option<i64>,
    consecutive_errors: u32,
    /// Bounds blocking reads of a live input; declared after `input` so it outlives the
    /// context whose interrupt callback points at it.
    watchdog: Option<Arc<Watchdog>>,
}

/// Options for [`FileSource::open_url`].
#[derive(Clone, Debug, Default)]
pub struct UrlOptions {
    /// Force this demuxer (`"mpegts"`, `"sdp"`...); `None` lets libavformat probe.
    pub format: Option<String>,
    /// Demuxer and protocol options, as on the ffmpeg command line without the dash
    /// (e.g. `("protocol_whitelist", "file,udp,rtp")`, `("overrun_nonfatal", "1")`).
    pub options: Vec<(String, String)>,
    /// Longest wait for one packet; `None`: wait forever.
    pub read_timeout: Option<Duration>,
    /// Longest time opening (including probing the streams) may take; `None`: no limit.
    pub open_timeout: Option<Duration>,
    /// Set from another thread to abort whatever the source is blocked in.
    pub stop: Option<Arc<AtomicBool>>,
}

/// Interrupts libavformat's blocking calls: when the armed deadline passes (a live input
/// that went quiet) or the stop flag is set (the channel is being removed). libavformat
/// polls it through `AVFormatContext.interrupt_callback`.
#[derive(Debug)]
struct Watchdog {
    base: Instant,
    /// Nanoseconds after `base` when the current wait expires; 0 = no deadline.
    deadline_ns: AtomicU64,
    read_timeout: Option<Duration>,
    fired: AtomicBool,
    stop: Option<Arc<AtomicBool>>,
}

impl Watchdog {
    fn new(stop: Option<Arc<AtomicBool>>, read_timeout: Option<Duration>) -> Watchdog {
        Watchdog {
            base: Instant::now(),
            deadline_ns: AtomicU64::new(0),
            read_timeout,
            fired: AtomicBool::new(false),
            stop,
        }
    }

    /// Start a wait of at most `limit` (`None`: unbounded).
    fn arm(&self, limit: Option<Duration>) {
        self.fired.store(false, Ordering::Relaxed);
        let ns = limit.map_or(0, |l| {
            let at = self.base.elapsed() + l;
            u64::try_from(at.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self.deadline_ns.store(ns, Ordering::Relaxed);
    }

    fn should_interrupt(&self) -> bool {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        let deadline = self.deadline_ns.load(Ordering::Relaxed);
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if deadline != 0 && now >= deadline {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }

    /// `reason`, or what interrupted the call if the watchdog did.
    fn reason(&self, reason: String) -> String {
        if !self.fired() {
            reason
        } else if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            "stopped".into()
        } else {
            "timed out waiting for data".into()
        }
    }
}

/// libavformat's interrupt hook: non-zero aborts the blocking call in progress.
unsafe extern "C" fn interrupt_callback(opaque: *mut c_void) -> c_int {
    if opaque.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the `Arc<Watchdog>` pointer set in `open_url`; the source holds
    // that Arc for as long as the context can call this.
    let watchdog = unsafe { &*(opaque as *const Watchdog) };
    c_int::from(watchdog.should_interrupt())
}

fn ffmpeg_reason(e: ffmpeg::Error) -> String {
    e.to_string()
}

fn extradata(par: &codec::Parameters) -> Vec<u8> {
    // SAFETY: the parameters belong to a stream of an open input; extradata is either null
    // or `extradata_size` readable bytes, as libavformat guarantees.
    unsafe {
        let p = &*par.as_ptr();
        if p.extradata.is_null() || p.extradata_size <= 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
        }
    }
}

fn clamp_u16(v: i32) -> u16 {
    u16::try_from(v.max(0)).unwrap_or(u16::MAX)
}

fn clamp_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl FileSource {
    /// Open `path`, choose the first H.264 video stream and the first AAC or Opus audio
    /// stream, and read their codec parameters. Positioned at the start of the file.
    pub fn open(path: &Path) -> Result<FileSource, IngestError> {
        super::init();
        let input = format::input(&path).map_err(|e| IngestError::Open {
            path: path.to_path_buf(),
            reason: ffmpeg_reason(e),
        })?;
        FileSource::from_input(input, path, None)
    }

    /// Open a URL (`udp://...`, an SDP file for RTP, or any path libavformat takes) with
    /// demuxer/protocol options, a forced format and read time-outs: see [`UrlOptions`].
    /// A live input that sends nothing makes [`FileSource::next_frame`] fail with
    /// [`IngestError::TimedOut`] instead of blocking forever.
    pub fn open_url(url: &str, opts: &UrlOptions) -> Result<FileSource, IngestError> {
        super::init();
        let open_err = |reason: String| IngestError::Open {
            path: PathBuf::from(url),
            reason,
        };
        let watchdog = Arc::new(Watchdog::new(opts.stop.clone(), opts.read_timeout));
        let c_url = CString::new(url).map_err(|_| open_err("NUL byte in URL".into()))?;
        let format = match &opts.format {
            Some(name) => {
                let c_name =
                    CString::new(name.as_str()).map_err(|_| open_err("NUL in format".into()))?;
                // SAFETY: a lookup in libavformat's static table by a NUL-terminated name.
                let f = unsafe { ffi::av_find_input_format(c_name.as_ptr()) };
                if f.is_null() {
                    return Err(open_err(format!("libavformat has no {name:?} demuxer")));
                }
                f
            }
            None => std::ptr::null(),
        };
        let mut dict = ffmpeg::Dictionary::new();
        for (k, v) in &opts.options {
            dict.set(k, v);
        }
        watchdog.arm(opts.open_timeout);
        // SAFETY: the context is allocated here and handed to avformat_open_input, which
        // frees it on failure. The interrupt callback's opaque pointer is the watchdog,
        // which the returned source keeps alive for as long as the context lives (it is
        // dropped after `input`, see the field order of `FileSource`), and on failure
        // outlives this function's use of the context.
        let input = unsafe {
            let mut ps = ffi::avformat_alloc_context();
            if ps.is_null() {
                return Err(open_err("out of memory".into()));
            }
            (*ps).interrupt_callback = ffi::AVIOInterruptCB {
                callback: Some(interrupt_callback),
                opaque: Arc::as_ptr(&watchdog) as *mut c_void,
            };
            let mut raw_opts = dict.disown();
            let ret = ffi::avformat_open_input(&mut ps, c_url.as_ptr(), format, &mut raw_opts);
            drop(ffmpeg::Dictionary::own(raw_opts));
            if ret < 0 {
                let why = watchdog.reason(ffmpeg_reason(ffmpeg::Error::from(ret)));
                return Err(open_err(why));
            }
            let ret = ffi::avformat_find_stream_info(ps, std::ptr::null_mut());
            if ret < 0 {
                ffi::avformat_close_input(&mut ps);
                let why = watchdog.reason(ffmpeg_reason(ffmpeg::Error::from(ret)));
                return Err(open_err(why));
            }
            format::context::Input::wrap(ps)
        };
        let source = FileSource::from_input(input, Path::new(url), Some(watchdog.clone()));
        watchdog.arm(None);
        source
    }

    fn from_input(
        mut input: format::context::Input,
        path: &Path,
        watchdog: Option<Arc<Watchdog>>,
    ) -> Result<FileSource, IngestError> {
        let open_err = |reason: String| IngestError::Open {
            path: path.to_path_buf(),
            reason,
        };

        let mut found = Vec::new();
        let mut video = None;
        let mut audio = None;
        for stream in input.streams() {
            let par = stream.parameters();
            let id = par.id();
            let name = id.name().to_string();
            if !found.contains(&name) {
                found.push(name);
            }
            let attached = stream
                .disposition()
                .contains(format::stream::Disposition::ATTACHED_PIC);
            match (par.medium(), id) {
                (media::Type::Video, codec::Id::H264) if video.is_none() && !attached => {
                    video = Some(stream.index())
                }
                (media::Type::Audio, codec::Id::AAC | codec::Id::OPUS) if audio.is_none() => {
                    audio = Some(stream.index())
                }
                _ => {}
            }
        }
        if video.is_none() && audio.is_none() {
            let found = if found.is_empty() {
                "no streams".to_string()
            } else {
                found.join(", ")
            };
            return Err(IngestError::Unsupported(format!(
                "no H.264, AAC or Opus track (found: {found})"
            )));
        }

        // SAFETY: reading plain fields of the open format context.
        let raw_start = unsafe { (*input.as_ptr()).start_time };
        let start_us = if raw_start == ffi::AV_NOPTS_VALUE {
            0
        } else {
            raw_start
        };
        let raw_duration = input.duration();
        let duration_ms = (raw_duration != ffi::AV_NOPTS_VALUE && raw_duration > 0)
            .then_some((raw_duration / 1000) as u64);

        let mut tracks = Vec::new();
        for index in [video, audio].into_iter().flatten() {
            let stream = input
                .stream(index)
                .ok_or_else(|| open_err(format!("stream {index} vanished")))?;
            let par = stream.parameters();
            let time_base = stream.time_base();
            if time_base.numerator() <= 0 || time_base.denominator() <= 0 {
                return Err(IngestError::Unsupported(format!(
                    "stream {index} has an invalid time base {time_base}"
                )));
            }
            // SAFETY: plain fields of the stream's codec parameters.
            let (width, height, sample_rate, channels, bit_rate) = unsafe {
                let p = &*par.as_ptr();
                (
                    p.width,
                    p.height,
                    p.sample_rate,
                    p.ch_layout.nb_channels,
                    p.bit_rate,
                )
            };
            let extra = extradata(&par);
            let track_no = tracks.len() as u8;
            let (codec, clock_rate, payload, params) = match par.id() {
                codec::Id::H264 => {
                    if h264::is_avcc(&extra) {
                        let cfg = h264::parse_avcc(&extra).map_err(|e| {
                            IngestError::Unsupported(format!("bad H.264 avcC: {e}"))
                        })?;
                        let params = cfg.sps.iter().chain(cfg.pps.iter()).cloned().collect();
                        (
                            Codec::H264,
                            90000,
                            Payload::H264 {
                                nal_length_size: Some(cfg.nal_length_size),
                            },
                            params,
                        )
                    } else {
                        let nals = h264::split_annexb(&extra);
                        let params = h264::find_params(&nals).unwrap_or_default();
                        (
                            Codec::H264,
                            90000,
                            Payload::H264 {
                                nal_length_size: None,
                            },
                            params,
                        )
                    }
                }
                codec::Id::AAC => {
                    let params = if extra.is_empty() {
                        Vec::new()
                    } else {
                        vec![Bytes::from(extra)]
                    };
                    let rate = u32::try_from(sample_rate).unwrap_or(0);
                    (Codec::Aac, rate, Payload::Aac { adts: false }, params)
                }
                _ => (Codec::Opus, 48000, Payload::Opus, Vec::new()),
            };
            let is_video = codec.is_video();
            let info = TrackInfo {
                track: track_no,
                codec,
                clock_rate,
                width: if is_video { clamp_u16(width) } else { 0 },
                height: if is_video { clamp_u16(height) } else { 0 },
                sample_rate: if is_video {
                    0
                } else {
                    u32::try_from(sample_rate).unwrap_or(0)
                },
                channels: if is_video {
                    0
                } else {
                    u8::try_from(channels.max(0)).unwrap_or(u8::MAX)
                },
                bitrate: clamp_u32(bit_rate),
                params,
            };
            tracks.push(Track {
                info,
                stream_index: index,
                time_base,
                clock: Rational(1, clock_rate.max(1) as i32),
                offset: 0,
                payload,
                last_pts: 0,
                last_dts: 0,
                last_duration: 0,
            });
        }

        // Do not even read the streams we do not serve.
        let wanted: Vec<usize> = tracks.iter().map(|t| t.stream_index).collect();
        for mut stream in input.streams_mut() {
            if !wanted.contains(&stream.index()) {
                // SAFETY: setting the discard field of a stream we own through `input`.
                unsafe { (*stream.as_mut_ptr()).discard = ffi::AVDiscard::AVDISCARD_ALL };
            }
        }

        let mut source = FileSource {
            input,
            path: path.to_path_buf(),
            tracks,
            infos: Vec::new(),
            duration_ms,
            start_us,
            pending: VecDeque::new(),
            drop_before_ms: None,
            consecutive_errors: 0,
            watchdog,
        };
        for t in &mut source.tracks {
            t.offset = start_us.rescale(MICROS, t.clock);
            if t.info.codec == Codec::Aac && t.info.clock_rate == 0 {
                return Err(IngestError::Unsupported(
                    "AAC track with an unknown sample rate".into(),
                ));
            }
        }
        source.probe_in_band()?;
        source.infos = source.tracks.iter().map(|t| t.info.clone()).collect();
        Ok(source)
    }

    /// Fill in what the extradata did not say, from the first packets: H.264 SPS/PPS sent
    /// in band (MPEG-TS), AAC carried as ADTS (and its AudioSpecificConfig). The packets
    /// read stay queued, so nothing is lost.
    fn probe_in_band(&mut self) -> Result<(), IngestError> {
        let mut need_video = self
            .tracks
            .iter()
            .any(|t| t.info.codec == Codec::H264 && t.info.params.is_empty());
        let mut need_audio = self.tracks.iter().any(|t| t.info.codec == Codec::Aac);
        let mut scanned = 0;
        while (need_video || need_audio) && scanned < MAX_PROBE_PACKETS {
            let Some(pkt) = self.read_from_input()? else {
                break;
            };
            scanned += 1;
            if let Some(ti) = self.track_of(pkt.stream()) {
                let data = pkt.data().unwrap_or_default();
                let t = &mut self.tracks[ti];
                match t.info.codec {
                    Codec::H264 if need_video && t.info.params.is_empty() => {
                        let nals = match t.payload {
                            Payload::H264 {
                                nal_length_size: Some(n),
                            } => h264::split_avcc(data, n).unwrap_or_default(),
                            _ => h264::split_annexb(data),
                        };
                        if let Some(params) = h264::find_params(&nals) {
                            t.info.params = params;
                            need_video = false;
                        }
                    }
                    Codec::Aac if need_audio && !data.is_empty() => {
                        if aac::is_adts(data) {
                            let h = aac::parse_adts(data).map_err(|e| {
                                IngestError::Unsupported(format!("bad ADTS header: {e}"))
                            })?;
                            t.payload = Payload::Aac { adts: true };
                            if t.info.params.is_empty() {
                                t.info.params = vec![aac::asc_from_adts(&h)];
                            }
                        }
                        need_audio = false;
                    }
                    _ => {}
                }
            }
            self.pending.push_back(pkt);
        }
        for t in &self.tracks {
            if t.info.params.is_empty() && t.info.codec != Codec::Opus {
                let what = match t.info.codec {
                    Codec::H264 => "H.264 track carries no SPS/PPS (not in extradata nor in band)",
                    _ => "AAC track has no AudioSpecificConfig (no extradata, not ADTS)",
                };
                return Err(IngestError::Unsupported(what.into()));
            }
        }
        Ok(())
    }

    /// The file this source reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tracks, as announced: track 0 is video if there is one, then audio.
    pub fn tracks(&self) -> &[TrackInfo] {
        &self.infos
    }

    /// Duration of the file in ms, if the container says.
    pub fn duration_ms(&self) -> Option<u64> {
        self.duration_ms
    }

    /// Short name of the container format (e.g. "mov,mp4,m4a,3gp,3g2,mj2").
    pub fn container(&self) -> String {
        self.input.format().name().to_string()
    }

    fn track_of(&self, stream_index: usize) -> Option<usize> {
        self.tracks
            .iter()
            .position(|t| t.stream_index == stream_index)
    }

    /// Read the next packet of a wanted stream from the file itself (not the queue).
    fn read_from_input(&mut self) -> Result<Option<Packet>, IngestError> {
        loop {
            let mut pkt = Packet::empty();
            if let Some(w) = &self.watchdog {
                w.arm(w.read_timeout);
            }
            let read = pkt.read(&mut self.input);
            if let Some(w) = self.watchdog.as_ref().filter(|w| w.fired()) {
                return Err(IngestError::TimedOut(w.reason("interrupted".into())));
            }
            match read {
                Ok(()) => {
                    self.consecutive_errors = 0;
                    if self.track_of(pkt.stream()).is_some() {
                        return Ok(Some(pkt));
                    }
                }
                Err(ffmpeg::Error::Eof) => return Ok(None),
                Err(e) => {
                    self.consecutive_errors += 1;
                    if self.consecutive_errors >= MAX_CONSECUTIVE_READ_ERRORS {
                        return Err(IngestError::Read(format!(
                            "{} consecutive read errors in {}, last: {e}",
                            self.consecutive_errors,
                            self.path.display()
                        )));
                    }
                }
            }
        }
    }

    fn read_packet(&mut self) -> Result<Option<Packet>, IngestError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Some(p));
        }
        self.read_from_input()
    }

    /// The next frame, or [`Demuxed::End`] at the end of the file.
    pub fn next_frame(&mut self) -> Result<Demuxed, IngestError> {
        loop {
            let Some(pkt) = self.read_packet()? else {
                return Ok(Demuxed::End);
            };
            let Some(ti) = self.track_of(pkt.stream()) else {
                continue;
            };
            let mut pkt = pkt;
            if pkt.dts().is_none() && pkt.pts().is_some() {
                self.fill_dts(&mut pkt)?;
            }
            if let Some(frame) = self.convert(ti, &pkt) {
                return Ok(Demuxed::Frame(frame));
            }
        }
    }

    /// Some demuxers (Matroska with B-frames, right after the start or a seek) leave the
    /// dts of the first packets unset. Extrapolate it back from the next packet of the
    /// same stream that has one, looking ahead (and queueing) a few packets.
    fn fill_dts(&mut self, pkt: &mut Packet) -> Result<(), IngestError> {
        const LOOKAHEAD: usize = 64;
        let stream = pkt.stream();
        let mut i = 0;
        let mut between = 0i64;
        while i < LOOKAHEAD {
            if i == self.pending.len() {
                match self.read_from_input()? {
                    Some(p) => self.pending.push_back(p),
                    None => return Ok(()),
                }
            }
            let p = &self.pending[i];
            i += 1;
            if p.stream() != stream {
                continue;
            }
            between += 1;
            if let Some(known) = p.dts() {
                let step = if pkt.duration() > 0 {
                    pkt.duration()
                } else {
                    p.duration()
                };
                if step > 0 {
                    let dts = known - between * step;
                    pkt.set_dts(Some(dts.min(pkt.pts().unwrap_or(dts))));
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Turn one packet into a frame; `None` to skip it (empty, undecodable sample,
    /// or audio before the seek position).
    fn convert(&mut self, ti: usize, pkt: &Packet) -> Option<Frame> {
        let drop_before_ms = self.drop_before_ms;
        let anchor = 0;
        let t = &mut self.tracks[ti];
        let data = pkt.data().unwrap_or_default();
        if data.is_empty() {
            return None;
        }
        let rescale = |v: i64| v.rescale(t.time_base, t.clock);
        let duration = if pkt.duration() > 0 {
            rescale(pkt.duration())
        } else {
            0
        };
        let (pts, dts) = match (pkt.pts(), pkt.dts()) {
            (Some(p), Some(d)) => (rescale(p) - t.offset, rescale(d) - t.offset),
            (Some(p), None) => {
                let p = rescale(p) - t.offset;
                (p, p.min(t.last_dts + t.last_duration))
            }
            (None, Some(d)) => {
                let d = rescale(d) - t.offset;
                (d, d)
            }
            (None, None) => {
                let d = t.last_dts + t.last_duration;
                (t.last_pts + t.last_duration, d)
            }
        };
        t.last_pts = pts;
        t.last_dts = dts;
        t.last_duration = duration;

        if ti != anchor {
            if let Some(start_ms) = drop_before_ms {
                let pts_ms = pts.rescale(t.clock, MILLIS);
                if pts_ms < start_ms {
                    return None;
                }
            }
        }

        let key = pkt.is_key();
        let mut disposable = false;
        let bytes = match t.payload {
            Payload::H264 { nal_length_size } => {
                let nals = match nal_length_size {
                    Some(n) => match h264::split_avcc(data, n) {
                        Ok(nals) => nals,
                        // Some muxers store Annex B despite an avcC record.
                        Err(_) if h264::looks_annexb(data) => h264::split_annexb(data),
                        Err(e) => {
                            tracing::warn!(
                                file = %self.path.display(),
                                pts,
                                "skipping a corrupt H.264 sample: {e}"
                            );
                            return None;
                        }
                    },
                    None => h264::split_annexb(data),
                };
                if nals.is_empty() {
                    return None;
                }
                disposable = h264::is_disposable(&nals);
                let params = key.then_some(t.info.params.as_slice());
                h264::write_annexb(&nals, params)
            }
            Payload::Aac { adts } => {
                let raw = Bytes::copy_from_slice(data);
                if adts {
                    match aac::strip_adts(&raw) {
                        Ok(b) if !b.is_empty() => b,
                        Ok(_) => return None,
                        Err(e) => {
                            tracing::warn!(
                                file = %self.path.display(),
                                pts,
                                "skipping a corrupt ADTS frame: {e}"
                            );
                            return None;
                        }
                    }
                } else {
                    raw
                }
            }
            Payload::Opus => Bytes::copy_from_slice(data),
        };
        let mut flags = FrameFlags::empty();
        if key {
            flags.insert(FrameFlags::KEYFRAME);
        }
        if disposable {
            flags.insert(FrameFlags::DISPOSABLE);
        }
        Some(Frame {
            channel: 0,
            track: t.info.track,
            codec: t.info.codec,
            flags,
            pts,
            dts,
            duration: clamp_u32(duration),
            data: bytes,
        })
    }

    /// Seek to the keyframe at or before `position_ms` (of the first track: video when
    /// there is one) and return the position in ms where frames really start again. Frames
    /// of the other tracks earlier than that are dropped so all tracks start together.
    /// Past the end, this is the last keyframe.
    pub fn seek(&mut self, position_ms: u64) -> Result<u64, IngestError> {
        let asked = i64::try_from(position_ms).unwrap_or(i64::MAX / 2000);
        let mut target = asked;
        let mut back_off = 1000;
        loop {
            self.seek_raw(target)?;
            match self.scan_to_keyframe(asked)? {
                Some(start_ms) if start_ms <= asked || target == 0 => {
                    let start_ms = start_ms.max(0);
                    self.drop_before_ms = Some(start_ms);
                    return Ok(start_ms as u64);
                }
                // The demuxer overshot (inexact seeking, e.g. MPEG-TS): go further back.
                Some(_) => {}
                None if target == 0 => {
                    return Err(IngestError::Seek(format!(
                        "no keyframe in {}",
                        self.path.display()
                    )))
                }
                // Nothing after that point: the target is past the last keyframe.
                None => {}
            }
            target = (target - back_off).max(0);
            back_off *= 2;
        }
    }

    /// Formats whose seeking is a timestamp search over the byte stream (no index):
    /// it may land after the keyframe it should find, so position 0 is sought by byte.
    fn seeks_by_search(&self) -> bool {
        matches!(
            self.input.format().name(),
            "mpegts" | "mpeg" | "mpegvideo" | "h264" | "aac"
        )
    }

    fn seek_raw(&mut self, target_ms: i64) -> Result<(), IngestError> {
        self.pending.clear();
        self.drop_before_ms = None;
        for t in &mut self.tracks {
            (t.last_pts, t.last_dts, t.last_duration) = (0, 0, 0);
        }
        self.consecutive_errors = 0;
        if target_ms == 0 && self.seeks_by_search() {
            // SAFETY: the context is open and owned by `self.input`.
            let ret = unsafe {
                ffi::av_seek_frame(self.input.as_mut_ptr(), -1, 0, ffi::AVSEEK_FLAG_BYTE)
            };
            if ret >= 0 {
                return Ok(());
            }
        }
        let anchor = &self.tracks[0];
        let abs_us = self.start_us + target_ms.saturating_mul(1000);
        let ts = abs_us.rescale(MICROS, anchor.time_base);
        let stream = anchor.stream_index as i32;
        // SAFETY: the context is open and owned by `self.input`.
        let ret = unsafe {
            ffi::av_seek_frame(
                self.input.as_mut_ptr(),
                stream,
                ts,
                ffi::AVSEEK_FLAG_BACKWARD,
            )
        };
        if ret >= 0 {
            return Ok(());
        }
        // Some demuxers refuse a stream-level seek before the first index entry; fall
        // back to the generic time-based seek.
        let res = self.input.seek(abs_us, ..abs_us.saturating_add(1));
        res.map_err(|e| {
            IngestError::Seek(format!(
                "cannot seek {} to {target_ms} ms: {}",
                self.path.display(),
                ffmpeg::Error::from(ret).to_string() + " / " + &e.to_string()
            ))
        })
    }

    /// After a raw seek: find the last keyframe of the anchor track at or before `asked_ms`
    /// (or, if the seek overshot, the first keyframe after it), queue it and everything
    /// after, and return its position in ms. `None` at the end of the file.
    fn scan_to_keyframe(&mut self, asked_ms: i64) -> Result<Option<i64>, IngestError> {
        let anchor_stream = self.tracks[0].stream_index;
        let (time_base, clock, offset) = {
            let t = &self.tracks[0];
            (t.time_base, t.clock, t.offset)
        };
        let to_ms = |ts: i64| (ts.rescale(time_base, clock) - offset).rescale(clock, MILLIS);
        let mut best: Option<i64> = None;
        let mut queue: VecDeque<Packet> = VecDeque::new();
        let mut scanned = 0;
        while scanned < MAX_SEEK_SCAN_PACKETS {
            let Some(pkt) = self.read_from_input()? else {
                break;
            };
            scanned += 1;
            if pkt.stream() != anchor_stream {
                // Other tracks: kept, and trimmed to the start position when converted.
                queue.push_back(pkt);
                continue;
            }
            let ts_ms = pkt.pts().or(pkt.dts()).map(to_ms);
            let usable = pkt.is_key() && pkt.data().is_some_and(|d| !d.is_empty());
            match (usable, ts_ms, best) {
                (true, Some(ms), _) if ms <= asked_ms => {
                    // A later keyframe still at or before the target: start there.
                    best = Some(ms);
                    queue.retain(|p| p.stream() != anchor_stream);
                    queue.push_back(pkt);
                }
                (true, Some(ms), None) => {
                    // The first keyframe is already past the target (overshoot or end).
                    best = Some(ms);
                    queue.push_back(pkt);
                    break;
                }
                (_, _, None) => {} // before the first keyframe: undecodable, dropped
                (_, _, Some(_)) => {
                    let dts_ms = pkt.dts().or(pkt.pts()).map(to_ms);
                    queue.push_back(pkt);
                    // Decode order is dts order: nothing later can start at or before
                    // the target once a dts has passed it.
                    if dts_ms.is_some_and(|d| d > asked_ms) {
                        break;
                    }
                }
            }
        }
        if best.is_none() && scanned >= MAX_SEEK_SCAN_PACKETS {
            return Err(IngestError::Seek(format!(
                "no keyframe within {MAX_SEEK_SCAN_PACKETS} packets after seeking {}",
                self.path.display()
            )));
        }
        self.pending = queue;
        Ok(best)
    }
}
