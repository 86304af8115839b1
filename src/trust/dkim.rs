//! DKIM: signing outbound mail and verifying inbound signatures.
//!
//! Follows RFC 6376 (DKIM signatures), RFC 8463 (Ed25519-SHA256), RFC 8301
//! (RSA-SHA256 only, 1024-bit minimum for verifying; SHA-1 refused) and
//! RFC 8601's result names. Signing uses relaxed/relaxed canonicalization
//! (RFC 6376 3.4.2, 3.4.4); verification also accepts "simple".
//!
//! Sans-I/O: a [`MessageHasher`] (for signing) or [`Verifier`] (for
//! checking) is fed the message in chunks of any size; the header block is
//! kept (bounded by [`MAX_HEADER_BYTES`]), the body only flows through the
//! SHA-256 hashers, so a message never has to sit in memory. Verification
//! ends in [`Pending`] signatures that name the DNS TXT record they need
//! (`selector._domainkey.domain`); the caller looks it up however it likes
//! (the async resolver, a test table) and hands the answer back.
//!
//! Keys are PKCS#8 PEM files; `ring` does the cryptography. ring cannot
//! generate RSA keys: [`generate_ed25519`] makes the Ed25519 key, and the
//! RSA key comes from `openssl genpkey` (see [`openssl_rsa_command`]).

use ring::signature::{self, KeyPair};
use std::fmt;

/// The header block is held in memory while the body streams; real mail
/// has a few KiB of headers, so this bound only stops abuse.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// More signatures than this on one message are ignored (RFC 6376 6.1:
/// verifiers may limit the number they check).
pub const MAX_SIGNATURES: usize = 8;

/// Headers we sign when present (RFC 6376 5.4.1's list, in its spirit).
const SIGNED_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DkimError {
    /// A key file that is not a usable key: what is wrong with it.
    Key(String),
    /// The header block exceeds [`MAX_HEADER_BYTES`].
    HeaderTooLarge,
    /// The message has no From header, which DKIM must sign.
    NoFrom,
}

impl fmt::Display for DkimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DkimError::Key(m) => write!(f, "DKIM key: {m}"),
            DkimError::HeaderTooLarge => {
                write!(f, "header block larger than {MAX_HEADER_BYTES} bytes")
            }
            DkimError::NoFrom => write!(f, "message has no From header"),
        }
    }
}

impl std::error::Error for DkimError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519Sha256,
    RsaSha256,
}

impl Algorithm {
    /// The `a=` tag value.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
            Algorithm::RsaSha256 => "rsa-sha256",
        }
    }
    /// The `k=` key type of the DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::Ed25519Sha256 => "ed25519",
            Algorithm::RsaSha256 => "rsa",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    Simple,
    Relaxed,
}

// ---------------------------------------------------------------------------
// Canonicalization (RFC 6376 3.4)

/// Relaxed header canonicalization (RFC 6376 3.4.2) of one field given its
/// name and raw value (everything after the colon, folds included):
/// lower-case name, unfolded value, runs of whitespace as one space, no
/// whitespace at either end of the value; ends in CRLF.
pub fn relaxed_header(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    out.extend(
        name.trim_end_matches([' ', '\t'])
            .bytes()
            .map(|b| b.to_ascii_lowercase()),
    );
    out.push(b':');
    let mut wsp = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => wsp = true,
            _ => {
                if wsp && started {
                    out.push(b' ');
                }
                wsp = false;
                started = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Streaming body canonicalization (RFC 6376 3.4.3, 3.4.4) feeding a
/// SHA-256 context. Lines may end in CRLF or, for mail read back from an
/// LF-only store, in a bare LF; both count as CRLF. Trailing empty lines
/// are held back as a count and only emitted when content follows, so
/// memory stays constant whatever the body.
pub struct BodyHasher {
    canon: Canon,
    ctx: ring::digest::Context,
    /// `l=`: hash at most this many canonical bytes.
    limit: Option<u64>,
    emitted: u64,
    /// Line ends seen but not yet emitted (they may be trailing).
    pending_crlf: u64,
    /// Relaxed: whitespace seen since the last content byte of this line.
    wsp: bool,
    /// A CR waiting to learn whether an LF follows.
    cr: bool,
    /// The current line has content.
    line_content: bool,
    /// Anything at all was emitted.
    any: bool,
}

impl BodyHasher {
    pub fn new(canon: Canon, limit: Option<u64>) -> BodyHasher {
        BodyHasher {
            canon,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            limit,
            emitted: 0,
            pending_crlf: 0,
            wsp: false,
            cr: false,
            line_content: false,
            any: false,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.any = true;
        let take = match self.limit {
            Some(l) => (l.saturating_sub(self.emitted)).min(bytes.len() as u64) as usize,
            None => bytes.len(),
        };
        self.ctx.update(&bytes[..take]);
        self.emitted += bytes.len() as u64;
    }

    fn flush_crlfs(&mut self) {
        while self.pending_crlf > 0 {
            // Stop burning CPU once past the l= limit.
            if self.limit.is_some_and(|l| self.emitted >= l) {
                self.emitted += 2 * self.pending_crlf;
                self.pending_crlf = 0;
                break;
            }
            self.pending_crlf -= 1;
            self.emit(b"\r\n");
        }
    }

    fn content(&mut self, b: u8) {
        self.flush_crlfs();
        if self.wsp {
            self.emit(b" ");
            self.wsp = false;
        }
        self.line_content = true;
        self.emit(&[b]);
    }

    fn line_end(&mut self) {
        self.wsp = false;
        self.line_content = false;
        self.pending_crlf += 1;
    }

    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.line_end();
                    continue;
                }
                // A bare CR is content.
                self.content(b'\r');
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => self.line_end(),
                b' ' | b'\t' if self.canon == Canon::Relaxed => self.wsp = true,
                _ => self.content(b),
            }
        }
    }

    /// The body hash (`bh=`).
    pub fn finish(mut self) -> Vec<u8> {
        if self.cr {
            self.cr = false;
            self.content(b'\r');
        }
        if self.line_content || (self.any && self.pending_crlf > 0) {
            // The last line keeps (or gets) its CRLF; more empty lines go.
            self.pending_crlf = 1;
            self.flush_crlfs();
        } else if !self.any && self.canon == Canon::Simple {
            // RFC 6376 3.4.3: an empty body is one CRLF in "simple".
            self.pending_crlf = 1;
            self.flush_crlfs();
        }
        self.ctx.finish().as_ref().to_vec()
    }
}

// ---------------------------------------------------------------------------
// Header block

/// One header field as it appeared: name and raw value (after the colon,
/// folds kept, line ends normalized to CRLF, final CRLF removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: Vec<u8>,
}

