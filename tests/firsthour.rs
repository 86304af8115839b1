//! The traps of a new owner's first hour (issue 14): each test drives the
//! real binary the way the person did when they fell in.

mod common;

use common::*;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Runs `pimail ARGS` to its end (bounded): exit code, stdout, stderr.
fn run(args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = pimail_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pimail");
    let _ = child.stdin.take().unwrap().write_all(input);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (mut out, mut err) = (String::new(), String::new());
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            return (status.code().unwrap_or(-1), out, err);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pimail {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_serve_refuses_and_touches_nothing() {
    let s = Server::start();
    let spool = s.data_dir().join("spool").join("in-flight");
    std::fs::write(&spool, b"a message being received").unwrap();
    let sock = s.data_dir().join("control.sock");
    let ino = std::fs::metadata(&sock).unwrap().ino();

    let cfg = s.config.display().to_string();
    let (code, _, err) = run(&["serve", "--config", &cfg], b"");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("already running, pid {}", s.pid())),
        "{err}"
    );
    assert!(spool.exists(), "the second start emptied the spool");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().ino(),
        ino,
        "control socket replaced"
    );
    let (code, out) = s.queue_cmd(&["flush"]);
    assert_eq!(code, 0, "{out}");
    // The first server still serves.
    let mut c = s.connect();
    c.hello();
    let (code, text) = c.send_message(
        "bob@example.com",
        &["alice@example.org"],
        &message("x", "y\r\n"),
    );
    assert_eq!(code, 250, "{text}; log:\n{}", s.log().join("\n"));
}

/// Runs the binary as `nobody` in a mount namespace where /etc/pimail is
/// INSTALL's (0750, not readable by others), without touching the real
/// /etc. `None` where namespaces or overlayfs are not available.
fn as_nobody_with_private_etc(dir: &std::path::Path, args: &str) -> Option<(i32, String)> {
    use std::os::unix::fs::PermissionsExt;
    if unsafe_free_uid() != 0 {
        eprintln!("skipped: needs root for a mount namespace");
        return None;
    }
    let lower = dir.join("etc-lower");
    std::fs::create_dir_all(lower.join("pimail")).unwrap();
    std::fs::write(
        lower.join("pimail/pimail.toml"),
        "hostname = \"mail.example.org\"\ndomains = [\"example.org\"]\n",
    )
    .unwrap();
    std::fs::set_permissions(lower.join("pimail"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::set_permissions(&cwd, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={}:/etc /etc || exit 200; \
         cd {} && exec setpriv --reuid=65534 --regid=65534 --clear-groups {} {args} 2>&1",
        lower.display(),
        cwd.display(),
        bin()
    );
    let o = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .env_remove("PIMAIL_CONFIG")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let code = o.status.code().unwrap_or(-1);
    if code == 200 || !std::path::Path::new(bin()).exists() {
        eprintln!("skipped: no overlayfs in a mount namespace here");
        return None;
    }
    Some((code, String::from_utf8_lossy(&o.stdout).into_owned()))
}

fn unsafe_free_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
}

#[test]
fn an_unreadable_config_is_an_error_that_names_it() {
    if skip_under_emulator() {
        return;
    }
    let dir = TempDir::new("unreadable");
    let Some((code, out)) = as_nobody_with_private_etc(dir.path(), "check-config") else {
        return;
    };
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("/etc/pimail/pimail.toml"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(!out.contains("try-it"), "{out}");

    let Some((code, out)) =
        as_nobody_with_private_etc(dir.path(), "sendmail alice@example.org </dev/null")
    else {
        return;
    };
    // Not 0: the message is not where the server will deliver it.
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("/etc/pimail/pimail.toml"), "{out}");
    assert!(!dir.path().join("cwd/pimail-data").exists());
}

/// Drives `pimail passwd` in a pseudo-terminal with Python's `pty`, as a
/// person types: returns everything the terminal showed and the exit code.
fn passwd_in_a_terminal(first: &str, second: &str) -> (i32, String) {
    let script = r#"
import os, pty, sys, time
binary, first, second = sys.argv[1], sys.argv[2], sys.argv[3]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "passwd"])
seen = b""
def until(text, limit=60):
    global seen
    end = time.time() + limit
    while text not in seen and time.time() < end:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
