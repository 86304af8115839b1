//! Running under systemd: the unit file passes `systemd-analyze verify`
//! and rates "OK" or better in `systemd-analyze security`; the server
//! tells `$NOTIFY_SOCKET` READY=1 once it listens and STOPPING=1 when it
//! stops (Type=notify); SIGHUP (`systemctl reload`) never stops it.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run systemd-analyze ({e}): install it with `apt-get install systemd`")
        }
    }
}

/// The unit as shipped, but with ExecStart pointing at the binary under
/// test, since `verify` checks that the command exists.
fn unit_copy(dir: &TempDir) -> PathBuf {
    let text = std::fs::read_to_string(unit_dir().join("pimail.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/pimail serve"));
    let path = dir.path().join("pimail.service");
    std::fs::write(&path, text.replace("/usr/local/bin/pimail", bin())).unwrap();
    path
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let dir = TempDir::new("unit");
    let unit = unit_copy(&dir);
    let o = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify exits 0 on some warnings; any line about our unit is one.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("pimail.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "warnings about the unit:\n{}",
        ours.join("\n")
    );
}

#[test]
fn unit_file_is_rated_ok_by_systemd_analyze_security() {
    let dir = TempDir::new("unit");
    let unit = unit_copy(&dir);
    let o = systemd_analyze(&["security", "--offline=true", unit.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no overall rating in:\n{out}\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    eprintln!("{line}");
    // "→ Overall exposure level for pimail.service: 1.7 OK 🙂"
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(
        line.contains(" OK ") || line.contains(" SAFE "),
        "rated worse than OK: {line}"
    );
    assert!(score <= 2.0, "exposure {score} in {line}");
}

#[test]
fn sysusers_and_tmpfiles_snippets_parse() {
    // `cat-config`-free check: systemd-sysusers and systemd-tmpfiles accept
    // the files in a scratch root, creating the user and directories there.
    let dir = TempDir::new("root");
    let root = dir.path();
    for sub in ["etc", "var/lib", "usr/lib"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    // A minimal passwd/group so sysusers has something to extend, with the
    // Debian "mail" group the snippet adds pimail to.
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nmail:x:8:\n").unwrap();
    let run = |tool: &str, args: &[&str]| {
        let o = Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}): install it with `apt-get install systemd`")
        });
        assert!(
            o.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let root_arg = format!("--root={}", root.display());
    let sysusers = unit_dir().join("pimail.sysusers.conf");
    run("systemd-sysusers", &[&root_arg, sysusers.to_str().unwrap()]);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let pimail = passwd
        .lines()
        .find(|l| l.starts_with("pimail:"))
        .unwrap_or_else(|| panic!("no pimail user in\n{passwd}"));
    assert!(pimail.contains(":/var/lib/pimail:"), "{pimail}");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("mail:") && l.ends_with("pimail")),
        "pimail not in group mail:\n{group}"
    );
    let tmpfiles = unit_dir().join("pimail.tmpfiles.conf");
    run(
        "systemd-tmpfiles",
        &["--create", &root_arg, tmpfiles.to_str().unwrap()],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("var/lib/pimail"), 0o700);
    assert_eq!(mode("etc/pimail"), 0o750);
}

/// A datagram socket standing in for systemd's notify socket.
fn notify_socket(dir: &TempDir) -> (UnixDatagram, String) {
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (sock, path.display().to_string())
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no notification from pimail within 60 s");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn tells_systemd_ready_once_listening_and_stopping_at_shutdown() {
    let dir = TempDir::new("notify");
    let (sock, path) = notify_socket(&dir);
    let mut srv = Server::with_env(Options::default(), vec![("NOTIFY_SOCKET".into(), path)]);
    let ready = recv(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS in {ready:?}"));
    assert!(status.contains(&srv.smtp.to_string()), "{status}");
    // Ready means ready: mail is accepted right away.
    srv.deliver(b"Subject: hi\r\n\r\nhi\r\n");
    let status = srv.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(recv(&sock), "STOPPING=1");
}

#[test]
fn reload_signal_keeps_the_server_running() {
    let mut srv = Server::start();
    for _ in 0..2 {
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(srv.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    assert!(
        srv.wait_log("SIGHUP", Duration::from_secs(30)),
        "no log line for SIGHUP:\n{}",
        srv.log().join("\n")
    );
    srv.deliver(b"Subject: hi\r\n\r\nafter reload\r\n");
    assert_eq!(python_mbox_messages(&srv.mbox_path()).len(), 1);
    let status = srv.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn logs_with_journal_priorities_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("journal");
    let config = Server::write_config(dir.path(), &Options::default());
    // systemd sets JOURNAL_STREAM to "device:inode" of the stderr it hands
    // over; a file stands in for the journal's socket here.
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = pimail_command()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pimail");
    let mut text = String::new();
    for _ in 0..600 {
        text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("listening:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("listening:"))
        .unwrap_or_else(|| panic!("no listening line in:\n{text}"));
    // Priority 6 (info) for journald, and no timestamp of our own.
    assert!(line.starts_with("<6>INFO  pimail "), "{line}");
}

#[test]
fn logs_with_timestamps_when_journal_stream_is_not_stderr() {
    // Inherited by a shell started from a unit, JOURNAL_STREAM names a
    // stream that is not our stderr: lines keep their timestamp.
    let srv = Server::with_env(
        Options::default(),
        vec![("JOURNAL_STREAM".into(), "1:1".into())],
    );
    let log = srv.log();
    let line = log.iter().find(|l| l.contains("listening:")).unwrap();
    assert!(!line.starts_with('<'), "{line}");
    let year: u32 = line[..4].parse().unwrap_or(0);
    assert!(year >= 2024 && line.as_bytes()[10] == b'T', "{line}");
}

#[test]
fn unit_makes_the_directory_of_the_local_submission_socket() {
    // `[listen] local_submit` defaults to /run/pimail/submit.sock: the unit
    // must create /run/pimail, traversable by every local user.
    let text = std::fs::read_to_string(unit_dir().join("pimail.service")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(lines.contains(&"RuntimeDirectory=pimail"), "{text}");
    assert!(lines.contains(&"RuntimeDirectoryMode=0755"), "{text}");
}
