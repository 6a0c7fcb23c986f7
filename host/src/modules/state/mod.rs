//! A module version's derived state in its own keyspace, and how a batch's changes are
//! committed with the checkpoint in one atomic write.
//!
//! Keys: `c` → checkpoint (u64 BE: every position below it is processed);
//! `s` + stream → reducer state (last applied revision, u64 BE, then the state bytes);
//! `k` + key → projection value; `d` + position (u64 BE) → a dead letter (JSON);
//! `p` + stream + `0x00` + revision (u64 BE) → a snapshot of a reducer state after that
//! revision, so that asking for an old state replays a bounded number of events.

mod overlay;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use overlay::KvOverlay;

use crate::store::{GlobalPosition, Keyspace, StoreError, StreamRevision, Writes};

const CHECKPOINT_KEY: &[u8] = b"c";
const STREAM_TAG: u8 = b's';
const KEY_TAG: u8 = b'k';
const DEAD_LETTER_TAG: u8 = b'd';
const SNAPSHOT_TAG: u8 = b'p';

fn snapshot_key(stream: &str, revision: StreamRevision) -> Vec<u8> {
    let mut key = tagged(SNAPSHOT_TAG, stream);
    key.push(0);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

fn dead_letter_key(position: GlobalPosition) -> [u8; 9] {
    let mut key = [DEAD_LETTER_TAG; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// An event a module stepped over: skipped by its `skip` policy or by an operator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub position: GlobalPosition,
    pub event_id: String,
    pub event_type: String,
    pub stream: String,
    pub kind: crate::engine::GuestErrorKind,
    pub message: String,
    /// When it was skipped (RFC 3339).
    pub at: String,
    /// `policy` or `operator`.
    pub by: String,
}

/// One entry of a module's derived state, for comparisons: its key in the tree and value.
pub type StateEntry = (Vec<u8>, Vec<u8>);

fn tagged(tag: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.push(tag);
    key.extend_from_slice(name.as_bytes());
    key
}

/// A page of projection values (key, value) and the key the next page starts at.
pub type ValuePage = (Vec<(String, Vec<u8>)>, Option<String>);

/// A reducer's state for one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The revision of the last event applied.
    pub revision: StreamRevision,
    pub bytes: Vec<u8>,
}

/// The state of one module version.
#[derive(Clone)]
pub struct ModuleState {
    space: Arc<dyn Keyspace>,
}

impl ModuleState {
    pub fn new(space: Arc<dyn Keyspace>) -> Self {
        Self { space }
    }

    /// # Errors
    /// Storage failures.
    pub fn checkpoint(&self) -> Result<GlobalPosition, StoreError> {
        Ok(self
            .space
            .get(CHECKPOINT_KEY)?
            .and_then(|v| v.as_slice().try_into().ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// # Errors
    /// Storage failures.
    pub fn stream_state(&self, stream: &str) -> Result<Option<StreamState>, StoreError> {
        Ok(self
            .space
            .get(&tagged(STREAM_TAG, stream))?
            .and_then(|mut v| {
                let revision = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
                // The state follows the revision: moved down in place, not copied again.
                v.drain(..8);
                Some(StreamState { revision, bytes: v })
            }))
    }

    /// # Errors
    /// Storage failures.
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.space.get(&tagged(KEY_TAG, key))
    }

    /// Up to `limit` projection entries whose key starts with `prefix`, from `from`
    /// (inclusive) on, and the key the following page starts at.
    ///
    /// # Errors
    /// Storage failures.
    pub fn values(
        &self,
        prefix: &str,
        from: Option<&str>,
        limit: usize,
    ) -> Result<ValuePage, StoreError> {
        let start = tagged(KEY_TAG, from.filter(|f| *f > prefix).unwrap_or(prefix));
        let want = tagged(KEY_TAG, prefix);
        let mut items = Vec::new();
        for entry in self.space.range(&start, None) {
            let (key, value) = entry?;
            if !key.starts_with(&want) {
                break;
            }
            let key = String::from_utf8_lossy(&key[1..]).into_owned();
            if items.len() == limit {
                return Ok((items, Some(key)));
            }
            items.push((key, value));
        }
        Ok((items, None))
    }
}

impl ModuleState {
    /// Dead letters from position `from` on, at most `limit`, and the position of the next.
    ///
    /// # Errors
    /// Storage failures, or a record that is not a dead letter.
    pub fn dead_letters(
        &self,
        from: GlobalPosition,
        limit: usize,
    ) -> Result<(Vec<DeadLetter>, Option<GlobalPosition>), StoreError> {
        let mut letters = Vec::new();
        for entry in self
            .space
            .range(&dead_letter_key(from), Some(&[DEAD_LETTER_TAG + 1]))
        {
            let (_, value) = entry?;
            let letter: DeadLetter = serde_json::from_slice(&value).map_err(|err| {
                StoreError::Corrupt(format!("a dead letter is unreadable: {err}"))
            })?;
            if letters.len() == limit {
                return Ok((letters, Some(letter.position)));
            }
            letters.push(letter);
        }
        Ok((letters, None))
    }

    /// The positions of every dead letter: what rebuilds of this version step over.
    ///
    /// # Errors
    /// Storage failures.
    pub fn dead_letter_positions(&self) -> Result<BTreeSet<GlobalPosition>, StoreError> {
        let (letters, _) = self.dead_letters(0, usize::MAX)?;
        Ok(letters.iter().map(|l| l.position).collect())
    }

    /// Every derived entry (states and values; not the checkpoint or dead letters), in key
    /// order.
    pub fn entries(&self) -> impl Iterator<Item = Result<StateEntry, StoreError>> + '_ {
        self.space.range(&[], None).filter(|entry| {
            entry.as_ref().map_or(true, |(key, _)| {
                matches!(key.first(), Some(&STREAM_TAG) | Some(&KEY_TAG))
            })
        })
    }

    /// The latest snapshot of `stream`'s state at or before `revision`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn snapshot_at_or_before(
        &self,
        stream: &str,
        revision: StreamRevision,
    ) -> Result<Option<StreamState>, StoreError> {
        let mut lowest = tagged(SNAPSHOT_TAG, stream);
        lowest.push(0);
        let highest = snapshot_key(stream, revision);
        let Some((key, bytes)) = self.space.last_in(&lowest, &highest)? else {
            return Ok(None);
        };
        let revision = key
            .get(lowest.len()..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("a malformed snapshot key".into()))?;
        Ok(Some(StreamState { revision, bytes }))
    }

    /// Drops everything: state, checkpoint and dead letters, at once (a checkpoint of 0
    /// beside states that already hold events would fold them again).
    ///
    /// # Errors
    /// Storage failures.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.space.clear()
    }

    /// Makes what was committed durable.
    ///
    /// # Errors
    /// Storage failures.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.space.flush()
    }
}

