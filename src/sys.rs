//! The few system calls std lacks: whole-file `fcntl` locks.
//!
//! We use open-file-description locks (`F_OFD_SETLK`, Linux 3.15+): they
//! conflict with the classic POSIX locks mutt, procmail and Dovecot take, so
//! other mbox programs honour them, but unlike POSIX locks they are not
//! dropped when some other descriptor of the same file is closed elsewhere
//! in the process (the POP3 reader, say). This is the only module allowed
//! `unsafe`; each call is a plain syscall on a descriptor we own.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

fn lock_op<F: AsRawFd>(file: &F, kind: libc::c_short) -> io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid value (whole file from 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl.l_pid = 0;
    // SAFETY: a valid fd and a pointer to a live flock struct.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Tries to take a write lock on the whole file; `Ok(false)` if another
/// process (or descriptor) holds a conflicting lock.
pub fn try_write_lock<F: AsRawFd>(file: &F) -> io::Result<bool> {
    lock_op(file, libc::F_WRLCK as libc::c_short)
}

/// Tries to take a read lock on the whole file.
pub fn try_read_lock<F: AsRawFd>(file: &F) -> io::Result<bool> {
    lock_op(file, libc::F_RDLCK as libc::c_short)
}

/// Releases our lock (closing the file does too).
pub fn unlock<F: AsRawFd>(file: &F) -> io::Result<()> {
    lock_op(file, libc::F_UNLCK as libc::c_short).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_conflict_between_descriptors() {
        let dir = std::env::temp_dir().join(format!("pimail-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let a = std::fs::File::create(&p).unwrap();
        let b = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        assert!(try_write_lock(&a).unwrap());
        assert!(!try_write_lock(&b).unwrap());
        assert!(!try_read_lock(&b).unwrap());
        // Closing an unrelated descriptor of the same file keeps the lock.
        drop(std::fs::File::open(&p).unwrap());
        assert!(!try_write_lock(&b).unwrap());
        unlock(&a).unwrap();
        assert!(try_write_lock(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
