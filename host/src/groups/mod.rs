//! Consumer groups: named, durable, server-side subscriptions shared by competing workers
//! (the event bus for services). Workers poll for leased events and ack or nack them; a
//! lease not acked in time is delivered again; an event that keeps failing is parked.
//!
//! Durability: each group keeps one progress record ([`progress::Progress`]: how far it
//! has read the log and which events read are not settled yet) and one entry per parked
//! event, in a keyspace beside the modules' state. Acks and nacks are answered only once
//! the record that settles them is durable; one writer task persists every changed group
//! in one commit and one flush for all the requests waiting (group commit). Leases are not
//! persisted: after a crash every unsettled event is delivered again, and nothing settled
//! is, so a crash re-delivers at most what was in flight (or read and not yet handed out).

mod progress;
pub mod settings;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot, watch};

use crate::store::{
    EventLog, GlobalPosition, Keyspace, Keyspaces, RecordedEvent, StoreError, StreamName,
    StreamRead, Writes,
};
use progress::Progress;
pub use settings::{GroupSettings, MAX_POLL, MAX_WAIT_MS, Source, Start};
use state::GroupState;
pub use state::{Delivery, NackAction, Parked, Settled, WorkerCounters};

/// The keyspace holding every group.
const KEYSPACE: &str = "consumer-groups";
/// How often leases are checked for expiry in the background.
const SWEEP: Duration = Duration::from_millis(100);
/// Events read from the log at once for a group (when workers could use them).
const READ_AHEAD: usize = 2000;
/// Most events looked at by one read of the log for a group.
const SCAN_LIMIT: usize = 50_000;

/// What can go wrong with a group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("no consumer group named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One group: its state behind a lock, and a signal for polls waiting on it.
pub struct Group {
    pub name: String,
    state: Mutex<GroupState>,
    wake: Notify,
    deleted: AtomicBool,
}

