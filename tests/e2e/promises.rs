//! Promises that must hold against hand-written, hostile guests and a failing disk:
//! determinism of what a guest can observe, guest failures reported as the guest's,
//! `init` held to the state rules, event ids unique in the whole log, host memory bounded
//! within one call, and fail-stop on a full disk.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, deposits_with_ids, error_code, event, test_guest};

/// Appends one event and returns its position.
async fn append_one(server: &Server, stream: &str, event_type: &str, data: Value) -> u64 {
    let (status, body) = server
        .post(&format!("/streams/{stream}"), &event(event_type, data))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["first_position"].as_u64().expect("a position")
}

#[tokio::test]
async fn what_a_module_reads_from_clocks_and_randomness_replays_to_the_same_state() {
    let mut server = Server::start().await;
    let (status, body) = server.deploy("entropy", test_guest("entropy")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // One event per call: each append waits until the module has folded it.
    for i in 0..30 {
        let position = append_one(&server, "entropy-1", "Tick", json!(i)).await;
        let (status, body) = server
            .get(&format!(
                "/projections/entropy/streams/entropy-1?after={position}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Then large batches over several streams (folded by two instances at once).
    let batch: Vec<Value> = (0..600).map(|i| event("Tick", json!(i))).collect();
    for stream in ["entropy-2", "entropy-3", "entropy-4"] {
        server.append_ok(stream, &json!(batch)).await;
    }
    // And across a crash and a restart (a fresh instance).
    server.wait_caught_up("entropy").await;
    server.kill9();
    server.restart().await;
    for i in 0..10 {
        append_one(&server, "entropy-1", "Tick", json!(i)).await;
    }
    server.wait_caught_up("entropy").await;

    let (status, verdict) = server.action("entropy", "verify").await;
    assert_eq!(status, StatusCode::OK, "{verdict}");
    assert_eq!(verdict["matches"], true, "{verdict}");
    assert_eq!(verdict["differences"], 0, "{verdict}");

    // A second deployment folds the whole log in a few large calls: the same states.
    let (status, _) = server.deploy("entropy-again", test_guest("entropy")).await;
    assert_eq!(status, StatusCode::CREATED);
    server.wait_caught_up("entropy-again").await;
    for stream in ["entropy-1", "entropy-2", "entropy-3", "entropy-4"] {
        let (_, live) = server
            .get(&format!("/projections/entropy/streams/{stream}"))
            .await;
        let (_, again) = server
            .get(&format!("/projections/entropy-again/streams/{stream}"))
            .await;
        assert_eq!(live["state"], again["state"], "{stream}");
        let draws = live["state"]["draws"].as_array().expect("draws");
        assert!(
            draws.windows(2).all(|pair| pair[0] == pair[1]),
            "every draw reads the same: {live}"
        );
        assert_eq!(draws[0]["monotonic"], 0);
        assert_eq!(draws[0]["wall"], 0);
    }
}

#[tokio::test]
async fn a_guest_failure_during_a_past_state_query_is_the_guests_and_never_a_500() {
    let server = Server::start().await;
    for (name, guest) in [
        ("hostile", "hostile"),
        ("bad-filter", "bad-filter"),
        ("loop-filter", "loop-filter"),
    ] {
        let response = server
            .client
            .put(server.path(&format!("/projections/{name}?timeout_ms=300")))
            .header("content-type", "application/wasm")
            .body(test_guest(guest))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    append_one(&server, "hostile-1", "Ok", json!({})).await;
    append_one(&server, "hostile-1", "BadState", json!({})).await;
    append_one(&server, "plain-1", "Anything", json!({})).await;

    let cases = [
        ("hostile", "hostile-1", 1, "contract", "not JSON"),
        ("bad-filter", "plain-1", 0, "trap", "refuses to say"),
        ("loop-filter", "plain-1", 0, "timeout", "time limit"),
    ];
    for (module, stream, revision, kind, needle) in cases {
        let asked = Instant::now();
        let (status, body) = server
            .get(&format!(
                "/projections/{module}/streams/{stream}?revision={revision}"
            ))
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "guest_failed"),
            "{module}: {body}"
        );
        assert_eq!(body["error"]["kind"], kind, "{module}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{module}: {message}");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{module}: answered within the module's time limit, not {:?}",
            asked.elapsed()
        );
    }
    // The same failures in a replay and a verify are the guest's too.
    let (status, body) = server.action("hostile", "replay?to=2").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "guest_failed"),
        "{body}"
    );
    let (status, body) = server.action("bad-filter", "verify").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "guest_failed"),
        "{body}"
    );
}

