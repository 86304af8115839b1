//! SPF evaluation against the openspf/pyspf RFC 7208 test suite
//! (tests/data/rfc7208-tests.txt, converted from the YAML with
//! tests/helpers/convert_rfc7208_suite.py). The zones are served by a
//! table that behaves like the suite's own driver (pyspf test/testspf.py):
//! `TIMEOUT` entries, CNAMEs followed one level, names under `error.`
//! timing out. Results are compared; the explanation strings (exp=) are
//! not, because pimail never fetches explanations.

use pimail::trust::spf::{self, Dns, DnsError, QType, Rr};
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone)]
enum Entry {
    Timeout,
    TypeTimeout(String),
    Record(String, Vec<String>),
}

#[derive(Default)]
struct Zone {
    names: HashMap<String, Vec<Entry>>,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

impl Zone {
    fn lookup(&self, name: &str, qtype: &str, level: u8) -> Result<Vec<Rr>, DnsError> {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(entries) = self.names.get(&key) else {
            if key.starts_with("error.") {
                return Err(DnsError::Temporary("timeout".into()));
            }
            return Err(DnsError::NotFound);
        };
        let mut out = Vec::new();
        let mut seen_type = false;
        for e in entries {
            match e {
                Entry::Timeout if !seen_type => return Err(DnsError::Temporary("timeout".into())),
                Entry::Timeout => return Ok(out),
                Entry::TypeTimeout(t) if t == qtype => {
                    return Err(DnsError::Temporary("timeout".into()))
                }
                Entry::TypeTimeout(_) => {}
                Entry::Record(t, v) => {
                    if t == qtype {
                        seen_type = true;
                        out.push(match t.as_str() {
                            "A" => Rr::A(v[0].parse().unwrap()),
                            "AAAA" => Rr::Aaaa(v[0].parse().unwrap()),
                            "MX" => Rr::Mx(v[1].clone()),
                            "PTR" => Rr::Ptr(v[0].clone()),
                            "TXT" => Rr::Txt(v.iter().flat_map(|s| unescape(s)).collect()),
                            other => panic!("unknown type {other}"),
                        });
                    } else if t == "CNAME" && level == 0 {
                        out.extend(self.lookup(&v[0], qtype, 1)?);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Dns for Zone {
    async fn query(&self, name: &str, qtype: QType) -> Result<Vec<Rr>, DnsError> {
        let t = match qtype {
            QType::A => "A",
            QType::Aaaa => "AAAA",
            QType::Mx => "MX",
            QType::Txt => "TXT",
            QType::Ptr => "PTR",
        };
        self.lookup(name, t, 0)
    }
}

struct Case {
    section: String,
    name: String,
    spec: String,
    helo: String,
    host: String,
    mailfrom: String,
    results: Vec<String>,
}

fn load() -> Vec<(Zone, Vec<Case>)> {
    let text = include_str!("data/rfc7208-tests.txt");
    let mut out: Vec<(Zone, Vec<Case>)> = Vec::new();
    let mut section = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "section" => {
                section = f[1].to_string();
                out.push((Zone::default(), Vec::new()));
            }
            "zone" => {
                let zone = &mut out.last_mut().unwrap().0;
                let entry = match &f[2..] {
                    ["TIMEOUT"] => Entry::Timeout,
                    [t, "TIMEOUT"] => Entry::TypeTimeout(t.to_string()),
                    [t, rest @ ..] => {
                        Entry::Record(t.to_string(), rest.iter().map(|s| s.to_string()).collect())
                    }
                    [] => panic!("bad zone line {line}"),
                };
                zone.names
                    .entry(f[1].to_ascii_lowercase())
                    .or_default()
                    .push(entry);
            }
            "test" => out.last_mut().unwrap().1.push(Case {
                section: section.clone(),
                name: f[1].into(),
                spec: f[2].into(),
                helo: String::from_utf8(unescape(f[3])).unwrap(),
                host: f[4].into(),
                mailfrom: String::from_utf8(unescape(f[5])).unwrap(),
                results: f[6].split(',').map(str::to_string).collect(),
            }),
            other => panic!("unknown line kind {other}"),
        }
    }
    out
}

#[test]
fn rfc7208_test_suite() {
    let suite = load();
    let total: usize = suite.iter().map(|(_, c)| c.len()).sum();
    assert!(
        total > 190,
        "the suite has {total} cases; expected all of them"
    );
    let mut failures = Vec::new();
    for (zone, cases) in &suite {
        for c in cases {
            let ip: IpAddr = c.host.parse().unwrap();
            let q = spf::Query {
                ip,
                sender: c.mailfrom.clone(),
                helo: c.helo.clone(),
                receiver: "receiver.example".into(),
            };
            let got = smol::block_on(spf::check(zone, &q));
            if !c.results.iter().any(|r| r == got.result.name()) {
                failures.push(format!(
                    "{} / {} (RFC 7208 {}): expected {:?}, got {} ({})",
                    c.section,
                    c.name,
                    c.spec,
                    c.results,
                    got.result.name(),
                    got.reason
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
