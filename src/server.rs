//! The top of the tree: starts every stage and wires them together.
//! Binds the listeners, repairs the mbox, starts the outbound worker, runs
//! the accept loops that hand each connection to its protocol driver, and
//! shuts down.
//!
//! Everything runs on one thread (a `smol::LocalExecutor`): a session costs
//! a few KiB, not a thread, so idle or slow clients are cheap and never
//! block others. Blocking file work (mbox appends and their fsyncs) runs on
//! the mbox writer thread. The connection budgets (`net::listen`) are
//! enforced at accept with `421 4.7.0` (`-ERR [SYS/TEMP]` on POP3). On
//! listeners in `[listen] proxy_protocol` the PROXY header is read first
//! and the slot taken for the client's real address.
//!
//! The TLS certificate is loaded here at start (a bad one stops the start
//! with an error naming the file) and shared by every listener;
//! [`Server::certificate`] gives the handle that `SIGHUP` reloads.

use crate::config::Config;
use crate::mail::address::LocalPolicy;
use crate::net::listen::{self, accept_next, Class, Shared};
use crate::net::proxy::{self, Header};
use crate::net::tls::{Certificate, TlsError};
use crate::read::pop3::conn::Pop3Context;
use crate::receive::smtp::conn::SmtpContext;
use crate::receive::smtp::session::{Port, Settings};
use crate::store::mbox::MboxWriter;
use crate::util::rt::timeout;
use async_net::{TcpListener, TcpStream};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::LocalExecutor;
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Port 25: STARTTLS when a certificate is configured, never AUTH.
    Smtp,
    /// Port 587: STARTTLS, then AUTH.
    Submission,
    /// Port 465: implicit TLS (RFC 8314), then AUTH.
    Submissions,
}

impl Service {
    /// The name in the "listening:" log line and the config's `[listen]`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp => "smtp",
            Service::Submission => "submission",
            Service::Submissions => "submissions",
        }
    }

    fn port(self) -> Port {
        match self {
            Service::Smtp => Port::Smtp,
            Service::Submission | Service::Submissions => Port::Submission,
        }
    }

    fn implicit_tls(self) -> bool {
        self == Service::Submissions
    }
}

/// The running server's parts.
pub struct Server {
    pub shared: Rc<Shared>,
    pub smtp: Rc<SmtpContext>,
    /// With "expects a PROXY header" (`[listen] proxy_protocol`).
    listeners: Vec<(TcpListener, Service, bool)>,
    pub pop3: Rc<Pop3Context>,
    /// With "implicit TLS" (pop3s, 995) and "expects a PROXY header".
    pop3_listeners: Vec<(TcpListener, bool, bool)>,
    pub imap: Rc<crate::read::imap::conn::ImapContext>,
    /// With "implicit TLS" (imaps, 993) and "expects a PROXY header".
    imap_listeners: Vec<(TcpListener, bool, bool)>,
    /// The outbound delivery worker and its control socket.
    outbound: Option<(
        crate::send::delivery::Worker,
        Option<async_net::unix::UnixDatagram>,
    )>,
    /// The local submission socket (`[listen] local_submit`) and the
    /// config its submissions are handled with.
    local_submit: Option<(std::os::unix::net::UnixListener, std::sync::Arc<Config>)>,
    /// `<data_dir>/pimail.pid`, write-locked for as long as we run: a
    /// second server on the same data_dir refuses to start (it would clean
    /// our spool and take our control socket).
    _lock: std::fs::File,
}

/// The lock file in data_dir; it holds the running server's pid.
pub const PID_FILE: &str = "pimail.pid";

