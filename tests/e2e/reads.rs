//! `GET /streams/{stream}`, `GET /all`, `GET /streams`: paging, directions, filters.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, error_code, event};

fn revisions(body: &Value) -> Vec<u64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect()
}

fn positions(body: &Value) -> Vec<u64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

/// Ten events in `account-1` interleaved with ten in `order-1`, one append each.
async fn interleaved(server: &Server) {
    for i in 0..10 {
        server
            .post(
                "/streams/account-1",
                &event("Deposited", json!({"amount": i})),
            )
            .await;
        server
            .post("/streams/order-1", &event("OrderPlaced", json!({"n": i})))
            .await;
    }
}

#[tokio::test]
async fn a_stream_reads_forward_in_pages_following_next() {
    let server = Server::start().await;
    interleaved(&server).await;
    let (status, body) = server.get("/streams/account-1?limit=4").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stream"], "account-1");
    assert_eq!(revisions(&body), [0, 1, 2, 3]);
    assert_eq!(positions(&body), [0, 2, 4, 6]);
    assert_eq!(body["next"], 4);
    let (_, body) = server.get("/streams/account-1?from=4&limit=4").await;
    assert_eq!(
        (revisions(&body), body["next"].clone()),
        (vec![4, 5, 6, 7], json!(8))
    );
    let (_, body) = server.get("/streams/account-1?from=8&limit=4").await;
    assert_eq!(
        (revisions(&body), body["next"].clone()),
        (vec![8, 9], json!(null))
    );
    let (_, body) = server.get("/streams/account-1?from=8&limit=2").await;
    assert_eq!(
        (revisions(&body), body["next"].clone()),
        (vec![8, 9], json!(null))
    );
    let (_, body) = server.get("/streams/account-1?from=50").await;
    assert_eq!(
        (revisions(&body), body["next"].clone()),
        (vec![], json!(null))
    );
    let (_, body) = server.get("/streams/account-1").await;
    assert_eq!(revisions(&body), (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_stream_reads_backward_from_its_end_or_a_revision() {
    let server = Server::start().await;
    interleaved(&server).await;
    // A batch append lands in one run; reads cross run boundaries either way.
    server
        .post(
            "/streams/account-1",
            &json!([event("Deposited", json!(10)), event("Deposited", json!(11))]),
        )
        .await;
    let (_, body) = server
        .get("/streams/account-1?direction=backward&limit=5")
        .await;
    assert_eq!(
        (revisions(&body), body["next"].clone()),
        (vec![11, 10, 9, 8, 7], json!(6))
    );
    let (_, body) = server
        .get("/streams/account-1?direction=backward&from=6&limit=10")
        .await;
    assert_eq!(
        (revisions(&body), body["next"].clone()),
        (vec![6, 5, 4, 3, 2, 1, 0], json!(null))
    );
    let (_, body) = server
        .get("/streams/account-1?direction=backward&from=0")
        .await;
    assert_eq!(
        (revisions(&body), body["next"].clone()),
        (vec![0], json!(null))
    );
}

#[tokio::test]
async fn a_stream_with_no_events_is_not_found() {
    let server = Server::start().await;
    let (status, body) = server.get("/streams/nobody-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "stream_not_found");
}

#[tokio::test]
async fn stream_names_may_hold_slashes_spaces_and_unicode() {
    let server = Server::start().await;
    for name in ["tenant%2Fa-1", "with%20space", "%C3%BCber-1"] {
        let (status, _) = server
            .post(&format!("/streams/{name}"), &event("E", json!(1)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name}");
    }
    let (_, body) = server.get("/streams/tenant%2Fa-1").await;
    assert_eq!(body["events"][0]["stream"], "tenant/a-1");
    let (_, body) = server.get("/all?category=%C3%BCber").await;
    assert_eq!(body["events"][0]["stream"], "über-1");
}

#[tokio::test]
async fn the_global_log_pages_in_position_order() {
    let server = Server::start().await;
    interleaved(&server).await;
    let (_, body) = server.get("/all?limit=7").await;
    assert_eq!(
        (positions(&body), body["next"].clone()),
        ((0..7).collect::<Vec<_>>(), json!(7))
    );
    let (_, body) = server.get("/all?from=7&limit=7").await;
    assert_eq!(
        (positions(&body), body["next"].clone()),
        ((7..14).collect::<Vec<_>>(), json!(14))
    );
    let (_, body) = server.get("/all?from=14&limit=7").await;
    assert_eq!(
        (positions(&body), body["next"].clone()),
        ((14..20).collect::<Vec<_>>(), json!(null))
    );
    let (_, body) = server.get("/all?from=100").await;
    assert_eq!(
        (positions(&body), body["next"].clone()),
        (vec![], json!(null))
    );
}

#[tokio::test]
async fn the_global_log_filters_by_type_and_category() {
    let server = Server::start().await;
    interleaved(&server).await;
    server
        .post(
            "/streams/account-2",
            &event("Withdrawn", json!({"amount": 1})),
        )
        .await;
    let (_, body) = server.get("/all?category=order").await;
    assert_eq!(
        positions(&body),
        (0..10).map(|i| i * 2 + 1).collect::<Vec<_>>()
    );
    let (_, body) = server.get("/all?type=Withdrawn").await;
    assert_eq!(positions(&body), [20]);
    let (_, body) = server
        .get("/all?type=Withdrawn,OrderPlaced&category=account")
        .await;
    assert_eq!(positions(&body), [20]);
    // A filtered page stops at `limit` matches and says where to go on.
    let (_, body) = server.get("/all?category=account&limit=3").await;
    assert_eq!(
        (positions(&body), body["next"].clone()),
        (vec![0, 2, 4], json!(5))
    );
}

#[tokio::test]
async fn streams_are_listed_by_prefix_in_pages() {
    let server = Server::start().await;
    for name in [
        "account-3",
        "account-1",
        "order-1",
        "account-2",
        "accounting-1",
    ] {
        server
            .post(&format!("/streams/{name}"), &event("E", json!(1)))
            .await;
    }
    server
        .post("/streams/account-2", &event("E", json!(2)))
        .await;
    let (status, body) = server.get("/streams?prefix=account-&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"streams": [{"stream": "account-1", "last_revision": 0}, {"stream": "account-2", "last_revision": 1}], "next": "account-2"})
    );
    let (_, body) = server
        .get("/streams?prefix=account-&limit=2&after=account-2")
        .await;
    assert_eq!(
        body,
        json!({"streams": [{"stream": "account-3", "last_revision": 0}], "next": null})
    );
    let (_, body) = server.get("/streams").await;
    let names: Vec<_> = body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "account-1",
            "account-2",
            "account-3",
            "accounting-1",
            "order-1"
        ]
    );
}

#[tokio::test]
async fn health_reports_the_log_head() {
    let server = Server::start().await;
    server
        .post(
            "/streams/a-1",
            &json!([event("E", json!(1)), event("E", json!(2))]),
        )
        .await;
    let (status, body) = server.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "head": 2}));
}
