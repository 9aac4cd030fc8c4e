use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::role::Role;

const NOW: u64 = 1_700_000_000_123;

fn key(bytes: &[u8]) -> ControlKey {
    ControlKey::new(bytes.to_vec()).expect("non-empty key")
}

fn codec() -> Codec {
    Codec::new(key(b"tree secret"), Limits::default())
}

fn hello() -> Hello {
    Hello {
        id: "pub1".into(),
        role: Role::Public,
        link: "10.0.0.5:7000".into(),
        rtsp: "10.0.0.5:8554".into(),
        http: Some("10.0.0.5:8080".into()),
        region: "eu".into(),
        max_viewers: 500,
        egress_budget_bps: 1_000_000_000,
        standby: false,
    }
}

fn stats() -> Stats {
    Stats {
        node: "int1".into(),
        start_ms: NOW - 10_000,
        end_ms: NOW,
        descendants: 4,
        cpu_load: 0.42,
        viewers: 120,
        egress_bps: 96_000_000,
        channels: vec![
            ChannelStats {
                id: "cam".into(),
                viewers: 100,
                jitter_ms: 1.5,
                cum_lost: 3,
            },
            ChannelStats {
                id: "stage".into(),
                viewers: 20,
                jitter_ms: 0.0,
                cum_lost: 0,
            },
        ],
    }
}

fn msg(body: Body) -> Message {
    Message {
        time_ms: NOW,
        from: Peer::Node("pub1".into()),
        to: Peer::Root,
        body,
    }
}

fn every_body() -> Vec<Body> {
    vec![
        Body::Hello(hello()),
        Body::Hello(Hello {
            http: None,
            standby: true,
            role: Role::Master,
            ..hello()
        }),
        Body::Bye {
            reason: "shutting down".into(),
        },
        Body::Bye {
            reason: String::new(),
        },
        Body::ChildsUpdate {
            children: vec!["a".into(), "b&c".into()],
        },
        Body::ChildsUpdate { children: vec![] },
        Body::Error {
            code: 400,
            detail: "bad <thing>".into(),
        },
        Body::Kill {
            reason: "operator said so\nline two\r\n\ttabbed".into(),
        },
        Body::Ping { seq: 7 },
        Body::Pong { seq: u64::MAX },
        Body::Redirect {
            upstreams: vec![
                UpstreamRef {
                    id: "int1".into(),
                    addr: "10.0.0.3:7000".into(),
                },
                UpstreamRef {
                    id: "int2".into(),
                    addr: "[::1]:7000".into(),
                },
            ],
        },
        Body::Stats(stats()),
        Body::Stats(Stats {
            channels: vec![],
            ..stats()
        }),
        Body::ReqFullStats {
            channel: Some("cam".into()),
        },
        Body::ReqFullStats { channel: None },
        Body::FullStats(stats()),
        Body::LostUpstream {
            addr: "10.0.0.3:7000".into(),
        },
    ]
}

/// A sealed message, built by hand from XML text, as a peer holding the key could send.
fn seal_raw(key_bytes: &[u8], xml: &str) -> Vec<u8> {
    seal_raw_bytes(key_bytes, xml.as_bytes())
}

/// Asserts the codec still accepts a fresh, good message (a bad one left no trace).
fn assert_still_opens(codec: &mut Codec, seq: u64) {
    let good = msg(Body::Ping { seq });
    let sealed = codec.seal(&good);
    assert_eq!(codec.open(&sealed, NOW), Ok(good));
}

#[test]
fn type_names_match_the_wire() {
    let names: Vec<_> = every_body().iter().map(Body::type_name).collect();
    assert_eq!(
        names,
        [
            "HELLO",
            "HELLO",
            "BYE",
            "BYE",
            "CHILDSUPDATE",
            "CHILDSUPDATE",
            "ERROR",
            "KILL",
            "PING",
            "PONG",
            "REDIRECT",
            "STATS",
            "STATS",
            "REQFULLSTATS",
            "REQFULLSTATS",
            "FULLSTATS",
            "LOSTUPSTREAM"
        ]
    );
}

