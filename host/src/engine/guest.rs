//! [`Guest`]: a live instance of a module, called by the module runners with batches of
//! events, each call under the module's time and memory limits; and what a failed call
//! reports ([`GuestError`]).

use std::sync::Arc;

use wasmtime::{Store, Trap};

use super::bindings::projection::Projection;
use super::bindings::reducer::Reducer;
use super::bindings::{Event, EventFilter, StreamBatch};
use super::sandbox::{self, GuestLog, GuestState, StateStore};
use super::{CompiledModule, ModuleKind, ModuleLimits, ModulePre, WasmEngine, epoch};

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
