//! One consumer group in memory: the events it has read and not yet settled, which of them
//! are leased to whom until when, what is parked, and the counters. Pure bookkeeping: no
//! I/O happens here ([`super::ConsumerGroups`] reads the log and persists the progress).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::Progress;
use super::settings::{GroupSettings, Ordering};
use crate::store::{GlobalPosition, RecordedEvent};

/// Most unsettled events a group holds: reading further waits until some are settled.
pub const MAX_PENDING: usize = 20_000;

/// An event read and not yet settled.
struct Pending {
    event: Arc<RecordedEvent>,
    /// Deliveries so far.
    deliveries: u32,
    lease: Option<Lease>,
}

struct Lease {
    token: u64,
    worker: Arc<str>,
    expires: Instant,
}

/// An event set aside after failing too often (or on request).
#[derive(Clone)]
pub struct Parked {
    pub event: Arc<RecordedEvent>,
    pub reason: String,
    pub deliveries: u32,
}

/// An event handed to a worker.
pub struct Delivery {
    pub lease: String,
    pub delivery: u32,
    pub event: Arc<RecordedEvent>,
}

/// What a worker did, as counted since the server started.
#[derive(Clone, Default)]
pub struct WorkerCounters {
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub in_flight: u64,
    pub last_seen: Option<Instant>,
}

/// How a nack settles its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackAction {
    Retry,
    Park,
    Skip,
}

/// The outcome of an ack or nack: how many leases it settled, and which were not valid.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub count: usize,
    pub expired: Vec<String>,
}

pub struct GroupState {
    pub settings: GroupSettings,
    /// Every position below this has been looked at.
    scanned_to: GlobalPosition,
    pending: BTreeMap<GlobalPosition, Pending>,
    /// Pending events that may be handed out now, oldest first.
    ready: BTreeSet<GlobalPosition>,
    /// Pending events per stream (kept for `ordering: "stream"`).
    by_stream: HashMap<Arc<str>, BTreeSet<GlobalPosition>>,
    /// Leased events per stream (kept for `ordering: "stream"`).
    streams_in_flight: HashMap<Arc<str>, usize>,
    /// When each lease runs out.
    expiries: BTreeSet<(Instant, GlobalPosition)>,
    parked: BTreeMap<GlobalPosition, Parked>,
    /// Parked entries added (`Some`) or removed (`None`) since the last persist.
    parked_changes: Vec<(GlobalPosition, Option<Parked>)>,
    /// Events delivered and acknowledged, over the group's life.
    pub delivered: u64,
    pub acked: u64,
    pub workers: HashMap<Arc<str>, WorkerCounters>,
    /// Changed since the last persist.
    dirty: bool,
    next_token: u64,
}

impl GroupState {
    /// A group whose unsettled events and parked ones are known (after a restart, or new).
    pub fn new(
        settings: GroupSettings,
        progress: &Progress,
        events: Vec<(Arc<RecordedEvent>, u32)>,
        parked: Vec<Parked>,
    ) -> Self {
        let mut state = Self {
            settings,
            scanned_to: progress.scanned_to,
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
            by_stream: HashMap::new(),
            streams_in_flight: HashMap::new(),
            expiries: BTreeSet::new(),
            parked: parked.into_iter().map(|p| (p.event.position, p)).collect(),
            parked_changes: Vec::new(),
            delivered: progress.delivered,
            acked: progress.acked,
            workers: HashMap::new(),
            dirty: false,
            next_token: rand_token(),
        };
        for (event, deliveries) in events {
            state.add_pending(event, deliveries);
        }
        state
    }

