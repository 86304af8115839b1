//! Crash-state exploration of the POP3 deletion at QUIT (tests only, issue
//! 15; issue 13 hole 5): the rewrite runs on the recorded file system of
//! `simfs.rs`, once with room on the disk (the copy through a data file)
//! and once on a full disk (the move in place); for every point a power
//! cut could hit and every disk state it may leave, recovery runs
//! ([`maildrop::recover_on`], what the server does at start) and the
//! checks are: the mbox holds exactly the messages from before the
//! deletion or exactly those after it (never a partial deletion, never a
//! lost undeleted message, nothing torn), the deletion is complete once
//! QUIT was answered, UIDLs are unique, and a second recovery changes
//! nothing.

use super::disk::Fs;
use super::explore::{self, Run};
use super::maildrop::{self, Expunge, Stamp};
use super::simfs::{crash_states, Point, SimFs};
use std::collections::HashSet;
use std::path::Path;

const DATA: &str = "/pimail-sim/data";
const MBOX: &str = "/pimail-sim/mail/alice";

fn message(k: usize, len: usize) -> Vec<u8> {
    let mut m = format!(
        "From bob@example.com Thu Jan  1 00:00:00 1970\nX-Pimail: id={k:016X} uid={} len=0 sum=0\nSubject: m{k}\n\n",
        k + 1
    )
    .into_bytes();
    let mut i = 0;
    while m.len() < len {
        m.extend_from_slice(format!("line {i} of message {k}\n").as_bytes());
        i += 1;
    }
    m.extend_from_slice(b"\n");
    m
}

struct Workload {
    points: Vec<Point>,
    before: Vec<Vec<u8>>,
    after: Vec<Vec<u8>>,
}

/// Messages of the mbox (content after the `From ` line).
fn contents(fs: &SimFs) -> Result<Vec<Vec<u8>>, String> {
    let m = fs.open(Path::new(MBOX), false).map_err(|e| e.to_string())?;
    let bytes = fs.content(Path::new(MBOX)).unwrap_or_default();
    let found =
        maildrop::scan_with(&*m, 0, bytes.len() as u64, 64 * 1024).map_err(|e| e.to_string())?;
    let mut uids = HashSet::new();
    let mut out = Vec::new();
    for msg in &found {
        if !uids.insert(msg.uid.clone()) {
            return Err(format!("UIDL {} twice", msg.uid));
        }
        out.push(bytes[msg.start as usize..msg.end as usize].to_vec());
    }
    Ok(out)
}

fn workload(full: bool, break_files: bool) -> Workload {
    let fs = SimFs::new();
    let sizes = [300usize, 3000, 6000, 200, 9000, 400, 2500, 3000];
    // On a full disk the first gap is small: many steps.
    let deleted = if full {
        [false, false, false, true, false, false, true, false]
    } else {
        [false, true, false, true, false, false, true, false]
    };
    let msgs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| message(k, n))
        .collect();
    let mut mbox: Vec<u8> = msgs.concat();
    let stamp_len = mbox.len() as u64;
    // Mail that arrived during the session.
    let late = message(50, 700);
    mbox.extend_from_slice(&late);
    fs.put(Path::new(MBOX), &mbox);
    let data = Path::new(DATA);
    let path = Path::new(MBOX);
    let m = fs.open(path, true).unwrap();
    // The start: the journal is created while there is room.
    maildrop::recover_on(&fs, &*m, path, data).unwrap();
    let before = contents(&fs).unwrap();
    let found = maildrop::scan_with(&*m, 0, stamp_len, 64 * 1024).unwrap();
    let x = Expunge {
        messages: found,
        stamp: Stamp {
            dev: 1,
            ino: 0,
            len: stamp_len,
            mtime_ns: 0,
            head: 0,
            tail: 0,
        },
        deleted: deleted.to_vec(),
    };
    let plan = maildrop::plan(&x, mbox.len() as u64);
    fs.full(full);
    fs.break_flushes(break_files, false);
    fs.record(true);
    maildrop::rewrite(&fs, &*m, path, &plan, data).unwrap();
    fs.mark(1); // QUIT answered +OK
    let after = contents(&fs).unwrap();
    assert_eq!(
        after.len(),
        before.len() - deleted.iter().filter(|&&d| d).count()
    );
    Workload {
        points: fs.take_points(),
        before,
        after,
    }
}

fn check(fs: &SimFs, w: &Workload, done: bool) -> Result<(), String> {
    let data = Path::new(DATA);
    let path = Path::new(MBOX);
    let m = fs.open(path, true).map_err(|e| e.to_string())?;
    maildrop::recover_on(fs, &*m, path, data).map_err(|e| format!("recover: {e}"))?;
    let now = contents(fs)?;
    if now == w.after {
        // Recovery twice changes nothing.
        maildrop::recover_on(fs, &*m, path, data).map_err(|e| format!("recover again: {e}"))?;
        if contents(fs)? != w.after {
            return Err("a second recovery changed the mbox".into());
        }
        return Ok(());
    }
    if now == w.before && !done {
        return Ok(());
    }
    if now == w.before {
        return Err("a deletion that QUIT confirmed was lost".into());
    }
    let lost = w.after.iter().filter(|a| !now.contains(a)).count();
    Err(format!(
        "partial deletion: {} messages, {lost} kept ones lost or torn",
        now.len()
    ))
}

fn explore(full: bool, break_files: bool) -> Run {
    let w = workload(full, break_files);
    let mut seen = HashSet::new();
    let mut run = Run::default();
    for (pi, p) in explore::visited(&w.points) {
        for st in crash_states(p, &mut seen) {
            run.states += 1;
            // Recovery itself recorded: a second power cut during it.
            st.record(true);
            st.mark(p.mark);
            let r = check(&st, &w, p.mark == 1);
            let inner = st.take_points();
            if let Err(e) = r {
                run.failures.push(format!("point {pi}: {e}"));
                if break_files {
                    return run;
                }
            }
            if break_files || pi % if full { 4 } else { 2 } != 0 {
                continue;
            }
            for q in &inner {
                for st2 in crash_states(q, &mut seen) {
                    run.states += 1;
                    if let Err(e) = check(&st2, &w, p.mark == 1) {
                        run.failures
                            .push(format!("point {pi}, crash during recovery: {e}"));
                    }
                }
            }
        }
    }
    run
}

fn report(what: &str, run: &Run) {
    explore::assert_safe(&format!("POP3 deletion ({what})"), run, 200, 60);
}

#[test]
fn every_crash_state_of_a_pop3_deletion_is_all_or_nothing() {
    report("copy", &explore(false, false));
}

#[test]
fn every_crash_state_of_a_pop3_deletion_on_a_full_disk_is_all_or_nothing() {
    report("in place, full disk", &explore(true, false));
}

#[test]
fn without_the_flushes_the_explorer_finds_a_partial_deletion() {
    for full in [false, true] {
        let run = explore(full, true);
        let what = format!("POP3 deletion without flushes, full disk {full}");
        explore::assert_finds(&what, &run, &["partial", "lost"]);
    }
}
