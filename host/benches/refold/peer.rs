//! The peer comparison (`--peer postgres`): the HTTP section's two append workloads run
//! against PostgreSQL used as an event store the usual way, on this machine, started by the
//! benchmark itself on a temporary data folder.
//!
//! The schema: one `events` table (global position `bigserial` primary key, stream, revision,
//! type, `jsonb` data and metadata, `recorded_at` default `now()`, unique `(stream, revision)`)
//! and a `streams` table holding each stream's last revision. One append request is one
//! transaction that
//!
//! 1. bumps the stream's last revision by the number of events (an upsert: it creates the
//!    row for a new stream, and otherwise locks the existing row until commit, like
//!    `SELECT … FOR UPDATE`), which gives the revisions to write and the current revision
//!    to check an expected revision against (optimistic concurrency), then
//! 2. inserts the events (one multi-row `INSERT … SELECT FROM unnest(…)`), returning the
//!    first and last global positions, as Refold answers, then commits.
//!
//! `synchronous_commit = on` (PostgreSQL's default): a commit returns once its WAL is
//! flushed to disk, as a Refold append is acknowledged once flushed. Each client task has
//! its own connection, so 64 (or 16) clients use a pool of 64 (or 16) connections.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::{AppendFigures, disk_usage, percentile, ratio, report};

/// The schema, created once per run.
const SCHEMA: &str = "
    CREATE TABLE events (
        position    bigserial   PRIMARY KEY,
        id          uuid        NOT NULL DEFAULT gen_random_uuid(),
        stream      text        NOT NULL,
        revision    bigint      NOT NULL,
        type        text        NOT NULL,
        data        jsonb       NOT NULL,
        metadata    jsonb       NOT NULL DEFAULT '{}',
        recorded_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (stream, revision)
    );
    CREATE TABLE streams (
        stream        text   PRIMARY KEY,
        last_revision bigint NOT NULL
    );
";

/// Step 1 of an append: `$2` events are about to be written to stream `$1`; returns the
/// stream's new last revision (the previous one is that minus `$2`; -1 means no stream).
const BUMP_REVISION: &str = "
    INSERT INTO streams AS s (stream, last_revision) VALUES ($1, $2::bigint - 1)
    ON CONFLICT (stream) DO UPDATE SET last_revision = s.last_revision + $2::bigint
    RETURNING last_revision
";

/// Step 2: the events themselves (types, data and metadata as parallel arrays), revisions
/// from `$2` on; returns the first and last global positions written.
const INSERT_EVENTS: &str = "
    WITH written AS (
        INSERT INTO events (stream, revision, type, data, metadata)
        SELECT $1, $2::bigint + e.ord - 1, e.type, e.data::jsonb, e.metadata::jsonb
        FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS e(type, data, metadata, ord)
        RETURNING position
    )
    SELECT min(position), max(position) FROM written
";

/// Where the PostgreSQL server programs are: `$REFOLD_BENCH_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `pg_config --bindir`.
fn find_server_binaries() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("REFOLD_BENCH_PG_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| has_server(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    has_server(&bin).then_some(bin)
}

/// This process's real user id, from `/proc/self/status`.
fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(u32::MAX)
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// A PostgreSQL server of our own: a fresh cluster in a temporary folder, listening on
/// 127.0.0.1 on a free port (and on a unix socket inside that folder), stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Who runs the server programs: PostgreSQL refuses to run as root, so as root they run
    /// as the `postgres` system user (which Debian's package creates).
    run_as: Option<(u32, u32)>,
    child: Child,
    _folder: tempfile::TempDir,
}

