//! The end of a live feed. A client of a channel that ended must be told, not left
//! waiting for packets that never come: each gets a sender report (so its last packets
//! are counted) and a BYE with the reason on every track, sent at once, before the feed
//! goes. RTSP clients take the BYE as the end of the stream (ffmpeg ends when every
//! stream said BYE); the session then closes the RTSP connection as well.

use super::{flush_tcp, push_to, DropTag, Engine, FeedId, FeedState};
use bytes::Bytes;
use std::time::{Instant, SystemTime};
use tracing::info;

impl Engine {
    pub(super) fn end_live(&mut self, feed: FeedId, reason: &str) {
        if let Some(FeedState::Live(l)) = self.feeds.get_mut(&feed) {
            let (now, wall) = (Instant::now(), SystemTime::now());
            let mut told = 0usize;
            for c in l.clients.iter_mut() {
                c.publish();
                self.tags.push(DropTag::Stats(c.stats.clone()));
                let tag = (self.tags.len() - 1) as u32;
                for (i, ct) in c.tracks.iter().enumerate() {
                    let Some(ct) = ct else { continue };
                    let ts = l.feed.rtp_time_at(i, now).unwrap_or(0);
                    let mut packet = crate::rtcp::sender_report(
                        ct.ssrc,
                        wall,
                        ct.ts_offset.wrapping_add(ts),
                        ct.packets,
                        ct.octets,
                        &self.cname,
                    )
                    .to_vec();
                    packet.extend_from_slice(&crate::rtcp::goodbye(ct.ssrc, reason));
                    push_to(
                        &ct.dest,
                        &[],
                        &Bytes::from(packet),
                        true,
                        tag,
                        now,
                        &mut self.rtcp_batch,
                        &mut self.tcp_buf,
                    );
                    flush_tcp(&ct.dest, &mut self.tcp_buf, &c.stats, &self.stats);
                }
                told += 1;
            }
            info!(feed, name = %l.name, clients = told, "live feed ended: BYE sent to every client ({reason})");
            self.flush_untimed();
        }
        self.remove_feed(feed);
    }
}