#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, std::io::Error),
    DataDir(std::path::PathBuf, std::io::Error),
    Mbox(crate::store::mbox::MboxError),
    Outbound(String),
    /// The spam checks' state files or the Junk folder.
    Spam(String),
    /// `[tls]` cert or key unusable.
    Tls(TlsError),
    /// Another server holds data_dir's lock (its pid, if it wrote one).
    AlreadyRunning(std::path::PathBuf, Option<u32>),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::DataDir(p, e) => {
                write!(f, "cannot use data directory {}: {e}", p.display())
            }
            StartError::Mbox(e) => write!(f, "cannot open the mbox: {e}"),
            StartError::Outbound(e) => write!(f, "outbound delivery: {e}"),
            StartError::Spam(e) => write!(f, "[inbound]: {e}"),
            StartError::Tls(e) => write!(f, "[tls]: {e}"),
            StartError::AlreadyRunning(dir, pid) => {
                let pid = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
                write!(
                    f,
                    "already running{pid} (it holds the lock on {}); not starting a second server on the same data_dir",
                    dir.join(PID_FILE).display()
                )
            }
        }
    }
}

impl Server {
    /// Prepares directories, repairs the mbox, and binds every listener, so
    /// that all start-up errors show before anything is served.
    pub fn start(config: &Config) -> Result<Server, StartError> {
        let spool_dir = config.data_dir.join("spool");
        crate::util::paths::private_dir(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        // Before anything else touches data_dir: the spool cleanup and the
        // control socket below belong to whoever holds this lock.
        let lock = lock_data_dir(&config.data_dir)?;
        // The IMAP INBOX's state, read while the rest starts (see Preload).
        let imap_on = !config.listen.imap.is_empty() || !config.listen.imaps.is_empty();
        let preload = imap_on
            .then(|| crate::read::imap::store::Preload::start(&config.data_dir))
            .flatten();
        crate::util::paths::private_dir(&spool_dir)
            .map_err(|e| StartError::DataDir(spool_dir.clone(), e))?;
        // Spool files of a crashed run were never acknowledged.
        if let Ok(rd) = std::fs::read_dir(&spool_dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Every held connection is a descriptor: use all the hard limit
        // allows, and say so when the budgets cannot all be held.
        match crate::util::sys::raise_nofile_limit() {
            Ok(n) => {
                let l = &config.limits;
                let want = l.max_connections
                    + l.max_connections / 8
                    + 3 * (l.max_user_connections + l.max_user_connections / 8)
                    + 64;
                if (n as usize) < want {
                    log::warn!(
                        "open files limit {n} is below the {want} the [limits] budgets need; \
                         raise LimitNOFILE or lower max_connections"
                    );
                }
            }
            Err(e) => log::warn!("cannot read the open files limit: {e}"),
        }
        let certificate = match &config.tls {
            Some(t) => Some(Rc::new(
                Certificate::load(&t.cert, &t.key).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        // Mail we deliver is indexed for IMAP as it is appended.
        let imap = !config.listen.imap.is_empty() || !config.listen.imaps.is_empty();
        let after = imap
            .then_some(crate::read::imap::store::index_appended as crate::store::mbox::AfterAppend);
        let mbox = MboxWriter::start_with(&config.user.mbox, &config.data_dir, after)
            .map_err(StartError::Mbox)?;
        let (outbox, worker) =
            crate::send::delivery::start(config, mbox.clone()).map_err(StartError::Outbound)?;
        // Without the control socket (e.g. a data_dir path too long for a
        // Unix socket) mail still goes out; sendmail's and `queue flush`'s
        // pokes are then noticed at the next scheduled scan.
        let control = worker
            .bind_control()
            .map_err(|e| {
                log::warn!("outbound: {e}; `queue flush` and sendmail cannot wake the server")
            })
            .ok();
        // Without it the server still serves; only local users' sendmail
        // (those who cannot queue directly) gets EX_TEMPFAIL.
        let local_submit = config.listen.local_submit.as_ref().and_then(|p| {
            match crate::send::submit::bind(p) {
                Ok(l) => {
                    log::info!("local submission on {}", p.display());
                    Some((l, std::sync::Arc::new(config.clone())))
                }
                Err(e) => {
                    log::warn!(
                        "local submission: {e}; local users who cannot read the config cannot send with `pimail sendmail` \
                         (systemd's RuntimeDirectory=pimail makes /run/pimail; `local_submit = \"\"` turns this off)"
                    );
                    None
                }
            }
        });
        let settings = Rc::new(Settings {
            hostname: config.hostname.clone(),
            policy: LocalPolicy::from_config(config),
            max_message_size: config.limits.max_message_size,
            max_recipients: config.limits.max_recipients,
            max_errors: config.limits.max_errors,
            tls_available: certificate.is_some(),
            user: config.user.name.clone(),
        });
        let mut listeners = Vec::new();
        for (addrs, service) in [
            (&config.listen.smtp, Service::Smtp),
            (&config.listen.submission, Service::Submission),
            (&config.listen.submissions, Service::Submissions),
        ] {
            for a in addrs {
                if let Some(l) = bind(*a)? {
                    listeners.push((l, service, config.listen.proxy_protocol.contains(a)));
                }
            }
        }
        // A POP3 deletion a crash interrupted is finished before any
        // append can land on the half-rewritten mbox.
        let data_dir = config.data_dir.clone();
        let recovered = smol::block_on(
            mbox.exclusive(move |l| Ok(crate::store::maildrop::recover(l, &data_dir))),
        );
        if let Ok(Err(e)) | Err(e) = recovered.map_err(crate::store::maildrop::MaildropError::from)
        {
            log::error!("cannot finish an interrupted POP3 deletion: {e}");
        }
        let spam = crate::receive::smtp::conn::SpamChecks::start(config, after)
            .map_err(StartError::Spam)?;
        let mut pop3_listeners = Vec::new();
        let proxied = |a: &SocketAddr| config.listen.proxy_protocol.contains(a);
        for a in &config.listen.pop3 {
            pop3_listeners.extend(bind(*a)?.map(|l| (l, false, proxied(a))));
        }
        for a in &config.listen.pop3s {
            pop3_listeners.extend(bind(*a)?.map(|l| (l, true, proxied(a))));
        }
        let mut imap_listeners = Vec::new();
        for a in &config.listen.imap {
            imap_listeners.extend(bind(*a)?.map(|l| (l, false, proxied(a))));
        }
        for a in &config.listen.imaps {
            imap_listeners.extend(bind(*a)?.map(|l| (l, true, proxied(a))));
        }
        let imap_store = crate::read::imap::store::Store::new(
            &config.user.mbox,
            &config.user.folders,
            &config.data_dir,
        )
        .map_err(|e| StartError::DataDir(config.user.folders.clone(), e))?;
        if let Some(p) = preload {
            imap_store.use_preload(p);
        }
        let mut writers = std::collections::HashMap::new();
        writers.insert("INBOX".to_string(), mbox.clone());
        writers.insert("Junk".to_string(), spam.junk.clone());
        let imap = Rc::new(crate::read::imap::conn::ImapContext {
            settings: Rc::new(crate::read::imap::session::Settings {
                hostname: config.hostname.clone(),
                user: config.user.name.clone(),
                domains: config.domains.clone(),
                tls_available: certificate.is_some(),
                max_errors: config.limits.max_errors,
                max_message_size: config.limits.max_message_size,
            }),
            password_hash: config.user.password_hash.clone(),
            store: imap_store,
            writers: std::cell::RefCell::new(writers),
            data_dir: config.data_dir.clone(),
            spool_dir: spool_dir.clone(),
            tls: certificate.clone(),
        });
        let pop3 = Rc::new(Pop3Context {
            settings: Rc::new(crate::read::pop3::session::Settings {
                hostname: config.hostname.clone(),
                user: config.user.name.clone(),
                domains: config.domains.clone(),
                tls_available: certificate.is_some(),
                max_errors: config.limits.max_errors,
            }),
            password_hash: config.user.password_hash.clone(),
            mbox: mbox.clone(),
            data_dir: config.data_dir.clone(),
            in_use: Cell::new(false),
            tls: certificate.clone(),
        });
        Ok(Server {
            _lock: lock,
            local_submit,
            pop3,
            pop3_listeners,
            imap,
            imap_listeners,
            shared: Rc::new(Shared::new(config.hostname.clone(), config.limits.clone())),
            smtp: Rc::new(SmtpContext {
                settings,
                mbox,
                spool_dir,
                outbox: Some(outbox),
                tls: certificate,
                password_hash: config.user.password_hash.clone(),
                auth: config
                    .inbound
                    .auth_checks
                    .then(|| crate::receive::smtp::conn::AuthChecks {
                        resolver: crate::net::dns::Resolver::new(&config.outbound.dns),
                        dmarc_reject: config.inbound.dmarc_reject,
                    }),
                spam: Some(spam),
            }),
            listeners,
            outbound: Some((worker, control)),
        })
    }

    /// The DKIM keys in use, for reloading on `SIGHUP`.
    pub fn dkim_keys(&self) -> Option<crate::send::delivery::DkimKeys> {
        self.outbound.as_ref().map(|(w, _)| w.dkim_keys())
    }

    /// The certificate in use, for reloading on `SIGHUP`.
    pub fn certificate(&self) -> Option<Rc<Certificate>> {
        self.smtp.tls.clone()
    }

    /// The addresses actually bound (port 0 resolved), with their kind.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, Service)> {
        self.listeners
            .iter()
            .filter_map(|(l, p, _)| l.local_addr().ok().map(|a| (a, *p)))
            .collect()
    }

    /// The POP3 addresses actually bound, with their kind ("pop3" or
    /// "pop3s", as in `[listen]`).
    pub fn pop3_addrs(&self) -> Vec<(SocketAddr, &'static str)> {
        self.pop3_listeners
            .iter()
            .filter_map(|(l, implicit, _)| {
                let kind = if *implicit { "pop3s" } else { "pop3" };
                l.local_addr().ok().map(|a| (a, kind))
            })
            .collect()
    }

    /// The IMAP addresses actually bound, with their kind ("imap" or
    /// "imaps").
    pub fn imap_addrs(&self) -> Vec<(SocketAddr, &'static str)> {
        self.imap_listeners
            .iter()
            .filter_map(|(l, implicit, _)| {
                let kind = if *implicit { "imaps" } else { "imap" };
                l.local_addr().ok().map(|a| (a, kind))
            })
            .collect()
    }

    /// Serves until `stop` resolves, then lets messages in flight finish
    /// (at most `grace`) and returns.
    pub async fn run(
        self,
        ex: Rc<LocalExecutor<'static>>,
        stop: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let Server {
            shared,
            smtp,
            listeners,
            pop3,
            pop3_listeners,
            imap,
            imap_listeners,
            outbound,
            local_submit,
            // Held (not `_`, which would drop it) until the server is done.
            _lock: _held,
        } = self;
        if let (Some((listener, config)), Some(outbox)) = (local_submit, smtp.outbox.clone()) {
            submit_accept_loop(listener, config, outbox);
        }
        if let Some((worker, control)) = outbound {
            let sh = shared.clone();
            ex.spawn(worker.run(ex.clone(), control, move || sh.stopping()))
                .detach();
        }
        // Today's spam check counts reach their file within a minute
        // (`trust::counts`), and at the end.
        let smtp2 = smtp.clone();
        ex.spawn(async move {
            loop {
                smol::Timer::after(Duration::from_secs(60)).await;
                if let Some(sp) = &smtp2.spam {
                    sp.counts.flush();
                }
            }
        })
        .detach();
        let cx = Rc::new(Contexts {
            shared: shared.clone(),
            smtp,
            pop3,
            imap,
        });
        for (listener, implicit_tls, proxy) in imap_listeners {
            let kind = Kind::Imap { implicit_tls };
            ex.spawn(accept_loop(ex.clone(), listener, kind, proxy, cx.clone()))
                .detach();
        }
        for (listener, implicit_tls, proxy) in pop3_listeners {
            let kind = Kind::Pop3 { implicit_tls };
            ex.spawn(accept_loop(ex.clone(), listener, kind, proxy, cx.clone()))
                .detach();
        }
        for (listener, service, proxy) in listeners {
            let kind = Kind::Smtp(service);
            ex.spawn(accept_loop(ex.clone(), listener, kind, proxy, cx.clone()))
                .detach();
        }
        stop.await;
        shared.stop(grace).await;
        if let Some(sp) = &cx.smtp.spam {
            sp.counts.flush();
        }
    }
}

/// Accepts local submissions on a thread of its own, one thread per
/// connection: the handling is blocking file work (the queue's writes and
/// fsyncs) like the mbox writer's, and `submit::Limiter` bounds how many
/// run at once. A submission that the stop cuts short was never answered
/// `OK`, so its client keeps the message (EX_TEMPFAIL).
fn submit_accept_loop(
    listener: std::os::unix::net::UnixListener,
    config: std::sync::Arc<Config>,
    outbox: crate::send::delivery::Outbox,
) {
    let limiter = crate::send::submit::limiter();
    let spawned = std::thread::Builder::new()
        .name("local-submit".into())
        .spawn(move || loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    log::error!("local submission: accept: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let (config, limiter, outbox) = (config.clone(), limiter.clone(), outbox.clone());
            let r = std::thread::Builder::new()
                .name("submit".into())
                .spawn(move || {
                    if crate::send::submit::serve(stream, &config, &limiter).is_some() {
                        outbox.wake();
                    }
                });
            if let Err(e) = r {
                log::error!("local submission: cannot start a thread: {e}");
            }
        });
    if let Err(e) = spawned {
        log::error!("local submission: cannot start its thread: {e}");
    }
}

/// Takes the exclusive lock on `<data_dir>/pimail.pid` (an OFD lock: the
/// kernel drops it when we exit, however we exit, so a crash leaves no
/// stale lock) and writes our pid into it for the message a second start
/// prints.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(PID_FILE);
    let io_err = |e| StartError::DataDir(path.clone(), e);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(io_err)?;
    if !crate::util::sys::try_write_lock(&f).map_err(io_err)? {
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        return Err(StartError::AlreadyRunning(
            dir.to_path_buf(),
            text.trim().parse().ok(),
        ));
    }
    f.set_len(0).map_err(io_err)?;
    f.rewind().map_err(io_err)?;
    writeln!(f, "{}", std::process::id()).map_err(io_err)?;
    Ok(f)
}

/// Binds `addr`; `None` (with a warning) for an IPv6 address on a machine
/// with IPv6 turned off, so that SPEC's `["0.0.0.0:25", "[::]:25"]` still
/// starts there (`check-config` warns about it too).
fn bind(addr: SocketAddr) -> Result<Option<TcpListener>, StartError> {
    match listen::bind(addr) {
        Ok(l) => Ok(Some(l)),
        Err(listen::BindError(a, e))
            if a.is_ipv6()
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                )
                && !crate::config::ipv6_available() =>
        {
            log::warn!("not listening on {a}: IPv6 is off on this machine ({e})");
            Ok(None)
        }
        Err(listen::BindError(a, e)) => Err(StartError::Bind(a, e)),
    }
}

/// What a listener hands its connections to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Smtp(Service),
    Pop3 { implicit_tls: bool },
    Imap { implicit_tls: bool },
}

impl Kind {
    fn class(self) -> Class {
        match self {
            Kind::Smtp(Service::Smtp) => Class::Smtp,
            Kind::Smtp(_) => Class::Submission,
            Kind::Pop3 { .. } => Class::Pop3,
            Kind::Imap { .. } => Class::Imap,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Smtp(s) => s.name(),
            Kind::Pop3 {
                implicit_tls: false,
            } => "pop3",
            Kind::Pop3 { implicit_tls: true } => "pop3s",
            Kind::Imap {
                implicit_tls: false,
            } => "imap",
            Kind::Imap { implicit_tls: true } => "imaps",
        }
    }

