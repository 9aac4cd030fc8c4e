//! Which content key a frame is encrypted under: rotation by media time, and a fresh key
//! whenever a track's timeline goes back.
//!
//! The payload format derives each frame's IV from (key, track, dts) (see
//! `divisor_link::content`), so one key must never see two different frames at the same
//! (track, dts). The schedule keeps that true by construction:
//! - key ids only ever increase, and a key, once left, is never used again;
//! - under one key, each track's dts strictly increases; a frame whose dts is not above the
//!   last one of its track under the current key (a seek back, a live input that restarted,
//!   a looped file) moves to a new key.
//!
//! Rotation: with `rotate_secs` > 0 the key id advances by one for every `rotate_secs` of
//! media time (the frame's dts in its track clock), so a client that joins late, or a key
//! that leaks, only covers a bounded stretch. Because ids only increase, the first track to
//! cross a rotation boundary moves the whole channel to the next key: every frame, whichever
//! unit encrypts it, uses the channel's latest announced key.

use std::collections::HashMap;

/// The key id of each frame.
#[derive(Debug, Default)]
pub struct KeySchedule {
    /// Media time per key in seconds; 0 = no rotation.
    rotate_secs: u64,
    /// Clock rate per track (from the announced tracks); 90 kHz when unknown.
    clocks: HashMap<u8, u32>,
    /// Current key id; `None` before the first frame.
    current: Option<u32>,
    /// `current` = `offset + period`, where `period` counts rotation periods of media time.
    offset: i64,
    /// Last dts of each track under the current key.
    last_dts: HashMap<u8, i64>,
}

impl KeySchedule {
    pub fn new(rotate_secs: u64) -> KeySchedule {
        KeySchedule {
            rotate_secs,
            ..KeySchedule::default()
        }
    }

    /// The clock of `track` (for rotation periods).
    pub fn set_clock(&mut self, track: u8, clock_rate: u32) {
        self.clocks.insert(track, clock_rate.max(1));
    }

    /// The key in use (the one to announce before the first frame): 0 before any frame.
    pub fn current(&self) -> u32 {
        self.current.unwrap_or(0)
    }

    /// The key id for a frame of `track` at `dts`. May be above the previous frame's, never
    /// below.
    pub fn key_for(&mut self, track: u8, dts: i64) -> u32 {
        let period = self.period(track, dts);
        let Some(current) = self.current else {
            self.offset = -period;
            self.current = Some(0);
            self.last_dts.insert(track, dts);
            return 0;
        };
        let went_back = self.last_dts.get(&track).is_some_and(|&last| dts <= last);
        let next = if went_back {
            // A new key, and rotation periods counted from here.
            self.offset = i64::from(current) + 1 - period;
            current.saturating_add(1)
        } else {
            let by_time = self.offset.saturating_add(period);
            current.max(u32::try_from(by_time).unwrap_or(if by_time < 0 { 0 } else { u32::MAX }))
        };
        if next != current {
            self.last_dts.clear();
            self.current = Some(next);
        }
        self.last_dts.insert(track, dts);
        next
    }

    /// Forget the timeline (a seek): nothing, since a backward jump is detected frame by
    /// frame; kept so the stage's reset has one place to change if that ever differs.
    pub fn reset(&mut self) {}

    fn period(&self, track: u8, dts: i64) -> i64 {
        if self.rotate_secs == 0 {
            return 0;
        }
        let clock = i64::from(self.clocks.get(&track).copied().unwrap_or(90_000));
        let len = clock.saturating_mul(i64::try_from(self.rotate_secs).unwrap_or(i64::MAX));
        dts.div_euclid(len.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rotation_stays_on_key_zero() {
        let mut s = KeySchedule::new(0);
        for dts in 0..100 {
            assert_eq!(s.key_for(0, dts * 3600), 0);
            assert_eq!(s.key_for(1, dts * 1024), 0);
        }
    }

    #[test]
    fn rotation_by_media_time_moves_all_tracks_forward() {
        let mut s = KeySchedule::new(2);
        s.set_clock(0, 90_000);
        s.set_clock(1, 48_000);
        assert_eq!(s.key_for(0, 0), 0);
        assert_eq!(s.key_for(1, 0), 0);
        assert_eq!(s.key_for(0, 179_999), 0);
        assert_eq!(s.key_for(0, 180_000), 1);
        // Audio still in the first period uses the channel's newer key.
        assert_eq!(s.key_for(1, 95_000), 1);
        assert_eq!(s.key_for(1, 96_000), 1);
        assert_eq!(s.key_for(0, 360_000), 2);
    }

    #[test]
    fn going_back_takes_a_new_key_once() {
        let mut s = KeySchedule::new(0);
        assert_eq!(s.key_for(0, 1000), 0);
        assert_eq!(s.key_for(1, 1000), 0);
        assert_eq!(s.key_for(0, 0), 1, "video jumped back");
        assert_eq!(s.key_for(1, 0), 1, "audio follows under the new key");
        assert_eq!(
            s.key_for(1, 0),
            2,
            "a repeated dts is not allowed under one key"
        );
        assert_eq!(s.key_for(0, 10), 2);
    }

    #[test]
    fn negative_dts_and_rotation_after_a_jump() {
        let mut s = KeySchedule::new(1);
        assert_eq!(s.key_for(0, -3003), 0);
        assert_eq!(s.key_for(0, 0), 1, "periods are aligned to media time 0");
        assert_eq!(s.key_for(0, 90_000), 2);
        assert_eq!(s.key_for(0, 10), 3, "back: new key");
        assert_eq!(s.key_for(0, 90_000), 4, "then rotation from there");
        assert_eq!(s.key_for(0, 90_001), 4);
    }
}