os_answers = [(b"New password: ", first), (b"Again: ", second)]
for prompt, answer in os_answers:
    until(prompt)
    if prompt not in seen:
        break
    os.write(fd, answer.encode() + b"\n")
until(b"\n$never$")
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, bin(), first, second])
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn passwd_at_a_terminal_prompts_twice_without_echo() {
    if skip_under_emulator() {
        return;
    }
    let (code, shown) = passwd_in_a_terminal("correct horse", "correct horse");
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("New password: "), "{shown}");
    assert!(shown.contains("Again: "), "{shown}");
    assert!(
        !shown.contains("correct horse"),
        "the password was echoed: {shown}"
    );
    let hash = shown
        .lines()
        .find(|l| l.starts_with("$argon2id$"))
        .unwrap_or("");
    assert!(!hash.is_empty(), "{shown}");

    let (code, shown) = passwd_in_a_terminal("correct horse", "correct h0rse");
    assert_ne!(code, 0, "{shown}");
    assert!(shown.contains("differ"), "{shown}");
    assert!(!shown.contains("$argon2id$"), "{shown}");

    let (code, shown) = passwd_in_a_terminal("short", "short");
    assert_ne!(code, 0, "{shown}");
    assert!(shown.contains("at least 8 characters"), "{shown}");
    assert!(!shown.contains("Again: "), "{shown}");
}

