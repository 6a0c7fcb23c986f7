//! Atomic sled batches that give their memory back.
//!
//! sled applies a batch under one epoch guard, and the tree pages it replaces are freed later
//! through crossbeam-epoch, whose collector frees at most a few hundred objects each time a
//! thread pins (and only every 128th pin). A batch of thousands of keys leaves more garbage
//! than that ever catches up with, so the process grows by about 2 KiB per key written
//! (measured: 1,000-key batches, 400,000 keys, 770 MiB; 10,000-key batches, 2 M keys,
//! 9 GiB). After each batch, [`KeyBatch::apply`] drives the collector once per 64 keys.

/// A sled batch that counts the keys it writes.
#[derive(Default)]
pub struct KeyBatch {
    batch: sled::Batch,
    keys: usize,
}

impl KeyBatch {
    pub fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.batch.insert(key, value);
        self.keys += 1;
    }

    pub fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.batch.remove(key);
        self.keys += 1;
    }

    /// Applies the batch atomically to `tree`, then reclaims what it replaced.
    ///
    /// # Errors
    /// Storage failures.
    pub fn apply(self, tree: &sled::Tree) -> sled::Result<()> {
        tree.apply_batch(self.batch)?;
        reclaim(self.keys);
        Ok(())
    }
}

/// Lets crossbeam-epoch free the garbage of about `keys` replaced entries: each flush moves
/// this thread's garbage to the global queue and collects up to 8 × 64 expired objects.
fn reclaim(keys: usize) {
    for _ in 0..keys / 64 + 2 {
        sled::crossbeam_pin().flush();
    }
}
