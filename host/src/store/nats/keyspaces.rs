//! Module state and records in cluster mode: a changelog in JetStream, applied in order to
//! a local copy on every host.
//!
//! Every commit to a keyspace is published to the keyspace's subject of the state stream
//! (one message, or an atomic batch of parts when large) carrying the subject's expected
//! last sequence, then applied here by the follower, in stream order, before `commit`
//! returns. Every host follows the stream, so each holds a current copy of every
//! keyspace: when the host running the modules dies, the next one starts from the same
//! checkpoints and states without replaying the log.
//!
//! Failure analysis:
//! - A commit is all or nothing in JetStream (one message or one atomic batch), and it
//!   carries its checkpoint with its state (`ModuleState`'s contract): after any crash a
//!   copy holds, per keyspace, exactly the commits JetStream acknowledged, in order.
//! - Two hosts can never both extend a keyspace: each commit expects the subject's last
//!   sequence as its writer last saw it, so a host that lost its lease (and did not notice
//!   yet) has its next commit refused instead of applying events a second time.
//! - A local copy may lose its last writes in a crash of its host: it records how far it
//!   applied the stream after applying, and on start applies again from there. Commits
//!   hold absolute puts and removals, so applying one again changes nothing.
//! - If JetStream loses quorum, commits wait and then fail: the module stops with that
//!   error and resumes from its last checkpoint once an operator resumes it or the host
//!   restarts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::{HeaderMap, header};
use futures::StreamExt as _;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::Nats;
use super::publish::{MAX_BATCH, Outgoing, PublishError, publish};
use super::wire::{self, code, keyspace_of, state_subject};
use crate::store::{KeyIter, KeyValue, Keyspace, Keyspaces, SledStore, StoreError, Writes};

/// The local keyspace recording how far this host applied the state stream.
const APPLIED: &str = "refold-changelog";
const APPLIED_KEY: &[u8] = b"applied";
/// Parts of a large commit.
const PART_BYTES: usize = 512 * 1024;
const PART_HEADER: &str = "Refold-Part";
/// How long a commit waits for JetStream and for its own application here.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Keyspaces whose commits go through JetStream and land in this host's copy.
#[derive(Clone)]
pub struct ClusterKeyspaces(Arc<Shared>);

struct Shared {
    nats: Arc<Nats>,
    state: async_nats::jetstream::stream::Stream,
    local: Arc<SledStore>,
    applied_space: Arc<dyn Keyspace>,
    /// The stream sequence applied here.
    applied: watch::Sender<u64>,
    /// Per keyspace subject: the sequence of its last commit applied here.
    ends: Mutex<HashMap<String, u64>>,
    /// Per keyspace subject: the last commit this host knows of as the writer: taken from
    /// `ends` when it became the writer, then moved only by its own commits. A commit
    /// expects it, so once another host has written there, this host's commits are refused
    /// (its follower applying the other host's commit does not make them acceptable).
    fence: Mutex<HashMap<String, u64>>,
    /// Names this host's term as writer in its commits' message ids, so that JetStream's
    /// de-duplication never takes one writer's commit for another's.
    term: Mutex<String>,
    runtime: Handle,
    stop: watch::Sender<bool>,
}

/// What one changelog entry does to its keyspace.
enum Change {
    Commit(Writes),
    Clear,
    Drop,
}

impl ClusterKeyspaces {
    /// Creates the state stream if needed and starts applying it to `local` from where
    /// this host left off; resolves once the copy is current.
    ///
    /// # Errors
    /// JetStream refuses the stream, or the local copy cannot be read.
    pub async fn open(nats: Arc<Nats>, local: Arc<SledStore>) -> anyhow::Result<Self> {
        let state = nats
            .ensure_stream(wire::append_only_stream(
                wire::STATE_STREAM,
                wire::STATE_SUBJECTS,
                nats.replicas(),
                Duration::from_secs(120),
            ))
            .await
            .context("creating the state stream in JetStream")?;
        let applied_space = local.open(APPLIED)?;
        let (applied, ends) = read_applied(applied_space.as_ref())?;
        let (applied, _) = watch::channel(applied);
        let (stop, stopping) = watch::channel(false);
        let shared = Arc::new(Shared {
            nats,
            state,
            local,
            applied_space,
            applied,
            ends: Mutex::new(ends),
            fence: Mutex::new(HashMap::new()),
            term: Mutex::new(uuid::Uuid::new_v4().simple().to_string()),
            runtime: Handle::current(),
            stop,
        });
        tokio::spawn(follow(shared.clone(), stopping));
        let keyspaces = Self(shared);
        keyspaces.sync().await?;
        Ok(keyspaces)
    }

