//! `pimail setup`: the first run. Asks (or takes as flags) the host name,
//! the domain and the user, sets the password with a hidden prompt,
//! writes the config with the right owner and mode, creates data_dir and
//! the mbox for the service user, makes the DKIM keys as that user, prints
//! the DNS records the way a DNS provider's web form asks for them (name,
//! type, value), and ends with `pimail doctor`.
//!
//! Running it again changes nothing: an existing config, mbox and DKIM
//! keys are kept (`--overwrite-config` writes a new config); directories
//! are only created when missing and their modes only tightened.

use crate::config::Config;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use crate::config::cli::SetupArgs;

/// What went wrong, with the exit code (sysexits) to leave with.
#[derive(Debug)]
pub struct SetupError {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: String) -> SetupError {
    SetupError { code, message }
}
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_OSERR: u8 = 71;
const EX_CONFIG: u8 = 78;

/// The shortest password accepted (a guessed mail password is an open relay).
pub const MIN_PASSWORD: usize = 8;

/// Owner of what setup creates: uid, gid and name.
#[derive(Debug, Clone)]
struct Owner {
    uid: u32,
    gid: u32,
    name: String,
}

/// Looks a user up in /etc/passwd (no NSS: the service user is a system
/// account, created by systemd-sysusers, always in the file).
fn lookup_user(name: &str) -> Option<Owner> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || f[0] != name {
            return None;
        }
        Some(Owner {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            name: name.to_string(),
        })
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Reads answers: from the terminal with prompts, or nothing (flags and
/// defaults) with `--yes`.
struct Ask<'a> {
    interactive: bool,
    input: &'a mut dyn BufRead,
}

impl Ask<'_> {
    fn line(&mut self, question: &str, default: &str) -> Result<String, SetupError> {
        if !self.interactive {
            return Ok(default.to_string());
        }
        print!("{question} [{default}]: ");
        let _ = std::io::stdout().flush();
        let mut s = String::new();
        self.input
            .read_line(&mut s)
            .map_err(|e| fail(EX_OSERR, format!("cannot read the answer: {e}")))?;
        let s = s.trim();
        Ok(if s.is_empty() {
            default.to_string()
        } else {
            s.to_string()
        })
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| crate::config::is_domain(h))
        .unwrap_or_else(|| "mail.example.org".into())
}

fn default_domain(host: &str) -> String {
    match host.split_once('.') {
        Some((_, rest)) if rest.contains('.') => rest.to_string(),
        _ => host.to_string(),
    }
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// The new config file's text.
fn config_text(
    host: &str,
    domain: &str,
    user: &str,
    hash: &str,
    data_dir: &Path,
    mbox: &Path,
    tls: bool,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `pimail setup`; see docs/INSTALL.md. Check with `pimail check-config`."
    );
    let _ = writeln!(t, "hostname = {}", toml_str(host));
    let _ = writeln!(t, "domains  = [{}]", toml_str(domain));
    let _ = writeln!(
        t,
        "data_dir = {}\n",
        toml_str(&data_dir.display().to_string())
    );
    let _ = writeln!(t, "[user]");
    let _ = writeln!(t, "name      = {}", toml_str(user));
    let _ = writeln!(t, "password  = {}", toml_str(hash));
    let _ = writeln!(
        t,
        "addresses = [{}, \"postmaster\", \"abuse\"]",
        toml_str(user)
    );
    let _ = writeln!(t, "mbox      = {}\n", toml_str(&mbox.display().to_string()));
    let _ = writeln!(t, "[listen]");
    let _ = writeln!(t, "smtp        = [\"0.0.0.0:25\"]");
    let _ = writeln!(t, "submission  = [\"0.0.0.0:587\"]");
    if tls {
        // certbot's files for the host name were found: pimail uses them
        // without a [tls] section, so the implicit-TLS ports work too.
        let _ = writeln!(t, "submissions = [\"0.0.0.0:465\"]");
        let _ = writeln!(t, "pop3s       = [\"0.0.0.0:995\"]");
    } else {
        let _ = writeln!(t, "pop3        = [\"0.0.0.0:110\"]");
        let _ = writeln!(t, "# With a certificate (certbot certonly -d {host}), add:");
        let _ = writeln!(t, "# submissions = [\"0.0.0.0:465\"]");
        let _ = writeln!(t, "# pop3s       = [\"0.0.0.0:995\"]");
    }
    t
}

