//! The async driver of one IMAP connection: feeds the socket into the
//! session's reader, writes its output, and carries out the actions only
//! it can do: TLS (STARTTLS on `imap`, implicit on `imaps`, RFC 8314),
//! password checks through the shared throttle ([`auth::check`]), APPEND
//! literals into a spool file, durable writes through each folder's
//! [`MboxWriter`] (locks, fsync; `OK [APPENDUID]` only after the fsync),
//! and IDLE (RFC 2177).
//!
//! IDLE hears of new mail from the folder's [`MboxWriter`] at once (an
//! SMTP delivery, an APPEND on another session, POP3's deletions), and by
//! polling the folder (a `stat` of its file) every [`IDLE_POLL`] for what
//! other programs write.

use super::folder::{StoreError, Uid, Write, WriteDone};
use super::session::{Action, LoginResult, Session, Settings};
use super::store::{copy_to_spool, Store, StoreAccount};
use crate::net::listen::{self, ConnGuard, Shared};
use crate::net::tls::{self, Stream};
use crate::store::mbox::{self, Delivery, MboxWriter, Quoter};
use crate::user::auth::{self, Account, Outcome};
use crate::util::logging;
use crate::util::rt::timeout;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// RFC 9051 5.4: the autologout timer is at least 30 minutes.
const AUTOLOGOUT: Duration = Duration::from_secs(30 * 60);
/// How often an idling session looks for changes.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// A failed login waits at least this long before its reply.
const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);
/// Output is written in pieces of about this size.
const WRITE_AT: usize = 64 * 1024;

/// What the IMAP side shares between connections.
pub struct ImapContext {
    pub settings: Rc<Settings>,
    pub password_hash: String,
    pub store: Rc<Store>,
    /// Folder name -> its writer (INBOX and Junk are the SMTP side's).
    pub writers: RefCell<HashMap<String, MboxWriter>>,
    pub data_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub tls: Option<Rc<tls::Certificate>>,
}

impl ImapContext {
    /// The writer of a folder, started at first use.
    fn writer(&self, name: &str) -> Result<MboxWriter, StoreError> {
        let key = if name.eq_ignore_ascii_case("INBOX") {
            "INBOX".to_string()
        } else {
            name.to_string()
        };
        if let Some(w) = self.writers.borrow().get(&key) {
            return Ok(w.clone());
        }
        let path = self.store.path_of(&key)?;
        if !path.is_file() {
            return Err(StoreError::NonExistent);
        }
        let state = if key == "Junk" {
            self.data_dir.join("junk")
        } else {
            self.data_dir
                .join("imap")
                .join(format!("{}.d", key.replace('/', "%")))
        };
        crate::util::paths::private_dir(&state).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", state.display()))
        })?;
        let w = MboxWriter::start_with(&path, &state, Some(super::store::index_appended))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.writers.borrow_mut().insert(key, w.clone());
        Ok(w)
    }

    /// The writer of a folder if one runs (none is started for IDLE).
    fn running_writer(&self, name: &str) -> Option<MboxWriter> {
        let key = if name.eq_ignore_ascii_case("INBOX") {
            "INBOX"
        } else {
            name
        };
        self.writers.borrow().get(key).cloned()
    }

    /// Where a folder's rewrite journal lives (INBOX: POP3's, in data_dir).
    fn rewrite_dir(&self, name: &str) -> PathBuf {
        if name.eq_ignore_ascii_case("INBOX") {
            self.data_dir.clone()
        } else if name == "Junk" {
            self.data_dir.join("junk")
        } else {
            self.data_dir
                .join("imap")
                .join(format!("{}.d", name.replace('/', "%")))
        }
    }
}

/// The APPEND octets on their way to the mbox: CRLF made LF, mboxrd
/// quoting, any `X-Pimail:` field dropped (only pimail writes seals).
struct Spool {
    path: PathBuf,
    file: File,
    quoter: Quoter,
    cr: bool,
    last: u8,
    buf: Vec<u8>,
}

