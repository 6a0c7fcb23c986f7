//! `Store`: a projection's key-value read model.
//!
//! Inside the module it forwards to the host's `state-store` import, where writes become
//! durable together with the module's checkpoint. `Store::in_memory()` keeps the same
//! behaviour in a `BTreeMap`, so a projection can be unit-tested on the native target.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(feature = "contract-0-1")]
use crate::bindings::projection::refold::projection::state_store as host;
#[cfg(not(feature = "contract-0-1"))]
use crate::bindings::v2::projection::refold::projection::state_store as host;

/// How many entries one host `scan` call asks for while iterating.
const SCAN_PAGE: u32 = 256;

/// The key-value store a projection writes its read model to. Values are bytes; the typed
/// methods store JSON, which is what `GET /projections/{name}/state/{key}` shows.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    /// The host's `state-store`, scoped to this module.
    Host,
    /// A map in the module's own memory, for tests.
    Memory(BTreeMap<String, Vec<u8>>),
}

impl Store {
    /// The host's store: what a projection's `handle` is given inside the module.
    pub(crate) fn host() -> Self {
        Self {
            backend: Backend::Host,
        }
    }

    /// An empty store held in memory, for unit tests on the native target.
    pub fn in_memory() -> Self {
        Self {
            backend: Backend::Memory(BTreeMap::new()),
        }
    }

    /// The value under `key`, decoded from JSON; `None` when there is none.
    ///
    /// # Errors
    /// The stored value is not valid JSON for `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        self.get_bytes(key)
            .map(|bytes| decode(key, &bytes))
            .transpose()
    }

    /// The value under `key`, as stored.
    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Host => host::get(key),
            Backend::Memory(map) => map.get(key).cloned(),
        }
    }

    /// Store `value` under `key` as JSON, replacing what was there.
    ///
    /// # Errors
    /// `value` does not serialize (only custom `Serialize` impls or maps with non-string
    /// keys can fail).
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| format!("value for key {key} does not encode: {e}"))?;
        self.put_bytes(key, &bytes);
        Ok(())
    }

    /// Store `value` under `key` as is, replacing what was there.
    pub fn put_bytes(&mut self, key: &str, value: &[u8]) {
        match &mut self.backend {
            Backend::Host => host::put(key, value),
            Backend::Memory(map) => {
                map.insert(key.to_owned(), value.to_vec());
            }
        }
    }

    /// Read the value under `key` (or `T::default()` when there is none), let `change`
    /// modify it, and store it back. Returns what `change` returned.
    ///
    /// ```
    /// # use refold_guest::Store;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Count {
    ///     count: i64,
    /// }
    ///
    /// let mut store = Store::in_memory();
    /// store.update("status/paid", |c: &mut Count| c.count += 1)?;
    /// assert_eq!(store.get::<Count>("status/paid")?.map(|c| c.count), Some(1));
    /// # Ok::<(), String>(())
    /// ```
    ///
    /// # Errors
    /// The stored value does not decode as `T`, or the new one does not encode.
    pub fn update<T, R>(&mut self, key: &str, change: impl FnOnce(&mut T) -> R) -> Result<R, String>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let mut value = self.get::<T>(key)?.unwrap_or_default();
        let outcome = change(&mut value);
        self.put(key, &value)?;
        Ok(outcome)
    }

    /// Remove `key`; removing a missing key is not an error.
    pub fn delete(&mut self, key: &str) {
        match &mut self.backend {
            Backend::Host => host::delete(key),
            Backend::Memory(map) => {
                map.remove(key);
            }
        }
    }

    /// Every entry whose key starts with `prefix`, in key order, decoded from JSON. Pages
    /// through the host's store as it goes, so a long listing is never held whole.
    ///
    /// Each item is an error when its value does not decode as `T`.
    pub fn scan<'s, T: DeserializeOwned>(
        &'s self,
        prefix: &str,
    ) -> impl Iterator<Item = Result<(String, T), String>> + 's {
        self.scan_bytes(prefix)
            .map(|(key, bytes)| decode(&key, &bytes).map(|value| (key, value)))
    }

    /// Every entry whose key starts with `prefix`, in key order, as stored.
    pub fn scan_bytes(&self, prefix: &str) -> ScanBytes<'_> {
        ScanBytes {
            store: self,
            prefix: prefix.to_owned(),
            page: Vec::new().into_iter(),
            last_key: None,
            exhausted: false,
        }
    }

    /// Up to `limit` entries under `prefix` after `start_after`: one host `scan` call.
    fn scan_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Vec<(String, Vec<u8>)> {
        match &self.backend {
            Backend::Host => host::scan(prefix, start_after, limit),
            Backend::Memory(map) => {
                let lower = match start_after {
                    Some(key) if key >= prefix => Bound::Excluded(key),
                    _ => Bound::Included(prefix),
                };
                let range: btree_map::Range<'_, String, Vec<u8>> =
                    map.range::<str, _>((lower, Bound::Unbounded));
                range
                    .take_while(|(key, _)| key.starts_with(prefix))
                    .take(limit as usize)
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            }
        }
    }
}

