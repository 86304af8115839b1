//! `pimail status`: one screen on the running server, and an exit code
//! for cron and monitoring: 0 when all is well, 1 when something needs
//! attention (a certificate about to expire, a nearly full disk, mail
//! stuck in the queue), 3 when the server is not running, 4 when its
//! status file cannot be read (the LSB conventions of `service status`).
//!
//! The server writes a small status file, `<data_dir>/status` (key=value
//! lines: pid, start time, version, listeners, the last message accepted
//! and sent), at start and when something changes, at most every few
//! seconds; this command reads it with the config, the queue and the
//! certificate. No socket, no request to the server: it works as any
//! user who can read data_dir, and costs the server nothing.

use crate::config::Config;
use crate::util::activity::Event;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The status file's name under data_dir.
pub const FILE: &str = "status";
/// A certificate expiring sooner than this needs attention.
pub const CERT_WARN_DAYS: i64 = 14;
/// A queued message older than this is stuck.
pub const QUEUE_OLD_SECS: u64 = 24 * 3600;
/// Free space below either of these is "nearly full".
pub const DISK_MIN_PERCENT: u64 = 5;
pub const DISK_MIN_BYTES: u64 = 100 << 20;

/// What the server writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusFile {
    pub pid: u32,
    pub started: u64,
    pub version: String,
    /// "smtp 127.0.0.1:2525"
    pub listen: Vec<String>,
    pub received: Option<Event>,
    pub sent: Option<Event>,
}

fn event_line(key: &str, e: &Option<Event>, out: &mut String) {
    if let Some(e) = e {
        let _ = writeln!(out, "{key}={} {} {}", e.at, e.id, e.who);
    }
}

fn parse_event(v: &str) -> Option<Event> {
    let mut it = v.splitn(3, ' ');
    Some(Event {
        at: it.next()?.parse().ok()?,
        id: it.next()?.to_string(),
        who: it.next().unwrap_or("").to_string(),
    })
}

impl StatusFile {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "pid={}\nstarted={}\nversion={}\n",
            self.pid, self.started, self.version
        );
        for l in &self.listen {
            let _ = writeln!(out, "listen={l}");
        }
        event_line("received", &self.received, &mut out);
        event_line("sent", &self.sent, &mut out);
        out
    }

    /// Unknown or broken lines are skipped: a newer server may add keys.
    pub fn parse(text: &str) -> StatusFile {
        let mut s = StatusFile::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "pid" => s.pid = v.parse().unwrap_or(0),
                "started" => s.started = v.parse().unwrap_or(0),
                "version" => s.version = v.to_string(),
                "listen" => s.listen.push(v.to_string()),
                "received" => s.received = parse_event(v),
                "sent" => s.sent = parse_event(v),
                _ => {}
            }
        }
        s
    }

    /// Writes the file for the running server (atomically: a reader never
    /// sees half of it).
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        crate::util::paths::write_status(&data_dir.join(FILE), self.to_text().as_bytes())
    }
}

