//! Where every event id in the log was recorded, so that an id is recorded once: a retry of
//! an acknowledged append finds its original positions however far the log has moved, and
//! an id already in the log is refused anywhere else.
//!
//! sled's cost is per key written, and ids are random, so one index key per event would cut
//! the append rate several times over. Instead the index is a small log-structured one,
//! owned by the writer thread:
//!
//! - **recent**: the ids of the newest events (up to [`RUN_EVENTS`]) in memory, in position
//!   order, with a Bloom filter of their own. Recording an id is a push and one cache line
//!   of a 1 MiB filter (a hash map's random inserts cost the single writer thread a cache
//!   miss per event: a quarter of its time under batched appends); a lookup that the filter
//!   lets through scans them from the newest, where retries are. Nothing is written for
//!   them: the log chunks hold the ids, and opening the store reads them back from the log
//!   (at most [`RUN_EVENTS`] events).
//! - **sealed runs**: when `recent` is full, its ids are sorted and written as one run by a
//!   background thread (a seal takes 50–200 ms; the writer does not wait for it): pages of
//!   (id, position) under `I` + run (u32 BE) + page (u32 BE), the page fences and covered
//!   positions under `J` + run, and a blocked Bloom filter under `K` + run + part, in one
//!   atomic batch. In memory each run keeps its fences and its filter (2 bytes per id), so a
//!   lookup of a new id touches no disk, and a possible repeat (0.1–0.2 % false positives
//!   per run) reads one page. While a run is being sealed its ids stay in memory too.
//!
//! A run covers only durable positions (sealing starts between group commits), so a run on
//! disk never names an event that a crash took away; a run lost in a crash is sealed again
//! from the log. The runs, the run being sealed and `recent` cover every position below
//! the head, contiguously.

use std::sync::Arc;
use std::thread::JoinHandle;

use uuid::Uuid;

use super::sled_batch::KeyBatch;
use super::{GlobalPosition, StoreError};

/// Ids kept in memory before they are sealed into a run. hashbrown keeps a map of
/// this many entries in 2^19 buckets (7/8 full), about 13 MiB.
pub(super) const RUN_EVENTS: usize = 448 * 1024;
/// Entries per page of a sealed run: 24 bytes each, 12 KiB a page.
const PAGE_ENTRIES: usize = 512;
const ENTRY_BYTES: usize = 24;
/// Filter bits per id. With 8 bits set in one 512-bit block, about 0.15 % false positives.
const FILTER_BITS_PER_ID: usize = 16;
const BLOCK_BITS: usize = 512;
const BLOCK_WORDS: usize = BLOCK_BITS / 64;
const PROBES: u32 = 8;
/// Filter bytes per stored part (sled keeps values over a quarter segment as blobs).
const FILTER_PART_BYTES: usize = 64 * 1024;

const PAGE_TAG: u8 = b'I';
const RUN_TAG: u8 = b'J';
const FILTER_TAG: u8 = b'K';

/// The index: sealed runs plus the recent ids.
pub(super) struct IdIndex {
    tree: sled::Tree,
    recent: RecentIds,
    /// Every position below this is in a sealed run or in `sealing`; `recent` holds the
    /// ones from here on.
    sealed_to: GlobalPosition,
    runs: Vec<SealedRun>,
    /// The run being sealed in the background, if one is.
    sealing: Option<Sealing>,
}

/// The ids of consecutive positions from `from`, with a filter over them.
struct RecentIds {
    from: GlobalPosition,
    ids: Vec<Uuid>,
    filter: BlockedBloom,
}

impl RecentIds {
    fn new(from: GlobalPosition) -> Self {
        Self {
            from,
            ids: Vec::with_capacity(RUN_EVENTS),
            filter: BlockedBloom::with_capacity(RUN_EVENTS),
        }
    }

    fn push(&mut self, id: Uuid, position: GlobalPosition) {
        debug_assert_eq!(position, self.from + self.ids.len() as u64);
        self.filter.insert(hash_id(&id));
        self.ids.push(id);
    }

