//! The first hour of a new owner (issue 14): `pimail setup`, `pimail
//! status`, TLS in the try-it server with the clients people use (msmtp,
//! fetchmail, curl), certbot's files used without `[tls]`, and certificate
//! files picked up when they change on disk.

mod common;
use common::tls::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = pimail_command();
    c.args(args)
        .env_remove("PIMAIL_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // A command that fails before reading its input closes the pipe early.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The name of the user running the tests (setup's `--service-user`).
fn me() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap()
}

/// Every file under `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p.clone());
                out.push((p, vec![], m.modified().unwrap(), mode(&e.path())));
            } else {
                out.push((
                    p.clone(),
                    std::fs::read(&p).unwrap(),
                    m.modified().unwrap(),
                    mode(&p),
                ));
            }
        }
    }
    out.sort();
    out
}

fn setup_args<'a>(dir: &'a str, user: &'a str) -> Vec<String> {
    [
        "setup",
        "--config",
        &format!("{dir}/etc/pimail.toml"),
        "--hostname",
        "mail.example.org",
        "--domain",
        "example.org",
        "--user",
        "alice",
        "--data-dir",
        &format!("{dir}/data"),
        "--service-user",
        user,
        "--password-stdin",
        "--yes",
        "--skip-doctor",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts `pimail serve` on `config` with its listeners moved to loopback
/// port 0; returns the child and its "kind addr" list.
fn serve_on_loopback(config: &Path) -> (std::process::Child, Vec<(String, String)>) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("0.0.0.0:25\"", "127.0.0.1:0\"")
        .replace("0.0.0.0:587\"", "127.0.0.1:0\"")
        .replace("0.0.0.0:110\"", "127.0.0.1:0\"")
        + "\n[inbound]\nauth_checks = false\n";
    let local = config.with_file_name("loopback.toml");
    std::fs::write(&local, text).unwrap();
    let mut child = pimail_command()
        .args(["serve", "--config"])
        .arg(&local)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 || line.contains("listening:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in err.lines() {});
    let list = line
        .split("listening: ")
        .nth(1)
        .expect("server started")
        .split(';')
        .next()
        .unwrap();
    let addrs = list
        .split(", ")
        .filter_map(|i| {
            i.split_once(' ')
                .map(|(k, a)| (k.to_string(), a.to_string()))
        })
        .collect();
    (child, addrs)
}

#[test]
fn setup_without_questions_writes_a_working_config_and_a_second_run_changes_nothing() {
    if skip_under_emulator() {
        return;
    }
    let tmp = TempDir::new("setup");
    let dir = tmp.path().display().to_string();
    let user = me();
    let args = setup_args(&dir, &user);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&args, b"correct horse battery\n", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let config = tmp.path().join("etc/pimail.toml");
    let data = tmp.path().join("data");
    assert_eq!(mode(&config), 0o640);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("mbox")), 0o600);
    let keys: Vec<PathBuf> = std::fs::read_dir(data.join("dkim"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!keys.is_empty());
    for k in &keys {
        assert_eq!(mode(k), 0o600, "{}", k.display());
    }
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("hostname = \"mail.example.org\""), "{text}");
    assert!(text.contains("$argon2id$"), "{text}");
    assert!(!text.contains("correct horse"), "{text}");
    // The DNS records, as a provider's form asks for them.
    for want in [
        "  Name:  example.org\n  Type:  MX\n  Value: 10 mail.example.org.",
        "  Name:  example.org\n  Type:  TXT\n  Value: v=spf1 mx -all",
        "._domainkey.example.org\n  Type:  TXT\n  Value: v=DKIM1; k=ed25519; p=",
        "  Name:  _dmarc.example.org\n  Type:  TXT\n  Value: v=DMARC1; p=none; rua=mailto:postmaster@example.org",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let c = config.display().to_string();
    let (code, effective, err) = run(&["check-config", "--config", &c], b"", &[]);
    assert_eq!(code, 0, "{effective}{err}");
    assert!(effective.contains("mail.example.org"), "{effective}");

    // Again: nothing changes, and it says so.
    let before = snapshot(tmp.path());
    std::thread::sleep(Duration::from_millis(20));
    let (code, out2, err) = run(&args, b"another password\n", &[]);
    assert_eq!(code, 0, "{out2}\n{err}");
    assert!(
        out2.contains("kept") && out2.contains("existing config"),
        "{out2}"
    );
    assert!(out2.contains("kept      DKIM keys"), "{out2}");
    assert_eq!(snapshot(tmp.path()), before, "a second setup changed files");

    // The password set works: POP3 login against the written config.
    let (mut child, addrs) = serve_on_loopback(&config);
    let pop3 = addrs
        .iter()
        .find(|(k, _)| k == "pop3")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let mut p = Client::connect(pop3);
    assert!(p.line().starts_with("+OK"));
    p.send("USER alice");
    assert!(p.line().starts_with("+OK"));
    p.send("PASS correct horse battery");
    let reply = p.line();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reply.starts_with("+OK"), "{reply}");
}

