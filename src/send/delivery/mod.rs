//! Outbound delivery: the worker that takes due messages from the queue,
//! finds where they go (RFC 5321 5.1: MX in preference order, random among
//! equal preference, implicit MX, RFC 7505 null MX; or the relay), hands
//! them over by SMTP, retries temporary failures on the configured schedule
//! and sends RFC 3464 bounces for permanent ones.
//!
//! One worker task runs on the server's executor. It sleeps until the next
//! attempt is due or it is woken: by the SMTP side after queuing a message,
//! or through the control socket `<data_dir>/control.sock` by `pimail
//! sendmail` (a new message) and `pimail queue flush` (retry everything
//! now). Recipients are grouped by domain, and all messages due for one
//! domain go over one connection where the server allows it.
//!
//! Local recipients queued by `sendmail` are appended to the mbox from the
//! queue file. Every attempt's result is logged, one line per recipient.

pub mod bounce;
pub mod client;
pub mod conn;
pub mod fallback;
pub mod family;
pub mod mta_sts;
pub mod tlsrpt;

use crate::config::Config;
use crate::mail::address::{Destination, LocalPolicy};
use crate::net::dns::{DnsError, Mx, Resolver};
use crate::send::queue::{self, Entry, Queue, State};
use crate::store::mbox::{Delivery, MboxWriter};
use bounce::{Failure, Report};
use client::{MailParams, ServerReply};
use conn::{Conn, ConnError, Security};
use rustls::client::WebPkiServerVerifier;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The control socket's name in data_dir.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Environment variable naming extra trusted CA certificates (PEM) for the
/// relay: for a relay with a private CA, and for the tests.
pub const RELAY_CA_ENV: &str = "PIMAIL_RELAY_CA_FILE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A new message was queued: deliver what is due.
    New,
    /// `queue flush`: everything pending is due now.
    Flush,
}

/// Tells the running server about the queue from another process
/// (`sendmail`, `queue flush`). `Err`: no server is listening.
pub fn poke(data_dir: &Path, what: Wake) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let msg: &[u8] = match what {
        Wake::New => b"new",
        Wake::Flush => b"flush",
    };
    sock.send_to(msg, data_dir.join(CONTROL_SOCKET)).map(|_| ())
}

/// The handle the SMTP side uses: where to queue, and how to wake the
/// worker.
#[derive(Clone)]
pub struct Outbox {
    pub queue: Queue,
    wake: smol::channel::Sender<Wake>,
}

impl Outbox {
    pub fn wake(&self) {
        let _ = self.wake.try_send(Wake::New);
    }
}

/// Where outbound mail goes.
#[derive(Clone)]
enum Route {
    Mx,
    Relay { host: String, port: u16 },
}

/// A per-recipient result of one attempt.
#[derive(Debug, Clone)]
enum Outcome {
    Delivered(String),
    Temporary(String),
    Permanent { status: String, diagnostic: String },
}

impl Outcome {
    fn from_reply(r: &ServerReply) -> Outcome {
        let line = r.one_line();
        if r.ok() {
            Outcome::Delivered(line)
        } else if r.permanent() {
            Outcome::Permanent {
                status: bounce::status_of(r.code, &line),
                diagnostic: line,
            }
        } else {
            Outcome::Temporary(line)
        }
    }
}

/// A domain (or "" for the relay) and the messages with recipients
/// there: (entry index, recipient indexes).
type Group = (String, Vec<(usize, Vec<usize>)>);

/// How many domains are served at once.
const PARALLEL_DOMAINS: usize = 8;

/// One recipient's result: (entry index, recipient index, outcome, where).
type Result1 = (usize, usize, Outcome, Via);

/// What a group's delivery needs of one message (a snapshot, so that
/// groups can run in parallel while the entries stay with the worker).
struct MsgJob {
    ei: usize,
    /// (recipient index, address)
    rcpts: Vec<(usize, String)>,
    from: String,
    params: MailParams,
    prefix: Vec<u8>,
    path: PathBuf,
}

/// Which host and address an attempt talked to, for logs and bounces.
#[derive(Debug, Clone, Default)]
struct Via {
    host: Option<String>,
    ip: Option<IpAddr>,
    tls: Option<String>,
}

pub struct Worker {
    queue: Queue,
    resolver: Resolver,
    retry: Vec<Duration>,
    bounce_after: Duration,
    warn_after: Option<Duration>,
    hostname: String,
    mbox: MboxWriter,
    policy: LocalPolicy,
    spool_dir: PathBuf,
    data_dir: PathBuf,
    route: Route,
    /// The relay's security when relaying, else opportunistic.
    security: Security,
    verifier: Arc<WebPkiServerVerifier>,
    connect_timeout: Duration,
    mx_port: u16,
    /// `relay_fallback`: direct first, the relay while port 25 is blocked.
    fallback: Option<RefCell<fallback::Fallback>>,
    /// The address families direct delivery uses.
    family: RefCell<FamilyState>,
    /// MTA-STS (None: `mta_sts = false`).
    sts: Option<mta_sts::Sts>,
    rx: smol::channel::Receiver<Wake>,
    wake_tx: smol::channel::Sender<Wake>,
    /// Messages tried in this round are not tried again before this time,
    /// even if saving their new state failed (no busy loop on a full disk).
    not_before: RefCell<HashMap<String, u64>>,
    /// Messages a delivery round is working on: the next scan leaves them
    /// alone, so that new mail goes out while a slow server holds an old
    /// round (RFC 5321 timeouts are minutes long).
    in_flight: RefCell<HashSet<String>>,
    /// Connections (domain groups) at once, over all rounds.
    slots: smol::lock::Semaphore,
    /// DKIM keys (`<data_dir>/dkim/*.pem`) and the domains we sign for.
    dkim_keys: DkimKeys,
    domains: Arc<Vec<String>>,
    /// A family check is running (one at a time).
    checking: Cell<bool>,
    /// Status rewrites one at a time: two domain groups fetching policies
    /// at once would otherwise each list the cache and the one that listed
    /// first could write last, hiding the other's policy from `doctor`.
    status_lock: smol::lock::Mutex<()>,
}

