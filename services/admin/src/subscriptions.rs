//! Subscriptions: create (committing the group's start offsets first), read,
//! update (settings, pause, secret rotation), delete, seek.
//!
//! The settings are checked and completed with their defaults here, then
//! stored as the protobuf encoding of `Subscription` (read-only fields
//! cleared), which dispatch reads: one contract, no second schema.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use prost::Message as _;
use tonic::Status;
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::v1::{
    BatchPolicy, CreateSubscriptionRequest, CreateSubscriptionResponse, DeleteSubscriptionRequest,
    DeleteSubscriptionResponse, GetSubscriptionRequest, ListSubscriptionsRequest,
    ListSubscriptionsResponse, PullConfig, PushConfig, ResetOffsetsRequest, RetryPolicy,
    SeekSubscriptionRequest, SeekSubscriptionResponse, StartPosition, Subscription,
    SubscriptionState, UpdateSubscriptionRequest, UpdateSubscriptionResponse,
    reset_offsets_request, start_position, subscription,
};
use tributary_proto::validate::FieldViolation;
use tributary_store::subscriptions::{self as store, SubscriptionRow};

use crate::context::{AdminContext, blocking, db_status};

const MAX_HEADERS: usize = 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EVENTS: i32 = 100;
const DEFAULT_MAX_BYTES: i64 = 1024 * 1024;
const MAX_MAX_BYTES: i64 = 16 * 1024 * 1024;
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);
const MAX_MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a seek waits for dispatch to let go of the group.
const SEEK_WAIT: Duration = Duration::from_secs(20);

fn name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

fn check_name(name: &str) -> Result<(), Status> {
    if name_ok(name) {
        Ok(())
    } else {
        Err(violation(
            "name",
            "must be 1-64 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter",
        ))
    }
}

fn duration(d: Option<&prost_types::Duration>) -> Option<Result<Duration, ()>> {
    d.map(|d| Duration::try_from(*d).map_err(|_| ()))
}

fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// A header a subscription may set: an HTTP token name (not one of those
/// dispatch sets) and a value without control characters.
fn header_problem(name: &str, value: &str) -> Option<String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Some(format!("{name:?} is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("webhook-")
        || lower.starts_with("content-")
        || ["host", "connection", "user-agent", "transfer-encoding"].contains(&lower.as_str())
    {
        return Some(format!("{name:?} is set by dispatch"));
    }
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Some(format!("the value of {name:?} holds a control character"));
    }
    None
}

