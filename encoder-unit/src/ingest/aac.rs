//! AAC helpers: ADTS header parsing and stripping, AudioSpecificConfig synthesis.
//!
//! Hand-written: the ADTS header is 7 (or 9) bytes of fixed bit fields (ISO/IEC 13818-7
//! §6.2) and the AudioSpecificConfig we need is its 2-byte subset (ISO/IEC 14496-3
//! §1.6.2.1). Untrusted input never panics here.

use bytes::Bytes;

/// Sampling frequencies by ADTS / ASC `samplingFrequencyIndex`.
pub const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The fields of an ADTS header we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdtsHeader {
    /// MPEG-4 audio object type (profile + 1): 2 = AAC-LC.
    pub object_type: u8,
    pub sampling_index: u8,
    pub channel_config: u8,
    /// Header length: 7, or 9 with CRC.
    pub header_len: usize,
    /// Whole frame length, header included.
    pub frame_len: usize,
}

impl AdtsHeader {
    pub fn sample_rate(&self) -> Option<u32> {
        SAMPLE_RATES.get(usize::from(self.sampling_index)).copied()
    }
}

/// Whether `data` starts with an ADTS syncword.
pub fn is_adts(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] == 0xff && data[1] & 0xf6 == 0xf0
}

/// Parse an ADTS header at the start of `data`.
pub fn parse_adts(data: &[u8]) -> Result<AdtsHeader, String> {
    if data.len() < 7 {
        return Err(format!("ADTS header needs 7 bytes, got {}", data.len()));
    }
    if !is_adts(data) {
        return Err("no ADTS syncword".into());
    }
    let protection_absent = data[1] & 0x01 == 1;
    let profile = (data[2] >> 6) & 0x03;
    let sampling_index = (data[2] >> 2) & 0x0f;
    let channel_config = ((data[2] & 0x01) << 2) | (data[3] >> 6);
    let frame_len = (usize::from(data[3] & 0x03) << 11)
        | (usize::from(data[4]) << 3)
        | (usize::from(data[5]) >> 5);
    let header_len = if protection_absent { 7 } else { 9 };
    if usize::from(sampling_index) >= SAMPLE_RATES.len() {
        return Err(format!(
            "ADTS sampling frequency index {sampling_index} is reserved"
        ));
    }
    if frame_len < header_len {
        return Err(format!(
            "ADTS frame length {frame_len} is shorter than its header"
        ));
    }
    Ok(AdtsHeader {
        object_type: profile + 1,
        sampling_index,
        channel_config,
        header_len,
        frame_len,
    })
}

/// Strip the ADTS header of one packet, returning the raw access unit.
/// Packets without an ADTS header are returned unchanged.
pub fn strip_adts(data: &Bytes) -> Result<Bytes, String> {
    if !is_adts(data) {
        return Ok(data.clone());
    }
    let h = parse_adts(data)?;
    if data.len() < h.header_len {
        return Err("ADTS packet shorter than its header".into());
    }
    let end = h.frame_len.min(data.len());
    Ok(data.slice(h.header_len..end))
}

/// The 2-byte AudioSpecificConfig equivalent to an ADTS header.
pub fn asc_from_adts(h: &AdtsHeader) -> Bytes {
    let b0 = (h.object_type << 3) | (h.sampling_index >> 1);
    let b1 = ((h.sampling_index & 0x01) << 7) | (h.channel_config << 3);
    Bytes::from(vec![b0, b1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ADTS header for AAC-LC, 44100 Hz (index 4), mono, frame of `len` bytes total.
    fn adts(len: usize, crc: bool) -> Vec<u8> {
        let mut h = vec![
            0xff,
            if crc { 0xf0 } else { 0xf1 },
            (1 << 6) | (4 << 2),
            (1 << 6) | ((len >> 11) & 0x03) as u8,
            ((len >> 3) & 0xff) as u8,
            (((len & 0x07) << 5) as u8) | 0x1f,
            0xfc,
        ];
        if crc {
            h.extend_from_slice(&[0xab, 0xcd]);
        }
        h
    }

    #[test]
    fn parses_and_strips_adts() {
        let payload = [0x21u8, 0x10, 0x04, 0x60, 0x8c];
        let mut pkt = adts(7 + payload.len(), false);
        pkt.extend_from_slice(&payload);
        let h = parse_adts(&pkt).unwrap();
        assert_eq!(h.object_type, 2);
        assert_eq!(h.sample_rate(), Some(44100));
        assert_eq!(h.channel_config, 1);
        assert_eq!(h.frame_len, 12);
        let raw = strip_adts(&Bytes::from(pkt)).unwrap();
        assert_eq!(&raw[..], &payload);

        let mut pkt = adts(9 + payload.len(), true);
        pkt.extend_from_slice(&payload);
        assert_eq!(&strip_adts(&Bytes::from(pkt)).unwrap()[..], &payload);
    }

    #[test]
    fn synthesises_asc() {
        let h = parse_adts(&adts(100, false)).unwrap();
        // AAC-LC (2), 44100 (4), mono (1): 00010 0100 0001 000 = 0x12 0x08
        assert_eq!(&asc_from_adts(&h)[..], &[0x12, 0x08]);
        let h48 = AdtsHeader {
            object_type: 2,
            sampling_index: 3,
            channel_config: 2,
            header_len: 7,
            frame_len: 7,
        };
        assert_eq!(&asc_from_adts(&h48)[..], &[0x11, 0x90]);
    }

    #[test]
    fn raw_packets_pass_through_and_garbage_fails() {
        let raw = Bytes::from_static(&[0x21, 0x10, 0x04]);
        assert_eq!(strip_adts(&raw).unwrap(), raw);
        assert!(parse_adts(&[0xff, 0xf1, 0x00]).is_err());
        // Reserved sampling index 15.
        assert!(parse_adts(&[0xff, 0xf1, 0x7c, 0x40, 0x01, 0x9f, 0xfc]).is_err());
        // Declared frame shorter than the header.
        let mut bad = adts(3, false);
        bad[3] &= 0xfc;
        assert!(parse_adts(&bad).is_err());
    }
}
