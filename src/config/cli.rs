//! The command line of SPEC "Command line", parsed into a [`Cli`].
//!
//! `--config PATH` and `-v` are accepted before or after the subcommand.
//! `sendmail` takes the classic sendmail flags, and is also what runs when
//! the binary is invoked by the name `sendmail`.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve,
    CheckConfig,
    Passwd,
    Sendmail(SendmailArgs),
    Queue(QueueCommand),
    Dkim(DkimCommand),
    /// `doctor [--probe HOST:PORT]`.
    Doctor {
        probe: Option<String>,
    },
    /// `setup [flags]`: the first run.
    Setup(SetupArgs),
    /// `status`: is the server running and well.
    Status,
    Version,
    Help,
}

/// The flags of `pimail setup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupArgs {
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub user: Option<String>,
    /// Read the password (one line) from stdin instead of a prompt.
    pub password_stdin: bool,
    pub data_dir: Option<PathBuf>,
    pub mbox: Option<PathBuf>,
    /// The account the server runs as (default `pimail` when run as root).
    pub service_user: Option<String>,
    /// Take the defaults for everything not given; never prompt.
    pub yes: bool,
    pub overwrite_config: bool,
    pub skip_doctor: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    /// `-t`: take recipients from To/Cc/Bcc.
    pub from_headers: bool,
    /// `-i` / `-oi`: a lone `.` line does not end the input.
    pub ignore_dots: bool,
    /// `-f FROM`: envelope sender.
    pub sender: Option<String>,
    /// `-F NAME`: full name (accepted for compatibility).
    pub full_name: Option<String>,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCommand {
    List,
    Flush,
    Delete(String),
}

/// `pimail dkim ...`: key management for DKIM signing (see `dkim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DkimCommand {
    /// Make new keys; `selector` overrides the date-based default prefix.
    Generate { selector: Option<String> },
    /// Print the DNS records for the keys in data_dir.
    Records,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub command: Command,
    pub config: Option<PathBuf>,
    /// Number of `-v`: raises the log level above the config's.
    pub verbose: u8,
}

pub const USAGE: &str = "\
pimail — a complete mail server for one person

Usage:
  pimail [serve] [--config PATH]      run the server (default command)
  pimail check-config [--config PATH] validate the config, print the effective settings
  pimail passwd                        read a password on stdin, print its hash for the config
  pimail sendmail [-t] [-i] [-f FROM] [RCPT...]
                                       sendmail-compatible submission
  pimail queue [list|flush|delete ID]  inspect and steer the outbound queue
  pimail dkim generate [--selector S]  make DKIM keys in data_dir, print the DNS records
  pimail dkim records                  print the DNS records of the existing DKIM keys
  pimail doctor [--probe HOST:PORT]    check DNS (MX, PTR, SPF, DKIM, DMARC), TLS and port 25
  pimail setup [--hostname H --domain D --user U --password-stdin --data-dir DIR
               --mbox PATH --service-user NAME --yes --overwrite-config --skip-doctor]
                                       first run: write the config, directories, DKIM keys;
                                       print the DNS records; run the doctor
  pimail status                        is the server running and well (exit 0 all well,
                                       1 needs attention, 3 not running)
  pimail --version | --help

Options:
  -c, --config PATH   config file (default: $PIMAIL_CONFIG, else /etc/pimail/pimail.toml,
                      else the embedded try-it default)
  -v, --verbose       more log output (repeat for trace)
";

/// A usage error, printed with a hint and exit code 64 (EX_USAGE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\nTry 'pimail --help'.", self.0)
    }
}

fn err(e: lexopt::Error) -> UsageError {
    UsageError(e.to_string())
}