/// Checks the settings and fills in the defaults; the read-only fields are
/// cleared. What is stored, and what dispatch runs.
fn settled(ctx: &AdminContext, s: &Subscription) -> Result<Subscription, Status> {
    let mut bad: Vec<FieldViolation> = Vec::new();
    let mut v = |field: &str, why: String| {
        bad.push(FieldViolation {
            field: format!("subscription.{field}"),
            description: why,
        })
    };
    let filter = s.filter.clone().unwrap_or_default();
    if let Err(status) = tributary_platform::filter::store_filter(&filter) {
        v("filter", status.message().to_owned());
    }
    let delivery = match &s.delivery {
        None => {
            v("delivery", "set exactly one of push or pull".into());
            None
        }
        Some(subscription::Delivery::Push(p)) => {
            if let Err(why) = ctx.webhooks.check_url(&p.url) {
                v("push.url", why);
            }
            if p.headers.len() > MAX_HEADERS {
                v("push.headers", format!("at most {MAX_HEADERS} headers"));
            }
            for (name, value) in &p.headers {
                if let Some(why) = header_problem(name, value) {
                    v("push.headers", why);
                }
            }
            let timeout = match duration(p.timeout.as_ref()) {
                None => DEFAULT_TIMEOUT,
                Some(Ok(t)) if !t.is_zero() && t <= MAX_TIMEOUT => t,
                Some(_) => {
                    v(
                        "push.timeout",
                        "must be more than 0 s and at most 60 s".into(),
                    );
                    DEFAULT_TIMEOUT
                }
            };
            Some(subscription::Delivery::Push(PushConfig {
                url: p.url.clone(),
                headers: p.headers.clone(),
                timeout: proto_duration(timeout),
            }))
        }
        Some(subscription::Delivery::Pull(p)) => {
            let deadline = match duration(p.ack_deadline.as_ref()) {
                None => DEFAULT_ACK_DEADLINE,
                Some(Ok(d)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(600) => d,
                Some(_) => {
                    v("pull.ack_deadline", "must be 1 s to 10 min".into());
                    DEFAULT_ACK_DEADLINE
                }
            };
            Some(subscription::Delivery::Pull(PullConfig {
                ack_deadline: proto_duration(deadline),
            }))
        }
    };
    let b = s.batch.unwrap_or_default();
    let max_events = match b.max_events {
        0 => DEFAULT_MAX_EVENTS,
        n @ 1..=1000 => n,
        n => {
            v("batch.max_events", format!("is {n}; must be 1-1000"));
            DEFAULT_MAX_EVENTS
        }
    };
    let max_bytes = match b.max_bytes {
        0 => DEFAULT_MAX_BYTES,
        n @ 1024..=MAX_MAX_BYTES => n,
        n => {
            v(
                "batch.max_bytes",
                format!("is {n}; must be 1 KiB to 16 MiB"),
            );
            DEFAULT_MAX_BYTES
        }
    };
    let max_wait = match duration(b.max_wait.as_ref()) {
        None => DEFAULT_MAX_WAIT,
        Some(Ok(d)) if d <= MAX_MAX_WAIT => d,
        Some(_) => {
            v("batch.max_wait", "must be 0 s to 60 s".into());
            DEFAULT_MAX_WAIT
        }
    };
    let r = s.retry.unwrap_or_default();
    let positive = |d: Option<&prost_types::Duration>, default: Duration| match duration(d) {
        None => Ok(default),
        Some(Ok(d)) if !d.is_zero() => Ok(d),
        Some(_) => Err(()),
    };
    let min_backoff = positive(r.min_backoff.as_ref(), DEFAULT_MIN_BACKOFF).unwrap_or_else(|()| {
        v("retry.min_backoff", "must be more than 0 s".into());
        DEFAULT_MIN_BACKOFF
    });
    let max_backoff = positive(r.max_backoff.as_ref(), DEFAULT_MAX_BACKOFF).unwrap_or_else(|()| {
        v("retry.max_backoff", "must be more than 0 s".into());
        DEFAULT_MAX_BACKOFF
    });
    if min_backoff > max_backoff {
        v(
            "retry.max_backoff",
            "must not be less than min_backoff".into(),
        );
    }
    let max_age = positive(r.max_age.as_ref(), DEFAULT_MAX_AGE).unwrap_or_else(|()| {
        v("retry.max_age", "must be more than 0 s".into());
        DEFAULT_MAX_AGE
    });
    if r.max_attempts < 0 {
        v("retry.max_attempts", "must be 0 (unlimited) or more".into());
    }
    if !s.rate_per_second.is_finite() || s.rate_per_second < 0.0 {
        v(
            "rate_per_second",
            "must be 0 (unlimited) or a positive number".into(),
        );
    }
    if !bad.is_empty() {
        return Err(pstatus::invalid_argument(&bad));
    }
    Ok(Subscription {
        name: s.name.clone(),
        filter: Some(filter),
        delivery,
        batch: Some(BatchPolicy {
            max_events,
            max_bytes,
            max_wait: proto_duration(max_wait),
        }),
        retry: Some(RetryPolicy {
            min_backoff: proto_duration(min_backoff),
            max_backoff: proto_duration(max_backoff),
            max_attempts: r.max_attempts,
            max_age: proto_duration(max_age),
        }),
        rate_per_second: s.rate_per_second,
        start_at: s.start_at,
        paused: false,
        ..Default::default()
    })
}

/// A new signing secret: whsec_ and 32 random bytes in base64.
fn new_secret() -> Result<String, Status> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| pstatus::internal("cannot make a secret", &e))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The stored row as the contract shows it (never a secret); `lag` -1
/// when not measured.
fn to_proto(row: &SubscriptionRow, lag: i64) -> Subscription {
    let mut s = Subscription::decode(row.spec.as_slice()).unwrap_or_default();
    s.name.clone_from(&row.name);
    s.paused = row.paused;
    s.state = if row.paused {
        SubscriptionState::Paused
    } else {
        match row.state.as_str() {
            "failing" => SubscriptionState::Failing,
            "disabled" => SubscriptionState::Disabled,
            _ => SubscriptionState::Active,
        }
    } as i32;
    s.lag = lag;
    s.last_delivered_at = row.last_delivered_at.map(Into::into);
    s.last_error.clone_from(&row.last_error);
    s.created_at = Some(row.created_at.into());
    s.updated_at = Some(row.updated_at.into());
    s.consumer_group = store::consumer_group(&row.name);
    s
}

