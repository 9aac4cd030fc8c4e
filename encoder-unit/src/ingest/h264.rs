//! H.264 bitstream helpers: avcC parsing, AVCC (length-prefixed) to Annex B conversion,
//! Annex B splitting and in-band SPS/PPS insertion.
//!
//! Written by hand because they are a few dozen lines of byte shuffling over well-known
//! layouts (ISO/IEC 14496-15 §5.3.3, ITU-T H.264 Annex B); pulling a bitstream crate for
//! this would add more surface than it removes. Every function takes untrusted bytes and
//! returns an error instead of panicking.

use bytes::{BufMut, Bytes, BytesMut};

/// NAL unit types we care about.
pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// The NAL unit type (low 5 bits of the first byte); 0 for an empty NAL.
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// What an `avcC` box (AVCDecoderConfigurationRecord) tells us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvcConfig {
    /// Size in bytes of the NAL length prefix in samples (1, 2 or 4).
    pub nal_length_size: usize,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

/// Whether codec extradata is an avcC record (as opposed to Annex B NAL units).
pub fn is_avcc(extradata: &[u8]) -> bool {
    extradata.len() >= 7 && extradata[0] == 1
}

/// Parse an AVCDecoderConfigurationRecord.
pub fn parse_avcc(data: &[u8]) -> Result<AvcConfig, String> {
    if data.len() < 7 {
        return Err(format!("avcC record too short ({} bytes)", data.len()));
    }
    if data[0] != 1 {
        return Err(format!("avcC configurationVersion {} is not 1", data[0]));
    }
    let nal_length_size = usize::from(data[4] & 0x03) + 1;
    if nal_length_size == 3 {
        return Err("avcC NAL length size 3 is not allowed".into());
    }
    let mut pos = 5;
    let read_list = |count: usize, pos: &mut usize| -> Result<Vec<Bytes>, String> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let len_bytes = data
                .get(*pos..*pos + 2)
                .ok_or("avcC parameter set length runs past the end")?;
            let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
            *pos += 2;
            let nal = data
                .get(*pos..*pos + len)
                .ok_or("avcC parameter set runs past the end")?;
            *pos += len;
            if !nal.is_empty() {
                out.push(Bytes::copy_from_slice(nal));
            }
        }
        Ok(out)
    };
    let num_sps = usize::from(data[pos] & 0x1f);
    pos += 1;
    let sps = read_list(num_sps, &mut pos)?;
    let num_pps = usize::from(
        *data
            .get(pos)
            .ok_or("avcC record ends before the PPS count")?,
    );
    pos += 1;
    let pps = read_list(num_pps, &mut pos)?;
    Ok(AvcConfig {
        nal_length_size,
        sps,
        pps,
    })
}

/// Split a length-prefixed (AVCC) access unit into NAL units.
pub fn split_avcc(data: &[u8], nal_length_size: usize) -> Result<Vec<&[u8]>, String> {
    if !matches!(nal_length_size, 1 | 2 | 4) {
        return Err(format!("unsupported NAL length size {nal_length_size}"));
    }
    let mut nals = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let prefix = data
            .get(pos..pos + nal_length_size)
            .ok_or_else(|| format!("truncated NAL length prefix at byte {pos}"))?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        pos += nal_length_size;
        let nal = data.get(pos..pos + len).ok_or_else(|| {
            format!(
                "NAL unit of {len} bytes at byte {pos} runs past the end of a {}-byte sample",
                data.len()
            )
        })?;
        pos += len;
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    Ok(nals)
}

/// Split an Annex B byte stream (3- or 4-byte start codes) into NAL units.
/// Bytes before the first start code are ignored; trailing zero bytes of a NAL
/// (the leading zero of the next 4-byte start code) are trimmed.
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut nals = Vec::new();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    for (k, &s) in starts.iter().enumerate() {
        let mut end = if k + 1 < starts.len() {
            starts[k + 1] - 3
        } else {
            data.len()
        };
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            nals.push(&data[s..end]);
        }
    }
    nals
}

/// Whether `data` looks like Annex B (starts with a start code).
pub fn looks_annexb(data: &[u8]) -> bool {
    data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1])
}

/// Write NAL units as Annex B. When `params` is given (SPS and PPS) and the NALs do not
/// already carry both an SPS and a PPS, the parameter sets are inserted in band: after an
/// access unit delimiter if the access unit starts with one, else first.
pub fn write_annexb(nals: &[&[u8]], params: Option<&[Bytes]>) -> Bytes {
    let has_sps = nals.iter().any(|n| nal_type(n) == NAL_SPS);
    let has_pps = nals.iter().any(|n| nal_type(n) == NAL_PPS);
    let already = has_sps && has_pps;
    let insert = params.filter(|p| !(p.is_empty() || already));
    let size: usize = nals.iter().map(|n| n.len() + 4).sum::<usize>()
        + insert.map_or(0, |p| p.iter().map(|n| n.len() + 4).sum());
    let mut out = BytesMut::with_capacity(size);
    let mut inserted = insert.is_none();
    for (i, nal) in nals.iter().enumerate() {
        let after_aud = i == 0 && nal_type(nal) == NAL_AUD;
        if !(inserted || after_aud) {
            for p in insert.unwrap_or_default() {
                out.put_slice(&START_CODE);
                out.put_slice(p);
            }
            inserted = true;
        }
        out.put_slice(&START_CODE);
        out.put_slice(nal);
    }
    if !inserted {
        for p in insert.unwrap_or_default() {
            out.put_slice(&START_CODE);
            out.put_slice(p);
        }
    }
    out.freeze()
}

