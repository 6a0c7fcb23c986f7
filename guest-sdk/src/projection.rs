//! Projections: one read model across streams, kept in a key-value [`Store`].

use std::borrow::Borrow;
use std::marker::PhantomData;

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
    fn handle(event: &Event, store: &mut Store) -> Result<(), String>;
}

/// Handle `events` in order against `store`: exactly what the module does for one batch.
///
/// # Errors
/// The first event that fails, named in the message (which starts with `position <n>`).
pub fn handle_batch<P, E>(
    events: impl IntoIterator<Item = E>,
    store: &mut Store,
) -> Result<(), String>
where
    P: Projection,
    E: Borrow<Event>,
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

impl<P: Projection> Guest for ProjectionExport<P> {
    fn filter() -> RawFilter {
        P::filter().into_raw()
    }

    fn handle(events: Vec<RawEvent>) -> Result<(), String> {
        handle_batch::<P, _>(events.into_iter().map(Event::from), &mut Store::host())
    }
}