    fn get(&self, id: &Uuid, hash: u64) -> Option<GlobalPosition> {
        if !self.filter.may_contain(hash) {
            return None;
        }
        let at = self.ids.iter().rposition(|seen| seen == id)?;
        Some(self.from + at as u64)
    }

    /// The position after the last id.
    fn end(&self) -> GlobalPosition {
        self.from + self.ids.len() as u64
    }
}

/// A run being sealed: its ids (still looked up here) and the thread writing it.
struct Sealing {
    ids: Arc<RecentIds>,
    thread: JoinHandle<Result<SealedRun, StoreError>>,
}

/// One sealed run as kept in memory.
struct SealedRun {
    number: u32,
    /// The first id of each page.
    fences: Vec<Uuid>,
    filter: BlockedBloom,
}

impl IdIndex {
    /// Loads the sealed runs of `tree` and returns the index with `recent` still empty and
    /// the position from which the caller must [`IdIndex::insert`] the log's ids.
    ///
    /// # Errors
    /// Storage failures, or a run record that does not decode.
    pub(super) fn load(tree: &sled::Tree) -> Result<(Self, GlobalPosition), StoreError> {
        let mut runs = Vec::new();
        let mut sealed_to = 0;
        for entry in tree.range([RUN_TAG]..[RUN_TAG + 1]) {
            let (key, value) = entry?;
            let number = parse_u32(&key, 1)?;
            let header = RunHeader::decode(&value)?;
            if header.from != sealed_to {
                return Err(StoreError::Corrupt(format!(
                    "id run {number} covers positions from {}, but the runs before it end at {sealed_to}",
                    header.from
                )));
            }
            sealed_to = header.to;
            let mut words = Vec::with_capacity(header.filter_words);
            for part in tree.range(filter_key(number, 0)..filter_key(number + 1, 0)) {
                let (_, bytes) = part?;
                words.extend(
                    bytes
                        .chunks_exact(8)
                        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default())),
                );
            }
            if words.len() != header.filter_words {
                return Err(StoreError::Corrupt(format!(
                    "id run {number} has a filter of {} words, not {}",
                    words.len(),
                    header.filter_words
                )));
            }
            runs.push(SealedRun {
                number,
                fences: header.fences,
                filter: BlockedBloom { words },
            });
        }
        let index = Self {
            tree: tree.clone(),
            recent: RecentIds::new(sealed_to),
            sealed_to,
            runs,
            sealing: None,
        };
        Ok((index, sealed_to))
    }

    /// Records that `id` is at `position` (the next position after everything recorded).
    pub(super) fn insert(&mut self, id: Uuid, position: GlobalPosition) {
        self.recent.push(id, position);
    }

    /// Where `id` was recorded, if it was.
    ///
    /// # Errors
    /// Storage failures, or a page that does not decode.
    pub(super) fn lookup(&self, id: &Uuid) -> Result<Option<GlobalPosition>, StoreError> {
        let hash = hash_id(id);
        if let Some(position) = self.recent.get(id, hash) {
            return Ok(Some(position));
        }
        if let Some(position) = self.sealing.as_ref().and_then(|s| s.ids.get(id, hash)) {
            return Ok(Some(position));
        }
        for run in self.runs.iter().rev() {
            if !run.filter.may_contain(hash) {
                continue;
            }
            let page = run.fences.partition_point(|fence| fence <= id);
            let Some(page) = page.checked_sub(1) else {
                continue;
            };
            let Some(bytes) = self.tree.get(page_key(run.number, page as u32))? else {
                return Err(StoreError::Corrupt(format!(
                    "id run {} has no page {page}",
                    run.number
                )));
            };
            if let Some(position) = search_page(&bytes, id)? {
                return Ok(Some(position));
            }
        }
        Ok(None)
    }

    /// Between group commits, with every inserted position durable: takes in a run that
    /// finished sealing, and when `recent` is full and no run is being sealed, starts
    /// sealing it in the background.
    ///
    /// # Errors
    /// Writing the finished run failed (the caller treats it as any storage error).
    pub(super) fn maintain(&mut self) -> Result<(), StoreError> {
        if self
            .sealing
            .as_ref()
            .is_some_and(|s| s.thread.is_finished())
        {
            self.finish_sealing()?;
        }
        if self.sealing.is_some() || self.recent.ids.len() < RUN_EVENTS {
            return Ok(());
        }
        let number = self.runs.last().map_or(0, |run| run.number + 1);
        let to = self.recent.end();
        let ids = Arc::new(std::mem::replace(&mut self.recent, RecentIds::new(to)));
        let from = self.sealed_to;
        self.sealed_to = to;
        let (tree, sealed) = (self.tree.clone(), ids.clone());
        let thread = std::thread::Builder::new()
            .name("refold-id-seal".into())
            .spawn(move || seal(&tree, number, from, to, &sealed))
            .map_err(|err| StoreError::Storage(format!("starting the id sealer: {err}")))?;
        self.sealing = Some(Sealing { ids, thread });
        Ok(())
    }

    /// Waits for the run being sealed, if any, and takes it in.
    ///
    /// # Errors
    /// Writing the run failed.
    pub(super) fn finish_sealing(&mut self) -> Result<(), StoreError> {
        let Some(sealing) = self.sealing.take() else {
            return Ok(());
        };
        let run = sealing
            .thread
            .join()
            .map_err(|_| StoreError::Storage("the id sealer panicked".into()))??;
        self.runs.push(run);
        Ok(())
    }

    /// How many sealed runs there are (for tests and figures).
    #[cfg(test)]
    pub(super) fn run_count(&self) -> usize {
        self.runs.len()
    }
}

