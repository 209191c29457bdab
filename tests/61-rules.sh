# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# Threshold rules, end to end with grpcurl: CreateRule validates its input;
# the processor evaluates each stored event of the rule's type (per event),
# records one alert per event and rule however often the event arrives,
# counts it in tributary_rule_alerts_total{rule} and POSTs it to the rule's
# webhook (a real HTTP server on loopback here); DeleteRule retires the rule.
# Sourced by test-system.sh (tests/lib.sh is loaded).

ADMIN=tributary.v1.AdminService
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:50053}
RULE_RUN=$(tr '[:upper:]' '[:lower:]' <<<"$T_RUN_ID")
RULE_TYPE="rule.check.$RULE_RUN"
RULE_NAME="big-order-$RULE_RUN"

section "threshold rules"

rule_json() { # NAME COMPARATOR THRESHOLD_JSON [WEBHOOK]
  jq -nc --arg n "$1" --arg t "$RULE_TYPE" --arg c "$2" --argjson th "$3" --arg w "${4:-}" \
    '{name: $n, eventType: $t, path: "/amount", comparator: $c, threshold: $th, webhookUrl: $w}'
}

expect_code "CreateRule without a comparator is InvalidArgument" InvalidArgument "$ADMIN_ADDR" "$ADMIN/CreateRule" \
  "$(jq -nc --arg t "$RULE_TYPE" '{name: "x", eventType: $t, path: "/amount", threshold: 1}')"
expect_code "CreateRule with a path that is not a JSON Pointer is InvalidArgument" InvalidArgument "$ADMIN_ADDR" "$ADMIN/CreateRule" \
  "$(jq -nc --arg t "$RULE_TYPE" '{name: "x", eventType: $t, path: "amount", comparator: "COMPARATOR_GT", threshold: 1}')"
expect_code "an ordering rule with an object threshold is InvalidArgument" InvalidArgument "$ADMIN_ADDR" "$ADMIN/CreateRule" \
  "$(rule_json x COMPARATOR_GT '{"a":1}')"
expect_code "an https webhook is InvalidArgument (webhooks are http:// only)" InvalidArgument "$ADMIN_ADDR" "$ADMIN/CreateRule" \
  "$(rule_json x COMPARATOR_GT 1 https://example.invalid/hook)"

# A real webhook receiver on a free loopback port, recording each POST body.
HOOK_DIR=$(mktemp -d)
HOOK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$HOOK_PORT" "$HOOK_DIR/bodies" >"$HOOK_DIR/log" 2>&1 <<'PY' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
HOOK_PID=$!

RULE_ID=""
if expect_ok "CreateRule amount > 100 with a webhook" "$ADMIN_ADDR" "$ADMIN/CreateRule" \
  "$(rule_json "$RULE_NAME" COMPARATOR_GT 100 "http://127.0.0.1:$HOOK_PORT/alerts")"; then
  RULE_ID=$(jq -r '.ruleId' <<<"$GC_OUT")
  assert_eq "the rule reads back as created" "$RULE_TYPE /amount COMPARATOR_GT 100" \
    "$(jq -r '"\(.eventType) \(.path) \(.comparator) \(.threshold)"' <<<"$GC_OUT")"
fi

# The processor reloads rules every 5 s; its counter series for the rule
# appears (at 0) when it has loaded it.
rule_loaded() { curl -fsS --max-time 5 http://127.0.0.1:9602/metrics | grep -q "tributary_rule_alerts_total{rule=\"$RULE_NAME\"}"; }
if poll 20 rule_loaded; then
  pass "the processor loaded the rule (its counter series exists)"
else
  fail "the processor loaded the rule (its counter series exists)"
fi

batch=$(jq -nc --arg t "$RULE_TYPE" --arg r "$RULE_RUN" '{events: [
  {eventId: "hi-\($r)", eventType: $t, payload: {amount: 150}},
  {eventId: "lo-\($r)", eventType: $t, payload: {amount: 50}},
  {eventId: "edge-\($r)", eventType: $t, payload: {amount: 100}},
  {eventId: "other-\($r)", eventType: "rule.other", payload: {amount: 500}}]}')
