//! Cluster mode's storage on NATS JetStream: the only code that names NATS.
//!
//! - The log is one JetStream stream, one subject per Refold stream. An append publishes
//!   with the subject's expected last sequence (optimistic concurrency, decided by
//!   JetStream), the event ids as message ids (de-duplication) and, for several events,
//!   as one atomic batch. Nothing is ever deleted from the stream, so its sequences have
//!   no gaps: an event's position is its sequence − 1.
//! - Each host keeps a local copy of the log (a [`SledStore`] that only this copy writes),
//!   fed in order from JetStream; reads are served from it once it holds everything
//!   acknowledged before the read began ([`NatsStore::sync`]).
//! - Module state and records: [`ClusterKeyspaces`], a changelog in JetStream applied to a
//!   local copy on every host (see its docs for the failure analysis).
//! - Leases and the hosts' directory in JetStream key-value buckets ([`lease`]).

mod keyspaces;
pub mod lease;
mod log;
mod publish;
mod replica;
mod wire;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;

pub use keyspaces::ClusterKeyspaces;
pub use log::NatsStore;

/// Where the NATS servers are and how Refold's streams are made.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Server URLs (any of them; the client learns the rest of the cluster).
    pub urls: Vec<String>,
    /// Replicas of each stream; `None`: 3 when the cluster has at least 3 servers, else 1.
    pub replicas: Option<usize>,
}

/// One NATS server as this host sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServerStatus {
    pub url: String,
    /// Whether this host's connection goes to it.
    pub current: bool,
    /// Whether it accepts connections now.
    pub connected: bool,
}

/// A connection to the NATS cluster with JetStream.
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    urls: Vec<String>,
    replicas: usize,
}

impl Nats {
    /// Connects and waits (up to 30 s) until JetStream answers.
    ///
    /// # Errors
    /// No server can be reached, or JetStream is not enabled on them.
    pub async fn connect(config: &NatsConfig) -> anyhow::Result<Self> {
        let urls = config.urls.join(",");
        let addresses = config
            .urls
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading the NATS server URLs {urls}"))?;
        let client = async_nats::ConnectOptions::new()
            .name("refold")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            // An unanswered write is retried (with the same message ids, so at most once);
            // waiting long only delays that retry when a stream leader died.
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(addresses.as_slice())
            .await
            .with_context(|| format!("connecting to NATS at {urls}"))?;
        let js = jetstream::new(client.clone());
        let started = std::time::Instant::now();
        loop {
            match js.query_account().await {
                Ok(_) => break,
                Err(err) if started.elapsed() < Duration::from_secs(30) => {
                    tracing::info!(%err, "waiting for JetStream");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(err) => {
                    return Err(err).context("JetStream does not answer (is it enabled: -js?)");
                }
            }
        }
        // The servers this host was given, or that the one it reached announced, whichever
        // is more (announcements can arrive after the connection).
        let servers = config
            .urls
            .len()
            .max(1 + client.server_info().connect_urls.len());
        let replicas = config.replicas.unwrap_or(if servers >= 3 { 3 } else { 1 });
        tracing::info!(%urls, servers, replicas, "connected to NATS JetStream");
        Ok(Self {
            client,
            js,
            urls: config.urls.clone(),
            replicas,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The stream `config.name`, created with `config` unless it exists (then it is used
    /// as it is: another host may have created it a moment ago).
    ///
    /// # Errors
    /// JetStream refuses to create it.
    pub(crate) async fn ensure_stream(
        &self,
        config: jetstream::stream::Config,
    ) -> anyhow::Result<jetstream::stream::Stream> {
        let name = config.name.clone();
        for _ in 0..20 {
            if let Ok(stream) = self.js.get_stream(&name).await {
                let replicas = stream.cached_info().config.num_replicas;
                if replicas != config.num_replicas {
                    tracing::warn!(
                        stream = name,
                        replicas,
                        wanted = config.num_replicas,
                        "the stream exists with another number of replicas; using it as it is"
                    );
                }
                return Ok(stream);
            }
            match self.js.create_stream(config.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(err) => {
                    tracing::info!(%err, stream = name, "creating the stream; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        anyhow::bail!("JetStream would not create the stream {name}")
    }

    /// The configured servers: which one this host uses and which accept connections.
    pub async fn servers(&self) -> Vec<ServerStatus> {
        let info = self.client.server_info();
        let mut out = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let address = url
                .trim_start_matches("nats://")
                .trim_end_matches('/')
                .to_owned();
            let connected = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(address.as_str()),
            )
            .await
            .is_ok_and(|connection| connection.is_ok());
            let port_matches = address
                .rsplit(':')
                .next()
                .is_some_and(|port| port == info.port.to_string());
            let host_matches =
                address.starts_with(&format!("{}:", info.host)) || info.host == "0.0.0.0";
            out.push(ServerStatus {
                url: url.clone(),
                current: port_matches && host_matches,
                connected,
            });
        }
        out
    }
}