#[test]
fn peers_parse_and_display() {
    assert_eq!(Peer::parse("^"), Ok(Peer::Root));
    assert_eq!(Peer::parse("*"), Ok(Peer::All));
    assert_eq!("pub1".parse::<Peer>(), Ok(Peer::Node("pub1".into())));
    assert!(matches!(
        Peer::parse(""),
        Err(ControlError::BadValue { .. })
    ));
    for p in [Peer::Root, Peer::All, Peer::Node("x<y".into())] {
        assert_eq!(Peer::parse(&p.to_string()), Ok(p));
    }
}

#[test]
fn hello_has_the_soleil_shape() {
    let xml = encode_xml(&msg(Body::Hello(hello())));
    assert_eq!(
        xml,
        "<message type=\"HELLO\" time=\"1700000000123\" from=\"pub1\" to=\"^\">\
         <node id=\"pub1\" role=\"public\" link=\"10.0.0.5:7000\" rtsp=\"10.0.0.5:8554\" \
         http=\"10.0.0.5:8080\" region=\"eu\" maxViewers=\"500\" egressBudget=\"1000000000\" \
         standby=\"false\"/></message>"
    );
    let no_http = encode_xml(&msg(Body::Hello(Hello {
        http: None,
        ..hello()
    })));
    assert!(!no_http.contains("http="), "{no_http}");
}

#[test]
fn stats_use_db_values() {
    let xml = encode_xml(&msg(Body::FullStats(stats())));
    assert!(
        xml.contains("<xmlDb><statsContainer node=\"int1\""),
        "{xml}"
    );
    assert!(
        xml.contains("<DBValue name=\"cpu\" value=\"0.42\"/>"),
        "{xml}"
    );
    assert!(
        xml.contains("<channel id=\"cam\"><DBValue name=\"viewers\" value=\"100\"/><DBValue name=\"injitter\" value=\"1.5\"/><DBValue name=\"cumpktlost\" value=\"3\"/></channel>"),
        "{xml}"
    );
}

#[test]
fn every_body_round_trips_through_xml() {
    for body in every_body() {
        let m = msg(body);
        let xml = encode_xml(&m);
        assert_eq!(decode_xml(&xml, &Limits::default()), Ok(m), "{xml}");
    }
}

#[test]
fn every_body_round_trips_through_seal_and_open() {
    let mut c = codec();
    for (i, body) in every_body().into_iter().enumerate() {
        // Distinct times so identical bodies are not refused as replays.
        let m = Message {
            time_ms: NOW + i as u64,
            to: Peer::All,
            ..msg(body)
        };
        let sealed = c.seal(&m);
        assert_eq!(&sealed[TAG_LEN..], encode_xml(&m).as_bytes());
        assert_eq!(c.open(&sealed, NOW), Ok(m));
    }
}

#[test]
fn special_characters_round_trip() {
    let nasty = "a<b>&c\"d'e &amp; &#x41; ]]> é\t\n\r";
    let m = Message {
        from: Peer::Node(nasty.into()),
        to: Peer::Node(nasty.into()),
        ..msg(Body::Hello(Hello {
            id: nasty.into(),
            region: nasty.into(),
            ..hello()
        }))
    };
    let xml = encode_xml(&m);
    assert!(!xml.contains("a<b"), "{xml}");
    assert_eq!(decode_xml(&xml, &Limits::default()), Ok(m));
}