impl Spool {
    fn create(dir: &Path) -> std::io::Result<Spool> {
        let path = dir.join(format!("imap-append-{}", crate::util::rt::new_id()));
        let file = File::create(&path)?;
        Ok(Spool {
            path,
            file,
            quoter: Quoter::for_received_mail(),
            cr: false,
            last: b'\n',
            buf: Vec::new(),
        })
    }

    fn feed(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut lf = Vec::with_capacity(data.len() + 1);
        for &b in data {
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    lf.push(b'\r');
                }
            }
            if b == b'\r' {
                self.cr = true;
            } else {
                lf.push(b);
            }
        }
        if let Some(&l) = lf.last() {
            self.last = l;
        }
        self.buf.clear();
        self.quoter.feed(&lf, &mut self.buf);
        self.file.write_all(&self.buf)
    }

    fn finish(mut self) -> std::io::Result<PathBuf> {
        let mut tail = Vec::new();
        if self.cr {
            tail.push(b'\r');
            self.last = b'\r';
        }
        if self.last != b'\n' {
            tail.push(b'\n');
        }
        self.buf.clear();
        self.quoter.feed(&tail, &mut self.buf);
        self.quoter.finish(&mut self.buf);
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        Ok(self.path)
    }
}

/// Serves one connection until LOGOUT, an error, a timeout or shutdown.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    implicit_tls: bool,
    ctx: Rc<ImapContext>,
    shared: Rc<Shared>,
    conn: &ConnGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = Stream::Plain(stream);
    if implicit_tls
        && tls::handshake(&mut stream, ctx.tls.as_deref(), "imap", peer)
            .await
            .is_none()
    {
        return;
    }
    let loopback = listen::is_loopback(peer.ip());
    let mut session: Session<StoreAccount> =
        Session::new(ctx.settings.clone(), loopback, implicit_tls);
    if let Err(e) = drive(&mut stream, &mut session, peer, &ctx, &shared, conn).await {
        log::info!("imap {peer}: {e}");
    }
    let _ = timeout(Duration::from_secs(5), stream.close()).await;
}

async fn send<S>(
    stream: &mut S,
    out: &mut Vec<u8>,
    ctx: &ImapContext,
    shared: &Shared,
    conn: &ConnGuard,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    if out.is_empty() {
        return Ok(());
    }
    // What the response tells (UIDs, flags) is in the sidecars first.
    ctx.store.flush();
    let r = conn.write(stream, out, shared.limits.command_timeout).await;
    out.clear();
    ctx.store.flush_late();
    r
}

/// Reads more input into the session's reader; `Ok(false)` at EOF.
async fn read_more<S>(
    stream: &mut Stream<S>,
    session: &mut Session<StoreAccount>,
    conn: &ConnGuard,
    since: Instant,
    peer: SocketAddr,
) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match conn
        .io(
            conn.deadline(since, AUTOLOGOUT),
            stream.read(session.reader().spare()),
        )
        .await
    {
        Err(cut) => {
            log::info!("imap {peer}: autologout, {}", cut.describe());
            Ok(false)
        }
        Ok(Ok(0)) => Ok(false),
        Ok(Ok(n)) => {
            session.reader().filled(n);
            conn.progress();
            Ok(true)
        }
        Ok(Err(e)) => Err(e),
    }
}

