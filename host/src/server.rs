//! Running the server: open the store, serve the API, stop cleanly.
//!
//! Shutdown order matters for durability: on SIGINT/SIGTERM the listener stops accepting,
//! subscriptions end, in-flight requests finish (an append in flight is answered after its
//! flush), and only then is the store closed, which drains the writer and flushes once more.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{self, AppState, Limits};
use crate::store::{SledStore, StoreConfig};

/// Everything `refold serve` needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub cache_bytes: u64,
}

/// Serves until SIGINT or SIGTERM.
///
/// # Errors
/// The store cannot be opened or the address cannot be bound.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let mut store_config = StoreConfig::new(&config.data_dir);
    store_config.cache_bytes = config.cache_bytes;
    let store = Arc::new(
        tokio::task::spawn_blocking(move || SledStore::open(&store_config))
            .await
            .context("opening the store")??,
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = http::router(AppState {
        store: store.clone(),
        limits: config.limits,
        shutdown: shutdown_rx,
    });
    tracing::info!(address = %listener.local_addr()?, "refold is serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = shutdown_tx.send(true);
        })
        .await
        .context("serving HTTP")?;
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("closing the store")?;
    tracing::info!("stopped");
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
