//! Which address family direct delivery uses (`outbound.ip_family`).
//!
//! Large receivers refuse mail from an address without forward-confirmed
//! reverse DNS (FCrDNS: the PTR name of the address resolves back to it;
//! RFC 8601 2.7.3 "iprev"), and home lines often have it for IPv4 but not
//! for IPv6. In `auto`, pimail finds the source address of each family
//! (the local address of a UDP socket connected to a public address:
//! nothing is sent), checks its FCrDNS, and leaves out a family whose
//! address has none while the other family is usable. It checks again
//! when a source address changes and every `ip_family_recheck`, and logs
//! each change once.
//!
//! An address that is not global (IPv4 behind NAT, a ULA) says nothing
//! about what receivers see: its FCrDNS is "unknown", and the family
//! stays usable. [`allowed`] is the pure decision.

use crate::config::IpFamily as Choice;
use crate::trust::spf::{self, Dns, QType, Rr};
use std::net::{IpAddr, SocketAddr};

/// Test hook: "ip:port,ip:port" to find the source addresses with
/// (loopback in the tests); also lets non-global addresses be checked.
pub const PROBE_ENV: &str = "PIMAIL_SOURCE_PROBE";

/// Public addresses the source-address probe "connects" to (a UDP
/// connect sends nothing): Google's public DNS.
const PUBLIC_V4: &str = "8.8.8.8:53";
const PUBLIC_V6: &str = "[2001:4860:4860::8888]:53";

/// What is known of one family's source address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub ip: Option<IpAddr>,
    /// `Some(true)`: FCrDNS holds (with this name); `Some(false)`: it does
    /// not; `None`: not known (no address, not global, DNS failed).
    pub fcrdns: Option<bool>,
    pub name: Option<String>,
}

/// Which families direct delivery may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    pub v4: bool,
    pub v6: bool,
}

impl Allowed {
    pub const BOTH: Allowed = Allowed { v4: true, v6: true };

    pub fn permits(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }

    pub fn describe(&self) -> &'static str {
        match (self.v4, self.v6) {
            (true, true) => "IPv4 and IPv6",
            (true, false) => "IPv4 only",
            (false, true) => "IPv6 only",
            (false, false) => "none",
        }
    }
}

/// The families to use, from the configured choice and what is known of
/// each source address.
pub fn allowed(choice: Choice, v4: &Source, v6: &Source) -> Allowed {
    match choice {
        Choice::V4 => Allowed {
            v4: true,
            v6: false,
        },
        Choice::V6 => Allowed {
            v4: false,
            v6: true,
        },
        Choice::Both => Allowed::BOTH,
        Choice::Auto => {
            // A family is usable unless its address is known to lack
            // FCrDNS; a bad one is left out only if the other is usable
            // (some mail is better than none).
            let bad4 = v4.fcrdns == Some(false);
            let bad6 = v6.fcrdns == Some(false);
            let usable4 = v4.ip.is_some() && !bad4;
            let usable6 = v6.ip.is_some() && !bad6;
            Allowed {
                v4: !(bad4 && usable6),
                v6: !(bad6 && usable4),
            }
        }
    }
}

/// Not an address the world sees us by (RFC 1918, RFC 6598 CGNAT,
/// loopback, link-local, RFC 4193 ULA).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xfe00) == 0xfc00)
        }
    }
}

/// The probe targets: from [`PROBE_ENV`], else the public ones; and
/// whether non-global addresses are checked too (tests only).
pub fn probe_targets() -> (Vec<SocketAddr>, bool) {
    if let Ok(v) = std::env::var(PROBE_ENV) {
        let t = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        return (t, true);
    }
    let t = [PUBLIC_V4, PUBLIC_V6]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    (t, false)
}

