//! What a module receives (`Event`) and what it asks for (`Filter`).

use std::borrow::Cow;
use std::cell::OnceCell;

use serde::Deserialize;

#[cfg(feature = "contract-0-1")]
use crate::bindings::{RawEvent, RawFilter};

/// One recorded event, as the host hands it to a module.
///
/// The payload and metadata stay JSON text until asked for, so an event that a module
/// ignores costs nothing to decode. Inside a module the event borrows its text from the
/// call's buffer (the `'a`); `Event::new` makes one that owns its text, for tests.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    id: Id<'a>,
    stream: Cow<'a, str>,
    revision: u64,
    position: u64,
    event_type: Cow<'a, str>,
    data: Cow<'a, str>,
    /// `None` for `{}`.
    metadata: Option<Cow<'a, str>>,
    recorded_at: u64,
}

/// An event's id: as text (contract 0.1, tests), or as the two halves of a UUID
/// (contract 0.2), put in text only when asked for.
#[derive(Clone, Debug)]
enum Id<'a> {
    Text(Cow<'a, str>),
    Halves {
        hi: u64,
        lo: u64,
        text: OnceCell<String>,
    },
}

impl Event<'static> {
    /// An event of `event_type` on `stream` with `data` as its JSON payload, for tests and
    /// tools. Everything else starts at zero (revision, position, recorded-at), with an
    /// all-zero id and `{}` metadata; the `with_*` methods set them.
    pub fn new(
        stream: impl Into<String>,
        event_type: impl Into<String>,
        data: impl Into<String>,
    ) -> Self {
        Self {
            id: Id::Text(Cow::Borrowed("00000000-0000-0000-0000-000000000000")),
            stream: Cow::Owned(stream.into()),
            revision: 0,
            position: 0,
            event_type: Cow::Owned(event_type.into()),
            data: Cow::Owned(data.into()),
            metadata: None,
            recorded_at: 0,
        }
    }
}