expect_ok "publish events above, below and at the threshold, and of another type" \
  "$INGEST_ADDR" tributary.v1.IngestService/PublishBatch "$batch"
wait_persisted "other-$RULE_RUN" 30 >/dev/null || true

alerts_for_rule() {
  gcall "$ADMIN_ADDR" "$ADMIN/ListAlerts" "$(jq -nc --arg r "$RULE_ID" '{ruleId: $r}')" &&
    [[ "$(jq '.alerts | length' <<<"$GC_OUT")" -ge 1 ]]
}
if poll 20 alerts_for_rule; then
  assert_eq "the rule fired for the matching event only" "hi-$RULE_RUN 150" \
    "$(jq -r '[.alerts[] | "\(.eventId) \(.observed)"] | join(",")' <<<"$GC_OUT")"
else
  fail "the rule fired for the matching event" "$GC_OUT" "$GC_ERR"
fi

# The same event again (a client retry): still one alert.
expect_ok "publish the matching event again (same eventId)" "$INGEST_ADDR" tributary.v1.IngestService/Publish \
  "$(jq -nc --arg t "$RULE_TYPE" --arg r "$RULE_RUN" '{event: {eventId: "hi-\($r)", eventType: $t, payload: {amount: 150}}}')"
expect_ok "publish a later event as a marker" "$INGEST_ADDR" tributary.v1.IngestService/Publish \
  "$(jq -nc --arg r "$RULE_RUN" '{event: {eventId: "marker-\($r)", eventType: "rule.other"}}')"
wait_persisted "marker-$RULE_RUN" 30 >/dev/null || true
gcall "$ADMIN_ADDR" "$ADMIN/ListAlerts" "$(jq -nc --arg r "$RULE_ID" '{ruleId: $r}')"
assert_eq "a redelivered event raises no second alert" 1 "$(jq '.alerts | length' <<<"$GC_OUT")"
assert_match "the processor counted the alert under the rule's name" \
  "tributary_rule_alerts_total\\{rule=\"$RULE_NAME\"\\} 1" "$(curl -fsS --max-time 5 http://127.0.0.1:9602/metrics)"

webhook_delivered() {
  gcall "$ADMIN_ADDR" "$ADMIN/ListAlerts" "$(jq -nc --arg r "$RULE_ID" '{ruleId: $r}')" &&
    [[ "$(jq -r '.alerts[0].webhookStatus' <<<"$GC_OUT")" == delivered ]]
}
if poll 20 webhook_delivered; then
  pass "the alert's webhook was delivered"
  assert_eq "the webhook received the alert once, naming the event" "1 hi-$RULE_RUN 150" \
    "$(jq -rs '"\(length) \(.[0].event_id) \(.[0].observed)"' "$HOOK_DIR/bodies" 2>&1)"
else
  fail "the alert's webhook was delivered" "$GC_OUT" "$(cat "$HOOK_DIR/log" 2>/dev/null)"
fi
kill "$HOOK_PID" 2>/dev/null
wait "$HOOK_PID" 2>/dev/null
rm -rf "$HOOK_DIR"

if [[ -n "$RULE_ID" ]]; then
  expect_ok "DeleteRule" "$ADMIN_ADDR" "$ADMIN/DeleteRule" "$(jq -nc --arg r "$RULE_ID" '{ruleId: $r}')"
  gcall "$ADMIN_ADDR" "$ADMIN/ListRules" "$(jq -nc --arg t "$RULE_TYPE" '{eventType: $t}')"
  assert_eq "a deleted rule is no longer listed" 0 "$(jq '.rules | length' <<<"$GC_OUT")"
  expect_code "deleting it again is NotFound" NotFound "$ADMIN_ADDR" "$ADMIN/DeleteRule" \
    "$(jq -nc --arg r "$RULE_ID" '{ruleId: $r}')"
fi