impl Field {
    fn simple(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.name.len() + self.value.len() + 3);
        v.extend_from_slice(self.name.as_bytes());
        v.push(b':');
        v.extend_from_slice(&self.value);
        v.extend_from_slice(b"\r\n");
        v
    }

    fn canonical(&self, canon: Canon) -> Vec<u8> {
        match canon {
            Canon::Simple => self.simple(),
            Canon::Relaxed => relaxed_header(&self.name, &self.value),
        }
    }

    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// Splits a header block (without the empty separator line) into fields.
/// Lines without a colon that do not continue a field are skipped, and so
/// are the continuation lines after them: they must not be folded into the
/// field before (a DKIM-Signature we put on top would change meaning).
pub fn parse_fields(block: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    let mut skipping = false;
    for raw in block.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(f) = fields.last_mut().filter(|_| !skipping) {
                f.value.extend_from_slice(b"\r\n");
                f.value.extend_from_slice(line);
            }
            continue;
        }
        match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                skipping = false;
                fields.push(Field {
                    name: String::from_utf8_lossy(&line[..colon]).into_owned(),
                    value: line[colon + 1..].to_vec(),
                });
            }
            None => skipping = true,
        }
    }
    fields
}

/// Splits a streamed message into its header block and body: collects the
/// header bytes until the empty line, then passes body bytes on.
struct Splitter {
    header: Vec<u8>,
    in_body: bool,
}

impl Splitter {
    fn new() -> Splitter {
        Splitter {
            header: Vec::new(),
            in_body: false,
        }
    }

    /// Takes a chunk; returns the part of it that belongs to the body (empty
    /// while still in the header) and whether the header just ended.
    fn update<'a>(&mut self, chunk: &'a [u8]) -> Result<(&'a [u8], bool), DkimError> {
        if self.in_body {
            return Ok((chunk, false));
        }
        let start = self.header.len();
        // A message starting with the empty line has no header at all.
        for (i, &b) in chunk.iter().enumerate() {
            if b != b'\n' {
                continue;
            }
            let pos = start + i; // index of this LF in header ++ chunk
            let prev = |k: usize| -> Option<u8> {
                let idx = pos.checked_sub(k)?;
                Some(if idx >= start {
                    chunk[idx - start]
                } else {
                    self.header[idx]
                })
            };
            let blank = matches!(
                (prev(1), prev(2)),
                (None, _) | (Some(b'\n'), _) | (Some(b'\r'), None) | (Some(b'\r'), Some(b'\n'))
            );
            if blank {
                self.header.extend_from_slice(&chunk[..=i]);
                self.in_body = true;
                return Ok((&chunk[i + 1..], true));
            }
        }
        if self.header.len() + chunk.len() > MAX_HEADER_BYTES {
            return Err(DkimError::HeaderTooLarge);
        }
        self.header.extend_from_slice(chunk);
        Ok((&[], false))
    }

    fn fields(&self) -> Vec<Field> {
        parse_fields(&self.header)
    }
}

// ---------------------------------------------------------------------------
// Signing

/// A private key with its selector.
pub struct SigningKey {
    pub selector: String,
    key: PrivateKey,
}

enum PrivateKey {
    Ed25519(signature::Ed25519KeyPair),
    Rsa(signature::RsaKeyPair),
}

impl SigningKey {
    /// Reads a PEM key: PKCS#8 (`PRIVATE KEY`, Ed25519 or RSA) or PKCS#1
    /// (`RSA PRIVATE KEY`, what older openssl versions write).
    pub fn from_pem(selector: &str, pem: &str) -> Result<SigningKey, DkimError> {
        let (label, der) =
            pem_decode(pem).ok_or_else(|| DkimError::Key("not a PEM file".into()))?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => PrivateKey::Rsa(
                signature::RsaKeyPair::from_der(&der)
                    .map_err(|e| DkimError::Key(format!("RSA key rejected: {e}")))?,
            ),
            "PRIVATE KEY" => {
                if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                    PrivateKey::Ed25519(k)
                } else {
                    PrivateKey::Rsa(signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                        DkimError::Key(format!(
                            "neither an Ed25519 nor a usable RSA key (RSA needs 2048-4096 bits): {e}"
                        ))
                    })?)
                }
            }
            other => return Err(DkimError::Key(format!("unexpected PEM label {other:?}"))),
        };
        Ok(SigningKey {
            selector: selector.to_string(),
            key,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.key {
            PrivateKey::Ed25519(_) => Algorithm::Ed25519Sha256,
            PrivateKey::Rsa(_) => Algorithm::RsaSha256,
        }
    }

    /// The `p=` value of the DNS record: the raw 32-byte key for Ed25519
    /// (RFC 8463 4.2), SubjectPublicKeyInfo DER for RSA (RFC 6376 3.6.1).
    pub fn public_key(&self) -> Vec<u8> {
        match &self.key {
            PrivateKey::Ed25519(k) => k.public_key().as_ref().to_vec(),
            PrivateKey::Rsa(k) => rsa_spki(k.public_key().as_ref()),
        }
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().key_type(),
            b64_encode(&self.public_key())
        )
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, DkimError> {
        match &self.key {
            // RFC 8463 3: PureEdDSA over the SHA-256 hash of the data.
            PrivateKey::Ed25519(k) => {
                let h = ring::digest::digest(&ring::digest::SHA256, data);
                Ok(k.sign(h.as_ref()).as_ref().to_vec())
            }
            PrivateKey::Rsa(k) => {
                let rng = ring::rand::SystemRandom::new();
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, data, &mut sig)
                    .map_err(|_| DkimError::Key("RSA signing failed".into()))?;
                Ok(sig)
            }
        }
    }
}

/// Collects a message's header block and relaxed body hash as it streams
/// past, for [`Signer::sign`].
pub struct MessageHasher {
    split: Splitter,
    body: BodyHasher,
}

impl Default for MessageHasher {
    fn default() -> Self {
        MessageHasher {
            split: Splitter::new(),
            body: BodyHasher::new(Canon::Relaxed, None),
        }
    }
}

impl MessageHasher {
    pub fn new() -> MessageHasher {
        MessageHasher::default()
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), DkimError> {
        let (body, _) = self.split.update(chunk)?;
        self.body.update(body);
        Ok(())
    }

    /// The header fields and the body hash.
    pub fn finish(self) -> (Vec<Field>, Vec<u8>) {
        (self.split.fields(), self.body.finish())
    }
}

/// Signs messages for one domain with one or more keys.
pub struct Signer {
    pub domain: String,
    pub keys: Vec<SigningKey>,
}

impl Signer {
    /// The `DKIM-Signature:` header lines (CRLF-terminated, folded) to put
    /// on top of the message, one per key. `now` is the `t=` time.
    pub fn sign(&self, fields: &[Field], body_hash: &[u8], now: u64) -> Result<String, DkimError> {
        let mut out = String::new();
        for key in &self.keys {
            out.push_str(&Signer::sign_one(
                &self.domain,
                key,
                fields,
                body_hash,
                now,
            )?);
        }
        Ok(out)
    }

