//! pimail: a complete mail server for one person, in one small binary.
//!
//! This file is the command line's dispatch: load the config, set up
//! logging, and run the server or one of the tools (`check-config`,
//! `passwd`, `sendmail`, `queue`, `doctor`). The mail flow is in the
//! library's folders (see `lib.rs`); `server` starts them.
#![forbid(unsafe_code)]

use pimail::config::cli::{self, Command};
use pimail::config::{self, Config, Source};
use pimail::net::tls;
use pimail::server;
use pimail::user::auth;
use pimail::util::{logging, notify, paths};
use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

/// sysexits.h
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;
const EX_OSERR: u8 = 71;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    pimail::util::sys::tune_allocator();
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let invoked_as = std::path::Path::new(&argv0)
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let cli = match cli::parse(&invoked_as, args.collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pimail: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // Every tool ends quietly when its output is closed (`| head`); the
    // server keeps Rust's SIG_IGN, its sockets report EPIPE instead.
    // sendmail keeps SIG_IGN too: a server that refused early closes the
    // submission socket, and its answer is read after the EPIPE.
    if !matches!(cli.command, Command::Serve | Command::Sendmail(_)) {
        let _ = pimail::util::sys::default_sigpipe();
    }
    match cli.command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("pimail {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Passwd => passwd(),
        Command::CheckConfig => check_config(&cli),
        Command::Serve => serve(&cli),
        Command::Sendmail(ref args) => sendmail(&cli, args),
        Command::Queue(ref q) => queue(&cli, q),
        Command::Doctor { ref probe } => match load_config(&cli) {
            Ok(c) => doctor(&c, probe.as_deref()),
            Err(code) => code,
        },
        Command::Setup(ref args) => setup(&cli, args),
        Command::Status => match load_config(&cli) {
            Ok(c) => {
                let (text, code) =
                    pimail::admin::status::report(&c, pimail::util::timefmt::unix_now());
                print!("{text}");
                ExitCode::from(code)
            }
            Err(code) => code,
        },
        Command::Dkim(ref cmd) => match load_config(&cli) {
            Ok(c) => dkim_command(&c, cmd.clone()),
            Err(code) => code,
        },
    }
}

