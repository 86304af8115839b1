//! Mail addresses as SMTP carries them (RFC 5321 4.1.2, RFC 6531 for UTF-8)
//! and the one policy question about them: is this recipient ours?
//!
//! Parsing is strict where it matters for relaying: a recipient is local
//! only when its domain is one of ours, written as a name (never an address
//! literal); source routes are dropped as RFC 5321 C.1 allows and the final
//! mailbox judged; `%` and `!` in a local part are ordinary characters, so
//! `bob%evil.example@our.domain` is just an unknown local user.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// As the client wrote it (quoted strings unquoted).
    pub local: String,
    /// Lower-cased; `[1.2.3.4]` literals keep their brackets.
    pub domain: String,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local_needs_quotes() {
            write!(
                f,
                "\"{}\"@{}",
                self.local.replace('\\', "\\\\").replace('"', "\\\""),
                self.domain
            )
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

impl Address {
    fn local_needs_quotes(&self) -> bool {
        self.local.is_empty()
            || self.local.starts_with('.')
            || self.local.ends_with('.')
            || self.local.contains("..")
            || !self.local.chars().all(|c| c == '.' || is_atext(c))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// Not `<...>` or otherwise malformed.
    Syntax,
    /// Non-ASCII without the SMTPUTF8 parameter (RFC 6531 3.4).
    NeedsUtf8,
}

/// RFC 5322 atext, plus any non-ASCII character (RFC 6532 3.2).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Parses a reverse-path or forward-path including its angle brackets:
/// `<>` gives `Ok(None)` (the null sender), `<a@b>` gives the address.
/// Returns the address and the rest of the line (ESMTP parameters).
pub fn parse_path(s: &str, utf8: bool) -> Result<(Option<Address>, &str), AddressError> {
    let s = s.trim_start();
    let inner_start = s.strip_prefix('<').ok_or(AddressError::Syntax)?;
    // Find the closing '>' outside a quoted string.
    let mut in_quote = false;
    let mut escaped = false;
    let mut close = None;
    for (i, c) in inner_start.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close.ok_or(AddressError::Syntax)?;
    let inner = &inner_start[..close];
    let rest = &inner_start[close + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(AddressError::Syntax);
    }
    if inner.is_empty() {
        return Ok((None, rest));
    }
    // Source route "@a,@b:user@c": RFC 5321 says to ignore the route.
    let mailbox = if inner.starts_with('@') {
        let (route, mb) = inner.split_once(':').ok_or(AddressError::Syntax)?;
        for hop in route.split(',') {
            let d = hop.strip_prefix('@').ok_or(AddressError::Syntax)?;
            if !crate::config::is_domain(d) {
                return Err(AddressError::Syntax);
            }
        }
        mb
    } else {
        inner
    };
    Ok((Some(parse_mailbox(mailbox, utf8)?), rest))
}

/// Parses `local@domain` (no brackets).
pub fn parse_mailbox(s: &str, utf8: bool) -> Result<Address, AddressError> {
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    if s.len() > 320 || s.chars().any(|c| c.is_control()) {
        return Err(AddressError::Syntax);
    }
    let (local, domain) = if let Some(q) = s.strip_prefix('"') {
        // Quoted local part: up to the closing quote, with \-escapes.
        let mut local = String::new();
        let mut chars = q.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => local.push(e),
                    None => return Err(AddressError::Syntax),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => local.push(c),
            }
        }
        let end = end.ok_or(AddressError::Syntax)?;
        let domain = q[end + 1..].strip_prefix('@').ok_or(AddressError::Syntax)?;
        (local, domain)
    } else {
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::Syntax)?;
        let dot_atom = !local.is_empty()
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| c == '.' || is_atext(c));
        if !dot_atom {
            return Err(AddressError::Syntax);
        }
        (local.to_string(), domain)
    };
    if local.len() > 64 {
        return Err(AddressError::Syntax);
    }
    let domain = domain.to_lowercase();
    let literal = domain.starts_with('[') && domain.ends_with(']');
    let valid_domain = if literal {
        let inner = &domain[1..domain.len() - 1];
        inner.parse::<std::net::Ipv4Addr>().is_ok()
            || inner
                .strip_prefix("ipv6:")
                .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    } else if utf8 {
        !domain.is_empty()
            && domain.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && l.chars().all(|c| c == '-' || c.is_alphanumeric())
            })
    } else {
        crate::config::is_domain(&domain)
    };
    if !valid_domain {
        return Err(AddressError::Syntax);
    }
    Ok(Address { local, domain })
}

/// Where a recipient goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// One of the user's addresses: the mbox.
    Local,
    /// One of our domains, but no such user.
    UnknownLocal,
    /// Another domain: outbound, for authenticated senders only.
    Remote,
}

