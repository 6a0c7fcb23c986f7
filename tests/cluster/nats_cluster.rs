//! NATS servers for the cluster tests and the benchmark: a JetStream cluster on loopback,
//! each node its own process and folder, killed and restarted at will. (Shared by file
//! with `host/benches/refold`, so it depends on nothing of either.)

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `nats-server` 2.15.1, installed once per test run by `scripts/nats-server`.
fn nats_server() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ has a parent")
            .to_path_buf();
        let out = Command::new(root.join("scripts/nats-server"))
            .output()
            .expect("scripts/nats-server runs");
        assert!(
            out.status.success(),
            "installing nats-server failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

/// A JetStream cluster of `n` nodes (n = 1: a single server).
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl NatsCluster {
    pub fn start(n: usize) -> Self {
        let nodes = (1..=n)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            dir: tempfile::tempdir().expect("a folder"),
            nodes,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    /// The client URLs, comma-separated (for `--nats`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let clustered = self.nodes.len() > 1;
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", node.name)))
            .expect("a log file");
        let mut command = Command::new(nats_server());
        command
            .args(["-js", "-a", "127.0.0.1", "-n", &node.name])
            .arg("-sd")
            .arg(self.dir.path().join(&node.name))
            .args(["-p", &node.port.to_string()]);
        if clustered {
            command.args([
                "--cluster_name",
                "refold-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
                "--routes",
                &routes,
            ]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let port = node.port;
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The index of the node leading JetStream stream `stream`.
    pub async fn leader_of(&self, stream: &str) -> usize {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| {
                format!("nats://127.0.0.1:{}", n.port)
                    .parse()
                    .expect("a URL")
            })
            .collect();
        let client = async_nats::connect(urls.as_slice())
            .await
            .expect("NATS answers");
        let js = async_nats::jetstream::new(client);
        let info = js
            .get_stream(stream)
            .await
            .expect("the stream exists")
            .get_info()
            .await
            .expect("stream info");
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .expect("the stream has a leader");
        self.nodes
            .iter()
            .position(|n| n.name == leader)
            .expect("the leader is one of the nodes")
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none());
        self.spawn(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}
