//! Server-sent events: `GET /subscribe/all` and `GET /subscribe/streams/{stream}`.
//!
//! A subscription is a cursor into the log. It reads pages up to the durable head, then
//! waits for the head to move and reads again from exactly where it stopped. Catch-up and
//! live delivery are the same loop, so the hand-over can neither skip nor repeat an event.
//! The SSE `id` of every event is its global position; a client reconnecting with
//! `Last-Event-ID` resumes right after it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;

use super::error::ApiError;
use super::render::event_json;
use super::{AppState, blocking, params};
use crate::store::{
    EventFilter, EventLog, GlobalPosition, RecordedEvent, StoreError, StreamName, StreamRead,
    StreamRevision,
};

const PAGE: usize = 1_000;
const SCAN_LIMIT: usize = 100_000;

/// Where a subscription is in the log.
enum Cursor {
    All {
        next: GlobalPosition,
        filter: EventFilter,
    },
    Stream {
        stream: StreamName,
        next: StreamRevision,
    },
}

impl Cursor {
    /// Reads the next page; `true` when it reached the end of what is durable.
    fn read_page(
        &mut self,
        store: &dyn EventLog,
    ) -> Result<(Vec<RecordedEvent>, bool), StoreError> {
        match self {
            Cursor::All { next, filter } => {
                let slice = store.read_all(*next, PAGE, SCAN_LIMIT, filter)?;
                *next = slice.scanned_to;
                Ok((slice.events, slice.reached_head))
            }
            Cursor::Stream { stream, next } => {
                match store.read_stream(stream, StreamRead::forward(Some(*next), PAGE))? {
                    None => Ok((Vec::new(), true)),
                    Some(slice) => {
                        if let Some(last) = slice.events.last() {
                            *next = last.revision + 1;
                        }
                        Ok((slice.events, slice.next.is_none()))
                    }
                }
            }
        }
    }
}

struct Subscription {
    store: Arc<dyn EventLog>,
    cursor: Option<Cursor>,
    head: watch::Receiver<GlobalPosition>,
    /// The head at which the cursor last found nothing more to read.
    caught_up_at: Option<GlobalPosition>,
    buffer: VecDeque<RecordedEvent>,
}

impl Subscription {
    /// The next SSE event, waiting for appends when caught up; `None` ends the response.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(
                    Event::default()
                        .id(event.position.to_string())
                        .data(event_json(&event)),
                );
            }
            let head = *self.head.borrow_and_update();
            if self.caught_up_at != Some(head) {
                let store = self.store.clone();
                let mut cursor = self.cursor.take()?;
                let read = tokio::task::spawn_blocking(move || {
                    let page = cursor.read_page(store.as_ref());
                    (cursor, page)
                })
                .await;
                let (cursor, page) = match read {
                    Ok(done) => done,
                    Err(err) => return Some(failure(&err.to_string())),
                };
                self.cursor = Some(cursor);
                match page {
                    Ok((events, caught_up)) => {
                        if caught_up {
                            self.caught_up_at = Some(head);
                        }
                        self.buffer.extend(events);
                    }
                    Err(err) => {
                        self.cursor = None;
                        return Some(failure(&err.to_string()));
                    }
                }
                continue;
            }
            // The store's writer is gone: the server is stopping.
            self.head.changed().await.ok()?;
        }
    }
}

/// A last SSE event telling the client why the subscription ended.
fn failure(message: &str) -> Event {
    tracing::error!(message, "subscription failed");
    Event::default().event("error").data(message)
}

fn into_sse(
    app: &AppState,
    cursor: Cursor,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let subscription = Subscription {
        store: app.log(),
        cursor: Some(cursor),
        head: app.store.watch_head(),
        caught_up_at: None,
        buffer: VecDeque::new(),
    };
    let events = futures::stream::unfold(subscription, |mut sub| async move {
        let event = sub.next_event().await?;
        Some((Ok(event), sub))
    });
    let mut shutdown = app.shutdown.clone();
    let stopping = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    Sse::new(events.take_until(stopping)).keep_alive(KeepAlive::default())
}

/// The position after the client's `Last-Event-ID`, if it sent one.
fn resume_after(headers: &HeaderMap) -> Result<Option<GlobalPosition>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    text.trim().parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_last_event_id",
            format!("Last-Event-ID must be an event position, not {text:?}"),
        )
    })
}

#[derive(Deserialize)]
pub struct SubscribeAllParams {
    from: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    category: Option<String>,
}

pub async fn subscribe_all(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SubscribeAllParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query?;
    let from = params::u64_param("from", query.from.as_deref())?;
    let next = match resume_after(&headers)? {
        Some(last_seen) => last_seen + 1,
        None => from.unwrap_or(0),
    };
    let filter = params::filter(query.event_type.as_deref(), query.category.as_deref());
    app.synced_log().await?;
    Ok(into_sse(&app, Cursor::All { next, filter }))
}

#[derive(Deserialize)]
pub struct SubscribeStreamParams {
    from: Option<String>,
}

pub async fn subscribe_stream(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<SubscribeStreamParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Path(stream) = path?;
    let stream = params::stream_name(&stream)?;
    let Query(query) = query?;
    let from = params::u64_param("from", query.from.as_deref())?;
    let next = match resume_after(&headers)? {
        Some(last_seen) => {
            let store = app.synced_log().await?;
            let name = stream.clone();
            blocking(move || store.stream_revision_after(&name, last_seen)).await?
        }
        None => {
            app.synced_log().await?;
            from.unwrap_or(0)
        }
    };
    Ok(into_sse(&app, Cursor::Stream { stream, next }))
}