#[test]
fn setup_refuses_a_short_or_missing_password_and_writes_nothing() {
    let tmp = TempDir::new("setup-short");
    let dir = tmp.path().display().to_string();
    let user = me();
    let args = setup_args(&dir, &user);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args, b"short\n", &[]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("too short"), "{err}");
    assert!(!tmp.path().join("etc/pimail.toml").exists());
    let without: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--password-stdin")
        .collect();
    let (code, _, err) = run(&without, b"", &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--password-stdin"), "{err}");
    assert!(!tmp.path().join("etc/pimail.toml").exists());
    // A service user that does not exist is named, with what to do.
    let mut bad: Vec<&str> = args.clone();
    let i = bad.iter().position(|a| *a == "--service-user").unwrap();
    bad[i + 1] = "no-such-user-pimail";
    let (code, _, err) = run(&bad, b"correct horse battery\n", &[]);
    assert_eq!(code, 67, "{err}");
    assert!(
        err.contains("no-such-user-pimail") && err.contains("sysusers"),
        "{err}"
    );
}

/// Drives `pimail setup` in a pseudo-terminal as a person would: answers
/// the questions, types the password twice. The password must not be
/// echoed.
const PTY_DRIVER: &str = r#"
import os, pty, select, sys, time
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out = b""
def expect(what, timeout=60):
    global out
    end = time.time() + timeout
    while what not in out:
        if time.time() > end:
            sys.stdout.write(out.decode(errors="replace")); sys.exit("timeout waiting for %r" % what)
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            sys.stdout.write(out.decode(errors="replace")); sys.exit("EOF waiting for %r" % what)
        out += chunk
expect(b"Host name"); os.write(fd, b"mx.example.net\r")
expect(b"Mail domain"); os.write(fd, b"\r")
expect(b"login name"); os.write(fd, b"bob\r")
expect(b"(not shown): "); os.write(fd, b"Tr0ub4dor&3xyz\r")
expect(b"again: "); os.write(fd, b"Tr0ub4dor&3xyz\r")
expect(b"DNS records")
end = time.time() + 60
while time.time() < end:
    if not select.select([fd], [], [], 1)[0]:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn interactive_setup_in_a_terminal_hides_the_password() {
    if skip_under_emulator() {
        return;
    }
    let tmp = TempDir::new("setup-pty");
    let dir = tmp.path().display().to_string();
    let mut argv: Vec<String> = runner();
    argv.push(bin().to_string());
    let user = me();
    let config = format!("{dir}/pimail.toml");
    let data = format!("{dir}/data");
    argv.extend(
        [
            "setup",
            "--config",
            &config,
            "--data-dir",
            &data,
            "--service-user",
            &user,
            "--skip-doctor",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(PTY_DRIVER)
        .args(&argv)
        .env_remove("PIMAIL_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Tr0ub4dor"),
        "the password was echoed:\n{text}"
    );
    // The default domain is the host name without its first label.
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("hostname = \"mx.example.net\""),
        "{written}"
    );
    assert!(
        written.contains("domains  = [\"example.net\"]"),
        "{written}"
    );
    assert!(written.contains("name      = \"bob\""), "{written}");
    assert!(text.contains("Name:  _dmarc.example.net"), "{text}");
}

fn status(srv: &Server) -> (i32, String) {
    let c = srv.config.display().to_string();
    let (code, out, err) = run(&["status", "--config", &c], b"", &[]);
    (code, out + &err)
}

#[test]
fn status_of_a_running_and_a_stopped_server() {
    if skip_under_emulator() {
        return;
    }
    let mut srv = Server::start();
    let (code, out) = status(&srv);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("running, pid {}", srv.pid())),
        "{out}"
    );
    assert!(
        out.contains(&format!("listening:   smtp {}", srv.smtp)),
        "{out}"
    );
    assert!(out.contains("queue:       empty"), "{out}");
    assert!(out.contains("disk:        data_dir"), "{out}");
    assert!(out.contains("all well"), "{out}");

    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message(
        "bob@example.com",
        &["alice@example.org"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    // The status file is rewritten within a few seconds of a message.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = String::new();
    while Instant::now() < deadline {
        out = status(&srv).1;
        if out.contains("from <bob@example.com>") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        out.contains("received:") && out.contains("from <bob@example.com>"),
        "{out}"
    );

    srv.terminate();
    let (code, out) = status(&srv);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT RUNNING"), "{out}");
}

#[test]
fn status_needs_attention_for_a_certificate_about_to_expire() {
    if skip_under_emulator() {
        return;
    }
    require("openssl", "openssl");
    let dir = TempDir::new("expiring");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "3", "-subj", "/CN=mail.example.org", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let srv = Server::with(Options {
        tls: Some((cert, key)),
        ..Default::default()
    });
    let (code, out) = status(&srv);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ATTENTION: the TLS certificate")
            && (out.contains("expires in 2 days") || out.contains("expires in 3 days")),
        "{out}"
    );
}

