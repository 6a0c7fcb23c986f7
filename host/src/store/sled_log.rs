//! Reading the log tree: the chunks of events and the per-stream runs of positions, never
//! past the durable head. Shared by the store (for readers) and its writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::codec::{self, decode_chunk, decode_run};
use super::{
    Direction, EventRef, GlobalPosition, RecordedEvent, StoreError, StreamInfo, StreamListing,
    StreamRevision, StreamSlice,
};

/// Reads the log tree, never past the durable head. Shared by the store and its writer.
#[derive(Clone)]
pub(super) struct SledLog {
    log: sled::Tree,
    head: Arc<AtomicU64>,
}

impl SledLog {
    pub(super) fn new(log: sled::Tree, head: GlobalPosition) -> Self {
        Self {
            log,
            head: Arc::new(AtomicU64::new(head)),
        }
    }

    pub(super) fn head(&self) -> GlobalPosition {
        self.head.load(Ordering::Acquire)
    }

    pub(super) fn publish_head(&self, head: GlobalPosition) {
        self.head.store(head, Ordering::Release);
    }

    pub(super) fn tree(&self) -> &sled::Tree {
        &self.log
    }

    /// The chunk holding `position`: its first position and bytes.
    fn chunk_at(&self, position: GlobalPosition) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        let (lo, _) = codec::chunk_key_bounds();
        let key = codec::chunk_key(position);
        match self.log.range(&lo[..]..=&key[..]).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some((codec::chunk_position(&key)?, value)))
            }
        }
    }

    /// Visits events from `from` up to `until` (exclusive) until `visit` returns `false`;
    /// returns the position after the last event visited (or `from` if none was).
    pub(super) fn scan(
        &self,
        from: GlobalPosition,
        until: GlobalPosition,
        mut visit: impl FnMut(EventRef<'_>) -> bool,
    ) -> Result<GlobalPosition, StoreError> {
        if from >= until {
            return Ok(from);
        }
        let Some((mut first, mut chunk)) = self.chunk_at(from)? else {
            return Ok(from);
        };
        let mut next = from;
        loop {
            let mut more = true;
            decode_chunk(&chunk, first, next, |event| {
                if event.position >= until {
                    more = false;
                    return false;
                }
                next = event.position + 1;
                more = visit(event);
                more
            })?;
            if !more {
                break;
            }
            // Chunks are contiguous: the next one's key is the position after this one's
            // last event. Fetched by key, not by a range iterator: sled's page cache counts
            // an access per `get` but only one per leaf for an iterator, and evicts only after
            // enough accesses, so a long iterator scan keeps every leaf it read in memory.
            let end = if next > first {
                next
            } else {
                first + codec::chunk_len(&chunk)?
            };
            if end >= until {
                break;
            }
            match self.log.get(codec::chunk_key(end))? {
                Some(value) => (first, chunk) = (end, value),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "the log has no chunk at position {end}"
                    )));
                }
            }
        }
        Ok(next)
    }

    /// The durable (revision, position) pairs of `stream`, in the requested direction,
    /// starting at `from`, at most `limit`. `None` if the stream has no durable event.
    fn stream_positions(
        &self,
        stream: &str,
        from: Option<StreamRevision>,
        limit: usize,
        direction: Direction,
    ) -> Result<Option<Vec<(StreamRevision, GlobalPosition)>>, StoreError> {
        let head = self.head();
        let prefix = codec::run_prefix(stream);
        let end = codec::run_prefix_end(stream);
        let first_run = self.log.range(prefix.as_slice()..end.as_slice()).next();
        match first_run {
            None => return Ok(None),
            Some(entry) => {
                let (_, value) = entry?;
                if decode_run(&value)?.first().is_none_or(|&p| p >= head) {
                    return Ok(None);
                }
            }
        }
        let mut out = Vec::new();
        match direction {
            Direction::Forward => {
                let from = from.unwrap_or(0);
                let seek = codec::run_key(stream, from);
                let start = match self
                    .log
                    .range(prefix.as_slice()..=seek.as_slice())
                    .next_back()
                {
                    Some(entry) => entry?.0.to_vec(),
                    None => prefix.clone(),
                };
                'runs: for entry in self.log.range(start.as_slice()..end.as_slice()) {
                    let (key, value) = entry?;
                    let (_, first_revision) = codec::parse_run_key(&key)?;
                    for (i, position) in decode_run(&value)?.into_iter().enumerate() {
                        let revision = first_revision + i as u64;
                        if position >= head || out.len() >= limit {
                            break 'runs;
                        }
                        if revision >= from {
                            out.push((revision, position));
                        }
                    }
                }
            }
            Direction::Backward => {
                let from = from.unwrap_or(u64::MAX);
                let seek = codec::run_key(stream, from);
                'runs: for entry in self.log.range(prefix.as_slice()..=seek.as_slice()).rev() {
                    let (key, value) = entry?;
                    let (_, first_revision) = codec::parse_run_key(&key)?;
                    let positions = decode_run(&value)?;
                    for (i, position) in positions.into_iter().enumerate().rev() {
                        let revision = first_revision + i as u64;
                        if position >= head || revision > from {
                            continue;
                        }
                        if out.len() >= limit {
                            break 'runs;
                        }
                        out.push((revision, position));
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Copies the events at `positions` (ascending) out of their chunks.
    pub(super) fn events_at(
        &self,
        positions: &[GlobalPosition],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out = Vec::with_capacity(positions.len());
        let mut i = 0;
        while i < positions.len() {
            let wanted = positions[i];
            let (first, bytes) = self
                .chunk_at(wanted)?
                .ok_or_else(|| StoreError::Corrupt(format!("no chunk holds position {wanted}")))?;
            decode_chunk(&bytes, first, wanted, |event| {
                if event.position == positions[i] {
                    out.push(event.to_recorded());
                    i += 1;
                }
                i < positions.len()
            })?;
            if i < positions.len() && positions[i] == wanted {
                return Err(StoreError::Corrupt(format!(
                    "position {wanted} is indexed but missing from its chunk"
                )));
            }
        }
        Ok(out)
    }

    pub(super) fn read_stream(
        &self,
        stream: &str,
        from: Option<StreamRevision>,
        limit: usize,
        direction: Direction,
    ) -> Result<Option<StreamSlice>, StoreError> {
        // One more than asked, to learn whether another page follows.
        let Some(mut pairs) = self.stream_positions(stream, from, limit + 1, direction)? else {
            return Ok(None);
        };
        let has_more = pairs.len() > limit;
        pairs.truncate(limit);
        let next = match (has_more, pairs.last()) {
            (true, Some(&(revision, _))) => Some(match direction {
                Direction::Forward => revision + 1,
                Direction::Backward => revision - 1,
            }),
            _ => None,
        };
        let mut positions: Vec<_> = pairs.iter().map(|&(_, p)| p).collect();
        if direction == Direction::Backward {
            positions.reverse();
        }
        let mut events = self.events_at(&positions)?;
        if direction == Direction::Backward {
            events.reverse();
        }
        Ok(Some(StreamSlice { events, next }))
    }

    /// The last durable event of `stream` as its revision and position, without reading it.
    pub(super) fn stream_end(
        &self,
        stream: &str,
    ) -> Result<Option<(StreamRevision, GlobalPosition)>, StoreError> {
        Ok(self
            .stream_positions(stream, None, 1, Direction::Backward)?
            .and_then(|pairs| pairs.first().copied()))
    }

    /// The last durable revision of `stream`, if it has any event.
    pub(super) fn last_revision(&self, stream: &str) -> Result<Option<StreamRevision>, StoreError> {
        Ok(self
            .stream_positions(stream, None, 1, Direction::Backward)?
            .and_then(|pairs| pairs.first().map(|&(revision, _)| revision)))
    }

    pub(super) fn stream_revision_after(
        &self,
        stream: &str,
        position: GlobalPosition,
    ) -> Result<StreamRevision, StoreError> {
        let head = self.head();
        let prefix = codec::run_prefix(stream);
        let end = codec::run_prefix_end(stream);
        let mut next_revision = 0;
        for entry in self.log.range(prefix.as_slice()..end.as_slice()) {
            let (key, value) = entry?;
            let (_, first_revision) = codec::parse_run_key(&key)?;
            for (i, p) in decode_run(&value)?.into_iter().enumerate() {
                let revision = first_revision + i as u64;
                if p > position || p >= head {
                    return Ok(revision);
                }
                next_revision = revision + 1;
            }
        }
        Ok(next_revision)
    }

    pub(super) fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamListing, StoreError> {
        let mut seek = match after {
            Some(after) if after >= prefix => codec::run_prefix_end(after),
            _ => codec::run_listing_key(prefix),
        };
        let stop = codec::run_listing_key(prefix);
        let mut streams = Vec::new();
        let mut next = None;
        loop {
            let Some(entry) = self.log.range(seek.as_slice()..).next() else {
                break;
            };
            let (key, _) = entry?;
            if !key.starts_with(&stop) {
                break;
            }
            let (name, _) = codec::parse_run_key(&key)?;
            let name = name.to_owned();
            seek = codec::run_prefix_end(&name);
            let Some(last_revision) = self.last_revision(&name)? else {
                continue;
            };
            if streams.len() == limit {
                next = streams.last().map(|s: &StreamInfo| s.stream.clone());
                break;
            }
            streams.push(StreamInfo {
                stream: name,
                last_revision,
            });
        }
        Ok(StreamListing { streams, next })
    }
}