    fn implicit_tls(self) -> bool {
        match self {
            Kind::Smtp(s) => s.implicit_tls(),
            Kind::Pop3 { implicit_tls } | Kind::Imap { implicit_tls } => implicit_tls,
        }
    }
}

/// The protocol contexts the accept loops start sessions with.
struct Contexts {
    shared: Rc<Shared>,
    smtp: Rc<SmtpContext>,
    pop3: Rc<Pop3Context>,
    imap: Rc<crate::read::imap::conn::ImapContext>,
}

/// How long a proxy may take to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of one proxy listener still waiting for their header
/// (they hold no slot yet: the slot is taken with the real address).
const MAX_PENDING_PROXY: usize = 256;

async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    listener: TcpListener,
    kind: Kind,
    proxy: bool,
    cx: Rc<Contexts>,
) {
    let pending = Rc::new(Cell::new(0usize));
    while let Some((mut stream, peer)) = accept_next(&listener, &cx.shared).await {
        if !proxy {
            admit(&ex, stream, peer, kind, &cx);
            continue;
        }
        if pending.get() >= MAX_PENDING_PROXY {
            log::warn!(
                "{} {peer}: {MAX_PENDING_PROXY} connections already wait for their PROXY header, closing",
                kind.name()
            );
            continue;
        }
        pending.set(pending.get() + 1);
        let (ex2, cx, pending) = (ex.clone(), cx.clone(), pending.clone());
        ex.spawn(async move {
            let header = timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut stream)).await;
            pending.set(pending.get() - 1);
            match header {
                Some(Ok(Header::Proxied(real))) => {
                    log::debug!("{} {peer}: proxied for {real}", kind.name());
                    admit(&ex2, stream, real, kind, &cx);
                }
                Some(Ok(Header::Local)) => admit(&ex2, stream, peer, kind, &cx),
                Some(Err(e)) => log::info!("{} {peer}: {e}, closing", kind.name()),
                None => log::info!("{} {peer}: no PROXY header in time, closing", kind.name()),
            }
        })
        .detach();
    }
}