    /// One `DKIM-Signature:` header line for `domain` with `key`.
    pub fn sign_one(
        domain: &str,
        key: &SigningKey,
        fields: &[Field],
        body_hash: &[u8],
        now: u64,
    ) -> Result<String, DkimError> {
        // h=: each signed header as often as it occurs, plus one more
        // "from" so that a From added later breaks the signature
        // ("over-signing", RFC 6376 8.15).
        let mut names: Vec<&str> = Vec::new();
        let mut has_from = false;
        for want in SIGNED_HEADERS {
            let n = fields
                .iter()
                .filter(|f| f.name.trim().eq_ignore_ascii_case(want))
                .count();
            has_from |= *want == "from" && n > 0;
            for _ in 0..n {
                names.push(want);
            }
        }
        if !has_from {
            return Err(DkimError::NoFrom);
        }
        names.push("from");
        let mut data = Vec::new();
        for c in select_headers(fields, &names) {
            data.extend_from_slice(&c.canonical(Canon::Relaxed));
        }
        let mut h = String::from("DKIM-Signature: v=1; a=");
        h.push_str(key.algorithm().tag());
        h.push_str("; c=relaxed/relaxed; d=");
        h.push_str(domain);
        h.push_str("; s=");
        h.push_str(&key.selector);
        h.push_str(&format!(";\r\n\tt={now}; h="));
        // Fold the h= list so no line gets long.
        let mut line = 8;
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                h.push(':');
                line += 1;
            }
            if line + n.len() > 72 {
                h.push_str("\r\n\t ");
                line = 2;
            }
            h.push_str(n);
            line += n.len();
        }
        h.push_str(";\r\n\tbh=");
        h.push_str(&b64_encode(body_hash));
        h.push_str(";\r\n\tb=");
        // The signature covers this header with an empty b= and without
        // its final CRLF (RFC 6376 3.7).
        let own = parse_fields(h.as_bytes());
        let own = own.first().ok_or(DkimError::NoFrom)?;
        let mut own = relaxed_header(&own.name, &own.value);
        own.truncate(own.len() - 2);
        data.extend_from_slice(&own);
        let sig = b64_encode(&key.sign(&data)?);
        for (i, chunk) in sig.as_bytes().chunks(70).enumerate() {
            if i > 0 {
                h.push_str("\r\n\t ");
            }
            // base64 is ASCII, so every chunk is valid UTF-8.
            h.push_str(&String::from_utf8_lossy(chunk));
        }
        h.push_str("\r\n");
        Ok(h)
    }
}

/// Picks the fields named in `h=` (RFC 6376 5.4.2): for each name, the
/// last not yet used occurrence, working upwards; names with no occurrence
/// left contribute nothing.
fn select_headers<'a, S: AsRef<str>>(fields: &'a [Field], names: &[S]) -> Vec<&'a Field> {
    let mut used = vec![false; fields.len()];
    let mut out = Vec::new();
    for n in names {
        let n = n.as_ref().trim();
        if let Some(i) = (0..fields.len())
            .rev()
            .find(|&i| !used[i] && fields[i].name.trim().eq_ignore_ascii_case(n))
        {
            used[i] = true;
            out.push(&fields[i]);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Verification

/// The result of checking one signature, named as in RFC 8601 2.7.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// The signature or body hash does not match.
    Fail(String),
    /// Syntax or key problems that will not go away (e.g. missing tags,
    /// revoked key, unsupported algorithm).
    PermError(String),
    /// The key could not be fetched just now.
    TempError(String),
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail(_) => "fail",
            Status::PermError(_) => "permerror",
            Status::TempError(_) => "temperror",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Pass => None,
            Status::Fail(r) | Status::PermError(r) | Status::TempError(r) => Some(r),
        }
    }
}

/// The outcome for one DKIM-Signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// `d=` (lower-cased), empty when the header could not be parsed.
    pub domain: String,
    pub selector: String,
    /// `a=` as written.
    pub algorithm: String,
    /// The first 8 characters of `b=` (RFC 6008 `header.b`).
    pub b_prefix: String,
}

/// A parsed DKIM-Signature header.
#[derive(Debug, Clone)]
struct Sig {
    algorithm: Algorithm,
    a_text: String,
    b: Vec<u8>,
    b_prefix: String,
    bh: Vec<u8>,
    header_canon: Canon,
    body_canon: Canon,
    domain: String,
    selector: String,
    headers: Vec<String>,
    limit: Option<u64>,
    expires: Option<u64>,
    /// The DKIM-Signature field itself, to hash with b= emptied.
    field: Field,
}

/// Splits a tag=value list (RFC 6376 3.2); values keep inner whitespace
/// except that FWS around them is trimmed. Duplicate tags are an error.
pub fn parse_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(';') {
        if part.trim().is_empty() {
            continue;
        }
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("tag without '=': {:?}", part.trim()))?;
        let k = k.trim().to_string();
        if k.is_empty() || out.iter().any(|(o, _)| *o == k) {
            return Err(format!("empty or duplicate tag {k:?}"));
        }
        out.push((k, v.trim_matches([' ', '\t', '\r', '\n']).to_string()));
    }
    Ok(out)
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}

fn parse_sig(field: &Field) -> Result<Sig, (Status, String, String, String)> {
    let text = field.value_str();
    let perm = |m: String, d: &str, s: &str| {
        (
            Status::PermError(m),
            d.to_string(),
            s.to_string(),
            String::new(),
        )
    };
    let tags = parse_tags(&text).map_err(|m| perm(m, "", ""))?;
    let domain = tag(&tags, "d").unwrap_or("").to_ascii_lowercase();
    let selector = tag(&tags, "s").unwrap_or("").to_string();
    let perm = |m: &str| perm(m.to_string(), &domain, &selector);
    if tag(&tags, "v") != Some("1") {
        return Err(perm("v= is not 1"));
    }
    for t in ["a", "b", "bh", "d", "h", "s"] {
        if tag(&tags, t).is_none() {
            return Err(perm(&format!("missing required tag {t}=")));
        }
    }
    let a_text = tag(&tags, "a").unwrap_or("").to_string();
    let algorithm = match a_text.as_str() {
        "ed25519-sha256" => Algorithm::Ed25519Sha256,
        "rsa-sha256" => Algorithm::RsaSha256,
        // RFC 8301 3.1: rsa-sha1 MUST NOT be considered valid.
        other => return Err(perm(&format!("unsupported algorithm {other:?}"))),
    };
    let b_text = strip_ws(tag(&tags, "b").unwrap_or(""));
    let b = b64_decode(&b_text).ok_or_else(|| perm("b= is not base64"))?;
    let bh = b64_decode(&strip_ws(tag(&tags, "bh").unwrap_or("")))
        .ok_or_else(|| perm("bh= is not base64"))?;
    let (header_canon, body_canon) = match tag(&tags, "c").unwrap_or("simple/simple") {
        "simple" | "simple/simple" => (Canon::Simple, Canon::Simple),
        "relaxed" | "relaxed/simple" => (Canon::Relaxed, Canon::Simple),
        "simple/relaxed" => (Canon::Simple, Canon::Relaxed),
        "relaxed/relaxed" => (Canon::Relaxed, Canon::Relaxed),
        other => return Err(perm(&format!("unknown canonicalization {other:?}"))),
    };
    let headers: Vec<String> = tag(&tags, "h")
        .unwrap_or("")
        .split(':')
        .map(|h| strip_ws(h).to_ascii_lowercase())
        .collect();
    if !headers.iter().any(|h| h == "from") {
        return Err(perm("h= does not include From"));
    }
    if let Some(i) = tag(&tags, "i") {
        // RFC 6376 3.5: i= must be in d= or a subdomain of it.
        let idom = i
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or("")
            .to_ascii_lowercase();
        if !(idom == domain || idom.ends_with(&format!(".{domain}"))) {
            return Err(perm("i= domain is not within d="));
        }
    }
    let num = |t: &str| -> Result<Option<u64>, (Status, String, String, String)> {
        match tag(&tags, t) {
            None => Ok(None),
            Some(v) => strip_ws(v)
                .parse::<u64>()
                .map(Some)
                .map_err(|_| perm(&format!("{t}= is not a number"))),
        }
    };
    let limit = num("l")?;
    let expires = num("x")?;
    if domain.is_empty() || selector.is_empty() {
        return Err(perm("empty d= or s="));
    }
    Ok(Sig {
        algorithm,
        a_text,
        b_prefix: b_text.chars().take(8).collect(),
        b,
        bh,
        header_canon,
        body_canon,
        domain,
        selector,
        headers,
        limit,
        expires,
        field: field.clone(),
    })
}

