//! Client commands: talk to a running server over HTTP and print its JSON answers.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The bearer token every request carries, if one was given.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn use_token(token: &str) {
    let _ = TOKEN.set(token.to_owned());
}

/// The HTTP client of every command, carrying the token.
fn http() -> reqwest::Client {
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
fn segment(raw: &str) -> String {
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

pub async fn deploy(
    server: &str,
    name: &str,
    file: &std::path::Path,
    activate: &str,
    wait: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let response = http()
        .put(format!("{server}/projections/{}", segment(name)))
        .query(&[("activate", activate)])
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    let body = print_json(response).await?;
    if wait {
        let version = body["version"].as_str().unwrap_or_default().to_owned();
        follow_rebuild(server, name, &version).await?;
    }
    Ok(())
}

pub async fn versions(server: &str, name: &str) -> anyhow::Result<()> {
    let response = http()
        .get(format!("{server}/projections/{}/versions", segment(name)))
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    print_response(response).await
}

pub async fn diff(server: &str, name: &str, version: &str) -> anyhow::Result<()> {
    let url = format!(
        "{server}/projections/{}/versions/{}/diff",
        segment(name),
        segment(version)
    );
    let response = http()
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    print_response(response).await
}

pub async fn activate(server: &str, name: &str, version: &str, wait: bool) -> anyhow::Result<()> {
    let url = format!(
        "{server}/projections/{}/versions/{}/activate",
        segment(name),
        segment(version)
    );
    let response = http()
        .post(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
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
        let body: Value = client
            .get(url)
            .send()
            .await
            .with_context(|| format!("cannot reach {server}"))?
            .json()
            .await?;
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

async fn print_response(response: reqwest::Response) -> anyhow::Result<()> {
    print_json(response).await.map(|_| ())
}

/// Prints the server's JSON answer; fails on an error status.
async fn print_json(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("reading the server's answer")?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !status.is_success() {
        bail!("the server answered {status}");
    }
    Ok(body)
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
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    print_response(response).await
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
    let response = http()
        .get(url)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    print_response(response).await
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
    let response = http()
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
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
    let response = http()
        .get(url)
        .query(&params)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
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
