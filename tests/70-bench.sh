# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# The benchmarks in quick mode against the running deployment, on whatever
# broker engine it runs (scripts/bench.sh switches engines; this does not):
# tributary-bench must finish, and its JSON report must be complete and
# consistent: its own checks pass, every event sent is acknowledged and
# persisted, each scenario has its baseline, latencies are ordered, every
# part's footprint is measured. Timings are only checked to be positive or
# ordered, never against a bound: they depend on the machine.
# Sourced by test-system.sh (tests/lib.sh is loaded). The bench stops and
# starts the processor itself; should the run be cut short, an EXIT trap
# starts it again.

BENCH_DIR="$TB_LOG_DIR/test-system"
BENCH_JSON="$BENCH_DIR/bench-quick.json"
BENCH_TXT="$BENCH_DIR/bench-quick.txt"

# bench_json NAME EXPR [DETAIL]: passes when the jq expression is true of the
# report; on failure prints DETAIL (a jq filter, raw output) of the report,
# after jq's error if EXPR failed otherwise than by being false.
bench_json() {
  local name=$1 expr=$2 detail=${3:-.} result why=()
  if result=$(jq -e "$expr" "$BENCH_JSON" 2>&1); then
    pass "$name"
  else
    [[ "$result" == false ]] || why=("$result")
    fail "$name" "${why[@]}" "$(jq -r "$detail" "$BENCH_JSON" 2>&1 | head -c 3000)"
    return 1
  fi
}

# The throughputs and ratios of the report, as {p: where, v: value}; a
# missing one shows as null (and so fails the positivity check).
BENCH_RATES='[
  (.scenarios.ingest.runs[] | "ingest \(.path) batch \(.batch)" as $r
    | {p: "\($r) events_per_s", v: .events_per_s},
      {p: "\($r) baseline events_per_s", v: .baseline.events_per_s},
      {p: "\($r) ratio", v: .ratio}),
  {p: "persist rows_per_s", v: .scenarios.persist.rows_per_s},
  {p: "persist baseline rows_per_s", v: .scenarios.persist.baseline.rows_per_s},
  {p: "persist ratio", v: .scenarios.persist.ratio},
  {p: "layout partitioned rows_per_s", v: .scenarios.layout.partitioned.rows_per_s},
  {p: "layout baseline rows_per_s", v: .scenarios.layout.baseline.rows_per_s},
  {p: "layout ratio", v: .scenarios.layout.ratio},
  {p: "e2e max_throughput events_per_s", v: .scenarios.e2e.max_throughput.events_per_s},
  {p: "subscriptions raw consumer per_second", v: .scenarios.subscriptions.raw_consumer.per_second},
  {p: "subscriptions push per_second", v: .scenarios.subscriptions.push.per_second},
  {p: "subscriptions ratio", v: .scenarios.subscriptions.ratio_push_to_raw},
  (.scenarios.payload.shapes[] | "payload \(.payload)" as $r
    | {p: "\($r) ns_per_event", v: .ns_per_event},
      {p: "\($r) baseline ns_per_event", v: .baseline.ns_per_event},
      {p: "\($r) ratio", v: .ratio}),
  (.scenarios.security.runs[] | "security \(.path)" as $r
    | (.variants[] | {p: "\($r) \(.path) events_per_s", v: .events_per_s}),
      {p: "\($r) key_ratio", v: .key_ratio},
      {p: "\($r) key_tls_ratio", v: .key_tls_ratio})]'
# Every object under the query scenario that has a p50_ms (each query and
# its baseline, per size), as {p: where, v: the object}.
BENCH_QUERY_LATENCIES='[.scenarios.query | paths(objects | has("p50_ms")) as $p
  | {p: ($p | map(tostring) | join(".")), v: getpath($p)}]'

section "bench (quick mode; output in $BENCH_DIR)"
mkdir -p "$BENCH_DIR"
# A report left by an earlier run must not pass for this one's.
rm -f "$BENCH_JSON"
# Should the run be cut short with the processor stopped, it is started again.
guard_processor
check_logged "tributary-bench --quick against the running deployment exits 0" "$BENCH_TXT" \
  "$TB_BIN_DIR/tributary-bench" --quick --state-dir "$TB_STATE_DIR" --deploy "$TB_ROOT/deploy.sh" --out "$BENCH_JSON"
if processor_running; then
  pass "the processor runs after the bench"
else
  fail "the processor runs after the bench" "$(./deploy.sh status --porcelain 2>&1)"
  check "./deploy.sh start processor (the bench left it stopped)" ./deploy.sh start processor
fi
unguard_processor

if ! jq -e 'type == "object"' "$BENCH_JSON" >/dev/null 2>&1; then
  fail "the bench wrote its JSON report ($BENCH_JSON)" "$(head -c 2000 "$BENCH_JSON" 2>&1)"