async fn drive<S>(
    stream: &mut Stream<S>,
    session: &mut Session<StoreAccount>,
    peer: SocketAddr,
    ctx: &ImapContext,
    shared: &Shared,
    conn: &ConnGuard,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut acct = StoreAccount(ctx.store.clone());
    let mut out = Vec::with_capacity(4096);
    let mut spool: Option<Spool> = None;
    let mut spooled: Option<PathBuf> = None;
    session.greeting(&mut out);
    let mut since = Instant::now();
    for _ in 0..u64::MAX {
        let action = session.step(&mut acct, &mut out);
        match action {
            Action::NeedInput => {
                send(stream, &mut out, ctx, shared, conn).await?;
                if shared.stopping() {
                    session.shutting_down(&mut out);
                    send(stream, &mut out, ctx, shared, conn).await?;
                    return Ok(());
                }
                if !read_more(stream, session, conn, since, peer).await? {
                    if since.elapsed() >= AUTOLOGOUT {
                        session.timeout(&mut out);
                        let _ = send(stream, &mut out, ctx, shared, conn).await;
                    }
                    return Ok(());
                }
                since = Instant::now();
            }
            Action::Flush => {
                send(stream, &mut out, ctx, shared, conn).await?;
            }
            Action::Close => {
                send(stream, &mut out, ctx, shared, conn).await?;
                return Ok(());
            }
            Action::StartTls => {
                send(stream, &mut out, ctx, shared, conn).await?;
                match tls::handshake(stream, ctx.tls.as_deref(), "imap", peer).await {
                    Some(_) => session.tls_started(),
                    None => return Ok(()),
                }
            }
            Action::Login { login, password } => {
                send(stream, &mut out, ctx, shared, conn).await?;
                let account = Account {
                    name: &ctx.settings.user,
                    domains: &ctx.settings.domains,
                    password_hash: &ctx.password_hash,
                };
                let service = if stream.is_tls() { "imap/tls" } else { "imap" };
                let outcome = auth::check(
                    &shared.logins,
                    &account,
                    service,
                    peer.ip(),
                    &login,
                    password,
                    FAILED_LOGIN_DELAY,
                )
                .await;
                let r = match outcome {
                    Outcome::Success => {
                        conn.authenticated();
                        log::info!("imap {peer}: login ok user={}", logging::quoted(&login));
                        LoginResult::Ok
                    }
                    Outcome::Failure => LoginResult::BadCredentials,
                    Outcome::Blocked => LoginResult::Blocked,
                };
                if let Some(Action::Close) = session.login_done(r, &mut out) {
                    send(stream, &mut out, ctx, shared, conn).await?;
                    return Ok(());
                }
            }
            Action::AppendData { .. } => {
                if spool.is_none() {
                    match Spool::create(&ctx.spool_dir) {
                        Ok(s) => spool = Some(s),
                        Err(e) => {
                            log::error!("imap {peer}: cannot create an APPEND spool: {e}");
                            return Err(e);
                        }
                    }
                }
                // The continuation request goes out before we wait.
                send(stream, &mut out, ctx, shared, conn).await?;
                loop {
                    let n = {
                        let data = session.reader().append_data();
                        if let Some(s) = spool.as_mut() {
                            s.feed(data)?;
                        }
                        data.len()
                    };
                    session.reader().append_taken(n);
                    if session.reader().append_left() == 0 {
                        break;
                    }
                    if !read_more(stream, session, conn, since, peer).await? {
                        if let Some(s) = spool.take() {
                            let _ = std::fs::remove_file(&s.path);
                        }
                        return Ok(());
                    }
                }
                if let Some(s) = spool.take() {
                    let p = s.path.clone();
                    match s.finish() {
                        Ok(p) => spooled = Some(p),
                        Err(e) => {
                            let _ = std::fs::remove_file(&p);
                            return Err(e);
                        }
                    }
                }
            }
            Action::AppendAbort => {
                if let Some(s) = spool.take() {
                    let _ = std::fs::remove_file(&s.path);
                }
                if let Some(p) = spooled.take() {
                    let _ = std::fs::remove_file(p);
                }
            }
            Action::Write(w) => {
                send(stream, &mut out, ctx, shared, conn).await?;
                let _busy = shared.busy();
                let done = perform(ctx, &w, spooled.take()).await;
                if let WriteDone::Failed(e) = &done {
                    log::warn!("imap {peer}: {w:?} failed: {e:?}");
                }
                session.write_done(done, &mut out);
            }
            Action::Body(mut b) => {
                // Streamed in pieces: a message is never held whole.
                loop {
                    let done = b.fill(&mut out).map_err(|e| {
                        std::io::Error::other(format!("cannot finish a FETCH literal: {e:?}"))
                    })?;
                    if out.len() >= WRITE_AT {
                        send(stream, &mut out, ctx, shared, conn).await?;
                    }
                    if done {
                        break;
                    }
                }
            }
            Action::Idle => {
                // pimail's own writer of the folder (SMTP delivery, APPEND,
                // POP3's deletions) wakes the session at once; the poll
                // finds what other programs write.
                let writer = session
                    .selected_folder()
                    .and_then(|n| ctx.running_writer(n));
                let mut changed = writer.as_ref().map(MboxWriter::listen);
                session.idle_changes(&mut out);
                send(stream, &mut out, ctx, shared, conn).await?;
                // Input ends IDLE (DONE); meanwhile look for changes.
                loop {
                    if shared.stopping() {
                        session.shutting_down(&mut out);
                        send(stream, &mut out, ctx, shared, conn).await?;
                        return Ok(());
                    }
                    let read = async { Some(read_more(stream, session, conn, since, peer).await) };
                    let tick = async {
                        match changed.take() {
                            Some(l) => {
                                let poll = async {
                                    smol::Timer::after(IDLE_POLL).await;
                                };
                                smol::future::or(l, poll).await
                            }
                            None => {
                                smol::Timer::after(IDLE_POLL).await;
                            }
                        }
                        None
                    };
                    let woke = smol::future::or(read, tick).await;
                    // Listening again before looking: a change while this
                    // session writes its output is not missed.
                    changed = writer.as_ref().map(MboxWriter::listen);
                    match woke {
                        Some(Ok(true)) => {
                            since = Instant::now();
                            break;
                        }
                        Some(Ok(false)) => return Ok(()),
                        Some(Err(e)) => return Err(e),
                        None => {
                            session.idle_changes(&mut out);
                            send(stream, &mut out, ctx, shared, conn).await?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn fail(e: StoreError) -> WriteDone {
    WriteDone::Failed(e)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Appends a spooled message (mbox form) to a folder; its new UID.
async fn append_spool(
    ctx: &ImapContext,
    folder: &str,
    prefix: Vec<u8>,
    spool: PathBuf,
) -> Result<(u32, u32), StoreError> {
    let writer = ctx.writer(folder)?;
    let id = crate::util::rt::new_id();
    let r = writer
        .append(Delivery {
            id: id.clone(),
            prefix,
            body: crate::store::mbox::Body::Spool(spool.clone()),
        })
        .await;
    let _ = std::fs::remove_file(&spool);
    r.map_err(unavailable)?;
    let st = ctx.store.folder(folder)?;
    let st = st.borrow();
    let uid = st
        .by_seal(&id)
        .ok_or_else(|| StoreError::Unavailable("the appended message was not found".into()))?;
    Ok((st.uid_validity, uid))
}

/// Copies message `u` of a folder to `spool` (COPY/MOVE): its entry and
/// `From ` line, or None once it is gone. A rewrite of the folder
/// (EXPUNGE, MOVE, POP3's QUIT, a redo journal finished at start) moves
/// messages in place, so the copy is read under the folder's writer lock,
/// and kept only if the offsets it was read at are still the message's
/// once the state is brought up to date; else it is read again (bounded).
/// Reading without the lock copied spliced bytes into the target folder
/// (bench/faults/imap_kill9.py, issue 16).
async fn copy_locked(
    src: &Rc<RefCell<super::store::FolderState>>,
    writer: &MboxWriter,
    u: u32,
    spool: &Path,
) -> Result<Option<(super::store::Entry, Vec<u8>)>, StoreError> {
    for _ in 0..5 {
        let (path, entry) = {
            let s = src.borrow();
            match s.entry(u) {
                Some(e) => (s.path.clone(), e.clone()),
                None => return Ok(None),
            }
        };
        let (m, to) = (entry.msg.clone(), spool.to_path_buf());
        let prefix = writer
            .exclusive(move |_| Ok(copy_to_spool(&path, &m, &to)))
            .await
            .map_err(unavailable)??;
        src.borrow_mut().refresh()?;
        let still = src
            .borrow()
            .entry(u)
            .is_some_and(|e| e.msg.offset == entry.msg.offset && e.msg.end == entry.msg.end);
        if still {
            return Ok(Some((entry, prefix)));
        }
    }
    Err(StoreError::Unavailable(
        "the folder kept changing while a message was copied".into(),
    ))
}

/// Carries out a durable change.
async fn perform(ctx: &ImapContext, w: &Write, spooled: Option<PathBuf>) -> WriteDone {
    match w {
        Write::Append {
            folder,
            flags,
            date,
        } => {
            let Some(spool) = spooled else {
                return fail(StoreError::Unavailable("no message data".into()));
            };
            let when = date
                .map(|d| d.unix.max(0) as u64)
                .unwrap_or_else(crate::util::timefmt::unix_now);
            let prefix = mbox::from_line("MAILER-DAEMON", when).into_bytes();
            match append_spool(ctx, folder, prefix, spool).await {
                Ok((uid_validity, uid)) => {
                    if !flags.is_empty() {
                        if let Ok(st) = ctx.store.folder(folder) {
                            st.borrow_mut().set_flags(uid, flags, 0);
                        }
                    }
                    WriteDone::Appended { uid_validity, uid }
                }
                Err(e) => fail(e),
            }
        }
        Write::Copy {
            from,
            uids,
            to,
            is_move,
        } => {
            let src = match ctx.store.folder(from) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            if let Err(e) = ctx.store.folder(to) {
                return fail(e);
            }
            let src_writer = match ctx.writer(from) {
                Ok(w) => w,
                Err(e) => return fail(e),
            };
            let mut pairs = (Vec::new(), Vec::new());
            let mut validity = 0;
            for &u in uids {
                let spool = ctx
                    .spool_dir
                    .join(format!("imap-copy-{}", crate::util::rt::new_id()));
                let (entry, prefix) = match copy_locked(&src, &src_writer, u, &spool).await {
                    Ok(Some(x)) => x,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = std::fs::remove_file(&spool);
                        return fail(e);
                    }
                };
                match append_spool(ctx, to, prefix, spool).await {
                    Ok((v, nu)) => {
                        validity = v;
                        let mut flags = entry.flags.clone();
                        // Moving into or out of Junk says what the user
                        // thinks of it (SPEC, issue 16).
                        // Out of Junk into Trash is deleting spam, not
                        // saying it is good (Dovecot's antispam plugin
                        // reads it the same way). A copy out of Junk
                        // counts too: clients without MOVE copy, then
                        // delete.
                        let rescued = from == "Junk" && to != "Junk" && to != "Trash";
                        if *is_move && to == "Junk" {
                            flags.retain(|f| f != "$NotJunk");
                            flags.push("$Junk".into());
                        } else if *is_move && rescued {
                            flags.retain(|f| f != "$Junk");
                            flags.push("$NotJunk".into());
                        }
                        if rescued {
                            // The header rules leave its sender alone
                            // from now on (SPEC "Keeping spam out").
                            let path = src.borrow().path.clone();
                            super::store::record_not_junk(
                                &ctx.data_dir,
                                &path,
                                &entry,
                                if *is_move { "imap-move" } else { "imap-copy" },
                            );
                        }
                        if let Ok(st) = ctx.store.folder(to) {
                            st.borrow_mut().set_flags(nu, &flags, 0);
                        }
                        pairs.0.push(u);
                        pairs.1.push(nu);
                    }
                    Err(e) => return fail(e),
                }
            }
            if *is_move && !pairs.0.is_empty() {
                if let WriteDone::Failed(e) = expunge(ctx, from, &pairs.0).await {
                    return fail(e);
                }
            }
            WriteDone::Copied {
                uid_validity: validity,
                from: pairs.0,
                to: pairs.1,
            }
        }
        Write::Expunge { folder, uids } => expunge(ctx, folder, uids).await,
        Write::Create(name) => {
            let dir = name.ends_with('/');
            let name = name.trim_end_matches('/');
            let path = match ctx.store.path_of(name) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            if name.eq_ignore_ascii_case("INBOX") || path.exists() {
                return fail(StoreError::AlreadyExists);
            }
            if let Some(parent) = path.parent() {
                if parent.is_file() {
                    return fail(StoreError::Cannot(
                        "its parent holds mail, not folders".into(),
                    ));
                }
                if let Err(e) = std::fs::create_dir_all(parent) {
                    return fail(unavailable(e));
                }
            }
            let r = if dir {
                std::fs::create_dir(&path)
            } else {
                std::fs::OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map(|_| ())
            };
            match r {
                Ok(()) => WriteDone::Done,
                Err(e) => fail(unavailable(e)),
            }
        }
        Write::Delete(name) => {
            if name.eq_ignore_ascii_case("INBOX") {
                return fail(StoreError::Cannot("INBOX cannot be deleted".into()));
            }
            let path = match ctx.store.path_of(name) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let r = if path.is_dir() {
                std::fs::remove_dir(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match r {
                Ok(()) => {
                    ctx.store.forget(name);
                    ctx.writers.borrow_mut().remove(name.as_str());
                    let _ = std::fs::remove_file(ctx.store.index_path(name));
                    let _ = std::fs::remove_file(ctx.store.index_path(name).with_extension("mime"));
                    WriteDone::Done
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(StoreError::NonExistent),
                Err(e) => fail(StoreError::Cannot(e.to_string())),
            }
        }
        Write::Rename(from, to) => {
            if from.eq_ignore_ascii_case("INBOX") {
                // RFC 9051 6.3.6: renaming INBOX moves all its messages
                // into a new folder of that name; INBOX stays, empty.
                // The MOVE path gives the same crash safety (copies
                // fsynced before the INBOX is rewritten).
                let create = Write::Create(to.clone());
                if let WriteDone::Failed(e) = Box::pin(perform(ctx, &create, None)).await {
                    return fail(e);
                }
                let uids: Vec<Uid> = match ctx.store.folder("INBOX") {
                    Ok(st) => st.borrow().entries.iter().map(|e| e.uid).collect(),
                    Err(e) => return fail(e),
                };
                let mv = Write::Copy {
                    from: "INBOX".into(),
                    uids,
                    to: to.clone(),
                    is_move: true,
                };
                return match Box::pin(perform(ctx, &mv, None)).await {
                    WriteDone::Failed(e) => fail(e),
                    _ => WriteDone::Done,
                };
            }
            let (Ok(a), Ok(b)) = (ctx.store.path_of(from), ctx.store.path_of(to)) else {
                return fail(StoreError::Cannot("invalid folder name".into()));
            };
            if b.exists() {
                return fail(StoreError::AlreadyExists);
            }
            if !a.exists() {
                return fail(StoreError::NonExistent);
            }
            if let Some(parent) = b.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            match std::fs::rename(&a, &b) {
                Ok(()) => {
                    ctx.store.forget(from);
                    ctx.store.forget(to);
                    ctx.writers.borrow_mut().remove(from.as_str());
                    let _ = std::fs::rename(ctx.store.index_path(from), ctx.store.index_path(to));
                    let mime = |n: &str| ctx.store.index_path(n).with_extension("mime");
                    let _ = std::fs::rename(mime(from), mime(to));
                    WriteDone::Done
                }
                Err(e) => fail(StoreError::Cannot(e.to_string())),
            }
        }
    }
}

/// Removes messages from a folder: the crash-safe rewrite of POP3's
/// UPDATE state (redo journal, fsync before and after) under the locks.
async fn expunge(ctx: &ImapContext, folder: &str, uids: &[u32]) -> WriteDone {
    if uids.is_empty() {
        return WriteDone::Expunged(Vec::new());
    }
    let writer = match ctx.writer(folder) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let state = match ctx.store.folder(folder) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (plan, status) = match state.borrow().expunge_plan(uids) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let present: Vec<u32> = {
        let s = state.borrow();
        uids.iter()
            .copied()
            .filter(|u| s.entry(*u).is_some())
            .collect()
    };
    let dir = ctx.rewrite_dir(folder);
    state.borrow().rewritten();
    let r = writer
        .exclusive(move |l| {
            Ok(crate::store::maildrop::expunge_with_status(
                l, &plan, &status, &dir,
            ))
        })
        .await;
    match r {
        Ok(Ok(_)) => {
            if let Err(e) = state.borrow_mut().refresh() {
                log::warn!("imap: after EXPUNGE: {e:?}");
            }
            WriteDone::Expunged(present)
        }
        Ok(Err(e)) => fail(unavailable(e)),
        Err(e) => fail(unavailable(e)),
    }
}