#[tokio::test]
async fn what_init_returns_is_held_to_the_same_size_and_json_rules_as_apply() {
    let server = Server::start().await;
    let (status, body) = server.deploy("bad-init", test_guest("bad-init")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Streams whose only event the module does not want: their past state is `init`'s.
    append_one(&server, "bad-huge-1", "Unwanted", json!({})).await;
    append_one(&server, "bad-text-1", "Unwanted", json!({})).await;
    append_one(&server, "bad-fine-1", "Unwanted", json!({})).await;
    for (stream, needle) in [
        ("bad-huge-1", "init returned a state of 16777218 bytes"),
        ("bad-text-1", "init returned a state that is not JSON"),
    ] {
        let (status, body) = server
            .get(&format!(
                "/projections/bad-init/streams/{stream}?revision=0"
            ))
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "guest_failed"),
            "{stream}: {body}"
        );
        assert_eq!(body["error"]["kind"], "contract");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{stream}: {message}");
    }
    let (status, body) = server
        .get("/projections/bad-init/streams/bad-fine-1?revision=0")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], json!({"count": 0}));
}

#[tokio::test]
async fn a_late_retry_gets_its_original_positions_and_an_id_is_recorded_once_in_the_whole_log() {
    let mut server = Server::start().await;
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let batch = deposits_with_ids(&ids);
    let (status, original) = server
        .post("/streams/account-9?expected_revision=no_stream", &batch)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{original}");
    // The stream moves on far past any window of recent ids, and so does the log.
    let more: Vec<Value> = (0..300).map(|i| event("Deposited", json!(i))).collect();
    server.append_ok("account-9", &json!(more)).await;
    for i in 0..200 {
        server.append_ok("other-1", &event("X", json!(i))).await;
    }
    for query in ["?expected_revision=no_stream", "?expected_revision=2", ""] {
        let (status, retried) = server
            .post(&format!("/streams/account-9{query}"), &batch)
            .await;
        assert_eq!(
            (status, &retried),
            (StatusCode::CREATED, &original),
            "{query}"
        );
    }
    // The same ids anywhere else are a conflict, with a code that says why.
    let (status, body) = server.post("/streams/account-10", &batch).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "duplicate_event_id"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("account-9")
    );
    let single = json!({"type": "Deposited", "data": {"amount": 1}, "id": ids[2]});
    let (status, body) = server.post("/streams/account-11", &single).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "duplicate_event_id")
    );
    assert_eq!(server.read_all_fully().await.len(), 503);

    // After a restart, the same.
    server.terminate();
    server.restart().await;
    let (status, retried) = server.post("/streams/account-9", &batch).await;
    assert_eq!((status, retried), (StatusCode::CREATED, original));
    let (status, _) = server.post("/streams/account-10", &batch).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(server.read_all_fully().await.len(), 503);
}

/// Waits until module `name` has processed position `position` (faulted or not) and
/// returns its listing.
async fn wait_past(server: &Server, name: &str, position: u64) -> Value {
    server
        .wait_module(name, &format!("past position {position}"), |m| {
            m["position"].as_u64().is_some_and(|p| p > position)
        })
        .await
}

