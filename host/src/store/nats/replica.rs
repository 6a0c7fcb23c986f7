//! Following the log: this host's copy receives every event JetStream stored, in sequence
//! order, and makes it durable before readers see it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt as _;
use tokio::sync::watch;

use super::wire::{decode_event, micros};
use crate::store::{EventLog as _, RecordedEvent, SledStore, StoreError};

/// Events copied in one write.
const COPY_BATCH: usize = 2_000;

/// Copies the log from JetStream into `copy` until `stop` turns true, starting again after
/// any interruption from where the copy ends.
pub(super) async fn follow(
    events: async_nats::jetstream::stream::Stream,
    copy: Arc<SledStore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            result = copy_from(&events, &copy) => {
                if let Err(err) = result {
                    tracing::warn!(%err, head = copy.head(), "following the log stopped; starting again");
                }
            }
            () = super::wire::stalled(&events, || copy.head()) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Follows from the copy's head; returns (with the reason) when the flow breaks.
async fn copy_from(
    events: &async_nats::jetstream::stream::Stream,
    copy: &Arc<SledStore>,
) -> anyhow::Result<()> {
    let start = copy.head() + 1;
    let consumer = events
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?.ready_chunks(COPY_BATCH);
    let mut last_micros = i64::MIN;
    let head = copy.head();
    copy.scan(head.saturating_sub(1)..head, &mut |event| {
        last_micros = event.recorded_at_micros;
        false
    })?;
    while let Some(chunk) = messages.next().await {
        let mut batch: Vec<RecordedEvent> = Vec::with_capacity(chunk.len());
        let mut expected = copy.head() + 1;
        for message in chunk {
            let message = message?;
            let info = message.info().map_err(|err| anyhow::anyhow!("{err}"))?;
            let sequence = info.stream_sequence;
            if sequence != expected {
                anyhow::bail!(
                    "the log jumped from sequence {} to {sequence}",
                    expected - 1
                );
            }
            // Recording times never go back, whichever JetStream leader stamped them: time
            // searches over the log rely on it.
            let mut event = decode_event(&message.payload, sequence, micros(info.published))?;
            event.recorded_at_micros = event.recorded_at_micros.max(last_micros);
            last_micros = event.recorded_at_micros;
            batch.push(event);
            expected += 1;
        }
        match copy.replicate(batch).await {
            Ok(_) => {}
            Err(StoreError::ShuttingDown) => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
