//! SIGKILL at random moments under load loses no acknowledged event and leaves nothing
//! half-written.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Server;

/// One append a writer sent: its event ids, and where it landed if it was acknowledged.
struct SentBatch {
    stream: String,
    ids: Vec<String>,
    ack: Option<(u64, u64)>,
}

async fn write_until_stopped(
    server_url: String,
    writer: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<SentBatch>>>,
) {
    let client = reqwest::Client::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let (stream, size) = {
            let mut rng = rand::rng();
            (
                format!("crash-{}", rng.random_range(0..20)),
                rng.random_range(1..=3),
            )
        };
        let ids: Vec<String> = (0..size)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let body = json!(ids
            .iter()
            .enumerate()
            .map(|(i, id)| json!({"type": "Tick", "data": {"writer": writer, "n": n, "i": i}, "id": id}))
            .collect::<Vec<_>>());
        let index = {
            let mut sent = sent.lock();
            sent.push(SentBatch {
                stream: stream.clone(),
                ids,
                ack: None,
            });
            sent.len() - 1
        };
        n += 1;
        let response = client
            .post(format!("{server_url}/streams/{stream}"))
            .json(&body)
            .send()
            .await;
        let Ok(response) = response else { return };
        if response.status() != StatusCode::CREATED {
            return;
        }
        let Ok(ack) = response.json::<Value>().await else {
            return;
        };
        let landed = (
            ack["first_revision"].as_u64().unwrap(),
            ack["first_position"].as_u64().unwrap(),
        );
        sent.lock()[index].ack = Some(landed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let mut server = Server::start().await;
    let sent = Arc::new(Mutex::new(Vec::new()));
    const KILLS: usize = 5;
    for round in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                tokio::spawn(write_until_stopped(
                    server.url.clone(),
                    w,
                    stop.clone(),
                    sent.clone(),
                ))
            })
            .collect();
        let pause = rand::rng().random_range(150..700);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        server.restart().await;
        verify(&server, &sent.lock(), round).await;
    }
    let acked = sent.lock().iter().filter(|b| b.ack.is_some()).count();
    assert!(
        acked > 100,
        "the load was real: only {acked} appends were acknowledged"
    );
}

async fn verify(server: &Server, sent: &[SentBatch], round: usize) {
    let all = server.read_all_fully().await;
    let mut by_id = HashMap::new();
    for (i, event) in all.iter().enumerate() {
        assert_eq!(
            event["position"].as_u64(),
            Some(i as u64),
            "round {round}: positions are gapless"
        );
        let previous = by_id.insert(event["id"].as_str().unwrap().to_owned(), event);
        assert!(
            previous.is_none(),
            "round {round}: an event was written twice"
        );
    }
    for batch in sent {
        let present = batch
            .ids
            .iter()
            .filter(|id| by_id.contains_key(*id))
            .count();
        assert!(
            present == 0 || present == batch.ids.len(),
            "round {round}: an append was half-written ({present} of {})",
            batch.ids.len()
        );
        if let Some((first_revision, first_position)) = batch.ack {
            assert_eq!(
                present,
                batch.ids.len(),
                "round {round}: an acknowledged append was lost"
            );
            for (i, id) in batch.ids.iter().enumerate() {
                let event = by_id[id];
                assert_eq!(event["stream"], batch.stream.as_str());
                assert_eq!(event["revision"].as_u64(), Some(first_revision + i as u64));
                assert_eq!(event["position"].as_u64(), Some(first_position + i as u64));
            }
        }
    }
    // Every stream's revisions are gapless too.
    let mut next_revision: HashMap<&str, u64> = HashMap::new();
    for event in &all {
        let expected = next_revision
            .entry(event["stream"].as_str().unwrap())
            .or_default();
        assert_eq!(
            event["revision"].as_u64(),
            Some(*expected),
            "round {round}: stream revisions are gapless"
        );
        *expected += 1;
    }
}