fn load_config(cli: &cli::Cli) -> Result<Config, ExitCode> {
    let path = config::locate(cli.config.as_deref());
    config::load(path.as_deref()).map_err(|e| {
        eprintln!("pimail: config error: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

/// `pimail check-config`: every error in one run (the server stops at the
/// first), then warnings about settings that parse but will not work.
fn check_config(cli: &cli::Cli) -> ExitCode {
    let path = config::locate(cli.config.as_deref());
    let c = match config::load(path.as_deref()) {
        Ok(c) => c,
        Err(first) => {
            let all = match &path {
                Some(p) => config::load_all_errors(p),
                None => vec![],
            };
            if all.is_empty() {
                eprintln!("pimail: config error: {first}");
            }
            for e in &all {
                eprintln!("pimail: config error: {e}");
            }
            return ExitCode::from(EX_CONFIG);
        }
    };
    // The certificate and key are part of a working config.
    if let Some(t) = &c.tls {
        if let Err(e) = tls::load(&t.cert, &t.key) {
            eprintln!("pimail: config error: {}", tls_config_error(&c, &e));
            return ExitCode::from(EX_CONFIG);
        }
    }
    for w in config::warnings(&c) {
        eprintln!("pimail: warning: {w}");
    }
    print!("{}", c.effective());
    ExitCode::SUCCESS
}

/// A `[tls]` problem as a config error naming file, line and key.
fn tls_config_error(c: &Config, e: &tls::TlsError) -> config::ConfigError {
    use tls::TlsError as T;
    let is_key = |p: &std::path::Path| c.tls.as_ref().is_some_and(|t| t.key == p);
    let key = match e {
        T::Read(p, _) | T::Pem(p, _) if is_key(p) => "tls.key",
        T::NoKey(_) | T::Mismatch { .. } => "tls.key",
        _ => "tls.cert",
    };
    config::key_error(&c.source, key, e.to_string())
}

/// `pimail sendmail`: queue the message from stdin (see `sendmail`), or,
/// for a user who may not read the config or write the queue, hand it to
/// the running server through the local submission socket (see `submit`).
fn sendmail(cli: &cli::Cli, args: &cli::SendmailArgs) -> ExitCode {
    use pimail::send::submit;
    logging::init(log::LevelFilter::Warn, cli.verbose);
    let path = config::locate(cli.config.as_deref());
    let env_socket = std::env::var_os(submit::SOCKET_ENV)
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    let socket = match config::load(path.as_deref()) {
        Ok(c) => {
            let queue = c.data_dir.join("queue");
            let dir = if queue.exists() { &queue } else { &c.data_dir };
            if pimail::util::sys::may_write_dir(dir) {
                return sendmail_direct(&c, cli, args);
            }
            match env_socket.or(c.listen.local_submit.clone()) {
                Some(s) => s,
                None => {
                    eprintln!(
                        "pimail sendmail: cannot write the queue in {} and [listen] local_submit is off; nothing was sent",
                        c.data_dir.display()
                    );
                    return ExitCode::from(EX_TEMPFAIL);
                }
            }
        }
        // The server's config, kept from us: the server takes the message.
        Err(e) if path.as_deref().is_some_and(unreadable) => {
            if cli.verbose > 0 {
                eprintln!("pimail sendmail: {e}; handing the message to the server");
            }
            env_socket.unwrap_or_else(|| config::DEFAULT_LOCAL_SUBMIT.into())
        }
        // Without a config we cannot queue: the caller must keep the mail.
        Err(e) => {
            eprintln!("pimail: config error: {e}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    match submit::client(&socket, args, &mut input) {
        Ok((id, notes)) => {
            for n in notes {
                eprintln!("pimail sendmail: {n}");
            }
            if cli.verbose > 0 {
                eprintln!("pimail sendmail: queued as {id} by the server");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let why = match &path {
                Some(p) if e.code == EX_TEMPFAIL => format!(
                    " (the config {} is not readable by this user, so the message cannot be queued directly)",
                    p.display()
                ),
                _ => String::new(),
            };
            eprintln!("pimail sendmail: {}{why}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// A file there that we may not read (EACCES on it or its directory).
fn unreadable(p: &std::path::Path) -> bool {
    std::fs::File::open(p).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// The direct path: we may write the queue ourselves.
fn sendmail_direct(config: &Config, cli: &cli::Cli, args: &cli::SendmailArgs) -> ExitCode {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    match pimail::send::sendmail::run(config, args, &mut input) {
        Ok(id) => {
            if cli.verbose > 0 {
                eprintln!("pimail sendmail: queued as {id}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pimail sendmail: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// `pimail queue list|flush|delete ID`.
fn queue(cli: &cli::Cli, cmd: &cli::QueueCommand) -> ExitCode {
    use pimail::send::delivery::{poke, Wake};
    use pimail::send::queue::{Queue, QueueError};
    let config = match load_config(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let q = Queue::new(&config.data_dir);
    match cmd {
        cli::QueueCommand::List => match q.list() {
            Ok(entries) => {
                // The route the running server chose (relay fallback), else
                // the configured one.
                let status = pimail::store::status::read(&config.data_dir);
                let route = status
                    .iter()
                    .find(|(k, _)| k == "route")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| {
                        match (&config.outbound.relay, config.outbound.relay_fallback) {
                            (Some(r), false) => format!("relay {r}"),
                            _ => "direct".into(),
                        }
                    });
                print!(
                    "{}",
                    pimail::send::queue::list_text_routed(
                        &entries,
                        pimail::util::timefmt::unix_now(),
                        Some(&route)
                    )
                );
                if entries.is_empty() {
                    println!("queue is empty");
                }
                ExitCode::SUCCESS
            }
            // No queue directory yet: nothing was ever queued.
            Err(QueueError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                println!("queue is empty");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pimail queue: {e}");
                ExitCode::from(EX_OSERR)
            }
        },
        cli::QueueCommand::Flush => match poke(&config.data_dir, Wake::Flush) {
            Ok(()) => {
                println!("pimail queue: asked the server to retry every queued message now");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "pimail queue: the server is not running ({e}); queued mail is tried when it starts"
                );
                ExitCode::from(EX_UNAVAILABLE)
            }
        },
        cli::QueueCommand::Delete(id) => match q.remove(id) {
            Ok(()) => {
                println!("pimail queue: deleted {id}");
                ExitCode::SUCCESS
            }
            Err(e @ QueueError::NotFound(_)) => {
                eprintln!("pimail queue: {e}");
                ExitCode::from(EX_NOINPUT)
            }
            Err(e) => {
                eprintln!("pimail queue: {e}");
                ExitCode::from(EX_OSERR)
            }
        },
    }
}

/// Shortest password `pimail passwd` takes from a person at a terminal.
const MIN_PASSWORD: usize = 8;

/// `pimail passwd`: a password to a hash for the config. At a terminal it
/// prompts on stderr, does not echo, reads one line, asks twice and refuses
/// passwords under [`MIN_PASSWORD`] characters; from a pipe it takes the
/// first line as it is (scripts choose their own passwords).
fn passwd() -> ExitCode {
    let pw = if pimail::util::sys::is_terminal(0) {
        let first = match prompt_hidden("New password: ") {
            Ok(p) => p,
            Err(code) => return code,
        };
        if first.chars().count() < MIN_PASSWORD {
            eprintln!(
                "pimail passwd: too short: use at least {MIN_PASSWORD} characters (a few words make a good one)"
            );
            return ExitCode::from(EX_DATAERR);
        }
        let again = match prompt_hidden("Again: ") {
            Ok(p) => p,
            Err(code) => return code,
        };
        if again != first {
            eprintln!("pimail passwd: the two passwords differ; nothing changed, try again");
            return ExitCode::from(EX_DATAERR);
        }
        first
    } else {
        let mut input = Vec::new();
        if let Err(e) = std::io::stdin().take(4096).read_to_end(&mut input) {
            eprintln!("pimail passwd: cannot read stdin: {e}");
            return ExitCode::from(EX_OSERR);
        }
        let Ok(text) = String::from_utf8(input) else {
            eprintln!("pimail passwd: the password is not valid UTF-8");
            return ExitCode::from(EX_DATAERR);
        };
        text.lines().next().unwrap_or("").to_string()
    };
    if pw.is_empty() {
        eprintln!("pimail passwd: empty password; type it on stdin, e.g. `pimail passwd` then the password and Enter");
        return ExitCode::from(EX_DATAERR);
    }
    match auth::hash_password(&pw) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pimail passwd: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

/// One line from the terminal on stdin with echo off, after `prompt` on
/// stderr (stdout carries only the hash, so `pimail passwd > file` works).
fn prompt_hidden(prompt: &str) -> Result<String, ExitCode> {
    use std::io::{BufRead, Write};
    // Echo off before the prompt: TCSAFLUSH drops what was typed before,
    // so a person (or a test) answering the prompt is never lost.
    let guard = match pimail::util::sys::NoEcho::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("pimail passwd: cannot turn off echo on the terminal: {e}");
            return Err(ExitCode::from(EX_OSERR));
        }
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = Vec::new();
    let r = std::io::stdin()
        .lock()
        .take(4096)
        .read_until(b'\n', &mut line);
    drop(guard);
    if let Err(e) = r {
        eprintln!("pimail passwd: cannot read the terminal: {e}");
        return Err(ExitCode::from(EX_OSERR));
    }
    let Ok(text) = String::from_utf8(line) else {
        eprintln!("pimail passwd: the password is not valid UTF-8");
        return Err(ExitCode::from(EX_DATAERR));
    };
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// `pimail doctor`: the deliverability checklist; exit 1 if something
/// needed is missing.
fn doctor(config: &Config, probe: Option<&str>) -> ExitCode {
    let probe = match probe.map(|p| p.parse::<std::net::SocketAddr>()) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            eprintln!("pimail doctor: --probe needs IP:PORT, e.g. 203.0.113.5:25");
            return ExitCode::from(EX_USAGE);
        }
    };
    let now = pimail::util::timefmt::unix_now() as i64;
    let (text, ok) = smol::block_on(pimail::trust::doctor::run(config, probe, now));
    print!("{text}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `pimail dkim generate|records`: keys in `<data_dir>/dkim/<selector>.pem`
/// (mode 0600) and the TXT records to publish for every domain.
fn dkim_command(config: &Config, cmd: cli::DkimCommand) -> ExitCode {
    use pimail::trust::dkim;
    let dir = dkim::key_dir(&config.data_dir);
    if let cli::DkimCommand::Generate { selector } = cmd {
        let prefix = selector.unwrap_or_else(|| {
            let c = pimail::util::timefmt::civil(pimail::util::timefmt::unix_now());
            format!("pimail{:04}{:02}", c.year, c.month)
        });
        let (ed_sel, rsa_sel) = (format!("{prefix}-ed"), format!("{prefix}-rsa"));
        if !dkim::is_selector(&rsa_sel) {
            eprintln!("pimail dkim: selector {prefix:?} must be letters, digits and '-'");
            return ExitCode::from(EX_USAGE);
        }
        let (ed_path, rsa_path) = (
            dir.join(format!("{ed_sel}.pem")),
            dir.join(format!("{rsa_sel}.pem")),
        );
        for p in [&ed_path, &rsa_path] {
            if p.exists() {
                eprintln!(
                    "pimail dkim: {} already exists; keep it, or pick a new selector with --selector",
                    p.display()
                );
                return ExitCode::from(EX_DATAERR);
            }
        }
        if let Err(e) = paths::private_dir(&dir) {
            eprintln!("pimail dkim: cannot create {}: {e}", dir.display());
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                eprintln!("pimail dkim: run it as the service user: sudo -u pimail pimail dkim generate --config {}", config_hint(config));
            }
            return ExitCode::from(EX_OSERR);
        }
        // Keys the service cannot read stop its start (and systemd restarts
        // it in a loop): as root, hand them to the service user.
        let owner = service_owner(config);
        let give = |p: &std::path::Path| -> Result<(), ExitCode> {
            if let Some((uid, gid)) = owner {
                if let Err(e) = pimail::util::sys::chown(p, uid, gid) {
                    eprintln!(
                        "pimail dkim: cannot give {} to the service user ({e}); run: sudo chown -R {uid}:{gid} {}",
                        p.display(),
                        dir.display()
                    );
                    return Err(ExitCode::from(EX_OSERR));
                }
            }
            Ok(())
        };
        if let Err(code) = give(&dir) {
            return code;
        }
        let ed = match dkim::generate_ed25519() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("pimail dkim: {e}");
                return ExitCode::from(EX_SOFTWARE);
            }
        };
        if let Err(e) = paths::write_atomic(&ed_path, ed.as_bytes()) {
            eprintln!("pimail dkim: cannot write {}: {e}", ed_path.display());
            return ExitCode::from(EX_OSERR);
        }
        if let Err(code) = give(&ed_path) {
            return code;
        }
        println!("wrote {}", ed_path.display());
        // ring cannot generate RSA keys; openssl (on every Raspberry Pi OS)
        // can. Its output goes through our own 0600 atomic write.
        match openssl_rsa_key() {
            Ok(pem) => {
                if let Err(e) = paths::write_atomic(&rsa_path, pem.as_bytes()) {
                    eprintln!("pimail dkim: cannot write {}: {e}", rsa_path.display());
                    return ExitCode::from(EX_OSERR);
                }
                if let Err(code) = give(&rsa_path) {
                    return code;
                }
                println!("wrote {}", rsa_path.display());
            }
            Err(why) => {
                println!(
                    "no RSA key ({why}); Ed25519 alone is verified by Gmail but not by every receiver. Make one with:\n  {}\nthen run `pimail dkim records`.",
                    dkim::openssl_rsa_command(&rsa_path)
                );
            }
        }
    }
    let keys = match dkim::load_keys(&dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("pimail dkim: {e}");
            return ExitCode::from(EX_DATAERR);
        }
    };
    if keys.is_empty() {
        eprintln!(
            "pimail dkim: no keys in {}; run `pimail dkim generate`",
            dir.display()
        );
        return ExitCode::from(EX_DATAERR);
    }
    println!("\nPublish these DNS TXT records (zone-file syntax; long values are split into quoted strings of at most 255 characters):\n");
    for domain in &config.domains {
        for k in &keys {
            println!(
                "{}.  IN TXT  {}",
                dkim::record_name(&k.selector, domain),
                dkim::txt_strings(&k.dns_record())
            );
        }
    }
    ExitCode::SUCCESS
}

/// Who must own the DKIM keys when we run as root: the owner of data_dir
/// if it is not root (systemd-tmpfiles made it pimail's), else the
/// `pimail` user if there is one. `None`: not root, or nobody to give them
/// to (keys stay ours).
fn service_owner(config: &Config) -> Option<(u32, u32)> {
    if pimail::util::sys::euid() != 0 {
        return None;
    }
    match pimail::util::sys::owner(&config.data_dir) {
        Ok((uid, gid)) if uid != 0 => Some((uid, gid)),
        _ => pimail::util::sys::user_ids("pimail"),
    }
}

/// The config path for a command line we suggest.
fn config_hint(config: &Config) -> String {
    match &config.source {
        Source::File(p) => p.display().to_string(),
        Source::Embedded => config::DEFAULT_PATH.to_string(),
    }
}

/// Runs `openssl genpkey` for a 2048-bit RSA key and returns its PKCS#8
/// PEM, checked to be a key ring can sign with.
fn openssl_rsa_key() -> Result<String, String> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl genpkey failed ({})", out.status));
    }
    let pem = String::from_utf8(out.stdout).map_err(|_| "openssl wrote no PEM".to_string())?;
    pimail::trust::dkim::SigningKey::from_pem("check", &pem).map_err(|e| e.to_string())?;
    Ok(pem)
}

/// The try-it default keeps its generated password's hash here.
const TRY_IT_HASH_FILE: &str = "try-it-password.hash";

/// Gives the embedded default a password: generated and printed once at
/// first start, then read back from data_dir.
fn try_it_password(config: &mut Config) -> Result<(), String> {
    paths::private_dir(&config.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
    let file = config.data_dir.join(TRY_IT_HASH_FILE);
    match std::fs::read_to_string(&file) {
        Ok(h) if auth::check_hash_syntax(h.trim()).is_ok() => {
            config.user.password_hash = h.trim().to_string();
            println!(
                "pimail try-it: login {:?}, password as printed at the first start (delete {} to get a new one)",
                config.user.name,
                file.display()
            );
            return Ok(());
        }
        _ => {}
    }
    let pw = auth::generate_password()?;
    let hash = auth::hash_password(&pw)?;
    paths::write_atomic(&file, format!("{hash}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    config.user.password_hash = hash;
    println!(
        "pimail try-it: login {:?} password {pw:?} (shown once; its hash is in {})",
        config.user.name,
        file.display()
    );
    Ok(())
}

fn serve(cli: &cli::Cli) -> ExitCode {
    let mut config = match load_config(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log_level, cli.verbose);
    // A file-size limit must make writes fail (452, rolled back), not kill us.
    if let Err(e) = pimail::util::sys::ignore_sigxfsz() {
        log::error!("cannot ignore SIGXFSZ: {e}");
        return ExitCode::from(EX_OSERR);
    }
    if config.source == Source::Embedded {
        if let Err(e) = try_it_password(&mut config) {
            log::error!("{e}");
            return ExitCode::from(EX_OSERR);
        }
        if config.tls.is_none() {
            match pimail::admin::try_it_certificate(&mut config) {
                Ok(fp) => println!(
                    "pimail try-it: TLS with a self-signed certificate, SHA-256 fingerprint {fp}"
                ),
                Err(e) => {
                    log::error!("{e}");
                    return ExitCode::from(EX_OSERR);
                }
            }
        }
    }
    if let Some(t) = config.tls.as_ref().filter(|t| t.from_certbot) {
        log::info!(
            "using certbot's certificate {} (no [tls] section in the config)",
            t.cert.display()
        );
    }
    use async_signal::Signal;
    // Handlers first, before anything can announce the server: SIGHUP is
    // `systemctl reload`, and its default action would end the server; a
    // SIGTERM during start-up waits until the server runs, then stops it.
    let signals = match async_signal::Signals::new([Signal::Term, Signal::Int, Signal::Hup]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let server = match server::Server::start(&config) {
        Ok(s) => s,
        Err(server::StartError::Tls(e)) => {
            log::error!("config error: {}", tls_config_error(&config, &e));
            return ExitCode::from(EX_CONFIG);
        }
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(|(a, service)| format!("{} {a}", service.name()))
        .chain(
            server
                .pop3_addrs()
                .iter()
                .map(|(a, kind)| format!("{kind} {a}")),
        )
        .chain(
            server
                .imap_addrs()
                .iter()
                .map(|(a, kind)| format!("{kind} {a}")),
        )
        .collect();
    // Before the "listening" line: whoever saw it finds the status file.
    pimail::admin::status::start_writer(config.data_dir.clone(), addrs.clone());
    let source = match &config.source {
        Source::File(p) => p.display().to_string(),
        Source::Embedded => "embedded try-it default".into(),
    };
    log::info!(
        "pimail {} listening: {}; mbox {}; config {source}",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", "),
        config.user.mbox.display()
    );
    if config.source == Source::Embedded {
        println!("pimail try-it: listening on {}", addrs.join(", "));
        println!(
            "pimail try-it: mail for <{}@localhost> goes to {}",
            config.user.name,
            config.user.mbox.display()
        );
    }

    // Listeners are bound and signals handled: tell systemd (Type=notify)
    // that the service is up.
    if let Err(e) = notify::ready(&format!("listening: {}", addrs.join(", "))) {
        log::warn!("{e}");
    }
    let certificate = server.certificate();
    let dkim_keys = server.dkim_keys();
    let ex = std::rc::Rc::new(smol::LocalExecutor::new());
    if let Some(c) = certificate.clone() {
        ex.spawn(watch_certificate(c)).detach();
    }
    // Start-up is over once the listeners are up and the first checks
    // (outbound source addresses, the status file) have run: the code it
    // ran need not stay resident (SPEC "Budgets", idle memory).
    // The same after a busy spell, once a quiet minute has passed: a
    // server that took a burst of mail at noon idles slim again at night.
    ex.spawn(async {
        smol::Timer::after(STARTUP_SETTLE).await;
        let release = || match pimail::util::sys::release_startup_pages() {
            Ok(kib) => log::debug!("idle: code pages released ({kib} KiB were resident)"),
            Err(e) => log::debug!("idle: code pages kept: {e}"),
        };
        release();
        let mut released_at = pimail::net::listen::attempts();
        let mut seen = released_at;
        loop {
            smol::Timer::after(QUIET_SPELL).await;
            let now = pimail::net::listen::attempts();
            if now == seen && now != released_at {
                release();
                released_at = now;
            }
            seen = now;
        }
    })
    .detach();
    let ex2 = ex.clone();
    smol::block_on(ex.run(async move {
        let stop = async {
            use smol::stream::StreamExt;
            let mut signals = signals;
            while let Some(sig) = signals.next().await {
                match sig {
                    // systemctl reload: a renewed certificate for new
                    // connections; sessions in progress keep theirs.
                    Ok(Signal::Hup) => {
                        reload(certificate.as_deref());
                        reload_dkim(dkim_keys.as_ref());
                    }
                    Ok(sig) => {
                        log::info!("received {sig:?}, stopping");
                        break;
                    }
                    Err(e) => {
                        log::error!("signal handling failed ({e}), stopping");
                        break;
                    }
                }
            }
            if let Err(e) = notify::stopping() {
                log::warn!("{e}");
            }
        };
        server.run(ex2, stop, Duration::from_secs(30)).await;
    }));
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// `SIGHUP`: re-read the DKIM keys (new ones from `pimail dkim generate`);
/// keep the old ones if a file does not load.
fn reload_dkim(keys: Option<&pimail::send::delivery::DkimKeys>) {
    if let Some(k) = keys {
        match k.reload() {
            Ok(sels) if sels.is_empty() => log::info!("received SIGHUP: no DKIM keys"),
            Ok(sels) => log::info!("received SIGHUP: DKIM selectors {}", sels.join(", ")),
            Err(e) => {
                log::error!("received SIGHUP: DKIM keys not reloaded, keeping the old ones: {e}")
            }
        }
    }
}

/// How long after the listeners are up start-up counts as over.
const STARTUP_SETTLE: Duration = Duration::from_secs(2);
/// How long without a new connection makes the server idle again.
const QUIET_SPELL: Duration = Duration::from_secs(60);
/// How often the certificate files are looked at: a renewal is in use
/// within a minute, without `reload`.
const CERT_POLL: Duration = Duration::from_secs(30);

/// [`CERT_POLL`], or `PIMAIL_CERT_POLL_MS` (for the tests, which would
/// otherwise wait a minute for two looks).
fn cert_poll() -> Duration {
    std::env::var("PIMAIL_CERT_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(CERT_POLL, Duration::from_millis)
}

/// Reloads the certificate when its files change on disk (certbot's
/// renewal, a deploy hook's copy); a bad new pair is logged and the old
/// one kept, as on SIGHUP.
async fn watch_certificate(c: std::rc::Rc<tls::Certificate>) {
    let every = cert_poll();
    loop {
        smol::Timer::after(every).await;
        match c.reload_if_changed() {
            None => {}
            Some(Ok(())) => log::info!(
                "TLS certificate {} changed on disk: reloaded",
                c.cert_path().display()
            ),
            Some(Err(e)) => log::error!(
                "TLS certificate changed on disk but not reloaded, keeping the old one: {e}"
            ),
        }
    }
}

/// `pimail setup`: see `admin::setup`; ends with the doctor.
fn setup(cli: &cli::Cli, args: &cli::SetupArgs) -> ExitCode {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("PIMAIL_CONFIG").map(std::path::PathBuf::from))
        .unwrap_or_else(|| std::path::PathBuf::from("/etc/pimail/pimail.toml"));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pimail setup: cannot find this program's path: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    if let Err(e) = pimail::admin::setup::run(args, &path, &exe, &mut input) {
        eprintln!("pimail setup: {}", e.message);
        return ExitCode::from(e.code);
    }
    if args.skip_doctor {
        println!(
            "Then check everything with: pimail doctor --config {}",
            path.display()
        );
        return ExitCode::SUCCESS;
    }
    println!("\npimail doctor (records you have not published yet show as missing):\n");
    match config::load(Some(&path)) {
        // Setup did its job; the doctor's verdict is advice, not failure.
        Ok(c) => {
            doctor(&c, None);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pimail: config error: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

/// `SIGHUP`: re-read the TLS certificate and key; keep the old pair if the
/// new one is unusable (a half-finished renewal must not break TLS).
fn reload(certificate: Option<&tls::Certificate>) {
    match certificate {
        None => log::info!("received SIGHUP: no [tls] configured, nothing to reload"),
        Some(c) => match c.reload() {
            Ok(()) => log::info!(
                "received SIGHUP: reloaded TLS certificate {}",
                c.cert_path().display()
            ),
            Err(e) => log::error!(
                "received SIGHUP: TLS certificate not reloaded, keeping the old one: {e}"
            ),
        },
    }
}
