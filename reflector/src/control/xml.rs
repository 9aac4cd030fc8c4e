//! The XML spelling of control messages.
//!
//! Decoding runs in two steps: a guarded pass over quick-xml's events builds a small
//! element tree (refusing DOCTYPEs, unknown entities, deep nesting and too many
//! elements, so the tree's size is bounded by [`Limits`]), then the tree is read into a
//! typed [`Message`]. Building the whole tree first means every attribute and text is
//! unescaped, and so checked for entities, even inside elements the reader ignores.

use std::borrow::Cow;
use std::fmt::Display;
use std::str::FromStr;

use quick_xml::escape::{escape, EscapeError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{Body, ChannelStats, ControlError, Hello, Limits, Message, Peer, Stats, UpstreamRef};

/// Writes `msg` as one `<message>` element (no XML declaration, no whitespace).
pub fn encode_xml(msg: &Message) -> String {
    let mut w = Writer::default();
    w.start(
        "message",
        &[
            ("type", &msg.body.type_name()),
            ("time", &msg.time_ms),
            ("from", &msg.from),
            ("to", &msg.to),
        ],
    );
    match &msg.body {
        Body::Hello(h) => {
            let mut attrs: Vec<(&str, &dyn Display)> = vec![
                ("id", &h.id),
                ("role", &h.role),
                ("link", &h.link),
                ("rtsp", &h.rtsp),
            ];
            if let Some(http) = &h.http {
                attrs.push(("http", http));
            }
            attrs.extend([
                ("region", &h.region as &dyn Display),
                ("maxViewers", &h.max_viewers),
                ("egressBudget", &h.egress_budget_bps),
                ("standby", &h.standby),
            ]);
            w.empty("node", &attrs);
        }
        Body::Bye { reason } | Body::Kill { reason } => w.text_element("reason", &[], reason),
        Body::ChildsUpdate { children } => {
            for id in children {
                w.empty("child", &[("id", id)]);
            }
        }
        Body::Error { code, detail } => w.text_element("error", &[("code", code)], detail),
        Body::Ping { seq } | Body::Pong { seq } => w.text_element("seq", &[], seq),
        Body::Redirect { upstreams } => {
            for u in upstreams {
                w.empty("upstream", &[("id", &u.id), ("addr", &u.addr)]);
            }
        }
        Body::ReqFullStats { channel } => {
            if let Some(id) = channel {
                w.empty("channel", &[("id", id)]);
            }
        }
        Body::Stats(s) => w.stats(s),
        Body::LostUpstream { addr } => w.empty("upstream", &[("addr", addr)]),
        Body::FullStats(s) => {
            w.start("xmlDb", &[]);
            w.stats(s);
            w.end("xmlDb");
        }
    }
    w.end("message");
    w.out
}

/// Reads one `<message>` element, enforcing `limits` (size, depth, element count).
///
/// Elements and attributes the reader does not know are ignored, so newer peers can add
/// fields without breaking older ones; a missing required field is an error.
pub fn decode_xml(xml: &str, limits: &Limits) -> Result<Message, ControlError> {
    if xml.len() > limits.max_message_bytes {
        return Err(ControlError::TooLarge {
            len: xml.len(),
            max: limits.max_message_bytes,
        });
    }
    read_message(&parse_tree(xml, limits)?)
}

/// Builds XML text, escaping every attribute value and text.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn open_tag(&mut self, name: &str, attrs: &[(&str, &dyn Display)]) {
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("=\"");
            self.out.push_str(&escape_value(&value.to_string()));
            self.out.push('"');
        }
    }

    fn start(&mut self, name: &str, attrs: &[(&str, &dyn Display)]) {
        self.open_tag(name, attrs);
        self.out.push('>');
    }

    fn empty(&mut self, name: &str, attrs: &[(&str, &dyn Display)]) {
        self.open_tag(name, attrs);
        self.out.push_str("/>");
    }

    fn end(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    fn text_element(&mut self, name: &str, attrs: &[(&str, &dyn Display)], text: &dyn Display) {
        self.start(name, attrs);
        self.out.push_str(&escape_value(&text.to_string()));
        self.end(name);
    }

    fn db_value(&mut self, name: &str, value: &dyn Display) {
        self.empty("DBValue", &[("name", &name), ("value", value)]);
    }

    fn stats(&mut self, s: &Stats) {
        self.start(
            "statsContainer",
            &[
                ("node", &s.node),
                ("start", &s.start_ms),
                ("end", &s.end_ms),
                ("descendants", &s.descendants),
            ],
        );
        self.db_value("cpu", &s.cpu_load);
        self.db_value("viewers", &s.viewers);
        self.db_value("egress", &s.egress_bps);
        for c in &s.channels {
            self.start("channel", &[("id", &c.id)]);
            self.db_value("viewers", &c.viewers);
            self.db_value("injitter", &c.jitter_ms);
            self.db_value("cumpktlost", &c.cum_lost);
            self.end("channel");
        }
        self.end("statsContainer");
    }
}

