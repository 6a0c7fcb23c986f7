//! `refold group …`: consumer groups from the command line.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{answer, get, http, print_response, segment, send};
use super::output;

#[derive(Subcommand)]
pub enum GroupAction {
    /// Create a consumer group, or update its settings.
    Create {
        group: String,
        /// all, stream:<name> or category:<name>.
        #[arg(long, default_value = "all")]
        source: String,
        /// Only these event types (comma-separated).
        #[arg(long)]
        types: Option<String>,
        /// start, end, or a position (only when the group is created).
        #[arg(long, default_value = "start")]
        from: String,
        /// How long a worker has to ack an event before it is delivered again.
        #[arg(long, default_value_t = 30_000)]
        ack_timeout_ms: u64,
        /// Deliveries after which a failing event is parked.
        #[arg(long, default_value_t = 10)]
        max_deliveries: u32,
        /// none, or stream: each stream's events in order, one at a time.
        #[arg(long, default_value = "none", value_parser = ["none", "stream"])]
        ordering: String,
    },
    /// List the groups with their progress.
    Ls,
    /// Show one group, with its workers.
    Show { group: String },
    /// Remove a group, its progress and parked events.
    Rm { group: String },
    /// Print the group's events as they come and ack them (Ctrl-C to stop).
    Consume {
        group: String,
        /// The worker's name, as the group's counters show it.
        #[arg(long, default_value = "cli")]
        worker: String,
        /// Events per poll.
        #[arg(long, default_value_t = 100)]
        max: u32,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Give the events back instead of acking them: retry, park or skip.
        #[arg(long, value_parser = ["retry", "park", "skip"])]
        nack: Option<String>,
    },
    /// List parked events.
    Parked { group: String },
    /// Put every parked event back for delivery.
    Replay { group: String },
}

fn group_url(server: &str, group: &str) -> String {
    format!("{server}/subscriptions/{}", segment(group))
}

fn source_json(source: &str) -> anyhow::Result<Value> {
    Ok(match source.split_once(':') {
        None if source == "all" => json!("all"),
        Some(("stream", name)) => json!({ "stream": name }),
        Some(("category", name)) => json!({ "category": name }),
        _ => {
            anyhow::bail!("--source must be all, stream:<name> or category:<name>, not {source:?}")
        }
    })
}

pub async fn run(server: &str, action: GroupAction) -> anyhow::Result<()> {
    match action {
        GroupAction::Create {
            group,
            source,
            types,
            from,
            ack_timeout_ms,
            max_deliveries,
            ordering,
        } => {
            let mut body = json!({
                "source": source_json(&source)?,
                "from": from.parse::<u64>().map_or(json!(from), |p| json!(p)),
                "ack_timeout_ms": ack_timeout_ms,
                "max_deliveries": max_deliveries,
                "ordering": ordering,
            });
            if let Some(types) = types {
                body["types"] = json!(
                    types
                        .split(',')
                        .filter(|t| !t.is_empty())
                        .collect::<Vec<_>>()
                );
            }
            let request = http().put(group_url(server, &group)).json(&body);
            print_response(send(server, request).await?).await
        }
        GroupAction::Ls => {
            let body = get(server, format!("{server}/subscriptions"), &[]).await?;
            if output::json() {
                output::print(&body);
                return Ok(());
            }
            let rows: Vec<Value> = body["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|g| {
                    json!({
                        "group": g["group"], "source": g["source"], "ordering": g["ordering"],
                        "position": g["position"], "lag": g["lag"], "in_flight": g["in_flight"],
                        "parked": g["parked"], "acked": g["acked"],
                    })
                })
                .collect();
            if rows.is_empty() {
                println!("no consumer groups");
            } else {
                print!("{}", output::human(&Value::Array(rows)));
            }
            Ok(())
        }
        GroupAction::Show { group } => {
            print_response(send(server, http().get(group_url(server, &group))).await?).await
        }
        GroupAction::Rm { group } => {
            print_response(send(server, http().delete(group_url(server, &group))).await?).await
        }
        GroupAction::Parked { group } => {
            let body = get(server, format!("{}/parked", group_url(server, &group)), &[]).await?;
            if output::json() {
                output::print(&body);
                return Ok(());
            }
            for parked in body["parked"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}  ({} deliveries: {})",
                    output::event_line(&parked["event"]),
                    parked["deliveries"],
                    parked["reason"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        GroupAction::Replay { group } => {
            let request = http().post(format!("{}/parked/replay", group_url(server, &group)));
            print_response(send(server, request).await?).await
        }
        GroupAction::Consume {
            group,
            worker,
            max,
            count,
            nack,
        } => consume(server, &group, &worker, max, count, nack.as_deref()).await,
    }
}

async fn consume(
    server: &str,
    group: &str,
    worker: &str,
    max: u32,
    count: Option<u64>,
    nack: Option<&str>,
) -> anyhow::Result<()> {
    let url = group_url(server, group);
    let mut seen = 0u64;
    loop {
        let max = count.map_or(u64::from(max), |c| (c - seen).min(u64::from(max)));
        if max == 0 {
            return Ok(());
        }
        let request = http().post(format!("{url}/poll")).query(&[
            ("max", max.to_string()),
            ("wait_ms", "10000".to_owned()),
            ("worker", worker.to_owned()),
        ]);
        let body = answer(send(server, request).await?).await?;
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            continue;
        }
        for message in &messages {
            if output::json() {
                println!("{message}");
            } else {
                println!(
                    "#{}  {}",
                    message["delivery"],
                    output::event_line(&message["event"])
                );
            }
        }
        let leases: Vec<&Value> = messages.iter().map(|m| &m["lease"]).collect();
        let request = match nack {
            None => http()
                .post(format!("{url}/ack"))
                .json(&json!({ "leases": leases })),
            Some(action) => http().post(format!("{url}/nack")).json(&json!({
                "leases": leases, "action": action, "reason": "nacked from the command line",
            })),
        };
        let settled = answer(send(server, request).await?)
            .await
            .context("settling the events")?;
        if let Some(expired) = settled["expired"].as_array().filter(|e| !e.is_empty()) {
            eprintln!(
                "{} leases had expired: those events will come again",
                expired.len()
            );
        }
        seen += messages.len() as u64;
    }
}
