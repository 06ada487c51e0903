//! Panic policy and test-only fault injection. Exists on every shard (thread-locals only).
//!
//! A panic while one message is handled is caught and costs only that connection (1011). A
//! panic anywhere else on a shard means the shard cannot be trusted to go on: the process
//! exits non-zero at once rather than leave a listener that accepts and then hangs.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

static INJECTION: AtomicBool = AtomicBool::new(false);

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Faults a test can trigger by sending a text message, when injection is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panic inside message handling (caught: the connection closes with 1011).
    PanicInHandler,
    /// Panic on the shard outside any guard (the process must exit non-zero).
    KillShard,
}

/// Turns fault injection on; only `beacon serve` with `BEACON_FAULT_INJECTION=1` does this.
pub fn enable_injection() {
    INJECTION.store(true, Ordering::Relaxed);
}

pub fn injected(text: &[u8]) -> Option<Fault> {
    if !INJECTION.load(Ordering::Relaxed) {
        return None;
    }
    match text {
        b"__beacon_fault__:panic" => Some(Fault::PanicInHandler),
        b"__beacon_fault__:kill_shard" => Some(Fault::KillShard),
        _ => None,
    }
}

/// Runs `f` with panics caught; `None` if it panicked.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    GUARDED.with(|g| g.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(false));
    r.ok()
}

/// Installs the process-wide policy: unguarded panics on shard threads end the process.
pub fn install_panic_policy() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let on_shard = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("beacon-shard-"));
        if on_shard && !GUARDED.with(Cell::get) {
            eprintln!("beacon: a shard panicked outside a connection guard; exiting");
            std::process::exit(70);
        }
    }));
}
