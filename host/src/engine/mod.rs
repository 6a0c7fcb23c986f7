//! The WebAssembly runtime: one wasmtime engine configured in one place, upload
//! validation and compilation, and [`Guest`], a live instance of a module that the module
//! runners call.
//!
//! - [`bindings`]: host bindings generated from `wit/`.
//! - [`sandbox`]: what a guest's store holds; the sealed WASI it sees; its log.
//! - [`epoch`]: the ticker behind per-call time limits.
//! - [`guest`]: a live instance and what its calls report; [`state_store`]: the state store a
//!   projection's calls see.

pub mod bindings;
mod epoch;
mod guest;
pub mod records;
pub mod sandbox;
mod state_store;

use std::path::Path;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store};

use bindings::projection::{Projection, ProjectionPre};
use bindings::reducer::{Reducer, ReducerPre};
use bindings::v2;
pub use guest::{Guest, GuestError, GuestErrorKind, Handled, Rejection, check_state};
use sandbox::{GuestLog, GuestState};

/// Limits on one module's instance, and on every host-side buffer a guest can grow in one
/// call: what it writes and deletes through the state store, the keys it names, what one
/// scan returns, what it draws from randomness and what it prints.
#[derive(Clone, Debug)]
pub struct ModuleLimits {
    /// Linear memory, in bytes, of each of the instance's memories (a component made by
    /// the ordinary toolchains has one).
    pub memory_bytes: usize,
    /// Elements across the instance's tables.
    pub table_elements: usize,
    /// Wall time one call into the guest may take.
    pub call_timeout: Duration,
    /// Largest state: one reducer state, or one projection value.
    pub max_state_bytes: usize,
    /// Most bytes a projection may write through its state store in one call: each `put`
    /// counts its key and value, each `delete` its key, and both [`ENTRY_OVERHEAD_BYTES`]
    /// more for the entry the host keeps until the commit.
    pub max_call_write_bytes: usize,
    /// Longest key a projection may `put` or `delete`.
    pub max_key_bytes: usize,
    /// Most bytes (keys and values) one `scan` may return.
    pub max_scan_bytes: usize,
    /// Most bytes one draw of randomness may ask for.
    pub max_random_bytes: usize,
    /// What is kept of the guest's output.
    pub log_bytes: usize,
}

/// What the host keeps per pending state-store write besides its key and value (the map
/// entry and the allocations), charged against [`ModuleLimits::max_call_write_bytes`] so
/// that many tiny writes cannot grow the host past the limit either.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

impl Default for ModuleLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 * 1024 * 1024,
            table_elements: 100_000,
            call_timeout: Duration::from_secs(10),
            max_state_bytes: 1024 * 1024,
            max_call_write_bytes: 64 * 1024 * 1024,
            max_key_bytes: 4 * 1024,
            max_scan_bytes: 16 * 1024 * 1024,
            max_random_bytes: 1024 * 1024,
            log_bytes: 64 * 1024,
        }
    }
}

/// Which world a module implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    Reducer,
    Projection,
    /// A projection whose calls return events to append (contract 0.2).
    Processor,
}

impl ModuleKind {
    /// The world's name in the WIT.
    pub fn world(self) -> &'static str {
        match self {
            ModuleKind::Reducer => "reducer",
            ModuleKind::Projection => "projection",
            ModuleKind::Processor => "processor",
        }
    }

    /// Whether the module keeps a key-value read model (a projection or a processor).
    pub fn has_key_value_state(self) -> bool {
        matches!(self, ModuleKind::Projection | ModuleKind::Processor)
    }
}

/// Which version of the guest contract (`refold:projection`) a module implements.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Contract {
    #[serde(rename = "0.1")]
    V0_1,
    #[serde(rename = "0.2")]
    V0_2,
}

impl Contract {
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1",
            Contract::V0_2 => "0.2",
        }
    }
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bytes are not WebAssembly at all.
    #[error("{0}")]
    NotWasm(String),
    /// WebAssembly, but not a usable component of a Refold world.
    #[error("{0}")]
    Incompatible(String),
}

