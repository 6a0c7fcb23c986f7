//! Client commands: talk to a running server over HTTP and print its JSON answers.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

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

async fn print_response(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("reading the server's answer")?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !status.is_success() {
        bail!("the server answered {status}");
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
    let mut request = reqwest::Client::new()
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
    let response = reqwest::Client::new()
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

pub async fn deploy(server: &str, name: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let response = reqwest::Client::new()
        .put(format!("{server}/projections/{}", segment(name)))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    print_response(response).await
}

pub async fn projections(server: &str, name: Option<&str>) -> anyhow::Result<()> {
    let url = match name {
        Some(name) => format!("{server}/projections/{}", segment(name)),
        None => format!("{server}/projections"),
    };
    let response = reqwest::get(url)
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
    let response = reqwest::Client::new()
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
