//! Configuration: the TOML file of SPEC "Configuration", parsed into a
//! validated [`Config`], or the embedded try-it default when no file exists.
//!
//! Parse, don't validate: every later module sees typed values (socket
//! addresses, byte counts, durations), never raw strings. Every error names
//! the file, the line and the key, because that is what a person needs to fix
//! it (`/etc/pimail/pimail.toml:12: limits.max_message_size: ...`).

pub mod cli;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration came from; shown by `check-config` and at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub hostname: String,
    /// Lower-case domain names whose mail is local.
    pub domains: Vec<String>,
    pub data_dir: PathBuf,
    pub log_level: log::LevelFilter,
    pub user: User,
    pub listen: Listen,
    pub tls: Option<Tls>,
    pub limits: Limits,
    pub outbound: Outbound,
    pub inbound: Inbound,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// PHC string (`$argon2id$...`). Empty only for the embedded default
    /// before its first start generated one.
    pub password_hash: String,
    /// Lower-case local parts; `*` is kept out of here and sets `catch_all`.
    pub addresses: Vec<String>,
    pub catch_all: bool,
    pub mbox: PathBuf,
    /// Other folders (IMAP), one mbox file each; `Junk` among them.
    pub folders: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct Listen {
    pub smtp: Vec<SocketAddr>,
    pub submission: Vec<SocketAddr>,
    pub submissions: Vec<SocketAddr>,
    pub pop3: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    /// IMAP with STARTTLS (143) and implicit TLS (993, RFC 8314).
    pub imap: Vec<SocketAddr>,
    pub imaps: Vec<SocketAddr>,
    /// Listeners (each also in one of the lists above) whose connections
    /// start with a PROXY protocol header (v1 or v2) from a proxy on the
    /// same host or network, carrying the client's real address.
    pub proxy_protocol: Vec<SocketAddr>,
    /// The local submission socket any local user's `pimail sendmail`
    /// hands mail to (`send::submit`); `None`: off (`local_submit = ""`,
    /// and the try-it default, whose own user queues directly).
    pub local_submit: Option<PathBuf>,
}

/// Where the local submission socket is unless `[listen] local_submit`
/// says otherwise (systemd's `RuntimeDirectory=pimail` makes /run/pimail).
pub const DEFAULT_LOCAL_SUBMIT: &str = "/run/pimail/submit.sock";

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Found in certbot's directory, not named in the file (said at start).
    pub from_certbot: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Port 25 connections at once (see `net::listen` for the budgets).
    pub max_connections: usize,
    /// Connections at once for each of submission, POP3 and IMAP, apart
    /// from port 25's budget so that a flood there cannot lock the user out.
    pub max_user_connections: usize,
    /// Per service and per client network (IPv4 address or IPv6 /64).
    pub max_connections_per_ip: usize,
    /// RFC 5321 4.5.3.2.7: at least 5 minutes for the server to await a
    /// command. A deadline for the whole command line, not per read.
    pub command_timeout: Duration,
    /// A deadline for a whole DATA block, from `354` to the final dot.
    pub data_timeout: Duration,
    /// The most any one session may last, however busy it is.
    pub session_timeout: Duration,
    /// Bad commands tolerated per session before `421` and disconnect.
    pub max_errors: u32,
}

#[derive(Debug, Clone)]
pub struct Outbound {
    pub relay: Option<String>,
    pub relay_user: Option<String>,
    pub relay_password_file: Option<PathBuf>,
    pub dns: Vec<SocketAddr>,
    pub retry: Vec<Duration>,
    pub bounce_after: Duration,
    /// Send an RFC 3464 "delayed" notice once a message has waited this
    /// long (Postfix's `delay_warning_time`); `None` (`"0s"`): never.
    pub warn_after: Option<Duration>,
    pub mx_port: u16,
    /// Which address families direct delivery uses (docs/outbound.md).
    pub ip_family: IpFamily,
    /// In `auto`: how often the source addresses' FCrDNS is checked again.
    pub ip_family_recheck: Duration,
    /// With a relay: deliver directly, and through the relay only while
    /// port 25 seems blocked.
    pub relay_fallback: bool,
    /// While on the relay: how often the direct route is probed.
    pub relay_probe: Duration,
    /// How long connecting to an MX (or the relay) may take.
    pub connect_timeout: Duration,
    /// Honour MTA-STS policies (RFC 8461) of recipient domains.
    pub mta_sts: bool,
}

/// `outbound.ip_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4 and IPv6, leaving out a family whose source address has no
    /// forward-confirmed reverse DNS.
    Auto,
    V4,
    V6,
    Both,
}

impl IpFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::Auto => "auto",
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
            IpFamily::Both => "both",
        }
    }
}

/// `[inbound]`: what port 25 checks on received mail (see
/// docs/deliverability.md and docs/spam.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Check SPF, DKIM and DMARC and add an `Authentication-Results:`
    /// header (RFC 8601) to each message received on port 25.
    pub auth_checks: bool,
    /// Refuse (`550 5.7.1`) messages failing DMARC for a domain whose
    /// policy is `p=reject`. Off by default: mark only.
    pub dmarc_reject: bool,
    /// How long port 25 waits before its greeting; a client that talks
    /// first is refused (postscreen's pregreet test). `ZERO`: off.
    pub pregreet: Duration,
    /// DNS blocklist zones (RFC 5782), e.g. `zen.spamhaus.org`.
    pub dnsbl: Vec<String>,
    /// Greylist clients that fail the cheap trust signals.
    pub greylist: bool,
    pub greylist_delay: Duration,
    /// Clients that skip pregreet, DNSBL and greylisting.
    pub trusted: Vec<Cidr>,
    /// `[[inbound.rule]]`: header rules, in file order.
    pub rules: Vec<HeaderRule>,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            auth_checks: true,
            dmarc_reject: false,
            pregreet: Duration::from_millis(DEFAULT_PREGREET_MS),
            dnsbl: vec!["zen.spamhaus.org".into()],
            greylist: true,
            greylist_delay: Duration::from_secs(300),
            trusted: default_trusted(),
            rules: Vec::new(),
        }
    }
}

