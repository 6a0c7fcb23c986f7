//! Racing writers: optimistic concurrency on one stream.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Server, error_code, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_clients_win_each_revision_exactly_once_with_no_gaps() {
    let server = std::sync::Arc::new(Server::start().await);
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 25;
    // Unrelated appends keep the global log busy while the race runs.
    let noise = {
        let server = server.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                server
                    .post(
                        &format!("/streams/noise-{}", i % 7),
                        &event("Noise", json!(i)),
                    )
                    .await;
            }
        })
    };
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let server = server.clone();
        clients.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut conflicts = 0;
            for _ in 0..ROUNDS {
                // Read the current revision, then try to append right after it.
                let (_, body) = server
                    .get("/streams/race-1?direction=backward&limit=1")
                    .await;
                let expected = body["events"][0]["revision"]
                    .as_u64()
                    .map_or("no_stream".to_owned(), |r| r.to_string());
                let (status, body) = server
                    .post(
                        &format!("/streams/race-1?expected_revision={expected}"),
                        &event("Won", json!({"client": client})),
                    )
                    .await;
                match status {
                    StatusCode::CREATED => wins.push(body["first_revision"].as_u64().unwrap()),
                    StatusCode::CONFLICT => {
                        assert_eq!(error_code(&body), "wrong_expected_revision");
                        assert!(body["error"]["current_revision"].is_u64(), "{body}");
                        conflicts += 1;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            (client, wins, conflicts)
        }));
    }
    let mut winners = BTreeMap::new();
    let mut total_conflicts = 0;
    for handle in clients {
        let (client, wins, conflicts) = handle.await.unwrap();
        total_conflicts += conflicts;
        for revision in wins {
            assert!(
                winners.insert(revision, client).is_none(),
                "revision {revision} was won twice"
            );
        }
    }
    noise.await.unwrap();
    assert!(total_conflicts > 0, "the clients did race");
    assert_eq!(winners.len() + total_conflicts, CLIENTS * ROUNDS);

    // The stream holds exactly the won revisions, each written by its winner.
    let events = server.read_stream_fully("race-1").await;
    assert_eq!(events.len(), winners.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["revision"].as_u64(), Some(i as u64));
        assert_eq!(
            e["data"]["client"].as_u64(),
            Some(winners[&(i as u64)] as u64)
        );
    }
    // The global log is gapless and holds every event once.
    let all = server.read_all_fully().await;
    assert_eq!(all.len(), winners.len() + 200);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["position"].as_u64(), Some(i as u64));
    }
}