#[tokio::test]
async fn every_host_buffer_a_guest_can_grow_in_one_call_is_bounded() {
    // A small page cache, so that what the store caches does not hide what the guest grows.
    let server = Server::start_with(&["--cache-mib", "32"]).await;
    let response = server
        .client
        .put(server.path("/projections/flood?on_error=skip&timeout_ms=20000"))
        .header("content-type", "application/wasm")
        .body(test_guest("flood"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let baseline = server.peak_rss_mib();

    // Each flood, and the limit that must stop it (`None`: it must succeed).
    let floods: Vec<(&str, Value, Option<&str>)> = vec![
        ("PutFlood", json!({}), Some("bytes per call")),
        (
            "DeleteFlood",
            json!({"key_bytes": 4000}),
            Some("bytes per call"),
        ),
        (
            "DeleteFlood",
            json!({"key_bytes": 1048576, "count": 1536}),
            Some("key of 1048576 bytes"),
        ),
        ("BigKey", json!({}), Some("key of 16777216 bytes")),
        ("Fill", json!({}), None),
        ("Fill", json!({}), None),
        ("Fill", json!({}), None),
        ("Fill", json!({}), None),
        (
            "ScanFlood",
            json!({}),
            Some("bytes (the module's limit per scan)"),
        ),
        ("RandomFlood", json!({}), Some("exceeds limit")),
        ("LogFlood", json!({}), None),
    ];
    let mut peaks = Vec::new();
    for (event_type, data, limit) in &floods {
        let position = append_one(&server, "flood-1", event_type, data.clone()).await;
        wait_past(&server, "flood", position).await;
        let (_, letters) = server
            .get(&format!(
                "/projections/flood/dead-letters?from={position}&limit=1"
            ))
            .await;
        let letter = letters["dead_letters"]
            .as_array()
            .and_then(|l| l.first())
            .filter(|l| l["position"].as_u64() == Some(position));
        match (limit, letter) {
            (Some(needle), Some(letter)) => {
                let message = letter["message"].as_str().unwrap_or_default();
                assert!(message.contains(needle), "{event_type}: {message}");
            }
            (Some(needle), None) => panic!("{event_type} was not stopped by its limit ({needle})"),
            (None, Some(letter)) => panic!("{event_type} failed: {letter}"),
            (None, None) => {}
        }
        let peak = server.peak_rss_mib();
        peaks.push(format!("{event_type} {peak:.0} MiB"));
        // Guest memory (256 MiB at most), one call's writes (64 MiB), one scan (16 MiB)
        // and the store's cache, with room to spare; before the limits, one call took a
        // server past 1.5 GiB.
        assert!(
            peak < baseline + 600.0,
            "{event_type}: peak resident memory {peak:.0} MiB from {baseline:.0} MiB ({peaks:?})"
        );
    }
    println!(
        "peak resident memory from {baseline:.0} MiB: {}",
        peaks.join(", ")
    );
    // The module kept going through all of it.
    let (status, body) = server.get("/projections/flood/state/logged").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(mib: u64) -> Option<Self> {
        let path = std::env::temp_dir().join(format!("refold-small-disk-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { path })
    }

    fn grow(&self, mib: u64) {
        let grown = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(grown, "remounting the small disk bigger");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[tokio::test]
async fn a_full_disk_stops_writes_with_503_and_loses_no_acknowledged_event() {
    let Some(disk) = SmallDisk::mount(48) else {
        println!("skipped: this machine does not let the test mount a small tmpfs");
        return;
    };
    let mut server = Server::start_in(&disk.path, &["--cache-mib", "16"]).await;
    let payload = "x".repeat(2000);
    let mut acknowledged: Vec<(u64, usize)> = Vec::new();
    let mut refusal = None;
    for round in 0..10_000 {
        let batch: Vec<Value> = (0..50)
            .map(|i| event("Filler", json!({"round": round, "i": i, "pad": payload})))
            .collect();
        let (status, body) = server.post("/streams/fill-1", &json!(batch)).await;
        if status == StatusCode::CREATED {
            acknowledged.push((body["first_position"].as_u64().unwrap(), 50));
        } else {
            refusal = Some((status, body));
            break;
        }
    }
    let (status, body) = refusal.expect("the disk filled up");
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
        "{body}"
    );
    // While the disk stays full, writes keep being refused with the same clear answer (a
    // recovery attempt may let a small one through where room is left: never a 500).
    for i in 0..3 {
        let (status, body) = server.post("/streams/other-1", &event("E", json!(i))).await;
        assert!(
            status == StatusCode::CREATED
                || (status, error_code(&body))
                    == (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            "{status} {body}\n{}",
            server.log()
        );
    }
    // ...while the durable log can still be read.
    let (status, body) = server.get("/streams/fill-1?limit=10").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", server.log());
    let acked_events: usize = acknowledged.iter().map(|(_, n)| n).sum();
    assert!(acked_events > 1000, "only {acked_events} events fit");

    // Room again, and a restart: everything acknowledged is there, once, gapless.
    server.kill9();
    disk.grow(512);
    server.restart().await;
    let all = server.read_all_fully().await;
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            e["position"].as_u64(),
            Some(i as u64),
            "positions are gapless"
        );
        assert_eq!(
            e["revision"].as_u64(),
            Some(i as u64),
            "revisions are gapless"
        );
    }
    assert!(
        all.len() >= acked_events,
        "{} of {acked_events} acknowledged events",
        all.len()
    );
    let (status, body) = server
        .post("/streams/fill-1", &event("After", json!(1)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"].as_u64(), Some(all.len() as u64));
    println!(
        "full disk: {acked_events} events acknowledged before the disk filled, {} durable after \
         the restart; lost 0, positions and revisions reused 0",
        all.len()
    );
}
