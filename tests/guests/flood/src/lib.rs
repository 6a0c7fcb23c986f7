//! A projection that tries to make the host grow its own memory within one `handle` call,
//! one way per event type, for the host's memory bound test.
//!
//! A guest's linear memory is capped, but what it hands to the host (store writes, keys,
//! log output, requests for random bytes) lands in the server's memory. The test sends each
//! flood below and checks two things: the flood is stopped by a documented limit (the call
//! traps or fails with that limit's error, and the batch's writes are discarded), and the
//! server's peak resident memory stays bounded while it happens.
//!
//! It wants every stream of category `flood`. An event's `data` is a JSON object whose
//! numeric fields, all optional, tune the flood (a missing field, or data that is not an
//! object, means the default):
//!
//! - `PutFlood {count = 100000}`: puts distinct keys `put/<position>/<i>` for `i` in
//!   `0..count`, each with a 512 KiB value (a JSON string). The host must stop it.
//! - `DeleteFlood {count = 100000, key_bytes = 1 MiB}`: deletes `count` distinct keys of
//!   `key_bytes` bytes each (`i`, zero-padded, then filler). None exists, but each delete
//!   is a write the host must hold until the commit, so it must stop them too.
//! - `BigKey {key_bytes = 16 MiB}`: one put under a key of `key_bytes` bytes, value `1`.
//! - `Fill {count = 60}`: puts `fill/<position>/<i>` for `i` in `0..count` with 512 KiB
//!   values. 60 of them (30 MiB) stay within a 64 MiB write budget per call, so this one
//!   succeeds; several `Fill` events build a large store for `ScanFlood`.
//! - `ScanFlood {limit = 4294967295}`: scans prefix `fill/` from the start with `limit`,
//!   then puts `scanned` = how many entries came back (a JSON number). The host must bound
//!   what one scan returns.
//! - `RandomFlood {bytes = 1 GiB}`: asks `wasi:random` for `bytes` random bytes, then puts
//!   `random_len` = how many came back.
//! - `LogFlood {bytes = 256 MiB}`: writes `bytes` bytes to stdout in 64 KiB writes, with
//!   no newline (so a host that buffers up to a line end never finds one), ignoring write
//!   errors, then puts `logged` = `1`.
//! - `Ok`: puts `ok/<position>` = `1`. The host stores it.
//!
//! Any other event type is ignored. The large buffers are built once per event and reused,
//! so the guest's own memory stays small: the growth, if any, is the host's.
//! `std::hint::black_box` keeps the optimizer from removing the filler and the unused
//! results.

use std::hint::black_box;
use std::io::Write;

use serde_json::Value;

use refold::projection::state_store;

wit_bindgen::generate!({ path: "../../../wit", world: "projection" });

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The size of every value `PutFlood` and `Fill` write, quotes included.
const VALUE_BYTES: usize = 512 * 1024;
/// The size of each write `LogFlood` makes to stdout.
const LOG_WRITE_BYTES: usize = 64 * 1024;
/// Digits of the counter that makes `DeleteFlood`'s keys distinct.
const DELETE_KEY_DIGITS: usize = 20;

struct Flood;

impl Guest for Flood {
    fn filter() -> EventFilter {
        EventFilter {
            event_types: Vec::new(),
            categories: vec!["flood".to_owned()],
        }
    }

    fn handle(events: Vec<Event>) -> Result<(), String> {
        for event in &events {
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            let field = |name: &str, default: u64| {
                data.get(name).and_then(Value::as_u64).unwrap_or(default)
            };
            let position = event.position;
            match event.event_type.as_str() {
                "PutFlood" => put_values("put", position, field("count", 100_000)),
                "DeleteFlood" => delete_flood(field("count", 100_000), field("key_bytes", MIB)),
                "BigKey" => state_store::put(&filler(field("key_bytes", 16 * MIB)), b"1"),
                "Fill" => put_values("fill", position, field("count", 60)),
                "ScanFlood" => {
                    let limit =
                        u32::try_from(field("limit", u64::from(u32::MAX))).unwrap_or(u32::MAX);
                    let entries = black_box(state_store::scan("fill/", None, limit));
                    state_store::put("scanned", entries.len().to_string().as_bytes());
                }
                "RandomFlood" => {
                    let bytes = black_box(wasip2::random::random::get_random_bytes(field(
                        "bytes", GIB,
                    )));
                    state_store::put("random_len", bytes.len().to_string().as_bytes());
                }
                "LogFlood" => {
                    log_flood(field("bytes", 256 * MIB));
                    state_store::put("logged", b"1");
                }
                "Ok" => state_store::put(&format!("ok/{position}"), b"1"),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Puts `<kind>/<position>/<i>` for `i` in `0..count`, each with the same 512 KiB value.
fn put_values(kind: &str, position: u64, count: u64) {
    let value = json_string_of_length(VALUE_BYTES);
    for i in 0..count {
        state_store::put(
            &format!("{kind}/{position}/{i}"),
            black_box(value.as_bytes()),
        );
    }
}

/// Deletes `count` distinct keys of `key_bytes` bytes each: the counter, zero-padded to
/// [`DELETE_KEY_DIGITS`] digits (fewer when the key is shorter), then filler. One key
/// buffer is rewritten in place rather than allocated per delete.
fn delete_flood(count: u64, key_bytes: u64) {
    let mut key = filler(key_bytes);
    let digits = DELETE_KEY_DIGITS.min(key.len());
    for i in 0..count {
        let counter = format!("{i:0DELETE_KEY_DIGITS$}");
        key.replace_range(..digits, &counter[counter.len() - digits..]);
        state_store::delete(black_box(&key));
    }
}

/// Writes `bytes` bytes of `x` to stdout, [`LOG_WRITE_BYTES`] at a time, never a newline.
fn log_flood(bytes: u64) {
    let chunk = filler(LOG_WRITE_BYTES as u64);
    let mut stdout = std::io::stdout();
    let mut left = bytes;
    while left > 0 {
        let length = usize::try_from(left.min(LOG_WRITE_BYTES as u64)).unwrap_or(0);
        // Errors are ignored on purpose: the host may refuse output past its log bound.
        let _ = stdout.write(black_box(&chunk.as_bytes()[..length]));
        left -= length as u64;
    }
    let _ = stdout.flush();
}

/// A JSON string literal of exactly `length` bytes (at least 2): `"xx…x"`.
fn json_string_of_length(length: usize) -> String {
    let mut text = String::with_capacity(length);
    text.push('"');
    text.push_str(&"x".repeat(length.saturating_sub(2)));
    text.push('"');
    black_box(text)
}

/// `bytes` bytes of `k`. A size this 32-bit guest cannot allocate panics, trapping the call
/// before anything reaches the host.
fn filler(bytes: u64) -> String {
    black_box("k".repeat(usize::try_from(bytes).unwrap_or(usize::MAX)))
}

export!(Flood);
