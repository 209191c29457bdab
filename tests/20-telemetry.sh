# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# Telemetry of the running deployment: one published event is traced from the
# ingest server span to the insert (read from the trace sink's JSON lines),
# every service exports its metrics, Prometheus scrapes all five and evaluates
# the alert rules, and admin reports lag per partition.
# Sourced by test-system.sh (tests/lib.sh is loaded).

ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:50053}
PROMETHEUS_URL=${PROMETHEUS_URL:-http://127.0.0.1:9090}
TRACE_FILE=${TRACE_FILE:-$TB_STATE_DIR/traces/spans.jsonl}

# ================================================================ traces
section "traces"
TRACE_EVENT="trace-$T_RUN_ID"
TRACE_ID=""
if expect_ok "publish an event to trace" "$INGEST_ADDR" tributary.v1.IngestService/Publish \
  "$(jq -nc --arg id "$TRACE_EVENT" '{event: {eventId: $id, eventType: "trace.check", userId: "tracer"}}')" &&
  wait_persisted "$TRACE_EVENT" 30; then
  TRACE_ID=$(jq -r '.traceId' <<<"$GC_OUT")
  assert_match "StoredEvent.traceId is 32 hex digits" '^[0-9a-f]{32}$' "$TRACE_ID"
else
  fail "the traced event was persisted" "$GC_ERR"
fi

# trace_spans: prints {server, produce, batch, insert} when all four spans of
# the traced event are in the sink's file, and fails otherwise.
trace_spans() {
  [[ -n "$TRACE_ID" && -f "$TRACE_FILE" ]] || return 1
  local batch_id
  # The batch span lives in its own trace; only its link names ours.
  TRACE_FOUND=$(grep -F "$TRACE_ID" "$TRACE_FILE" | jq -sc --arg t "$TRACE_ID" '
    (map(select(.trace_id == $t and .kind == "server")) | first) as $server
    | (map(select(.trace_id == $t and .kind == "producer")) | first) as $produce
    | (map(select(.kind == "consumer" and any(.links[]; .trace_id == $t and .span_id == $produce.span_id))) | first) as $batch
    | {server: $server, produce: $produce, batch: $batch}
    | select(.server and .produce and .batch)') || return 1
  [[ -n "$TRACE_FOUND" ]] || return 1
  batch_id=$(jq -r '.batch.span_id' <<<"$TRACE_FOUND")
  local insert
  insert=$(grep -F "\"parent_span_id\":\"$batch_id\"" "$TRACE_FILE" | jq -sc 'map(select(.name == "INSERT events")) | first // empty')
  [[ -n "$insert" ]] || return 1
  TRACE_FOUND=$(jq -c --argjson insert "$insert" '. + {insert: $insert}' <<<"$TRACE_FOUND")
}

TRACE_FOUND=""
if poll 30 trace_spans; then
  pass "the trace sink received the event's four spans"
  assert_eq "ingest server span is the Publish call" "tributary.v1.IngestService/Publish" \
    "$(jq -r '.server.name' <<<"$TRACE_FOUND")"
  assert_eq "produce span is a child of the server span" "$(jq -r '.server.span_id' <<<"$TRACE_FOUND")" \
    "$(jq -r '.produce.parent_span_id' <<<"$TRACE_FOUND")"
  assert_eq "produce span is a producer span of tributary-ingest" "producer tributary-ingest" \
    "$(jq -r '"\(.produce.kind) \(.produce.service)"' <<<"$TRACE_FOUND")"
  assert_eq "batch span starts its own trace (processor)" "true tributary-processor" \
    "$(jq -r --arg t "$TRACE_ID" '"\(.batch.trace_id != $t) \(.batch.service)"' <<<"$TRACE_FOUND")"
  assert_eq "insert span is a child of the batch span, in its trace" "$(jq -r '"\(.batch.trace_id) \(.batch.span_id)"' <<<"$TRACE_FOUND")" \
    "$(jq -r '"\(.insert.trace_id) \(.insert.parent_span_id)"' <<<"$TRACE_FOUND")"
else
  fail "the trace sink received the event's four spans" "trace $TRACE_ID in $TRACE_FILE:" \
    "$(grep -F "$TRACE_ID" "$TRACE_FILE" 2>/dev/null | jq -c '{name, kind, service, span_id, parent_span_id}' | head -n 10)"
fi

# One PublishBatch is one publish: a single producer span for the request,
# whose context every record of the batch carries to the processor.
section "batch trace"
BATCH_IDS=("trace-batch-$T_RUN_ID-0" "trace-batch-$T_RUN_ID-1" "trace-batch-$T_RUN_ID-2")
BATCH_TRACE_IDS=()
if expect_ok "publish a batch of three events to trace" "$INGEST_ADDR" tributary.v1.IngestService/PublishBatch \
  "$(jq -nc '{events: [$ARGS.positional[] | {eventId: ., eventType: "trace.check", userId: "tracer"}]}' --args "${BATCH_IDS[@]}")"; then
  for id in "${BATCH_IDS[@]}"; do
    if wait_persisted "$id" 30; then
      BATCH_TRACE_IDS+=("$(jq -r '.traceId' <<<"$GC_OUT")")
    else
      fail "batch event $id was persisted" "$GC_ERR"
    fi
  done
fi
if ((${#BATCH_TRACE_IDS[@]} == 3)); then
  assert_eq "the batch's three events share one trace" "1" \
    "$(printf '%s\n' "${BATCH_TRACE_IDS[@]}" | sort -u | wc -l | tr -d ' ')"
  batch_producer_spans() {
    BATCH_SPANS=$(grep -F "${BATCH_TRACE_IDS[0]}" "$TRACE_FILE" 2>/dev/null | jq -sc --arg t "${BATCH_TRACE_IDS[0]}" '
      map(select(.trace_id == $t and .kind == "producer"))
      | {count: length, messages: (first.attributes["messaging.batch.message_count"] // null)}') &&
      [[ "$(jq -r '.count' <<<"$BATCH_SPANS")" -ge 1 ]]
  }
  BATCH_SPANS=""
  if poll 30 batch_producer_spans; then
    assert_eq "one producer span for the batch, counting its three messages" '{"count":1,"messages":3}' "$BATCH_SPANS"
  else
    fail "the trace sink received the batch's producer span" "trace ${BATCH_TRACE_IDS[0]}: $BATCH_SPANS"
  fi
fi

# ================================================================ metrics
section "metrics endpoints"
for spec in "ingest 9601" "processor 9602" "query 9603" "admin 9604" "dispatch 9605"; do
  read -r name port <<<"$spec"
  body=$(curl -fsS --max-time 10 "http://127.0.0.1:$port/metrics" 2>&1) || body=""
  assert_contains "$name exports tributary_build_info" "$body" "tributary_build_info{service=\"$name\""
  assert_contains "$name exports RED metrics" "$body" "tributary_grpc_server_requests_total{"
done
ingest_metrics=$(curl -fsS --max-time 10 http://127.0.0.1:9601/metrics 2>&1)
assert_match "ingest counted accepted events" 'tributary_ingest_events_total\{reason="",result="accepted"\} [1-9]' "$ingest_metrics"
assert_match "ingest counted Publish calls by code" 'tributary_grpc_server_requests_total\{code="OK",method="Publish",service="tributary.v1.IngestService"\} [1-9]' "$ingest_metrics"
assert_match "ingest counted InvalidArgument answers" 'code="InvalidArgument",method="Publish"' "$ingest_metrics"
processor_metrics=$(curl -fsS --max-time 10 http://127.0.0.1:9602/metrics 2>&1)
assert_match "processor counted persisted events" 'tributary_processor_events_total\{result="persisted"\} [1-9]' "$processor_metrics"
assert_match "processor measured ingest-to-persist latency" 'tributary_pipeline_ingest_to_persist_seconds_count [1-9]' "$processor_metrics"
assert_match "processor reports its pool" 'tributary_db_pool_connections\{state="idle"\}' "$processor_metrics"

# ================================================================ admin lag
section "admin: consumer lag"
lag_settled() {
  gcall "$ADMIN_ADDR" tributary.v1.AdminService/GetConsumerLag '{"group":"tributary-processor"}' &&
    [[ "$(jq -r '.totalLag' <<<"$GC_OUT")" == 0 ]]
}
if poll 30 lag_settled; then
  pass "processor lag falls to zero"
  assert_eq "lag is reported for each of the 6 partitions" 6 "$(jq '.partitions | length' <<<"$GC_OUT")"
  assert_eq "every partition has a committed offset equal to its end" true \
    "$(jq '[.partitions[] | .hasCommittedOffset and (.committedOffset == .endOffset)] | all' <<<"$GC_OUT")"
else
  fail "processor lag falls to zero" "$GC_OUT" "$GC_ERR"
fi
expect_code "GetConsumerLag without a group is InvalidArgument" InvalidArgument \
  "$ADMIN_ADDR" tributary.v1.AdminService/GetConsumerLag '{}'
# Other topics may exist (the bench's tributary.bench.raw after a bench run).
if expect_ok "ListTopics" "$ADMIN_ADDR" tributary.v1.AdminService/ListTopics '{}'; then
  assert_eq "both topics exist with 6 partitions" "tributary.events:6 tributary.events.dlq:6" \
    "$(jq -r '[.topics[] | select(.name == "tributary.events" or .name == "tributary.events.dlq") | "\(.name):\(.partitionCount)"] | join(" ")' <<<"$GC_OUT")"
fi
expect_code "DescribeTopic of an unknown topic is NotFound" NotFound \
  "$ADMIN_ADDR" tributary.v1.AdminService/DescribeTopic '{"name":"no.such.topic"}'
admin_metrics=$(curl -fsS --max-time 10 http://127.0.0.1:9604/metrics 2>&1)
assert_match "admin exports the lag gauge per partition" \
  'tributary_consumer_group_lag\{group="tributary-processor",partition="5",topic="tributary.events"\} 0' "$admin_metrics"

# ================================================================ prometheus
section "prometheus"
all_targets_up() {
  PROM_TARGETS=$(curl -fsS --max-time 10 "$PROMETHEUS_URL/api/v1/targets?state=active") || return 1
  [[ "$(jq '[.data.activeTargets[] | select(.labels.job | startswith("tributary-"))] | length' <<<"$PROM_TARGETS")" == 5 &&
    "$(jq '[.data.activeTargets[] | select(.labels.job | startswith("tributary-")) | .health == "up"] | all' <<<"$PROM_TARGETS")" == true ]]
}
if poll 40 all_targets_up; then
  pass "prometheus scrapes all five services and each is up"
else
  fail "prometheus scrapes all five services and each is up" \
    "$(jq -c '.data.activeTargets[]? | {job: .labels.job, health, lastError}' <<<"${PROM_TARGETS:-}")"
fi
rules_ok() {
  PROM_RULES=$(curl -fsS --max-time 10 "$PROMETHEUS_URL/api/v1/rules") || return 1
  [[ "$(jq '[.data.groups[].rules[]] | length > 0 and all(.health == "ok")' <<<"$PROM_RULES")" == true ]]
}
if poll 40 rules_ok; then
  pass "every loaded rule evaluated without error"
  assert_match "alerting rules are loaded" '^[1-9][0-9]*$' \
    "$(jq '[.data.groups[].rules[] | select(.type == "alerting")] | length' <<<"$PROM_RULES")"
else
  fail "every loaded rule evaluated without error" \
    "$(jq -c '.data.groups[]?.rules[]? | select(.health != "ok") | {name, health, lastError}' <<<"${PROM_RULES:-}" | head -n 10)"
fi
# An alert's expression, evaluated by Prometheus against what the services export.
lag_query=$(curl -fsS --max-time 10 -G "$PROMETHEUS_URL/api/v1/query" \
  --data-urlencode 'query=max by (group) (tributary_consumer_group_lag{group="tributary-processor"})' 2>&1)
assert_eq "an alert expression evaluates over the exported lag" "success 1" \
  "$(jq -r '"\(.status) \(.data.result | length)"' <<<"$lag_query" 2>&1)"