/// The subscription's lag: what its group has not committed, over the
/// topic's partitions; -1 when the broker does not answer.
async fn lag_of(ctx: &AdminContext, name: &str) -> i64 {
    let lag = ctx.lag.clone();
    let (group, topic) = (store::consumer_group(name), ctx.kafka.topic.clone());
    match blocking(
        move || lag.measure(&group, &topic),
        "cannot measure the lag",
    )
    .await
    {
        Ok(parts) => parts.iter().map(|p| p.lag).sum(),
        Err(_) => -1,
    }
}

fn reset_to(at: Option<&StartPosition>) -> Result<reset_offsets_request::To, Status> {
    Ok(match at.and_then(|a| a.at.as_ref()) {
        None | Some(start_position::At::Latest(true)) => reset_offsets_request::To::Latest(true),
        Some(start_position::At::Earliest(true)) => reset_offsets_request::To::Earliest(true),
        Some(start_position::At::Timestamp(t)) => reset_offsets_request::To::Timestamp(*t),
        Some(start_position::At::Latest(false) | start_position::At::Earliest(false)) => {
            return Err(violation(
                "start_at",
                "earliest and latest must be true when set",
            ));
        }
    })
}

/// Commits the group's offsets at `at` (the group must have no members).
async fn place(
    ctx: &AdminContext,
    name: &str,
    at: Option<&StartPosition>,
) -> Result<Vec<tributary_proto::v1::PartitionOffset>, Status> {
    let response = crate::replay::reset_offsets(
        ctx,
        ResetOffsetsRequest {
            group: store::consumer_group(name),
            topic: String::new(),
            to: Some(reset_to(at)?),
            dry_run: false,
        },
    )
    .await?;
    Ok(response.offsets)
}

