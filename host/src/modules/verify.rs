//! `verify`: rebuild a module from position 0 into scratch space, up to the live
//! checkpoint, and compare the result with the live state entry by entry. Since guests see
//! deterministic clocks and randomness, a module that passes is replayable; one that keeps
//! hidden state across calls (so that its result depends on how events were batched) fails,
//! and the first differing entry says where.
//!
//! The long part, the rebuild up to where the live version stood when asked, runs on the
//! caller's thread while the version keeps going; the last stretch and the comparison run on
//! the version's owner, between two of its batches ([`super::owner::Owner::finish_verify`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::compare::{Difference, compare};
use super::error::ModuleError;
use super::model::FaultPolicy;
use super::runner::Runner;
use super::state::ModuleState;
use super::version::DeployedModule;
use crate::engine::{GuestError, GuestErrorKind};
use crate::store::{EventLog, GlobalPosition, Keyspaces, StoreError};

/// The outcome of a verification.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// Whether the rebuilt state equals the live state.
    pub matches: bool,
    /// The checkpoint both were compared at.
    pub position: u64,
    /// Entries (streams or keys) compared.
    pub compared: u64,
    /// Entries that differ.
    pub differences: u64,
    pub first_difference: Option<Difference>,
    pub rebuild_ms: u64,
}

/// Runs `module` (a scratch copy) from its checkpoint up to `to`, stepping over `skip`.
///
/// # Errors
/// [`ModuleError::Guest`] when the guest failed (`during` says what for), or
/// [`ModuleError::Storage`] when storage did.
pub(super) fn rebuild_until(
    log: &Arc<dyn EventLog>,
    module: &Arc<DeployedModule>,
    to: GlobalPosition,
    skip: BTreeSet<GlobalPosition>,
    during: &str,
) -> Result<(), ModuleError> {
    let mut runner = Runner::new(module.clone(), log.clone(), FaultPolicy::Halt, skip);
    let Err(fault) = runner.rebuild_to(to) else {
        return Ok(());
    };
    let during = match (fault.position, &fault.event_id) {
        (Some(p), Some(id)) => format!("{during}, at position {p} (event {id})"),
        (Some(p), None) => format!("{during}, at position {p}"),
        _ => during.to_owned(),
    };
    Err(match fault.kind {
        GuestErrorKind::Storage => {
            ModuleError::Storage(StoreError::Storage(format!("{during}: {}", fault.message)))
        }
        kind => ModuleError::Guest {
            during,
            error: GuestError::new(kind, fault.message),
        },
    })
}

/// A rebuild of a module from position 0 into a scratch keyspace (removed with it), to be
/// compared with the live state.
pub(super) struct Scratch {
    copy: Arc<DeployedModule>,
    log: Arc<dyn EventLog>,
    keyspaces: Arc<dyn Keyspaces>,
    space: String,
    rebuild_ms: u64,
}

impl Scratch {
    pub(super) fn new(
        log: Arc<dyn EventLog>,
        keyspaces: Arc<dyn Keyspaces>,
        module: &DeployedModule,
    ) -> Result<Self, ModuleError> {
        let space = format!("scratch/{}/{}", module.name, uuid::Uuid::new_v4());
        let state = ModuleState::new(keyspaces.open(&space)?);
        Ok(Self {
            copy: module.rebuilding_copy(module.identity(), state),
            log,
            keyspaces,
            space,
            rebuild_ms: 0,
        })
    }

    /// Folds the log into the scratch state from where it stands up to `to`, stepping
    /// over `module`'s dead letters.
    pub(super) fn rebuild_to(
        &mut self,
        module: &DeployedModule,
        to: GlobalPosition,
    ) -> Result<(), ModuleError> {
        let skip = module.state.dead_letter_positions()?;
        let started = Instant::now();
        let rebuilt = rebuild_until(&self.log, &self.copy, to, skip, "rebuilding to verify");
        self.rebuild_ms += started.elapsed().as_millis() as u64;
        rebuilt
    }

    /// With `module` stopped between batches: the last stretch of the rebuild, up to its
    /// checkpoint, and the comparison.
    ///
    /// # Errors
    /// [`ModuleError::Conflict`] if `module` is another version than the one rebuilt, or
    /// went back (a reset) since the rebuild started; storage or guest failures.
    pub(super) fn finish(mut self, module: &DeployedModule) -> Result<Verification, ModuleError> {
        if module.version != self.copy.version {
            return Err(ModuleError::Conflict(
                "a new version became current while verifying; verify it again".into(),
            ));
        }
        let position = module.state.checkpoint()?;
        if self.copy.state.checkpoint()? > position {
            return Err(ModuleError::Conflict(
                "the module was reset while it was being verified; verify it again".into(),
            ));
        }
        self.rebuild_to(module, position)?;
        let comparison = compare(&module.state, &self.copy.state, 0)?;
        Ok(Verification {
            matches: comparison.differences() == 0,
            position,
            compared: comparison.compared,
            differences: comparison.differences(),
            first_difference: comparison.first,
            rebuild_ms: self.rebuild_ms,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = self.keyspaces.remove(&self.space) {
            tracing::warn!(%err, "removing a verify's scratch state failed");
        }
    }
}
