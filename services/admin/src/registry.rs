//! The event-type registry RPCs.

use tonic::Status;
use tributary_platform::status::{invalid_argument, violation};
use tributary_proto::json::{json_to_struct, struct_to_json};
use tributary_proto::v1::{
    EventType, GetEventTypeRequest, ListEventTypesRequest, ListEventTypesResponse,
    RegisterEventTypeRequest,
};
use tributary_proto::validate::{FieldViolation, is_event_type};
use tributary_store::event_types::{self as store, EventTypeRow};

use crate::context::{AdminContext, db_status};

fn to_proto(r: EventTypeRow) -> EventType {
    EventType {
        name: r.name,
        version: r.version,
        schema: match r.schema {
            serde_json::Value::Object(m) => Some(json_to_struct(m)),
            _ => None,
        },
        description: r.description,
        created_at: Some(r.created_at.into()),
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        Err(violation("name", "is required"))
    } else if !is_event_type(name) {
        Err(violation("name", "must match ^[a-z][a-z0-9_.-]{0,63}$"))
    } else {
        Ok(())
    }
}

pub async fn register(
    ctx: &AdminContext,
    request: RegisterEventTypeRequest,
) -> Result<EventType, Status> {
    check_name(&request.name)?;
    let Some(schema) = &request.schema else {
        return Err(violation("schema", "is required"));
    };
    let schema = struct_to_json(schema)
        .map(serde_json::Value::Object)
        .map_err(|e| violation("schema", e.to_string()))?;
    store::compile(&schema).map_err(|why| violation("schema", why))?;
    if !request.force {
        let name = request.name.clone();
        let previous = ctx
            .pool
            .run(async |client| store::get(client, &name, 0).await)
            .await
            .map_err(|e| db_status("cannot read the event type", &e))?;
        if let Some(previous) = previous {
            let found = crate::compat::check(&previous.schema, &schema);
            if !found.is_empty() {
                let violations: Vec<FieldViolation> = found
                    .into_iter()
                    .map(|i| FieldViolation {
                        field: format!("schema{}", i.pointer.trim_end_matches('/')),
                        description: format!(
                            "{} (against version {}; force registers it anyway)",
                            i.why, previous.version
                        ),
                    })
                    .collect();
                return Err(invalid_argument(&violations));
            }
        }
    }
    let row = ctx
        .pool
        .run(async |client| {
            store::register(client, &request.name, &schema, &request.description).await
        })
        .await
        .map_err(|e| db_status("cannot register the event type", &e))?;
    tracing::info!(name = %row.name, version = row.version, "event type registered");
    Ok(to_proto(row))
}

pub async fn get(ctx: &AdminContext, request: GetEventTypeRequest) -> Result<EventType, Status> {
    check_name(&request.name)?;
    if request.version < 0 {
        return Err(violation("version", "must not be negative (0: the latest)"));
    }
    match ctx
        .pool
        .run(async |client| store::get(client, &request.name, request.version).await)
        .await
        .map_err(|e| db_status("cannot read the event type", &e))?
    {
        Some(row) => Ok(to_proto(row)),
        None if request.version == 0 => Err(Status::not_found(format!(
            "event type {:?} is not registered",
            request.name
        ))),
        None => Err(Status::not_found(format!(
            "event type {:?} has no version {}",
            request.name, request.version
        ))),
    }
}

pub async fn list(
    ctx: &AdminContext,
    request: ListEventTypesRequest,
) -> Result<ListEventTypesResponse, Status> {
    let page_size = match i64::from(request.page_size) {
        0 => 100,
        n if n < 0 => return Err(violation("page_size", "must not be negative")),
        n => n.min(1000),
    };
    let after = if request.page_token.is_empty() {
        None
    } else {
        let name = crate::paging::decode("et1", &request.page_token)?;
        if !is_event_type(&name) {
            return Err(crate::paging::malformed());
        }
        Some(name)
    };
    let mut rows = ctx
        .pool
        .run(async |client| store::list_latest(client, after.as_deref(), page_size + 1).await)
        .await
        .map_err(|e| db_status("cannot list event types", &e))?;
    let next_page_token = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|r| crate::paging::encode("et1", &r.name))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(ListEventTypesResponse {
        event_types: rows.into_iter().map(to_proto).collect(),
        next_page_token,
    })
}
