//! The file operations that decide whether mail survives a power cut, behind
//! one small trait: the mbox writer (append, recovery) and the POP3 rewrite
//! go through [`Disk`], so that the crash-state explorer (`crash.rs`, tests
//! only) can run the same code on recorded in-memory files and rebuild every
//! state a power cut may leave.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

/// Identity and change time of a file: if this differs from what we saw
/// after our own last write, someone else changed the file since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    /// ctime (seconds, nanoseconds): no program can set it back.
    pub ctime: (i64, i64),
}

/// One open file: positioned reads and writes, length, flush.
#[allow(clippy::len_without_is_empty)]
pub trait Disk {
    fn len(&self) -> io::Result<u64>;
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// fdatasync: what was written so far survives a power cut.
    fn sync_data(&self) -> io::Result<()>;
    fn version(&self) -> io::Result<Version>;

    fn read_exact_at(&self, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, off)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    off += n as u64;
                }
            }
        }
        Ok(())
    }
}

impl Disk for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, off)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, off)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn version(&self) -> io::Result<Version> {
        let m = self.metadata()?;
        Ok(Version {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Bytes in memory, read-only: a spool file in the explorer.
impl Disk for Vec<u8> {
    fn len(&self) -> io::Result<u64> {
        Ok(self.as_slice().len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let off = (off as usize).min(self.as_slice().len());
        let n = buf.len().min(self.as_slice().len() - off);
        buf[..n].copy_from_slice(&self[off..off + n]);
        Ok(n)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn version(&self) -> io::Result<Version> {
        Ok(Version {
            dev: 0,
            ino: 0,
            len: self.as_slice().len() as u64,
            ctime: (0, 0),
        })
    }
}

/// FNV-1a, 64 bit: the seal's checksum (it must catch blocks a power cut
/// left unwritten, not an adversary: the seal is ours and incoming copies
/// are stripped) and the POP3 index's content hash.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The directory side of durability: creating, renaming and removing
/// files, and flushing a directory's entries. The outbound queue and the
/// POP3 rewrite go through it, so that the crash-state explorer
/// (`simfs.rs`, tests only) can replay them on a recorded file system in
/// which a rename or a new file not followed by a directory flush may or
/// may not survive a power cut.
pub trait Fs: Send + Sync {
    /// Creates a private file (mode 0600), truncating an existing one
    /// unless `new`; never through a symlink (issue 13, hole 10).
    fn create(&self, path: &Path, new: bool) -> io::Result<Box<dyn Disk>>;
    /// Opens an existing file for reading (and writing if `write`), never
    /// through a symlink.
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn Disk>>;
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// fsync of the directory: its new, renamed and removed entries
    /// survive a power cut.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Time since the file was last modified.
    fn age(&self, path: &Path) -> Option<Duration>;
    /// Creates a private directory (mode 0700) if it is missing.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()>;

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let f = self.open(path, false)?;
        let mut buf = vec![0u8; f.len()? as usize];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// The real file system.
pub struct RealFs;

impl Fs for RealFs {
    fn create(&self, path: &Path, new: bool) -> io::Result<Box<dyn Disk>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).mode(0o600);
        o.custom_flags(libc::O_NOFOLLOW);
        if new {
            o.create_new(true);
        } else {
            o.create(true).truncate(true);
        }
        Ok(Box::new(o.open(path)?))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn Disk>> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(Box::new(f))
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::util::paths::sync_dir(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        Ok(std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }
    fn age(&self, path: &Path) -> Option<Duration> {
        let t = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
        std::time::SystemTime::now().duration_since(t).ok()
    }
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        crate::util::paths::private_dir(dir)
    }
}

/// Writes a whole file durably: a temp file, flushed, renamed over
/// `path`, the directory flushed: two flushes.
pub fn write_atomic(fs: &dyn Fs, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let f = fs.create(&tmp, false)?;
    f.write_all_at(data, 0)?;
    f.sync_data()?;
    drop(f);
    fs.rename(&tmp, path)?;
    fs.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Sequential writes to a [`Disk`]: for `BufWriter` and `io::copy`.
pub struct Writer<'a> {
    pub disk: &'a dyn Disk,
    pub at: u64,
}

impl io::Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.disk.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