else
  pass "the bench wrote its JSON report ($BENCH_JSON)"
  bench_json "report: mode is quick" '.mode == "quick"' '.mode'
  bench_json "report: broker_engine is memory or postgres ($(jq -r .broker_engine "$BENCH_JSON"))" \
    '.broker_engine == "memory" or .broker_engine == "postgres"' '.broker_engine'
  bench_json "report: the bench's own checks ($(jq '.checks | length' "$BENCH_JSON")) are non-empty and all ok" \
    '(.checks | length) > 0 and all(.checks[]; .ok == true)' \
    '.checks[] | select(.ok != true) | "\(.name): \(.detail)"'
  bench_json "ingest: runs PublishBatch batch 1, 100, 1000 and PublishStream" \
    '["PublishBatch batch 1", "PublishBatch batch 100", "PublishBatch batch 1000", "PublishStream"]
      - [.scenarios.ingest.runs[] | if .path == "PublishStream" then .path else "\(.path) batch \(.batch)" end]
      == []' \
    '[.scenarios.ingest.runs[]? | {path, batch}]'
  bench_json "ingest: in every run acked == sent > 0" \
    '(.scenarios.ingest.runs | length) > 0 and all(.scenarios.ingest.runs[]; .sent > 0 and .acked == .sent)' \
    '.scenarios.ingest.runs[]? | "\(.path) batch \(.batch): sent \(.sent), acked \(.acked)"'
  bench_json "ingest: in every baseline (raw rdkafka) acked == sent" \
    '(.scenarios.ingest.runs | length) > 0 and
      all(.scenarios.ingest.runs[]; (.baseline.sent | type) == "number" and .baseline.acked == .baseline.sent)' \
    '.scenarios.ingest.runs[]? | "\(.path) batch \(.batch): baseline \(.baseline)"'
  bench_json "every throughput and ratio is > 0" \
    "$BENCH_RATES | length > 0 and all(.[]; (.v | type) == \"number\" and .v > 0)" \
    "$BENCH_RATES | .[] | select(((.v | type) == \"number\" and .v > 0) | not) | \"\(.p) = \(.v)\""
  bench_json "payload: two payload shapes measured, ours and the prost + serde_json baseline" \
    '(.scenarios.payload.shapes | length) == 2' '.scenarios.payload'
  bench_json "security: PublishBatch x1 and x1000, each plain, key and key+TLS, every event sent acknowledged" \
    '[.scenarios.security.runs[] | .path as $p | .variants[]
        | select(.sent > 0 and .acked == .sent and .errors == 0) | "\($p) \(.path)"]
      == ["PublishBatch x1 plain", "PublishBatch x1 key", "PublishBatch x1 key+TLS",
          "PublishBatch x1000 plain", "PublishBatch x1000 key", "PublishBatch x1000 key+TLS"]' \
    '.scenarios.security.runs[]? | .path as $p | .variants[]? | "\($p) \(.path): sent \(.sent), acked \(.acked), errors \(.errors), first \(.first_error)"'
  bench_json "persist: rows == events > 0" \
    '.scenarios.persist | .events > 0 and .rows == .events' '.scenarios.persist | {events, rows}'
  bench_json "e2e: every event persisted (persisted == events > 0)" \
    '.scenarios.e2e | .events > 0 and .persisted == .events' '.scenarios.e2e | {events, persisted}'
  bench_json "e2e: ack_to_visible has samples" \
    '.scenarios.e2e.ack_to_visible_ms.samples > 0' '.scenarios.e2e.ack_to_visible_ms'
  for dist in received_to_persisted_ms ack_to_visible_ms; do
    bench_json "e2e: $dist p50 <= p99 <= p999" \
      ".scenarios.e2e.$dist | (.p50 | type) == \"number\" and .p50 >= 0 and .p50 <= .p99 and .p99 <= .p999" \
      ".scenarios.e2e.$dist"
  done
  bench_json "subscriptions: every published event delivered once, none outside the filter" \
    '.scenarios.subscriptions | .events > 0 and .push.delivered == .events and .push.duplicates == 0' \
    '.scenarios.subscriptions'
  bench_json "query: at least one data size with rows > 0" \
    'any(.scenarios.query.sizes[]; .rows > 0)' '[.scenarios.query.sizes[]? | .rows]'
  bench_json "query: every p50_ms <= p99_ms (queries and baselines)" \
    "$BENCH_QUERY_LATENCIES | length > 0 and all(.[]; (.v.p50_ms | type) == \"number\" and .v.p50_ms <= .v.p99_ms)" \
    "$BENCH_QUERY_LATENCIES | .[] | select(((.v.p50_ms | type) == \"number\" and .v.p50_ms <= .v.p99_ms) | not) | \"\(.p): \(.v)\""
  bench_json "footprint: ingest, processor, query, admin, broker and postgres each with rss_mib > 0" \
    '[.scenarios.footprint.services[] | select((.rss_mib | type) == "number" and .rss_mib > 0) | .name] as $seen
      | ["ingest", "processor", "query", "admin", "broker", "postgres"] - $seen == []' \
    '[.scenarios.footprint.services[]? | {name, rss_mib}]'
fi
