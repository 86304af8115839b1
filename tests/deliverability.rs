//! Deliverability end to end with the real binary, the fake DNS server
//! and fake MX servers on loopback: outbound mail is DKIM-signed (checked
//! by dkimpy against the records `pimail dkim generate` printed), `pimail
//! doctor` finds each wrong record, and mail received on port 25 gets an
//! Authentication-Results header. Needs python3 with dkimpy and pynacl,
//! and openssl.

mod common;
use common::fakes::*;
use common::*;
use std::net::IpAddr;

/// Stops `srv`, makes DKIM keys in its data_dir, starts it again; returns
/// the records `dkim generate` printed.
fn with_keys(srv: &mut Server) -> std::collections::BTreeMap<String, String> {
    srv.terminate();
    let (code, out, err) = run_pimail(&srv.config, &["dkim", "generate", "--selector", "t"]);
    assert_eq!(code, 0, "dkim generate: {out}{err}");
    srv.spawn();
    dkimpy::printed_records(&out)
}

#[test]
fn outbound_mail_is_dkim_signed_and_verifies_with_dkimpy() {
    let w = MxWorld::one("remote.test", ip(2), Behavior::default());
    let mut srv = w.server("");
    let records = with_keys(&mut srv);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(srv.wait_log(
        "dkim: signing mail from example.org with selectors t-ed, t-rsa",
        WAIT
    ));
    let msg = "From: Alice <alice@example.org>\nTo: bob@remote.test\nSubject: signed   please \nDate: Wed, 25 Nov 2026 03:00:00 +0000\nMessage-ID: <dkim1@example.org>\n\nHello Bob.\n.leading dot\nFrom the start\n\n\n";
    let (code, err) = srv.sendmail(&["bob@remote.test"], msg.as_bytes());
    assert_eq!(code, 0, "sendmail: {err}");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let data = &got[0].data;
    let text = String::from_utf8_lossy(data);
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    assert!(
        text.contains("a=ed25519-sha256") && text.contains("a=rsa-sha256"),
        "{text}"
    );
    assert!(text.contains("d=example.org;"), "{text}");
    // The independent verifier accepts both, against the printed records.
    assert_eq!(
        dkimpy::verify(srv.dir.path(), data, &records),
        "[true, true]",
        "{text}"
    );
    // And pimail's own verifier too.
    let out = pimail::trust::dkim::verify_message(data, pimail::util::timefmt::unix_now(), |n| {
        records
            .get(n)
            .map(|r| vec![r.clone()])
            .ok_or(pimail::trust::dkim::LookupError::NotFound)
    })
    .unwrap();
    assert!(
        out.iter()
            .all(|o| o.status == pimail::trust::dkim::Status::Pass),
        "{out:?}"
    );
}

#[test]
fn mail_from_other_domains_is_not_signed() {
    let w = MxWorld::one("remote.test", ip(3), Behavior::default());
    let mut srv = w.server("");
    with_keys(&mut srv);
    let msg = "From: someone@elsewhere.example\nSubject: forwarded\n\nHi\n";
    let (code, err) = srv.sendmail(&["bob@remote.test"], msg.as_bytes());
    assert_eq!(code, 0, "sendmail: {err}");
    let got = w.mx[0].wait_messages(1, WAIT);
    assert!(!String::from_utf8_lossy(&got[0].data).contains("DKIM-Signature"));
}

// ---- pimail doctor ---------------------------------------------------------------

/// A right setup in the fake DNS: our host 127.0.0.7, MX, PTR, SPF, DMARC,
/// the DKIM records `dkim generate` printed, and a fake "gmail.com" MX on
/// 127.0.0.5 for the outbound port 25 probe.
struct World {
    dns: FakeDns,
    _mx: Vec<FakeMx>,
    dir: TempDir,
    config: std::path::PathBuf,
    records: std::collections::BTreeMap<String, String>,
}

