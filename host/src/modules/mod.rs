//! Deployed modules (reducers and projections, served under `/projections`).
//!
//! Layers, each file one job, every dependency pointing down this list:
//!
//! - [`registry`]: which versions each module has and their roles (current, candidate,
//!   kept, replay), persisted; deploys, activations, removals, and operator actions handed
//!   to the version's owner.
//! - [`owner`]: one thread per running version that owns its runner and takes commands
//!   (pause, resume, reset, skip, the end of a verify, stop).
//! - [`verify`] and [`compare`]: rebuilding into scratch space and comparing states;
//!   [`history`]: a stream's state at a past point, replayed on demand.
//! - [`runner`]: feeds the log through the guest and commits state with the checkpoint.
//! - [`version`]: one version as queries see it (identity, state, progress, guest log).
//! - [`state`]: a version's state in its keyspace; [`model`] and [`error`]: the vocabulary.
//!
//! Below this layer: the log ([`crate::store::EventLog`]) and keyspaces
//! ([`crate::store::Keyspaces`]), whatever backs them, and the engine.

mod compare;
mod error;
mod history;
mod model;
mod owner;
mod registry;
mod runner;
pub mod state;
mod verify;
mod version;

pub use compare::{Diff, Difference};
pub use error::ModuleError;
pub use history::{PastState, Point};
pub use model::{
    Counters, Fault, FaultPolicy, ModuleSettings, Progress, Rebuild, Status, validate_name,
};
pub use registry::{Activation, Deployed, ModuleRegistry, REPLAY_TTL, Role, VersionView};
pub use verify::Verification;
pub use version::{DeployedModule, Identity};
