//! The group-commit writer: the only code that writes the log.
//!
//! (Over 500 lines, on purpose: staging an append, staging an import and recovering after a
//! storage error all change the same in-memory picture of the log's tail, and are kept
//! beside each other so that their agreement can be checked in one reading.)
//!
//! One thread takes every append request queued since its last flush, checks each against
//! the streams' current revisions (in order, so two racing appends see each other), writes
//! them all in one atomic sled batch, flushes once, publishes the new durable head, and only
//! then answers the requests. Under load one fsync serves many appends. Imports (restoring a
//! backup) go through the same path, so they are atomic and durable the same way.
//!
//! Every event id goes into the [`IdIndex`], so a retry finds its original append however
//! late, and an id is never recorded twice.
//!
//! **Fail-stop.** After any storage error nothing the writer remembers can be trusted (the
//! failed batch may or may not reach the disk), so it acknowledges no write until it has
//! re-derived its state from what is durable: a flush that succeeds, then the head, the
//! stream tails and the id index read back from the log. Until then every append is
//! answered [`StoreError::Unavailable`] at once; reads of the durable log keep working.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, ChunkWriter};
use super::faults::InjectedFaults;
use super::id_index::IdIndex;
use super::sled_batch::KeyBatch;
use super::sled_log::SledLog;
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
/// Streams whose tail the writer remembers; past this the memory is dropped and reloaded.
const MAX_CACHED_STREAMS: usize = 200_000;
/// After a storage error, how often a write request may trigger another recovery attempt.
const RECOVERY_INTERVAL: Duration = Duration::from_millis(500);

/// One request to the writer, answered once durable.
pub(super) enum Job {
    Append(AppendJob),
    Import(ImportJob),
    FindOriginal(FindOriginalJob),
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
    /// Copied from a log this store replicates (cluster mode): that log is the authority,
    /// so an id it recorded twice is kept twice rather than refused (the first stays the
    /// one retries find).
    pub replicated: bool,
    pub reply: oneshot::Sender<Result<GlobalPosition, StoreError>>,
}

/// Where an earlier append with these client-chosen ids landed, if one did (see
/// `SledStore::find_original`).
pub(super) struct FindOriginalJob {
    pub stream: StreamName,
    pub events: Vec<ProposedEvent>,
    pub reply: oneshot::Sender<Result<Option<AppendOutcome>, StoreError>>,
}

impl Job {
    /// Answers the job with `err` without touching storage.
    fn refuse(self, err: StoreError) {
        match self {
            Job::Append(job) => drop(job.reply.send(Err(err))),
            Job::Import(job) => drop(job.reply.send(Err(err))),
            Job::FindOriginal(job) => drop(job.reply.send(Err(err))),
        }
    }

