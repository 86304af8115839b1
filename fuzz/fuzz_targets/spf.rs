//! SPF (`spf::check`) over a fake DNS whose TXT records come from the fuzz
//! input: any records give a result, never a panic or a hang; the number
//! of DNS queries stays bounded (RFC 7208 4.6.4: an attacker's record must
//! not make us a DNS amplifier); the same answers give the same result.
#![no_main]

#[path = "fake_dns.rs"]
mod fake_dns;

use fake_dns::{block_on, FakeDns};
use libfuzzer_sys::fuzz_target;
use pimail::trust::spf::{check, Query};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// 10 mechanisms that query, each MX or PTR at most 10 names, the record
/// lookups themselves, and some slack for void lookups and the
/// `exp=`: far less than this.
const MAX_QUERIES: usize = 200;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, records)) = data.split_first() else {
        return;
    };
    let ip = match sel % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        2 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        _ => IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
    };
    let sender = match (sel / 4) % 4 {
        0 => "alice@example.org",
        1 => "",
        2 => "@example.org",
        _ => "bob@Sub.Example.ORG.",
    };
    let q = Query {
        ip,
        sender: sender.into(),
        helo: "mail.example.net".into(),
        receiver: "mx.example.com".into(),
    };
    let dns = FakeDns::new(records);
    let a = block_on(check(&dns, &q));
    let n = dns.queries.get();
    assert!(n <= MAX_QUERIES, "{n} DNS queries for one check: {a:?}");
    let dns2 = FakeDns::new(records);
    let b = block_on(check(&dns2, &q));
    assert_eq!(a, b, "same answers, different result");
    assert!(!a.result.name().is_empty());
});
