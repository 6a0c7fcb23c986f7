//! The event log on JetStream: appends decided by JetStream, reads from this host's copy.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{HeaderMap, header};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::publish::{MAX_BATCH, Outgoing, PublishError, publish};
use super::wire::{self, code, encode_event, event_subject, position_of};
use super::{Nats, replica};
use crate::store::{
    AppendOutcome, BoxFuture, EventLog, EventStore, ExpectedRevision, GlobalPosition, ListStreams,
    ProposedEvent, RecordedEvent, SledStore, StoreConfig, StoreError, StreamListing, StreamName,
    StreamRead, StreamRevision, StreamSlice, Visit,
};

/// How long JetStream may keep a message id for de-duplication. Older retries are found
/// in this host's copy of the log instead.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(300);
/// How long a read waits for this host's copy to hold what was acknowledged before it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one append when JetStream cannot answer (leader election) or the stream's
/// end moved under it; then the client is told to retry.
const MAX_ATTEMPTS: u32 = 60;
/// Streams whose end this host remembers from its own appends.
const MAX_REMEMBERED_ENDS: usize = 100_000;

/// Where a stream ends: its last revision and that event's JetStream sequence.
#[derive(Clone, Copy, Debug)]
struct StreamEnd {
    revision: StreamRevision,
    sequence: u64,
}

/// The event log in a JetStream stream, read through this host's copy.
pub struct NatsStore(Arc<Shared>);

struct Shared {
    nats: Arc<Nats>,
    events: async_nats::jetstream::stream::Stream,
    copy: Arc<SledStore>,
    /// Ends of streams this host appended to, ahead of its copy.
    ends: Mutex<HashMap<String, StreamEnd>>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl NatsStore {
    /// Creates the log's stream if needed, opens this host's copy at `copy` and starts
    /// following; resolves once the copy holds the whole log.
    ///
    /// # Errors
    /// JetStream refuses the stream, or the copy cannot be opened.
    pub async fn open(nats: Arc<Nats>, copy: StoreConfig) -> anyhow::Result<Self> {
        let events = nats
            .ensure_stream(wire::append_only_stream(
                wire::EVENTS_STREAM,
                wire::EVENTS_SUBJECTS,
                nats.replicas(),
                DUPLICATE_WINDOW,
            ))
            .await
            .context("creating the event stream in JetStream")?;
        let copy = tokio::task::spawn_blocking(move || SledStore::open(&copy))
            .await
            .context("opening this host's copy of the log")??;
        let copy = Arc::new(copy);
        let (stop, stopping) = watch::channel(false);
        let follower = tokio::spawn(replica::follow(events.clone(), copy.clone(), stopping));
        let store = Self(Arc::new(Shared {
            nats,
            events,
            copy,
            ends: Mutex::new(HashMap::new()),
            follower: Mutex::new(Some(follower)),
            stop,
        }));
        store
            .0
            .sync_copy()
            .await
            .context("copying the log from JetStream")?;
        tracing::info!(
            head = store.head(),
            "the log's copy on this host is current"
        );
        Ok(store)
    }

    /// This host's copy of the log (it also holds the local keyspaces).
    pub fn copy(&self) -> &Arc<SledStore> {
        &self.0.copy
    }

    /// Stops following and closes the copy.
    pub async fn close(&self) {
        let _ = self.0.stop.send(true);
        let follower = self.0.follower.lock().take();
        if let Some(follower) = follower {
            let _ = follower.await;
        }
        let copy = self.0.copy.clone();
        let _ = tokio::task::spawn_blocking(move || copy.close()).await;
    }
}

impl Shared {
    /// Resolves once this host's copy holds every event JetStream had acknowledged when
    /// it was called (by any host).
    async fn sync_copy(&self) -> Result<(), StoreError> {
        let last = wire::last_sequence(&self.events).await?;
        let mut head = self.copy.watch_head();
        let reached = tokio::time::timeout(SYNC_TIMEOUT, head.wait_for(|head| *head >= last)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::ShuttingDown),
            Err(_) => Err(StoreError::Unavailable(format!(
                "this host's copy of the log is behind JetStream (at {} of {last} events)",
                self.copy.head()
            ))),
        }
    }

