//! IVF, the simplest container for AV1 temporal units (a 32-byte file header, then a
//! 12-byte header per frame): what `divisor-dump` writes so `ffmpeg -c:v libdav1d` can
//! check an AV1 rendition.

use std::io::{self, Seek, SeekFrom, Write};

/// Writes an IVF file with a 1/90000 time base (the link's video clock).
pub struct IvfWriter<W: Write + Seek> {
    out: W,
    frames: u32,
}

impl<W: Write + Seek> IvfWriter<W> {
    /// Write the file header for an AV1 stream of `width` x `height`.
    pub fn new(mut out: W, width: u16, height: u16) -> io::Result<IvfWriter<W>> {
        out.write_all(&header(width, height, 0))?;
        Ok(IvfWriter { out, frames: 0 })
    }

    /// Append one temporal unit stamped `pts` (90 kHz).
    pub fn write_frame(&mut self, data: &[u8], pts: i64) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&pts.to_le_bytes())?;
        self.out.write_all(data)?;
        self.frames += 1;
        Ok(())
    }

    /// Patch the frame count into the header and hand the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.seek(SeekFrom::Start(24))?;
        self.out.write_all(&self.frames.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn header(width: u16, height: u16, frames: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"DKIF");
    h[4..6].copy_from_slice(&0u16.to_le_bytes()); // version
    h[6..8].copy_from_slice(&32u16.to_le_bytes()); // header size
    h[8..12].copy_from_slice(b"AV01");
    h[12..14].copy_from_slice(&width.to_le_bytes());
    h[14..16].copy_from_slice(&height.to_le_bytes());
    h[16..20].copy_from_slice(&90_000u32.to_le_bytes()); // time base denominator
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // numerator
    h[24..28].copy_from_slice(&frames.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_header_and_frames() {
        let mut w = IvfWriter::new(io::Cursor::new(Vec::new()), 320, 180).unwrap();
        w.write_frame(&[1, 2, 3], 3600).unwrap();
        let bytes = w.finish().unwrap().into_inner();
        assert_eq!(&bytes[0..4], b"DKIF");
        assert_eq!(&bytes[8..12], b"AV01");
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 320);
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 1);
        assert_eq!(&bytes[32..36], &3u32.to_le_bytes());
        assert_eq!(&bytes[36..44], &3600i64.to_le_bytes());
        assert_eq!(&bytes[44..], &[1, 2, 3]);
    }
}
