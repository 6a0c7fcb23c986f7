//! A reducer that tries to reach outside the sandbox, and records what it got.
//!
//! The host grants `wasi:filesystem` but with no preopened directory, and no environment
//! variables or arguments. So for every event of a `probe-*` stream, each attempt below
//! must fail (or find nothing), and the test reads the outcomes from the state:
//!
//! ```json
//! {"read": "error: …", "write": "error: …", "read_dir": "error: …",
//!  "env_vars": 0, "args": 0, "count": N}
//! ```
//!
//! - `read`: `std::fs::read_to_string("/etc/passwd")`;
//! - `write`: `std::fs::write("/tmp/refold-probe", "x")`;
//! - `read_dir`: `std::fs::read_dir(".")`;
//! - `env_vars`, `args`: how many `std::env::vars()` and `std::env::args()` there are;
//! - `count`: the events probed so far.
//!
//! A file attempt that fails reads `error: <the io::Error>`; one that unexpectedly works
//! reads `ok:<length>` (bytes read, bytes written, or directory entries).

use serde_json::{Map, Value, json};

wit_bindgen::generate!({ path: "../../../wit", world: "reducer" });

struct SandboxProbe;

impl Guest for SandboxProbe {
    fn filter() -> EventFilter {
        EventFilter {
            event_types: Vec::new(),
            categories: vec!["probe".to_owned()],
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
        None => SandboxProbe::init(batch.stream_id.clone()),
    };
    let mut state: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|error| format!("the stored state is not a JSON object: {error}"))?;
    for _ in &batch.events {
        let read = std::fs::read_to_string("/etc/passwd").map(|text| text.len());
        let write = std::fs::write("/tmp/refold-probe", "x").map(|()| 1);
        let read_dir = std::fs::read_dir(".").map(Iterator::count);
        state.insert("read".to_owned(), json!(outcome(read)));
        state.insert("write".to_owned(), json!(outcome(write)));
        state.insert("read_dir".to_owned(), json!(outcome(read_dir)));
        state.insert("env_vars".to_owned(), json!(std::env::vars().count()));
        state.insert("args".to_owned(), json!(std::env::args().count()));
        let count = state.get("count").and_then(Value::as_u64).unwrap_or(0);
        state.insert("count".to_owned(), json!(count + 1));
    }
    serde_json::to_vec(&state).map_err(|error| format!("cannot encode the state: {error}"))
}

/// `ok:<length>` or `error: <message>`.
fn outcome(attempt: std::io::Result<usize>) -> String {
    match attempt {
        Ok(length) => format!("ok:{length}"),
        Err(error) => format!("error: {error}"),
    }
}

export!(SandboxProbe);
