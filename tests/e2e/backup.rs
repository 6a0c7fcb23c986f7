//! Backup and restore: `refold export` writes the log as NDJSON, `refold import` (over
//! `POST /import`) restores it into an empty store exactly as it was.

use std::collections::BTreeMap;

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::model::Planned;
use crate::support::{Server, error_code, example};

/// Runs a client command against `server`; panics with its stderr if it fails.
fn refold(server: &Server, args: &[&str]) -> String {
    let output = server.cli(args);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "refold {args:?} failed: {stderr}");
    stderr
}

/// Appends `total` random events (the models' kinds) in batches of 100 events of one
/// stream, from 16 writers that each own a sixteenth of the streams (so every stream's
/// events keep their order).
async fn append_bulk(server: &Server, total: usize) {
    const WRITERS: usize = 16;
    const BATCH: usize = 100;
    let planned = crate::model::random_events(total, 400, 400);
    let mut per_writer: Vec<Vec<Vec<&Planned>>> = vec![Vec::new(); WRITERS];
    let mut open: BTreeMap<&str, Vec<&Planned>> = BTreeMap::new();
    let owner = |stream: &str| stream.bytes().map(usize::from).sum::<usize>() % WRITERS;
    for event in &planned {
        let batch = open.entry(&event.0).or_default();
        batch.push(event);
        if batch.len() == BATCH {
            per_writer[owner(&event.0)].push(std::mem::take(batch));
        }
    }
    for (stream, batch) in open {
        if !batch.is_empty() {
            per_writer[owner(stream)].push(batch);
        }
    }
    futures::future::join_all(per_writer.into_iter().map(|batches| async move {
        for batch in batches {
            let body: Vec<Value> = batch
                .iter()
                .map(|(_, t, d)| json!({"type": t, "data": d, "metadata": {"n": rand::rng().random_range(0..9)}}))
                .collect();
            let (status, answer) = server
                .post(&format!("/streams/{}", batch[0].0), &Value::from(body))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
        }
    }))
    .await;
}

/// Every stream with its last revision.
async fn streams(server: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => "/streams?limit=10000".to_owned(),
            Some(after) => format!("/streams?limit=10000&after={after}"),
        };
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        out.extend(body["streams"].as_array().unwrap().iter().cloned());
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

