//! Keyspaces on sled: one tree each, in the store's database beside the log.

use std::sync::Arc;

use super::sled_batch::KeyBatch;
use super::{KeyIter, KeyValue, Keyspace, Keyspaces, SledStore, StoreError, Writes};

/// Trees the store itself uses, which no keyspace may open.
const RESERVED: &[&str] = &["log", "__sled__default"];

impl Keyspaces for SledStore {
    fn open(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError> {
        if RESERVED.contains(&name) {
            return Err(StoreError::Storage(format!(
                "keyspace name {name:?} is reserved by the store"
            )));
        }
        Ok(Arc::new(SledKeyspace(self.db().open_tree(name)?)))
    }

    fn remove(&self, name: &str) -> Result<(), StoreError> {
        if !RESERVED.contains(&name) {
            self.db().drop_tree(name)?;
        }
        Ok(())
    }
}

struct SledKeyspace(sled::Tree);

impl Keyspace for SledKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key)?.map(|v| v.to_vec()))
    }

    fn range(&self, from: &[u8], until: Option<&[u8]>) -> KeyIter<'_> {
        let entries = match until {
            Some(until) => self.0.range(from..until),
            None => self.0.range(from..),
        };
        Box::new(entries.map(|entry| {
            entry
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        }))
    }

    fn last_in(&self, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match self.0.range(from..=to).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    fn commit(&self, writes: Writes) -> Result<(), StoreError> {
        let mut batch = KeyBatch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        Ok(batch.apply(&self.0)?)
    }

    fn clear(&self) -> Result<(), StoreError> {
        // sled's own `clear` removes key by key: one atomic batch instead, so that a crash
        // midway cannot leave some keys without others.
        let mut batch = KeyBatch::default();
        for key in self.0.iter().keys() {
            batch.remove(key?);
        }
        Ok(batch.apply(&self.0)?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.0.flush()?;
        Ok(())
    }
}