impl<'a> Event<'a> {
    /// An event of contract 0.2, borrowing its text from the call.
    #[cfg_attr(feature = "contract-0-1", allow(dead_code))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn borrowed(
        (hi, lo): (u64, u64),
        stream: &'a str,
        revision: u64,
        position: u64,
        event_type: &'a str,
        data: &'a str,
        metadata: Option<&'a str>,
        recorded_at: u64,
    ) -> Self {
        Self {
            id: Id::Halves {
                hi,
                lo,
                text: OnceCell::new(),
            },
            stream: Cow::Borrowed(stream),
            revision,
            position,
            event_type: Cow::Borrowed(event_type),
            data: Cow::Borrowed(data),
            metadata: metadata.map(Cow::Borrowed),
            recorded_at,
        }
    }

    /// This event with another id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Id::Text(Cow::Owned(id.into()));
        self
    }

    /// This event with another revision (its position in its stream).
    #[must_use]
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        self
    }

    /// This event with another position in the global log.
    #[must_use]
    pub fn with_position(mut self, position: u64) -> Self {
        self.position = position;
        self
    }

    /// This event with other metadata (JSON object text).
    #[must_use]
    pub fn with_metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = Some(Cow::Owned(metadata.into()));
        self
    }

    /// This event with another recording time, in microseconds since the Unix epoch.
    #[must_use]
    pub fn with_recorded_at_micros(mut self, micros: u64) -> Self {
        self.recorded_at = micros;
        self
    }

    /// The event's UUID, hyphenated lower-case.
    pub fn id(&self) -> &str {
        match &self.id {
            Id::Text(text) => text,
            Id::Halves { hi, lo, text } => {
                text.get_or_init(|| String::from_utf8_lossy(&hyphenated(*hi, *lo)).into_owned())
            }
        }
    }

    /// The stream it was appended to (`account-42`).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The stream's category: the part of its name before the first `-` (`account`), or
    /// the whole name when it has no `-`.
    pub fn category(&self) -> &str {
        category_of(&self.stream)
    }

    /// 0-based position of the event in its stream.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// 0-based position of the event in the global log.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The event type (`Deposited`).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// When the server recorded the event, in microseconds since the Unix epoch.
    ///
    /// This is the module's "now". Inside a module WASI's clocks are frozen: the wall clock
    /// always reads the Unix epoch and the monotonic clock always reads 0, so
    /// `SystemTime::now()` is 1970-01-01 and no time passes. The recording time is part of
    /// the event, so a replay sees the same one:
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    ///
    /// let event = refold_guest::Event::new("order-7", "OrderPlaced", "{}")
    ///     .with_recorded_at_micros(1_700_000_000_000_000);
    /// let now: SystemTime = UNIX_EPOCH + Duration::from_micros(event.recorded_at_micros());
    /// assert_eq!(now, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    /// ```
    pub fn recorded_at_micros(&self) -> u64 {
        self.recorded_at
    }

    /// A 64-bit value of this event's own, the same every time the event is handled: the
    /// seed of [`random`](Self::random).
    ///
    /// Inside a module WASI's randomness is constant (every draw returns the same bytes),
    /// so that a replay of the same events yields the same state. A random-looking value
    /// must therefore come from the event itself. Different events (different ids or
    /// positions) give different seeds, except by a 64-bit coincidence.
    ///
    /// The derivation is part of this crate's contract and will not change between its
    /// versions, since state written with it must survive an upgrade of the SDK. With
    /// wrapping (mod 2^64) arithmetic and `id` as the UTF-8 bytes of [`id`](Self::id):
    ///
    /// ```text
    /// seed = splitmix64(fnv1a64(id) ^ position)
    ///
    /// fnv1a64(bytes):  h = 0xcbf29ce484222325
    ///                  for each byte b: h = (h ^ b) * 0x100000001b3
    /// splitmix64(x):   z = x + 0x9e3779b97f4a7c15
    ///                  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
    ///                  z = (z ^ (z >> 27)) * 0x94d049bb133111eb
    ///                  z ^ (z >> 31)
    /// ```
    ///
    /// ```
    /// use refold_guest::Event;
    ///
    /// let event = Event::new("order-7", "OrderPlaced", "{}")
    ///     .with_id("5f0c1e2a-8d3b-4c6e-9a7f-0b1c2d3e4f50")
    ///     .with_position(42);
    /// assert_eq!(event.seed(), 0x7c5e_6aad_20b1_200b);
    /// assert_eq!(event.seed(), event.clone().seed());
    /// ```
    pub fn seed(&self) -> u64 {
        let hash = match &self.id {
            Id::Text(text) => fnv1a64(text.as_bytes()),
            Id::Halves { hi, lo, .. } => fnv1a64(&hyphenated(*hi, *lo)),
        };
        splitmix64(hash ^ self.position)
    }

    /// The `n`th value (from 0) of this event's random stream: a SplitMix64 generator
    /// whose state starts at [`seed`](Self::seed). The same event gives the same values in
    /// every replay, in any instance, however the events are batched.
    ///
    /// Give each use its own `n` (`0` for a discount, `1` for a sample, ...) so that they
    /// are independent of each other. Exactly, with the functions of [`seed`](Self::seed):
    ///
    /// ```text
    /// random(n) = splitmix64(seed + n * 0x9e3779b97f4a7c15)
    /// ```
    ///
    /// ```
    /// use refold_guest::Event;
    ///
    /// let event = Event::new("draw-1", "Drawn", "{}")
    ///     .with_id("5f0c1e2a-8d3b-4c6e-9a7f-0b1c2d3e4f50")
    ///     .with_position(42);
    /// assert_eq!(event.random(0), 0x78de_bb20_d665_d1ae);
    /// assert_eq!(event.random(1), 0xfac5_1a8e_5ef5_1cea);
    ///
    /// // A die roll, one of 1..=6, the same whenever this event is replayed.
    /// let roll = 1 + event.random(0) % 6;
    /// assert!((1..=6).contains(&roll));
    /// ```
    pub fn random(&self, n: u64) -> u64 {
        splitmix64(self.seed().wrapping_add(n.wrapping_mul(SPLITMIX64_GAMMA)))
    }

    /// The payload decoded as `T`. Borrowing types such as `&str` fields work too.
    ///
    /// # Errors
    /// A message naming the event type and what did not fit when the payload is not a
    /// valid `T` (a missing field, a string where a number belongs, ...).
    pub fn data<'s, T: Deserialize<'s>>(&'s self) -> Result<T, String> {
        serde_json::from_str(&self.data)
            .map_err(|e| format!("invalid {} data: {e}", self.event_type))
    }

    /// The payload as JSON text, exactly as stored.
    pub fn data_json(&self) -> &str {
        &self.data
    }

    /// The metadata decoded as `T`.
    ///
    /// # Errors
    /// A message saying what did not fit when the metadata is not a valid `T`.
    pub fn metadata<'s, T: Deserialize<'s>>(&'s self) -> Result<T, String> {
        serde_json::from_str(self.metadata_json())
            .map_err(|e| format!("invalid {} metadata: {e}", self.event_type))
    }

    /// The metadata as JSON object text (`{}` when the client sent none).
    pub fn metadata_json(&self) -> &str {
        self.metadata.as_deref().unwrap_or("{}")
    }

    /// `message` prefixed with where this event sits, so a fault report names it:
    /// `position 17 (account-1 revision 3, Withdrawn, id …): message`.
    pub(crate) fn describe_failure(&self, message: &str) -> String {
        format!(
            "position {} ({} revision {}, {}, id {}): {message}",
            self.position,
            self.stream,
            self.revision,
            self.event_type,
            self.id()
        )
    }
}