    fn len(&self) -> usize {
        match self {
            Job::Append(job) => job.events.len(),
            Job::Import(job) => job.events.len(),
            Job::FindOriginal(_) => 0,
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
    FindOriginal(
        oneshot::Sender<Result<Option<AppendOutcome>, StoreError>>,
        Result<Option<AppendOutcome>, StoreError>,
    ),
}

impl Answer {
    /// Sends the outcome; the client may have gone away, its events are durable all the same.
    fn send(self) {
        match self {
            Answer::Append(reply, outcome) => drop(reply.send(outcome)),
            Answer::Import(reply, outcome) => drop(reply.send(outcome)),
            Answer::FindOriginal(reply, outcome) => drop(reply.send(outcome)),
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            Answer::Append(reply, _) => drop(reply.send(Err(err))),
            Answer::Import(reply, _) => drop(reply.send(Err(err))),
            Answer::FindOriginal(reply, _) => drop(reply.send(Err(err))),
        }
    }
}

/// What the writer remembers of a stream's end.
#[derive(Clone, Copy)]
struct StreamTail {
    last_revision: Option<StreamRevision>,
}

pub(super) struct Writer {
    db: sled::Db,
    reader: SledLog,
    head_tx: watch::Sender<GlobalPosition>,
    next_position: GlobalPosition,
    tails: HashMap<String, StreamTail>,
    index: IdIndex,
    /// Set by a storage error, cleared by a recovery: while set, no write is acknowledged.
    failure: Option<StoreFailure>,
    faults: Arc<InjectedFaults>,
}

/// Why the writer stopped acknowledging writes, and when it last tried to recover.
struct StoreFailure {
    reason: String,
    last_attempt: Instant,
}

/// The pieces of one group commit being assembled.
struct Group {
    /// The group's first position: below it everything is durable.
    start: GlobalPosition,
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
}

impl Group {
    fn new(first_position: GlobalPosition) -> Self {
        Self {
            start: first_position,
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
    /// A writer continuing the durable log that `reader` sees.
    ///
    /// # Errors
    /// The id index cannot be read back.
    pub(super) fn new(
        db: sled::Db,
        reader: SledLog,
        head_tx: watch::Sender<GlobalPosition>,
        faults: Arc<InjectedFaults>,
    ) -> Result<Self, StoreError> {
        let next_position = reader.head();
        let index = load_index(&reader)?;
        Ok(Self {
            db,
            reader,
            head_tx,
            next_position,
            tails: HashMap::new(),
            index,
            failure: None,
            faults,
        })
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
        if !self.recovered() {
            let reason = self
                .failure
                .as_ref()
                .map(|f| f.reason.clone())
                .unwrap_or_default();
            for job in jobs {
                job.refuse(StoreError::Unavailable(format!(
                    "the store accepts no writes since a storage error ({reason}); it retries \
                     recovery and writes resume once what is on disk has been read back"
                )));
            }
            return;
        }
        // Forget between groups, never within one: a group's staged tails live only here.
        if self.tails.len() >= MAX_CACHED_STREAMS {
            self.tails.clear();
        }
        // Between groups every indexed id is durable: the index may seal them.
        if let Err(err) = self.index.maintain() {
            self.fail(&err);
            for job in jobs {
                job.refuse(StoreError::Unavailable(format!(
                    "the store accepts no writes since a storage error ({err})"
                )));
            }
            return;
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
                    let outcome = self.stage_import(&mut group, &job.events, job.replicated);
                    Answer::Import(job.reply, outcome)
                }
                Job::FindOriginal(job) => {
                    let outcome = self.find_original(&group, job.stream.as_str(), &job.events);
                    Answer::FindOriginal(job.reply, outcome)
                }
            });
        }
        if self.next_position > group_start {
            let batch = group.finish(self.next_position);
            let written = self
                .faults
                .before_apply()
                .and_then(|()| batch.apply(self.reader.tree()).map_err(StoreError::from))
                .and_then(|()| self.faults.before_flush())
                .and_then(|()| self.db.flush().map(|_| ()).map_err(StoreError::from));
            if let Err(err) = written {
                self.fail(&err);
                let message = format!(
                    "the write failed ({err}); it may or may not have reached the disk: \
                     retry it with the same event ids once the store accepts writes again"
                );
                for answer in answers {
                    answer.fail(StoreError::Unavailable(message.clone()));
                }
                return;
            }
            self.publish(self.next_position);
        }
        for answer in answers {
            answer.send();
        }
    }

    /// Stops acknowledging writes until a recovery succeeds.
    fn fail(&mut self, err: &StoreError) {
        tracing::error!(%err, "a write failed: no write is acknowledged until the store recovers");
        self.failure = Some(StoreFailure {
            reason: err.to_string(),
            last_attempt: Instant::now(),
        });
    }

    fn publish(&self, head: GlobalPosition) {
        self.reader.publish_head(head);
        self.head_tx.send_replace(head);
    }

    /// Whether writes may be acknowledged: true unless a storage error happened and a
    /// recovery, tried at most every [`RECOVERY_INTERVAL`], has not succeeded yet.
    fn recovered(&mut self) -> bool {
        let Some(failure) = self.failure.as_mut() else {
            return true;
        };
        if failure.last_attempt.elapsed() < RECOVERY_INTERVAL {
            return false;
        }
        failure.last_attempt = Instant::now();
        match self.recover() {
            Ok(head) => {
                tracing::warn!(
                    head,
                    "the store recovered from a storage error; writes resume"
                );
                self.failure = None;
                true
            }
            Err(err) => {
                tracing::error!(%err, "the store has not recovered yet");
                false
            }
        }
    }

    /// Re-derives everything the writer remembers from what is durable: first a flush that
    /// succeeds (so the tree holds exactly what is on disk, including whatever of the
    /// failed batch reached it), then the head, the tails and the id index from the log.
    fn recover(&mut self) -> Result<GlobalPosition, StoreError> {
        self.faults.before_flush()?;
        // A run still being sealed finishes first, so that nothing writes beside the index
        // read back below (if it failed, the ids are read back from the log instead).
        let _ = self.index.finish_sealing();
        self.db.flush()?;
        let head = recover_head(self.reader.tree())?;
        // The reader must see the whole durable log to read the ids back.
        self.reader.publish_head(head);
        self.index = load_index(&self.reader)?;
        self.tails.clear();
        self.next_position = head;
        self.publish(head);
        Ok(head)
    }

    /// Checks one append against the stream's state and adds its events to the group.
    fn stage(
        &mut self,
        group: &mut Group,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: &[ProposedEvent],
    ) -> Result<AppendOutcome, StoreError> {
        if events.iter().any(|e| e.id_from_client) {
            if let Some(original) = self.find_original(group, stream.as_str(), events)? {
                return Ok(original);
            }
        }
        let tail = self.tail(group, stream.as_str())?;
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
        replicated: bool,
    ) -> Result<GlobalPosition, StoreError> {
        let mismatch =
            |message: String, head: GlobalPosition| StoreError::ImportMismatch { message, head };
        let mut tails: HashMap<&str, (StreamTail, Option<StreamRevision>)> = HashMap::new();
        let mut position = self.next_position;
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        for event in events {
            let repeated = !ids.insert(event.id);
            let recorded = self.index.lookup(&event.id)?;
            if replicated {
                if repeated || recorded.is_some() {
                    tracing::warn!(id = %event.id, position = event.position, "the replicated log records this event id a second time");
                }
            } else if repeated {
                return Err(StoreError::DuplicateEventId(format!(
                    "event id {} appears twice in the import",
                    event.id
                )));
            } else if let Some(recorded) = recorded {
                return Err(StoreError::DuplicateEventId(format!(
                    "event id {} is already recorded, at position {recorded}; an id is recorded once",
                    event.id
                )));
            }
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
                    let tail = self.tail(group, &event.stream)?;
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
                    },
                    None,
                ));
                let run = group.runs.remove(&event.stream).unwrap_or(StagedRun {
                    first_revision: event.revision,
                    positions: Vec::new(),
                });
                (run, tail)
            });
            self.push_event(group, run, tail, &event.as_ref());
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
        self.index.insert(event.id, event.position);
        tail.last_revision = Some(event.revision);
        self.next_position += 1;
        if group.chunk.len() >= CHUNK_MAX_EVENTS || group.chunk.byte_len() >= CHUNK_MAX_BYTES {
            group.close_chunk(self.next_position);
        }
    }

    /// The remembered end of `stream`, loaded from the log if needed.
    fn tail(&mut self, group: &Group, stream: &str) -> Result<StreamTail, StoreError> {
        if let Some(tail) = self.tails.get(stream) {
            return Ok(*tail);
        }
        // Every earlier group is durable and published, so the reader sees the stream up to
        // this group; what this group staged for it comes from the group itself.
        let last_revision = match group.runs.get(stream) {
            Some(run) => Some(run.first_revision + run.positions.len() as u64 - 1),
            None => self.reader.last_revision(stream)?,
        };
        Ok(StreamTail { last_revision })
    }

    /// If the client-chosen ids of `events` are already recorded: the outcome of the
    /// original append, when this is a retry of it (same ids, same order, same stream).
    ///
    /// # Errors
    /// [`StoreError::DuplicateEventId`] when some ids are recorded and the append is not
    /// a retry of the one that recorded them (other ids beside them, another order, or
    /// another stream).
    fn find_original(
        &self,
        group: &Group,
        stream: &str,
        events: &[ProposedEvent],
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let mut found = Vec::with_capacity(events.len());
        for event in events {
            let recorded = match event.id_from_client {
                true => self.index.lookup(&event.id)?,
                false => None,
            };
            found.push(recorded);
        }
        let Some(first_found) = found.iter().position(Option::is_some) else {
            return Ok(None);
        };
        let id = events[first_found].id;
        let positions: Vec<GlobalPosition> = found.iter().flatten().copied().collect();
        let consecutive = positions.len() == events.len()
            && positions.windows(2).all(|pair| pair[1] == pair[0] + 1);
        if !consecutive {
            return Err(StoreError::DuplicateEventId(format!(
                "event id {id} is already recorded, but this append does not repeat the \
                 append that recorded it (its other events differ)"
            )));
        }
        let located = self.locate(group, &positions)?;
        if let Some((other, _)) = located.iter().find(|(s, _)| s != stream) {
            return Err(StoreError::DuplicateEventId(format!(
                "event id {id} is already recorded in stream {other:?}; an id is recorded once \
                 in the whole log"
            )));
        }
        let (first, last) = (positions[0], positions[positions.len() - 1]);
        Ok(Some(AppendOutcome {
            first_revision: located[0].1,
            last_revision: located[located.len() - 1].1,
            first_position: first,
            last_position: last,
        }))
    }

    /// The stream and revision of each of `positions` (ascending), whether durable or
    /// staged in this group.
    fn locate(
        &self,
        group: &Group,
        positions: &[GlobalPosition],
    ) -> Result<Vec<(String, StreamRevision)>, StoreError> {
        let durable: Vec<GlobalPosition> = positions
            .iter()
            .copied()
            .filter(|&p| p < group.start)
            .collect();
        let mut located: Vec<(String, StreamRevision)> = self
            .reader
            .events_at(&durable)?
            .into_iter()
            .map(|e| (e.stream, e.revision))
            .collect();
        for &position in &positions[durable.len()..] {
            let staged = group.runs.iter().find_map(|(stream, run)| {
                run.positions
                    .iter()
                    .position(|&p| p == position)
                    .map(|i| (stream.clone(), run.first_revision + i as u64))
            });
            located.push(staged.ok_or_else(|| {
                StoreError::Corrupt(format!("position {position} is indexed but not staged"))
            })?);
        }
        Ok(located)
    }

    fn remember(&mut self, stream: &str, tail: StreamTail) {
        self.tails.insert(stream.to_owned(), tail);
    }
}

/// The id index of the durable log `reader` sees: the sealed runs, and the ids after them
/// read back from the log's chunks.
fn load_index(reader: &SledLog) -> Result<IdIndex, StoreError> {
    let (mut index, from) = IdIndex::load(reader.tree())?;
    reader.scan(from, reader.head(), |event| {
        index.insert(event.id, event.position);
        true
    })?;
    Ok(index)
}

/// The position after the last event in the log tree (durable or not: the caller flushes
/// first).
pub(super) fn recover_head(log: &sled::Tree) -> Result<GlobalPosition, StoreError> {
    let (lo, hi) = codec::chunk_key_bounds();
    match log.range(lo..hi).next_back() {
        None => Ok(0),
        Some(entry) => {
            let (key, value) = entry?;
            Ok(codec::chunk_position(&key)? + codec::chunk_len(&value)?)
        }
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
