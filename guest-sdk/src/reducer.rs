//! Reducers: one state per stream, folded event by event.
//!
//! The host stores each stream's state as bytes; this module keeps it as JSON and hands the
//! user a typed `&mut State`. Per stream batch the state is decoded once, every event is
//! applied to it, and it is encoded once: the per-event cost is the user's `apply` alone.

use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(not(feature = "contract-0-1"))]
use crate::bindings::v2;
#[cfg(feature = "contract-0-1")]
use crate::bindings::{RawFilter, StreamBatch, reducer::Guest};
use crate::event::{Event, Filter};

/// A module that keeps one state per stream.
///
/// ```
/// use refold_guest::{Event, Filter, Reducer};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter {
///     seen: u64,
/// }
///
/// struct CountEvents;
///
/// impl Reducer for CountEvents {
///     type State = Counter;
///
///     fn filter() -> Filter {
///         Filter::all().categories(["account"])
///     }
///
///     fn apply(state: &mut Counter, _event: &Event) -> Result<(), String> {
///         state.seen += 1;
///         Ok(())
///     }
/// }
///
/// refold_guest::export_reducer!(CountEvents);
/// ```
pub trait Reducer {
    /// The state of one stream. It is stored as JSON, so what `Serialize` writes is what
    /// `GET /projections/{name}/streams/{stream}` shows.
    type State: Serialize + DeserializeOwned + Default + 'static;

    /// The events this reducer wants; the host skips the rest. All events by default.
    fn filter() -> Filter {
        Filter::all()
    }

    /// The state of `stream` before its first event. `State::default()` by default.
    fn init(stream: &str) -> Self::State {
        let _ = stream;
        Self::State::default()
    }

    /// Fold one event into its stream's state.
    ///
    /// # Errors
    /// A message saying why the event cannot be applied. It faults the module at this
    /// event: the host shows the message with the event's position and id, and keeps the
    /// stream's state as it was before the batch.
    fn apply(state: &mut Self::State, event: &Event<'_>) -> Result<(), String>;
}

/// The initial state of `stream`, encoded as the host stores it.
///
/// # Panics
/// When `R::State` fails to serialize (only custom `Serialize` impls or maps with
/// non-string keys can); a panic traps, and the host reports the message.
pub fn init_state<R: Reducer>(stream: &str) -> Vec<u8> {
    let mut encoded = Vec::new();
    if let Err(e) = serde_json::to_writer(&mut encoded, &R::init(stream)) {
        panic!("cannot encode the initial state of stream {stream}: {e}");
    }
    encoded
}

/// Apply `events` of `stream` to its stored `state` (`None`: start from `R::init`) and
/// return the new stored state. This is exactly what the module does for one stream batch.
///
/// # Errors
/// The stored state does not decode as `R::State`, an event fails (the message starts
/// with `position <n>` and names the event), or the new state does not encode.
pub fn apply_batch<'e, R, E>(
    stream: &str,
    state: Option<&[u8]>,
    events: impl IntoIterator<Item = E>,
) -> Result<Vec<u8>, String>
where
    R: Reducer,
    E: Borrow<Event<'e>>,
{
    let mut current = match state {
        Some(bytes) => serde_json::from_slice::<R::State>(bytes)
            .map_err(|e| format!("stored state of stream {stream} does not decode: {e}"))?,
        None => R::init(stream),
    };
    for event in events {
        let event = event.borrow();
        R::apply(&mut current, event).map_err(|message| event.describe_failure(&message))?;
    }
    // The new state is usually about as long as the old one.
    let mut encoded = Vec::with_capacity(state.map_or(64, |bytes| bytes.len() + 16));
    serde_json::to_writer(&mut encoded, &current)
        .map_err(|e| format!("new state of stream {stream} does not encode: {e}"))?;
    Ok(encoded)
}