    /// Resolves once every commit JetStream acknowledged before the call is applied here.
    ///
    /// # Errors
    /// JetStream does not answer, or the copy does not catch up within the timeout.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let last = wire::last_sequence(&self.0.state).await?;
        self.0.applied_up_to(last).await
    }

    /// Makes this host the writer of every keyspace, as of what it has applied (call after
    /// [`ClusterKeyspaces::sync`], before anything here writes).
    pub fn begin_writing(&self) {
        let ends = self.0.ends.lock().clone();
        *self.0.fence.lock() = ends;
        *self.0.term.lock() = uuid::Uuid::new_v4().simple().to_string();
    }

    /// Stops applying the stream.
    pub fn close(&self) {
        let _ = self.0.stop.send(true);
    }
}

impl Keyspaces for ClusterKeyspaces {
    fn open(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError> {
        if name == APPLIED {
            return Err(StoreError::Storage(format!(
                "keyspace name {name:?} is reserved in cluster mode"
            )));
        }
        Ok(Arc::new(ClusterKeyspace {
            name: name.to_owned(),
            local: self.0.local.open(name)?,
            shared: self.0.clone(),
        }))
    }

    fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.0.write(name, &Change::Drop)
    }
}

struct ClusterKeyspace {
    name: String,
    local: Arc<dyn Keyspace>,
    shared: Arc<Shared>,
}

impl Keyspace for ClusterKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.local.get(key)
    }

    fn range(&self, from: &[u8], until: Option<&[u8]>) -> KeyIter<'_> {
        self.local.range(from, until)
    }

    fn last_in(&self, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.local.last_in(from, to)
    }

    fn commit(&self, writes: Writes) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.shared.write(&self.name, &Change::Commit(writes))
    }

    fn clear(&self) -> Result<(), StoreError> {
        self.shared.write(&self.name, &Change::Clear)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.local.flush()
    }
}

