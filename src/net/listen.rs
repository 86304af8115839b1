//! Admission of connections: the server-wide state every session shares
//! (hostname, limits, login throttling, the stop signal), the connection
//! budgets, and the bound, stoppable accept.
//!
//! Why it is built this way (issue 13, "a flood of idle connections locks
//! everyone out"):
//! - Each kind of service has its own budget ([`Class`]): port 25 has
//!   `max_connections`, and submission, POP3 and IMAP each have
//!   `max_user_connections`, so that a flood on port 25 can never take the
//!   slots the user's own logins need.
//! - `max_connections_per_ip` counts per service and per client network:
//!   an IPv4 address, or an IPv6 /64 (one customer line or host gets a
//!   whole /64, so counting exact IPv6 addresses would be no limit).
//! - Loopback clients may go an eighth over a budget (reserved room for
//!   the local user, cron jobs and health checks).
//! - Timeouts are deadlines: a command line must be complete within
//!   `command_timeout` of the wait starting, a DATA block within
//!   `data_timeout`, a whole session within `session_timeout` (RFC 5321
//!   4.5.3.2 gives the minimum per command; a client trickling a byte a
//!   minute no longer resets the clock). See [`ConnGuard::io`].
//! - Stress, as Postfix's stress mode: when more than three quarters of a
//!   budget is in use, every wait of that budget's unauthenticated
//!   sessions is cut to [`STRESS_TIMEOUT`], and a new connection first
//!   closes the sessions that made no progress (a complete command, 64 KiB
//!   of DATA, a chunk of a message sent) for that long. Idle and slow
//!   clients go first; authenticated sessions are never shed.
//!
//! Protocol drivers (`receive::smtp::conn`, `read::pop3::conn`) take a
//! [`Shared`] and their [`ConnGuard`]; the accept loops that start them
//! live in `crate::server`.

use crate::config::Limits;
use crate::user::auth::Logins;
use async_net::{TcpListener, TcpStream};
use smol::future::FutureExt;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Under stress, the longest any wait of an unauthenticated session may
/// last, and how long a session may go without progress before a new
/// connection may close it (Postfix's stress-mode `smtpd_timeout`).
pub const STRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Which budget a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Port 25: mail from the world.
    Smtp,
    /// Ports 587 and 465.
    Submission,
    /// Ports 110 and 995.
    Pop3,
    /// Ports 143 and 993 (when IMAP lands).
    Imap,
}

impl Class {
    fn index(self) -> usize {
        match self {
            Class::Smtp => 0,
            Class::Submission => 1,
            Class::Pop3 => 2,
            Class::Imap => 3,
        }
    }
}

/// The key `max_connections_per_ip` counts by: an IPv4 address (also
/// when it comes IPv4-mapped), or the /64 of an IPv6 address.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// This machine (also IPv4-mapped): nobody else can reach us from there.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// Why a wait ended without its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The command, DATA block or write deadline passed.
    Timeout,
    /// Closed to make room for others under stress.
    Shed,
    /// `session_timeout` reached.
    SessionLimit,
}

impl Cut {
    /// For log lines.
    pub fn describe(self) -> &'static str {
        match self {
            Cut::Timeout => "timeout",
            Cut::Shed => "closed to make room (server busy, no progress)",
            Cut::SessionLimit => "session time limit reached",
        }
    }
}

/// One admitted connection, as the registry sees it.
struct Slot {
    class: Class,
    network: IpAddr,
    ends: Instant,
    progress: Cell<Instant>,
    protected: Cell<bool>,
    /// Counts given back (shed, or the guard dropped).
    released: Cell<bool>,
    /// Dropped to tell the session it was shed.
    shed_tx: RefCell<Option<smol::channel::Sender<()>>>,
    shed_rx: smol::channel::Receiver<()>,
}

