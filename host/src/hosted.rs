//! What runs on one host at a time: the modules and the consumer groups, both writers of
//! state derived from the log. A single node always hosts them; in cluster mode only the
//! holder of the modules lease does, and the other hosts forward requests for them
//! (`http/forward.rs`).

use std::sync::Arc;

use crate::groups::ConsumerGroups;
use crate::modules::ModuleRegistry;

pub struct Hosted {
    pub modules: Arc<ModuleRegistry>,
    pub groups: Arc<ConsumerGroups>,
}

impl Hosted {
    /// Stops both: the groups persist their last progress, the modules commit their last
    /// batch.
    pub fn shutdown(&self) {
        self.groups.shutdown();
        self.modules.shutdown();
    }
}

/// Where the HTTP layer finds what this host runs: always there on a single node; in
/// cluster mode only on the lease holder, and empty while it moves between hosts.
#[derive(Default)]
pub struct HostedSlot(parking_lot::RwLock<Option<Arc<Hosted>>>);

impl HostedSlot {
    pub fn holding(hosted: Hosted) -> Self {
        Self(parking_lot::RwLock::new(Some(Arc::new(hosted))))
    }

    pub fn current(&self) -> Option<Arc<Hosted>> {
        self.0.read().clone()
    }

    /// The module registry, if this host runs the modules now.
    pub fn modules(&self) -> Option<Arc<ModuleRegistry>> {
        self.0.read().as_ref().map(|h| h.modules.clone())
    }

    /// Puts `hosted` in (or empties the slot); returns what was there.
    pub fn replace(&self, hosted: Option<Arc<Hosted>>) -> Option<Arc<Hosted>> {
        std::mem::replace(&mut *self.0.write(), hosted)
    }
}
