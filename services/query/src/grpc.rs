//! `tributary.v1.QueryService`.

use std::pin::Pin;
use std::time::SystemTime;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::json::{json_to_struct, value_to_json};
use tributary_proto::v1::query_service_server::QueryService;
use tributary_proto::v1::{
    AggregateEventsRequest, AggregateEventsResponse, Event, EventFilter, GetEventRequest,
    ListEventsRequest, ListEventsResponse, StoredEvent, TailEventsRequest,
};
use tributary_proto::validate::{FieldViolation, is_event_id};
use tributary_store::events::{self, Cursor, EventRow};
use tributary_store::{Pool, StoreError};

use crate::page_token;

pub const DEFAULT_PAGE_SIZE: i64 = 100;
pub const MAX_PAGE_SIZE: i64 = 1000;

#[derive(Clone)]
pub struct QueryApi {
    pub pool: Pool,
    pub tail: crate::tail::TailHub,
    /// Time zones PostgreSQL confirmed, so each is checked once per process.
    pub known_zones: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

fn db_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "postgres.query",
        otel.name = %format!("SELECT events ({operation})"),
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "SELECT",
        db.collection.name = "events",
    )
}

fn store_status(context: &str, e: &StoreError) -> Status {
    if e.is_transient() {
        pstatus::unavailable(context, e)
    } else {
        pstatus::internal(context, e)
    }
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<StoredEvent>, Status> {
        let id = request.into_inner().event_id;
        if id.is_empty() {
            return Err(violation("event_id", "is required"));
        }
        if !is_event_id(&id) {
            return Err(violation("event_id", "must match ^[A-Za-z0-9._:-]{1,128}$"));
        }
        let row = async {
            let client = self.pool.get().await?;
            events::get_event(&client, &id).await
        }
        .instrument(db_span("get"))
        .await
        .map_err(|e| store_status("cannot read the event", &e))?;
        match row {
            Some(row) => Ok(Response::new(stored_event(row))),
            None => Err(Status::not_found(format!("no event with event_id {id:?}"))),
        }
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let request = request.into_inner();
        let page_size = match i64::from(request.page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(violation("page_size", "must not be negative")),
            n => n.min(MAX_PAGE_SIZE),
        };
        let filter = request.filter.unwrap_or_default();
        let store_filter = store_filter(&filter)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                page_token::decode(&request.page_token, &filter)
                    .map_err(|e| violation("page_token", e.to_string()))?,
            )
        };
        // One extra row tells whether another page follows.
        let mut rows = async {
            let client = self.pool.get().await?;
            events::list_events(&client, &store_filter, after.as_ref(), page_size + 1).await
        }
        .instrument(db_span("list"))
        .await
        .map_err(|e| store_status("cannot list events", &e))?;
        let next_page_token = if rows.len() as i64 > page_size {
            rows.truncate(page_size as usize);
            rows.last()
                .map(|last| {
                    page_token::encode(
                        &filter,
                        &Cursor {
                            occurred_at: last.occurred_at,
                            event_id: last.event_id.clone(),
                        },
                    )
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListEventsResponse {
            events: rows.into_iter().map(stored_event).collect(),
            next_page_token,
        }))
    }

    async fn aggregate_events(
        &self,
        request: Request<AggregateEventsRequest>,
    ) -> Result<Response<AggregateEventsResponse>, Status> {
        let request = request.into_inner();
        let filter = store_filter(&request.filter.unwrap_or_default())?;
        let plan = crate::aggregate::plan(&request.group_by, &request.measures, request.limit)
            .map_err(|v| pstatus::invalid_argument(&v))?;
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| store_status("cannot aggregate events", &e.into()))?;
        for (i, group) in plan.groups.iter().enumerate() {
            if let tributary_store::aggregate::Group::TimeBucket { time_zone, .. } = group {
                let known = self.known_zones.lock().is_ok_and(|z| z.contains(time_zone));
                if known {
                    continue;
                }
                let exists = tributary_store::aggregate::time_zone_exists(&client, time_zone)
                    .await
                    .map_err(|e| store_status("cannot check the time zone", &e))?;
                if !exists {
                    return Err(violation(
                        &format!("group_by[{i}].time_bucket.time_zone"),
                        format!("{time_zone:?} is not an IANA time zone PostgreSQL knows"),
                    ));
                }
                if let Ok(mut z) = self.known_zones.lock() {
                    z.insert(time_zone.clone());
                }
            }
        }
        let result = async {
            tributary_store::aggregate::aggregate(
                &client,
                &filter,
                &plan.groups,
                &plan.measures,
                plan.limit,
            )
            .await
        }
        .instrument(db_span("aggregate"))
        .await;
        let aggregation = match result {
            Ok(a) => a,
            // A time zone PostgreSQL does not know, and the like.
            Err(e) if e.is_data_error() => {
                return Err(violation(
                    "group_by",
                    e.db_message().unwrap_or_else(|| e.to_string()),
                ));
            }
            Err(e) => return Err(store_status("cannot aggregate events", &e)),
        };
        Ok(Response::new(crate::aggregate::response(plan, aggregation)))
    }

    type TailEventsStream = Pin<Box<dyn Stream<Item = Result<StoredEvent, Status>> + Send>>;

    async fn tail_events(
        &self,
        request: Request<TailEventsRequest>,
    ) -> Result<Response<Self::TailEventsStream>, Status> {
        let filter = store_filter(&request.into_inner().filter.unwrap_or_default())?;
        Ok(Response::new(Box::pin(self.tail.subscribe(filter))))
    }
}

