//! The API's one table of routes: every endpoint's method, path, who may call it and what
//! it takes and answers, beside its handler. The router, the per-route authorization and
//! the OpenAPI document (`GET /openapi.json`) are all built from this table, so none of
//! them can drift from the others.

use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::auth::{Access, Role};
use super::{AppState, backup, events, observe, projections, queries, subscribe, subscriptions};

/// What a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    /// An event or an array of events.
    Events,
    /// A WebAssembly component.
    Wasm,
    /// Recorded events, one JSON object per line (a backup).
    RecordedEvents,
    /// A JSON object, as described.
    Json(&'static str),
}

/// What a successful response is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Json,
    /// Server-sent events.
    EventStream,
    /// Prometheus text.
    Text,
}

/// One endpoint of the API.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
    pub body: Body,
    pub answer: Answer,
    /// The statuses it answers with, and what each means.
    pub responses: &'static [(u16, &'static str)],
}

const READ: Access = Access::Needs(Role::Read);
const WRITE: Access = Access::Needs(Role::Write);
const ADMIN: Access = Access::Needs(Role::Admin);

const CONSISTENCY: [(&str, &str); 3] = [
    (
        "version",
        "a version of the module (full or an 8+ character prefix; default: the current one)",
    ),
    (
        "after",
        "wait until the module has processed the log past this position",
    ),
    (
        "wait_ms",
        "how long to wait for `after`, in milliseconds (default 5000)",
    ),
];

macro_rules! params {
    ($($name:literal => $doc:literal),*) => {{
        const LIST: &[(&str, &str)] = &[$(($name, $doc)),*];
        LIST
    }};
}

fn endpoint(
    method: Method,
    path: &'static str,
    access: Access,
    summary: &'static str,
    query: &'static [(&'static str, &'static str)],
    responses: &'static [(u16, &'static str)],
) -> Endpoint {
    Endpoint {
        method,
        path,
        access,
        summary,
        query,
        body: Body::None,
        answer: Answer::Json,
        responses,
    }
}

