//! Client commands: talk to a running server over HTTP and print its answers (as tables,
//! or as JSON with `--json`; see [`super::output`]). One short function per command, which
//! is why the file is long.

use std::io::{BufRead as _, Write as _};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::output;

/// The bearer token every request carries, if one was given.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn use_token(token: &str) {
    let _ = TOKEN.set(token.to_owned());
}

/// The HTTP client of every command, carrying the token.
pub(super) fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = TOKEN.get() {
        if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// An event given on the command line.
pub struct NewEvent {
    pub event_type: String,
    pub data: String,
    pub metadata: Option<String>,
    pub id: Option<String>,
}

pub enum ReadTarget {
    All,
    Stream { stream: String, backward: bool },
}

fn parse_json(what: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("--{what} is not valid JSON"))
}

/// Percent-encodes a path segment (stream names may hold `/`, spaces, anything).
pub(super) fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Sends `request` to `server`.
///
/// # Errors
/// The server cannot be reached.
pub(super) async fn send(
    server: &str,
    request: reqwest::RequestBuilder,
) -> anyhow::Result<reqwest::Response> {
    request
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))
}

pub async fn deploy(
    server: &str,
    name: &str,
    file: &std::path::Path,
    activate: &str,
    wait: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let response = send(
        server,
        http()
            .put(format!("{server}/projections/{}", segment(name)))
            .query(&[("activate", activate)])
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await?;
    let body = print_json(response).await?;
    if wait {
        let version = body["version"].as_str().unwrap_or_default().to_owned();
        follow_rebuild(server, name, &version).await?;
    }
    Ok(())
}

pub async fn versions(server: &str, name: &str) -> anyhow::Result<()> {
    let response = send(
        server,
        http().get(format!("{server}/projections/{}/versions", segment(name))),
    )
    .await?;
    print_response(response).await
}

pub async fn diff(server: &str, name: &str, version: &str) -> anyhow::Result<()> {
    let url = format!(
        "{server}/projections/{}/versions/{}/diff",
        segment(name),
        segment(version)
    );
    let response = send(server, http().get(url)).await?;
    print_response(response).await
}

pub async fn activate(server: &str, name: &str, version: &str, wait: bool) -> anyhow::Result<()> {
    let url = format!(
        "{server}/projections/{}/versions/{}/activate",
        segment(name),
        segment(version)
    );
    let response = send(server, http().post(url)).await?;
    let body = print_json(response).await?;
    if wait {
        let version = body["version"].as_str().unwrap_or(version).to_owned();
        follow_rebuild(server, name, &version).await?;
    }
    Ok(())
}

/// Shows a progress bar for `version` of module `name` until it has caught up with the
/// log.
async fn follow_rebuild(server: &str, name: &str, version: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:<24} [{bar:40}] {prefix}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{name} {}", version.get(..8).unwrap_or(version)));
    let client = http();
    loop {
        let url = format!("{server}/projections/{}/versions", segment(name));
        let body: Value = send(server, client.get(url)).await?.json().await?;
        let entry = body["versions"]
            .as_array()
            .and_then(|all| all.iter().find(|v| v["version"] == version))
            .cloned()
            .unwrap_or(Value::Null);
        if entry.is_null() {
            bar.abandon();
            bail!("version {version} is no longer deployed");
        }
        if entry["status"] == "faulted" {
            bar.abandon();
            bail!("version {version} faulted; see `refold projections {name}`");
        }
        let progress = &entry["progress"];
        let percent = progress["percent"].as_f64().unwrap_or(0.0);
        bar.set_position((percent * 10.0) as u64);
        bar.set_prefix(format!(
            "{percent:.1}%  {} events/s  {} left",
            progress["events_per_second"].as_f64().unwrap_or(0.0),
            progress["eta_seconds"]
                .as_f64()
                .map_or("?".to_owned(), |s| format!("{s:.0} s"))
        ));
        if entry["lag"] == 0 && entry["status"] == "running" {
            let role = entry["role"].as_str().unwrap_or_default();
            bar.finish_with_message(format!("{name} caught up ({role})"));
            if role == "candidate" {
                println!("activate it with: refold activate {name} {version}");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

pub(super) async fn print_response(response: reqwest::Response) -> anyhow::Result<()> {
    print_json(response).await.map(|_| ())
}

/// Prints the server's answer; fails on an error status.
async fn print_json(response: reqwest::Response) -> anyhow::Result<Value> {
    let body = answer(response).await?;
    output::print(&body);
    Ok(body)
}

/// The server's JSON answer. An error status is an error carrying the server's message and
/// code (with `--json`, the error body is printed first).
pub(super) async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("reading the server's answer")?;
    if !status.is_success() {
        if output::json() {
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        let error = &body["error"];
        bail!(
            "{} ({}, {status})",
            error["message"].as_str().unwrap_or("the server refused"),
            error["code"].as_str().unwrap_or("no code"),
        );
    }
    Ok(body)
}

/// GETs `url` with `query` and returns the JSON answer.
pub(super) async fn get(
    server: &str,
    url: String,
    query: &[(&str, String)],
) -> anyhow::Result<Value> {
    let response = send(server, http().get(url).query(query)).await?;
    answer(response).await
}

/// The log's head: the number of durable events.
async fn head(server: &str) -> anyhow::Result<u64> {
    let health = get(server, format!("{server}/health"), &[]).await?;
    health["head"]
        .as_u64()
        .context("the server's /health has no head")
}

pub async fn streams(
    server: &str,
    prefix: &str,
    after: Option<&str>,
    limit: u64,
) -> anyhow::Result<()> {
    let mut query = vec![("prefix", prefix.to_owned()), ("limit", limit.to_string())];
    if let Some(after) = after {
        query.push(("after", after.to_owned()));
    }
    let body = get(server, format!("{server}/streams"), &query).await?;
    if output::json() {
        output::print(&body);
        return Ok(());
    }
    let streams = body["streams"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    output::push_table(&mut out, &streams, 0);
    print!("{out}");
    if let Some(next) = body["next"].as_str() {
        println!("(more: --after {next:?})");
    }
    Ok(())
}

/// Follows `/subscribe/all` (or one stream's subscription) and prints each event.
pub async fn tail(
    server: &str,
    stream: Option<&str>,
    from: Option<u64>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let (url, from) = match stream {
        None => {
            let from = match from {
                Some(from) => from,
                None => head(server).await?,
            };
            (format!("{server}/subscribe/all"), from)
        }
        Some(stream) => {
            let from = match from {
                Some(from) => from,
                None => next_revision(server, stream).await?,
            };
            (
                format!("{server}/subscribe/streams/{}", segment(stream)),
                from,
            )
        }
    };
    let response = send(server, http().get(url).query(&[("from", from)])).await?;
    if !response.status().is_success() {
        answer(response).await?;
        bail!("the subscription was refused");
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk.context("the subscription broke off")?);
        // Server-sent events end with a blank line; each `data:` line holds one event.
        while let Some(end) = find_blank_line(&buffer) {
            let message: Vec<u8> = buffer.drain(..end).collect();
            for line in String::from_utf8_lossy(&message).lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(data.trim_start()) else {
                    continue;
                };
                let mut out = stdout.lock();
                if output::json() {
                    writeln!(out, "{event}")?;
                } else {
                    writeln!(out, "{}", output::event_line(&event))?;
                }
                out.flush()?;
                printed += 1;
                if count.is_some_and(|count| printed >= count) {
                    return Ok(());
                }
            }
        }
    }
    bail!("the server ended the subscription")
}

/// The end of the first message in `buffer` (after its blank line), if it is complete.
fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The revision the next event of `stream` will have.
async fn next_revision(server: &str, stream: &str) -> anyhow::Result<u64> {
    let response = send(
        server,
        http()
            .get(format!("{server}/streams/{}", segment(stream)))
            .query(&[("direction", "backward"), ("limit", "1")]),
    )
    .await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(0);
    }
    let body = answer(response).await?;
    Ok(body["events"][0]["revision"].as_u64().map_or(0, |r| r + 1))
}

/// A progress bar on standard error (hidden when that is not a terminal).
fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {percent}%  {per_sec}  {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Events per page of an export.
const EXPORT_PAGE: u64 = 10_000;

pub async fn export(server: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let end = head(server).await?;
    let sink: Box<dyn std::io::Write> = match out {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = std::io::BufWriter::with_capacity(1 << 20, sink);
    let bar = progress_bar(end, "exporting");
    let mut from = 0;
    while from < end {
        let limit = EXPORT_PAGE.min(end - from);
        let page = get(
            server,
            format!("{server}/all"),
            &[("from", from.to_string()), ("limit", limit.to_string())],
        )
        .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            bail!("the log ended at position {from}, before its head {end}");
        }
        for event in &events {
            let position = event["position"].as_u64().unwrap_or(u64::MAX);
            if position != from {
                bail!("expected the event at position {from}, the server sent {position}");
            }
            serde_json::to_writer(&mut sink, event)?;
            sink.write_all(b"\n")?;
            from += 1;
        }
        bar.set_position(from);
    }
    sink.flush()?;
    bar.finish_and_clear();
    let target = out.map_or("standard output".to_owned(), |p| p.display().to_string());
    match end {
        0 => eprintln!("exported 0 events (the log is empty) to {target}"),
        _ => eprintln!(
            "exported {end} events (positions 0 to {}) to {target}",
            end - 1
        ),
    }
    Ok(())
}

/// Most events, and bytes, per import request. Large requests make few keys: the store
/// writes one index key per stream per request.
const IMPORT_BATCH_EVENTS: usize = 50_000;
const IMPORT_BATCH_BYTES: usize = 16 * 1024 * 1024;

pub async fn import(server: &str, file: &std::path::Path, resume: bool) -> anyhow::Result<()> {
    let start = head(server).await?;
    if start > 0 && !resume {
        bail!(
            "the store is not empty (its log holds {start} events); import restores a backup \
             into an empty store, or continues an interrupted import with --resume"
        );
    }
    let (reader, size): (Box<dyn std::io::BufRead>, u64) = if file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let opened =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let size = opened.metadata().map_or(0, |m| m.len());
        (
            Box::new(std::io::BufReader::with_capacity(1 << 20, opened)),
            size,
        )
    };
    let bar = progress_bar(size, "importing");
    let client = http();
    let mut batch = String::new();
    let (mut batched, mut imported, mut skipped, mut head) = (0usize, 0u64, 0u64, start);
    let mut lines = reader.lines();
    loop {
        let line = lines.next().transpose().context("reading the export")?;
        if let Some(line) = &line {
            bar.inc(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            if skipped < start {
                // Resuming: these are in the store already (the server checks the rest).
                skipped += 1;
                continue;
            }
            batch.push_str(line);
            batch.push('\n');
            batched += 1;
        }
        let full = batched >= IMPORT_BATCH_EVENTS || batch.len() >= IMPORT_BATCH_BYTES;
        if batched > 0 && (full || line.is_none()) {
            let request = client
                .post(format!("{server}/import"))
                .header("content-type", "application/x-ndjson")
                .body(std::mem::take(&mut batch));
            let response = send(server, request).await?;
            let answer = answer(response)
                .await
                .with_context(|| format!("importing after position {head}"))?;
            imported += batched as u64;
            head = answer["head"].as_u64().unwrap_or(head);
            batched = 0;
        }
        if line.is_none() {
            break;
        }
    }
    bar.finish_and_clear();
    eprintln!("imported {imported} events; the log's head is {head}");
    if output::json() {
        println!("{}", json!({"imported": imported, "head": head}));
    }
    Ok(())
}

pub async fn append(
    server: &str,
    stream: &str,
    event: NewEvent,
    expected_revision: Option<&str>,
) -> anyhow::Result<()> {
    let mut body = json!({
        "type": event.event_type,
        "data": parse_json("data", &event.data)?,
    });
    if let Some(metadata) = &event.metadata {
        body["metadata"] = parse_json("metadata", metadata)?;
    }
    if let Some(id) = event.id {
        body["id"] = id.into();
    }
    let mut request = http()
        .post(format!("{server}/streams/{}", segment(stream)))
        .json(&body);
    if let Some(expected) = expected_revision {
        request = request.query(&[("expected_revision", expected)]);
    }
    print_response(send(server, request).await?).await
}

pub async fn read(
    server: &str,
    target: ReadTarget,
    from: Option<u64>,
    limit: u64,
) -> anyhow::Result<()> {
    let (url, mut query) = match target {
        ReadTarget::All => (format!("{server}/all"), vec![]),
        ReadTarget::Stream { stream, backward } => (
            format!("{server}/streams/{}", segment(&stream)),
            if backward {
                vec![("direction", "backward".to_owned())]
            } else {
                vec![]
            },
        ),
    };
    query.push(("limit", limit.to_string()));
    if let Some(from) = from {
        query.push(("from", from.to_string()));
    }
    let body = get(server, url, &query).await?;
    if output::json() {
        output::print(&body);
        return Ok(());
    }
    let events = body["events"].as_array().cloned().unwrap_or_default();
    print!("{}", output::events(&events));
    if let Some(next) = body["next"].as_u64() {
        println!("(more: --from {next})");
    }
    Ok(())
}

pub enum StateQuery {
    Stream(String),
    Key(String),
    Prefix(String),
}

pub async fn projections(server: &str, name: Option<&str>) -> anyhow::Result<()> {
    let url = match name {
        Some(name) => format!("{server}/projections/{}", segment(name)),
        None => format!("{server}/projections"),
    };
    let response = send(server, http().get(url)).await?;
    print_response(response).await
}

pub async fn state(
    server: &str,
    name: &str,
    query: StateQuery,
    after: Option<u64>,
) -> anyhow::Result<()> {
    let base = format!("{server}/projections/{}", segment(name));
    let (url, mut params) = match query {
        StateQuery::Stream(stream) => (format!("{base}/streams/{}", segment(&stream)), vec![]),
        StateQuery::Key(key) => (format!("{base}/state/{}", segment(&key)), vec![]),
        StateQuery::Prefix(prefix) => (format!("{base}/state"), vec![("prefix", prefix)]),
    };
    if let Some(after) = after {
        params.push(("after", after.to_string()));
    }
    let response = send(server, http().get(url).query(&params)).await?;
    print_response(response).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_names_are_percent_encoded() {
        assert_eq!(super::segment("account-42"), "account-42");
        assert_eq!(super::segment("a/b c"), "a%2Fb%20c");
    }
}