/// The default pregreet wait: long enough to catch bots that talk at
/// once (most do within 100 ms), short enough that no real sender minds.
pub const DEFAULT_PREGREET_MS: u64 = 300;

fn default_trusted() -> Vec<Cidr> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| Cidr::parse(s).ok())
        .collect()
}

/// An address block such as `192.0.2.0/24` or `2001:db8::/32` (a bare
/// address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        let bad = || {
            format!("invalid address block {s:?}: expected e.g. \"192.0.2.0/24\" or \"::1/128\"")
        };
        let (a, len) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (t, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Cidr { addr, len })
    }

    /// Is `ip` in this block? IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (ip, self.addr) {
            (IpAddr::V4(a), IpAddr::V4(n)) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(a) & m == u32::from(n) & m
            }
            (IpAddr::V6(a), IpAddr::V6(n)) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(a) & m == u128::from(n) & m
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One `[[inbound.rule]]`: a header field, what to look for in its value
/// (case-insensitive), and what to do on a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    /// Lower-case field name, e.g. `subject`.
    pub header: String,
    pub matcher: Matcher,
    pub action: RuleAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// A substring.
    Contains(String),
    /// A glob over the whole value: `*` any run, `?` one character.
    Pattern(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Deliver to the Junk folder with `X-Spam-Reason:`.
    Junk,
    /// Refuse after DATA with `550 5.7.1`.
    Reject,
}