fn write_cert(
    dir: &std::path::Path,
    host: &str,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn world() -> World {
    let MxWorld { dns, port, mx } = MxWorld::start(vec![(ip(5), Behavior::default())]);
    dns.mx("gmail.com", &[(5, "gmail-smtp-in.l.google.com")]);
    dns.a("gmail-smtp-in.l.google.com", &[ip(5)]);
    dns.a("mail.example.org", &[ip(7)]);
    dns.ptr(IpAddr::V4(ip(7)), "mail.example.org");
    dns.mx("example.org", &[(10, "mail.example.org")]);
    dns.txt("example.org", &["v=spf1 a:mail.example.org -all"]);
    dns.txt(
        "_dmarc.example.org",
        &["v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"],
    );
    // The default [inbound] dnsbl answers its test entry (RFC 5782 5).
    dns.dnsbl("zen.spamhaus.org", "127.0.0.2".parse().unwrap(), ip(2));
    let dir = TempDir::new("doctor");
    write_cert(dir.path(), "mail.example.org", (2020, 1, 1), (2099, 1, 1));
    let extra = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string()
    );
    let mut o = outbound_options(&dns, port, "");
    o.extra = extra + &o.extra;
    let config = Server::write_config(dir.path(), &o);
    let (code, out, err) = run_pimail(&config, &["dkim", "generate", "--selector", "t"]);
    assert!(code == 0, "{err}");
    let records = dkimpy::printed_records(&out);
    for (name, value) in &records {
        dns.txt(name, &[value]);
    }
    World {
        dns,
        _mx: mx,
        dir,
        config,
        records,
    }
}

fn doctor(w: &World, extra_args: &[&str]) -> (i32, String) {
    let (code, out, err) = run_pimail(&w.config, &[&["doctor"], extra_args].concat());
    (code, out + &err)
}

