//! The async driver of one SMTP connection: reads lines into the session,
//! writes its replies, streams DATA through the decoder and the mbox quoter
//! into a spool file, and stores the message before the final reply.
//!
//! Replies are written when the input holds no further complete command,
//! so pipelined commands (RFC 2920) get their replies in one write.
//!
//! TLS: on an implicit-TLS port (465) the handshake comes before the
//! greeting; after STARTTLS (RFC 3207) everything the client pipelined
//! behind the command is dropped before the handshake (CVE-2011-0411), so
//! nothing sent in the clear is executed as if it came over TLS. AUTH
//! checks run through [`crate::user::auth::check`] (argon2 off this thread, the
//! per-address throttle, the fail2ban log line).

use super::data::{DataDecoder, Progress};
use super::session::{Action, DataOutcome, Port, Session, Settings, StoreError};
use super::Reply;
use crate::mail::envelope::Envelope;
use crate::net::line::LineBuffer;
use crate::net::listen::{ConnGuard, Shared};
use crate::net::tls::{self, Stream};
use crate::store::mbox::{self, Delivery, MboxError, MboxWriter, Quoter};
use crate::trust::counts::Counts;
use crate::trust::dnsbl;
use crate::trust::greylist::{Greylist, Verdict};
use crate::trust::known::{self, LineSet};
use crate::trust::rules::{self, HeaderScan};
use crate::user::auth::{self, Account};
use crate::util::logging;
use crate::util::rt::timeout;
use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

/// The most the SPF/DKIM/DMARC lookups of one message may take.
const AUTH_CHECKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Read buffer: also the unit in which DATA is streamed to disk. Holds the
/// longest line the session accepts (`MAX_AUTH_LINE`).
const BUFFER: usize = 16 * 1024;

/// What the SMTP side needs besides the session settings.
pub struct SmtpContext {
    pub settings: Rc<Settings>,
    pub mbox: MboxWriter,
    pub spool_dir: PathBuf,
    /// The outbound queue; `None` only in tests of the receiving side.
    pub outbox: Option<crate::send::delivery::Outbox>,
    /// The certificate, when `[tls]` is configured.
    pub tls: Option<Rc<tls::Certificate>>,
    /// The user's argon2 hash, for AUTH on submission.
    pub password_hash: String,
    /// SPF/DKIM/DMARC checks on port 25 (`[inbound] auth_checks`).
    pub auth: Option<AuthChecks>,
    /// Pregreet, DNSBL, greylisting, header rules and the Junk folder
    /// (docs/spam.md); `None` only in tests of the receiving side.
    pub spam: Option<SpamChecks>,
}

/// What keeping spam out on port 25 needs (see `trust::{dnsbl,
/// greylist, rules, known, counts}`).
pub struct SpamChecks {
    pub resolver: crate::net::dns::Resolver,
    /// `ZERO`: no pregreet test.
    pub pregreet: Duration,
    pub dnsbl: dnsbl::Checker,
    /// `None`: greylisting off.
    pub greylist: Option<Greylist>,
    pub greylist_delay: Duration,
    pub trusted: Vec<crate::config::Cidr>,
    pub rules: Vec<crate::config::HeaderRule>,
    pub correspondents: LineSet,
    pub not_junk: LineSet,
    pub counts: Counts,
    /// Appends to `<folders>/Junk`.
    pub junk: MboxWriter,
    pub data_dir: PathBuf,
}

