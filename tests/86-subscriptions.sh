# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# Subscriptions (issue 14), push delivery, first slice: a push subscription
# managed through AdminService and delivered by dispatch to the example
# receiver (examples/webhook-receiver, verifying with the reference
# standardwebhooks package from PyPI), run here on a free loopback port with
# its control endpoint and request log:
#
#   a. Create returns a whsec_ secret once, the consumer group
#      tributary.sub.<name> with its start offsets committed, state ACTIVE;
#      a taken name is AlreadyExists; a bad name, no delivery or max_events
#      5000 are InvalidArgument; Get and List show it, never the secret.
#   b. Only matching events arrive (type and source), each at least once,
#      every request verified, no batch over max_events 10; the body is the
#      documented {"subscription", "events": [StoredEvent]}; the receiver's
#      CSV holds each once; dispatch counts delivered and filtered events.
#   c. The logged requests verify with the secret and fail with another.
#   d. 500 three times, then 200: everything arrives, every attempt of the
#      batch carries the same webhook-id and the same events, backoff within
#      min_backoff..max_backoff.
#   e. 429 with Retry-After: 2: the next attempt comes at least 2 s later.
#   f. Paused: nothing arrives for 5 s; resumed: it arrives.
#   g. Deleted: NotFound, its consumer group gone, later events never arrive.
#
# Skipped (a SKIP line, no failure) while the deployment runs no dispatch
# part: the Rust side of issue 14 may not have landed yet. Once dispatch runs,
# every check runs. Sourced by test-system.sh (tests/lib.sh is loaded). Every
# name, source and event id carries the run id. The receiver is stopped and the
# subscriptions deleted on the way out, also when the run is cut short.
#
# Environment: ADMIN_ADDR (127.0.0.1:50053), DISPATCH_ADDR (127.0.0.1:50055),
# DISPATCH_METRICS_URL (http://127.0.0.1:9605/metrics).

