//! Crash-state tests of the IMAP store's caches (tests only): the sidecar
//! (`sidecar`, a new file renamed over the old, never flushed), the
//! writer's log of delivered mail (`appended`, appended with `O_APPEND`,
//! never flushed, cut to nothing when it starts again) and the MIME
//! records (`mimedb`, appended, never flushed). For each, every disk
//! state a power cut may leave is built as the crash-state explorers
//! build them (`store::crash::file_states`: each write kept, dropped or
//! torn at 4 KiB blocks, in any order, at any length since the last
//! flush; here nothing is ever flushed), and the reader must never
//! misread: it gives what was written, a part of it it can vouch for, or
//! nothing (a cache lost: the folder is scanned). A misread would be a
//! wrong UID, flag or message position.

use super::appended;
use super::entry::Entry;
use super::mimedb::{self, MimeDb, Ptr, Rendered};

const RENDERED: [Rendered; 3] = [Rendered::Envelope, Rendered::BodyStructure, Rendered::Body];
use super::sidecar;
use crate::store::crash::{file_states, Op};
use crate::store::maildrop::{Message, Stamp};

/// A stamp of an mbox `len` octets long (the other fields any).
pub(super) fn stamp(len: u64) -> Stamp {
    Stamp {
        dev: 1,
        ino: 2,
        len,
        mtime_ns: 3,
        head: 4,
        tail: 5,
    }
}

fn entry(i: u32, flags: &[&str]) -> Entry {
    let at = u64::from(i) * 1000;
    Entry {
        msg: Message {
            offset: at,
            start: at + 40,
            end: at + 990,
            size: 980,
            uid: format!("0000ABCD{i:08X}"),
        },
        uid: i + 1,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        modseq: u64::from(i) + 3,
        date: 1_700_000_000 + i64::from(i),
        seal_id: Some(format!("0000ABCD{i:08X}")),
        body_start: at + 40,
        size: 975,
        mime: Some(Ptr {
            at: u64::from(i) * 500,
            len: 500,
            wire: 975,
        }),
    }
}

fn same(a: &Entry, b: &Entry) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// A save replaces the sidecar by rename without a flush: after a power
/// cut the name holds the old file, or the new one in any torn state.
/// Whatever decodes is the old or the new sidecar's content: a complete
/// view only when it is one of them whole, else records that are theirs.
#[test]
fn a_sidecar_save_cut_by_a_power_failure_is_never_misread() {
    let old_list: Vec<Entry> = (0..60).map(|i| entry(i, &[])).collect();
    let new_list: Vec<Entry> = (0..130)
        .map(|i| {
            entry(
                i,
                if i % 3 == 0 {
                    &["\\Seen", "$Label"]
                } else {
                    &["\\Flagged"]
                },
            )
        })
        .collect();
    let old = sidecar::encode(77, 61, 70, Some(&stamp(60_000)), &old_list);
    let new = sidecar::encode(77, 131, 300, Some(&stamp(130_000)), &new_list);
    assert!(new.len() > 3 * 4096, "spans blocks: {}", new.len());
    let mut states = vec![old.clone()];
    states.extend(file_states(&[], &[Op::Write(0, new.clone())]));
    assert!(states.len() > 16, "{} states", states.len());
    let (mut complete, mut partial, mut lost) = (0, 0, 0);
    for (k, b) in states.iter().enumerate() {
        let Some(s) = sidecar::decode(b) else {
            lost += 1;
            continue;
        };
        assert_eq!(s.uid_validity, 77, "state {k}");
        let whole_old = s.entries.len() == old_list.len()
            && old_list.iter().zip(&s.entries).all(|(a, b)| same(a, b));
        let whole_new = s.entries.len() == new_list.len()
            && new_list.iter().zip(&s.entries).all(|(a, b)| same(a, b));
        if s.complete {
            assert!(
                whole_old || whole_new,
                "state {k}: a complete view of neither"
            );
            assert_eq!(
                s.stamp,
                Some(stamp(if whole_old { 60_000 } else { 130_000 }))
            );
            complete += 1;
        } else {
            // Records read up to the first bad one: each is the new
            // file's (the old file is never torn: it is not written).
            assert!(s.entries.len() <= new_list.len(), "state {k}");
            for (a, b) in new_list.iter().zip(&s.entries) {
                assert!(same(a, b), "state {k}: {b:?} is not {a:?}");
            }
            partial += 1;
        }
    }
    assert!(
        complete >= 2 && partial > 0 && lost > 0,
        "{complete} {partial} {lost}"
    );
}