/// Parses `args` (without argv[0]); `invoked_as` is argv[0]'s file name.
pub fn parse(invoked_as: &str, args: Vec<OsString>) -> Result<Cli, UsageError> {
    if invoked_as == "sendmail" {
        return parse_sendmail(args, None, 0);
    }
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args.clone());
    let mut config = None;
    let mut verbose = 0;
    let mut command: Option<Command> = None;
    let mut consumed_before_sendmail = 0;
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Short('c') | Long("config") => config = Some(PathBuf::from(p.value().map_err(err)?)),
            Short('v') | Long("verbose") => verbose += 1,
            Short('V') | Long("version") => command = Some(Command::Version),
            Short('h') | Long("help") => command = Some(Command::Help),
            Long(flag) if matches!(command, Some(Command::Setup(_))) && flag != "config" => {
                let Some(Command::Setup(a)) = command.as_mut() else {
                    unreachable!()
                };
                let flag = flag.to_string();
                let val = |p: &mut lexopt::Parser| -> Result<String, UsageError> {
                    p.value().map_err(err)?.string().map_err(err)
                };
                match flag.as_str() {
                    "hostname" => a.hostname = Some(val(&mut p)?),
                    "domain" => a.domain = Some(val(&mut p)?),
                    "user" => a.user = Some(val(&mut p)?),
                    "data-dir" => a.data_dir = Some(PathBuf::from(val(&mut p)?)),
                    "mbox" => a.mbox = Some(PathBuf::from(val(&mut p)?)),
                    "service-user" => a.service_user = Some(val(&mut p)?),
                    "password-stdin" => a.password_stdin = true,
                    "yes" => a.yes = true,
                    "overwrite-config" => a.overwrite_config = true,
                    "skip-doctor" => a.skip_doctor = true,
                    other => return Err(UsageError(format!("unknown setup option '--{other}'"))),
                }
            }
            Long("probe") if matches!(command, Some(Command::Doctor { .. })) => {
                let v = p.value().map_err(err)?.string().map_err(err)?;
                command = Some(Command::Doctor { probe: Some(v) });
            }
            Value(v) if command.is_none() => {
                let v = v.string().map_err(err)?;
                command = Some(match v.as_str() {
                    "serve" => Command::Serve,
                    "check-config" => Command::CheckConfig,
                    "passwd" => Command::Passwd,
                    "sendmail" => {
                        // Everything after "sendmail" is sendmail's.
                        let rest: Vec<OsString> = p.raw_args().map_err(err)?.collect();
                        let _ = consumed_before_sendmail;
                        return parse_sendmail(rest, config, verbose);
                    }
                    "queue" => Command::Queue(parse_queue(&mut p)?),
                    "dkim" => Command::Dkim(parse_dkim(&mut p)?),
                    "doctor" => Command::Doctor { probe: None },
                    "status" => Command::Status,
                    "setup" => Command::Setup(SetupArgs::default()),
                    other => return Err(UsageError(format!("unknown command '{other}'"))),
                });
            }
            Value(v) => {
                return Err(UsageError(format!(
                    "unexpected argument '{}'",
                    v.to_string_lossy()
                )))
            }
            _ => return Err(err(arg.unexpected())),
        }
        consumed_before_sendmail += 1;
    }
    Ok(Cli {
        command: command.unwrap_or(Command::Serve),
        config,
        verbose,
    })
}

fn parse_queue(p: &mut lexopt::Parser) -> Result<QueueCommand, UsageError> {
    use lexopt::prelude::*;
    let mut cmd = None;
    // Options may follow; peek at the next plain value only.
    let mut rest = Vec::new();
    for a in p.raw_args().map_err(err)? {
        rest.push(a);
    }
    let mut it = rest.into_iter();
    let mut leftover = Vec::new();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().to_string();
        if s.starts_with('-') {
            leftover.push(a);
            if (s == "--config" || s == "-c") && !s.contains('=') {
                if let Some(v) = it.next() {
                    leftover.push(v);
                }
            }
            continue;
        }
        if cmd.is_none() {
            cmd = Some(match s.as_str() {
                "list" => QueueCommand::List,
                "flush" => QueueCommand::Flush,
                "delete" => {
                    let id = it
                        .next()
                        .ok_or_else(|| UsageError("queue delete needs a queue id".into()))?;
                    QueueCommand::Delete(id.to_string_lossy().to_string())
                }
                other => {
                    return Err(UsageError(format!(
                        "unknown queue command '{other}' (list, flush, delete ID)"
                    )))
                }
            });
        } else {
            return Err(UsageError(format!("unexpected argument '{s}'")));
        }
    }
    // Put the options back for the main loop.
    *p = lexopt::Parser::from_args(leftover);
    let _ = Short('x');
    Ok(cmd.unwrap_or(QueueCommand::List))
}

