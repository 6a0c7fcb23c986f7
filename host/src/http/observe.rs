//! Observing the server: `GET /metrics` (Prometheus text) and `GET /openapi.json` (the
//! OpenAPI document, made once by [`super::openapi`] from the route table).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::groups::{ConsumerGroups, GroupSnapshot, WorkerCounters};
use crate::metrics::{header as help, label};
use crate::modules::Status;

pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    let m = &app.metrics;
    let head = app.store.head();
    let single: [(&str, &str, &str, u64); 4] = [
        (
            "refold_appends_total",
            "counter",
            "Append requests acknowledged.",
            m.appends.load(Ordering::Relaxed),
        ),
        (
            "refold_events_appended_total",
            "counter",
            "Events in acknowledged appends.",
            m.events_appended.load(Ordering::Relaxed),
        ),
        (
            "refold_append_conflicts_total",
            "counter",
            "Appends refused for a wrong expected revision.",
            m.append_conflicts.load(Ordering::Relaxed),
        ),
        (
            "refold_log_head",
            "gauge",
            "Durable events in the log (the next position).",
            head,
        ),
    ];
    for (name, kind, text, value) in single {
        help(&mut out, name, kind, text);
        out += &format!("{name} {value}\n");
    }
    help(
        &mut out,
        "refold_append_duration_seconds",
        "histogram",
        "Append latency, request to durable acknowledgement.",
    );
    m.append_latency
        .render(&mut out, "refold_append_duration_seconds", "");

    let modules = app.hosted.modules().map(|m| m.list()).unwrap_or_default();
    let per_module: [(&str, &str, &str); 6] = [
        (
            "refold_module_checkpoint",
            "gauge",
            "Positions processed by the module's current version.",
        ),
        (
            "refold_module_lag",
            "gauge",
            "Events the module's current version is behind the log head.",
        ),
        (
            "refold_module_events_processed_total",
            "counter",
            "Events the module's current version has processed.",
        ),
        (
            "refold_module_dead_letters_total",
            "counter",
            "Events the module stepped over.",
        ),
        (
            "refold_module_emitted_total",
            "counter",
            "Events a processor emitted and the store appended (0 for other kinds).",
        ),
        (
            "refold_module_faulted",
            "gauge",
            "1 while the module is faulted.",
        ),
    ];
    for (name, kind, text) in per_module {
        help(&mut out, name, kind, text);
        for module in &modules {
            let progress = module.progress();
            let value = match name {
                "refold_module_checkpoint" => progress.checkpoint,
                "refold_module_lag" => head.saturating_sub(progress.checkpoint),
                "refold_module_events_processed_total" => {
                    module.counters.events.load(Ordering::Relaxed)
                }
                "refold_module_dead_letters_total" => {
                    module.counters.dead_letters.load(Ordering::Relaxed)
                }
                "refold_module_emitted_total" => module.counters.emitted.load(Ordering::Relaxed),
                _ => u64::from(progress.status == Status::Faulted),
            };
            out += &format!("{name}{{module=\"{}\"}} {value}\n", label(&module.name));
        }
    }
    help(
        &mut out,
        "refold_module_batch_duration_seconds",
        "histogram",
        "Time per batch handed to the module.",
    );
    for module in &modules {
        let labels = format!("module=\"{}\"", label(&module.name));
        module.counters.batch_duration.render(
            &mut out,
            "refold_module_batch_duration_seconds",
            &labels,
        );
    }
    if let Ok(groups) = app.groups() {
        render_groups(&mut out, &groups);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Consumer groups: progress per group, counters per group and per worker.
fn render_groups(out: &mut String, groups: &ConsumerGroups) {
    let snapshots: Vec<_> = groups
        .list()
        .iter()
        .map(|group| (label(&group.name), groups.snapshot(group)))
        .collect();
    let per_group: [(&str, &str, &str, fn(&GroupSnapshot) -> u64); 6] = [
        (
            "refold_group_position",
            "gauge",
            "Every event before this position is settled.",
            |s| s.position,
        ),
        (
            "refold_group_lag",
            "gauge",
            "Log events after the group's position.",
            |s| s.lag,
        ),
        (
            "refold_group_in_flight",
            "gauge",
            "Events leased and not yet acked.",
            |s| s.in_flight as u64,
        ),
        ("refold_group_parked", "gauge", "Events parked.", |s| {
            s.parked as u64
        }),
        (
            "refold_group_delivered_total",
            "counter",
            "Deliveries to workers.",
            |s| s.delivered,
        ),
        (
            "refold_group_acked_total",
            "counter",
            "Events acked.",
            |s| s.acked,
        ),
    ];
    for (name, kind, text, value) in per_group {
        help(out, name, kind, text);
        for (group, snapshot) in &snapshots {
            *out += &format!("{name}{{group=\"{group}\"}} {}\n", value(snapshot));
        }
    }
    let per_worker: [(&str, &str, fn(&WorkerCounters) -> u64); 4] = [
        (
            "refold_group_worker_delivered_total",
            "Deliveries to the worker since the server started.",
            |c| c.delivered,
        ),
        (
            "refold_group_worker_acked_total",
            "Events the worker acked since the server started.",
            |c| c.acked,
        ),
        (
            "refold_group_worker_nacked_total",
            "Events the worker nacked since the server started.",
            |c| c.nacked,
        ),
        (
            "refold_group_worker_in_flight",
            "Events leased to the worker and not yet settled.",
            |c| c.in_flight,
        ),
    ];
    for (name, text, value) in per_worker {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        help(out, name, kind, text);
        for (group, snapshot) in &snapshots {
            for (worker, counters) in &snapshot.workers {
                *out += &format!(
                    "{name}{{group=\"{group}\",worker=\"{}\"}} {}\n",
                    label(worker),
                    value(counters)
                );
            }
        }
    }
}

pub async fn openapi(State(app): State<AppState>) -> Json<Value> {
    Json(app.openapi.as_ref().clone())
}

/// `GET /cluster`: this host, the others, which modules each runs, and the NATS servers.
/// A single node answers as a cluster of one.
pub async fn cluster(State(app): State<AppState>) -> Result<Response, ApiError> {
    let Some(cluster) = app.cluster.as_ref() else {
        let modules: Vec<String> = app
            .hosted
            .modules()
            .map(|m| m.list().into_iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default();
        return Ok(Json(json!({
            "id": "local",
            "hosts": [{"id": "local", "address": app.address, "alive": true, "modules": modules}],
            "nats": [],
        }))
        .into_response());
    };
    let status = cluster.status().await.map_err(|err| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("cannot read the cluster's state from JetStream: {err:#}"),
        )
    })?;
    Ok(Json(status).into_response())
}
