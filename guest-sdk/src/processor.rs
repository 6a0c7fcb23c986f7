//! Processors: projections that act. Each event may lead to events to append; the host
//! appends them exactly once, together with the processor's state writes and checkpoint.

use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::Serialize;

#[cfg(not(feature = "contract-0-1"))]
use crate::bindings::v2;
use crate::event::{Event, Filter};
use crate::store::Store;

/// A module that reacts to events: it keeps a read model in a [`Store`], as a
/// [`Projection`](crate::Projection) does, and emits events to append.
///
/// ```
/// use refold_guest::{Emit, Event, Filter, Processor, Store};
/// use serde::Deserialize;
/// use serde_json::json;
///
/// #[derive(Deserialize)]
/// struct OrderPaid<'a> {
///     order: &'a str,
/// }
///
/// struct ShippingPolicy;
///
/// impl Processor for ShippingPolicy {
///     fn filter() -> Filter {
///         Filter::all().event_types(["OrderPaid"])
///     }
///
///     fn process(event: &Event<'_>, _store: &mut Store, emit: &mut Emit) -> Result<(), String> {
///         let paid: OrderPaid = event.data()?;
///         emit.event(format!("shipment-{}", paid.order), "ShipmentRequested", &json!({"order": paid.order}))?;
///         Ok(())
///     }
/// }
///
/// refold_guest::export_processor!(ShippingPolicy);
/// ```
pub trait Processor {
    /// The events this processor wants; the host skips the rest. All events by default.
    fn filter() -> Filter {
        Filter::all()
    }

    /// React to one event: read and write the read model, and emit events to append.
    ///
    /// # Errors
    /// A message saying why the event cannot be handled. It faults the module at this
    /// event; the writes and emissions of the whole call are discarded.
    fn process(event: &Event<'_>, store: &mut Store, emit: &mut Emit) -> Result<(), String>;
}

/// The revision an emitted event expects its stream to be at, as `expected_revision` in
/// an append. If it does not hold, the processor faults at the source event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No expectation (the default).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist.
    Exists,
    /// The stream's last event must have this revision.
    Exact(u64),
}

/// One event to append, as emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The stream to append to.
    pub stream: String,
    /// The event type.
    pub event_type: String,
    /// The payload, JSON text.
    pub data: String,
    /// Metadata, JSON object text; the host adds `$causation_id` and `$correlation_id`.
    pub metadata: Option<String>,
    /// What the stream's revision must be.
    pub expected: Expected,
}

impl Emitted {
    /// This event only if its stream is at `expected`.
    pub fn expect(&mut self, expected: Expected) -> &mut Self {
        self.expected = expected;
        self
    }

    /// This event with `metadata` (a JSON object).
    ///
    /// # Errors
    /// `metadata` does not serialize.
    pub fn metadata<T: Serialize + ?Sized>(&mut self, metadata: &T) -> Result<&mut Self, String> {
        self.metadata = Some(
            serde_json::to_string(metadata)
                .map_err(|e| format!("emitted metadata does not encode: {e}"))?,
        );
        Ok(self)
    }
}

/// Where a processor puts the events it emits for the event it is processing.
#[derive(Debug, Default)]
pub struct Emit {
    events: Vec<Emitted>,
}

impl Emit {
    /// Emits an event of `event_type` with `data` (encoded as JSON) to `stream`, to append
    /// once this event's processing commits. Returns it, to set an expectation or metadata.
    ///
    /// # Errors
    /// `data` does not serialize.
    pub fn event<T: Serialize + ?Sized>(
        &mut self,
        stream: impl Into<String>,
        event_type: impl Into<String>,
        data: &T,
    ) -> Result<&mut Emitted, String> {
        let data = serde_json::to_string(data)
            .map_err(|e| format!("emitted data does not encode: {e}"))?;
        self.events.push(Emitted {
            stream: stream.into(),
            event_type: event_type.into(),
            data,
            metadata: None,
            expected: Expected::Any,
        });
        let last = self.events.len() - 1;
        Ok(&mut self.events[last])
    }