SUBS_ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:50053}
SUBS_DISPATCH_ADDR=${DISPATCH_ADDR:-127.0.0.1:50055}
SUBS_METRICS_URL=${DISPATCH_METRICS_URL:-http://127.0.0.1:9605/metrics}
SUBS_ADMIN=tributary.v1.AdminService
SUBS_INGEST=tributary.v1.IngestService
SUBS_RUN=${T_RUN_ID,,}
SUBS_NAME="sub-$SUBS_RUN"
SUBS_SOURCE="sub-$SUBS_RUN"
SUBS_GROUP="tributary.sub.$SUBS_NAME"
SUBS_RECEIVER="$TB_ROOT/examples/webhook-receiver/receiver.py"
# Kept after the run (the receiver's request log, its CSV and output): the
# first place to look when a check here fails. Only the latest run's is kept.
SUBS_DIR="$TB_LOG_DIR/test-system/subscriptions-$SUBS_RUN"
SUBS_RX_LOG="$SUBS_DIR/requests.jsonl"
SUBS_CSV="$SUBS_DIR/rows.csv"

section "subscriptions: push delivery by dispatch to a verifying webhook receiver"

# ---------------------------------------------------------------- skip

subs_dispatch_running() {
  local status
  # (deploy.sh status exits non-zero when any part is unhealthy: not piped.)
  status=$(./deploy.sh status --porcelain 2>/dev/null)
  awk '$1 == "dispatch" && $2 == "running" { found = 1 } END { exit !found }' <<<"$status"
}
if ! subs_dispatch_running; then
  printf 'SKIP  subscriptions: ./deploy.sh status --porcelain shows no dispatch part running (issue 14 not deployed yet); nothing checked\n'
  return 0
fi

# ---------------------------------------------------------------- setup

subs_install() { (ensure_standardwebhooks); }
check_logged "installs: standardwebhooks==$TB_STANDARDWEBHOOKS_VERSION in the tools venv" \
  "$TB_LOG_DIR/test-system/subscriptions-installs.log" subs_install || return 0
assert_eq "dispatch answers gRPC health on $SUBS_DISPATCH_ADDR" SERVING "$(grpc_health "$SUBS_DISPATCH_ADDR")"

rm -rf "$TB_LOG_DIR/test-system"/subscriptions-r*
mkdir -p "$SUBS_DIR"
check_logged "the example receiver's own tests (examples/webhook-receiver/test_receiver.py)" \
  "$SUBS_DIR/test_receiver.log" timeout 120 "$TB_TOOLS_PYTHON" "$TB_ROOT/examples/webhook-receiver/test_receiver.py"

SUBS_PID=""
SUBS_PORT=""
SUBS_SECRET=""
# Every name this area may have created: deleted on the way out, since a
# subscription left behind would go on retrying against a closed port.
SUBS_NAMES=("$SUBS_NAME" "$SUBS_NAME-nodelivery" "$SUBS_NAME-toobig")
subs_cleanup() {
  local n
  if [[ -n "$SUBS_PID" ]]; then
    kill "$SUBS_PID" 2>/dev/null
    wait "$SUBS_PID" 2>/dev/null
    SUBS_PID=""
  fi
  for n in "${SUBS_NAMES[@]}"; do
    gc -max-time 10 -d "$(jq -nc --arg n "$n" '{name: $n}')" "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/DeleteSubscription" >/dev/null 2>&1
  done
  SUBS_NAMES=()
}
subs_on_exit() {
  local rc=$?
  subs_cleanup
  run_prev_exit_trap SUBS_PREV "$rc"
  exit "$rc"
}
push_exit_trap SUBS_PREV subs_on_exit
# subs_end: cleanup and the traps put back; the area ends after it.
subs_end() {
  subs_cleanup
  pop_exit_trap SUBS_PREV
}

# The receiver starts without a secret (it refuses everything with 401) and
# gets the subscription's secret through /control once CreateSubscription has
# returned it: the URL, with the port the receiver picked, comes first.
: >"$SUBS_DIR/receiver.out"
"$TB_TOOLS_PYTHON" "$SUBS_RECEIVER" --port 0 --csv "$SUBS_CSV" --log "$SUBS_RX_LOG" --log-bodies --control \
  >"$SUBS_DIR/receiver.out" 2>&1 &
SUBS_PID=$!
subs_port() {
  SUBS_PORT=$(sed -n '1s|^listening on http://127\.0\.0\.1:\([0-9][0-9]*\) .*|\1|p' "$SUBS_DIR/receiver.out" 2>/dev/null)
  [[ -n "$SUBS_PORT" ]]
}
if poll 10 subs_port; then
  pass "the example receiver listens on 127.0.0.1:$SUBS_PORT (pid $SUBS_PID, log $SUBS_RX_LOG)"
else
  fail "the example receiver starts" "$(cat "$SUBS_DIR/receiver.out")"
  subs_end
  return 0
fi
SUBS_URL="http://127.0.0.1:$SUBS_PORT/hook"

# subs_control JSON: POST /control to the receiver (the JSON on stdin, never
# in a command line: it may hold a secret); prints the answer.
subs_control() {
  curl -fsS -m 5 -H 'content-type: application/json' --data-binary @- "http://127.0.0.1:$SUBS_PORT/control" <<<"$1"
}

# ---------------------------------------------------------------- helpers

# subs_json NAME: the subscription this area creates, as JSON.
subs_json() {
  jq -nc --arg n "$1" --arg s "$SUBS_SOURCE" --arg u "$SUBS_URL" '{name: $n,
    filter: {eventTypes: ["sub.match"], source: $s}, push: {url: $u},
    batch: {maxEvents: 10, maxWait: "1s"}, retry: {minBackoff: "0.2s", maxBackoff: "1s"}}'
}
subs_name_json() { jq -nc --arg n "$1" '{name: $n}'; }

# subs_publish TYPE USER ID...: one PublishBatch of events of TYPE by USER
# (the partition key) from this area's source, in the order given; checks
# that every event was accepted.
subs_publish() {
  local type=$1 user=$2 batch
  shift 2
  batch=$(jq -nc --arg t "$type" --arg u "$user" --arg s "$SUBS_SOURCE" \
    '{events: [$ARGS.positional | to_entries[] | {eventId: .value, eventType: $t, source: $s, userId: $u, payload: {n: .key}}]}' \
    --args "$@")
  subs_publish_json "$batch" "$#"
}
# subs_publish_json BATCH_JSON COUNT
subs_publish_json() {
  if gcall "$INGEST_ADDR" "$SUBS_INGEST/PublishBatch" "$1" && [[ "$(jq -r .accepted <<<"$GC_OUT")" == "$2" ]]; then
    pass "published $2 events ($(jq -r '[.events[].eventId] | "\(.[0]) .. \(.[-1])"' <<<"$1"))"
  else
    fail "published $2 events" "grpcurl exit $GC_RC" "$GC_ERR" "$GC_OUT"
  fi
}

