//! SMTP command lines (RFC 5321 4.1) into [`Command`]s.
//!
//! Verbs are case-insensitive. `MAIL FROM:` and `RCPT TO:` take the
//! parameters we advertise (SIZE, BODY, SMTPUTF8, AUTH); anything else is
//! `555` as RFC 5321 4.1.1.11 asks. A space after the colon is tolerated, as
//! every large server does, because many clients send it.

use crate::mail::address::{parse_path, Address, AddressError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: Option<Address>,
        params: MailParams,
    },
    Rcpt {
        to: Address,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// `500 5.5.1`: not a command we know.
    Unknown,
    /// `501 5.5.4` (or `5.1.7`/`5.1.3` for addresses): bad arguments.
    Syntax(&'static str),
    /// `553 5.6.7`: non-ASCII address without SMTPUTF8.
    NeedsUtf8,
    /// `555 5.5.4`: a MAIL/RCPT parameter we do not support.
    UnknownParam,
}

/// Parses one command line (without CRLF).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line =
        std::str::from_utf8(line).map_err(|_| ParseError::Syntax("command is not valid UTF-8"))?;
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_arg = |c: Command| {
        if arg.trim().is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax("this command takes no argument"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let name = arg.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(ParseError::Syntax(
                    "give your host name: EHLO host.example.org",
                ));
            }
            let name = name.to_string();
            Ok(if verb == "EHLO" {
                Command::Ehlo(name)
            } else {
                Command::Helo(name)
            })
        }
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_arg(Command::Data),
        "RSET" => no_arg(Command::Rset),
        "QUIT" => no_arg(Command::Quit),
        "STARTTLS" => no_arg(Command::StartTls),
        // NOOP, HELP, VRFY and EXPN may carry an argument we ignore.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "AUTH" => {
            let mut parts = arg.split(' ').filter(|s| !s.is_empty());
            let mechanism = parts
                .next()
                .ok_or(ParseError::Syntax("AUTH needs a mechanism: AUTH PLAIN"))?
                .to_ascii_uppercase();
            let initial = parts.next().map(str::to_string);
            if parts.next().is_some() {
                return Err(ParseError::Syntax(
                    "AUTH takes a mechanism and an initial response",
                ));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(ParseError::Unknown),
    }
}

/// `FROM:<path> [params]`, case-insensitive keyword.
fn after_keyword<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    if head.eq_ignore_ascii_case(keyword) {
        Some(arg[keyword.len()..].trim_start_matches(' '))
    } else {
        None
    }
}