    /// Every event before this is settled (acked, skipped or parked).
    pub fn position(&self) -> GlobalPosition {
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.scanned_to)
            .min(self.scanned_to)
    }

    pub fn scanned_to(&self) -> GlobalPosition {
        self.scanned_to
    }

    pub fn in_flight(&self) -> usize {
        self.expiries.len()
    }

    pub fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// Whether reading more of the log would give workers something to do.
    pub fn wants_events(&self, asked: usize) -> bool {
        self.ready.len() < asked && self.pending.len() < MAX_PENDING
    }

    /// Room for this many more unsettled events.
    pub fn room(&self) -> usize {
        MAX_PENDING.saturating_sub(self.pending.len())
    }

    /// Takes in the events the group admits from the log, up to `scanned_to`.
    pub fn read(&mut self, events: Vec<RecordedEvent>, scanned_to: GlobalPosition) {
        for event in events {
            if event.position >= self.scanned_to {
                self.add_pending(Arc::new(event), 0);
            }
        }
        if scanned_to > self.scanned_to {
            self.scanned_to = scanned_to;
            self.dirty = true;
        }
    }

    /// Changes the settings; events already read stay, in the new order.
    pub fn update(&mut self, settings: GroupSettings) {
        let reorder = settings.ordering != self.settings.ordering;
        self.settings = settings;
        if reorder {
            self.ready.clear();
            self.by_stream.clear();
            self.streams_in_flight.clear();
            if self.settings.ordering == Ordering::Stream {
                let events: Vec<_> = self
                    .pending
                    .values()
                    .map(|p| (p.event.clone(), p.lease.is_some()))
                    .collect();
                for (event, leased) in events {
                    self.track_stream(&event);
                    if leased {
                        self.stream_leased(&event.stream);
                    }
                }
            }
            let positions: Vec<_> = self
                .pending
                .iter()
                .filter(|(_, p)| p.lease.is_none())
                .map(|(position, _)| *position)
                .collect();
            for position in positions {
                self.make_ready(position);
            }
        }
    }

    fn add_pending(&mut self, event: Arc<RecordedEvent>, deliveries: u32) {
        let position = event.position;
        if self.settings.ordering == Ordering::Stream {
            // An event older than the stream's queue (a parked one replayed) goes first:
            // the event that was first waits again.
            if let Some(first) = self
                .by_stream
                .get(event.stream.as_str())
                .and_then(|positions| positions.first().copied())
                .filter(|first| *first > position)
            {
                self.ready.remove(&first);
            }
            self.track_stream(&event);
        }
        self.pending.insert(
            position,
            Pending {
                event,
                deliveries,
                lease: None,
            },
        );
        self.dirty = true;
        self.make_ready(position);
    }

    fn stream_leased(&mut self, stream: &str) {
        match self.streams_in_flight.get_mut(stream) {
            Some(count) => *count += 1,
            None => {
                self.streams_in_flight.insert(Arc::from(stream), 1);
            }
        }
    }

    /// A lease of an event of `stream` ended (acked, nacked or expired).
    fn stream_released(&mut self, stream: &str) {
        if let Some(count) = self.streams_in_flight.get_mut(stream) {
            *count -= 1;
            if *count == 0 {
                self.streams_in_flight.remove(stream);
            }
        }
    }

    /// Keeps `event` in its stream's queue (for `ordering: "stream"`).
    fn track_stream(&mut self, event: &RecordedEvent) {
        match self.by_stream.get_mut(event.stream.as_str()) {
            Some(positions) => {
                positions.insert(event.position);
            }
            None => {
                self.by_stream.insert(
                    Arc::from(event.stream.as_str()),
                    BTreeSet::from([event.position]),
                );
            }
        }
    }

    /// Marks `position` (pending, not leased) as ready, if the ordering lets it go now.
    fn make_ready(&mut self, position: GlobalPosition) {
        let Some(pending) = self.pending.get(&position) else {
            return;
        };
        if pending.lease.is_some() {
            return;
        }
        if self.settings.ordering == Ordering::Stream {
            let Some(positions) = self.by_stream.get(pending.event.stream.as_str()) else {
                return;
            };
            // The stream's oldest unsettled event, and none of the stream in flight (one
            // can be, behind a replayed older event).
            if positions.first() != Some(&position)
                || self
                    .streams_in_flight
                    .contains_key(pending.event.stream.as_str())
            {
                return;
            }
        }
        self.ready.insert(position);
    }

    /// Hands out up to `max` events to `worker`.
    pub fn lease(&mut self, max: usize, worker: &str, now: Instant) -> Vec<Delivery> {
        let timeout = Duration::from_millis(self.settings.ack_timeout_ms);
        let worker: Arc<str> = match self.workers.get_key_value(worker) {
            Some((name, _)) => name.clone(),
            None => Arc::from(worker),
        };
        let mut out = Vec::new();
        while out.len() < max {
            let Some(position) = self.ready.pop_first() else {
                break;
            };
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let pending = self
                .pending
                .get_mut(&position)
                .expect("ready events are pending");
            pending.deliveries += 1;
            pending.lease = Some(Lease {
                token,
                worker: worker.clone(),
                expires: now + timeout,
            });
            self.expiries.insert((now + timeout, position));
            let event = pending.event.clone();
            if self.settings.ordering == Ordering::Stream {
                self.stream_leased(&event.stream);
            }
            out.push(Delivery {
                lease: lease_string(position, token),
                delivery: self.pending[&position].deliveries,
                event,
            });
        }
        self.delivered += out.len() as u64;
        let counters = self.workers.entry(worker).or_default();
        counters.delivered += out.len() as u64;
        counters.in_flight += out.len() as u64;
        counters.last_seen = Some(now);
        out
    }

    /// Puts the events whose leases ran out back for delivery (or parks those delivered
    /// `max_deliveries` times). Returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut count = 0;
        while let Some(&(at, position)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let Some(pending) = self.pending.get_mut(&position) else {
                continue;
            };
            let Some(lease) = pending.lease.take() else {
                continue;
            };
            let event = pending.event.clone();
            if let Some(counters) = self.workers.get_mut(&lease.worker) {
                counters.in_flight = counters.in_flight.saturating_sub(1);
            }
            if self.settings.ordering == Ordering::Stream {
                self.stream_released(&event.stream);
            }
            count += 1;
            self.retry_or_park(position, "not acknowledged within ack_timeout_ms");
        }
        count
    }

    /// The next time a lease runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    fn retry_or_park(&mut self, position: GlobalPosition, why: &str) {
        let Some(pending) = self.pending.get(&position) else {
            return;
        };
        if pending.deliveries >= self.settings.max_deliveries {
            let reason = format!("{why}; parked after {} deliveries", pending.deliveries);
            self.park(position, reason);
        } else {
            self.make_ready(position);
        }
    }

    /// Acknowledges leased events: settled, never delivered again.
    pub fn ack(&mut self, leases: &[String], now: Instant) -> Settled {
        let mut settled = Settled::default();
        for lease in leases {
            match self.take_lease(lease, now) {
                Some((position, worker)) => {
                    self.settle(position);
                    self.acked += 1;
                    if let Some(counters) = self.workers.get_mut(&worker) {
                        counters.acked += 1;
                        counters.last_seen = Some(now);
                    }
                    settled.count += 1;
                }
                None => settled.expired.push(lease.clone()),
            }
        }
        settled
    }

    /// Gives leased events back: to be delivered again, parked, or skipped.
    pub fn nack(
        &mut self,
        leases: &[String],
        action: NackAction,
        reason: &str,
        now: Instant,
    ) -> Settled {
        let mut settled = Settled::default();
        for lease in leases {
            let Some((position, worker)) = self.take_lease(lease, now) else {
                settled.expired.push(lease.clone());
                continue;
            };
            if let Some(counters) = self.workers.get_mut(&worker) {
                counters.nacked += 1;
                counters.last_seen = Some(now);
            }
            match action {
                NackAction::Retry => {
                    self.retry_or_park(position, &format!("retried: {reason}"));
                }
                NackAction::Park => self.park(position, reason.to_owned()),
                NackAction::Skip => {
                    self.settle(position);
                }
            }
            self.dirty = true;
            settled.count += 1;
        }
        settled
    }

    /// The position of a valid lease, taken off its event (with the worker that held it).
    fn take_lease(&mut self, lease: &str, now: Instant) -> Option<(GlobalPosition, Arc<str>)> {
        let (position, token) = parse_lease(lease)?;
        let pending = self.pending.get_mut(&position)?;
        let held = pending.lease.as_ref()?;
        if held.token != token || held.expires <= now {
            return None;
        }
        let held = pending.lease.take()?;
        let event = pending.event.clone();
        self.expiries.remove(&(held.expires, position));
        if self.settings.ordering == Ordering::Stream {
            self.stream_released(&event.stream);
        }
        if let Some(counters) = self.workers.get_mut(&held.worker) {
            counters.in_flight = counters.in_flight.saturating_sub(1);
        }
        Some((position, held.worker))
    }

    /// Removes a pending event for good; the next of its stream may go.
    fn settle(&mut self, position: GlobalPosition) -> Option<Pending> {
        let pending = self.pending.remove(&position)?;
        self.ready.remove(&position);
        self.dirty = true;
        let stream = pending.event.stream.as_str();
        let mut next = None;
        if let Some(positions) = self.by_stream.get_mut(stream) {
            positions.remove(&position);
            next = positions.first().copied();
            if positions.is_empty() {
                self.by_stream.remove(stream);
            }
        }
        if let Some(next) = next {
            self.make_ready(next);
        }
        Some(pending)
    }

    fn park(&mut self, position: GlobalPosition, reason: String) {
        if let Some(pending) = self.settle(position) {
            let parked = Parked {
                event: pending.event,
                reason,
                deliveries: pending.deliveries,
            };
            self.parked_changes.push((position, Some(parked.clone())));
            self.parked.insert(position, parked);
        }
    }

    /// Parked events from `from` on, up to `limit`, and the position to list from next.
    pub fn parked(
        &self,
        from: GlobalPosition,
        limit: usize,
    ) -> (Vec<Parked>, Option<GlobalPosition>) {
        let mut page: Vec<Parked> = self
            .parked
            .range(from..)
            .take(limit + 1)
            .map(|(_, p)| p.clone())
            .collect();
        let next = if page.len() > limit {
            page.pop().map(|p| p.event.position)
        } else {
            None
        };
        (page, next)
    }

    /// Puts every parked event back for delivery, delivery counts reset.
    pub fn replay_parked(&mut self) -> usize {
        let parked = std::mem::take(&mut self.parked);
        let count = parked.len();
        for (position, entry) in parked {
            self.parked_changes.push((position, None));
            self.add_pending(entry.event, 0);
        }
        count
    }

    /// What to persist, if anything changed: the progress record and the parked changes.
    pub fn take_changes(&mut self) -> Option<(Progress, Vec<(GlobalPosition, Option<Parked>)>)> {
        if !self.dirty && self.parked_changes.is_empty() {
            return None;
        }
        self.dirty = false;
        let progress = Progress {
            scanned_to: self.scanned_to,
            delivered: self.delivered,
            acked: self.acked,
            pending: self
                .pending
                .iter()
                .map(|(position, p)| (*position, p.deliveries))
                .collect(),
        };
        Some((progress, std::mem::take(&mut self.parked_changes)))
    }

    /// Puts back changes that could not be persisted, so the next persist carries them.
    pub fn restore_changes(&mut self, mut changes: Vec<(GlobalPosition, Option<Parked>)>) {
        self.dirty = true;
        changes.append(&mut self.parked_changes);
        self.parked_changes = changes;
    }
}

