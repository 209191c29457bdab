//! ListDeadLetters and RedriveDeadLetters.

use std::time::SystemTime;

use tonic::Status;
use tributary_kafka::producer::Record;
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::v1::{
    DeadLetter, DeadLetterFilter, ListDeadLettersRequest, ListDeadLettersResponse, RecordHeader,
    RedriveDeadLettersRequest, RedriveDeadLettersResponse, redrive_dead_letters_request,
};
use tributary_store::dead_letters::{self as store, DeadLetterRow, Selection};

use crate::context::{AdminContext, db_status};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;
/// Most dead letters one redrive by filter re-publishes.
const MAX_REDRIVE: i64 = 1000;

fn store_filter(f: &DeadLetterFilter) -> Result<store::DeadLetterFilter, Status> {
    let time = |field: &str, ts: &Option<prost_types::Timestamp>| {
        ts.map(SystemTime::try_from)
            .transpose()
            .map_err(|e| violation(field, format!("is not a valid timestamp: {e}")))
    };
    let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    Ok(store::DeadLetterFilter {
        subscription: f.subscription.clone(),
        reason_contains: non_empty(&f.reason_contains),
        topic: non_empty(&f.topic),
        include_redriven: f.include_redriven,
        first_seen_after: time("filter.first_seen_after", &f.first_seen_after)?,
        first_seen_before: time("filter.first_seen_before", &f.first_seen_before)?,
    })
}

/// Tokens: kind `dl1`, position `<last id>:<filter hash>`.
fn token(last: i64, filter: &DeadLetterFilter) -> String {
    crate::paging::encode("dl1", format!("{last}:{}", filter_hash(filter)))
}

fn parse_token(token: &str, filter: &DeadLetterFilter) -> Result<i64, Status> {
    let position = crate::paging::decode("dl1", token)?;
    let (id, hash) = position
        .split_once(':')
        .and_then(|(id, hash)| Some((id.parse::<i64>().ok()?, hash)))
        .ok_or_else(crate::paging::malformed)?;
    if hash == filter_hash(filter) {
        Ok(id)
    } else {
        Err(violation(
            "page_token",
            "was issued for a different filter; start again without a token",
        ))
    }
}

fn filter_hash(filter: &DeadLetterFilter) -> String {
    use prost::Message as _;
    tributary_store::migrate::checksum_bytes(&filter.encode_to_vec())
}

fn to_proto(d: DeadLetterRow) -> DeadLetter {
    DeadLetter {
        id: d.id,
        topic: d.topic,
        partition: d.partition,
        offset: d.offset,
        key: d.key.unwrap_or_default(),
        value: d.value.unwrap_or_default(),
        headers: d
            .headers
            .into_iter()
            .map(|(key, value)| RecordHeader { key, value })
            .collect(),
        reason: d.reason,
        event_id: d.event_id.unwrap_or_default(),
        event_type: d.event_type.unwrap_or_default(),
        first_seen_at: Some(d.first_seen_at.into()),
        redriven_at: d.redriven_at.map(Into::into),
        subscription: d.subscription,
        redrive_requested_at: d.redrive_requested_at.map(Into::into),
    }
}

pub async fn list(
    ctx: &AdminContext,
    request: ListDeadLettersRequest,
) -> Result<ListDeadLettersResponse, Status> {
    let page_size = match i64::from(request.page_size) {
        0 => DEFAULT_PAGE,
        n if n < 0 => return Err(violation("page_size", "must not be negative")),
        n => n.min(MAX_PAGE),
    };
    let filter = request.filter.unwrap_or_default();
    let after = if request.page_token.is_empty() {
        None
    } else {
        Some(parse_token(&request.page_token, &filter)?)
    };
    let sf = store_filter(&filter)?;
    let mut rows = ctx
        .pool
        .run(async |client| store::list(client, &sf, after, page_size + 1).await)
        .await
        .map_err(|e| db_status("cannot list dead letters", &e))?;
    let next_page_token = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|d| token(d.id, &filter))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(ListDeadLettersResponse {
        dead_letters: rows.into_iter().map(to_proto).collect(),
        next_page_token,
    })
}

/// Re-publishes each selected dead letter in a transaction of its own: it is
/// marked redriven only when the broker acknowledged it, and a dead letter
/// already marked is never re-published.
pub async fn redrive(
    ctx: &AdminContext,
    request: RedriveDeadLettersRequest,
) -> Result<RedriveDeadLettersResponse, Status> {
    let ids: Vec<i64> = match request.selection {
        Some(redrive_dead_letters_request::Selection::Ids(ids)) if !ids.ids.is_empty() => ids.ids,
        Some(redrive_dead_letters_request::Selection::Ids(_)) => {
            return Err(violation("ids.ids", "is empty"));
        }
        Some(redrive_dead_letters_request::Selection::Filter(f)) => {
            let mut sf = store_filter(&f)?;
            sf.include_redriven = false;
            ctx.pool
                .run(async |client| store::list(client, &sf, None, MAX_REDRIVE).await)
                .await
                .map_err(|e| db_status("cannot select dead letters", &e))?
                .into_iter()
                .map(|d| d.id)
                .rev()
                .collect()
        }
        None => return Err(violation("selection", "set ids or filter")),
    };
    let mut redriven_ids = Vec::new();
    let mut already_redriven_ids = Vec::new();
    for id in ids {
        let mut client = ctx
            .pool
            .get()
            .await
            .map_err(|e| db_status("cannot redrive", &e.into()))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_status("cannot redrive", &e.into()))?;
        // Shared with the processor, exclusive for an erasure: the user's
        // letter is either re-published before the erasure reads the end
        // offsets (and skipped below them) or already deleted.
        tributary_store::erasure::lock_shared(&tx)
            .await
            .map_err(|e| db_status("cannot redrive", &e))?;
        let (claimed, already) = store::claim_for_redrive(&tx, &Selection::Ids(vec![id]), 1)
            .await
            .map_err(|e| db_status("cannot redrive", &e))?;
        already_redriven_ids.extend(already);
        let Some(d) = claimed.into_iter().next() else {
            continue;
        };
        if request.dry_run {
            redriven_ids.push(d.id);
            continue; // the transaction rolls back: nothing is marked
        }
        if !d.subscription.is_empty() {
            // Queued: dispatch delivers it to that subscription only.
            tx.commit()
                .await
                .map_err(|e| db_status("cannot queue the dead letter", &e.into()))?;
            redriven_ids.push(d.id);
            continue;
        }
        let from = d.id.to_string();
        let mut headers: Vec<(&str, &[u8])> = d
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("tributary.dlq."))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        headers.push(("tributary.redriven_from", from.as_bytes()));
        ctx.producer
            .send(Record {
                topic: &ctx.kafka.topic,
                key: d.key.as_deref(),
                value: d.value.as_deref().unwrap_or_default(),
                headers: &headers,
            })
            .await
            .map_err(|e| pstatus::unavailable("cannot re-publish the dead letter", &e))?;
        tx.commit()
            .await
            .map_err(|e| db_status("re-published, but cannot mark it redriven", &e.into()))?;
        redriven_ids.push(d.id);
    }
    Ok(RedriveDeadLettersResponse {
        redriven_ids,
        already_redriven_ids,
    })
}