fn password(args: &SetupArgs, ask: &mut Ask, user: &str) -> Result<String, SetupError> {
    if args.password_stdin {
        let mut s = String::new();
        ask.input
            .read_line(&mut s)
            .map_err(|e| fail(EX_OSERR, format!("cannot read the password: {e}")))?;
        let pw = s.trim_end_matches(['\r', '\n']).to_string();
        check_password(&pw)?;
        return Ok(pw);
    }
    if !ask.interactive {
        return Err(fail(
            EX_USAGE,
            "a new config needs a password: give --password-stdin (one line on stdin), or run setup in a terminal".into(),
        ));
    }
    for _ in 0..3 {
        let a = hidden(&format!("Password for {user} (not shown): "), ask.input)?;
        if let Err(e) = check_password(&a) {
            println!("{}", e.message);
            continue;
        }
        let b = hidden("The same password again: ", ask.input)?;
        if a == b {
            return Ok(a);
        }
        println!("The two passwords differ; again.");
    }
    Err(fail(EX_DATAERR, "no password set (three tries)".into()))
}

fn hidden(prompt: &str, input: &mut dyn BufRead) -> Result<String, SetupError> {
    crate::util::sys::read_password_noecho(prompt, input)
        .map_err(|e| fail(EX_OSERR, format!("cannot read the password: {e}")))?
        .ok_or_else(|| {
            fail(
                EX_USAGE,
                "stdin is not a terminal: use --password-stdin".into(),
            )
        })
}

