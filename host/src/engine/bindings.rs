//! Host bindings generated from `wit/`: the two worlds of contract 0.1 (`wit/refold.wit`)
//! and the four of contract 0.2 (`wit/0.2/refold.wit`). The worlds of one version share
//! its `types` interface, so each world's bindings reuse the first one's types.

/// The `reducer` world of 0.1: `filter`, `init`, `apply`.
pub mod reducer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "reducer",
    });
}

/// The `projection` world of 0.1: `filter`, `handle`, and the `state-store` import.
/// Imports are trappable so that a state write over its limit stops the guest.
pub mod projection {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "projection",
        imports: { default: trappable },
        with: {
            "refold:projection/types": super::reducer::refold::projection::types,
        },
    });
}

/// Contract 0.2.
pub mod v2 {
    /// `reducer`: `filter`, `init`, `apply` over held states, `save`, `forget`.
    pub mod reducer {
        wasmtime::component::bindgen!({
            path: "../wit/0.2",
            world: "reducer",
        });
    }

    /// `projection`: `filter`, `handle`, and the `state-store` import.
    pub mod projection {
        wasmtime::component::bindgen!({
            path: "../wit/0.2",
            world: "projection",
            imports: { default: trappable },
            with: {
                "refold:projection/types": super::reducer::refold::projection::types,
            },
        });
    }

    /// `processor`: a projection whose calls return events to append.
    pub mod processor {
        wasmtime::component::bindgen!({
            path: "../wit/0.2",
            world: "processor",
            imports: { default: trappable },
            with: {
                "refold:projection/types": super::reducer::refold::projection::types,
                "refold:projection/state-store": super::projection::refold::projection::state_store,
            },
        });
    }

    /// `upcaster`: stored events into events of the current shape.
    pub mod upcaster {
        wasmtime::component::bindgen!({
            path: "../wit/0.2",
            world: "upcaster",
            with: {
                "refold:projection/types": super::reducer::refold::projection::types,
            },
        });
    }

    pub use processor::refold::projection::emitting::{Emitted, ExpectedRevision};
    pub use projection::refold::projection::state_store;
    pub use reducer::refold::projection::reducing::{Start, StoredState, StreamBatch};
    pub use reducer::refold::projection::types::{Event, EventFilter, Events, Failure, Span};
    pub use upcaster::refold::projection::upcasting::Upcast;
}

pub use projection::refold::projection::state_store;
pub use reducer::refold::projection::types::{Event, EventFilter, StreamBatch};
