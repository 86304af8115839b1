//! Today's counts of the spam checks' decisions, for `pimail status`.
//!
//! The server counts in memory and writes `<data_dir>/spam-counts` at
//! most every [`WRITE_EVERY`] (and from its periodic flush), by temp file
//! and rename, without fsync: a crash loses at most a few seconds of
//! counts, never the file. The format is text:
//!
//! ```text
//! day 2026-03-01
//! pregreet 12
//! dnsbl 40
//! greylist 7
//! ```
//!
//! `day` is the UTC date the counts are for; then one `<check> <count>`
//! line per check that decided something that day. The checks are
//! `pregreet`, `dnsbl` (refused: listed), `greylist` (deferred), `rule`
//! (refused by a header rule), `dmarc` (refused, p=reject), and for mail
//! delivered to Junk: `junk-spf`, `junk-dmarc`, `junk-rule`. [`read_today`]
//! gives them back.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const FILE: &str = "spam-counts";
/// The most often the counts file is rewritten.
pub const WRITE_EVERY: Duration = Duration::from_secs(10);

fn day_of(unix: u64) -> String {
    let c = crate::util::timefmt::civil(unix);
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

fn parse(text: &str) -> (String, BTreeMap<String, u64>) {
    let mut day = String::new();
    let mut map = BTreeMap::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        match (it.next(), it.next()) {
            (Some("day"), Some(d)) => day = d.to_string(),
            (Some(k), Some(v)) => {
                if let Ok(n) = v.parse() {
                    map.insert(k.to_string(), n);
                }
            }
            _ => {}
        }
    }
    (day, map)
}

/// Today's (UTC) counts as the file has them: empty when the file is
/// missing or from another day.
pub fn read_today(data_dir: &Path) -> BTreeMap<String, u64> {
    read_day(data_dir, crate::util::timefmt::unix_now())
}

fn read_day(data_dir: &Path, now: u64) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(data_dir.join(FILE)).unwrap_or_default();
    let (day, map) = parse(&text);
    if day == day_of(now) {
        map
    } else {
        BTreeMap::new()
    }
}

/// The server's counters.
pub struct Counts {
    path: PathBuf,
    day: RefCell<String>,
    map: RefCell<BTreeMap<String, u64>>,
    dirty: Cell<bool>,
    written: Cell<Option<Instant>>,
}

impl Counts {
    /// Goes on from today's counts in the file (a restart keeps them).
    pub fn open(data_dir: &Path) -> Counts {
        let now = crate::util::timefmt::unix_now();
        Counts {
            path: data_dir.join(FILE),
            day: RefCell::new(day_of(now)),
            map: RefCell::new(read_day(data_dir, now)),
            dirty: Cell::new(false),
            written: Cell::new(None),
        }
    }

    /// Counts one decision of `check`.
    pub fn add(&self, check: &str) {
        let today = day_of(crate::util::timefmt::unix_now());
        if *self.day.borrow() != today {
            self.map.borrow_mut().clear();
            *self.day.borrow_mut() = today;
        }
        *self.map.borrow_mut().entry(check.to_string()).or_insert(0) += 1;
        self.dirty.set(true);
        if self
            .written
            .get()
            .map_or(true, |t| t.elapsed() >= WRITE_EVERY)
        {
            self.flush();
        }
    }

    /// Writes the file if anything changed since the last write.
    pub fn flush(&self) {
        if !self.dirty.get() {
            return;
        }
        let mut text = format!("day {}\n", self.day.borrow());
        for (k, v) in self.map.borrow().iter() {
            text += &format!("{k} {v}\n");
        }
        let tmp = self.path.with_extension("tmp");
        let r = (|| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = r {
            log::warn!("cannot write {}: {e}", self.path.display());
        }
        self.dirty.set(false);
        self.written.set(Some(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_written_and_read_back_for_today_only() {
        let d = std::env::temp_dir().join(format!("pimail-counts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let c = Counts::open(&d);
        c.add("dnsbl");
        c.add("dnsbl");
        c.add("pregreet");
        c.flush();
        let t = read_today(&d);
        assert_eq!(t.get("dnsbl"), Some(&2));
        assert_eq!(t.get("pregreet"), Some(&1));
        // A restart goes on counting.
        let c = Counts::open(&d);
        c.add("dnsbl");
        c.flush();
        assert_eq!(read_today(&d).get("dnsbl"), Some(&3));
        // Yesterday's file says nothing about today.
        std::fs::write(d.join(FILE), "day 2000-01-01\ndnsbl 9\n").unwrap();
        assert!(read_today(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