/// A configuration error with the place to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: {}: {}", self.file, self.key, self.message),
            (l, true) => write!(f, "{}:{}: {}", self.file, l, self.message),
            (l, false) => write!(f, "{}:{}: {}: {}", self.file, l, self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The default path when neither `--config` nor `$PIMAIL_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/pimail/pimail.toml";

/// Which file to read: `--config`, else `$PIMAIL_CONFIG`, else the default
/// path. `None` means "no file: use the embedded default" — only allowed when
/// nothing was named explicitly (a named file that is missing is an error).
pub fn locate(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PIMAIL_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // Only a file that is not there means "try-it default". One that is
    // there but unreadable (INSTALL's /etc/pimail is 0750 root:pimail, so
    // an ordinary user's `stat` fails with EACCES) is the real config, and
    // reading it must fail with an error naming it; falling back would
    // queue mail in ~/pimail-data, where nothing ever delivers it.
    let default = PathBuf::from(DEFAULT_PATH);
    match std::fs::metadata(&default) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        _ => Some(default),
    }
}

/// Loads the file at `path`, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        None => Ok(embedded_default()),
        Some(p) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: name.clone(),
                line: 0,
                key: String::new(),
                message: if e.kind() == std::io::ErrorKind::PermissionDenied {
                    format!(
                        "cannot read: {e}; it is the server's config (kept 0640 root:pimail): \
                         run this as root or the pimail user (e.g. `sudo -u pimail pimail ...`)"
                    )
                } else {
                    format!("cannot read: {e}")
                },
            })?;
            parse(&text, &name, p.parent().unwrap_or(Path::new(".")))
        }
    }
}

/// Every error of the file at `path`, for `check-config` (the server
/// stops at the first). After each error its line is blanked and the text
/// parsed again, so independent mistakes all show in one run; it stops
/// where blanking cannot help (an error without a line, a value spread
/// over several lines, a required key that is then missing).
pub fn load_all_errors(path: &Path) -> Vec<ConfigError> {
    let name = path.display().to_string();
    let Ok(mut text) = std::fs::read_to_string(path) else {
        return load(Some(path)).err().into_iter().collect();
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut errors: Vec<ConfigError> = Vec::new();
    for _ in 0..50 {
        let e = match parse(&text, &name, base) {
            Ok(_) => break,
            Err(e) => e,
        };
        // The required key we blanked is now "missing": not a new error.
        if e.message.starts_with("missing field") && errors.iter().any(|p| p.key == e.key) {
            break;
        }
        let line = e.line;
        let single = text.lines().nth(line.wrapping_sub(1)).is_some_and(|l| {
            let l = l.trim();
            l.contains('=') && !l.starts_with('[') && {
                let v = l.split_once('=').map(|x| x.1.trim()).unwrap_or("");
                (!v.starts_with('[') || v.ends_with(']'))
                    && !v.starts_with("\"\"\"")
                    && !v.starts_with("'''")
            }
        });
        let repeat = errors.iter().any(|p| p.line == line && p.key == e.key);
        if !repeat {
            errors.push(e);
        }
        if line == 0 || !single || repeat {
            break;
        }
        text = text
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == line { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
    }
    errors
}

/// An error about `key` of the config `source` came from, with the line
/// where the file sets it (for checks made after parsing, such as the
/// `[tls]` files).
pub fn key_error(source: &Source, key: &str, message: String) -> ConfigError {
    let (file, line) = match source {
        Source::File(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p)
                .map(|t| line_of_key(&t, key))
                .unwrap_or(0),
        ),
        Source::Embedded => ("embedded try-it default".to_string(), 0),
    };
    ConfigError {
        file,
        line,
        key: key.to_string(),
        message,
    }
}

/// Settings that parse but will not do what the person wants: printed by
/// `check-config` as warnings.
pub fn warnings(config: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    if config.tls.is_none() {
        for (key, addrs, what) in [
            (
                "listen.submission",
                &config.listen.submission,
                "mail clients there are refused AUTH (passwords only over TLS)",
            ),
            (
                "listen.pop3",
                &config.listen.pop3,
                "mail clients there are refused login (passwords only over TLS)",
            ),
            (
                "listen.imap",
                &config.listen.imap,
                "mail clients there are refused login (passwords only over TLS)",
            ),
        ] {
            for a in addrs.iter().filter(|a| !a.ip().is_loopback()) {
                out.push(key_error(
                    &config.source,
                    key,
                    format!("{a} is reachable from other machines but there is no [tls]: {what}; add [tls] cert and key"),
                ));
            }
        }
    }
    if !ipv6_available() {
        let l = &config.listen;
        for (key, addrs) in [
            ("listen.smtp", &l.smtp),
            ("listen.submission", &l.submission),
            ("listen.submissions", &l.submissions),
            ("listen.pop3", &l.pop3),
            ("listen.pop3s", &l.pop3s),
            ("listen.imap", &l.imap),
            ("listen.imaps", &l.imaps),
        ] {
            for a in addrs.iter().filter(|a| a.is_ipv6()) {
                out.push(key_error(
                    &config.source,
                    key,
                    format!("{a}: IPv6 is off on this machine; the server skips this address (remove it, or turn IPv6 on)"),
                ));
            }
        }
    }
    out
}

/// Can this machine listen on IPv6 at all? (`ipv6.disable=1` on the
/// kernel command line removes the address family; a disabled stack has
/// no `::1`.)
pub fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Where certbot keeps its certificates; `PIMAIL_LETSENCRYPT_DIR`
/// overrides it (tests).
pub fn letsencrypt_dir() -> PathBuf {
    std::env::var_os("PIMAIL_LETSENCRYPT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/letsencrypt"))
}

/// With no `[tls]` section, certbot's files for the host name are used
/// when they exist: `certbot certonly -d <hostname>` is then all it takes.
/// Existing but unreadable files (certbot keeps keys root-only) are still
/// taken, so that the start fails naming them instead of silently running
/// without TLS.
fn certbot_tls(hostname: &str) -> Option<Tls> {
    let live = letsencrypt_dir().join("live").join(hostname);
    let (cert, key) = (live.join("fullchain.pem"), live.join("privkey.pem"));
    (cert.exists() && key.exists()).then_some(Tls {
        cert,
        key,
        from_certbot: true,
    })
}

/// The try-it setup of SPEC "Command line": loopback, high ports, `./pimail-data`.
pub fn embedded_default() -> Config {
    let data_dir = PathBuf::from("./pimail-data");
    let name = login_name();
    Config {
        source: Source::Embedded,
        hostname: "localhost".into(),
        domains: vec!["localhost".into()],
        log_level: log::LevelFilter::Info,
        user: User {
            addresses: vec![name.to_ascii_lowercase(), "postmaster".into()],
            name,
            password_hash: String::new(),
            catch_all: false,
            mbox: data_dir.join("mbox"),
            folders: data_dir.join("folders"),
        },
        data_dir,
        listen: Listen {
            smtp: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            submission: vec![SocketAddr::from(([127, 0, 0, 1], 2587))],
            submissions: vec![],
            pop3: vec![SocketAddr::from(([127, 0, 0, 1], 1110))],
            pop3s: vec![],
            imap: vec![SocketAddr::from(([127, 0, 0, 1], 1143))],
            imaps: vec![],
            proxy_protocol: vec![],
            local_submit: None,
        },
        tls: None,
        limits: Limits::default(),
        outbound: Outbound::default(),
        // The try-it setup only hears loopback: SPF and DMARC of local
        // test mail mean nothing, and an offline laptop would wait on DNS.
        inbound: Inbound {
            auth_checks: false,
            ..Inbound::default()
        },
    }
}

/// The login name of the user running pimail (for the embedded default).
fn login_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var) {
            if is_login_name(&v) {
                return v;
            }
        }
    }
    // No $USER (cron, CI, containers): look our uid up in /etc/passwd.
    use std::os::unix::fs::MetadataExt;
    if let (Ok(meta), Ok(passwd)) = (
        std::fs::metadata("/proc/self"),
        std::fs::read_to_string("/etc/passwd"),
    ) {
        let uid = meta.uid().to_string();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 2 && f[2] == uid && is_login_name(f[0]) {
                return f[0].to_string();
            }
        }
    }
    "pimail".into()
}

fn is_login_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 512,
            max_user_connections: 64,
            max_connections_per_ip: 8,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(3600),
            max_errors: 10,
        }
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            relay: None,
            relay_user: None,
            relay_password_file: None,
            dns: vec![],
            retry: ["5m", "15m", "30m", "1h", "2h", "4h"]
                .iter()
                .filter_map(|s| parse_duration(s).ok())
                .collect(),
            bounce_after: Duration::from_secs(5 * 86400),
            warn_after: Some(Duration::from_secs(4 * 3600)),
            mx_port: 25,
            ip_family: IpFamily::Auto,
            ip_family_recheck: Duration::from_secs(600),
            relay_fallback: false,
            relay_probe: Duration::from_secs(1800),
            connect_timeout: Duration::from_secs(30),
            mta_sts: true,
        }
    }
}

// ---- raw TOML shape -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: String,
    domains: Vec<String>,
    data_dir: PathBuf,
    #[serde(default, deserialize_with = "de_level")]
    log_level: Option<log::LevelFilter>,
    user: RawUser,
    #[serde(default)]
    listen: RawListen,
    tls: Option<RawTls>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    outbound: RawOutbound,
    #[serde(default)]
    inbound: RawInbound,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    auth_checks: Option<bool>,
    dmarc_reject: Option<bool>,
    #[serde(default, deserialize_with = "de_duration_or_off_ms")]
    pregreet: Option<Duration>,
    dnsbl: Option<Vec<String>>,
    greylist: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    greylist_delay: Option<Duration>,
    #[serde(default, deserialize_with = "de_cidrs")]
    trusted: Option<Vec<Cidr>>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    header: String,
    contains: Option<String>,
    pattern: Option<String>,
    action: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: String,
    addresses: Vec<String>,
    mbox: Option<PathBuf>,
    folders: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default, deserialize_with = "de_addrs")]
    smtp: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_addrs")]
    submission: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_addrs")]
    submissions: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_addrs")]
    pop3: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_addrs")]
    pop3s: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_addrs")]
    imap: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_addrs")]
    imaps: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_addrs")]
    proxy_protocol: Vec<SocketAddr>,
    local_submit: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default, deserialize_with = "de_size")]
    max_message_size: Option<u64>,
    #[serde(default, deserialize_with = "de_positive")]
    max_recipients: Option<usize>,
    #[serde(default, deserialize_with = "de_positive")]
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "de_positive")]
    max_user_connections: Option<usize>,
    #[serde(default, deserialize_with = "de_positive")]
    max_connections_per_ip: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    command_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    data_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    session_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_positive")]
    max_errors: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    #[serde(default, deserialize_with = "de_hostport")]
    relay: Option<String>,
    relay_user: Option<String>,
    relay_password_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_addrs")]
    dns: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "de_durations")]
    retry: Option<Vec<Duration>>,
    #[serde(default, deserialize_with = "de_duration")]
    bounce_after: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration_or_off")]
    warn_after: Option<Duration>,
    mx_port: Option<u16>,
    #[serde(default, deserialize_with = "de_family")]
    ip_family: Option<IpFamily>,
    #[serde(default, deserialize_with = "de_duration")]
    ip_family_recheck: Option<Duration>,
    relay_fallback: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    relay_probe: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    connect_timeout: Option<Duration>,
    mta_sts: Option<bool>,
}

// ---- value parsers (errors carry the TOML span through serde) --------------

/// `"25M"` -> 26214400. Plain numbers are bytes; K/M/G are powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    // `25MB` and `25MiB` mean `25M` too (people copy sizes from other
    // servers' configs); every suffix is a power of 1024, as documented.
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| {
            t.strip_suffix('B')
                .filter(|r| r.ends_with(|c: char| c.is_ascii_alphabetic()))
        })
        .or_else(|| {
            t.strip_suffix('b')
                .filter(|r| r.ends_with(|c: char| c.is_ascii_alphabetic()))
        })
        .unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("invalid size {s:?}: suffix must be K, M or G (KB/KiB, MB/MiB, GB/GiB also work)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional K, M or G suffix")
    })?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("invalid size {s:?}: must be greater than 0 and fit in 64 bits"))
}

/// `"90s"`, `"5m"`, `"1h"`, `"5d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("invalid duration {s:?}: expected a number followed by s, m, h or d");
    let unit = t.chars().last().ok_or_else(bad)?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].trim().parse().map_err(|_| bad())?;
    n.checked_mul(secs)
        .filter(|&v| v > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("invalid duration {s:?}: must be greater than 0"))
}