/// Starts the thread that keeps the status file current: written now,
/// then again within a few seconds of each accepted or sent message.
pub fn start_writer(data_dir: PathBuf, listen: Vec<String>) {
    let mut file = StatusFile {
        pid: std::process::id(),
        started: crate::util::timefmt::unix_now(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        listen,
        received: None,
        sent: None,
    };
    if let Err(e) = file.write(&data_dir) {
        log::warn!(
            "cannot write {}: {e}; `pimail status` will say the server is not running",
            data_dir.join(FILE).display()
        );
    }
    let spawned = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let mut seen = crate::util::activity::changes();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                let now = crate::util::activity::changes();
                if now == seen {
                    continue;
                }
                seen = now;
                file.received = crate::util::activity::last_received();
                file.sent = crate::util::activity::last_sent();
                if let Err(e) = file.write(&data_dir) {
                    log::warn!("cannot write the status file: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the status writer: {e}");
    }
}

/// Is `pid` a running pimail (not a reused pid of another program)?
fn is_pimail(pid: u32) -> bool {
    if pid == 0 || !crate::util::sys::process_alive(pid) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim().starts_with("pimail"),
        // Another user's process (hidepid) or no /proc: trust kill(0).
        Err(_) => true,
    }
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn mib(n: u64) -> String {
    if n >= 10 << 30 {
        format!("{} GiB", n >> 30)
    } else {
        format!("{} MiB", n >> 20)
    }
}

/// The report and the exit code (0, 1 or 3).
pub fn report(config: &Config, now: u64) -> (String, u8) {
    let mut out = String::new();
    let mut attention = Vec::<String>::new();
    let file = config.data_dir.join(FILE);
    let status = match std::fs::read_to_string(&file) {
        Ok(t) => Some(StatusFile::parse(&t)),
        // Not knowing is not "not running" (LSB: 4, status unknown).
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return (
                format!(
                    "cannot read {}: {e}; run `pimail status` as the service user (sudo -u pimail) or root\n",
                    file.display()
                ),
                4,
            );
        }
        Err(_) => None,
    };
    let running = status.as_ref().is_some_and(|s| is_pimail(s.pid));
    match (&status, running) {
        (Some(s), true) => {
            let _ = writeln!(
                out,
                "server:      running, pid {}, up {}, version {}",
                s.pid,
                ago(now.saturating_sub(s.started)),
                s.version
            );
            for l in &s.listen {
                let _ = writeln!(out, "listening:   {l}");
            }
        }
        (Some(s), false) => {
            let _ = writeln!(
                out,
                "server:      NOT RUNNING (last started {} ago as pid {})",
                ago(now.saturating_sub(s.started)),
                s.pid
            );
        }
        (None, _) => {
            let _ = writeln!(out, "server:      NOT RUNNING (no {})", file.display());
        }
    }
    let show = |label: &str, e: &Option<Event>, out: &mut String| match e {
        Some(e) => {
            let _ = writeln!(
                out,
                "{label} {} ago, id {} {}",
                ago(now.saturating_sub(e.at)),
                e.id,
                e.who
            );
        }
        None => {
            let _ = writeln!(out, "{label} none since the start");
        }
    };
    if let Some(s) = &status {
        show(
            "received:   ",
            &s.received.as_ref().map(|e| Event {
                who: format!("from <{}>", e.who),
                ..e.clone()
            }),
            &mut out,
        );
        show(
            "sent:       ",
            &s.sent.as_ref().map(|e| Event {
                who: format!("to <{}>", e.who),
                ..e.clone()
            }),
            &mut out,
        );
    }

    // The queue: what is waiting, how long, and when it is tried next.
    let q = crate::send::queue::Queue::new(&config.data_dir);
    match q.list() {
        Ok(entries) => {
            let pending: Vec<_> = entries
                .iter()
                .filter(|e| {
                    e.rcpts
                        .iter()
                        .any(|r| r.state == crate::send::queue::State::Pending)
                })
                .collect();
            if pending.is_empty() {
                let _ = writeln!(out, "queue:       empty");
            } else {
                let oldest = pending.iter().map(|e| e.created).min().unwrap_or(now);
                let next = pending
                    .iter()
                    .flat_map(|e| e.rcpts.iter())
                    .filter(|r| r.state == crate::send::queue::State::Pending)
                    .map(|r| r.next)
                    .min()
                    .unwrap_or(now);
                let _ = writeln!(
                    out,
                    "queue:       {} message(s), oldest {} old, next attempt {}",
                    pending.len(),
                    ago(now.saturating_sub(oldest)),
                    if next <= now {
                        "now".to_string()
                    } else {
                        format!("in {}", ago(next - now))
                    }
                );
                if now.saturating_sub(oldest) > QUEUE_OLD_SECS {
                    attention.push(format!(
                        "mail has waited in the queue for {} (see `pimail queue list`)",
                        ago(now.saturating_sub(oldest))
                    ));
                }
            }
        }
        Err(crate::send::queue::QueueError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let _ = writeln!(out, "queue:       empty");
        }
        Err(e) => {
            let _ = writeln!(out, "queue:       cannot read: {e}");
            attention.push(format!("cannot read the queue: {e}"));
        }
    }

    // What the spam checks refused today (docs/spam.md).
    let refused = crate::trust::counts::read_today(&config.data_dir);
    if refused.is_empty() {
        let _ = writeln!(out, "refused:     nothing today");
    } else {
        let list: Vec<String> = refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "refused:     today {}", list.join(", "));
    }

    // The certificate, as clients will see it.
    if let Some(t) = &config.tls {
        match std::fs::read_to_string(&t.cert)
            .ok()
            .and_then(|p| crate::trust::doctor::parse_cert_pem(&p))
        {
            Some(info) => {
                let days = (info.not_after - now as i64).div_euclid(86400);
                let _ = writeln!(
                    out,
                    "certificate: {} expires in {days} days",
                    t.cert.display()
                );
                if days < CERT_WARN_DAYS {
                    attention.push(format!(
                        "the TLS certificate {} expires in {days} days (`certbot renew`)",
                        t.cert.display()
                    ));
                }
            }
            None => {
                let _ = writeln!(out, "certificate: cannot read {}", t.cert.display());
                attention.push(format!(
                    "cannot read the TLS certificate {}",
                    t.cert.display()
                ));
            }
        }
    } else {
        let _ = writeln!(out, "certificate: none ([tls] not configured)");
    }

    // Disk space where mail is written.
    let mbox_dir = config
        .user
        .mbox
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    for (what, dir) in [("data_dir", &config.data_dir), ("mbox", &mbox_dir)] {
        match crate::util::sys::disk_space(dir) {
            Ok((free, total)) => {
                let pct = (free * 100).checked_div(total).unwrap_or(100);
                let _ = writeln!(
                    out,
                    "disk:        {what} {}: {} free ({pct}%)",
                    dir.display(),
                    mib(free)
                );
                if pct < DISK_MIN_PERCENT || free < DISK_MIN_BYTES {
                    attention.push(format!(
                        "the disk of {} is nearly full ({} free)",
                        dir.display(),
                        mib(free)
                    ));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "disk:        {what} {}: {e}", dir.display());
                attention.push(format!("cannot check the disk of {}: {e}", dir.display()));
            }
        }
    }

    if !running {
        let _ = writeln!(
            out,
            "\nNOT RUNNING: start it (`systemctl start pimail`, or `pimail serve`)"
        );
    }
    for a in &attention {
        let _ = writeln!(out, "ATTENTION: {a}");
    }
    if running && attention.is_empty() {
        let _ = writeln!(out, "\nall well");
    }
    let code = if !running {
        3
    } else if !attention.is_empty() {
        1
    } else {
        0
    };
    (out, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_file_round_trips() {
        let s = StatusFile {
            pid: 42,
            started: 1000,
            version: "0.1.0".into(),
            listen: vec!["smtp 127.0.0.1:25".into(), "pop3 [::1]:110".into()],
            received: Some(Event {
                at: 5,
                id: "abc".into(),
                who: "bob@example.com".into(),
            }),
            sent: None,
        };
        assert_eq!(StatusFile::parse(&s.to_text()), s);
        assert_eq!(StatusFile::parse("junk\nfuture=1\npid=7\n").pid, 7);
    }
}
