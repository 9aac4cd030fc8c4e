//! The XML control protocol (SOLEIL §3.1), sans-IO: no sockets and no clock, the caller
//! passes the time in (`now_ms`, milliseconds since the Unix epoch).
//!
//! The tree controller (`^`) and every reflector exchange small XML documents:
//!
//! ```xml
//! <message type="HELLO" time="1700000000123" from="pub1" to="^">
//!   <node id="pub1" role="public" link="10.0.0.5:7000" rtsp="10.0.0.5:8554"
//!         region="eu" maxViewers="500" egressBudget="1000000000" standby="false"/>
//! </message>
//! ```
//!
//! The envelope says what the body is (`type`), when the sender wrote it (`time`), who
//! sent it (`from`) and to whom (`to`: a node id, `^` for the controller, `*` for
//! everyone). Bodies: HELLO (`<node .../>`), BYE and KILL (`<reason>`), ERROR
//! (`<error code="...">detail</error>`), PING and PONG (`<seq>`), CHILDSUPDATE
//! (`<child id/>` each), REDIRECT (`<upstream id addr/>` each, most preferred first),
//! STATS (SOLEIL's `<statsContainer>` of `<DBValue name value/>` records, per channel
//! in `<channel>`), REQFULLSTATS (optional `<channel id/>`) and FULLSTATS (the same
//! container inside `<xmlDb>`), and LOSTUPSTREAM (`<upstream addr/>`: a node lost its
//! primary parent, so the controller checks that parent at once). Elements and attributes a reader does not know are
//! ignored, so the protocol can grow without breaking older nodes.
//!
//! On the connection each message is *sealed*: a 32-byte HMAC-SHA256 tag over the XML
//! bytes (keyed with the tree's shared [`ControlKey`]), then the XML, in a frame with a
//! u32 big-endian length ([`framing`]). [`Codec::open`] refuses, in this order, frames
//! over the size limit, bad tags (checked in constant time before any XML is parsed, so
//! only key holders reach the parser), malformed or hostile XML (DOCTYPEs, custom
//! entities, deep nesting, too many elements), messages whose time is further from ours
//! than the replay window, and a second copy of a message already accepted within it.
//! Senders therefore stamp each message later than their previous one (the controller per
//! connection, a node per session), so two identical messages are never taken for a
//! replay.
//! Every refusal is a [`ControlError`] whose [`ControlError::code`] is the code of the
//! ERROR message to answer with.

mod codec;
mod message;
mod xml;

#[cfg(test)]
mod tests;

pub use codec::{framing, Codec, ControlError, ControlKey, Limits, REPLAY_CACHE_CAP, TAG_LEN};
pub use message::{Body, ChannelStats, Hello, Message, Peer, Stats, UpstreamRef};
pub use xml::{decode_xml, encode_xml};