#[test]
fn lenient_where_documented() {
    let limits = Limits::default();
    // Unknown elements and attributes are ignored; whitespace and comments are fine;
    // the seq may be an envelope attribute.
    let xml = r#"<?xml version="1.0"?>
        <!-- from a newer node -->
        <message type="PING" time="5" from="a" to="*" seq="9" extra="x">
            <future><thing/></future>
        </message>"#;
    assert_eq!(
        decode_xml(xml, &limits),
        Ok(Message {
            time_ms: 5,
            from: Peer::Node("a".into()),
            to: Peer::All,
            body: Body::Ping { seq: 9 },
        })
    );
    let xml = r#"<message type="PONG" time="5" from="^" to="a"><seq> 3 </seq></message>"#;
    assert!(matches!(
        decode_xml(xml, &limits).map(|m| m.body),
        Ok(Body::Pong { seq: 3 })
    ));
    // Predefined entities and character references are resolved.
    let xml = r#"<message type="BYE" time="5" from="a" to="^"><reason>&lt;&#65;&#x42;&quot;&apos;&gt;&amp;</reason></message>"#;
    assert_eq!(
        decode_xml(xml, &limits).map(|m| m.body),
        Ok(Body::Bye {
            reason: "<AB\"'>&".into()
        })
    );
}

fn decode(xml: &str) -> Result<Message, ControlError> {
    decode_xml(xml, &Limits::default())
}

#[test]
fn malformed_xml_is_refused() {
    for xml in [
        r#"<message type="PING" time="1" from="a" to="^"><seq>1</seq>"#,
        r#"<message type="PING" time="1" from="a" to="^"><seq>1</message>"#,
        "\u{1}\u{2}garbage\u{7f}",
        "",
        "<message type=\"PING\" time=\"1\" from=\"a\" to=\"^\"><seq>1</seq></message><message/>",
        "<message type=\"PING\" type=\"PONG\" time=\"1\" from=\"a\" to=\"^\"/>",
    ] {
        let err = decode(xml).expect_err(xml);
        assert!(
            matches!(err, ControlError::Xml(_) | ControlError::Missing(_)),
            "{xml}: {err:?}"
        );
        assert_eq!(err.code(), 400);
    }
}

#[test]
fn billion_laughs_is_refused_at_the_doctype() {
    let xml = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<message type="BYE" time="1" from="a" to="^"><reason>&lol9;</reason></message>"#;
    assert_eq!(decode(xml), Err(ControlError::Doctype));
}

#[test]
fn custom_entities_are_refused() {
    let text =
        r#"<message type="BYE" time="1" from="a" to="^"><reason>&custom;</reason></message>"#;
    assert_eq!(decode(text), Err(ControlError::Entity("custom".into())));
    let attr = r#"<message type="BYE" time="1" from="&custom;" to="^"><reason/></message>"#;
    assert_eq!(decode(attr), Err(ControlError::Entity("custom".into())));
    // Even inside an element the reader would otherwise ignore.
    let ignored =
        r#"<message type="PING" time="1" from="a" to="^"><seq>1</seq><x y="&xxe;"/></message>"#;
    assert_eq!(decode(ignored), Err(ControlError::Entity("xxe".into())));
}