# subs_ids PREFIX N: PREFIX-RUN-0 .. PREFIX-RUN-(N-1)
subs_ids() {
  local i
  for ((i = 0; i < $2; i++)); do printf '%s-%s-%02d\n' "$1" "$SUBS_RUN" "$i"; done
}
# subs_jarr STRING...: a JSON array of the strings.
subs_jarr() { jq -nc '$ARGS.positional' --args "$@"; }

# subs_log: the receiver's log of deliveries (not control requests) as one array.
subs_log() {
  jq -sc '[.[] | select(.path != "/control")]' "$SUBS_RX_LOG" 2>/dev/null || echo '[]'
}

# subs_missing ID...: prints the IDs no request answered 2xx carried.
subs_missing() {
  subs_log | jq -r '[.[] | select(.status >= 200 and .status < 300) | .event_ids[]] as $got
    | $ARGS.positional - $got | .[]' --args "$@"
}
subs_all_delivered() { [[ -z "$(subs_missing "$@")" ]]; }

# subs_seen ID...: prints the IDs any request (whatever its answer) carried.
subs_seen() {
  subs_log | jq -r '[.[] | .event_ids[]] as $got | $ARGS.positional - ($ARGS.positional - $got) | .[]' --args "$@"
}

# subs_wait_delivered NAME TIMEOUT ID...: passes when every ID arrived in a
# request answered 2xx within TIMEOUT s.
subs_wait_delivered() {
  local name=$1 timeout=$2 started=$SECONDS
  shift 2
  if poll "$timeout" subs_all_delivered "$@"; then
    pass "$name (after $((SECONDS - started)) s)"
  else
    fail "$name" "missing after ${timeout}s: $(subs_missing "$@" | tr '\n' ' ')" \
      "GetSubscription: $(gc -max-time 10 -d "$(subs_name_json "$SUBS_NAME")" "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/GetSubscription" 2>&1 | jq -c . 2>/dev/null)" \
      "receiver log (last 5, bodies left out):" "$(subs_log | jq -c '.[-5:][] | del(.body)')"
    return 1
  fi
}

# subs_metric_sum NAME LABEL...: the sum of dispatch's series of metric NAME
# whose labels hold every LABEL (e.g. 'result="filtered"'); fails when none.
subs_metric_sum() {
  local body name=$1
  shift
  body=$(curl -fsS --max-time 5 "$SUBS_METRICS_URL") || return 1
  awk -v name="$name" '
    BEGIN { for (i = 1; i < ARGC; i++) want[i] = ARGV[i]; n = ARGC - 1; ARGC = 1 }
    index($1, name "{") == 1 { ok = 1; for (i = 1; i <= n; i++) if (!index($1, want[i])) ok = 0; if (ok) { s += $2; f = 1 } }
    END { if (f) print s; else exit 1 }' "$@" <<<"$body"
}

# ---------------------------------------------------------------- a. management

section "subscriptions a: CreateSubscription, Get, List"

SUBS_CREATE=$(jq -nc --argjson s "$(subs_json "$SUBS_NAME")" '{subscription: $s}')
if ! expect_ok "CreateSubscription $SUBS_NAME (push to the receiver, eventTypes [sub.match], source $SUBS_SOURCE)" \
  "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/CreateSubscription" "$SUBS_CREATE"; then
  subs_end
  return 0
fi
SUBS_CREATED=$GC_OUT
SUBS_SECRET=$(jq -r '.secret // ""' <<<"$SUBS_CREATED")
# The secret goes to python through the environment, never a command line.
if SUBS_SECRET="$SUBS_SECRET" "$TB_TOOLS_PYTHON" -c '
import base64, os, re, sys
s = os.environ["SUBS_SECRET"]
sys.exit(0 if re.fullmatch(r"whsec_[A-Za-z0-9+/]+={0,2}", s) and len(base64.b64decode(s[6:])) == 32 else 1)'; then
  pass "the response holds the secret, whsec_ + base64 of 32 bytes"
else
  fail "the response holds the secret, whsec_ + base64 of 32 bytes" "secret: $(head -c 6 <<<"$SUBS_SECRET")... (${#SUBS_SECRET} characters)"