/// `"0.0.0.0:25"`, `"[::]:25"`: literal addresses only, so that a config
/// never depends on DNS at start.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid address {s:?}: expected IP:PORT such as \"0.0.0.0:25\" or \"[::]:25\"")
    })
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SizeValue {
        Int(u64),
        Str(String),
    }
    match SizeValue::deserialize(d)? {
        SizeValue::Int(0) => Err(de::Error::custom("size must be greater than 0")),
        SizeValue::Int(n) => Ok(Some(n)),
        SizeValue::Str(s) => parse_size(&s).map(Some).map_err(de::Error::custom),
    }
}

fn de_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = i64::deserialize(d)?;
    if n <= 0 {
        return Err(de::Error::custom(format!(
            "must be a positive number, not {n}"
        )));
    }
    usize::try_from(n).map(Some).map_err(de::Error::custom)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map(Some).map_err(de::Error::custom)
}

/// A duration, or `"0"`/`"0s"`/`"off"` for never (`Duration::ZERO`).
fn de_family<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpFamily>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(Some(match s.as_str() {
        "auto" => IpFamily::Auto,
        "ipv4" => IpFamily::V4,
        "ipv6" => IpFamily::V6,
        "both" => IpFamily::Both,
        _ => {
            return Err(de::Error::custom(format!(
                "invalid ip_family {s:?}: expected \"auto\", \"ipv4\", \"ipv6\" or \"both\""
            )))
        }
    }))
}

fn de_duration_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "0" | "0s" | "0m" | "0h" | "0d" | "off" => Ok(Some(Duration::ZERO)),
        _ => parse_duration(&s)
            .map(Some)
            .map_err(|e| de::Error::custom(format!("{e}, or \"off\""))),
    }
}

/// A duration in ms/s/m (`"300ms"`, `"1s"`), or `"0s"`/`"off"` for off.
fn de_duration_or_off_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<u64>()
            .map(|n| Some(Duration::from_millis(n)))
            .map_err(|_| {
                de::Error::custom(format!(
                    "invalid duration {s:?}: e.g. \"300ms\", \"1s\" or \"off\""
                ))
            });
    }
    de_duration_or_off(de::value::StrDeserializer::<D::Error>::new(t))
}

fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cidr>>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| Cidr::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(de::Error::custom)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::custom("retry needs at least one interval"));
    }
    v.iter()
        .map(|s| parse_duration(s))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(de::Error::custom)
}

fn de_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| parse_addr(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(de::Error::custom)
}

fn de_hostport<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(de::Error::custom(format!(
            "invalid relay {s:?}: expected HOST:PORT such as \"smtp.example.net:587\""
        )));
    }
    Ok(Some(s))
}

fn de_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<log::LevelFilter>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "invalid log level {s:?}: expected off, error, warn, info, debug or trace"
        ))
    })
}

// ---- from raw to validated --------------------------------------------------