#[test]
fn certbot_files_are_used_without_a_tls_section() {
    let dir = TempDir::new("certbot");
    let certs = make_certs(dir.path(), "le", KeyKind::Ecdsa);
    let live = dir.path().join("letsencrypt/live/mail.example.org");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::copy(&certs.cert, live.join("fullchain.pem")).unwrap();
    std::fs::copy(&certs.key, live.join("privkey.pem")).unwrap();
    let le = dir.path().join("letsencrypt").display().to_string();
    let srv = Server::with_env(
        Options {
            listen_submissions: true,
            ..Default::default()
        },
        vec![("PIMAIL_LETSENCRYPT_DIR".into(), le.clone())],
    );
    assert!(
        srv.log()
            .iter()
            .any(|l| l.contains("using certbot's certificate")),
        "{:?}",
        srv.log()
    );
    let config = client_config(&certs.ca, &[TLS13]);
    let t = TlsClient::connect(srv.addr("submissions"), config.clone());
    assert_eq!(t.peer_leaf(), certs.leaf_der);
    let t = TlsClient::starttls(srv.smtp, config);
    assert_eq!(t.peer_leaf(), certs.leaf_der);
    // Without certbot's files the same config has no certificate for 465.
    let c = srv.config.display().to_string();
    let (code, _, err) = run(
        &["check-config", "--config", &c],
        b"",
        &[("PIMAIL_LETSENCRYPT_DIR", "/nonexistent")],
    );
    assert_eq!(code, 78, "{err}");
    let (code, out, err) = run(
        &["check-config", "--config", &c],
        b"",
        &[("PIMAIL_LETSENCRYPT_DIR", &le)],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn certificate_files_changed_on_disk_are_used_without_reload() {
    let dir = TempDir::new("poll");
    let first = make_certs(dir.path(), "first", KeyKind::Ecdsa);
    let second = make_certs(dir.path(), "second", KeyKind::Rsa);
    let cert = dir.path().join("fullchain.pem");
    let key = dir.path().join("privkey.pem");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    // The server looks every 30 s; the test makes it 300 ms.
    let srv = Server::with_env(
        Options {
            tls: Some((cert.clone(), key.clone())),
            ..Default::default()
        },
        vec![("PIMAIL_CERT_POLL_MS".into(), "300".into())],
    );
    let first_config = client_config(&first.ca, &[TLS13]);
    let second_config = client_config(&second.ca, &[TLS13]);
    assert_eq!(
        TlsClient::starttls(srv.smtp, first_config).peer_leaf(),
        first.leaf_der
    );
    // A renewal as certbot's deploy hook does it: new files, no signal.
    std::fs::copy(&second.key, &key).unwrap();
    std::fs::copy(&second.cert, &cert).unwrap();
    assert!(
        srv.wait_log("changed on disk: reloaded", Duration::from_secs(90)),
        "{:?}",
        srv.log()
    );
    assert_eq!(
        TlsClient::starttls(srv.smtp, second_config.clone()).peer_leaf(),
        second.leaf_der
    );
    // A bad new key is logged; the good pair stays in use. (A look between
    // the two copies above may have logged a mismatch already: count.)
    let bad = "changed on disk but not reloaded";
    let before = srv.log().iter().filter(|l| l.contains(bad)).count();
    std::fs::copy(&first.key, &key).unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(90);
    while srv.log().iter().filter(|l| l.contains(bad)).count() == before
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        srv.log().iter().filter(|l| l.contains(bad)).count() > before,
        "{:?}",
        srv.log()
    );
    assert_eq!(
        TlsClient::starttls(srv.smtp, second_config).peer_leaf(),
        second.leaf_der
    );
}

/// The try-it server as `cargo run --release` starts it: no config, in a
/// fresh directory. Its ports are fixed (2525, 2587, 1110, 1143), so the test
/// says so and stops if another program holds them.
struct TryIt {
    child: std::process::Child,
    login: String,
    password: String,
    fingerprint: String,
}

fn ports_free() -> bool {
    [2525, 2587, 1110, 1143]
        .iter()
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

fn start_try_it(dir: &Path) -> TryIt {
    let mut child = pimail_command()
        .current_dir(dir)
        .env_remove("PIMAIL_CONFIG")
        .env("USER", "tryit")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut password, mut fingerprint) = (String::new(), String::new());
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        banner += &line;
        if let Some(rest) = line.split(" password \"").nth(1) {
            password = rest.split('"').next().unwrap().to_string();
        }
        if let Some(fp) = line.split("SHA-256 fingerprint ").nth(1) {
            fingerprint = fp.trim().to_string();
        }
        if line.contains("goes to") {
            break;
        }
    }
    std::thread::spawn(move || for _ in out.lines() {});
    assert!(
        banner.contains("listening on smtp 127.0.0.1:2525"),
        "{banner}"
    );
    assert_eq!(fingerprint.len(), 95, "{banner}");
    TryIt {
        child,
        login: "tryit".into(),
        password,
        fingerprint,
    }
}