/// Removes the value of the b= tag from a DKIM-Signature field value,
/// keeping everything else byte for byte (RFC 6376 3.7).
fn empty_b_tag(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    let mut at_tag_start = true;
    while i < value.len() {
        let b = value[i];
        if at_tag_start && !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            at_tag_start = false;
            // Is this tag named exactly "b" (allowing FWS before '=')?
            let mut j = i + 1;
            if b == b'b' {
                while j < value.len() && matches!(value[j], b' ' | b'\t' | b'\r' | b'\n') {
                    j += 1;
                }
                if j < value.len() && value[j] == b'=' {
                    out.extend_from_slice(&value[i..=j]);
                    // Skip the value up to the next ';'.
                    let mut k = j + 1;
                    while k < value.len() && value[k] != b';' {
                        k += 1;
                    }
                    i = k;
                    continue;
                }
            }
        }
        if b == b';' {
            at_tag_start = true;
        }
        out.push(b);
        i += 1;
    }
    out
}

/// Verifies the DKIM signatures of a message streamed through
/// [`Verifier::update`].
pub struct Verifier {
    split: Splitter,
    fields: Vec<Field>,
    sigs: Vec<Result<Sig, Outcome>>,
    /// One body hasher per distinct (canonicalization, l=) pair.
    bodies: Vec<((Canon, Option<u64>), BodyHasher)>,
    now: u64,
}

impl Verifier {
    /// `now` (seconds since the epoch) decides `x=` expiry.
    pub fn new(now: u64) -> Verifier {
        Verifier {
            split: Splitter::new(),
            fields: Vec::new(),
            sigs: Vec::new(),
            bodies: Vec::new(),
            now,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), DkimError> {
        let (body, header_done) = self.split.update(chunk)?;
        if header_done {
            self.start_body();
        }
        for (_, h) in &mut self.bodies {
            h.update(body);
        }
        Ok(())
    }

    fn start_body(&mut self) {
        self.fields = self.split.fields();
        for f in self
            .fields
            .iter()
            .filter(|f| f.name.trim().eq_ignore_ascii_case("dkim-signature"))
            .take(MAX_SIGNATURES)
        {
            let parsed = parse_sig(f).map_err(|(status, domain, selector, algorithm)| Outcome {
                status,
                domain,
                selector,
                algorithm,
                b_prefix: String::new(),
            });
            if let Ok(s) = &parsed {
                let k = (s.body_canon, s.limit);
                if !self.bodies.iter().any(|(kk, _)| *kk == k) {
                    self.bodies.push((k, BodyHasher::new(k.0, k.1)));
                }
            }
            self.sigs.push(parsed);
        }
    }

    /// The value of the first header field called `name` (for the From
    /// domain DMARC needs), once the header block has been seen.
    pub fn header(&self, name: &str) -> Option<String> {
        let parsed;
        let fields = if self.split.in_body {
            &self.fields
        } else {
            parsed = self.split.fields();
            &parsed
        };
        fields
            .iter()
            .find(|f| f.name.trim().eq_ignore_ascii_case(name))
            .map(Field::value_str)
    }

    /// Ends the message; each signature now waits for its key.
    pub fn finish(mut self) -> Vec<Pending> {
        if !self.split.in_body {
            // A message that is all header (no empty line).
            self.start_body();
        }
        let mut hashes = Vec::new();
        for (k, h) in self.bodies {
            hashes.push((k, h.finish()));
        }
        let now = self.now;
        let fields = self.fields;
        self.sigs
            .into_iter()
            .map(|s| match s {
                Err(o) => Pending { state: Err(o) },
                Ok(sig) => {
                    let outcome = |status| Outcome {
                        status,
                        domain: sig.domain.clone(),
                        selector: sig.selector.clone(),
                        algorithm: sig.a_text.clone(),
                        b_prefix: sig.b_prefix.clone(),
                    };
                    if sig.expires.is_some_and(|x| x < now) {
                        return Pending {
                            state: Err(outcome(Status::PermError("signature expired".into()))),
                        };
                    }
                    let bh = hashes
                        .iter()
                        .find(|(k, _)| *k == (sig.body_canon, sig.limit))
                        .map(|(_, h)| h.as_slice())
                        .unwrap_or(&[]);
                    if bh != sig.bh.as_slice() {
                        return Pending {
                            state: Err(outcome(Status::Fail("body hash did not verify".into()))),
                        };
                    }
                    let mut data = Vec::new();
                    for f in select_headers(&fields, &sig.headers) {
                        data.extend_from_slice(&f.canonical(sig.header_canon));
                    }
                    let own = Field {
                        name: sig.field.name.clone(),
                        value: empty_b_tag(&sig.field.value),
                    };
                    let mut own = own.canonical(sig.header_canon);
                    own.truncate(own.len() - 2);
                    data.extend_from_slice(&own);
                    Pending {
                        state: Ok((sig, data)),
                    }
                }
            })
            .collect()
    }
}

/// A signature whose hashes are computed and that needs its public key.
pub struct Pending {
    state: Result<(Sig, Vec<u8>), Outcome>,
}

/// Why no key record could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN or no TXT record: a permanent failure.
    NotFound,
    /// Timeout or SERVFAIL: try again later.
    Temporary(String),
}