/// What the worker knows of its source addresses (see `family`).
struct FamilyState {
    choice: crate::config::IpFamily,
    recheck: u64,
    probes: Vec<SocketAddr>,
    check_private: bool,
    allowed: family::Allowed,
    v4: family::Source,
    v6: family::Source,
    next_check: u64,
    /// The families last logged, so that each change is logged once.
    logged: Option<family::Allowed>,
}

/// Sets up the queue and the worker; the worker runs when spawned.
pub fn start(config: &Config, mbox: MboxWriter) -> Result<(Outbox, Worker), String> {
    let queue = Queue::new(&config.data_dir);
    queue.prepare().map_err(|e| e.to_string())?;
    let (tx, rx) = smol::channel::bounded(64);
    let o = &config.outbound;
    let extra_ca = std::env::var_os(RELAY_CA_ENV).map(PathBuf::from);
    let verifier = conn::verifier(extra_ca.as_deref())?;
    let (route, security) = match &o.relay {
        None => (Route::Mx, Security::Opportunistic),
        Some(hp) => {
            let (host, port) = hp
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
                .ok_or_else(|| format!("outbound.relay {hp:?}: expected host:port"))?;
            if o.relay_user.is_some() != o.relay_password_file.is_some() {
                return Err(
                    "outbound.relay_user and outbound.relay_password_file go together: set both (AUTH) or neither"
                        .into(),
                );
            }
            let password = match &o.relay_password_file {
                None => None,
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .map_err(|e| format!("outbound.relay_password_file {}: {e}", p.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
            };
            (
                Route::Relay { host, port },
                Security::Relay {
                    implicit_tls: port == 465,
                    verifier: verifier.clone(),
                    user: o.relay_user.clone(),
                    password,
                },
            )
        }
    };
    let key_dir = crate::trust::dkim::key_dir(&config.data_dir);
    // A key file that does not load stops the start: silently sending
    // unsigned mail would be worse.
    let dkim_keys = crate::trust::dkim::load_keys(&key_dir).map_err(|e| e.to_string())?;
    if dkim_keys.is_empty() {
        log::info!(
            "dkim: no keys in {}: outbound mail is not signed (run `pimail dkim generate`)",
            key_dir.display()
        );
    } else {
        let sels: Vec<&str> = dkim_keys.iter().map(|k| k.selector.as_str()).collect();
        log::info!(
            "dkim: signing mail from {} with selectors {}",
            config.domains.join(", "),
            sels.join(", ")
        );
    }
    let outbox = Outbox {
        queue: queue.clone(),
        wake: tx.clone(),
    };
    let fallback = (o.relay_fallback && o.relay.is_some())
        .then(|| RefCell::new(fallback::Fallback::new(o.relay_probe.as_secs())));
    let sts = o
        .mta_sts
        .then(|| mta_sts::Sts::new(&config.data_dir, verifier.clone()));
    let (probes, check_private) = family::probe_targets();
    let worker = Worker {
        connect_timeout: o.connect_timeout,
        mx_port: o.mx_port,
        fallback,
        family: RefCell::new(FamilyState {
            choice: o.ip_family,
            recheck: o.ip_family_recheck.as_secs().max(1),
            probes,
            check_private,
            allowed: family::allowed(
                o.ip_family,
                &family::Source::default(),
                &family::Source::default(),
            ),
            v4: family::Source::default(),
            v6: family::Source::default(),
            next_check: 0,
            logged: None,
        }),
        checking: Cell::new(false),
        status_lock: smol::lock::Mutex::new(()),
        sts,
        queue,
        resolver: Resolver::new(&o.dns),
        retry: o.retry.clone(),
        bounce_after: o.bounce_after,
        warn_after: o.warn_after,
        hostname: config.hostname.clone(),
        mbox,
        policy: LocalPolicy::from_config(config),
        spool_dir: config.data_dir.join("spool"),
        data_dir: config.data_dir.clone(),
        route,
        security,
        verifier,
        rx,
        wake_tx: tx,
        not_before: RefCell::new(HashMap::new()),
        in_flight: RefCell::new(HashSet::new()),
        slots: smol::lock::Semaphore::new(PARALLEL_DOMAINS),
        dkim_keys: DkimKeys {
            dir: key_dir,
            keys: Rc::new(std::cell::RefCell::new(Arc::new(dkim_keys))),
        },
        domains: Arc::new(config.domains.clone()),
    };
    Ok((outbox, worker))
}

/// The DKIM keys the worker signs with, shared with the `SIGHUP` handler
/// so that keys made by `pimail dkim generate` take effect on `reload`.
#[derive(Clone)]
pub struct DkimKeys {
    dir: PathBuf,
    keys: Rc<std::cell::RefCell<Arc<Vec<crate::trust::dkim::SigningKey>>>>,
}

impl DkimKeys {
    fn current(&self) -> Arc<Vec<crate::trust::dkim::SigningKey>> {
        self.keys.borrow().clone()
    }

    /// Loads `<data_dir>/dkim/*.pem` again; on an error the old keys stay
    /// (as for a bad certificate). Returns the selectors now in use.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let k = crate::trust::dkim::load_keys(&self.dir).map_err(|e| e.to_string())?;
        let sels = k.iter().map(|k| k.selector.clone()).collect();
        *self.keys.borrow_mut() = Arc::new(k);
        Ok(sels)
    }
}

impl Worker {
    /// The handle `SIGHUP` reloads the DKIM keys through.
    pub fn dkim_keys(&self) -> DkimKeys {
        self.dkim_keys.clone()
    }
}

/// Longest sleep between queue scans when nothing is due (a safety net;
/// new messages and flushes wake the worker at once).
const MAX_SLEEP: u64 = 600;

impl Worker {
    /// Binds the control socket (replacing a stale one).
    pub fn bind_control(&self) -> Result<async_net::unix::UnixDatagram, String> {
        let path = self.data_dir.join(CONTROL_SOCKET);
        let _ = std::fs::remove_file(&path);
        let sock = async_net::unix::UnixDatagram::bind(&path)
            .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        Ok(sock)
    }

    /// Delivers until `stopping` says so. Each scan starts a delivery
    /// round for the messages that are due (as a task on `ex`), and goes
    /// back to waiting; a round that ends wakes it for the next scan.
    pub async fn run(
        self,
        ex: Rc<smol::LocalExecutor<'static>>,
        control: Option<async_net::unix::UnixDatagram>,
        stopping: impl Fn() -> bool,
    ) {
        if let Match::Relay(h) = self.describe() {
            if self.fallback.is_some() {
                log::info!(
                    "outbound: delivering directly; {h} is the fallback while port 25 is blocked"
                );
            } else {
                log::info!("outbound: relaying all mail through {h}");
            }
        }
        let this = Rc::new(self);
        this.write_status().await;
        let mut flush = false;
        loop {
            if stopping() {
                return;
            }
            // Before the scan, so that the first round already uses the
            // right families (bounded by the DNS timeouts).
            this.check_family(crate::util::timefmt::unix_now()).await;
            let q = this.queue.clone();
            let entries = match smol::unblock(move || q.list()).await {
                Ok(e) => e,
                Err(e) => {
                    log::error!("queue: {e}");
                    Vec::new()
                }
            };
            let now = crate::util::timefmt::unix_now();
            this.not_before.borrow_mut().retain(|_, t| *t > now);
            let mut due = Vec::new();
            let mut next_wake = now + MAX_SLEEP;
            for mut e in entries {
                if this.in_flight.borrow().contains(&e.id) {
                    // Its round wakes us when it ends.
                    continue;
                }
                if this.not_before.borrow().contains_key(&e.id) {
                    next_wake = next_wake.min(now + 1);
                    continue;
                }
                if flush {
                    for r in e.rcpts.iter_mut().filter(|r| r.state == State::Pending) {
                        r.next = now;
                    }
                }
                match e.next_attempt() {
                    Some(t) if t <= now && !this.queue.msg_path(&e.id).exists() => {
                        // Deleted by `queue delete` meanwhile, or damaged by
                        // hand: nothing to send.
                        log::error!("queue id={}: message body missing, dropping it", e.id);
                        let _ = this.queue.remove(&e.id);
                    }
                    Some(t) if t <= now => due.push(e),
                    Some(t) => next_wake = next_wake.min(t),
                    None => {}
                }
            }
            flush = false;
            if let Some(f) = &this.fallback {
                let probe = f.borrow_mut().probe_due(now);
                if let Some(addr) = probe {
                    let w = this.clone();
                    ex.spawn(async move { w.probe_direct(addr).await }).detach();
                }
                if let Some(t) = f.borrow().next_probe() {
                    next_wake = next_wake.min(t.max(now + 1));
                }
            }
            {
                let f = this.family.borrow();
                if f.choice == crate::config::IpFamily::Auto {
                    next_wake = next_wake.min(f.next_check.max(now + 1));
                }
            }
            if !due.is_empty() {
                let ids: Vec<String> = due.iter().map(|e| e.id.clone()).collect();
                for id in &ids {
                    // Not again within the second, even if saving its new
                    // state failed (no busy loop on a full disk).
                    this.not_before.borrow_mut().insert(id.clone(), now + 1);
                    this.in_flight.borrow_mut().insert(id.clone());
                }
                let w = this.clone();
                ex.spawn(async move {
                    w.process(due).await;
                    let mut f = w.in_flight.borrow_mut();
                    for id in &ids {
                        f.remove(id);
                    }
                    let _ = w.wake_tx.try_send(Wake::New);
                })
                .detach();
            }
            let sleep = Duration::from_secs(next_wake.saturating_sub(now).max(1));
            let woke = crate::util::rt::timeout(sleep, this.wait(control.as_ref())).await;
            if woke == Some(Wake::Flush) {
                log::info!("queue flush: retrying every queued message now");
                flush = true;
                this.not_before.borrow_mut().clear();
            }
            // Collect further wake-ups that came meanwhile.
            while let Ok(w) = this.rx.try_recv() {
                if w == Wake::Flush {
                    flush = true;
                    this.not_before.borrow_mut().clear();
                }
            }
        }
    }

    /// The next wake-up, from the SMTP side or the control socket.
    async fn wait(&self, control: Option<&async_net::unix::UnixDatagram>) -> Wake {
        use smol::future::FutureExt;
        let chan = async {
            match self.rx.recv().await {
                Ok(w) => w,
                // Cannot happen (we hold a sender); sleep like a timeout.
                Err(_) => smol::future::pending().await,
            }
        };
        let Some(sock) = control else {
            return chan.await;
        };
        let sock_wake = async {
            let mut buf = [0u8; 64];
            match sock.recv(&mut buf).await {
                Ok(n) if &buf[..n] == b"flush" => Wake::Flush,
                Ok(_) => Wake::New,
                Err(e) => {
                    log::error!("control socket: {e}");
                    smol::Timer::after(Duration::from_secs(1)).await;
                    Wake::New
                }
            }
        };
        chan.or(sock_wake).await
    }

    /// Whether mail goes through the relay now.
    fn relaying(&self) -> bool {
        match self.route {
            Route::Relay { .. } => self
                .fallback
                .as_ref()
                .map_or(true, |f| f.borrow().route() == fallback::Route::Relay),
            Route::Mx => false,
        }
    }

    /// `auto`: finds the source addresses and checks their FCrDNS again
    /// when one changed or `ip_family_recheck` has passed; logs a change
    /// of the families used once.
    async fn check_family(&self, now: u64) {
        if self.checking.get() {
            return;
        }
        let (probes, due, old4, old6, check_private) = {
            let f = self.family.borrow();
            if f.choice != crate::config::IpFamily::Auto {
                return;
            }
            let p = f.probes.clone();
            (p, now >= f.next_check, f.v4.ip, f.v6.ip, f.check_private)
        };
        // UDP connects: no packet is sent, the kernel only picks a route.
        let (mut ip4, mut ip6) = (None, None);
        for t in &probes {
            match family::source_addr(*t) {
                Some(ip) if ip.is_ipv4() => ip4 = ip4.or(Some(ip)),
                Some(ip) => ip6 = ip6.or(Some(ip)),
                None => {}
            }
        }
        if !due && ip4 == old4 && ip6 == old6 {
            return;
        }
        self.checking.set(true);
        let r = &self.resolver;
        // Bounded: a dead nameserver must not hold the queue scan long;
        // unknown keeps the last verdict.
        let checked = crate::util::rt::timeout(Duration::from_secs(10), async {
            let v4 = family::check(r, ip4, check_private).await;
            let v6 = family::check(r, ip6, check_private).await;
            (v4, v6)
        })
        .await;
        let unknown = |ip| family::Source {
            ip,
            ..family::Source::default()
        };
        let (v4, v6) = checked.unwrap_or_else(|| (unknown(ip4), unknown(ip6)));
        self.checking.set(false);
        let changed = {
            let mut f = self.family.borrow_mut();
            f.next_check = now + f.recheck;
            // A DNS failure keeps the last verdict for the same address.
            if !(v4.fcrdns.is_none() && v4.ip == f.v4.ip) {
                f.v4 = v4;
            }
            if !(v6.fcrdns.is_none() && v6.ip == f.v6.ip) {
                f.v6 = v6;
            }
            f.allowed = family::allowed(f.choice, &f.v4, &f.v6);
            if f.logged != Some(f.allowed) {
                log::info!(
                    "outbound: direct delivery uses {}",
                    family::describe(f.allowed, &f.v4, &f.v6)
                );
                f.logged = Some(f.allowed);
                true
            } else {
                false
            }
        };
        if changed {
            self.write_status().await;
        }
    }

    /// While on the relay: is port 25 open again? A TCP connection to an
    /// address that timed out before (closed at once).
    async fn probe_direct(&self, addr: SocketAddr) {
        let open =
            crate::util::rt::timeout(self.connect_timeout, async_net::TcpStream::connect(addr))
                .await
                .is_some_and(|r| r.is_ok());
        let now = crate::util::timefmt::unix_now();
        let Some(f) = &self.fallback else {
            return;
        };
        let switched = f.borrow_mut().probe_result(open, now);
        if switched == Some(fallback::Route::Direct) {
            log::info!("outbound: port 25 open again ({addr} answered): delivering directly");
            self.write_status().await;
            let _ = self.wake_tx.try_send(Wake::New);
        } else {
            log::info!(
                "outbound: direct route probe to {addr}: still blocked; staying on the relay"
            );
        }
    }

    /// Records a direct connection's outcome for the relay fallback.
    async fn note_direct(&self, domain: &str, addr: SocketAddr, err: Option<&ConnError>) {
        let Some(f) = &self.fallback else {
            return;
        };
        let timed_out = matches!(err, Some(ConnError::Network(s)) if s == conn::CONNECT_TIMEOUT);
        let now = crate::util::timefmt::unix_now();
        let switched = f.borrow_mut().direct_result(domain, addr, timed_out, now);
        if switched == Some(fallback::Route::Relay) {
            if let Match::Relay(h) = self.describe() {
                log::warn!(
                    "outbound: connections to port {} timed out for {} domains in a row: port 25 seems blocked; sending through the relay {h}, probing the direct route every {}",
                    addr.port(),
                    fallback::SWITCH_AFTER,
                    crate::config::fmt_duration(Duration::from_secs(f.borrow().probe_every()))
                );
            }
            self.write_status().await;
        }
    }

    /// Rewrites `<data_dir>/outbound.status` for `pimail doctor` and
    /// `pimail queue list`.
    async fn write_status(&self) {
        let _one_at_a_time = self.status_lock.lock().await;
        let mut lines = Vec::new();
        {
            let f = self.family.borrow();
            let fam = match f.choice {
                crate::config::IpFamily::Auto => family::describe(f.allowed, &f.v4, &f.v6),
                c => format!("{} (ip_family = \"{}\")", f.allowed.describe(), c.as_str()),
            };
            lines.push(("family".to_string(), fam));
        }
        let route = match (&self.route, self.relaying()) {
            (Route::Relay { host, port }, true) => match &self.fallback {
                None => format!("relay {host}:{port}"),
                Some(f) => format!(
                    "relay {host}:{port} (port 25 blocked; next probe of the direct route {})",
                    f.borrow()
                        .next_probe()
                        .map(crate::util::timefmt::rfc5322)
                        .unwrap_or_default()
                ),
            },
            (Route::Relay { host, port }, false) => {
                format!("direct (relay {host}:{port} while port 25 is blocked)")
            }
            (Route::Mx, _) => "direct".to_string(),
        };
        lines.push(("route".to_string(), route));
        let dd = self.data_dir.clone();
        let r = smol::unblock(move || {
            for (d, c) in mta_sts::list(&dd) {
                lines.push((
                    "mta-sts".to_string(),
                    format!(
                        "{d} mode {} mx {} expires {}",
                        c.policy.mode.as_str(),
                        c.policy.mx.join(","),
                        crate::util::timefmt::rfc5322(c.expires())
                    ),
                ));
            }
            crate::store::status::write(&dd, &lines)
        })
        .await;
        if let Err(e) = r {
            log::warn!("cannot write {}: {e}", crate::store::status::FILE);
        }
    }

    fn describe(&self) -> Match {
        match &self.route {
            Route::Mx => Match::Mx,
            Route::Relay { host, port } => Match::Relay(format!("{host}:{port}")),
        }
    }

    /// One round over the due messages.
    async fn process(&self, mut entries: Vec<Entry>) {
        let now = crate::util::timefmt::unix_now();
        let mut failures: Vec<Vec<(Failure, Via)>> = vec![Vec::new(); entries.len()];
        // Local recipients (from `sendmail`): the mbox.
        for (ei, e) in entries.iter_mut().enumerate() {
            let local: Vec<usize> = (0..e.rcpts.len())
                .filter(|&i| {
                    let r = &e.rcpts[i];
                    r.local && r.state == State::Pending && r.next <= now
                })
                .collect();
            if local.is_empty() {
                continue;
            }
            let outcome = self.deliver_local(e).await;
            for ri in local {
                self.apply(e, ri, &outcome, &Via::default(), &mut failures[ei], now);
            }
        }
        // Remote recipients, grouped by domain (all together for a relay).
        let mut groups: Vec<Group> = Vec::new();
        let relaying = self.relaying();
        for (ei, e) in entries.iter().enumerate() {
            let mut by_key: Vec<(String, Vec<usize>)> = Vec::new();
            for (ri, r) in e.rcpts.iter().enumerate() {
                if r.local || r.state != State::Pending || r.next > now {
                    continue;
                }
                let key = if relaying {
                    String::new()
                } else {
                    r.addr.domain.clone()
                };
                match by_key.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(ri),
                    None => by_key.push((key, vec![ri])),
                }
            }
            for (key, ris) in by_key {
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push((ei, ris)),
                    None => groups.push((key, vec![(ei, ris)])),
                }
            }
        }
        // Domains are served in parallel (a slow or dead MX must not hold
        // up the others), each group from a snapshot of what it sends; the
        // results come back per recipient and are applied and saved as each
        // domain finishes, so that a crash later in the round does not
        // deliver these recipients again.
        // DKIM signatures, once per message for all its domains.
        let mut signatures: HashMap<usize, Vec<u8>> = HashMap::new();
        for (_, items) in &groups {
            for (ei, _) in items {
                if !signatures.contains_key(ei) {
                    let sig = self.dkim_signature(&entries[*ei], now).await;
                    signatures.insert(*ei, sig);
                }
            }
        }
        let (tx, rx) = smol::channel::unbounded::<Vec<Result1>>();
        let ex = smol::LocalExecutor::new();
        for (key, items) in groups {
            let msgs: Vec<MsgJob> = items
                .into_iter()
                .map(|(ei, ris)| {
                    let e = &entries[ei];
                    MsgJob {
                        ei,
                        rcpts: ris
                            .iter()
                            .map(|&ri| (ri, e.rcpts[ri].addr.to_string()))
                            .collect(),
                        from: e.sender(),
                        params: MailParams {
                            size: e.size,
                            smtputf8: e.smtputf8,
                        },
                        prefix: {
                            let mut p = queue::header_bytes(&e.headers);
                            if let Some(sig) = signatures.get(&ei) {
                                p.extend_from_slice(sig);
                            }
                            p
                        },
                        path: self.queue.msg_path(&e.id),
                    }
                })
                .collect();
            let tx = tx.clone();
            ex.spawn(async move {
                let _slot = self.slots.acquire().await;
                let results = self.deliver_group(&key, msgs).await;
                let _ = tx.send(results).await;
            })
            .detach();
        }
        drop(tx);
        let mut done = vec![false; entries.len()];
        ex.run(async {
            while let Ok(results) = rx.recv().await {
                for (ei, ri, outcome, via) in results {
                    self.apply(&mut entries[ei], ri, &outcome, &via, &mut failures[ei], now);
                }
                for ei in 0..entries.len() {
                    if !done[ei] && !still_in_round(&entries[ei], now) {
                        done[ei] = true;
                        self.finish(&mut entries[ei], std::mem::take(&mut failures[ei]))
                            .await;
                    }
                }
            }
        })
        .await;
        for ei in 0..entries.len() {
            if !done[ei] {
                self.finish(&mut entries[ei], std::mem::take(&mut failures[ei]))
                    .await;
            }
        }
    }

    /// Sends bounces for new failures and the delay notice when it is
    /// due, then saves the message's state.
    async fn finish(&self, entry: &mut Entry, failures: Vec<(Failure, Via)>) {
        if !failures.is_empty() {
            self.bounce(entry, failures, Report::Failed).await;
        }
        let now = crate::util::timefmt::unix_now();
        if queue::warning_due(entry, now, self.warn_after) {
            let waiting = entry
                .pending()
                .map(|r| {
                    let failure = Failure {
                        rcpt: r.addr.to_string(),
                        status: bounce::delayed_status(&r.last),
                        diagnostic: r.last.clone(),
                        remote_mta: None,
                    };
                    (failure, Via::default())
                })
                .collect();
            let retry_until = entry.created + self.bounce_after.as_secs();
            self.bounce(entry, waiting, Report::Delayed { retry_until })
                .await;
            // Once per message, even if sending the notice failed: a
            // warning is not worth a loop (Postfix does the same).
            entry.warned = true;
        }
        let q = self.queue.clone();
        let e = entry.clone();
        if let Err(err) = smol::unblock(move || q.update(&e)).await {
            log::error!("queue id={}: cannot save state: {err}", entry.id);
        }
    }

    async fn deliver_local(&self, e: &Entry) -> Outcome {
        let now = crate::util::timefmt::unix_now();
        let mut prefix = crate::store::mbox::from_line(&e.sender(), now);
        prefix += &format!("Return-Path: <{}>\n", e.sender());
        let mut p = prefix.into_bytes();
        p.extend_from_slice(&queue::header_bytes(&e.headers));
        let d = Delivery {
            id: e.id.clone(),
            prefix: p,
            body: crate::store::mbox::Body::Spool(self.queue.msg_path(&e.id)),
        };
        match self.mbox.append(d).await {
            Ok(()) => Outcome::Delivered(format!("delivered to {}", self.mbox.path().display())),
            Err(err) => Outcome::Temporary(format!("451 4.3.0 mbox: {err}")),
        }
    }

    /// Records one recipient's result; 4xx past `bounce_after` turns
    /// permanent.
    fn apply(
        &self,
        e: &mut Entry,
        ri: usize,
        outcome: &Outcome,
        via: &Via,
        failures: &mut Vec<(Failure, Via)>,
        now: u64,
    ) {
        let created = e.created;
        let id = e.id.clone();
        let r = &mut e.rcpts[ri];
        r.attempts += 1;
        let host = via
            .host
            .as_deref()
            .unwrap_or(if r.local { "mbox" } else { "-" });
        let ip = via.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        let tls = via.tls.as_deref().unwrap_or("no");
        let mut outcome = outcome.clone();
        if let Outcome::Temporary(why) = &outcome {
            if queue::expired(created, now, self.bounce_after) {
                outcome = Outcome::Permanent {
                    status: "4.4.7".into(),
                    diagnostic: format!(
                        "gave up after {} attempts in {}: {why}",
                        r.attempts,
                        crate::config::fmt_duration(self.bounce_after)
                    ),
                };
            }
        }
        match outcome {
            Outcome::Delivered(reply) => {
                r.state = State::Delivered;
                r.last = reply.clone();
                crate::util::activity::sent(&id, &r.addr.to_string());
                log::info!(
                    "delivered id={id} rcpt=<{}> host={host} ip={ip} tls={tls} reply={reply:?}",
                    r.addr
                );
            }
            Outcome::Temporary(why) => {
                let delay = queue::retry_delay(&self.retry, r.attempts);
                r.next = now + delay.as_secs().max(1);
                r.last = why.clone();
                log::info!(
                    "deferred id={id} rcpt=<{}> host={host} ip={ip} tls={tls} attempts={} retry_in={} reason={why:?}",
                    r.addr,
                    r.attempts,
                    crate::config::fmt_duration(delay)
                );
            }
            Outcome::Permanent { status, diagnostic } => {
                r.state = State::Failed;
                r.last = diagnostic.clone();
                log::info!(
                    "failed id={id} rcpt=<{}> host={host} ip={ip} tls={tls} status={status} reason={diagnostic:?}",
                    r.addr
                );
                failures.push((
                    Failure {
                        rcpt: r.addr.to_string(),
                        status,
                        diagnostic,
                        remote_mta: via.host.clone(),
                    },
                    via.clone(),
                ));
            }
        }
    }

    /// Where mail for `key` (a domain, or "" for the relay) can go: host
    /// names with their addresses, in the order to try.
    async fn targets(&self, key: &str) -> Result<Vec<(String, SocketAddr)>, Outcome> {
        let port = &self.mx_port;
        let (hosts, port, implicit) = match (&self.route, key.is_empty()) {
            (Route::Relay { host, port }, true) => (vec![host.clone()], *port, false),
            _ => {
                if let Some(lit) = key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
                    // An address literal (RFC 5321 4.1.3): no DNS.
                    let ip = lit.strip_prefix("ipv6:").unwrap_or(lit);
                    return match ip.parse::<IpAddr>() {
                        Ok(ip) => Ok(vec![(ip.to_string(), SocketAddr::new(ip, *port))]),
                        Err(_) => Err(perm("5.1.2", format!("bad address literal {key}"))),
                    };
                }
                match self.resolver.mx(key).await {
                    Ok(Mx::Null) => {
                        return Err(perm(
                            "5.1.10",
                            format!("556 5.1.10 {key} accepts no mail (null MX, RFC 7505)"),
                        ))
                    }
                    Ok(Mx::Implicit) => (vec![key.to_string()], *port, true),
                    Ok(Mx::Hosts(h)) => (h, *port, false),
                    Err(DnsError::NoSuchDomain(_)) => {
                        return Err(perm(
                            "5.1.2",
                            format!("550 5.1.2 domain {key} does not exist (NXDOMAIN)"),
                        ))
                    }
                    Err(e) => return Err(Outcome::Temporary(format!("451 4.4.3 MX {key}: {e}"))),
                }
            }
        };
        let mut out = Vec::new();
        let mut temp = None;
        for h in &hosts {
            match self.resolver.addrs(h).await {
                Ok(ips) => out.extend(
                    ips.into_iter()
                        .map(|ip| (h.clone(), SocketAddr::new(ip, port))),
                ),
                Err(DnsError::Temporary(e)) => temp = Some(format!("451 4.4.3 {h}: {e}")),
                Err(e) => log::debug!("outbound: {h}: {e}"),
            }
        }
        if !key.is_empty() && !out.is_empty() {
            // Direct delivery: only the families whose source address
            // receivers accept (see `family`). A relay authenticates us,
            // so its address family does not matter.
            let allowed = self.family.borrow().allowed;
            let all = out.len();
            out.retain(|(_, a)| allowed.permits(a.ip()));
            if out.is_empty() {
                let f = self.family.borrow();
                return Err(Outcome::Temporary(format!(
                    "451 4.4.4 the {all} address(es) of the mail servers of {key} are all of a family not used now: direct delivery uses {}",
                    family::describe(f.allowed, &f.v4, &f.v6)
                )));
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        match temp {
            Some(t) => Err(Outcome::Temporary(t)),
            None if implicit => Err(perm(
                "5.1.2",
                format!("550 5.1.2 {key} has no MX and no A/AAAA records"),
            )),
            None => Err(perm(
                "5.4.4",
                format!(
                    "550 5.4.4 no address for any mail server of {key} ({})",
                    hosts.join(", ")
                ),
            )),
        }
    }

    /// Delivers the messages of one group (a domain, or the relay): tries
    /// each address of each MX in order; all messages go over the first
    /// connection that works, the rest of them over the next. Returns one
    /// outcome per recipient. An MTA-STS policy of the domain (RFC 8461)
    /// narrows the MX hosts and makes verified TLS mandatory (`enforce`)
    /// or is only logged (`testing`); TLS-RPT counts are kept.
    async fn deliver_group(&self, key: &str, msgs: Vec<MsgJob>) -> Vec<Result1> {
        let mut out = Vec::new();
        let defer_all = |out: &mut Vec<Result1>, msgs: Vec<MsgJob>, outcome: Outcome, via: Via| {
            for m in msgs {
                for (ri, _) in m.rcpts {
                    out.push((m.ei, ri, outcome.clone(), via.clone()));
                }
            }
        };
        let relay = key.is_empty();
        let now = crate::util::timefmt::unix_now();
        let lookup = match &self.sts {
            Some(sts) if !relay && !key.starts_with('[') => {
                let l = sts.lookup(&self.resolver, key, now).await;
                if l.fetched {
                    self.write_status().await;
                }
                l
            }
            _ => mta_sts::Lookup::default(),
        };
        let policy = lookup.policy.clone();
        let enforce = policy
            .as_ref()
            .is_some_and(|p| p.mode == mta_sts::Mode::Enforce);
        let mut sessions: Vec<tlsrpt::Session> = Vec::new();
        let policy_type = if policy.is_some() {
            "sts"
        } else {
            "no-policy-found"
        };
        let session = |result: &'static str, mx: &str| tlsrpt::Session {
            domain: key.to_string(),
            policy: policy_type,
            result,
            mx: mx.to_string(),
        };
        if lookup.fetch_error.is_some() && policy.is_none() {
            sessions.push(tlsrpt::Session {
                domain: key.to_string(),
                policy: "sts",
                result: "sts-policy-fetch-error",
                mx: "-".into(),
            });
        }
        let mut targets = match self.targets(key).await {
            Ok(t) => t,
            Err(outcome) => {
                defer_all(&mut out, msgs, outcome, Via::default());
                self.save_sessions(sessions).await;
                return out;
            }
        };
        if let Some(p) = &policy {
            // RFC 8461 4.1: only MX hosts the policy names.
            let mut bad: Vec<String> = targets
                .iter()
                .filter(|(h, _)| !p.allows(h))
                .map(|(h, _)| h.clone())
                .collect();
            bad.dedup();
            for h in &bad {
                sessions.push(session("validation-failure", h));
                log::info!(
                    "mta-sts: {key} ({}): MX {h} does not match the policy's mx patterns ({}){}",
                    p.mode.as_str(),
                    p.mx.join(", "),
                    if enforce {
                        "; not used"
                    } else {
                        "; used anyway (testing)"
                    }
                );
            }
            if enforce {
                targets.retain(|(h, _)| p.allows(h));
                if targets.is_empty() {
                    let o = Outcome::Temporary(format!(
                        "451 4.7.5 MTA-STS policy of {key} (enforce) matches none of its MX hosts ({})",
                        bad.join(", ")
                    ));
                    defer_all(&mut out, msgs, o, Via::default());
                    self.save_sessions(sessions).await;
                    return out;
                }
            }
        }
        let security = if relay {
            self.security.clone()
        } else if enforce {
            Security::Verified
        } else {
            Security::Opportunistic
        };
        let mut remaining: VecDeque<MsgJob> = msgs.into();
        let mut last = String::from("451 4.4.1 no mail server answered");
        let mut last_via = Via::default();
        for (host, addr) in targets {
            if remaining.is_empty() {
                break;
            }
            let open = |starttls| {
                Conn::open(
                    &host,
                    addr,
                    &self.hostname,
                    &security,
                    &self.verifier,
                    starttls,
                    self.connect_timeout,
                )
            };
            let mut opened = open(true).await;
            if let (Err(ConnError::Tls(e)), Security::Opportunistic) = (&opened, &security) {
                // RFC 7435 opportunistic security: a broken TLS stack on
                // their side must not stop the mail; fall back to clear
                // text with the same server, as Postfix does.
                if !relay {
                    sessions.push(session("validation-failure", &host));
                }
                log::info!(
                    "outbound: {host} [{}]: {e}; trying again without TLS",
                    addr.ip()
                );
                opened = open(false).await;
            }
            if !relay {
                self.note_direct(key, addr, opened.as_ref().err()).await;
            }
            let mut c = match opened {
                Ok(c) => c,
                Err(e) => {
                    log::info!("outbound: {host} [{}]: {e}", addr.ip());
                    last = match &e {
                        ConnError::Tls(s) if enforce => {
                            let result = if s == conn::NO_STARTTLS {
                                "starttls-not-supported"
                            } else {
                                tlsrpt::cert_result(s)
                            };
                            sessions.push(session(result, &host));
                            format!(
                                "451 4.7.5 MTA-STS policy of {key} (enforce) requires verified TLS: {host} [{}]: {s}",
                                addr.ip()
                            )
                        }
                        ConnError::Network(s) | ConnError::Tls(s) => {
                            format!("451 4.4.1 {host} [{}]: {s}", addr.ip())
                        }
                        ConnError::Refused(r) => {
                            format!("{} (from {host} [{}])", r.one_line(), addr.ip())
                        }
                    };
                    last_via = Via {
                        host: Some(host.clone()),
                        ip: Some(addr.ip()),
                        tls: None,
                    };
                    continue;
                }
            };
            if !relay {
                // What this session was worth for TLS-RPT, and what a
                // testing policy would have refused.
                let problem = match &c.tls {
                    None => Some(("starttls-not-supported", "no STARTTLS".to_string())),
                    Some(t) => t
                        .unverified
                        .as_ref()
                        .filter(|_| policy.is_some())
                        .map(|why| (tlsrpt::cert_result(why), format!("certificate: {why}"))),
                };
                match problem {
                    Some((result, why)) => {
                        sessions.push(session(result, &host));
                        if policy.is_some() {
                            log::info!(
                                "mta-sts: {key} (testing): {host} [{}] would be refused under enforce: {why}; delivering anyway",
                                addr.ip()
                            );
                        }
                    }
                    None => sessions.push(session("success", "-")),
                }
            }
            let via = Via {
                host: Some(host.clone()),
                ip: Some(addr.ip()),
                tls: c.tls.as_ref().map(|t| t.to_string()),
            };
            let mut broken = false;
            while let Some(m) = remaining.front() {
                let rcpts: Vec<String> = m.rcpts.iter().map(|(_, a)| a.clone()).collect();
                match c.send(&m.from, &rcpts, &m.params, &m.prefix, &m.path).await {
                    Ok(replies) => {
                        for ((ri, _), reply) in m.rcpts.iter().zip(replies.iter()) {
                            out.push((m.ei, *ri, Outcome::from_reply(reply), via.clone()));
                        }
                        remaining.pop_front();
                    }
                    Err(e) => {
                        log::info!("outbound: {host} [{}]: {e}", addr.ip());
                        last = format!("451 4.4.2 {host} [{}]: {e}", addr.ip());
                        last_via = via.clone();
                        broken = true;
                        break;
                    }
                }
            }
            if !broken {
                c.quit().await;
            }
        }
        defer_all(
            &mut out,
            remaining.into(),
            Outcome::Temporary(last),
            last_via,
        );
        self.save_sessions(sessions).await;
        out
    }

    /// Adds a group's sessions to the TLS-RPT counts.
    async fn save_sessions(&self, sessions: Vec<tlsrpt::Session>) {
        if sessions.is_empty() {
            return;
        }
        let dd = self.data_dir.clone();
        let now = crate::util::timefmt::unix_now();
        if let Err(e) = smol::unblock(move || tlsrpt::record(&dd, now, &sessions)).await {
            log::warn!("tlsrpt: cannot record: {e}");
        }
    }

    /// The `DKIM-Signature:` lines for a message from one of our domains
    /// (empty otherwise, or when signing fails: the message still goes,
    /// unsigned, and the log says why).
    async fn dkim_signature(&self, e: &Entry, now: u64) -> Vec<u8> {
        let keys = self.dkim_keys.current();
        if keys.is_empty() {
            return Vec::new();
        }
        let (keys, domains, path) = (keys, self.domains.clone(), self.queue.msg_path(&e.id));
        match smol::unblock(move || crate::trust::dkim::sign_queued(&path, &keys, &domains, now))
            .await
        {
            // The body encoder turns LF into CRLF, like the queue file's.
            Ok(Some(h)) => h.replace("\r\n", "\n").into_bytes(),
            Ok(None) => Vec::new(),
            Err(err) => {
                log::warn!("id={}: not DKIM-signed: {err}", e.id);
                Vec::new()
            }
        }
    }

    /// Sends the RFC 3464 report for `failures` to the message's sender:
    /// into the mbox when the sender is the user, else through the queue.
    async fn bounce(&self, entry: &Entry, failures: Vec<(Failure, Via)>, report: Report) {
        let Some(sender) = entry.from.clone() else {
            log::info!("id={}: not bouncing a bounce (null sender)", entry.id);
            return;
        };
        let path = self.queue.msg_path(&entry.id);
        let headers = smol::unblock(move || queue::read_headers(&path, 64 * 1024))
            .await
            .unwrap_or_default();
        let mut all = queue::header_bytes(&entry.headers);
        all.extend_from_slice(&headers);
        let now = crate::util::timefmt::unix_now();
        let id = crate::util::rt::new_id();
        let f: Vec<Failure> = failures.into_iter().map(|(f, _)| f).collect();
        let text = bounce::build(
            report,
            &self.hostname,
            entry,
            &f,
            &all,
            &format!("{id}/{}", self.hostname),
            &id,
            now,
        );
        // A sender at one of our domains that is not one of the user's
        // addresses (`sendmail -f root`): on a one-person system the
        // bounce is still the user's to read.
        let dest = self.policy.classify(&sender);
        let result = match dest {
            Destination::Local | Destination::UnknownLocal => {
                let spool = self.spool_dir.join(format!("{id}.bounce"));
                let s2 = spool.clone();
                let written = smol::unblock(move || write_quoted(&s2, &text)).await;
                let r = match written {
                    Ok(()) => {
                        let mut prefix = crate::store::mbox::from_line("", now);
                        prefix += "Return-Path: <>\n";
                        self.mbox
                            .append(Delivery {
                                id: id.clone(),
                                prefix: prefix.into_bytes(),
                                body: crate::store::mbox::Body::Spool(spool.clone()),
                            })
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = std::fs::remove_file(&spool);
                r
            }
            Destination::Remote => {
                let mut b = Entry::new(&id, None, now, 0);
                b.add_rcpt(sender.clone(), false);
                let q = self.queue.clone();
                let r = smol::unblock(move || {
                    q.enqueue_with(&mut b, |w| {
                        let mut out = Vec::new();
                        let mut quoter = crate::store::mbox::Quoter::new();
                        quoter.feed(&text, &mut out);
                        quoter.finish(&mut out);
                        w.write_all(&out)?;
                        Ok(out.len() as u64)
                    })
                })
                .await
                .map_err(|e| e.to_string());
                let _ = self.wake_tx.try_send(Wake::New);
                r
            }
        };
        let what = match report {
            Report::Failed => "bounce",
            Report::Delayed { .. } => "delay notice",
        };
        match result {
            Ok(()) => log::info!(
                "{what} id={id} for id={} to=<{sender}> rcpts={}",
                entry.id,
                f.iter()
                    .map(|x| format!("<{}>", x.rcpt))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => log::error!("{what} for id={} to=<{sender}> not sent: {e}", entry.id),
        }
    }
}

enum Match {
    Mx,
    Relay(String),
}

fn perm(status: &str, diagnostic: String) -> Outcome {
    Outcome::Permanent {
        status: status.to_string(),
        diagnostic,
    }
}

/// Is any recipient of `e` still waiting for this round (due now)?
fn still_in_round(e: &Entry, now: u64) -> bool {
    e.rcpts
        .iter()
        .any(|r| r.state == State::Pending && r.next <= now)
}

/// Writes `text` mboxrd-quoted to a private spool file.
fn write_quoted(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = Vec::new();
    let mut q = crate::store::mbox::Quoter::new();
    q.feed(text, &mut out);
    q.finish(&mut out);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(&out)
}
