//! What the registry persists: one record per module (its versions, their settings, which
//! are paused, how new versions activate) and each version's component bytes, in the
//! `modules` keyspace; and the compiled form of each version, cached in a folder so that a
//! restart neither needs a re-upload nor recompiles.
//!
//! Keys: `module/<name>` → [`ModuleRecord`] (JSON), `wasm/<version>` → component bytes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::super::error::ModuleError;
use super::super::model::ModuleSettings;
use crate::engine::{CompiledModule, ModuleKind, WasmEngine};
use crate::store::{Keyspace, Keyspaces, StoreError, Writes};

/// When a new version replaces the current one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// As soon as it has caught up.
    #[default]
    Auto,
    /// When an operator activates it.
    Manual,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct VersionRecord {
    pub version: String,
    pub kind: ModuleKind,
    pub deployed_at: String,
    pub size_bytes: usize,
    pub settings: ModuleSettings,
    pub paused: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ModuleRecord {
    pub name: String,
    pub current: VersionRecord,
    pub candidate: Option<VersionRecord>,
    pub kept: Vec<VersionRecord>,
    pub activation: Activation,
}

fn record_key(name: &str) -> String {
    format!("module/{name}")
}

fn component_key(version: &str) -> String {
    format!("wasm/{version}")
}

/// The registry's persistent side.
pub(super) struct Records {
    space: Arc<dyn Keyspace>,
    engine: Arc<WasmEngine>,
    compiled_dir: PathBuf,
}

impl Records {
    pub(super) fn open(
        keyspaces: &dyn Keyspaces,
        engine: Arc<WasmEngine>,
        compiled_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&compiled_dir)
            .with_context(|| format!("creating {}", compiled_dir.display()))?;
        let space = keyspaces
            .open("modules")
            .context("opening the modules keyspace")?;
        Ok(Self {
            space,
            engine,
            compiled_dir,
        })
    }

    /// Every module's record.
    pub(super) fn modules(&self) -> anyhow::Result<Vec<ModuleRecord>> {
        let (from, until) = (b"module/".as_slice(), b"module0".as_slice());
        self.space
            .range(from, Some(until))
            .map(|entry| {
                let (_, value) = entry?;
                serde_json::from_slice(&value).context("reading a module record")
            })
            .collect()
    }

    /// Writes `record` durably.
    pub(super) fn save(&self, record: &ModuleRecord) -> Result<(), ModuleError> {
        let json = serde_json::to_vec(record).context("encoding a module record")?;
        let mut writes = Writes::default();
        writes.put(record_key(&record.name), json);
        self.commit(writes)
    }

    pub(super) fn remove(&self, name: &str) -> Result<(), ModuleError> {
        let mut writes = Writes::default();
        writes.remove(record_key(name));
        self.commit(writes)
    }

    fn commit(&self, writes: Writes) -> Result<(), ModuleError> {
        self.space.commit(writes)?;
        self.space.flush()?;
        Ok(())
    }

    /// Compiles `bytes` (a component, or a core module to wrap) as `version`, keeping the
    /// component and caching the compiled form.
    pub(super) fn compile(
        &self,
        version: &str,
        bytes: &[u8],
    ) -> Result<CompiledModule, ModuleError> {
        let component = WasmEngine::to_component(bytes)?;
        let compiled = self.engine.compile(&component)?;
        self.write_compiled(version, &compiled);
        let mut writes = Writes::default();
        writes.put(component_key(version), component);
        self.space.commit(writes)?;
        Ok(compiled)
    }

    fn compiled_path(&self, version: &str) -> PathBuf {
        self.compiled_dir.join(format!("{version}.cwasm"))
    }

    /// The compiled form from the cache, or compiled again from the stored component.
    pub(super) fn load_compiled(&self, version: &str) -> anyhow::Result<CompiledModule> {
        let path = self.compiled_path(version);
        match self.engine.load_compiled(&path) {
            Ok(compiled) => Ok(compiled),
            Err(err) => {
                tracing::info!(version, %err, "compiled form unusable; compiling again");
                let bytes = self
                    .space
                    .get(component_key(version).as_bytes())?
                    .context("the module's component bytes are missing")?;
                let compiled = self.engine.compile(&bytes)?;
                self.write_compiled(version, &compiled);
                Ok(compiled)
            }
        }
    }

    fn write_compiled(&self, version: &str, compiled: &CompiledModule) {
        let path = self.compiled_path(version);
        let written = compiled.serialize().and_then(|bytes| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        });
        if let Err(err) = written {
            tracing::warn!(version, %err, "caching the compiled module failed");
        }
    }

    /// Drops `version`'s component and compiled form (no module uses it any more).
    pub(super) fn forget_version(&self, version: &str) -> Result<(), StoreError> {
        let mut writes = Writes::default();
        writes.remove(component_key(version));
        self.space.commit(writes)?;
        let _ = std::fs::remove_file(self.compiled_path(version));
        Ok(())
    }

    /// Whether `version`'s compiled form is cached (for tests of retirement).
    pub(super) fn has_compiled(&self, version: &str) -> bool {
        self.compiled_path(version).exists()
    }
}
