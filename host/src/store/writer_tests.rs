//! The writer's tests: late retries against the id index, and fail-stop under injected
//! storage faults (a failed flush, a failed apply), each followed by a recovery.

use std::sync::Arc;

use uuid::Uuid;

use super::super::{
    AppendOutcome, EventLog, EventStore, ExpectedRevision, InjectedFaults, ProposedEvent,
    SledStore, StoreConfig, StoreError, StreamName, StreamRead,
};

fn event(id: Uuid, from_client: bool) -> ProposedEvent {
    ProposedEvent {
        id,
        id_from_client: from_client,
        event_type: "E".into(),
        data: "1".into(),
        metadata: "{}".into(),
    }
}

fn stream(name: &str) -> StreamName {
    StreamName::parse(name).unwrap()
}

async fn append(
    store: &SledStore,
    name: &str,
    expected: ExpectedRevision,
    events: Vec<ProposedEvent>,
) -> Result<AppendOutcome, StoreError> {
    store.append(stream(name), expected, events).await
}

fn open(dir: &tempfile::TempDir, faults: Arc<InjectedFaults>) -> SledStore {
    SledStore::open_with_faults(&StoreConfig::new(dir.path()), faults).unwrap()
}

/// Drops `store` and opens its directory again, as a restart would. sled's own I/O threads
/// may hold the directory's lock for a moment after the last handle is dropped, so the open
/// is retried while the lock is busy.
fn reopen(store: SledStore, dir: &tempfile::TempDir) -> SledStore {
    drop(store);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(&StoreConfig::new(dir.path())) {
            Ok(store) => return store,
            Err(err)
                if std::time::Instant::now() < deadline && format!("{err:#}").contains("lock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(err) => panic!("reopening the store: {err:#}"),
        }
    }
}

#[tokio::test]
async fn a_late_retry_answers_the_original_positions_and_an_id_is_never_recorded_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, Arc::default());
    let ids = [Uuid::new_v4(), Uuid::new_v4()];
    let batch = || ids.iter().map(|&id| event(id, true)).collect::<Vec<_>>();
    let original = append(&store, "a-1", ExpectedRevision::NoStream, batch())
        .await
        .unwrap();
    // The stream and the log move on far past any window.
    for _ in 0..300 {
        append(
            &store,
            "a-1",
            ExpectedRevision::Any,
            vec![event(Uuid::new_v4(), false)],
        )
        .await
        .unwrap();
    }
    let retried = append(&store, "a-1", ExpectedRevision::NoStream, batch()).await;
    assert_eq!(retried.unwrap(), original, "with an expected revision");
    let retried = append(&store, "a-1", ExpectedRevision::Any, batch()).await;
    assert_eq!(retried.unwrap(), original, "without one");
    let elsewhere = append(&store, "b-1", ExpectedRevision::Any, batch()).await;
    assert!(
        matches!(&elsewhere, Err(StoreError::DuplicateEventId(m)) if m.contains("a-1")),
        "{elsewhere:?}"
    );
    let partly = vec![event(ids[1], true), event(Uuid::new_v4(), true)];
    let partly = append(&store, "a-1", ExpectedRevision::Any, partly).await;
    assert!(matches!(partly, Err(StoreError::DuplicateEventId(_))));
    assert!(
        store
            .read_stream(&stream("b-1"), StreamRead::forward(None, 10))
            .unwrap()
            .is_none()
    );

    // After a restart too.
    let store = reopen(store, &dir);
    let retried = append(&store, "a-1", ExpectedRevision::Any, batch()).await;
    assert_eq!(retried.unwrap(), original, "after a restart");
    assert_eq!(store.head(), 302);
}

#[tokio::test]
async fn after_a_failed_flush_no_write_is_acknowledged_until_the_store_has_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(InjectedFaults::default());
    let store = open(&dir, faults.clone());
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let id = Uuid::new_v4();
        append(&store, "s-1", ExpectedRevision::Any, vec![event(id, true)])
            .await
            .unwrap();
        acknowledged.push(id);
    }
    faults.fail_every_flush();
    let lost_id = Uuid::new_v4();
    let failed = append(
        &store,
        "s-1",
        ExpectedRevision::Any,
        vec![event(lost_id, true)],
    )
    .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    // Stopped: refused at once, while reads of the durable log go on.
    tokio::time::sleep(super::RECOVERY_INTERVAL).await;
    let refused = append(
        &store,
        "s-2",
        ExpectedRevision::Any,
        vec![event(Uuid::new_v4(), true)],
    )
    .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    let read = store
        .read_stream(&stream("s-1"), StreamRead::forward(None, 100))
        .unwrap()
        .unwrap();
    assert_eq!(read.events.len(), 5);
    assert_eq!(store.head(), 5);

    // The disk comes back: the failed write reached the tree, so recovery finds it
    // durable and publishes it; nothing after it reuses its revision or position.
    faults.clear();
    tokio::time::sleep(super::RECOVERY_INTERVAL).await;
    let next_id = Uuid::new_v4();
    let next = append(
        &store,
        "s-1",
        ExpectedRevision::Any,
        vec![event(next_id, true)],
    )
    .await
    .unwrap();
    let retry = append(
        &store,
        "s-1",
        ExpectedRevision::Any,
        vec![event(lost_id, true)],
    )
    .await
    .unwrap();
    assert_eq!(
        (retry.first_revision, retry.first_position),
        (5, 5),
        "the retry finds the write that failed"
    );
    assert_eq!((next.first_revision, next.first_position), (6, 6));
    let read = store
        .read_stream(&stream("s-1"), StreamRead::forward(None, 100))
        .unwrap()
        .unwrap();
    let revisions: Vec<u64> = read.events.iter().map(|e| e.revision).collect();
    let positions: Vec<u64> = read.events.iter().map(|e| e.position).collect();
    assert_eq!(revisions, (0..7).collect::<Vec<_>>());
    assert_eq!(positions, (0..7).collect::<Vec<_>>());
    for id in &acknowledged {
        assert!(read.events.iter().any(|e| e.id == *id));
    }
}

#[tokio::test]
async fn a_failed_apply_stops_writes_and_recovery_reuses_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(InjectedFaults::default());
    let store = open(&dir, faults.clone());
    append(
        &store,
        "s-1",
        ExpectedRevision::Any,
        vec![event(Uuid::new_v4(), false)],
    )
    .await
    .unwrap();
    faults.fail_apply(1);
    let failed = append(
        &store,
        "s-1",
        ExpectedRevision::Exact(0),
        vec![event(Uuid::new_v4(), false)],
    )
    .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    tokio::time::sleep(super::RECOVERY_INTERVAL).await;
    let next = append(
        &store,
        "s-1",
        ExpectedRevision::Exact(0),
        vec![event(Uuid::new_v4(), false)],
    )
    .await
    .unwrap();
    assert_eq!((next.first_revision, next.first_position), (1, 1));
    let store = reopen(store, &dir);
    assert_eq!(store.head(), 2);
}
