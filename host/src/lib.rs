//! Refold: an event store that runs WebAssembly reducers and projections over every stream.
//!
//! The crate is laid out by layer; each depends only on the layers below it:
//!
//! ```text
//! cli ─▶ server ─▶ http ─┬─▶ modules ─┬─▶ engine
//!                        │            └─▶ store (EventLog, Keyspaces)
//!                        ├─▶ groups ────▶ store (EventLog, Keyspaces)
//!                        └─▶ store (EventStore)
//! metrics, memory: used by http and modules
//! hosted: the modules and the groups, as one host runs them
//! ```
//!
//! - [`store`]: storage, and the only layer that knows the storage engine. Domain types; [`store::EventLog`]
//!   (reading the durable log), [`store::EventStore`] (writing it) and [`store::Keyspaces`]
//!   (keyed state beside the log); the embedded backend ([`store::SledStore`]) with its group-commit writer
//!   and event-id index, and an in-memory backend. Owns durability, and stops acknowledging
//!   writes after a storage error until it recovers.
//! - [`engine`]: the WebAssembly runtime: one wasmtime engine, upload checks, the sealed
//!   sandbox (constant clocks and randomness, bounded host buffers) and guest instances.
//! - [`modules`]: deployed modules over the log and keyspaces: the registry of versions and
//!   roles, one owner thread per running version with its runner, state and checkpoints,
//!   time travel, verify and replay.
//! - [`groups`]: consumer groups: durable server-side subscriptions shared by competing
//!   workers (leases, ack/nack, retry → park → replay, per-stream ordering), with their
//!   progress in a keyspace. [`hosted`]: what one host runs for the cluster (the modules and
//!   the groups), in a slot that is empty on hosts that do not run them.
//! - [`http`]: the HTTP API (axum), with one error type that maps every failure to the
//!   JSON error shape and a stable code.
//! - [`metrics`]: the Prometheus counters. [`memory`]: giving freed heap back.
//! - [`server`]: opens the store, serves the API (also in-process, for tests), and shuts
//!   down gracefully.
//! - [`cli`]: the `refold` command line: `serve`, and client commands against a running
//!   server.

pub mod cli;
pub mod cluster;
pub mod engine;
pub mod groups;
pub mod hosted;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod modules;
pub mod server;
pub mod store;
