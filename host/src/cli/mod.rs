//! The `refold` command line: `serve` runs the server; the other commands are clients of a
//! running server (`--server`, or `REFOLD_SERVER`).

mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// The store's page cache, in MiB.
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
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
            cache_mib,
        } => {
            server::serve(ServerConfig {
                data_dir: data,
                listen,
                limits: Limits {
                    max_body_bytes,
                    max_events_per_append,
                    max_event_bytes,
                },
                cache_bytes: cache_mib * 1024 * 1024,
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
    }
}
