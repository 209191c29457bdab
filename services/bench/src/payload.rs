//! In process, no deployment: from a `PublishBatchRequest`'s bytes to each
//! event's payload as JSON text. Ours is what ingest runs
//! (`tributary_proto::wire`: the payload kept as bytes and written to JSON
//! straight from them); the baseline, in the same run, is what ingest ran
//! before: decode into `prost_types::Struct`, convert with `struct_to_json`,
//! print with serde_json. Both must write the same text for every event.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use prost::Message as _;
use serde_json::{Value, json};
use tributary_proto::json::{json_to_struct, struct_to_json};
use tributary_proto::v1;
use tributary_proto::wire;

use crate::stats::{Table, ratio, round3, thousands};
use crate::{Checks, Options, data};

/// A payload with more to it than the bench event's five flat fields:
/// nesting, a list, escapes, non-ASCII text, fractions.
fn nested(n: u64) -> serde_json::Map<String, Value> {
    let Value::Object(mut map) = json!({
        "order": { "id": format!("o-{n}"), "total": (n % 10_000) as f64 / 100.0, "currency": "EUR" },
        "items": [
            { "sku": format!("sku-{}", n % 97), "qty": 1 + n % 3, "price": 19.99 },
            { "sku": format!("sku-{}", n % 89), "qty": 1, "price": 5.5 }
        ],
        "note": "line one\nline \"two\"",
        "city": "Zürich",
        "coupon": null,
        "first_order": n.is_multiple_of(5),
    }) else {
        unreachable!("a JSON object literal")
    };
    for i in 0..14u64 {
        map.insert(
            format!("attr_{i:02}"),
            json!(format!("value-{}", (n + i) % 50)),
        );
    }
    map
}

/// Each event's payload JSON (`{}` when absent), one conversion per event.
fn texts<P>(
    payloads: impl Iterator<Item = Option<P>>,
    convert: impl Fn(&P) -> Result<String, tributary_proto::json::JsonError>,
) -> anyhow::Result<Vec<String>> {
    payloads
        .map(|p| match p {
            None => Ok("{}".to_owned()),
            Some(p) => convert(&p).map_err(|e| anyhow::anyhow!("{e}")),
        })
        .collect()
}

fn ours(request: &[u8]) -> anyhow::Result<Vec<String>> {
    let request = wire::PublishBatchRequest::decode(request)?;
    texts(request.events.into_iter().map(|e| e.payload), |p| {
        wire::struct_json(p)
    })
}

fn baseline(request: &[u8]) -> anyhow::Result<Vec<String>> {
    let request = v1::PublishBatchRequest::decode(request)?;
    texts(request.events.into_iter().map(|e| e.payload), |p| {
        struct_to_json(p).map(|m| Value::Object(m).to_string())
    })
}

type PayloadOf = fn(u64) -> serde_json::Map<String, Value>;

/// Nanoseconds per event of one pass over `request`.
fn timed(
    path: fn(&[u8]) -> anyhow::Result<Vec<String>>,
    request: &[u8],
    events: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    black_box(path(black_box(request))?);
    Ok(start.elapsed().as_nanos() as f64 / events as f64)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(options: &Options, checks: &mut Checks) -> anyhow::Result<Value> {
    let (events, rounds) = if options.quick { (100, 3) } else { (1000, 41) };
    let now = SystemTime::now() - Duration::from_secs(1);
    // `None`: the bench event's own payload.
    let shapes: [(&str, Option<PayloadOf>); 2] = [
        ("bench event (5 flat fields)", None),
        ("nested (20 fields, a list, an object)", Some(nested)),
    ];
    let mut table = Table::new(&[
        "payload",
        "request bytes per event",
        "ours ns/event",
        "prost Struct + serde_json ns/event",
        "ours / baseline",
    ]);
    let mut results = Vec::new();
    for (name, payload) in shapes {
        let request = v1::PublishBatchRequest {
            events: (0..events)
                .map(|n| {
                    let mut e = data::event("payload-", n, now);
                    if let Some(payload) = payload {
                        e.payload = Some(json_to_struct(payload(n)));
                    }
                    e
                })
                .collect(),
        }
        .encode_to_vec();
        let (a, b) = (ours(&request)?, baseline(&request)?);
        checks.check(
            format!("payload {name}: ours writes the baseline's JSON for every event"),
            a == b && a.len() as u64 == events,
            format!(
                "{} events; first: {}",
                a.len(),
                a.first().map(String::as_str).unwrap_or("")
            ),
        );
        // Alternate which path goes first, so neither always runs on a
        // cache the other warmed.
        let (mut ns_ours, mut ns_base) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                ns_ours.push(timed(ours, &request, events)?);
                ns_base.push(timed(baseline, &request, events)?);
            } else {
                ns_base.push(timed(baseline, &request, events)?);
                ns_ours.push(timed(ours, &request, events)?);
            }
        }
        let (o, b) = (median(ns_ours), median(ns_base));
        let per_event = request.len() as f64 / events as f64;
        table.row(vec![
            name.to_owned(),
            format!("{per_event:.0}"),
            thousands(o),
            thousands(b),
            format!("{:.2}", ratio(o, b)),
        ]);
        results.push(json!({
            "payload": name,
            "events": events,
            "rounds": rounds,
            "request_bytes_per_event": round3(per_event),
            "ns_per_event": round3(o),
            "baseline": { "path": "prost Struct + struct_to_json + serde_json", "ns_per_event": round3(b) },
            "ratio": ratio(o, b),
        }));
    }
    println!(
        "\n## Payload: request bytes to payload JSON, {events} events per request, median of {rounds} passes (ratio = ours / baseline time, lower is better)\n\n{}\n",
        table.render()
    );
    Ok(json!({ "shapes": results }))
}
