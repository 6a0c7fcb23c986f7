//! Server-sent events: catch-up, the hand-over to live, resuming, filters.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, SseReader, event};

const WAIT: Duration = Duration::from_secs(10);

async fn next_json(reader: &mut SseReader) -> (u64, Value) {
    let e = reader.next(WAIT).await.expect("an event arrives");
    let id: u64 = e.id.expect("every event has an id").parse().unwrap();
    (id, serde_json::from_str(&e.data).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_hands_over_to_live_without_missing_or_repeating_an_event() {
    let server = std::sync::Arc::new(Server::start().await);
    for batch in 0..30 {
        let events: Vec<_> = (0..10)
            .map(|i| event("Old", json!(batch * 10 + i)))
            .collect();
        server
            .post(&format!("/streams/s-{}", batch % 3), &json!(events))
            .await;
    }
    let mut reader = SseReader::open(&server, "/subscribe/all?from=0", None).await;
    // Live appends start while the subscription is still catching up.
    let live = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 300..600 {
                server
                    .post(&format!("/streams/s-{}", i % 3), &event("New", json!(i)))
                    .await;
            }
        })
    };
    for expected in 0..600u64 {
        let (id, e) = next_json(&mut reader).await;
        assert_eq!(
            id, expected,
            "events arrive in position order, none missed or repeated"
        );
        assert_eq!(e["position"].as_u64(), Some(expected));
        assert_eq!(e["data"].as_u64(), Some(expected));
    }
    live.await.unwrap();
    assert!(
        reader.next(Duration::from_millis(300)).await.is_none(),
        "nothing arrives twice"
    );
}

#[tokio::test]
async fn a_subscription_resumes_after_last_event_id_or_from_a_position() {
    let server = Server::start().await;
    for i in 0..10 {
        server.post("/streams/s-1", &event("E", json!(i))).await;
    }
    let mut reader = SseReader::open(&server, "/subscribe/all", Some("4")).await;
    assert_eq!(next_json(&mut reader).await.0, 5);
    let mut reader = SseReader::open(&server, "/subscribe/all?from=8", None).await;
    assert_eq!(next_json(&mut reader).await.0, 8);
    assert_eq!(next_json(&mut reader).await.0, 9);
    server.post("/streams/s-1", &event("E", json!(10))).await;
    assert_eq!(next_json(&mut reader).await.0, 10);
}

#[tokio::test]
async fn a_stream_subscription_delivers_only_that_stream_and_resumes_by_position() {
    let server = Server::start().await;
    for i in 0..6 {
        server
            .post(
                &format!("/streams/account-{}", i % 2),
                &event("E", json!(i)),
            )
            .await;
    }
    let mut reader = SseReader::open(&server, "/subscribe/streams/account-1?from=1", None).await;
    let (id, e) = next_json(&mut reader).await;
    assert_eq!(
        (id, e["revision"].as_u64(), e["stream"].as_str()),
        (3, Some(1), Some("account-1"))
    );
    assert_eq!(next_json(&mut reader).await.0, 5);
    server
        .post("/streams/account-0", &event("E", json!(6)))
        .await;
    server
        .post("/streams/account-1", &event("E", json!(7)))
        .await;
    let (id, e) = next_json(&mut reader).await;
    assert_eq!((id, e["revision"].as_u64()), (7, Some(3)));

    // Resuming with the position of the last event seen.
    let mut reader = SseReader::open(&server, "/subscribe/streams/account-1", Some("3")).await;
    assert_eq!(next_json(&mut reader).await.0, 5);
    // A stream that does not exist yet delivers its first event when it arrives.
    let mut reader = SseReader::open(&server, "/subscribe/streams/later-1", None).await;
    server
        .post("/streams/later-1", &event("First", json!(null)))
        .await;
    let (_, e) = next_json(&mut reader).await;
    assert_eq!(e["type"], "First");
}

#[tokio::test]
async fn a_filtered_subscription_delivers_only_matching_events_live() {
    let server = Server::start().await;
    server
        .post("/streams/order-1", &event("OrderPlaced", json!(1)))
        .await;
    server
        .post("/streams/account-1", &event("Deposited", json!(2)))
        .await;
    let mut by_category = SseReader::open(&server, "/subscribe/all?category=account", None).await;
    let mut by_type =
        SseReader::open(&server, "/subscribe/all?type=OrderPaid,OrderPlaced", None).await;
    assert_eq!(next_json(&mut by_category).await.0, 1);
    assert_eq!(next_json(&mut by_type).await.0, 0);
    server
        .post("/streams/order-1", &event("OrderPaid", json!(3)))
        .await;
    server
        .post("/streams/account-2", &event("Withdrawn", json!(4)))
        .await;
    assert_eq!(next_json(&mut by_category).await.0, 3);
    assert_eq!(next_json(&mut by_type).await.0, 2);
    assert!(by_type.next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn open_subscriptions_do_not_hold_up_a_graceful_shutdown() {
    let mut server = Server::start().await;
    server.post("/streams/s-1", &event("E", json!(1))).await;
    let mut reader = SseReader::open(&server, "/subscribe/all", None).await;
    next_json(&mut reader).await;
    let started = std::time::Instant::now();
    let status = server.terminate();
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}
