//! `divisor-protocol`: Divisor's protocol unit.
//!
//! Frames come in from the encoder unit over the link ([`upstream`]); RTSP clients
//! ([`rtsp`]) get them as RTP ([`packetize`]) paced by media time ([`session`]), with
//! RTCP sender reports ([`rtcp`]) and SDP descriptions ([`sdp`]). This crate never links a
//! codec library: the protocol machine needs none.

pub mod admission;
pub mod content;
pub mod fanout;
pub mod http;
pub mod live;
pub mod metrics;
pub mod packetize;
pub mod rtcp;
pub mod rtsp;
pub mod schedule;
pub mod sdp;
pub mod server;
pub mod session;
pub mod srtp;
pub mod upstream;
pub mod whep;
