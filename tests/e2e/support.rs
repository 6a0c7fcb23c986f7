//! Shared helpers: a real `refold` server process on a free port with its own data folder,
//! and a small HTTP client for it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

/// A running `refold serve`, killed when dropped.
pub struct Server {
    pub url: String,
    pub port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    pub client: reqwest::Client,
}

pub fn refold_binary() -> &'static str {
    env!("CARGO_BIN_EXE_refold")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

impl Server {
    /// Starts a server on a fresh, empty store.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `serve` arguments.
    pub async fn start_with(args: &[&str]) -> Self {
        Self::start_in(&std::env::temp_dir(), args).await
    }

    /// Starts a server whose store lives in a new folder inside `parent` (a small
    /// filesystem, say).
    pub async fn start_in(parent: &Path, args: &[&str]) -> Self {
        let port = free_port();
        let mut server = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            data: tempfile::tempdir_in(parent).expect("a temporary folder"),
            child: None,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("an HTTP client"),
        };
        server.spawn().await;
        server
    }

    /// A second handle on the same running server (for concurrent clients); it does not
    /// own the process.
    pub fn attach(other: &Server) -> Self {
        Self {
            url: other.url.clone(),
            port: other.port,
            data: tempfile::tempdir().expect("a temporary folder"),
            child: None,
            extra_args: Vec::new(),
            client: other.client.clone(),
        }
    }

    /// The same handle with a client of its own (no pooled connections).
    pub fn with_new_client(mut self) -> Self {
        self.client = reqwest::Client::new();
        self
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().with_extension("log")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("a log file");
        let child = Command::new(refold_binary())
            .arg("serve")
            .arg("--data")
            .arg(self.data.path().join("store"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the refold binary starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(format!("{}/health", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("refold exited early with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "refold did not become ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `POST /import` with an NDJSON body (recorded events, one per line).
    ///
    /// # Errors
    /// The request did not get an answer (the server died, say).
    pub async fn import(&self, body: String) -> Result<(StatusCode, Value), reqwest::Error> {
        let response = self
            .client
            .post(self.path("/import"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        Ok(decode(response).await)
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running server").id()
    }

    /// The server's peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the server's /proc status");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmHWM line");
        kib / 1024.0
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running server");
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        child.wait().expect("the server exits")
    }

    /// Starts the server again on the same store and port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn().await;
    }

    pub fn path(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.path(path))
            .send()
            .await
            .expect("GET is answered");
        decode(response).await
    }

    /// Appends `events` (an event or an array) to `stream`, which must succeed; the ack.
    pub async fn append_ok(&self, stream: &str, events: &Value) -> Value {
        let (status, ack) = self.post(&format!("/streams/{stream}"), events).await;
        assert_eq!(status, StatusCode::CREATED, "appending to {stream}: {ack}");
        ack
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, serde_json::to_vec(body).expect("JSON"))
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.path(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST is answered");
        decode(response).await
    }

    /// Reads a whole stream forward, following `next`.
    pub async fn read_stream_fully(&self, stream: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = 0;
        loop {
            let (status, body) = self
                .get(&format!("/streams/{stream}?from={from}&limit=1000"))
                .await;
            if status == StatusCode::NOT_FOUND {
                return events;
            }
            assert_eq!(status, StatusCode::OK, "{body}");
            events.extend(body["events"].as_array().expect("events").iter().cloned());
            match body["next"].as_u64() {
                Some(next) => from = next,
                None => return events,
            }
        }
    }

    /// Reads the whole global log, following `next`.
    pub async fn read_all_fully(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = 0;
        loop {
            let (status, body) = self.get(&format!("/all?from={from}&limit=10000")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            events.extend(body["events"].as_array().expect("events").iter().cloned());
            match body["next"].as_u64() {
                Some(next) => from = next,
                None => return events,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub async fn decode(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("the body is not JSON (status {status}): {text:?}"));
    (status, body)
}

/// Asserts the contract's error shape and returns the code.
pub fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {body}"
    );
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// A deposit-like event.
/// An append body of `Deposited` events of amount 1, one per client-chosen id.
pub fn deposits_with_ids(ids: &[String]) -> Value {
    serde_json::json!(
        ids.iter()
            .map(|id| serde_json::json!({"type": "Deposited", "data": {"amount": 1}, "id": id}))
            .collect::<Vec<_>>()
    )
}

pub fn event(event_type: &str, data: Value) -> Value {
    serde_json::json!({ "type": event_type, "data": data })
}

/// One parsed server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A server-sent-events response, read event by event.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    pub async fn open(server: &Server, path: &str, last_event_id: Option<&str>) -> Self {
        let mut request = server.client.get(server.path(path));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("subscription is answered");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event with data (comments and keep-alives skipped), or `None` on timeout.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if !event.data.is_empty() {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk.expect("subscription body")));
        }
    }
}

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Builds the example modules for wasm (once per test run) with `examples/build.sh`, in
/// their own target folder so that it never waits on this test run's build lock.
/// Returns `examples/dist`.
pub fn examples() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_examples(&["--target", "all"]))
        .clone()
}

/// Builds the example modules in JavaScript, Python and C too (once per test run; the
/// first build installs their pinned toolchains under `examples/tools`). Returns
/// `examples/dist`.
pub fn language_examples() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_examples(&["--lang", "js,py,c"]);
            examples()
        })
        .clone()
}

