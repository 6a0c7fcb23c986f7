//! Write Refold reducers and projections as plain typed Rust.
//!
//! A Refold module is a WebAssembly component implementing one of the worlds of the guest
//! contract: `wit/0.2/refold.wit` (0.2, the default) or `wit/refold.wit` (0.1, with the
//! `contract-0-1` feature). This crate hides the contract, and the difference between its
//! versions, behind three traits and three macros:
//!
//! - [`Reducer`]: one state per stream. Implement `apply(&mut State, &Event)`; the state is
//!   any serde type, stored by the host as JSON. Export with [`export_reducer!`].
//! - [`Projection`]: one read model across streams. Implement `handle(&Event, &mut Store)`
//!   and write typed values to the [`Store`]. Export with [`export_projection!`].
//! - [`Processor`]: a projection that acts. Implement `process(&Event, &mut Store, &mut
//!   Emit)`; what it emits is appended exactly once. Export with [`export_processor!`]
//!   (contract 0.2).
//!
//! Errors are plain `Result<_, String>`: an error faults the module at that event, and the
//! host shows the message together with the event's position and id. A panic traps the
//! call; on `wasm32-wasip2` its message goes to stderr, which the host keeps in the
//! module's log.
//!
//! ```
//! use refold_guest::{Event, Filter, Reducer};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Balance {
//!     cents: i64,
//! }
//!
//! #[derive(Deserialize)]
//! struct Deposited {
//!     amount: i64,
//! }
//!
//! struct Account;
//!
//! impl Reducer for Account {
//!     type State = Balance;
//!
//!     fn filter() -> Filter {
//!         Filter::all().event_types(["Deposited"])
//!     }
//!
//!     fn apply(state: &mut Balance, event: &Event) -> Result<(), String> {
//!         state.cents += event.data::<Deposited>()?.amount;
//!         Ok(())
//!     }
//! }
//!
//! refold_guest::export_reducer!(Account);
//! ```
//!
//! Time and randomness: inside a module WASI's clocks are frozen and its randomness is
//! constant (the wall clock reads the Unix epoch, the monotonic clock 0, and every random
//! draw returns the same bytes), so that what a module sees is a pure function of its
//! events and a replay yields the same state, byte for byte. Take "now" from
//! [`Event::recorded_at_micros`], and random-looking values from [`Event::random`] (a
//! stream seeded by [`Event::seed`], from the event's id and position): the same event
//! gives the same values in every replay. Keep no generator of your own across events in
//! a `static`: it would carry state from one call of an instance to the next, which a
//! rebuild in a fresh instance does not see.
//!
//! Build the crate that uses it as a `cdylib` for `wasm32-wasip2` (cargo then writes a
//! component) or for `wasm32-unknown-unknown` (a core module the host componentizes on
//! upload). The [`testing`] module runs reducers and projections on the native target.
//!
//! Layout: `event` (what a module receives and asks for), `reducer`, `projection`,
//! `store` (the projection's key-value store), `bindings` (generated, private).

#![warn(missing_docs)]

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings;
mod event;
mod processor;
mod projection;
mod reducer;
mod store;
#[cfg(not(feature = "contract-0-1"))]
mod views;

pub use event::{Event, Filter, category_of};
pub use processor::{Emit, Emitted, Expected, Processor};
pub use projection::Projection;
pub use reducer::Reducer;
pub use store::{ScanBytes, Store};

/// Run modules outside WebAssembly, exactly as the exports do, for native unit tests.
///
/// ```
/// # use refold_guest::{Event, Reducer};
/// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Count { n: u32 }
/// # struct Counter;
/// # impl Reducer for Counter {
/// #     type State = Count;
/// #     fn apply(state: &mut Count, _: &Event) -> Result<(), String> { state.n += 1; Ok(()) }
/// # }
/// let events = [Event::new("tally-1", "Ticked", "{}"), Event::new("tally-1", "Ticked", "{}")];
/// let state = refold_guest::testing::fold::<Counter>("tally-1", &events)?;
/// assert_eq!(state.n, 2);
/// # Ok::<(), String>(())
/// ```
pub mod testing {
    pub use crate::processor::process_batch;
    pub use crate::projection::handle_batch;
    pub use crate::reducer::{apply_batch, fold, init_state};
}

/// Items the export macros expand to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings;
    pub use crate::processor::ProcessorExport;
    pub use crate::projection::ProjectionExport;
    pub use crate::reducer::ReducerExport;
}

/// Export a [`Reducer`] as this component's `reducer` world (of contract 0.2; of 0.1 with
/// the crate's `contract-0-1` feature).
///
/// Use it once, at the top level of a `cdylib` crate: `refold_guest::export_reducer!(MyReducer);`
#[cfg(not(feature = "contract-0-1"))]
#[macro_export]
macro_rules! export_reducer {
    ($reducer:ty) => {
        const _: () = {
            type RefoldReducerExport = $crate::__private::ReducerExport<$reducer>;
            $crate::__private::bindings::v2::reducer::__refold_export_reducer_world_v2!(
                RefoldReducerExport with_types_in $crate::__private::bindings::v2::reducer
            );
        };
    };
}

/// Export a [`Projection`] as this component's `projection` world (of contract 0.2; of
/// 0.1 with the crate's `contract-0-1` feature).
///
/// Use it once, at the top level of a `cdylib` crate: `refold_guest::export_projection!(MyProjection);`
#[cfg(not(feature = "contract-0-1"))]
#[macro_export]
macro_rules! export_projection {
    ($projection:ty) => {
        const _: () = {
            type RefoldProjectionExport = $crate::__private::ProjectionExport<$projection>;
            $crate::__private::bindings::v2::projection::__refold_export_projection_world_v2!(
                RefoldProjectionExport with_types_in $crate::__private::bindings::v2::projection
            );
        };
    };
}

/// Export a [`Processor`] as this component's `processor` world (contract 0.2).
///
/// Use it once, at the top level of a `cdylib` crate: `refold_guest::export_processor!(MyProcessor);`
#[cfg(not(feature = "contract-0-1"))]
#[macro_export]
macro_rules! export_processor {
    ($processor:ty) => {
        const _: () = {
            type RefoldProcessorExport = $crate::__private::ProcessorExport<$processor>;
            $crate::__private::bindings::v2::processor::__refold_export_processor_world_v2!(
                RefoldProcessorExport with_types_in $crate::__private::bindings::v2::processor
            );
        };
    };
}

/// Processors exist from contract 0.2 on.
#[cfg(feature = "contract-0-1")]
#[macro_export]
macro_rules! export_processor {
    ($processor:ty) => {
        compile_error!("processors need contract 0.2: build without the contract-0-1 feature");
    };
}

/// Export a [`Reducer`] as this component's `reducer` world (contract 0.1).
#[cfg(feature = "contract-0-1")]
#[macro_export]
macro_rules! export_reducer {
    ($reducer:ty) => {
        const _: () = {
            type RefoldReducerExport = $crate::__private::ReducerExport<$reducer>;
            $crate::__private::bindings::reducer::__refold_export_reducer_world!(
                RefoldReducerExport with_types_in $crate::__private::bindings::reducer
            );
        };
    };
}

/// Export a [`Projection`] as this component's `projection` world (contract 0.1).
#[cfg(feature = "contract-0-1")]
#[macro_export]
macro_rules! export_projection {
    ($projection:ty) => {
        const _: () = {
            type RefoldProjectionExport = $crate::__private::ProjectionExport<$projection>;
            $crate::__private::bindings::projection::__refold_export_projection_world!(
                RefoldProjectionExport with_types_in $crate::__private::bindings::projection
            );
        };
    };
}
