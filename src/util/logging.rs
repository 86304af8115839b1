//! Logging to stderr, shaped for the systemd journal (a `log::Log`).
//!
//! Under systemd, stderr is connected to journald (`$JOURNAL_STREAM` names
//! that stream's device and inode, systemd.exec(5)): lines then carry no
//! timestamp (the journal adds its own) and start with a syslog priority
//! prefix `<N>` (sd-daemon(3)), which journald strips and stores as the
//! entry's priority, so `journalctl -p warning` and the colours work.
//! Elsewhere lines start with an RFC 3339 UTC timestamp. Either way one
//! event is one line: newlines inside a message (say, from a client's
//! text) are escaped, so they can neither split an entry nor forge one.
//! Never log a password.
//!
//! Values a client chose (HELO names, addresses, replies that echo them,
//! login names) go into a line through [`quoted`] only, and after the
//! line's fixed fields: in double quotes, with every control or
//! non-printing character escaped (ESC, NUL, VT, FF, U+2028, bidi
//! controls...), so a value can neither end its quotes, nor colour a
//! terminal, nor pose as the start of another event. The fail2ban filter
//! (`systemd/fail2ban/pimail.conf`) is anchored at the start of the
//! message, so text inside such a field never matches it.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

/// How a line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `<6>INFO message`
    Journal,
    /// `2026-11-25T03:07:31Z INFO message`
    Terminal,
}

/// The syslog priority journald stores for a level (RFC 5424 severities:
/// 3 error, 4 warning, 6 informational, 7 debug).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One log line, with its newline.
pub fn format_line(style: Style, now: u64, level: Level, msg: &str) -> String {
    format_args_line(style, now, level, format_args!("{msg}"))
}

/// [`format_line`] for a record's arguments, formatted straight into the
/// line through the escaping (one buffer, one pass).
fn format_args_line(style: Style, now: u64, level: Level, msg: std::fmt::Arguments) -> String {
    let mut line = match style {
        Style::Journal => format!("<{}>{level:<5} ", priority(level)),
        Style::Terminal => {
            let c = crate::util::timefmt::civil(now);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z {level:<5} ",
                c.year, c.month, c.day, c.hour, c.min, c.sec
            )
        }
    };
    // A second line of defence: a value that missed `quoted` still cannot
    // split the line or send control sequences to a terminal.
    use std::fmt::Write as _;
    let _ = Escaping(&mut line).write_fmt(msg);
    line.push('\n');
    line
}

/// Writes what it is given escaped (not in quotes) into a line.
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_to(self.0, s, false)
    }
}

/// Shown as itself in a log line? ASCII controls are not; beyond ASCII,
/// whatever Rust's `Debug` for `str` would escape (Unicode controls,
/// format characters such as U+200B and the bidi overrides, line and
/// paragraph separators, spaces other than U+0020, combining marks,
/// unassigned and private-use code points) is not either.
fn printable(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_control();
    }
    let s = c.to_string();
    format!("{s:?}") == format!("\"{s}\"")
}

/// Writes `s` with every character that is not [`printable`] written as
/// `\n`, `\r`, `\t`, `\0` or `\u{HEX}`; with `quotes`, `"` and `\` are
/// escaped too, so that the text can sit between double quotes.
///
/// Every line passes through here (a client's values once more inside
/// it), so runs of plain printable ASCII, nearly all of any line, are
/// copied whole; only the characters between them are looked at one by
/// one.
fn escape_to(out: &mut impl std::fmt::Write, s: &str, quotes: bool) -> std::fmt::Result {
    let bytes = s.as_bytes();
    let plain = |b: u8| (0x20..0x7f).contains(&b) && !(quotes && (b == b'"' || b == b'\\'));
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .position(|&b| !plain(b))
            .unwrap_or(bytes.len() - i);
        // `i` and `i + run` sit on ASCII bytes or the end: char boundaries.
        out.write_str(&s[i..i + run])?;
        i += run;
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        i += c.len_utf8();
        match c {
            '"' | '\\' if quotes => {
                out.write_char('\\')?;
                out.write_char(c)?;
            }
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '\0' => out.write_str("\\0")?,
            c if printable(c) => out.write_char(c)?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
    }
    Ok(())
}

/// A value taken from a client, ready for a log line: `"..."` with
/// quotes, backslashes and every non-printing character escaped. The one
/// way client text enters the log (see the module notes).
pub fn quoted(s: &str) -> Quoted<'_> {
    Quoted(s, false)
}

