//! The `refold` command line: `serve` runs the server; the other commands are clients of a
//! running server (`--server`, or `REFOLD_SERVER`).

mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::engine::ModuleLimits;
use crate::http::Limits;
use crate::server::{self, ServerConfig};

#[derive(Parser)]
#[command(
    name = "refold",
    version,
    about = "An event store that runs WebAssembly reducers and projections"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ServerArg {
    /// The Refold server to talk to.
    #[arg(
        long,
        env = "REFOLD_SERVER",
        default_value = "http://127.0.0.1:7420",
        global = true
    )]
    server: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on an embedded store.
    Serve {
        /// The folder holding the store (created if missing).
        #[arg(long, default_value = "./refold-data")]
        data: PathBuf,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:7420")]
        listen: SocketAddr,
        /// Largest request body, in bytes.
        #[arg(long, default_value_t = Limits::default().max_body_bytes)]
        max_body_bytes: usize,
        /// Most events in one append.
        #[arg(long, default_value_t = Limits::default().max_events_per_append)]
        max_events_per_append: usize,
        /// Largest single event (type + data + metadata), in bytes.
        #[arg(long, default_value_t = Limits::default().max_event_bytes)]
        max_event_bytes: usize,
        /// Largest module upload, in bytes.
        #[arg(long, default_value_t = Limits::default().max_module_bytes)]
        max_module_bytes: usize,
        /// The store's page cache, in MiB.
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
        /// Deploy a module at startup: NAME=FILE.wasm (repeatable). Unchanged bytes are a no-op.
        #[arg(long, value_parser = parse_deploy)]
        deploy: Vec<(String, PathBuf)>,
        /// Linear memory per module instance, in MiB.
        #[arg(long, default_value_t = (ModuleLimits::default().memory_bytes / (1024 * 1024)) as u64)]
        module_memory_mib: u64,
        /// Wall time per call into a module, in milliseconds.
        #[arg(long, default_value_t = ModuleLimits::default().call_timeout.as_millis() as u64)]
        module_call_timeout_ms: u64,
        /// Largest reducer state or projection value, in bytes.
        #[arg(long, default_value_t = ModuleLimits::default().max_state_bytes)]
        module_max_state_bytes: usize,
        /// Earlier versions of each module whose state is kept for rollback.
        #[arg(long, default_value_t = 2)]
        keep_versions: usize,
    },
    /// Deploy a module (a WebAssembly component) under a name. A new version of a deployed
    /// module rebuilds beside the current one, which serves until it is replaced.
    Deploy {
        name: String,
        file: PathBuf,
        /// auto: the new version becomes current once caught up; manual: when activated.
        #[arg(long, default_value = "auto")]
        activate: String,
        /// Show the rebuild's progress until the new version has caught up.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List a module's versions: current, candidate, kept, replays.
    Versions {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Compare a version's state with the current version's.
    Diff {
        name: String,
        version: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Make a version current (a candidate, or a kept one: a rollback).
    Activate {
        name: String,
        version: String,
        /// Show progress until the version has caught up.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List deployed modules, or show one.
    Projections {
        /// Show this module in detail.
        name: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Query a module's state: a reducer's state of one stream, or a projection's keys.
    State {
        /// The module.
        name: String,
        /// A reducer: the stream whose state to show.
        #[arg(long, conflicts_with_all = ["key", "prefix"])]
        stream: Option<String>,
        /// A projection: one key.
        #[arg(long, conflicts_with = "prefix")]
        key: Option<String>,
        /// A projection: every key with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Wait until the module has processed the log past this position.
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Append one event to a stream.
    Append {
        stream: String,
        /// The event type.
        #[arg(long = "type")]
        event_type: String,
        /// The event data, as JSON.
        #[arg(long)]
        data: String,
        /// The event metadata, as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// The event id (a UUID); retrying with the same id appends nothing twice.
        #[arg(long)]
        id: Option<String>,
        /// any, no_stream, exists, or the revision of the stream's last event.
        #[arg(long)]
        expected_revision: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Read a stream, or the global log with --all.
    Read {
        /// The stream to read (omit with --all).
        #[arg(required_unless_present = "all")]
        stream: Option<String>,
        /// Read the global log instead of one stream.
        #[arg(long, conflicts_with = "stream")]
        all: bool,
        /// First revision (stream) or position (--all) to read.
        #[arg(long)]
        from: Option<u64>,
        /// Most events to print.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Read the stream from its end.
        #[arg(long, conflicts_with = "all")]
        backward: bool,
        #[command(flatten)]
        server: ServerArg,
    },
}

fn parse_deploy(value: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = value
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=FILE, not {value:?}"))?;
    Ok((name.to_owned(), PathBuf::from(file)))
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            data,
            listen,
            max_body_bytes,
            max_events_per_append,
            max_event_bytes,
            max_module_bytes,
            cache_mib,
            deploy,
            module_memory_mib,
            module_call_timeout_ms,
            module_max_state_bytes,
            keep_versions,
        } => {
            server::serve(ServerConfig {
                data_dir: data,
                listen,
                limits: Limits {
                    max_body_bytes,
                    max_events_per_append,
                    max_event_bytes,
                    max_module_bytes,
                },
                cache_bytes: cache_mib * 1024 * 1024,
                module_limits: ModuleLimits {
                    memory_bytes: (module_memory_mib * 1024 * 1024) as usize,
                    call_timeout: std::time::Duration::from_millis(module_call_timeout_ms),
                    max_state_bytes: module_max_state_bytes,
                    ..ModuleLimits::default()
                },
                deploy,
                keep_versions,
            })
            .await
        }
        Command::Append {
            stream,
            event_type,
            data,
            metadata,
            id,
            expected_revision,
            server,
        } => {
            client::append(
                &server.server,
                &stream,
                client::NewEvent {
                    event_type,
                    data,
                    metadata,
                    id,
                },
                expected_revision.as_deref(),
            )
            .await
        }
        Command::Read {
            stream,
            all,
            from,
            limit,
            backward,
            server,
        } => {
            let target = match (all, stream) {
                (true, _) | (false, None) => client::ReadTarget::All,
                (false, Some(stream)) => client::ReadTarget::Stream { stream, backward },
            };
            client::read(&server.server, target, from, limit).await
        }
        Command::Deploy {
            name,
            file,
            activate,
            wait,
            server,
        } => client::deploy(&server.server, &name, &file, &activate, wait).await,
        Command::Versions { name, server } => client::versions(&server.server, &name).await,
        Command::Diff {
            name,
            version,
            server,
        } => client::diff(&server.server, &name, &version).await,
        Command::Activate {
            name,
            version,
            wait,
            server,
        } => client::activate(&server.server, &name, &version, wait).await,
        Command::Projections { name, server } => {
            client::projections(&server.server, name.as_deref()).await
        }
        Command::State {
            name,
            stream,
            key,
            prefix,
            after,
            server,
        } => {
            let query = match (stream, key) {
                (Some(stream), _) => client::StateQuery::Stream(stream),
                (None, Some(key)) => client::StateQuery::Key(key),
                (None, None) => client::StateQuery::Prefix(prefix.unwrap_or_default()),
            };
            client::state(&server.server, &name, query, after).await
        }
    }
}