impl SpamChecks {
    /// Opens the state files and the Junk folder's writer.
    /// `after`: the Junk writer's hook, as the INBOX's (IMAP's indexer).
    pub fn start(
        config: &crate::config::Config,
        after: Option<crate::store::mbox::AfterAppend>,
    ) -> Result<SpamChecks, String> {
        let i = &config.inbound;
        // The greylist is safe to lose (worst case one more delay), so a
        // file that cannot be made (a full disk) turns greylisting off
        // rather than stopping the server from taking mail.
        let greylist = if i.greylist {
            match Greylist::open(&config.data_dir) {
                Ok(g) => Some(g),
                Err(e) => {
                    log::warn!(
                        "greylisting is off until restart: cannot open {}: {e}",
                        config.data_dir.join("greylist").display()
                    );
                    None
                }
            }
        } else {
            None
        };
        // The Junk folder has its own journal, apart from the INBOX's;
        // folders are as private as the INBOX.
        let junk_state = config.data_dir.join("junk");
        for d in [&junk_state, &config.user.folders] {
            crate::util::paths::private_dir(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let junk = MboxWriter::start_with(&junk_path(config), &junk_state, after)
            .map_err(|e| format!("cannot open the Junk folder: {e}"))?;
        Ok(SpamChecks {
            resolver: crate::net::dns::Resolver::new(&config.outbound.dns),
            pregreet: i.pregreet,
            dnsbl: dnsbl::Checker::new(i.dnsbl.clone(), dnsbl::DEFAULT_TIMEOUT),
            greylist,
            greylist_delay: i.greylist_delay,
            trusted: i.trusted.clone(),
            rules: i.rules.clone(),
            correspondents: LineSet::open(&config.data_dir, known::CORRESPONDENTS),
            not_junk: LineSet::open(&config.data_dir, known::NOT_JUNK),
            counts: Counts::open(&config.data_dir),
            junk,
            data_dir: config.data_dir.clone(),
        })
    }

    /// In `[inbound] trusted`: no pregreet, DNSBL or greylisting.
    pub fn trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// `<folders>/Junk`.
pub fn junk_path(config: &crate::config::Config) -> PathBuf {
    config.user.folders.join("Junk")
}

/// What the connection-time checks found.
#[derive(Default)]
struct Early {
    /// Forward-confirmed reverse DNS name of the client.
    fcrdns: Option<String>,
    /// SPF of the last MAIL FROM, for the greylist decision.
    spf: Option<(String, crate::trust::spf::SpfResult)>,
    /// The DNSBL refusal was counted (once per connection).
    counted: bool,
}

/// The most the SPF check for a greylist decision may take.
const GREYLIST_SPF_TIMEOUT: Duration = Duration::from_secs(20);

/// What the port 25 authentication checks need (see `authres`).
pub struct AuthChecks {
    pub resolver: crate::net::dns::Resolver,
    /// `[inbound] dmarc_reject`: refuse DMARC failures of p=reject domains.
    pub dmarc_reject: bool,
}

enum End {
    /// The client or we closed normally, or the peer vanished.
    Closed,
}

/// Serves one connection until QUIT, an error, a timeout or shutdown.
/// With `implicit_tls` (port 465), TLS starts before the greeting.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    port: Port,
    implicit_tls: bool,
    ctx: Rc<SmtpContext>,
    shared: Rc<Shared>,
    conn: &ConnGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = Stream::Plain(stream);
    let mut session = Session::new(ctx.settings.clone(), port, peer.ip());
    if implicit_tls {
        match tls::handshake(&mut stream, ctx.tls.as_deref(), "smtp", peer).await {
            Some(info) => session.tls_started(info),
            None => return,
        }
    }
    let mut early = Early::default();
    if let (Port::Smtp, Some(sp)) = (port, &ctx.spam) {
        if sp.trusted(peer.ip()) {
            log::debug!("smtp {peer}: trusted client, no pregreet, DNSBL or greylisting");
        } else {
            match before_greeting(&mut stream, peer, sp, &shared.hostname).await {
                Ok((listed, fcrdns)) => {
                    if let Some(l) = listed {
                        session.set_listed(format!(
                            "Service unavailable; client [{}] blocked using {} (returned {})",
                            peer.ip(),
                            l.zone,
                            l.code
                        ));
                    }
                    early.fcrdns = fcrdns;
                    session.set_greylisting(sp.greylist.is_some());
                }
                Err(()) => {
                    let _ = timeout(shared.limits.command_timeout, stream.close()).await;
                    return;
                }
            }
        }
    }
    let _ = drive(
        &mut stream,
        &mut session,
        peer,
        &ctx,
        &shared,
        conn,
        &mut early,
    )
    .await;
    // Closing may need to write (a TLS close_notify): bounded too.
    let _ = timeout(shared.limits.command_timeout, stream.close()).await;
}

/// Port 25, before the greeting: waits `pregreet` while the DNSBL and
/// reverse DNS lookups run (postscreen's pregreet test, with its DNSBL
/// lookups in parallel). A client that sends anything in that time is a
/// bot that does not wait for the server (RFC 5321 3.1: the client waits
/// for the greeting): `554 5.7.1` and close (`Err`). The lookups may
/// outlast the wait, up to the DNSBL timeout; the client must stay quiet
/// for that long too.
async fn before_greeting<S>(
    stream: &mut Stream<S>,
    peer: SocketAddr,
    sp: &SpamChecks,
    hostname: &str,
) -> Result<(Option<dnsbl::Listing>, Option<String>), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ip = peer.ip();
    let lookups = async {
        let fcrdns = async {
            if sp.greylist.is_some() {
                sp.dnsbl.fcrdns(&sp.resolver, ip).await
            } else {
                None
            }
        };
        let wait = async {
            if !sp.pregreet.is_zero() {
                smol::Timer::after(sp.pregreet).await;
            }
        };
        let ((listed, fcrdns), ()) = smol::future::zip(
            smol::future::zip(sp.dnsbl.check(&sp.resolver, ip), fcrdns),
            wait,
        )
        .await;
        Ok((listed, fcrdns))
    };
    let mut first = [0u8; 64];
    let result = if sp.pregreet.is_zero() {
        lookups.await
    } else {
        let talk = async {
            match stream.read(&mut first).await {
                Ok(0) | Err(_) => Err(0),
                Ok(n) => Err(n),
            }
        };
        lookups.or(talk).await
    };
    match result {
        Ok((listed, fcrdns)) => {
            if let Some(l) = &listed {
                log::info!(
                    "spam check=dnsbl client={ip} result=listed list={} code={}",
                    l.zone,
                    l.code
                );
            }
            Ok((listed, fcrdns))
        }
        Err(0) => {
            log::info!("smtp {peer}: left before the greeting");
            Err(())
        }
        Err(n) => {
            log::info!(
                "spam check=pregreet client={ip} result=refused sent={}",
                logging::quoted(&String::from_utf8_lossy(&first[..n]))
            );
            sp.counts.add("pregreet");
            let line =
                format!("554 5.7.1 {hostname} Protocol error: you talked before my greeting\r\n");
            last_words(stream, line.as_bytes()).await;
            Err(())
        }
    }
}

/// Whether [`greylist_decision`] will ask the DNS: an SPF check for a
/// client with forward-confirmed reverse DNS, not yet made for `sender`.
fn greylist_asks_dns(sp: &SpamChecks, early: &Early, sender: &str) -> bool {
    let exempt = !sender.is_empty() && sp.correspondents.contains(sender);
    !exempt && early.fcrdns.is_some() && !matches!(&early.spf, Some((s, _)) if s == sender)
}

/// The greylist decision for one local recipient (SPEC "Keeping spam
/// out"): correspondents of the user pass, and clients with forward-
/// confirmed reverse DNS whose MAIL FROM has SPF `pass`; the others wait
/// `greylist_delay` per (network, sender, recipient). `Some(wait)`:
/// defer. A broken greylist file accepts (it is only a delay).
async fn greylist_decision(
    sp: &SpamChecks,
    early: &mut Early,
    ip: std::net::IpAddr,
    helo: &str,
    hostname: &str,
    sender: &str,
    rcpt: &str,
) -> Option<u64> {
    let log = |result: &str, why: &str| {
        log::info!(
            "spam check=greylist client={ip} result={result} from={} to={} why={}",
            logging::quoted_path(sender),
            logging::quoted_path(rcpt),
            logging::quoted(why)
        )
    };
    if !sender.is_empty() && sp.correspondents.contains(sender) {
        log("exempt", "the user has sent mail to the sender");
        return None;
    }
    if let Some(host) = &early.fcrdns {
        let spf = match &early.spf {
            Some((s, r)) if s == sender => *r,
            _ => {
                let q = crate::trust::spf::Query {
                    ip,
                    sender: sender.to_string(),
                    helo: helo.to_string(),
                    receiver: hostname.to_string(),
                };
                let r = timeout(
                    GREYLIST_SPF_TIMEOUT,
                    crate::trust::spf::check(&sp.resolver, &q),
                )
                .await
                .map_or(crate::trust::spf::SpfResult::TempError, |o| o.result);
                early.spf = Some((sender.to_string(), r));
                r
            }
        };
        if spf == crate::trust::spf::SpfResult::Pass {
            log("exempt", &format!("spf pass and reverse DNS {host}"));
            return None;
        }
    }
    let g = sp.greylist.as_ref()?;
    let delay = u32::try_from(sp.greylist_delay.as_secs()).unwrap_or(u32::MAX);
    let key = g.key(ip, sender, rcpt);
    let why = if early.fcrdns.is_some() {
        "spf not pass"
    } else {
        "no forward-confirmed reverse DNS"
    };
    match g.check(key, crate::util::timefmt::unix_now(), delay) {
        Ok(Verdict::Pass { first: true }) => {
            log("passed", "retried after the delay");
            None
        }
        Ok(Verdict::Pass { first: false }) => {
            log("known", "passed before");
            None
        }
        Ok(Verdict::Defer { wait }) => {
            log("deferred", why);
            sp.counts.add("greylist");
            Some(u64::from(wait))
        }
        Err(e) => {
            log::warn!("greylist {}: {e}; accepting", g.path.display());
            None
        }
    }
}

/// Writes replies, bounded by the command timeout (shorter under stress,
/// cut when the slot is shed): a client that stops reading its replies
/// must not hold its connection slot forever.
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

/// The last reply before closing for a timeout or shed: best effort, and
/// briefly, since the client may well not be reading.
async fn last_words<S>(stream: &mut S, bytes: &[u8])
where
    S: AsyncWrite + Unpin,
{
    let _ = timeout(Duration::from_secs(2), stream.write_all(bytes)).await;
}

async fn drive<S>(
    stream: &mut Stream<S>,
    session: &mut Session,
    peer: SocketAddr,
    ctx: &SmtpContext,
    shared: &Shared,
    conn: &ConnGuard,
    early: &mut Early,
) -> Result<End, std::io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut lines = LineBuffer::new(BUFFER);
    let mut out = Vec::with_capacity(512);
    session.greeting().write_to(&mut out);
    // When the wait for the next command line began: the command timeout
    // is a deadline for the whole line (RFC 5321 4.5.3.2.7), not per read.
    let mut waiting_since: Option<std::time::Instant> = None;
    loop {
        while let Some(line) = lines.next_line(session.max_line()) {
            waiting_since = None;
            conn.progress();
            let step = session.line(line);
            if let Some(reply) = &step.reply {
                if reply.is_error() {
                    // Refusals (unknown user, relay denied, syntax) with the reason.
                    log::info!(
                        "smtp {peer}: refused reply={}",
                        logging::quoted(reply.to_wire().trim_end())
                    );
                    if reply.code == 554 && session.is_listed() {
                        log::info!(
                            "spam check=dnsbl client={} result=refused from={} {}",
                            peer.ip(),
                            logging::quoted_path(&session.sender().unwrap_or_default()),
                            logging::quoted(reply.lines.last().map_or("", |l| l.as_ref()))
                        );
                        if !early.counted {
                            early.counted = true;
                            if let Some(sp) = &ctx.spam {
                                sp.counts.add("dnsbl");
                            }
                        }
                    }
                }
                reply.write_to(&mut out);
            }
            match step.action {
                Action::None => {}
                Action::Close => {
                    send(stream, &out, shared, conn).await?;
                    return Ok(End::Closed);
                }
                Action::ReceiveData => {
                    send(stream, &out, shared, conn).await?;
                    out.clear();
                    let _busy = shared.busy();
                    let reply =
                        receive(stream, &mut lines, session, peer, ctx, shared, conn).await?;
                    let Some(reply) = reply else {
                        return Ok(End::Closed);
                    };
                    reply.write_to(&mut out);
                }
                Action::StartTls => {
                    send(stream, &out, shared, conn).await?;
                    out.clear();
                    // CVE-2011-0411: whatever came with STARTTLS was sent in
                    // the clear and must not run inside the TLS session.
                    lines.clear();
                    match tls::handshake(stream, ctx.tls.as_deref(), "smtp", peer).await {
                        Some(info) => session.tls_started(info),
                        None => return Ok(End::Closed),
                    }
                }
                Action::Authenticate(credentials) => {
                    // Earlier pipelined replies go out before the slow check.
                    send(stream, &out, shared, conn).await?;
                    out.clear();
                    let account = Account {
                        name: &ctx.settings.user,
                        domains: &ctx.settings.policy.domains,
                        password_hash: &ctx.password_hash,
                    };
                    let service = if stream.is_tls() {
                        "submission/tls"
                    } else {
                        "submission"
                    };
                    let outcome = auth::check(
                        &shared.logins,
                        &account,
                        service,
                        peer.ip(),
                        &credentials.login,
                        credentials.password,
                        Duration::ZERO,
                    )
                    .await;
                    if outcome == auth::Outcome::Success {
                        conn.authenticated();
                    }
                    session.auth_finished(outcome).write_to(&mut out);
                }
                Action::Greylist { sender, rcpt } => {
                    // A decision that asks the DNS (SPF) sends the earlier
                    // replies first; one that does not keeps pipelined
                    // replies together (one write per batch, RFC 2920).
                    let asks_dns = ctx
                        .spam
                        .as_ref()
                        .is_some_and(|sp| greylist_asks_dns(sp, early, &sender));
                    if asks_dns && !out.is_empty() {
                        send(stream, &out, shared, conn).await?;
                        out.clear();
                    }
                    let defer = match &ctx.spam {
                        Some(sp) => {
                            let helo = session.helo_name().unwrap_or_default().to_string();
                            greylist_decision(
                                sp,
                                early,
                                peer.ip(),
                                &helo,
                                &shared.hostname,
                                &sender,
                                &rcpt,
                            )
                            .await
                        }
                        None => None,
                    };
                    session.greylist_finished(defer).write_to(&mut out);
                }
            }
        }
        if !out.is_empty() {
            send(stream, &out, shared, conn).await?;
            out.clear();
        }
        if shared.stopping() && !session.in_transaction() {
            session.shutting_down().write_to(&mut out);
            send(stream, &out, shared, conn).await?;
            return Ok(End::Closed);
        }
        let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
        let deadline = conn.deadline(since, shared.limits.command_timeout);
        match conn.io(deadline, stream.read(lines.spare())).await {
            Err(cut) => {
                log::info!(
                    "smtp {peer}: {} after {}s waiting for a command",
                    cut.describe(),
                    since.elapsed().as_secs()
                );
                session.timeout().write_to(&mut out);
                last_words(stream, &out).await;
                return Ok(End::Closed);
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(End::Closed),
            Ok(Ok(n)) => lines.filled(n),
        }
    }
}

/// Reads DATA to its end, spooling it, then stores it. `None`: the
/// connection is gone (timeout or the client left mid-message).
async fn receive<S>(
    stream: &mut S,
    lines: &mut LineBuffer,
    session: &mut Session,
    peer: SocketAddr,
    ctx: &SmtpContext,
    shared: &Shared,
    conn: &ConnGuard,
) -> Result<Option<Reply>, std::io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A deadline for the whole DATA block; under stress also a short
    // one per read (see `ConnGuard::deadline`).
    let started = std::time::Instant::now();
    let whole = started + shared.limits.data_timeout;
    // Bytes since the last progress mark: a block of DATA is progress, a
    // trickle is not.
    let mut unmarked = 0usize;
    let id = crate::util::rt::new_id();
    let spool_path = ctx.spool_dir.join(format!("{id}.msg"));
    let mut spool = BodySink::new(spool_path.clone());
    // Bare LF only after AUTH on submission; port 25 stays strict for
    // everyone (SMTP smuggling), see `data`.
    let mut decoder =
        if session.port() == Port::Submission && session.authenticated_user().is_some() {
            DataDecoder::accepting_bare_lf(ctx.settings.max_message_size)
        } else {
            DataDecoder::new(ctx.settings.max_message_size)
        };
    let mut quoter = Quoter::for_received_mail();
    let mut decoded = Vec::with_capacity(BUFFER);
    let mut quoted = Vec::with_capacity(BUFFER + BUFFER / 4);
    let mut write_error: Option<std::io::Error> = None;
    let guard = SpoolGuard(spool_path.clone());
    // Port 25 mail streams through the DKIM hashers as it is spooled.
    let mut verifier = match (&ctx.auth, session.port()) {
        (Some(_), Port::Smtp) => Some(crate::trust::dkim::Verifier::new(
            crate::util::timefmt::unix_now(),
        )),
        _ => None,
    };
    // And loses any Authentication-Results claiming to be ours (RFC 8601 5).
    let mut forged = verifier
        .as_ref()
        .map(|_| crate::trust::authres::ForgedResultsFilter::new(&shared.hostname));
    let mut filtered = Vec::new();
    // Port 25 mail also passes the header scan: rules, and forged
    // X-Spam-Reason fields removed.
    let spam = match session.port() {
        Port::Smtp => ctx.spam.as_ref(),
        Port::Submission => None,
    };
    let mut scan = spam.map(|sp| HeaderScan::new(&sp.rules));
    let mut scanned = Vec::new();
    loop {
        let input = lines.buffered();
        let progress = decoder.feed(input, &mut decoded);
        let used = match progress {
            Progress::NeedMore => input.len(),
            Progress::Done { consumed } => consumed,
        };
        lines.consume(used);
        if let Some(v) = &mut verifier {
            if let Err(e) = v.update(&decoded) {
                // A giant header block: no DKIM verdict, SPF still runs.
                log::info!("smtp {peer}: DKIM not checked: {e}");
                verifier = None;
            }
        }
        let data: &[u8] = match &mut forged {
            Some(f) => {
                filtered.clear();
                f.feed(&decoded, &mut filtered);
                if progress != Progress::NeedMore {
                    f.finish(&mut filtered);
                }
                &filtered
            }
            None => &decoded,
        };
        let data: &[u8] = match &mut scan {
            Some(sc) => {
                scanned.clear();
                sc.feed(data, &mut scanned);
                if progress != Progress::NeedMore {
                    sc.finish(&mut scanned);
                }
                &scanned
            }
            None => data,
        };
        quoter.feed(data, &mut quoted);
        decoded.clear();
        if progress != Progress::NeedMore {
            quoter.finish(&mut quoted);
        }
        if decoder.error().is_none() && write_error.is_none() {
            if let Err(e) = spool.write_all(&quoted) {
                write_error = Some(e);
            }
        }
        quoted.clear();
        if progress != Progress::NeedMore {
            break;
        }
        if decoder.runaway() {
            // An endless DATA: refuse it and close rather than read forever.
            log::info!("smtp {peer}: DATA far over the size limit, closing");
            if let DataOutcome::Refused(reply) = session.data_finished(decoder.error()) {
                let mut out = Vec::new();
                reply.write_to(&mut out);
                last_words(stream, &out).await;
            }
            return Ok(None);
        }
        let deadline =
            whole.min(conn.deadline(std::time::Instant::now(), shared.limits.data_timeout));
        match conn.io(deadline, stream.read(lines.spare())).await {
            Err(cut) => {
                log::info!(
                    "smtp {peer}: {} during DATA after {}s, message discarded",
                    cut.describe(),
                    started.elapsed().as_secs()
                );
                let mut out = Vec::new();
                session.timeout().write_to(&mut out);
                last_words(stream, &out).await;
                return Ok(None);
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                log::info!("smtp {peer}: connection lost during DATA, message discarded");
                return Ok(None);
            }
            Ok(Ok(n)) => {
                lines.filled(n);
                unmarked += n;
                if unmarked >= 64 * 1024 {
                    unmarked = 0;
                    conn.progress();
                }
            }
        }
    }
    let body = spool.finish();
    let size = decoder.size();
    let envelope = match session.data_finished(decoder.error()) {
        DataOutcome::Refused(reply) => {
            log::info!(
                "refused peer={} size={size} reason={} helo={}",
                peer.ip(),
                logging::quoted(
                    &reply
                        .lines
                        .last()
                        .map(|l| l.to_string())
                        .unwrap_or_default()
                ),
                logging::quoted(session.helo_name().unwrap_or("-")),
            );
            return Ok(Some(reply));
        }
        DataOutcome::Deliver(env) => env,
    };
    let mut auth_header = None;
    let mut verdicts = None;
    if let (Some(auth), Port::Smtp) = (&ctx.auth, session.port()) {
        let from = verifier.as_ref().and_then(|v| v.header("from"));
        let pending = verifier.map(|v| v.finish()).unwrap_or_default();
        let sender = envelope.sender();
        let checks = crate::trust::authres::check(
            &auth.resolver,
            peer.ip(),
            &envelope.helo,
            &sender,
            &shared.hostname,
            pending,
            from.as_deref(),
        );
        // Bounded: a dead resolver must not hold the client until its DATA
        // timeout; the message is then marked as not checked.
        if let Some(n) = forged.as_ref().map(|f| f.removed).filter(|&n| n > 0) {
            log::info!(
                "auth id={id}: removed {n} Authentication-Results header(s) claiming to be ours"
            );
        }
        match timeout(AUTH_CHECKS_TIMEOUT, checks).await {
            None => {
                log::info!("auth id={id} peer={}: checks timed out", peer.ip());
                auth_header = Some(format!(
                    "Authentication-Results: {}; none\r\n",
                    shared.hostname
                ));
            }
            Some(r) => {
                let dmarc = r.dmarc.as_ref().map(|d| d.result).unwrap_or("none");
                log::info!(
                    "auth id={id} peer={} spf={} dmarc={dmarc} dkim={}",
                    peer.ip(),
                    r.spf.result.name(),
                    logging::quoted(
                        &r.dkim
                            .iter()
                            .map(|d| format!("{}:{}", d.domain, d.status.name()))
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                );
                if auth.dmarc_reject && r.dmarc_reject() {
                    let domain = r
                        .dmarc
                        .as_ref()
                        .map(|d| d.from_domain.clone())
                        .unwrap_or_default();
                    log::info!(
                        "refused id={id} peer={}: DMARC p=reject failure domain={}",
                        peer.ip(),
                        logging::quoted(&domain)
                    );
                    return Ok(Some(session.policy_refused(&format!(
                        "DMARC policy of {domain} says reject, and this message failed SPF and DKIM alignment"
                    ))));
                }
                auth_header = Some(r.header(&shared.hostname));
                verdicts = Some(r);
            }
        }
    }
    // Suspect mail goes to Junk (SPEC "Keeping spam out"); a header rule
    // may refuse it instead.
    let mut junk: Vec<(&'static str, String)> = Vec::new();
    if let (Some(sp), Some(sc)) = (spam, &scan) {
        if sc.removed > 0 {
            log::info!(
                "spam id={id}: removed {} incoming X-Spam-Reason header(s)",
                sc.removed
            );
        }
        let sender = envelope.sender();
        if let Some(hit) = rules::evaluate(&sp.rules, sc) {
            let exempt = rules::not_junk_keys(&sender, sc)
                .iter()
                .any(|k| sp.not_junk.contains(k));
            log::info!(
                "spam check=rule id={id} client={} result={} reason={} from={}",
                peer.ip(),
                match (exempt, hit.action) {
                    (true, _) => "exempt-not-junk",
                    (false, crate::config::RuleAction::Junk) => "junk",
                    (false, crate::config::RuleAction::Reject) => "refused",
                },
                logging::quoted(&hit.reason),
                logging::quoted_path(&sender),
            );
            if !exempt {
                match hit.action {
                    crate::config::RuleAction::Reject => {
                        sp.counts.add("rule");
                        return Ok(Some(
                            session.policy_refused("a local header rule matched it"),
                        ));
                    }
                    crate::config::RuleAction::Junk => junk.push(("junk-rule", hit.reason)),
                }
            }
        }
        if let Some(r) = &verdicts {
            junk.extend(junk_reasons(r, peer.ip()));
        }
    }
    let junk_reason = (!junk.is_empty()).then(|| {
        let reason = junk
            .iter()
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if let Some(sp) = spam {
            for (check, _) in &junk {
                sp.counts.add(check);
            }
        }
        reason
    });
    let result = match write_error {
        Some(e) => {
            log::error!("spool {}: {e}", spool_path.display());
            Err(if mbox::is_disk_full(&e) {
                StoreError::DiskFull
            } else {
                StoreError::Local
            })
        }
        None => {
            store(
                &envelope,
                &id,
                body,
                &spool_path,
                ctx,
                shared,
                auth_header.as_deref(),
                junk_reason.as_deref(),
            )
            .await
        }
    };
    drop(guard);
    if result.is_ok() {
        crate::util::activity::received(&id, &envelope.sender().to_string());
    }
    match result {
        Ok(()) => log::info!(
            "accepted id={id} size={size} peer={} tls={} from={} rcpts={} helo={}{}",
            peer.ip(),
            envelope
                .tls
                .as_ref()
                .map_or("no".to_string(), |t| format!("{}/{}", t.version, t.cipher)),
            logging::quoted_path(&envelope.sender()),
            logging::quoted(&rcpt_list(&envelope)),
            logging::quoted(&envelope.helo),
            junk_reason.as_ref().map_or(String::new(), |r| format!(
                " folder=Junk reason={}",
                logging::quoted(r)
            )),
        ),
        Err(e) => log::warn!(
            "not stored id={id} size={size} peer={} error={e:?} from={} rcpts={}",
            peer.ip(),
            logging::quoted_path(&envelope.sender()),
            logging::quoted(&rcpt_list(&envelope)),
        ),
    }
    Ok(Some(session.delivered(
        result.as_ref().map(|()| id.as_str()).map_err(|e| *e),
    )))
}

/// Why the authentication verdicts send a message to Junk: a DMARC
/// failure of a domain asking for quarantine (or reject, when pimail is
/// told not to refuse), and SPF `fail` of the MAIL FROM unless DMARC
/// passed anyway (forwarded mail: a DKIM signature vouches for it).
fn junk_reasons(
    r: &crate::trust::authres::Results,
    ip: std::net::IpAddr,
) -> Vec<(&'static str, String)> {
    use crate::trust::dmarc::Policy;
    let mut v = Vec::new();
    let dmarc_pass = r.dmarc.as_ref().is_some_and(|d| d.result == "pass");
    if let Some(d) = &r.dmarc {
        if d.result == "fail" && d.policy != Policy::None {
            v.push((
                "junk-dmarc",
                format!(
                    "dmarc: {} asks to {} mail that fails DMARC, and this failed",
                    d.from_domain,
                    d.policy.name()
                ),
            ));
        }
    }
    if r.spf.result == crate::trust::spf::SpfResult::Fail && !dmarc_pass {
        v.push((
            "junk-spf",
            format!(
                "spf: {} does not allow {ip} to send its mail (fail)",
                r.spf.domain
            ),
        ));
    }
    v
}

fn rcpt_list(env: &Envelope) -> String {
    let v: Vec<String> = env.rcpts.iter().map(|r| format!("<{}>", r.addr)).collect();
    v.join(",")
}

/// A message's quoted body as it arrives: in memory while it fits in
/// [`mbox::SMALL_BODY`], then in its spool file (created only then). The
/// memory a session holds stays bounded whatever the message's size.
struct BodySink {
    path: PathBuf,
    memory: Vec<u8>,
    file: Option<std::fs::File>,
}

impl BodySink {
    fn new(path: PathBuf) -> BodySink {
        BodySink {
            path,
            memory: Vec::new(),
            file: None,
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        if let Some(f) = &mut self.file {
            return f.write_all(data);
        }
        let len = self.memory.len() + data.len();
        if len <= mbox::SMALL_BODY {
            // Grow in steps but never past the bound.
            if len > self.memory.capacity() {
                let want = (len * 2).clamp(4096, mbox::SMALL_BODY);
                self.memory.reserve_exact(want - self.memory.len());
            }
            self.memory.extend_from_slice(data);
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(&self.memory)?;
        f.write_all(data)?;
        self.memory = Vec::new();
        self.file = Some(f);
        Ok(())
    }

    fn finish(self) -> mbox::Body {
        match self.file {
            Some(_) => mbox::Body::Spool(self.path),
            None => mbox::Body::Memory(self.memory),
        }
    }
}

/// Removes the spool file however `receive` ends.
struct SpoolGuard(PathBuf);

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stores an accepted message: one copy in the mbox for local recipients,
/// one in the queue for remote ones (which takes a spool file: a body
/// kept in memory is written to `spool` first).
#[allow(clippy::too_many_arguments)]
async fn store(
    env: &Envelope,
    id: &str,
    body: mbox::Body,
    spool: &std::path::Path,
    ctx: &SmtpContext,
    shared: &Shared,
    auth_header: Option<&str>,
    junk: Option<&str>,
) -> Result<(), StoreError> {
    let body = match body {
        mbox::Body::Memory(bytes) if env.remote_rcpts().next().is_some() => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(spool)
                .and_then(|mut f| f.write_all(&bytes));
            if let Err(e) = written {
                log::error!("spool {}: {e}", spool.display());
                return Err(if mbox::is_disk_full(&e) {
                    StoreError::DiskFull
                } else {
                    StoreError::Local
                });
            }
            mbox::Body::Spool(spool.to_path_buf())
        }
        other => other,
    };
    if env.has_local() {
        let now = crate::util::timefmt::unix_now();
        let mut prefix = mbox::from_line(&env.sender(), now);
        // Junk (only with the spam checks on) goes to `<folders>/Junk`,
        // with the reason as its first header field.
        let writer = match (junk, &ctx.spam) {
            (Some(reason), Some(sp)) => {
                prefix += &crate::trust::rules::reason_header(reason);
                &sp.junk
            }
            _ => &ctx.mbox,
        };
        prefix += &env.return_path_header();
        // RFC 8601 5: above the trace fields we add, LF as in the mbox.
        if let Some(h) = auth_header {
            prefix += &h.replace("\r\n", "\n");
        }
        prefix += &env.received_header(&shared.hostname, id, now);
        let d = Delivery {
            id: id.to_string(),
            prefix: prefix.into_bytes(),
            body,
        };
        writer.append(d).await.map_err(|e| {
            log::error!("id={id}: cannot store in {}: {e}", writer.path().display());
            match e {
                MboxError::DiskFull => StoreError::DiskFull,
                MboxError::Locked(_) => StoreError::Busy,
                _ => StoreError::Local,
            }
        })?;
    }
    if env.remote_rcpts().next().is_some() {
        enqueue(env, id, spool, ctx, shared).await?;
    }
    Ok(())
}

/// Queues the message for its remote recipients (submission): durable
/// before the caller says `250`.
async fn enqueue(
    env: &Envelope,
    id: &str,
    spool: &std::path::Path,
    ctx: &SmtpContext,
    shared: &Shared,
) -> Result<(), StoreError> {
    let Some(outbox) = &ctx.outbox else {
        log::error!("id={id}: no outbound queue");
        return Err(StoreError::Local);
    };
    let now = crate::util::timefmt::unix_now();
    let size = std::fs::metadata(spool).map(|m| m.len()).unwrap_or(0);
    let mut entry = crate::send::queue::Entry::new(id, env.from.clone(), now, size);
    entry.smtputf8 = env.smtputf8;
    // Our Received: goes out in front of the message (RFC 5321 4.4).
    entry.headers = env
        .received_header(&shared.hostname, id, now)
        .lines()
        .map(|l| l.to_string())
        .collect();
    for r in env.remote_rcpts() {
        entry.add_rcpt(r.addr.clone(), false);
    }
    let queue = outbox.queue.clone();
    let spool = spool.to_path_buf();
    let r = smol::unblock(move || queue.enqueue(&entry, &spool)).await;
    match r {
        Ok(()) => {
            outbox.wake();
            // Replies from these people are never greylisted.
            if let Some(sp) = &ctx.spam {
                let rcpts: Vec<String> = env.remote_rcpts().map(|r| r.addr.to_string()).collect();
                known::record_correspondents(&sp.data_dir, &rcpts);
            }
            Ok(())
        }
        Err(e) => {
            log::error!("id={id}: cannot queue: {e}");
            Err(if e.is_disk_full() {
                StoreError::DiskFull
            } else {
                StoreError::Local
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::address::{parse_mailbox, Destination};
    use crate::mail::envelope::Recipient;

    /// What an authenticated submission hands to `store`: remote
    /// recipients are in the queue, durably, by the time it returns `Ok`
    /// (the caller then says 250); the local one is in the mbox.
    #[test]
    fn store_queues_remote_recipients_before_ok() {
        let dir = std::env::temp_dir().join(format!("pimail-conn-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data/spool")).unwrap();
        let toml = format!(
            "hostname = \"mail.example.org\"\ndomains = [\"example.org\"]\ndata_dir = {:?}\n\
             [user]\nname = \"alice\"\npassword = \"$argon2id$v=19$m=64,t=1,p=1$d7bEe5+PDtR+c+lWi896vw$glblWHgdtnS/rmo83vVWocAP1oh4q0fcq6XvKfsvKO8\"\n\
             addresses = [\"alice\"]\nmbox = {:?}\n",
            dir.join("data").display().to_string(),
            dir.join("mbox").display().to_string()
        );
        let config = crate::config::parse(&toml, "t.toml", &dir).unwrap();
        let mbox = MboxWriter::start(&config.user.mbox, &config.data_dir).unwrap();
        let (outbox, _worker) = crate::send::delivery::start(&config, mbox.clone()).unwrap();
        let ctx = SmtpContext {
            settings: Rc::new(Settings {
                hostname: config.hostname.clone(),
                policy: crate::mail::address::LocalPolicy::from_config(&config),
                max_message_size: 1 << 20,
                max_recipients: 10,
                max_errors: 10,
                tls_available: false,
                user: "alice".into(),
            }),
            mbox,
            spool_dir: dir.join("data/spool"),
            outbox: Some(outbox.clone()),
            tls: None,
            password_hash: config.user.password_hash.clone(),
            auth: None,
            spam: None,
        };
        let shared = Shared::new(config.hostname.clone(), config.limits.clone());
        let spool = dir.join("data/spool/ID1.msg");
        std::fs::write(&spool, b"Subject: out\n\nhello\n").unwrap();
        let rcpt = |s: &str, dest| Recipient {
            addr: parse_mailbox(s, false).unwrap(),
            dest,
        };
        let env = Envelope {
            from: Some(parse_mailbox("alice@example.org", false).unwrap()),
            rcpts: vec![
                rcpt("bob@example.com", Destination::Remote),
                rcpt("alice@example.org", Destination::Local),
                rcpt("carol@example.net", Destination::Remote),
            ],
            helo: "laptop".into(),
            esmtp: true,
            peer: "127.0.0.1".parse().unwrap(),
            tls: None,
            auth: Some("alice".into()),
            smtputf8: false,
        };
        let body = crate::store::mbox::Body::Spool(spool.clone());
        smol::block_on(store(&env, "ID1", body, &spool, &ctx, &shared, None, None)).unwrap();
        // The caller removes the spool file; the queue keeps its own link.
        std::fs::remove_file(&spool).unwrap();
        let q = &outbox.queue;
        let e = q.load("ID1").unwrap();
        let rcpts: Vec<String> = e.rcpts.iter().map(|r| r.addr.to_string()).collect();
        assert_eq!(rcpts, vec!["bob@example.com", "carol@example.net"]);
        assert_eq!(e.sender(), "alice@example.org");
        assert!(e.headers[0].starts_with("Received: from laptop ([127.0.0.1])"));
        assert!(e.headers.iter().any(|h| h.contains("with ESMTPA id ID1")));
        assert_eq!(
            std::fs::read(q.msg_path("ID1")).unwrap(),
            b"Subject: out\n\nhello\n"
        );
        let mbox_text = std::fs::read_to_string(dir.join("mbox")).unwrap();
        assert!(mbox_text.contains("Subject: out\n"), "{mbox_text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