/// Every consumer group of this server.
pub struct ConsumerGroups {
    log: Arc<dyn EventLog>,
    keyspace: Arc<dyn Keyspace>,
    groups: RwLock<BTreeMap<String, Arc<Group>>>,
    /// Serializes writes to the keyspace (persists, creations, deletions).
    writing: Mutex<()>,
    persist: Mutex<Option<std::sync::mpsc::Sender<oneshot::Sender<Result<(), String>>>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn settings_key(name: &str) -> Vec<u8> {
    [b"s\0", name.as_bytes()].concat()
}

fn progress_key(name: &str) -> Vec<u8> {
    [b"p\0", name.as_bytes()].concat()
}

fn parked_prefix(name: &str) -> Vec<u8> {
    [b"k\0", name.as_bytes(), b"\0"].concat()
}

fn parked_key(name: &str, position: GlobalPosition) -> Vec<u8> {
    [parked_prefix(name), position.to_be_bytes().to_vec()].concat()
}

/// The end of a key prefix's range (the prefix with its last byte raised).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl ConsumerGroups {
    /// Loads every group from `keyspaces` and starts the background work (expiring leases,
    /// waking polls when the log grows, persisting). Must run inside a tokio runtime.
    ///
    /// # Errors
    /// Storage failures, or damaged records.
    pub fn open(
        log: Arc<dyn EventLog>,
        keyspaces: &dyn Keyspaces,
    ) -> Result<Arc<Self>, StoreError> {
        let keyspace = keyspaces.open(KEYSPACE)?;
        let mut groups = BTreeMap::new();
        for entry in keyspace.range(b"s\0", Some(b"s\x01")) {
            let (key, value) = entry?;
            let name = String::from_utf8_lossy(&key[2..]).into_owned();
            let corrupt =
                |what: String| StoreError::Corrupt(format!("consumer group {name:?}: {what}"));
            let settings_json: Value =
                serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
            let settings = GroupSettings::from_json(&settings_json).map_err(corrupt)?;
            let progress = match keyspace.get(&progress_key(&name))? {
                Some(bytes) => Progress::decode(&bytes).map_err(corrupt)?,
                None => Progress::default(),
            };
            let positions: Vec<GlobalPosition> = progress.pending.iter().map(|(p, _)| *p).collect();
            let found = events_at(log.as_ref(), &positions)?;
            let events = progress
                .pending
                .iter()
                .filter_map(|(position, deliveries)| {
                    found.get(position).map(|e| (e.clone(), *deliveries))
                })
                .collect();
            let mut parked_entries = Vec::new();
            let prefix = parked_prefix(&name);
            for entry in keyspace.range(&prefix, Some(&prefix_end(&prefix))) {
                let (key, value) = entry?;
                let position = key[prefix.len()..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("a parked entry with a damaged key".into()))?;
                let record: Value =
                    serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
                parked_entries.push((position, record));
            }
            let parked_positions: Vec<_> = parked_entries.iter().map(|(p, _)| *p).collect();
            let parked_events = events_at(log.as_ref(), &parked_positions)?;
            let parked = parked_entries
                .into_iter()
                .filter_map(|(position, record)| {
                    Some(Parked {
                        event: parked_events.get(&position)?.clone(),
                        reason: record["reason"].as_str().unwrap_or_default().to_owned(),
                        deliveries: record["deliveries"].as_u64().unwrap_or(0) as u32,
                    })
                })
                .collect();
            let state = GroupState::new(settings, &progress, events, parked);
            groups.insert(name.clone(), Arc::new(Group::new(name, state)));
        }
        let (persist, requests) = std::sync::mpsc::channel();
        let (stop, stopping) = watch::channel(false);
        let this = Arc::new(Self {
            log,
            keyspace,
            groups: RwLock::new(groups),
            writing: Mutex::new(()),
            persist: Mutex::new(Some(persist)),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new()
            .name("refold-groups".into())
            .spawn(move || persisting(&weak, &requests))
            .map_err(|err| {
                StoreError::Storage(format!("cannot start the groups' writer: {err}"))
            })?;
        *this.tasks.lock() = vec![tokio::spawn(watching(Arc::downgrade(&this), stopping))];
        Ok(this)
    }

    /// Stops the background work and persists what changed.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        // Ends the writer thread once it has answered what was queued.
        self.persist.lock().take();
        if let Err(err) = self.persist_all() {
            tracing::error!(%err, "consumer groups: the last progress could not be persisted");
        }
    }

    pub fn list(&self) -> Vec<Arc<Group>> {
        self.groups.read().values().cloned().collect()
    }

    /// # Errors
    /// [`GroupError::NotFound`].
    pub fn get(&self, name: &str) -> Result<Arc<Group>, GroupError> {
        self.groups
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| GroupError::NotFound(name.to_owned()))
    }

    /// Creates group `name`, or updates its settings (where a group starts is fixed when it
    /// is created). Returns whether it was created. Durable when it returns.
    ///
    /// # Errors
    /// A bad name, or storage failures.
    pub fn put(&self, name: &str, settings: GroupSettings) -> Result<bool, GroupError> {
        settings::validate_name(name).map_err(GroupError::Invalid)?;
        let _writing = self.writing.lock();
        if let Some(group) = self.groups.read().get(name).cloned() {
            let mut state = group.state.lock();
            let mut settings = settings;
            settings.start = state.settings.start;
            let mut writes = Writes::default();
            writes.put(settings_key(name), settings.to_json().to_string());
            self.keyspace.commit(writes)?;
            self.keyspace.flush()?;
            state.update(settings);
            drop(state);
            group.wake.notify_waiters();
            return Ok(false);
        }
        let scanned_to = match settings.start {
            Start::Beginning => 0,
            Start::End => self.log.head(),
            Start::Position(position) => position,
        };
        let progress = Progress {
            scanned_to,
            ..Progress::default()
        };
        let mut writes = Writes::default();
        // Whatever a deleted group of this name left behind goes.
        let prefix = parked_prefix(name);
        for entry in self.keyspace.range(&prefix, Some(&prefix_end(&prefix))) {
            writes.remove(entry?.0);
        }
        writes.put(settings_key(name), settings.to_json().to_string());
        writes.put(progress_key(name), progress.encode());
        self.keyspace.commit(writes)?;
        self.keyspace.flush()?;
        let state = GroupState::new(settings, &progress, Vec::new(), Vec::new());
        self.groups.write().insert(
            name.to_owned(),
            Arc::new(Group::new(name.to_owned(), state)),
        );
        Ok(true)
    }

