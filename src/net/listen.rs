//! Admission of connections: the server-wide state every session shares
//! (hostname, limits, login throttling, the stop signal), the connection
//! count per server and per client address that `max_connections` and
//! `max_connections_per_ip` bound, and the bound, stoppable accept.
//!
//! Protocol drivers (`receive::smtp::conn`, `read::pop3::conn`) take a
//! [`Shared`]; the accept loops that start them live in `crate::server`.

use crate::config::Limits;
use crate::user::auth::Logins;
use async_net::{TcpListener, TcpStream};
use smol::future::FutureExt;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

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

    /// A slot for a new connection from `ip`, or why there is none.
    pub fn try_admit(self: &Rc<Self>, ip: IpAddr) -> Result<ConnGuard, &'static str> {
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
pub struct ConnGuard {
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
