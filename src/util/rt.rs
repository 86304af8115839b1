//! Runtime helpers every stage may use: a timeout around any future and
//! the message/queue id. A leaf: it imports nothing of pimail but the
//! clock, so that protocol and delivery code never reach up into the
//! server that starts them.

use smol::future::FutureExt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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
    format!("{:08X}{:08X}", super::timefmt::unix_now() as u32, n)
}
