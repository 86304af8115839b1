//! Crash-state exploration of the IMAP folder rewrites (tests only, issue
//! 16 "crash safety", after issue 15's explorers): a MOVE as the IMAP
//! store does it (each message appended to the target through the mbox
//! writer's core, [`mbox::append_batch`], fsynced, before the source is
//! rewritten) and then an EXPUNGE, both rewrites writing the kept
//! messages' flags into `Status:`/`X-Status:`
//! ([`maildrop::expunge_with_status`]'s edits), on the recorded file
//! system of `simfs.rs`. For every point a power cut could hit and every
//! disk state it may leave, recovery runs as at start (the rewrite's redo
//! journal; the target writer's seal journal) and the checks are: both
//! folders parse; every message is in its old place, its new place or
//! both, never neither, and whole (nothing torn); a message not moved or
//! expunged is in its folder exactly once; once MOVE or EXPUNGE was
//! answered, its messages have left the source and the source holds
//! exactly the rewritten content, Status lines included (edits are all or
//! nothing with the deletion); UIDLs are unique in each folder and seal
//! UIDs in the target; a second recovery changes nothing.

use super::disk::{Disk, Fs};
use super::explore::{self, Run};
use super::maildrop::{self, Expunge, Stamp};
use super::mbox::{self, Item, Seal};
use super::simfs::{crash_states, Point, SimFs};
use std::collections::HashSet;
use std::path::Path;

const DATA: &str = "/pimail-sim/data/imap/Archive.d";
const SRC: &str = "/pimail-sim/mail/Archive";
const DST: &str = "/pimail-sim/mail/Trash";
const DST_JOURNAL: &str = "/pimail-sim/data/imap/Trash.d/journal";

fn message(k: usize, len: usize) -> Vec<u8> {
    let mut m = format!(
        "From bob@example.com Thu Jan  1 00:00:00 1970\nX-Pimail: id={k:016X} uid={} len=0 sum=0\n\
         Subject: m{k}\nStatus: O\n\n",
        k + 1
    )
    .into_bytes();
    let mut i = 0;
    while m.len() < len {
        m.extend_from_slice(format!("line {i} of message {k}, >From quoted\n").as_bytes());
        i += 1;
    }
    m.extend_from_slice(b"\n");
    m
}

/// A message's content with what a rewrite or a copy may change taken
/// out: the seal line and `Status:`/`X-Status:` in its header.
fn normal(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut in_header = true;
    for line in content.split_inclusive(|&b| b == b'\n') {
        if in_header {
            if line == b"\n" {
                in_header = false;
            } else if Seal::parse(line).is_some()
                || line.starts_with(b"Status:")
                || line.starts_with(b"X-Status:")
            {
                continue;
            }
        }
        out.extend_from_slice(line);
    }
    out
}

/// A folder's messages: raw contents, with checks that it parses and its
/// UIDLs (and seal UIDs, `seal_uids`) are unique.
fn folder(fs: &SimFs, path: &str, seal_uids: bool) -> Result<Vec<Vec<u8>>, String> {
    let Some(bytes) = fs.content(Path::new(path)) else {
        return Ok(Vec::new());
    };
    let found =
        maildrop::scan_with(&bytes, 0, bytes.len() as u64, 64 * 1024).map_err(|e| e.to_string())?;
    let mut uidls = HashSet::new();
    let mut uids = HashSet::new();
    let mut out = Vec::new();
    for m in &found {
        if !uidls.insert(m.uid.clone()) {
            return Err(format!("{path}: UIDL {} twice", m.uid));
        }
        let c = bytes[m.start as usize..m.end as usize].to_vec();
        if seal_uids {
            let first = c.split_inclusive(|&b| b == b'\n').take(3);
            for line in first {
                if let Some(s) = Seal::parse(line) {
                    if !uids.insert(s.uid) {
                        return Err(format!("{path}: UID {} twice", s.uid));
                    }
                }
            }
        }
        out.push(c);
    }
    Ok(out)
}

struct Workload {
    points: Vec<Point>,
    /// Normalized originals of the source, and of the target's own mail.
    originals: Vec<Vec<u8>>,
    target_own: Vec<Vec<u8>>,
    moved: Vec<usize>,
    expunged: usize,
    /// The source's raw content after the MOVE and after the EXPUNGE.
    after_move: Vec<Vec<u8>>,
    after_expunge: Vec<Vec<u8>>,
}

const MOVED: [usize; 3] = [1, 4, 6];
const EXPUNGED: usize = 3;

