# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# Ingest and query over gRPC, against the running services (nothing mocked):
# reflection, health, Publish / PublishBatch / PublishStream, read-back with
# GetEvent, ListEvents filters and paging, idempotency, input validation.
# Sourced by test-system.sh (tests/lib.sh is loaded). Every id, source, user
# and session carries the run id, so data from earlier runs never interferes.

INGEST=tributary.v1.IngestService
QUERY=tributary.v1.QueryService
RUN=$T_RUN_ID
NOW=$(date +%s)
UUID7_RE='^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'
# Ids that must never be written (checked at the end).
NEVER_WRITTEN=()

# publish_json EVENT_JSON: a PublishRequest for one event.
publish_json() { jq -c '{event: .}' <<<"$1"; }

# list_ids FILTER_JSON [PAGE_SIZE]: one ListEvents page; prints the event ids.
list_ids() {
  gcall "$QUERY_ADDR" "$QUERY/ListEvents" "$(jq -nc --argjson f "$1" --argjson n "${2:-1000}" '{filter: $f, pageSize: $n}')" &&
    jq -r '[.events[].event.eventId] | join(" ")' <<<"$GC_OUT"
}

# list_count_is FILTER_JSON N: ListEvents finds exactly N events.
list_count_is() {
  local ids
  ids=$(list_ids "$1") || return 1
  [[ $(wc -w <<<"$ids") -eq $2 ]]
}

# ================================================================ reflection
section "reflection"
# Each server lists what it serves, and only that: a client browsing with
# grpcurl must not be offered a service that answers Unimplemented.
for spec in "ingest $INGEST_ADDR $INGEST" "query $QUERY_ADDR $QUERY" "processor $PROCESSOR_ADDR -"; do
  read -r name addr svc <<<"$spec"
  if gcall "$addr" list; then
    pass "$name: reflection lists services"
    assert_contains "$name: lists grpc.health.v1.Health" "$GC_OUT" grpc.health.v1.Health
    [[ "$svc" != - ]] && assert_contains "$name: lists $svc" "$GC_OUT" "$svc"
    others=$(grep '^tributary\.v1\.' <<<"$GC_OUT" | grep -vxF -- "$svc" | xargs)
    assert_eq "$name: lists no tributary.v1 service it does not serve" "" "$others"
  else
    fail "$name: reflection lists services" "$GC_ERR"
  fi
done
out=$(gc "$INGEST_ADDR" describe "$INGEST" 2>&1)
for m in Publish PublishBatch PublishStream; do
  assert_contains "ingest: describe shows rpc $m" "$out" "rpc $m ("
done
out=$(gc "$QUERY_ADDR" describe "$QUERY" 2>&1)
for m in GetEvent ListEvents; do
  assert_contains "query: describe shows rpc $m" "$out" "rpc $m ("
done

# ================================================================ health
section "health"
for spec in "ingest $INGEST_ADDR $INGEST 9601" "query $QUERY_ADDR $QUERY 9603" "processor $PROCESSOR_ADDR - 9602"; do
  read -r name addr svc http <<<"$spec"
  if expect_ok "$name: Health/Check" "$addr" grpc.health.v1.Health/Check '{}'; then
    assert_json "$name: overall health is SERVING" '.status == "SERVING"' "$GC_OUT"
  fi
  if [[ "$svc" != - ]]; then
    if expect_ok "$name: Health/Check $svc" "$addr" grpc.health.v1.Health/Check "{\"service\":\"$svc\"}"; then
      assert_json "$name: $svc is SERVING" '.status == "SERVING"' "$GC_OUT"
    fi
  fi
  expect_code "$name: Health/Check of an unknown service is NotFound" NotFound \
    "$addr" grpc.health.v1.Health/Check '{"service":"no.such.Service"}'
  assert_eq "$name: HTTP /live answers 200" 200 "$(http_status "http://127.0.0.1:$http/live")"
  assert_eq "$name: HTTP /ready answers 200" 200 "$(http_status "http://127.0.0.1:$http/ready")"
done