/// The log of delivered mail is appended to and never flushed, and cut
/// to nothing when it starts again: after a power cut, the batches read
/// are the first ones of what was written since the log last started
/// (or of the log before it), each exactly as written.
#[test]
fn the_delivered_mail_log_cut_by_a_power_failure_gives_whole_batches_in_order() {
    let batch = |from: u64, to: u64, first: u32, n: u32, blob: &[u8]| {
        let entries: Vec<Entry> = (first..first + n)
            .map(|i| {
                let mut e = entry(i, &[]);
                e.msg.offset = from + u64::from(i - first) * 10;
                e.msg.start = e.msg.offset + 4;
                e.msg.end = e.msg.offset + 9;
                e.body_start = e.msg.start;
                e.mime = Some(Ptr {
                    at: 0,
                    len: blob.len() as u32,
                    wire: 5,
                });
                e
            })
            .collect();
        appended::framed(&appended::encode(from, &stamp(to), &entries, blob).unwrap())
    };
    let blob = vec![b'r'; 3000];
    let a = batch(0, 400, 0, 40, &blob);
    let b = batch(400, 800, 40, 40, &blob);
    let c = batch(0, 300, 0, 30, &blob[..2000]);
    assert_ne!(a.len(), c.len());
    // Two commits, then the log starts again (another program wrote to
    // the mbox) with a third.
    let ops = [
        Op::Write(0, a.clone()),
        Op::Write(a.len() as u64, b.clone()),
        Op::SetLen(0),
        Op::Write(0, c.clone()),
    ];
    let states = file_states(&[], &ops);
    assert!(states.len() > 32, "{} states", states.len());
    let decoded = |x: &[u8]| appended::decode(x);
    let (want_ab, want_c) = (decoded(&[a.clone(), b].concat()), decoded(&c));
    let key = |bt: &appended::Batch| {
        (
            bt.from,
            bt.stamp.len,
            bt.entries
                .iter()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>(),
            bt.mime.clone(),
        )
    };
    let mut seen_whole = 0;
    for (k, st) in states.iter().enumerate() {
        let got = decoded(st);
        let ok = |want: &[(appended::Batch, usize)]| {
            got.len() <= want.len() && got.iter().zip(want).all(|(g, w)| key(&g.0) == key(&w.0))
        };
        assert!(
            ok(&want_ab) || ok(&want_c),
            "state {k}: {} batches that are not what was written",
            got.len()
        );
        if got.len() == 2 || (got.len() == 1 && key(&got[0].0) == key(&want_c[0].0)) {
            seen_whole += 1;
        }
    }
    assert!(seen_whole > 0);
}

/// MIME records are appended to the `.mime` file without a flush; the
/// sidecar (or the log) points at them. After a power cut a pointer may
/// find its record whole, torn, zeroed or missing: the record comes
/// back exactly as written, or not at all (then it is made again from
/// the mbox), never as other bytes.
#[test]
fn mime_records_cut_by_a_power_failure_come_back_whole_or_not_at_all() {
    let dir = std::env::temp_dir().join(format!("pimail-mime-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("INBOX.mime");
    // Records as a first scan makes them, for messages of the MIME
    // samples (several KiB each: records span blocks).
    let mut db = MimeDb::open(path.clone());
    let mut recs = Vec::new();
    for (i, (_, msg)) in crate::store::mime::tests::SAMPLES.iter().enumerate() {
        let mut p = crate::store::mime::Parser::new();
        p.feed(msg);
        let s = p.finish();
        let payload = mimedb::payload(&s);
        let uidl = format!("h{i:016x}");
        let ptr = db.put(&uidl, &payload, s.size()).unwrap();
        let texts: Vec<Vec<u8>> = RENDERED
            .iter()
            .map(|w| mimedb::rendered(&payload, *w).unwrap().to_vec())
            .collect();
        recs.push((
            uidl,
            ptr,
            db.get(ptr, &format!("h{i:016x}")).unwrap(),
            texts,
        ));
    }
    drop(db);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 2 * 4096, "{} octets", bytes.len());
    // The first two records were flushed (an earlier session's); the
    // rest is this session's appends, one write each.
    let durable_len = (recs[1].1.at + u64::from(recs[1].1.len)) as usize;
    let ops: Vec<Op> = recs[2..]
        .iter()
        .map(|(_, p, _, _)| {
            let (at, end) = (p.at as usize, p.at as usize + p.len as usize);
            Op::Write(p.at, bytes[at..end].to_vec())
        })
        .collect();
    let states = file_states(&bytes[..durable_len], &ops);
    assert!(states.len() > 16, "{} states", states.len());
    let (mut whole, mut missed) = (0, 0);
    for (k, st) in states.iter().enumerate() {
        std::fs::write(&path, st).unwrap();
        let db = MimeDb::open(path.clone());
        for (uidl, p, want, texts) in &recs {
            match db.get(*p, uidl) {
                Some(got) => {
                    assert_eq!(&got, want, "state {k}: the record of {uidl} misread");
                    whole += 1;
                }
                None => missed += 1,
            }
            // The texts FETCH copies (checked on their own, not by the
            // frame): each whole or a miss.
            for (w, t) in RENDERED.iter().zip(texts) {
                let mut out = b"before".to_vec();
                match db.write_rendered(*p, uidl, *w, &mut out) {
                    Ok(()) => assert_eq!(&out[6..], &t[..], "state {k}: {w:?} of {uidl}"),
                    Err(_) => assert_eq!(out, b"before"),
                }
            }
        }
    }
    assert!(whole > 0 && missed > 0, "{whole} {missed}");
    let _ = std::fs::remove_dir_all(&dir);
}
