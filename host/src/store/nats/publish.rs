//! Publishing to JetStream and reading its answer: one message, or several as one atomic
//! batch (all stored, at consecutive sequences, or none).

use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::{HeaderMap, header};
use bytes::Bytes;

/// Most messages JetStream accepts in one atomic batch.
pub(super) const MAX_BATCH: usize = 1000;

/// One message to publish.
pub(super) struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Why a publish did not store anything (or may not have).
#[derive(Debug, thiserror::Error)]
pub(super) enum PublishError {
    /// JetStream refused it: nothing was stored.
    #[error("JetStream refused the write: {description} (code {code})")]
    Refused { code: u64, description: String },
    /// No answer: it may or may not have been stored.
    #[error("no answer from JetStream: {0}")]
    Unanswered(String),
}

impl PublishError {
    pub(super) fn code(&self) -> Option<u64> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            Self::Unanswered(_) => None,
        }
    }
}

/// Publishes `messages` (1..=[`MAX_BATCH`]): one as a plain JetStream publish, several as
/// one atomic batch. Resolves to the acknowledgement of the last message, whose sequence
/// is the batch's last.
pub(super) async fn publish(
    client: &async_nats::Client,
    messages: Vec<Outgoing>,
) -> Result<PublishAck, PublishError> {
    let count = messages.len();
    debug_assert!((1..=MAX_BATCH).contains(&count));
    if count == 1 {
        let Some(message) = messages.into_iter().next() else {
            return Err(PublishError::Unanswered("nothing to publish".into()));
        };
        return request(client, message).await?.ok_or_else(|| {
            PublishError::Unanswered("JetStream answered a publish with nothing".into())
        });
    }
    let batch = uuid::Uuid::new_v4().simple().to_string();
    for (index, mut message) in messages.into_iter().enumerate() {
        let sequence = index + 1;
        message
            .headers
            .insert(header::NATS_BATCH_ID, batch.as_str());
        message
            .headers
            .insert(header::NATS_BATCH_SEQUENCE, sequence.to_string().as_str());
        if sequence == count {
            message
                .headers
                .insert(header::NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
            return request(client, message).await?.ok_or_else(|| {
                PublishError::Unanswered("JetStream did not acknowledge the batch's commit".into())
            });
        }
        if sequence == 1 {
            // The first message opens the batch: its answer says whether the batch is
            // accepted at all (an empty answer) or why not.
            request(client, message).await?;
        } else {
            client
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await
                .map_err(|err| PublishError::Unanswered(err.to_string()))?;
        }
    }
    Err(PublishError::Unanswered("an empty batch".into()))
}

/// Sends one message as a request; `None` for an empty answer (a batch message staged).
async fn request(
    client: &async_nats::Client,
    message: Outgoing,
) -> Result<Option<PublishAck>, PublishError> {
    let reply = client
        .request_with_headers(message.subject, message.headers, message.payload)
        .await
        .map_err(|err| PublishError::Unanswered(err.to_string()))?;
    if reply.payload.is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice::<Response<PublishAck>>(&reply.payload) {
        Ok(Response::Ok(ack)) => Ok(Some(ack)),
        Ok(Response::Err { error }) => Err(PublishError::Refused {
            code: error.error_code().0,
            description: error.to_string(),
        }),
        Err(err) => Err(PublishError::Unanswered(format!(
            "an answer that is not an acknowledgement ({err})"
        ))),
    }
}