impl Drop for IdIndex {
    /// A run being sealed is finished first, so that no sealer writes beside a newer index.
    fn drop(&mut self) {
        if let Err(err) = self.finish_sealing() {
            tracing::warn!(%err, "sealing ids failed; they are sealed again from the log");
        }
    }
}

/// Sorts `ids` (the positions `from..to`) into run `number` and writes it to `tree` in one
/// atomic batch.
fn seal(
    tree: &sled::Tree,
    number: u32,
    from: GlobalPosition,
    to: GlobalPosition,
    ids: &RecentIds,
) -> Result<SealedRun, StoreError> {
    let mut entries: Vec<(Uuid, GlobalPosition)> = (ids.from..)
        .zip(&ids.ids)
        .map(|(position, &id)| (id, position))
        .collect();
    entries.sort_unstable_by_key(|&(id, _)| id);
    let mut batch = KeyBatch::default();
    let mut filter = BlockedBloom::with_capacity(entries.len());
    let mut fences = Vec::with_capacity(entries.len().div_ceil(PAGE_ENTRIES));
    for (page, chunk) in entries.chunks(PAGE_ENTRIES).enumerate() {
        fences.push(chunk[0].0);
        let mut bytes = Vec::with_capacity(chunk.len() * ENTRY_BYTES);
        for (id, position) in chunk {
            filter.insert(hash_id(id));
            bytes.extend_from_slice(id.as_bytes());
            bytes.extend_from_slice(&position.to_be_bytes());
        }
        batch.insert(&page_key(number, page as u32)[..], bytes);
    }
    for (part, words) in filter.words.chunks(FILTER_PART_BYTES / 8).enumerate() {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        batch.insert(&filter_key(number, part as u32)[..], bytes);
    }
    let header = RunHeader {
        from,
        to,
        filter_words: filter.words.len(),
        fences,
    };
    batch.insert(&run_key(number)[..], header.encode());
    batch.apply(tree)?;
    Ok(SealedRun {
        number,
        fences: header.fences,
        filter,
    })
}

/// What a run record holds besides its pages and filter.
struct RunHeader {
    from: GlobalPosition,
    to: GlobalPosition,
    filter_words: usize,
    fences: Vec<Uuid>,
}

