//! Cluster mode: several hosts on one JetStream log. Every host serves the whole API; the
//! modules run on one host at a time, the holder of the `modules` lease, and the other
//! hosts forward module requests to it (`http/forward.rs`). When the holder dies its lease
//! expires and another host takes it, catches up on module state (kept in JetStream, see
//! [`crate::store::nats::ClusterKeyspaces`]) and resumes every module from its checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::hosted::{Hosted, HostedSlot};
use crate::store::nats::lease::{Held, Holder, HostRecord, Leases};
use crate::store::nats::{ClusterKeyspaces, Nats};

/// The lease naming the host that runs the modules.
const MODULES_LEASE: &str = "modules";
/// A lease lives this long unless renewed...
const LEASE_TTL: Duration = Duration::from_secs(4);
/// ...and is renewed (or, by the others, tried) this often.
const LEASE_TICK: Duration = Duration::from_millis(1000);
/// A holder that could not renew for this long stops its modules: by then another host
/// may hold the lease.
const HOLD_LIMIT: Duration = Duration::from_millis(3000);
/// A host record older than this means the host is gone.
const ALIVE_WITHIN: Duration = Duration::from_secs(5);
/// How long a host record is kept.
const RECORD_TTL: Duration = Duration::from_secs(3600);

/// Opens the modules and consumer groups when this host takes the modules lease.
pub type OpenHosted = Arc<dyn Fn() -> anyhow::Result<Hosted> + Send + Sync>;