#[test]
fn depth_and_element_limits() {
    let nested = |depth: usize| {
        let mut xml = String::from(r#"<message type="PING" time="1" from="a" to="^"><seq>1</seq>"#);
        for _ in 1..depth {
            xml.push_str("<x>");
        }
        for _ in 1..depth {
            xml.push_str("</x>");
        }
        xml.push_str("</message>");
        xml
    };
    assert!(decode(&nested(16)).is_ok());
    assert_eq!(decode(&nested(17)), Err(ControlError::TooDeep));

    let many = |count: usize| {
        let mut xml = String::from(r#"<message type="CHILDSUPDATE" time="1" from="^" to="a">"#);
        for i in 1..count {
            xml.push_str(&format!("<child id=\"{i}\"/>"));
        }
        xml.push_str("</message>");
        xml
    };
    // Room enough in bytes that only the element count decides.
    let roomy = Limits {
        max_message_bytes: 1 << 20,
        ..Limits::default()
    };
    match decode_xml(&many(4096), &roomy).map(|m| m.body) {
        Ok(Body::ChildsUpdate { children }) => assert_eq!(children.len(), 4095),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decode_xml(&many(5000), &roomy),
        Err(ControlError::TooManyElements)
    );
    assert_eq!(
        decode_xml(&many(4097), &roomy),
        Err(ControlError::TooManyElements)
    );
    // Within the default byte limit, many small elements still hit the element limit.
    let small = format!(
        r#"<message type="PING" time="1" from="a" to="^"><seq>1</seq>{}</message>"#,
        "<x/>".repeat(5000)
    );
    assert_eq!(decode(&small), Err(ControlError::TooManyElements));
}

#[test]
fn semantic_errors() {
    assert_eq!(
        decode(r#"<message type="GOSSIP" time="1" from="a" to="^"/>"#),
        Err(ControlError::UnknownType("GOSSIP".into()))
    );
    assert!(matches!(
        decode(r#"<message type="PING" time="1" to="^"><seq>1</seq></message>"#),
        Err(ControlError::Missing(m)) if m.contains("from")
    ));
    assert!(matches!(
        decode(r#"<message type="HELLO" time="1" from="a" to="^"/>"#),
        Err(ControlError::Missing(m)) if m.contains("node")
    ));
    assert!(matches!(
        decode(r#"<message type="PING" time="soon" from="a" to="^"><seq>1</seq></message>"#),
        Err(ControlError::BadValue { what, .. }) if what == "time"
    ));
    assert!(matches!(
        decode(r#"<message type="PING" time="1" from="" to="^"><seq>1</seq></message>"#),
        Err(ControlError::BadValue { what, .. }) if what == "from"
    ));
    let hello = encode_xml(&msg(Body::Hello(hello())));
    assert!(matches!(
        decode(&hello.replace("role=\"public\"", "role=\"edge\"")),
        Err(ControlError::BadValue { what, value }) if what == "role" && value == "edge"
    ));
    assert!(matches!(
        decode(&hello.replace("standby=\"false\"", "standby=\"maybe\"")),
        Err(ControlError::BadValue { what, .. }) if what == "standby"
    ));
    assert!(matches!(
        decode(&hello.replace("maxViewers=\"500\"", "maxViewers=\"-1\"")),
        Err(ControlError::BadValue { what, .. }) if what == "maxViewers"
    ));
    let stats = encode_xml(&msg(Body::Stats(stats())));
    for bad in ["NaN", "inf", "-infinity", "1e999"] {
        let xml = stats.replace("value=\"0.42\"", &format!("value=\"{bad}\""));
        assert!(matches!(
            decode(&xml),
            Err(ControlError::BadValue { what, value }) if what == "cpu" && value == bad
        ));
    }
    assert!(matches!(
        decode(&stats.replace("name=\"egress\"", "name=\"egres\"")),
        Err(ControlError::Missing(m)) if m.contains("egress")
    ));
}

#[test]
fn sealed_bad_inputs_are_refused_and_leave_the_codec_usable() {
    let mut c = codec();
    let limits = Limits::default();
    let good = msg(Body::Bye {
        reason: "bye".into(),
    });
    let sealed = c.seal(&good).to_vec();

    let mut huge = vec![b'<'; 10 * 1024 * 1024];
    huge.extend_from_slice(&sealed);
    let mut flipped = sealed.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 0x01;
    }
    let mut flipped_tag = sealed.clone();
    flipped_tag[0] ^= 0x80;
    let wrong_key = Codec::new(key(b"another secret"), limits.clone()).seal(&good);
    let old = c.seal(&Message {
        time_ms: NOW - limits.replay_window_ms - 1,
        ..good.clone()
    });
    let future = c.seal(&Message {
        time_ms: NOW + limits.replay_window_ms + 1,
        ..good.clone()
    });
    let raw = |xml: &str| seal_raw(b"tree secret", xml);

    let cases: Vec<(&str, Vec<u8>, ControlError)> = vec![
        (
            "10 MB",
            huge,
            ControlError::TooLarge {
                len: 10 * 1024 * 1024 + sealed.len() - TAG_LEN,
                max: limits.max_message_bytes,
            },
        ),
        (
            "short",
            sealed[..TAG_LEN - 1].to_vec(),
            ControlError::Truncated,
        ),
        ("empty", vec![], ControlError::Truncated),
        ("wrong key", wrong_key.to_vec(), ControlError::BadTag),
        ("flipped xml byte", flipped, ControlError::BadTag),
        ("flipped tag byte", flipped_tag, ControlError::BadTag),
        (
            "old",
            old.to_vec(),
            ControlError::Stale { skew_ms: -30_001 },
        ),
        (
            "future",
            future.to_vec(),
            ControlError::Stale { skew_ms: 30_001 },
        ),
        (
            "unclosed",
            raw(r#"<message type="BYE" time="1700000000123" from="a" to="^"><reason>x"#),
            ControlError::Xml("the element <reason> is never closed".into()),
        ),
        (
            "doctype",
            raw("<!DOCTYPE x><message/>"),
            ControlError::Doctype,
        ),
        (
            "entity",
            raw(
                r#"<message type="BYE" time="1700000000123" from="a" to="^"><reason>&custom;</reason></message>"#,
            ),
            ControlError::Entity("custom".into()),
        ),
        (
            "unknown type",
            raw(r#"<message type="NOPE" time="1700000000123" from="a" to="^"/>"#),
            ControlError::UnknownType("NOPE".into()),
        ),
        (
            "missing from",
            raw(r#"<message type="PING" time="1700000000123" to="^"><seq>1</seq></message>"#),
            ControlError::Missing("`from` attribute of <message>".into()),
        ),
    ];
    for (i, (name, payload, want)) in cases.into_iter().enumerate() {
        assert_eq!(c.open(&payload, NOW), Err(want), "{name}");
        assert_still_opens(&mut c, i as u64);
    }

    let not_utf8 = seal_raw_bytes(b"tree secret", &[0xff, 0xfe]);
    assert!(matches!(c.open(&not_utf8, NOW), Err(ControlError::Xml(_))));

    // The first copy is accepted, the second is a replay, and the codec goes on.
    assert_eq!(c.open(&sealed, NOW), Ok(good.clone()));
    assert_eq!(c.open(&sealed, NOW + 1), Err(ControlError::Replay));
    assert_still_opens(&mut c, 1_000);
}

fn seal_raw_bytes(key_bytes: &[u8], body: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key_bytes).expect("any key length");
    mac.update(body);
    let mut out = mac.finalize().into_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[test]
fn oversized_payload_is_refused_quickly() {
    let mut c = codec();
    let huge = vec![0u8; 10 * 1024 * 1024];
    let start = std::time::Instant::now();
    assert!(matches!(
        c.open(&huge, NOW),
        Err(ControlError::TooLarge { max: 65_536, .. })
    ));
    assert!(start.elapsed() < std::time::Duration::from_millis(50));
}

#[test]
fn replay_cache_forgets_expired_and_is_bounded() {
    let mut c = codec();
    let window = c.limits().replay_window_ms;
    // A message dated at the far edge of the window stays refusable until its own time
    // plus the window, even though it arrived early.
    let early = msg(Body::Ping { seq: 1 });
    let early = Message {
        time_ms: NOW + window,
        ..early
    };
    let sealed = c.seal(&early);
    assert!(c.open(&sealed, NOW).is_ok());
    assert_eq!(c.open(&sealed, NOW + window + 1), Err(ControlError::Replay));
    assert_eq!(c.open(&sealed, NOW + 2 * window), Err(ControlError::Replay));
    // Once it is stale anyway, the cache has no reason to keep it.
    assert!(matches!(
        c.open(&sealed, NOW + 2 * window + 1),
        Err(ControlError::Stale { .. })
    ));
    assert_still_opens_at(&mut c, 2, NOW + 2 * window + 1);
    assert_eq!(c.replay_len(), 1);

    // A flood of distinct (authentic) messages cannot grow the cache past its cap.
    let mut c = codec();
    for seq in 0..(REPLAY_CACHE_CAP as u64 + 10) {
        let sealed = c.seal(&msg(Body::Ping { seq }));
        assert!(c.open(&sealed, NOW).is_ok());
    }
    assert_eq!(c.replay_len(), REPLAY_CACHE_CAP);
}

fn assert_still_opens_at(codec: &mut Codec, seq: u64, now: u64) {
    let good = Message {
        time_ms: now,
        ..msg(Body::Ping { seq })
    };
    let sealed = codec.seal(&good);
    assert_eq!(codec.open(&sealed, now), Ok(good));
}

#[test]
fn keys() {
    assert!(matches!(
        ControlKey::new(Vec::new()),
        Err(ControlError::KeyFile(_))
    ));
    assert_eq!(format!("{:?}", key(b"secret")), "ControlKey(..)");

    let dir = std::env::temp_dir().join(format!("divisor-control-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("control.key");
    std::fs::write(&path, b"tree secret\n").expect("write key");
    let from_file = ControlKey::from_file(&path).expect("key file");
    let m = msg(Body::Ping { seq: 1 });
    // The trailing newline is trimmed, so both ends agree on the key.
    assert_eq!(
        codec().open(&Codec::new(from_file, Limits::default()).seal(&m), NOW),
        Ok(m)
    );
    let missing = ControlKey::from_file(&dir.join("absent.key"));
    assert!(matches!(missing, Err(ControlError::KeyFile(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn error_codes_and_messages() {
    let too_large = ControlError::TooLarge {
        len: 10_485_760,
        max: 65_536,
    };
    assert_eq!(
        too_large.to_string(),
        "control message is 10485760 bytes, over the 65536-byte limit"
    );
    assert_eq!(too_large.code(), 413);
    assert_eq!(
        ControlError::Truncated.to_string(),
        "control message is shorter than its 32-byte HMAC tag"
    );
    assert_eq!(ControlError::BadTag.code(), 401);
    assert_eq!(ControlError::Replay.code(), 401);
    assert_eq!(ControlError::Stale { skew_ms: 5 }.code(), 401);
    assert_eq!(ControlError::Doctype.code(), 400);
    assert_eq!(ControlError::Missing("x".into()).code(), 400);
    assert_eq!(ControlError::UnknownType("X".into()).code(), 501);
}

#[test]
fn framing_carries_sealed_messages() {
    let limits = Limits::default();
    let c = codec();
    let a = c.seal(&msg(Body::Ping { seq: 1 }));
    let b = c.seal(&msg(Body::Stats(stats())));
    let mut framing = framing(&limits);
    let mut buf = BytesMut::new();
    framing.encode(a.clone(), &mut buf).expect("encode a");
    framing.encode(b.clone(), &mut buf).expect("encode b");
    assert_eq!(
        &buf[..4],
        &u32::try_from(a.len()).expect("small").to_be_bytes()
    );
    assert_eq!(
        framing.decode(&mut buf).expect("decode a").as_deref(),
        Some(&a[..])
    );
    assert_eq!(
        framing.decode(&mut buf).expect("decode b").as_deref(),
        Some(&b[..])
    );
    assert_eq!(framing.decode(&mut buf).expect("empty"), None);

    // A frame longer than the largest sealed message is refused from its prefix alone.
    let mut buf = BytesMut::new();
    let too_long = u32::try_from(limits.max_message_bytes + TAG_LEN + 1).expect("small");
    buf.extend_from_slice(&too_long.to_be_bytes());
    assert!(framing.decode(&mut buf).is_err());
    // The largest allowed frame is fine.
    let mut buf = BytesMut::new();
    let max = vec![7u8; limits.max_message_bytes + TAG_LEN];
    framing
        .encode(bytes::Bytes::from(max.clone()), &mut buf)
        .expect("max frame");
    assert_eq!(
        framing.decode(&mut buf).expect("decode max").as_deref(),
        Some(&max[..])
    );
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        Just(Peer::Root),
        Just(Peer::All),
        any::<String>()
            .prop_filter("reserved", |s| !s.is_empty() && s != "^" && s != "*")
            .prop_map(Peer::Node),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Master),
        Just(Role::Intermediate),
        Just(Role::Public)
    ]
}

/// Strings heavy in XML's special characters, plus anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[<>&\"' a-z;#\t\r\n]{0,12}", any::<String>(),]
}

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |v| v.is_finite())
}

prop_compose! {
    fn arb_hello()(
        id in text(), role in role(), link in text(), rtsp in text(),
        http in proptest::option::of(text()), region in text(),
        max_viewers in any::<u32>(), egress_budget_bps in any::<u64>(), standby in any::<bool>(),
    ) -> Hello {
        Hello { id, role, link, rtsp, http, region, max_viewers, egress_budget_bps, standby }
    }
}

prop_compose! {
    fn arb_channel()(id in text(), viewers in any::<u64>(), jitter_ms in finite(), cum_lost in any::<u64>())
        -> ChannelStats {
        ChannelStats { id, viewers, jitter_ms, cum_lost }
    }
}

prop_compose! {
    fn arb_stats()(
        node in text(), start_ms in any::<u64>(), end_ms in any::<u64>(),
        descendants in any::<u32>(), cpu_load in finite(), viewers in any::<u64>(),
        egress_bps in any::<u64>(), channels in proptest::collection::vec(arb_channel(), 0..4),
    ) -> Stats {
        Stats { node, start_ms, end_ms, descendants, cpu_load, viewers, egress_bps, channels }
    }
}

proptest! {
    #[test]
    fn hello_round_trips(h in arb_hello(), from in peer(), to in peer(), time_ms in any::<u64>()) {
        let m = Message { time_ms, from, to, body: Body::Hello(h) };
        prop_assert_eq!(decode_xml(&encode_xml(&m), &Limits::default()), Ok(m.clone()));
        let mut c = codec();
        prop_assert_eq!(c.open(&c.seal(&m), time_ms), Ok(m));
    }

    #[test]
    fn stats_round_trip(s in arb_stats(), full in any::<bool>(), time_ms in any::<u64>()) {
        let body = if full { Body::FullStats(s) } else { Body::Stats(s) };
        let m = Message { time_ms, from: Peer::Node("n".into()), to: Peer::Root, body };
        prop_assert_eq!(decode_xml(&encode_xml(&m), &Limits::default()), Ok(m.clone()));
        let mut c = codec();
        prop_assert_eq!(c.open(&c.seal(&m), time_ms), Ok(m));
    }

    #[test]
    fn text_bodies_round_trip(reason in text(), detail in text(), code in any::<u16>()) {
        for body in [Body::Bye { reason: reason.clone() }, Body::Kill { reason }, Body::Error { code, detail }] {
            let m = msg(body);
            prop_assert_eq!(decode_xml(&encode_xml(&m), &Limits::default()), Ok(m));
        }
    }

    #[test]
    fn decode_never_panics(s in any::<String>()) {
        let _ = decode_xml(&s, &Limits::default());
    }

    #[test]
    fn decode_never_panics_on_xmlish(s in "[<>/=\"'&;!?a-z \\[\\]-]{0,64}") {
        let _ = decode_xml(&s, &Limits::default());
        let _ = decode_xml(&format!("<message type=\"BYE\" time=\"1\" from=\"a\" to=\"^\">{s}"), &Limits::default());
    }

    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut c = codec();
        let _ = c.open(&bytes, NOW);
        // Authentic but arbitrary bytes reach the parser, which must not panic either.
        let _ = c.open(&seal_raw_bytes(b"tree secret", &bytes), NOW);
        assert_still_opens(&mut c, 0);
    }
}