    /// Removes group `name` with its progress and parked events.
    ///
    /// # Errors
    /// [`GroupError::NotFound`], or storage failures.
    pub fn delete(&self, name: &str) -> Result<(), GroupError> {
        let _writing = self.writing.lock();
        let group = self
            .groups
            .write()
            .remove(name)
            .ok_or_else(|| GroupError::NotFound(name.to_owned()))?;
        group.deleted.store(true, AtomicOrdering::SeqCst);
        group.wake.notify_waiters();
        let mut writes = Writes::default();
        writes.remove(settings_key(name));
        writes.remove(progress_key(name));
        let prefix = parked_prefix(name);
        for entry in self.keyspace.range(&prefix, Some(&prefix_end(&prefix))) {
            writes.remove(entry?.0);
        }
        self.keyspace.commit(writes)?;
        self.keyspace.flush()?;
        Ok(())
    }

    /// Leases up to `max` events of group `name` to `worker`, waiting up to `wait` for at
    /// least one.
    ///
    /// # Errors
    /// [`GroupError::NotFound`] (also when the group is deleted while waiting), or storage
    /// failures reading the log.
    pub async fn poll(
        &self,
        name: &str,
        max: usize,
        wait: Duration,
        worker: &str,
    ) -> Result<Vec<Delivery>, GroupError> {
        let group = self.get(name)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let woken = group.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // Reading the log blocks: only then on the blocking pool.
            let taken = match group.take_ready(self.log.head(), max, worker) {
                Some(taken) => taken,
                None => {
                    let log = self.log.clone();
                    let group = group.clone();
                    let worker = worker.to_owned();
                    tokio::task::spawn_blocking(move || group.take(log.as_ref(), max, &worker))
                        .await
                        .map_err(|err| StoreError::Storage(format!("a poll failed: {err}")))??
                }
            };
            let now = tokio::time::Instant::now();
            if !taken.is_empty() || now >= deadline {
                return Ok(taken);
            }
            let mut until = deadline;
            if let Some(expiry) = group.state.lock().next_expiry() {
                until = until.min(tokio::time::Instant::from_std(expiry));
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(until) => {}
            }
            if group.deleted.load(AtomicOrdering::SeqCst) {
                return Err(GroupError::NotFound(name.to_owned()));
            }
        }
    }

    /// Acknowledges leased events; durable when it returns.
    ///
    /// # Errors
    /// [`GroupError::NotFound`], or the progress could not be persisted.
    pub async fn ack(&self, name: &str, leases: &[String]) -> Result<Settled, GroupError> {
        let group = self.get(name)?;
        let settled = group.state.lock().ack(leases, Instant::now());
        if settled.count > 0 {
            group.wake.notify_waiters();
            self.persisted().await?;
        }
        Ok(settled)
    }

    /// Gives leased events back; durable when it returns.
    ///
    /// # Errors
    /// [`GroupError::NotFound`], or the progress could not be persisted.
    pub async fn nack(
        &self,
        name: &str,
        leases: &[String],
        action: NackAction,
        reason: &str,
    ) -> Result<Settled, GroupError> {
        let group = self.get(name)?;
        let settled = group
            .state
            .lock()
            .nack(leases, action, reason, Instant::now());
        if settled.count > 0 {
            group.wake.notify_waiters();
            self.persisted().await?;
        }
        Ok(settled)
    }

    /// Puts every parked event of group `name` back for delivery; durable when it returns.
    ///
    /// # Errors
    /// [`GroupError::NotFound`], or the progress could not be persisted.
    pub async fn replay_parked(&self, name: &str) -> Result<usize, GroupError> {
        let group = self.get(name)?;
        let count = group.state.lock().replay_parked();
        if count > 0 {
            group.wake.notify_waiters();
            self.persisted().await?;
        }
        Ok(count)
    }

    /// Resolves once every change made before the call is durable.
    async fn persisted(&self) -> Result<(), GroupError> {
        let (done, persisted) = oneshot::channel();
        self.persist
            .lock()
            .as_ref()
            .ok_or(StoreError::ShuttingDown)?
            .send(done)
            .map_err(|_| StoreError::ShuttingDown)?;
        persisted
            .await
            .map_err(|_| StoreError::ShuttingDown)?
            .map_err(|message| GroupError::Store(StoreError::Storage(message)))
    }

    /// Writes every changed group's progress and parked changes in one commit, then flushes.
    fn persist_all(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock();
        let mut writes = Writes::default();
        let mut taken = Vec::new();
        for group in self.groups.read().values() {
            if group.deleted.load(AtomicOrdering::SeqCst) {
                continue;
            }
            let Some((progress, parked)) = group.state.lock().take_changes() else {
                continue;
            };
            writes.put(progress_key(&group.name), progress.encode());
            for (position, entry) in &parked {
                let key = parked_key(&group.name, *position);
                match entry {
                    Some(p) => writes.put(
                        key,
                        json!({"reason": p.reason, "deliveries": p.deliveries}).to_string(),
                    ),
                    None => writes.remove(key),
                }
            }
            taken.push((group.clone(), parked));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let result = self
            .keyspace
            .commit(writes)
            .and_then(|()| self.keyspace.flush());
        if result.is_err() {
            for (group, parked) in taken {
                group.state.lock().restore_changes(parked);
            }
        }
        result
    }

    /// Expires leases due in every group, waking the polls that may now get events.
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut parked_any = false;
        for group in self.list() {
            let mut state = group.state.lock();
            if state.next_expiry().is_some_and(|at| at <= now) {
                let parked_before = state.parked_count();
                state.expire(now);
                parked_any |= state.parked_count() != parked_before;
                drop(state);
                group.wake.notify_waiters();
            }
        }
        parked_any
    }

    /// A group's figures now.
    pub fn snapshot(&self, group: &Group) -> GroupSnapshot {
        let head = self.log.head();
        let state = group.state.lock();
        let mut workers: Vec<(String, WorkerCounters)> = state
            .workers
            .iter()
            .map(|(name, counters)| (name.to_string(), counters.clone()))
            .collect();
        workers.sort_by(|a, b| a.0.cmp(&b.0));
        let position = state.position();
        GroupSnapshot {
            settings: state.settings.clone(),
            position,
            lag: head.saturating_sub(position),
            in_flight: state.in_flight(),
            parked: state.parked_count(),
            delivered: state.delivered,
            acked: state.acked,
            workers,
        }
    }

    /// A group as `GET /subscriptions/{group}` shows it.
    pub fn status(&self, group: &Group) -> Value {
        let s = self.snapshot(group);
        let now = Instant::now();
        let workers: Vec<Value> = s
            .workers
            .iter()
            .map(|(name, c)| {
                json!({
                    "worker": name,
                    "delivered": c.delivered,
                    "acked": c.acked,
                    "nacked": c.nacked,
                    "in_flight": c.in_flight,
                    "idle_ms": c.last_seen.map(|t| now.saturating_duration_since(t).as_millis() as u64),
                })
            })
            .collect();
        let mut value = s.settings.to_json();
        value["group"] = json!(group.name);
        value["position"] = json!(s.position);
        value["lag"] = json!(s.lag);
        value["in_flight"] = json!(s.in_flight);
        value["parked"] = json!(s.parked);
        value["delivered"] = json!(s.delivered);
        value["acked"] = json!(s.acked);
        value["workers"] = Value::Array(workers);
        value
    }
}

