//! AggregateEvents: checks the request and turns it into the store's plan,
//! and the store's rows into the response.

use prost_types::Value;
use prost_types::value::Kind;
use tributary_proto::json::json_to_value;
use tributary_proto::v1::{
    AggregateEventsResponse, AggregateRow, Aggregation, BucketWidth, EventField, GroupBy, Measure,
    group_by,
};
use tributary_proto::validate::FieldViolation;
use tributary_store::aggregate::{self as store, Column, Group, Key, Width};

use tonic::Status;
use tributary_platform::status::violation;
use tributary_proto::json::pointer_tokens;

use crate::context::{QueryContext, store_status};

pub const DEFAULT_LIMIT: i64 = 1000;
pub const MAX_LIMIT: i64 = 10_000;
pub const MAX_GROUPS: usize = 5;
pub const MAX_MEASURES: usize = 10;

/// Refuses a time bucket in a zone PostgreSQL does not know (each zone is
/// asked once per process).
pub async fn check_time_zones(ctx: &QueryContext, groups: &[Group]) -> Result<(), Status> {
    for (i, group) in groups.iter().enumerate() {
        let Group::TimeBucket { time_zone, .. } = group else {
            continue;
        };
        if ctx.known_zones.lock().is_ok_and(|z| z.contains(time_zone)) {
            continue;
        }
        let exists = ctx
            .pool
            .run(async |client| store::time_zone_exists(client, time_zone).await)
            .await
            .map_err(|e| store_status("cannot check the time zone", &e))?;
        if !exists {
            return Err(violation(
                &format!("group_by[{i}].time_bucket.time_zone"),
                format!("{time_zone:?} is not an IANA time zone PostgreSQL knows"),
            ));
        }
        if let Ok(mut z) = ctx.known_zones.lock() {
            z.insert(time_zone.clone());
        }
    }
    Ok(())
}

pub struct Plan {
    pub groups: Vec<Group>,
    pub measures: Vec<store::Measure>,
    pub limit: i64,
    pub columns: Vec<String>,
}

pub fn plan(
    group_by: &[GroupBy],
    measures: &[Measure],
    limit: i32,
) -> Result<Plan, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let mut bad =
        |field: String, description: String| violations.push(FieldViolation { field, description });
    let mut groups = Vec::new();
    let mut columns = Vec::new();
    if group_by.len() > MAX_GROUPS {
        bad("group_by".into(), format!("at most {MAX_GROUPS} groupings"));
    }
    for (i, g) in group_by.iter().enumerate() {
        let field = format!("group_by[{i}]");
        match &g.key {
            None => bad(
                field,
                "set one of field, time_bucket or payload_path".into(),
            ),
            Some(group_by::Key::Field(f)) => {
                let column = match EventField::try_from(*f) {
                    Ok(EventField::EventType) => Some((Column::EventType, "event_type")),
                    Ok(EventField::Source) => Some((Column::Source, "source")),
                    Ok(EventField::UserId) => Some((Column::UserId, "user_id")),
                    Ok(EventField::SessionId) => Some((Column::SessionId, "session_id")),
                    _ => None,
                };
                match column {
                    Some((c, name)) => {
                        groups.push(Group::Column(c));
                        columns.push(name.to_owned());
                    }
                    None => bad(
                        format!("{field}.field"),
                        "must be EVENT_TYPE, SOURCE, USER_ID or SESSION_ID".into(),
                    ),
                }
            }
            Some(group_by::Key::PayloadPath(p)) => match pointer_tokens(p) {
                Ok(tokens) => {
                    groups.push(Group::Payload(tokens));
                    columns.push(p.clone());
                }
                Err(why) => bad(format!("{field}.payload_path"), why),
            },
            Some(group_by::Key::TimeBucket(b)) => {
                let width = match BucketWidth::try_from(b.width) {
                    Ok(BucketWidth::Minute) => Some(Width::Minute),
                    Ok(BucketWidth::Hour) => Some(Width::Hour),
                    Ok(BucketWidth::Day) => Some(Width::Day),
                    Ok(BucketWidth::Month) => Some(Width::Month),
                    _ => None,
                };
                let path = if b.payload_path.is_empty() {
                    Ok(None)
                } else {
                    pointer_tokens(&b.payload_path).map(Some)
                };
                let time_zone = if b.time_zone.is_empty() {
                    "UTC".to_owned()
                } else {
                    b.time_zone.clone()
                };
                match (width, path) {
                    (None, _) => bad(
                        format!("{field}.time_bucket.width"),
                        "must be MINUTE, HOUR, DAY or MONTH".into(),
                    ),
                    (_, Err(why)) => bad(format!("{field}.time_bucket.payload_path"), why),
                    (Some(width), Ok(path)) => {
                        let of = if b.payload_path.is_empty() {
                            "occurred_at"
                        } else {
                            b.payload_path.as_str()
                        };
                        columns.push(format!("{}({of}, {time_zone})", width_name(width)));
                        groups.push(Group::TimeBucket {
                            width,
                            time_zone,
                            path,
                        });
                    }
                }
            }
        }
    }

    let mut planned = Vec::new();
    if measures.len() > MAX_MEASURES {
        bad(
            "measures".into(),
            format!("at most {MAX_MEASURES} measures"),
        );
    }
    let defaulted = [Measure {
        aggregation: Aggregation::Count as i32,
        payload_path: String::new(),
    }];
    let measures = if measures.is_empty() {
        &defaulted[..]
    } else {
        measures
    };
    for (i, m) in measures.iter().enumerate() {
        let field = format!("measures[{i}]");
        let aggregation = Aggregation::try_from(m.aggregation).unwrap_or(Aggregation::Unspecified);
        let path = || pointer_tokens(&m.payload_path);
        let measure = match aggregation {
            Aggregation::Count => Ok(("count".to_owned(), store::Measure::Count)),
            Aggregation::CountDistinctUsers => Ok((
                "count_distinct_users".to_owned(),
                store::Measure::DistinctUsers,
            )),
            Aggregation::Sum | Aggregation::Avg | Aggregation::Min | Aggregation::Max => {
                match path() {
                    Ok(p) => {
                        let (name, measure) = match aggregation {
                            Aggregation::Sum => ("sum", store::Measure::Sum(p)),
                            Aggregation::Avg => ("avg", store::Measure::Avg(p)),
                            Aggregation::Min => ("min", store::Measure::Min(p)),
                            _ => ("max", store::Measure::Max(p)),
                        };
                        Ok((format!("{name}({})", m.payload_path), measure))
                    }
                    Err(why) => Err((format!("{field}.payload_path"), why)),
                }
            }
            Aggregation::Unspecified => Err((
                format!("{field}.aggregation"),
                "must be COUNT, COUNT_DISTINCT_USERS, SUM, AVG, MIN or MAX".to_owned(),
            )),
        };
        match measure {
            Ok((name, m)) => {
                columns.push(name);
                planned.push(m);
            }
            Err((f, why)) => bad(f, why),
        }
    }

    let limit = match i64::from(limit) {
        0 => DEFAULT_LIMIT,
        n if n < 0 => {
            bad("limit".into(), "must not be negative".into());
            0
        }
        n => n.min(MAX_LIMIT),
    };
    if violations.is_empty() {
        Ok(Plan {
            groups,
            measures: planned,
            limit,
            columns,
        })
    } else {
        Err(violations)
    }
}

