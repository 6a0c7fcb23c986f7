//! Bad input gets the contract's error shape, a fitting status and a stable code, and
//! changes nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Server, error_code, event};

/// The response is the contract's error shape with this status and code, and a message.
fn assert_error(response: (StatusCode, serde_json::Value), status: StatusCode, code: &str) {
    let (got_status, body) = response;
    assert_eq!((got_status, error_code(&body)), (status, code), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error says what is wrong: {body}");
}

#[tokio::test]
async fn malformed_or_mistyped_appends_are_refused_and_append_nothing() {
    let server = Server::start().await;
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(&str, &str)> = vec![
        ("{\"type\": \"A\", \"data\": ", "invalid_json"),
        ("not json", "invalid_json"),
        ("42", "invalid_json"),
        ("[]", "invalid_event"),
        ("[1, 2]", "invalid_event"),
        (r#"{"data": 1}"#, "invalid_event"),
        (r#"{"type": "A"}"#, "invalid_event"),
        (r#"{"type": 7, "data": 1}"#, "invalid_event"),
        (r#"{"type": "", "data": 1}"#, "invalid_event"),
        (
            r#"{"type": "A", "data": 1, "metadata": "m"}"#,
            "invalid_event",
        ),
        (
            r#"{"type": "A", "data": 1, "id": "not-a-uuid"}"#,
            "invalid_event",
        ),
        (
            r#"{"type": "A", "data": 1, "extra": true}"#,
            "invalid_event",
        ),
        (
            r#"[{"type": "A", "data": 1}, {"type": "B"}]"#,
            "invalid_event",
        ),
    ];
    for (body, code) in cases {
        let response = server.post_raw("/streams/s-1", body.to_owned()).await;
        assert_error(response, bad, code);
    }
    let (_, body) = server
        .post_raw(
            "/streams/s-1",
            r#"[{"type": "A", "data": 1}, {"type": "B"}]"#,
        )
        .await;
    assert_eq!(
        body["error"]["index"], 1,
        "the failing event is named: {body}"
    );
    let non_utf8 = vec![b'{', 0xff, 0xfe, b'}'];
    let response = server.post_raw("/streams/s-1", non_utf8).await;
    assert_error(response, bad, "invalid_json");
    assert_eq!(server.read_all_fully().await.len(), 0);
}

#[tokio::test]
async fn oversized_bodies_events_and_batches_are_refused() {
    let server = Server::start_with(&[
        "--max-body-bytes",
        "100000",
        "--max-events-per-append",
        "50",
        "--max-event-bytes",
        "1000",
    ])
    .await;
    let huge = format!(r#"{{"type":"A","data":"{}"}}"#, "x".repeat(200_000));
    let response = server.post_raw("/streams/s-1", huge).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let big_event = event("A", json!("y".repeat(2_000)));
    let response = server.post("/streams/s-1", &big_event).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "event_too_large");

    let many = json!((0..51).map(|i| event("A", json!(i))).collect::<Vec<_>>());
    let response = server.post("/streams/s-1", &many).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "too_many_events");

    let allowed = json!((0..50).map(|i| event("A", json!(i))).collect::<Vec<_>>());
    let (status, _) = server.post("/streams/s-1", &allowed).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(server.read_all_fully().await.len(), 50);
}

#[tokio::test]
async fn bad_stream_names_and_query_values_are_named() {
    let server = Server::start().await;
    let e = event("A", json!(1));
    let long = "x".repeat(257);
    for path in [
        "/streams/a%01b",
        "/streams/a%0Ab",
        &format!("/streams/{long}"),
    ] {
        let response = server.post(path, &e).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_stream_name");
        let response = server.get(path).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_stream_name");
    }
    // Percent-escapes that do not decode to UTF-8.
    let response = server.post("/streams/%FF%FE", &e).await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_path");
    for (path, needle) in [
        ("/streams/s-1?expected_revision=latest", "expected_revision"),
        ("/streams/s-1?expected_revision=-1", "expected_revision"),
    ] {
        let (status, body) = server.post(path, &e).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_query")
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    server.post("/streams/s-1", &e).await;
    for (path, needle) in [
        ("/streams/s-1?from=abc", "from"),
        ("/streams/s-1?limit=0", "limit"),
        ("/streams/s-1?limit=10001", "limit"),
        ("/streams/s-1?direction=sideways", "direction"),
        ("/all?from=-3", "from"),
        ("/all?limit=x", "limit"),
        ("/streams?limit=99999", "limit"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_query"),
            "{path}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    let (status, body) = server.get("/no/such/route").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let response = server
        .client
        .delete(server.path("/streams/s-1"))
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::decode(response).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let response = server
        .client
        .get(server.path("/subscribe/all"))
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    let (status, body) = crate::support::decode(response).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_last_event_id")
    );
    // Nothing was appended by any of it, and the server is still fine.
    assert_eq!(server.read_all_fully().await.len(), 1);
}

#[tokio::test]
async fn module_operations_that_do_not_fit_get_their_own_codes() {
    let server = Server::start().await;
    let (status, _) = server
        .deploy("summary", crate::support::example("order-summary.wasm"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_error(
        server.action("summary", "explode").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        server.action("no-such-module", "pause").await,
        StatusCode::NOT_FOUND,
        "module_not_found",
    );
    assert_error(
        server.action("summary", "skip").await,
        StatusCode::CONFLICT,
        "not_faulted",
    );
    server
        .append_ok(
            "order-1",
            &event("OrderPlaced", json!({"customer": "c", "total": 1})),
        )
        .await;
    assert_error(
        server
            .get("/projections/summary/streams/order-1?revision=0")
            .await,
        StatusCode::BAD_REQUEST,
        "wrong_module_kind",
    );
}
