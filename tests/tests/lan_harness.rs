//! Checks of the LAN harness ([`Lan`]): addressing, reachability between nodes, process
//! control, and that a cut node is silent (connects to it hang, no RST) until healed.
//! Needs root (namespaces) and `nft`.

use divisor_tests::lan::Lan;
use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A connect from `from` to `to:port` must hang for the whole `timeout` (silence: no RST,
/// no ICMP), not be refused or fail early.
fn assert_connect_hangs(lan: &Lan, from: &str, to: &str, port: u16, timeout: Duration) {
    let start = Instant::now();
    let r = lan.connect(from, lan.addr(to, port), timeout);
    let took = start.elapsed();
    let err = match r {
        Ok(_) => panic!("{from} reached {to}:{port} although {to} is cut"),
        Err(e) => e,
    };
    let kind = err.downcast_ref::<std::io::Error>().map(|e| e.kind());
    assert_eq!(
        kind,
        Some(ErrorKind::TimedOut),
        "{from} -> {to}:{port} must time out, got: {err:#}"
    );
    assert!(
        took >= timeout - Duration::from_millis(100),
        "{from} -> {to}:{port} failed after {took:?}, before its {timeout:?} timeout"
    );
}

#[test]
fn lan_links_nodes_cuts_and_heals() {
    let names: Vec<String>;
    {
        let lan = Lan::new("lan-harness", &["a", "b", "c"]).unwrap();
        let pid = std::process::id();
        names = ["a", "b", "c"]
            .iter()
            .map(|n| lan.ns(n).to_string())
            .chain([lan.switch_ns.clone()])
            .collect();
        for ns in &names {
            assert!(ns.starts_with(&format!("dv{pid}_")), "namespace name {ns}");
            assert!(Path::new("/run/netns").join(ns).exists(), "{ns} missing");
        }
        // One /24, node i at .i+1, outside the Topology ranges.
        let o = lan.subnet.octets();
        assert_eq!(o[0], 10);
        assert!((203..253).contains(&o[1]), "subnet {}", lan.subnet);
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(lan.ip(n).octets(), [o[0], o[1], o[2], i as u8 + 1]);
        }

        // A server on b, reached from a and c.
        std::fs::write(lan.log_dir.join("hello.txt"), "hello lan\n").unwrap();
        let dir = lan.log_dir.to_string_lossy().into_owned();
        lan.spawn_in(
            "b",
            "http",
            "python3",
            [
                "-m",
                "http.server",
                "--bind",
                "0.0.0.0",
                "--directory",
                &dir,
                "8080",
            ],
        )
        .unwrap();
        lan.wait_listening("b", 8080, Duration::from_secs(10))
            .unwrap();
        let url = format!("http://{}:8080/hello.txt", lan.ip("b"));
        for from in ["a", "c"] {
            let (code, body) = lan.http_get(from, &url).unwrap();
            assert_eq!((code, body.as_str()), (200, "hello lan\n"), "from {from}");
        }
        let (code, _) = lan
            .http_get("a", &format!("http://{}:8080/nope", lan.ip("b")))
            .unwrap();
        assert_eq!(code, 404);
        // Nothing listens on c: refused at once (RST), unlike a cut node below.
        let e = lan
            .connect("a", lan.addr("c", 8080), Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(
            e.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(ErrorKind::ConnectionRefused),
            "{e:#}"
        );

        // Cut b: silence both ways, while a and c still talk and b's own loopback works.
        lan.cut("b").unwrap();
        assert!(lan.is_cut("b"));
        lan.cut("b").unwrap(); // idempotent
        let t = Duration::from_millis(1500);
        assert_connect_hangs(&lan, "a", "b", 8080, t);
        assert_connect_hangs(&lan, "b", "c", 9, t);
        assert!(
            lan.http_get_timeout("c", &url, Duration::from_secs(1), Duration::from_secs(2))
                .is_err(),
            "GET from c must fail while b is cut"
        );
        // a and c still talk: a's connect to c is refused by c (its RST gets back).
        let e = lan
            .connect("a", lan.addr("c", 8080), Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(
            e.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(ErrorKind::ConnectionRefused),
            "a -> c while b is cut: {e:#}"
        );
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 8080));
        lan.connect("b", local, Duration::from_secs(2))
            .expect("b's loopback must keep working while cut");
        lan.check_alive().unwrap();

        // Heal: reachable again.
        lan.heal("b").unwrap();
        assert!(!lan.is_cut("b"));
        lan.wait_tcp("a", lan.addr("b", 8080), Duration::from_secs(5))
            .unwrap();
        let (code, _) = lan.http_get("c", &url).unwrap();
        assert_eq!(code, 200);

        // Process control: a deliberate SIGKILL is not an early exit.
        lan.signal("http", libc::SIGKILL).unwrap();
        let st = lan.wait_exit("http", Duration::from_secs(5)).unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
        assert!(!lan.is_running("http"));
        lan.check_alive().unwrap();
        assert!(lan.signal("http", libc::SIGHUP).is_err());
        assert!(
            lan.log("http").contains("GET /hello.txt"),
            "{}",
            lan.log("http")
        );
    }
    for ns in &names {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
}
