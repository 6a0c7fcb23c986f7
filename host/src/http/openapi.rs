//! The OpenAPI 3.0 document, generated from the route table ([`super::routes`]) so that it
//! cannot drift from what is served.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::auth::Access;
use super::routes::{Answer, Body, Endpoint};

/// The OpenAPI 3.0 document of `endpoints`.
pub fn document(endpoints: &[&Endpoint]) -> Value {
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
            Body::Json(description) => {
                operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "description": description}}}});
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
