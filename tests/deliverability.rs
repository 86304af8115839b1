//! Deliverability end to end with the real binary, the fake DNS server
//! and fake MX servers on loopback: outbound mail is DKIM-signed (checked
//! by dkimpy against the records `pimail dkim generate` printed), `pimail
//! doctor` finds each wrong record, and mail received on port 25 gets an
//! Authentication-Results header. Needs python3 with dkimpy and pynacl,
//! and openssl.

mod common;
use common::fakes::*;
use common::*;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(40);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn opts(dns: &FakeDns, port: u16, extra: &str) -> Options {
    Options {
        extra: format!(
            "[outbound]\ndns = [\"{}\"]\nmx_port = {port}\nretry = [\"1s\"]\n{extra}\n",
            dns.addr
        ),
        ..Options::default()
    }
}

/// Runs `pimail ARGS --config <server's config>`: exit code, stdout, stderr.
fn pimail(srv: &Server, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(&srv.config)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Stops `srv`, makes DKIM keys in its data_dir, starts it again; returns
/// the records `dkim generate` printed.
fn with_keys(srv: &mut Server) -> std::collections::BTreeMap<String, String> {
    srv.terminate();
    let (code, out, err) = pimail(srv, &["dkim", "generate", "--selector", "t"]);
    assert_eq!(code, 0, "dkim generate: {out}{err}");
    srv.spawn();
    dkimpy::printed_records(&out)
}

#[test]
fn outbound_mail_is_dkim_signed_and_verifies_with_dkimpy() {
    let dns = FakeDns::start();
    let (port, mx) = FakeMx::start_all(vec![(ip(2), Behavior::default())]);
    dns.mx("remote.test", &[(10, "mx.remote.test")]);
    dns.a("mx.remote.test", &[ip(2)]);
    let mut srv = Server::with(opts(&dns, port, ""));
    let records = with_keys(&mut srv);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(srv.wait_log(
        "dkim: signing mail from example.org with selectors t-ed, t-rsa",
        WAIT
    ));
    let msg = "From: Alice <alice@example.org>\nTo: bob@remote.test\nSubject: signed   please \nDate: Wed, 25 Nov 2026 03:00:00 +0000\nMessage-ID: <dkim1@example.org>\n\nHello Bob.\n.leading dot\nFrom the start\n\n\n";
    let (code, err) = srv.sendmail(&["bob@remote.test"], msg.as_bytes());
    assert_eq!(code, 0, "sendmail: {err}");
    let got = mx[0].wait_messages(1, WAIT);
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
    let out = pimail::dkim::verify_message(data, pimail::timefmt::unix_now(), |n| {
        records
            .get(n)
            .map(|r| vec![r.clone()])
            .ok_or(pimail::dkim::LookupError::NotFound)
    })
    .unwrap();
    assert!(
        out.iter().all(|o| o.status == pimail::dkim::Status::Pass),
        "{out:?}"
    );
}

#[test]
fn mail_from_other_domains_is_not_signed() {
    let dns = FakeDns::start();
    let (port, mx) = FakeMx::start_all(vec![(ip(3), Behavior::default())]);
    dns.mx("remote.test", &[(10, "mx.remote.test")]);
    dns.a("mx.remote.test", &[ip(3)]);
    let mut srv = Server::with(opts(&dns, port, ""));
    with_keys(&mut srv);
    let msg = "From: someone@elsewhere.example\nSubject: forwarded\n\nHi\n";
    let (code, err) = srv.sendmail(&["bob@remote.test"], msg.as_bytes());
    assert_eq!(code, 0, "sendmail: {err}");
    let got = mx[0].wait_messages(1, WAIT);
    assert!(!String::from_utf8_lossy(&got[0].data).contains("DKIM-Signature"));
}
