//! A fake DNS for the SPF and DMARC targets: answers come from the fuzz
//! input, the same answer for the same question (as a resolver's cache
//! would give), and every query is counted. Shared with `#[path]`.

use pimail::trust::spf::{Dns, DnsError, QType, Rr};
use std::cell::Cell;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

pub struct FakeDns {
    /// The TXT records to hand out, picked by a hash of the name.
    pub txt: Vec<Vec<u8>>,
    pub queries: Cell<usize>,
}

impl FakeDns {
    pub fn new(input: &[u8]) -> FakeDns {
        FakeDns {
            txt: input.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect(),
            queries: Cell::new(0),
        }
    }
}

fn hash(name: &str) -> usize {
    name.bytes()
        .map(|b| b.to_ascii_lowercase())
        .fold(5381usize, |h, b| h.wrapping_mul(33) ^ usize::from(b))
}

impl Dns for FakeDns {
    fn query(&self, name: &str, qtype: QType) -> impl Future<Output = Result<Vec<Rr>, DnsError>> {
        self.queries.set(self.queries.get() + 1);
        let lower = name.to_ascii_lowercase();
        let h = hash(name);
        let r = if lower.contains("nx") {
            Err(DnsError::NotFound)
        } else if lower.contains("tmp") {
            Err(DnsError::Temporary("timeout".into()))
        } else {
            Ok(match qtype {
                QType::Txt => match self.txt.len() {
                    0 => vec![],
                    n => {
                        let mut v = vec![Rr::Txt(self.txt[h % n].clone())];
                        if h % 7 == 0 {
                            // Now and then two records (a permerror for SPF).
                            v.push(Rr::Txt(self.txt[(h / 7) % n].clone()));
                        }
                        v
                    }
                },
                QType::A => match h % 3 {
                    0 => vec![],
                    1 => vec![Rr::A(Ipv4Addr::new(192, 0, 2, 1))],
                    _ => vec![Rr::A(Ipv4Addr::new(198, 51, 100, 7))],
                },
                QType::Aaaa => match h % 2 {
                    0 => vec![],
                    _ => vec![Rr::Aaaa(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))],
                },
                QType::Mx => (0..h % 4)
                    .map(|i| Rr::Mx(format!("mx{i}.{lower}")))
                    .collect(),
                QType::Ptr => vec![Rr::Ptr("mail.example.org".into())],
            })
        };
        std::future::ready(r)
    }
}

/// Runs a future that never waits (the fake DNS answers at once).
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the check waited on a fake DNS that never blocks");
}