    /// Where `stream` ends, as far as this host knows.
    fn end_of(&self, stream: &StreamName) -> Result<Option<StreamEnd>, StoreError> {
        let copied = self
            .copy
            .stream_end(stream)?
            .map(|(revision, position)| StreamEnd {
                revision,
                sequence: position + 1,
            });
        let remembered = self.ends.lock().get(stream.as_str()).copied();
        Ok(match (copied, remembered) {
            (Some(a), Some(b)) => Some(if a.sequence >= b.sequence { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    fn remember(&self, stream: &StreamName, end: StreamEnd) {
        let mut ends = self.ends.lock();
        if ends.len() >= MAX_REMEMBERED_ENDS {
            ends.clear();
        }
        ends.insert(stream.as_str().to_owned(), end);
    }

    fn forget(&self, stream: &StreamName) {
        self.ends.lock().remove(stream.as_str());
    }

    /// The original outcome of an append whose ids are recorded (looking up every id when
    /// `all_ids`, as after an attempt whose outcome is unknown).
    async fn original(
        &self,
        stream: &StreamName,
        events: &[ProposedEvent],
        all_ids: bool,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        if !all_ids && !events.iter().any(|e| e.id_from_client) {
            return Ok(None);
        }
        let lookup = events
            .iter()
            .map(|event| ProposedEvent {
                id_from_client: event.id_from_client || all_ids,
                ..event.clone()
            })
            .collect();
        self.copy.find_original(stream.clone(), lookup).await
    }

    async fn append_to_jetstream(
        self: Arc<Self>,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() || events.len() > MAX_BATCH {
            return Err(StoreError::Storage(format!(
                "an append holds 1 to {MAX_BATCH} events in cluster mode, not {}",
                events.len()
            )));
        }
        if let Some(original) = self.original(&stream, &events, false).await? {
            return Ok(original);
        }
        // After an attempt with no answer, or one refused because the stream's end moved,
        // this host's copy is brought up to date before the next one.
        let mut synced = false;
        let mut unanswered = false;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                self.forget(&stream);
                if let Err(err) = self.sync_copy().await {
                    tracing::warn!(%err, "append: cannot bring the copy up to date yet");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                synced = true;
                if let Some(original) = self.original(&stream, &events, unanswered).await? {
                    return Ok(original);
                }
            }
            let end = self.end_of(&stream)?;
            let current = end.map(|end| end.revision);
            if !expected.admits(current) {
                if synced {
                    return Err(StoreError::WrongExpectedRevision { expected, current });
                }
                continue;
            }
            let first_revision = current.map_or(0, |r| r + 1);
            let messages = outgoing(
                &stream,
                first_revision,
                end.map_or(0, |e| e.sequence),
                &events,
            );
            match publish(self.nats.client(), messages).await {
                Ok(ack) if ack.duplicate => {
                    // A retry within the de-duplication window: the original is in the
                    // log at ack.sequence.
                    unanswered = true;
                    continue;
                }
                Ok(ack) => {
                    let count = events.len() as u64;
                    let last_position = position_of(ack.sequence);
                    let outcome = AppendOutcome {
                        first_revision,
                        last_revision: first_revision + count - 1,
                        first_position: last_position + 1 - count,
                        last_position,
                    };
                    self.remember(
                        &stream,
                        StreamEnd {
                            revision: outcome.last_revision,
                            sequence: ack.sequence,
                        },
                    );
                    return Ok(outcome);
                }
                Err(PublishError::Unanswered(reason)) => {
                    tracing::warn!(%reason, attempt, "append: no answer from JetStream; retrying");
                    unanswered = true;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(err) => match err.code() {
                    Some(code::WRONG_LAST_SEQUENCE | code::BATCH_DUPLICATE_ID) => {}
                    Some(code::SEQUENCE_IN_FLIGHT | code::DUPLICATE_IN_FLIGHT) => {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    _ => return Err(StoreError::Unavailable(err.to_string())),
                },
            }
        }
        Err(StoreError::Unavailable(
            "JetStream did not take the append after many attempts (leader election or heavy \
             contention on this stream); retry it with the same event ids"
                .into(),
        ))
    }

    async fn import_to_jetstream(
        self: Arc<Self>,
        events: Vec<RecordedEvent>,
    ) -> Result<GlobalPosition, StoreError> {
        self.sync_copy().await?;
        let head = self.copy.head();
        if let Some(first) = events.first() {
            if first.position != head {
                return Err(StoreError::ImportMismatch {
                    message: format!(
                        "event {} has position {}, but the log continues at {head}",
                        first.id, first.position
                    ),
                    head,
                });
            }
        }
        for chunk in events.chunks(MAX_BATCH) {
            // The batch lands exactly where the import says, or not at all.
            let expected = (header::NATS_EXPECTED_LAST_SEQUENCE, chunk[0].position);
            let messages = chunk
                .iter()
                .enumerate()
                .map(|(i, event)| {
                    let proposed = ProposedEvent {
                        id: event.id,
                        id_from_client: true,
                        event_type: event.event_type.clone(),
                        data: event.data.clone(),
                        metadata: event.metadata.clone(),
                    };
                    event_message(
                        &event.stream,
                        event.revision,
                        &proposed,
                        (i == 0).then(|| expected.clone()),
                        Some(event.recorded_at_micros),
                    )
                })
                .collect();
            publish(self.nats.client(), messages).await.map_err(|err| {
                StoreError::ImportMismatch {
                    message: format!("JetStream refused the import: {err}"),
                    head: self.copy.head(),
                }
            })?;
        }
        self.sync_copy().await?;
        Ok(self.copy.head())
    }
}

/// The messages of one append: the first carries the stream's expected last sequence
/// (0: no event yet).
fn outgoing(
    stream: &StreamName,
    first_revision: StreamRevision,
    expected_sequence: u64,
    events: &[ProposedEvent],
) -> Vec<Outgoing> {
    let expected = (
        header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected_sequence,
    );
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            event_message(
                stream.as_str(),
                first_revision + i as u64,
                event,
                (i == 0).then(|| expected.clone()),
                None,
            )
        })
        .collect()
}

/// One event's message: its id for de-duplication, an expectation if given, and the
/// recording time of an imported event.
fn event_message(
    stream: &str,
    revision: StreamRevision,
    event: &ProposedEvent,
    expectation: Option<(async_nats::header::HeaderName, u64)>,
    recorded_at_micros: Option<i64>,
) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_MESSAGE_ID, event.id.to_string().as_str());
    if let Some((name, value)) = expectation {
        headers.insert(name, value.to_string().as_str());
    }
    Outgoing {
        subject: event_subject(stream),
        headers,
        payload: encode_event(stream, revision, event, recorded_at_micros),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(u64::from(attempt.min(10)) * 25 + 5)
}

impl EventLog for NatsStore {
    fn head(&self) -> GlobalPosition {
        self.0.copy.head()
    }

    fn watch_head(&self) -> watch::Receiver<GlobalPosition> {
        self.0.copy.watch_head()
    }

    fn scan(
        &self,
        range: Range<GlobalPosition>,
        visit: &mut Visit<'_>,
    ) -> Result<GlobalPosition, StoreError> {
        self.0.copy.scan(range, visit)
    }

    fn read_stream(
        &self,
        stream: &StreamName,
        read: StreamRead,
    ) -> Result<Option<StreamSlice>, StoreError> {
        self.0.copy.read_stream(stream, read)
    }

    fn stream_revision_after(
        &self,
        stream: &StreamName,
        position: GlobalPosition,
    ) -> Result<StreamRevision, StoreError> {
        self.0.copy.stream_revision_after(stream, position)
    }

    fn list_streams(&self, query: ListStreams<'_>) -> Result<StreamListing, StoreError> {
        self.0.copy.list_streams(query)
    }

    fn sync(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let shared = self.0.clone();
        Box::pin(async move { shared.sync_copy().await })
    }
}

impl EventStore for NatsStore {
    fn append(
        &self,
        stream: StreamName,
        expected: ExpectedRevision,
        events: Vec<ProposedEvent>,
    ) -> BoxFuture<'static, Result<AppendOutcome, StoreError>> {
        Box::pin(self.0.clone().append_to_jetstream(stream, expected, events))
    }

    fn import(
        &self,
        events: Vec<RecordedEvent>,
    ) -> BoxFuture<'static, Result<GlobalPosition, StoreError>> {
        Box::pin(self.0.clone().import_to_jetstream(events))
    }
}
