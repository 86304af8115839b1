//! A recorded file system for the crash-state explorers (tests only, issue
//! 15): the outbound queue and the POP3 rewrite run on it through
//! [`Fs`]/[`Disk`]. Every write, truncate, flush, link, rename, unlink and
//! directory flush is recorded; at each of those moments a power cut could
//! hit, [`crash_states`] builds the disk states the file system may leave:
//! each directory operation since its directory's last flush kept or
//! dropped (applied in order; a rename whose source did not survive does
//! nothing), and each file's content as `crash.rs` builds it (writes since
//! its last flush kept, dropped or torn at 4 KiB blocks, any order, any
//! length since the flush). A file flush makes its data durable, not its
//! name: only a directory flush does that (POSIX; ext4 without
//! `auto_da_alloc` luck).

use super::crash::{file_states, masks, Op};
use super::disk::{Disk, Fs, Version};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Clone, Debug, Hash)]
enum DirOp {
    Link(String, usize),
    Unlink(String),
    Rename(String, String),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Op>,
    changes: i64,
}

/// A moment a power cut could hit.
#[derive(Clone)]
pub struct Point {
    names: BTreeMap<String, usize>,
    dir_ops: Vec<(String, DirOp)>,
    inodes: Vec<(Vec<u8>, Vec<Op>)>,
    /// What the workload had acknowledged by then ([`SimFs::mark`]).
    pub mark: usize,
}

#[derive(Default)]
struct World {
    inodes: Vec<Inode>,
    names: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
    pending: Vec<(String, DirOp)>,
    points: Vec<Point>,
    recording: bool,
    mark: usize,
    /// The deliberate bugs: file flushes, directory flushes do nothing.
    drop_file_sync: bool,
    drop_dir_sync: bool,
    no_links: bool,
    /// The disk is full: a write that grows a file fails with ENOSPC.
    full: bool,
    syncs: usize,
}

impl World {
    fn snap(&mut self) {
        if self.recording {
            self.points.push(Point {
                names: self.durable.clone(),
                dir_ops: self.pending.clone(),
                inodes: self
                    .inodes
                    .iter()
                    .map(|i| (i.durable.clone(), i.pending.clone()))
                    .collect(),
                mark: self.mark,
            });
        }
    }

    fn dir_op(&mut self, path: &str, op: DirOp) {
        self.pending.push((parent(path), op));
        self.snap();
    }
}

