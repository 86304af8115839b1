//! A folder's sidecar index `<data_dir>/imap/<folder>.index`: its codec.
//! What the mbox does not hold (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, and
//! per message its UID, MODSEQ and flags) and where each message lies, so
//! that SELECT after a restart reads this file, not the folder (SPEC
//! "Budgets": under 10 ms on 20,000 messages).
//!
//! Format 6, binary, little-endian, fixed-width fields (read without
//! parsing text, the flags once per distinct set):
//!
//! ```text
//! header  "pimail-imap-index 6\n" validity:u32 uidnext:u32 modseq:u64
//!         stamp:u8(0|1) dev:u64 ino:u64 len:u64 mtime_ns:i128 head:u64 tail:u64
//!         count:u32 sets:u32 { n:u16 { len:u16 flag }* }* check:u64
//! record  offset start end size body_start wire:u64 date:i64 uid:u32
//!         modseq:u64 mime_at:u64 mime_len:u32 mime_wire:u64 set:u32
//!         uidl_len:u8 uidl seal:u8(0 none|1 the UIDL|2 len:u8 id) check:u32
//! ```
//!
//! The file is a cache written without a flush (replaced by rename), so a
//! power cut may leave it cut short or with blocks of zeros: the header
//! and every record carry a check of their bytes. A bad header is a lost
//! sidecar; records are read up to the first bad one (their UIDs and flags
//! are kept), and the whole is the folder's view only when all `count`
//! records are good and nothing follows. The text formats v1 to v4 and
//! format 5 (the same layout as 6, from before the seal after
//! `Return-Path:` was hidden from IMAP, so its sizes and MIME records
//! counted it) are still read for their UIDVALIDITY, UIDs and flags, and
//! replaced at the next save. Both readers take any bytes without panicking (fuzz/
//! fuzz_targets/imap_sidecar.rs).

use super::command::Flag;
use super::entry::Entry;
use super::folder::Uid;
use super::mimedb::Ptr;
use crate::store::maildrop::{Message, Stamp};

pub const MAGIC: &[u8] = b"pimail-imap-index 6\n";
/// Format 5: the same layout, from before `X-Pimail:` after
/// `Return-Path:` was hidden from IMAP (its sizes and MIME positions
/// counted the seal): read for its UIDVALIDITY, UIDs and flags only.
const MAGIC_V5: &[u8] = b"pimail-imap-index 5\n";

/// What a sidecar holds.
#[derive(Debug, Default)]
pub struct Sidecar {
    pub uid_validity: u32,
    pub uid_next: Uid,
    pub modseq: u64,
    pub stamp: Option<Stamp>,
    /// The messages read, in the folder's order. From a text v1-v3 file
    /// (or a v4 line without it) the geometry is unknown: zeros.
    pub entries: Vec<Entry>,
    /// Every message with its place, and a stamp: usable as the view of
    /// the folder without a scan while the stamp holds.
    pub complete: bool,
    /// An older format: to be written again as format 6.
    pub old_format: bool,
}