fn stamp(len: u64) -> Stamp {
    Stamp {
        dev: 1,
        ino: 0,
        len,
        mtime_ns: 0,
        head: 0,
        tail: 0,
    }
}

/// The flags of message k as Status lines (a mix, so that the rewrites
/// edit some headers and leave others).
fn status_of(k: usize) -> Option<Vec<u8>> {
    Some(maildrop::status_lines(
        k % 2 == 0,
        k % 3 == 0,
        k == 5,
        k == EXPUNGED,
        false,
    ))
}

/// The source rewrite the IMAP store makes for `deleted` (by position).
fn rewrite(fs: &SimFs, src: &dyn Disk, deleted: &[usize]) {
    let bytes = fs.content(Path::new(SRC)).unwrap_or_default();
    let found = maildrop::scan_with(src, 0, bytes.len() as u64, 64 * 1024).unwrap();
    let keys: Vec<usize> = found
        .iter()
        .map(|m| {
            let c = &bytes[m.start as usize..m.end as usize];
            let s = String::from_utf8_lossy(c);
            s.split("Subject: m")
                .nth(1)
                .and_then(|r| r.split('\n').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX)
        })
        .collect();
    let x = Expunge {
        deleted: keys.iter().map(|k| deleted.contains(k)).collect(),
        messages: found,
        stamp: stamp(bytes.len() as u64),
    };
    let status: Vec<Option<Vec<u8>>> = keys.iter().map(|&k| status_of(k)).collect();
    let edits = maildrop::status_edits(src, &x, &status).unwrap();
    let plan = maildrop::plan_edits(&x, bytes.len() as u64, edits);
    maildrop::rewrite(fs, src, Path::new(SRC), &plan, Path::new(DATA)).unwrap();
}

fn workload(break_files: bool) -> Workload {
    let fs = SimFs::new();
    let sizes = [300usize, 3000, 5000, 200, 4500, 400, 2500, 1200];
    let msgs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| message(k, n))
        .collect();
    let from_len = |m: &[u8]| m.iter().position(|&b| b == b'\n').unwrap() + 1;
    let originals: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| normal(&m[from_len(m)..m.len() - 1]))
        .collect();
    fs.put(Path::new(SRC), &msgs.concat());
    let own = message(40, 500);
    let target_own = vec![normal(&own[from_len(&own)..own.len() - 1])];
    fs.put(Path::new(DST), &own);
    fs.put(Path::new(DST_JOURNAL), b"");
    let data = Path::new(DATA);
    let src = fs.open(Path::new(SRC), true).unwrap();
    let dst = fs.open(Path::new(DST), true).unwrap();
    let journal = fs.open(Path::new(DST_JOURNAL), true).unwrap();
    // The start: the rewrite journal is created while there is room.
    maildrop::recover_on(&fs, &*src, Path::new(SRC), data).unwrap();
    let mut st = mbox::recover(&*journal, &*dst, Path::new(DST)).unwrap();
    // The copies as `copy_to_spool` makes them: stored content without
    // the seal, the source's `From ` line as prefix.
    let spools: Vec<(String, Vec<u8>, Vec<u8>)> = MOVED
        .iter()
        .map(|&k| {
            let m = &msgs[k];
            let fl = from_len(m);
            let body: Vec<u8> = m[fl..m.len() - 1]
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| Seal::parse(l).is_none())
                .flatten()
                .copied()
                .collect();
            (format!("{:016X}", 100 + k), m[..fl].to_vec(), body)
        })
        .collect();
    fs.break_flushes(break_files, false);
    fs.record(true);
    // MOVE: every copy fsynced in the target, then the source rewrite.
    for (id, prefix, body) in &spools {
        let item = Item { id, prefix, body };
        mbox::append_batch(&*journal, &*dst, &mut st, &[item], Path::new(DST)).unwrap();
    }
    rewrite(&fs, &*src, &MOVED);
    fs.mark(1); // MOVE answered OK
    let after_move = folder(&fs, SRC, false).unwrap();
    rewrite(&fs, &*src, &[EXPUNGED]);
    fs.mark(2); // EXPUNGE answered OK
    let after_expunge = folder(&fs, SRC, false).unwrap();
    fs.record(false);
    assert_eq!(after_expunge.len(), msgs.len() - MOVED.len() - 1);
    // The rewrites wrote the flags: message 0 is seen and answered.
    assert!(
        after_expunge[0]
            .windows(19)
            .any(|w| w == b"Status: RO\nX-Status"),
        "{}",
        String::from_utf8_lossy(&after_expunge[0])
    );
    Workload {
        points: fs.take_points(),
        originals,
        target_own,
        moved: MOVED.to_vec(),
        expunged: EXPUNGED,
        after_move,
        after_expunge,
    }
}