fn key(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn parent(p: &str) -> String {
    key(Path::new(p).parent().unwrap_or(Path::new("")))
}

fn apply(names: &mut BTreeMap<String, usize>, op: &DirOp) {
    match op {
        DirOp::Link(n, i) => {
            names.insert(n.clone(), *i);
        }
        DirOp::Unlink(n) => {
            names.remove(n);
        }
        DirOp::Rename(a, b) => {
            if let Some(i) = names.remove(a) {
                names.insert(b.clone(), i);
            }
        }
    }
}

/// The recorded file system; clones share it.
#[derive(Clone, Default)]
pub struct SimFs {
    w: Arc<Mutex<World>>,
}

fn enoent() -> io::Error {
    io::ErrorKind::NotFound.into()
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.w.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A durable file (there before the workload).
    pub fn put(&self, path: &Path, content: &[u8]) {
        let mut w = self.world();
        w.inodes.push(Inode {
            durable: content.to_vec(),
            current: content.to_vec(),
            ..Inode::default()
        });
        let i = w.inodes.len() - 1;
        w.names.insert(key(path), i);
        w.durable.insert(key(path), i);
    }

    pub fn record(&self, on: bool) {
        self.world().recording = on;
    }

    /// Sets the acknowledged count stored with the following points.
    pub fn mark(&self, n: usize) {
        self.world().mark = n;
    }

    pub fn take_points(&self) -> Vec<Point> {
        std::mem::take(&mut self.world().points)
    }

    /// Flushes (file and directory) so far.
    pub fn syncs(&self) -> usize {
        self.world().syncs
    }

    pub fn break_flushes(&self, files: bool, dirs: bool) {
        let mut w = self.world();
        w.drop_file_sync = files;
        w.drop_dir_sync = dirs;
    }

    /// Hard links fail (as across file systems): the copy path.
    pub fn no_links(&self, on: bool) {
        self.world().no_links = on;
    }

    pub fn full(&self, on: bool) {
        self.world().full = on;
    }

    /// The current content of a file.
    pub fn content(&self, path: &Path) -> Option<Vec<u8>> {
        let w = self.world();
        w.names
            .get(&key(path))
            .map(|&i| w.inodes[i].current.clone())
    }
}

/// Every disk state (bounded, deterministic) a power cut at `p` may leave,
/// each as a fresh file system with everything durable.
pub fn crash_states(p: &Point, seen: &mut HashSet<u64>) -> Vec<SimFs> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    let mut cache: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    let mut hashed: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for mask in masks(p.dir_ops.len()) {
        let mut names = p.names.clone();
        for ((_, op), keep) in p.dir_ops.iter().zip(&mask) {
            if *keep {
                apply(&mut names, op);
            }
        }
        // The inodes still named, and the states each may be in.
        let mut inos: Vec<usize> = names.values().copied().collect();
        inos.sort_unstable();
        inos.dedup();
        for &i in &inos {
            cache.entry(i).or_insert_with(|| {
                let (d, pend) = &p.inodes[i];
                if pend.is_empty() {
                    vec![d.clone()]
                } else {
                    file_states(d, pend)
                }
            });
        }
        let choices: Vec<&Vec<Vec<u8>>> = inos.iter().map(|i| &cache[i]).collect();
        // Each file state hashed once, not once per combination it is in
        // (the explorers check thousands of states: this was most of it).
        let hashes: Vec<Vec<u64>> = inos
            .iter()
            .map(|i| {
                hashed
                    .entry(*i)
                    .or_insert_with(|| {
                        cache[i]
                            .iter()
                            .map(|c| {
                                let mut h = crate::store::disk::Fnv::new();
                                h.feed(c);
                                h.0 ^ (c.len() as u64).rotate_left(32)
                            })
                            .collect()
                    })
                    .clone()
            })
            .collect();
        let product: usize = choices.iter().map(|c| c.len()).product();
        let mut combos: Vec<Vec<usize>> = Vec::new();
        if product <= 256 {
            let mut idx = vec![0usize; choices.len()];
            'all: loop {
                combos.push(idx.clone());
                for k in 0..idx.len() {
                    idx[k] += 1;
                    if idx[k] < choices[k].len() {
                        continue 'all;
                    }
                    idx[k] = 0;
                }
                break;
            }
        } else {
            // Each file through all its states, the others at their first
            // or last.
            for k in 0..choices.len() {
                for s in 0..choices[k].len() {
                    for other_last in [false, true] {
                        combos.push(
                            (0..choices.len())
                                .map(|j| match (j == k, other_last) {
                                    (true, _) => s,
                                    (false, false) => 0,
                                    (false, true) => choices[j].len() - 1,
                                })
                                .collect(),
                        );
                    }
                }
            }
        }
        for c in combos {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.mark.hash(&mut h);
            names.hash(&mut h);
            for (k, &s) in c.iter().enumerate() {
                hashes[k][s].hash(&mut h);
            }
            if !seen.insert(h.finish()) {
                continue;
            }
            let fs = SimFs::new();
            {
                let mut w = fs.world();
                let mut map = BTreeMap::new();
                for (k, &i) in inos.iter().enumerate() {
                    let content = choices[k][c[k]].clone();
                    w.inodes.push(Inode {
                        durable: content.clone(),
                        current: content,
                        ..Inode::default()
                    });
                    map.insert(i, w.inodes.len() - 1);
                }
                for (n, i) in &names {
                    w.names.insert(n.clone(), map[i]);
                    w.durable.insert(n.clone(), map[i]);
                }
            }
            out.push(fs);
        }
    }
    out
}

/// An open recorded file.
pub struct SimFile {
    fs: SimFs,
    ino: usize,
    write: bool,
}