/// Connections offered to any listener since start (admitted or not): the
/// server's sign of activity, for dropping code pages when it is quiet.
static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Connections offered to any listener since start.
pub fn attempts() -> u64 {
    ATTEMPTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// State shared by all connections of the server.
pub struct Shared {
    pub hostname: String,
    pub limits: Limits,
    /// Login throttling and password-check slots, for every service with
    /// logins.
    pub logins: Logins,
    /// Connections per class.
    counts: [Cell<usize>; 4],
    per_ip: RefCell<HashMap<(Class, IpAddr), usize>>,
    /// Every admitted connection not yet released, for shedding.
    slots: RefCell<Vec<Rc<Slot>>>,
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
            counts: Default::default(),
            per_ip: RefCell::new(HashMap::new()),
            slots: RefCell::new(Vec::new()),
            busy: Cell::new(0),
            stopping: Cell::new(false),
            stop_rx,
            stop_tx: RefCell::new(Some(stop_tx)),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Tells every accept loop to stop, then lets messages in flight
    /// finish (at most `grace`).
    pub async fn stop(&self, grace: Duration) {
        self.stopping.set(true);
        self.stop_tx.borrow_mut().take();
        let deadline = Instant::now() + grace;
        while self.busy.get() > 0 && Instant::now() < deadline {
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        if self.busy.get() > 0 {
            log::warn!(
                "stopping with {} message(s) still being received",
                self.busy.get()
            );
        }
    }

    /// Marks a message in flight for as long as the guard lives, so that
    /// shutdown waits for it.
    pub fn busy(&self) -> BusyGuard<'_> {
        self.busy.set(self.busy.get() + 1);
        BusyGuard(self)
    }

    /// The budget of `class`.
    pub fn budget(&self, class: Class) -> usize {
        match class {
            Class::Smtp => self.limits.max_connections,
            _ => self.limits.max_user_connections,
        }
    }

    /// Connections of `class` now.
    pub fn count(&self, class: Class) -> usize {
        self.counts[class.index()].get()
    }

    /// More than three quarters of the budget of `class` in use.
    pub fn stressed(&self, class: Class) -> bool {
        self.count(class) * 4 > self.budget(class) * 3
    }

    /// A slot for a new connection of `class` from `ip`, or why there is
    /// none. Under stress, first closes the sessions of `class` that made
    /// no progress for [`STRESS_TIMEOUT`].
    pub fn try_admit(self: &Rc<Self>, class: Class, ip: IpAddr) -> Result<ConnGuard, &'static str> {
        self.admit_at(class, ip, Instant::now())
    }

    fn admit_at(
        self: &Rc<Self>,
        class: Class,
        ip: IpAddr,
        now: Instant,
    ) -> Result<ConnGuard, &'static str> {
        ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let network = client_network(ip);
        let from_ip = self.per_ip.borrow().get(&(class, network)).copied();
        if from_ip.unwrap_or(0) >= self.limits.max_connections_per_ip {
            return Err("too many connections from your address");
        }
        let budget = self.budget(class);
        // The new connection counts towards the stress level it causes.
        if (self.count(class) + 1) * 4 > budget * 3 {
            self.shed_idle(class, now);
        }
        let cap = if is_loopback(ip) {
            budget + budget / 8
        } else {
            budget
        };
        if self.count(class) >= cap {
            return Err("too many connections");
        }
        *self
            .per_ip
            .borrow_mut()
            .entry((class, network))
            .or_insert(0) += 1;
        let c = &self.counts[class.index()];
        c.set(c.get() + 1);
        let (tx, rx) = smol::channel::bounded(1);
        let slot = Rc::new(Slot {
            class,
            network,
            ends: now + self.limits.session_timeout,
            progress: Cell::new(now),
            protected: Cell::new(false),
            released: Cell::new(false),
            shed_tx: RefCell::new(Some(tx)),
            shed_rx: rx,
        });
        self.slots.borrow_mut().push(slot.clone());
        Ok(ConnGuard {
            shared: self.clone(),
            slot,
        })
    }

    /// Closes every unprotected session of `class` without progress for
    /// [`STRESS_TIMEOUT`]; gives how many.
    fn shed_idle(&self, class: Class, now: Instant) -> usize {
        let victims: Vec<Rc<Slot>> = self
            .slots
            .borrow()
            .iter()
            .filter(|s| {
                s.class == class
                    && !s.protected.get()
                    && now.saturating_duration_since(s.progress.get()) >= STRESS_TIMEOUT
            })
            .cloned()
            .collect();
        for s in &victims {
            s.shed_tx.borrow_mut().take();
            self.release(s);
        }
        if !victims.is_empty() {
            log::info!(
                "{class:?}: busy ({} of {} slots), closed {} session(s) without progress for {}s",
                self.count(class) + victims.len(),
                self.budget(class),
                victims.len(),
                STRESS_TIMEOUT.as_secs()
            );
        }
        victims.len()
    }

    /// Gives back the counts of `slot` (once).
    fn release(&self, slot: &Rc<Slot>) {
        if slot.released.replace(true) {
            return;
        }
        let c = &self.counts[slot.class.index()];
        c.set(c.get() - 1);
        let mut per_ip = self.per_ip.borrow_mut();
        let key = (slot.class, slot.network);
        if let Some(n) = per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&key);
            }
        }
        self.slots.borrow_mut().retain(|s| !Rc::ptr_eq(s, slot));
    }
}

pub struct BusyGuard<'a>(&'a Shared);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
    }
}

