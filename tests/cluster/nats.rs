//! Refold hosts on a test NATS cluster.

pub use crate::nats_cluster::NatsCluster;
use crate::support::Server;

/// `count` Refold hosts on `nats`, each with `extra` arguments.
pub async fn hosts(nats: &NatsCluster, count: usize, extra: &[&str]) -> Vec<Server> {
    let urls = nats.urls();
    let mut hosts = Vec::with_capacity(count);
    for i in 1..=count {
        let id = format!("host-{i}");
        let mut args = vec!["--nats", urls.as_str(), "--host-id", id.as_str()];
        args.extend_from_slice(extra);
        hosts.push(Server::start_with(&args).await);
    }
    hosts
}