/// The local address the kernel would use towards `target` (nothing is
/// sent: a UDP connect only picks the route).
pub fn source_addr(target: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// FCrDNS of `ip`: `Some(name)` for a PTR name that resolves back to it,
/// `Ok(None)` when none does, `Err` when the DNS could not tell.
pub async fn fcrdns<D: Dns>(dns: &D, ip: IpAddr) -> Result<Option<String>, String> {
    let ptrs: Vec<String> = match dns.query(&spf::reverse_name(ip), QType::Ptr).await {
        Ok(r) => r
            .into_iter()
            .filter_map(|r| match r {
                Rr::Ptr(p) => Some(p),
                _ => None,
            })
            .take(10)
            .collect(),
        Err(spf::DnsError::NotFound) => Vec::new(),
        Err(spf::DnsError::Temporary(e)) => return Err(e),
    };
    let qtype = if ip.is_ipv4() { QType::A } else { QType::Aaaa };
    for name in ptrs {
        match dns.query(&name, qtype).await {
            Ok(r) => {
                let back = r.into_iter().any(|r| match (r, ip) {
                    (Rr::A(a), IpAddr::V4(b)) => a == b,
                    (Rr::Aaaa(a), IpAddr::V6(b)) => a == b,
                    _ => false,
                });
                if back {
                    return Ok(Some(name));
                }
            }
            Err(spf::DnsError::NotFound) => {}
            Err(spf::DnsError::Temporary(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// Checks one source address (`check_private`: also non-global ones).
pub async fn check<D: Dns>(dns: &D, ip: Option<IpAddr>, check_private: bool) -> Source {
    let Some(ip) = ip else {
        return Source::default();
    };
    if !check_private && !is_global(ip) {
        return Source {
            ip: Some(ip),
            ..Source::default()
        };
    }
    match fcrdns(dns, ip).await {
        Ok(Some(name)) => Source {
            ip: Some(ip),
            fcrdns: Some(true),
            name: Some(name),
        },
        Ok(None) => Source {
            ip: Some(ip),
            fcrdns: Some(false),
            name: None,
        },
        Err(e) => {
            log::debug!("outbound: FCrDNS of {ip}: {e}");
            Source {
                ip: Some(ip),
                ..Source::default()
            }
        }
    }
}

/// The families used and why, for the log and `pimail doctor`.
pub fn describe(a: Allowed, v4: &Source, v6: &Source) -> String {
    let why = |s: &Source, fam: &str| match (s.ip, s.fcrdns) {
        (Some(ip), Some(false)) => {
            format!("{fam} source {ip} has no forward-confirmed reverse DNS")
        }
        (Some(ip), Some(true)) => format!(
            "{fam} source {ip} has FCrDNS {}",
            s.name.as_deref().unwrap_or("?")
        ),
        (Some(ip), None) => format!("{fam} source {ip} not checked"),
        (None, _) => format!("no {fam} source address"),
    };
    format!(
        "{} ({}; {})",
        a.describe(),
        why(v4, "IPv4"),
        why(v6, "IPv6")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(ip: &str, f: Option<bool>) -> Source {
        Source {
            ip: Some(ip.parse().unwrap()),
            fcrdns: f,
            name: None,
        }
    }

    #[test]
    fn auto_leaves_out_a_family_without_fcrdns_only_when_the_other_works() {
        let good4 = src("192.0.2.1", Some(true));
        let bad4 = src("192.0.2.1", Some(false));
        let nat4 = src("192.168.1.5", None);
        let good6 = src("2001:db8::1", Some(true));
        let bad6 = src("2001:db8::1", Some(false));
        let none = Source::default();
        let a = |v4: &Source, v6: &Source| {
            let x = allowed(Choice::Auto, v4, v6);
            (x.v4, x.v6)
        };
        assert_eq!(a(&good4, &bad6), (true, false));
        assert_eq!(a(&nat4, &bad6), (true, false), "NAT: v4 unknown but usable");
        assert_eq!(a(&bad4, &good6), (false, true));
        assert_eq!(a(&bad4, &bad6), (true, true), "both bad: use both");
        assert_eq!(a(&none, &bad6), (true, true), "only v6 exists");
        assert_eq!(a(&good4, &good6), (true, true));
        assert_eq!(a(&none, &none), (true, true));
        let v4 = allowed(Choice::V4, &bad4, &good6);
        assert_eq!((v4.v4, v4.v6), (true, false));
        let both = allowed(Choice::Both, &good4, &bad6);
        assert_eq!((both.v4, both.v6), (true, true));
    }

    #[test]
    fn global_addresses() {
        for ip in [
            "192.168.1.2",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "fe80::1",
            "fd00::1",
            "::1",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.1", "100.128.0.1", "2001:db8::1"] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
    }
}
