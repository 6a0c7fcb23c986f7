//! A reducer that misbehaves on demand, one way per event type, so the end-to-end tests can
//! check that the host contains each kind of misbehaviour and reports it.
//!
//! It wants every stream of category `hostile` (all event types). State per stream:
//! `{"count": N}` plus whatever fields the events below add. What each event does, and what
//! the host is expected to do about it:
//!
//! - `Ok`: `count += 1`. The host stores the state.
//! - `Loop`: spins forever. The host stops it at its time limit.
//! - `Grow`: allocates 1 MiB chunks forever and keeps them. The host stops it at its memory
//!   limit.
//! - `Recurse`: recurses without end. The host traps the stack overflow.
//! - `Panic`: panics with `hostile panic at position <position>` (the message goes to
//!   stderr). The host faults the module and reports the message.
//! - `Fail`: returns the error `hostile failure at position <position>` for the stream. The
//!   host faults the module with that message.
//! - `BadState`: returns state bytes that are not JSON (`\xff\xfe not json`). The host
//!   must cope with them: refuse them, or keep them as opaque bytes.
//! - `HugeState`: adds a 2 MiB string field `blob` to the state. The host enforces its state
//!   size limit.
//! - `Spam`: prints 20,000 lines of about 100 bytes to stdout, then as many to stderr, then
//!   `count += 1`. The host bounds the log and must not fault the module.
//! - `Clock`: reads the wall clock, the monotonic clock and WASI randomness 1,000 times each
//!   and records the last readings (see [`read_clocks`]). The host answers
//!   deterministically and must not fault the module.
//! - `Sleep`: sleeps for an hour. The host must not hang.
//! - `Counter`: records in `calls_seen` how many `apply` calls this instance has served:
//!   deliberately non-deterministic, so a rebuild that batches differently (or runs in a
//!   fresh instance) ends in another state.
//!
//! Any other event type is ignored. The outcome of each stream batch is independent: a
//! `Fail` or `BadState` ends only its own stream's batch. The events that do not return
//! (`Loop`, `Grow`, `Recurse`, `Panic`, and `Sleep` unless the host cuts it short) end the
//! whole call.
//!
//! `std::hint::black_box` keeps the optimizer from removing the endless loop, the unused
//! allocations and the recursion (or from turning the recursion into a loop).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

wit_bindgen::generate!({ path: "../../../wit", world: "reducer" });

/// The state of one stream: a JSON object.
type State = Map<String, Value>;

/// `apply` calls this instance has served. Deliberately instance-local: a rebuild that
/// batches the events differently, or runs in a fresh instance, sees other numbers.
static CALLS: AtomicU64 = AtomicU64::new(0);

const MIB: usize = 1 << 20;

struct Hostile;

impl Guest for Hostile {
    fn filter() -> EventFilter {
        EventFilter {
            event_types: Vec::new(),
            categories: vec!["hostile".to_owned()],
        }
    }

    fn init(_stream_id: String) -> Vec<u8> {
        encode(&initial_state()).unwrap_or_default()
    }

    fn apply(batches: Vec<StreamBatch>) -> Vec<Result<Vec<u8>, String>> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        batches.iter().map(|batch| fold(batch, calls)).collect()
    }
}

/// Folds one stream's events into its state, returning the new state bytes.
fn fold(batch: &StreamBatch, calls: u64) -> Result<Vec<u8>, String> {
    let mut state: State = match &batch.state {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|error| format!("the stored state is not a JSON object: {error}"))?,
        None => initial_state(),
    };
    for event in &batch.events {
        match event.event_type.as_str() {
            "Ok" => count(&mut state),
            "Loop" => spin_forever(),
            "Grow" => grow_forever(),
            "Recurse" => {
                recurse(0);
            }
            "Panic" => panic!("hostile panic at position {}", event.position),
            "Fail" => return Err(format!("hostile failure at position {}", event.position)),
            "BadState" => return Ok(b"\xff\xfe not json".to_vec()),
            "HugeState" => {
                state.insert("blob".to_owned(), Value::String("x".repeat(2 * MIB)));
            }
            "Spam" => {
                spam(event);
                count(&mut state);
            }
            "Clock" => read_clocks(&mut state),
            "Sleep" => std::thread::sleep(Duration::from_secs(3600)),
            "Counter" => {
                state.insert("calls_seen".to_owned(), json!(calls));
            }
            _ => {}
        }
    }
    encode(&state)
}

/// `{"count": 0}`: the state before a stream's first event.
fn initial_state() -> State {
    State::from_iter([("count".to_owned(), json!(0))])
}

fn encode(state: &State) -> Result<Vec<u8>, String> {
    serde_json::to_vec(state).map_err(|error| format!("cannot encode the state: {error}"))
}

/// `count += 1`, starting from 0 when the field is missing.
fn count(state: &mut State) {
    let count = state.get("count").and_then(Value::as_u64).unwrap_or(0);
    state.insert("count".to_owned(), json!(count + 1));
}

fn spin_forever() -> ! {
    loop {
        black_box(());
    }
}

fn grow_forever() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        // Ones rather than zeros, so every page of the chunk is written, not just reserved.
        kept.push(black_box(vec![1u8; MIB]));
        black_box(&kept);
    }
}

/// Recurses until the stack runs out. The base case is hidden from the optimizer, and the
/// result is used after the call, so this is neither removed nor made a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let below = recurse(depth + 1);
    black_box(below).wrapping_add(1)
}

/// Prints 20,000 lines of about 100 bytes to stdout, then as many to stderr. `println!`
/// panics if a write fails, so the host must drop what exceeds its log bound rather than
/// report an error to the guest.
fn spam(event: &Event) {
    const FILLER: &str = "the quick brown fox jumps over the lazy dog, again and again";
    for line in 0..20_000 {
        println!("hostile stdout {} #{line:05}: {FILLER}", event.position);
    }
    for line in 0..20_000 {
        eprintln!("hostile stderr {} #{line:05}: {FILLER}", event.position);
    }
}

/// Reads the wall clock, the monotonic clock and a randomly seeded hasher 1,000 times each,
/// and keeps the last readings: `wall_clock_nanos` (since the Unix epoch, 0 before it),
/// `monotonic_elapsed_nanos` (across the loop) and `random` (a u64, as a decimal string).
///
/// `random` depends on the instance's history, not only on the host's seed: std seeds the
/// first `RandomState` of an instance from WASI (`insecure-seed`) and derives each later one
/// by incrementing a key. So it is reproducible only when the instance has made as many
/// `RandomState`s before, e.g. in a fresh instance replaying the same events.
fn read_clocks(state: &mut State) {
    let started = Instant::now();
    let mut wall_clock_nanos = 0;
    let mut monotonic_elapsed_nanos = 0;
    for _ in 0..1_000 {
        wall_clock_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        monotonic_elapsed_nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    }
    // The first `RandomState` of an instance draws its keys from WASI randomness; later
    // ones derive theirs from those.
    let mut random = 0;
    for _ in 0..1_000 {
        random = black_box(RandomState::new()).hash_one(0x5eed_u64);
    }
    state.insert("wall_clock_nanos".to_owned(), json!(wall_clock_nanos));
    state.insert(
        "monotonic_elapsed_nanos".to_owned(),
        json!(monotonic_elapsed_nanos),
    );
    state.insert("random".to_owned(), json!(random.to_string()));
}

export!(Hostile);