/// This host's place in the cluster.
pub struct Cluster {
    id: String,
    address: String,
    nats: Arc<Nats>,
    leases: Leases,
    keyspaces: ClusterKeyspaces,
    slot: Arc<HostedSlot>,
    /// Who runs the modules, as last seen: (host id, address).
    holder: Mutex<Option<(String, String)>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Where the modules run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModulesHome {
    /// On this host.
    Here,
    /// On the host serving at this address.
    At(String),
    /// Nowhere yet: the cluster is starting, or the modules are moving.
    Unknown,
}

/// `GET /cluster`.
#[derive(Serialize)]
pub struct ClusterStatus {
    pub id: String,
    pub hosts: Vec<HostStatus>,
    pub nats: Vec<crate::store::nats::ServerStatus>,
}

#[derive(Serialize)]
pub struct HostStatus {
    pub id: String,
    pub address: String,
    pub alive: bool,
    pub modules: Vec<String>,
}

impl Cluster {
    /// Joins the cluster and starts competing for the modules lease.
    ///
    /// # Errors
    /// JetStream refuses the lease stream.
    pub async fn join(
        id: String,
        address: String,
        nats: Arc<Nats>,
        keyspaces: ClusterKeyspaces,
        slot: Arc<HostedSlot>,
        open: OpenHosted,
    ) -> anyhow::Result<Arc<Self>> {
        let leases = Leases::open(nats.clone()).await?;
        let (stop, stopping) = watch::channel(false);
        let cluster = Arc::new(Self {
            id,
            address,
            nats,
            leases,
            keyspaces,
            slot,
            holder: Mutex::new(None),
            stop,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(run(cluster.clone(), open, stopping));
        *cluster.task.lock() = Some(task);
        Ok(cluster)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the modules run, as this host knows now.
    pub fn modules_home(&self) -> ModulesHome {
        if self.slot.current().is_some() {
            return ModulesHome::Here;
        }
        match self.holder.lock().as_ref() {
            Some((id, address)) if *id != self.id => ModulesHome::At(address.clone()),
            _ => ModulesHome::Unknown,
        }
    }

    /// # Errors
    /// JetStream does not answer.
    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        let now = chrono::Utc::now().timestamp_millis();
        let hosts = self
            .leases
            .hosts()
            .await?
            .into_iter()
            .map(|record| {
                let alive = now - record.updated_ms <= ALIVE_WITHIN.as_millis() as i64;
                HostStatus {
                    alive,
                    id: record.id,
                    address: record.address,
                    // A host gone runs nothing, whatever it last said.
                    modules: if alive { record.modules } else { Vec::new() },
                }
            })
            .collect();
        Ok(ClusterStatus {
            id: self.id.clone(),
            hosts,
            nats: self.nats.servers().await,
        })
    }

    /// Stops the modules if they run here and hands the lease over at once.
    pub async fn leave(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The lease loop: renew or take the modules lease, start or stop the modules here
/// accordingly, and publish this host's record.
async fn run(cluster: Arc<Cluster>, open: OpenHosted, mut stopping: watch::Receiver<bool>) {
    let me = Holder {
        host: cluster.id.clone(),
        token: uuid::Uuid::new_v4().simple().to_string(),
        address: cluster.address.clone(),
    };
    let mut held: Option<(Held, Instant)> = None;
    loop {
        held = tick(&cluster, &open, &me, held).await;
        let modules = cluster
            .slot
            .modules()
            .map(|registry| {
                registry
                    .list()
                    .into_iter()
                    .map(|m| m.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let record = HostRecord {
            id: cluster.id.clone(),
            address: cluster.address.clone(),
            modules,
            updated_ms: chrono::Utc::now().timestamp_millis(),
        };
        if let Err(err) = cluster.leases.announce(&record, RECORD_TTL).await {
            tracing::warn!(%err, "cannot publish this host's record");
        }
        tokio::select! {
            () = tokio::time::sleep(LEASE_TICK) => {}
            _ = stopping.wait_for(|stop| *stop) => break,
        }
    }
    // Leaving: stop the modules (each commits its last batch), then free the lease.
    stop_modules(&cluster).await;
    if let Some((lease, _)) = held {
        cluster.leases.release(&lease).await;
    }
    let record = HostRecord {
        id: cluster.id.clone(),
        address: cluster.address.clone(),
        modules: Vec::new(),
        updated_ms: 0,
    };
    let _ = cluster.leases.announce(&record, RECORD_TTL).await;
}

async fn tick(
    cluster: &Arc<Cluster>,
    open: &OpenHosted,
    me: &Holder,
    held: Option<(Held, Instant)>,
) -> Option<(Held, Instant)> {
    if let Some((lease, renewed)) = held {
        match cluster.leases.renew(&lease, me, LEASE_TTL).await {
            Ok(Some(lease)) => return Some((lease, Instant::now())),
            Ok(None) => {
                tracing::warn!("the modules lease was lost: stopping the modules here");
                stop_modules(cluster).await;
            }
            Err(err) if renewed.elapsed() < HOLD_LIMIT => {
                tracing::warn!(%err, "cannot renew the modules lease yet");
                return Some((lease, renewed));
            }
            Err(err) => {
                tracing::warn!(%err, "the modules lease could not be renewed in time: stopping the modules here");
                stop_modules(cluster).await;
            }
        }
    }
    match cluster.leases.holder(MODULES_LEASE).await {
        Ok(Some((holder, _))) => {
            let address = if holder.address.is_empty() {
                cluster
                    .leases
                    .hosts()
                    .await
                    .ok()
                    .and_then(|hosts| hosts.into_iter().find(|h| h.id == holder.host))
                    .map(|h| h.address)
            } else {
                Some(holder.address)
            };
            if let Some(address) = address {
                *cluster.holder.lock() = Some((holder.host, address));
            }
            return None;
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(%err, "cannot read the modules lease");
            return None;
        }
    }
    let lease = match cluster.leases.acquire(MODULES_LEASE, me, LEASE_TTL).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!(%err, "cannot take the modules lease");
            return None;
        }
    };
    let taken = Instant::now();
    tracing::info!(
        host = cluster.id,
        "took the modules lease: starting the modules here"
    );
    match start_modules(cluster, open).await {
        Ok(()) => {
            *cluster.holder.lock() = Some((cluster.id.clone(), cluster.address.clone()));
            tracing::info!(
                took_ms = taken.elapsed().as_millis() as u64,
                "the modules run on this host"
            );
            // Opening may have taken a while: renew at once.
            match cluster.leases.renew(&lease, me, LEASE_TTL).await {
                Ok(Some(lease)) => Some((lease, Instant::now())),
                _ => {
                    tracing::warn!("the modules lease was lost while starting: stopping");
                    stop_modules(cluster).await;
                    None
                }
            }
        }
        Err(err) => {
            tracing::error!(%err, "cannot start the modules here; giving the lease back");
            cluster.leases.release(&lease).await;
            None
        }
    }
}

async fn start_modules(cluster: &Arc<Cluster>, open: &OpenHosted) -> anyhow::Result<()> {
    cluster
        .keyspaces
        .sync()
        .await
        .context("catching up on module state")?;
    cluster.keyspaces.begin_writing();
    let open = open.clone();
    let registry = tokio::task::spawn_blocking(move || open()).await??;
    cluster.slot.replace(Some(Arc::new(registry)));
    Ok(())
}

async fn stop_modules(cluster: &Arc<Cluster>) {
    if let Some(hosted) = cluster.slot.replace(None) {
        let _ = tokio::task::spawn_blocking(move || hosted.shutdown()).await;
    }
    *cluster.holder.lock() = None;
}
