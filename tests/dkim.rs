//! DKIM interoperability: keys made by `pimail dkim generate`, records as
//! it prints them, signatures checked by an independent verifier (dkimpy),
//! and dkimpy's signatures checked by pimail. Needs python3 with `dkimpy`
//! and `pynacl`, and `openssl`; fails with an install hint when missing.

mod common;

use common::dkimpy::{printed_records, run_helper};
use common::{Options, Server, TempDir};
use pimail::trust::dkim;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn require_openssl() {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "these tests need openssl: apt-get install openssl");
}

/// Messages with the canonicalization edge cases that trip signers:
/// trailing whitespace, runs of blanks, trailing empty lines, folded and
/// repeated headers, no final CRLF, empty body, 8-bit text.
const MESSAGES: &[&[u8]] = &[
    b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: plain\r\nDate: Wed, 25 Nov 2026 03:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob.\r\n",
    b"From: alice@example.org\r\nTo: a@example.net,\r\n  b@example.net\r\nTo: c@example.net\r\nSubject:   spaced \t out   \r\n\r\nline with trailing blanks \t \r\n\t indented  line\r\n\r\n\r\n\r\n",
    b"From: alice@example.org\r\nSubject: no final CRLF\r\n\r\nlast line without end",
    b"From: alice@example.org\r\nSubject: empty body\r\n\r\n",
    "From: Zoë <alice@example.org>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÇa va? ünïcödé\r\n.\r\n..dots\r\n"
        .as_bytes(),
];

fn generate_keys(dir: &TempDir) -> (PathBuf, BTreeMap<String, String>) {
    let config = Server::write_config(dir.path(), &Options::default());
    let out = common::pimail_command()
        .args(["dkim", "generate", "--selector", "t1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "dkim generate failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = dir.path().join("data");
    (data, printed_records(&stdout))
}

#[test]
fn generate_writes_private_keys_and_prints_both_records() {
    require_openssl();
    let dir = TempDir::new("dkim-gen");
    let (data, records) = generate_keys(&dir);
    use std::os::unix::fs::PermissionsExt;
    for f in ["t1-ed.pem", "t1-rsa.pem"] {
        let meta = std::fs::metadata(data.join("dkim").join(f)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
    }
    let names: Vec<&str> = records.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "t1-ed._domainkey.example.org",
            "t1-rsa._domainkey.example.org"
        ]
    );
    assert!(records["t1-ed._domainkey.example.org"].starts_with("v=DKIM1; k=ed25519; p="));
    assert!(records["t1-rsa._domainkey.example.org"].starts_with("v=DKIM1; k=rsa; p=MII"));
    // A second run refuses to overwrite the keys already published.
    let config = dir.path().join("pimail.toml");
    let again = common::pimail_command()
        .args(["dkim", "generate", "--selector", "t1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // `dkim records` prints the same records again.
    let rec = common::pimail_command()
        .args(["dkim", "records", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(rec.status.success());
    assert_eq!(
        printed_records(&String::from_utf8_lossy(&rec.stdout)),
        records
    );
}

#[test]
fn pimail_signatures_verify_with_dkimpy() {
    require_openssl();
    let dir = TempDir::new("dkim-sign");
    let (data, records) = generate_keys(&dir);
    let records_file = dir.path().join("records.json");
    let json: Vec<String> = records
        .iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect();
    std::fs::write(&records_file, format!("{{{}}}", json.join(", "))).unwrap();
    let signer = dkim::Signer {
        domain: "example.org".into(),
        keys: dkim::load_keys(&data.join("dkim")).unwrap(),
    };
    assert_eq!(signer.keys.len(), 2);
    for (i, msg) in MESSAGES.iter().enumerate() {
        // Streamed in small pieces, as the delivery path reads a queue file.
        let mut h = dkim::MessageHasher::new();
        for chunk in msg.chunks(7) {
            h.update(chunk).unwrap();
        }
        let (fields, bh) = h.finish();
        let headers = signer
            .sign(&fields, &bh, pimail::util::timefmt::unix_now())
            .unwrap();
        let mut signed = headers.into_bytes();
        signed.extend_from_slice(msg);
        let path = dir.path().join(format!("signed-{i}.eml"));
        std::fs::write(&path, &signed).unwrap();
        let verdict = run_helper(&[
            "verify",
            path.to_str().unwrap(),
            records_file.to_str().unwrap(),
        ]);
        assert_eq!(
            verdict.trim(),
            "[true, true]",
            "dkimpy rejects pimail's signatures on message {i}:\n{}",
            String::from_utf8_lossy(&signed)
        );
        // And a tampered copy fails in dkimpy too (the check can fail).
        let mut bad = signed.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        let verdict = run_helper(&[
            "verify",
            path.to_str().unwrap(),
            records_file.to_str().unwrap(),
        ]);
        assert_eq!(verdict.trim(), "[false, false]", "message {i} tampered");
    }
}

#[test]
fn dkimpy_signatures_verify_in_pimail() {
    require_openssl();
    let dir = TempDir::new("dkim-py");
    for (i, msg) in MESSAGES.iter().enumerate() {
        let src = dir.path().join(format!("msg-{i}.eml"));
        std::fs::write(&src, msg).unwrap();
        let prefix = dir.path().join(format!("py-{i}"));
        let json = run_helper(&[
            "sign",
            src.to_str().unwrap(),
            prefix.to_str().unwrap(),
            "example.net",
        ]);
        let records: BTreeMap<String, String> = json
            .trim()
            .trim_matches(['{', '}'])
            .split("\", \"")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("\": \"")?;
                Some((
                    k.trim_matches('"').to_string(),
                    v.trim_matches('"').to_string(),
                ))
            })
            .collect();
        assert_eq!(records.len(), 2, "{json}");
        for canon in ["relaxed", "simple"] {
            let signed = std::fs::read(format!("{}.{canon}", prefix.display())).unwrap();
            let out = dkim::verify_message(&signed, pimail::util::timefmt::unix_now(), |name| {
                records
                    .get(name)
                    .map(|r| vec![r.clone()])
                    .ok_or(dkim::LookupError::NotFound)
            })
            .unwrap();
            let got: Vec<(&str, &str)> = out
                .iter()
                .map(|o| (o.algorithm.as_str(), o.status.name()))
                .collect();
            assert_eq!(
                got,
                [("ed25519-sha256", "pass"), ("rsa-sha256", "pass")],
                "message {i} {canon}: {out:?}"
            );
        }
    }
}