/// `dkim generate [--selector S]` / `dkim records`; the global options
/// may still follow and are handed back to the main loop.
fn parse_dkim(p: &mut lexopt::Parser) -> Result<DkimCommand, UsageError> {
    let rest: Vec<OsString> = p.raw_args().map_err(err)?.collect();
    let mut it = rest.into_iter();
    let mut leftover = Vec::new();
    let mut sub: Option<String> = None;
    let mut selector = None;
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().to_string();
        if s == "--selector" || s == "-s" {
            let v = it
                .next()
                .ok_or_else(|| UsageError("--selector needs a value".into()))?;
            selector = Some(v.to_string_lossy().to_string());
        } else if let Some(v) = s.strip_prefix("--selector=") {
            selector = Some(v.to_string());
        } else if s.starts_with('-') {
            leftover.push(a);
            if s == "--config" || s == "-c" {
                if let Some(v) = it.next() {
                    leftover.push(v);
                }
            }
        } else if sub.is_none() {
            sub = Some(s);
        } else {
            return Err(UsageError(format!("unexpected argument '{s}'")));
        }
    }
    *p = lexopt::Parser::from_args(leftover);
    match sub.as_deref() {
        Some("generate") => Ok(DkimCommand::Generate { selector }),
        Some("records") if selector.is_none() => Ok(DkimCommand::Records),
        Some("records") => Err(UsageError("dkim records takes no --selector".into())),
        Some(other) => Err(UsageError(format!(
            "unknown dkim command '{other}' (generate, records)"
        ))),
        None => Err(UsageError(
            "dkim needs a command: generate or records".into(),
        )),
    }
}

