//! The independent DKIM verifier (dkimpy, via tests/helpers/dkimpy_helper.py)
//! for tests that check pimail's signatures. Fails with an install hint
//! when python3, dkimpy, pynacl or openssl is missing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/dkimpy_helper.py")
}

/// Runs the helper; a missing module or tool fails the test with the fix.
pub fn run_helper(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(helper())
        .args(args)
        .output()
        .expect("python3 is needed for the DKIM interop tests");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "DKIM interop tests need dkimpy and pynacl (pip install dkimpy pynacl): {stderr}"
    );
    assert!(
        out.status.success(),
        "dkimpy helper {args:?} failed (needs openssl on PATH too): {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// dkimpy's verdict for each DKIM-Signature of `msg` (as the JSON list it
/// prints, e.g. `[true, true]`), with `records` (name -> TXT) as the DNS.
pub fn verify(dir: &Path, msg: &[u8], records: &BTreeMap<String, String>) -> String {
    let m = dir.join("dkimpy-msg.eml");
    std::fs::write(&m, msg).unwrap();
    let r = dir.join("dkimpy-records.json");
    let json: Vec<String> = records
        .iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect();
    std::fs::write(&r, format!("{{{}}}", json.join(", "))).unwrap();
    run_helper(&["verify", m.to_str().unwrap(), r.to_str().unwrap()])
        .trim()
        .to_string()
}

/// Parses the records `pimail dkim generate|records` printed, joining the
/// quoted strings of long values.
pub fn printed_records(stdout: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let Some((name, value)) = line.split_once("  IN TXT  ") else {
            continue;
        };
        let joined: String = value
            .split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s)
            .collect();
        out.insert(name.trim_end_matches('.').to_string(), joined);
    }
    out
}