impl Shared {
    /// Publishes `change` to `keyspace`'s subject, then waits until it is applied here.
    /// Blocks the calling (non-async) thread.
    fn write(&self, keyspace: &str, change: &Change) -> Result<(), StoreError> {
        let subject = state_subject(keyspace);
        let payload = encode(change);
        let parts: Vec<&[u8]> = payload.chunks(PART_BYTES).collect();
        if parts.len() > MAX_BATCH {
            return Err(StoreError::Storage(format!(
                "a commit of {} bytes is more than cluster mode can write at once ({} bytes)",
                payload.len(),
                PART_BYTES * MAX_BATCH
            )));
        }
        let runtime = self.runtime.clone();
        runtime.block_on(async {
            let mut unanswered = false;
            for attempt in 0..40u32 {
                let expected = self.fence.lock().get(&subject).copied().unwrap_or(0);
                let id = format!("{subject}@{expected}/{}", self.term.lock());
                let messages = parts
                    .iter()
                    .enumerate()
                    .map(|(i, part)| {
                        let mut headers = HeaderMap::new();
                        headers.insert(header::NATS_MESSAGE_ID, format!("{id}#{i}").as_str());
                        headers.insert(PART_HEADER, format!("{}/{}", i + 1, parts.len()).as_str());
                        if i == 0 {
                            headers.insert(
                                header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                                expected.to_string().as_str(),
                            );
                        }
                        Outgoing {
                            subject: subject.clone(),
                            headers,
                            payload: bytes::Bytes::copy_from_slice(part),
                        }
                    })
                    .collect();
                let outcome = tokio::time::timeout(
                    COMMIT_TIMEOUT,
                    publish(self.nats.client(), messages),
                )
                .await
                .unwrap_or_else(|_| Err(PublishError::Unanswered("timed out".into())));
                match outcome {
                    Ok(ack) => {
                        self.fence.lock().insert(subject.clone(), ack.sequence);
                        return self.applied_up_to(ack.sequence).await;
                    }
                    Err(PublishError::Unanswered(reason)) => {
                        tracing::warn!(%reason, keyspace, "state commit: no answer from JetStream; retrying");
                        unanswered = true;
                    }
                    Err(err) => match err.code() {
                        Some(code::SEQUENCE_IN_FLIGHT | code::DUPLICATE_IN_FLIGHT) => {}
                        Some(code::WRONG_LAST_SEQUENCE | code::BATCH_DUPLICATE_ID) if unanswered => {
                            // The unanswered attempt may have landed: it did if, once this
                            // copy is current, the subject's last commit is the one this
                            // host made after `expected`.
                            self.applied_up_to(wire::last_sequence(&self.state).await?)
                                .await?;
                            if let Some((sequence, last_id)) = self.last_of(&subject).await {
                                if last_id == format!("{id}#{}", parts.len() - 1) {
                                    self.fence.lock().insert(subject.clone(), sequence);
                                    return Ok(());
                                }
                            }
                            return Err(fenced(keyspace));
                        }
                        Some(code::WRONG_LAST_SEQUENCE | code::BATCH_DUPLICATE_ID) => {
                            return Err(fenced(keyspace));
                        }
                        _ => return Err(StoreError::Unavailable(err.to_string())),
                    },
                }
                tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt.min(20)) + 5)).await;
            }
            Err(StoreError::Unavailable(
                "JetStream did not take a state commit after many attempts".into(),
            ))
        })
    }

    /// The sequence and message id of the last message on `subject`.
    async fn last_of(&self, subject: &str) -> Option<(u64, String)> {
        let message = self
            .state
            .get_last_raw_message_by_subject(subject)
            .await
            .ok()?;
        let id = message
            .headers
            .get(header::NATS_MESSAGE_ID)?
            .as_str()
            .to_owned();
        Some((message.sequence, id))
    }

    async fn applied_up_to(&self, sequence: u64) -> Result<(), StoreError> {
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(COMMIT_TIMEOUT, applied.wait_for(|at| *at >= sequence)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::ShuttingDown),
            Err(_) => Err(StoreError::Unavailable(format!(
                "this host's copy of module state is behind JetStream (at {} of {sequence})",
                *self.applied.borrow()
            ))),
        }
    }

    /// Applies one complete entry of `keyspace` to the local copy.
    fn apply(&self, keyspace: &str, change: Change) -> Result<(), StoreError> {
        match change {
            Change::Commit(writes) => self.local.open(keyspace)?.commit(writes),
            Change::Clear => self.local.open(keyspace)?.clear(),
            Change::Drop => self.local.remove(keyspace),
        }
    }

    fn record_applied(
        &self,
        sequence: u64,
        touched: &HashMap<String, u64>,
    ) -> Result<(), StoreError> {
        let mut writes = Writes::default();
        writes.put(APPLIED_KEY.to_vec(), sequence.to_be_bytes().to_vec());
        for (subject, at) in touched {
            let mut key = b"end/".to_vec();
            key.extend_from_slice(subject.as_bytes());
            writes.put(key, at.to_be_bytes().to_vec());
        }
        self.applied_space.commit(writes)?;
        {
            let mut ends = self.ends.lock();
            for (subject, at) in touched {
                ends.insert(subject.clone(), *at);
            }
        }
        self.applied.send_replace(sequence);
        Ok(())
    }
}

fn fenced(keyspace: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "another host wrote keyspace {keyspace:?} since this host last read it: this host no \
         longer runs what writes there"
    ))
}

fn read_applied(space: &dyn Keyspace) -> Result<(u64, HashMap<String, u64>), StoreError> {
    let number = |bytes: &[u8]| {
        bytes
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("a changelog mark is not 8 bytes".into()))
    };
    let applied = match space.get(APPLIED_KEY)? {
        Some(bytes) => number(&bytes)?,
        None => 0,
    };
    let mut ends = HashMap::new();
    for entry in space.range(b"end/", Some(b"end0")) {
        let (key, value) = entry?;
        let subject = String::from_utf8_lossy(&key[4..]).into_owned();
        ends.insert(subject, number(&value)?);
    }
    Ok((applied, ends))
}

