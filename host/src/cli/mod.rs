//! The `refold` command line: `serve` runs the server; the other commands are clients of a
//! running server (`--server`, or `REFOLD_SERVER`).

mod client;
mod groups;
mod output;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::server;

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
    /// A bearer token, when the server requires one.
    #[arg(long, env = "REFOLD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the server's answers as JSON (for scripts) instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum TokenAction {
    /// A new random token, and its line for the token file.
    New {
        /// read, write or admin.
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        /// A name to remember it by.
        #[arg(long)]
        name: Option<String>,
    },
    /// The token-file line of an existing token.
    Hash {
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
        token: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on an embedded store. Settings come from flags, REFOLD_* environment
    /// variables, and an optional TOML file (`--config`), in that order of precedence.
    Serve(serve::ServeArgs),
    /// Make or hash bearer tokens for a token file (`refold serve --tokens-file`).
    Token {
        #[command(subcommand)]
        action: TokenAction,
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
    /// List streams by name.
    Streams {
        /// Only streams whose name starts with this (a category: `account-`).
        #[arg(long, default_value = "")]
        prefix: String,
        /// List streams after this name (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Follow the log live (or one stream), printing events as they are appended.
    Tail {
        /// Follow only this stream.
        stream: Option<String>,
        /// Start at this position (a stream: revision) instead of the end.
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Back up the log as NDJSON: one event per line, with its id, stream, revision,
    /// position and recording time, up to the head when the export starts.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Restore a backup made by `refold export` into an empty store, exactly as it was.
    Import {
        /// The NDJSON file (`-` for standard input).
        file: PathBuf,
        /// Continue an interrupted import: skip the events the store already holds.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print a shell completion script: `refold completions bash > /etc/bash_completion.d/refold`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Consumer groups: create, list, show, remove, consume, parked events.
    Group {
        #[command(subcommand)]
        action: groups::GroupAction,
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

impl Command {
    /// The server options of a client command.
    fn client(&self) -> Option<&ServerArg> {
        let server = match self {
            Command::Append { server, .. }
            | Command::Read { server, .. }
            | Command::Streams { server, .. }
            | Command::Tail { server, .. }
            | Command::Export { server, .. }
            | Command::Import { server, .. }
            | Command::Deploy { server, .. }
            | Command::Versions { server, .. }
            | Command::Diff { server, .. }
            | Command::Activate { server, .. }
            | Command::Projections { server, .. }
            | Command::State { server, .. }
            | Command::Group { server, .. } => server,
            Command::Serve(_) | Command::Token { .. } | Command::Completions { .. } => {
                return None;
            }
        };
        Some(server)
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let args = match serve::with_config_file(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match &cli.command {
        Command::Serve(args) if args.log_format == "json" => logs.json().init(),
        _ => logs.init(),
    }
    if let Some(server) = cli.command.client() {
        if let Some(token) = &server.token {
            client::use_token(token);
        }
        output::use_json(server.json);
    }
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
        Command::Serve(args) => server::serve(args.into_config()?).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "refold", &mut std::io::stdout());
            Ok(())
        }
        Command::Streams {
            prefix,
            after,
            limit,
            server,
        } => client::streams(&server.server, &prefix, after.as_deref(), limit).await,
        Command::Tail {
            stream,
            from,
            count,
            server,
        } => client::tail(&server.server, stream.as_deref(), from, count).await,
        Command::Group { action, server } => groups::run(&server.server, action).await,
        Command::Export { out, server } => client::export(&server.server, out.as_deref()).await,
        Command::Import {
            file,
            resume,
            server,
        } => client::import(&server.server, &file, resume).await,
        Command::Token { action } => {
            match action {
                TokenAction::New { role, name } => {
                    let token = serve::new_token();
                    println!("token: {token}");
                    println!("line for the token file:");
                    println!(
                        "{role} {} {}",
                        crate::http::auth::hash_token(&token),
                        name.unwrap_or_default()
                    );
                }
                TokenAction::Hash { role, token } => {
                    println!("{role} {}", crate::http::auth::hash_token(&token));
                }
            }
            Ok(())
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
