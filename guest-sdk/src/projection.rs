//! Projections: one read model across streams, kept in a key-value [`Store`].

use std::borrow::Borrow;
use std::marker::PhantomData;

#[cfg(feature = "contract-0-1")]
use crate::bindings::{RawEvent, RawFilter, projection::Guest};
use crate::event::{Event, Filter};
use crate::store::Store;

/// A module that keeps one read model across all the streams it wants.
///
/// ```
/// use refold_guest::{Event, Filter, Projection, Store};
///
/// struct TypeCounts;
///
/// impl Projection for TypeCounts {
///     fn handle(event: &Event, store: &mut Store) -> Result<(), String> {
///         let key = format!("type/{}", event.event_type());
///         store.update(&key, |count: &mut u64| *count += 1)?;
///         Ok(())
///     }
/// }
///
/// refold_guest::export_projection!(TypeCounts);
/// ```
pub trait Projection {
    /// The events this projection wants; the host skips the rest. All events by default.
    fn filter() -> Filter {
        Filter::all()
    }

    /// Apply one event to the read model. Events arrive in global position order, and
    /// reads see the writes made for earlier events.
    ///
    /// # Errors
    /// A message saying why the event cannot be handled. It faults the module at this
    /// event: the host shows the message with the event's position and id, and discards the
    /// writes of the whole batch.
    fn handle(event: &Event<'_>, store: &mut Store) -> Result<(), String>;
}

/// Handle `events` in order against `store`: exactly what the module does for one batch.
///
/// # Errors
/// The first event that fails, named in the message (which starts with `position <n>`).
pub fn handle_batch<'e, P, E>(
    events: impl IntoIterator<Item = E>,
    store: &mut Store,
) -> Result<(), String>
where
    P: Projection,
    E: Borrow<Event<'e>>,
{
    for event in events {
        let event = event.borrow();
        P::handle(event, store).map_err(|message| event.describe_failure(&message))?;
    }
    Ok(())
}

/// Adapts a [`Projection`] to the generated `projection` world. Used by
/// [`export_projection!`].
///
/// [`export_projection!`]: crate::export_projection
#[doc(hidden)]
pub struct ProjectionExport<P>(PhantomData<fn() -> P>);

#[cfg(feature = "contract-0-1")]
impl<P: Projection> Guest for ProjectionExport<P> {
    fn filter() -> RawFilter {
        P::filter().into_raw()
    }

    fn handle(events: Vec<RawEvent>) -> Result<(), String> {
        handle_batch::<P, _>(events.into_iter().map(Event::from), &mut Store::host())
    }
}

#[cfg(not(feature = "contract-0-1"))]
impl<P: Projection> crate::bindings::v2::projection::Guest for ProjectionExport<P> {
    fn filter() -> crate::bindings::v2::RawFilter {
        P::filter().into_raw_v2()
    }

    fn handle(events: crate::bindings::v2::Events) -> Result<(), crate::bindings::v2::Failure> {
        let mut store = Store::host();
        for index in 0..events.events.len() {
            let fail = |message: String| crate::bindings::v2::Failure {
                event: index as u32,
                message,
            };
            let event = crate::views::nth(&events, index).map_err(fail)?;
            P::handle(&event, &mut store).map_err(|m| fail(event.describe_failure(&m)))?;
        }
        Ok(())
    }
}
