//! Logging to stderr for the journal (log + simplelog). Under systemd
//! (`$JOURNAL_STREAM` set) timestamps are left out, since the journal adds
//! its own. One line per event; never a password.

use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};

pub fn init(level: LevelFilter, verbose: u8) {
    let level = match verbose {
        0 => level,
        1 => level.max(LevelFilter::Debug),
        _ => LevelFilter::Trace,
    };
    let mut b = ConfigBuilder::new();
    b.set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.set_time_level(LevelFilter::Off);
    } else {
        b.set_time_format_rfc3339();
    }
    // Only our own crate's lines: rustls and friends are chatty at debug.
    b.add_filter_allow_str("pimail");
    let _ = WriteLogger::init(level, b.build(), std::io::stderr());
}
