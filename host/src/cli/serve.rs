//! `refold serve`: every server setting, from flags, `REFOLD_*` environment variables or a
//! TOML file given with `--config` (keys are the flag names: `listen = "0.0.0.0:7420"`,
//! `module-memory-mib = 128`, `deploy = ["a=a.wasm"]`). Flags win over the file, which wins
//! over the environment.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::engine::ModuleLimits;
use crate::http::Limits;
use crate::http::auth::Tokens;
use crate::server::{ClusterConfig, ServerConfig};
use crate::store::nats::NatsConfig;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of these settings (flag names as keys).
    #[arg(long, env = "REFOLD_CONFIG")]
    config: Option<PathBuf>,
    /// The folder holding the store (created if missing).
    #[arg(long, env = "REFOLD_DATA", default_value = "./refold-data")]
    data: PathBuf,
    /// The address to listen on.
    #[arg(long, env = "REFOLD_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Bearer tokens, one per line: `<role> <sha256-hex> [name]` (see `refold token new`).
    /// Without it, authentication is off.
    #[arg(long, env = "REFOLD_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Listen on a non-loopback address even without tokens.
    #[arg(long, env = "REFOLD_INSECURE")]
    insecure: bool,
    /// Log format on stderr: text or json (filter with RUST_LOG, e.g. `info,refold=debug`).
    #[arg(long, env = "REFOLD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Largest request body, in bytes.
    #[arg(long, env = "REFOLD_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Most events in one append.
    #[arg(long, env = "REFOLD_MAX_EVENTS_PER_APPEND", default_value_t = Limits::default().max_events_per_append)]
    max_events_per_append: usize,
    /// Largest single event (type + data + metadata), in bytes.
    #[arg(long, env = "REFOLD_MAX_EVENT_BYTES", default_value_t = Limits::default().max_event_bytes)]
    max_event_bytes: usize,
    /// Largest module upload, in bytes.
    #[arg(long, env = "REFOLD_MAX_MODULE_BYTES", default_value_t = Limits::default().max_module_bytes)]
    max_module_bytes: usize,
    /// The store's page cache, in MiB.
    #[arg(long, env = "REFOLD_CACHE_MIB", default_value_t = 256)]
    cache_mib: u64,
    /// Deploy a module at startup: NAME=FILE.wasm (repeatable). Unchanged bytes are a no-op.
    #[arg(long, value_parser = parse_deploy)]
    deploy: Vec<(String, PathBuf)>,
    /// Linear memory per module instance, in MiB (default for modules deployed without one).
    #[arg(long, env = "REFOLD_MODULE_MEMORY_MIB", default_value_t = (ModuleLimits::default().memory_bytes >> 20) as u64)]
    module_memory_mib: u64,
    /// Wall time per call into a module, in milliseconds.
    #[arg(long, env = "REFOLD_MODULE_CALL_TIMEOUT_MS", default_value_t = ModuleLimits::default().call_timeout.as_millis() as u64)]
    module_call_timeout_ms: u64,
    /// Largest reducer state or projection value, in bytes.
    #[arg(long, env = "REFOLD_MODULE_MAX_STATE_BYTES", default_value_t = ModuleLimits::default().max_state_bytes)]
    module_max_state_bytes: usize,
    /// Most bytes a projection may write in one call.
    #[arg(long, env = "REFOLD_MODULE_MAX_CALL_WRITE_BYTES", default_value_t = ModuleLimits::default().max_call_write_bytes)]
    module_max_call_write_bytes: usize,
    /// Longest key a projection may put or delete, in bytes.
    #[arg(long, env = "REFOLD_MODULE_MAX_KEY_BYTES", default_value_t = ModuleLimits::default().max_key_bytes)]
    module_max_key_bytes: usize,
    /// Most bytes one state-store scan may return to a module.
    #[arg(long, env = "REFOLD_MODULE_MAX_SCAN_BYTES", default_value_t = ModuleLimits::default().max_scan_bytes)]
    module_max_scan_bytes: usize,
    /// Most bytes one draw of randomness may ask for.
    #[arg(long, env = "REFOLD_MODULE_MAX_RANDOM_BYTES", default_value_t = ModuleLimits::default().max_random_bytes)]
    module_max_random_bytes: usize,
    /// What is kept of each module's output, in bytes.
    #[arg(long, env = "REFOLD_MODULE_LOG_BYTES", default_value_t = ModuleLimits::default().log_bytes)]
    module_log_bytes: usize,
    /// Earlier versions of each module whose state is kept for rollback.
    #[arg(long, env = "REFOLD_KEEP_VERSIONS", default_value_t = 2)]
    keep_versions: usize,
    /// Cluster mode: keep the log in NATS JetStream at these servers (URL[,URL...])
    /// instead of the embedded store; every host given the same servers shares the log.
    #[arg(long, env = "REFOLD_NATS", value_delimiter = ',')]
    nats: Vec<String>,
    /// Cluster mode: replicas of Refold's JetStream streams (default: 3 when the cluster
    /// has at least 3 servers, else 1).
    #[arg(long, env = "REFOLD_NATS_REPLICAS")]
    nats_replicas: Option<usize>,
    /// Cluster mode: this host's id (default: derived from its advertised address).
    #[arg(long, env = "REFOLD_HOST_ID")]
    host_id: Option<String>,
    /// Cluster mode: the address other hosts reach this one at (default: --listen).
    #[arg(long, env = "REFOLD_ADVERTISE")]
    advertise: Option<String>,
}

