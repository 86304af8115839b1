//! The last message accepted and the last one delivered, kept in memory
//! for `pimail status` (the server writes them to its status file). Two
//! small records behind a mutex: the cost of an accepted message is one
//! uncontended lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One message event: when, its queue/message id, and the address that
/// matters (the sender of a received message, the recipient of a sent one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: u64,
    pub id: String,
    pub who: String,
}

static RECEIVED: Mutex<Option<Event>> = Mutex::new(None);
static SENT: Mutex<Option<Event>> = Mutex::new(None);
static CHANGES: AtomicU64 = AtomicU64::new(0);

fn set(slot: &Mutex<Option<Event>>, id: &str, who: &str) {
    let e = Event {
        at: crate::util::timefmt::unix_now(),
        id: id.to_string(),
        who: who.to_string(),
    };
    // A poisoned lock only means a panic elsewhere; the record is plain data.
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    CHANGES.fetch_add(1, Ordering::Relaxed);
}

/// A message was accepted (250 after DATA) from `sender`.
pub fn received(id: &str, sender: &str) {
    set(&RECEIVED, id, sender);
}

/// A message was delivered to the remote `rcpt`.
pub fn sent(id: &str, rcpt: &str) {
    set(&SENT, id, rcpt);
}

/// Grows with every event, so a writer knows when to write again.
pub fn changes() -> u64 {
    CHANGES.load(Ordering::Relaxed)
}

pub fn last_received() -> Option<Event> {
    RECEIVED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub fn last_sent() -> Option<Event> {
    SENT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