/// Checks a filter and turns it into the store's; payload matches become
/// containment documents (`/a/b = 1` → `{"a":{"b":1}}`).
pub fn store_filter(filter: &EventFilter) -> Result<events::EventFilter, Status> {
    let mut violations = Vec::new();
    let time =
        |field: &str, ts: &Option<prost_types::Timestamp>, violations: &mut Vec<FieldViolation>| {
            ts.as_ref().and_then(|t| match SystemTime::try_from(*t) {
                Ok(t) => Some(t),
                Err(e) => {
                    violations.push(FieldViolation {
                        field: format!("filter.{field}"),
                        description: format!("is not a valid timestamp: {e}"),
                    });
                    None
                }
            })
        };
    let occurred_after = time("occurred_after", &filter.occurred_after, &mut violations);
    let occurred_before = time("occurred_before", &filter.occurred_before, &mut violations);
    let mut payload_contains = Vec::with_capacity(filter.payload_matches.len());
    for (i, m) in filter.payload_matches.iter().enumerate() {
        let field = format!("filter.payload_matches[{i}]");
        let Some(value) = &m.value else {
            violations.push(FieldViolation {
                field: format!("{field}.value"),
                description: "is required".into(),
            });
            continue;
        };
        let value = match value_to_json(value) {
            Ok(v) => v,
            Err(e) => {
                violations.push(FieldViolation {
                    field: format!("{field}.value"),
                    description: e.to_string(),
                });
                continue;
            }
        };
        match containment(&m.path, value) {
            Ok(doc) => payload_contains.push(doc),
            Err(why) => violations.push(FieldViolation {
                field: format!("{field}.path"),
                description: why,
            }),
        }
    }
    if !violations.is_empty() {
        return Err(pstatus::invalid_argument(&violations));
    }
    let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    Ok(events::EventFilter {
        event_types: filter.event_types.clone(),
        source: non_empty(&filter.source),
        user_id: non_empty(&filter.user_id),
        session_id: non_empty(&filter.session_id),
        occurred_after,
        occurred_before,
        payload_contains,
    })
}

pub use tributary_proto::json::pointer_tokens;

fn containment(path: &str, value: serde_json::Value) -> Result<serde_json::Value, String> {
    let tokens = pointer_tokens(path)?;
    Ok(tokens.into_iter().rev().fold(value, |inner, key| {
        let mut map = serde_json::Map::new();
        map.insert(key, inner);
        serde_json::Value::Object(map)
    }))
}

pub fn stored_event(row: EventRow) -> StoredEvent {
    let payload = match row.payload {
        serde_json::Value::Object(map) => Some(json_to_struct(map)),
        _ => None,
    };
    StoredEvent {
        event: Some(Event {
            event_id: row.event_id,
            event_type: row.event_type,
            source: row.source,
            user_id: row.user_id,
            session_id: row.session_id,
            occurred_at: Some(row.occurred_at.into()),
            payload,
        }),
        received_at: Some(row.received_at.into()),
        persisted_at: Some(row.persisted_at.into()),
        partition: row.partition,
        offset: row.offset,
        trace_id: row.trace_id,
        schema_version: row.schema_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_unescape_and_nest() {
        assert_eq!(
            pointer_tokens("/a~1b/c~0d"),
            Ok(vec!["a/b".into(), "c~d".into()])
        );
        assert!(pointer_tokens("a").is_err());
        assert!(pointer_tokens("").is_err());
        assert!(pointer_tokens("/a//b").is_err());
        assert!(pointer_tokens("/a~2").is_err());
        assert_eq!(
            containment("/order/country", serde_json::json!("DE")),
            Ok(serde_json::json!({"order": {"country": "DE"}}))
        );
    }
}
