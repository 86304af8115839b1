//! The file operations that decide whether mail survives a power cut, behind
//! one small trait: the mbox writer (append, recovery) and the POP3 rewrite
//! go through [`Disk`], so that the crash-state explorer (`crash.rs`, tests
//! only) can run the same code on recorded in-memory files and rebuild every
//! state a power cut may leave.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

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
