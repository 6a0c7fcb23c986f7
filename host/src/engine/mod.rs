//! The WebAssembly runtime: one wasmtime engine configured in one place, upload
//! validation and compilation, and [`Guest`], a live instance of a module that the module
//! runners call.
//!
//! - [`bindings`]: host bindings generated from `wit/`.
//! - [`sandbox`]: what a guest's store holds; the sealed WASI it sees; its log.
//! - [`epoch`]: the ticker behind per-call time limits.

pub mod bindings;
mod epoch;
pub mod sandbox;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use bindings::projection::{Projection, ProjectionPre};
use bindings::reducer::{Reducer, ReducerPre};
use bindings::{Event, EventFilter, StreamBatch, state_store};
use sandbox::{GuestLog, GuestState, StateStore};

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
    component: Component,
    pre: ModulePre,
}

enum ModulePre {
    Reducer(ReducerPre<GuestState>),
    Projection(ProjectionPre<GuestState>),
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

/// The engine and the two linkers, shared by every module.
pub struct WasmEngine {
    engine: Engine,
    reducer_linker: Linker<GuestState>,
    projection_linker: Linker<GuestState>,
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

        let mut reducer_linker = Linker::new(&engine);
        sealed_wasi(&mut reducer_linker)?;
        Reducer::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut reducer_linker, |s| s)?;

        let mut projection_linker = Linker::new(&engine);
        sealed_wasi(&mut projection_linker)?;
        Projection::add_to_linker::<GuestState, HasSelf<GuestState>>(
            &mut projection_linker,
            |s| s,
        )?;