#[test]
fn passwd_from_a_pipe_still_works_for_scripts() {
    let (code, out, err) = run(&["passwd"], b"pw-from-a-script\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("$argon2id$"), "{out}");
    assert!(!err.contains("password:"), "a pipe gets no prompt: {err}");
}

fn dkim_config(dir: &std::path::Path) -> String {
    let cfg = dir.join("pimail.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"mail.example.org\"\ndomains = [\"example.org\"]\ndata_dir = {:?}\n\
             [user]\nname = \"alice\"\npassword = \"{PASSWORD_HASH}\"\naddresses = [\"alice\"]\n",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    cfg.display().to_string()
}

#[test]
fn dkim_generate_as_root_gives_the_keys_to_the_service_user() {
    if skip_under_emulator() {
        return;
    }
    if unsafe_free_uid() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = TempDir::new("dkimowner");
    let cfg = dkim_config(dir.path());
    // data_dir as systemd-tmpfiles makes it: the service user's.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    let (code, out, err) = run(&["dkim", "generate", "--config", &cfg], b"");
    assert_eq!(code, 0, "{out}{err}");
    let keys = data.join("dkim");
    let mut n = 0;
    for e in std::fs::read_dir(&keys).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        assert_eq!(m.mode() & 0o077, 0, "keys stay private");
        n += 1;
    }
    assert!(n >= 1);
    assert_eq!(std::fs::metadata(&keys).unwrap().uid(), 65534);
    // The service user can read them: `dkim records` as nobody works.
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
        .args(["dkim", "records", "--config", &cfg])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn every_command_ends_quietly_when_its_output_is_closed() {
    let dir = TempDir::new("epipe");
    let cfg = dkim_config(dir.path());
    for args in [
        vec!["dkim", "generate", "--config", &cfg],
        vec!["dkim", "records", "--config", &cfg],
        vec!["check-config", "--config", &cfg],
        vec!["--help"],
        vec!["queue", "list", "--config", &cfg],
    ] {
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let o = pimail_command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(w)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
fn the_users_own_mutt_can_read_an_mbox_in_a_setgid_directory() {
    if unsafe_free_uid() != 0 {
        eprintln!("skipped: needs root to give the directory a group");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start();
    s.terminate();
    let _ = std::fs::remove_file(s.mbox_path());
    // Like Debian's /var/mail (root:mail 2775), with the group the user
    // shares with the service (65534 stands in for it).
    let dir = s.dir.path().to_path_buf();
    std::os::unix::fs::chown(&dir, None, Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
    s.spawn();
    let mut c = s.connect();
    c.hello();
    let (code, _) = c.send_message(
        "bob@example.com",
        &["alice@example.org"],
        &message("for mutt", "hi\r\n"),
    );
    assert_eq!(code, 250);
    let m = std::fs::metadata(s.mbox_path()).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o660, "mode {:o}", m.mode());
    assert_eq!(m.gid(), 65534);
    // A user (not the service) in that group reads it with an mbox reader.
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=12345",
            "--regid=12345",
            "--groups=65534",
            "/usr/bin/python3",
            "-c",
        ])
        .arg("import mailbox,sys; print([m['subject'] for m in mailbox.mbox(sys.argv[1])])")
        .arg(s.mbox_path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("for mutt"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn plain(user: &str, pass: &str) -> String {
    let raw = format!("\0{user}\0{pass}");
    // Base64 by hand: the test must not lean on the code under test.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = raw.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Issue 14: home devices send bare LF. After AUTH on submission it is
/// normalised; port 25 stays strict, loopback included.
#[test]
fn bare_lf_is_accepted_after_auth_on_submission_only() {
    let s = Server::start();
    let mut c = Client::connect(s.addr("submission"));
    c.hello();
    c.expect(&format!("AUTH PLAIN {}", plain("alice", PASSWORD)), 235);
    c.expect("MAIL FROM:<alice@example.org>", 250);
    c.expect("RCPT TO:<alice@example.org>", 250);
    c.expect("DATA", 354);
    c.send_raw(
        b"Subject: from the printer\nFrom: alice@example.org\n\nscan attached\n..dotted\n.\r\n",
    );
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    let mbox = String::from_utf8_lossy(&s.mbox()).into_owned();
    assert!(mbox.contains("Subject: from the printer\n"), "{mbox}");
    assert!(mbox.contains("\nscan attached\n.dotted\n"), "{mbox}");
    assert!(!mbox.contains('\r'), "{mbox:?}");

    // Port 25 from loopback: still refused.
    let mut c = s.connect();
    c.hello();
    c.expect("MAIL FROM:<bob@example.com>", 250);
    c.expect("RCPT TO:<alice@example.org>", 250);
    c.expect("DATA", 354);
    c.send_raw(b"Subject: smuggled\n\nbody\r\n.\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 554, "{text}");
    // Submission without AUTH cannot send at all; nothing else changed.
}

/// The README's "quick tour" commands, run as written (only the port is
/// the test server's): each one's message must land in the mbox.
#[test]
fn the_readmes_quick_tour_works_as_written() {
    require_tool("swaks", "swaks");
    require_tool("curl", "curl");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let tour = readme.split("## A quick tour").nth(1).unwrap();
    let block = tour
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let s = Server::with(Options {
        domains: vec!["localhost".into()],
        ..Options::default()
    });
    let script = block
        .replace("127.0.0.1:2525", &s.smtp.to_string())
        .replace(
            "\"127.0.0.1\", 2525",
            &format!("\"127.0.0.1\", {}", s.smtp.port()),
        );
    let o = std::process::Command::new("sh")
        .args(["-e", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    let mbox = String::from_utf8_lossy(&s.mbox()).into_owned();
    for subject in [
        "Subject: test ",
        "Subject: hello from curl",
        "Subject: hello from Python",
    ] {
        assert!(
            mbox.contains(subject),
            "missing {subject:?}; output:\n{out}\nmbox:\n{mbox}"
        );
    }
}

fn check_config_of(text: &str) -> (i32, String, String) {
    let dir = TempDir::new("checkcfg");
    let cfg = dir.path().join("pimail.toml");
    std::fs::write(
        &cfg,
        text.replace("DATA", &dir.path().join("data").display().to_string()),
    )
    .unwrap();
    let r = run(
        &["check-config", "--config", &cfg.display().to_string()],
        b"",
    );
    drop(dir);
    r
}

fn base_config() -> String {
    format!(
        "hostname = \"mail.example.org\"\ndomains = [\"example.org\"]\ndata_dir = \"DATA\"\n\n\
         [user]\nname = \"alice\"\npassword = \"{PASSWORD_HASH}\"\naddresses = [\"alice\"]\n\n\
         [listen]\nsmtp = [\"127.0.0.1:2525\"]\n\n[limits]\nmax_message_size = \"25MB\"\n"
    )
}

#[test]
fn check_config_reports_every_error_in_user_words() {
    let (code, out, _) = check_config_of(&base_config());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("max_message_size = \"25M\""),
        "25MB is 25M: {out}"
    );

    let text = base_config()
        .replace(
            "max_message_size = \"25MB\"\n",
            "max_message_size = \"25MiB\"\nmax_recipients = \"lots\"\nmax_connections = 0\n",
        )
        .replace(
            "hostname = \"mail.example.org\"",
            "hostname = \"mail.example.org\"\nlog_level = \"loud\"",
        );
    let (code, _, err) = check_config_of(&text);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("limits.max_recipients"), "{err}");
    assert!(err.contains("expected an integer"), "{err}");
    assert!(!err.contains("i64"), "{err}");
    assert!(err.contains("limits.max_connections"), "{err}");
    assert!(err.contains("log_level"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("config error")).count(),
        3,
        "{err}"
    );
}

#[test]
fn check_config_names_the_line_of_a_missing_tls_file_and_warns_about_plain_logins() {
    let text = base_config()
        + "\n[tls]\ncert = \"/nonexistent/fullchain.pem\"\nkey = \"/nonexistent/privkey.pem\"\n";
    let (code, _, err) = check_config_of(&text);
    assert_eq!(code, 78, "{err}");
    let line = text.lines().position(|l| l.starts_with("cert =")).unwrap() + 1;
    assert!(
        err.contains(&format!("pimail.toml:{line}: tls.cert:")),
        "{err}"
    );

    let text = base_config().replace(
        "smtp = [\"127.0.0.1:2525\"]",
        "smtp = [\"127.0.0.1:2525\"]\nsubmission = [\"0.0.0.0:2587\"]\npop3 = [\"0.0.0.0:1110\"]",
    );
    let (code, _, err) = check_config_of(&text);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning"), "{err}");
    assert!(err.contains("listen.submission: 0.0.0.0:2587"), "{err}");
    assert!(err.contains("listen.pop3: 0.0.0.0:1110"), "{err}");
    assert!(err.contains("no [tls]"), "{err}");
}

/// In a network namespace with IPv6 turned off, `[::]` listeners are
/// warned about by check-config and skipped (not fatal) at start.
#[test]
fn ipv6_listeners_on_a_machine_without_ipv6_warn_instead_of_failing() {
    if skip_under_emulator() {
        return;
    }
    if unsafe_free_uid() != 0 {
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    let dir = TempDir::new("noipv6");
    let cfg = dir.path().join("pimail.toml");
    let text = base_config()
        .replace("DATA", &dir.path().join("data").display().to_string())
        .replace(
            "smtp = [\"127.0.0.1:2525\"]",
            "smtp = [\"127.0.0.1:2525\", \"[::1]:2525\"]",
        );
    std::fs::write(&cfg, text).unwrap();
    let script = format!(
        "ip link set lo up 2>/dev/null; sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || exit 200; \
         sysctl -qw net.ipv6.conf.lo.disable_ipv6=1; \
         {b} check-config --config {c} >/dev/null || exit 1; \
         {b} serve --config {c} & p=$!; i=0; \
         while [ $i -lt 100 ] && ! grep -q listening {d}/log 2>/dev/null; do sleep 0.1; i=$((i+1)); done; \
         kill $p; wait $p",
        b = bin(),
        c = cfg.display(),
        d = dir.path().display()
    );
    let script = script.replace(
        &format!("{} serve --config {} &", bin(), cfg.display()),
        &format!(
            "{} serve --config {} 2>{}/log &",
            bin(),
            cfg.display(),
            dir.path().display()
        ),
    );
    let o = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .unwrap();
    if o.status.code() == Some(200) {
        eprintln!("skipped: cannot turn IPv6 off in a namespace here");
        return;
    }
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(
        err.contains("listen.smtp: [::1]:2525: IPv6 is off"),
        "{err}"
    );
    assert!(log.contains("listening: smtp 127.0.0.1:2525"), "{log}");
    assert!(log.contains("not listening on [::1]:2525"), "{log}");
}
