//! The libvirt domain of a reflector, as XML: written for `virDomainDefineXML`, and its
//! metadata read back (`virDomainGetMetadata`) to tell our domains from anyone else's.
//! Pure functions, so the shapes are unit-tested without a daemon.
//!
//! The metadata element, in our own namespace:
//!
//! ```xml
//! <divisor:reflector xmlns:divisor="https://divisor.dev/xmlns/reflector/1"
//!     id="auto-public-3" role="public" controller="ctl" ip="10.77.0.102"/>
//! ```

use std::net::Ipv4Addr;
use std::path::Path;

use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::role::Role;

/// The namespace URI of our metadata element.
pub const METADATA_URI: &str = "https://divisor.dev/xmlns/reflector/1";
/// The prefix libvirt stores it with.
pub const METADATA_PREFIX: &str = "divisor";
/// Domain names are `PREFIX` + the reflector's id.
pub const DOMAIN_PREFIX: &str = "divisor-";

/// What our metadata says of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub id: String,
    pub role: Role,
    pub controller: String,
    pub ip: Option<Ipv4Addr>,
}

impl Metadata {
    /// The metadata element's XML (also what `virDomainSetMetadata` takes).
    pub fn to_xml(&self) -> String {
        let ip = self
            .ip
            .map(|ip| format!(" ip=\"{ip}\""))
            .unwrap_or_default();
        format!(
            "<{p}:reflector xmlns:{p}=\"{METADATA_URI}\" id=\"{}\" role=\"{}\" controller=\"{}\"{ip}/>",
            escape(&self.id),
            self.role.as_str(),
            escape(&self.controller),
            p = METADATA_PREFIX,
        )
    }

    /// Read the element `virDomainGetMetadata(ELEMENT, METADATA_URI)` returns (libvirt
    /// may rename the prefix; only the local name and attributes count).
    pub fn parse(xml: &str) -> Result<Metadata, String> {
        let mut r = Reader::from_str(xml);
        loop {
            match r.read_event().map_err(|e| e.to_string())? {
                Event::Start(e) | Event::Empty(e) => {
                    if e.local_name().as_ref() != b"reflector" {
                        return Err(format!(
                            "expected a reflector element, found {}",
                            String::from_utf8_lossy(e.name().as_ref())
                        ));
                    }
                    let (mut id, mut role, mut controller, mut ip) = (None, None, None, None);
                    for a in e.attributes() {
                        let a = a.map_err(|e| e.to_string())?;
                        let v = a.unescape_value().map_err(|e| e.to_string())?.into_owned();
                        match a.key.local_name().as_ref() {
                            b"id" => id = Some(v),
                            b"role" => role = Some(v.parse::<Role>().map_err(|e| e.to_string())?),
                            b"controller" => controller = Some(v),
                            b"ip" => {
                                ip = Some(v.parse::<Ipv4Addr>().map_err(|e| format!("ip: {e}"))?)
                            }
                            _ => {}
                        }
                    }
                    return Ok(Metadata {
                        id: id.ok_or("no id attribute")?,
                        role: role.ok_or("no role attribute")?,
                        controller: controller.ok_or("no controller attribute")?,
                        ip,
                    });
                }
                Event::Eof => return Err("no element".into()),
                _ => {}
            }
        }
    }
}

/// Which kind of domain to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// An LXC application container: the reflector is the container's init.
    Lxc,
    /// libvirt's `test:///` driver (no process runs; for unit tests).
    Test,
}

/// What a reflector's domain runs and holds.
pub struct DomainSpec<'a> {
    pub kind: DomainKind,
    pub meta: &'a Metadata,
    pub memory_mib: u32,
    /// The container's init and its arguments.
    pub init: &'a Path,
    pub init_args: &'a [String],
    /// Its own network: a veth on this bridge (in libvirtd's namespace) with this
    /// address. `None`: the host's network.
    pub net: Option<DomainNet<'a>>,
}

/// A domain's interface: libvirt makes the veth, plugs it into the bridge, and sets
/// the container's address and route.
pub struct DomainNet<'a> {
    pub bridge: &'a str,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// The domain name of reflector `id`.
pub fn domain_name(id: &str) -> String {
    format!("{DOMAIN_PREFIX}{id}")
}