fn lease_string(position: GlobalPosition, token: u64) -> String {
    format!("{position:x}.{token:016x}")
}

fn parse_lease(lease: &str) -> Option<(GlobalPosition, u64)> {
    let (position, token) = lease.split_once('.')?;
    if token.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(position, 16).ok()?,
        u64::from_str_radix(token, 16).ok()?,
    ))
}

fn rand_token() -> u64 {
    let uuid = uuid::Uuid::new_v4();
    let (high, _) = uuid.as_u64_pair();
    high
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::settings::GroupSettings;

    fn event(position: u64, stream: &str) -> RecordedEvent {
        RecordedEvent {
            id: uuid::Uuid::new_v4(),
            stream: stream.into(),
            revision: 0,
            position,
            event_type: "T".into(),
            data: "{}".into(),
            metadata: "{}".into(),
            recorded_at_micros: 0,
        }
    }

    fn group(settings: serde_json::Value, streams: &[&str]) -> GroupState {
        let settings = GroupSettings::from_json(&settings).unwrap();
        let mut state = GroupState::new(settings, &Progress::default(), Vec::new(), Vec::new());
        let events = streams
            .iter()
            .enumerate()
            .map(|(i, s)| event(i as u64, s))
            .collect();
        state.read(events, streams.len() as u64);
        state
    }

    #[test]
    fn acked_events_settle_and_the_position_moves_past_them() {
        let now = Instant::now();
        let mut g = group(serde_json::json!({}), &["a-1", "a-2", "a-3"]);
        let first = g.lease(2, "w", now);
        assert_eq!(first.len(), 2);
        let rest = g.lease(10, "w", now);
        assert_eq!(rest.len(), 1);
        assert_eq!(g.in_flight(), 3);
        let out = g.ack(&[first[1].lease.clone()], now);
        assert_eq!(out.count, 1);
        assert_eq!(g.position(), 0);
        g.ack(&[first[0].lease.clone()], now);
        assert_eq!(g.position(), 2);
        // Twice, made up, or malformed: expired, never acked.
        let again = g.ack(
            &[
                first[0].lease.clone(),
                "2.0000000000000000".into(),
                "x".into(),
            ],
            now,
        );
        assert_eq!(again.count, 0);
        assert_eq!(again.expired.len(), 3);
        assert_eq!(g.acked, 2);
    }

    #[test]
    fn an_expired_lease_is_delivered_again_then_parked() {
        let now = Instant::now();
        let mut g = group(
            serde_json::json!({"ack_timeout_ms": 10, "max_deliveries": 2}),
            &["a-1"],
        );
        let first = g.lease(1, "w", now);
        assert!(g.lease(1, "w", now).is_empty());
        let later = now + Duration::from_millis(11);
        assert_eq!(g.expire(later), 1);
        let late = g.ack(&[first[0].lease.clone()], later);
        assert_eq!(late.expired.len(), 1);
        let second = g.lease(1, "v", later);
        assert_eq!(second[0].delivery, 2);
        assert_eq!(g.expire(later + Duration::from_millis(11)), 1);
        assert_eq!(g.parked_count(), 1);
        assert_eq!(g.position(), 1);
        assert_eq!(g.replay_parked(), 1);
        assert_eq!(g.position(), 0);
        let third = g.lease(1, "v", later);
        assert_eq!(third[0].delivery, 1);
    }

    #[test]
    fn a_replayed_event_goes_first_in_its_stream_and_waits_for_the_one_in_flight() {
        let now = Instant::now();
        let mut g = group(
            serde_json::json!({"ordering": "stream"}),
            &["a-1", "a-1", "a-1"],
        );
        let first = g.lease(10, "w", now);
        g.nack(&[first[0].lease.clone()], NackAction::Park, "later", now);
        // Event 1 is in flight when event 0 comes back: 0 waits for 1.
        let second = g.lease(10, "w", now);
        assert_eq!(second[0].event.position, 1);
        assert_eq!(g.replay_parked(), 1);
        assert!(
            g.lease(10, "w", now).is_empty(),
            "one event of a-1 is in flight"
        );
        g.ack(&[second[0].lease.clone()], now);
        let third = g.lease(10, "w", now);
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].event.position, 0, "the replayed event goes first");
        g.ack(&[third[0].lease.clone()], now);
        assert_eq!(g.lease(10, "w", now)[0].event.position, 2);
    }

    #[test]
    fn a_replayed_event_takes_the_place_of_a_ready_one() {
        let now = Instant::now();
        let mut g = group(serde_json::json!({"ordering": "stream"}), &["a-1", "a-1"]);
        let first = g.lease(10, "w", now);
        g.nack(&[first[0].lease.clone()], NackAction::Park, "later", now);
        assert_eq!(g.replay_parked(), 1);
        let next = g.lease(10, "w", now);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].event.position, 0);
    }

    #[test]
    fn switching_to_stream_ordering_applies_to_events_already_read() {
        let now = Instant::now();
        let mut g = group(serde_json::json!({}), &["a-1", "a-1", "a-2"]);
        let mut settings = g.settings.clone();
        settings.ordering = Ordering::Stream;
        g.update(settings);
        let first = g.lease(10, "w", now);
        let positions: Vec<u64> = first.iter().map(|d| d.event.position).collect();
        assert_eq!(positions, vec![0, 2]);
        g.ack(&[first[0].lease.clone()], now);
        assert_eq!(g.lease(10, "w", now)[0].event.position, 1);
    }

    #[test]
    fn stream_ordering_keeps_one_event_of_a_stream_in_flight() {
        let now = Instant::now();
        let mut g = group(
            serde_json::json!({"ordering": "stream"}),
            &["a-1", "a-1", "a-2", "a-1"],
        );
        let first = g.lease(10, "w", now);
        let positions: Vec<u64> = first.iter().map(|d| d.event.position).collect();
        assert_eq!(positions, vec![0, 2]);
        let out = g.nack(&[first[0].lease.clone()], NackAction::Retry, "later", now);
        assert_eq!(out.count, 1);
        let again = g.lease(10, "w", now);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].event.position, 0);
        g.ack(&[again[0].lease.clone()], now);
        let next = g.lease(10, "w", now);
        assert_eq!(next[0].event.position, 1);
    }
}
