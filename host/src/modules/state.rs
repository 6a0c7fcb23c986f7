//! A module version's derived state in its own sled tree, and how a batch's changes are
//! committed with the checkpoint in one atomic sled batch.
//!
//! Keys: `c` → checkpoint (u64 BE: every position below it is processed);
//! `s` + stream → reducer state (last applied revision, u64 BE, then the state bytes);
//! `k` + key → projection value; `d` + position (u64 BE) → a dead letter (JSON);
//! `p` + stream + `0x00` + revision (u64 BE) → a snapshot of a reducer state after that
//! revision, so that asking for an old state replays a bounded number of events.

use std::collections::BTreeMap;

use crate::engine::sandbox::StateStore;
use crate::engine::{ENTRY_OVERHEAD_BYTES, check_state};
use crate::store::{GlobalPosition, KeyBatch, StreamRevision};

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

/// A reducer's state for one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The revision of the last event applied.
    pub revision: StreamRevision,
    pub bytes: Vec<u8>,
}

/// The state tree of one module version.
#[derive(Clone)]
pub struct ModuleState {
    tree: sled::Tree,
}

impl ModuleState {
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// # Errors
    /// Storage failures.
    pub fn checkpoint(&self) -> sled::Result<GlobalPosition> {
        Ok(self
            .tree
            .get(CHECKPOINT_KEY)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// # Errors
    /// Storage failures.
    pub fn stream_state(&self, stream: &str) -> sled::Result<Option<StreamState>> {
        Ok(self.tree.get(tagged(STREAM_TAG, stream))?.and_then(|v| {
            let revision = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            Some(StreamState {
                revision,
                bytes: v[8..].to_vec(),
            })
        }))
    }

    /// # Errors
    /// Storage failures.
    pub fn value(&self, key: &str) -> sled::Result<Option<Vec<u8>>> {
        Ok(self.tree.get(tagged(KEY_TAG, key))?.map(|v| v.to_vec()))
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
    ) -> sled::Result<(Vec<(String, Vec<u8>)>, Option<String>)> {
        let start = tagged(KEY_TAG, from.filter(|f| *f > prefix).unwrap_or(prefix));
        let want = tagged(KEY_TAG, prefix);
        let mut items = Vec::new();
        for entry in self.tree.range(start..) {
            let (key, value) = entry?;
            if !key.starts_with(&want) {
                break;
            }
            let key = String::from_utf8_lossy(&key[1..]).into_owned();
            if items.len() == limit {
                return Ok((items, Some(key)));
            }
            items.push((key, value.to_vec()));
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
    ) -> sled::Result<(Vec<DeadLetter>, Option<GlobalPosition>)> {
        let mut letters = Vec::new();
        for entry in self
            .tree
            .range(&dead_letter_key(from)[..]..&[DEAD_LETTER_TAG + 1][..])
        {
            let (_, value) = entry?;
            let letter: DeadLetter = serde_json::from_slice(&value).map_err(|err| {
                sled::Error::Unsupported(format!("a dead letter is unreadable: {err}"))
            })?;
            if letters.len() == limit {
                return Ok((letters, Some(letter.position)));
            }
            letters.push(letter);
        }
        Ok((letters, None))
    }

    /// Every derived entry (states and values; not the checkpoint or dead letters), in key
    /// order.
    pub fn entries(&self) -> impl Iterator<Item = sled::Result<StateEntry>> + '_ {
        self.tree
            .iter()
            .filter(|entry| {
                entry.as_ref().map_or(true, |(key, _)| {
                    matches!(key.first(), Some(&STREAM_TAG) | Some(&KEY_TAG))
                })
            })
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    /// The latest snapshot of `stream`'s state at or before `revision`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn snapshot_at_or_before(
        &self,
        stream: &str,
        revision: StreamRevision,
    ) -> sled::Result<Option<StreamState>> {
        let mut lowest = tagged(SNAPSHOT_TAG, stream);
        lowest.push(0);
        let highest = snapshot_key(stream, revision);
        let Some(entry) = self.tree.range(lowest.clone()..=highest).next_back() else {
            return Ok(None);
        };
        let (key, value) = entry?;
        let revision = key
            .get(lowest.len()..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| sled::Error::Unsupported("a malformed snapshot key".into()))?;
        Ok(Some(StreamState {
            revision,
            bytes: value.to_vec(),
        }))
    }

    /// Drops everything: state, checkpoint and dead letters, in one atomic batch (sled's
    /// own `clear` removes key by key, so a crash midway could leave a checkpoint of 0
    /// beside states that already hold events, and they would be folded again).
    ///
    /// # Errors
    /// Storage failures.
    pub fn clear(&self) -> sled::Result<()> {
        let mut batch = KeyBatch::default();
        for key in self.tree.iter().keys() {
            batch.remove(key?);
        }
        batch.apply(&self.tree)
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
    batch: KeyBatch,
}

impl Changes {
    pub fn put_stream_state(&mut self, stream: &str, state: &StreamState) {
        let mut value = Vec::with_capacity(8 + state.bytes.len());
        value.extend_from_slice(&state.revision.to_be_bytes());
        value.extend_from_slice(&state.bytes);
        self.batch.insert(tagged(STREAM_TAG, stream), value);
    }

    pub fn put_snapshot(&mut self, stream: &str, state: &StreamState) {
        self.batch
            .insert(snapshot_key(stream, state.revision), state.bytes.as_slice());
    }

    pub fn put_dead_letter(&mut self, letter: &DeadLetter) {
        let value = serde_json::to_vec(letter).unwrap_or_default();
        self.batch
            .insert(&dead_letter_key(letter.position)[..], value);
    }

    /// # Errors
    /// Storage failures.
    pub fn commit(mut self, state: &ModuleState, checkpoint: GlobalPosition) -> sled::Result<()> {
        self.batch
            .insert(CHECKPOINT_KEY, &checkpoint.to_be_bytes()[..]);
        self.batch.apply(&state.tree)
    }
}

/// A projection's writes during one call, over its committed values: reads see the
/// call's own writes; nothing reaches the tree until [`KvOverlay::into_changes`] is
/// committed.
pub struct KvOverlay {
    state: ModuleState,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// What `writes` holds, counted as the sandbox counts writes (an upper bound: a key
    /// written twice counts twice).
    written_bytes: usize,
    max_value_bytes: usize,
}

/// Committed entries read per page while scanning.
const SCAN_PAGE_ENTRIES: usize = 16;

impl KvOverlay {
    pub fn new(state: ModuleState, max_value_bytes: usize) -> Self {
        Self {
            state,
            writes: BTreeMap::new(),
            written_bytes: 0,
            max_value_bytes,
        }
    }

    /// The bytes the pending writes hold (an upper bound), so that the runner commits
    /// before many calls' writes add up.
    pub fn written_bytes(&self) -> usize {
        self.written_bytes
    }

    pub fn into_changes(self) -> Changes {
        let mut changes = Changes::default();
        for (key, value) in self.writes {
            match value {
                Some(value) => changes.batch.insert(tagged(KEY_TAG, &key), value),
                None => changes.batch.remove(tagged(KEY_TAG, &key)),
            }
        }
        changes
    }

    /// The first `limit` live keys under `prefix` after `start_after` and up to `bound`
    /// (inclusive; `None`: no bound): `committed` with this call's writes applied.
    fn merge(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        bound: Option<&str>,
        committed: &BTreeMap<String, Vec<u8>>,
        limit: usize,
    ) -> Vec<(String, Vec<u8>)> {
        let mut merged: BTreeMap<&str, Option<&Vec<u8>>> = committed
            .iter()
            .map(|(key, value)| (key.as_str(), Some(value)))
            .collect();
        for (key, value) in self.writes.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) || bound.is_some_and(|b| key.as_str() > b) {
                break;
            }
            if start_after.is_none_or(|a| key.as_str() > a) {
                merged.insert(key, value.as_ref());
            }
        }
        merged
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key.to_owned(), v.clone())))
            .take(limit)
            .collect()
    }
}

