//! Generated bindings for the worlds of `wit/refold.wit` (contract 0.1) and
//! `wit/0.2/refold.wit` (contract 0.2).
//!
//! Only the version the crate is built for is generated (the `contract-0-1` feature picks
//! 0.1): both would define export macros of the same names.
//!
//! Nothing here is meant for users: the typed API in the rest of the crate wraps it, and
//! the export macros reach in here to emit the component exports.
//!
//! Two choices matter:
//! - `pub_export_macro`: the custom section describing the *whole* world (imports and
//!   exports) is emitted where the user's crate expands the export macro, so a reducer
//!   binary carries only the reducer world and a projection binary only the projection
//!   world, although this one library holds them all.
//! - `disable_custom_section_link_helpers`: otherwise every binary linking this library
//!   would be forced to carry the projection world's imports (`state-store`), reducers
//!   included.

/// The `reducer` world of 0.1.
#[cfg(feature = "contract-0-1")]
pub mod reducer {
    wit_bindgen::generate!({
        world: "reducer",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__refold_export_reducer_world",
        default_bindings_module: "refold_guest::__private::bindings::reducer",
        disable_custom_section_link_helpers: true,
    });
}

/// The `projection` world of 0.1. It shares the `types` interface with the reducer world,
/// so one `Event` record serves both.
#[cfg(feature = "contract-0-1")]
pub mod projection {
    wit_bindgen::generate!({
        world: "projection",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__refold_export_projection_world",
        default_bindings_module: "refold_guest::__private::bindings::projection",
        disable_custom_section_link_helpers: true,
        with: {
            "refold:projection/types@0.1.0": crate::bindings::reducer::refold::projection::types,
        },
    });
}

/// The worlds of 0.2.
#[cfg(not(feature = "contract-0-1"))]
pub mod v2 {
    /// `reducer`: states held in the guest between calls.
    pub mod reducer {
        wit_bindgen::generate!({
            world: "reducer",
            path: "../wit/0.2",
            pub_export_macro: true,
            export_macro_name: "__refold_export_reducer_world_v2",
            default_bindings_module: "refold_guest::__private::bindings::v2::reducer",
            disable_custom_section_link_helpers: true,
        });
    }

    /// `projection`.
    pub mod projection {
        wit_bindgen::generate!({
            world: "projection",
            path: "../wit/0.2",
            pub_export_macro: true,
            export_macro_name: "__refold_export_projection_world_v2",
            default_bindings_module: "refold_guest::__private::bindings::v2::projection",
            disable_custom_section_link_helpers: true,
            with: {
                "refold:projection/types@0.2.0": crate::bindings::v2::reducer::refold::projection::types,
            },
        });
    }

    /// `processor`.
    pub mod processor {
        wit_bindgen::generate!({
            world: "processor",
            path: "../wit/0.2",
            pub_export_macro: true,
            export_macro_name: "__refold_export_processor_world_v2",
            default_bindings_module: "refold_guest::__private::bindings::v2::processor",
            disable_custom_section_link_helpers: true,
            with: {
                "refold:projection/types@0.2.0": crate::bindings::v2::reducer::refold::projection::types,
                "refold:projection/state-store@0.2.0": crate::bindings::v2::projection::refold::projection::state_store,
            },
        });
    }

    pub use processor::refold::projection::emitting::{Emitted, ExpectedRevision};
    pub use reducer::refold::projection::reducing::{Start, StreamBatch};
    pub use reducer::refold::projection::types::{
        Event as RawEvent, EventFilter as RawFilter, Events, Failure, Span,
    };
}

#[cfg(feature = "contract-0-1")]
pub use reducer::refold::projection::types::{
    Event as RawEvent, EventFilter as RawFilter, StreamBatch,
};