fi
assert_json "the created subscription: name, consumer group tributary.sub.<name>, ACTIVE, its filter, push URL, batch and retry" '
  def secs: rtrimstr("s") | tonumber;
  .subscription | .name == $n and .consumerGroup == "tributary.sub." + $n and .state == "SUBSCRIPTION_STATE_ACTIVE"
  and .paused == false and .filter.eventTypes == ["sub.match"] and .filter.source == $s and .push.url == $u
  and .batch.maxEvents == 10 and (.batch.maxWait | secs) == 1
  and (.retry.minBackoff | secs) == 0.2 and (.retry.maxBackoff | secs) == 1' \
  "$SUBS_CREATED" --arg n "$SUBS_NAME" --arg s "$SUBS_SOURCE" --arg u "$SUBS_URL"
assert_not_contains "the secret is only in .secret, not in the subscription" \
  "$(jq -c .subscription <<<"$SUBS_CREATED")" "${SUBS_SECRET:-whsec_}"

# The receiver verifies with the subscription's secret from now on.
if SUBS_OUT=$(subs_control "$(SUBS_SECRET="$SUBS_SECRET" jq -nc '{secrets: [env.SUBS_SECRET]}')") && [[ "$(jq -r .secrets <<<"$SUBS_OUT")" == 1 ]]; then
  pass "the receiver verifies with the subscription's secret (set through /control)"
else
  fail "the receiver verifies with the subscription's secret (set through /control)" "$SUBS_OUT"
fi

# "Create commits the group's start offsets before it returns."
if gcall "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/GetConsumerLag" "$(jq -nc --arg g "$SUBS_GROUP" '{group: $g}')"; then
  # (Not "lag 0": anything else publishing meanwhile would make that a race.)
  assert_json "its consumer group has committed start offsets on every partition of tributary.events" \
    '(.partitions | length) > 0 and all(.partitions[]; .hasCommittedOffset)' "$GC_OUT"
else
  fail "GetConsumerLag of $SUBS_GROUP right after CreateSubscription" "grpcurl exit $GC_RC" "$GC_ERR"
fi

expect_code "a second CreateSubscription with the same name is AlreadyExists" AlreadyExists \
  "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/CreateSubscription" "$SUBS_CREATE"
expect_code "a name that is not a valid name (upper case, space, !) is InvalidArgument" InvalidArgument \
  "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/CreateSubscription" \
  "$(jq -c '.subscription.name = "Not A Name!"' <<<"$SUBS_CREATE")"
expect_code "a subscription with neither push nor pull is InvalidArgument" InvalidArgument \
  "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/CreateSubscription" \
  "$(jq -c --arg n "$SUBS_NAME-nodelivery" '.subscription.name = $n | del(.subscription.push)' <<<"$SUBS_CREATE")"
expect_code "batch.maxEvents 5000 (over 1000) is InvalidArgument" InvalidArgument \
  "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/CreateSubscription" \
  "$(jq -c --arg n "$SUBS_NAME-toobig" '.subscription.name = $n | .subscription.batch.maxEvents = 5000' <<<"$SUBS_CREATE")"

if expect_ok "GetSubscription $SUBS_NAME" "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/GetSubscription" "$(subs_name_json "$SUBS_NAME")"; then
  assert_json "GetSubscription shows it as created (name, group, ACTIVE, push URL, batch)" \
    '.name == $n and .consumerGroup == "tributary.sub." + $n and .state == "SUBSCRIPTION_STATE_ACTIVE" and .push.url == $u and .batch.maxEvents == 10' \
    "$GC_OUT" --arg n "$SUBS_NAME" --arg u "$SUBS_URL"
  assert_not_contains "GetSubscription never shows a secret" "$GC_OUT" "whsec_"
fi

# ListSubscriptions, every page (other runs' subscriptions may be listed too).
subs_list_all() {
  local token="" page=0 all="[]" req
  while ((page < 50)); do
    req=$(jq -nc --arg t "$token" '{pageSize: 100} + (if $t == "" then {} else {pageToken: $t} end)')
    gcall "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/ListSubscriptions" "$req" || return 1
    all=$(jq -c --argjson a "$all" '$a + .subscriptions' <<<"$GC_OUT")
    token=$(jq -r '.nextPageToken // ""' <<<"$GC_OUT")
    [[ -n "$token" ]] || break
    page=$((page + 1))
  done
  printf '%s\n' "$all"
}
if SUBS_LIST=$(subs_list_all); then
  assert_json "ListSubscriptions lists it once, ACTIVE, with its consumer group" \
    '[.[] | select(.name == $n)] | length == 1 and .[0].state == "SUBSCRIPTION_STATE_ACTIVE" and .[0].consumerGroup == "tributary.sub." + $n' \
    "$SUBS_LIST" --arg n "$SUBS_NAME"
  assert_not_contains "ListSubscriptions never shows a secret" "$SUBS_LIST" "whsec_"
  assert_json "ListSubscriptions lists none of the refused ones" \
    '[.[] | select(.name == $a or .name == $b)] | length == 0' "$SUBS_LIST" \
    --arg a "$SUBS_NAME-nodelivery" --arg b "$SUBS_NAME-toobig"