/// Parses and validates config text. `name` is used in errors; relative
/// paths in the file are taken relative to `base` (the file's directory).
pub fn parse(text: &str, name: &str, base: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| serde_error(text, name, &e))?;
    let err = |key: &str, message: String| ConfigError {
        file: name.to_string(),
        line: line_of_key(text, key),
        key: key.to_string(),
        message,
    };
    let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

    let hostname = raw.hostname.trim().to_ascii_lowercase();
    if !is_domain(&hostname) {
        return Err(err(
            "hostname",
            format!("{:?} is not a valid host name", raw.hostname),
        ));
    }
    if raw.domains.is_empty() {
        return Err(err("domains", "at least one domain is needed".into()));
    }
    let mut domains = Vec::new();
    for d in &raw.domains {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_domain(&d) {
            return Err(err("domains", format!("{d:?} is not a valid domain name")));
        }
        domains.push(d);
    }

    let u = raw.user;
    if !is_login_name(&u.name) {
        return Err(err(
            "user.name",
            format!(
                "{:?}: use letters, digits, '.', '_' or '-' (at most 64)",
                u.name
            ),
        ));
    }
    if !u.password.starts_with("$argon2") {
        return Err(err(
            "user.password",
            "must be an argon2 hash as printed by `pimail passwd`, not a plain password".into(),
        ));
    }
    if let Err(e) = crate::user::auth::check_hash_syntax(&u.password) {
        return Err(err("user.password", e));
    }
    let mut addresses = Vec::new();
    let mut catch_all = false;
    for a in &u.addresses {
        let a = a.trim().to_ascii_lowercase();
        if a == "*" {
            catch_all = true;
        } else if a.is_empty() || a.contains(['@', '+', ' ', '"', '<', '>', '\\']) {
            return Err(err(
                "user.addresses",
                format!("{a:?}: give local parts only (\"alice\"), without '@' or '+'"),
            ));
        } else {
            addresses.push(a);
        }
    }
    if addresses.is_empty() && !catch_all {
        return Err(err(
            "user.addresses",
            "at least one address is needed".into(),
        ));
    }
    let data_dir = abs(raw.data_dir);
    let mbox = u.mbox.map(abs).unwrap_or_else(|| data_dir.join("mbox"));
    let folders = u
        .folders
        .map(abs)
        .unwrap_or_else(|| data_dir.join("folders"));

    let tls = raw
        .tls
        .map(|t| Tls {
            cert: abs(t.cert),
            key: abs(t.key),
            from_certbot: false,
        })
        .or_else(|| certbot_tls(&hostname));
    let listen = Listen {
        smtp: raw.listen.smtp,
        submission: raw.listen.submission,
        submissions: raw.listen.submissions,
        pop3: raw.listen.pop3,
        pop3s: raw.listen.pop3s,
        imap: raw.listen.imap,
        imaps: raw.listen.imaps,
        proxy_protocol: raw.listen.proxy_protocol,
        local_submit: match raw.listen.local_submit {
            None => Some(PathBuf::from(DEFAULT_LOCAL_SUBMIT)),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(abs(p)),
        },
    };
    for a in &listen.proxy_protocol {
        let all = [
            &listen.smtp,
            &listen.submission,
            &listen.submissions,
            &listen.pop3,
            &listen.pop3s,
            &listen.imap,
            &listen.imaps,
        ];
        if !all.iter().any(|l| l.contains(a)) {
            return Err(err(
                "listen.proxy_protocol",
                format!("{a} is not one of the addresses listed in [listen]"),
            ));
        }
    }
    if tls.is_none() {
        if !listen.submissions.is_empty() {
            return Err(err(
                "listen.submissions",
                "implicit TLS needs a [tls] section with cert and key".into(),
            ));
        }
        if !listen.pop3s.is_empty() {
            return Err(err(
                "listen.pop3s",
                "implicit TLS needs a [tls] section with cert and key".into(),
            ));
        }
        if !listen.imaps.is_empty() {
            return Err(err(
                "listen.imaps",
                "implicit TLS needs a [tls] section with cert and key".into(),
            ));
        }
    }

    let d = Limits::default();
    let l = raw.limits;
    let limits = Limits {
        max_message_size: l.max_message_size.unwrap_or(d.max_message_size),
        max_recipients: l.max_recipients.unwrap_or(d.max_recipients),
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        max_user_connections: l.max_user_connections.unwrap_or(d.max_user_connections),
        max_connections_per_ip: l.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        command_timeout: l.command_timeout.unwrap_or(d.command_timeout),
        data_timeout: l.data_timeout.unwrap_or(d.data_timeout),
        session_timeout: l.session_timeout.unwrap_or(d.session_timeout),
        max_errors: l
            .max_errors
            .map(|n| n.min(u32::MAX as usize) as u32)
            .unwrap_or(d.max_errors),
    };

    let d = Outbound::default();
    let o = raw.outbound;
    // A relay may authorise by our IP address (many ISPs' smarthosts do):
    // `relay` alone is valid, and AUTH is used only when both the user and
    // the password file are given.
    if o.relay.is_none() && (o.relay_user.is_some() || o.relay_password_file.is_some()) {
        return Err(err(
            "outbound.relay",
            "relay_user and relay_password_file need a relay = \"HOST:PORT\" to log in to".into(),
        ));
    }
    if o.relay_user.is_some() != o.relay_password_file.is_some() {
        return Err(err(
            "outbound.relay_user",
            "relay_user and relay_password_file go together: set both (AUTH) or neither (a relay that knows you by IP)".into(),
        ));
    }
    if o.mx_port == Some(0) {
        return Err(err(
            "outbound.mx_port",
            "must be a port number from 1 to 65535".into(),
        ));
    }
    if o.relay_fallback == Some(true) && o.relay.is_none() {
        return Err(err(
            "outbound.relay_fallback",
            "needs a relay to fall back to: set outbound.relay".into(),
        ));
    }
    let outbound = Outbound {
        ip_family: o.ip_family.unwrap_or(d.ip_family),
        ip_family_recheck: o.ip_family_recheck.unwrap_or(d.ip_family_recheck),
        relay_fallback: o.relay_fallback.unwrap_or(d.relay_fallback),
        relay_probe: o.relay_probe.unwrap_or(d.relay_probe),
        connect_timeout: o.connect_timeout.unwrap_or(d.connect_timeout),
        mta_sts: o.mta_sts.unwrap_or(d.mta_sts),
        relay: o.relay,
        relay_user: o.relay_user,
        relay_password_file: o.relay_password_file.map(abs),
        dns: o.dns,
        retry: o.retry.unwrap_or(d.retry),
        bounce_after: o.bounce_after.unwrap_or(d.bounce_after),
        warn_after: match o.warn_after {
            Some(w) if w.is_zero() => None,
            Some(w) => Some(w),
            None => d.warn_after,
        },
        mx_port: o.mx_port.unwrap_or(d.mx_port),
    };

    let inbound = inbound(raw.inbound, text, &err)?;
    Ok(Config {
        source: Source::File(PathBuf::from(name)),
        hostname,
        domains,
        data_dir,
        log_level: raw.log_level.unwrap_or(log::LevelFilter::Info),
        user: User {
            name: u.name,
            password_hash: u.password,
            addresses,
            catch_all,
            mbox,
            folders,
        },
        listen,
        tls,
        limits,
        outbound,
        inbound,
    })
}

