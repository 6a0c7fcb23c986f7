//! Giving freed heap memory back to the system.
//!
//! glibc's allocator keeps memory that threads freed in its arenas for reuse, and returns it
//! to the system only from the top of each heap. Module runners allocate and free batches
//! of events and states on several threads at once, so the arenas fill with free chunks
//! that are never at the top: rebuilding 10 modules over 10 M events kept the heap in use
//! flat at ~305 MiB while the heap held grew from 454 to 833 MiB, and the process's
//! resident memory with it. `malloc_trim` releases the free pages inside the arenas too
//! (with `madvise`), so calling it now and then keeps resident memory at what is in use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// At most one trim per this long, process-wide: a trim walks every arena (a few
/// milliseconds with hundreds of MiB held).
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// When the last trim ran, in milliseconds since the Unix epoch.
static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);

/// Returns the heap's free pages to the system, unless that was done less than
/// [`TRIM_EVERY`] ago. Cheap to call often (one atomic load when it is not due).
pub fn trim_if_due() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < TRIM_EVERY.as_millis() as u64 {
        return;
    }
    if LAST_TRIM_MS
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only releases free memory held by the allocator; it takes the
    // allocator's own locks and is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
