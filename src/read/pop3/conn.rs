//! The async driver of one POP3 connection: reads lines into the session,
//! writes its replies, checks passwords off the executor thread, takes the
//! maildrop (one session at a time), streams messages from the mbox and
//! runs the QUIT rewrite on the mbox writer thread under the locks.
//!
//! TLS: on pop3s (995, RFC 8314) the handshake comes before the greeting;
//! after STLS (RFC 2595) whatever the client pipelined behind it is dropped
//! before the handshake (CVE-2011-0411 class). Passwords go through
//! [`crate::user::auth::check`], with the same per-address throttle, log line and
//! argon2 slot as SMTP AUTH.
//! Replies are written when the input holds no further complete command,
//! so pipelined commands (RFC 2449 PIPELINING) get theirs in one write.

use super::retr::Encoder;
use super::session::{Action, LoginResult, Session, Settings};
use crate::net::line::LineBuffer;
use crate::net::listen::{self, ConnGuard, Shared};
use crate::net::tls::{self, Stream};
use crate::store::maildrop::{self, Message};
use crate::store::mbox::MboxWriter;
use crate::user::auth::{self, Account, Outcome};
use crate::util::logging;
use crate::util::rt::timeout;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::cell::Cell;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

/// Command lines, with CRLF. RFC 2449 allows 255 octets; AUTH PLAIN
/// responses (RFC 5034) may be longer.
const MAX_COMMAND_LINE: usize = 1024;
/// Read buffer for commands.
const BUFFER: usize = 4 * 1024;
/// Unit in which messages are read from the mbox and sent.
const CHUNK: usize = 128 * 1024;
/// RFC 1939 section 3: the autologout timer is at least 10 minutes.
const AUTOLOGOUT: Duration = Duration::from_secs(600);
/// A failed login waits at least this long before its reply (longer as
/// failures from the address pile up, see `auth::Throttle`), and a session
/// closes after three failures.
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);

/// What the POP3 side needs besides the session settings.
pub struct Pop3Context {
    pub settings: Rc<Settings>,
    pub password_hash: String,
    pub mbox: MboxWriter,
    /// Where the maildrop index and the deletion journal live.
    pub data_dir: PathBuf,
    /// A session holds the maildrop (RFC 1939 section 8: exclusive access).
    pub in_use: Cell<bool>,
    /// The certificate, when `[tls]` is configured.
    pub tls: Option<Rc<tls::Certificate>>,
}

/// Releases the maildrop when the session ends, however it ends.
struct Holding<'a>(&'a Pop3Context);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.in_use.set(false);
    }
}

/// Serves one connection until QUIT, an error, a timeout or shutdown.
/// `implicit_tls`: port 995, TLS before the greeting.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    implicit_tls: bool,
    ctx: Rc<Pop3Context>,
    shared: Rc<Shared>,
    conn: &ConnGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = Stream::Plain(stream);
    if implicit_tls
        && tls::handshake(&mut stream, ctx.tls.as_deref(), "pop3", peer)
            .await
            .is_none()
    {
        return;
    }
    let loopback = listen::is_loopback(peer.ip());
    let mut session = Session::new(ctx.settings.clone(), loopback, implicit_tls);
    if let Err(e) = drive(&mut stream, &mut session, peer, &ctx, &shared, conn).await {
        log::info!("pop3 {peer}: {e}");
    }
    // Closing may need to write (a TLS close_notify): bounded too.
    let _ = timeout(Duration::from_secs(5), stream.close()).await;
}

/// Every write has a deadline: a client that pipelines commands and never
/// reads the replies must not hold its slot, or the maildrop, forever.
/// `command_timeout` (shorter under stress), not the 10-minute autologout:
/// that is for a client thinking, and this one is not reading at all.
async fn send<S>(
    stream: &mut S,
    bytes: &[u8],
    shared: &Shared,
    conn: &ConnGuard,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    conn.write(stream, bytes, shared.limits.command_timeout)
        .await
}