/// A state entry's key as people read it: a stream (reducer) or a key (projection).
pub fn describe_entry_key(key: &[u8]) -> String {
    let name = String::from_utf8_lossy(key.get(1..).unwrap_or_default());
    match key.first() {
        Some(&STREAM_TAG) => format!("stream {name}"),
        _ => format!("key {name}"),
    }
}

/// The changes of one batch, committed with the new checkpoint or not at all.
#[derive(Default)]
pub struct Changes {
    writes: Writes,
}

impl Changes {
    pub fn put_stream_state(&mut self, stream: &str, state: &StreamState) {
        let mut value = Vec::with_capacity(8 + state.bytes.len());
        value.extend_from_slice(&state.revision.to_be_bytes());
        value.extend_from_slice(&state.bytes);
        self.writes.put(tagged(STREAM_TAG, stream), value);
    }

    pub fn put_snapshot(&mut self, stream: &str, state: &StreamState) {
        self.writes
            .put(snapshot_key(stream, state.revision), state.bytes.as_slice());
    }

    pub fn put_dead_letter(&mut self, letter: &DeadLetter) {
        let value = serde_json::to_vec(letter).unwrap_or_default();
        self.writes
            .put(&dead_letter_key(letter.position)[..], value);
    }

    /// # Errors
    /// Storage failures.
    pub fn commit(
        mut self,
        state: &ModuleState,
        checkpoint: GlobalPosition,
    ) -> Result<(), StoreError> {
        self.writes
            .put(CHECKPOINT_KEY, &checkpoint.to_be_bytes()[..]);
        state.space.commit(self.writes)
    }

    /// A projection value written, or removed (`None`).
    pub fn put_value(&mut self, key: &str, value: Option<Vec<u8>>) {
        match value {
            Some(value) => self.writes.put(tagged(KEY_TAG, key), value),
            None => self.writes.remove(tagged(KEY_TAG, key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Keyspaces, MemoryKeyspaces};

    fn state() -> ModuleState {
        ModuleState::new(MemoryKeyspaces::default().open("t").unwrap())
    }

    #[test]
    fn changes_commit_atomically_with_the_checkpoint() {
        let state = state();
        assert_eq!(state.checkpoint().unwrap(), 0);
        let mut changes = Changes::default();
        let s = StreamState {
            revision: 4,
            bytes: b"{}".to_vec(),
        };
        changes.put_stream_state("account-1", &s);
        changes.commit(&state, 17).unwrap();
        assert_eq!(state.checkpoint().unwrap(), 17);
        assert_eq!(state.stream_state("account-1").unwrap(), Some(s));
    }

    #[test]
    fn snapshots_are_found_at_or_before_a_revision_and_clear_drops_everything() {
        let state = state();
        let mut changes = Changes::default();
        for revision in [999, 1999] {
            let s = StreamState {
                revision,
                bytes: revision.to_string().into_bytes(),
            };
            changes.put_snapshot("a-1", &s);
        }
        changes.commit(&state, 2000).unwrap();
        let found = |r| {
            state
                .snapshot_at_or_before("a-1", r)
                .unwrap()
                .map(|s| s.revision)
        };
        assert_eq!(found(500), None);
        assert_eq!(found(999), Some(999));
        assert_eq!(found(1500), Some(999));
        assert_eq!(found(5000), Some(1999));
        assert_eq!(state.snapshot_at_or_before("a-10", 5000).unwrap(), None);
        state.clear().unwrap();
        assert_eq!(state.checkpoint().unwrap(), 0);
        assert_eq!(found(5000), None);
    }
}