impl Pending {
    /// The TXT record name to look up, or `None` if the outcome is already
    /// decided (syntax error, body hash mismatch).
    pub fn key_name(&self) -> Option<String> {
        match &self.state {
            Ok((s, _)) => Some(format!("{}._domainkey.{}", s.selector, s.domain)),
            Err(_) => None,
        }
    }

    /// Decides the outcome given the TXT lookup result for [`Self::key_name`]
    /// (each string one TXT record, its character-strings concatenated).
    pub fn verify(self, txt: Result<Vec<String>, LookupError>) -> Outcome {
        let (sig, data) = match self.state {
            Err(o) => return o,
            Ok(x) => x,
        };
        let outcome = |status| Outcome {
            status,
            domain: sig.domain.clone(),
            selector: sig.selector.clone(),
            algorithm: sig.a_text.clone(),
            b_prefix: sig.b_prefix.clone(),
        };
        let records = match txt {
            Ok(r) => r,
            Err(LookupError::NotFound) => {
                return outcome(Status::PermError("no key record".into()))
            }
            Err(LookupError::Temporary(m)) => {
                return outcome(Status::TempError(format!("key lookup failed: {m}")))
            }
        };
        // RFC 6376 6.1.2: several records is ambiguous; use the first that parses.
        let key = records.iter().find_map(|r| parse_key_record(r).ok());
        let Some(key) = key else {
            let why = records
                .first()
                .map(|r| parse_key_record(r).err().unwrap_or_default())
                .unwrap_or_else(|| "no key record".into());
            return outcome(Status::PermError(why));
        };
        if key.key_type != sig.algorithm.key_type() {
            return outcome(Status::PermError("key type does not match a=".into()));
        }
        if key.public.is_empty() {
            return outcome(Status::PermError("key revoked".into()));
        }
        let ok = match sig.algorithm {
            Algorithm::Ed25519Sha256 => {
                let h = ring::digest::digest(&ring::digest::SHA256, &data);
                signature::UnparsedPublicKey::new(&signature::ED25519, &key.public)
                    .verify(h.as_ref(), &sig.b)
                    .is_ok()
            }
            Algorithm::RsaSha256 => {
                let Some(pkcs1) = rsa_pkcs1_from_spki(&key.public) else {
                    return outcome(Status::PermError("RSA key does not parse".into()));
                };
                signature::UnparsedPublicKey::new(
                    &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                    pkcs1,
                )
                .verify(&data, &sig.b)
                .is_ok()
            }
        };
        outcome(if ok {
            Status::Pass
        } else {
            Status::Fail("signature did not verify".into())
        })
    }
}

/// A parsed DKIM key record (RFC 6376 3.6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_type: String,
    /// Decoded `p=`; empty means revoked.
    pub public: Vec<u8>,
}

pub fn parse_key_record(txt: &str) -> Result<KeyRecord, String> {
    let tags = parse_tags(txt)?;
    if let Some(v) = tag(&tags, "v") {
        if v != "DKIM1" {
            return Err("v= is not DKIM1".into());
        }
    }
    if let Some(h) = tag(&tags, "h") {
        if !h.split(':').any(|x| x.trim() == "sha256") {
            return Err("key does not allow sha256".into());
        }
    }
    let p = tag(&tags, "p").ok_or("key record has no p=")?;
    let public = b64_decode(&strip_ws(p)).ok_or("p= is not base64")?;
    Ok(KeyRecord {
        key_type: tag(&tags, "k").unwrap_or("rsa").to_string(),
        public,
    })
}

/// Convenience for tests and tools: verifies a whole message with a
/// synchronous lookup.
pub fn verify_message(
    msg: &[u8],
    now: u64,
    mut lookup: impl FnMut(&str) -> Result<Vec<String>, LookupError>,
) -> Result<Vec<Outcome>, DkimError> {
    let mut v = Verifier::new(now);
    v.update(msg)?;
    Ok(v.finish()
        .into_iter()
        .map(|p| {
            let txt = match p.key_name() {
                Some(n) => lookup(&n),
                None => Err(LookupError::NotFound),
            };
            p.verify(txt)
        })
        .collect())
}

/// Signs a message stored mboxrd-quoted with LF line ends (a queue file),
/// if its From domain is one of `domains` or below one: the
/// `DKIM-Signature:` lines to send in front of it, with CRLF line ends.
/// `Ok(None)`: not our domain, no keys, or no From header. Blocking file
/// I/O: call it off the executor. The file streams through the hasher in
/// 16 KiB reads; only the header block is kept in memory.
pub fn sign_queued(
    path: &std::path::Path,
    keys: &[SigningKey],
    domains: &[String],
    now: u64,
) -> Result<Option<String>, DkimError> {
    if keys.is_empty() {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path)
        .map_err(|e| DkimError::Key(format!("cannot read {}: {e}", path.display())))?;
    let mut h = MessageHasher::new();
    let mut unquote = Unquoter::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(16 * 1024 + 64);
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)
            .map_err(|e| DkimError::Key(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        out.clear();
        unquote.feed(&buf[..n], &mut out);
        h.update(&out)?;
    }
    out.clear();
    unquote.finish(&mut out);
    h.update(&out)?;
    let (fields, bh) = h.finish();
    let Some(from) = fields
        .iter()
        .find(|f| f.name.trim().eq_ignore_ascii_case("from"))
        .and_then(|f| crate::trust::dmarc::from_domain(&f.value_str()))
    else {
        return Ok(None);
    };
    let Some(domain) = domains
        .iter()
        .find(|d| from == **d || from.ends_with(&format!(".{d}")))
    else {
        return Ok(None);
    };
    let mut out = String::new();
    for key in keys {
        out.push_str(&Signer::sign_one(domain, key, &fields, &bh, now)?);
    }
    Ok(Some(out))
}

/// Undoes mboxrd quoting (`>From ` -> `From `, `>>From ` -> `>From `) in
/// a stream, holding at most a short run of `>` at a line start; the same
/// rule as [`crate::store::mbox::unquote_line`] without needing whole lines.
#[derive(Default)]
struct Unquoter {
    /// Bytes at the start of the current line that may still be `>+From `.
    pending: Vec<u8>,
    mid_line: bool,
}

impl Unquoter {
    /// A run of `>` longer than this is no quoting we wrote: pass it on.
    const MAX_PENDING: usize = 1024;

    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.mid_line {
                out.push(b);
                self.mid_line = b != b'\n';
                continue;
            }
            self.pending.push(b);
            let quotes = self.pending.iter().take_while(|&&c| c == b'>').count();
            let rest = &self.pending[quotes..];
            let undecided = rest.len() < 5 && b"From ".starts_with(rest);
            if undecided && self.pending.len() < Self::MAX_PENDING {
                continue;
            }
            let quoted = quotes > 0 && rest == b"From ";
            out.extend_from_slice(if quoted {
                &self.pending[1..]
            } else {
                &self.pending
            });
            self.pending.clear();
            self.mid_line = b != b'\n';
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
    }
}

// ---------------------------------------------------------------------------
// Keys on disk

