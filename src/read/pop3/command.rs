//! POP3 command lines (RFC 1939 section 3, RFC 2449 CAPA, RFC 5034 AUTH,
//! RFC 2595 STLS), parsed into [`Command`] without any state.
//!
//! Keywords are case-insensitive; arguments are separated by spaces. PASS
//! takes the rest of the line, so passwords with spaces work (as in most
//! servers; RFC 1939 leaves this open).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    /// The password bytes (not necessarily UTF-8).
    Pass(Vec<u8>),
    /// AUTH with a mechanism and perhaps an initial response (RFC 5034).
    Auth {
        mechanism: Option<String>,
        initial: Option<String>,
    },
    Capa,
    Stls,
    Stat,
    List(Option<u32>),
    Retr(u32),
    Top(u32, u64),
    Uidl(Option<u32>),
    Dele(u32),
    Rset,
    Noop,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Unknown,
    /// The command is known; its arguments are not right.
    Syntax(&'static str),
}

/// RFC 1939 section 3: message numbers are decimal, from 1.
fn number(s: &str) -> Result<u32, ParseError> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Syntax("invalid message number"));
    }
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(ParseError::Syntax("invalid message number")),
        Ok(n) => Ok(n),
    }
}

pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    let keyword = keyword.to_ascii_uppercase();
    if keyword == b"PASS" {
        return if rest.is_empty() {
            Err(ParseError::Syntax("PASS needs a password"))
        } else {
            Ok(Command::Pass(rest.to_vec()))
        };
    }
    let rest = std::str::from_utf8(rest).map_err(|_| ParseError::Syntax("not UTF-8"))?;
    let args: Vec<&str> = rest.split_ascii_whitespace().collect();
    let none = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax("this command takes no arguments"))
        }
    };
    let optional = |make: fn(Option<u32>) -> Command| match args.as_slice() {
        [] => Ok(make(None)),
        [n] => Ok(make(Some(number(n)?))),
        _ => Err(ParseError::Syntax("too many arguments")),
    };
    let one = |make: fn(u32) -> Command| match args.as_slice() {
        [n] => Ok(make(number(n)?)),
        [] => Err(ParseError::Syntax("message number missing")),
        _ => Err(ParseError::Syntax("too many arguments")),
    };
    match keyword.as_slice() {
        b"USER" => match args.as_slice() {
            [name] => Ok(Command::User(name.to_string())),
            _ => Err(ParseError::Syntax("USER needs one name")),
        },
        b"AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [m] => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: None,
            }),
            [m, i] => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: Some(i.to_string()),
            }),
            _ => Err(ParseError::Syntax("too many arguments")),
        },
        b"CAPA" => none(Command::Capa),
        b"STLS" => none(Command::Stls),
        b"STAT" => none(Command::Stat),
        b"RSET" => none(Command::Rset),
        b"NOOP" => none(Command::Noop),
        b"QUIT" => none(Command::Quit),
        b"LIST" => optional(Command::List),
        b"UIDL" => optional(Command::Uidl),
        b"RETR" => one(Command::Retr),
        b"DELE" => one(Command::Dele),
        b"TOP" => match args.as_slice() {
            [n, lines] => {
                let n = number(n)?;
                if lines.is_empty()
                    || lines.len() > 18
                    || !lines.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(ParseError::Syntax("invalid line count"));
                }
                let lines = lines
                    .parse()
                    .map_err(|_| ParseError::Syntax("invalid line count"))?;
                Ok(Command::Top(n, lines))
            }
            _ => Err(ParseError::Syntax(
                "TOP needs a message number and a line count",
            )),
        },
        _ => Err(ParseError::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse(b"user alice"), Ok(Command::User("alice".into())));
        assert_eq!(parse(b"PASS a b  c"), Ok(Command::Pass(b"a b  c".to_vec())));
        assert_eq!(parse(b"list"), Ok(Command::List(None)));
        assert_eq!(parse(b"LIST 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse(b"TOP 2 0"), Ok(Command::Top(2, 0)));
        assert_eq!(parse(b"uidl 12"), Ok(Command::Uidl(Some(12))));
        assert_eq!(
            parse(b"AUTH plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert_eq!(
            parse(b"RETR 0"),
            Err(ParseError::Syntax("invalid message number"))
        );
        assert_eq!(
            parse(b"RETR -1"),
            Err(ParseError::Syntax("invalid message number"))
        );
        assert_eq!(
            parse(b"RETR"),
            Err(ParseError::Syntax("message number missing"))
        );
        assert_eq!(
            parse(b"STAT x"),
            Err(ParseError::Syntax("this command takes no arguments"))
        );
        assert_eq!(parse(b"APOP a b"), Err(ParseError::Unknown));
        assert_eq!(
            parse(b"PASS"),
            Err(ParseError::Syntax("PASS needs a password"))
        );
        assert_eq!(
            parse(b"RETR 99999999999"),
            Err(ParseError::Syntax("invalid message number"))
        );
    }
}
