//! Picture scaling through swscale: any decoded picture to 8-bit 4:2:0 at the rendition
//! size. The context is rebuilt when the input size or format changes mid-stream.

use ffmpeg::format::Pixel;
use ffmpeg::frame;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use crate::pipeline::StageError;

/// swscale's bicubic filter: the default of the ffmpeg command line's `scale` filter, so
/// the bench compares like with like.
const FLAGS: scaling::Flags = scaling::Flags::BICUBIC;

/// A swscale context owned by one stage.
struct SwsContext(scaling::Context);

// SAFETY: an SwsContext has no thread affinity; it is only unsafe to use from two
// threads at once, which owning it (no sharing, `&mut` access only) rules out. The stage
// that owns it moves between threads as a whole.
unsafe impl Send for SwsContext {}

pub(crate) struct Scaler {
    width: u32,
    height: u32,
    context: Option<(SwsContext, Pixel, u32, u32)>,
}

impl Scaler {
    /// Scale to `width` x `height`, YUV 4:2:0.
    pub(crate) fn new(width: u32, height: u32) -> Scaler {
        Scaler {
            width,
            height,
            context: None,
        }
    }

    /// `picture` at the output size and format; pictures that already are pass through
    /// without a copy (the encoder reads them as they are).
    pub(crate) fn scale(&mut self, picture: frame::Video) -> Result<frame::Video, StageError> {
        let (fmt, w, h) = (picture.format(), picture.width(), picture.height());
        if fmt == Pixel::YUV420P && w == self.width && h == self.height {
            return Ok(picture);
        }
        let stale =
            !matches!(&self.context, Some((_, f, cw, ch)) if *f == fmt && *cw == w && *ch == h);
        if stale {
            let ctx =
                scaling::Context::get(fmt, w, h, Pixel::YUV420P, self.width, self.height, FLAGS)
                    .map_err(|e| {
                        StageError::Unsupported(format!(
                            "cannot scale {w}x{h} {fmt:?} to {}x{}: {e}",
                            self.width, self.height
                        ))
                    })?;
            self.context = Some((SwsContext(ctx), fmt, w, h));
        }
        let scale_error = |reason: String| StageError::Encode {
            what: "scaling".into(),
            reason,
        };
        let (ctx, ..) = self
            .context
            .as_mut()
            .ok_or_else(|| scale_error("no scaling context".into()))?;
        let mut out = frame::Video::new(Pixel::YUV420P, self.width, self.height);
        ctx.0
            .run(&picture, &mut out)
            .map_err(|e| scale_error(e.to_string()))?;
        out.set_pts(picture.pts());
        Ok(out)
    }
}
