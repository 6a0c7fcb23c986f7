//! The on-disk layout of the log tree.
//!
//! Writing a key costs sled far more than writing a byte, so the layout writes far fewer
//! keys than events:
//!
//! - `L` + first position (u64 BE) → a **chunk**: the events of one group commit (or part of
//!   one), positions consecutive from the key's.
//! - `S` + stream name + `0x00` + first revision (u64 BE) → a **stream run**: the positions of
//!   one stream's events written by one group commit, revisions consecutive from the key's.
//!   Stream names contain no control characters, so `0x00` ends the name unambiguously.
//!
//! Everything is written by one atomic batch per group commit.

use uuid::Uuid;

use super::{EventRef, GlobalPosition, StoreError, StreamRevision};

const CHUNK_TAG: u8 = b'L';
const RUN_TAG: u8 = b'S';

pub fn chunk_key(first_position: GlobalPosition) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = CHUNK_TAG;
    key[1..].copy_from_slice(&first_position.to_be_bytes());
    key
}

/// The first key of all chunks and the first key after them.
pub fn chunk_key_bounds() -> ([u8; 1], [u8; 1]) {
    ([CHUNK_TAG], [CHUNK_TAG + 1])
}

pub fn chunk_position(key: &[u8]) -> Result<GlobalPosition, StoreError> {
    key.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("chunk key of {} bytes", key.len())))
}

/// The prefix shared by every run of `stream`.
pub fn run_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(RUN_TAG);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key
}

/// The first key after every run of `stream`.
pub fn run_prefix_end(stream: &str) -> Vec<u8> {
    let mut key = run_prefix(stream);
    *key.last_mut().expect("prefix is never empty") = 1;
    key
}

pub fn run_key(stream: &str, first_revision: StreamRevision) -> Vec<u8> {
    let mut key = run_prefix(stream);
    key.extend_from_slice(&first_revision.to_be_bytes());
    key
}

/// The key of any run, for listing: `S` + name prefix.
pub fn run_listing_key(name_prefix: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name_prefix.len() + 1);
    key.push(RUN_TAG);
    key.extend_from_slice(name_prefix.as_bytes());
    key
}

/// The stream name and first revision of a run key.
pub fn parse_run_key(key: &[u8]) -> Result<(&str, StreamRevision), StoreError> {
    let corrupt = || StoreError::Corrupt("malformed stream run key".into());
    if key.first() != Some(&RUN_TAG) || key.len() < 10 {
        return Err(corrupt());
    }
    let (name, tail) = key[1..].split_at(key.len() - 10);
    if tail[0] != 0 {
        return Err(corrupt());
    }
    let revision = u64::from_be_bytes(tail[1..].try_into().map_err(|_| corrupt())?);
    let name = std::str::from_utf8(name).map_err(|_| corrupt())?;
    Ok((name, revision))
}

/// A stream run: positions of consecutive revisions of one stream.
pub fn encode_run(positions: &[GlobalPosition]) -> Vec<u8> {
    let mut out = Vec::with_capacity(positions.len() * 2 + 8);
    let mut previous = 0;
    for (i, &p) in positions.iter().enumerate() {
        let delta = if i == 0 { p } else { p - previous };
        put_varint(&mut out, delta);
        previous = p;
    }
    out
}

pub fn decode_run(bytes: &[u8]) -> Result<Vec<GlobalPosition>, StoreError> {
    let mut positions = Vec::new();
    let mut reader = Reader { bytes, at: 0 };
    let mut previous = 0u64;
    while reader.at < bytes.len() {
        let delta = reader.varint()?;
        previous = if positions.is_empty() {
            delta
        } else {
            previous + delta
        };
        positions.push(previous);
    }
    Ok(positions)
}

/// Builds one chunk value. Events must be pushed in position order.
#[derive(Default)]
pub struct ChunkWriter {
    bytes: Vec<u8>,
    count: usize,
}

