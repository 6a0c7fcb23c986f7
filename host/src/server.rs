//! Running the server: open the store, serve the API, stop cleanly.
//!
//! Shutdown order matters for durability: on SIGINT/SIGTERM the listener stops accepting,
//! subscriptions end, in-flight requests finish (an append in flight is answered after its
//! flush), then the module runners stop after their current batch, and only then is the
//! store closed, which drains the writer and flushes once more.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::{Cluster, OpenHosted};
use crate::engine::{ModuleLimits, WasmEngine};
use crate::groups::ConsumerGroups;
use crate::hosted::{Hosted, HostedSlot};
use crate::http::auth::Tokens;
use crate::http::{self, AppState, Limits};
use crate::modules::{Activation, ModuleRegistry, ModuleSettings};
use crate::store::nats::{ClusterKeyspaces, Nats, NatsConfig, NatsStore};
use crate::store::{EventStore, Keyspaces, SledStore, StoreConfig};

/// Everything `refold serve` needs.
#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub module_limits: ModuleLimits,
    /// Earlier versions of each module whose state is kept for rollback.
    pub keep_versions: usize,
    /// Bearer tokens (empty: authentication off).
    pub tokens: Arc<Tokens>,
    /// Serve a non-loopback address without tokens.
    pub insecure: bool,
    pub cache_bytes: u64,
    /// Modules to deploy at startup (name, file), unless already deployed with those bytes.
    pub deploy: Vec<(String, PathBuf)>,
    /// Cluster mode: the log on NATS JetStream instead of the embedded store.
    pub cluster: Option<ClusterConfig>,
}

/// How a host joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nats: NatsConfig,
    /// This host's id (default: derived from the address it advertises).
    pub host_id: Option<String>,
    /// The address other hosts reach this one at (default: the listen address).
    pub advertise: Option<String>,
}

/// Serves until SIGINT or SIGTERM.
///
/// # Errors
/// The store cannot be opened or the address cannot be bound.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let running = start(config).await?;
    stop_signal().await;
    running.stop().await
}

/// What the server runs on: the embedded store, or a cluster's log on JetStream.
enum Backend {
    Embedded(Arc<SledStore>),
    Cluster {
        store: Arc<NatsStore>,
        keyspaces: ClusterKeyspaces,
        cluster: Arc<Cluster>,
    },
}