/// sendmail's own flags (the subset cron, mailx, git send-email and
/// unattended-upgrades use); `-o` options and `-bm`/`-B` are accepted and
/// ignored as other sendmail replacements do.
fn parse_sendmail(
    args: Vec<OsString>,
    mut config: Option<PathBuf>,
    mut verbose: u8,
) -> Result<Cli, UsageError> {
    let mut a = SendmailArgs::default();
    let mut it = args
        .into_iter()
        .map(|s| s.to_string_lossy().to_string())
        .peekable();
    let mut only_rcpts = false;
    while let Some(arg) = it.next() {
        if only_rcpts || !arg.starts_with('-') || arg == "-" {
            a.recipients.push(arg);
            continue;
        }
        let mut value = |flag: &str, inline: &str| -> Result<String, UsageError> {
            if !inline.is_empty() {
                Ok(inline.to_string())
            } else {
                it.next()
                    .ok_or_else(|| UsageError(format!("sendmail: {flag} needs a value")))
            }
        };
        match arg.as_str() {
            "--" => only_rcpts = true,
            "-t" => a.from_headers = true,
            "-i" | "-oi" => a.ignore_dots = true,
            "-v" => verbose += 1,
            "--config" | "-C" => config = Some(PathBuf::from(value(&arg, "")?)),
            s if s.starts_with("--config=") => config = Some(PathBuf::from(&s[9..])),
            s if s.starts_with("-f") || s.starts_with("-r") => {
                a.sender = Some(value("-f", &s[2..])?)
            }
            s if s.starts_with("-F") => a.full_name = Some(value("-F", &s[2..])?),
            s if s.starts_with("-o") || s.starts_with("-b") || s.starts_with("-B") => {
                if s == "-bs" || s == "-bp" || s == "-bd" {
                    return Err(UsageError(format!("sendmail: {s} is not supported")));
                }
                // -oem, -odi, -bm, -B8BITMIME: harmless, ignored.
                if (s == "-o" || s == "-B") && it.peek().is_some() {
                    it.next();
                }
            }
            s if s.starts_with("-N") || s.starts_with("-R") || s.starts_with("-V") => {
                // DSN options (-N never, -R hdrs, -V envid): accepted, ignored.
                if s.len() == 2 {
                    it.next();
                }
            }
            other => return Err(UsageError(format!("sendmail: unknown option '{other}'"))),
        }
    }
    Ok(Cli {
        command: Command::Sendmail(a),
        config,
        verbose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, UsageError> {
        parse("pimail", args.iter().map(OsString::from).collect())
    }

    #[test]
    fn default_is_serve_and_config_anywhere() {
        assert_eq!(p(&[]).unwrap().command, Command::Serve);
        let c = p(&["--config", "/x.toml", "check-config"]).unwrap();
        assert_eq!(
            (c.command, c.config),
            (Command::CheckConfig, Some(PathBuf::from("/x.toml")))
        );
        let c = p(&["check-config", "--config=/y.toml"]).unwrap();
        assert_eq!(c.config, Some(PathBuf::from("/y.toml")));
        let c = p(&["serve", "-c", "/z.toml", "-vv"]).unwrap();
        assert_eq!((c.command, c.verbose), (Command::Serve, 2));
        assert_eq!(p(&["--version"]).unwrap().command, Command::Version);
        assert_eq!(p(&["passwd"]).unwrap().command, Command::Passwd);
        assert_eq!(p(&["-h"]).unwrap().command, Command::Help);
    }

    #[test]
    fn usage_errors() {
        assert!(p(&["bogus"])
            .unwrap_err()
            .0
            .contains("unknown command 'bogus'"));
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["--config"]).is_err());
        assert!(p(&["serve", "extra"]).is_err());
        assert!(p(&["queue", "delete"]).is_err());
        assert!(p(&["queue", "frobnicate"]).is_err());
    }

    #[test]
    fn queue_commands() {
        assert_eq!(
            p(&["queue"]).unwrap().command,
            Command::Queue(QueueCommand::List)
        );
        assert_eq!(
            p(&["queue", "flush"]).unwrap().command,
            Command::Queue(QueueCommand::Flush)
        );
        let c = p(&["queue", "delete", "ABC", "--config", "/q.toml"]).unwrap();
        assert_eq!(
            c.command,
            Command::Queue(QueueCommand::Delete("ABC".into()))
        );
        assert_eq!(c.config, Some(PathBuf::from("/q.toml")));
    }

    #[test]
    fn dkim_commands() {
        assert_eq!(
            p(&["dkim", "generate"]).unwrap().command,
            Command::Dkim(DkimCommand::Generate { selector: None })
        );
        let c = p(&["dkim", "generate", "--selector", "k1", "-c", "/d.toml"]).unwrap();
        assert_eq!(
            c.command,
            Command::Dkim(DkimCommand::Generate {
                selector: Some("k1".into())
            })
        );
        assert_eq!(c.config, Some(PathBuf::from("/d.toml")));
        assert_eq!(
            p(&["--config", "/e.toml", "dkim", "records"])
                .unwrap()
                .command,
            Command::Dkim(DkimCommand::Records)
        );
        assert!(p(&["dkim"]).is_err());
        assert!(p(&["dkim", "rotate"]).is_err());
        assert!(p(&["dkim", "generate", "--selector"]).is_err());
    }

    #[test]
    fn setup_and_status_commands() {
        let c = p(&[
            "setup",
            "--hostname",
            "mail.example.org",
            "--domain",
            "example.org",
            "--user",
            "alice",
            "--password-stdin",
            "--yes",
            "-c",
            "/x.toml",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        let Command::Setup(a) = c.command else {
            panic!()
        };
        assert_eq!(a.hostname.as_deref(), Some("mail.example.org"));
        assert_eq!(a.domain.as_deref(), Some("example.org"));
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert!(a.password_stdin && a.yes && !a.overwrite_config);
        assert_eq!(a.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(c.config, Some(PathBuf::from("/x.toml")));
        assert!(p(&["setup", "--hostname"]).is_err());
        assert!(p(&["setup", "--frobnicate"]).is_err());
        assert!(p(&["--hostname", "x", "setup"]).is_err());
        assert_eq!(p(&["status"]).unwrap().command, Command::Status);
    }

    #[test]
    fn doctor_command() {
        assert_eq!(
            p(&["doctor"]).unwrap().command,
            Command::Doctor { probe: None }
        );
        let c = p(&["doctor", "--probe", "192.0.2.1:25", "-c", "/x.toml"]).unwrap();
        assert_eq!(
            c.command,
            Command::Doctor {
                probe: Some("192.0.2.1:25".into())
            }
        );
        assert!(p(&["doctor", "--probe"]).is_err());
        assert!(p(&["--probe", "1.2.3.4:25"]).is_err());
    }

    #[test]
    fn sendmail_flags() {
        let c = p(&[
            "sendmail",
            "-t",
            "-oi",
            "-f",
            "me@example.org",
            "-Fme",
            "a@b.example",
        ])
        .unwrap();
        let Command::Sendmail(a) = c.command else {
            panic!()
        };
        assert!(a.from_headers && a.ignore_dots);
        assert_eq!(a.sender.as_deref(), Some("me@example.org"));
        assert_eq!(a.full_name.as_deref(), Some("me"));
        assert_eq!(a.recipients, vec!["a@b.example"]);
        let c = parse(
            "sendmail",
            vec!["-i".into(), "-fbob@x.example".into(), "x@y.example".into()],
        )
        .unwrap();
        let Command::Sendmail(a) = c.command else {
            panic!()
        };
        assert_eq!(a.sender.as_deref(), Some("bob@x.example"));
        assert!(parse("sendmail", vec!["-bs".into()]).is_err());
        assert!(parse("sendmail", vec!["-Q".into()]).is_err());
        let c = p(&["--config", "/c.toml", "sendmail", "x@y.example"]).unwrap();
        assert_eq!(c.config, Some(PathBuf::from("/c.toml")));
    }
}
