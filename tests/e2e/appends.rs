//! `POST /streams/{stream}`: positions, expected revisions, idempotent retries, durability.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Server, error_code, event};

#[tokio::test]
async fn an_append_returns_revisions_and_positions_in_stream_and_log() {
    let server = Server::start().await;
    let (status, body) = server
        .post(
            "/streams/account-1",
            &event("AccountOpened", json!({"owner": "ann"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body,
        json!({"stream": "account-1", "first_revision": 0, "last_revision": 0, "first_position": 0, "last_position": 0})
    );
    let (status, body) = server
        .post(
            "/streams/order-1",
            &json!([
                event("OrderPlaced", json!(1)),
                event("OrderPaid", json!(null))
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body,
        json!({"stream": "order-1", "first_revision": 0, "last_revision": 1, "first_position": 1, "last_position": 2})
    );
    let (_, body) = server
        .post(
            "/streams/account-1",
            &event("Deposited", json!({"amount": 5})),
        )
        .await;
    assert_eq!(
        (
            body["first_revision"].as_u64(),
            body["first_position"].as_u64()
        ),
        (Some(1), Some(3))
    );
}

#[tokio::test]
async fn recorded_events_keep_what_the_client_sent_and_get_a_server_timestamp() {
    let server = Server::start().await;
    let id = uuid::Uuid::new_v4().to_string();
    let sent = json!({"type": "Deposited", "data": {"amount": 5, "nested": [1, "two", null]}, "metadata": {"trace": "t-1"}, "id": id});
    let before = chrono::Utc::now();
    server.post("/streams/account-9", &sent).await;
    let events = server.read_stream_fully("account-9").await;
    assert_eq!(events.len(), 1);
    let recorded = &events[0];
    assert_eq!(recorded["id"], id);
    assert_eq!(recorded["stream"], "account-9");
    assert_eq!(recorded["type"], "Deposited");
    assert_eq!(recorded["data"], sent["data"]);
    assert_eq!(recorded["metadata"], sent["metadata"]);
    assert_eq!(
        (recorded["revision"].as_u64(), recorded["position"].as_u64()),
        (Some(0), Some(0))
    );
    let at =
        chrono::DateTime::parse_from_rfc3339(recorded["recorded_at"].as_str().unwrap()).unwrap();
    assert!(at >= before - chrono::Duration::seconds(1) && at <= chrono::Utc::now());
    // Metadata defaults to an empty object.
    server
        .post(
            "/streams/account-9",
            &event("Withdrawn", json!({"amount": 1})),
        )
        .await;
    assert_eq!(
        server.read_stream_fully("account-9").await[1]["metadata"],
        json!({})
    );
}

#[tokio::test]
async fn expected_revision_accepts_any_no_stream_exists_and_an_exact_revision() {
    let server = Server::start().await;
    let e = event("E", json!({}));
    let conflict = |body: &serde_json::Value| {
        (
            error_code(body).to_owned(),
            body["error"]["current_revision"].clone(),
        )
    };

    let (status, body) = server
        .post("/streams/s-1?expected_revision=exists", &e)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        conflict(&body),
        ("wrong_expected_revision".into(), json!(null))
    );

    let (status, _) = server
        .post("/streams/s-1?expected_revision=no_stream", &e)
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = server
        .post("/streams/s-1?expected_revision=no_stream", &e)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        conflict(&body),
        ("wrong_expected_revision".into(), json!(0))
    );

    let (status, _) = server
        .post("/streams/s-1?expected_revision=exists", &e)
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = server.post("/streams/s-1?expected_revision=0", &e).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        conflict(&body),
        ("wrong_expected_revision".into(), json!(1))
    );

    let (status, body) = server.post("/streams/s-1?expected_revision=1", &e).await;
    assert_eq!(
        (status, body["first_revision"].as_u64()),
        (StatusCode::CREATED, Some(2))
    );

    let (status, _) = server.post("/streams/s-1?expected_revision=any", &e).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(server.read_stream_fully("s-1").await.len(), 4);
}

#[tokio::test]
async fn a_retry_with_the_same_ids_appends_nothing_and_answers_with_the_original_positions() {
    let server = Server::start().await;
    server.post("/streams/other-1", &event("X", json!(0))).await;
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let batch = crate::support::deposits_with_ids(&ids);
    let (status, original) = server
        .post("/streams/account-7?expected_revision=no_stream", &batch)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    server.post("/streams/other-1", &event("X", json!(1))).await;

    // The same request again, even with an expected revision that no longer holds.
    let (status, retried) = server
        .post("/streams/account-7?expected_revision=no_stream", &batch)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(retried, original);
    // A retry of a single event from the middle of the batch.
    let single = json!({"type": "Deposited", "data": {"amount": 1}, "id": ids[1]});
    let (status, body) = server.post("/streams/account-7", &single).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (
            body["first_revision"].as_u64(),
            body["first_position"].as_u64()
        ),
        (Some(1), Some(2))
    );

    assert_eq!(server.read_stream_fully("account-7").await.len(), 3);
    assert_eq!(server.read_all_fully().await.len(), 5);

    // Retries survive a restart: the ids are checked against the stored stream.
    let mut server = server;
    server.terminate();
    server.restart().await;
    let (status, retried) = server.post("/streams/account-7", &batch).await;
    assert_eq!((status, retried), (StatusCode::CREATED, original));
    assert_eq!(server.read_all_fully().await.len(), 5);
}

#[tokio::test]
async fn reusing_an_id_for_different_events_is_a_conflict() {
    let server = Server::start().await;
    let id = uuid::Uuid::new_v4().to_string();
    server
        .post("/streams/s-2", &json!({"type": "A", "data": 1, "id": id}))
        .await;
    let (status, body) = server
        .post(
            "/streams/s-2",
            &json!([{"type": "B", "data": 2}, {"type": "A", "data": 1, "id": id}]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "duplicate_event_id");
    assert_eq!(server.read_stream_fully("s-2").await.len(), 1);
}

#[tokio::test]
async fn acknowledged_events_survive_a_graceful_restart() {
    let mut server = Server::start().await;
    for i in 0..50 {
        server
            .post(&format!("/streams/s-{}", i % 5), &event("E", json!(i)))
            .await;
    }
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    server.restart().await;
    let all = server.read_all_fully().await;
    assert_eq!(all.len(), 50);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["position"].as_u64(), Some(i as u64));
        assert_eq!(e["data"], json!(i));
    }
    let (_, body) = server.post("/streams/s-0", &event("E", json!(50))).await;
    assert_eq!(
        (
            body["first_revision"].as_u64(),
            body["first_position"].as_u64()
        ),
        (Some(10), Some(50))
    );
}
