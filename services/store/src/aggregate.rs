//! AggregateEvents as one SQL statement. Every value a client sends (paths,
//! time zones, widths, filter values) is a bound parameter; the SQL text is
//! built only from this module's fixed fragments.

use tokio_postgres::types::ToSql;

use crate::StoreError;
use crate::events::{EventFilter, Where};

/// The JSON Pointer reference tokens of a payload field (`/a/b` → `[a, b]`).
pub type PayloadPath = Vec<String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    EventType,
    Source,
    UserId,
    SessionId,
}

impl Column {
    fn sql(self) -> &'static str {
        match self {
            Self::EventType => "event_type",
            Self::Source => "source",
            Self::UserId => "user_id",
            Self::SessionId => "session_id",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Minute,
    Hour,
    Day,
    Month,
}

impl Width {
    fn unit(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    Column(Column),
    /// The bucket of occurred_at (`None`) or of a payload timestamp.
    TimeBucket {
        width: Width,
        time_zone: String,
        path: Option<PayloadPath>,
    },
    Payload(PayloadPath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Measure {
    Count,
    DistinctUsers,
    Sum(PayloadPath),
    Avg(PayloadPath),
    Min(PayloadPath),
    Max(PayloadPath),
}

/// A group key as stored: text, or JSON for payload fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Text(Option<String>),
    Json(Option<serde_json::Value>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub keys: Vec<Key>,
    /// One per measure: counts are whole numbers; None when nothing was measured.
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    pub rows: Vec<Row>,
    pub skipped: i64,
}

/// Adds a parameter and returns its placeholder (`$n`).
fn param(w: &mut Where, value: impl ToSql + Sync + Send + 'static) -> String {
    w.params.push(Box::new(value));
    format!("${}", w.params.len())
}

fn numeric(w: &mut Where, path: &PayloadPath) -> (String, String) {
    let p = param(w, path.clone());
    // jsonb numbers cast to numeric exactly; anything else is skipped.
    (
        format!(
            "CASE WHEN jsonb_typeof(payload #> {p}::text[]) = 'number' THEN (payload #>> {p}::text[])::numeric END"
        ),
        format!("jsonb_typeof(payload #> {p}::text[]) IS DISTINCT FROM 'number'"),
    )
}

/// Runs the aggregation: rows ordered by their group keys (nulls last), at
/// most `limit`; `skipped` counts matching events left out of a numeric
/// measure because its field was absent or not a number.
pub async fn aggregate(
    client: &impl deadpool_postgres::GenericClient,
    filter: &EventFilter,
    groups: &[Group],
    measures: &[Measure],
    limit: i64,
) -> Result<Aggregation, StoreError> {
    let mut w = Where::from_filter(filter);
    let mut select = Vec::new();
    for g in groups {
        let expr = match g {
            Group::Column(c) => c.sql().to_owned(),
            Group::Payload(path) => format!("payload #> {}::text[]", param(&mut w, path.clone())),
            Group::TimeBucket {
                width,
                time_zone,
                path,
            } => {
                let unit = param(&mut w, width.unit().to_owned());
                let tz = param(&mut w, time_zone.clone());
                let ts = match path {
                    None => "occurred_at".to_owned(),
                    Some(p) => format!(
                        "tributary_try_timestamptz(payload #>> {}::text[])",
                        param(&mut w, p.clone())
                    ),
                };
                // Buckets align to the zone's wall clock; printed as UTC instants.
                format!(
                    "to_char(date_trunc({unit}, {ts}, {tz}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                )
            }
        };
        select.push(expr);
    }
    let mut skipped_when = Vec::new();
    for m in measures {
        let expr = match m {
            Measure::Count => "count(*)::float8".to_owned(),
            Measure::DistinctUsers => "count(DISTINCT NULLIF(user_id, ''))::float8".to_owned(),
            Measure::Sum(p) | Measure::Avg(p) | Measure::Min(p) | Measure::Max(p) => {
                let (value, absent) = numeric(&mut w, p);
                skipped_when.push(absent);
                let f = match m {
                    Measure::Sum(_) => "sum",
                    Measure::Avg(_) => "avg",
                    Measure::Min(_) => "min",
                    _ => "max",
                };
                format!("{f}({value})::float8")
            }
        };
        select.push(expr);
    }
    let skipped = if skipped_when.is_empty() {
        "0::int8".to_owned()
    } else {
        // A window over the groups: counted before LIMIT cuts rows.
        format!(
            "(sum(count(*) FILTER (WHERE {})) OVER ())::int8",
            skipped_when.join(" OR ")
        )
    };
    select.push(skipped);
    let group_by = if groups.is_empty() {
        String::new()
    } else {
        let n: Vec<String> = (1..=groups.len()).map(|i| i.to_string()).collect();
        let order: Vec<String> = n.iter().map(|i| format!("{i} NULLS LAST")).collect();
        format!("GROUP BY {} ORDER BY {}", n.join(", "), order.join(", "))
    };
    let limit = param(&mut w, limit);
    let sql = format!(
        "SELECT {} FROM events {} {group_by} LIMIT {limit}",
        select.join(", "),
        w.sql()
    );
    let rows = client.query(&sql, &w.params()).await?;
    let mut skipped = 0;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let keys = groups
            .iter()
            .enumerate()
            .map(|(i, g)| match g {
                Group::Payload(_) => Key::Json(r.get(i)),
                _ => Key::Text(r.get(i)),
            })
            .collect();
        let values = (0..measures.len())
            .map(|i| r.get::<_, Option<f64>>(groups.len() + i))
            .collect();
        skipped = r
            .get::<_, Option<i64>>(groups.len() + measures.len())
            .unwrap_or(0);
        out.push(Row { keys, values });
    }
    Ok(Aggregation { rows: out, skipped })
}

/// Whether PostgreSQL knows the time zone `name` (checked on its own, so an
/// unknown zone is refused even when no row would be bucketed).
pub async fn time_zone_exists(
    client: &impl deadpool_postgres::GenericClient,
    name: &str,
) -> Result<bool, StoreError> {
    match client
        .query_one("SELECT now() AT TIME ZONE $1", &[&name])
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => {
            let e = StoreError::from(e);
            if e.is_data_error() { Ok(false) } else { Err(e) }
        }
    }
}