#[test]
fn doctor_says_all_good_for_a_right_setup() {
    let w = world();
    let (code, out) = doctor(&w, &[]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "[ok]   mail.example.org has address 127.0.0.7",
        "[ok]   127.0.0.7 has forward-confirmed reverse DNS mail.example.org",
        "[ok]   MX of example.org is mail.example.org",
        "[ok]   SPF of example.org allows 127.0.0.7",
        "[ok]   DMARC record for example.org (p=quarantine)",
        "[ok]   DKIM record t-ed._domainkey.example.org matches our key",
        "[ok]   DKIM record t-rsa._domainkey.example.org matches our key",
        "[ok]   TLS certificate names mail.example.org",
        "[ok]   outbound port ",
        "All good",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn doctor_names_each_wrong_record_and_its_fix() {
    let w = world();
    let ed = "t-ed._domainkey.example.org";
    let other_key = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    type Break = Box<dyn Fn(&World)>;
    type Mend = Box<dyn Fn(&World)>;
    let cases: Vec<(&str, Break, Mend, &str, String)> = vec![
        (
            "missing SPF",
            Box::new(|w| w.dns.txt("example.org", &[])),
            Box::new(|w| w.dns.txt("example.org", &["v=spf1 a:mail.example.org -all"])),
            "[FAIL] example.org has no SPF record",
            "fix: publish `example.org. IN TXT \"v=spf1 a:mail.example.org -all\"`".into(),
        ),
        (
            "SPF without our IP",
            Box::new(|w| w.dns.txt("example.org", &["v=spf1 ip4:192.0.2.1 -all"])),
            Box::new(|w| w.dns.txt("example.org", &["v=spf1 a:mail.example.org -all"])),
            "[FAIL] SPF of example.org gives fail for 127.0.0.7",
            "fix: add `a:mail.example.org` (or `ip4:127.0.0.7`)".into(),
        ),
        (
            "no PTR",
            Box::new(|w| {
                w.dns
                    .set("7.0.0.127.in-addr.arpa", hickory_proto::rr::RecordType::PTR, Answer::NxDomain)
            }),
            Box::new(|w| w.dns.ptr(IpAddr::V4(ip(7)), "mail.example.org")),
            "[FAIL] 127.0.0.7 has no reverse DNS (PTR)",
            "set its reverse DNS (PTR) to mail.example.org".into(),
        ),
        (
            "wrong DKIM key",
            Box::new(move |w| w.dns.txt(ed, &[other_key])),
            Box::new(move |w| w.dns.txt(ed, &[&w.records[ed]])),
            "[FAIL] DKIM record t-ed._domainkey.example.org does not match our key",
            format!("fix: replace it: publish `t-ed._domainkey.example.org. IN TXT \"{}\"`", w.records[ed]),
        ),
        (
            "no DMARC",
            Box::new(|w| {
                w.dns
                    .set("_dmarc.example.org", hickory_proto::rr::RecordType::TXT, Answer::NxDomain)
            }),
            Box::new(|w| w.dns.txt("_dmarc.example.org", &["v=DMARC1; p=quarantine"])),
            "[FAIL] example.org has no DMARC record",
            "fix: publish `_dmarc.example.org. IN TXT \"v=DMARC1; p=none; rua=mailto:postmaster@example.org\"`".into(),
        ),
        (
            "expired certificate",
            Box::new(|w| write_cert(w.dir.path(), "mail.example.org", (2020, 1, 1), (2021, 1, 1))),
            Box::new(|w| write_cert(w.dir.path(), "mail.example.org", (2020, 1, 1), (2099, 1, 1))),
            "[FAIL] TLS certificate expired",
            "fix: renew the certificate".into(),
        ),
        (
            "certificate for another name",
            Box::new(|w| write_cert(w.dir.path(), "other.example.net", (2020, 1, 1), (2099, 1, 1))),
            Box::new(|w| write_cert(w.dir.path(), "mail.example.org", (2020, 1, 1), (2099, 1, 1))),
            "[FAIL] TLS certificate is for other.example.net, not mail.example.org",
            "fix: get a certificate for mail.example.org".into(),
        ),
        (
            "outbound port 25 blocked",
            Box::new(|w| w.dns.a("gmail-smtp-in.l.google.com", &[ip(9)])),
            Box::new(|w| w.dns.a("gmail-smtp-in.l.google.com", &[ip(5)])),
            "outbound port 25 seems blocked",
            "set outbound.relay".into(),
        ),
    ];
    for (name, breaks, mend, problem, fix) in cases {
        breaks(&w);
        let (code, out) = doctor(&w, &[]);
        assert_eq!(code, 1, "{name}: doctor should fail:\n{out}");
        assert!(out.contains(problem), "{name}: no {problem:?} in:\n{out}");
        assert!(out.contains(&fix), "{name}: no {fix:?} in:\n{out}");
        assert_eq!(
            out.matches("[FAIL]").count(),
            1,
            "{name}: one problem only:\n{out}"
        );
        mend(&w);
    }
    let (code, out) = doctor(&w, &[]);
    assert_eq!(code, 0, "all mended:\n{out}");
}

#[test]
fn doctor_probes_inbound_reachability() {
    let w = world();
    let srv = Server::start();
    let smtp = srv.addr("smtp").to_string();
    let (code, out) = doctor(&w, &["--probe", &smtp]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("[ok]   inbound: {smtp} answers with our greeting")),
        "{out}"
    );
    let dead = format!("127.0.0.9:{}", srv.addr("smtp").port());
    let (code, out) = doctor(&w, &["--probe", &dead]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("[FAIL] inbound: cannot connect to {dead}")),
        "{out}"
    );
}

// ---- checks on port 25 -----------------------------------------------------------

/// A server with port 25 checks on, resolving with `dns`; `policy` goes
/// into `[inbound]`.
fn checking_server(dns: &FakeDns, policy: &str) -> Server {
    Server::with(Options {
        extra: format!(
            "[outbound]\ndns = [\"{}\"]\n[inbound]\nauth_checks = true\n{policy}\n",
            dns.addr
        ),
        ..Options::default()
    })
}