/// Whether an access unit is disposable: it has slices and none of them is a reference
/// (`nal_ref_idc` 0), so no other picture depends on it.
pub fn is_disposable(nals: &[&[u8]]) -> bool {
    let mut slices = nals
        .iter()
        .filter(|n| matches!(nal_type(n), 1..=5))
        .peekable();
    slices.peek().is_some() && slices.all(|n| n[0] & 0x60 == 0)
}

/// SPS and PPS NAL units found in a list of NALs (first of each kind, in order SPS, PPS).
pub fn find_params(nals: &[&[u8]]) -> Option<Vec<Bytes>> {
    let sps = nals.iter().find(|n| nal_type(n) == NAL_SPS)?;
    let pps = nals.iter().find(|n| nal_type(n) == NAL_PPS)?;
    Some(vec![
        Bytes::copy_from_slice(sps),
        Bytes::copy_from_slice(pps),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xda];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33];
    const AUD: &[u8] = &[0x09, 0xf0];

    fn avcc_record(len_size_minus_one: u8) -> Vec<u8> {
        let mut v = vec![1, 0x42, 0xc0, 0x1e, 0xfc | len_size_minus_one, 0xe1];
        v.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        v.extend_from_slice(SPS);
        v.push(1);
        v.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        v.extend_from_slice(PPS);
        v
    }

    #[test]
    fn parses_avcc_record() {
        let cfg = parse_avcc(&avcc_record(3)).unwrap();
        assert_eq!(cfg.nal_length_size, 4);
        assert_eq!(cfg.sps, vec![Bytes::from_static(SPS)]);
        assert_eq!(cfg.pps, vec![Bytes::from_static(PPS)]);
        assert_eq!(parse_avcc(&avcc_record(1)).unwrap().nal_length_size, 2);
    }

    #[test]
    fn rejects_truncated_avcc() {
        let rec = avcc_record(3);
        for cut in 0..rec.len() {
            // Never panics; short records fail.
            let _ = parse_avcc(&rec[..cut]);
        }
        assert!(parse_avcc(&rec[..rec.len() - 1]).is_err());
        assert!(parse_avcc(&[2, 0, 0, 0, 0xff, 0xe1, 0]).is_err());
    }

    #[test]
    fn avcc_to_annexb_with_params_on_keyframe() {
        // A 4-byte-length sample holding one IDR slice.
        let mut sample = (IDR.len() as u32).to_be_bytes().to_vec();
        sample.extend_from_slice(IDR);
        let nals = split_avcc(&sample, 4).unwrap();
        let params = [Bytes::from_static(SPS), Bytes::from_static(PPS)];
        let out = write_annexb(&nals, Some(&params));
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(SPS);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(PPS);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(IDR);
        assert_eq!(&out[..], &want[..]);

        // Non-keyframe: no params.
        let out = write_annexb(&nals, None);
        assert_eq!(&out[..], &[&[0u8, 0, 0, 1][..], IDR].concat()[..]);
    }

    #[test]
    fn avcc_two_byte_lengths_and_aud_first() {
        let mut sample = Vec::new();
        for nal in [AUD, IDR] {
            sample.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            sample.extend_from_slice(nal);
        }
        let nals = split_avcc(&sample, 2).unwrap();
        assert_eq!(nals, vec![AUD, IDR]);
        let params = [Bytes::from_static(SPS), Bytes::from_static(PPS)];
        let out = write_annexb(&nals, Some(&params));
        let got = split_annexb(&out);
        assert_eq!(got, vec![AUD, SPS, PPS, IDR]);
    }

    #[test]
    fn params_not_duplicated() {
        let nals = [SPS, PPS, IDR];
        let params = [Bytes::from_static(SPS), Bytes::from_static(PPS)];
        let out = write_annexb(&nals, Some(&params));
        assert_eq!(split_annexb(&out), vec![SPS, PPS, IDR]);
    }

    #[test]
    fn truncated_avcc_sample_is_an_error() {
        let mut sample = 100u32.to_be_bytes().to_vec();
        sample.extend_from_slice(IDR);
        assert!(split_avcc(&sample, 4).is_err());
        assert!(split_avcc(&[0, 0], 4).is_err());
        assert!(split_avcc(&sample, 3).is_err());
    }

    #[test]
    fn disposable_means_no_reference_slice() {
        // nal_ref_idc 0, type 1: a non-reference B slice.
        assert!(is_disposable(&[AUD, &[0x01, 0x9e]]));
        assert!(!is_disposable(&[&[0x21, 0x9a]]));
        assert!(!is_disposable(&[IDR]));
        assert!(!is_disposable(&[AUD]));
    }

    #[test]
    fn splits_annexb_three_and_four_byte_codes() {
        let data = [
            &[0u8, 0, 0, 1][..],
            SPS,
            &[0, 0, 1],
            PPS,
            &[0, 0, 0, 1],
            IDR,
        ]
        .concat();
        assert_eq!(split_annexb(&data), vec![SPS, PPS, IDR]);
        assert!(looks_annexb(&data));
        assert_eq!(find_params(&split_annexb(&data)).unwrap().len(), 2);
        assert!(split_annexb(&[1, 2, 3]).is_empty());
    }
}