/// An address as the log shows it, `"<a@b>"`: [`quoted`] of the path
/// with its angle brackets, without building that string first.
pub fn quoted_path(s: &str) -> Quoted<'_> {
    Quoted(s, true)
}

/// See [`quoted`]; with `.1`, in angle brackets ([`quoted_path`]).
pub struct Quoted<'a>(&'a str, bool);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.1 { "\"<" } else { "\"" })?;
        escape_to(f, self.0, true)?;
        f.write_str(if self.1 { ">\"" } else { "\"" })
    }
}

/// True when stderr is the journal stream systemd set up for us (not, say,
/// a shell started from a unit, whose stderr is a terminal even though
/// `$JOURNAL_STREAM` was inherited).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

struct Logger {
    style: Style,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        // Only our own crate's lines: dependencies are chatty at debug.
        m.target().starts_with("pimail")
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format_args_line(
            self.style,
            crate::util::timefmt::unix_now(),
            r.level(),
            *r.args(),
        );
        // One write per line keeps lines whole even if another thread logs.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger once: `level` from the config, raised by `-v`
/// (debug) and `-vv` (trace).
pub fn init(level: LevelFilter, verbose: u8) {
    let level = match verbose {
        0 => level,
        1 => level.max(LevelFilter::Debug),
        _ => LevelFilter::Trace,
    };
    let style = if stderr_is_journal() {
        Style::Journal
    } else {
        Style::Terminal
    };
    // Leaked on purpose: the logger lives as long as the process.
    let logger: &'static Logger = Box::leak(Box::new(Logger { style }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_the_priority_and_no_time() {
        assert_eq!(
            format_line(Style::Journal, 0, Level::Error, "disk full"),
            "<3>ERROR disk full\n"
        );
        assert_eq!(
            format_line(Style::Journal, 0, Level::Warn, "w"),
            "<4>WARN  w\n"
        );
        assert_eq!(
            format_line(Style::Journal, 0, Level::Info, "i"),
            "<6>INFO  i\n"
        );
        assert_eq!(
            format_line(Style::Journal, 0, Level::Trace, "t"),
            "<7>TRACE t\n"
        );
    }

    #[test]
    fn terminal_lines_start_with_utc_time() {
        assert_eq!(
            format_line(Style::Terminal, 1_795_000_000, Level::Info, "x"),
            "2026-11-18T11:06:40Z INFO  x\n"
        );
    }

    #[test]
    fn one_event_is_one_line() {
        let l = format_line(Style::Journal, 0, Level::Info, "a\r\n<3>forged");
        assert_eq!(l, "<6>INFO  a\\r\\n<3>forged\n");
        assert_eq!(l.matches('\n').count(), 1);
        // Terminal escapes and other controls are written out too.
        let l = format_line(
            Style::Journal,
            0,
            Level::Info,
            "\u{1b}[31mred\0\u{b}\u{c}\u{2028}x",
        );
        assert_eq!(l, "<6>INFO  \\u{1b}[31mred\\0\\u{b}\\u{c}\\u{2028}x\n");
    }

    #[test]
    fn quoted_values_cannot_escape_their_quotes() {
        assert_eq!(
            quoted("mail.example.net").to_string(),
            "\"mail.example.net\""
        );
        assert_eq!(
            quoted("\"auth failed: rhost=198.51.100.9 \"@example.org").to_string(),
            "\"\\\"auth failed: rhost=198.51.100.9 \\\"@example.org\""
        );
        assert_eq!(quoted("a\\b").to_string(), "\"a\\\\b\"");
        assert_eq!(quoted_path("a@b\"x").to_string(), "\"<a@b\\\"x>\"");
        assert_eq!(quoted_path("").to_string(), "\"<>\"");
        assert_eq!(
            quoted("\u{1b}]0;x\u{7}\r\n\t\u{7f}\u{85}").to_string(),
            "\"\\u{1b}]0;x\\u{7}\\r\\n\\t\\u{7f}\\u{85}\""
        );
        // Invisible or look-alike characters beyond ASCII are escaped...
        assert_eq!(
            quoted("a\u{202e}b\u{200b}c\u{a0}d\u{feff}\u{2029}").to_string(),
            "\"a\\u{202e}b\\u{200b}c\\u{a0}d\\u{feff}\\u{2029}\""
        );
        // ...and combining marks (spoofing material) too, while letters
        // in any script are kept.
        assert_eq!(
            quoted("Grüße, 中文, e\u{301}").to_string(),
            "\"Grüße, 中文, e\\u{301}\""
        );
    }
}