/// The interfaces the sandbox grants, by prefix. Everything else is refused at upload.
const GRANTED_IMPORTS: [&str; 6] = [
    "refold:projection/",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// WASI p2 as the sandbox grants it (see [`sandbox`]), except that waiting is refused:
/// a guest blocked in `poll` or `pollable.block` (a sleep) would hold its thread in real
/// time, beyond the reach of the epoch deadline, so it traps instead.
fn sealed_wasi(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    const NO_WAITING: &str = "the guest tried to wait (sleep or poll); modules run without \
        waiting, so that time limits hold";
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    poll.func_wrap(
        "poll",
        |_, (_,): (Vec<Resource<DynPollable>>,)| -> wasmtime::Result<(Vec<u32>,)> {
            Err(wasmtime::Error::msg(NO_WAITING))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |_, (_,): (Resource<DynPollable>,)| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(NO_WAITING))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A module ready to instantiate.
pub struct CompiledModule {
    pub kind: ModuleKind,
    pub contract: Contract,
    component: Component,
    pre: ModulePre,
}

enum ModulePre {
    Reducer(ReducerPre<GuestState>),
    Projection(ProjectionPre<GuestState>),
    Reducer2(v2::reducer::ReducerPre<GuestState>),
    Projection2(v2::projection::ProjectionPre<GuestState>),
    Processor(v2::processor::ProcessorPre<GuestState>),
}

impl CompiledModule {
    /// The compiled form, to cache on disk.
    ///
    /// # Errors
    /// Serialization failures.
    pub fn serialize(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.component.serialize()?)
    }
}

/// The engine and a linker per world, shared by every module.
pub struct WasmEngine {
    engine: Engine,
    reducer_linker: Linker<GuestState>,
    projection_linker: Linker<GuestState>,
    reducer2_linker: Linker<GuestState>,
    projection2_linker: Linker<GuestState>,
    processor_linker: Linker<GuestState>,
    _ticker: epoch::EpochTicker,
}

impl WasmEngine {
    /// # Errors
    /// The engine configuration is rejected or the linkers cannot be built.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Guests run synchronously; the concurrency machinery only slows calls.
            .concurrency_support(false)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .parallel_compilation(true)
            .max_wasm_stack(1024 * 1024);
        let engine = Engine::new(&config)?;

        let linker = |add: &dyn Fn(&mut Linker<GuestState>) -> wasmtime::Result<()>| -> wasmtime::Result<Linker<GuestState>> {
            let mut linker = Linker::new(&engine);
            sealed_wasi(&mut linker)?;
            add(&mut linker)?;
            Ok(linker)
        };
        let reducer_linker =
            linker(&|l| Reducer::add_to_linker::<GuestState, HasSelf<GuestState>>(l, |s| s))?;
        let projection_linker =
            linker(&|l| Projection::add_to_linker::<GuestState, HasSelf<GuestState>>(l, |s| s))?;
        let reducer2_linker = linker(&|l| {
            v2::reducer::Reducer::add_to_linker::<GuestState, HasSelf<GuestState>>(l, |s| s)
        })?;
        let projection2_linker = linker(&|l| {
            v2::projection::Projection::add_to_linker::<GuestState, HasSelf<GuestState>>(l, |s| s)
        })?;
        let processor_linker = linker(&|l| {
            v2::processor::Processor::add_to_linker::<GuestState, HasSelf<GuestState>>(l, |s| s)
        })?;

        let ticker = epoch::EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            reducer_linker,
            projection_linker,
            reducer2_linker,
            projection2_linker,
            processor_linker,
            _ticker: ticker,
        })
    }

    /// Turns uploaded bytes into a component: a component is taken as it is; a core
    /// module carrying wit-bindgen's component type (built for `wasm32-unknown-unknown`) is
    /// made into one.
    ///
    /// # Errors
    /// [`UploadError`] naming what is wrong.
    pub fn to_component(bytes: &[u8]) -> Result<Vec<u8>, UploadError> {
        const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
        const CORE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(UploadError::NotWasm(
                "the upload is not WebAssembly: it does not start with the \\0asm header".into(),
            ));
        }
        let version: [u8; 4] = bytes[4..8].try_into().unwrap_or_default();
        if version == COMPONENT_VERSION {
            return Ok(bytes.to_vec());
        }
        if version != CORE_VERSION {
            return Err(UploadError::NotWasm(format!(
                "unknown WebAssembly version {version:02x?}"
            )));
        }
        wit_component::ComponentEncoder::default()
            .module(bytes)
            .and_then(|encoder| encoder.validate(true).encode())
            .map_err(|err| {
                UploadError::Incompatible(format!(
                    "the upload is a core WebAssembly module that cannot be made a component \
                     (build it with wit-bindgen against Refold's WIT, for wasm32-wasip2 or \
                     wasm32-unknown-unknown): {err:#}"
                ))
            })
    }

    /// Compiles and checks a component: which world it implements, and that it imports
    /// only what the sandbox grants.
    ///
    /// # Errors
    /// [`UploadError`] naming what is missing, mistyped or not granted.
    pub fn compile(&self, component_bytes: &[u8]) -> Result<CompiledModule, UploadError> {
        let component = Component::new(&self.engine, component_bytes).map_err(|err| {
            UploadError::Incompatible(format!("the component is not valid: {err:#}"))
        })?;
        self.prepare(component)
    }

    /// Loads a compiled form written by [`CompiledModule::serialize`].
    ///
    /// # Errors
    /// The file is missing, or was made by another engine version.
    pub fn load_compiled(&self, path: &Path) -> anyhow::Result<CompiledModule> {
        // SAFETY: the file is written only by this server from `Component::serialize`;
        // wasmtime checks the engine version and configuration before using it.
        let component = unsafe { Component::deserialize_file(&self.engine, path)? };
        Ok(self.prepare(component)?)
    }

    fn prepare(&self, component: Component) -> Result<CompiledModule, UploadError> {
        let ty = component.component_type();
        let refused: Vec<&str> = ty
            .imports(&self.engine)
            .map(|(name, _)| name)
            .filter(|name| {
                !GRANTED_IMPORTS
                    .iter()
                    .any(|granted| name.starts_with(granted))
            })
            .collect();
        if !refused.is_empty() {
            return Err(UploadError::Incompatible(format!(
                "the component imports {} which the sandbox does not grant (granted: \
                 refold:projection, and from WASI only cli, io, clocks, random and an empty \
                 filesystem)",
                refused.join(", ")
            )));
        }
        let imports_v2 = ty
            .imports(&self.engine)
            .any(|(name, _)| name.starts_with("refold:projection/") && name.ends_with("@0.2.0"));
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let (kind, contract) = if has("process") {
            (ModuleKind::Processor, Contract::V0_2)
        } else if has("apply") || has("init") {
            let v2 = imports_v2 || has("save") || has("forget");
            (
                ModuleKind::Reducer,
                if v2 { Contract::V0_2 } else { Contract::V0_1 },
            )
        } else if has("handle") {
            let v2 = imports_v2;
            (
                ModuleKind::Projection,
                if v2 { Contract::V0_2 } else { Contract::V0_1 },
            )
        } else {
            return Err(UploadError::Incompatible(format!(
                "the component implements no Refold world: a reducer exports filter, init and \
                 apply (and in contract 0.2 save and forget); a projection exports filter and \
                 handle; a processor exports filter and process; this one exports [{}]",
                exports.join(", ")
            )));
        };
        let world_error = |err: wasmtime::Error| {
            UploadError::Incompatible(format!(
                "the component does not match the refold:projection/{}@{} world: {err:#}",
                kind.world(),
                match contract {
                    Contract::V0_1 => "0.1.0",
                    Contract::V0_2 => "0.2.0",
                }
            ))
        };
        let linker = match (kind, contract) {
            (ModuleKind::Reducer, Contract::V0_1) => &self.reducer_linker,
            (ModuleKind::Projection, Contract::V0_1) => &self.projection_linker,
            (ModuleKind::Reducer, Contract::V0_2) => &self.reducer2_linker,
            (ModuleKind::Projection, Contract::V0_2) => &self.projection2_linker,
            (ModuleKind::Processor, _) => &self.processor_linker,
        };
        let instance_pre = linker.instantiate_pre(&component).map_err(world_error)?;
        let pre = match (kind, contract) {
            (ModuleKind::Reducer, Contract::V0_1) => {
                ModulePre::Reducer(ReducerPre::new(instance_pre).map_err(world_error)?)
            }
            (ModuleKind::Projection, Contract::V0_1) => {
                ModulePre::Projection(ProjectionPre::new(instance_pre).map_err(world_error)?)
            }
            (ModuleKind::Reducer, Contract::V0_2) => ModulePre::Reducer2(
                v2::reducer::ReducerPre::new(instance_pre).map_err(world_error)?,
            ),
            (ModuleKind::Projection, Contract::V0_2) => ModulePre::Projection2(
                v2::projection::ProjectionPre::new(instance_pre).map_err(world_error)?,
            ),
            (ModuleKind::Processor, _) => ModulePre::Processor(
                v2::processor::ProcessorPre::new(instance_pre).map_err(world_error)?,
            ),
        };
        Ok(CompiledModule {
            kind,
            contract,
            component,
            pre,
        })
    }

    fn new_store(&self, limits: &ModuleLimits, log: &GuestLog) -> Store<GuestState> {
        let mut store = Store::new(&self.engine, GuestState::new(limits, log));
        store.limiter(|state| &mut state.limits);
        store
    }
}