else
  fail "ListSubscriptions" "grpcurl exit $GC_RC" "$GC_ERR"
fi

# ---------------------------------------------------------------- b. only matching events, batched

section "subscriptions b: 25 matching and 10 other events"

# Five users (partition keys), each with its 2 events of another type first
# and its 5 matching ones after them: once every matching event has arrived,
# dispatch has read past every other one on its partition, so "none of the
# others arrived" is a finding, not a race.
mapfile -t SUBS_MATCH < <(subs_ids subm 25)
mapfile -t SUBS_OTHER < <(subs_ids subo 10)
SUBS_BATCH=$(jq -nc --arg s "$SUBS_SOURCE" --argjson m "$(subs_jarr "${SUBS_MATCH[@]}")" \
  --argjson o "$(subs_jarr "${SUBS_OTHER[@]}")" '
  ($o | to_entries | map({eventId: .value, eventType: "sub.other", source: $s, userId: "u\(.key % 5)", payload: {n: .key}}))
  + ($m | to_entries | map({eventId: .value, eventType: "sub.match", source: $s, userId: "u\(.key % 5)", payload: {n: .key, form: "signup"}}))
  | {events: .}')
subs_publish_json "$SUBS_BATCH" 35
subs_wait_delivered "all 25 matching events arrived (each at least once) within 30 s" 30 "${SUBS_MATCH[@]}"

SUBS_LOG=$(subs_log)
assert_eq "none of the 10 events of another type arrived" "" "$(subs_seen "${SUBS_OTHER[@]}" | tr '\n' ' ')"
assert_json "every request carried only this run's matching events" \
  '[.[] | .event_ids[]] - $want | length == 0' "$SUBS_LOG" --argjson want "$(subs_jarr "${SUBS_MATCH[@]}")"
assert_json "every request verified with the subscription's secret ($(jq length <<<"$SUBS_LOG") requests)" \
  'length > 0 and all(.[]; .verified)' "$SUBS_LOG"
assert_json "no batch had more than maxEvents 10 events (sizes: $(jq -c 'map(.events)' <<<"$SUBS_LOG"))" \
  'length > 0 and all(.[]; .events >= 1 and .events <= 10)' "$SUBS_LOG"
assert_json "every request is a POST of application/json to the subscription's path" \
  'all(.[]; .path == "/hook" and (.content_type | startswith("application/json")))' "$SUBS_LOG"
assert_json "each body is {subscription: NAME, events: [StoredEvent]} with the event under .event, its partition and offset, no persistedAt" '
  all(.[]; .body | fromjson | .subscription == $n and all(.events[];
    .event.eventType == "sub.match" and .event.source == $s and (.event.eventId | type) == "string"
    and (.event.userId | test("^u[0-4]$")) and .event.payload.form == "signup" and (.event.occurredAt | type) == "string"
    and (.partition // 0 | type) == "number" and (.offset // 0 | tostring | test("^[0-9]+$")) and (.receivedAt | type) == "string"
    and .persistedAt == null))' "$SUBS_LOG" --arg n "$SUBS_NAME" --arg s "$SUBS_SOURCE"
# (By first arrival: at least once allows a later duplicate.)
assert_json "each user's events first arrived in the order published (per partition key)" '
  [sort_by(.time)[] | select(.status >= 200 and .status < 300) | .body | fromjson | .events[].event | {u: .userId, n: .payload.n}]
  | group_by(.u) | all(.[]; reduce (.[] | .n) as $x ([]; if any(.[]; . == $x) then . else . + [$x] end) | . == sort)' "$SUBS_LOG"
# The CSV of the receiver: each matching event once (it deduplicates by event_id).
assert_eq "the receiver's CSV holds each of the 25 once, as sub.match rows" "25 25 sub.match" \
  "$("$TB_TOOLS_PYTHON" -c '
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["event_id"] in set(sys.argv[2:])]
print(len(rows), len({r["event_id"] for r in rows}), ",".join(sorted({r["event_type"] for r in rows})))' "$SUBS_CSV" "${SUBS_MATCH[@]}" 2>&1)"

subs_metrics_counted() {
  local delivered filtered
  delivered=$(subs_metric_sum tributary_subscription_events_total "subscription=\"$SUBS_NAME\"" 'result="delivered"') &&
    filtered=$(subs_metric_sum tributary_subscription_events_total "subscription=\"$SUBS_NAME\"" 'result="filtered"') &&
    SUBS_COUNTED="delivered $delivered, filtered $filtered" &&
    awk -v d="$delivered" -v f="$filtered" 'BEGIN { exit !(d >= 25 && f >= 10) }'
}
SUBS_COUNTED="(no series)"
if poll 10 subs_metrics_counted; then
  pass "dispatch counts them: tributary_subscription_events_total{subscription=$SUBS_NAME} $SUBS_COUNTED (>= 25, >= 10)"
else
  fail "dispatch counts them: tributary_subscription_events_total{subscription=$SUBS_NAME} delivered >= 25, filtered >= 10" \
    "found: $SUBS_COUNTED" "$(curl -fsS --max-time 5 "$SUBS_METRICS_URL" 2>&1 | grep -F "$SUBS_NAME" | head -n 20)"
fi

# ---------------------------------------------------------------- c. signatures

section "subscriptions c: signatures (standardwebhooks)"

# Each logged request verified again from its raw body and headers, with the
# reference library: with the secret it verifies, with another it fails.
SUBS_VERIFY=$(SUBS_SECRET="$SUBS_SECRET" "$TB_TOOLS_PYTHON" -c '
import base64, json, os, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
good = Webhook(os.environ["SUBS_SECRET"])
other = Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode())
out = {"requests": 0, "failed_with_secret": [], "verified_with_other": 0}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["path"] == "/control":
        continue
    h = {"webhook-id": e["webhook_id"], "webhook-timestamp": e["webhook_timestamp"], "webhook-signature": e["webhook_signature"]}
    out["requests"] += 1
    try:
        good.verify(e["body"], h)
    except WebhookVerificationError as x:
        out["failed_with_secret"].append("%s: %s" % (e["webhook_id"], x))
    try:
        other.verify(e["body"], h)
        out["verified_with_other"] += 1
    except WebhookVerificationError:
        pass
print(json.dumps(out))' "$SUBS_RX_LOG" 2>&1)
assert_json "every logged request verifies with the secret (standardwebhooks Webhook.verify)" \
  '.requests > 0 and .failed_with_secret == []' "$SUBS_VERIFY"
assert_json "no logged request verifies with another secret" '.requests > 0 and .verified_with_other == 0' "$SUBS_VERIFY"
assert_json "the headers: webhook-id set, webhook-timestamp within 5 s of arrival, webhook-signature v1,<base64>" '
  all(.[]; (.webhook_id | length) > 0 and ((.webhook_timestamp | tonumber) - .time | fabs) <= 5
    and (.webhook_signature | test("^v1,[A-Za-z0-9+/]{43}=( v1,[A-Za-z0-9+/]{43}=)*$")))' "$SUBS_LOG"

# ---------------------------------------------------------------- d. retries

section "subscriptions d: 500 three times, then 200"

SUBS_MARK=$(subs_log | jq length)
if SUBS_OUT=$(subs_control '{"fail": 3, "status": 500}') && [[ "$(jq -r .fail <<<"$SUBS_OUT")" == 3 ]]; then
  pass "the receiver will answer the next 3 deliveries 500"
else
  fail "the receiver will answer the next 3 deliveries 500 (/control)" "$SUBS_OUT"
fi
# One user: one partition, so the batch that meets the three failures holds
# the later events back (order per key) and gets all three.
mapfile -t SUBS_RETRY < <(subs_ids subr 5)
subs_publish sub.match ur "${SUBS_RETRY[@]}"
subs_wait_delivered "all 5 arrived despite three 500s" 30 "${SUBS_RETRY[@]}"
SUBS_NEW=$(subs_log | jq -c --argjson m "$SUBS_MARK" '.[$m:]')
SUBS_FAILED_IDS=$(jq -c '[.[] | select(.status == 500) | .webhook_id] | unique' <<<"$SUBS_NEW")
assert_json "exactly three requests were answered 500, all attempts of one batch (webhook-ids $SUBS_FAILED_IDS)" \
  '[.[] | select(.status == 500)] | length == 3 and (map(.webhook_id) | unique | length) == 1' "$SUBS_NEW"
SUBS_W=$(jq -r '.[0] // ""' <<<"$SUBS_FAILED_IDS")
SUBS_ATTEMPTS=$(jq -c --arg w "$SUBS_W" '[.[] | select(.webhook_id == $w)] | sort_by(.time)' <<<"$SUBS_NEW")
assert_json "the batch was attempted at least 4 times under one webhook-id, the last answered 200 ($(jq -c 'map(.status)' <<<"$SUBS_ATTEMPTS"))" \
  'length >= 4 and .[-1].status == 200 and (.[:-1] | all(.[]; .status == 500))' "$SUBS_ATTEMPTS"
assert_json "every attempt carried the same events, verified, with a fresh webhook-timestamp" '
  length >= 2 and (map(.event_ids) | unique | length) == 1 and all(.[]; .verified)
  and all(.[]; ((.webhook_timestamp | tonumber) - .time | fabs) <= 5)' "$SUBS_ATTEMPTS"
assert_json "the attempts were spaced between minBackoff 0.2 s and maxBackoff 1 s (+2 s slack) (gaps $(jq -c '[range(1; length) as $i | (.[$i].time - .[$i - 1].time) * 100 | round / 100]' <<<"$SUBS_ATTEMPTS" 2>/dev/null))" \
  'length >= 2 and ([range(1; length) as $i | .[$i].time - .[$i - 1].time] | all(.[]; . >= 0.2 and . <= 3))' "$SUBS_ATTEMPTS"

# ---------------------------------------------------------------- e. 429 + Retry-After

section "subscriptions e: 429 with Retry-After: 2"

SUBS_MARK=$(subs_log | jq length)
if SUBS_OUT=$(subs_control '{"fail": 1, "status": 429, "retry_after": 2}') && [[ "$(jq -r '"\(.fail) \(.status) \(.retry_after)"' <<<"$SUBS_OUT")" == "1 429 2" ]]; then
  pass "the receiver will answer the next delivery 429 with Retry-After: 2"
else
  fail "the receiver will answer the next delivery 429 with Retry-After: 2 (/control)" "$SUBS_OUT"
fi
mapfile -t SUBS_THROTTLED < <(subs_ids subt 3)
subs_publish sub.match ut "${SUBS_THROTTLED[@]}"
subs_wait_delivered "all 3 arrived after the 429" 30 "${SUBS_THROTTLED[@]}"
SUBS_NEW=$(subs_log | jq -c --argjson m "$SUBS_MARK" '.[$m:]')
SUBS_GAP=$(jq -c '([.[] | select(.status == 429)] | first) as $t
  | if $t == null then "no 429" else
      ([.[] | select(.webhook_id == $t.webhook_id and .time > $t.time)] | sort_by(.time) | first) as $n
      | if $n == null then "no attempt after the 429" else $n.time - $t.time end end' <<<"$SUBS_NEW")
assert_json "the next attempt of that batch came at least 2 s after the 429 (after $SUBS_GAP s)" \
  'type == "number" and . >= 2' "$SUBS_GAP"

# ---------------------------------------------------------------- f. pause and resume

section "subscriptions f: pause and resume"

# grpcurl 1.8.6 reads a FieldMask only in its message form ({"paths": [...]});
# the proto3 JSON string form ("paused") is what other clients send.
subs_update_paused() { # true|false
  gcall "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/UpdateSubscription" \
    "$(jq -nc --arg n "$SUBS_NAME" --argjson p "$1" '{subscription: {name: $n, paused: $p}, updateMask: {paths: ["paused"]}}')"
}
if subs_update_paused true; then
  pass "UpdateSubscription paused=true (updateMask paused)"
  assert_json "the update answers PAUSED and keeps what the mask did not name (filter, push URL, batch, retry)" '
    .subscription | .state == "SUBSCRIPTION_STATE_PAUSED" and .paused == true and .push.url == $u
    and .filter.eventTypes == ["sub.match"] and .filter.source == $s and .batch.maxEvents == 10
    and (.retry.maxBackoff | rtrimstr("s") | tonumber) == 1' "$GC_OUT" --arg u "$SUBS_URL" --arg s "$SUBS_SOURCE"
else
  fail "UpdateSubscription paused=true (updateMask paused)" "grpcurl exit $GC_RC" "$GC_ERR"
fi
gcall "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/GetSubscription" "$(subs_name_json "$SUBS_NAME")"
assert_json "GetSubscription says PAUSED" '.state == "SUBSCRIPTION_STATE_PAUSED" and .paused == true' "${GC_OUT:-null}"

mapfile -t SUBS_PAUSED < <(subs_ids subp 5)
SUBS_T0=$SECONDS
subs_publish sub.match up "${SUBS_PAUSED[@]}"
# The pipeline is alive (the processor stored them) while dispatch holds back.
if wait_persisted "${SUBS_PAUSED[-1]}" 20 >/dev/null; then
  pass "the processor stored the events published while paused"
else
  fail "the processor stored the events published while paused" "$GC_ERR"
fi
sleep $((SUBS_T0 + 5 - SECONDS > 0 ? SUBS_T0 + 5 - SECONDS : 0))
assert_eq "nothing arrived in the 5 s while paused" "" "$(subs_seen "${SUBS_PAUSED[@]}" | tr '\n' ' ')"

if subs_update_paused false; then
  pass "UpdateSubscription paused=false"
  assert_json "the update answers ACTIVE" '.subscription.state == "SUBSCRIPTION_STATE_ACTIVE" and .subscription.paused == false' "$GC_OUT"
else
  fail "UpdateSubscription paused=false" "grpcurl exit $GC_RC" "$GC_ERR"
fi
subs_wait_delivered "resumed: the 5 held back arrived within 30 s" 30 "${SUBS_PAUSED[@]}"

# ---------------------------------------------------------------- g. delete

section "subscriptions g: delete"

expect_ok "DeleteSubscription $SUBS_NAME" "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/DeleteSubscription" "$(subs_name_json "$SUBS_NAME")"
expect_code "GetSubscription after the delete is NotFound" NotFound \
  "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/GetSubscription" "$(subs_name_json "$SUBS_NAME")"
if SUBS_LIST=$(subs_list_all); then
  assert_json "ListSubscriptions no longer lists it" '[.[] | select(.name == $n)] | length == 0' "$SUBS_LIST" --arg n "$SUBS_NAME"
else
  fail "ListSubscriptions after the delete" "grpcurl exit $GC_RC" "$GC_ERR"
fi
subs_group_gone() {
  gcall "$SUBS_ADMIN_ADDR" "$SUBS_ADMIN/ListConsumerGroups" '{}' &&
    jq -e --arg g "$SUBS_GROUP" '[.groups[] | select(.group == $g)] | length == 0' <<<"$GC_OUT" >/dev/null
}
if poll 10 subs_group_gone; then
  pass "its consumer group $SUBS_GROUP is gone (the cursor is forgotten)"
else
  fail "its consumer group $SUBS_GROUP is gone (the cursor is forgotten)" \
    "$(jq -c --arg g "$SUBS_GROUP" '[.groups[]? | select(.group == $g)]' <<<"$GC_OUT" 2>&1)" "$GC_ERR"
fi

mapfile -t SUBS_DELETED < <(subs_ids subd 3)
SUBS_T0=$SECONDS
subs_publish sub.match ud "${SUBS_DELETED[@]}"
if wait_persisted "${SUBS_DELETED[-1]}" 20 >/dev/null; then
  pass "the processor stored the events published after the delete"
else
  fail "the processor stored the events published after the delete" "$GC_ERR"
fi
sleep $((SUBS_T0 + 5 - SECONDS > 0 ? SUBS_T0 + 5 - SECONDS : 0))
assert_eq "none of them arrived in 5 s" "" "$(subs_seen "${SUBS_DELETED[@]}" | tr '\n' ' ')"

# Over the whole run: only this run's matching events, each at least once.
SUBS_LOG=$(subs_log)
assert_json "over the whole run: every event that arrived was one published to match, before the delete" \
  '[.[] | .event_ids[]] - $want | length == 0' "$SUBS_LOG" \
  --argjson want "$(subs_jarr "${SUBS_MATCH[@]}" "${SUBS_RETRY[@]}" "${SUBS_THROTTLED[@]}" "${SUBS_PAUSED[@]}")"
assert_json "over the whole run: every request verified, none over 10 events ($(jq length <<<"$SUBS_LOG") requests)" \
  'all(.[]; .verified and .events <= 10)' "$SUBS_LOG"

subs_end
