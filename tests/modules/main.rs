//! The modules layer on its own. `registry`: the registry, owners and runners over an
//! in-memory log and in-memory keyspaces (no sled, no HTTP). `isolation`: a server started
//! in this process on an ephemeral port, whose state queries must not wait on a verify or
//! a deploy's switch. The isolation tests measure latency, so they run alone: they take
//! [`QUIET`] for writing, every other test for reading.

#[path = "../e2e/model.rs"]
#[allow(dead_code)]
mod model;
#[path = "../e2e/support.rs"]
mod support;

mod isolation;
mod registry;

/// Held for writing by a test that measures time, for reading by the others.
pub static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());