impl Postgres {
    /// Starts a server, or says why it cannot.
    async fn start(bin: PathBuf) -> Result<Self, String> {
        let run_as = if current_uid() == 0 {
            Some(user_ids("postgres").ok_or(
                "running as root, and there is no `postgres` system user to run PostgreSQL as \
                 (Debian's postgresql package creates it; or `useradd --system postgres`)",
            )?)
        } else {
            None
        };
        let folder = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(folder.path(), Some(uid), Some(gid))
                .map_err(|e| format!("handing the temporary folder to postgres: {e}"))?;
        }
        let data = folder.path().join("data");
        let command = |program: &str| {
            let mut command = Command::new(bin.join(program));
            if let Some((uid, gid)) = run_as {
                command.uid(uid).gid(gid);
            }
            command
        };
        let initdb = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "refold", "--auth=trust", "-E", "UTF8", "--no-locale"])
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr).trim()
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("a free port: {e}"))?;
        let log = std::fs::File::create(folder.path().join("server.log"))
            .map_err(|e| format!("the server log: {e}"))?;
        // PostgreSQL's defaults, except: only local connections, a page cache the size of
        // Refold's (256 MiB), and durability settings spelled out although they are the
        // defaults (commits wait for the WAL flush).
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                folder.path().display()
            ))
            .args(["-c", "max_connections=100"])
            .args(["-c", "shared_buffers=256MB"])
            .args(["-c", "fsync=on"])
            .args(["-c", "synchronous_commit=on"])
            .args(["-c", "full_page_writes=on"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        let server = Self {
            bin,
            data,
            port,
            run_as,
            child,
            _folder: folder,
        };
        for _ in 0..500 {
            if server.connect().await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("PostgreSQL did not accept connections within 10 s".into())
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=refold dbname=postgres",
                self.port
            ),
            NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn version(&self) -> String {
        Command::new(self.bin.join("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// The data folder's size on disk, in bytes.
    fn disk_bytes(&self) -> u64 {
        disk_usage(&self.data)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown (a checkpoint, then exit); a kill only if that fails.
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        if let Some((uid, gid)) = self.run_as {
            stop.uid(uid).gid(gid);
        }
        let stopped = stop
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "fast", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One append request in one transaction; `expected` is the revision the stream must be at
/// (-1: no stream yet), or `None` for any. Returns the first and last global positions, or
/// `None` when the expected revision does not hold (the transaction is rolled back).
async fn append(
    client: &mut Client,
    statements: &(tokio_postgres::Statement, tokio_postgres::Statement),
    stream: &str,
    expected: Option<i64>,
    types: &[&str],
    data: &[&str],
    metadata: &[&str],
) -> Result<Option<(i64, i64)>, tokio_postgres::Error> {
    let count = types.len() as i64;
    let transaction = client.transaction().await?;
    let last: i64 = transaction
        .query_one(&statements.0, &[&stream, &count])
        .await?
        .get(0);
    if expected.is_some_and(|expected| expected != last - count) {
        transaction.rollback().await?;
        return Ok(None);
    }
    let first_revision = last - count + 1;
    let row = transaction
        .query_one(
            &statements.1,
            &[&stream, &first_revision, &types, &data, &metadata],
        )
        .await?;
    transaction.commit().await?;
    Ok(Some((row.get(0), row.get(1))))
}

/// The same load as the HTTP section's `append_load`: `clients` tasks, each on its own
/// connection, append `batch` events per transaction to the same spread of streams for
/// `seconds`. Returns events/s and the sorted request latencies.
async fn append_load(
    server: &Postgres,
    clients: usize,
    batch: usize,
    seconds: f64,
) -> (f64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::new();
    for _ in 0..clients {
        let client = server.connect().await.expect("a PostgreSQL connection");
        let statements = (
            client.prepare(BUMP_REVISION).await.expect("prepare"),
            client.prepare(INSERT_EVENTS).await.expect("prepare"),
        );
        connections.push((client, statements));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, (mut client, statements)) in connections.into_iter().enumerate() {
        let (stop, events) = (stop.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            // The same events as the HTTP bodies: type, data, default metadata.
            let (types, data, metadata): (Vec<&str>, Vec<String>, Vec<&str>) = if batch == 1 {
                (
                    vec!["Deposited"],
                    vec![r#"{"amount":100,"note":"benchmark"}"#.to_owned()],
                    vec!["{}"],
                )
            } else {
                (
                    vec!["Deposited"; batch],
                    (0..batch)
                        .map(|i| format!(r#"{{"amount":{i},"note":"benchmark"}}"#))
                        .collect(),
                    vec!["{}"; batch],
                )
            };
            let data: Vec<&str> = data.iter().map(String::as_str).collect();
            while !stop.load(Ordering::Relaxed) {
                let stream = format!("account-{}", (c as u64 * 7919 + n * 104_729) % 10_000);
                n += 1;
                let sent = Instant::now();
                append(
                    &mut client,
                    &statements,
                    &stream,
                    None,
                    &types,
                    &data,
                    &metadata,
                )
                .await
                .expect("append committed")
                .expect("any revision is accepted");
                latencies.push(sent.elapsed());
                events.fetch_add(batch as u64, Ordering::Relaxed);
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    (events.load(Ordering::Relaxed) as f64 / elapsed, latencies)
}

/// Checks the optimistic concurrency of the schema once (so the comparison is with a
/// store that really enforces expected revisions): a stale expected revision is refused.
async fn check_expected_revision(server: &Postgres) {
    let mut client = server.connect().await.expect("a PostgreSQL connection");
    let statements = (
        client.prepare(BUMP_REVISION).await.expect("prepare"),
        client.prepare(INSERT_EVENTS).await.expect("prepare"),
    );
    let one = |expected| (expected, ["Checked"], [r#"{"ok":true}"#], ["{}"]);
    for (expected, accepted) in [
        (Some(-1), true),
        (Some(0), true),
        (Some(0), false),
        (None, true),
    ] {
        let (expected, types, data, metadata) = one(expected);
        let outcome = append(
            &mut client,
            &statements,
            "check-1",
            expected,
            &types,
            &data,
            &metadata,
        )
        .await
        .expect("append answered");
        assert_eq!(
            outcome.is_some(),
            accepted,
            "expected revision {expected:?}"
        );
    }
}

/// Runs the comparison, printing PostgreSQL's figures and Refold / PostgreSQL beside them.
pub async fn compare_postgres(refold: &AppendFigures, seconds: f64) {
    let Some(bin) = find_server_binaries() else {
        println!(
            "PostgreSQL comparison skipped: no PostgreSQL server programs (initdb, postgres) found. \
             Install them with `apt-get install -y postgresql` (Debian/Ubuntu), or point \
             REFOLD_BENCH_PG_BIN at the folder holding them."
        );
        return;
    };
    let server = match Postgres::start(bin).await {
        Ok(server) => server,
        Err(why) => {
            println!("PostgreSQL comparison skipped: {why}");
            return;
        }
    };
    let client = server.connect().await.expect("a PostgreSQL connection");
    client.batch_execute(SCHEMA).await.expect("the schema");
    check_expected_revision(&server).await;
    println!(
        "({}, fresh cluster on 127.0.0.1, synchronous_commit=on, shared_buffers=256MB, \
         one transaction per append, one connection per client)",
        server.version()
    );

    let (rate, latencies) = append_load(&server, 64, 1, seconds).await;
    report(
        "PostgreSQL: single-event appends, 64 clients",
        rate,
        "events/s",
        "",
    );
    ratio("  Refold / PostgreSQL", refold.single_rate / rate);
    let p50 = percentile(&latencies, 0.50).as_secs_f64() * 1e6;
    let p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e6;
    report("  append latency p50", p50, "µs", "");
    report("  append latency p99", p99, "µs", "");
    ratio(
        "  p99 latency, Refold / PostgreSQL (< 1: Refold faster)",
        refold.single_p99_micros / p99,
    );

    let (rate, latencies) = append_load(&server, 16, 100, seconds).await;
    report(
        "PostgreSQL: batched appends (100/req), 16 clients",
        rate,
        "events/s",
        "",
    );
    ratio("  Refold / PostgreSQL", refold.batch_rate / rate);
    report(
        "  request latency p50",
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        "µs",
        "",
    );
    report(
        "  request latency p99",
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        "µs",
        "",
    );

    // Disk per event: the whole data folder (tables, indexes, WAL) after a checkpoint.
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint");
    let count: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    let table: i64 = client
        .query_one(
            "SELECT pg_total_relation_size('events') + pg_total_relation_size('streams')",
            &[],
        )
        .await
        .expect("size")
        .get(0);
    let folder = server.disk_bytes();
    report(
        &format!("PostgreSQL: disk per event ({count} events)"),
        folder as f64 / count.max(1) as f64,
        "bytes",
        "",
    );
    report(
        "  tables + indexes only (no WAL)",
        table as f64 / count.max(1) as f64,
        "bytes",
        "",
    );
    if refold.events > 0 {
        report(
            &format!("Refold: disk per event ({} events)", refold.events),
            refold.disk_bytes as f64 / refold.events as f64,
            "bytes",
            "",
        );
    }
    drop(client);
    drop(server);
}