    /// What was emitted so far.
    pub fn emitted(&self) -> &[Emitted] {
        &self.events
    }
}

/// Process `events` in order against `store`: exactly what the module does for one call.
/// Returns each event's emissions, in order.
///
/// # Errors
/// The first event that fails, named in the message (which starts with `position <n>`).
pub fn process_batch<'e, P, E>(
    events: impl IntoIterator<Item = E>,
    store: &mut Store,
) -> Result<Vec<Emitted>, String>
where
    P: Processor,
    E: Borrow<Event<'e>>,
{
    let mut emit = Emit::default();
    for event in events {
        let event = event.borrow();
        P::process(event, store, &mut emit).map_err(|message| event.describe_failure(&message))?;
    }
    Ok(emit.events)
}

/// Adapts a [`Processor`] to the generated `processor` world. Used by
/// [`export_processor!`](crate::export_processor).
#[doc(hidden)]
#[cfg_attr(feature = "contract-0-1", allow(dead_code))]
pub struct ProcessorExport<P>(PhantomData<fn() -> P>);

#[cfg(not(feature = "contract-0-1"))]
impl<P: Processor> v2::processor::Guest for ProcessorExport<P> {
    fn filter() -> v2::RawFilter {
        P::filter().into_raw_v2()
    }

    fn process(events: v2::Events) -> Result<Vec<v2::Emitted>, v2::Failure> {
        let mut store = Store::host();
        let mut emit = Emit::default();
        let mut out = Vec::new();
        for index in 0..events.events.len() {
            let fail = |message: String| v2::Failure {
                event: index as u32,
                message,
            };
            let event = crate::views::nth(&events, index).map_err(fail)?;
            P::process(&event, &mut store, &mut emit)
                .map_err(|m| fail(event.describe_failure(&m)))?;
            out.extend(emit.events.drain(..).map(|e| v2::Emitted {
                source: index as u32,
                stream_id: e.stream,
                event_type: e.event_type,
                data: e.data,
                metadata: e.metadata,
                expected_revision: match e.expected {
                    Expected::Any => None,
                    Expected::NoStream => Some(v2::ExpectedRevision::NoStream),
                    Expected::Exists => Some(v2::ExpectedRevision::Exists),
                    Expected::Exact(n) => Some(v2::ExpectedRevision::Exact(n)),
                },
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Processor for Echo {
        fn process(event: &Event<'_>, store: &mut Store, emit: &mut Emit) -> Result<(), String> {
            store.update("seen", |n: &mut u64| *n += 1)?;
            if event.event_type() == "Bad" {
                return Err("bad event".into());
            }
            emit.event(
                format!("echo-{}", event.stream()),
                "Echoed",
                &event.position(),
            )?
            .expect(Expected::NoStream);
            Ok(())
        }
    }

    #[test]
    fn each_event_emits_in_order_and_the_store_sees_every_event() {
        let events = [
            Event::new("a-1", "E", "{}").with_position(3),
            Event::new("a-2", "E", "{}").with_position(4),
        ];
        let mut store = Store::in_memory();

        let emitted = process_batch::<Echo, _>(&events, &mut store).unwrap();

        assert_eq!(emitted.len(), 2);
        assert_eq!(emitted[1].stream, "echo-a-2");
        assert_eq!(emitted[1].data, "4");
        assert_eq!(emitted[1].expected, Expected::NoStream);
        assert_eq!(store.get::<u64>("seen"), Ok(Some(2)));
    }

    #[test]
    fn a_failing_event_names_itself() {
        let events = [Event::new("a-1", "Bad", "{}").with_position(9)];

        let error = process_batch::<Echo, _>(&events, &mut Store::in_memory()).unwrap_err();

        assert!(
            error.starts_with("position 9 (a-1 revision 0, Bad"),
            "{error}"
        );
    }
}