/// The local-delivery policy of `[user]`: which addresses are the user's.
#[derive(Debug, Clone)]
pub struct LocalPolicy {
    pub domains: Vec<String>,
    pub addresses: Vec<String>,
    pub catch_all: bool,
}

impl LocalPolicy {
    pub fn from_config(c: &crate::config::Config) -> Self {
        LocalPolicy {
            domains: c.domains.clone(),
            addresses: c.user.addresses.clone(),
            catch_all: c.user.catch_all,
        }
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    /// `alice`, `Alice`, `alice+lists` are the user when `alice` is listed;
    /// `postmaster` always is (RFC 5321 4.5.1 requires it to exist).
    pub fn is_users_local_part(&self, local: &str) -> bool {
        let local = local.to_lowercase();
        let base = local.split_once('+').map_or(local.as_str(), |(b, _)| b);
        self.catch_all
            || base == "postmaster"
            || self.addresses.iter().any(|a| a == base || *a == local)
    }

    pub fn classify(&self, a: &Address) -> Destination {
        if !self.is_local_domain(&a.domain) {
            Destination::Remote
        } else if self.is_users_local_part(&a.local) {
            Destination::Local
        } else {
            Destination::UnknownLocal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        parse_mailbox(s, false).unwrap()
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("<>", false), Ok((None, "")));
        let (a, rest) = parse_path("<Alice@Example.ORG> SIZE=100", false).unwrap();
        assert_eq!(
            a,
            Some(Address {
                local: "Alice".into(),
                domain: "example.org".into()
            })
        );
        assert_eq!(rest, " SIZE=100");
        let (a, _) = parse_path("<@relay.example,@b.example:bob@c.example>", false).unwrap();
        assert_eq!(a.unwrap().to_string(), "bob@c.example");
        let (a, _) = parse_path("<\"john doe\\\"x\"@example.org>", false).unwrap();
        let a = a.unwrap();
        assert_eq!(a.local, "john doe\"x");
        assert_eq!(a.to_string(), "\"john doe\\\"x\"@example.org");
        let (a, _) = parse_path("<\"a>b\"@example.org>", false).unwrap();
        assert_eq!(a.unwrap().local, "a>b");
    }

    #[test]
    fn bad_paths() {
        for bad in [
            "alice@example.org",
            "<alice@example.org",
            "<alice>",
            "<alice@>",
            "<@example.org>",
            "<a..b@example.org>",
            "<.a@example.org>",
            "<a b@example.org>",
            "<a@exa mple.org>",
            "<a@example.org>junk",
            "<a@[999.1.1.1]>",
            "<@bad_route:a@b.example>",
            "<a@-example.org>",
        ] {
            assert_eq!(
                parse_path(bad, false).map(|_| ()),
                Err(AddressError::Syntax),
                "{bad}"
            );
        }
        assert_eq!(
            parse_path("<jörg@example.org>", false).map(|_| ()),
            Err(AddressError::NeedsUtf8)
        );
        let (a, _) = parse_path("<jörg@exämple.org>", true).unwrap();
        assert_eq!(a.unwrap().domain, "exämple.org");
    }

    #[test]
    fn literals() {
        assert_eq!(addr("a@[192.0.2.1]").domain, "[192.0.2.1]");
        assert_eq!(addr("a@[IPv6:2001:db8::1]").domain, "[ipv6:2001:db8::1]");
    }

    #[test]
    fn classify() {
        let p = LocalPolicy {
            domains: vec!["example.org".into(), "example.net".into()],
            addresses: vec!["alice".into(), "abuse".into()],
            catch_all: false,
        };
        use Destination::*;
        for (a, want) in [
            ("alice@example.org", Local),
            ("ALICE@Example.NET", Local),
            ("alice+lists@example.org", Local),
            ("postmaster@example.org", Local),
            ("abuse@example.org", Local),
            ("bob@example.org", UnknownLocal),
            ("alice%evil.example@example.org", UnknownLocal),
            ("evil.example!alice@example.org", UnknownLocal),
            ("alice@example.com", Remote),
            ("alice@[127.0.0.1]", Remote),
            ("alice@sub.example.org", Remote),
        ] {
            assert_eq!(p.classify(&addr(a)), want, "{a}");
        }
        let quoted = parse_path("<\"alice@evil.example\"@example.org>", false)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(p.classify(&quoted), UnknownLocal);
        let routed = parse_path("<@example.org:bob@evil.example>", false)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(p.classify(&routed), Remote);
        let all = LocalPolicy {
            catch_all: true,
            ..p
        };
        assert_eq!(all.classify(&addr("anything@example.org")), Local);
        assert_eq!(all.classify(&addr("anything@example.com")), Remote);
    }
}
