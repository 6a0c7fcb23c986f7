//! Keyed state beside the log: what module versions derive (states, checkpoints, dead
//! letters) and the registry's records. A [`Keyspaces`] holds named keyspaces; each is an
//! ordered map of byte keys whose writes land together or not at all.

use std::sync::Arc;

use super::StoreError;

/// Named keyspaces, opened (created when new) and removed by name.
pub trait Keyspaces: Send + Sync + 'static {
    /// The keyspace `name`, created empty if it does not exist.
    ///
    /// # Errors
    /// Storage failures, or a name the backend reserves.
    fn open(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError>;

    /// Removes keyspace `name` and everything in it (nothing if it does not exist).
    ///
    /// # Errors
    /// Storage failures.
    fn remove(&self, name: &str) -> Result<(), StoreError>;
}

/// One ordered map of byte keys to byte values.
pub trait Keyspace: Send + Sync {
    /// # Errors
    /// Storage failures.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The entries from `from` (inclusive) up to `until` (exclusive; `None`: to the end), in
    /// key order.
    fn range(&self, from: &[u8], until: Option<&[u8]>) -> KeyIter<'_>;

    /// The entry with the greatest key in `from..=to`.
    ///
    /// # Errors
    /// Storage failures.
    fn last_in(&self, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StoreError>;

    /// Applies every write at once: after a crash, all of them or none are there.
    ///
    /// # Errors
    /// Storage failures (then none was applied).
    fn commit(&self, writes: Writes) -> Result<(), StoreError>;

    /// Removes every entry, at once.
    ///
    /// # Errors
    /// Storage failures.
    fn clear(&self) -> Result<(), StoreError>;

    /// Makes what was committed durable (state derived from the log can lag: a crash
    /// costs replay, never correctness, since every commit carries its checkpoint).
    ///
    /// # Errors
    /// Storage failures.
    fn flush(&self) -> Result<(), StoreError>;
}

/// One entry: its key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Entries of a keyspace in key order.
pub type KeyIter<'a> = Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + 'a>;

/// Writes to apply together: puts and removals, in order.
#[derive(Debug, Default)]
pub struct Writes {
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Writes {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.entries.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.entries.push((key.into(), None));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The writes in order: each key with its new value, `None` for a removal.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_slice(), value.as_deref()))
    }
}

impl IntoIterator for Writes {
    type Item = (Vec<u8>, Option<Vec<u8>>);
    type IntoIter = std::vec::IntoIter<Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}