/// Iterator over the raw entries under a prefix; see [`Store::scan_bytes`].
#[derive(Debug)]
pub struct ScanBytes<'s> {
    store: &'s Store,
    prefix: String,
    page: std::vec::IntoIter<(String, Vec<u8>)>,
    /// Where the next page starts: after the last key handed out.
    last_key: Option<String>,
    /// The last page was short, so there is nothing after it.
    exhausted: bool,
}

impl Iterator for ScanBytes<'_> {
    type Item = (String, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((key, value)) = self.page.next() {
            if self.page.len() == 0 {
                self.last_key = Some(key.clone());
            }
            return Some((key, value));
        }
        if self.exhausted {
            return None;
        }
        let page = self
            .store
            .scan_page(&self.prefix, self.last_key.as_deref(), SCAN_PAGE);
        self.exhausted = page.len() < SCAN_PAGE as usize;
        self.page = page.into_iter();
        if self.page.len() == 0 {
            self.exhausted = true;
            return None;
        }
        self.next()
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("value under key {key} does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_pages_through_every_entry_under_the_prefix_in_key_order() {
        let mut store = Store::in_memory();
        let total = SCAN_PAGE as usize * 2 + 5;
        for n in 0..total {
            store.put(&format!("item/{n:04}"), &n).unwrap();
        }
        store.put("itemz", &0).unwrap();
        store.put("other/1", &0).unwrap();

        let items: Vec<(String, usize)> = store.scan("item/").collect::<Result<_, _>>().unwrap();

        assert_eq!(items.len(), total);
        assert!(
            items
                .iter()
                .enumerate()
                .all(|(n, (key, value))| *key == format!("item/{n:04}") && *value == n)
        );
    }

    #[test]
    fn a_scan_of_a_full_last_page_ends_cleanly() {
        let mut store = Store::in_memory();
        for n in 0..SCAN_PAGE {
            store.put_bytes(&format!("k/{n:04}"), b"1");
        }

        assert_eq!(store.scan_bytes("k/").count(), SCAN_PAGE as usize);
        assert_eq!(store.scan_bytes("none/").count(), 0);
    }

    #[test]
    fn update_starts_from_the_default_and_delete_removes() {
        let mut store = Store::in_memory();

        store.update("n", |n: &mut u32| *n += 2).unwrap();
        store.update("n", |n: &mut u32| *n += 2).unwrap();
        assert_eq!(store.get::<u32>("n"), Ok(Some(4)));

        store.delete("n");
        store.delete("n");
        assert_eq!(store.get::<u32>("n"), Ok(None));
    }

    #[test]
    fn a_value_that_does_not_decode_is_an_error_naming_the_key() {
        let mut store = Store::in_memory();
        store.put_bytes("k", b"not json");

        let error = store.get::<u32>("k").err().unwrap_or_default();

        assert!(
            error.starts_with("value under key k does not decode"),
            "{error}"
        );
    }
}
