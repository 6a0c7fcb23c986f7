//! What a processor emits, appended to the log exactly once.
//!
//! Each emitted event gets an id derived from the module's name, its source event's id and
//! its index among that source's emissions ([`emitted_id`]). The runner appends a batch's
//! emissions before it commits the batch's state and checkpoint; a crash between the two
//! makes the next run process the same events again and emit the same ids, which the store
//! answers with the original positions, appending nothing. So every emission exists once,
//! whatever crashes, and the "(source event, index)" of an emission is emitted at most once
//! over the module's whole life: a new version or a reset that emits, for a source event
//! processed before, what an earlier run emitted appends nothing; an emission whose id was
//! recorded in another stream (the earlier run emitted something else there) is left as it
//! was, never appended beside it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::fold::Failure;
use crate::engine::bindings::v2::{Emitted, ExpectedRevision as GuestExpected};
use crate::store::{
    EventStore, ExpectedRevision, GlobalPosition, ProposedEvent, StoreError, StreamName,
};

/// Most events one call may emit...
pub(in crate::modules) const MAX_EMITTED_PER_CALL: usize = 1_000;
/// ...with at most this much data and metadata in all...
pub(in crate::modules) const MAX_EMITTED_BYTES_PER_CALL: usize = 16 * 1024 * 1024;
/// ...and this much per event.
pub(in crate::modules) const MAX_EMITTED_EVENT_BYTES: usize = 1024 * 1024;

/// One emission waiting for its batch's commit.
pub(in crate::modules) struct Emission {
    /// The source event.
    pub source_position: GlobalPosition,
    pub source_id: Uuid,
    /// The source's `$correlation_id`, or its id.
    pub correlation_id: String,
    /// Its index among the source's emissions.
    pub index: u32,
    pub event: Emitted,
}

/// Where a processor's emissions are appended: the store the modules run over.
pub struct Emitter {
    store: Arc<dyn EventStore>,
    /// The runtime the store's futures need, when there is one (a NATS store's do).
    runtime: Option<tokio::runtime::Handle>,
}

impl Emitter {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Appends `emissions` of module `module`: one append per event, those of a stream in
    /// order, streams side by side. Blocks until all are durable. Returns how many were
    /// new (not answered from the log as emitted before).
    ///
    /// # Errors
    /// The source position and why, for the first emission that fails: an invalid event, an
    /// expected revision that does not hold, a storage failure.
    pub(super) fn append(
        &self,
        module: &str,
        emissions: Vec<Emission>,
    ) -> Result<u64, (GlobalPosition, Failure)> {
        let mut by_stream: HashMap<
            String,
            Vec<(GlobalPosition, StreamName, ExpectedRevision, ProposedEvent)>,
        > = HashMap::new();
        for emission in emissions {
            let position = emission.source_position;
            let prepared = prepare(module, emission).map_err(|why| (position, why))?;
            by_stream
                .entry(prepared.0.as_str().to_owned())
                .or_default()
                .push((position, prepared.0, prepared.1, prepared.2));
        }
        let store = &self.store;
        // An emission answered from the log (emitted before) landed below this.
        let head = store.head();
        let chains = by_stream.into_values().map(|appends| async move {
            let mut appended = 0u64;
            for (position, stream, expected, event) in appends {
                match store.append(stream, expected, vec![event]).await {
                    Ok(outcome) => appended += u64::from(outcome.first_position >= head),
                    // Emitted before, into another stream: that emission stands.
                    Err(StoreError::DuplicateEventId(_)) => {}
                    Err(err @ StoreError::WrongExpectedRevision { .. }) => {
                        return Err((
                            position,
                            Failure::Rejected(format!("an emitted event was refused: {err}")),
                        ));
                    }
                    Err(err) => {
                        return Err((
                            position,
                            Failure::Storage(format!("appending emitted events failed: {err}")),
                        ));
                    }
                }
            }
            Ok(appended)
        });
        let all = join_all(chains);
        let results = match &self.runtime {
            Some(runtime) => runtime.block_on(all),
            None => futures::executor::block_on(all),
        };
        let mut appended = 0;
        let mut first_failure: Option<(GlobalPosition, Failure)> = None;
        for result in results {
            match result {
                Ok(n) => appended += n,
                Err(failure) => {
                    if first_failure.as_ref().is_none_or(|(p, _)| failure.0 < *p) {
                        first_failure = Some(failure);
                    }
                }
            }
        }
        match first_failure {
            Some(failure) => Err(failure),
            None => Ok(appended),
        }
    }
}

/// The id of the `index`th emission of module `module` for the event `source`: the first
/// 16 bytes of SHA-256 over them, as a version-8 UUID.
pub(in crate::modules) fn emitted_id(module: &str, source: Uuid, index: u32) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"refold emitted event\0");
    hash.update(module.as_bytes());
    hash.update([0]);
    hash.update(source.as_bytes());
    hash.update(index.to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// An emission as an append: its stream, expectation and event (with its derived id and
/// the causation metadata).
fn prepare(
    module: &str,
    emission: Emission,
) -> Result<(StreamName, ExpectedRevision, ProposedEvent), Failure> {
    let event = emission.event;
    let refuse = |why: String| Failure::Rejected(format!("the processor emitted {why}"));
    let stream = StreamName::parse(&event.stream_id)
        .map_err(|err| refuse(format!("an event for an invalid stream name: {err}")))?;
    if event.event_type.is_empty() {
        return Err(refuse("an event without a type".into()));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&event.data)
        .map_err(|err| refuse(format!("data that is not JSON ({err})")))?;
    let mut metadata = match &event.metadata {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            _ => return Err(refuse("metadata that is not a JSON object".into())),
        },
    };
    metadata.insert(
        "$causation_id".into(),
        Value::String(emission.source_id.hyphenated().to_string()),
    );
    metadata.insert(
        "$correlation_id".into(),
        Value::String(emission.correlation_id),
    );
    let expected = match event.expected_revision {
        None | Some(GuestExpected::Any) => ExpectedRevision::Any,
        Some(GuestExpected::NoStream) => ExpectedRevision::NoStream,
        Some(GuestExpected::Exists) => ExpectedRevision::Exists,
        Some(GuestExpected::Exact(n)) => ExpectedRevision::Exact(n),
    };
    Ok((
        stream,
        expected,
        ProposedEvent {
            id: emitted_id(module, emission.source_id, emission.index),
            id_from_client: true,
            event_type: event.event_type,
            data: event.data,
            metadata: Value::Object(metadata).to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emitted_id_depends_on_the_module_the_source_and_the_index_alone() {
        let source = Uuid::from_u128(7);
        let id = emitted_id("policy", source, 0);

        assert_eq!(id, emitted_id("policy", source, 0));
        assert_ne!(id, emitted_id("policy", source, 1));
        assert_ne!(id, emitted_id("policy", Uuid::from_u128(8), 0));
        assert_ne!(id, emitted_id("policy-2", source, 0));
        assert_eq!(id.get_version_num(), 8);
    }
}
