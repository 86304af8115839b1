//! The few system calls std lacks: whole-file `fcntl` locks, signal
//! dispositions, whether a process is alive, free disk space, and
//! reading a password from the terminal without echo.
//!
//! We use open-file-description locks (`F_OFD_SETLK`, Linux 3.15+): they
//! conflict with the classic POSIX locks mutt, procmail and Dovecot take, so
//! other mbox programs honour them, but unlike POSIX locks they are not
//! dropped when some other descriptor of the same file is closed elsewhere
//! in the process (the POP3 reader, say). This is the only module allowed
//! `unsafe`; each call is a plain syscall on plain data.
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

/// Makes writes past `RLIMIT_FSIZE` fail with `EFBIG` instead of killing
/// the process with SIGXFSZ (the default action), so that a file-size limit
/// (a quota, `prlimit --fsize`) is handled like a full disk: `452 4.3.1`,
/// the append rolled back, the server still running.
pub fn ignore_sigxfsz() -> io::Result<()> {
    // SAFETY: SIG_IGN installs no handler code; changing a disposition is
    // safe at any time, and nothing else in the process uses SIGXFSZ.
    let old = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if old == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (every held
/// connection is a descriptor; systemd's default soft limit is 1024) and
/// gives the limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            r.rlim_cur = r.rlim_max;
        }
    }
    // rlim_t is 32 bits on 32-bit glibc targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(r.rlim_cur as u64)
}

/// Does a process with this id exist (for stale dot-locks)? A process of
/// another user counts as alive (EPERM).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is
    // delivered.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Free and total bytes of the file system holding `path` (what an
/// unprivileged user may still write: `f_bavail`).
pub fn disk_space(path: &std::path::Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a live statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// Prints `prompt` and reads one line from the terminal on stdin with
/// echo off (the password prompt of `setup` and `passwd`), restoring the
/// terminal afterwards; `Ok(None)` when stdin is not a terminal. Echo goes
/// off before the prompt shows, so nothing typed after it is echoed or
/// lost. The newline the user typed is not echoed either: one is printed.
/// `input` is stdin (or its lock, which the caller may already hold).
pub fn read_password_noecho(
    prompt: &str,
    input: &mut dyn io::BufRead,
) -> io::Result<Option<String>> {
    use std::io::Write;
    let fd = libc::STDIN_FILENO;
    // SAFETY: isatty and tcgetattr only read the descriptor's state into a
    // termios we own; zeroed is a valid termios.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::isatty(fd) } != 1 || unsafe { libc::tcgetattr(fd, &mut old) } != 0 {
        return Ok(None);
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    // SAFETY: a valid descriptor and a termios copied from its own state.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = io::stdout();
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let mut line = String::new();
    let read = input.read_line(&mut line);
    // SAFETY: as above; restores what tcgetattr returned.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    let _ = writeln!(out);
    read?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritten_read_only_mappings_of_the_executable_are_dropped() {
        let smaps = "\
00400000-00500000 r--p 00000000 fe:00 12 /usr/bin/pimail
Rss:                 384 kB
Anonymous:             0 kB
00500000-00700000 r-xp 00100000 fe:00 12 /usr/bin/pimail
Rss:                2304 kB
Anonymous:             0 kB
00700000-00710000 r--p 00300000 fe:00 12 /usr/bin/pimail
Rss:                  64 kB
Anonymous:            64 kB
00710000-00720000 rw-p 00310000 fe:00 12 /usr/bin/pimail
Rss:                  84 kB
Anonymous:            84 kB
7f000000-7f100000 rw-p 00000000 00:00 0
Rss:                 292 kB
Anonymous:           292 kB
";
        let e = smaps_entries(smaps);
        assert_eq!(e.len(), 5);
        assert_eq!(
            e[1],
            ("00500000-00700000", "r-xp", "/usr/bin/pimail", 2304, 0)
        );
        assert_eq!(e[2].4, 64, "relocated read-only data is written: kept");
        assert_eq!(e[4].2, "", "anonymous mapping has no path");
    }

    #[test]
    fn code_runs_on_after_its_pages_are_dropped() {
        let released = release_startup_pages().unwrap();
        assert!(released > 0, "the test binary's own code was resident");
        // Code and read-only data come back from the file on demand.
        let v: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[99], "63");
    }

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

    #[test]
    fn liveness_of_processes() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
        assert!(!process_alive(0));
    }
}

