//! Storage faults on demand, for tests of what the store does when the disk fails.
//!
//! The writer asks [`InjectedFaults`] before each batch it applies and each flush it makes
//! (including the flush that starts a recovery); a test arms a failure for the n-th of them
//! from now, or for every one until it is cleared. Unarmed (always, outside tests) each
//! question is one atomic load.

use std::sync::atomic::{AtomicI64, Ordering};

use super::StoreError;

/// Failures armed by a test. The default fails nothing.
#[derive(Debug, Default)]
pub struct InjectedFaults {
    apply: Countdown,
    flush: Countdown,
}

/// Fails the `n`-th call from when it was armed (1 = the next), or every call (`-1`), or
/// none (`0`).
#[derive(Debug, Default)]
struct Countdown(AtomicI64);

const EVERY: i64 = -1;

impl Countdown {
    fn arm(&self, nth: i64) {
        self.0.store(nth, Ordering::SeqCst);
    }

    fn check(&self, what: &str) -> Result<(), StoreError> {
        let fail = match self.0.load(Ordering::SeqCst) {
            0 => false,
            EVERY => true,
            _ => self.0.fetch_sub(1, Ordering::SeqCst) == 1,
        };
        match fail {
            true => Err(StoreError::Storage(format!(
                "injected fault: {what} failed"
            ))),
            false => Ok(()),
        }
    }
}

impl InjectedFaults {
    /// The `nth` batch applied from now (1 = the next one) fails.
    pub fn fail_apply(&self, nth: u32) {
        self.apply.arm(i64::from(nth));
    }

    /// The `nth` flush from now (1 = the next one) fails.
    pub fn fail_flush(&self, nth: u32) {
        self.flush.arm(i64::from(nth));
    }

    /// Every flush fails until [`InjectedFaults::clear`] (a disk that stays broken).
    pub fn fail_every_flush(&self) {
        self.flush.arm(EVERY);
    }

    /// Nothing fails any more.
    pub fn clear(&self) {
        self.apply.arm(0);
        self.flush.arm(0);
    }

    pub(super) fn before_apply(&self) -> Result<(), StoreError> {
        self.apply.check("applying the batch")
    }

    pub(super) fn before_flush(&self) -> Result<(), StoreError> {
        self.flush.check("flushing to disk")
    }
}