/// A message from sender.test signed by dkimpy (Ed25519 and RSA,
/// relaxed/relaxed), with the signing keys published in `dns`.
fn dkimpy_signed(dns: &FakeDns, dir: &std::path::Path) -> Vec<u8> {
    let src = dir.join("in.eml");
    std::fs::write(
        &src,
        "From: Sam <sam@sender.test>\r\nTo: alice@example.org\r\nSubject: checked\r\nMessage-ID: <in1@sender.test>\r\n\r\nHello Alice.\r\n",
    )
    .unwrap();
    let prefix = dir.join("in-signed");
    let json = dkimpy::run_helper(&[
        "sign",
        src.to_str().unwrap(),
        prefix.to_str().unwrap(),
        "sender.test",
    ]);
    for kv in json.trim().trim_matches(['{', '}']).split("\", \"") {
        let (k, v) = kv.split_once("\": \"").unwrap();
        dns.txt(k.trim_matches('"'), &[v.trim_matches('"')]);
    }
    std::fs::read(format!("{}.relaxed", prefix.display())).unwrap()
}

/// Mail failing SPF or DMARC is delivered to Junk (docs/spam.md).
fn junk(srv: &Server) -> std::path::PathBuf {
    srv.data_dir().join("folders/Junk")
}

fn auth_results(mbox: &[u8]) -> String {
    let text = String::from_utf8_lossy(mbox);
    let start = text
        .find("Authentication-Results:")
        .unwrap_or_else(|| panic!("no Authentication-Results in:\n{text}"));
    let mut out = String::new();
    for (i, line) in text[start..].lines().enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        out.push_str(line.trim());
        out.push(' ');
    }
    out
}

#[test]
fn port25_mail_gets_authentication_results() {
    let dns = FakeDns::start();
    dns.txt("sender.test", &["v=spf1 ip4:127.0.0.1 -all"]);
    dns.txt("_dmarc.sender.test", &["v=DMARC1; p=reject"]);
    let srv = checking_server(&dns, "");
    let msg = dkimpy_signed(&dns, srv.dir.path());
    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message("sam@sender.test", &["alice@example.org"], &msg);
    assert_eq!(code, 250, "{text}");
    assert!(srv.wait_log("auth id=", WAIT));
    let ar = auth_results(&srv.mbox());
    assert!(
        ar.starts_with("Authentication-Results: mail.example.org;"),
        "{ar}"
    );
    for part in [
        "spf=pass smtp.mailfrom=sam@sender.test;",
        "dkim=pass header.d=sender.test header.s=py-ed header.a=ed25519-sha256",
        "dkim=pass header.d=sender.test header.s=py-rsa header.a=rsa-sha256",
        "dmarc=pass (p=reject) header.from=sender.test",
    ] {
        assert!(ar.contains(part), "no {part:?} in {ar}");
    }
    // The header sits on top of the stored message, the message intact.
    let stored = python_mbox_messages(&srv.mbox_path());
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0]).contains("Hello Alice."));
}

#[test]
fn dmarc_failures_are_marked_by_default_and_refused_when_configured() {
    let dns = FakeDns::start();
    // The From domain asks for reject; the mail comes from elsewhere,
    // unsigned, with an envelope sender whose SPF does not cover us.
    dns.txt("_dmarc.bank.test", &["v=DMARC1; p=reject"]);
    dns.txt("bank.test", &["v=spf1 ip4:192.0.2.1 -all"]);
    // It even carries a verdict in our name, which must not survive.
    let forged = b"Authentication-Results: mail.example.org; spf=pass; dkim=pass; dmarc=pass\r\nFrom: Bank <security@bank.test>\r\nTo: alice@example.org\r\nSubject: verify your account\r\n\r\nClick here.\r\n";
    let srv = checking_server(&dns, "");
    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message("security@bank.test", &["alice@example.org"], forged);
    assert_eq!(code, 250, "mark only by default: {text}");
    assert!(srv.wait_log("auth id=", WAIT));
    let ar = auth_results(&std::fs::read(junk(&srv)).unwrap());
    for part in [
        "spf=fail smtp.mailfrom=security@bank.test",
        "dkim=none",
        "dmarc=fail (p=reject) header.from=bank.test",
    ] {
        assert!(ar.contains(part), "no {part:?} in {ar}");
    }
    let stored = String::from_utf8_lossy(&python_mbox_messages(&junk(&srv))[0]).into_owned();
    assert_eq!(
        stored.matches("Authentication-Results:").count(),
        1,
        "{stored}"
    );
    assert!(
        !stored.contains("dmarc=pass"),
        "the forged verdict survived:\n{stored}"
    );
    assert!(srv.wait_log(
        "removed 1 Authentication-Results header(s) claiming to be ours",
        WAIT
    ));
    drop(c);
    let strict = checking_server(&dns, "dmarc_reject = true");
    let mut c = strict.connect();
    c.hello();
    let (code, text) = c.send_message("security@bank.test", &["alice@example.org"], forged);
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.1") && text.contains("DMARC policy of bank.test"),
        "{text}"
    );
    assert!(strict.wait_log("refused id=", WAIT));
    assert!(python_mbox_messages(&strict.mbox_path()).is_empty());
    // The session goes on: a legitimate message right after is accepted.
    dns.txt("ok.test", &["v=spf1 ip4:127.0.0.1 -all"]);
    let (code, text) = c.send_message(
        "x@ok.test",
        &["alice@example.org"],
        b"From: x@ok.test\r\nSubject: fine\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
}

