//! Host bindings generated from `wit/` for the two guest worlds. Both worlds share the
//! `types` interface, so the projection bindings reuse the reducer's types.

/// The `reducer` world: `filter`, `init`, `apply`.
pub mod reducer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "reducer",
    });
}

/// The `projection` world: `filter`, `handle`, and the `state-store` import. Imports are
/// trappable so that a state write over its limit stops the guest.
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

pub use projection::refold::projection::state_store;
pub use reducer::refold::projection::types::{Event, EventFilter, StreamBatch};