/// Every endpoint with its handler.
pub fn table() -> Vec<(Endpoint, MethodRouter<AppState>)> {
    use Method as M;
    const READ_STREAM: &[(&str, &str)] = params!(
        "from" => "first revision to read",
        "limit" => "most events (1 to 10000, default 100)",
        "direction" => "forward (default) or backward"
    );
    const STATE_READ: &[(&str, &str)] = &[CONSISTENCY[0], CONSISTENCY[1], CONSISTENCY[2]];
    const STREAM_STATE: &[(&str, &str)] = &[
        (
            "revision",
            "the state right after this revision, replayed on demand",
        ),
        ("at", "the state at this RFC 3339 time, replayed on demand"),
        CONSISTENCY[0],
        CONSISTENCY[1],
        CONSISTENCY[2],
    ];
    const STATE_LIST: &[(&str, &str)] = &[
        ("prefix", "only keys starting with this"),
        (
            "from",
            "first key to list (the `next` of the previous page)",
        ),
        ("limit", "most items (1 to 10000, default 100)"),
        CONSISTENCY[0],
        CONSISTENCY[1],
        CONSISTENCY[2],
    ];
    const PAGE: &[(&str, &str)] = &[
        ("from", "first item"),
        ("limit", "most items (1 to 10000, default 100)"),
        CONSISTENCY[0],
        CONSISTENCY[1],
        CONSISTENCY[2],
    ];
    const MODULE_ERRORS: &[(u16, &str)] = &[
        (200, "the answer"),
        (400, "bad input"),
        (404, "no such module or version"),
        (
            422,
            "guest_failed: the module failed while replaying on demand (`kind`, `guest_message`)",
        ),
        (504, "not caught up with `after` in time"),
    ];
    vec![
        (
            endpoint(
                M::GET,
                "/health",
                Access::Public,
                "Liveness, and the log head (the number of durable events)",
                &[],
                &[(200, "alive")],
            ),
            get(super::health),
        ),
        (
            endpoint(
                M::GET,
                "/cluster",
                READ,
                "This host, the other hosts of the cluster (alive or not, and the modules each runs) and the NATS servers; a single node answers as a cluster of one",
                &[],
                &[(200, "the cluster"), (503, "JetStream does not answer")],
            ),
            get(observe::cluster),
        ),
        (
            Endpoint {
                answer: Answer::Text,
                ..endpoint(
                    M::GET,
                    "/metrics",
                    READ,
                    "Metrics in Prometheus text format",
                    &[],
                    &[(200, "the metrics")],
                )
            },
            get(observe::metrics),
        ),
        (
            endpoint(
                M::GET,
                "/openapi.json",
                Access::Public,
                "This API's OpenAPI document",
                &[],
                &[(200, "the document")],
            ),
            get(observe::openapi),
        ),
        (
            endpoint(
                M::GET,
                "/streams",
                READ,
                "List streams by name",
                params!("prefix" => "only streams whose name starts with this", "after" => "list streams after this name (the `next` of the previous page)", "limit" => "most streams (1 to 10000, default 100)"),
                &[(200, "a page of streams"), (400, "bad query")],
            ),
            get(events::list_streams),
        ),
        (
            Endpoint {
                body: Body::Events,
                ..endpoint(
                    M::POST,
                    "/streams/{stream}",
                    WRITE,
                    "Append one event or several (all or nothing)",
                    params!("expected_revision" => "any (default), no_stream, exists, or the revision of the stream's last event"),
                    &[
                        (201, "appended (or an identical retry)"),
                        (400, "bad input"),
                        (
                            409,
                            "wrong expected revision, or an event id reused differently",
                        ),
                        (413, "too large"),
                    ],
                )
            },
            post(events::append),
        ),
        (
            Endpoint {
                body: Body::RecordedEvents,
                ..endpoint(
                    M::POST,
                    "/import",
                    ADMIN,
                    "Restore a backup: recorded events as NDJSON (as `refold export` writes them), written exactly as they were; the first must be at the log's head",
                    &[],
                    &[
                        (200, "imported: `imported` events, the new `head`"),
                        (400, "a line is not a recorded event (`line` names it)"),
                        (
                            409,
                            "the events do not continue the log or their streams (`head` is where the log ends)",
                        ),
                        (413, "too many events or too large a body"),
                    ],
                )
            },
            post(backup::import),
        ),
        (
            endpoint(
                M::GET,
                "/streams/{stream}",
                READ,
                "Read a stream",
                READ_STREAM,
                &[
                    (200, "a page of events"),
                    (400, "bad input"),
                    (404, "the stream has no events"),
                ],
            ),
            get(events::read_stream),
        ),
        (
            endpoint(
                M::GET,
                "/all",
                READ,
                "Read the global log",
                params!("from" => "first position", "limit" => "most events (1 to 10000, default 100)", "type" => "only these event types (comma-separated)", "category" => "only these stream categories (comma-separated)"),
                &[(200, "a page of events"), (400, "bad query")],
            ),
            get(events::read_all),
        ),
        (
            Endpoint {
                answer: Answer::EventStream,
                ..endpoint(
                    M::GET,
                    "/subscribe/all",
                    READ,
                    "Follow the global log: catch up, then live (server-sent events; id = position)",
                    params!("from" => "first position (or send Last-Event-ID)", "type" => "only these event types", "category" => "only these stream categories"),
                    &[(200, "the event stream"), (400, "bad query")],
                )
            },
            get(subscribe::subscribe_all),
        ),
        (
            Endpoint {
                answer: Answer::EventStream,
                ..endpoint(
                    M::GET,
                    "/subscribe/streams/{stream}",
                    READ,
                    "Follow one stream: catch up, then live (server-sent events; id = position)",
                    params!("from" => "first revision (or send Last-Event-ID)"),
                    &[(200, "the event stream"), (400, "bad input")],
                )
            },
            get(subscribe::subscribe_stream),
        ),
        (
            endpoint(
                M::GET,
                "/projections",
                READ,
                "Every module with its status and lag",
                &[],
                &[(200, "the modules")],
            ),
            get(projections::list),
        ),
        (
            Endpoint {
                body: Body::Wasm,
                ..endpoint(
                    M::PUT,
                    "/projections/{name}",
                    ADMIN,
                    "Deploy a module (a WebAssembly component); new bytes rebuild beside the current version",
                    params!("activate" => "auto (default): switch once caught up; manual: when activated", "on_error" => "halt (default) or skip (dead-letter failing events)", "memory_mb" => "memory limit", "timeout_ms" => "time limit per call", "max_state_bytes" => "largest state or value", "max_call_write_bytes" => "most bytes written per call", "log_bytes" => "kept log output"),
                    &[
                        (200, "unchanged"),
                        (201, "deployed"),
                        (400, "not WebAssembly, or a bad name or setting"),
                        (413, "too large"),
                        (422, "not a usable Refold component"),
                    ],
                )
            },
            // Bodies are read by `body::read_limited`, each route with its own limit (here
            // `max_module_bytes`), so that an oversized one is answered 413 and drained.
            put(projections::deploy),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}",
                READ,
                "One module: status, versions, rebuild progress, fault, counters, limits",
                &[],
                &[(200, "the module"), (404, "no such module")],
            ),
            get(projections::details),
        ),
        (
            endpoint(
                M::DELETE,
                "/projections/{name}",
                ADMIN,
                "Remove a module, every version and its state",
                &[],
                &[(200, "removed"), (404, "no such module")],
            ),
            delete(projections::remove),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}/streams/{stream}",
                READ,
                "A reducer's state of one stream, now or at a past revision or time",
                STREAM_STATE,
                MODULE_ERRORS,
            ),
            get(queries::stream_state),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}/state",
                READ,
                "A projection's keys and values, by prefix",
                STATE_LIST,
                MODULE_ERRORS,
            ),
            get(queries::state_list),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}/state/{*key}",
                READ,
                "One key of a projection",
                STATE_READ,
                MODULE_ERRORS,
            ),
            get(queries::state_key),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}/logs",
                READ,
                "What the module printed, oldest first: the most recent `limit` lines, or with `from` the lines numbered from there (lines are numbered from 0 as written; `written` is the next number, `next` the `from` of the following page)",
                PAGE,
                MODULE_ERRORS,
            ),
            get(queries::logs),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}/dead-letters",
                READ,
                "Events the module stepped over",
                PAGE,
                MODULE_ERRORS,
            ),
            get(queries::dead_letters),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}/versions",
                READ,
                "Every version: current, candidate, kept, replays",
                &[],
                &[(200, "the versions"), (404, "no such module")],
            ),
            get(projections::versions),
        ),
        (
            endpoint(
                M::POST,
                "/projections/{name}/versions/{version}/activate",
                ADMIN,
                "Make a version current (a candidate, or a kept one: rollback without rebuild)",
                &[],
                &[(200, "activated"), (404, "no such module or version")],
            ),
            post(projections::activate),
        ),
        (
            endpoint(
                M::GET,
                "/projections/{name}/versions/{version}/diff",
                READ,
                "Compare a version's state with the current version's",
                &[],
                &[(200, "the differences"), (404, "no such module or version")],
            ),
            get(projections::diff),
        ),
        (
            endpoint(
                M::POST,
                "/projections/{name}/replay",
                ADMIN,
                "Build a temporary read model up to a position or time, queryable as a version",
                params!("to" => "a log position, or an RFC 3339 time"),
                &[
                    (200, "built"),
                    (400, "bad query"),
                    (404, "no such module"),
                    (422, "guest_failed: the module failed during the replay"),
                ],
            ),
            post(projections::replay),
        ),
        (
            endpoint(
                M::POST,
                "/projections/{name}/{action}",
                ADMIN,
                "Operator actions: pause, resume, reset, skip, verify",
                &[],
                &[
                    (200, "done"),
                    (404, "no such module or action"),
                    (
                        409,
                        "not_faulted: skip, and the module is not faulted at an event; conflict: verify, and a new version or a reset came meanwhile",
                    ),
                    (
                        422,
                        "guest_failed: verify's rebuild stopped on the module's failure",
                    ),
                ],
            ),
            post(projections::action),
        ),
        (
            endpoint(
                M::GET,
                "/subscriptions",
                READ,
                "All consumer groups, with their progress",
                &[],
                &[(200, "the groups")],
            ),
            get(subscriptions::list),
        ),
        (
            Endpoint {
                body: Body::Json(
                    "group settings: source (\"all\", {\"stream\": s} or {\"category\": c}), types, from (\"start\", \"end\" or a position), ack_timeout_ms, max_deliveries, ordering (\"none\" or \"stream\")",
                ),
                ..endpoint(
                    M::PUT,
                    "/subscriptions/{group}",
                    ADMIN,
                    "Create a consumer group, or update its settings (where it starts is fixed at creation)",
                    &[],
                    &[
                        (200, "updated"),
                        (201, "created"),
                        (400, "invalid_json, invalid_settings or invalid_group_name"),
                    ],
                )
            },
            put(subscriptions::put),
        ),
        (
            endpoint(
                M::GET,
                "/subscriptions/{group}",
                READ,
                "One consumer group: settings, position, lag, in flight, parked, counters per worker",
                &[],
                &[(200, "the group"), (404, "group_not_found")],
            ),
            get(subscriptions::get),
        ),
        (
            endpoint(
                M::DELETE,
                "/subscriptions/{group}",
                ADMIN,
                "Remove a consumer group, its progress and parked events",
                &[],
                &[(200, "removed"), (404, "group_not_found")],
            ),
            delete(subscriptions::delete),
        ),
        (
            endpoint(
                M::POST,
                "/subscriptions/{group}/poll",
                READ,
                "Lease events of the group, waiting for at least one up to wait_ms",
                params!(
                    "max" => "most events (1 to 1000, default 100)",
                    "wait_ms" => "how long to wait for an event (0 to 30000, default 0)",
                    "worker" => "the worker's name, for its counters"
                ),
                &[
                    (
                        200,
                        "{\"messages\": [{\"lease\", \"delivery\", \"event\"}]}",
                    ),
                    (400, "bad query"),
                    (404, "group_not_found"),
                ],
            ),
            post(subscriptions::poll),
        ),
        (
            Endpoint {
                body: Body::Json("{\"leases\": [\"<lease>\", ...]}"),
                ..endpoint(
                    M::POST,
                    "/subscriptions/{group}/ack",
                    READ,
                    "Acknowledge leased events: settled, durable when answered",
                    &[],
                    &[
                        (200, "{\"acked\", \"expired\": [leases no longer valid]}"),
                        (400, "invalid_json or invalid_body"),
                        (404, "group_not_found"),
                    ],
                )
            },
            post(subscriptions::ack),
        ),
        (
            Endpoint {
                body: Body::Json(
                    "{\"leases\": [...], \"action\": \"retry\" | \"park\" | \"skip\", \"reason\": \"<text>\"}",
                ),
                ..endpoint(
                    M::POST,
                    "/subscriptions/{group}/nack",
                    READ,
                    "Give leased events back: deliver again, park, or skip",
                    &[],
                    &[
                        (200, "{\"nacked\", \"expired\"}"),
                        (400, "invalid_json or invalid_body"),
                        (404, "group_not_found"),
                    ],
                )
            },
            post(subscriptions::nack),
        ),
        (
            endpoint(
                M::GET,
                "/subscriptions/{group}/parked",
                READ,
                "Parked events, with why and after how many deliveries",
                params!(
                    "from" => "first position to list (the `next` of the previous page)",
                    "limit" => "most events (1 to 10000, default 100)"
                ),
                &[
                    (200, "{\"parked\": [...], \"next\"}"),
                    (400, "bad query"),
                    (404, "group_not_found"),
                ],
            ),
            get(subscriptions::parked),
        ),
        (
            endpoint(
                M::POST,
                "/subscriptions/{group}/parked/replay",
                ADMIN,
                "Put every parked event back for delivery, delivery counts reset",
                &[],
                &[(200, "{\"replayed\"}"), (404, "group_not_found")],
            ),
            post(subscriptions::replay_parked),
        ),
    ]
}