/// Reads the PROXY header, exactly (what follows it stays in the socket).
async fn read_proxy_header(stream: &mut TcpStream) -> Result<Header, String> {
    let mut buf = Vec::with_capacity(64);
    // Each round reads at least one byte of a header of bounded length.
    for _ in 0..=proxy::MAX_V2 {
        match proxy::parse(&buf).map_err(|e| e.to_string())? {
            proxy::Parse::Done(h) => return Ok(h),
            proxy::Parse::Need(n) => {
                let at = buf.len();
                buf.resize(at + n, 0);
                stream
                    .read_exact(&mut buf[at..])
                    .await
                    .map_err(|e| format!("reading the PROXY header: {e}"))?;
            }
        }
    }
    Err("PROXY header too long".into())
}

/// Takes a slot for `peer` (the client's real address) and starts its
/// session, or refuses it.
fn admit(
    ex: &Rc<LocalExecutor<'static>>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    cx: &Rc<Contexts>,
) {
    match cx.shared.try_admit(kind.class(), peer.ip()) {
        Ok(guard) => {
            let cx = cx.clone();
            ex.spawn(async move {
                match kind {
                    Kind::Smtp(service) => {
                        crate::receive::smtp::conn::serve(
                            stream,
                            peer,
                            service.port(),
                            service.implicit_tls(),
                            cx.smtp.clone(),
                            cx.shared.clone(),
                            &guard,
                        )
                        .await
                    }
                    Kind::Pop3 { implicit_tls } => {
                        crate::read::pop3::conn::serve(
                            stream,
                            peer,
                            implicit_tls,
                            cx.pop3.clone(),
                            cx.shared.clone(),
                            &guard,
                        )
                        .await
                    }
                    Kind::Imap { implicit_tls } => {
                        crate::read::imap::conn::serve(
                            stream,
                            peer,
                            implicit_tls,
                            cx.imap.clone(),
                            cx.shared.clone(),
                            &guard,
                        )
                        .await
                    }
                }
                drop(guard);
            })
            .detach();
        }
        Err(why) => {
            log::info!("{} {peer}: refused, {why}", kind.name());
            // On an implicit-TLS port a plain-text reply would be noise to
            // the client: just close.
            if kind.implicit_tls() {
                return;
            }
            let line = match kind {
                Kind::Smtp(_) => format!(
                    "421 4.7.0 {} Service not available: {why}, try again later\r\n",
                    cx.shared.hostname
                ),
                Kind::Pop3 { .. } => format!("-ERR [SYS/TEMP] {why}, try again later\r\n"),
                Kind::Imap { .. } => format!("* BYE [UNAVAILABLE] {why}, try again later\r\n"),
            };
            ex.spawn(refuse(stream, line)).detach();
        }
    }
}

async fn refuse(mut stream: TcpStream, line: String) {
    let _ = timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
}
