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

use crate::engine::{ModuleLimits, WasmEngine};
use crate::http::auth::Tokens;
use crate::http::{self, AppState, Limits};
use crate::modules::{Activation, ModuleRegistry, ModuleSettings};
use crate::store::{SledStore, StoreConfig};

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

/// A server running in this process (for `serve`, and for tests that want one on an
/// ephemeral port: listen on port 0 and read [`RunningServer::address`]).
pub struct RunningServer {
    /// Where it listens.
    pub address: SocketAddr,
    pub store: Arc<SledStore>,
    pub modules: Arc<ModuleRegistry>,
    shutdown: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight requests, stops the modules and closes the
    /// store.
    ///
    /// # Errors
    /// Serving failed, or the store did not close cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = self.shutdown.send(true);
        self.serving.await.context("the server task")??;
        let (modules, store) = (self.modules, self.store);
        tokio::task::spawn_blocking(move || {
            modules.shutdown();
            store.close();
        })
        .await
        .context("closing the store")?;
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
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() && !config.insecure {
        anyhow::bail!(
            "refusing to listen on {} with no tokens configured: anyone who can reach it could append and deploy code. Configure --tokens-file, listen on a loopback address, or pass --insecure",
            config.listen
        );
    }
    if config.tokens.is_empty() {
        tracing::warn!("no tokens configured: authentication is off");
    }
    let mut store_config = StoreConfig::new(config.data_dir.join("store"));
    store_config.cache_bytes = config.cache_bytes;
    let compiled_dir = config.data_dir.join("compiled");
    let module_limits = config.module_limits.clone();
    let keep_versions = config.keep_versions;
    let (store, modules) = tokio::task::spawn_blocking(move || {
        let store = Arc::new(SledStore::open(&store_config)?);
        let engine = Arc::new(WasmEngine::new().context("configuring the WebAssembly engine")?);
        let modules = ModuleRegistry::open(
            engine,
            store.clone(),
            store.clone(),
            compiled_dir,
            module_limits,
            keep_versions,
        )
        .context("loading the deployed modules")?;
        anyhow::Ok((store, modules))
    })
    .await
    .context("opening the store")??;
    for (name, file) in &config.deploy {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let registry = modules.clone();
        let target = name.clone();
        let deployed = tokio::task::spawn_blocking(move || {
            registry.deploy(&target, &bytes, ModuleSettings::default(), Activation::Auto)
        })
        .await?
        .with_context(|| format!("deploying {} as {name}", file.display()))?;
        tracing::info!(module = name, version = %deployed.module.version, changed = deployed.changed, "deployed at startup");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    let (shutdown, mut stopping) = watch::channel(false);
    let app = http::router(AppState {
        store: store.clone(),
        modules: modules.clone(),
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
        modules,
        shutdown,
        serving,
    })
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