fn check_password(pw: &str) -> Result<(), SetupError> {
    if pw.chars().count() < MIN_PASSWORD {
        return Err(fail(
            EX_DATAERR,
            format!("the password is too short: at least {MIN_PASSWORD} characters"),
        ));
    }
    Ok(())
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> SetupError {
    fail(EX_OSERR, format!("cannot {what} {}: {e}", p.display()))
}

fn chown(p: &Path, owner: Option<&Owner>, gid_only: bool) -> Result<(), SetupError> {
    if let Some(o) = owner {
        let uid = if gid_only { None } else { Some(o.uid) };
        std::os::unix::fs::chown(p, uid, Some(o.gid)).map_err(|e| io_err("chown", p, e))?;
    }
    Ok(())
}

/// A directory for the service user: created 0700 if missing, never
/// loosened.
fn service_dir(p: &Path, owner: Option<&Owner>, out: &mut String) -> Result<(), SetupError> {
    if p.is_dir() {
        let _ = writeln!(out, "kept      {}", p.display());
        return Ok(());
    }
    crate::util::paths::private_dir(p).map_err(|e| io_err("create", p, e))?;
    chown(p, owner, false)?;
    let _ = writeln!(out, "created   {} (0700)", p.display());
    Ok(())
}

/// Runs setup; `config_path` is where the config goes (and is read from
/// on a second run). Returns the text printed so far is streamed.
pub fn run(
    args: &SetupArgs,
    config_path: &Path,
    exe: &Path,
    input: &mut dyn BufRead,
) -> Result<(), SetupError> {
    let interactive =
        !args.yes && !args.password_stdin && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut ask = Ask { interactive, input };
    let root = is_root();
    let service = args
        .service_user
        .clone()
        .or_else(|| root.then(|| "pimail".to_string()));
    let owner = match &service {
        None => None,
        Some(name) => Some(lookup_user(name).ok_or_else(|| {
            fail(
                EX_NOUSER,
                format!("no user {name:?}: create it first (docs/INSTALL.md step 2: systemd-sysusers), or pass --service-user"),
            )
        })?),
    };
    let mut out = String::new();
    let existing = config_path.exists() && !args.overwrite_config;
    let config: Config = if existing {
        let c = crate::config::load(Some(config_path))
            .map_err(|e| fail(EX_CONFIG, format!("config error: {e}")))?;
        let _ = writeln!(
            out,
            "kept      {} (existing config; --overwrite-config writes a new one)",
            config_path.display()
        );
        c
    } else {
        if interactive {
            println!("pimail setup: a few questions (Enter takes the default in brackets).");
        }
        let host_default = args.hostname.clone().unwrap_or_else(system_hostname);
        let host = ask
            .line("Host name of this server (its DNS name)", &host_default)?
            .to_ascii_lowercase();
        if !crate::config::is_domain(&host) {
            return Err(fail(EX_USAGE, format!("{host:?} is not a host name")));
        }
        let domain_default = args.domain.clone().unwrap_or_else(|| default_domain(&host));
        let domain = ask
            .line("Mail domain (you@<domain>)", &domain_default)?
            .to_ascii_lowercase();
        if !crate::config::is_domain(&domain) {
            return Err(fail(EX_USAGE, format!("{domain:?} is not a domain")));
        }
        let user_default = args
            .user
            .clone()
            .or_else(|| std::env::var("SUDO_USER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "alice".into());
        let user = ask.line(
            "Your login name (you@domain, and for POP3/submission)",
            &user_default,
        )?;
        let pw = password(args, &mut ask, &user)?;
        let hash = crate::user::auth::hash_password(&pw).map_err(|e| fail(EX_OSERR, e))?;
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/pimail"));
        let mbox = args.mbox.clone().unwrap_or_else(|| data_dir.join("mbox"));
        let certbot = crate::config::letsencrypt_dir().join("live").join(&host);
        let tls = certbot.join("fullchain.pem").exists() && certbot.join("privkey.pem").exists();
        let text = config_text(&host, &domain, &user, &hash, &data_dir, &mbox, tls);
        // Parse before writing: a config setup writes always loads.
        let c = crate::config::parse(&text, &config_path.display().to_string(), Path::new("/"))
            .map_err(|e| fail(EX_USAGE, format!("config error: {e}")))?;
        if let Some(dir) = config_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(dir)
                .map_err(|e| io_err("create", dir, e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(|e| io_err("chmod", dir, e))?;
            chown(dir, owner.as_ref(), true)?;
        }
        crate::util::paths::write_atomic(config_path, text.as_bytes())
            .map_err(|e| io_err("write", config_path, e))?;
        // root:<service group> 0640: the service reads it, nobody else.
        chown(config_path, owner.as_ref(), true)?;
        std::fs::set_permissions(config_path, std::fs::Permissions::from_mode(0o640))
            .map_err(|e| io_err("chmod", config_path, e))?;
        let _ = writeln!(out, "wrote     {} (0640)", config_path.display());
        c
    };
    service_dir(&config.data_dir, owner.as_ref(), &mut out)?;
    let mbox = &config.user.mbox;
    if let Some(dir) = mbox.parent().filter(|d| !d.exists()) {
        service_dir(dir, owner.as_ref(), &mut out)?;
    }
    if mbox.exists() {
        let _ = writeln!(out, "kept      {}", mbox.display());
    } else {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(mbox)
            .map_err(|e| io_err("create", mbox, e))?;
        chown(mbox, owner.as_ref(), false)?;
        let _ = writeln!(out, "created   {} (0600)", mbox.display());
    }
    print!("{out}");
    dkim_keys(&config, config_path, exe, owner.as_ref())?;
    print!("{}", dns_records(&config));
    let _ = std::io::stdout().flush();
    Ok(())
}

/// DKIM keys: kept when there are some, else made by `pimail dkim
/// generate` run as the service user, so the service can read them.
fn dkim_keys(
    config: &Config,
    config_path: &Path,
    exe: &Path,
    owner: Option<&Owner>,
) -> Result<(), SetupError> {
    let dir = crate::trust::dkim::key_dir(&config.data_dir);
    if crate::trust::dkim::load_keys(&dir).is_ok_and(|k| !k.is_empty()) {
        println!("kept      DKIM keys in {}", dir.display());
        return Ok(());
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("dkim")
        .arg("generate")
        .arg("--config")
        .arg(config_path);
    if let Some(o) = owner {
        use std::os::unix::process::CommandExt;
        cmd.uid(o.uid).gid(o.gid);
    }
    let r = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            fail(
                EX_OSERR,
                format!("cannot run {} dkim generate: {e}", exe.display()),
            )
        })?;
    let text = String::from_utf8_lossy(&r.stdout);
    for l in text
        .lines()
        .filter(|l| l.starts_with("wrote ") || l.starts_with("no RSA key"))
    {
        println!("{}", l.replacen("wrote ", "created   ", 1));
    }
    if !r.status.success() {
        return Err(fail(
            EX_OSERR,
            format!(
                "`pimail dkim generate`{} failed: {}",
                owner.map(|o| format!(" as {}", o.name)).unwrap_or_default(),
                String::from_utf8_lossy(&r.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// The records to enter at the DNS provider, one block per record, as
/// their web forms ask: name, type, value.
pub fn dns_records(config: &Config) -> String {
    let keys = crate::trust::dkim::load_keys(&crate::trust::dkim::key_dir(&config.data_dir))
        .unwrap_or_default();
    let mut rows: Vec<(String, &str, String)> = vec![(
        config.hostname.clone(),
        "A",
        "<this server's public IPv4 address> (and AAAA for IPv6, if port 25 reaches it)".into(),
    )];
    for d in &config.domains {
        rows.push((
            d.clone(),
            "MX",
            format!(
                "10 {}.   (priority 10, if the form asks it separately)",
                config.hostname
            ),
        ));
        rows.push((d.clone(), "TXT", "v=spf1 mx -all".into()));
        for k in &keys {
            rows.push((
                crate::trust::dkim::record_name(&k.selector, d),
                "TXT",
                k.dns_record(),
            ));
        }
        rows.push((
            format!("_dmarc.{d}"),
            "TXT",
            format!("v=DMARC1; p=none; rua=mailto:postmaster@{d}"),
        ));
    }
    let mut out = String::from(
        "\nDNS records to add at your DNS provider (many forms want the name without the\n\
         domain: \"@\" for the domain itself, \"_dmarc\" for _dmarc.<domain>; paste TXT\n\
         values whole, without quotes):\n\n",
    );
    for (name, kind, value) in rows {
        let _ = writeln!(out, "  Name:  {name}\n  Type:  {kind}\n  Value: {value}\n");
    }
    out.push_str(
        "Also ask your ISP to set the PTR (reverse DNS) of the IPv4 address to the host name.\n",
    );
    out
}