pub async fn create(
    ctx: &AdminContext,
    request: CreateSubscriptionRequest,
) -> Result<CreateSubscriptionResponse, Status> {
    let requested = request
        .subscription
        .ok_or_else(|| violation("subscription", "is required"))?;
    check_name(&requested.name)?;
    let spec = settled(ctx, &requested)?;
    reset_to(spec.start_at.as_ref())?;
    let name = spec.name.clone();
    let existing = ctx
        .pool
        .run(async |c| store::get(c, &name).await)
        .await
        .map_err(|e| db_status("cannot read subscriptions", &e))?;
    if existing.is_some() {
        return Err(Status::already_exists(format!(
            "a subscription named {name:?} exists"
        )));
    }
    // The cursor first: once the row exists dispatch may start, and it must
    // find the offsets in place.
    place(ctx, &name, spec.start_at.as_ref()).await?;
    let secret = match spec.delivery {
        Some(subscription::Delivery::Push(_)) => new_secret()?,
        _ => String::new(),
    };
    let secrets: Vec<String> = [secret.clone()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let encoded = spec.encode_to_vec();
    let paused = requested.paused;
    let row = ctx
        .pool
        .run(async |c| store::create(c, &name, &encoded, paused, &secrets).await)
        .await
        .map_err(|e| db_status("cannot store the subscription", &e))?
        .ok_or_else(|| Status::already_exists(format!("a subscription named {name:?} exists")))?;
    tracing::info!(subscription = %name, "subscription created");
    let lag = lag_of(ctx, &name).await;
    Ok(CreateSubscriptionResponse {
        subscription: Some(to_proto(&row, lag)),
        secret,
    })
}

async fn find(ctx: &AdminContext, name: &str) -> Result<SubscriptionRow, Status> {
    check_name(name)?;
    let n = name.to_owned();
    ctx.pool
        .run(async |c| store::get(c, &n).await)
        .await
        .map_err(|e| db_status("cannot read subscriptions", &e))?
        .ok_or_else(|| Status::not_found(format!("no subscription named {name:?}")))
}

pub async fn get(
    ctx: &AdminContext,
    request: GetSubscriptionRequest,
) -> Result<Subscription, Status> {
    let row = find(ctx, &request.name).await?;
    let lag = lag_of(ctx, &row.name).await;
    Ok(to_proto(&row, lag))
}

pub async fn list(
    ctx: &AdminContext,
    request: ListSubscriptionsRequest,
) -> Result<ListSubscriptionsResponse, Status> {
    let size = match request.page_size {
        0 => 100,
        n @ 1..=1000 => i64::from(n),
        n => return Err(violation("page_size", format!("is {n}; must be 1-1000"))),
    };
    let after = (!request.page_token.is_empty()).then_some(request.page_token.clone());
    if let Some(a) = &after {
        check_name(a).map_err(|_| violation("page_token", "is not a token this service issued"))?;
    }
    let mut rows = ctx
        .pool
        .run(async |c| store::list(c, after.as_deref(), size + 1).await)
        .await
        .map_err(|e| db_status("cannot list subscriptions", &e))?;
    let more = rows.len() as i64 > size;
    rows.truncate(usize::try_from(size).unwrap_or(0));
    let next_page_token = if more {
        rows.last().map(|r| r.name.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    let mut subscriptions = Vec::with_capacity(rows.len());
    for row in &rows {
        subscriptions.push(to_proto(row, lag_of(ctx, &row.name).await));
    }
    Ok(ListSubscriptionsResponse {
        subscriptions,
        next_page_token,
    })
}

/// The fields an update may name, and whether a mask path is one of them.
const UPDATABLE: [&str; 7] = [
    "filter",
    "push",
    "pull",
    "batch",
    "retry",
    "rate_per_second",
    "paused",
];

fn masked(paths: &[String], field: &str) -> bool {
    paths.is_empty()
        || paths
            .iter()
            .any(|p| p == field || p.strip_prefix(field).is_some_and(|r| r.starts_with('.')))
}

pub async fn update(
    ctx: &AdminContext,
    request: UpdateSubscriptionRequest,
) -> Result<UpdateSubscriptionResponse, Status> {
    let new = request
        .subscription
        .ok_or_else(|| violation("subscription", "is required"))?;
    let row = find(ctx, &new.name).await?;
    let paths: Vec<String> = request
        .update_mask
        .map(|m| m.paths)
        .unwrap_or_default()
        .into_iter()
        // grpcurl's JSON gives the paths in lowerCamelCase.
        .map(|p| camel_to_snake(&p))
        .collect();
    for p in &paths {
        let top = p.split('.').next().unwrap_or_default();
        if !UPDATABLE.contains(&top) {
            return Err(violation(
                "update_mask",
                format!(
                    "{p:?} cannot be updated (updatable: {})",
                    UPDATABLE.join(", ")
                ),
            ));
        }
    }
    let mut merged = Subscription::decode(row.spec.as_slice()).unwrap_or_default();
    merged.name.clone_from(&row.name);
    if masked(&paths, "filter") {
        merged.filter.clone_from(&new.filter);
    }
    if masked(&paths, "push") || masked(&paths, "pull") {
        match (&merged.delivery, &new.delivery) {
            (Some(subscription::Delivery::Push(_)), Some(subscription::Delivery::Pull(_)))
            | (Some(subscription::Delivery::Pull(_)), Some(subscription::Delivery::Push(_))) => {
                return Err(violation(
                    "subscription.delivery",
                    "cannot change between push and pull; create another subscription",
                ));
            }
            (_, Some(d)) => merged.delivery = Some(d.clone()),
            (_, None) if !paths.is_empty() => {
                return Err(violation(
                    "subscription.delivery",
                    "the mask names it: set it",
                ));
            }
            (_, None) => {}
        }
    }
    if masked(&paths, "batch") {
        merged.batch.clone_from(&new.batch);
    }
    if masked(&paths, "retry") {
        merged.retry.clone_from(&new.retry);
    }
    if masked(&paths, "rate_per_second") {
        merged.rate_per_second = new.rate_per_second;
    }
    let paused = if masked(&paths, "paused") {
        new.paused
    } else {
        row.paused
    };
    let spec = settled(ctx, &merged)?;
    let is_push = matches!(spec.delivery, Some(subscription::Delivery::Push(_)));
    let mut secret = String::new();
    let secrets = if request.rotate_secret {
        if !is_push {
            return Err(violation("rotate_secret", "only push subscriptions sign"));
        }
        let grace = match duration(request.secret_grace.as_ref()) {
            None => DEFAULT_GRACE,
            Some(Ok(g)) if g <= MAX_GRACE => g,
            Some(_) => return Err(violation("secret_grace", "must be 0 s to 7 days")),
        };
        secret = new_secret()?;
        let mut all = vec![secret.clone()];
        if !grace.is_zero() {
            // The previous signing secret keeps signing during the grace.
            all.extend(row.secrets.first().cloned());
        }
        Some((all, Some(SystemTime::now() + grace)))
    } else {
        None
    };
    let encoded = spec.encode_to_vec();
    let name = row.name.clone();
    let updated = ctx
        .pool
        .run(async |c| {
            store::update(
                c,
                &name,
                &encoded,
                paused,
                secrets.as_ref().map(|(s, until)| (s.as_slice(), *until)),
            )
            .await
        })
        .await
        .map_err(|e| db_status("cannot update the subscription", &e))?
        .ok_or_else(|| Status::not_found(format!("no subscription named {name:?}")))?;
    let lag = lag_of(ctx, &name).await;
    Ok(UpdateSubscriptionResponse {
        subscription: Some(to_proto(&updated, lag)),
        secret,
    })
}

fn camel_to_snake(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn delete(
    ctx: &AdminContext,
    request: DeleteSubscriptionRequest,
) -> Result<DeleteSubscriptionResponse, Status> {
    check_name(&request.name)?;
    let name = request.name.clone();
    let deleted = ctx
        .pool
        .run(async |c| store::delete(c, &name).await)
        .await
        .map_err(|e| db_status("cannot delete the subscription", &e))?;
    if !deleted {
        return Err(Status::not_found(format!(
            "no subscription named {:?}",
            request.name
        )));
    }
    tracing::info!(subscription = %request.name, "subscription deleted");
    // Its cursor goes too, once dispatch has let go of the group (it stops
    // within its poll interval); a later subscription of the same name then
    // starts where its own creation puts it. In the background: the call
    // is done when the subscription is.
    let (ctx, group) = (ctx.clone(), store::consumer_group(&request.name));
    tokio::spawn(async move { forget_group(&ctx, &group).await });
    Ok(DeleteSubscriptionResponse {})
}

/// Deletes a deleted subscription's consumer group, retrying while its
/// consumers are still leaving (up to [`SEEK_WAIT`]).
async fn forget_group(ctx: &AdminContext, group: &str) {
    let deadline = tokio::time::Instant::now() + SEEK_WAIT;
    loop {
        let result = match tributary_kafka::admin::client(&ctx.kafka) {
            Ok(admin) => {
                tributary_kafka::admin::delete_group(&admin, group, Duration::from_secs(5)).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                tracing::info!(%group, "consumer group deleted");
                return;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%group, error = %e, "consumer group not deleted yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                tracing::warn!(%group, error = %e, "cannot delete the consumer group of a deleted subscription");
                return;
            }
        }
    }
}

/// Pauses the subscription (dispatch lets go of its group), moves the
/// cursor, and resumes it if it was running.
pub async fn seek(
    ctx: &AdminContext,
    request: SeekSubscriptionRequest,
) -> Result<SeekSubscriptionResponse, Status> {
    let row = find(ctx, &request.name).await?;
    let to = request
        .to
        .ok_or_else(|| violation("to", "set one of earliest, latest or timestamp"))?;
    reset_to(Some(&to))?;
    let name = row.name.clone();
    let spec = row.spec.clone();
    if !row.paused {
        ctx.pool
            .run(async |c| store::update(c, &name, &spec, true, None).await)
            .await
            .map_err(|e| db_status("cannot pause the subscription", &e))?;
    }
    let placed = async {
        let deadline = tokio::time::Instant::now() + SEEK_WAIT;
        loop {
            match place(ctx, &name, Some(&to)).await {
                Ok(offsets) => return Ok(offsets),
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(s) => return Err(s),
            }
        }
    }
    .await;
    if !row.paused {
        ctx.pool
            .run(async |c| store::update(c, &name, &spec, false, None).await)
            .await
            .map_err(|e| db_status("cannot resume the subscription", &e))?;
    }
    Ok(SeekSubscriptionResponse { offsets: placed? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers() {
        assert!(name_ok("orders.sheet-1"));
        assert!(!name_ok("Orders"));
        assert!(!name_ok("1orders"));
        assert!(!name_ok(""));
        assert!(!name_ok(&"a".repeat(65)));
        assert_eq!(header_problem("Authorization", "Bearer x"), None);
        assert!(header_problem("webhook-id", "x").is_some());
        assert!(header_problem("Content-Type", "x").is_some());
        assert!(header_problem("bad header", "x").is_some());
        assert!(header_problem("x-a", "a\r\nb").is_some());
        assert_eq!(camel_to_snake("ratePerSecond"), "rate_per_second");
        assert_eq!(camel_to_snake("push.url"), "push.url");
        assert!(masked(&["push.url".into()], "push"));
        assert!(!masked(&["pushy".into()], "push"));
        assert!(masked(&[], "batch"));
    }
}
