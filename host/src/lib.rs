//! Refold: an event store that runs WebAssembly reducers and projections over every stream.
//!
//! The crate is laid out by layer:
//!
//! - [`store`]: the event log. Domain types, the [`store::EventStore`] trait, and the
//!   embedded sled backend with its group-commit writer. Owns durability.
//! - [`http`]: the HTTP API (axum), with one error type that maps every failure to the
//!   JSON error shape and a stable code.
//! - [`server`]: opens the store, serves the API, and shuts down gracefully.
//! - [`cli`]: the `refold` command line: `serve`, and client commands against a running
//!   server.

pub mod cli;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod modules;
pub mod server;
pub mod store;