impl ChunkWriter {
    pub fn push(&mut self, event: &EventRef<'_>) {
        let b = &mut self.bytes;
        b.extend_from_slice(event.id.as_bytes());
        put_varint(b, event.revision);
        b.extend_from_slice(&event.recorded_at_micros.to_le_bytes());
        put_str(b, &event.stream);
        put_str(b, &event.event_type);
        put_str(b, &event.metadata);
        put_str(b, &event.data);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn take(&mut self) -> Vec<u8> {
        self.count = 0;
        std::mem::take(&mut self.bytes)
    }
}

/// Decodes the events of a chunk whose first event has `first_position`, calling `visit`
/// for each event at or after `from` until it returns `false`. Events are borrowed from
/// `bytes`: nothing is copied unless the visitor copies it.
///
/// # Errors
/// A truncated or malformed chunk.
pub fn decode_chunk<'a>(
    bytes: &'a [u8],
    first_position: GlobalPosition,
    from: GlobalPosition,
    mut visit: impl FnMut(EventRef<'a>) -> bool,
) -> Result<(), StoreError> {
    let mut reader = Reader { bytes, at: 0 };
    let mut position = first_position;
    while reader.at < bytes.len() {
        if position < from {
            reader.skip_event()?;
        } else {
            let event = reader.event(position)?;
            if !visit(event) {
                return Ok(());
            }
        }
        position += 1;
    }
    Ok(())
}

/// How many events a chunk holds.
///
/// # Errors
/// A truncated or malformed chunk.
pub fn chunk_len(bytes: &[u8]) -> Result<u64, StoreError> {
    let mut reader = Reader { bytes, at: 0 };
    let mut count = 0;
    while reader.at < bytes.len() {
        reader.skip_event()?;
        count += 1;
    }
    Ok(count)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn truncated() -> StoreError {
        StoreError::Corrupt("truncated log chunk".into())
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or_else(Self::truncated)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StoreError::Corrupt("overlong varint in log chunk".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.at.checked_add(n).ok_or_else(Self::truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or_else(Self::truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        let len = usize::try_from(self.varint()?).map_err(|_| Self::truncated())?;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| StoreError::Corrupt("invalid UTF-8 in log chunk".into()))
    }

    fn skip_str(&mut self) -> Result<(), StoreError> {
        let len = usize::try_from(self.varint()?).map_err(|_| Self::truncated())?;
        self.take(len).map(|_| ())
    }

    fn skip_event(&mut self) -> Result<(), StoreError> {
        self.take(16)?;
        self.varint()?;
        self.take(8)?;
        for _ in 0..4 {
            self.skip_str()?;
        }
        Ok(())
    }

    fn event(&mut self, position: GlobalPosition) -> Result<EventRef<'a>, StoreError> {
        let id = Uuid::from_slice(self.take(16)?).map_err(|_| Self::truncated())?;
        let revision = self.varint()?;
        let recorded_at_micros =
            i64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Self::truncated())?);
        let stream = self.str()?;
        let event_type = self.str()?;
        let metadata = self.str()?;
        let data = self.str()?;
        Ok(EventRef {
            id,
            stream,
            revision,
            position,
            event_type,
            data,
            metadata,
            recorded_at_micros,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecordedEvent;

    fn event(position: u64, revision: u64) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::new_v4(),
            stream: format!("account-{revision}"),
            revision,
            position,
            event_type: "Deposited".into(),
            data: r#"{"amount":5}"#.into(),
            metadata: "{}".into(),
            recorded_at_micros: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn chunks_round_trip_and_skip_to_a_position() {
        let events: Vec<_> = (10..20).map(|p| event(p, p * 300)).collect();
        let mut writer = ChunkWriter::default();
        events.iter().for_each(|e| writer.push(&e.as_ref()));
        let bytes = writer.take();
        assert_eq!(chunk_len(&bytes).unwrap(), 10);
        let mut decoded = Vec::new();
        decode_chunk(&bytes, 10, 13, |e| {
            decoded.push(e.to_recorded());
            true
        })
        .unwrap();
        assert_eq!(decoded, events[3..]);
    }

    #[test]
    fn truncated_chunks_are_errors_not_panics() {
        let mut writer = ChunkWriter::default();
        writer.push(&event(0, 0).as_ref());
        let bytes = writer.take();
        for cut in 0..bytes.len() {
            let _ = decode_chunk(&bytes[..cut], 0, 0, |_| true);
        }
        assert!(decode_chunk(&bytes[..bytes.len() - 1], 0, 0, |_| true).is_err());
    }

    #[test]
    fn runs_and_run_keys_round_trip() {
        let positions = vec![5, 6, 900, 1_000_000];
        assert_eq!(decode_run(&encode_run(&positions)).unwrap(), positions);
        let key = run_key("order-1", 42);
        assert_eq!(parse_run_key(&key).unwrap(), ("order-1", 42));
        assert!(key.starts_with(&run_prefix("order-1")));
        assert!(key.as_slice() < run_prefix_end("order-1").as_slice());
    }
}
