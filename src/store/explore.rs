//! What the three crash-state explorers (tests only, issue 15: the mbox
//! writer in `crash`, the POP3 deletion in `pop3_crash`, the outbound
//! queue in `send::queue_crash`) share: the tally of a run, which crash
//! points to visit, and the two verdicts (no state loses mail; a
//! deliberately missing flush is caught).

/// One exploration: how many distinct disk states were checked, and what
/// went wrong in them.
#[derive(Default)]
pub(crate) struct Run {
    pub(crate) states: usize,
    pub(crate) failures: Vec<String>,
}

/// The crash points to explore, with their index. Under an emulator
/// (cross/ci.sh runs the suite on aarch64 under qemu-user, ~10x slower)
/// every third one is enough to show the build behaves; the native run
/// explores them all.
pub(crate) fn visited<T>(points: &[T]) -> impl Iterator<Item = (usize, &T)> {
    let step = if emulated() { 3 } else { 1 };
    points
        .iter()
        .enumerate()
        .filter(move |(i, _)| i % step == 0)
}

/// Whether to check the `n`th distinct state (from 1): all of them
/// natively, every `step`th under an emulator, for the reason [`visited`]
/// gives (for explorers whose states come mostly from a few points).
pub(crate) fn sampled(n: usize, step: usize) -> bool {
    !emulated() || n % step == 1 % step
}

fn emulated() -> bool {
    std::env::var_os("PIMAIL_TEST_RUNNER").is_some()
}

/// The verdict on a sound run: no failure at all, and at least `least`
/// states explored natively (`least_emulated` under an emulator), so a
/// workload that stopped recording cannot pass by exploring nothing.
pub(crate) fn assert_safe(what: &str, run: &Run, least: usize, least_emulated: usize) {
    println!(
        "{what}: {} crash states explored, {} failures",
        run.states,
        run.failures.len()
    );
    assert!(
        run.failures.is_empty(),
        "{:#?}",
        &run.failures[..run.failures.len().min(5)]
    );
    let least = if emulated() { least_emulated } else { least };
    assert!(run.states >= least, "only {} states", run.states);
}

/// The verdict on a deliberately broken run (a flush left out): some
/// failure names one of `needles` ("lost", "torn", "partial"), which shows
/// the explorer can see the harm that flush prevents.
pub(crate) fn assert_finds(what: &str, run: &Run, needles: &[&str]) {
    println!(
        "{what}: {} states, {} failures",
        run.states,
        run.failures.len()
    );
    assert!(
        run.failures
            .iter()
            .any(|f| needles.iter().any(|n| f.contains(n))),
        "{what}: {} states, {:#?}",
        run.states,
        &run.failures[..run.failures.len().min(5)]
    );
}
