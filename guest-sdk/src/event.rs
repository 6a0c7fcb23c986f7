//! What a module receives (`Event`) and what it asks for (`Filter`).

use serde::Deserialize;

use crate::bindings::{RawEvent, RawFilter};

/// One recorded event, as the host hands it to a module.
///
/// The payload and metadata stay JSON text until asked for, so an event that a module
/// ignores costs nothing to decode.
#[derive(Clone, Debug)]
pub struct Event {
    raw: RawEvent,
}

impl Event {
    /// An event of `event_type` on `stream` with `data` as its JSON payload, for tests and
    /// tools. Everything else starts at zero (revision, position, recorded-at), with an
    /// all-zero id and `{}` metadata; the `with_*` methods set them.
    pub fn new(
        stream: impl Into<String>,
        event_type: impl Into<String>,
        data: impl Into<String>,
    ) -> Self {
        Self {
            raw: RawEvent {
                id: "00000000-0000-0000-0000-000000000000".to_owned(),
                stream_id: stream.into(),
                revision: 0,
                position: 0,
                event_type: event_type.into(),
                data: data.into(),
                metadata: "{}".to_owned(),
                recorded_at: 0,
            },
        }
    }

    /// This event with another id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.raw.id = id.into();
        self
    }

    /// This event with another revision (its position in its stream).
    #[must_use]
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.raw.revision = revision;
        self
    }

    /// This event with another position in the global log.
    #[must_use]
    pub fn with_position(mut self, position: u64) -> Self {
        self.raw.position = position;
        self
    }

    /// This event with other metadata (JSON object text).
    #[must_use]
    pub fn with_metadata(mut self, metadata: impl Into<String>) -> Self {
        self.raw.metadata = metadata.into();
        self
    }

    /// This event with another recording time, in microseconds since the Unix epoch.
    #[must_use]
    pub fn with_recorded_at_micros(mut self, micros: u64) -> Self {
        self.raw.recorded_at = micros;
        self
    }

    /// The event's UUID, hyphenated lower-case.
    pub fn id(&self) -> &str {
        &self.raw.id
    }

    /// The stream it was appended to (`account-42`).
    pub fn stream(&self) -> &str {
        &self.raw.stream_id
    }

    /// The stream's category: the part of its name before the first `-` (`account`), or
    /// the whole name when it has no `-`.
    pub fn category(&self) -> &str {
        category_of(&self.raw.stream_id)
    }

    /// 0-based position of the event in its stream.
    pub fn revision(&self) -> u64 {
        self.raw.revision
    }

    /// 0-based position of the event in the global log.
    pub fn position(&self) -> u64 {
        self.raw.position
    }

    /// The event type (`Deposited`).
    pub fn event_type(&self) -> &str {
        &self.raw.event_type
    }

    /// When the server recorded the event, in microseconds since the Unix epoch.
    pub fn recorded_at_micros(&self) -> u64 {
        self.raw.recorded_at
    }

    /// The payload decoded as `T`. Borrowing types such as `&str` fields work too.
    ///
    /// # Errors
    /// A message naming the event type and what did not fit when the payload is not a
    /// valid `T` (a missing field, a string where a number belongs, ...).
    pub fn data<'a, T: Deserialize<'a>>(&'a self) -> Result<T, String> {
        serde_json::from_str(&self.raw.data)
            .map_err(|e| format!("invalid {} data: {e}", self.raw.event_type))
    }

    /// The payload as JSON text, exactly as stored.
    pub fn data_json(&self) -> &str {
        &self.raw.data
    }

    /// The metadata decoded as `T`.
    ///
    /// # Errors
    /// A message saying what did not fit when the metadata is not a valid `T`.
    pub fn metadata<'a, T: Deserialize<'a>>(&'a self) -> Result<T, String> {
        serde_json::from_str(&self.raw.metadata)
            .map_err(|e| format!("invalid {} metadata: {e}", self.raw.event_type))
    }

    /// The metadata as JSON object text (`{}` when the client sent none).
    pub fn metadata_json(&self) -> &str {
        &self.raw.metadata
    }

    /// `message` prefixed with where this event sits, so a fault report names it:
    /// `position 17 (account-1 revision 3, Withdrawn, id …): message`.
    pub(crate) fn describe_failure(&self, message: &str) -> String {
        format!(
            "position {} ({} revision {}, {}, id {}): {message}",
            self.raw.position,
            self.raw.stream_id,
            self.raw.revision,
            self.raw.event_type,
            self.raw.id
        )
    }
}

impl From<RawEvent> for Event {
    fn from(raw: RawEvent) -> Self {
        Self { raw }
    }
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
    pub fn matches(&self, event: &Event) -> bool {
        let wanted =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        wanted(&self.event_types, event.event_type()) && wanted(&self.categories, event.category())
    }

    pub(crate) fn into_raw(self) -> RawFilter {
        RawFilter {
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
