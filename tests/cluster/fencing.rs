//! Two hosts' view of module state on one JetStream: commits land on every host's copy, and
//! a host that stopped being the writer cannot extend a keyspace another host has written,
//! even after its copy has applied that host's commit.

use std::sync::Arc;

use refold::store::nats::{ClusterKeyspaces, Nats, NatsConfig};
use refold::store::{Keyspaces, SledStore, StoreConfig, StoreError, Writes};

use crate::nats::NatsCluster;

async fn host(nats: &NatsCluster, dir: &std::path::Path) -> ClusterKeyspaces {
    let connection = Nats::connect(&NatsConfig {
        urls: nats.urls().split(',').map(str::to_owned).collect(),
        replicas: None,
    })
    .await
    .expect("NATS answers");
    let local = Arc::new(SledStore::open(&StoreConfig::new(dir)).expect("a local copy"));
    ClusterKeyspaces::open(Arc::new(connection), local)
        .await
        .expect("the state stream")
}

fn put(key: &str, value: &str) -> Writes {
    let mut writes = Writes::default();
    writes.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_lost_the_writer_role_cannot_extend_state() {
    let _serial = crate::SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host(&nats, dirs.0.path()).await;
    let b = host(&nats, dirs.1.path()).await;
    a.begin_writing();
    let (a2, b2) = (a.clone(), b.clone());
    tokio::task::spawn_blocking(move || {
        let space = a2.open("module-x").unwrap();
        space.commit(put("c", "100")).expect("the writer commits");
    })
    .await
    .unwrap();
    // B takes over: it has A's commit, writes on top of it.
    b.sync().await.unwrap();
    b.begin_writing();
    tokio::task::spawn_blocking(move || {
        let space = b2.open("module-x").unwrap();
        assert_eq!(space.get(b"c").unwrap().as_deref(), Some(&b"100"[..]));
        space
            .commit(put("c", "200"))
            .expect("the new writer commits");
    })
    .await
    .unwrap();
    // A's copy applies B's commit, yet A's next commit is refused: it never saw B as writer.
    a.sync().await.unwrap();
    let refused = tokio::task::spawn_blocking(move || {
        let space = a.open("module-x").unwrap();
        assert_eq!(space.get(b"c").unwrap().as_deref(), Some(&b"200"[..]));
        space.commit(put("c", "150"))
    })
    .await
    .unwrap();
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "a stale writer's commit must be refused: {refused:?}"
    );
    b.sync().await.unwrap();
    let value = tokio::task::spawn_blocking(move || b.open("module-x").unwrap().get(b"c").unwrap())
        .await
        .unwrap();
    assert_eq!(
        value.as_deref(),
        Some(&b"200"[..]),
        "the refused commit changed nothing"
    );
}
