//! Leases and the hosts' directory, in one JetStream stream whose messages expire.
//!
//! A lease is the last message on its subject: the holder renews it with the subject's
//! expected last sequence (so two hosts cannot both renew or take it) and a time to live,
//! after which JetStream removes it and anyone may take it with expected sequence 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::header;
use async_nats::jetstream::stream::{
    Config, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use super::Nats;
use super::publish::{Outgoing, PublishError, publish};

const STREAM: &str = "REFOLD_LEASES";

/// The leases and host records of a cluster.
#[derive(Clone)]
pub struct Leases {
    nats: Arc<Nats>,
    stream: async_nats::jetstream::stream::Stream,
}

/// A lease this host holds: renew it before its time to live runs out.
#[derive(Clone, Debug)]
pub struct Held {
    name: String,
    sequence: u64,
}

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    /// Unique per acquisition, so a restarted host does not mistake an old lease for its own.
    pub token: String,
    /// Where the holder serves HTTP (empty in leases written before hosts said so).
    #[serde(default)]
    pub address: String,
}

/// What a host publishes about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    pub address: String,
    pub modules: Vec<String>,
    /// When the record was published, in milliseconds since the Unix epoch.
    pub updated_ms: i64,
}

impl Leases {
    /// # Errors
    /// JetStream refuses the stream.
    pub async fn open(nats: Arc<Nats>) -> anyhow::Result<Self> {
        let stream = nats
            .ensure_stream(Config {
                name: STREAM.into(),
                subjects: vec!["refold.leases.>".into(), "refold.hosts.>".into()],
                storage: StorageType::File,
                num_replicas: nats.replicas(),
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::Old,
                max_messages_per_subject: 1,
                allow_message_ttl: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .context("creating the lease stream in JetStream")?;
        Ok(Self { nats, stream })
    }

    /// Who holds lease `name` now, with the sequence of its message.
    ///
    /// # Errors
    /// JetStream does not answer.
    pub async fn holder(&self, name: &str) -> anyhow::Result<Option<(Holder, u64)>> {
        match self
            .stream
            .get_last_raw_message_by_subject(&lease_subject(name))
            .await
        {
            Ok(message) => {
                let holder = serde_json::from_slice(&message.payload)
                    .context("a lease record that is not a holder")?;
                Ok(Some((holder, message.sequence)))
            }
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(err).context("reading a lease"),
        }
    }

    /// Takes lease `name` for `holder` if nobody holds it. `None` if someone does.
    ///
    /// # Errors
    /// JetStream does not answer.
    pub async fn acquire(
        &self,
        name: &str,
        holder: &Holder,
        ttl: Duration,
    ) -> anyhow::Result<Option<Held>> {
        if self.holder(name).await?.is_some() {
            return Ok(None);
        }
        self.write(name, holder, 0, ttl).await
    }

    /// Extends a held lease. `None` if it was lost (expired and taken, or never ours).
    ///
    /// # Errors
    /// JetStream does not answer.
    pub async fn renew(
        &self,
        held: &Held,
        holder: &Holder,
        ttl: Duration,
    ) -> anyhow::Result<Option<Held>> {
        self.write(&held.name, holder, held.sequence, ttl).await
    }

    /// Gives a held lease up at once, so that another host can take it without waiting.
    pub async fn release(&self, held: &Held) {
        if let Err(err) = self.stream.delete_message(held.sequence).await {
            tracing::debug!(%err, lease = held.name, "releasing a lease");
        }
    }

    async fn write(
        &self,
        name: &str,
        holder: &Holder,
        expected: u64,
        ttl: Duration,
    ) -> anyhow::Result<Option<Held>> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        headers.insert("Nats-TTL", format!("{}s", ttl.as_secs().max(1)).as_str());
        let message = Outgoing {
            subject: lease_subject(name),
            headers,
            payload: serde_json::to_vec(holder)?.into(),
        };
        match publish(self.nats.client(), vec![message]).await {
            Ok(ack) => Ok(Some(Held {
                name: name.to_owned(),
                sequence: ack.sequence,
            })),
            Err(PublishError::Refused { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Publishes this host's record (kept for `ttl`).
    ///
    /// # Errors
    /// JetStream does not answer.
    pub async fn announce(&self, record: &HostRecord, ttl: Duration) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-TTL", format!("{}s", ttl.as_secs().max(1)).as_str());
        let message = Outgoing {
            subject: format!("refold.hosts.{}", super::wire::token_of(&record.id)),
            headers,
            payload: serde_json::to_vec(record)?.into(),
        };
        publish(self.nats.client(), vec![message]).await?;
        Ok(())
    }

    /// Every host record still kept.
    ///
    /// # Errors
    /// JetStream does not answer.
    pub async fn hosts(&self) -> anyhow::Result<Vec<HostRecord>> {
        let subjects: Vec<(String, usize)> = self
            .stream
            .info_with_subjects("refold.hosts.>")
            .await?
            .try_collect()
            .await?;
        let mut hosts = Vec::with_capacity(subjects.len());
        for (subject, _) in subjects {
            match self.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => match serde_json::from_slice(&message.payload) {
                    Ok(record) => hosts.push(record),
                    Err(err) => tracing::warn!(%err, subject, "an unreadable host record"),
                },
                Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        hosts.sort_by(|a: &HostRecord, b| a.id.cmp(&b.id));
        Ok(hosts)
    }
}

fn lease_subject(name: &str) -> String {
    format!("refold.leases.{}", super::wire::token_of(name))
}