fn storage(err: sled::Error) -> String {
    format!("the state store failed: {err}")
}

impl StateStore for KvOverlay {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.writes.get(key) {
            Some(written) => Ok(written.clone()),
            None => self.state.value(key).map_err(storage),
        }
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        check_state(&value, self.max_value_bytes)
            .map_err(|why| format!("put under key {key:?} of {why}"))?;
        self.written_bytes += key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        self.writes.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<(), String> {
        self.written_bytes += key.len() + ENTRY_OVERHEAD_BYTES;
        self.writes.insert(key, None);
        Ok(())
    }

    fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        // Committed keys come in pages, merged with this call's writes in key order. The
        // merge is certain only up to the last committed key read: a write beyond it may
        // sort after committed keys not read yet. So pages are read until `limit` live
        // keys lie within that bound, or no committed key is left. Pages are small, so that
        // what is read past `max_bytes` before the refusal stays small too.
        let page_size = limit.saturating_add(1).min(SCAN_PAGE_ENTRIES);
        let mut committed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut committed_bytes = 0usize;
        let mut from = start_after.map(str::to_owned);
        let too_big = || {
            format!(
                "a state-store scan of prefix {prefix:?} would return more than {max_bytes} \
                 bytes (the module's limit per scan); ask for fewer entries"
            )
        };
        loop {
            let (page, _) = self
                .state
                .values(prefix, from.as_deref(), page_size)
                .map_err(storage)?;
            let done = page.len() < page_size;
            for (key, value) in page {
                if start_after.is_none_or(|a| key.as_str() > a)
                    && from.as_deref().is_none_or(|f| key.as_str() > f)
                {
                    from = Some(key.clone());
                    committed_bytes += key.len() + value.len();
                    committed.insert(key, value);
                }
            }
            let bound = if done { None } else { from.as_deref() };
            let merged = self.merge(prefix, start_after, bound, &committed, limit);
            let merged_bytes: usize = merged.iter().map(|(k, v)| k.len() + v.len()).sum();
            if merged_bytes > max_bytes {
                return Err(too_big());
            }
            if done || merged.len() >= limit {
                return Ok(merged);
            }
            if committed_bytes > max_bytes.saturating_mul(2) {
                // Mostly deleted by this call, yet already past twice the limit: refuse
                // rather than read on.
                return Err(too_big());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ModuleState {
        let db = sled::Config::new().temporary(true).open().unwrap();
        ModuleState::new(db.open_tree("t").unwrap())
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
    fn the_overlay_reads_its_own_writes_and_scans_merged() {
        let state = state();
        let mut overlay = KvOverlay::new(state.clone(), 100);
        overlay.put("a/1".into(), b"1".to_vec()).unwrap();
        overlay.put("a/3".into(), b"3".to_vec()).unwrap();
        overlay.into_changes().commit(&state, 1).unwrap();

        let mut overlay = KvOverlay::new(state.clone(), 100);
        overlay.put("a/2".into(), b"2".to_vec()).unwrap();
        overlay.delete("a/3".into()).unwrap();
        assert_eq!(overlay.get("a/2").unwrap(), Some(b"2".to_vec()));
        assert_eq!(overlay.get("a/3").unwrap(), None);
        let keys: Vec<_> = overlay
            .scan("a/", None, 10, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a/1", "a/2"]);
        let keys: Vec<_> = overlay
            .scan("a/", Some("a/1"), 10, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a/2"]);
        assert!(overlay.put("big".into(), vec![b'1'; 101]).is_err());
        assert!(overlay.put("bad".into(), b"not json".to_vec()).is_err());
        // Nothing reached the tree.
        assert_eq!(state.value("a/3").unwrap(), Some(b"3".to_vec()));
    }

    #[test]
    fn a_scan_skips_no_committed_key_when_the_call_deleted_some_and_wrote_past_them() {
        let state = state();
        let mut overlay = KvOverlay::new(state.clone(), 100);
        for i in 1..=20 {
            overlay.put(format!("a/{i:02}"), b"1".to_vec()).unwrap();
        }
        overlay.into_changes().commit(&state, 1).unwrap();
        let mut overlay = KvOverlay::new(state.clone(), 100);
        for i in 1..=10 {
            overlay.delete(format!("a/{i:02}")).unwrap();
        }
        overlay.put("a/99".into(), b"2".to_vec()).unwrap();
        let keys = |overlay: &mut KvOverlay, after: Option<&str>| -> Vec<String> {
            let page = overlay.scan("a/", after, 10, usize::MAX).unwrap();
            page.into_iter().map(|(k, _)| k).collect()
        };
        let first = keys(&mut overlay, None);
        let expected: Vec<String> = (11..=20).map(|i| format!("a/{i:02}")).collect();
        assert_eq!(first, expected);
        assert_eq!(keys(&mut overlay, Some("a/20")), ["a/99"]);
        assert_eq!(keys(&mut overlay, Some("a/99")), Vec::<String>::new());
    }

    #[test]
    fn a_scan_that_would_return_more_than_its_byte_limit_is_refused_not_cut_short() {
        let state = state();
        let mut overlay = KvOverlay::new(state.clone(), 100);
        for i in 0..40 {
            overlay
                .put(format!("k/{i:02}"), b"\"0123456789\"".to_vec())
                .unwrap();
        }
        overlay.into_changes().commit(&state, 1).unwrap();
        let mut overlay = KvOverlay::new(state.clone(), 100);
        // 40 entries of 4 + 12 bytes: 640 bytes.
        assert_eq!(overlay.scan("k/", None, 100, 640).unwrap().len(), 40);
        let refused = overlay.scan("k/", None, 100, 639).unwrap_err();
        assert!(refused.contains("more than 639 bytes"), "{refused}");
        // A smaller page fits.
        assert_eq!(overlay.scan("k/", None, 10, 639).unwrap().len(), 10);
    }

    #[test]
    fn deletes_count_toward_the_pending_bytes_like_puts() {
        let mut overlay = KvOverlay::new(state(), 100);
        overlay.delete("x".repeat(1000)).unwrap();
        assert_eq!(overlay.written_bytes(), 1000 + ENTRY_OVERHEAD_BYTES);
        overlay.put("k".into(), b"1".to_vec()).unwrap();
        assert_eq!(overlay.written_bytes(), 1000 + 2 + 2 * ENTRY_OVERHEAD_BYTES);
    }
}