/// `[inbound]`, validated: list zones are domain names, each rule has a
/// header, exactly one of `contains`/`pattern`, and a known action.
fn inbound(
    r: RawInbound,
    text: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Inbound, ConfigError> {
    let d = Inbound::default();
    let mut dnsbl = Vec::new();
    for z in r.dnsbl.unwrap_or(d.dnsbl) {
        let z = z.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_domain(&z) {
            return Err(err(
                "inbound.dnsbl",
                format!("{z:?} is not a DNS zone name"),
            ));
        }
        dnsbl.push(z);
    }
    let mut rules = Vec::new();
    for (i, raw) in r.rule.into_iter().enumerate() {
        // Rules are an array of tables: name the n-th `[[inbound.rule]]`.
        let rule_err = |m: String| {
            let mut e = err("inbound.rule", m);
            e.line = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.trim().starts_with("[[inbound.rule]]"))
                .nth(i)
                .map_or(0, |(n, _)| n + 1);
            e
        };
        let header = raw.header.trim().to_ascii_lowercase();
        if header.is_empty() || !header.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(rule_err(format!(
                "header {:?} is not a header field name",
                raw.header
            )));
        }
        let matcher = match (raw.contains, raw.pattern) {
            (Some(c), None) if !c.is_empty() => Matcher::Contains(c.to_lowercase()),
            (None, Some(p)) if !p.is_empty() => Matcher::Pattern(p.to_lowercase()),
            _ => {
                return Err(rule_err(
                    "give exactly one of `contains` or `pattern`, not empty".into(),
                ))
            }
        };
        let action = match raw.action.as_str() {
            "junk" => RuleAction::Junk,
            "reject" => RuleAction::Reject,
            a => {
                return Err(rule_err(format!(
                    "action {a:?}: use \"junk\" or \"reject\""
                )))
            }
        };
        rules.push(HeaderRule {
            header,
            matcher,
            action,
        });
    }
    Ok(Inbound {
        auth_checks: r.auth_checks.unwrap_or(d.auth_checks),
        dmarc_reject: r.dmarc_reject.unwrap_or(d.dmarc_reject),
        pregreet: r.pregreet.unwrap_or(d.pregreet),
        dnsbl,
        greylist: r.greylist.unwrap_or(d.greylist),
        greylist_delay: r.greylist_delay.unwrap_or(d.greylist_delay),
        trusted: r.trusted.unwrap_or(d.trusted),
        rules,
    })
}

/// A DNS name as RFC 1035 allows for hosts (letters, digits, hyphens, dots).
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Turns a serde/TOML error into file:line:key, finding the key from the
/// line the span points at (serde itself does not carry the key path).
/// serde's type names (`expected i64`) in the words of the config's user.
fn user_wording(message: &str) -> String {
    let mut m = message.to_string();
    for (from, to) in [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected an integer"),
        ("expected u32", "expected an integer"),
        (
            "expected u16",
            "expected an integer (a port number from 1 to 65535)",
        ),
        ("expected usize", "expected an integer"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list such as [\"a\", \"b\"]",
        ),
        ("expected struct ", "expected a table: "),
        ("invalid type: ", ""),
    ] {
        m = m.replace(from, to);
    }
    m
}

fn serde_error(text: &str, name: &str, e: &toml::de::Error) -> ConfigError {
    let message = user_wording(e.message().trim());
    let Some(span) = e.span() else {
        return ConfigError {
            file: name.into(),
            line: 0,
            key: String::new(),
            message,
        };
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let mut key = key_at_line(text, line);
    // "missing field `x`" points at the table, not at a key.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        let table = table_at_line(text, line);
        key = if table.is_empty() {
            field.to_string()
        } else {
            format!("{table}.{field}")
        };
    } else if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        let table = table_at_line(text, line);
        key = if table.is_empty() {
            field.to_string()
        } else {
            format!("{table}.{field}")
        };
    }
    ConfigError {
        file: name.into(),
        line,
        key,
        message,
    }
}

/// `[section]` in force at 1-based `line` ("" for the top level).
fn table_at_line(text: &str, line: usize) -> String {
    let mut table = String::new();
    for l in text.lines().take(line) {
        let t = l.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    table
}

/// `section.key` of the assignment on 1-based `line`, if it is one.
fn key_at_line(text: &str, line: usize) -> String {
    let table = table_at_line(text, line);
    let l = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    match l.split_once('=') {
        Some((k, _)) if !l.trim_start().starts_with('[') => {
            let k = k.trim().trim_matches('"');
            if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            }
        }
        _ => table,
    }
}

/// 1-based line of `section.key` (or a top-level `key`) in `text`; 0 if absent.
fn line_of_key(text: &str, dotted: &str) -> usize {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == dotted {
                return i + 1;
            }
        } else if current == table {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return i + 1;
                }
            }
        }
    }
    0
}

