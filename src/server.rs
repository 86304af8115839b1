//! The top of the tree: starts every stage and wires them together.
//! Binds the listeners, repairs the mbox, starts the outbound worker, runs
//! the accept loops that hand each connection to its protocol driver, and
//! shuts down.
//!
//! Everything runs on one thread (a `smol::LocalExecutor`): a session costs
//! a few KiB, not a thread, so idle or slow clients are cheap and never
//! block others. Blocking file work (mbox appends and their fsyncs) runs on
//! the mbox writer thread. `max_connections` and `max_connections_per_ip`
//! are enforced at accept with `421 4.7.0`.
//!
//! The TLS certificate is loaded here at start (a bad one stops the start
//! with an error naming the file) and shared by every listener;
//! [`Server::certificate`] gives the handle that `SIGHUP` reloads.

use crate::config::Config;
use crate::mail::address::LocalPolicy;
use crate::net::listen::{self, accept_next, Shared};
use crate::net::tls::{Certificate, TlsError};
use crate::read::pop3::conn::Pop3Context;
use crate::receive::smtp::conn::SmtpContext;
use crate::receive::smtp::session::{Port, Settings};
use crate::store::mbox::MboxWriter;
use crate::util::rt::timeout;
use async_net::{TcpListener, TcpStream};
use smol::io::AsyncWriteExt;
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
    listeners: Vec<(TcpListener, Service)>,
    pub pop3: Rc<Pop3Context>,
    /// With "implicit TLS" (pop3s, 995).
    pop3_listeners: Vec<(TcpListener, bool)>,
    /// The outbound delivery worker and its control socket.
    outbound: Option<(
        crate::send::delivery::Worker,
        Option<async_net::unix::UnixDatagram>,
    )>,
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
        crate::util::paths::private_dir(&spool_dir)
            .map_err(|e| StartError::DataDir(spool_dir.clone(), e))?;
        // Spool files of a crashed run were never acknowledged.
        if let Ok(rd) = std::fs::read_dir(&spool_dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let certificate = match &config.tls {
            Some(t) => Some(Rc::new(
                Certificate::load(&t.cert, &t.key).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        let mbox =
            MboxWriter::start(&config.user.mbox, &config.data_dir).map_err(StartError::Mbox)?;
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
                    listeners.push((l, service));
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
        let mut pop3_listeners = Vec::new();
        for a in &config.listen.pop3 {
            pop3_listeners.extend(bind(*a)?.map(|l| (l, false)));
        }
        for a in &config.listen.pop3s {
            pop3_listeners.extend(bind(*a)?.map(|l| (l, true)));
        }
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
            pop3,
            pop3_listeners,
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
            .filter_map(|(l, p)| l.local_addr().ok().map(|a| (a, *p)))
            .collect()
    }

    /// The POP3 addresses actually bound, with their kind ("pop3" or
    /// "pop3s", as in `[listen]`).
    pub fn pop3_addrs(&self) -> Vec<(SocketAddr, &'static str)> {
        self.pop3_listeners
            .iter()
            .filter_map(|(l, implicit)| {
                let kind = if *implicit { "pop3s" } else { "pop3" };
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
            outbound,
            // Held (not `_`, which would drop it) until the server is done.
            _lock: _held,
        } = self;
        if let Some((worker, control)) = outbound {
            let sh = shared.clone();
            ex.spawn(worker.run(ex.clone(), control, move || sh.stopping()))
                .detach();
        }
        for (listener, implicit_tls) in pop3_listeners {
            let shared = shared.clone();
            let pop3 = pop3.clone();
            ex.spawn(pop3_accept_loop(
                ex.clone(),
                listener,
                implicit_tls,
                shared,
                pop3,
            ))
            .detach();
        }
        for (listener, service) in listeners {
            let shared = shared.clone();
            let smtp = smtp.clone();
            ex.spawn(accept_loop(ex.clone(), listener, service, shared, smtp))
                .detach();
        }
        stop.await;
        shared.stop(grace).await;
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

async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    listener: TcpListener,
    service: Service,
    shared: Rc<Shared>,
    smtp: Rc<SmtpContext>,
) {
    while let Some((stream, peer)) = accept_next(&listener, &shared).await {
        match shared.try_admit(peer.ip()) {
            Ok(guard) => {
                let shared = shared.clone();
                let smtp = smtp.clone();
                ex.spawn(async move {
                    crate::receive::smtp::conn::serve(
                        stream,
                        peer,
                        service.port(),
                        service.implicit_tls(),
                        smtp,
                        shared,
                    )
                    .await;
                    drop(guard);
                })
                .detach();
            }
            Err(why) => {
                log::info!("{} {peer}: refused, {why}", service.name());
                // On an implicit-TLS port a plain-text reply would be
                // noise to the client: just close.
                if !service.implicit_tls() {
                    let host = shared.hostname.clone();
                    ex.spawn(refuse(stream, host, why)).detach();
                }
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, host: String, why: &'static str) {
    let line = format!("421 4.7.0 {host} Service not available: {why}, try again later\r\n");
    let _ = timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
}

async fn pop3_accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    listener: TcpListener,
    implicit_tls: bool,
    shared: Rc<Shared>,
    pop3: Rc<Pop3Context>,
) {
    while let Some((mut stream, peer)) = accept_next(&listener, &shared).await {
        match shared.try_admit(peer.ip()) {
            Ok(guard) => {
                let shared = shared.clone();
                let pop3 = pop3.clone();
                ex.spawn(async move {
                    crate::read::pop3::conn::serve(stream, peer, implicit_tls, pop3, shared).await;
                    drop(guard);
                })
                .detach();
            }
            Err(why) => {
                log::info!("pop3 {peer}: refused, {why}");
                if implicit_tls {
                    // A plain-text reply would be noise to a TLS client.
                    continue;
                }
                ex.spawn(async move {
                    let line = format!("-ERR [SYS/TEMP] {why}, try again later\r\n");
                    let _ =
                        timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
                })
                .detach();
            }
        }
    }
}
