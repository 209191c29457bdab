# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# The admin plane against the running deployment, driven RPC by RPC with
# grpcurl: consumer lag while the processor is stopped (RPC and Prometheus
# gauge), replay with ResetOffsets (refused while the group has members,
# idempotent storage), dead letters of a record that bypassed ingest and its
# redrive once the event type's schema is fixed, the event-type registry,
# topics and consumer groups. Threshold rules (CreateRule, ListAlerts) are not
# covered yet: the admin service answered them Unimplemented when this was written.
# Sourced by test-system.sh (tests/lib.sh is loaded). Every id and event type
# carries the run id, so data from earlier runs never interferes. The
# processor is stopped twice; it is started again whatever a check says, and
# by an EXIT trap should the run be cut short.

ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:50053}
ADMIN=tributary.v1.AdminService
INGEST=tributary.v1.IngestService
QUERY=tributary.v1.QueryService
GROUP=tributary-processor
EVENTS_TOPIC=tributary.events
DLQ_TOPIC=tributary.events.dlq
KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
ADMIN_METRICS_URL=${ADMIN_METRICS_URL:-http://127.0.0.1:9604/metrics}
RUN=$T_RUN_ID
RUN_LC=${RUN,,}
LAG_N=50

# ---------------------------------------------------------------- helpers

# sql QUERY: one psql query against the deployment's database, unaligned.
sql() {
  PGPASSWORD=${PGPASSWORD:-postgres} psql -h 127.0.0.1 -p "${TB_PG_PORT:-55432}" -U postgres -d tributary -XAtqc "$1"
}

# Stopping the processor: it is started again by admin_start_processor, or,
# should the area be cut short, by guard_processor's EXIT trap.
admin_stop_processor() {
  guard_processor
  check "$1: ./deploy.sh stop processor" ./deploy.sh stop processor
}
admin_start_processor() {
  check "$1: ./deploy.sh start processor (waits until healthy)" ./deploy.sh start processor
  unguard_processor
}

# lag: GetConsumerLag of the processor's group; GC_OUT holds the answer.
lag() { gcall "$ADMIN_ADDR" "$ADMIN/GetConsumerLag" "{\"group\":\"$GROUP\"}"; }
lag_at_least() { lag && (($(jq -r .totalLag <<<"$GC_OUT") >= $1)); }
lag_is_zero() { lag && [[ "$(jq -r .totalLag <<<"$GC_OUT")" == 0 ]]; }

# group_members: sets GROUP_JSON (the processor's group as ListConsumerGroups
# lists it) and GROUP_MEMBERS (its member count; 0 when it is not listed).
GROUP_JSON="" GROUP_MEMBERS=""
group_members() {
  gcall "$ADMIN_ADDR" "$ADMIN/ListConsumerGroups" '{}' || return 1
  GROUP_JSON=$(jq -c --arg g "$GROUP" '[.groups[] | select(.group == $g)] | first // {}' <<<"$GC_OUT")
  GROUP_MEMBERS=$(jq -r '.memberCount // 0' <<<"$GROUP_JSON")
}
group_is_empty() { group_members && ((GROUP_MEMBERS == 0)); }
group_has_members() { group_members && ((GROUP_MEMBERS > 0)); }

# gauge_lag_sum: the sum of tributary_consumer_group_lag over the group's
# partitions of tributary.events, as admin exports it.
GAUGE_SUM=""
gauge_lag_sum() {
  local body
  body=$(curl -fsS --max-time 10 "$ADMIN_METRICS_URL") || return 1
  GAUGE_SUM=$(awk -v g="group=\"$GROUP\"" -v t="topic=\"$EVENTS_TOPIC\"" '
    $1 ~ /^tributary_consumer_group_lag\{/ && index($1, g) && index($1, t) { s += $2; n++ }
    END { if (n) print s + 0 }' <<<"$body")
  [[ -n "$GAUGE_SUM" ]]
}
gauge_lag_positive() { gauge_lag_sum && ((GAUGE_SUM > 0)); }

# end_offset_sum TOPIC: the sum of the topic's partitions' end offsets.
end_offset_sum() {
  gcall "$ADMIN_ADDR" "$ADMIN/DescribeTopic" "$(jq -nc --arg n "$1" '{name: $n}')" &&
    jq -r '[.partitions[].endOffset | tonumber] | add' <<<"$GC_OUT"
}

# envelope_hex EVENT_ID EVENT_TYPE SOURCE PAYLOAD_JSON: a tributary.v1.EventEnvelope
# (version 1, occurred_at and received_at now, no IngestMetadata, so no
# schema version) as hex digits, encoded by hand.
envelope_hex() {
  python3 - "$@" <<'PY'
import sys
import time


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire, data):
    tag = varint(number << 3 | wire)
    if wire == 0:
        return tag + varint(data)
    return tag + varint(len(data)) + data


def text(number, s):
    return field(number, 2, s.encode("utf-8"))


event_id, event_type, source, payload = sys.argv[1:5]
now = time.time_ns()
timestamp = field(1, 0, now // 10**9) + field(2, 0, now % 10**9)
event = text(1, event_id) + text(2, event_type) + text(3, source) + field(6, 2, timestamp)
envelope = field(1, 0, 1) + field(2, 2, event) + text(3, payload) + field(4, 2, timestamp)
print(envelope.hex())
PY
}

# ================================================================ lag
section "admin: lag while the processor is stopped"
T_ADMIN_START=$SECONDS
admin_stop_processor "lag"
if poll 60 group_is_empty; then
  pass "the processor's group has no members once it is stopped (state $(jq -r .state <<<"$GROUP_JSON"))"
else
  fail "the processor's group has no members once it is stopped" "$GROUP_JSON" "$GC_ERR"
fi
LAG_BATCH=$(jq -nc --arg run "$RUN" --argjson n "$LAG_N" '{events: [range(0; $n) | {eventId: ($run + "-lag" + tostring), eventType: "admin.lag", source: ("lag-" + $run), payload: {i: .}}]}')
if expect_ok "publish $LAG_N events through ingest" "$INGEST_ADDR" "$INGEST/PublishBatch" "$LAG_BATCH"; then
  assert_json "ingest accepted all $LAG_N" '.accepted == $n and .rejected == 0' "$GC_OUT" --argjson n "$LAG_N"
fi
if poll 20 lag_at_least "$LAG_N"; then
  pass "GetConsumerLag: totalLag >= $LAG_N while the processor is stopped (totalLag $(jq -r .totalLag <<<"$GC_OUT"))"
  LAG_SEEN=$GC_OUT
  assert_json "GetConsumerLag: maxTimeLag > 0 ($(jq -r .maxTimeLag <<<"$LAG_SEEN"))" \
    '.maxTimeLag | rtrimstr("s") | tonumber > 0' "$LAG_SEEN"
  assert_json "GetConsumerLag: totalLag is the sum of the partitions' lags" \
    '(.totalLag | tonumber) == ([.partitions[].lag | tonumber] | add)' "$LAG_SEEN"
  assert_json "GetConsumerLag: each partition's lag is endOffset - committedOffset" \
    '[.partitions[] | (.lag | tonumber) == ((.endOffset | tonumber) - (.committedOffset | tonumber))] | all' "$LAG_SEEN"
else
  fail "GetConsumerLag: totalLag >= $LAG_N while the processor is stopped" "$GC_OUT" "$GC_ERR"
fi
expect_code "GetEvent of a lagging event is NotFound (nothing consumes)" NotFound \
  "$QUERY_ADDR" "$QUERY/GetEvent" "$(jq -nc --arg id "$RUN-lag0" '{eventId: $id}')"
if poll 15 gauge_lag_positive; then
  pass "admin's tributary_consumer_group_lag gauge shows the lag (sum over partitions $GAUGE_SUM)"
else
  fail "admin's tributary_consumer_group_lag gauge shows the lag" "sum over partitions: ${GAUGE_SUM:-none}"
fi
admin_start_processor "lag"
if poll 60 lag_is_zero; then
  pass "lag falls to 0 once the processor runs again"
else
  fail "lag falls to 0 once the processor runs again" "$GC_OUT" "$GC_ERR"
fi
lag_rows=0
for ((i = 0; i < LAG_N; i++)); do
  wait_persisted "$RUN-lag$i" 10 && lag_rows=$((lag_rows + 1))
done
assert_eq "GetEvent finds all $LAG_N events that waited in the topic" "$LAG_N" "$lag_rows"
if poll 30 group_has_members; then
  pass "the processor rejoined its group ($(jq -c '{state, memberCount}' <<<"$GROUP_JSON"))"
else
  fail "the processor rejoined its group" "$GROUP_JSON" "$GC_ERR"
fi
# latest: should the refusal be missing, it moves past nothing (lag is 0).
expect_code "ResetOffsets while the processor runs is FailedPrecondition" FailedPrecondition \
  "$ADMIN_ADDR" "$ADMIN/ResetOffsets" "{\"group\":\"$GROUP\",\"latest\":true}"
assert_contains "the refusal says the group has active members" "$GC_ERR" "active member"
if expect_ok "ResetOffsets dryRun while the processor runs is allowed" \
  "$ADMIN_ADDR" "$ADMIN/ResetOffsets" "{\"group\":\"$GROUP\",\"latest\":true,\"dryRun\":true}"; then
  assert_json "the dry run answers applied false" '.applied == false' "$GC_OUT"
fi
expect_code "ResetOffsets without a target is InvalidArgument" InvalidArgument \
  "$ADMIN_ADDR" "$ADMIN/ResetOffsets" "{\"group\":\"$GROUP\",\"dryRun\":true}"
expect_code "ResetOffsets without a group is InvalidArgument" InvalidArgument \
  "$ADMIN_ADDR" "$ADMIN/ResetOffsets" '{"earliest":true,"dryRun":true}'

# ================================================================ replay
section "admin: replay from the earliest offsets"
admin_stop_processor "replay"
poll 60 group_is_empty || fail "the processor's group has no members before the replay" "$GROUP_JSON"
ROWS_BEFORE=$(sql 'SELECT count(*) FROM events')
assert_match "row count before the replay ($ROWS_BEFORE)" '^[0-9]+$' "$ROWS_BEFORE"
if event_persisted "$RUN-lag0"; then
  LAG0_BEFORE=$(jq -c '{persistedAt, partition, offset}' <<<"$GC_OUT")
else
  LAG0_BEFORE="GetEvent failed: $GC_ERR"
fi
EARLIEST=""
if expect_ok "DescribeTopic $EVENTS_TOPIC" "$ADMIN_ADDR" "$ADMIN/DescribeTopic" "{\"name\":\"$EVENTS_TOPIC\"}"; then
  EARLIEST=$(jq -c '[.partitions[] | {partition, offset: .earliestOffset}]' <<<"$GC_OUT")
fi
if expect_ok "ResetOffsets earliest, dryRun" "$ADMIN_ADDR" "$ADMIN/ResetOffsets" \
  "{\"group\":\"$GROUP\",\"earliest\":true,\"dryRun\":true}"; then
  assert_json "the dry run answers 6 partitions, applied false" \
    '(.offsets | length) == 6 and .applied == false' "$GC_OUT"
  assert_json "the dry run's offsets are the partitions' earliest offsets" \
    '[.offsets[] | {partition, offset}] == $e' "$GC_OUT" --argjson e "${EARLIEST:-null}"
fi
if lag; then
  assert_json "a dry run moves no committed offset (totalLag still 0)" '.totalLag == "0"' "$GC_OUT"
fi
MINUTE_AGO=$(rfc3339 $(($(date +%s) - 60)))
if expect_ok "ResetOffsets to a timestamp a minute ago, dryRun" "$ADMIN_ADDR" "$ADMIN/ResetOffsets" \
  "$(jq -nc --arg g "$GROUP" --arg t "$MINUTE_AGO" '{group: $g, timestamp: $t, dryRun: true}')"; then
  assert_json "the timestamp dry run answers 6 partitions, applied false" \
    '(.offsets | length) == 6 and .applied == false' "$GC_OUT"
fi
REPLAY_FROM=""
if expect_ok "ResetOffsets earliest (applied) while the group is empty" "$ADMIN_ADDR" "$ADMIN/ResetOffsets" \
  "{\"group\":\"$GROUP\",\"earliest\":true}"; then
  assert_json "the reset answers 6 partitions, applied true" \
    '(.offsets | length) == 6 and .applied == true' "$GC_OUT"
  REPLAY_FROM=$(jq -c '[.offsets[] | {partition, offset}]' <<<"$GC_OUT")
fi
if lag; then
  REPLAY_LAG=$(jq -r .totalLag <<<"$GC_OUT")
  assert_json "GetConsumerLag: the committed offsets are now the reset's" \
    '[.partitions[] | {partition, offset: .committedOffset}] == $r' "$GC_OUT" --argjson r "${REPLAY_FROM:-null}"
  assert_json "GetConsumerLag: the whole topic is to be re-read (totalLag $REPLAY_LAG)" \
    '(.totalLag | tonumber) >= $n' "$GC_OUT" --argjson n "$LAG_N"
else
  fail "GetConsumerLag after the reset" "$GC_ERR"
fi
T_REPLAY=$SECONDS
admin_start_processor "replay"
if poll 120 lag_is_zero; then
  pass "the replay is consumed: lag falls to 0 (in $((SECONDS - T_REPLAY)) s)"
else
  fail "the replay is consumed: lag falls to 0 within 120 s" "$(jq -c '{totalLag}' <<<"$GC_OUT")" "$GC_ERR"
fi
# The processor restarted with fresh counters: what it handled since is the replay.
PROCESSOR_METRICS=$(curl -fsS --max-time 10 "${PROCESSOR_METRICS_URL:-http://127.0.0.1:9602/metrics}" 2>&1)
HANDLED=$(awk '$1 ~ /^tributary_processor_events_total\{/ { s += $2 } END { print s + 0 }' <<<"$PROCESSOR_METRICS")
DUPLICATES=$(awk '$1 == "tributary_processor_events_total{result=\"duplicate\"}" { print $2 + 0 }' <<<"$PROCESSOR_METRICS")
assert_json "the processor re-read the whole replay (handled $HANDLED records, $DUPLICATES as duplicates)" \
  '.[0] >= .[1]' "[${HANDLED:-0},${REPLAY_LAG:-1}]"
ROWS_AFTER=$(sql 'SELECT count(*) FROM events')
assert_eq "the replay leaves the row count unchanged ($ROWS_BEFORE rows)" "$ROWS_BEFORE" "$ROWS_AFTER"
if event_persisted "$RUN-lag0"; then
  assert_eq "a replayed event's row is untouched (persistedAt, partition, offset)" \
    "$LAG0_BEFORE" "$(jq -c '{persistedAt, partition, offset}' <<<"$GC_OUT")"
else
  fail "a replayed event's row is untouched" "$GC_ERR"
fi

# ================================================================ dead letters
section "admin: dead letters and redrive after the schema is fixed"
DLQ_TYPE="dlq.check.$RUN_LC"
DLQ_EVENT="$RUN-dlq"
SCHEMA_V1='{"type":"object","required":["amount"],"properties":{"amount":{"type":"number"}}}'
SCHEMA_V2='{"type":"object","required":["amount"]}'
BAD_PAYLOAD='{"amount":"lots"}'
if expect_ok "RegisterEventType $DLQ_TYPE" "$ADMIN_ADDR" "$ADMIN/RegisterEventType" \
  "$(jq -nc --arg n "$DLQ_TYPE" --argjson s "$SCHEMA_V1" '{name: $n, schema: $s, description: "amount is a number"}')"; then
  assert_json "RegisterEventType: a new type is version 1" '.version == 1 and .name == $n' "$GC_OUT" --arg n "$DLQ_TYPE"
fi
expect_code "RegisterEventType of an invalid schema ({\"type\":\"nope\"}) is InvalidArgument" InvalidArgument \
  "$ADMIN_ADDR" "$ADMIN/RegisterEventType" "$(jq -nc --arg n "$DLQ_TYPE" '{name: $n, schema: {type: "nope"}}')"
expect_code "RegisterEventType of a name with upper case is InvalidArgument" InvalidArgument \
  "$ADMIN_ADDR" "$ADMIN/RegisterEventType" "$(jq -nc --arg n "Dlq.$RUN" --argjson s "$SCHEMA_V1" '{name: $n, schema: $s}')"

# Ingest follows the registry from a cache: give it a few seconds to refuse.
ingest_probe=0
ingest_refuses() {
  ingest_probe=$((ingest_probe + 1))
  gcall "$INGEST_ADDR" "$INGEST/Publish" "$(jq -nc --arg id "$RUN-dlq-ingest$ingest_probe" --arg t "$DLQ_TYPE" \
    --argjson p "$BAD_PAYLOAD" '{event: {eventId: $id, eventType: $t, source: "admin-test", payload: $p}}')"
  [[ "$GC_RC" == 67 ]]
}
if poll 10 ingest_refuses; then
  pass "ingest refuses a payload that violates the schema: InvalidArgument (attempt $ingest_probe)"
  assert_contains "ingest's refusal names the pointer /amount" "$GC_ERR" "/amount"
else
  fail "ingest refuses a payload that violates the schema: InvalidArgument" "exit $GC_RC" "$GC_ERR" "$GC_OUT"
fi

DLQ_END_BEFORE=$(end_offset_sum "$DLQ_TOPIC")
assert_match "DescribeTopic $DLQ_TOPIC: end offsets before ($DLQ_END_BEFORE)" '^[0-9]+$' "$DLQ_END_BEFORE"
HEX=$(envelope_hex "$DLQ_EVENT" "$DLQ_TYPE" "raw-$RUN" "$BAD_PAYLOAD")
check "produce-raw plants an envelope of $DLQ_TYPE with a payload that violates it" \
  "$TB_BIN_DIR/tributary-ctl" produce-raw --kafka-brokers "$KAFKA_BROKERS" --topic "$EVENTS_TOPIC" \
  --key "$DLQ_EVENT" --value-hex "$HEX" --header "origin=admin-test-$RUN"

DEAD=""
find_dead_letter() {
  gcall "$ADMIN_ADDR" "$ADMIN/ListDeadLetters" '{"filter":{"reasonContains":"/amount"},"pageSize":1000}' || return 1
  DEAD=$(jq -c --arg id "$DLQ_EVENT" '[.deadLetters[] | select(.eventId == $id)] | first // empty' <<<"$GC_OUT")
  [[ -n "$DEAD" ]]
}
DEAD_ID=""
if poll 20 find_dead_letter; then
  pass "ListDeadLetters (reasonContains /amount) lists the planted record"
  DEAD_ID=$(jq -r .id <<<"$DEAD")
  assert_contains "the dead letter's reason names /amount ($(jq -r .reason <<<"$DEAD"))" "$(jq -r .reason <<<"$DEAD")" "/amount"
  assert_json "the dead letter names the type, the source topic, and is not redriven" \
    '.eventType == $t and .topic == "tributary.events" and .redrivenAt == null' "$DEAD" --arg t "$DLQ_TYPE"
  assert_json "the dead letter keeps the record's key and header" \
    '(.key | @base64d) == $k and any(.headers[]; .key == "origin" and (.value | @base64d) == $h)' \
    "$DEAD" --arg k "$DLQ_EVENT" --arg h "admin-test-$RUN"
else
  fail "ListDeadLetters (reasonContains /amount) lists the planted record within 20 s" "$GC_ERR" \
    "$(jq -c '[.deadLetters[]? | {id, eventId, reason}] | .[0:5]' <<<"$GC_OUT")"
fi
DLQ_END_AFTER=$(end_offset_sum "$DLQ_TOPIC")
assert_json "the DLQ topic's end offsets grew ($DLQ_END_BEFORE -> $DLQ_END_AFTER)" '.[1] > .[0]' \
  "[${DLQ_END_BEFORE:-0},${DLQ_END_AFTER:-0}]"
expect_code "GetEvent of the dead-lettered event is NotFound" NotFound \
  "$QUERY_ADDR" "$QUERY/GetEvent" "$(jq -nc --arg id "$DLQ_EVENT" '{eventId: $id}')"

# The cause is fixed: version 2 takes an amount of any type.
if expect_ok "RegisterEventType $DLQ_TYPE again, a schema that accepts the record" "$ADMIN_ADDR" "$ADMIN/RegisterEventType" \
  "$(jq -nc --arg n "$DLQ_TYPE" --argjson s "$SCHEMA_V2" '{name: $n, schema: $s, description: "amount of any type"}')"; then
  assert_json "RegisterEventType: the second schema is version 2" '.version == 2' "$GC_OUT"
fi
# A version that would refuse payloads version 2 accepted is refused, naming
# each place (JSON Pointer) where it tightens.
if expect_code "RegisterEventType of an incompatible version 3 is InvalidArgument" InvalidArgument \
  "$ADMIN_ADDR" "$ADMIN/RegisterEventType" "$(jq -nc --arg n "$DLQ_TYPE" '{name: $n,
    schema: {type: "object", required: ["amount", "currency"], properties: {amount: {type: "string"}}}}')"; then
  assert_contains "the refusal names schema/properties/amount/type" "$GC_ERR" "schema/properties/amount/type"
  assert_contains "the refusal names the newly required property" "$GC_ERR" '"currency" is newly required'
fi
# force registers it all the same: on a type of its own, so that the one
# above keeps version 2 for the checks below.
FORCE_TYPE="force.check.$RUN_LC"
FORCE_V2='{"type":"object","required":["amount","currency"],"properties":{"amount":{"type":"string"}}}'
if expect_ok "RegisterEventType $FORCE_TYPE version 1 (amount: number)" "$ADMIN_ADDR" "$ADMIN/RegisterEventType" \
  "$(jq -nc --arg n "$FORCE_TYPE" '{name: $n, schema: {type: "object", properties: {amount: {type: "number"}}}}')"; then
  if expect_code "its incompatible version 2 without force is InvalidArgument" InvalidArgument \
    "$ADMIN_ADDR" "$ADMIN/RegisterEventType" "$(jq -nc --arg n "$FORCE_TYPE" --argjson s "$FORCE_V2" '{name: $n, schema: $s}')"; then
    assert_contains "the refusal names schema/properties/amount/type" "$GC_ERR" "schema/properties/amount/type"
  fi
  if expect_ok "the same version 2 with force: true is registered" "$ADMIN_ADDR" "$ADMIN/RegisterEventType" \
    "$(jq -nc --arg n "$FORCE_TYPE" --argjson s "$FORCE_V2" '{name: $n, schema: $s, force: true}')"; then
    assert_json "with force: it is version 2" '.version == 2' "$GC_OUT"
  fi
fi
ingest_accepts() {
  gcall "$INGEST_ADDR" "$INGEST/Publish" "$(jq -nc --arg id "$RUN-dlq-fixed" --arg t "$DLQ_TYPE" \
    --argjson p "$BAD_PAYLOAD" '{event: {eventId: $id, eventType: $t, source: "admin-test", payload: $p}}')"
}
if poll 10 ingest_accepts; then
  pass "ingest accepts the payload under version 2"
else
  fail "ingest accepts the payload under version 2" "exit $GC_RC" "$GC_ERR"
fi

if [[ -n "$DEAD_ID" ]]; then
  REDRIVE=$(jq -nc --arg id "$DEAD_ID" '{ids: {ids: [$id]}}')
  if expect_ok "RedriveDeadLetters of the dead letter" "$ADMIN_ADDR" "$ADMIN/RedriveDeadLetters" "$REDRIVE"; then
    assert_json "RedriveDeadLetters: redrivenIds is [id], alreadyRedrivenIds empty" \
      '.redrivenIds == [$id] and .alreadyRedrivenIds == []' "$GC_OUT" --arg id "$DEAD_ID"
  fi
  if expect_ok "RedriveDeadLetters of it again" "$ADMIN_ADDR" "$ADMIN/RedriveDeadLetters" "$REDRIVE"; then
    assert_json "the second redrive: alreadyRedrivenIds [id], no redrivenIds" \
      '.alreadyRedrivenIds == [$id] and .redrivenIds == []' "$GC_OUT" --arg id "$DEAD_ID"
  fi
  if wait_persisted "$DLQ_EVENT" 30; then
    pass "the redriven event becomes a row (GetEvent finds it)"
    assert_json "the stored event was checked against version 2, payload as planted" \
      '.schemaVersion == 2 and .event.eventType == $t and .event.payload == $p' "$GC_OUT" \
      --arg t "$DLQ_TYPE" --argjson p "$BAD_PAYLOAD"
  else
    fail "the redriven event becomes a row within 30 s" "$GC_ERR"
  fi
  if expect_ok "ListDeadLetters with includeRedriven" "$ADMIN_ADDR" "$ADMIN/ListDeadLetters" \
    '{"filter":{"reasonContains":"/amount","includeRedriven":true},"pageSize":1000}'; then
    assert_json "the dead letter now carries redrivenAt" \
      'any(.deadLetters[]; .id == $id and .redrivenAt != null)' "$GC_OUT" --arg id "$DEAD_ID"
  fi
  if expect_ok "ListDeadLetters without includeRedriven" "$ADMIN_ADDR" "$ADMIN/ListDeadLetters" \
    '{"filter":{"reasonContains":"/amount"},"pageSize":1000}'; then
    assert_json "a redriven dead letter is left out by default" \
      'all(.deadLetters[]; .id != $id)' "$GC_OUT" --arg id "$DEAD_ID"
  fi
else
  fail "RedriveDeadLetters of the dead letter" "no dead letter was found to redrive"
fi

if expect_ok "GetEventType $DLQ_TYPE (latest)" "$ADMIN_ADDR" "$ADMIN/GetEventType" "$(jq -nc --arg n "$DLQ_TYPE" '{name: $n}')"; then
  assert_json "GetEventType: the latest is version 2 with its schema" '.version == 2 and .schema == $s' "$GC_OUT" --argjson s "$SCHEMA_V2"
fi
if expect_ok "GetEventType $DLQ_TYPE version 1" "$ADMIN_ADDR" "$ADMIN/GetEventType" "$(jq -nc --arg n "$DLQ_TYPE" '{name: $n, version: 1}')"; then
  assert_json "GetEventType: version 1 keeps its schema" '.version == 1 and .schema == $s' "$GC_OUT" --argjson s "$SCHEMA_V1"
fi
expect_code "GetEventType of an unknown version is NotFound" NotFound \
  "$ADMIN_ADDR" "$ADMIN/GetEventType" "$(jq -nc --arg n "$DLQ_TYPE" '{name: $n, version: 3}')"
# ListEventTypes pages through every type until it finds ours.
found_type="" page_token="" pages=0
while ((pages < 50)); do
  pages=$((pages + 1))
  gcall "$ADMIN_ADDR" "$ADMIN/ListEventTypes" "$(jq -nc --arg t "$page_token" '{pageSize: 1000, pageToken: $t}')" || break
  found_type=$(jq -c --arg n "$DLQ_TYPE" '.eventTypes[] | select(.name == $n)' <<<"$GC_OUT")
  page_token=$(jq -r .nextPageToken <<<"$GC_OUT")
  [[ -n "$found_type" || -z "$page_token" ]] && break
done
if [[ -n "$found_type" ]]; then
  pass "ListEventTypes includes $DLQ_TYPE"
  assert_json "ListEventTypes shows its latest version (2)" '.version == 2' "$found_type"
else
  fail "ListEventTypes includes $DLQ_TYPE" "grpcurl exit $GC_RC" "$GC_ERR"
fi

# ================================================================ topics and groups
section "admin: topics and consumer groups"
if expect_ok "ListTopics" "$ADMIN_ADDR" "$ADMIN/ListTopics" '{}'; then
  assert_json "ListTopics includes $EVENTS_TOPIC and $DLQ_TOPIC" \
    '[.topics[].name] | index($a) != null and index($b) != null' "$GC_OUT" --arg a "$EVENTS_TOPIC" --arg b "$DLQ_TOPIC"
fi
if expect_ok "ListConsumerGroups" "$ADMIN_ADDR" "$ADMIN/ListConsumerGroups" '{}'; then
  G=$(jq -c --arg g "$GROUP" '[.groups[] | select(.group == $g)] | first // {}' <<<"$GC_OUT")
  assert_json "ListConsumerGroups includes $GROUP with a state ($(jq -c '{state, memberCount}' <<<"$G"))" \
    '.group == $g and (.state | length) > 0' "$G" --arg g "$GROUP"
fi
printf '(admin tests took %s s)\n' "$((SECONDS - T_ADMIN_START))"