impl Config {
    /// The effective settings, as `check-config` prints them (TOML, password
    /// hidden), so that a person can see what defaults filled in.
    pub fn effective(&self) -> String {
        let list = |v: &[SocketAddr]| {
            let items: Vec<String> = v.iter().map(|a| format!("\"{a}\"")).collect();
            format!("[{}]", items.join(", "))
        };
        let strs = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|a| format!("{a:?}")).collect();
            format!("[{}]", items.join(", "))
        };
        let durs = |v: &[Duration]| {
            let items: Vec<String> = v
                .iter()
                .map(|d| format!("\"{}\"", fmt_duration(*d)))
                .collect();
            format!("[{}]", items.join(", "))
        };
        let mut addresses = self.user.addresses.clone();
        if self.user.catch_all {
            addresses.push("*".into());
        }
        let source = match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Embedded => "embedded try-it default".into(),
        };
        let mut s = format!(
            "# effective configuration from {source}\n\
             hostname = {:?}\ndomains = {}\ndata_dir = {:?}\nlog_level = \"{}\"\n\n\
             [user]\nname = {:?}\npassword = \"(hidden)\"\naddresses = {}\nmbox = {:?}\nfolders = {:?}\n\n\
             [listen]\nsmtp = {}\nsubmission = {}\nsubmissions = {}\npop3 = {}\npop3s = {}\nimap = {}\nimaps = {}\n\
             proxy_protocol = {}\nlocal_submit = {:?}\n\n",
            self.hostname,
            strs(&self.domains),
            self.data_dir.display().to_string(),
            self.log_level.to_string().to_lowercase(),
            self.user.name,
            strs(&addresses),
            self.user.mbox.display().to_string(),
            self.user.folders.display().to_string(),
            list(&self.listen.smtp),
            list(&self.listen.submission),
            list(&self.listen.submissions),
            list(&self.listen.pop3),
            list(&self.listen.pop3s),
            list(&self.listen.imap),
            list(&self.listen.imaps),
            list(&self.listen.proxy_protocol),
            self.listen
                .local_submit
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        );
        if let Some(t) = &self.tls {
            s += &format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n\n",
                t.cert.display().to_string(),
                t.key.display().to_string()
            );
        }
        let l = &self.limits;
        s += &format!(
            "[limits]\nmax_message_size = \"{}\"\nmax_recipients = {}\nmax_connections = {}\n\
             max_user_connections = {}\nmax_connections_per_ip = {}\ncommand_timeout = \"{}\"\n\
             data_timeout = \"{}\"\nsession_timeout = \"{}\"\nmax_errors = {}\n\n",
            fmt_size(l.max_message_size),
            l.max_recipients,
            l.max_connections,
            l.max_user_connections,
            l.max_connections_per_ip,
            fmt_duration(l.command_timeout),
            fmt_duration(l.data_timeout),
            fmt_duration(l.session_timeout),
            l.max_errors,
        );
        let o = &self.outbound;
        s += "[outbound]\n";
        if let Some(r) = &o.relay {
            s += &format!("relay = {r:?}\n");
        }
        if let Some(u) = &o.relay_user {
            s += &format!("relay_user = {u:?}\n");
        }
        if let Some(p) = &o.relay_password_file {
            s += &format!("relay_password_file = {:?}\n", p.display().to_string());
        }
        s += &format!(
            "dns = {}\nretry = {}\nbounce_after = \"{}\"\nwarn_after = \"{}\"\nmx_port = {}\n",
            list(&o.dns),
            durs(&o.retry),
            fmt_duration(o.bounce_after),
            o.warn_after
                .map(fmt_duration)
                .unwrap_or_else(|| "off".into()),
            o.mx_port
        );
        s += &format!(
            "ip_family = \"{}\"\nip_family_recheck = \"{}\"\nrelay_fallback = {}\nrelay_probe = \"{}\"\nconnect_timeout = \"{}\"\nmta_sts = {}\n",
            o.ip_family.as_str(),
            fmt_duration(o.ip_family_recheck),
            o.relay_fallback,
            fmt_duration(o.relay_probe),
            fmt_duration(o.connect_timeout),
            o.mta_sts
        );
        let i = &self.inbound;
        s += &format!(
            "\n[inbound]\nauth_checks = {}\ndmarc_reject = {}\npregreet = \"{}\"\ndnsbl = {}\n\
             greylist = {}\ngreylist_delay = \"{}\"\ntrusted = {}\n",
            i.auth_checks,
            i.dmarc_reject,
            if i.pregreet.is_zero() {
                "off".to_string()
            } else {
                format!("{}ms", i.pregreet.as_millis())
            },
            strs(&i.dnsbl),
            i.greylist,
            fmt_duration(i.greylist_delay),
            strs(&i.trusted.iter().map(|c| c.to_string()).collect::<Vec<_>>()),
        );
        for r in &i.rules {
            let (k, v) = match &r.matcher {
                Matcher::Contains(c) => ("contains", c),
                Matcher::Pattern(p) => ("pattern", p),
            };
            let action = match r.action {
                RuleAction::Junk => "junk",
                RuleAction::Reject => "reject",
            };
            s += &format!(
                "\n[[inbound.rule]]\nheader = {:?}\n{k} = {v:?}\naction = \"{action}\"\n",
                r.header
            );
        }
        s
    }
}

