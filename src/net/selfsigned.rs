//! A self-signed certificate for the try-it server, so that mail clients
//! in their default configuration (msmtp's `auth on`, fetchmail's STLS,
//! Thunderbird) can use it: they refuse to send a password without TLS.
//!
//! An ECDSA P-256 key made and signed with ring, wrapped in the few bytes
//! of X.509 DER (RFC 5280 4.1) a TLS client needs: version 3, a random
//! serial, subject = issuer = CN=<host>, a validity, the public key and a
//! subjectAltName (RFC 5280 4.2.1.6) with the host name and 127.0.0.1.
//! Written by hand because rcgen (and its `time` and `yasna` crates) would
//! grow the binary for a hundred lines of encoding.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

#[derive(Debug)]
pub enum SelfSignedError {
    /// ring could not make or use the key (no randomness).
    Crypto(&'static str),
}

impl std::fmt::Display for SelfSignedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelfSignedError::Crypto(what) => {
                write!(f, "cannot make a self-signed certificate: {what}")
            }
        }
    }
}

impl std::error::Error for SelfSignedError {}

/// A new certificate and key, both PEM.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

/// ecdsa-with-SHA256 (RFC 5758 3.2), no parameters.
const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// id-ecPublicKey and prime256v1 (RFC 5480 2.1.1).
const EC_P256: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];

/// A DER TLV.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
fn time(secs: u64) -> Vec<u8> {
    let c = crate::util::timefmt::civil(secs);
    let tail = format!(
        "{:02}{:02}{:02}{:02}{:02}Z",
        c.month, c.day, c.hour, c.min, c.sec
    );
    if c.year < 2050 {
        tlv(0x17, format!("{:02}{tail}", c.year % 100).as_bytes())
    } else {
        tlv(0x18, format!("{:04}{tail}", c.year).as_bytes())
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = crate::util::base64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Makes a certificate for `host`, valid from a day before `now` for ten
/// years (a try-it server is not worth a renewal job).
pub fn generate(host: &str, now: u64) -> Result<SelfSigned, SelfSignedError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| SelfSignedError::Crypto("key generation failed"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| SelfSignedError::Crypto("the new key is unusable"))?;
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(|_| SelfSignedError::Crypto("no randomness"))?;
    // A positive INTEGER with no leading zero octet.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let name = seq(&[&tlv(
        0x31,
        &seq(&[&[0x06, 0x03, 0x55, 0x04, 0x03], &tlv(0x0c, host.as_bytes())]),
    )]);
    let san = seq(&[&tlv(0x82, host.as_bytes()), &tlv(0x87, &[127, 0, 0, 1])]);
    let extensions = tlv(
        0xa3,
        &seq(&[&seq(&[&[0x06, 0x03, 0x55, 0x1d, 0x11], &tlv(0x04, &san)])]),
    );
    let spki = seq(&[
        &tlv(0x30, EC_P256),
        &tlv(0x03, &[&[0u8][..], key.public_key().as_ref()].concat()),
    ]);
    let sig_alg = tlv(0x30, ECDSA_SHA256);
    let tbs = seq(&[
        &[0xa0, 0x03, 0x02, 0x01, 0x02], // [0] version v3
        &tlv(0x02, &serial),
        &sig_alg,
        &name,
        &seq(&[
            &time(now.saturating_sub(86400)),
            &time(now + 10 * 365 * 86400),
        ]),
        &name,
        &spki,
        &extensions,
    ]);
    let sig = key
        .sign(&rng, &tbs)
        .map_err(|_| SelfSignedError::Crypto("signing failed"))?;
    let cert = seq(&[
        &tbs,
        &sig_alg,
        &tlv(0x03, &[&[0u8][..], sig.as_ref()].concat()),
    ]);
    Ok(SelfSigned {
        cert_pem: pem("CERTIFICATE", &cert),
        key_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
    })
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, as
/// `openssl x509 -fingerprint -sha256` and msmtp's `tls_fingerprint` write
/// it: upper-case hex pairs joined by colons.
pub fn fingerprint(cert_pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem)
        .next()?
        .ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Some(
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_accepts_the_pair_and_the_fields_read_back() {
        let dir = std::env::temp_dir().join(format!("pimail-selfsigned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let now = 1_800_000_000;
        let s = generate("localhost", now).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, &s.cert_pem).unwrap();
        std::fs::write(&k, &s.key_pem).unwrap();
        crate::net::tls::load(&c, &k).unwrap();
        let fp = fingerprint(s.cert_pem.as_bytes()).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_ne!(
            fp,
            fingerprint(generate("localhost", now).unwrap().cert_pem.as_bytes()).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        assert_eq!(time(0), tlv(0x17, b"700101000000Z"));
        assert_eq!(time(2_524_608_000), tlv(0x18, b"20500101000000Z"));
    }
}
