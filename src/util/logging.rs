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
    for ch in msg.chars() {
        match ch {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c => line.push(c),
        }
    }
    line.push('\n');
    line
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
        let line = format_line(
            self.style,
            crate::util::timefmt::unix_now(),
            r.level(),
            &r.args().to_string(),
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
    }
}