pub fn fmt_size(n: u64) -> String {
    for (suffix, m) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if n % m == 0 {
            return format!("{}{suffix}", n / m);
        }
    }
    n.to_string()
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (suffix, m) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s % m == 0 && s > 0 {
            return format!("{}{suffix}", s / m);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=12288,t=3,p=1$c2FsdHNhbHRzYWx0$3bA8aSXyYB3ltWBRDR0tYBtHRQJyx4p/5lZ6tcvkf6c";

    fn full() -> String {
        format!(
            r#"hostname = "mail.example.org"
domains  = ["example.org", "Example.NET."]
data_dir = "/var/lib/pimail"

[user]
name      = "alice"
password  = "{HASH}"
addresses = ["alice", "Postmaster", "*"]

[listen]
smtp        = ["0.0.0.0:25", "[::]:25"]
submission  = ["0.0.0.0:587"]
pop3        = []

[limits]
max_message_size = "10M"
max_recipients   = 50

[outbound]
dns = ["127.0.0.1:5353"]
retry = ["1m", "2h"]
bounce_after = "3d"
mx_port = 2526
"#
        )
    }

    fn parse_str(s: &str) -> Result<Config, ConfigError> {
        parse(s, "test.toml", Path::new("/etc/pimail"))
    }

    #[test]
    fn full_config_parses_with_typed_values() {
        let c = parse_str(&full()).unwrap();
        assert_eq!(c.domains, vec!["example.org", "example.net"]);
        assert_eq!(c.user.addresses, vec!["alice", "postmaster"]);
        assert!(c.user.catch_all);
        assert_eq!(c.user.mbox, PathBuf::from("/var/lib/pimail/mbox"));
        assert_eq!(c.listen.smtp.len(), 2);
        assert_eq!(c.limits.max_message_size, 10 << 20);
        assert_eq!(c.limits.max_recipients, 50);
        assert_eq!(c.limits.max_connections, 512);
        assert_eq!(c.limits.max_user_connections, 64);
        assert_eq!(c.limits.session_timeout, Duration::from_secs(3600));
        assert_eq!(
            c.outbound.retry,
            vec![Duration::from_secs(60), Duration::from_secs(7200)]
        );
        assert_eq!(c.outbound.bounce_after, Duration::from_secs(3 * 86400));
        assert_eq!(c.outbound.mx_port, 2526);
    }

    #[test]
    fn inbound_auth_policy() {
        let c = parse_str(&full()).unwrap();
        assert_eq!(c.inbound, Inbound::default());
        assert!(c.inbound.auth_checks && !c.inbound.dmarc_reject);
        assert!(!embedded_default().inbound.auth_checks);
        let c = parse_str(&(full() + "\n[inbound]\ndmarc_reject = true\n")).unwrap();
        assert!(c.inbound.dmarc_reject);
        assert!(c.effective().contains("dmarc_reject = true"));
        let e = parse_str(&(full() + "\n[inbound]\ndmarc_rejct = true\n")).unwrap_err();
        assert!(e.message.contains("dmarc_rejct"), "{e}");
        let e = parse_str(&(full() + "\n[inbound]\ndmarc_reject = \"yes\"\n")).unwrap_err();
        assert!(e.key.contains("dmarc_reject"), "{e}");
    }

    #[test]
    fn effective_settings_round_trip_and_hide_password() {
        let c = parse_str(&full()).unwrap();
        let eff = c.effective();
        assert!(!eff.contains(HASH));
        assert!(eff.contains("password = \"(hidden)\""));
        // The printed settings are themselves a valid config once a hash is put back.
        let again = eff.replace("\"(hidden)\"", &format!("\"{HASH}\""));
        let c2 = parse_str(&again).unwrap();
        assert_eq!(c2.effective(), eff);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = full().replace(
            "max_recipients   = 50",
            "max_recipients   = 50\nmax_bogus = 1",
        );
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key, "limits.max_bogus");
        assert_eq!(e.line, 18);
        assert!(
            e.to_string()
                .starts_with("test.toml:18: limits.max_bogus: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let cases = [
            (
                "max_message_size = \"10M\"",
                "max_message_size = \"10X\"",
                "limits.max_message_size",
                "suffix",
            ),
            (
                "max_recipients   = 50",
                "max_recipients   = 0",
                "limits.max_recipients",
                "positive",
            ),
            (
                "bounce_after = \"3d\"",
                "bounce_after = \"3 days\"",
                "outbound.bounce_after",
                "duration",
            ),
            (
                "\"0.0.0.0:587\"",
                "\"localhost:587\"",
                "listen.submission",
                "IP:PORT",
            ),
            ("mx_port = 2526", "mx_port = 70000", "outbound.mx_port", ""),
            (
                "mx_port = 2526",
                "ip_family = \"ipv5\"",
                "outbound.ip_family",
                "auto",
            ),
            (
                "mx_port = 2526",
                "relay_fallback = true",
                "outbound.relay_fallback",
                "needs a relay",
            ),
            (
                "hostname = \"mail.example.org\"",
                "hostname = \"mail example\"",
                "hostname",
                "valid host",
            ),
            (
                "name      = \"alice\"",
                "name      = \"al ice\"",
                "user.name",
                "letters",
            ),
            (HASH, "hunter2", "user.password", "pimail passwd"),
            (
                "\"alice\", \"Postmaster\"",
                "\"alice@x.org\", \"Postmaster\"",
                "user.addresses",
                "local parts",
            ),
        ];
        for (from, to, key, msg) in cases {
            let text = full().replace(from, to);
            let e = parse_str(&text).unwrap_err();
            assert_eq!(e.key, key, "{from} -> {to}: {e}");
            let want_line = text.lines().position(|l| l.contains(to)).unwrap() + 1;
            assert_eq!(e.line, want_line, "{e}");
            assert!(e.message.contains(msg), "{e}");
        }
    }

    #[test]
    fn missing_required_key_is_named() {
        let text = full().replace("addresses = [\"alice\", \"Postmaster\", \"*\"]\n", "");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key, "user.addresses", "{e}");
        assert!(e.message.contains("missing field"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse_str("hostname = \"a\"\ndomains = [\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
    }

    #[test]
    fn implicit_tls_needs_certificate() {
        let text = full().replace("pop3        = []", "pop3s       = [\"0.0.0.0:995\"]");
        let e = parse_str(&text).unwrap_err();
        assert_eq!(e.key, "listen.pop3s");
    }

    #[test]
    fn relay_settings_go_together() {
        let text = full().replace("[outbound]", "[outbound]\nrelay = \"smtp.example.net:587\"");
        // A relay that authorises by IP: no AUTH settings at all.
        assert_eq!(parse_str(&text).unwrap().outbound.relay_user, None);
        let half = text.replace("[outbound]", "[outbound]\nrelay_user = \"a@example.net\"");
        assert_eq!(parse_str(&half).unwrap_err().key, "outbound.relay_user");
        let no_relay = full().replace("[outbound]", "[outbound]\nrelay_user = \"a@example.net\"");
        assert_eq!(parse_str(&no_relay).unwrap_err().key, "outbound.relay");
        let text = text.replace(
            "[outbound]",
            "[outbound]\nrelay_user = \"a@example.net\"\nrelay_password_file = \"relay-pw\"",
        );
        let c = parse_str(&text).unwrap();
        assert_eq!(
            c.outbound.relay_password_file,
            Some(PathBuf::from("/etc/pimail/relay-pw"))
        );
        let bad = text.replace("smtp.example.net:587", "smtp.example.net");
        assert_eq!(parse_str(&bad).unwrap_err().key, "outbound.relay");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("25M"), Ok(25 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("25MB"), Ok(25 << 20));
        assert_eq!(parse_size("25MiB"), Ok(25 << 20));
        assert_eq!(parse_size("512kb"), Ok(512 << 10));
        assert!(parse_size("25X").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432000)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("0m").is_err());
        assert_eq!(fmt_size(25 << 20), "25M");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn embedded_default_is_loopback_only() {
        let c = embedded_default();
        let all = [&c.listen.smtp, &c.listen.submission, &c.listen.pop3];
        assert!(all.iter().all(|v| v.iter().all(|a| a.ip().is_loopback())));
        assert_eq!(c.listen.smtp[0].port(), 2525);
        assert_eq!(c.domains, vec!["localhost"]);
    }
}