/// `pimail doctor` with the given `[outbound] dns` and top-level names.
fn doctor_with(dns: &str, hostname: &str, domain: &str) -> (i32, String) {
    let dir = TempDir::new("doctordns");
    let cfg = dir.path().join("pimail.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"{hostname}\"\ndomains = [\"{domain}\"]\ndata_dir = {:?}\n\
             [user]\nname = \"alice\"\npassword = \"{PASSWORD_HASH}\"\naddresses = [\"alice\"]\n\
             [outbound]\ndns = [\"{dns}\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let o = pimail_command()
        .args(["doctor", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// Issue 14: a resolver that says NXDOMAIN to everything, or none that
/// answers, is reported as such, without advice to publish records.
#[test]
fn doctor_says_dns_is_broken_instead_of_advising_records() {
    let nx = FakeDns::start(); // knows no names: NXDOMAIN for all
    let (code, out) = doctor_with(&nx.addr.to_string(), "mail.example.org", "example.org");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("DNS resolution is broken"), "{out}");
    assert!(out.contains("do not exist"), "{out}");
    assert!(
        !out.contains("publish `"),
        "record advice with broken DNS:\n{out}"
    );

    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (code, out) = doctor_with(&addr.to_string(), "mail.example.org", "example.org");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("DNS resolution is broken: no nameserver answers"),
        "{out}"
    );
    assert!(!out.contains("publish `"), "{out}");
}

#[test]
fn doctor_gives_no_record_advice_for_localhost() {
    let dns = FakeDns::start();
    dns.mx("gmail.com", &[(5, "gmail-smtp-in.l.google.com")]);
    let (_, out) = doctor_with(&dns.addr.to_string(), "localhost", "localhost");
    assert!(out.contains("try-it default"), "{out}");
    assert!(!out.contains("localhost. IN"), "{out}");
    assert!(!out.contains("publish `"), "{out}");
}

#[test]
fn doctor_does_not_call_a_self_signed_certificate_ok() {
    let w = world();
    let (_, out) = doctor(&w, &[]);
    assert!(
        out.contains("[warn] TLS certificate is self-signed"),
        "{out}"
    );
}

/// Issue 13, hole 3: RFC 8601 allows CFWS before the authserv-id and a
/// quoted-string as the id; a forged verdict in either form used to reach
/// the mailbox.
#[test]
fn forged_results_behind_a_comment_or_in_quotes_are_removed_too() {
    let dns = FakeDns::start();
    dns.txt("bank.test", &["v=spf1 ip4:192.0.2.1 -all"]);
    let forged = b"Authentication-Results: (checked by us) mail.example.org; dkim=pass header.d=bank.test\r\n\
Authentication-Results: \"mail.example.org\"; dmarc=pass header.from=bank.test\r\n\
Authentication-Results: (x)\r\n \"MAIL.example.org.\" 1; spf=pass\r\n\
Authentication-Results: relay.other.example; dkim=fail\r\n\
From: Bank <security@bank.test>\r\nTo: alice@example.org\r\nSubject: verify\r\n\r\nClick.\r\n";
    let srv = checking_server(&dns, "");
    let mut c = srv.connect();
    c.hello();
    let (code, text) = c.send_message("security@bank.test", &["alice@example.org"], forged);
    assert_eq!(code, 250, "{text}");
    assert!(srv.wait_log(
        "removed 3 Authentication-Results header(s) claiming to be ours",
        WAIT
    ));
    let stored = String::from_utf8_lossy(&python_mbox_messages(&junk(&srv))[0]).into_owned();
    let header = stored.split("\n\n").next().unwrap_or_default().to_string();
    assert!(
        !header.contains("=pass"),
        "a forged verdict survived:\n{header}"
    );
    // Ours on top, and the other server's verdict is kept.
    assert_eq!(
        header.matches("Authentication-Results:").count(),
        2,
        "{header}"
    );
    assert!(header.contains("Authentication-Results: relay.other.example; dkim=fail"));
}

/// RFC 7489 6.6.4: `pct=50` applies `p=reject` to about half of the
/// failing messages; the others are accepted (as quarantine), none lost.
#[test]
fn dmarc_pct_rejects_only_a_sample() {
    let dns = FakeDns::start();
    dns.txt("_dmarc.half.test", &["v=DMARC1; p=reject; pct=50"]);
    dns.txt("half.test", &["v=spf1 ip4:192.0.2.1 -all"]);
    let msg = b"From: <news@half.test>\r\nTo: alice@example.org\r\nSubject: sample\r\n\r\nHi.\r\n";
    let srv = checking_server(&dns, "dmarc_reject = true");
    let mut c = srv.connect();
    c.hello();
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..40 {
        let (code, text) = c.send_message("news@half.test", &["alice@example.org"], msg);
        match code {
            550 => {
                assert!(text.contains("5.7.1"), "{text}");
                refused += 1;
            }
            250 => accepted += 1,
            _ => panic!("unexpected reply {code} {text}"),
        }
    }
    // The chance of either count being 0 by luck is 2 * 2^-40.
    assert!(
        refused > 0 && accepted > 0,
        "refused {refused}, accepted {accepted}"
    );
    assert_eq!(python_mbox_messages(&junk(&srv)).len(), accepted);
    let ar = auth_results(&std::fs::read(junk(&srv)).unwrap());
    assert!(ar.contains("dmarc=fail"), "{ar}");
}

/// RFC 7208 2.3: the HELO identity is checked on its own too, and the
/// result is reported as `smtp.helo=` next to the MAIL FROM result.
#[test]
fn helo_identity_gets_its_own_spf_result() {
    let dns = FakeDns::start();
    dns.txt("relay.helo.test", &["v=spf1 ip4:127.0.0.1 -all"]);
    dns.txt("nospf.test", &["v=spf1 ip4:192.0.2.1 -all"]);
    let srv = checking_server(&dns, "");
    let mut c = srv.connect();
    let (code, _) = c.reply();
    assert_eq!(code, 220);
    c.expect("EHLO relay.helo.test", 250);
    let msg = b"From: <x@nospf.test>\r\nTo: alice@example.org\r\nSubject: helo\r\n\r\nHi.\r\n";
    let (code, text) = c.send_message("x@nospf.test", &["alice@example.org"], msg);
    assert_eq!(code, 250, "{text}");
    assert!(srv.wait_log("auth id=", WAIT));
    let ar = auth_results(&std::fs::read(junk(&srv)).unwrap());
    for part in [
        "spf=fail smtp.mailfrom=x@nospf.test;",
        "spf=pass smtp.helo=relay.helo.test;",
    ] {
        assert!(ar.contains(part), "no {part:?} in {ar}");
    }
    // An address literal is not a HELO identity to check.
    let mut c = srv.connect();
    let _ = c.reply();
    c.expect("EHLO [127.0.0.1]", 250);
    let (code, _) = c.send_message("x@nospf.test", &["alice@example.org"], msg);
    assert_eq!(code, 250);
    let stored = python_mbox_messages(&junk(&srv));
    assert_eq!(stored.len(), 2);
    let second = String::from_utf8_lossy(&stored[1]).into_owned();
    assert!(!second.contains("smtp.helo="), "{second}");
}