impl RunHeader {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 16 * self.fences.len());
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.to.to_be_bytes());
        out.extend_from_slice(&(self.filter_words as u64).to_be_bytes());
        for fence in &self.fences {
            out.extend_from_slice(fence.as_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("an id run record does not decode".into());
        if bytes.len() < 24 || (bytes.len() - 24) % 16 != 0 {
            return Err(corrupt());
        }
        let u64_at = |at: usize| -> Result<u64, StoreError> {
            Ok(u64::from_be_bytes(
                bytes[at..at + 8].try_into().map_err(|_| corrupt())?,
            ))
        };
        let fences = bytes[24..]
            .chunks_exact(16)
            .map(|b| Uuid::from_slice(b).map_err(|_| corrupt()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            from: u64_at(0)?,
            to: u64_at(8)?,
            filter_words: usize::try_from(u64_at(16)?).map_err(|_| corrupt())?,
            fences,
        })
    }
}

/// The position of `id` in a page of sorted (id, position) entries.
fn search_page(bytes: &[u8], id: &Uuid) -> Result<Option<GlobalPosition>, StoreError> {
    if bytes.len() % ENTRY_BYTES != 0 {
        return Err(StoreError::Corrupt(format!(
            "an id page of {} bytes",
            bytes.len()
        )));
    }
    let entries = bytes.len() / ENTRY_BYTES;
    let entry_id = |i: usize| &bytes[i * ENTRY_BYTES..i * ENTRY_BYTES + 16];
    let (mut low, mut high) = (0, entries);
    while low < high {
        let mid = (low + high) / 2;
        match entry_id(mid).cmp(id.as_bytes()) {
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
            std::cmp::Ordering::Equal => {
                let at = mid * ENTRY_BYTES + 16;
                let position = u64::from_be_bytes(
                    bytes[at..at + 8]
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("a short id entry".into()))?,
                );
                return Ok(Some(position));
            }
        }
    }
    Ok(None)
}

fn page_key(run: u32, page: u32) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = PAGE_TAG;
    key[1..5].copy_from_slice(&run.to_be_bytes());
    key[5..].copy_from_slice(&page.to_be_bytes());
    key
}

fn filter_key(run: u32, part: u32) -> [u8; 9] {
    let mut key = page_key(run, part);
    key[0] = FILTER_TAG;
    key
}

fn run_key(run: u32) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[0] = RUN_TAG;
    key[1..].copy_from_slice(&run.to_be_bytes());
    key
}

fn parse_u32(key: &[u8], at: usize) -> Result<u32, StoreError> {
    key.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("a malformed id run key".into()))
}

/// SplitMix64's finaliser: a well-mixed 64 bits from any 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of an id that does not assume the id is random (clients may use sequential or
/// time-ordered ids).
fn hash_id(id: &Uuid) -> u64 {
    let (high, low) = id.as_u64_pair();
    mix(high ^ mix(low.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// A Bloom filter whose probes for one key all fall in one 512-bit block: one cache line
/// read per lookup.
struct BlockedBloom {
    words: Vec<u64>,
}

impl BlockedBloom {
    fn with_capacity(ids: usize) -> Self {
        let blocks = (ids * FILTER_BITS_PER_ID).div_ceil(BLOCK_BITS).max(1);
        Self {
            words: vec![0; blocks * BLOCK_WORDS],
        }
    }

    /// The block of `hash` and the bit of each probe within it.
    fn probes(&self, hash: u64) -> (usize, impl Iterator<Item = usize> + use<>) {
        let blocks = (self.words.len() / BLOCK_WORDS).max(1) as u64;
        let block = (((hash >> 32) * blocks) >> 32) as usize;
        // Double hashing: probe i is at h1 + i * h2 within the block.
        let h1 = mix(hash);
        let h2 = mix(h1) | 1;
        let probes = (0..u64::from(PROBES))
            .map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % BLOCK_BITS as u64) as usize);
        (block * BLOCK_WORDS, probes)
    }

    fn insert(&mut self, hash: u64) {
        let (base, probes) = self.probes(hash);
        for bit in probes {
            self.words[base + bit / 64] |= 1 << (bit % 64);
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        let (base, mut probes) = self.probes(hash);
        self.words.len() >= base + BLOCK_WORDS
            && probes.all(|bit| self.words[base + bit / 64] & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
#[path = "id_index_tests.rs"]
mod tests;
