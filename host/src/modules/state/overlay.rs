//! A projection's writes during one call, kept beside its committed values until the
//! runner commits them with a checkpoint.

use std::collections::BTreeMap;

use super::{Changes, ModuleState};
use crate::engine::sandbox::{Scan, StateStore};
use crate::engine::{ENTRY_OVERHEAD_BYTES, check_state};
use crate::store::StoreError;

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
            changes.put_value(&key, value);
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

fn storage(err: StoreError) -> String {
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

    fn scan(&mut self, scan: Scan<'_>) -> Result<Vec<(String, Vec<u8>)>, String> {
        let Scan {
            prefix,
            start_after,
            limit,
            max_bytes,
        } = scan;
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
        use crate::store::{Keyspaces, MemoryKeyspaces};
        ModuleState::new(MemoryKeyspaces::default().open("t").unwrap())
    }

    fn scan(
        overlay: &mut KvOverlay,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        overlay.scan(Scan {
            prefix,
            start_after,
            limit,
            max_bytes,
        })
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
        let keys: Vec<_> = scan(&mut overlay, "a/", None, 10, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a/1", "a/2"]);
        let keys: Vec<_> = scan(&mut overlay, "a/", Some("a/1"), 10, usize::MAX)
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
            let page = scan(overlay, "a/", after, 10, usize::MAX).unwrap();
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
        assert_eq!(scan(&mut overlay, "k/", None, 100, 640).unwrap().len(), 40);
        let refused = scan(&mut overlay, "k/", None, 100, 639).unwrap_err();
        assert!(refused.contains("more than 639 bytes"), "{refused}");
        // A smaller page fits.
        assert_eq!(scan(&mut overlay, "k/", None, 10, 639).unwrap().len(), 10);
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