# ================================================================ CORS
section "CORS: gRPC-Web from the live page's origin only"
WEB_ORIGIN=http://127.0.0.1:8088
# cors_headers METHOD URL ORIGIN [CURL_ARGS...]: the status line and headers,
# lower-cased, of a request carrying ORIGIN.
cors_headers() {
  local method=$1 url=$2 origin=$3
  shift 3
  curl -s -m 5 -o /dev/null -D - -X "$method" -H "Origin: $origin" "$@" "$url" | tr -d '\r' |
    tr '[:upper:]' '[:lower:]'
}
for spec in "ingest $INGEST_ADDR tributary.v1.IngestService/PublishBatch" \
  "query $QUERY_ADDR tributary.v1.QueryService/TailEvents"; do
  read -r name addr path <<<"$spec"
  h=$(cors_headers OPTIONS "http://$addr/$path" "$WEB_ORIGIN" \
    -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: content-type,x-grpc-web,authorization')
  assert_match "$name: a preflight from $WEB_ORIGIN is answered 204" '^http/1.1 204' "$h"
  assert_contains "$name: ... allowing that origin" "$h" "access-control-allow-origin: $WEB_ORIGIN"
  assert_contains "$name: ... and the gRPC-Web request headers" "$h" \
    "access-control-allow-headers: content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization"
  assert_contains "$name: ... exposing the gRPC status headers" "$h" \
    "access-control-expose-headers: grpc-status, grpc-message, grpc-status-details-bin"
  h=$(cors_headers OPTIONS "http://$addr/$path" http://127.0.0.1:8089 -H 'Access-Control-Request-Method: POST')
  assert_match "$name: a preflight from another origin is refused (403)" '^http/1.1 403' "$h"
  assert_not_contains "$name: ... with no CORS grant" "$h" "access-control-allow-origin"
done
h=$(cors_headers OPTIONS "http://${ADMIN_ADDR:-127.0.0.1:50053}/tributary.v1.AdminService/ListTopics" "$WEB_ORIGIN" \
  -H 'Access-Control-Request-Method: POST')
assert_match "admin: never callable from a browser (preflight 403)" '^http/1.1 403' "$h"
# A gRPC-Web call (HTTP/1.1, an empty HealthCheckRequest frame): the allowed
# origin gets the answer and the grant; another origin is refused before any
# handler runs (PERMISSION_DENIED), not merely hidden from the page.
grpc_web_health() {
  printf '\0\0\0\0\0' | curl -s -m 5 -D - --data-binary @- -H "Origin: $1" \
    -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' \
    "http://$INGEST_ADDR/grpc.health.v1.Health/Check" | tr -d '\r' | tr -d '\0' | tr '[:upper:]' '[:lower:]'
}
out=$(grpc_web_health "$WEB_ORIGIN")
assert_contains "ingest: a gRPC-Web Health/Check from $WEB_ORIGIN carries the grant" "$out" \
  "access-control-allow-origin: $WEB_ORIGIN"
assert_contains "ingest: ... and succeeds (grpc-status 0 in the body's trailer frame)" "$out" "grpc-status:0"
out=$(grpc_web_health http://127.0.0.1:8089)
assert_contains "ingest: the same call from another origin is PERMISSION_DENIED (7)" "$out" "grpc-status: 7"
assert_not_contains "ingest: ... with no CORS grant" "$out" "access-control-allow-origin"

# ================================================================ Publish
section "Publish"
SINGLE_PAYLOAD='{"n":1,"f":2.5,"neg":-7,"s":"héllo ✓ \"quoted\"","b":true,"z":null,"list":[1,"two",{"three":3}],"nested":{"a":{"b":"c"}},"empty":{}}'
SINGLE_OCCURRED=$(rfc3339 $((NOW - 120)) 123456)
SINGLE=$(jq -nc --arg id "$RUN-single" --arg src "tsys-$RUN" --arg u "user-$RUN" --arg s "sess-$RUN" \
  --arg t "$SINGLE_OCCURRED" --argjson p "$SINGLE_PAYLOAD" \
  '{eventId: $id, eventType: "test.single", source: $src, userId: $u, sessionId: $s, occurredAt: $t, payload: $p}')
if expect_ok "Publish: one event" "$INGEST_ADDR" "$INGEST/Publish" "$(publish_json "$SINGLE")"; then
  assert_eq "Publish: answers the client's eventId" "$RUN-single" "$(jq -r .eventId <<<"$GC_OUT")"
fi

ASSIGNED_ID=""
if expect_ok "Publish: an event without eventId" "$INGEST_ADDR" "$INGEST/Publish" \
  "$(jq -nc --arg src "tsys-$RUN" '{event: {eventType: "test.assigned", source: $src, payload: {k: "v"}}}')"; then
  ASSIGNED_ID=$(jq -r .eventId <<<"$GC_OUT")
  assert_match "Publish: assigns a UUIDv7 eventId" "$UUID7_RE" "$ASSIGNED_ID"
fi

# ================================================================ PublishBatch
section "PublishBatch"
BATCH=$(jq -nc --arg run "$RUN" --arg t "$(rfc3339 $((NOW - 100)))" '{events: [
  {eventId: ($run + "-b0"), eventType: "test.batch", source: ("batch-" + $run), userId: ("bu-" + $run), occurredAt: $t, payload: {i: 0}},
  {eventId: ($run + "-b1"), eventType: "Bad Type", source: ("batch-" + $run), payload: {i: 1}},
  {eventId: ($run + "-b2"), eventType: "test.batch", source: ("batch-" + $run), payload: {i: 2}},
  {eventId: "bad id!", eventType: "test.batch", source: ("batch-" + $run), payload: {i: 3}},
  {eventType: "test.batch", source: ("batch-" + $run), payload: {i: 4}}
]}')
NEVER_WRITTEN+=("$RUN-b1")
BATCH_ASSIGNED=""
if expect_ok "PublishBatch: good and bad events together answer OK" "$INGEST_ADDR" "$INGEST/PublishBatch" "$BATCH"; then
  B=$GC_OUT
  assert_json "PublishBatch: one result per event, in request order" '[.results[].index] == [0,1,2,3,4]' "$B"
  assert_json "PublishBatch: per-event codes are OK, InvalidArgument, OK, InvalidArgument, OK" \
    '[.results[] | .status.code // 0] == [0,3,0,3,0]' "$B"
  assert_json "PublishBatch: accepted 3, rejected 2" '.accepted == 3 and .rejected == 2' "$B"
  assert_json "PublishBatch: results carry the client eventIds" \
    '.results[0].eventId == ($run + "-b0") and .results[1].eventId == ($run + "-b1") and .results[2].eventId == ($run + "-b2")' \
    "$B" --arg run "$RUN"
  assert_json "PublishBatch: a rejected event's status has a message" '(.results[1].status.message | length) > 0' "$B"
  assert_json "PublishBatch: a rejected event's status carries google.rpc.BadRequest" \
    '[.results[1].status.details[]?["@type"]] | index("type.googleapis.com/google.rpc.BadRequest") != null' "$B"
  BATCH_ASSIGNED=$(jq -r '.results[4].eventId' <<<"$B")
  assert_match "PublishBatch: assigns a UUIDv7 to the event without eventId" "$UUID7_RE" "$BATCH_ASSIGNED"
fi

# ================================================================ PublishStream
section "PublishStream"
STREAM_T=$(rfc3339 $((NOW - 90)))
STREAM_IN=$(jq -nc --arg run "$RUN" --arg t "$STREAM_T" '
  range(0; 5) as $i
  | {event: {eventId: ($run + "-s" + ($i | tostring)),
             eventType: (if $i == 2 then "" else "test.stream" end),
             source: ("stream-" + $run), sessionId: ("ss-" + $run),
             occurredAt: (if $i == 4 then null else $t end), payload: {i: $i}}}
  | if .event.occurredAt == null then del(.event.occurredAt) else . end')
NEVER_WRITTEN+=("$RUN-s2")
if expect_ok "PublishStream: five events, the third invalid" "$INGEST_ADDR" "$INGEST/PublishStream" @ <<<"$STREAM_IN"; then
  S=$(jq -sc 'sort_by(.index)' <<<"$GC_OUT")
  assert_json "PublishStream: one result per event, indexes 0..4" '[.[].index] == [0,1,2,3,4]' "$S"
  assert_json "PublishStream: the invalid event alone gets InvalidArgument, the rest OK" \
    '[.[] | .status.code // 0] == [0,0,3,0,0]' "$S"
  assert_json "PublishStream: results carry the eventIds" \
    '[.[].eventId] == [range(0;5) | $run + "-s" + tostring]' "$S" --arg run "$RUN"
fi

# ================================================================ boundaries that are valid
section "valid boundary values"
EDGE_IDS=()
edge_ok() {
  local name=$1 ev=$2 id
  id=$(jq -r .eventId <<<"$ev")
  if expect_ok "Publish accepts $name" "$INGEST_ADDR" "$INGEST/Publish" @ <<<"$(publish_json "$ev")"; then
    EDGE_IDS+=("$id")
  fi
}
EDGE_BASE=$(jq -nc --arg run "$RUN" '{eventType: "test.edge", source: ("edge-" + $run), payload: {}}')
edge_ok "an eventType of 64 characters" "$(jq -c --arg id "$RUN-e1" '.eventId = $id | .eventType = "a" + ("b" * 62) + "9"' <<<"$EDGE_BASE")"
edge_ok "an eventType with digits, '_', '.' and '-'" "$(jq -c --arg id "$RUN-e2" '.eventId = $id | .eventType = "a0_.-z"' <<<"$EDGE_BASE")"
edge_ok "an eventId of 128 characters" "$(jq -c --arg id "$RUN-e3-" '.eventId = ($id + ("x" * (128 - ($id | length))))' <<<"$EDGE_BASE")"
edge_ok "an eventId with '.', '_', ':' and '-'" "$(jq -c --arg id "$RUN-e4.a_b:c-d" '.eventId = $id' <<<"$EDGE_BASE")"
edge_ok "userId and sessionId of 256 characters" "$(jq -c --arg id "$RUN-e5" '.eventId = $id | .userId = ("u" * 256) | .sessionId = ("s" * 256)' <<<"$EDGE_BASE")"
edge_ok "a source of 256 characters" "$(jq -c --arg id "$RUN-e6" '.eventId = $id | .source = ($id + ("s" * (256 - ($id | length))))' <<<"$EDGE_BASE")"
edge_ok "a payload of 60 KiB" "$(jq -c --arg id "$RUN-e7" '.eventId = $id | .payload = {blob: ("x" * 61000)}' <<<"$EDGE_BASE")"
edge_ok "occurredAt 30 min in the future" "$(jq -c --arg id "$RUN-e8" --arg t "$(rfc3339 $((NOW + 1800)))" '.eventId = $id | .occurredAt = $t' <<<"$EDGE_BASE")"

MAX_BATCH=$(jq -nc --arg run "$RUN" '{events: [range(0; 1000) | {eventId: ($run + "-m" + tostring), eventType: "test.max", source: ("max-" + $run), payload: {i: .}}]}')
if expect_ok "PublishBatch accepts 1000 events" "$INGEST_ADDR" "$INGEST/PublishBatch" @ <<<"$MAX_BATCH"; then
  assert_json "PublishBatch of 1000: accepted 1000, rejected 0" '.accepted == 1000 and .rejected == 0' "$GC_OUT"
fi

# ================================================================ invalid input
section "invalid input is rejected with InvalidArgument"
BAD_BASE=$(jq -nc --arg run "$RUN" '{eventType: "test.bad", source: ("bad-" + $run), userId: ("bad-u-" + $run), payload: {ok: true}}')
bad_n=0
# bad NAME JQ_EDIT [JQ_ARG...]: applies JQ_EDIT to a valid event that has a
# fresh valid eventId, publishes it and expects InvalidArgument.
bad() {
  local name=$1 edit=$2 ev id
  shift 2
  bad_n=$((bad_n + 1))
  ev=$(jq -c --arg id "$RUN-bad$bad_n" "$@" ".eventId = \$id | $edit" <<<"$BAD_BASE")
  id=$(jq -r '.eventId // ""' <<<"$ev")
  [[ "$id" =~ ^[A-Za-z0-9._:-]{1,128}$ ]] && NEVER_WRITTEN+=("$id")
  expect_code "Publish rejects $name" InvalidArgument "$INGEST_ADDR" "$INGEST/Publish" @ <<<"$(publish_json "$ev")"
}
bad "an eventType with an upper-case letter" '.eventType = "Test.bad"'
bad "an eventType starting with a digit" '.eventType = "1test"'
bad "an eventType with a space" '.eventType = "test bad"'
bad "an eventType of 65 characters" '.eventType = ("a" * 65)'
bad "an empty eventType" '.eventType = ""'
bad "an eventId with a space" '.eventId = $id + " x"'
bad "an eventId with a '/'" '.eventId = $id + "/x"'
bad "an eventId of 129 characters" '.eventId = ($id + ("x" * (129 - ($id | length))))'
bad "a userId of 257 characters" '.userId = ("u" * 257)'
bad "a sessionId of 257 characters" '.sessionId = ("s" * 257)'
bad "a source of 257 characters" '.source = ("s" * 257)'
bad "a payload over 64 KiB" '.payload = {blob: ("x" * 66000)}'
bad "occurredAt 2 h in the future" '.occurredAt = $t' --arg t "$(rfc3339 $((NOW + 7200)))"
bad "a NUL character in userId" '.userId = "a\u0000b"'
bad "a NUL character in source" '.source = "a\u0000b"'
bad "a NUL character in a payload string" '.payload = {s: "a\u0000b"}'
bad "a NUL character in a payload key" '.payload = {"a\u0000b": 1}'

# grpcurl decodes error details only for types the server's reflection knows.
bad "an eventType with a '!'" '.eventType = "test!"'
assert_not_contains "InvalidArgument details decode in grpcurl (reflection serves google/rpc/error_details.proto)" \
  "$GC_ERR" "is not recognized"
assert_contains "InvalidArgument details are google.rpc.BadRequest field violations" "$GC_ERR" "fieldViolations"

OVER_BATCH=$(jq -nc --arg run "$RUN" '{events: [range(0; 1001) | {eventId: ($run + "-big" + tostring), eventType: "test.big", source: ("big-" + $run), payload: {i: .}}]}')
NEVER_WRITTEN+=("$RUN-big0" "$RUN-big500" "$RUN-big1000")
expect_code "PublishBatch rejects 1001 events" InvalidArgument "$INGEST_ADDR" "$INGEST/PublishBatch" @ <<<"$OVER_BATCH"

# ================================================================ ListEvents data set
section "ListEvents data set"
# Nine events: eight with source list-RUN, one (L9) elsewhere. L6 and L7
# share occurredAt (ties break by eventId, descending); L5 has microseconds.
LB=$((NOW - 1800))
LIST_DATA=$(jq -nc --arg run "$RUN" \
  --arg t0 "$(rfc3339 "$LB")" --arg t1 "$(rfc3339 $((LB + 1)))" --arg t2 "$(rfc3339 $((LB + 2)))" \
  --arg t3 "$(rfc3339 $((LB + 3)))" --arg t4 "$(rfc3339 $((LB + 4)) 250000)" --arg t5 "$(rfc3339 $((LB + 5)))" \
  --arg t6 "$(rfc3339 $((LB + 6)))" --arg t7 "$(rfc3339 $((LB + 7)))" '
  [ ["L1", "test.alpha", "u1", "s1", $t0],
    ["L2", "test.beta",  "u1", "s1", $t1],
    ["L3", "test.alpha", "u2", "s2", $t2],
    ["L4", "test.gamma", "u2", "s1", $t3],
    ["L5", "test.beta",  "u3", "s2", $t4],
    ["L6", "test.alpha", "u3", "s3", $t5],
    ["L7", "test.alpha", "u1", "s3", $t5],
    ["L8", "test.beta",  "u2", "s2", $t6],
    ["L9", "test.alpha", "u1", "s1", $t7] ]
  | map({eventId: ($run + "-" + .[0]), eventType: .[1],
         source: (if .[0] == "L9" then "other-" + $run else "list-" + $run end),
         userId: (.[2] + "-" + $run), sessionId: (.[3] + "-" + $run), occurredAt: .[4],
         payload: {name: .[0]}})')
if expect_ok "PublishBatch: the ListEvents data set" "$INGEST_ADDR" "$INGEST/PublishBatch" "$(jq -c '{events: .}' <<<"$LIST_DATA")"; then
  assert_json "PublishBatch: the data set is accepted" '.accepted == 9 and .rejected == 0' "$GC_OUT"
fi

# ================================================================ read-back
section "GetEvent"
if wait_persisted "$RUN-single" 20; then
  pass "GetEvent finds the published event (within 20 s)"
  G=$GC_OUT
  assert_json "GetEvent: eventId, eventType, source, userId, sessionId round-trip" \
    '.event.eventId == $e.eventId and .event.eventType == $e.eventType and .event.source == $e.source and .event.userId == $e.userId and .event.sessionId == $e.sessionId' \
    "$G" --argjson e "$SINGLE"
  assert_eq "GetEvent: occurredAt round-trips with microseconds" "$SINGLE_OCCURRED" "$(jq -r .event.occurredAt <<<"$G")"
  assert_json "GetEvent: payload round-trips (nesting, unicode, null, numbers)" '.event.payload == $p' "$G" --argjson p "$SINGLE_PAYLOAD"
  assert_json "GetEvent: receivedAt is set and recent" "$JQ_DEFS"' (.receivedAt | ts) >= ($now - 600) * 1000000' "$G" --argjson now "$NOW"
  assert_json "GetEvent: persistedAt is set, not before receivedAt" "$JQ_DEFS"' (.persistedAt | ts) >= (.receivedAt | ts)' "$G"
  assert_json "GetEvent: partition is one of the topic's (0..5)" '.partition | type == "number" and . >= 0 and . < 6' "$G"
  assert_json "GetEvent: offset is an int64 (string of digits)" '.offset | type == "string" and test("^[0-9]+$")' "$G"
  assert_json "GetEvent: traceId is 32 hex digits, not zero" '.traceId | test("^[0-9a-f]{32}$") and . != ("0" * 32)' "$G"
else
  fail "GetEvent finds the published event (within 20 s)" "$GC_ERR"
fi

if [[ -n "$ASSIGNED_ID" ]] && wait_persisted "$ASSIGNED_ID" 20; then
  pass "GetEvent finds the event by its assigned id"
  assert_json "GetEvent: occurredAt defaults to the receive time" "$JQ_DEFS"' ((.event.occurredAt | ts) - (.receivedAt | ts)) | fabs < 1000000' "$GC_OUT"
else
  fail "GetEvent finds the event by its assigned id" "id: $ASSIGNED_ID" "$GC_ERR"
fi

for id in "$RUN-b0" "$RUN-b2" "$BATCH_ASSIGNED"; do
  if [[ -n "$id" ]] && wait_persisted "$id" 20; then
    pass "GetEvent finds batch event $id"
    assert_json "GetEvent: batch event $id has its type and source" \
      '.event.eventType == "test.batch" and .event.source == ("batch-" + $run)' "$GC_OUT" --arg run "$RUN"
  else
    fail "GetEvent finds batch event $id" "$GC_ERR"
  fi
done
for i in 0 1 3 4; do
  if wait_persisted "$RUN-s$i" 20; then
    pass "GetEvent finds stream event $RUN-s$i"
    assert_json "GetEvent: stream event $RUN-s$i has its payload" '.event.payload.i == $i and .event.sessionId == ("ss-" + $run)' \
      "$GC_OUT" --argjson i "$i" --arg run "$RUN"
  else
    fail "GetEvent finds stream event $RUN-s$i" "$GC_ERR"
  fi
done
for id in "${EDGE_IDS[@]}"; do
  if wait_persisted "$id" 20; then
    pass "GetEvent finds boundary event ${id:0:40}"
  else
    fail "GetEvent finds boundary event ${id:0:40}" "$GC_ERR"
  fi
done
if wait_persisted "$RUN-e7" 1; then
  assert_json "GetEvent: the 60 KiB payload round-trips" '.event.payload.blob | length == 61000' "$GC_OUT"
fi
if wait_persisted "$RUN-e5" 1; then
  assert_json "GetEvent: 256-character userId round-trips" '.event.userId | length == 256' "$GC_OUT"
fi

expect_code "GetEvent of an unknown id is NotFound" NotFound "$QUERY_ADDR" "$QUERY/GetEvent" \
  "$(jq -nc --arg id "$RUN-no-such-event" '{eventId: $id}')"

# ================================================================ ListEvents
section "ListEvents filters"
# expected_ids FILTER_JSON: the data set's ids the filter selects, newest first.
expected_ids() {
  jq -r --argjson f "$1" "$JQ_DEFS"'
    def keep($f): . as $e
      | ((($f.eventTypes // []) | length) == 0 or ([$f.eventTypes[] | select(. == $e.eventType)] | length) > 0)
        and (($f.source // "") == "" or $f.source == $e.source)
        and (($f.userId // "") == "" or $f.userId == $e.userId)
        and (($f.sessionId // "") == "" or $f.sessionId == $e.sessionId)
        and (($f.occurredAfter // "") == "" or ($e.occurredAt | ts) >= ($f.occurredAfter | ts))
        and (($f.occurredBefore // "") == "" or ($e.occurredAt | ts) < ($f.occurredBefore | ts));
    [.[] | select(keep($f))] | sort_by([(.occurredAt | ts), .eventId]) | reverse | map(.eventId) | join(" ")' <<<"$LIST_DATA"
}
at() { jq -r --arg n "$1" '.[] | select(.eventId | endswith("-" + $n)) | .occurredAt' <<<"$LIST_DATA"; }

F_SOURCE=$(jq -nc --arg run "$RUN" '{source: ("list-" + $run)}')
F_USER=$(jq -nc --arg run "$RUN" '{userId: ("u1-" + $run)}')
if poll 20 list_count_is "$F_SOURCE" 8 && poll 10 list_count_is "$F_USER" 4; then
  pass "ListEvents: the data set is persisted (within 20 s)"
else
  fail "ListEvents: the data set is persisted (within 20 s)" "$(list_ids "$F_SOURCE")" "$GC_ERR"
fi

list_case() {
  local name=$1 filter=$2 want got
  want=$(expected_ids "$filter")
  if got=$(list_ids "$filter" 100); then
    assert_eq "ListEvents $name" "$want" "$got"
  else
    fail "ListEvents $name" "$GC_ERR"
  fi
}
list_case "by source: all eight, newest first, ties by eventId" "$F_SOURCE"
list_case "by one eventType" "$(jq -c '. + {eventTypes: ["test.alpha"]}' <<<"$F_SOURCE")"
list_case "by two eventTypes" "$(jq -c '. + {eventTypes: ["test.alpha", "test.gamma"]}' <<<"$F_SOURCE")"
list_case "by an eventType nobody sent: empty" "$(jq -c '. + {eventTypes: ["test.none"]}' <<<"$F_SOURCE")"
list_case "by userId (across sources)" "$F_USER"
list_case "by sessionId" "$(jq -nc --arg run "$RUN" '{sessionId: ("s2-" + $run)}')"
list_case "by userId and sessionId" "$(jq -nc --arg run "$RUN" '{userId: ("u2-" + $run), sessionId: ("s1-" + $run)}')"
list_case "by occurredAfter (inclusive) and occurredBefore (exclusive)" \
  "$(jq -c --arg a "$(at L3)" --arg b "$(at L6)" '. + {occurredAfter: $a, occurredBefore: $b}' <<<"$F_SOURCE")"
list_case "by occurredAfter equal to a microsecond timestamp (inclusive)" \
  "$(jq -c --arg a "$(at L5)" '. + {occurredAfter: $a}' <<<"$F_SOURCE")"
list_case "by occurredBefore equal to a microsecond timestamp (exclusive)" \
  "$(jq -c --arg b "$(at L5)" '. + {occurredBefore: $b}' <<<"$F_SOURCE")"
list_case "by every filter at once" \
  "$(jq -nc --arg run "$RUN" --arg a "$(at L2)" --arg b "$(at L9)" '{eventTypes: ["test.alpha", "test.beta"], source: ("list-" + $run), userId: ("u1-" + $run), sessionId: ("s3-" + $run), occurredAfter: $a, occurredBefore: $b}')"

section "ListEvents paging"
want=$(expected_ids "$F_SOURCE")
token="" collected=() sizes=() pages=0 page_error=""
while ((pages < 10)); do
  req=$(jq -nc --argjson f "$F_SOURCE" --arg t "$token" '{filter: $f, pageSize: 3, pageToken: $t}')
  if ! gcall "$QUERY_ADDR" "$QUERY/ListEvents" "$req"; then
    page_error=$GC_ERR
    break
  fi
  pages=$((pages + 1))
  [[ $pages -eq 1 ]] && FIRST_TOKEN=$(jq -r .nextPageToken <<<"$GC_OUT")
  mapfile -t page_ids < <(jq -r '.events[].event.eventId' <<<"$GC_OUT")
  collected+=("${page_ids[@]}")
  sizes+=("${#page_ids[@]}")
  token=$(jq -r .nextPageToken <<<"$GC_OUT")
  [[ -n "$token" ]] || break
done
if [[ -z "$page_error" ]]; then
  pass "ListEvents: pages through with pageSize 3"
  assert_eq "ListEvents paging: page sizes 3, 3, 2 and an empty token on the last" "3 3 2" "${sizes[*]}"
  assert_eq "ListEvents paging: all pages together are the events newest first" "$want" "${collected[*]}"
  assert_eq "ListEvents paging: no event twice" "${#collected[@]}" "$(printf '%s\n' "${collected[@]}" | sort -u | wc -l)"
else
  fail "ListEvents: pages through with pageSize 3" "$page_error"
fi
expect_code "ListEvents: a forged pageToken is InvalidArgument" InvalidArgument "$QUERY_ADDR" "$QUERY/ListEvents" \
  "$(jq -nc --argjson f "$F_SOURCE" '{filter: $f, pageSize: 3, pageToken: "Zm9yZ2VkLXRva2Vu"}')"
expect_code "ListEvents: a pageToken that is not base64 is InvalidArgument" InvalidArgument "$QUERY_ADDR" "$QUERY/ListEvents" \
  "$(jq -nc --argjson f "$F_SOURCE" '{filter: $f, pageSize: 3, pageToken: "%%% not a token %%%"}')"
if [[ -n "${FIRST_TOKEN:-}" ]]; then
  expect_code "ListEvents: a pageToken reused with another filter is InvalidArgument" InvalidArgument "$QUERY_ADDR" "$QUERY/ListEvents" \
    "$(jq -nc --argjson f "$F_USER" --arg t "$FIRST_TOKEN" '{filter: $f, pageSize: 3, pageToken: $t}')"
else
  fail "ListEvents: a pageToken reused with another filter is InvalidArgument" "no token from the first page"
fi

# ================================================================ idempotency
section "idempotency"
DUP=$(jq -nc --arg run "$RUN" '{eventId: ($run + "-dup"), eventType: "test.dup", source: ("dup-" + $run), payload: {attempt: 1}}')
expect_ok "Publish: an event with a client eventId" "$INGEST_ADDR" "$INGEST/Publish" "$(publish_json "$DUP")"
if expect_ok "Publish: the same eventId again (a client retry)" "$INGEST_ADDR" "$INGEST/Publish" \
  "$(publish_json "$(jq -c '.payload.attempt = 2' <<<"$DUP")")"; then
  assert_eq "Publish: the retry answers the same eventId" "$RUN-dup" "$(jq -r .eventId <<<"$GC_OUT")"
fi
expect_ok "PublishBatch: one eventId twice in one batch" "$INGEST_ADDR" "$INGEST/PublishBatch" \
  "$(jq -nc --arg run "$RUN" '{events: [range(0; 2) | {eventId: ($run + "-dup2"), eventType: "test.dup", source: ("dup-" + $run), payload: {copy: .}}]}')"

# ================================================================ nothing written
section "rejected events are not written"
# A good event published after every rejected one: once it (and the big
# batch before it) are stored, a rejected event that had been written would be too.
SENTINEL=$(jq -nc --arg run "$RUN" '{eventId: ($run + "-sentinel"), eventType: "test.sentinel", source: ("sentinel-" + $run), payload: {}}')
expect_ok "Publish: a sentinel event after the rejected ones" "$INGEST_ADDR" "$INGEST/Publish" "$(publish_json "$SENTINEL")"
if wait_persisted "$RUN-sentinel" 30 && poll 60 list_count_is "$(jq -nc --arg run "$RUN" '{source: ("max-" + $run)}')" 1000; then
  pass "the sentinel and the 1000-event batch are stored"
else
  fail "the sentinel and the 1000-event batch are stored" "$GC_ERR"
fi
sleep 2
for id in "${NEVER_WRITTEN[@]}"; do
  expect_code "GetEvent of rejected ${id#"$RUN"-} is NotFound" NotFound "$QUERY_ADDR" "$QUERY/GetEvent" \
    "$(jq -nc --arg id "$id" '{eventId: $id}')"
done
for src in bad big; do
  if ids=$(list_ids "$(jq -nc --arg s "$src-$RUN" '{source: $s}')"); then
    assert_eq "ListEvents: nothing stored with source $src-RUN" "" "$ids"
  else
    fail "ListEvents: nothing stored with source $src-RUN" "$GC_ERR"
  fi
done
if ids=$(list_ids "$(jq -nc --arg run "$RUN" '{source: ("batch-" + $run)}')"); then
  assert_eq "ListEvents: only the three valid batch events are stored" 3 "$(wc -w <<<"$ids")"
fi
if ids=$(list_ids "$(jq -nc --arg run "$RUN" '{source: ("stream-" + $run)}')"); then
  assert_eq "ListEvents: only the four valid stream events are stored" 4 "$(wc -w <<<"$ids")"
fi
if ids=$(list_ids "$(jq -nc --arg run "$RUN" '{source: ("dup-" + $run)}')"); then
  assert_eq "ListEvents: a repeated eventId leaves one row (two ids, two rows)" \
    "$RUN-dup $RUN-dup2" "$(tr ' ' '\n' <<<"$ids" | sort | xargs)"
fi