/// A server running in this process (for `serve`, and for tests that want one on an
/// ephemeral port: listen on port 0 and read [`RunningServer::address`]).
pub struct RunningServer {
    /// Where it listens.
    pub address: SocketAddr,
    pub store: Arc<dyn EventStore>,
    pub hosted: Arc<HostedSlot>,
    backend: Backend,
    shutdown: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight requests, stops the modules and closes the
    /// store (in a cluster: hands the modules lease over first).
    ///
    /// # Errors
    /// Serving failed, or the store did not close cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = self.shutdown.send(true);
        self.serving.await.context("the server task")??;
        match self.backend {
            Backend::Embedded(store) => {
                let hosted = self.hosted;
                tokio::task::spawn_blocking(move || {
                    if let Some(hosted) = hosted.replace(None) {
                        hosted.shutdown();
                    }
                    store.close();
                })
                .await
                .context("closing the store")?;
            }
            Backend::Cluster {
                store,
                keyspaces,
                cluster,
            } => {
                cluster.leave().await;
                keyspaces.close();
                store.close().await;
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens the store, loads and deploys the modules, binds the address and serves in the
/// background.
///
/// # Errors
/// The store cannot be opened, a module cannot be deployed, or the address cannot be
/// bound.
pub async fn start(mut config: ServerConfig) -> anyhow::Result<RunningServer> {
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() && !config.insecure {
        anyhow::bail!(
            "refusing to listen on {} with no tokens configured: anyone who can reach it could append and deploy code. Configure --tokens-file, listen on a loopback address, or pass --insecure",
            config.listen
        );
    }
    if config.tokens.is_empty() {
        tracing::warn!("no tokens configured: authentication is off");
    }
    // Bound first: in a cluster the other hosts need the address this one serves on.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    let mut store_config = StoreConfig::new(config.data_dir.join("store"));
    store_config.cache_bytes = config.cache_bytes;
    let engine = Arc::new(WasmEngine::new().context("configuring the WebAssembly engine")?);
    let open_hosted = {
        let compiled_dir = config.data_dir.join("compiled");
        let module_limits = config.module_limits.clone();
        let keep_versions = config.keep_versions;
        let deploy = config.deploy.clone();
        move |log: Arc<dyn EventStore>, keyspaces: Arc<dyn Keyspaces>| {
            let modules = ModuleRegistry::open(
                engine.clone(),
                log.clone(),
                Some(log.clone()),
                keyspaces.clone(),
                compiled_dir.clone(),
                module_limits.clone(),
                keep_versions,
            )
            .context("loading the deployed modules")?;
            deploy_at_start(&modules, &deploy)?;
            let groups = ConsumerGroups::open(log, keyspaces.as_ref())
                .context("loading the consumer groups")?;
            anyhow::Ok(Hosted { modules, groups })
        }
    };
    let slot = Arc::new(HostedSlot::default());
    let (store, backend, cluster): (Arc<dyn EventStore>, Backend, _) = match config.cluster.take() {
        None => {
            let (store, hosted) = tokio::task::spawn_blocking(move || {
                let store = Arc::new(SledStore::open(&store_config)?);
                let hosted = open_hosted(store.clone(), store.clone())?;
                anyhow::Ok((store, hosted))
            })
            .await
            .context("opening the store")??;
            slot.replace(Some(Arc::new(hosted)));
            (store.clone(), Backend::Embedded(store), None)
        }
        Some(cluster_config) => {
            let nats = Arc::new(Nats::connect(&cluster_config.nats).await?);
            // A message holds one event: events and appends stay within what NATS carries.
            let max_payload = nats.client().server_info().max_payload;
            config.limits.max_events_per_append = config.limits.max_events_per_append.min(1000);
            config.limits.max_event_bytes = config
                .limits
                .max_event_bytes
                .min(max_payload.saturating_sub(64 * 1024).max(1024));
            store_config.path = config.data_dir.join("copy");
            let store = Arc::new(NatsStore::open(nats.clone(), store_config).await?);
            let keyspaces = ClusterKeyspaces::open(nats.clone(), store.copy().clone()).await?;
            let advertise = cluster_config
                .advertise
                .clone()
                .unwrap_or_else(|| address.to_string());
            let id = cluster_config
                .host_id
                .clone()
                .unwrap_or_else(|| format!("refold-{}", advertise.replace([':', '.'], "-")));
            let open: OpenHosted = {
                let log: Arc<dyn EventStore> = store.clone();
                let keyspaces: Arc<dyn Keyspaces> = Arc::new(keyspaces.clone());
                Arc::new(move || open_hosted(log.clone(), keyspaces.clone()))
            };
            let cluster =
                Cluster::join(id, advertise, nats, keyspaces.clone(), slot.clone(), open).await?;
            (
                store.clone(),
                Backend::Cluster {
                    store,
                    keyspaces,
                    cluster: cluster.clone(),
                },
                Some(cluster),
            )
        }
    };
    let (shutdown, mut stopping) = watch::channel(false);
    let app = http::router(AppState {
        store: store.clone(),
        hosted: slot.clone(),
        address: address.to_string(),
        cluster,
        limits: config.limits,
        tokens: config.tokens.clone(),
        metrics: Arc::default(),
        openapi: Arc::default(),
        shutdown: stopping.clone(),
    });
    tracing::info!(%address, "refold is serving");
    let serving = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })
            .await
            .context("serving HTTP")
    });
    Ok(RunningServer {
        address,
        store,
        hosted: slot,
        backend,
        shutdown,
        serving,
    })
}

/// Deploys the modules named at startup (unchanged bytes are a no-op).
fn deploy_at_start(modules: &ModuleRegistry, deploy: &[(String, PathBuf)]) -> anyhow::Result<()> {
    for (name, file) in deploy {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let deployed = modules
            .deploy(name, &bytes, ModuleSettings::default(), Activation::Auto)
            .with_context(|| format!("deploying {} as {name}", file.display()))?;
        tracing::info!(module = name, version = %deployed.module.version, changed = deployed.changed, "deployed at startup");
    }
    Ok(())
}

/// Resolves on the first SIGINT (ctrl-c) or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