/// A connection's slot: released when the connection ends. The session
/// driver runs every read and write through [`ConnGuard::io`], which
/// enforces the deadlines and notices when the slot was shed.
pub struct ConnGuard {
    shared: Rc<Shared>,
    slot: Rc<Slot>,
}

impl ConnGuard {
    /// The session made progress (a complete command, a block of DATA, a
    /// chunk of a message sent): it is not idle.
    pub fn progress(&self) {
        self.slot.progress.set(Instant::now());
    }

    /// The client logged in: never shed, and its timeouts stay long under
    /// stress.
    pub fn authenticated(&self) {
        self.slot.protected.set(true);
    }

    /// The deadline for a wait that started at `since` and may last
    /// `limit`: shorter under stress (unless authenticated), never past
    /// the end of the session.
    pub fn deadline(&self, since: Instant, limit: Duration) -> Instant {
        let limit = if !self.slot.protected.get() && self.shared.stressed(self.slot.class) {
            limit.min(STRESS_TIMEOUT)
        } else {
            limit
        };
        (since + limit).min(self.slot.ends)
    }

    /// Runs `f` until `deadline`, or until the slot is shed.
    pub async fn io<T>(&self, deadline: Instant, f: impl Future<Output = T>) -> Result<T, Cut> {
        if self.slot.released.get() {
            return Err(Cut::Shed);
        }
        let ends = self.slot.ends;
        let timer = async {
            smol::Timer::at(deadline).await;
            Err(if deadline >= ends {
                Cut::SessionLimit
            } else {
                Cut::Timeout
            })
        };
        let shed = async {
            let _ = self.slot.shed_rx.recv().await;
            Err(Cut::Shed)
        };
        async { Ok(f.await) }.or(timer).or(shed).await
    }

    /// A write bounded by `limit` from now (see [`deadline`](Self::deadline)).
    pub async fn write(
        &self,
        stream: &mut (impl smol::io::AsyncWrite + Unpin),
        bytes: &[u8],
        limit: Duration,
    ) -> std::io::Result<()> {
        use smol::io::AsyncWriteExt;
        let deadline = self.deadline(Instant::now(), limit);
        match self.io(deadline, stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(cut) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("write: {}", cut.describe()),
            )),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.release(&self.slot);
    }
}