async fn drive<S>(
    stream: &mut Stream<S>,
    session: &mut Session,
    peer: SocketAddr,
    ctx: &Pop3Context,
    shared: &Shared,
    conn: &ConnGuard,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut lines = LineBuffer::new(BUFFER);
    // The autologout timer runs from the end of the last command (RFC
    // 1939 section 3), however the next one trickles in.
    let mut waiting_since: Option<std::time::Instant> = None;
    let mut out = Vec::with_capacity(512);
    let mut holding: Option<Holding> = None;
    let mut file: Option<File> = None;
    let mut buf = Vec::new();
    session.greeting().write_to(&mut out);
    loop {
        while let Some(line) = lines.next_line(MAX_COMMAND_LINE) {
            waiting_since = None;
            conn.progress();
            let mut step = session.line(line);
            loop {
                if let Some(r) = &step.reply {
                    r.write_to(&mut out);
                }
                match step.action {
                    Action::None => break,
                    Action::Close => {
                        // Release the maildrop before the client hears the
                        // last reply, so it can log in again at once.
                        holding.take();
                        send(stream, &out, shared, conn).await?;
                        return Ok(());
                    }
                    Action::StartTls => {
                        send(stream, &out, shared, conn).await?;
                        out.clear();
                        // Sent in the clear behind STLS: never executed
                        // inside the TLS session.
                        lines.clear();
                        match tls::handshake(stream, ctx.tls.as_deref(), "pop3", peer).await {
                            Some(_) => session.tls_started(),
                            None => return Ok(()),
                        }
                        break;
                    }
                    Action::Authenticate { login, password } => {
                        let service = if stream.is_tls() { "pop3/tls" } else { "pop3" };
                        let result = login_attempt(
                            ctx,
                            shared,
                            service,
                            peer,
                            &login,
                            password,
                            &mut holding,
                        )
                        .await;
                        let result = match result {
                            Ok((snapshot, result)) => {
                                file = Some(snapshot);
                                conn.authenticated();
                                result
                            }
                            Err(r) => r,
                        };
                        step = session.login_result(result);
                    }
                    Action::Send { index, top } => {
                        let (Some(m), Some(f)) = (session.message(index).cloned(), file.as_ref())
                        else {
                            // Not reachable (Send comes only after login);
                            // keep the multi-line framing anyway.
                            out.extend_from_slice(b".\r\n");
                            break;
                        };
                        let sent =
                            send_message(stream, f, &m, top, &mut out, &mut buf, shared, conn);
                        if let Err(e) = sent.await {
                            log::error!("pop3 {peer}: cannot send a message: {e}");
                            return Err(e);
                        }
                        break;
                    }
                    Action::Update(x) => {
                        send(stream, &out, shared, conn).await?;
                        out.clear();
                        let _busy = shared.busy();
                        let data_dir = ctx.data_dir.clone();
                        let deleting = x.deleted.iter().filter(|&&d| d).count();
                        let r = ctx
                            .mbox
                            .exclusive(move |l| {
                                // IMAP's flags go into Status: too (issue 16).
                                let status = crate::read::imap::store::inbox_status_lines(
                                    &data_dir,
                                    &x.messages,
                                );
                                Ok(maildrop::expunge_with_status(l, &x, &status, &data_dir))
                            })
                            .await;
                        let r = match r {
                            Ok(Ok(n)) => {
                                log::info!("pop3 {peer}: quit, {n} message(s) deleted");
                                Ok(n)
                            }
                            Ok(Err(e)) => {
                                log::error!("pop3 {peer}: {deleting} message(s) not deleted: {e}");
                                Err(e.to_string())
                            }
                            Err(e) => {
                                log::error!("pop3 {peer}: {deleting} message(s) not deleted: {e}");
                                Err(e.to_string())
                            }
                        };
                        step = session.updated(r);
                    }
                }
            }
        }
        if !out.is_empty() {
            send(stream, &out, shared, conn).await?;
            out.clear();
        }
        if shared.stopping() {
            session.shutting_down().write_to(&mut out);
            send(stream, &out, shared, conn).await?;
            return Ok(());
        }
        let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
        match conn
            .io(conn.deadline(since, AUTOLOGOUT), stream.read(lines.spare()))
            .await
        {
            Err(cut) => {
                log::info!(
                    "pop3 {peer}: autologout, {} after {}s waiting for a command",
                    cut.describe(),
                    since.elapsed().as_secs()
                );
                // The maildrop is free before the client hears why.
                holding.take();
                session.timeout().write_to(&mut out);
                let _ = timeout(Duration::from_secs(2), stream.write_all(&out)).await;
                return Ok(());
            }
            // Gone without QUIT: nothing is deleted (RFC 1939 section 6).
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(n)) => lines.filled(n),
        }
    }
}