/// quick-xml's escape covers `<>&"'`; tab, newline and carriage return are also written
/// as character references, because an XML parser normalizes them when they appear raw
/// (attribute values turn them into spaces, text turns `\r\n` into `\n`).
fn escape_value(s: &str) -> Cow<'_, str> {
    let escaped = escape(s);
    if !escaped.contains(['\t', '\n', '\r']) {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 8);
    for c in escaped.chars() {
        match c {
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One parsed element, fully unescaped.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    /// The element's own text (and CDATA), concatenated; children's text is not included.
    text: String,
}

fn parse_tree(xml: &str, limits: &Limits) -> Result<Element, ControlError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;

    loop {
        let event = reader.read_event().map_err(from_quick_xml)?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if root.is_some() {
                    return Err(ControlError::Xml(
                        "an element follows the root element".into(),
                    ));
                }
                elements += 1;
                if elements > limits.max_elements {
                    return Err(ControlError::TooManyElements);
                }
                if stack.len() + 1 > limits.max_depth {
                    return Err(ControlError::TooDeep);
                }
                let element = element_from(e)?;
                if matches!(event, Event::Start(_)) {
                    stack.push(element);
                } else {
                    attach(&mut stack, &mut root, element);
                }
            }
            Event::End(_) => match stack.pop() {
                Some(element) => attach(&mut stack, &mut root, element),
                None => return Err(ControlError::Xml("an end tag closes nothing".into())),
            },
            Event::Text(t) => {
                let text = t.unescape().map_err(from_quick_xml)?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(&c).map_err(|e| ControlError::Xml(e.to_string()))?;
                push_text(&mut stack, text)?;
            }
            Event::DocType(_) => return Err(ControlError::Doctype),
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(ControlError::Xml(format!(
            "the element <{}> is never closed",
            open.name
        )));
    }
    root.ok_or_else(|| ControlError::Missing("<message> root element".into()))
}

/// Puts a finished element under its parent, or makes it the root.
fn attach(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), ControlError> {
    match stack.last_mut() {
        Some(element) => element.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => {
            return Err(ControlError::Xml(
                "text appears outside the root element".into(),
            ))
        }
    }
    Ok(())
}

fn element_from(e: &BytesStart<'_>) -> Result<Element, ControlError> {
    let name = utf8(e.name().as_ref())?.to_string();
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|e| ControlError::Xml(e.to_string()))?;
        let key = utf8(attr.key.as_ref())?.to_string();
        let value = attr.unescape_value().map_err(from_quick_xml)?.into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        ..Element::default()
    })
}

fn utf8(bytes: &[u8]) -> Result<&str, ControlError> {
    std::str::from_utf8(bytes).map_err(|e| ControlError::Xml(e.to_string()))
}

/// Unknown named entities become [`ControlError::Entity`]; quick-xml resolves only the
/// five predefined ones and character references, so anything else is refused here.
fn from_quick_xml(e: quick_xml::Error) -> ControlError {
    match e {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            ControlError::Entity(name)
        }
        other => ControlError::Xml(other.to_string()),
    }
}

impl Element {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn req_attr(&self, key: &str) -> Result<&str, ControlError> {
        self.attr(key)
            .ok_or_else(|| ControlError::Missing(format!("`{key}` attribute of <{}>", self.name)))
    }

    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn req_child(&self, name: &str) -> Result<&Element, ControlError> {
        self.child(name)
            .ok_or_else(|| ControlError::Missing(format!("<{name}> element in <{}>", self.name)))
    }

    /// The `value` of the child `<DBValue name="...">` (SOLEIL's statistics records).
    fn db_value(&self, name: &str) -> Result<&str, ControlError> {
        self.children_named("DBValue")
            .find(|c| c.attr("name") == Some(name))
            .ok_or_else(|| {
                ControlError::Missing(format!("<DBValue name=\"{name}\"> in <{}>", self.name))
            })?
            .req_attr("value")
    }
}

fn parse<T: FromStr>(what: &str, value: &str) -> Result<T, ControlError> {
    value.parse().map_err(|_| bad(what, value))
}

fn parse_f64(what: &str, value: &str) -> Result<f64, ControlError> {
    let v: f64 = parse(what, value)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(bad(what, value))
    }
}

fn parse_bool(what: &str, value: &str) -> Result<bool, ControlError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(what, value)),
    }
}

