//! The group-commit writer: the only code that writes the log.
//!
//! One thread takes every append request queued since its last flush, checks each against
//! the streams' current revisions (in order, so two racing appends see each other), writes
//! them all in one atomic sled batch, flushes once, publishes the new durable head, and only
//! then answers the requests. Under load one fsync serves many appends. Imports (restoring a
//! backup) go through the same path, so they are atomic and durable the same way.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::KeyBatch;
use super::codec::{self, ChunkWriter};
use super::sled_store::LogReader;
use super::{
    AppendOutcome, EventRef, ExpectedRevision, GlobalPosition, ProposedEvent, RecordedEvent,
    StoreError, StreamName, StreamRevision,
};

/// Events per group commit, at most (more wait for the next one).
const MAX_GROUP_EVENTS: usize = 20_000;
/// A chunk is closed once it holds this many events...
const CHUNK_MAX_EVENTS: usize = 1_000;
/// ...or this many bytes. Small chunks keep reading one event cheap and bound the memory of
/// a long scan: sled's page cache only evicts after every one of its 256 shards has seen 64
/// accesses, so a scan keeps about 16,384 chunks resident before eviction catches up
/// (16,384 × 8 KiB = 128 MiB beside the cache). At ~100 bytes per event a chunk still holds
/// ~80 events, so batched appends write few keys.
pub(super) const CHUNK_MAX_BYTES: usize = 8 * 1024;
/// How many of a stream's latest event ids a retry is checked against.
const RECENT_IDS: usize = 128;
/// Streams whose tail the writer remembers; past this the memory is dropped and reloaded.
const MAX_CACHED_STREAMS: usize = 200_000;

/// One request to the writer, answered once durable.
pub(super) enum Job {
    Append(AppendJob),
    Import(ImportJob),
}

pub(super) struct AppendJob {
    pub stream: StreamName,
    pub expected: ExpectedRevision,
    pub events: Vec<ProposedEvent>,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Recorded events to restore as they are (see `EventStore::import`).
pub(super) struct ImportJob {
    pub events: Vec<RecordedEvent>,
    pub reply: oneshot::Sender<Result<GlobalPosition, StoreError>>,
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::Append(job) => job.events.len(),
            Job::Import(job) => job.events.len(),
        }
    }
}

/// A job's outcome, waiting for the group's flush.
enum Answer {
    Append(
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
        Result<AppendOutcome, StoreError>,
    ),
    Import(
        oneshot::Sender<Result<GlobalPosition, StoreError>>,
        Result<GlobalPosition, StoreError>,
    ),
}

impl Answer {
    /// Sends the outcome; the client may have gone away, its events are durable all the same.
    fn send(self) {
        match self {
            Answer::Append(reply, outcome) => drop(reply.send(outcome)),
            Answer::Import(reply, outcome) => drop(reply.send(outcome)),
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            Answer::Append(reply, _) => drop(reply.send(Err(err))),
            Answer::Import(reply, _) => drop(reply.send(Err(err))),
        }
    }
}

/// What the writer remembers of a stream's end.
#[derive(Clone)]
struct StreamTail {
    last_revision: Option<StreamRevision>,
    /// The latest ids with their revision and position, oldest first; loaded lazily, only
    /// when an append carries client-chosen ids.
    recent: Option<VecDeque<(Uuid, StreamRevision, GlobalPosition)>>,
}

pub(super) struct Writer {
    db: sled::Db,
    reader: LogReader,
    head_tx: watch::Sender<GlobalPosition>,
    next_position: GlobalPosition,
    tails: HashMap<String, StreamTail>,
}

/// The pieces of one group commit being assembled.
struct Group {
    batch: KeyBatch,
    chunk: ChunkWriter,
    chunk_first: GlobalPosition,
    /// Per stream: its events staged in this group.
    runs: HashMap<String, StagedRun>,
}

/// One stream's events in a group: consecutive revisions from `first_revision`.
struct StagedRun {
    first_revision: StreamRevision,
    positions: Vec<GlobalPosition>,
    ids: Vec<Uuid>,
}

impl Group {
    fn new(first_position: GlobalPosition) -> Self {
        Self {
            batch: KeyBatch::default(),
            chunk: ChunkWriter::default(),
            chunk_first: first_position,
            runs: HashMap::new(),
        }
    }

    fn close_chunk(&mut self, next_position: GlobalPosition) {
        if self.chunk.len() > 0 {
            self.batch
                .insert(&codec::chunk_key(self.chunk_first)[..], self.chunk.take());
        }
        self.chunk_first = next_position;
    }

    fn finish(mut self, next_position: GlobalPosition) -> KeyBatch {
        self.close_chunk(next_position);
        for (stream, run) in &self.runs {
            self.batch.insert(
                codec::run_key(stream, run.first_revision),
                codec::encode_run(&run.positions),
            );
        }
        self.batch
    }
}

impl Writer {
    pub(super) fn new(
        db: sled::Db,
        reader: LogReader,
        head_tx: watch::Sender<GlobalPosition>,
    ) -> Self {
        let next_position = reader.head();
        Self {
            db,
            reader,
            head_tx,
            next_position,
            tails: HashMap::new(),
        }
    }