/// Checks the credentials and takes the maildrop. On success gives the
/// snapshot's file with the result for the session.
async fn login_attempt<'a>(
    ctx: &'a Pop3Context,
    shared: &Shared,
    service: &str,
    peer: SocketAddr,
    login: &str,
    password: Vec<u8>,
    holding: &mut Option<Holding<'a>>,
) -> Result<(File, LoginResult), LoginResult> {
    let started = std::time::Instant::now();
    let account = Account {
        name: &ctx.settings.user,
        domains: &ctx.settings.domains,
        password_hash: &ctx.password_hash,
    };
    let outcome = auth::check(
        &shared.logins,
        &account,
        service,
        peer.ip(),
        login,
        password,
        FAILED_LOGIN_DELAY,
    )
    .await;
    match outcome {
        Outcome::Success => {}
        Outcome::Failure => return Err(LoginResult::BadCredentials),
        Outcome::Blocked => return Err(LoginResult::Blocked),
    }
    if ctx.in_use.get() {
        log::info!(
            "pop3 {peer}: login refused, maildrop in use user={}",
            logging::quoted(login)
        );
        return Err(LoginResult::InUse);
    }
    ctx.in_use.set(true);
    let held = Holding(ctx);
    let checked = started.elapsed();
    let data_dir = ctx.data_dir.clone();
    let opened = ctx
        .mbox
        .exclusive(move |l| Ok(maildrop::open(l, &data_dir)))
        .await;
    let snapshot = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            log::error!("pop3 {peer}: cannot open maildrop: {e}");
            return Err(LoginResult::Failed(e.to_string()));
        }
        Err(e) => {
            log::error!("pop3 {peer}: cannot open maildrop: {e}");
            return Err(LoginResult::Failed(e.to_string()));
        }
    };
    *holding = Some(held);
    let size: u64 = snapshot.messages.iter().map(|m| m.size).sum();
    log::info!(
        "pop3 {peer}: login ok, {} message(s), {size} octets \
         (password {} ms, maildrop {} ms) user={}",
        snapshot.messages.len(),
        checked.as_millis(),
        (started.elapsed() - checked).as_millis(),
        logging::quoted(login)
    );
    Ok((
        snapshot.file,
        LoginResult::Opened {
            messages: snapshot.messages,
            stamp: snapshot.stamp,
        },
    ))
}

/// Streams message `m` from `file` through the encoder, after whatever is
/// in `out` (the `+OK` line). `buf` is the session's read buffer.
///
/// The reads are plain `pread`s on the executor thread: the mbox is
/// usually in the page cache (it was just written or indexed), only one
/// session at a time holds the maildrop, and handing every chunk to a
/// thread pool cost more than the reads (RETR of many small messages).
#[allow(clippy::too_many_arguments)]
async fn send_message<S>(
    stream: &mut S,
    file: &File,
    m: &Message,
    top: Option<u64>,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    shared: &Shared,
    conn: &ConnGuard,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    buf.resize(CHUNK, 0);
    let mut enc = Encoder::new(top);
    let mut pos = m.start; // file offset of buf[0]
    let mut filled = 0usize;
    while pos + (filled as u64) < m.end && !enc.done() {
        let want = ((m.end - pos) as usize).min(CHUNK) - filled;
        let n = file.read_at(&mut buf[filled..filled + want], pos + filled as u64)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the mbox was truncated by another program",
            ));
        }
        filled += n;
        let mut i = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[i..filled]) {
            enc.piece(&buf[i..i + nl + 1], out);
            i += nl + 1;
        }
        if i == 0 && filled == CHUNK {
            enc.piece(&buf[..filled], out);
            i = filled;
        }
        buf.copy_within(i..filled, 0);
        filled -= i;
        pos += i as u64;
        if out.len() >= CHUNK {
            // A client that stops reading must not hold the session (and
            // the maildrop) forever.
            send(stream, out, shared, conn).await?;
            conn.progress();
            out.clear();
        }
    }
    if filled > 0 {
        enc.piece(&buf[..filled], out);
    }
    enc.finish(out);
    Ok(())
}
