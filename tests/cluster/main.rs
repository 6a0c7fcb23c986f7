//! Cluster mode end to end: a 3-node NATS JetStream cluster (nats-server 2.15.1 from PyPI)
//! on loopback, Refold hosts on it, driven over HTTP; the contract through several hosts,
//! and faults under load (a NATS node killed, the host running the modules killed, the
//! whole cluster restarted).

#[path = "../e2e/model.rs"]
#[allow(dead_code)]
mod model;
#[path = "../e2e/support.rs"]
mod support;

mod nats;
#[path = "nats_cluster.rs"]
mod nats_cluster;

mod contract;
mod faults;
mod fencing;

/// Cluster tests run one at a time: each starts a NATS cluster and several hosts, and the
/// fault tests measure failover times.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
