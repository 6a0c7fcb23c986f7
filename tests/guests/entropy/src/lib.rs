//! A reducer that records what WASI's clocks and randomness tell it, for the end-to-end
//! determinism test.
//!
//! The host makes a module's clocks and randomness constant: the wall clock reads the Unix
//! epoch, the monotonic clock reads 0, and every draw from `wasi:random/random` and
//! `wasi:random/insecure` returns the same bytes. So what this module writes is a pure
//! function of the events it is given, and the test checks exactly that: the live state
//! after events appended one at a time must equal a rebuild that folds them in one batch,
//! and `verify` must report a match. A host that let real time or real entropy through
//! would show up as states that differ.
//!
//! It wants every stream of category `entropy` (all event types). For every event it
//! appends one draw to the stream's state, `{"count": N, "draws": [...]}`:
//!
//! ```json
//! {"random": "<get-random-u64, decimal>", "bytes": "<get-random-bytes(8), hex>",
//!  "insecure": "<get-insecure-random-u64, decimal>", "monotonic": <monotonic-clock now>,
//!  "wall": <wall-clock now, seconds * 10^9 + nanoseconds>}
//! ```
//!
//! Only the last [`KEPT_DRAWS`] draws are kept, so the state stays small; `count` counts
//! every event. The u64 values are decimal strings because JSON readers in other languages
//! lose precision above 2^53.
//!
//! WASI is called directly through the `wasip2` crate, never through std: std's
//! `RandomState` draws from WASI once per instance and derives later keys from a counter of
//! its own, which would measure the instance's history rather than the host.

use serde_json::{Map, Value, json};
use wasip2::clocks::{monotonic_clock, wall_clock};
use wasip2::random::{insecure, random};

wit_bindgen::generate!({ path: "../../../wit", world: "reducer" });

/// The state of one stream: a JSON object.
type State = Map<String, Value>;

/// How many of the latest draws a stream's state keeps.
const KEPT_DRAWS: usize = 50;

struct Entropy;

impl Guest for Entropy {
    fn filter() -> EventFilter {
        EventFilter {
            event_types: Vec::new(),
            categories: vec!["entropy".to_owned()],
        }
    }

    fn init(_stream_id: String) -> Vec<u8> {
        encode(&initial_state()).unwrap_or_default()
    }

    fn apply(batches: Vec<StreamBatch>) -> Vec<Result<Vec<u8>, String>> {
        batches.iter().map(fold).collect()
    }
}

/// Folds one stream's events into its state, returning the new state bytes.
fn fold(batch: &StreamBatch) -> Result<Vec<u8>, String> {
    let mut state: State = match &batch.state {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|error| format!("the stored state is not a JSON object: {error}"))?,
        None => initial_state(),
    };
    let mut draws = match state.remove("draws") {
        Some(Value::Array(draws)) => draws,
        Some(other) => return Err(format!("the stored draws are not a list: {other}")),
        None => Vec::new(),
    };
    let mut count = state.get("count").and_then(Value::as_u64).unwrap_or(0);
    for _ in &batch.events {
        draws.push(draw());
        count += 1;
    }
    let dropped = draws.len().saturating_sub(KEPT_DRAWS);
    draws.drain(..dropped);
    state.insert("count".to_owned(), json!(count));
    state.insert("draws".to_owned(), Value::Array(draws));
    encode(&state)
}

/// One reading of each of WASI's sources of randomness and time.
fn draw() -> Value {
    let wall = wall_clock::now();
    let wall_nanos = u128::from(wall.seconds) * 1_000_000_000 + u128::from(wall.nanoseconds);
    json!({
        "random": random::get_random_u64().to_string(),
        "bytes": hex(&random::get_random_bytes(8)),
        "insecure": insecure::get_insecure_random_u64().to_string(),
        "monotonic": monotonic_clock::now(),
        "wall": u64::try_from(wall_nanos).unwrap_or(u64::MAX),
    })
}

/// `bytes` as lower-case hex, two digits a byte.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `{"count": 0, "draws": []}`: the state before a stream's first event.
fn initial_state() -> State {
    State::from_iter([
        ("count".to_owned(), json!(0)),
        ("draws".to_owned(), json!([])),
    ])
}

fn encode(state: &State) -> Result<Vec<u8>, String> {
    serde_json::to_vec(state).map_err(|error| format!("cannot encode the state: {error}"))
}

export!(Entropy);