/// The state of `stream` after `events`, starting from `R::init`, decoded back from JSON as
/// the host would store it. Meant for unit tests of a reducer on the native target.
///
/// # Errors
/// As [`apply_batch`].
pub fn fold<R: Reducer>(stream: &str, events: &[Event<'_>]) -> Result<R::State, String> {
    let encoded = apply_batch::<R, _>(stream, None, events)?;
    serde_json::from_slice(&encoded)
        .map_err(|e| format!("state of stream {stream} does not decode: {e}"))
}

/// Adapts a [`Reducer`] to the generated `reducer` world. Used by [`export_reducer!`].
///
/// [`export_reducer!`]: crate::export_reducer
#[doc(hidden)]
pub struct ReducerExport<R>(PhantomData<fn() -> R>);

#[cfg(feature = "contract-0-1")]
impl<R: Reducer> Guest for ReducerExport<R> {
    fn filter() -> RawFilter {
        R::filter().into_raw()
    }

    fn init(stream_id: String) -> Vec<u8> {
        init_state::<R>(&stream_id)
    }

    fn apply(batches: Vec<StreamBatch>) -> Vec<Result<Vec<u8>, String>> {
        batches
            .into_iter()
            .map(|batch| {
                let events = batch.events.into_iter().map(Event::from);
                apply_batch::<R, _>(&batch.stream_id, batch.state.as_deref(), events)
            })
            .collect()
    }
}

#[cfg(not(feature = "contract-0-1"))]
mod held {
    //! Contract 0.2: the states an instance holds between calls.

    use std::any::Any;
    use std::cell::RefCell;

    use super::*;

    /// The states a 0.2 reducer instance holds, by the slots the host gives its streams.
    struct Slots<S> {
        slots: Vec<Option<Slot<S>>>,
    }

    struct Slot<S> {
        stream: String,
        state: S,
    }

    impl<S> Slots<S> {
        fn set(&mut self, slot: u32, stream: String, state: S) {
            let index = slot as usize;
            if self.slots.len() <= index {
                self.slots.resize_with(index + 1, || None);
            }
            self.slots[index] = Some(Slot { stream, state });
        }
    }

    thread_local! {
        /// The instance's [`Slots`], of the exported reducer's state type.
        static HELD: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with_slots<S: 'static, T>(f: impl FnOnce(&mut Slots<S>) -> T) -> T {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            let any = held.get_or_insert_with(|| Box::new(Slots::<S> { slots: Vec::new() }));
            match any.downcast_mut::<Slots<S>>() {
                Some(slots) => f(slots),
                None => panic!("one component exports one reducer"),
            }
        })
    }

    /// Folds one 0.2 call: each batch's events into the state of its slot.
    fn apply_held<R: Reducer>(
        events: &v2::Events,
        batches: Vec<v2::StreamBatch>,
    ) -> Result<(), v2::Failure> {
        let fail = |event: usize, message: String| v2::Failure {
            event: event as u32,
            message,
        };
        with_slots::<R::State, _>(|slots| {
            let mut next = 0usize;
            for batch in batches {
                let first = next;
                next += batch.count as usize;
                let raws = events.events.get(first..next).ok_or_else(|| {
                    fail(
                        first,
                        format!(
                            "the host sent a batch past the call's {} events",
                            events.events.len()
                        ),
                    )
                })?;
                match batch.start {
                    v2::Start::Held => {}
                    v2::Start::Fresh(stream) => {
                        let state = R::init(&stream);
                        slots.set(batch.slot, stream, state);
                    }
                    v2::Start::Stored(stored) => {
                        let state =
                            serde_json::from_slice::<R::State>(&stored.state).map_err(|e| {
                                fail(
                                    first,
                                    format!(
                                        "stored state of stream {} does not decode: {e}",
                                        stored.stream_id
                                    ),
                                )
                            })?;
                        slots.set(batch.slot, stored.stream_id, state);
                    }
                }
                let Some(Some(slot)) = slots.slots.get_mut(batch.slot as usize) else {
                    return Err(fail(
                        first,
                        format!(
                            "the host continued slot {}, which holds no state",
                            batch.slot
                        ),
                    ));
                };
                let Slot { stream, state } = slot;
                for (k, raw) in raws.iter().enumerate() {
                    let event =
                        crate::views::view(events, raw, stream).map_err(|m| fail(first + k, m))?;
                    R::apply(state, &event)
                        .map_err(|message| fail(first + k, event.describe_failure(&message)))?;
                }
            }
            Ok(())
        })
    }

    /// The states in `slots`, encoded.
    fn save_held<R: Reducer>(slots: Vec<u32>) -> Vec<Vec<u8>> {
        with_slots::<R::State, _>(|held| {
            slots
                .into_iter()
                .map(|index| {
                    let Some(Some(slot)) = held.slots.get(index as usize) else {
                        panic!("the host asked for the state of slot {index}, which holds none");
                    };
                    let mut encoded = Vec::with_capacity(64);
                    if let Err(e) = serde_json::to_writer(&mut encoded, &slot.state) {
                        panic!("the state of stream {} does not encode: {e}", slot.stream);
                    }
                    encoded
                })
                .collect()
        })
    }

    impl<R: Reducer> v2::reducer::Guest for ReducerExport<R> {
        fn filter() -> v2::RawFilter {
            R::filter().into_raw_v2()
        }

        fn init(stream_id: String) -> Vec<u8> {
            init_state::<R>(&stream_id)
        }

        fn apply(events: v2::Events, batches: Vec<v2::StreamBatch>) -> Result<(), v2::Failure> {
            apply_held::<R>(&events, batches)
        }

        fn save(slots: Vec<u32>) -> Vec<Vec<u8>> {
            save_held::<R>(slots)
        }

        fn forget() {
            HELD.with(|held| held.borrow_mut().take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Default, Serialize, Deserialize)]
    struct Total {
        sum: i64,
    }

    struct Summer;

    impl Reducer for Summer {
        type State = Total;

        fn init(stream: &str) -> Total {
            Total {
                sum: if stream == "start-at-ten" { 10 } else { 0 },
            }
        }

        fn apply(state: &mut Total, event: &Event) -> Result<(), String> {
            state.sum += event.data::<i64>()?;
            Ok(())
        }
    }

    #[test]
    fn a_new_stream_starts_from_init_and_a_known_one_from_its_stored_state() {
        let events = [Event::new("s-1", "Added", "5")];

        assert_eq!(
            apply_batch::<Summer, _>("start-at-ten", None, &events),
            Ok(br#"{"sum":15}"#.to_vec())
        );
        assert_eq!(
            apply_batch::<Summer, _>("s-1", Some(br#"{"sum":1}"#), &events),
            Ok(br#"{"sum":6}"#.to_vec())
        );
        assert_eq!(init_state::<Summer>("s-1"), br#"{"sum":0}"#.to_vec());
    }

    #[test]
    fn a_stored_state_that_does_not_decode_fails_the_batch() {
        let error = apply_batch::<Summer, Event>("s-1", Some(b"[]"), []).unwrap_err();

        assert!(
            error.starts_with("stored state of stream s-1 does not decode"),
            "{error}"
        );
    }

    #[test]
    fn the_first_failing_event_fails_the_batch() {
        let events = [
            Event::new("s-1", "Added", "1").with_position(7),
            Event::new("s-1", "Added", "\"x\"").with_position(8),
        ];

        let error = fold::<Summer>("s-1", &events).err().unwrap_or_default();

        assert!(
            error.starts_with("position 8 (s-1 revision 0, Added, id "),
            "{error}"
        );
    }
}
