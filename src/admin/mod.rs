//! The owner's tools above the running server: `pimail setup` (the first
//! run), `pimail status` (is everything well, for people and cron) and
//! the try-it server's self-signed certificate. They read what every
//! floor below keeps (config, queue, DKIM keys, doctor, the server's
//! status file), so they sit at the top.

pub mod setup;
pub mod status;

use crate::config::{Config, Tls};

/// The try-it server's certificate files under data_dir.
pub const TRY_IT_CERT: &str = "try-it-cert.pem";
pub const TRY_IT_KEY: &str = "try-it-key.pem";

/// Gives the embedded default a TLS certificate: self-signed, made at the
/// first start under data_dir and kept. Returns its SHA-256 fingerprint
/// (for the banner: clients that pin, like msmtp's `tls_fingerprint`).
pub fn try_it_certificate(config: &mut Config) -> Result<String, String> {
    let cert = config.data_dir.join(TRY_IT_CERT);
    let key = config.data_dir.join(TRY_IT_KEY);
    if !(cert.exists() && key.exists()) {
        let now = crate::util::timefmt::unix_now();
        let s =
            crate::net::selfsigned::generate(&config.hostname, now).map_err(|e| e.to_string())?;
        // Key first: a certificate without its key is never left behind.
        crate::util::paths::write_atomic(&key, s.key_pem.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
        crate::util::paths::write_atomic(&cert, s.cert_pem.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    }
    let pem = std::fs::read(&cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let fp = crate::net::selfsigned::fingerprint(&pem).ok_or_else(|| {
        format!(
            "{}: no certificate (delete it to get a new one)",
            cert.display()
        )
    })?;
    config.tls = Some(Tls {
        cert,
        key,
        from_certbot: false,
    });
    Ok(fp)
}