/// A listening TCP socket on an IPv6 address with `IPV6_V6ONLY` set, so
/// that `"0.0.0.0:25"` and `"[::]:25"` can both be listed (SPEC's example
/// config does) instead of the second failing with "address in use" on
/// Linux's dual-stack default. std cannot set the option before bind.
pub fn bind_v6only(addr: std::net::SocketAddrV6) -> io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket syscalls on a descriptor we create and own; on
    // every error path it is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |fd: libc::c_int| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = &one as *const libc::c_int as *const libc::c_void;
        if libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, p, len) != 0
            || libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, len) != 0
        {
            return fail(fd);
        }
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = addr.port().to_be();
        sa.sin6_addr.s6_addr = addr.ip().octets();
        sa.sin6_flowinfo = addr.flowinfo();
        sa.sin6_scope_id = addr.scope_id();
        let sap = &sa as *const libc::sockaddr_in6 as *const libc::sockaddr;
        let salen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        if libc::bind(fd, sap, salen) != 0 || libc::listen(fd, 128) != 0 {
            return fail(fd);
        }
        Ok(std::net::TcpListener::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod bind_tests {
    #[test]
    fn ipv4_and_ipv6_wildcards_on_one_port() {
        let v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = super::bind_v6only(format!("[::]:{port}").parse().unwrap());
        // Hosts without IPv6 cannot create the socket at all; that is fine.
        if let Err(e) = &v6 {
            assert_eq!(e.raw_os_error(), Some(libc::EAFNOSUPPORT), "{e}");
            return;
        }
        let v6 = v6.unwrap();
        assert_eq!(v6.local_addr().unwrap().port(), port);
        std::net::TcpStream::connect(("::1", port)).unwrap();
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    }
}

/// Is this descriptor a terminal (`isatty`)?
pub fn is_terminal(fd: libc::c_int) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// While alive, the terminal on `fd` does not echo what is typed (for a
/// password prompt); dropping it restores the old settings.
pub struct NoEcho {
    fd: libc::c_int,
    old: libc::termios,
}

impl NoEcho {
    /// Turns echo off on the terminal `fd` (ECHO off, ECHONL on, so the
    /// Enter still moves to a new line; line editing stays on: canonical
    /// mode reads one line).
    pub fn new(fd: libc::c_int) -> io::Result<NoEcho> {
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut old: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut old) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut t = old;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL | libc::ICANON;
        // SAFETY: a valid fd and a live termios value.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NoEcho { fd, old })
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new` on the same fd.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.old);
        }
    }
}

/// Rust ignores SIGPIPE at start, so a `print!` to a closed pipe
/// (`pimail dkim generate | head -2`) panics. The command-line tools restore the default disposition so that they end
/// quietly, as every Unix filter does; the server keeps ignoring it (a
/// client that goes away must not kill it, and its sockets report EPIPE).
pub fn default_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_DFL installs no handler code.
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if old == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The owner (uid, gid) of a path, without following a final symlink.
pub fn owner(path: &std::path::Path) -> io::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.uid(), m.gid()))
}

/// `chown` (std's `std::os::unix::fs::chown` needs Rust 1.73; we have it,
/// but keep every ownership change in this one module with the others).
pub fn chown(path: &std::path::Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

/// Our effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid and gid of a user name (`getpwnam_r`), `None` if unknown.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain data; getpwnam_r writes into it and `buf`
    // (whose length we pass), and sets `res` to it on success.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut res,
        )
    };
    if r != 0 || res.is_null() {
        return None;
    }
    Some((pw.pw_uid, pw.pw_gid))
}

/// Makes glibc's malloc serve every block of 256 KiB or more from its own
/// mapping, unmapped again on free. By default glibc raises that
/// threshold after the first large free (up to 32 MiB), and later large
/// blocks then come from the freeing thread's arena, whose free top is
/// never given back: each thread that ever checked a password kept its
/// 12 MiB of argon2 memory for good (RSS 4 MiB grew to 53 MiB after 33
/// failed logins, issue 13). Setting the threshold fixes it and turns the
/// adjustment off (mallopt(3)). At most 8 arenas, not glibc's 8 per
/// core: fewer keep less memory idle, and glibc grows a thread's own
/// arena 4 KiB at a time, one mprotect(2) each (the IMAP sidecar read
/// ahead on a thread, 20,000 messages, made hundreds). One arena for all
/// threads was tried and is too few: the first IMAP scan of a big mbox
/// runs a part on each core, and with one arena (or two, one of them
/// taken by another thread) the parts waited on its lock for as long as
/// the work took (1.1 s for 1.1 GiB on two cores, as on one; 0.73 s
/// with their own arenas). Called first thing in `main`, before any
/// thread exists. musl (the static release build) already maps large
/// allocations one by one and unmaps them on free.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sets one malloc parameter; no other thread is running yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 8);
    }
}

/// The uid of the process at the other end of a connected Unix socket
/// (`SO_PEERCRED`, unix(7)): the kernel's word, not the client's, which is
/// what the local submission socket decides the sender by.
pub fn peer_uid<S: AsRawFd>(sock: &S) -> io::Result<u32> {
    let mut cred: libc::ucred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is plain data of the size we pass; the kernel fills it.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The login name of `uid` (`getpwuid_r`), `None` if it has none.
pub fn login_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: as in `user_ids`: plain data, a buffer of the length passed.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if r != 0 || res.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    name.to_str().ok().map(str::to_string)
}

/// Whether we may create files in `dir` (`access(2)` with W_OK|X_OK, by
/// our real uid). `false` only for "not allowed" (EACCES, EPERM, EROFS);
/// other trouble (missing, not a directory) is `true` so that the caller
/// tries and reports the real error.
pub fn may_write_dir(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: a NUL-terminated path; access only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        return true;
    }
    !matches!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
    )
}

/// Unmaps the pages of pimail's own code and read-only data that start-up
/// touched (config parsing, TLS and key set-up, listener binding), so the
/// idle server's resident set is what it uses while it waits, not what it
/// ran once. On a Pi's kernel a static binary's text is mapped in whole
/// (fault-around and large page-cache folios map far more than the pages
/// run), so without this the idle RSS is the binary's size (SPEC "Budgets":
/// idle ≤ 2 MiB).
///
/// `MADV_DONTNEED` on a private file mapping drops our mapping only: the
/// pages stay in the page cache (reclaimable), and the next instruction
/// that needs one maps it back with a minor fault, no disk read. It would
/// discard data from a page that was written (a copy-on-write copy, e.g.
/// relocated read-only data), so only mappings of our executable that are
/// not writable and hold no anonymous page are dropped (proc(5) smaps).
/// Returns the KiB that were resident in the dropped mappings.
pub fn release_startup_pages() -> io::Result<u64> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (range, perms, path, rss, anon) in smaps_entries(&smaps) {
        if path != exe || perms.as_bytes().get(1) != Some(&b'-') || anon != 0 || rss == 0 {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is one whole mapping of our executable, read-only
        // and without anonymous (written) pages: dropping it loses nothing,
        // the kernel maps the file's pages back on the next access.
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if r == 0 {
            released += rss;
        }
    }
    Ok(released)
}

/// The mappings in a `/proc/<pid>/smaps` text: (address range, permissions,
/// path, Rss KiB, Anonymous KiB).
fn smaps_entries(smaps: &str) -> Vec<(&str, &str, &str, u64, u64)> {
    let mut out: Vec<(&str, &str, &str, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some(field) = first.strip_suffix(':') {
            let kib = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            if let Some(last) = out.last_mut() {
                match field {
                    "Rss" => last.3 = kib,
                    "Anonymous" => last.4 = kib,
                    _ => {}
                }
            }
        } else if first.contains('-') {
            // "start-end perms offset dev inode [path]"
            let perms = words.next().unwrap_or("");
            let path = words.nth(3).unwrap_or("");
            // A mapping starts with a header line; one without Anonymous
            // (an old kernel) counts as written, so it is kept.
            out.push((first, perms, path, 0, u64::MAX));
        }
    }
    out
}
