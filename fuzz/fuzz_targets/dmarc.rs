//! DMARC (`dmarc`): any TXT record parses to a record or an error, never a
//! panic, with `pct` within 0..=100; any From value gives a domain that
//! is plain lower-case LDH text or none; evaluation over a fake DNS whose
//! records come from the input ends with a known result.
#![no_main]

#[path = "fake_dns.rs"]
mod fake_dns;

use fake_dns::{block_on, FakeDns};
use libfuzzer_sys::fuzz_target;
use pimail::trust::dmarc::{aligned, evaluate, from_domain, parse_record};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.split('\n') {
        if let Ok(r) = parse_record(line) {
            assert!(r.pct <= 100, "pct {} from {line:?}", r.pct);
        }
    }
    let from = from_domain(text);
    if let Some(d) = &from {
        assert!(d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
        assert!(d
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'));
        assert!(aligned(d, d, true, "", "x"));
    }
    let from = from.unwrap_or_else(|| "news.example.org".into());
    let dns = FakeDns::new(data);
    let pass = data.first().is_some_and(|b| b & 1 == 1);
    let o = block_on(evaluate(
        &dns,
        &from,
        pass,
        "bounce.example.org",
        &["example.org".to_string()],
    ));
    assert!(
        ["pass", "fail", "none", "temperror", "permerror"].contains(&o.result),
        "{o:?}"
    );
    assert!(dns.queries.get() <= 64, "{} DNS queries", dns.queries.get());
});