/// A 0.1 event record, owned.
#[cfg(feature = "contract-0-1")]
impl From<RawEvent> for Event<'static> {
    fn from(raw: RawEvent) -> Self {
        Self {
            id: Id::Text(Cow::Owned(raw.id)),
            stream: Cow::Owned(raw.stream_id),
            revision: raw.revision,
            position: raw.position,
            event_type: Cow::Owned(raw.event_type),
            data: Cow::Owned(raw.data),
            metadata: (raw.metadata != "{}").then_some(Cow::Owned(raw.metadata)),
            recorded_at: raw.recorded_at,
        }
    }
}

/// A UUID given as two big-endian halves, hyphenated lower-case.
fn hyphenated(hi: u64, lo: u64) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    text
}

/// SplitMix64's increment: the golden ratio scaled to 2^64.
const SPLITMIX64_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// 64-bit FNV-1a of `bytes`. Part of [`Event::seed`]'s fixed derivation.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The output of a SplitMix64 generator whose state is `state`, before the step: its
/// increment, then its finalizer. Part of [`Event::seed`]'s fixed derivation.
fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(SPLITMIX64_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The category of a stream name: the part before its first `-`.
pub fn category_of(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// Which events a module wants; the host skips the rest without calling the module.
///
/// An empty list means "all", and an event must match both lists:
///
/// ```
/// use refold_guest::Filter;
///
/// let filter = Filter::all()
///     .categories(["account"])
///     .event_types(["AccountOpened", "Deposited", "Withdrawn"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    event_types: Vec<String>,
    categories: Vec<String>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of these types (added to any already named).
    #[must_use]
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types.extend(types.into_iter().map(Into::into));
        self
    }

    /// Only events on streams of these categories (added to any already named).
    #[must_use]
    pub fn categories<S: Into<String>>(mut self, categories: impl IntoIterator<Item = S>) -> Self {
        self.categories
            .extend(categories.into_iter().map(Into::into));
        self
    }

    /// Whether `event` passes this filter, as the host decides it.
    pub fn matches(&self, event: &Event<'_>) -> bool {
        let wanted =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        wanted(&self.event_types, event.event_type()) && wanted(&self.categories, event.category())
    }

    #[cfg(feature = "contract-0-1")]
    pub(crate) fn into_raw(self) -> RawFilter {
        RawFilter {
            event_types: self.event_types,
            categories: self.categories,
        }
    }

    #[cfg(not(feature = "contract-0-1"))]
    pub(crate) fn into_raw_v2(self) -> crate::bindings::v2::RawFilter {
        crate::bindings::v2::RawFilter {
            event_types: self.event_types,
            categories: self.categories,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_category_is_the_stream_name_before_its_first_dash() {
        assert_eq!(category_of("account-42-x"), "account");
        assert_eq!(category_of("ledger"), "ledger");
        assert_eq!(category_of("-odd"), "");
    }

    #[test]
    fn a_filter_needs_both_lists_to_match_and_an_empty_list_matches_all() {
        let filter = Filter::all()
            .categories(["account"])
            .event_types(["Deposited"]);

        assert!(filter.matches(&Event::new("account-1", "Deposited", "{}")));
        assert!(!filter.matches(&Event::new("order-1", "Deposited", "{}")));
        assert!(!filter.matches(&Event::new("account-1", "Withdrawn", "{}")));
        assert!(Filter::all().matches(&Event::new("order-1", "Anything", "{}")));
    }

    #[test]
    fn data_decodes_borrowed_fields_and_names_the_type_when_it_does_not_fit() {
        #[derive(Deserialize)]
        struct Opened<'a> {
            owner: &'a str,
        }
        let event = Event::new("account-1", "AccountOpened", r#"{"owner":"ada"}"#);

        assert_eq!(event.data::<Opened<'_>>().map(|o| o.owner), Ok("ada"));
        let error = event.data::<u64>().err().unwrap_or_default();
        assert!(error.starts_with("invalid AccountOpened data: "), "{error}");
    }

    #[test]
    fn an_id_given_in_halves_reads_as_the_hyphenated_uuid_and_seeds_alike() {
        let halves = Event::borrowed(
            (0x5f0c_1e2a_8d3b_4c6e, 0x9a7f_0b1c_2d3e_4f50),
            "draw-1",
            0,
            42,
            "Drawn",
            "{}",
            None,
            0,
        );

        assert_eq!(halves.id(), ID);
        assert_eq!(halves.seed(), event_at(ID, 42).seed());
    }

    fn event_at(id: &str, position: u64) -> Event<'static> {
        Event::new("draw-1", "Drawn", "{}")
            .with_id(id)
            .with_position(position)
    }

    const ID: &str = "5f0c1e2a-8d3b-4c6e-9a7f-0b1c2d3e4f50";

    #[test]
    fn the_derivation_functions_match_their_published_reference_values() {
        // FNV-1a's offset basis and its published value for "a"; SplitMix64's first output
        // for the state 1234567 (after its step), as in the reference implementation.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(1_234_567), 6_457_827_717_110_365_317);
    }

    #[test]
    fn the_seed_and_the_random_stream_are_pinned_for_a_known_event() {
        let event = event_at(ID, 42);

        assert_eq!(event.seed(), 0x7c5e_6aad_20b1_200b);
        assert_eq!(event.random(0), 0x78de_bb20_d665_d1ae);
        assert_eq!(event.random(1), 0xfac5_1a8e_5ef5_1cea);
        assert_eq!(event.random(7), 0x060b_f0e0_54b3_6f04);
    }

    #[test]
    fn the_random_stream_is_splitmix64_started_at_the_seed() {
        let event = event_at(ID, 42);
        let mut state = event.seed();
        for n in 0..100 {
            let expected = splitmix64(state);
            state = state.wrapping_add(SPLITMIX64_GAMMA);
            assert_eq!(event.random(n), expected, "value {n}");
        }
    }

    #[test]
    fn the_same_event_gives_the_same_values_whatever_else_differs() {
        let event = event_at(ID, 42);
        let replayed = Event::new("other-9", "Other", r#"{"x":1}"#)
            .with_id(ID)
            .with_position(42)
            .with_revision(5)
            .with_recorded_at_micros(1_700_000_000_000_000);

        assert_eq!(event.seed(), replayed.seed());
        for n in [0, 1, 2, u64::MAX] {
            assert_eq!(event.random(n), replayed.random(n));
        }
    }

    #[test]
    fn different_events_give_different_values() {
        let events = [
            event_at(ID, 42),
            event_at(ID, 43),
            event_at("5f0c1e2a-8d3b-4c6e-9a7f-0b1c2d3e4f51", 42),
            // The test default: an all-zero id, told apart by position alone.
            Event::new("draw-1", "Drawn", "{}"),
            Event::new("draw-1", "Drawn", "{}").with_position(1),
        ];
        let mut seeds: Vec<u64> = events.iter().map(Event::seed).collect();
        let mut firsts: Vec<u64> = events.iter().map(|event| event.random(0)).collect();
        seeds.sort_unstable();
        seeds.dedup();
        firsts.sort_unstable();
        firsts.dedup();

        assert_eq!(seeds.len(), events.len());
        assert_eq!(firsts.len(), events.len());
    }

    #[test]
    fn each_n_gives_another_value_of_the_stream() {
        let event = event_at(ID, 42);
        let mut values: Vec<u64> = (0..1_000).map(|n| event.random(n)).collect();
        values.push(event.seed());
        values.sort_unstable();
        values.dedup();

        assert_eq!(values.len(), 1_001);
    }

    #[test]
    fn a_failure_message_starts_with_the_position_and_names_the_event() {
        let event = Event::new("account-1", "Withdrawn", "{}")
            .with_position(17)
            .with_revision(3)
            .with_id("e-1");

        assert_eq!(
            event.describe_failure("overdrawn"),
            "position 17 (account-1 revision 3, Withdrawn, id e-1): overdrawn"
        );
    }
}
