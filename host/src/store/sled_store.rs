//! The embedded backend: the log in a sled tree, appends through the group-commit writer,
//! reads bounded by the durable head.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::faults::InjectedFaults;
use super::sled_log::SledLog;
use super::writer::{AppendJob, FindOriginalJob, ImportJob, Job, Writer, recover_head};
use super::{
    AppendOutcome, BoxFuture, EventLog, EventStore, ExpectedRevision, GlobalPosition, ListStreams,
    ProposedEvent, RecordedEvent, StoreError, StreamListing, StreamName, StreamRead,
    StreamRevision, StreamSlice, Visit,
};

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        Self::Storage(err.to_string())
    }
}

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
    reader: SledLog,
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
        let (head_tx, head_rx) = watch::channel(recovered_head);
        let reader = SledLog::new(log, recovered_head);
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

    /// The database, for the keyspaces kept beside the log.
    pub(super) fn db(&self) -> &sled::Db {
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

/// What cluster mode needs of the local copy of the log it keeps on each host.
impl SledStore {
    /// Copies events of the replicated log as they are, at their positions (the replicated
    /// log has already decided them; see `ImportJob::replicated`). Resolves to the new head
    /// once they are durable here.
    pub(crate) fn replicate(
        &self,
        events: Vec<RecordedEvent>,
    ) -> BoxFuture<'static, Result<GlobalPosition, StoreError>> {
        self.import_as(events, true)
    }

    fn import_as(
        &self,
        events: Vec<RecordedEvent>,
        replicated: bool,
    ) -> BoxFuture<'static, Result<GlobalPosition, StoreError>> {
        self.submit(|reply| {
            Job::Import(ImportJob {
                events,
                replicated,
                reply,
            })
        })
    }

    /// The revision and position of `stream`'s last durable event (cheaper than reading it).
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) fn stream_end(
        &self,
        stream: &StreamName,
    ) -> Result<Option<(StreamRevision, GlobalPosition)>, StoreError> {
        self.reader.stream_end(stream.as_str())
    }

    /// Where an earlier append carrying these client-chosen ids landed, if one did; an error
    /// if the ids are recorded but this append does not repeat the one that recorded them.
    pub(crate) fn find_original(
        &self,
        stream: StreamName,
        events: Vec<ProposedEvent>,
    ) -> BoxFuture<'static, Result<Option<AppendOutcome>, StoreError>> {
        self.submit(|reply| {
            Job::FindOriginal(FindOriginalJob {
                stream,
                events,
                reply,
            })
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl EventLog for SledStore {
    fn head(&self) -> GlobalPosition {
        self.reader.head()
    }

    fn watch_head(&self) -> watch::Receiver<GlobalPosition> {
        self.head_rx.clone()
    }

    fn scan(
        &self,
        range: Range<GlobalPosition>,
        visit: &mut Visit<'_>,
    ) -> Result<GlobalPosition, StoreError> {
        let until = range.end.min(self.reader.head());
        self.reader.scan(range.start, until, visit)
    }

    fn read_stream(
        &self,
        stream: &StreamName,
        read: StreamRead,
    ) -> Result<Option<StreamSlice>, StoreError> {
        self.reader
            .read_stream(stream.as_str(), read.from, read.limit, read.direction)
    }

    fn stream_revision_after(
        &self,
        stream: &StreamName,
        position: GlobalPosition,
    ) -> Result<StreamRevision, StoreError> {
        self.reader.stream_revision_after(stream.as_str(), position)
    }

    fn list_streams(&self, query: ListStreams<'_>) -> Result<StreamListing, StoreError> {
        self.reader
            .list_streams(query.prefix, query.after, query.limit)
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
        self.import_as(events, false)
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