fn width_name(w: Width) -> &'static str {
    match w {
        Width::Minute => "minute",
        Width::Hour => "hour",
        Width::Day => "day",
        Width::Month => "month",
    }
}

fn null() -> Value {
    Value {
        kind: Some(Kind::NullValue(0)),
    }
}

pub fn response(plan: Plan, aggregation: store::Aggregation) -> AggregateEventsResponse {
    let rows = aggregation
        .rows
        .into_iter()
        .map(|r| AggregateRow {
            group: r
                .keys
                .into_iter()
                .map(|k| match k {
                    Key::Text(Some(s)) => Value {
                        kind: Some(Kind::StringValue(s)),
                    },
                    Key::Json(Some(j)) => json_to_value(j),
                    Key::Text(None) | Key::Json(None) => null(),
                })
                .collect(),
            values: r
                .values
                .into_iter()
                .map(|v| {
                    v.map_or_else(null, |n| Value {
                        kind: Some(Kind::NumberValue(n)),
                    })
                })
                .collect(),
        })
        .collect();
    AggregateEventsResponse {
        rows,
        skipped: aggregation.skipped,
        columns: plan.columns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_path(p: &str) -> GroupBy {
        GroupBy {
            key: Some(group_by::Key::PayloadPath(p.into())),
        }
    }

    #[test]
    fn defaults_to_a_count_and_names_columns() {
        let plan = plan(&[by_path("/gender")], &[], 0)
            .ok()
            .unwrap_or_else(|| panic!("invalid"));
        assert_eq!(plan.columns, ["/gender", "count"]);
        assert_eq!(plan.limit, DEFAULT_LIMIT);
        assert_eq!(plan.groups, [Group::Payload(vec!["gender".into()])]);
    }

    #[test]
    fn names_each_bad_part() {
        let bad = plan(
            &[GroupBy { key: None }, by_path("gender")],
            &[Measure {
                aggregation: Aggregation::Avg as i32,
                payload_path: String::new(),
            }],
            -1,
        )
        .err()
        .unwrap_or_default();
        let fields: Vec<&str> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "group_by[0]",
                "group_by[1].payload_path",
                "measures[0].payload_path",
                "limit"
            ]
        );
    }
}