impl Drop for TryIt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn default_clients_work_against_the_try_it_server_over_tls() {
    if !ports_free() {
        eprintln!("skipped: the try-it ports 2525/2587/1110/1143 are in use by another program");
        return;
    }
    if Path::new("/etc/pimail/pimail.toml").exists() {
        eprintln!(
            "skipped: /etc/pimail/pimail.toml exists, so pimail would not use the try-it default"
        );
        return;
    }
    require("msmtp", "msmtp");
    require("fetchmail", "fetchmail");
    require("curl", "curl");
    let dir = TempDir::new("tryit");
    let t = start_try_it(dir.path());
    assert!(!t.password.is_empty());
    let mbox = dir.path().join("pimail-data/mbox");

    // msmtp with `auth on` and `tls on` (STARTTLS), the certificate pinned.
    for check in [
        format!("--tls-fingerprint={}", t.fingerprint),
        "--tls-certcheck=off".to_string(),
    ] {
        let mut c = Command::new("msmtp")
            .args([
                "--host=127.0.0.1",
                "--port=2587",
                "--auth=on",
                "--tls=on",
                "--tls-starttls=on",
            ])
            .arg(&check)
            .arg(format!("--user={}", t.login))
            .arg(format!("--passwordeval=echo {}", t.password))
            .arg(format!("--from={}@localhost", t.login))
            .arg(format!("{}@localhost", t.login))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("Subject: via msmtp {check}\n\nhello\n").as_bytes())
            .unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "msmtp {check}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let stored = String::from_utf8_lossy(&std::fs::read(&mbox).unwrap()).to_string();
    assert!(
        stored.contains("Subject: via msmtp --tls-fingerprint"),
        "{stored}"
    );
    assert!(
        stored.contains("Subject: via msmtp --tls-certcheck=off"),
        "{stored}"
    );

    // curl: submission with STARTTLS required, then POP3 over STLS.
    let mut c = Command::new("curl")
        .args(["-sS", "--ssl-reqd", "-k", "smtp://127.0.0.1:2587", "--crlf"])
        .arg("-u")
        .arg(format!("{}:{}", t.login, t.password))
        .args(["--mail-from", &format!("{}@localhost", t.login)])
        .args(["--mail-rcpt", &format!("{}@localhost", t.login)])
        .args(["--upload-file", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"Subject: via curl\n\nhi\n")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "curl smtp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("curl")
        .args(["-sS", "--ssl-reqd", "-k", "pop3://127.0.0.1:1110/"])
        .arg("-u")
        .arg(format!("{}:{}", t.login, t.password))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl pop3: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);

    // fetchmail: STLS by default (the server offers it); the self-signed
    // certificate is accepted with sslcertck off.
    let home = dir.path().join("fetchmail");
    std::fs::create_dir_all(&home).unwrap();
    let got = home.join("got.mbox");
    let rc = home.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\npoll 127.0.0.1 service 1110 protocol pop3 user \"{}\" password \"{}\" no sslcertck keep fetchall mda \"/bin/sh -c 'cat >> {}'\"\n",
            t.login,
            t.password,
            got.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new("fetchmail")
        .args(["-v", "-f"])
        .arg(&rc)
        .arg("-i")
        .arg(home.join("ids"))
        .env("FETCHMAILHOME", &home)
        .env("HOME", &home)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "fetchmail: {log}");
    assert!(
        log.contains("STLS") || log.contains("TLS"),
        "fetchmail did not use TLS: {log}"
    );
    let fetched = std::fs::read_to_string(&got).unwrap();
    assert!(fetched.contains("Subject: via curl"), "{fetched}");

    // A restart keeps the certificate (clients that pinned it go on working).
    let fp = t.fingerprint.clone();
    drop(t);
    let again = start_try_it(dir.path());
    assert_eq!(again.fingerprint, fp);
}