/// The next connection, or `None` once the server is stopping.
pub async fn accept_next(
    listener: &TcpListener,
    shared: &Shared,
) -> Option<(TcpStream, SocketAddr)> {
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

/// Why a listener could not be opened.
#[derive(Debug)]
pub struct BindError(pub SocketAddr, pub std::io::Error);

/// Opens a listener. SO_REUSEADDR (std sets it on Unix) so a restart does
/// not wait for TIME_WAIT. IPv6 listeners are IPv6-only: list 0.0.0.0 for
/// IPv4.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let l = match addr {
        SocketAddr::V4(_) => std::net::TcpListener::bind(addr),
        SocketAddr::V6(v6) => crate::util::sys::bind_v6only(v6),
    }
    .map_err(|e| BindError(addr, e))?;
    TcpListener::try_from(l).map_err(|e| BindError(addr, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(budget: usize, user: usize, per_ip: usize) -> Rc<Shared> {
        let limits = Limits {
            max_connections: budget,
            max_user_connections: user,
            max_connections_per_ip: per_ip,
            ..Limits::default()
        };
        Rc::new(Shared::new("h".into(), limits))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            client_network(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_network(ip("192.0.2.7")), ip("192.0.2.7"));
        let s = shared(100, 10, 2);
        let now = Instant::now();
        let a = s.admit_at(Class::Smtp, ip("2001:db8:1:2::1"), now).unwrap();
        let b = s
            .admit_at(Class::Smtp, ip("2001:db8:1:2:ffff::9"), now)
            .unwrap();
        // A third address of the same /64 is the same client.
        assert_eq!(
            s.admit_at(Class::Smtp, ip("2001:db8:1:2:1234:5678:9abc:def0"), now)
                .err(),
            Some("too many connections from your address")
        );
        // The next /64 is another.
        let c = s.admit_at(Class::Smtp, ip("2001:db8:1:3::1"), now).unwrap();
        // Per service: the same /64 may still reach POP3.
        let d = s.admit_at(Class::Pop3, ip("2001:db8:1:2::1"), now).unwrap();
        drop(a);
        let e = s
            .admit_at(Class::Smtp, ip("2001:db8:1:2::77"), now)
            .unwrap();
        drop((b, c, d, e));
        assert!(s.per_ip.borrow().is_empty());
        assert_eq!(s.count(Class::Smtp), 0);
    }

    #[test]
    fn port_25_cannot_take_the_user_services_slots() {
        let s = shared(4, 2, 100);
        let now = Instant::now();
        let held: Vec<ConnGuard> = (0..4)
            .map(|i| {
                s.admit_at(Class::Smtp, ip(&format!("192.0.2.{i}")), now)
                    .unwrap()
            })
            .collect();
        assert!(s.admit_at(Class::Smtp, ip("192.0.2.99"), now).is_err());
        let p = s.admit_at(Class::Pop3, ip("192.0.2.99"), now).unwrap();
        let q = s
            .admit_at(Class::Submission, ip("192.0.2.99"), now)
            .unwrap();
        drop((held, p, q));
    }

    #[test]
    fn loopback_has_reserved_room() {
        let s = shared(16, 2, 100);
        let now = Instant::now();
        let held: Vec<ConnGuard> = (0..16)
            .map(|i| {
                s.admit_at(Class::Smtp, ip(&format!("192.0.2.{i}")), now)
                    .unwrap()
            })
            .collect();
        assert!(s.admit_at(Class::Smtp, ip("198.51.100.1"), now).is_err());
        let l1 = s.admit_at(Class::Smtp, ip("127.0.0.1"), now).unwrap();
        let l2 = s.admit_at(Class::Smtp, ip("::1"), now).unwrap();
        assert!(s.admit_at(Class::Smtp, ip("127.0.0.2"), now).is_err());
        drop((held, l1, l2));
    }

    #[test]
    fn under_stress_idle_sessions_are_shed_first_and_others_kept() {
        let s = shared(8, 2, 100);
        let t0 = Instant::now();
        let idle: Vec<ConnGuard> = (0..4)
            .map(|i| {
                s.admit_at(Class::Smtp, ip(&format!("192.0.2.{i}")), t0)
                    .unwrap()
            })
            .collect();
        let later = t0 + STRESS_TIMEOUT;
        let active: Vec<ConnGuard> = (0..2)
            .map(|i| {
                s.admit_at(Class::Smtp, ip(&format!("198.51.100.{i}")), later)
                    .unwrap()
            })
            .collect();
        for a in &active {
            a.slot.progress.set(later);
        }
        // An old but logged-in session is protected.
        idle[3].authenticated();
        assert_eq!(s.count(Class::Smtp), 6);
        // The 7th connection makes the budget 7/8 full: the idle,
        // unprotected ones go, the active and the protected stay.
        let n = s.admit_at(Class::Smtp, ip("203.0.113.1"), later).unwrap();
        assert_eq!(s.count(Class::Smtp), 4);
        assert!(idle[..3].iter().all(|g| g.slot.released.get()));
        assert!(!idle[3].slot.released.get());
        assert!(active.iter().all(|g| !g.slot.released.get()));
        // The shed sessions learn of it at their next wait, at once.
        let r = smol::block_on(idle[0].io(later + Duration::from_secs(3600), async { 1 }));
        assert_eq!(r, Err(Cut::Shed));
        // Dropping a shed guard does not release twice.
        drop(idle);
        assert_eq!(s.count(Class::Smtp), 3);
        drop((active, n));
        assert_eq!(s.count(Class::Smtp), 0);
        assert!(s.slots.borrow().is_empty());
    }

    #[test]
    fn young_sessions_are_not_shed_so_a_full_budget_refuses() {
        let s = shared(3, 2, 100);
        let now = Instant::now();
        let held: Vec<ConnGuard> = (0..3)
            .map(|i| {
                s.admit_at(Class::Smtp, ip(&format!("192.0.2.{i}")), now)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            s.admit_at(Class::Smtp, ip("192.0.2.9"), now + Duration::from_secs(1))
                .err(),
            Some("too many connections")
        );
        drop(held);
    }

    #[test]
    fn deadlines_shrink_under_stress_but_not_for_logged_in_sessions() {
        let s = shared(4, 2, 100);
        let now = Instant::now();
        let a = s.admit_at(Class::Smtp, ip("192.0.2.1"), now).unwrap();
        let five = Duration::from_secs(300);
        assert_eq!(a.deadline(now, five), now + five);
        let more: Vec<ConnGuard> = (2..5)
            .map(|i| {
                s.admit_at(Class::Smtp, ip(&format!("192.0.2.{i}")), now)
                    .unwrap()
            })
            .collect();
        assert!(s.stressed(Class::Smtp));
        assert_eq!(a.deadline(now, five), now + STRESS_TIMEOUT);
        a.authenticated();
        assert_eq!(a.deadline(now, five), now + five);
        // Never past the session's hard end.
        let long = Duration::from_secs(100 * 3600);
        assert_eq!(a.deadline(now, long), now + s.limits.session_timeout);
        drop((a, more));
    }
}
