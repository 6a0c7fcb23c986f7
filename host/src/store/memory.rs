//! Everything in memory: a log ([`MemoryStore`]) and keyspaces ([`MemoryKeyspaces`]) with
//! the same promises as the embedded store, minus surviving the process. For tests of the
//! layers above the store, and for trying things out; [`MemoryKeyspaces::snapshot`] copies
//! the committed state as a crash would leave it.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    AppendOutcome, BoxFuture, Direction, EventLog, EventStore, ExpectedRevision, GlobalPosition,
    KeyIter, KeyValue, Keyspace, Keyspaces, ListStreams, ProposedEvent, RecordedEvent, StoreError,
    StreamInfo, StreamListing, StreamName, StreamRead, StreamRevision, StreamSlice, Visit, Writes,
};

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    /// Each stream's positions, by revision.
    streams: BTreeMap<String, Vec<GlobalPosition>>,
    /// Client-chosen ids and where they were recorded.
    ids: HashMap<Uuid, GlobalPosition>,
}

/// An event log in memory: appends are "durable" at once.
pub struct MemoryStore {
    log: RwLock<Log>,
    head: watch::Sender<GlobalPosition>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            log: RwLock::default(),
            head: watch::Sender::new(0),
        }
    }
}

impl MemoryStore {
    fn stage(
        log: &mut Log,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let recorded: Vec<Option<GlobalPosition>> = events
            .iter()
            .map(|e| {
                e.id_from_client
                    .then(|| log.ids.get(&e.id).copied())
                    .flatten()
            })
            .collect();
        if let Some(first) = recorded.iter().flatten().next() {
            let retry = recorded
                .iter()
                .enumerate()
                .all(|(i, p)| *p == Some(first + i as u64))
                && log.events[*first as usize].stream == stream.as_str();
            if !retry {
                return Err(StoreError::DuplicateEventId(format!(
                    "an event id of this append is already recorded, at position {first}"
                )));
            }
            let last = first + events.len() as u64 - 1;
            return Ok(AppendOutcome {
                first_revision: log.events[*first as usize].revision,
                last_revision: log.events[last as usize].revision,
                first_position: *first,
                last_position: last,
            });
        }
        let positions = log.streams.entry(stream.as_str().to_owned()).or_default();
        let current = positions.len().checked_sub(1).map(|r| r as u64);
        if !expected.admits(current) {
            return Err(StoreError::WrongExpectedRevision { expected, current });
        }
        let first_revision = positions.len() as u64;
        let first_position = log.events.len() as u64;
        let recorded_at_micros = chrono::Utc::now().timestamp_micros();
        for (i, event) in events.into_iter().enumerate() {
            let position = first_position + i as u64;
            positions.push(position);
            if event.id_from_client {
                log.ids.insert(event.id, position);
            }
            log.events.push(RecordedEvent {
                id: event.id,
                stream: stream.as_str().to_owned(),
                revision: first_revision + i as u64,
                position,
                event_type: event.event_type,
                data: event.data,
                metadata: event.metadata,
                recorded_at_micros,
            });
        }
        let count = log.events.len() as u64 - first_position;
        Ok(AppendOutcome {
            first_revision,
            last_revision: first_revision + count - 1,
            first_position,
            last_position: first_position + count - 1,
        })
    }
}

impl EventLog for MemoryStore {
    fn scan(
        &self,
        range: Range<GlobalPosition>,
        visit: &mut Visit<'_>,
    ) -> Result<GlobalPosition, StoreError> {
        let log = self.log.read();
        let (from, until) = (range.start, range.end.min(log.events.len() as u64));
        let mut next = from;
        while next < until {
            let more = visit(log.events[next as usize].as_ref());
            next += 1;
            if !more {
                break;
            }
        }
        Ok(next.max(from))
    }