/// A group's figures at one moment.
pub struct GroupSnapshot {
    pub settings: GroupSettings,
    pub position: GlobalPosition,
    /// Log events after the group's position.
    pub lag: u64,
    pub in_flight: usize,
    pub parked: usize,
    pub delivered: u64,
    pub acked: u64,
    /// Per worker, by name.
    pub workers: Vec<(String, WorkerCounters)>,
}

impl Group {
    fn new(name: String, state: GroupState) -> Self {
        Self {
            name,
            state: Mutex::new(state),
            wake: Notify::new(),
            deleted: AtomicBool::new(false),
        }
    }

    /// Parked events from `from` on, up to `limit`, and where the next page starts.
    pub fn parked(
        &self,
        from: GlobalPosition,
        limit: usize,
    ) -> (Vec<Parked>, Option<GlobalPosition>) {
        self.state.lock().parked(from, limit)
    }

    /// Leases what is ready without reading the log, unless the log has more that workers
    /// could use now (`None`: then [`Self::take`]).
    fn take_ready(&self, head: GlobalPosition, max: usize, worker: &str) -> Option<Vec<Delivery>> {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.expire(now);
        if state.wants_events(max) && state.scanned_to() < head {
            return None;
        }
        Some(state.lease(max, worker, now))
    }