/// A fresh Ed25519 key as PKCS#8 PEM.
pub fn generate_ed25519() -> Result<String, DkimError> {
    let rng = ring::rand::SystemRandom::new();
    let doc = signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| DkimError::Key("cannot generate an Ed25519 key".into()))?;
    Ok(pem_encode("PRIVATE KEY", doc.as_ref()))
}

/// The exact command that writes a 2048-bit RSA key in PKCS#8 PEM to
/// `path` (ring signs with RSA but cannot generate RSA keys).
pub fn openssl_rsa_command(path: &std::path::Path) -> String {
    format!(
        "(umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {})",
        shell_quote(&path.display().to_string())
    )
}

/// Where the keys live: `<data_dir>/dkim/<selector>.pem`.
pub fn key_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("dkim")
}

/// Loads every `<selector>.pem` in `dir`, sorted by selector (Ed25519
/// first, then RSA). A missing directory means no keys; an unusable file
/// is an error naming it, because silently not signing would hurt.
pub fn load_keys(dir: &std::path::Path) -> Result<Vec<SigningKey>, DkimError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(DkimError::Key(format!(
                "cannot read {}: {e}",
                dir.display()
            )))
        }
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| DkimError::Key(format!("cannot read {}: {e}", dir.display())))?
            .path();
        let (Some(stem), Some("pem")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if !is_selector(stem) {
            return Err(DkimError::Key(format!(
                "{}: the file name must be a selector (letters, digits, '-')",
                path.display()
            )));
        }
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| DkimError::Key(format!("cannot read {}: {e}", path.display())))?;
        let key = SigningKey::from_pem(stem, &pem)
            .map_err(|e| DkimError::Key(format!("{}: {e}", path.display())))?;
        keys.push(key);
    }
    keys.sort_by(|a, b| {
        (a.algorithm() == Algorithm::RsaSha256, &a.selector)
            .cmp(&(b.algorithm() == Algorithm::RsaSha256, &b.selector))
    });
    Ok(keys)
}

/// A selector is a DNS label here (RFC 6376 3.1 allows dotted ones; we
/// keep it simple).
pub fn is_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
}

/// The DNS name of a key record.
pub fn record_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// A TXT value in zone-file syntax: quoted character-strings of at most
/// 255 bytes (RFC 1035 3.3.14), which DNS joins back together.
pub fn txt_strings(value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    if parts.len() == 1 {
        parts.join("")
    } else {
        format!("( {} )", parts.join(" "))
    }
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

// ---------------------------------------------------------------------------
// Small encodings: base64 (RFC 4648), PEM (RFC 7468), a little DER

use crate::util::base64::{decode_lenient as b64_decode, encode as b64_encode};

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b = b64_encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for c in b.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(c));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The first PEM block: its label and DER bytes.
pub fn pem_decode(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let (label, rest) = rest.split_once("-----")?;
    let end = rest.find("-----END ")?;
    Some((label.to_string(), b64_decode(&rest[..end])?))
}

fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    der_len(content.len(), &mut v);
    v.extend_from_slice(content);
    v
}

/// AlgorithmIdentifier { rsaEncryption, NULL }.
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Wraps a PKCS#1 RSAPublicKey into a SubjectPublicKeyInfo.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = RSA_ALG_ID.to_vec();
    inner.extend_from_slice(&der(0x03, &bits));
    der(0x30, &inner)
}

/// Reads one DER element: (tag, content, rest).
pub(crate) fn der_read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let l0 = *input.get(1)? as usize;
    let (len, hdr) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = len << 8 | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, input.get(hdr..end)?, input.get(end..)?))
}

