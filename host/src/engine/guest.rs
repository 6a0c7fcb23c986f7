//! [`Guest`]: a live instance of a module, called by the module runners with batches of
//! events, each call under the module's time and memory limits; and what a failed call
//! reports ([`GuestError`]).

use std::sync::Arc;

use wasmtime::{Store, Trap};

use super::bindings::projection::Projection;
use super::bindings::reducer::Reducer;
use super::bindings::v2::{self, Emitted, Events};
use super::bindings::{EventFilter, StreamBatch};
use super::sandbox::{self, GuestLog, GuestState, StateStore};
use super::{CompiledModule, Contract, ModuleKind, ModuleLimits, ModulePre, WasmEngine, epoch};

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
    Reducer2(v2::reducer::Reducer),
    Projection2(v2::projection::Projection),
    Processor(v2::processor::Processor),
}

/// Why a guest refused a call's events: its message, and the event it names (an index
/// into the call's events) when the contract lets it say.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub event: Option<u32>,
    pub message: String,
}

impl From<v2::Failure> for Rejection {
    fn from(failure: v2::Failure) -> Self {
        Self {
            event: Some(failure.event),
            message: failure.message,
        }
    }
}

/// What a projection or processor call left: the guest's verdict (a processor's emitted
/// events), and the state store back unless the call trapped.
pub type Handled = (
    Result<Result<Vec<Emitted>, Rejection>, GuestError>,
    Option<Box<dyn StateStore>>,
);

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

    pub fn contract(&self) -> Contract {
        self.module.contract
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
                ModulePre::Reducer2(pre) => pre.instantiate(&mut store).map(Instance::Reducer2),
                ModulePre::Projection2(pre) => {
                    pre.instantiate(&mut store).map(Instance::Projection2)
                }
                ModulePre::Processor(pre) => pre.instantiate(&mut store).map(Instance::Processor),
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

    /// Whether a live instance exists (it holds a 0.2 reducer's states).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Drops the live instance (and whatever it holds); the next call makes a fresh one.
    pub fn kill(&mut self) {
        self.live = None;
    }

    /// The events the module wants.
    ///
    /// # Errors
    /// The call failed.
    pub fn filter(&mut self) -> Result<EventFilter, GuestError> {
        let filter = |f: v2::EventFilter| EventFilter {
            event_types: f.event_types,
            categories: f.categories,
        };
        self.call(|store, instance| match instance {
            Instance::Reducer(r) => r.call_filter(store),
            Instance::Projection(p) => p.call_filter(store),
            Instance::Reducer2(r) => r.call_filter(store).map(filter),
            Instance::Projection2(p) => p.call_filter(store).map(filter),
            Instance::Processor(p) => p.call_filter(store).map(filter),
        })
    }

    /// A reducer's state for a stream with no events yet.
    ///
    /// # Errors
    /// The call failed, or the module is not a reducer.
    pub fn init(&mut self, stream: &str) -> Result<Vec<u8>, GuestError> {
        let state = self.call(|store, instance| match instance {
            Instance::Reducer(r) => r.call_init(store, stream),
            Instance::Reducer2(r) => r.call_init(store, stream),
            _ => Err(Self::wrong_world()),
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
            _ => Err(Self::wrong_world()),
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

    /// Folds `events` (all of `stream`, in revision order) into `state` (`None`: from the
    /// reducer's `init`), for a reducer of either contract version: the new state, or the
    /// guest's error message. A 0.2 instance holds nothing afterwards.
    ///
    /// # Errors
    /// The call failed, or the module is not a reducer.
    pub fn fold_stream(
        &mut self,
        stream: &str,
        state: Option<Vec<u8>>,
        events: &Events,
    ) -> Result<Result<Vec<u8>, String>, GuestError> {
        if self.contract() == Contract::V0_1 {
            let batch = StreamBatch {
                stream_id: stream.to_owned(),
                state,
                events: super::records::to_v01(events),
            };
            let mut results = self.apply(&[batch])?;
            return results.pop().ok_or_else(|| {
                GuestError::new(GuestErrorKind::Contract, "apply returned no result")
            });
        }
        let mut call = Events {
            streams: Vec::new(),
            types: events.types.clone(),
            text: events.text.clone(),
            events: events.events.clone(),
        };
        call.events.iter_mut().for_each(|e| e.stream_index = 0);
        let start = match state {
            Some(state) => v2::Start::Stored(v2::StoredState {
                stream_id: stream.to_owned(),
                state,
            }),
            None => v2::Start::Fresh(stream.to_owned()),
        };
        let batch = v2::StreamBatch {
            slot: 0,
            start,
            count: call.events.len() as u32,
        };
        let folded = match self.apply_held(&call, &[batch])? {
            Ok(()) => self.save(&[0])?.pop(),
            Err(rejection) => {
                self.forget()?;
                return Ok(Err(rejection.message));
            }
        };
        self.forget()?;
        folded.map(Ok).ok_or_else(|| {
            GuestError::new(
                GuestErrorKind::Contract,
                "save returned no state for the stream just folded",
            )
        })
    }

    /// Folds a 0.2 reducer's stream batches into the states its instance holds (see the
    /// `reducer` world of `wit/0.2`).
    ///
    /// # Errors
    /// The call failed; the instance is then gone, and every state it held with it.
    pub fn apply_held(
        &mut self,
        events: &Events,
        batches: &[v2::StreamBatch],
    ) -> Result<Result<(), Rejection>, GuestError> {
        let result = self.call(|store, instance| match instance {
            Instance::Reducer2(r) => r.call_apply(store, events, batches),
            _ => Err(Self::wrong_world()),
        })?;
        Ok(result.map_err(Rejection::from))
    }

    /// A 0.2 reducer's states held in `slots`, one per slot, in order.
    ///
    /// # Errors
    /// The call failed, or a state is not JSON within the limit, or the count is wrong.
    pub fn save(&mut self, slots: &[u32]) -> Result<Vec<Vec<u8>>, GuestError> {
        let saved = self.call(|store, instance| match instance {
            Instance::Reducer2(r) => r.call_save(store, slots),
            _ => Err(Self::wrong_world()),
        })?;
        let broken = if saved.len() == slots.len() {
            saved
                .iter()
                .find_map(|state| check_state(state, self.limits.max_state_bytes).err())
                .map(|why| format!("save returned {why}"))
        } else {
            Some(format!(
                "save returned {} states for {} slots",
                saved.len(),
                slots.len()
            ))
        };
        if let Some(message) = broken {
            self.live = None;
            return Err(GuestError::new(GuestErrorKind::Contract, message));
        }
        Ok(saved)
    }

    /// Lets a 0.2 reducer drop every state it holds.
    ///
    /// # Errors
    /// The call failed.
    pub fn forget(&mut self) -> Result<(), GuestError> {
        if self.live.is_none() {
            return Ok(());
        }
        self.call(|store, instance| match instance {
            Instance::Reducer2(r) => r.call_forget(store),
            _ => Err(Self::wrong_world()),
        })
    }

    /// Lets a projection or processor handle events, reading and writing through `state`.
    /// A 0.1 projection gets the events as 0.1 records. Returns the store back with the
    /// guest's verdict: a processor's events to append, nothing for a projection.
    pub fn handle(&mut self, events: &Events, state: Box<dyn StateStore>) -> Handled {
        let mut state = Some(state);
        let v01 = matches!(self.contract(), Contract::V0_1).then(|| super::records::to_v01(events));
        let result = self.call(|store, instance| {
            store.data_mut().state_store = state.take();
            let result = match instance {
                Instance::Projection(p) => p
                    .call_handle(&mut *store, v01.as_deref().unwrap_or_default())
                    .map(|r| {
                        r.map(|()| Vec::new()).map_err(|message| Rejection {
                            event: None,
                            message,
                        })
                    }),
                Instance::Projection2(p) => p
                    .call_handle(&mut *store, events)
                    .map(|r| r.map(|()| Vec::new()).map_err(Rejection::from)),
                Instance::Processor(p) => p
                    .call_process(&mut *store, events)
                    .map(|r| r.map_err(Rejection::from)),
                _ => Err(Self::wrong_world()),
            };
            state = store.data_mut().state_store.take();
            result
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
