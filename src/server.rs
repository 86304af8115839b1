//! Listeners, connection limits and shutdown.
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

use crate::address::LocalPolicy;
use crate::auth::Logins;
use crate::config::{Config, Limits};
use crate::mbox::MboxWriter;
use crate::pop3::conn::Pop3Context;
use crate::smtp::conn::SmtpContext;
use crate::smtp::session::{Port, Settings};
use crate::tls::{Certificate, TlsError};
use async_net::{TcpListener, TcpStream};
use smol::future::FutureExt;
use smol::io::AsyncWriteExt;
use smol::LocalExecutor;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Runs `f`, or gives `None` after `d`.
pub async fn timeout<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    async { Some(f.await) }
        .or(async {
            smol::Timer::after(d).await;
            None
        })
        .await
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A message id: 8 hex digits of time, 8 of a counter seeded randomly at
/// start. Unique in this process, sortable by time, safe in file names.
pub fn new_id() -> String {
    if COUNTER.load(Ordering::Relaxed) == 0 {
        let mut seed = [0u8; 4];
        let _ = getrandom::getrandom(&mut seed);
        let _ = COUNTER.compare_exchange(
            0,
            u32::from_le_bytes(seed) | 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:08X}{:08X}", crate::timefmt::unix_now() as u32, n)
}

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

/// State shared by all connections of the server.
pub struct Shared {
    pub hostname: String,
    pub limits: Limits,
    /// Login throttling and password-check slots, for every service with
    /// logins.
    pub logins: Logins,
    connections: Cell<usize>,
    per_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Sessions in the middle of receiving or storing a message.
    busy: Cell<usize>,
    stopping: Cell<bool>,
    /// Closed (sender dropped) to tell every accept loop to stop.
    stop_rx: smol::channel::Receiver<()>,
    stop_tx: RefCell<Option<smol::channel::Sender<()>>>,
}

impl Shared {
    pub fn new(hostname: String, limits: Limits) -> Self {
        let (stop_tx, stop_rx) = smol::channel::bounded(1);
        Shared {
            hostname,
            limits,
            logins: Logins::default(),
            connections: Cell::new(0),
            per_ip: RefCell::new(HashMap::new()),
            busy: Cell::new(0),
            stopping: Cell::new(false),
            stop_rx,
            stop_tx: RefCell::new(Some(stop_tx)),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Marks a message in flight for as long as the guard lives, so that
    /// shutdown waits for it.
    pub fn busy(&self) -> BusyGuard<'_> {
        self.busy.set(self.busy.get() + 1);
        BusyGuard(self)
    }

    fn try_admit(self: &Rc<Self>, ip: IpAddr) -> Result<ConnGuard, &'static str> {
        if self.connections.get() >= self.limits.max_connections {
            return Err("too many connections");
        }
        let mut per_ip = self.per_ip.borrow_mut();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_ip {
            return Err("too many connections from your address");
        }
        *n += 1;
        self.connections.set(self.connections.get() + 1);
        Ok(ConnGuard {
            shared: self.clone(),
            ip,
        })
    }
}

pub struct BusyGuard<'a>(&'a Shared);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
    }
}

/// Releases a connection slot when the connection ends.
struct ConnGuard {
    shared: Rc<Shared>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let s = &self.shared;
        s.connections.set(s.connections.get() - 1);
        let mut per_ip = s.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
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
        crate::delivery::Worker,
        Option<async_net::unix::UnixDatagram>,
    )>,
}

#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, std::io::Error),
    DataDir(std::path::PathBuf, std::io::Error),
    Mbox(crate::mbox::MboxError),
    Outbound(String),
    /// `[tls]` cert or key unusable.
    Tls(TlsError),
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
        }
    }
}

impl Server {
    /// Prepares directories, repairs the mbox, and binds every listener, so
    /// that all start-up errors show before anything is served.
    pub fn start(config: &Config) -> Result<Server, StartError> {
        let spool_dir = config.data_dir.join("spool");
        crate::paths::private_dir(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        crate::paths::private_dir(&spool_dir)
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
            crate::delivery::start(config, mbox.clone()).map_err(StartError::Outbound)?;
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
                let l = bind(*a)?;
                listeners.push((l, service));
            }
        }
        // A POP3 deletion a crash interrupted is finished before any
        // append can land on the half-rewritten mbox.
        let data_dir = config.data_dir.clone();
        let recovered =
            smol::block_on(mbox.exclusive(move |l| Ok(crate::maildrop::recover(l, &data_dir))));
        if let Ok(Err(e)) | Err(e) = recovered.map_err(crate::maildrop::MaildropError::from) {
            log::error!("cannot finish an interrupted POP3 deletion: {e}");
        }
        let mut pop3_listeners = Vec::new();
        for a in &config.listen.pop3 {
            pop3_listeners.push((bind(*a)?, false));
        }
        for a in &config.listen.pop3s {
            pop3_listeners.push((bind(*a)?, true));
        }
        let pop3 = Rc::new(Pop3Context {
            settings: Rc::new(crate::pop3::session::Settings {
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
                    .then(|| crate::smtp::conn::AuthChecks {
                        resolver: crate::dns::Resolver::new(&config.outbound.dns),
                        dmarc_reject: config.inbound.dmarc_reject,
                    }),
            }),
            listeners,
            outbound: Some((worker, control)),
        })
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
        shared.stopping.set(true);
        shared.stop_tx.borrow_mut().take();
        let deadline = Instant::now() + grace;
        while shared.busy.get() > 0 && Instant::now() < deadline {
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        if shared.busy.get() > 0 {
            log::warn!(
                "stopping with {} message(s) still being received",
                shared.busy.get()
            );
        }
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    // SO_REUSEADDR (std sets it on Unix) so a restart does not wait for
    // TIME_WAIT. IPv6 listeners are IPv6-only: list 0.0.0.0 for IPv4.
    let l = match addr {
        SocketAddr::V4(_) => std::net::TcpListener::bind(addr),
        SocketAddr::V6(v6) => crate::sys::bind_v6only(v6),
    }
    .map_err(|e| StartError::Bind(addr, e))?;
    TcpListener::try_from(l).map_err(|e| StartError::Bind(addr, e))
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
                    crate::smtp::conn::serve(
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

/// The next connection, or `None` once the server is stopping.
async fn accept_next(listener: &TcpListener, shared: &Shared) -> Option<(TcpStream, SocketAddr)> {
    loop {
        if shared.stopping() {
            return None;
        }
        let stopped = async {
            let _ = shared.stop_rx.recv().await;
            None
        };
        match async { Some(listener.accept().await) }.or(stopped).await? {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::error!("accept: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
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
                    crate::pop3::conn::serve(stream, peer, implicit_tls, pop3, shared).await;
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
