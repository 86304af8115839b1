//! Relay fallback (`outbound.relay_fallback`): direct delivery while port
//! 25 works, the relay while it seems blocked.
//!
//! An ISP that blocks outbound port 25 usually drops the packets, so
//! connections time out; one dead MX does the same, but for one domain
//! only. So the sign of a block is a run of connection timeouts to
//! [`SWITCH_AFTER`] different domains in a row, with no connection that
//! got through in between. Then mail goes through the relay, and every
//! `relay_probe` a plain TCP connection to one of the addresses that timed
//! out tells whether the direct route is open again.
//!
//! Pure: [`Fallback`] takes outcomes and the time and says when to switch.

use std::net::SocketAddr;

/// Distinct domains whose connections must time out in a row.
pub const SWITCH_AFTER: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Relay,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Relay => "relay",
        }
    }
}

#[derive(Debug)]
pub struct Fallback {
    probe_every: u64,
    route: Route,
    /// Domains (and one address each) whose connections timed out since
    /// the last connection that got through.
    run: Vec<(String, SocketAddr)>,
    next_probe: u64,
    /// Where to probe: the addresses that timed out.
    targets: Vec<SocketAddr>,
}

impl Fallback {
    pub fn new(probe_every: u64) -> Fallback {
        Fallback {
            probe_every: probe_every.max(1),
            route: Route::Direct,
            run: Vec::new(),
            next_probe: 0,
            targets: Vec::new(),
        }
    }

    pub fn probe_every(&self) -> u64 {
        self.probe_every
    }

    pub fn route(&self) -> Route {
        self.route
    }

    /// One direct connection attempt to `addr` for `domain`: `timed_out`
    /// says whether connecting timed out. Returns the new route when it
    /// changes.
    pub fn direct_result(
        &mut self,
        domain: &str,
        addr: SocketAddr,
        timed_out: bool,
        now: u64,
    ) -> Option<Route> {
        if !timed_out {
            // Something got through (a greeting, a refusal, a reset): the
            // path is open, whatever the one server did.
            self.run.clear();
            return None;
        }
        if !self.run.iter().any(|(d, _)| d == domain) {
            self.run.push((domain.to_string(), addr));
        }
        if self.route == Route::Direct && self.run.len() >= SWITCH_AFTER {
            self.route = Route::Relay;
            self.next_probe = now + self.probe_every;
            self.targets = self.run.iter().map(|(_, a)| *a).collect();
            self.run.clear();
            return Some(Route::Relay);
        }
        None
    }

    /// Where to probe now, if a probe is due (and counts it as started).
    pub fn probe_due(&mut self, now: u64) -> Option<SocketAddr> {
        if self.route != Route::Relay || now < self.next_probe {
            return None;
        }
        self.next_probe = now + self.probe_every;
        // Turn through the targets, one per probe.
        let t = *self.targets.first()?;
        self.targets.rotate_left(1);
        Some(t)
    }

    /// The result of a probe: `open` when the TCP connection was made.
    pub fn probe_result(&mut self, open: bool, now: u64) -> Option<Route> {
        if self.route == Route::Relay && open {
            self.route = Route::Direct;
            self.run.clear();
            return Some(Route::Direct);
        }
        self.next_probe = self.next_probe.max(now + 1);
        None
    }

    /// The Unix time of the next probe (while on the relay).
    pub fn next_probe(&self) -> Option<u64> {
        (self.route == Route::Relay).then_some(self.next_probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 25))
    }

    #[test]
    fn one_dead_mx_does_not_switch() {
        let mut f = Fallback::new(60);
        for t in 0..10 {
            assert_eq!(f.direct_result("dead.example", a(1), true, t), None);
        }
        assert_eq!(f.route(), Route::Direct);
    }

    #[test]
    fn timeouts_to_distinct_domains_in_a_row_switch() {
        let mut f = Fallback::new(60);
        assert_eq!(f.direct_result("a.example", a(1), true, 0), None);
        assert_eq!(f.direct_result("b.example", a(2), true, 0), None);
        // A connection that got through breaks the run.
        assert_eq!(f.direct_result("c.example", a(3), false, 0), None);
        assert_eq!(f.direct_result("d.example", a(4), true, 0), None);
        assert_eq!(f.direct_result("d.example", a(4), true, 0), None);
        assert_eq!(f.direct_result("e.example", a(5), true, 0), None);
        assert_eq!(
            f.direct_result("f.example", a(6), true, 10),
            Some(Route::Relay)
        );
        assert_eq!(f.route(), Route::Relay);
        assert_eq!(f.next_probe(), Some(70));
    }

    #[test]
    fn probes_switch_back_when_open() {
        let mut f = Fallback::new(60);
        for (i, d) in ["a", "b", "c"].iter().enumerate() {
            f.direct_result(d, a(i as u8), true, 100);
        }
        assert_eq!(f.route(), Route::Relay);
        assert_eq!(f.probe_due(159), None);
        let first = f.probe_due(160).unwrap();
        assert_eq!(f.probe_due(161), None, "one probe per interval");
        assert_eq!(f.probe_result(false, 161), None);
        let second = f.probe_due(220).unwrap();
        assert_ne!(first, second, "the targets take turns");
        assert_eq!(f.probe_result(true, 221), Some(Route::Direct));
        assert_eq!(f.route(), Route::Direct);
        assert_eq!(f.probe_due(10_000), None);
    }
}
