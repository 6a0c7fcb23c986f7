//! A reducer that opens a TCP connection, so that its component imports `wasi:sockets`.
//!
//! The sandbox grants no network, and the host refuses such a component at upload (422,
//! naming the refused `wasi:sockets/…` imports), so this code is never expected to run.
//! Should it run anyway, every event of a `socket-*` stream records the attempt to connect
//! to 127.0.0.1:9 in the state: `{"connect": "error: …" | "ok", "count": N}`.

use std::net::TcpStream;

use serde_json::{Map, Value, json};

wit_bindgen::generate!({ path: "../../../wit", world: "reducer" });

struct SocketUser;

impl Guest for SocketUser {
    fn filter() -> EventFilter {
        EventFilter {
            event_types: Vec::new(),
            categories: vec!["socket".to_owned()],
        }
    }

    fn init(_stream_id: String) -> Vec<u8> {
        br#"{"count":0}"#.to_vec()
    }

    fn apply(batches: Vec<StreamBatch>) -> Vec<Result<Vec<u8>, String>> {
        batches.iter().map(fold).collect()
    }
}

fn fold(batch: &StreamBatch) -> Result<Vec<u8>, String> {
    let bytes = match &batch.state {
        Some(bytes) => bytes.clone(),
        None => SocketUser::init(batch.stream_id.clone()),
    };
    let mut state: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|error| format!("the stored state is not a JSON object: {error}"))?;
    for _ in &batch.events {
        let connect = match TcpStream::connect("127.0.0.1:9") {
            Ok(_) => "ok".to_owned(),
            Err(error) => format!("error: {error}"),
        };
        state.insert("connect".to_owned(), json!(connect));
        let count = state.get("count").and_then(Value::as_u64).unwrap_or(0);
        state.insert("count".to_owned(), json!(count + 1));
    }
    serde_json::to_vec(&state).map_err(|error| format!("cannot encode the state: {error}"))
}

export!(SocketUser);