fn recover(fs: &SimFs) -> Result<(), String> {
    let src = fs.open(Path::new(SRC), true).map_err(|e| e.to_string())?;
    maildrop::recover_on(fs, &*src, Path::new(SRC), Path::new(DATA))
        .map_err(|e| format!("recover source: {e}"))?;
    let dst = fs.open(Path::new(DST), true).map_err(|e| e.to_string())?;
    let journal = fs
        .open(Path::new(DST_JOURNAL), true)
        .map_err(|e| e.to_string())?;
    mbox::recover(&*journal, &*dst, Path::new(DST)).map_err(|e| format!("recover target: {e}"))?;
    Ok(())
}

fn check(fs: &SimFs, w: &Workload, mark: usize) -> Result<(), String> {
    recover(fs)?;
    let src = folder(fs, SRC, false)?;
    let dst = folder(fs, DST, true)?;
    // Each message normalized once: this runs for thousands of states.
    let (ns, nd): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (
        src.iter().map(|c| normal(c)).collect(),
        dst.iter().map(|c| normal(c)).collect(),
    );
    let count = |list: &[Vec<u8>], n: &[u8]| list.iter().filter(|c| c.as_slice() == n).count();
    for (c, n) in src.iter().chain(&dst).zip(ns.iter().chain(&nd)) {
        if !w.originals.contains(n) && !w.target_own.contains(n) {
            return Err(format!(
                "a torn message: {:?}",
                String::from_utf8_lossy(&c[..c.len().min(80)])
            ));
        }
    }
    for (k, n) in w.originals.iter().enumerate() {
        let (s, d) = (count(&ns, n), count(&nd, n));
        let moved = w.moved.contains(&k);
        if s + d == 0 && !(k == w.expunged && mark >= 1) {
            return Err(format!("message m{k} lost (in neither folder)"));
        }
        if s > 1 || (!moved && d > 0) {
            return Err(format!(
                "message m{k}: {s} in the source, {d} in the target"
            ));
        }
        if !moved && k != w.expunged && s != 1 {
            return Err(format!("message m{k} lost from the source"));
        }
        if moved && mark >= 1 && (s != 0 || d == 0) {
            return Err(format!(
                "MOVE was answered, but m{k} is {s} in the source, {d} in the target (partial)"
            ));
        }
        if k == w.expunged && mark >= 2 && s != 0 {
            return Err("EXPUNGE was answered, but its message is back".into());
        }
    }
    if count(&nd, &w.target_own[0]) != 1 {
        return Err("the target's own message lost".into());
    }
    // The rewrite's edits go with its deletion.
    let norm = |l: &[Vec<u8>]| l.iter().map(|c| normal(c)).collect::<Vec<_>>();
    for after in [&w.after_move, &w.after_expunge] {
        if ns == norm(after) && &src != after {
            return Err("the deletion happened without its Status lines (partial)".into());
        }
    }
    // Recovery twice changes nothing.
    recover(fs).map_err(|e| format!("again: {e}"))?;
    if folder(fs, SRC, false)? != src || folder(fs, DST, true)? != dst {
        return Err("a second recovery changed a folder".into());
    }
    Ok(())
}

fn explore(break_files: bool) -> Run {
    let w = workload(break_files);
    let mut seen = HashSet::new();
    let mut run = Run::default();
    let mut distinct = 0;
    for (pi, p) in explore::visited(&w.points) {
        for st in crash_states(p, &mut seen) {
            // Most states come from a few points: sampled under an
            // emulator too (4,713 states at every third point).
            distinct += 1;
            if !explore::sampled(distinct, 30) {
                continue;
            }
            run.states += 1;
            if let Err(e) = check(&st, &w, p.mark) {
                run.failures
                    .push(format!("point {pi} (mark {}): {e}", p.mark));
                if break_files {
                    return run;
                }
            }
        }
    }
    run
}

#[test]
fn every_crash_state_of_an_imap_move_and_expunge_keeps_every_message() {
    explore::assert_safe("IMAP MOVE + EXPUNGE", &explore(false), 200, 40);
}

#[test]
fn without_the_flushes_the_explorer_finds_a_lost_message() {
    let run = explore(true);
    explore::assert_finds(
        "IMAP MOVE + EXPUNGE without flushes",
        &run,
        &["lost", "partial", "torn"],
    );
}