impl SimFile {
    fn op(&self, op: Op) -> io::Result<()> {
        if !self.write {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let mut w = self.fs.world();
        let grows = match &op {
            Op::Write(off, data) => *off as usize + data.len() > w.inodes[self.ino].current.len(),
            Op::SetLen(len) => *len as usize > w.inodes[self.ino].current.len(),
        };
        if w.full && grows {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let f = &mut w.inodes[self.ino];
        match &op {
            Op::Write(off, data) => {
                let end = *off as usize + data.len();
                if f.current.len() < end {
                    f.current.resize(end, 0);
                }
                f.current[*off as usize..end].copy_from_slice(data);
            }
            Op::SetLen(len) => f.current.resize(*len as usize, 0),
        }
        f.pending.push(op);
        f.changes += 1;
        w.snap();
        Ok(())
    }
}

impl Disk for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.fs.world().inodes[self.ino].current.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let w = self.fs.world();
        let c = &w.inodes[self.ino].current;
        let off = (off as usize).min(c.len());
        let n = buf.len().min(c.len() - off);
        buf[..n].copy_from_slice(&c[off..off + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.op(Op::Write(off, buf.to_vec()))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.op(Op::SetLen(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut w = self.fs.world();
        w.syncs += 1;
        if !w.drop_file_sync {
            let f = &mut w.inodes[self.ino];
            f.durable = f.current.clone();
            f.pending.clear();
        }
        w.snap();
        Ok(())
    }
    fn version(&self) -> io::Result<Version> {
        let w = self.fs.world();
        let f = &w.inodes[self.ino];
        Ok(Version {
            dev: 1,
            ino: self.ino as u64,
            len: f.current.len() as u64,
            ctime: (f.changes, 0),
        })
    }
}

impl Fs for SimFs {
    fn create(&self, path: &Path, new: bool) -> io::Result<Box<dyn Disk>> {
        let k = key(path);
        let existing = self.world().names.get(&k).copied();
        if let Some(ino) = existing {
            if new {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            let f = SimFile {
                fs: self.clone(),
                ino,
                write: true,
            };
            f.set_len(0)?;
            return Ok(Box::new(f));
        }
        let ino = {
            let mut w = self.world();
            w.inodes.push(Inode::default());
            let ino = w.inodes.len() - 1;
            w.names.insert(k.clone(), ino);
            w.dir_op(&k, DirOp::Link(k.clone(), ino));
            ino
        };
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
            write: true,
        }))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn Disk>> {
        let ino = *self.world().names.get(&key(path)).ok_or_else(enoent)?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
            write,
        }))
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut w = self.world();
        if w.no_links {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let ino = *w.names.get(&key(from)).ok_or_else(enoent)?;
        if w.names.contains_key(&key(to)) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        w.names.insert(key(to), ino);
        w.dir_op(&key(to), DirOp::Link(key(to), ino));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut w = self.world();
        let ino = w.names.remove(&key(from)).ok_or_else(enoent)?;
        w.names.insert(key(to), ino);
        w.dir_op(&key(to), DirOp::Rename(key(from), key(to)));
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut w = self.world();
        w.names.remove(&key(path)).ok_or_else(enoent)?;
        w.dir_op(&key(path), DirOp::Unlink(key(path)));
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        self.world().names.contains_key(&key(path))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut w = self.world();
        w.syncs += 1;
        if !w.drop_dir_sync {
            let d = key(dir);
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut w.pending)
                .into_iter()
                .partition(|(p, _)| *p == d);
            for (_, op) in &mine {
                let mut durable = std::mem::take(&mut w.durable);
                apply(&mut durable, op);
                w.durable = durable;
            }
            w.pending = rest;
        }
        w.snap();
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = key(dir);
        Ok(self
            .world()
            .names
            .keys()
            .filter(|n| parent(n) == d)
            .filter_map(|n| {
                PathBuf::from(n)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .collect())
    }
    fn age(&self, _: &Path) -> Option<Duration> {
        // After a power cut everything is old.
        Some(Duration::from_secs(86400))
    }
    fn ensure_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
}