        let ticker = epoch::EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            reducer_linker,
            projection_linker,
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
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let kind = if has("apply") || has("init") {
            ModuleKind::Reducer
        } else if has("handle") {
            ModuleKind::Projection
        } else {
            return Err(UploadError::Incompatible(format!(
                "the component implements no Refold world: a reducer exports filter, init and \
                 apply; a projection exports filter and handle; this one exports [{}]",
                exports.join(", ")
            )));
        };
        let world_error = |err: wasmtime::Error| {
            UploadError::Incompatible(format!(
                "the component does not match the refold:projection/{} world: {err:#}",
                match kind {
                    ModuleKind::Reducer => "reducer",
                    ModuleKind::Projection => "projection",
                }
            ))
        };
        let pre = match kind {
            ModuleKind::Reducer => ModulePre::Reducer(
                ReducerPre::new(
                    self.reducer_linker
                        .instantiate_pre(&component)
                        .map_err(world_error)?,
                )
                .map_err(world_error)?,
            ),
            ModuleKind::Projection => ModulePre::Projection(
                ProjectionPre::new(
                    self.projection_linker
                        .instantiate_pre(&component)
                        .map_err(world_error)?,
                )
                .map_err(world_error)?,
            ),
        };
        Ok(CompiledModule {
            kind,
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

/// What went wrong inside a guest call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GuestError {
    pub kind: GuestErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestErrorKind {
    /// The guest trapped (a panic, `unreachable`, a bad memory access, stack overflow).
    Trap,
    /// The call ran past its time limit.
    Timeout,
    /// The guest tried to grow its memory past its limit.
    MemoryLimit,
    /// The guest returned an error result.
    Error,
    /// The guest broke the contract (wrong number of results, oversized state).
    Contract,
    /// Instantiation failed.
    Instantiate,
    /// Not the guest's doing: the host's storage failed while the module ran.
    Storage,
}

impl GuestError {
    pub fn new(kind: GuestErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn from_wasmtime(
        err: &wasmtime::Error,
        limits: &ModuleLimits,
        store_failure: Option<String>,
        printed: &[String],
    ) -> Self {
        if let Some(failure) = store_failure {
            return Self::new(GuestErrorKind::Contract, failure);
        }
        let chain = format!("{err:#}");
        // A Rust panic prints its message to stderr, then traps with `unreachable`.
        if let Some(start) = printed.iter().position(|line| line.contains("panicked at")) {
            let message = printed[start..].join("\n");
            return Self::new(
                GuestErrorKind::Trap,
                format!("the guest panicked: {message}"),
            );
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Self::new(
                GuestErrorKind::Timeout,
                format!(
                    "the call ran longer than the module's time limit of {:?}",
                    limits.call_timeout
                ),
            ),
            _ if err.downcast_ref::<sandbox::LimitHit>().is_some() => {
                let hit = err.downcast_ref::<sandbox::LimitHit>();
                Self::new(
                    GuestErrorKind::MemoryLimit,
                    hit.map_or_else(String::new, ToString::to_string),
                )
            }
            Some(trap) => {
                let mut message = format!("the guest trapped: {trap}");
                if let Some(last) = printed.last() {
                    message.push_str(&format!(" (its last output: {last})"));
                }
                Self::new(GuestErrorKind::Trap, message)
            }
            None => Self::new(GuestErrorKind::Trap, format!("the guest failed: {chain}")),
        }
    }
}

/// A live instance of one module. After a trap the instance is dead; the next call makes
/// a fresh one.
pub struct Guest {
    engine: Arc<WasmEngine>,
    module: Arc<CompiledModule>,
    limits: ModuleLimits,
    log: GuestLog,
    live: Option<(Store<GuestState>, Instance)>,
}

enum Instance {
    Reducer(Reducer),
    Projection(Projection),
}

/// Epoch ticks per second; see [`epoch`].
const TICKS_PER_SECOND: u64 = 1_000 / epoch::TICK_MS;

impl Guest {
    pub fn new(
        engine: Arc<WasmEngine>,
        module: Arc<CompiledModule>,
        limits: ModuleLimits,
        log: GuestLog,
    ) -> Self {
        Self {
            engine,
            module,
            limits,
            log,
            live: None,
        }
    }

    pub fn kind(&self) -> ModuleKind {
        self.module.kind
    }

    /// Another instance of the same module, with the same limits and log (made when first
    /// called), to run beside this one.
    pub fn sibling(&self) -> Guest {
        Guest::new(
            self.engine.clone(),
            self.module.clone(),
            self.limits.clone(),
            self.log.clone(),
        )
    }

    pub fn limits(&self) -> &ModuleLimits {
        &self.limits
    }

    fn live(&mut self) -> Result<&mut (Store<GuestState>, Instance), GuestError> {
        if self.live.is_none() {
            let mut store = self.engine.new_store(&self.limits, &self.log);
            store.set_epoch_deadline(self.deadline_ticks());
            let instance = match &self.module.pre {
                ModulePre::Reducer(pre) => pre.instantiate(&mut store).map(Instance::Reducer),
                ModulePre::Projection(pre) => pre.instantiate(&mut store).map(Instance::Projection),
            }
            .map_err(|err| {
                let mut e = GuestError::from_wasmtime(&err, &self.limits, None, &[]);
                e.kind = GuestErrorKind::Instantiate;
                e.message = format!("instantiating the module failed: {}", e.message);
                e
            })?;
            self.live = Some((store, instance));
        }
        self.live
            .as_mut()
            .ok_or_else(|| GuestError::new(GuestErrorKind::Instantiate, "no instance"))
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.call_timeout.as_millis() as u64 * TICKS_PER_SECOND / 1_000).max(1) + 1
    }

    /// Runs one call with a fresh deadline; a failed call kills the instance.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<GuestState>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, GuestError> {
        let ticks = self.deadline_ticks();
        let printed_before = self.log.written();
        let (store, instance) = self.live()?;
        store.set_epoch_deadline(ticks);
        store.data_mut().store_failure = None;
        store.data_mut().call_write_bytes = 0;
        match f(store, instance) {
            Ok(value) => Ok(value),
            Err(err) => {
                let failure = store.data_mut().store_failure.take();
                let printed = self.log.stderr_since(printed_before);
                let error = GuestError::from_wasmtime(&err, &self.limits, failure, &printed);
                self.live = None;
                Err(error)
            }
        }
    }

    fn wrong_world() -> wasmtime::Error {
        wasmtime::Error::msg("the module does not implement this world")
    }

    /// The events the module wants.
    ///
    /// # Errors
    /// The call failed.
    pub fn filter(&mut self) -> Result<EventFilter, GuestError> {
        self.call(|store, instance| match instance {
            Instance::Reducer(r) => r.call_filter(store),
            Instance::Projection(p) => p.call_filter(store),
        })
    }

    /// A reducer's state for a stream with no events yet.
    ///
    /// # Errors
    /// The call failed, or the module is not a reducer.
    pub fn init(&mut self, stream: &str) -> Result<Vec<u8>, GuestError> {
        let state = self.call(|store, instance| match instance {
            Instance::Reducer(r) => r.call_init(store, stream),
            Instance::Projection(_) => Err(Self::wrong_world()),
        })?;
        check_state(&state, self.limits.max_state_bytes).map_err(|why| {
            GuestError::new(GuestErrorKind::Contract, format!("init returned {why}"))
        })?;
        Ok(state)
    }

    /// Folds each stream batch into its state: one result per batch.
    ///
    /// # Errors
    /// The call failed, or the guest broke the contract.
    pub fn apply(
        &mut self,
        batches: &[StreamBatch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, GuestError> {
        let results = self.call(|store, instance| match instance {
            Instance::Reducer(r) => r.call_apply(store, batches),
            Instance::Projection(_) => Err(Self::wrong_world()),
        })?;
        if results.len() != batches.len() {
            self.live = None;
            return Err(GuestError::new(
                GuestErrorKind::Contract,
                format!(
                    "apply returned {} results for {} stream batches",
                    results.len(),
                    batches.len()
                ),
            ));
        }
        for state in results.iter().flatten() {
            check_state(state, self.limits.max_state_bytes).map_err(|why| {
                GuestError::new(GuestErrorKind::Contract, format!("apply returned {why}"))
            })?;
        }
        Ok(results)
    }

    /// Lets a projection handle events, reading and writing through `state`. Returns the
    /// store back with the guest's verdict.
    ///
    /// # Errors
    /// The call failed (the store's writes must then be discarded).
    pub fn handle(
        &mut self,
        events: &[Event],
        state: Box<dyn StateStore>,
    ) -> (
        Result<Result<(), String>, GuestError>,
        Option<Box<dyn StateStore>>,
    ) {
        let mut state = Some(state);
        let result = self.call(|store, instance| match instance {
            Instance::Projection(p) => {
                store.data_mut().state_store = state.take();
                let result = p.call_handle(&mut *store, events);
                state = store.data_mut().state_store.take();
                result
            }
            Instance::Reducer(_) => Err(Self::wrong_world()),
        });
        (result, state)
    }
}

/// A state (reducer state or projection value) must be JSON and within the size limit.
///
/// # Errors
/// What is wrong with it, as a phrase ("a state of N bytes; ...").
pub fn check_state(bytes: &[u8], max_bytes: usize) -> Result<(), String> {
    if bytes.len() > max_bytes {
        return Err(format!(
            "a state of {} bytes; the module's limit is {max_bytes} bytes",
            bytes.len()
        ));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|err| format!("a state that is not JSON ({err})"))
}

impl bindings::reducer::refold::projection::types::Host for GuestState {}

impl GuestState {
    fn with_state_store<R>(
        &mut self,
        f: impl FnOnce(&mut dyn StateStore) -> Result<R, String>,
    ) -> wasmtime::Result<R> {
        let Some(store) = self.state_store.as_mut() else {
            return Err(wasmtime::Error::msg(
                "state-store used outside a handle call",
            ));
        };
        f(store.as_mut()).map_err(|message| {
            self.store_failure = Some(message.clone());
            wasmtime::Error::msg(message)
        })
    }
}

impl GuestState {
    /// Charges a state-store write of `bytes` (plus its entry) against the call's budget,
    /// and checks the key's length.
    fn charge_write(&mut self, key: &str, bytes: usize) -> wasmtime::Result<()> {
        self.call_write_bytes += key.len() + bytes + ENTRY_OVERHEAD_BYTES;
        let (written, budget) = (self.call_write_bytes, self.max_call_write_bytes);
        let refusal = if key.len() > self.max_key_bytes {
            Some(format!(
                "the guest used a state-store key of {} bytes; the module's limit is {} bytes",
                key.len(),
                self.max_key_bytes
            ))
        } else if written > budget {
            Some(format!(
                "the call wrote {written} bytes through the state store (puts and deletes, \
                 {ENTRY_OVERHEAD_BYTES} bytes more per write); the module's limit is {budget} \
                 bytes per call"
            ))
        } else {
            None
        };
        match refusal {
            Some(message) => {
                self.store_failure = Some(message.clone());
                Err(wasmtime::Error::msg(message))
            }
            None => Ok(()),
        }
    }
}

impl state_store::Host for GuestState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.with_state_store(|s| s.get(&key))
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.charge_write(&key, value.len())?;
        self.with_state_store(|s| s.put(key, value))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.charge_write(&key, 0)?;
        self.with_state_store(|s| s.delete(key))
    }

    fn scan(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        let max_bytes = self.max_scan_bytes;
        self.with_state_store(|s| {
            s.scan(&prefix, start_after.as_deref(), limit as usize, max_bytes)
        })
    }
}