fn parse_mail(arg: &str) -> Result<Command, ParseError> {
    let rest = after_keyword(arg, "FROM:").ok_or(ParseError::Syntax("use MAIL FROM:<address>"))?;
    // SMTPUTF8 is a parameter after the path, so look for it first.
    let utf8 = rest
        .split(' ')
        .skip(1)
        .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
    let (from, params_str) = parse_path(rest, utf8).map_err(|e| match e {
        AddressError::NeedsUtf8 => ParseError::NeedsUtf8,
        AddressError::Syntax => ParseError::Syntax("bad sender address syntax"),
    })?;
    let mut params = MailParams::default();
    for p in params_str.split(' ').filter(|s| !s.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => {
                params.size = Some(
                    v.parse()
                        .map_err(|_| ParseError::Syntax("SIZE needs a number"))?,
                )
            }
            "BODY" => match v.to_ascii_uppercase().as_str() {
                "7BIT" => {}
                "8BITMIME" => params.eight_bit = true,
                _ => return Err(ParseError::UnknownParam),
            },
            "SMTPUTF8" if v.is_empty() => params.smtputf8 = true,
            // RFC 4954 5: AUTH=<> or AUTH=addr may be sent; we do not trust it.
            "AUTH" => {}
            _ => return Err(ParseError::UnknownParam),
        }
    }
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(arg: &str) -> Result<Command, ParseError> {
    let rest = after_keyword(arg, "TO:").ok_or(ParseError::Syntax("use RCPT TO:<address>"))?;
    // RFC 5321 4.5.1: <Postmaster> without a domain must be accepted.
    if let Some(after) = after_keyword(rest, "<postmaster>") {
        if after.trim().is_empty() {
            return Ok(Command::Rcpt {
                to: Address {
                    local: "postmaster".into(),
                    domain: String::new(),
                },
            });
        }
    }
    // UTF-8 recipients are allowed here; the session checks that the
    // transaction declared SMTPUTF8.
    let (to, params) =
        parse_path(rest, true).map_err(|_| ParseError::Syntax("bad recipient address syntax"))?;
    let to = to.ok_or(ParseError::Syntax(
        "the null address <> cannot be a recipient",
    ))?;
    if !params.trim().is_empty() {
        return Err(ParseError::UnknownParam);
    }
    Ok(Command::Rcpt { to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ParseError> {
        parse(s.as_bytes())
    }

    #[test]
    fn simple_verbs_any_case() {
        assert_eq!(
            p("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            p("HELO [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(p("DaTa"), Ok(Command::Data));
        assert_eq!(p("RSET"), Ok(Command::Rset));
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("NOOP hello"), Ok(Command::Noop));
        assert_eq!(p("HELP"), Ok(Command::Help));
        assert_eq!(p("VRFY alice"), Ok(Command::Vrfy));
        assert_eq!(p("EXPN list"), Ok(Command::Expn));
        assert_eq!(p("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(
            p("AUTH plain AGFAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFAYg==".into())
            })
        );
        assert_eq!(
            p("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
    }

    #[test]
    fn errors() {
        assert_eq!(p("FOO"), Err(ParseError::Unknown));
        assert_eq!(p(""), Err(ParseError::Unknown));
        assert!(matches!(p("EHLO"), Err(ParseError::Syntax(_))));
        assert!(matches!(p("DATA now"), Err(ParseError::Syntax(_))));
        assert!(matches!(p("QUIT x"), Err(ParseError::Syntax(_))));
        assert!(matches!(p("AUTH"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            p("MAIL alice@example.org"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:alice@example.org"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(p("RCPT TO:<>"), Err(ParseError::Syntax(_))));
        assert!(matches!(p("RCPT alice"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            p("MAIL FROM:<a@b.example> SIZE=x"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(
            p("MAIL FROM:<a@b.example> RET=FULL"),
            Err(ParseError::UnknownParam)
        );
        assert_eq!(
            p("MAIL FROM:<a@b.example> BODY=BINARYMIME"),
            Err(ParseError::UnknownParam)
        );
        assert_eq!(
            p("RCPT TO:<a@b.example> NOTIFY=NEVER"),
            Err(ParseError::UnknownParam)
        );
        assert_eq!(p("MAIL FROM:<jörg@b.example>"), Err(ParseError::NeedsUtf8));
        assert!(matches!(
            parse(b"MAIL FROM:<\xff@b.example>"),
            Err(ParseError::Syntax(_))
        ));
    }

    #[test]
    fn mail_and_rcpt() {
        let c = p("MAIL FROM:<Bob@Example.COM> SIZE=1000 BODY=8BITMIME").unwrap();
        let Command::Mail { from, params } = c else {
            panic!()
        };
        assert_eq!(from.unwrap().to_string(), "Bob@example.com");
        assert_eq!(
            params,
            MailParams {
                size: Some(1000),
                eight_bit: true,
                smtputf8: false
            }
        );
        assert_eq!(
            p("mail from: <>"),
            Ok(Command::Mail {
                from: None,
                params: MailParams::default()
            })
        );
        let c = p("MAIL FROM:<jörg@b.example> SMTPUTF8").unwrap();
        assert!(matches!(
            c,
            Command::Mail {
                params: MailParams { smtputf8: true, .. },
                ..
            }
        ));
        let Command::Rcpt { to } = p("RCPT TO:<alice@example.org>").unwrap() else {
            panic!()
        };
        assert_eq!(to.to_string(), "alice@example.org");
        let Command::Rcpt { to } = p("rcpt to:<Postmaster>").unwrap() else {
            panic!()
        };
        assert_eq!((to.local.as_str(), to.domain.as_str()), ("postmaster", ""));
    }
}