/// The PKCS#1 RSAPublicKey inside a SubjectPublicKeyInfo; keys published
/// bare (as some old setups do) are passed through.
fn rsa_pkcs1_from_spki(key: &[u8]) -> Option<&[u8]> {
    let (tag, seq, _) = der_read(key)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, alg, rest) = der_read(seq)?;
    if t1 == 0x02 {
        // Starts with INTEGER: already an RSAPublicKey.
        return Some(key);
    }
    if t1 != 0x30 || !alg.starts_with(&RSA_ALG_ID[2..13]) {
        return None;
    }
    let (t2, bits, _) = der_read(rest)?;
    if t2 != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    Some(&bits[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_canon(canon: Canon, input: &[u8]) -> Vec<u8> {
        // Canonical bytes, recovered by hashing prefixes is impractical;
        // instead compare hashes against the expected canonical text.
        let mut h = BodyHasher::new(canon, None);
        h.update(input);
        h.finish()
    }

    fn sha(data: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn rfc6376_3_4_5_canonicalization_examples() {
        // RFC 6376 3.4.5: the example message and its canonical forms.
        let headers = b"A: X\r\nB : Y\t\r\n\tZ  \r\n";
        let fields = parse_fields(headers);
        let relaxed: Vec<u8> = fields
            .iter()
            .flat_map(|f| f.canonical(Canon::Relaxed))
            .collect();
        assert_eq!(relaxed, b"a:X\r\nb:Y Z\r\n");
        let simple: Vec<u8> = fields
            .iter()
            .flat_map(|f| f.canonical(Canon::Simple))
            .collect();
        assert_eq!(simple, headers);
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(body_canon(Canon::Relaxed, body), sha(b" C\r\nD E\r\n"));
        assert_eq!(body_canon(Canon::Simple, body), sha(b" C \r\nD \t E\r\n"));
    }

    #[test]
    fn empty_bodies_and_missing_final_crlf() {
        // RFC 6376 3.4.3 / 3.4.4 (with errata 1384): simple empty = CRLF,
        // relaxed empty = nothing.
        assert_eq!(body_canon(Canon::Simple, b""), sha(b"\r\n"));
        assert_eq!(body_canon(Canon::Simple, b"\r\n\r\n"), sha(b"\r\n"));
        assert_eq!(body_canon(Canon::Relaxed, b""), sha(b""));
        assert_eq!(body_canon(Canon::Relaxed, b"\r\n \r\n"), sha(b""));
        assert_eq!(body_canon(Canon::Relaxed, b"abc"), sha(b"abc\r\n"));
        assert_eq!(body_canon(Canon::Simple, b"abc  "), sha(b"abc  \r\n"));
        // LF-only input (the mbox store) hashes like CRLF.
        assert_eq!(
            body_canon(Canon::Relaxed, b"a \n\nb\n\n"),
            sha(b"a\r\n\r\nb\r\n")
        );
    }

    #[test]
    fn body_hash_is_independent_of_chunking() {
        let body = b"Hello  \t world \r\n\r\n  indented\r\nbare\rcr\r\n\r\n\r\n";
        for canon in [Canon::Simple, Canon::Relaxed] {
            let whole = body_canon(canon, body);
            for split in 0..body.len() {
                let mut h = BodyHasher::new(canon, None);
                h.update(&body[..split]);
                h.update(&body[split..]);
                assert_eq!(h.finish(), whole, "split at {split}");
            }
        }
    }

    #[test]
    fn body_length_limit() {
        let mut h = BodyHasher::new(Canon::Relaxed, Some(5));
        h.update(b"abc\r\ndef\r\n");
        assert_eq!(h.finish(), sha(b"abc\r\n"));
    }

    #[test]
    fn splitter_finds_the_blank_line_across_chunks() {
        let msg = b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n";
        for split in 0..msg.len() {
            let mut s = Splitter::new();
            let mut body = Vec::new();
            body.extend_from_slice(s.update(&msg[..split]).unwrap().0);
            body.extend_from_slice(s.update(&msg[split..]).unwrap().0);
            assert_eq!(body, b"body\r\n", "split at {split}");
            assert_eq!(s.fields().len(), 2);
        }
        let mut s = Splitter::new();
        assert_eq!(s.update(b"\r\nonly body").unwrap().0, b"only body");
    }

    #[test]
    fn header_block_is_bounded() {
        let mut s = Splitter::new();
        let line = vec![b'x'; 1000];
        let mut res = Ok((&[][..], false));
        for _ in 0..(MAX_HEADER_BYTES / 1000 + 2) {
            res = s.update(&line);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res.unwrap_err(), DkimError::HeaderTooLarge);
    }

    #[test]
    fn base64_round_trip() {
        for n in 0..20 {
            let d: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(b64_decode(&b64_encode(&d)).unwrap(), d);
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert!(b64_decode("Zm9v!").is_none());
        assert!(b64_decode("Zm=9v").is_none());
    }

    #[test]
    fn empty_b_tag_keeps_everything_else() {
        assert_eq!(
            empty_b_tag(b" v=1; bh=abc; b=xy\r\n\t z; d=x"),
            b" v=1; bh=abc; b=; d=x"
        );
        assert_eq!(empty_b_tag(b"b=abc"), b"b=");
    }

    /// Found by fuzz/fuzz_targets/dkim.rs: the continuation lines of a
    /// line without a colon were folded into the field before it, so a
    /// message starting with one broke the DKIM-Signature we put on top.
    #[test]
    fn continuation_of_a_skipped_line_is_skipped() {
        let f = parse_fields(b"Subject: hi\r\nno colon here\r\n folded: x\r\nFrom: a@b.c\r\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].value, b" hi");
        assert_eq!(f[1].name, "From");
        let msg = b"garbage\n fold: x\nFrom: a@example.org\n\nbody\n";
        let (_, out, _) = sign_and_verify(msg, &generate_ed25519().unwrap());
        assert_eq!(out[0].status, Status::Pass, "{out:?}");
    }

    fn ed_key() -> SigningKey {
        SigningKey::from_pem("sel", &generate_ed25519().unwrap()).unwrap()
    }

    /// Signs `msg` with the key in `pem` (selector "sel", domain
    /// example.org) and verifies the result against the key's record.
    fn sign_and_verify(msg: &[u8], pem: &str) -> (Vec<u8>, Vec<Outcome>, String) {
        let mut h = MessageHasher::new();
        h.update(msg).unwrap();
        let (fields, bh) = h.finish();
        let key = SigningKey::from_pem("sel", pem).unwrap();
        let record = key.dns_record();
        let hdr = Signer {
            domain: "example.org".into(),
            keys: vec![key],
        }
        .sign(&fields, &bh, 1_700_000_000)
        .unwrap();
        let mut signed = hdr.into_bytes();
        signed.extend_from_slice(msg);
        let out = verify_message(&signed, 1_700_000_000, |name| {
            assert_eq!(name, "sel._domainkey.example.org");
            Ok(vec![record.clone()])
        })
        .unwrap();
        (signed, out, record)
    }

    #[test]
    fn ed25519_sign_then_verify_and_tamper() {
        let pem = generate_ed25519().unwrap();
        let key = SigningKey::from_pem("sel", &pem).unwrap();
        assert_eq!(key.public_key().len(), 32);
        let msg = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi  there\r\n\r\nHello\r\n\r\n";
        let (signed, out, _) = sign_and_verify(msg, &pem);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Pass, "{out:?}");
        assert_eq!(out[0].domain, "example.org");
        // Tampering with the body or a signed header fails.
        let text = String::from_utf8(signed).unwrap();
        for (from, to, why) in [
            ("Hello", "Hullo", "body hash"),
            ("Subject: hi", "Subject: ho", "signature"),
        ] {
            let bad = text.replace(from, to);
            let o = verify_message(bad.as_bytes(), 1_700_000_000, |_| {
                Ok(vec![key.dns_record()])
            })
            .unwrap();
            assert!(
                matches!(&o[0].status, Status::Fail(r) if r.contains(why)),
                "{o:?}"
            );
        }
        // Relaxed canonicalization survives whitespace changes and refolding.
        let ok = text.replace("Subject: hi  there", "Subject:  hi\r\n there ");
        let o =
            verify_message(ok.as_bytes(), 1_700_000_000, |_| Ok(vec![key.dns_record()])).unwrap();
        assert_eq!(o[0].status, Status::Pass, "{o:?}");
        // An added From header breaks it (over-signing).
        let bad = format!("From: mallory@evil.example\r\n{text}");
        let o = verify_message(bad.as_bytes(), 1_700_000_000, |_| {
            Ok(vec![key.dns_record()])
        })
        .unwrap();
        assert_eq!(o[0].status.name(), "fail");
        // Wrong key, missing key, revoked key, temporary failure.
        let other = ed_key();
        let o = verify_message(text.as_bytes(), 1_700_000_000, |_| {
            Ok(vec![other.dns_record()])
        })
        .unwrap();
        assert_eq!(o[0].status.name(), "fail");
        let o = verify_message(text.as_bytes(), 1_700_000_000, |_| {
            Err(LookupError::NotFound)
        })
        .unwrap();
        assert_eq!(o[0].status.name(), "permerror");
        let o = verify_message(text.as_bytes(), 1_700_000_000, |_| {
            Ok(vec!["v=DKIM1; k=ed25519; p=".into()])
        })
        .unwrap();
        assert_eq!(o[0].status, Status::PermError("key revoked".into()));
        let o = verify_message(text.as_bytes(), 1_700_000_000, |_| {
            Err(LookupError::Temporary("timeout".into()))
        })
        .unwrap();
        assert_eq!(o[0].status.name(), "temperror");
    }

    #[test]
    fn no_from_no_signature() {
        let key = ed_key();
        let signer = Signer {
            domain: "example.org".into(),
            keys: vec![key],
        };
        let fields = parse_fields(b"Subject: x\r\n");
        assert_eq!(signer.sign(&fields, &[0; 32], 0), Err(DkimError::NoFrom));
    }

    #[test]
    fn malformed_signatures_are_permerrors() {
        for sig in [
            "v=1; a=rsa-sha1; d=x.example; s=s; h=from; bh=AAAA; b=AAAA",
            "v=1; a=rsa-sha256; d=x.example; s=s; h=subject; bh=AAAA; b=AAAA",
            "v=1; a=rsa-sha256; d=x.example; s=s; bh=AAAA; b=AAAA",
            "v=2; a=rsa-sha256; d=x.example; s=s; h=from; bh=AAAA; b=AAAA",
            "v=1; a=rsa-sha256; d=x.example; s=s; h=from; bh=AAAA; b=AAAA; i=@y.example",
            "v=1; v=1; a=rsa-sha256; d=x.example; s=s; h=from; bh=AAAA; b=AAAA",
        ] {
            let msg = format!("DKIM-Signature: {sig}\r\nFrom: a@x.example\r\n\r\nhi\r\n");
            let o = verify_message(msg.as_bytes(), 0, |_| panic!("no lookup expected")).unwrap();
            assert_eq!(o[0].status.name(), "permerror", "{sig}: {o:?}");
        }
        let msg = "DKIM-Signature: v=1; a=ed25519-sha256; d=x.example; s=s; h=from; bh=AAAA; b=AAAA; x=5\r\nFrom: a@x.example\r\n\r\n";
        let o = verify_message(msg.as_bytes(), 10, |_| panic!()).unwrap();
        assert_eq!(o[0].status, Status::PermError("signature expired".into()));
    }

    fn rfc8463_zone(name: &str) -> Result<Vec<String>, LookupError> {
        let zone = include_str!("../../tests/data/rfc8463-a2.zone");
        let recs: Vec<String> = zone
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(" TXT "))
            .map(str::to_string)
            .collect();
        if recs.is_empty() {
            Err(LookupError::NotFound)
        } else {
            Ok(recs)
        }
    }

    #[test]
    fn rfc8463_appendix_a_verifies() {
        // Both signatures of RFC 8463 A.3 (Ed25519 and 1024-bit RSA) pass,
        // fed in one piece and byte by byte.
        let msg = include_bytes!("../../tests/data/rfc8463-a3.eml");
        let out = verify_message(msg, 1_600_000_000, rfc8463_zone).unwrap();
        assert_eq!(out.len(), 2);
        for o in &out {
            assert_eq!(o.status, Status::Pass, "{o:?}");
            assert_eq!(o.domain, "football.example.com");
        }
        assert_eq!(
            (out[0].algorithm.as_str(), out[1].algorithm.as_str()),
            ("ed25519-sha256", "rsa-sha256")
        );
        assert_eq!(out[0].b_prefix, "/gCrinpc");
        let mut v = Verifier::new(1_600_000_000);
        for b in msg.iter() {
            v.update(std::slice::from_ref(b)).unwrap();
        }
        for p in v.finish() {
            let name = p.key_name().unwrap();
            assert_eq!(p.verify(rfc8463_zone(&name)).status, Status::Pass);
        }
        // One changed body byte fails both.
        let bad = String::from_utf8_lossy(msg).replace("hungry", "Hungry");
        let out = verify_message(bad.as_bytes(), 1_600_000_000, rfc8463_zone).unwrap();
        assert!(out.iter().all(|o| o.status.name() == "fail"), "{out:?}");
    }

    #[test]
    fn rfc8463_private_key_reproduces_record_and_signature() {
        // A.1's private key gives A.2's public key, and (Ed25519 being
        // deterministic) re-signing A.3's header data gives A.3's b=.
        let key = SigningKey::from_pem(
            "brisbane",
            include_str!("../../tests/data/rfc8463-a1-ed25519.pem"),
        )
        .unwrap();
        assert_eq!(
            key.dns_record(),
            "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        let mut v = Verifier::new(0);
        v.update(include_bytes!("../../tests/data/rfc8463-a3.eml"))
            .unwrap();
        let pending = v.finish();
        let Ok((sig, data)) = &pending[0].state else {
            panic!("the Ed25519 signature should be pending")
        };
        assert_eq!(key.sign(data).unwrap(), sig.b);
    }

    #[test]
    fn unquoting_streams_like_unquote_line() {
        let text: &[u8] = b">From a\n>>From b\nFrom c\n>Fro\n>>>\n\n>From\n>From x";
        let want: Vec<u8> = text
            .split_inclusive(|&b| b == b'\n')
            .flat_map(|l| crate::store::mbox::unquote_line(l).to_vec())
            .collect();
        for chunk in 1..text.len() {
            let mut u = Unquoter::default();
            let mut out = Vec::new();
            for c in text.chunks(chunk) {
                u.feed(c, &mut out);
            }
            u.finish(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want),
                "chunk {chunk}"
            );
        }
        // A giant line holds no more than a short prefix in memory.
        let mut u = Unquoter::default();
        let mut out = Vec::new();
        u.feed(&vec![b'>'; 100_000], &mut out);
        assert!(
            u.pending.len() <= Unquoter::MAX_PENDING
                && out.len() >= 100_000 - Unquoter::MAX_PENDING
        );
    }

    #[test]
    fn queued_mboxrd_file_is_signed_as_sent() {
        // A queue file holds the message mboxrd-quoted with LF ends; what
        // goes out is unquoted with CRLF. The signature must fit the latter.
        let dir = std::env::temp_dir().join(format!("pimail-dkim-q-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.msg");
        std::fs::write(
            &path,
            "From: Al <al@lists.example.org>\nSubject: q\n\n>From here\n>>From there\nend  \n",
        )
        .unwrap();
        let pem = generate_ed25519().unwrap();
        let keys = vec![SigningKey::from_pem("q1", &pem).unwrap()];
        let record = keys[0].dns_record();
        let domains = vec!["example.net".to_string(), "example.org".to_string()];
        let hdr = sign_queued(&path, &keys, &domains, 1_700_000_000)
            .unwrap()
            .unwrap();
        assert!(hdr.contains("d=example.org;"), "{hdr}");
        let sent = format!("{hdr}From: Al <al@lists.example.org>\r\nSubject: q\r\n\r\nFrom here\r\n>From there\r\nend  \r\n");
        let o = verify_message(sent.as_bytes(), 1_700_000_000, |n| {
            assert_eq!(n, "q1._domainkey.example.org");
            Ok(vec![record.clone()])
        })
        .unwrap();
        assert_eq!(o[0].status, Status::Pass, "{o:?}");
        // Not one of our domains, or no keys: no signature.
        std::fs::write(&path, "From: x@example.com\n\nhi\n").unwrap();
        assert_eq!(sign_queued(&path, &keys, &domains, 0).unwrap(), None);
        assert_eq!(sign_queued(&path, &[], &domains, 0).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rsa_spki_round_trip() {
        let inner = der(0x30, &[0x02, 0x01, 0x05, 0x02, 0x01, 0x03]);
        let spki = rsa_spki(&inner);
        assert_eq!(rsa_pkcs1_from_spki(&spki), Some(&inner[..]));
        assert_eq!(rsa_pkcs1_from_spki(&inner), Some(&inner[..]));
        assert_eq!(rsa_pkcs1_from_spki(b"\x04\x00"), None);
    }
}