/// Applies the state stream to the local copy, in order, until stopped.
async fn follow(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            result = apply_from(&shared) => {
                if let Err(err) = result {
                    tracing::warn!(%err, "following module state stopped; starting again");
                }
            }
            () = wire::stalled(&shared.state, || *shared.applied.borrow()) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

async fn apply_from(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let start = *shared.applied.borrow() + 1;
    let consumer = shared
        .state
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?.ready_chunks(256);
    // Parts of a commit not yet complete, per subject.
    let mut partial: HashMap<String, Vec<u8>> = HashMap::new();
    let mut expected = start;
    while let Some(chunk) = messages.next().await {
        let mut touched = HashMap::new();
        let mut last = expected - 1;
        let mut complete = Vec::new();
        for message in chunk {
            let message = message?;
            let sequence = message
                .info()
                .map_err(|err| anyhow::anyhow!("{err}"))?
                .stream_sequence;
            if sequence != expected {
                anyhow::bail!(
                    "the state stream jumped from {} to {sequence}",
                    expected - 1
                );
            }
            expected += 1;
            last = sequence;
            let subject = message.subject.to_string();
            let (index, count) = message
                .headers
                .as_ref()
                .and_then(|h| h.get(PART_HEADER))
                .and_then(|v| {
                    v.as_str()
                        .split_once('/')
                        .map(|(a, b)| (a.parse::<usize>(), b.parse::<usize>()))
                })
                .and_then(|(a, b)| Some((a.ok()?, b.ok()?)))
                .unwrap_or((1, 1));
            let buffer = partial.entry(subject.clone()).or_default();
            if index == 1 {
                buffer.clear();
            }
            buffer.extend_from_slice(&message.payload);
            if index == count {
                let payload = partial.remove(&subject).unwrap_or_default();
                complete.push((subject.clone(), payload));
                touched.insert(subject, sequence);
            }
        }
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for (subject, payload) in complete {
                let Some(keyspace) = keyspace_of(&subject) else {
                    tracing::warn!(subject, "a state subject that names no keyspace");
                    continue;
                };
                let change =
                    decode(&payload).with_context(|| format!("a commit of {keyspace:?}"))?;
                shared.apply(&keyspace, change)?;
            }
            shared.record_applied(last, &touched)?;
            Ok(())
        })
        .await??;
    }
    Ok(())
}

fn encode(change: &Change) -> Vec<u8> {
    let mut out = Vec::new();
    match change {
        Change::Commit(writes) => {
            out.push(0);
            out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
            for (key, value) in writes.iter() {
                out.extend_from_slice(&(key.len() as u32).to_be_bytes());
                out.extend_from_slice(key);
                match value {
                    Some(value) => {
                        out.push(1);
                        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                        out.extend_from_slice(value);
                    }
                    None => out.push(0),
                }
            }
        }
        Change::Clear => out.push(1),
        Change::Drop => out.push(2),
    }
    out
}

fn decode(mut bytes: &[u8]) -> anyhow::Result<Change> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> anyhow::Result<&'a [u8]> {
        anyhow::ensure!(bytes.len() >= n, "a truncated commit");
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn length(bytes: &mut &[u8]) -> anyhow::Result<usize> {
        let raw = take(bytes, 4)?;
        Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    match take(&mut bytes, 1)?[0] {
        0 => {
            let count = length(&mut bytes)?;
            let mut writes = Writes::default();
            for _ in 0..count {
                let key_len = length(&mut bytes)?;
                let key = take(&mut bytes, key_len)?.to_vec();
                if take(&mut bytes, 1)?[0] == 1 {
                    let value_len = length(&mut bytes)?;
                    writes.put(key, take(&mut bytes, value_len)?.to_vec());
                } else {
                    writes.remove(key);
                }
            }
            Ok(Change::Commit(writes))
        }
        1 => Ok(Change::Clear),
        2 => Ok(Change::Drop),
        other => anyhow::bail!("an unknown change kind {other}"),
    }
}
