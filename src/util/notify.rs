//! systemd readiness notification (`sd_notify`) without libsystemd.
//!
//! With `Type=notify` systemd sets `$NOTIFY_SOCKET` to a Unix datagram
//! socket and waits for `READY=1` before it calls the unit started (so
//! units ordered after pimail, and `systemctl start` itself, wait until the
//! listeners are bound). The protocol is one datagram of newline-separated
//! `KEY=VALUE` lines (sd_notify(3)); the socket path is either a file
//! system path or, when it starts with `@`, a Linux abstract socket name.
//! Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// What went wrong telling systemd; the server logs it and goes on, since
/// a missed notification is systemd's timeout to report, not a reason to
/// stop serving mail.
#[derive(Debug)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    BadAddress(String),
    Io(io::Error),
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyError::BadAddress(a) => write!(f, "NOTIFY_SOCKET={a:?} is not a socket address"),
            NotifyError::Io(e) => write!(f, "cannot notify systemd: {e}"),
        }
    }
}

/// The address `$NOTIFY_SOCKET` names: `@name` is abstract (the leading
/// `@` stands for the NUL byte), `/path` a socket file.
pub fn parse_address(s: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::BadAddress(s.to_string());
    if let Some(name) = s.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad());
        }
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())
    } else if s.starts_with('/') {
        SocketAddr::from_pathname(s).map_err(|_| bad())
    } else {
        Err(bad())
    }
}

/// Sends `state` (e.g. `"READY=1"`) to the socket in `$NOTIFY_SOCKET`.
/// `Ok(false)` when not running under a notify-type systemd unit.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = parse_address(&addr.to_string_lossy())?;
    send(&addr, state)?;
    Ok(true)
}

fn send(addr: &SocketAddr, state: &str) -> Result<(), NotifyError> {
    let sock = UnixDatagram::unbound().map_err(NotifyError::Io)?;
    let n = sock
        .send_to_addr(state.as_bytes(), addr)
        .map_err(NotifyError::Io)?;
    if n != state.len() {
        return Err(NotifyError::Io(io::Error::other("short datagram")));
    }
    Ok(())
}

/// `READY=1` with a status line `systemctl status` shows.
pub fn ready(status: &str) -> Result<bool, NotifyError> {
    notify(&format!("READY=1\nSTATUS={}", one_line(status)))
}

/// `STOPPING=1`: shutdown has begun (systemd shows "deactivating").
pub fn stopping() -> Result<bool, NotifyError> {
    notify("STOPPING=1")
}

/// A status value must not contain a newline: it would start a new
/// `KEY=VALUE` assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_and_abstract_addresses() {
        let p = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        use std::os::linux::net::SocketAddrExt;
        let a = parse_address("@/org/freedesktop/systemd1/notify/123").unwrap();
        assert_eq!(
            a.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/123"[..])
        );
        for bad in ["", "@", "relative/path"] {
            assert!(
                matches!(parse_address(bad), Err(NotifyError::BadAddress(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("pimail-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let addr = parse_address(path.to_str().unwrap()).unwrap();
        send(&addr, "READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pimail-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let addr = parse_address(&format!("@{name}")).unwrap();
        send(&addr, "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn status_cannot_inject_assignments() {
        assert_eq!(one_line("a\nREADY=0\r"), "a READY=0 ");
    }
}