    /// Serves jobs until every sender is gone.
    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            let mut group_events = first.len();
            let mut group = vec![first];
            while group_events < MAX_GROUP_EVENTS {
                match jobs.try_recv() {
                    Ok(job) => {
                        group_events += job.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        tracing::debug!("writer stopped: no more appends");
    }

    fn commit_group(&mut self, jobs: Vec<Job>) {
        // Forget between groups, never within one: a group's staged tails live only here.
        if self.tails.len() >= MAX_CACHED_STREAMS {
            self.tails.clear();
        }
        let group_start = self.next_position;
        let mut group = Group::new(group_start);
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            answers.push(match job {
                Job::Append(job) => {
                    let outcome = self.stage(&mut group, &job.stream, job.expected, &job.events);
                    Answer::Append(job.reply, outcome)
                }
                Job::Import(job) => {
                    let outcome = self.stage_import(&mut group, &job.events);
                    Answer::Import(job.reply, outcome)
                }
            });
        }
        if self.next_position > group_start {
            let batch = group.finish(self.next_position);
            let written = batch
                .apply(self.reader.tree())
                .and_then(|()| self.db.flush().map(|_| ()));
            if let Err(err) = written {
                tracing::error!(%err, "group commit failed");
                self.recover_after_failure();
                let message = err.to_string();
                for answer in answers {
                    answer.fail(StoreError::Storage(message.clone()));
                }
                return;
            }
            self.reader.publish_head(self.next_position);
            self.head_tx.send_replace(self.next_position);
        }
        for answer in answers {
            answer.send();
        }
    }

    /// Checks one append against the stream's state and adds its events to the group.
    fn stage(
        &mut self,
        group: &mut Group,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: &[ProposedEvent],
    ) -> Result<AppendOutcome, StoreError> {
        let wants_ids = events.iter().any(|e| e.id_from_client);
        let tail = self.tail(group, stream.as_str(), wants_ids)?;
        if wants_ids {
            if let Some(original) = find_retry(&tail, events)? {
                return Ok(original);
            }
        }
        if !expected.admits(tail.last_revision) {
            return Err(StoreError::WrongExpectedRevision {
                expected,
                current: tail.last_revision,
            });
        }
        let recorded_at_micros = chrono::Utc::now().timestamp_micros();
        let first_revision = tail.last_revision.map_or(0, |r| r + 1);
        let first_position = self.next_position;
        let mut tail = tail;
        let mut run = group.runs.remove(stream.as_str()).unwrap_or(StagedRun {
            first_revision,
            positions: Vec::new(),
            ids: Vec::new(),
        });
        for (i, event) in events.iter().enumerate() {
            let event = EventRef {
                id: event.id,
                stream: stream.as_str(),
                revision: first_revision + i as u64,
                position: self.next_position,
                event_type: &event.event_type,
                data: &event.data,
                metadata: &event.metadata,
                recorded_at_micros,
            };
            self.push_event(group, &mut run, &mut tail, &event);
        }
        group.runs.insert(stream.as_str().to_owned(), run);
        let count = events.len() as u64;
        tail.last_revision = Some(first_revision + count - 1);
        self.remember(stream.as_str(), tail);
        Ok(AppendOutcome {
            first_revision,
            last_revision: first_revision + count - 1,
            first_position,
            last_position: first_position + count - 1,
        })
    }

    /// Checks that recorded events continue the log and their streams exactly, then adds
    /// them to the group as they are. Nothing is staged unless all of them fit.
    fn stage_import(
        &mut self,
        group: &mut Group,
        events: &[RecordedEvent],
    ) -> Result<GlobalPosition, StoreError> {
        let mismatch =
            |message: String, head: GlobalPosition| StoreError::ImportMismatch { message, head };
        let mut tails: HashMap<&str, (StreamTail, Option<StreamRevision>)> = HashMap::new();
        let mut position = self.next_position;
        for event in events {
            if event.position != position {
                return Err(mismatch(
                    format!(
                        "event {} has position {}, but the log continues at {position}",
                        event.id, event.position
                    ),
                    self.next_position,
                ));
            }
            let last = match tails.entry(&event.stream) {
                Entry::Occupied(entry) => &mut entry.into_mut().1,
                Entry::Vacant(entry) => {
                    let tail = self.tail(group, &event.stream, false)?;
                    let last = tail.last_revision;
                    &mut entry.insert((tail, last)).1
                }
            };
            let next_revision = last.map_or(0, |r| r + 1);
            if event.revision != next_revision {
                return Err(mismatch(
                    format!(
                        "event {} is revision {} of stream {:?}, whose next revision is {next_revision}",
                        event.id, event.revision, event.stream
                    ),
                    self.next_position,
                ));
            }
            *last = Some(event.revision);
            position += 1;
        }
        let mut staged: HashMap<&str, (StagedRun, StreamTail)> = HashMap::new();
        for event in events {
            let (run, tail) = staged.entry(&event.stream).or_insert_with(|| {
                let (tail, _) = tails.remove(event.stream.as_str()).unwrap_or((
                    StreamTail {
                        last_revision: None,
                        recent: None,
                    },
                    None,
                ));
                let run = group.runs.remove(&event.stream).unwrap_or(StagedRun {
                    first_revision: event.revision,
                    positions: Vec::new(),
                    ids: Vec::new(),
                });
                (run, tail)
            });
            self.push_event(group, run, tail, &event.as_ref());
            tail.last_revision = Some(event.revision);
        }
        for (stream, (run, tail)) in staged {
            group.runs.insert(stream.to_owned(), run);
            self.remember(stream, tail);
        }
        Ok(self.next_position)
    }

    /// Adds one event at the next position to the group's chunk and to its stream's run.
    fn push_event(
        &mut self,
        group: &mut Group,
        run: &mut StagedRun,
        tail: &mut StreamTail,
        event: &EventRef<'_>,
    ) {
        debug_assert_eq!(event.position, self.next_position);
        group.chunk.push(event);
        run.positions.push(event.position);
        run.ids.push(event.id);
        if let Some(recent) = tail.recent.as_mut() {
            if recent.len() == RECENT_IDS {
                recent.pop_front();
            }
            recent.push_back((event.id, event.revision, event.position));
        }
        self.next_position += 1;
        if group.chunk.len() >= CHUNK_MAX_EVENTS || group.chunk.byte_len() >= CHUNK_MAX_BYTES {
            group.close_chunk(self.next_position);
        }
    }

    /// The remembered end of `stream`, loaded from the log if needed.
    fn tail(
        &mut self,
        group: &Group,
        stream: &str,
        with_ids: bool,
    ) -> Result<StreamTail, StoreError> {
        let cached = self.tails.get(stream);
        if let Some(tail) = cached {
            if !with_ids || tail.recent.is_some() {
                return Ok(tail.clone());
            }
        }
        // Every earlier group is durable and published, so the reader sees the stream up to
        // this group; what this group staged for it comes from the group itself.
        let staged = group.runs.get(stream);
        let last_revision = match (staged, cached) {
            (Some(run), _) => Some(run.first_revision + run.positions.len() as u64 - 1),
            (None, Some(tail)) => tail.last_revision,
            (None, None) => self.reader.last_revision(stream)?,
        };
        let mut tail = StreamTail {
            last_revision,
            recent: None,
        };
        if with_ids {
            let mut recent: VecDeque<_> = self
                .reader
                .stream_tail(stream, RECENT_IDS)?
                .into_iter()
                .map(|e| (e.id, e.revision, e.position))
                .collect();
            if let Some(run) = staged {
                for (i, (&id, &position)) in run.ids.iter().zip(&run.positions).enumerate() {
                    recent.push_back((id, run.first_revision + i as u64, position));
                }
                while recent.len() > RECENT_IDS {
                    recent.pop_front();
                }
            }
            tail.recent = Some(recent);
        }
        Ok(tail)
    }

    fn remember(&mut self, stream: &str, tail: StreamTail) {
        self.tails.insert(stream.to_owned(), tail);
    }

    /// After a failed write nothing remembered can be trusted: start again from the log.
    fn recover_after_failure(&mut self) {
        self.tails.clear();
        let (lo, hi) = codec::chunk_key_bounds();
        let recovered = self
            .reader
            .tree()
            .range(lo..hi)
            .next_back()
            .and_then(|entry| entry.ok())
            .and_then(|(key, value)| {
                Some(codec::chunk_position(&key).ok()? + codec::chunk_len(&value).ok()?)
            });
        if let Some(head) = recovered {
            self.next_position = head;
        }
    }
}

/// If `events` repeat ids already at the stream's tail, the outcome of the original append.
///
/// # Errors
/// [`StoreError::DuplicateEventId`] when only some ids match, or they match out of order.
fn find_retry(
    tail: &StreamTail,
    events: &[ProposedEvent],
) -> Result<Option<AppendOutcome>, StoreError> {
    let Some(recent) = tail.recent.as_ref() else {
        return Ok(None);
    };
    let found = |id: &Uuid| recent.iter().position(|(seen, _, _)| seen == id);
    let Some(start) = found(&events[0].id) else {
        if let Some(event) = events.iter().find(|e| found(&e.id).is_some()) {
            return Err(StoreError::DuplicateEventId(format!(
                "event id {} is already in the stream, but the append does not repeat the original append",
                event.id
            )));
        }
        return Ok(None);
    };
    let repeats = events.len() <= recent.len() - start
        && events
            .iter()
            .zip(recent.iter().skip(start))
            .all(|(event, (seen, _, _))| event.id == *seen);
    if !repeats {
        return Err(StoreError::DuplicateEventId(format!(
            "event id {} is already in the stream, but the other events of this append differ from the ones that followed it",
            events[0].id
        )));
    }
    let (_, first_revision, first_position) = recent[start];
    let (_, last_revision, last_position) = recent[start + events.len() - 1];
    Ok(Some(AppendOutcome {
        first_revision,
        last_revision,
        first_position,
        last_position,
    }))
}
