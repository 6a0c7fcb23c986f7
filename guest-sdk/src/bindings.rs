//! Generated bindings for the two worlds of `wit/refold.wit`.
//!
//! Nothing here is meant for users: the typed API in the rest of the crate wraps it, and
//! `export_reducer!` / `export_projection!` reach in here to emit the component exports.
//!
//! Two choices matter:
//! - `pub_export_macro`: the custom section describing the *whole* world (imports and
//!   exports) is emitted where the user's crate expands the export macro, so a reducer
//!   binary carries only the reducer world and a projection binary only the projection
//!   world, although this one library holds both.
//! - `disable_custom_section_link_helpers`: otherwise every binary linking this library
//!   would be forced to carry the projection world's imports (`state-store`), reducers
//!   included.

/// The `reducer` world.
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

/// The `projection` world. It shares the `types` interface with the reducer world, so one
/// `Event` record serves both.
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

pub use reducer::refold::projection::types::{
    Event as RawEvent, EventFilter as RawFilter, StreamBatch,
};
