//! A reducer whose `init` breaks the contract on demand, by stream name, for the test that
//! the host checks what `init` returns as it checks what `apply` returns (size and JSON),
//! on every path that calls it (a past-state query of a stream whose events the module
//! does not want calls `init` on the host's side).
//!
//! It wants events of type `Wanted` in category `bad`. `init` returns, for a stream whose
//! name contains `huge`, a JSON string of 16 MiB (past the default 1 MiB state limit);
//! for one containing `text`, bytes that are not JSON; otherwise `{"count":0}`. `apply`
//! counts `Wanted` events from whatever state it is given (or its own `init`).

wit_bindgen::generate!({ path: "../../../wit", world: "reducer" });

const MIB: usize = 1 << 20;

struct BadInit;

impl Guest for BadInit {
    fn filter() -> EventFilter {
        EventFilter {
            event_types: vec!["Wanted".to_owned()],
            categories: vec!["bad".to_owned()],
        }
    }

    fn init(stream_id: String) -> Vec<u8> {
        if stream_id.contains("huge") {
            let mut state = Vec::with_capacity(16 * MIB + 2);
            state.push(b'"');
            state.resize(16 * MIB + 1, b'x');
            state.push(b'"');
            state
        } else if stream_id.contains("text") {
            b"\xff\xfe not json".to_vec()
        } else {
            br#"{"count":0}"#.to_vec()
        }
    }

    fn apply(batches: Vec<StreamBatch>) -> Vec<Result<Vec<u8>, String>> {
        batches
            .into_iter()
            .map(|batch| {
                let count = batch
                    .state
                    .as_deref()
                    .and_then(|s| serde_json::from_slice::<serde_json::Value>(s).ok())
                    .and_then(|v| v["count"].as_u64())
                    .unwrap_or(0);
                let count = count + batch.events.len() as u64;
                Ok(format!(r#"{{"count":{count}}}"#).into_bytes())
            })
            .collect()
    }
}

export!(BadInit);
