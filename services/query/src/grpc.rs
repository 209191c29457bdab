//! `tributary.v1.QueryService`.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::v1::query_service_server::QueryService;
use tributary_proto::v1::{
    AggregateEventsRequest, AggregateEventsResponse, GetEventRequest, ListEventsRequest,
    ListEventsResponse, StoredEvent, TailEventsRequest,
};
use tributary_proto::validate::is_event_id;
use tributary_store::events::{self, Cursor};

use crate::context::{QueryContext, db_span, store_status};
use crate::convert::stored_event;
use crate::page_token;
use tributary_platform::filter::store_filter;

pub const DEFAULT_PAGE_SIZE: i64 = 100;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// The gRPC face of the query service; the work is in the store and the
/// handler modules, over the shared [`QueryContext`].
#[derive(Clone)]
pub struct QueryApi {
    pub ctx: QueryContext,
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
        let row = self
            .ctx
            .pool
            .run(async |client| events::get_event(client, &id).await)
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
        let mut rows = self
            .ctx
            .pool
            .run(async |client| {
                events::list_events(client, &store_filter, after.as_ref(), page_size + 1).await
            })
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
        crate::aggregate::check_time_zones(&self.ctx, &plan.groups).await?;
        let result = self
            .ctx
            .pool
            .run(async |client| {
                tributary_store::aggregate::aggregate(
                    client,
                    &filter,
                    &plan.groups,
                    &plan.measures,
                    plan.limit,
                )
                .await
            })
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
        Ok(Response::new(Box::pin(self.ctx.tail.subscribe(filter))))
    }
}
