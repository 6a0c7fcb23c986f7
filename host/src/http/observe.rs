//! Observing the server: `GET /metrics` (Prometheus text) and `GET /openapi.json` (the
//! OpenAPI document, generated from the route table in [`super::routes`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::Access;
use super::routes::{Answer, Body, Endpoint};
use crate::metrics::{header as help, label};
use crate::modules::Status;

pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    let m = &app.metrics;
    help(
        &mut out,
        "refold_appends_total",
        "counter",
        "Append requests acknowledged.",
    );
    out += &format!(
        "refold_appends_total {}\n",
        m.appends.load(Ordering::Relaxed)
    );
    help(
        &mut out,
        "refold_events_appended_total",
        "counter",
        "Events in acknowledged appends.",
    );
    out += &format!(
        "refold_events_appended_total {}\n",
        m.events_appended.load(Ordering::Relaxed)
    );
    help(
        &mut out,
        "refold_append_conflicts_total",
        "counter",
        "Appends refused for a wrong expected revision.",
    );
    out += &format!(
        "refold_append_conflicts_total {}\n",
        m.append_conflicts.load(Ordering::Relaxed)
    );
    help(
        &mut out,
        "refold_append_duration_seconds",
        "histogram",
        "Append latency, request to durable acknowledgement.",
    );
    m.append_latency
        .render(&mut out, "refold_append_duration_seconds", "");
    help(
        &mut out,
        "refold_log_head",
        "gauge",
        "Durable events in the log (the next position).",
    );
    let head = app.store.head();
    out += &format!("refold_log_head {head}\n");

    let modules = app.modules.list();
    let per_module: [(&str, &str, &str); 5] = [
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

pub async fn openapi(State(app): State<AppState>) -> Json<Value> {
    Json(app.openapi.as_ref().clone())
}

/// The OpenAPI 3.0 document of `endpoints`.
pub fn openapi_document(endpoints: &[&Endpoint]) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for endpoint in endpoints {
        let path = endpoint.path.replace("{*", "{");
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}}))
            .collect();
        parameters.extend(endpoint.query.iter().map(|(name, doc)| {
            json!({"name": name, "in": "query", "required": false, "description": doc, "schema": {"type": "string"}})
        }));
        let mut responses = Map::new();
        for (status, description) in endpoint.responses {
            let content = match (status, endpoint.answer) {
                (200..=299, Answer::EventStream) => {
                    json!({"text/event-stream": {"schema": {"type": "string"}}})
                }
                (200..=299, Answer::Text) => json!({"text/plain": {"schema": {"type": "string"}}}),
                (200..=299, Answer::Json) => {
                    json!({"application/json": {"schema": {"type": "object"}}})
                }
                _ => {
                    json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
                }
            };
            responses.insert(
                status.to_string(),
                json!({"description": description, "content": content}),
            );
        }
        if endpoint.access != Access::Public {
            responses.insert("401".into(), json!({"description": "no valid token (when tokens are configured)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
            responses.insert("403".into(), json!({"description": "the token's role is not enough", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let mut operation = json!({
            "summary": endpoint.summary,
            "operationId": operation_id(endpoint),
            "parameters": parameters,
            "responses": responses,
            "security": if endpoint.access == Access::Public { json!([]) } else { json!([{"bearer": []}]) },
            // The role a token needs (read < write < admin), when tokens are configured.
            "x-refold-role": match endpoint.access {
                Access::Public => "public",
                Access::Needs(role) => role.as_str(),
            },
        });
        match endpoint.body {
            Body::None => {}
            Body::Events => {
                operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/NewEvent"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/NewEvent"}},
                ]}}}});
            }
            Body::RecordedEvents => {
                // NDJSON is text; `text/plain` is listed too, for clients (and API tools)
                // that know no NDJSON media type.
                let ndjson = json!({"schema": {"type": "string", "description": "one recorded event (as `GET /all` shows it) per line"}});
                operation["requestBody"] = json!({"required": true, "content": {"application/x-ndjson": ndjson, "text/plain": ndjson}});
            }
            Body::Wasm => {
                operation["requestBody"] = json!({"required": true, "content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}}});
            }
        }
        paths
            .entry(path)
            .or_default()
            .insert(endpoint.method.as_str().to_lowercase(), operation);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Refold",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An event store that runs WebAssembly reducers and projections over every stream.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }},
                },
                "NewEvent": {
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {
                        "type": {"type": "string", "minLength": 1, "maxLength": 256},
                        "data": {},
                        "metadata": {"type": "object"},
                        "id": {"type": "string", "format": "uuid"},
                    },
                    "additionalProperties": false,
                },
            },
        },
    })
}

fn operation_id(endpoint: &Endpoint) -> String {
    let words: Vec<&str> = endpoint
        .path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    format!(
        "{}_{}",
        endpoint.method.as_str().to_lowercase(),
        words.join("_")
    )
}