/// The domain's XML.
pub fn domain_xml(d: &DomainSpec) -> String {
    let name = escape(domain_name(&d.meta.id)).into_owned();
    let meta = d.meta.to_xml();
    match d.kind {
        DomainKind::Lxc => {
            let args: String = d
                .init_args
                .iter()
                .map(|a| format!("    <initarg>{}</initarg>\n", escape(a.as_str())))
                .collect();
            // The host's root is the container's (read-write: the reflector's log lives
            // there); its own pid, mount, uts and network namespaces and its cgroup come
            // from libvirt.
            let iface = match &d.net {
                Some(n) => {
                    let route = n
                        .gateway
                        .map(|g| {
                            format!("\n      <route address='0.0.0.0' prefix='0' gateway='{g}'/>")
                        })
                        .unwrap_or_default();
                    format!(
                        "    <interface type='bridge'>\n      <source bridge='{}'/>\n      <ip address='{}' prefix='{}'/>{route}\n    </interface>\n",
                        escape(n.bridge),
                        n.ip,
                        n.prefix
                    )
                }
                None => String::new(),
            };
            format!(
                "<domain type='lxc'>
  <name>{name}</name>
  <metadata>
    {meta}
  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <os>
    <type>exe</type>
    <init>{init}</init>
{args}  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/'/>
      <target dir='/'/>
    </filesystem>
{iface}    <console type='pty'/>
  </devices>
</domain>
",
                mem = d.memory_mib,
                init = escape(d.init.display().to_string()),
            )
        }
        DomainKind::Test => format!(
            "<domain type='test'>
  <name>{name}</name>
  <metadata>
    {meta}
  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <os><type>hvm</type></os>
</domain>
",
            mem = d.memory_mib,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata {
            id: "auto-public-3".into(),
            role: Role::Public,
            controller: "ctl <a&b>".into(),
            ip: Some(Ipv4Addr::new(10, 77, 0, 102)),
        }
    }

    #[test]
    fn metadata_round_trips_with_escaping_and_any_prefix() {
        let m = meta();
        assert_eq!(Metadata::parse(&m.to_xml()).unwrap(), m);
        // libvirt hands the element back under its own prefix.
        let renamed = m
            .to_xml()
            .replace("divisor:", "ns0:")
            .replace("xmlns:divisor", "xmlns:ns0");
        assert_eq!(Metadata::parse(&renamed).unwrap(), m);
    }

    #[test]
    fn foreign_or_broken_metadata_is_an_error() {
        for bad in [
            "",
            "<other id='x' role='public' controller='c'/>",
            "<divisor:reflector xmlns:divisor='u' role='public' controller='c'/>",
            "<divisor:reflector xmlns:divisor='u' id='x' role='boss' controller='c'/>",
            "<divisor:reflector xmlns:divisor='u' id='x' role='public'/>",
            "<divisor:reflector xmlns:divisor='u' id='x' role='public' controller='c' ip='nope'/>",
            "<divisor:reflector id='x",
        ] {
            assert!(Metadata::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_lxc_domain_runs_the_init_with_escaped_arguments() {
        let m = meta();
        let args = vec!["--id".to_string(), "a<b".to_string()];
        let x = domain_xml(&DomainSpec {
            kind: DomainKind::Lxc,
            meta: &m,
            memory_mib: 256,
            init: Path::new("/bin/sh"),
            init_args: &args,
            net: Some(DomainNet {
                bridge: "dvbr0",
                ip: Ipv4Addr::new(10, 77, 0, 100),
                prefix: 24,
                gateway: None,
            }),
        });
        assert!(x.contains("<domain type='lxc'>"));
        assert!(x.contains("<name>divisor-auto-public-3</name>"));
        assert!(x.contains("<init>/bin/sh</init>"));
        assert!(x.contains("<source bridge='dvbr0'/>"));
        assert!(x.contains("<ip address='10.77.0.100' prefix='24'/>"));
        assert!(x.contains("<initarg>a&lt;b</initarg>"));
        assert!(x.contains(METADATA_URI));
        // It parses as XML.
        let mut r = Reader::from_str(&x);
        loop {
            match r.read_event() {
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("bad XML: {e}\n{x}"),
            }
        }
    }
}
