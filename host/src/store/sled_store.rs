//! The embedded backend: the log in a sled tree, appends through the group-commit writer,
//! reads bounded by the durable head.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, decode_chunk, decode_run};
use super::faults::InjectedFaults;
use super::writer::{AppendJob, ImportJob, Job, Writer, recover_head};
use super::{
    AppendOutcome, BoxFuture, Direction, EventFilter, EventRef, EventStore, ExpectedRevision,
    GlobalPosition, LogSlice, ProposedEvent, RecordedEvent, StoreError, StreamInfo, StreamListing,
    StreamName, StreamRevision, StreamSlice,
};

/// How the embedded store is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The folder holding the database.
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The event log on sled.
pub struct SledStore {
    db: sled::Db,
    reader: LogReader,
    head_rx: watch::Receiver<GlobalPosition>,
    /// `None` once the store is closed: appends are then refused.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

impl SledStore {
    /// Opens (or creates) the store at `config.path` and starts its writer.
    ///
    /// # Errors
    /// The database cannot be opened, or its last chunk is unreadable.
    pub fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        Self::open_with_faults(config, Arc::default())
    }

    /// Opens the store with storage faults a test can arm (see [`InjectedFaults`]).
    ///
    /// # Errors
    /// As for [`SledStore::open`].
    pub fn open_with_faults(
        config: &StoreConfig,
        faults: Arc<InjectedFaults>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .segment_size(segment_size(&config.path))
            .flush_every_ms(None)
            .open()
            .with_context(|| format!("opening the store at {}", config.path.display()))?;
        let log = db.open_tree("log").context("opening the log tree")?;
        let recovered_head = recover_head(&log).context("reading the end of the log")?;
        let head = Arc::new(AtomicU64::new(recovered_head));
        let (head_tx, head_rx) = watch::channel(recovered_head);
        let reader = LogReader {
            log: log.clone(),
            head: head.clone(),
        };
        let (jobs_tx, jobs_rx) = mpsc::channel(4096);
        let writer = Writer::new(db.clone(), reader.clone(), head_tx, faults)
            .context("reading the event id index")?;
        let writer_thread = std::thread::Builder::new()
            .name("refold-writer".into())
            .spawn(move || writer.run(jobs_rx))
            .context("starting the writer thread")?;
        tracing::info!(path = %config.path.display(), head = recovered_head, "store opened");
        Ok(Self {
            db,
            reader,
            head_rx,
            jobs: Mutex::new(Some(jobs_tx)),
            writer_thread: Mutex::new(Some(writer_thread)),
        })
    }

    /// The database, for other parts of Refold that keep their own trees beside the log.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Stops accepting appends, lets the writer finish every queued append, and flushes.
    /// Blocks until done; calling it again does nothing.
    pub fn close(&self) {
        drop(self.jobs.lock().take());
        if let Some(thread) = self.writer_thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("the writer thread panicked");
            }
        }
        if let Err(err) = self.db.flush() {
            tracing::error!(%err, "final flush failed");
        }
    }

    /// Visits durable events from `from` (inclusive) up to `until` (exclusive) without
    /// copying them, until `visit` returns `false`. Returns the position after the last
    /// event visited.
    ///
    /// # Errors
    /// Storage failures.
    pub fn scan_log(
        &self,
        from: GlobalPosition,
        until: GlobalPosition,
        visit: impl FnMut(EventRef<'_>) -> bool,
    ) -> Result<GlobalPosition, StoreError> {
        self.reader.scan(from, until.min(self.reader.head()), visit)
    }
}

impl SledStore {
    /// Hands a job to the writer; resolves to its answer once the job is durable.
    fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let jobs = self.jobs.lock().clone();
        let (reply, outcome) = oneshot::channel();
        let job = job(reply);
        Box::pin(async move {
            let jobs = jobs.ok_or(StoreError::ShuttingDown)?;
            jobs.send(job).await.map_err(|_| StoreError::ShuttingDown)?;
            outcome.await.map_err(|_| StoreError::ShuttingDown)?
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl EventStore for SledStore {
    fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<ProposedEvent>,
    ) -> BoxFuture<'static, Result<AppendOutcome, StoreError>> {
        self.submit(|reply| {
            Job::Append(AppendJob {
                stream,
                expected,
                events,
                reply,
            })
        })
    }

    fn import(
        &self,
        events: Vec<RecordedEvent>,
    ) -> BoxFuture<'static, Result<GlobalPosition, StoreError>> {
        self.submit(|reply| Job::Import(ImportJob { events, reply }))
    }

    fn head(&self) -> GlobalPosition {
        self.reader.head()
    }

    fn watch_head(&self) -> watch::Receiver<GlobalPosition> {
        self.head_rx.clone()
    }

    fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<StreamRevision>,
        limit: usize,
        direction: Direction,
    ) -> Result<Option<StreamSlice>, StoreError> {
        self.reader
            .read_stream(stream.as_str(), from, limit, direction)
    }

    fn stream_revision_after(
        &self,
        stream: &StreamName,
        position: GlobalPosition,
    ) -> Result<StreamRevision, StoreError> {
        self.reader.stream_revision_after(stream.as_str(), position)
    }

    fn read_all(
        &self,
        from: GlobalPosition,
        limit: usize,
        scan_limit: usize,
        filter: &EventFilter,
    ) -> Result<LogSlice, StoreError> {
        let head = self.reader.head();
        let mut events = Vec::new();
        let mut scanned = 0usize;
        let scanned_to = self.reader.scan(from, head, |event| {
            scanned += 1;
            if filter.matches(event.stream, event.event_type) {
                events.push(event.to_recorded());
            }
            events.len() < limit && scanned < scan_limit
        })?;
        Ok(LogSlice {
            events,
            scanned_to: scanned_to.max(from),
            reached_head: scanned_to >= head,
        })
    }

    fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamListing, StoreError> {
        self.reader.list_streams(prefix, after, limit)
    }
}

/// sled's segment size for a new store; an existing store keeps the one it was made with
/// (sled refuses to open it with another).
///
/// sled writes a tree node bigger than a quarter segment to a file of its own (a blob), and
/// its page cache counts such a node as the few bytes of its pointer, so it never evicts it:
/// every blob read stays in memory. The log's leaves hold up to 17 chunks of
/// [`super::writer::CHUNK_MAX_BYTES`] (more for a chunk holding one big event); 4 MiB
/// segments (a 1 MiB quarter) keep them inline, so the cache can bound the memory of
/// reading the whole log.
const SEGMENT_BYTES: usize = 4 * 1024 * 1024;

fn segment_size(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|line| line.strip_prefix("segment_size: "))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_BYTES)
}

/// Reads the log tree, never past the durable head. Shared by the store and its writer.
#[derive(Clone)]
pub(super) struct LogReader {
    log: sled::Tree,
    head: Arc<AtomicU64>,
}

impl LogReader {
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

    /// The last durable revision of `stream`, if it has any event.
    pub(super) fn last_revision(&self, stream: &str) -> Result<Option<StreamRevision>, StoreError> {
        Ok(self
            .stream_positions(stream, None, 1, Direction::Backward)?
            .and_then(|pairs| pairs.first().map(|&(revision, _)| revision)))
    }

    fn stream_revision_after(
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

    fn list_streams(
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