/// Runs `examples/build.sh` with `args`; returns `examples/dist`.
fn build_examples(args: &[&str]) -> PathBuf {
    let root = repo_root();
    let status = Command::new("bash")
        .arg(root.join("examples/build.sh"))
        .args(args)
        .env("CARGO_TARGET_DIR", root.join("examples/target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("examples/build.sh runs");
    assert!(status.success(), "examples/build.sh {args:?} failed");
    root.join("examples/dist")
}

/// The bytes of a built example module (`bank-account.wasm`, `order-summary.core.wasm`).
pub fn example(file: &str) -> Vec<u8> {
    read_module(&examples().join(file))
}

/// The bytes of a built example module in any language (`bank-account-py.wasm`,
/// `bank-account-c.core.wasm`, and the Rust ones).
pub fn language_example(file: &str) -> Vec<u8> {
    read_module(&language_examples().join(file))
}

fn read_module(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

impl Server {
    /// `PUT /projections/{name}` with `bytes`.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .client
            .put(self.path(&format!("/projections/{name}")))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .expect("deploy is answered");
        decode(response).await
    }

    /// Runs a `refold` client command against this server and waits for it.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(refold_binary())
            .args(args)
            .env("REFOLD_SERVER", &self.url)
            .output()
            .expect("refold runs")
    }

    /// `GET /metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.path("/metrics"))
            .send()
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics text")
    }

    /// The log head (the number of durable events).
    pub async fn head(&self) -> u64 {
        self.get("/health").await.1["head"].as_u64().expect("head")
    }

    /// Waits until module `name` has processed every event appended so far.
    pub async fn wait_caught_up(&self, name: &str) {
        let head = self.head().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self.get(&format!("/projections/{name}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_ne!(body["status"], "faulted", "module {name} faulted: {body}");
            if body["position"].as_u64().is_some_and(|p| p >= head) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "module {name} did not catch up: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every key and value of a projection.
    pub async fn projection_state(&self, name: &str) -> std::collections::BTreeMap<String, Value> {
        let mut out = std::collections::BTreeMap::new();
        let mut from: Option<String> = None;
        loop {
            let mut url =
                reqwest::Url::parse(&self.path(&format!("/projections/{name}/state"))).unwrap();
            url.query_pairs_mut().append_pair("limit", "1000");
            if let Some(from) = &from {
                url.query_pairs_mut().append_pair("from", from);
            }
            let body: Value = self
                .client
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for item in body["items"].as_array().expect("items") {
                out.insert(
                    item["key"].as_str().unwrap().to_owned(),
                    item["value"].clone(),
                );
            }
            match body["next"].as_str() {
                Some(next) => from = Some(next.to_owned()),
                None => return out,
            }
        }
    }
}

/// A Python virtual environment `target/<name>` with `pip install <packages>` done in it;
/// made once, and again when the packages (or a requirements file they name) change.
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    let venv = repo_root().join("target").join(name);
    let marker = venv.join("refold-installed.txt");
    let mut wanted = packages.join(" ");
    if let [.., "-r", file] = packages {
        wanted.push('\n');
        wanted.push_str(&std::fs::read_to_string(file).expect("the requirements file"));
    }
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
    }
    if !venv.join("bin/pip").exists() {
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(created.success(), "python3 -m venv {name} failed");
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .expect("pip runs");
    assert!(installed.success(), "pip install {packages:?} failed");
    std::fs::write(&marker, wanted).expect("writing the marker");
    venv
}

/// Builds the test-only guests in `tests/guests` (once per test run), in their own target
/// folder, and returns the bytes of `<name>.wasm`.
pub fn test_guest(name: &str) -> Vec<u8> {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dist = BUILT.get_or_init(|| {
        let root = repo_root();
        let status = Command::new("bash")
            .arg(root.join("tests/guests/build.sh"))
            .env("CARGO_TARGET_DIR", root.join("tests/guests/target"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("tests/guests/build.sh runs");
        assert!(status.success(), "tests/guests/build.sh failed");
        root.join("tests/guests/dist")
    });
    let path = dist.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

impl Server {
    /// Polls `GET /projections/{name}` until `done` holds for it (or panics after 30 s).
    pub async fn wait_module(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(&format!("/projections/{name}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "module {name} never became {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn action(&self, name: &str, action: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.path(&format!("/projections/{name}/{action}")))
            .send()
            .await
            .expect("action is answered");
        decode(response).await
    }
}

/// Appends planned events from `writers` concurrent clients, each run of consecutive events
/// of one stream (up to 20) as one request.
pub async fn append_planned(server: &Server, events: &[crate::model::Planned], writers: usize) {
    let chunk = events.len().div_ceil(writers.max(1)).max(1);
    futures::future::join_all(events.chunks(chunk).map(|part| async move {
        for run in part.chunk_by(|a, b| a.0 == b.0) {
            for batch in run.chunks(20) {
                let events: Vec<Value> =
                    batch.iter().map(|(_, t, d)| event(t, d.clone())).collect();
                let (status, body) = server
                    .post(&format!("/streams/{}", batch[0].0), &Value::from(events))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        }
    }))
    .await;
}

/// The independent models of `bank-account` and `order-summary`, fed from the server's log
/// in position order.
pub async fn models_from_log(server: &Server) -> (crate::model::Banks, crate::model::Orders) {
    let (mut banks, mut orders) = <(crate::model::Banks, crate::model::Orders)>::default();
    for e in server.read_all_fully().await {
        let (stream, event_type) = (e["stream"].as_str().unwrap(), e["type"].as_str().unwrap());
        banks.apply(stream, event_type, &e["data"]);
        orders.apply(stream, event_type, &e["data"]);
    }
    (banks, orders)
}