fn bad(what: &str, value: &str) -> ControlError {
    ControlError::BadValue {
        what: what.to_string(),
        value: value.to_string(),
    }
}

fn read_message(root: &Element) -> Result<Message, ControlError> {
    if root.name != "message" {
        return Err(ControlError::Missing(format!(
            "<message> root element (found <{}>)",
            root.name
        )));
    }
    let kind = root.req_attr("type")?;
    let time_ms = parse("time", root.req_attr("time")?)?;
    let from = Peer::parse(root.req_attr("from")?).map_err(|_| bad("from", ""))?;
    let to = Peer::parse(root.req_attr("to")?).map_err(|_| bad("to", ""))?;
    let body = match kind {
        "HELLO" => Body::Hello(read_hello(root.req_child("node")?)?),
        "BYE" => Body::Bye {
            reason: root.req_child("reason")?.text.clone(),
        },
        "KILL" => Body::Kill {
            reason: root.req_child("reason")?.text.clone(),
        },
        "CHILDSUPDATE" => Body::ChildsUpdate {
            children: root
                .children_named("child")
                .map(|c| c.req_attr("id").map(str::to_string))
                .collect::<Result<_, _>>()?,
        },
        "ERROR" => {
            let error = root.req_child("error")?;
            Body::Error {
                code: parse("error code", error.req_attr("code")?)?,
                detail: error.text.clone(),
            }
        }
        "PING" => Body::Ping {
            seq: read_seq(root)?,
        },
        "PONG" => Body::Pong {
            seq: read_seq(root)?,
        },
        "REDIRECT" => Body::Redirect {
            upstreams: root
                .children_named("upstream")
                .map(|u| {
                    Ok(UpstreamRef {
                        id: u.req_attr("id")?.to_string(),
                        addr: u.req_attr("addr")?.to_string(),
                    })
                })
                .collect::<Result<_, ControlError>>()?,
        },
        "STATS" => Body::Stats(read_stats(root.req_child("statsContainer")?)?),
        "LOSTUPSTREAM" => Body::LostUpstream {
            addr: root.req_child("upstream")?.req_attr("addr")?.to_string(),
        },
        "REQFULLSTATS" => Body::ReqFullStats {
            channel: root
                .child("channel")
                .map(|c| c.req_attr("id").map(str::to_string))
                .transpose()?,
        },
        "FULLSTATS" => Body::FullStats(read_stats(
            root.req_child("xmlDb")?.req_child("statsContainer")?,
        )?),
        other => return Err(ControlError::UnknownType(other.to_string())),
    };
    Ok(Message {
        time_ms,
        from,
        to,
        body,
    })
}

/// PING/PONG carry their sequence number as `<seq>7</seq>` or as a `seq` attribute of
/// the envelope; the element wins when both are present.
fn read_seq(root: &Element) -> Result<u64, ControlError> {
    match root.child("seq") {
        Some(seq) => parse("seq", seq.text.trim()),
        None => parse("seq", root.req_attr("seq")?),
    }
}

fn read_hello(node: &Element) -> Result<Hello, ControlError> {
    let role = node.req_attr("role")?;
    Ok(Hello {
        id: node.req_attr("id")?.to_string(),
        role: parse("role", role)?,
        link: node.req_attr("link")?.to_string(),
        rtsp: node.req_attr("rtsp")?.to_string(),
        http: node.attr("http").map(str::to_string),
        region: node.req_attr("region")?.to_string(),
        max_viewers: parse("maxViewers", node.req_attr("maxViewers")?)?,
        egress_budget_bps: parse("egressBudget", node.req_attr("egressBudget")?)?,
        standby: parse_bool("standby", node.req_attr("standby")?)?,
    })
}

fn read_stats(c: &Element) -> Result<Stats, ControlError> {
    Ok(Stats {
        node: c.req_attr("node")?.to_string(),
        start_ms: parse("start", c.req_attr("start")?)?,
        end_ms: parse("end", c.req_attr("end")?)?,
        descendants: parse("descendants", c.req_attr("descendants")?)?,
        cpu_load: parse_f64("cpu", c.db_value("cpu")?)?,
        viewers: parse("viewers", c.db_value("viewers")?)?,
        egress_bps: parse("egress", c.db_value("egress")?)?,
        channels: c
            .children_named("channel")
            .map(|ch| {
                Ok(ChannelStats {
                    id: ch.req_attr("id")?.to_string(),
                    viewers: parse("channel viewers", ch.db_value("viewers")?)?,
                    jitter_ms: parse_f64("injitter", ch.db_value("injitter")?)?,
                    cum_lost: parse("cumpktlost", ch.db_value("cumpktlost")?)?,
                })
            })
            .collect::<Result<_, ControlError>>()?,
    })
}