    fn head(&self) -> GlobalPosition {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<GlobalPosition> {
        self.head.subscribe()
    }

    fn read_stream(
        &self,
        stream: &StreamName,
        read: StreamRead,
    ) -> Result<Option<StreamSlice>, StoreError> {
        let StreamRead {
            from,
            limit,
            direction,
        } = read;
        let log = self.log.read();
        let Some(positions) = log.streams.get(stream.as_str()) else {
            return Ok(None);
        };
        let last = positions.len() as u64 - 1;
        let revisions: Vec<u64> = match direction {
            Direction::Forward => (from.unwrap_or(0)..=last).take(limit + 1).collect(),
            Direction::Backward => (0..=from.unwrap_or(last).min(last))
                .rev()
                .take(limit + 1)
                .collect(),
        };
        let next = revisions.get(limit).copied();
        let events = revisions
            .iter()
            .take(limit)
            .map(|&r| log.events[positions[r as usize] as usize].clone())
            .collect();
        Ok(Some(StreamSlice { events, next }))
    }

    fn stream_revision_after(
        &self,
        stream: &StreamName,
        position: GlobalPosition,
    ) -> Result<StreamRevision, StoreError> {
        let log = self.log.read();
        let positions = log
            .streams
            .get(stream.as_str())
            .map_or(&[][..], Vec::as_slice);
        Ok(positions.partition_point(|&p| p <= position) as u64)
    }

    fn list_streams(&self, query: ListStreams<'_>) -> Result<StreamListing, StoreError> {
        let ListStreams {
            prefix,
            after,
            limit,
        } = query;
        let log = self.log.read();
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut streams: Vec<StreamInfo> = log
            .streams
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|(name, _)| name.starts_with(prefix))
            .take(limit + 1)
            .map(|(name, positions)| StreamInfo {
                stream: name.clone(),
                last_revision: positions.len() as u64 - 1,
            })
            .collect();
        let more = streams.len() > limit;
        streams.truncate(limit);
        let next = more
            .then(|| streams.last().map(|s| s.stream.clone()))
            .flatten();
        Ok(StreamListing { streams, next })
    }
}

impl EventStore for MemoryStore {
    fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<ProposedEvent>,
    ) -> BoxFuture<'static, Result<AppendOutcome, StoreError>> {
        let outcome = {
            let mut log = self.log.write();
            let outcome = Self::stage(&mut log, &stream, expected, events);
            self.head.send_replace(log.events.len() as u64);
            outcome
        };
        Box::pin(async move { outcome })
    }

    fn import(
        &self,
        events: Vec<RecordedEvent>,
    ) -> BoxFuture<'static, Result<GlobalPosition, StoreError>> {
        let outcome = {
            let mut log = self.log.write();
            let head = log.events.len() as u64;
            let fits = events.iter().enumerate().all(|(i, e)| {
                e.position == head + i as u64
                    && !log.ids.contains_key(&e.id)
                    && e.revision == log.streams.get(&e.stream).map_or(0, |p| p.len() as u64)
            });
            if fits {
                for event in events {
                    log.ids.insert(event.id, event.position);
                    log.streams
                        .entry(event.stream.clone())
                        .or_default()
                        .push(event.position);
                    log.events.push(event);
                }
                let head = log.events.len() as u64;
                self.head.send_replace(head);
                Ok(head)
            } else {
                Err(StoreError::ImportMismatch {
                    message: "the events do not continue the log where it ends".into(),
                    head,
                })
            }
        };
        Box::pin(async move { outcome })
    }
}

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Keyspaces in memory.
#[derive(Default)]
pub struct MemoryKeyspaces {
    spaces: Mutex<BTreeMap<String, Arc<MemoryKeyspace>>>,
}

impl MemoryKeyspaces {
    /// A copy of everything committed so far: what a process that died now would find.
    pub fn snapshot(&self) -> Self {
        let spaces = self
            .spaces
            .lock()
            .iter()
            .map(|(name, space)| {
                let copy = MemoryKeyspace {
                    entries: RwLock::new(space.entries.read().clone()),
                };
                (name.clone(), Arc::new(copy))
            })
            .collect();
        Self {
            spaces: Mutex::new(spaces),
        }
    }
}

impl Keyspaces for MemoryKeyspaces {
    fn open(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError> {
        let space = self
            .spaces
            .lock()
            .entry(name.to_owned())
            .or_default()
            .clone();
        Ok(space)
    }

    fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.spaces.lock().remove(name);
        Ok(())
    }
}

#[derive(Default)]
struct MemoryKeyspace {
    entries: RwLock<Entries>,
}

impl Keyspace for MemoryKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.read().get(key).cloned())
    }

    fn range(&self, from: &[u8], until: Option<&[u8]>) -> KeyIter<'_> {
        let until = until.map(<[u8]>::to_vec);
        let mut next = Bound::Included(from.to_vec());
        // One entry at a time, so that no lock is held between steps.
        Box::new(std::iter::from_fn(move || {
            let entries = self.entries.read();
            let (key, value) = entries
                .range::<Vec<u8>, _>((next.clone(), Bound::Unbounded))
                .next()?;
            if until.as_ref().is_some_and(|u| key >= u) {
                return None;
            }
            next = Bound::Excluded(key.clone());
            Some(Ok((key.clone(), value.clone())))
        }))
    }

    fn last_in(&self, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .entries
            .read()
            .range::<[u8], _>((Bound::Included(from), Bound::Included(to)))
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn commit(&self, writes: Writes) -> Result<(), StoreError> {
        let mut entries = self.entries.write();
        for (key, value) in writes {
            match value {
                Some(value) => entries.insert(key, value),
                None => entries.remove(&key),
            };
        }
        Ok(())
    }

    fn clear(&self) -> Result<(), StoreError> {
        self.entries.write().clear();
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