fn parse_deploy(value: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = value
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=FILE, not {value:?}"))?;
    Ok((name.to_owned(), PathBuf::from(file)))
}

impl ServeArgs {
    /// # Errors
    /// The token file cannot be read.
    pub fn into_config(self) -> anyhow::Result<ServerConfig> {
        let tokens = match &self.tokens_file {
            Some(path) => Tokens::load(path)?,
            None => Tokens::default(),
        };
        Ok(ServerConfig {
            data_dir: self.data,
            listen: self.listen,
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_events_per_append: self.max_events_per_append,
                max_event_bytes: self.max_event_bytes,
                max_module_bytes: self.max_module_bytes,
            },
            module_limits: ModuleLimits {
                memory_bytes: (self.module_memory_mib << 20) as usize,
                call_timeout: std::time::Duration::from_millis(self.module_call_timeout_ms),
                max_state_bytes: self.module_max_state_bytes,
                max_call_write_bytes: self.module_max_call_write_bytes,
                max_key_bytes: self.module_max_key_bytes,
                max_scan_bytes: self.module_max_scan_bytes,
                max_random_bytes: self.module_max_random_bytes,
                log_bytes: self.module_log_bytes,
                ..ModuleLimits::default()
            },
            cache_bytes: self.cache_mib << 20,
            deploy: self.deploy,
            keep_versions: self.keep_versions,
            cluster: (!self.nats.is_empty()).then(|| ClusterConfig {
                nats: NatsConfig {
                    urls: self.nats.clone(),
                    replicas: self.nats_replicas,
                },
                host_id: self.host_id.clone(),
                advertise: self.advertise.clone(),
            }),
            tokens: Arc::new(tokens),
            insecure: self.insecure,
        })
    }
}

/// A fresh random token.
pub fn new_token() -> String {
    format!("rf_{}", uuid::Uuid::new_v4().simple())
}

/// `args` with the settings of `refold serve --config FILE` (or `REFOLD_CONFIG`) inserted
/// as flags right after `serve`, so that flags given on the command line override them.
///
/// # Errors
/// The file cannot be read, is not TOML, or holds a value that is not a string, number,
/// boolean or list of those.
pub fn with_config_file(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(serve_at) = args.iter().position(|a| a == "serve") else {
        return Ok(args);
    };
    let mut file = std::env::var_os("REFOLD_CONFIG").map(PathBuf::from);
    for (i, arg) in args.iter().enumerate().skip(serve_at + 1) {
        let text = arg.to_string_lossy();
        if let Some(path) = text.strip_prefix("--config=") {
            file = Some(PathBuf::from(path));
        } else if text == "--config" {
            file = args.get(i + 1).map(PathBuf::from);
        }
    }
    let Some(file) = file else { return Ok(args) };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading the configuration file {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", file.display()))?;
    let mut flags: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for value in values {
            match value {
                toml::Value::Boolean(true) => flags.push(flag.clone().into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => flags.extend([flag.clone().into(), s.into()]),
                toml::Value::Integer(n) => {
                    flags.extend([flag.clone().into(), n.to_string().into()])
                }
                toml::Value::Float(n) => flags.extend([flag.clone().into(), n.to_string().into()]),
                other => bail!(
                    "{}: {key} has a value refold cannot use: {other}",
                    file.display()
                ),
            }
        }
    }
    let mut expanded = args[..=serve_at].to_vec();
    expanded.extend(flags);
    expanded.extend(args[serve_at + 1..].iter().cloned());
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_becomes_flags_that_the_command_line_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("refold.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nkeep_versions = 5\ninsecure = true\ndeploy = [\"a=a.wasm\", \"b=b.wasm\"]\n").unwrap();
        let args: Vec<OsString> = [
            "refold",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--keep-versions",
            "3",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let expanded: Vec<String> = with_config_file(args)
            .unwrap()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let flags = expanded[2..].join(" ");
        assert!(flags.contains("--listen 127.0.0.1:9000"), "{flags}");
        assert!(
            flags.contains("--deploy a=a.wasm --deploy b=b.wasm"),
            "{flags}"
        );
        assert!(flags.contains("--insecure"), "{flags}");
        assert!(
            flags.ends_with("--keep-versions 3"),
            "the command line comes last: {flags}"
        );
    }
}