/// A check of `b`: FNV-1a over 8-byte words (a cache's torn write or
/// zeroed block is what it catches, not an adversary).
pub(super) fn check(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &x in words.remainder() {
        h = (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (b.len() as u64)
}

/// Reads either format; `None` when it is neither (a lost sidecar).
pub fn decode(b: &[u8]) -> Option<Sidecar> {
    if b.starts_with(MAGIC) {
        return decode_v5(b);
    }
    if b.starts_with(MAGIC_V5) {
        // What a scan must make again: the view, sizes, MIME records.
        let mut s = decode_v5(b)?;
        s.complete = false;
        s.old_format = true;
        for e in &mut s.entries {
            e.mime = None;
        }
        return Some(s);
    }
    decode_text(std::str::from_utf8(b).ok()?)
}

pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The file for this state (format 6).
pub fn encode(
    uid_validity: u32,
    uid_next: Uid,
    modseq: u64,
    stamp: Option<&Stamp>,
    entries: &[Entry],
) -> Vec<u8> {
    encode_as(MAGIC, uid_validity, uid_next, modseq, stamp, entries)
}

/// [`encode`] under a format's magic (tests write format 5 with it).
fn encode_as(
    magic: &[u8],
    uid_validity: u32,
    uid_next: Uid,
    modseq: u64,
    stamp: Option<&Stamp>,
    entries: &[Entry],
) -> Vec<u8> {
    // The distinct flag sets, each written once.
    let mut sets: Vec<&[Flag]> = vec![&[]];
    let mut set_of = Vec::with_capacity(entries.len());
    for e in entries {
        let i = match sets.iter().position(|s| *s == &e.flags[..]) {
            Some(i) => i,
            None => {
                sets.push(&e.flags);
                sets.len() - 1
            }
        };
        set_of.push(i as u32);
    }
    let mut out = Vec::with_capacity(256 + entries.len() * 112);
    out.extend_from_slice(magic);
    put_u32(&mut out, uid_validity);
    put_u32(&mut out, uid_next);
    put_u64(&mut out, modseq);
    let z = Stamp::default();
    out.push(u8::from(stamp.is_some()));
    let s = stamp.unwrap_or(&z);
    for v in [s.dev, s.ino, s.len] {
        put_u64(&mut out, v);
    }
    out.extend_from_slice(&s.mtime_ns.to_le_bytes());
    put_u64(&mut out, s.head);
    put_u64(&mut out, s.tail);
    put_u32(&mut out, entries.len() as u32);
    put_u32(&mut out, sets.len() as u32);
    for set in &sets {
        out.extend_from_slice(&(set.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for f in set.iter().take(u16::MAX as usize) {
            let f = &f.as_bytes()[..f.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(f);
        }
    }
    let c = check(&out);
    put_u64(&mut out, c);
    for (e, set) in entries.iter().zip(set_of) {
        put_record(&mut out, e, set);
    }
    out
}

/// One record (flags as flag set `set`), checked.
pub(super) fn put_record(out: &mut Vec<u8>, e: &Entry, set: u32) {
    let at = out.len();
    for v in [
        e.msg.offset,
        e.msg.start,
        e.msg.end,
        e.msg.size,
        e.body_start,
        e.size,
        e.date as u64,
    ] {
        put_u64(out, v);
    }
    put_u32(out, e.uid);
    put_u64(out, e.modseq);
    let p = e.mime.unwrap_or(Ptr {
        at: 0,
        len: 0,
        wire: 0,
    });
    put_u64(out, p.at);
    put_u32(out, p.len);
    put_u64(out, p.wire);
    put_u32(out, set);
    let uidl = &e.msg.uid.as_bytes()[..e.msg.uid.len().min(255)];
    out.push(uidl.len() as u8);
    out.extend_from_slice(uidl);
    match &e.seal_id {
        None => out.push(0),
        Some(id) if *id == e.msg.uid => out.push(1),
        Some(id) => {
            let id = &id.as_bytes()[..id.len().min(255)];
            out.push(2);
            out.push(id.len() as u8);
            out.extend_from_slice(id);
        }
    }
    let c = check(&out[at..]) as u32;
    put_u32(out, c);
}

/// A cursor over the bytes; every read is bounds-checked.
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// A flag as the store keeps them: an atom (RFC 9051 `flag-keyword`, or
/// a system flag), no space or control character.
fn valid_flag(f: &str) -> bool {
    !f.is_empty() && f.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// A POP3 UIDL (RFC 1939 section 7: 0x21..0x7E).
fn valid_uidl(u: &str) -> bool {
    !u.is_empty() && u.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn decode_v5(b: &[u8]) -> Option<Sidecar> {
    let mut r = Rd { b, at: MAGIC.len() };
    let uid_validity = r.u32()?;
    let uid_next = r.u32()?;
    let modseq = r.u64()?;
    let has_stamp = r.u8()?;
    let (dev, ino, len) = (r.u64()?, r.u64()?, r.u64()?);
    let mtime_ns = i128::from_le_bytes(r.take(16)?.try_into().ok()?);
    let (head, tail) = (r.u64()?, r.u64()?);
    let count = r.u32()? as usize;
    let nsets = r.u32()? as usize;
    // At least two octets a set: a count beyond the file is garbage.
    if nsets > b.len() / 2 {
        return None;
    }
    let mut sets: Vec<Vec<Flag>> = Vec::with_capacity(nsets);
    for _ in 0..nsets {
        let n = r.u16()? as usize;
        let mut set = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let l = r.u16()? as usize;
            let f = r.str(l)?;
            if !valid_flag(f) {
                return None;
            }
            set.push(f.to_string());
        }
        sets.push(set);
    }
    let c = check(&b[..r.at]);
    if r.u64()? != c || has_stamp > 1 || uid_validity == 0 {
        return None;
    }
    let stamp = (has_stamp == 1).then_some(Stamp {
        dev,
        ino,
        len,
        mtime_ns,
        head,
        tail,
    });
    let mut out = Sidecar {
        uid_validity,
        uid_next,
        modseq,
        stamp,
        entries: Vec::with_capacity(count.min(b.len() / 100)),
        complete: false,
        old_format: false,
    };
    while out.entries.len() < count {
        let Some(e) = record(&mut r, &sets) else {
            break;
        };
        if out.entries.last().is_some_and(|l| l.uid >= e.uid) {
            break; // UIDs ascend in a folder
        }
        out.entries.push(e);
    }
    out.complete = out.stamp.is_some() && out.entries.len() == count && r.at == b.len();
    Some(out)
}

/// The record at `*at` (moved past it), flags from `sets`.
pub(super) fn get_record(b: &[u8], at: &mut usize, sets: &[Vec<Flag>]) -> Option<Entry> {
    let mut r = Rd { b, at: *at };
    let e = record(&mut r, sets)?;
    *at = r.at;
    Some(e)
}

/// One record, `None` if it is cut short or does not check.
fn record(r: &mut Rd, sets: &[Vec<Flag>]) -> Option<Entry> {
    let at = r.at;
    let (offset, start, end, size) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let (body_start, wire, date) = (r.u64()?, r.u64()?, r.u64()? as i64);
    let uid = r.u32()?;
    let modseq = r.u64()?;
    let (mime_at, mime_len, mime_wire) = (r.u64()?, r.u32()?, r.u64()?);
    let set = r.u32()? as usize;
    let n = r.u8()? as usize;
    let uidl = r.str(n)?;
    let seal = match r.u8()? {
        0 => None,
        1 => Some(uidl),
        2 => {
            let n = r.u8()? as usize;
            Some(r.str(n)?)
        }
        _ => return None,
    };
    let c = check(&r.b[at..r.at]) as u32;
    if r.u32()? != c {
        return None;
    }
    let sane = offset <= start
        && start <= end
        && start <= body_start
        && body_start <= end
        && uid > 0
        && valid_uidl(uidl)
        && seal.map_or(true, crate::store::mbox::valid_seal_id);
    if !sane {
        return None;
    }
    Some(Entry {
        msg: Message {
            offset,
            start,
            end,
            size,
            uid: uidl.to_string(),
        },
        uid,
        flags: sets.get(set)?.clone(),
        modseq,
        date,
        seal_id: seal.map(String::from),
        body_start,
        size: wire,
        mime: (mime_len > 0).then_some(Ptr {
            at: mime_at,
            len: mime_len,
            wire: mime_wire,
        }),
    })
}

/// The text formats v1 to v4 (one line per message: UIDL, UID, MODSEQ,
/// then `%at:len:wire` (v2), `@geometry` (v4) and the flags).
fn decode_text(text: &str) -> Option<Sidecar> {
    let mut lines = text.lines();
    let head = lines.next()?;
    let w: Vec<&str> = head.split(' ').collect();
    let mut out = Sidecar {
        old_format: true,
        ..Sidecar::default()
    };
    match w[..] {
        ["v1" | "v2", v, n, m] | ["v3", v, n, m, _] | ["v4", v, n, m, _, _] => {
            out.uid_validity = v.parse().unwrap_or(0);
            out.uid_next = n.parse().unwrap_or(1);
            out.modseq = m.parse().unwrap_or(1);
        }
        _ => return None,
    }
    // v3 (no entry count) is read for its UIDs and flags only: whether it
    // was cut short cannot be told.
    let mut count = None;
    if let ["v4", _, _, _, s, c] = w[..] {
        out.stamp = parse_stamp(s);
        count = c.parse::<usize>().ok();
    }
    let mut complete = out.stamp.is_some();
    for line in lines {
        let mut w = line.split(' ');
        let (Some(uidl), Some(uid), Some(ms)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let (Ok(uid), Ok(modseq)) = (uid.parse(), ms.parse()) else {
            continue;
        };
        if !valid_uidl(uidl) {
            continue;
        }
        // `%at:len` (v2) points into the .mime file; `%` is in no flag
        // (RFC 9051 atom-specials).
        let (mut flags, mut mime, mut geo) = (Vec::new(), None, None);
        for f in w.filter(|f| !f.is_empty()) {
            match Ptr::parse(f) {
                Some(p) => mime = Some(p),
                None if f.starts_with('%') => {}
                None if f.starts_with('@') => geo = parse_geometry(f),
                None => flags.push(f.to_string()),
            }
        }
        // A line without its place (v2, or torn) makes the view unusable:
        // the folder is scanned as before.
        let ascending = out.entries.last().map_or(true, |l: &Entry| l.uid < uid);
        complete &= geo.is_some() && ascending;
        let (msg, body_start, size, date, seal_id) = geo.unwrap_or((
            Message {
                offset: 0,
                start: 0,
                end: 0,
                size: 0,
                uid: String::new(),
            },
            0,
            0,
            0,
            None,
        ));
        out.entries.push(Entry {
            msg: Message {
                uid: uidl.to_string(),
                ..msg
            },
            uid,
            flags,
            modseq,
            date,
            seal_id,
            body_start,
            size,
            mime,
        });
    }
    // Written without a flush: after a power cut it may be cut short, and
    // a short view would hide the messages it lost. All of them, or a scan.
    out.complete = complete && Some(out.entries.len()) == count;
    Some(out)
}

fn parse_stamp(t: &str) -> Option<Stamp> {
    let mut w = t.split(',');
    let mut n = || w.next().and_then(|x| x.parse::<u64>().ok());
    let (dev, ino, len) = (n()?, n()?, n()?);
    let mtime_ns = t.split(',').nth(3)?.parse::<i128>().ok()?;
    let mut w = t.split(',').skip(4);
    let mut n = || w.next().and_then(|x| x.parse::<u64>().ok());
    Some(Stamp {
        dev,
        ino,
        len,
        mtime_ns,
        head: n()?,
        tail: n()?,
    })
}

/// `@offset,start,end,size,body_start,wire_size,date[,seal]` (v4).
#[allow(clippy::type_complexity)]
fn parse_geometry(t: &str) -> Option<(Message, u64, u64, i64, Option<String>)> {
    let mut w = t.strip_prefix('@')?.split(',');
    let mut n = || w.next().and_then(|x| x.parse::<u64>().ok());
    let (offset, start, end, size, body_start, wire) = (n()?, n()?, n()?, n()?, n()?, n()?);
    let mut w = t.split(',').skip(6);
    let date = w.next()?.parse::<i64>().ok()?;
    let seal_id = w
        .next()
        .filter(|s| crate::store::mbox::valid_seal_id(s))
        .map(String::from);
    if !(offset <= start && start <= end && body_start >= start && body_start <= end) {
        return None;
    }
    Some((
        Message {
            offset,
            start,
            end,
            size,
            uid: String::new(),
        },
        body_start,
        wire,
        date,
        seal_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: Uid, uidl: &str, flags: &[&str], seal: Option<&str>) -> Entry {
        Entry {
            msg: Message {
                offset: u64::from(uid) * 1000,
                start: u64::from(uid) * 1000 + 40,
                end: u64::from(uid) * 1000 + 900,
                size: 880,
                uid: uidl.into(),
            },
            uid,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            modseq: u64::from(uid) + 7,
            date: 1_700_000_000 + i64::from(uid),
            seal_id: seal.map(String::from),
            body_start: u64::from(uid) * 1000 + 40,
            size: 870,
            mime: (uid % 2 == 0).then_some(Ptr {
                at: u64::from(uid) * 300,
                len: 300,
                wire: 870,
            }),
        }
    }

    fn stamp() -> Stamp {
        Stamp {
            dev: 1,
            ino: 2,
            len: 99_000,
            mtime_ns: -5,
            head: 3,
            tail: 4,
        }
    }

    fn same(a: &Entry, b: &Entry) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn a_sidecar_comes_back_as_written_and_a_torn_one_for_what_it_holds() {
        let list = vec![
            entry(1, "hAAA", &["\\Seen"], None),
            entry(2, "ID2", &[], Some("ID2")),
            entry(5, "ID5", &["\\Seen", "$Junk"], Some("OTHER")),
            entry(9, "hBBB", &["\\Seen"], None),
        ];
        let bytes = encode(77, 10, 12, Some(&stamp()), &list);
        let s = decode(&bytes).unwrap();
        assert_eq!((s.uid_validity, s.uid_next, s.modseq), (77, 10, 12));
        assert_eq!(s.stamp, Some(stamp()));
        assert!(s.complete && !s.old_format);
        assert_eq!(s.entries.len(), 4);
        assert!(list.iter().zip(&s.entries).all(|(a, b)| same(a, b)));
        // Cut short anywhere: never more entries than were whole, never a
        // complete view, and the header's UIDVALIDITY once it is there.
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                None => {}
                Some(s) => {
                    assert_eq!(s.uid_validity, 77);
                    assert!(!s.complete, "cut at {cut}");
                    assert!(list.iter().zip(&s.entries).all(|(a, b)| same(a, b)));
                }
            }
        }
        // A block of zeros in a record: the records before it are kept.
        let mut z = bytes.clone();
        let n = z.len();
        z[n - 60..n - 30].fill(0);
        let s = decode(&z).unwrap();
        assert!(!s.complete && s.entries.len() == 3);
        // Without a stamp it is no view.
        assert!(!decode(&encode(77, 10, 12, None, &list)).unwrap().complete);
        // Garbage is no sidecar.
        assert!(decode(b"\x00\x01garbage").is_none());
        assert!(decode(&[0u8; 4096]).is_none());
    }

    /// Format 5 counted the seal after `Return-Path:` in sizes and MIME
    /// positions: read for UIDVALIDITY, UIDs and flags, never as the view.
    #[test]
    fn format_5_keeps_uids_and_flags_but_is_scanned_again() {
        let list = vec![
            entry(1, "hAAA", &["\\Seen"], None),
            entry(2, "ID2", &[], Some("ID2")),
        ];
        let bytes = encode(77, 10, 12, Some(&stamp()), &list);
        assert!(decode(&bytes).unwrap().complete);
        // The same state as format 5 wrote it.
        let v5 = encode_as(MAGIC_V5, 77, 10, 12, Some(&stamp()), &list);
        let s = decode(&v5).unwrap();
        assert!(!s.complete && s.old_format);
        assert_eq!((s.uid_validity, s.uid_next), (77, 10));
        assert_eq!(s.entries[0].flags, ["\\Seen"]);
        assert_eq!(s.entries[1].uid, 2);
        assert!(s.entries.iter().all(|e| e.mime.is_none()));
    }

    #[test]
    fn the_text_formats_are_still_read() {
        let v4 = "v4 1796139054 3 5 65024,10068184,7134,1796139054002357260,9,8 2\n\
                  6553F1000000 1 2 %0:370:3029 @0,47,3019,3029,47,3029,1700000000 \\Seen\n\
                  ID2 2 3 %370:331:4147 @3020,3067,7133,4147,3067,4147,1700003153,ID2\n";
        let s = decode(v4.as_bytes()).unwrap();
        assert_eq!((s.uid_validity, s.uid_next, s.modseq), (1796139054, 3, 5));
        assert!(s.complete && s.old_format);
        assert_eq!(s.entries[0].flags, ["\\Seen"]);
        assert_eq!(s.entries[1].seal_id.as_deref(), Some("ID2"));
        assert_eq!(s.entries[1].msg.offset, 3020);
        // Cut short (one line lost): UIDs kept, no view.
        let short: String = v4.lines().take(2).map(|l| format!("{l}\n")).collect();
        let s = decode(short.as_bytes()).unwrap();
        assert!(!s.complete && s.entries.len() == 1 && s.uid_validity == 1796139054);
        // v1: UIDs and flags, no view.
        let s = decode(b"v1 42 3 4\nhX 1 2 \\Seen\n").unwrap();
        assert!(!s.complete && s.uid_validity == 42 && s.entries[0].flags == ["\\Seen"]);
    }
}