    /// Expires due leases, reads more of the log if workers could use it, and leases.
    fn take(
        &self,
        log: &dyn EventLog,
        max: usize,
        worker: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.expire(now);
        if state.wants_events(max) {
            read_more(&mut state, log, max)?;
        }
        Ok(state.lease(max, worker, now))
    }
}

/// Reads the group's next events from the log.
fn read_more(state: &mut GroupState, log: &dyn EventLog, asked: usize) -> Result<(), StoreError> {
    let head = log.head();
    let from = state.scanned_to();
    if from >= head {
        return Ok(());
    }
    let limit = state.room().min(asked.max(READ_AHEAD));
    if limit == 0 {
        return Ok(());
    }
    if let Source::Stream(stream) = &state.settings.source {
        // One stream: read it, not the whole log.
        let name = StreamName::parse(stream).map_err(StoreError::Storage)?;
        let revision = if from == 0 {
            0
        } else {
            log.stream_revision_after(&name, from - 1)?
        };
        let slice = log.read_stream(&name, StreamRead::forward(Some(revision), limit))?;
        let mut events: Vec<RecordedEvent> = slice
            .map(|s| s.events)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.position >= from && e.position < head)
            .collect();
        let full = events.len() >= limit;
        let scanned_to = if full {
            events.last().map_or(head, |e| e.position + 1)
        } else {
            head
        };
        let settings = &state.settings;
        events.retain(|e| settings.admits(&e.stream, &e.event_type));
        state.read(events, scanned_to);
        return Ok(());
    }
    let filter = state.settings.filter();
    let slice = log.read_all(from, limit, SCAN_LIMIT, &filter)?;
    let settings = &state.settings;
    let events = slice
        .events
        .into_iter()
        .filter(|e| settings.admits(&e.stream, &e.event_type))
        .collect();
    state.read(events, slice.scanned_to);
    Ok(())
}

/// The events at `positions` (sorted), read in runs.
fn events_at(
    log: &dyn EventLog,
    positions: &[GlobalPosition],
) -> Result<BTreeMap<GlobalPosition, Arc<RecordedEvent>>, StoreError> {
    let mut found = BTreeMap::new();
    let mut i = 0;
    while i < positions.len() {
        let start = positions[i];
        let mut end = start + 1;
        let mut j = i + 1;
        while j < positions.len() && positions[j] < end + 64 {
            end = positions[j] + 1;
            j += 1;
        }
        let wanted = &positions[i..j];
        log.scan(start..end, &mut |event| {
            if wanted.binary_search(&event.position).is_ok() {
                found.insert(event.position, Arc::new(event.to_recorded()));
            }
            true
        })?;
        i = j;
    }
    Ok(found)
}

/// The writer thread: each round persists every change made so far, for every request
/// waiting, with one flush.
fn persisting(
    groups: &std::sync::Weak<ConsumerGroups>,
    requests: &std::sync::mpsc::Receiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Ok(first) = requests.recv() {
        let mut waiting = vec![first];
        while let Ok(next) = requests.try_recv() {
            waiting.push(next);
        }
        let Some(groups) = groups.upgrade() else {
            return;
        };
        let result = groups.persist_all().map_err(|err| err.to_string());
        drop(groups);
        if let Err(err) = &result {
            tracing::error!(%err, "consumer groups: progress could not be persisted");
        }
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}

/// The watching task: wakes polls when the log grows, and expires leases.
async fn watching(groups: std::sync::Weak<ConsumerGroups>, mut stopping: watch::Receiver<bool>) {
    let mut head = match groups.upgrade() {
        Some(groups) => groups.log.watch_head(),
        None => return,
    };
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(groups) = groups.upgrade() else { return };
                for group in groups.list() {
                    group.wake.notify_waiters();
                }
            }
            _ = sweep.tick() => {
                let Some(groups) = groups.upgrade() else { return };
                if groups.sweep() {
                    // Parked by expiry: persisted soon, without anyone waiting for it.
                    let (done, _) = oneshot::channel();
                    if let Some(persist) = groups.persist.lock().as_ref() {
                        let _ = persist.send(done);
                    }
                }
            }
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}