async fn reducer_states(server: &Server, streams: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for stream in streams {
        let name = stream["stream"].as_str().unwrap();
        if name.starts_with("account-") {
            let (status, body) = server
                .get(&format!("/projections/bank-account/streams/{name}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            out.insert(name.to_owned(), body);
        }
    }
    out
}

#[tokio::test]
async fn a_million_events_round_trip_through_export_and_import_and_modules_rebuild_the_same() {
    const EVENTS: usize = 1_000_000;
    let source = Server::start().await;
    source
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    source
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
    append_bulk(&source, EVENTS).await;
    assert_eq!(source.head().await, EVENTS as u64);

    let folder = tempfile::tempdir().unwrap();
    let backup = folder.path().join("backup.ndjson");
    let said = refold(&source, &["export", "--out", backup.to_str().unwrap()]);
    assert!(
        said.contains(&format!("exported {EVENTS} events")),
        "{said}"
    );

    let restored = Server::start().await;
    let said = refold(&restored, &["import", backup.to_str().unwrap()]);
    assert!(
        said.contains(&format!("imported {EVENTS} events")),
        "{said}"
    );
    assert_eq!(restored.head().await, EVENTS as u64);

    // The restored log, exported again, is the same file byte for byte: every id, stream,
    // revision, position, type, data, metadata and recording time.
    let again = folder.path().join("again.ndjson");
    refold(&restored, &["export", "--out", again.to_str().unwrap()]);
    let (first, second) = (
        std::fs::read(&backup).unwrap(),
        std::fs::read(&again).unwrap(),
    );
    assert_eq!(first.len(), second.len());
    assert!(
        first == second,
        "the restored log differs from the original"
    );
    let first_line: Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first_line["position"], 0);
    for field in [
        "id",
        "stream",
        "revision",
        "type",
        "data",
        "metadata",
        "recorded_at",
    ] {
        assert!(!first_line[field].is_null(), "the export carries {field}");
    }
    let listed = streams(&source).await;
    assert_eq!(listed, streams(&restored).await);

    // Modules deployed on the restored store rebuild to the same states.
    restored
        .deploy("bank-account", example("bank-account.wasm"))
        .await;
    restored
        .deploy("order-summary", example("order-summary.wasm"))
        .await;
    for server in [&source, &restored] {
        server.wait_caught_up("bank-account").await;
        server.wait_caught_up("order-summary").await;
    }
    let accounts = reducer_states(&source, &listed).await;
    assert!(accounts.len() > 300, "the log covers the accounts");
    assert_eq!(accounts, reducer_states(&restored, &listed).await);
    let orders = source.projection_state("order-summary").await;
    assert!(!orders.is_empty());
    assert_eq!(orders, restored.projection_state("order-summary").await);
}

fn recorded(position: u64, stream: &str, revision: u64) -> String {
    json!({
        "id": uuid::Uuid::new_v4(), "stream": stream, "revision": revision, "position": position,
        "type": "Restored", "data": {"n": position}, "metadata": {}, "recorded_at": "2024-01-02T03:04:05.000006Z",
    })
    .to_string()
}

#[tokio::test]
async fn an_import_must_continue_the_log_and_its_streams_exactly() {
    let server = Server::start().await;
    let post = |body: String| {
        let server = &server;
        async move { server.import(body).await.expect("the import is answered") }
    };
    let cases = [
        // Not at the head of the (empty) log.
        (recorded(5, "a-1", 0), StatusCode::CONFLICT, "import_mismatch"),
        // Not the stream's next revision.
        (recorded(0, "a-1", 3), StatusCode::CONFLICT, "import_mismatch"),
        // Positions that skip one: nothing of the batch is written.
        (
            format!("{}\n{}", recorded(0, "a-1", 0), recorded(2, "a-1", 1)),
            StatusCode::CONFLICT,
            "import_mismatch",
        ),
        ("{not json".to_owned(), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            json!({"stream": "a-1", "revision": 0, "position": 0, "type": "T", "data": 1, "recorded_at": "2024-01-02T03:04:05Z"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            recorded(0, "a-1", 0).replace("2024-01-02T03:04:05.000006Z", "yesterday"),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (String::new(), StatusCode::BAD_REQUEST, "invalid_event"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = post(body.clone()).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{body}: {answer}"
        );
    }
    assert_eq!(server.head().await, 0, "nothing was written");

    let (status, answer) = post(format!(
        "{}\n\n{}\n{}\n",
        recorded(0, "a-1", 0),
        recorded(1, "b-1", 0),
        recorded(2, "a-1", 1)
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"imported": 3, "head": 3}));
    let (_, page) = server.get("/streams/a-1").await;
    assert_eq!(page["events"][1]["position"], 2);
    assert_eq!(
        page["events"][1]["recorded_at"],
        "2024-01-02T03:04:05.000006Z"
    );
    // The log goes on from there, for imports and for appends alike.
    let (status, answer) = post(recorded(3, "a-1", 2)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = server
        .post("/streams/a-1", &json!({"type": "After", "data": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(answer["first_revision"], 3);
    assert_eq!(answer["first_position"], 4);

    // The CLI refuses to import into a store that is not empty, unless resuming, and a
    // resumed import skips what the store holds already.
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("backup.ndjson");
    // Positions 0 to 4 are in the store: a resumed import skips those lines unread.
    let lines: Vec<String> = (0..5)
        .map(|p| recorded(p, "skipped", 0))
        .chain([recorded(5, "a-1", 4)])
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let refused = server.cli(&["import", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));
    let said = refold(&server, &["import", file.to_str().unwrap(), "--resume"]);
    assert!(
        said.contains("imported 1 events; the log's head is 6"),
        "{said}"
    );
}
