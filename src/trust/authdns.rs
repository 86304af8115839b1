//! The stub resolver ([`crate::net::dns::Resolver`]) seen through the
//! [`crate::trust::spf::Dns`] trait that SPF, DKIM, DMARC and `pimail doctor`
//! use: TXT, PTR, MX, A and AAAA answers with CNAMEs followed, NXDOMAIN
//! kept apart from an empty answer (SPF counts both as void lookups, but
//! only NXDOMAIN makes a domain "not exist").

use crate::net::dns::{self, Resolver};
use crate::trust::spf::{Dns, DnsError, QType, Rr};
use hickory_proto::rr::{Name, RData, RecordType};

/// CNAME chains longer than this are a loop (as in `dns`).
const MAX_CNAMES: usize = 8;

fn err(e: dns::DnsError) -> DnsError {
    match e {
        dns::DnsError::NoSuchDomain(_) => DnsError::NotFound,
        dns::DnsError::Temporary(t) => DnsError::Temporary(t),
    }
}

fn convert(d: RData) -> Option<Rr> {
    let name = |n: &Name| n.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    Some(match d {
        RData::A(a) => Rr::A(a.0),
        RData::AAAA(a) => Rr::Aaaa(a.0),
        RData::MX(mx) => Rr::Mx(name(&mx.exchange)),
        RData::PTR(p) => Rr::Ptr(name(&p.0)),
        // RFC 7208 3.3 / RFC 6376 3.6.2.2: a TXT record's strings are
        // joined without anything in between.
        RData::TXT(t) => Rr::Txt(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
        _ => return None,
    })
}

impl Dns for Resolver {
    async fn query(&self, name: &str, qtype: QType) -> Result<Vec<Rr>, DnsError> {
        let rtype = match qtype {
            QType::A => RecordType::A,
            QType::Aaaa => RecordType::AAAA,
            QType::Mx => RecordType::MX,
            QType::Txt => RecordType::TXT,
            QType::Ptr => RecordType::PTR,
        };
        let mut current = Name::from_ascii(name)
            .map_err(|e| DnsError::Temporary(format!("bad name {name:?}: {e}")))?;
        current.set_fqdn(true);
        for _ in 0..MAX_CNAMES {
            let records = Resolver::query(self, &current, rtype).await.map_err(err)?;
            let (last, found) = dns::follow(&records, &current, rtype);
            if !found.is_empty() || last == current {
                return Ok(found.into_iter().filter_map(convert).collect());
            }
            current = last;
        }
        Err(DnsError::Temporary(format!("{name}: CNAME chain too long")))
    }
}
