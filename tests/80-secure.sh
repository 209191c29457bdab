# shellcheck shell=bash disable=SC2016,SC2034
# (SC2016: the single-quoted $names are jq variables; SC2034: GC_FLAGS and
# GC_KEY are read by tests/lib.sh.)
# The secure deployment, end to end: stops the running deployment, runs
# `./deploy.sh up --secure`, checks it with grpcurl, openssl, psql and the
# services' own clients, then puts back the mode it found (also when cut
# short). Never skipped.
#
#   TLS on every gRPC port (plaintext refused, -cacert works, admin's mutual
#   TLS refuses a client without a certificate); API keys (none, garbage,
#   expired and revoked keys UNAUTHENTICATED, revocation on every service
#   within 5 s; a missing scope PERMISSION_DENIED; a key over its rate
#   RESOURCE_EXHAUSTED with RetryInfo); SASL_SSL to the broker and
#   verify-full TLS to PostgreSQL (pg_stat_ssl; a wrong CA refused); a
#   certificate replaced on disk served to new connections within 10 s
#   while an open TailEvents stream keeps flowing; webhooks to internal
#   addresses refused (literal addresses at CreateRule, names at connect
#   time, redirects never followed); a call past its deadline leaves no
#   statement in pg_stat_activity a second later; no secret in any log, in
#   /metrics or in the traces.
# Sourced by test-system.sh (tests/lib.sh is loaded).

SEC_TLS="$TB_STATE_DIR/tls"
SEC_SECRETS="$TB_STATE_DIR/secrets"
SEC_RUN=$(tr '[:upper:]' '[:lower:]' <<<"$T_RUN_ID")
SEC_WORK=$(mktemp -d)
SEC_HOOK_PIDS=()
SEC_ADMIN=127.0.0.1:50053
SEC_PROCESSOR=127.0.0.1:50054
SEC_DISPATCH=127.0.0.1:50055
# The allowed webhook receiver listens on 127.0.0.2 (still loopback): the
# deployment allows exactly that address, so "localhost" stays refused.
SEC_HOOK_HOST=127.0.0.2
ADMIN=tributary.v1.AdminService

section "secure mode: ./deploy.sh up --secure"

sec_mode() { ./deploy.sh status 2>/dev/null | sed -n 's/^options: .* mode=\([a-z]*\).*/\1/p'; }
SEC_MODE_BEFORE=$(sec_mode)
SEC_RUNNING_BEFORE=0
[[ "$(./deploy.sh status --porcelain 2>/dev/null | awk '$1 == "ingest" {print $2}')" == running ]] && SEC_RUNNING_BEFORE=1

# sec_put_back: stops what the area started and puts back the deployment
# it found (plain or secure; or none). Prints what it did.
sec_put_back() {
  ((${#SEC_HOOK_PIDS[@]})) && kill "${SEC_HOOK_PIDS[@]}" 2>/dev/null
  [[ -n "${SEC_TAIL_PID:-}" ]] && kill "$SEC_TAIL_PID" 2>/dev/null
  [[ -n "${SEC_LOCK_PID:-}" ]] && kill "$SEC_LOCK_PID" 2>/dev/null
  SEC_HOOK_PIDS=() SEC_TAIL_PID="" SEC_LOCK_PID=""
  GC_FLAGS=(-plaintext)
  GC_KEY=""
  ./deploy.sh down >/dev/null 2>&1 || return 1
  if ((SEC_RUNNING_BEFORE)); then
    if [[ "$SEC_MODE_BEFORE" == secure ]]; then
      ./deploy.sh up --secure --no-build >/dev/null 2>&1 || return 1
    else
      ./deploy.sh up --no-build >/dev/null 2>&1 || return 1
    fi
  fi
  rm -rf "$SEC_WORK"
}
# Cut short (an error, Ctrl-C): put it back all the same, then run the
# traps test-system.sh had set.
sec_on_exit() {
  local rc=$?
  printf 'putting back the deployment the secure area found\n' >&2
  sec_put_back
  run_prev_exit_trap SEC_PREV "$rc"
  exit "$rc"
}
sec_untrap() { pop_exit_trap SEC_PREV; }
push_exit_trap SEC_PREV sec_on_exit

check "deploy.sh down" ./deploy.sh down
SEC_UP_STARTED=$SECONDS
SEC_UP=0
check_logged "deploy.sh up --secure" "$TB_LOG_DIR/test-system/deploy-secure.log" \
  env TRIBUTARY_WEBHOOK_ALLOW_CIDR="$SEC_HOOK_HOST/32" ./deploy.sh up --secure --no-build && SEC_UP=1
if ((SEC_UP == 0)); then
  fail "the secure checks ran" "deploy.sh up --secure failed (see above)"
  sec_put_back || fail "the deployment found is back"
  sec_untrap
else

printf '      (up --secure took %ss)\n' "$((SECONDS - SEC_UP_STARTED))"
assert_eq "deploy.sh status says mode=secure" secure "$(sec_mode)"
SEC_BOOTSTRAP=$(cat "$SEC_SECRETS/admin.key")
SEC_PG_PASSWORD=$(cat "$SEC_SECRETS/pg.password")
SEC_KAFKA_PASSWORD=$(cat "$SEC_SECRETS/kafka.password")
assert_eq "the bootstrap key and secrets are readable by their owner only" "600 600 600" \
  "$(stat -c %a "$SEC_SECRETS/admin.key" "$SEC_SECRETS/pg.password" "$SEC_SECRETS/kafka.password" | tr '\n' ' ' | sed 's/ $//')"

SEC_CLIENT=(-cert "$SEC_TLS/client.pem" -key "$SEC_TLS/client.key")
GC_FLAGS=(-cacert "$SEC_TLS/ca.pem" "${SEC_CLIENT[@]}")

# ---------------------------------------------------------------- TLS edges
section "secure mode: TLS on every gRPC port"

for addr in "$INGEST_ADDR" "$QUERY_ADDR" "$SEC_ADMIN" "$SEC_PROCESSOR"; do
  if "$TB_GRPCURL" -plaintext -max-time 3 "$addr" grpc.health.v1.Health/Check >/dev/null 2>&1; then
    fail "plaintext is refused on $addr"
  else
    pass "plaintext is refused on $addr"
  fi
done
for addr in "$INGEST_ADDR" "$QUERY_ADDR" "$SEC_PROCESSOR"; do
  assert_contains "-cacert reaches $addr (health SERVING)" \
    "$("$TB_GRPCURL" -cacert "$SEC_TLS/ca.pem" -max-time 5 "$addr" grpc.health.v1.Health/Check 2>&1)" SERVING
done
assert_contains "reflection answers over TLS without a key" \
  "$("$TB_GRPCURL" -cacert "$SEC_TLS/ca.pem" -max-time 5 "$INGEST_ADDR" list 2>&1)" tributary.v1.IngestService
if "$TB_GRPCURL" -cacert "$SEC_TLS/ca.pem" -max-time 5 "$SEC_ADMIN" grpc.health.v1.Health/Check >"$SEC_WORK/nocert" 2>&1; then
  fail "admin's mutual TLS refuses a client without a certificate" "$(cat "$SEC_WORK/nocert")"
else
  pass "admin's mutual TLS refuses a client without a certificate"
fi
assert_contains "admin answers a client with a certificate of the CA" \
  "$("$TB_GRPCURL" -cacert "$SEC_TLS/ca.pem" "${SEC_CLIENT[@]}" -max-time 5 "$SEC_ADMIN" grpc.health.v1.Health/Check 2>&1)" SERVING
if openssl s_client -connect "$INGEST_ADDR" -CAfile "$SEC_TLS/ca.pem" -verify_return_error </dev/null >"$SEC_WORK/s_client" 2>&1 &&
  grep -q 'Verify return code: 0 (ok)' "$SEC_WORK/s_client"; then
  pass "openssl verifies ingest's certificate against the local CA"
else
  fail "openssl verifies ingest's certificate against the local CA" "$(tail -5 "$SEC_WORK/s_client")"
fi
assert_eq "the HTTP port stays plaintext (/ready 200)" 200 "$(http_status "http://127.0.0.1:9601/ready")"
assert_not_contains "/ready gives no auth-off warning" "$(curl -s -m 3 http://127.0.0.1:9601/ready)" "auth is off"

# ---------------------------------------------------------------- API keys
section "secure mode: API keys and scopes"

Q_METHOD=tributary.v1.QueryService/ListEvents
I_METHOD=tributary.v1.IngestService/Publish
publish_json() { jq -nc --arg id "$1" --arg u "$2" '{event: {eventId: $id, eventType: "secure.check", userId: $u, payload: {n: 1}}}'; }

GC_KEY=""
expect_code "no key: Publish is Unauthenticated" Unauthenticated "$INGEST_ADDR" "$I_METHOD" "$(publish_json "nokey-$SEC_RUN" u)"
expect_code "no key: ListEvents is Unauthenticated" Unauthenticated "$QUERY_ADDR" "$Q_METHOD" '{}'
expect_code "no key: ListTopics is Unauthenticated" Unauthenticated "$SEC_ADMIN" "$ADMIN/ListTopics" '{}'
GC_KEY="garbage"
expect_code "a garbage key is Unauthenticated" Unauthenticated "$QUERY_ADDR" "$Q_METHOD" '{}'
GC_KEY="trb_${SEC_BOOTSTRAP:4:12}_0123456789abcdefghijklmnopqrstuv"
expect_code "the bootstrap key's id with a wrong secret is Unauthenticated" Unauthenticated "$QUERY_ADDR" "$Q_METHOD" '{}'

# new_key NAME SCOPES_JSON [EXTRA_JSON]: creates a key with the bootstrap
# key; prints the whole key (the secret, shown once).
new_key() {
  local request extra=${3:-'{}'}
  request=$(jq -nc --arg n "$1-$SEC_RUN" --argjson s "$2" --argjson x "$extra" '{name: $n, scopes: $s} + $x')
  GC_KEY=$SEC_BOOTSTRAP
  if gcall "$SEC_ADMIN" "$ADMIN/CreateApiKey" "$request"; then
    jq -r '.secret' <<<"$GC_OUT"
  else
    printf 'create-failed\n'
    printf '%s\n' "$GC_ERR" >&2
  fi
}
SEC_READER=$(new_key reader '["query:read"]')
SEC_WRITER=$(new_key writer '["ingest:write"]')
SEC_OPERATOR=$(new_key operator '["admin:write"]')
SEC_EVERY=$(new_key everything '["ingest:write","query:read","admin:write","subscriptions:pull"]')
SEC_SLOW=$(new_key slow '["query:read"]' '{"rateLimit": {"perSecond": 1, "burst": 1}}')
SEC_EXPIRES_AT=$(date -u -d '+4 seconds' +%Y-%m-%dT%H:%M:%SZ)
SEC_EXPIRING=$(new_key expiring '["query:read"]' "$(jq -nc --arg t "$SEC_EXPIRES_AT" '{expiresAt: $t}')")
assert_match "CreateApiKey returns each key once, trb_<id>_<secret>" '^trb_[a-z0-9]{12}_[A-Za-z0-9]{32}$' "$SEC_READER"
GC_KEY=$SEC_BOOTSTRAP
gcall "$SEC_ADMIN" "$ADMIN/ListApiKeys" '{"pageSize": 1000}'
assert_not_contains "ListApiKeys shows no secret" "$GC_OUT" "${SEC_READER:17}"

GC_KEY=$SEC_READER
expect_ok "a query:read key may ListEvents" "$QUERY_ADDR" "$Q_METHOD" '{"pageSize": 1}'
expect_code "a query:read key may not Publish" PermissionDenied "$INGEST_ADDR" "$I_METHOD" "$(publish_json "reader-$SEC_RUN" u)"
expect_code "a query:read key may not ResetOffsets" PermissionDenied "$SEC_ADMIN" "$ADMIN/ResetOffsets" \
  "$(jq -nc --arg g "secure-check-$SEC_RUN" '{group: $g, latest: true}')"
expect_code "a query:read key may not Pull a subscription" PermissionDenied "$SEC_DISPATCH" \
  tributary.v1.SubscriberService/Pull "$(jq -nc --arg s "secure-$SEC_RUN" '{subscription: $s}')"
GC_KEY=$SEC_EVERY
expect_code "a subscriptions:pull key reaches Pull over TLS (NotFound: no such subscription)" NotFound "$SEC_DISPATCH" \
  tributary.v1.SubscriberService/Pull "$(jq -nc --arg s "secure-$SEC_RUN" '{subscription: $s}')"
GC_KEY=$SEC_WRITER
expect_ok "an ingest:write key may Publish" "$INGEST_ADDR" "$I_METHOD" "$(publish_json "writer-$SEC_RUN" "secure-$SEC_RUN")"
GC_KEY=$SEC_OPERATOR
expect_ok "an admin:write key may ResetOffsets" "$SEC_ADMIN" "$ADMIN/ResetOffsets" \
  "$(jq -nc --arg g "secure-check-$SEC_RUN" '{group: $g, latest: true}')"
expect_ok "admin:write implies admin:read (ListTopics)" "$SEC_ADMIN" "$ADMIN/ListTopics" '{}'
GC_KEY=$SEC_SLOW
expect_ok "a key of 1 call/s: the first call passes" "$QUERY_ADDR" "$Q_METHOD" '{"pageSize": 1}'
if expect_code "the second at once is ResourceExhausted" ResourceExhausted "$QUERY_ADDR" "$Q_METHOD" '{"pageSize": 1}'; then
  assert_contains "with google.rpc.RetryInfo saying when to come back" "$GC_ERR" "google.rpc.RetryInfo"
fi
GC_KEY=$SEC_EXPIRING
expect_ok "a key before its expires_at works" "$QUERY_ADDR" "$Q_METHOD" '{"pageSize": 1}'
expired() { gcall "$QUERY_ADDR" "$Q_METHOD" '{"pageSize": 1}'; [[ "$GC_ERR" == *"Code: Unauthenticated"* ]]; }
if poll 10 expired; then pass "after its expires_at it is Unauthenticated"; else fail "after its expires_at it is Unauthenticated" "$GC_ERR"; fi

# Revocation, on every service: the key works on each, then is refused on
# each within 5 s. The processor serves no method of its own; a valid key
# reaches tonic there (Unimplemented), a revoked one does not.
GC_KEY=$SEC_EVERY
expect_ok "the key works on ingest" "$INGEST_ADDR" "$I_METHOD" "$(publish_json "every-$SEC_RUN" u)"
expect_ok "the key works on query" "$QUERY_ADDR" "$Q_METHOD" '{"pageSize": 1}'
expect_ok "the key works on admin" "$SEC_ADMIN" "$ADMIN/ListTopics" '{}'
expect_code "the key passes the processor's auth (Unimplemented behind it)" Unimplemented "$SEC_PROCESSOR" "$I_METHOD" \
  "$(publish_json "every-p-$SEC_RUN" u)"
GC_KEY=$SEC_BOOTSTRAP
expect_ok "RevokeApiKey" "$SEC_ADMIN" "$ADMIN/RevokeApiKey" "$(jq -nc --arg id "${SEC_EVERY:4:12}" '{keyId: $id}')"
SEC_REVOKED_AT=$SECONDS
GC_KEY=$SEC_EVERY
refused_everywhere() {
  local addr method body
  for spec in "$INGEST_ADDR $I_METHOD" "$QUERY_ADDR $Q_METHOD" "$SEC_ADMIN $ADMIN/ListTopics" "$SEC_PROCESSOR $I_METHOD"; do
    read -r addr method <<<"$spec"
    body='{}'
    [[ "$method" == "$I_METHOD" ]] && body=$(publish_json "revoked-$SEC_RUN" u)
    gcall "$addr" "$method" "$body"
    [[ "$GC_ERR" == *"Code: Unauthenticated"* ]] || return 1
  done
}
if poll 5 refused_everywhere; then
  pass "the revoked key is Unauthenticated on ingest, query, admin and the processor within 5 s ($((SECONDS - SEC_REVOKED_AT)) s)"
else
  fail "the revoked key is Unauthenticated on every service within 5 s" "$GC_ERR"
fi

# ---------------------------------------------------------------- dependencies
section "secure mode: SASL_SSL to the broker, verify-full to PostgreSQL"

GC_KEY=$SEC_WRITER
SEC_E2E="e2e-$SEC_RUN"
expect_ok "Publish through the TLS broker" "$INGEST_ADDR" "$I_METHOD" "$(publish_json "$SEC_E2E" "secure-$SEC_RUN")"
GC_KEY=$SEC_READER
stored() { gcall "$QUERY_ADDR" tributary.v1.QueryService/GetEvent "$(jq -nc --arg id "$SEC_E2E" '{eventId: $id}')"; }
if poll 30 stored; then pass "the event was stored (processor over SASL_SSL and TLS to PostgreSQL)"; else fail "the event was stored" "$GC_ERR"; fi
if openssl s_client -connect 127.0.0.1:9092 -CAfile "$SEC_TLS/ca.pem" -verify_return_error </dev/null >"$SEC_WORK/kafka_tls" 2>&1 &&
  grep -q 'Verify return code: 0 (ok)' "$SEC_WORK/kafka_tls"; then
  pass "the broker's listener is TLS with the local CA's certificate"
else
  fail "the broker's listener is TLS with the local CA's certificate" "$(tail -5 "$SEC_WORK/kafka_tls")"
fi
# sec_ctl_produce OPTIONS [NAME=VALUE...]: tributary-ctl produce-raw with
# these librdkafka options (comma-separated) and environment.
sec_ctl_produce() {
  local options=$1
  shift
  env -u TRIBUTARY_KAFKA_OPTIONS -u TRIBUTARY_KAFKA_SASL_PASSWORD -u TRIBUTARY_KAFKA_SASL_PASSWORD_FILE "$@" \
    timeout 30 "$TB_BIN_DIR/tributary-ctl" produce-raw --kafka-brokers 127.0.0.1:9092 \
    --kafka-option "$options" --topic tributary.events.dlq --value probe >>"$SEC_WORK/produce.log" 2>&1
}
SEC_FAST=message.timeout.ms=4000
if sec_ctl_produce "$SEC_FAST"; then fail "a plaintext Kafka client is refused"; else pass "a plaintext Kafka client is refused"; fi
SEC_KAFKA_OPTS="$SEC_FAST,security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=tributary,ssl.ca.location=$SEC_TLS/ca.pem"
if sec_ctl_produce "$SEC_KAFKA_OPTS" TRIBUTARY_KAFKA_SASL_PASSWORD=wrong-password; then
  fail "SASL_SSL with a wrong SCRAM password is refused"
else
  pass "SASL_SSL with a wrong SCRAM password is refused"
fi
if sec_ctl_produce "$SEC_KAFKA_OPTS" TRIBUTARY_KAFKA_SASL_PASSWORD_FILE="$SEC_SECRETS/kafka.password"; then
  pass "SASL_SSL with the SCRAM-SHA-512 user produces (tributary-ctl)"
else
  fail "SASL_SSL with the SCRAM-SHA-512 user produces (tributary-ctl)" "$(tail -5 "$SEC_WORK/produce.log")"
fi

sec_sql() { runuser -u postgres -- "$TB_PG_BIN/psql" -X -q -h "$TB_STATE_DIR/postgres/run" -p "${TRIBUTARY_PG_PORT:-55432}" -d tributary -tAc "$1"; }
SEC_SSL=$(sec_sql "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
  FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tributary'")
assert_match "every service connection in pg_stat_ssl is TLS (with, without)" '^[1-9][0-9]*\|0$' "$SEC_SSL"
SEC_NISSHI_SSL=$(sec_sql "SELECT bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = 'nisshi'")
assert_eq "the broker's storage connections are TLS too" t "$SEC_NISSHI_SSL"
if PGPASSWORD="$SEC_PG_PASSWORD" PGSSLMODE=disable PGCONNECT_TIMEOUT=5 "$TB_PG_BIN/psql" -X -h 127.0.0.1 \
  -p "${TRIBUTARY_PG_PORT:-55432}" -U postgres -d tributary -tAc 'SELECT 1' >"$SEC_WORK/pg-plain" 2>&1; then
  fail "PostgreSQL refuses a plaintext connection"
else
  assert_contains "PostgreSQL refuses a plaintext connection (even with the password)" "$(cat "$SEC_WORK/pg-plain")" "no encryption"
fi
if PGPASSWORD="$SEC_PG_PASSWORD" PGSSLMODE=verify-full PGSSLROOTCERT="$SEC_TLS/ca.pem" PGCONNECT_TIMEOUT=5 "$TB_PG_BIN/psql" -X \
  -h 127.0.0.1 -p "${TRIBUTARY_PG_PORT:-55432}" -U postgres -d tributary -tAc 'SELECT 1' >/dev/null 2>&1; then
  pass "psql with sslmode=verify-full and the local CA connects"
else
  fail "psql with sslmode=verify-full and the local CA connects"
fi
# Another CA: verify-full must refuse the server's certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=Some other CA" \
  -keyout "$SEC_WORK/other-ca.key" -out "$SEC_WORK/other-ca.pem" >/dev/null 2>&1
if TRIBUTARY_DATABASE_URL="postgres://postgres:$SEC_PG_PASSWORD@127.0.0.1:${TRIBUTARY_PG_PORT:-55432}/tributary?sslmode=verify-full&sslrootcert=$SEC_WORK/other-ca.pem" \
  timeout 30 "$TB_BIN_DIR/tributary-ctl" migrate --skip-topics >"$SEC_WORK/wrong-ca.log" 2>&1; then
  fail "verify-full with a wrong CA is refused"
else
  assert_contains "verify-full with a wrong CA is refused (certificate error)" "$(cat "$SEC_WORK/wrong-ca.log")" "certificate"
fi
if TRIBUTARY_DATABASE_URL_FILE="$SEC_SECRETS/database.url" timeout 30 "$TB_BIN_DIR/tributary-ctl" migrate --skip-topics \
  >"$SEC_WORK/right-ca.log" 2>&1; then
  pass "verify-full with the local CA connects (tributary-ctl migrate)"
else
  fail "verify-full with the local CA connects (tributary-ctl migrate)" "$(tail -5 "$SEC_WORK/right-ca.log")"
fi

# ---------------------------------------------------------------- rotation
section "secure mode: a replaced certificate, while a stream stays open"

SEC_TAIL_USER="tail-$SEC_RUN"
(
  GC_KEY=$SEC_READER
  gc -max-time 60 -d "$(jq -nc --arg u "$SEC_TAIL_USER" '{filter: {userId: $u}}')" \
    "$QUERY_ADDR" tributary.v1.QueryService/TailEvents >"$SEC_WORK/tail.out" 2>"$SEC_WORK/tail.err"
) &
SEC_TAIL_PID=$!
sleep 1
serial_of() { openssl s_client -connect "$1" -CAfile "$SEC_TLS/ca.pem" </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null; }
SEC_SERIAL_BEFORE=$(serial_of "$QUERY_ADDR")
# A new key and certificate from the same CA, each file replaced in one step
# (written aside, renamed), as a Secret update does.
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' >"$SEC_WORK/ext"
(
  umask 077
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$SEC_WORK/server.key" -out "$SEC_WORK/server.csr" 2>/dev/null &&
    openssl x509 -req -in "$SEC_WORK/server.csr" -CA "$SEC_TLS/ca.pem" -CAkey "$SEC_TLS/ca.key" \
      -CAcreateserial -days 825 -extfile "$SEC_WORK/ext" -out "$SEC_WORK/server.pem" 2>/dev/null
)
SEC_SERIAL_NEW=$(openssl x509 -in "$SEC_WORK/server.pem" -noout -serial)
cp "$SEC_WORK/server.key" "$SEC_TLS/server.key.new" && mv "$SEC_TLS/server.key.new" "$SEC_TLS/server.key"
cp "$SEC_WORK/server.pem" "$SEC_TLS/server.pem.new" && chmod 644 "$SEC_TLS/server.pem.new" && mv "$SEC_TLS/server.pem.new" "$SEC_TLS/server.pem"
SEC_ROTATED_AT=$SECONDS
new_cert_served() { [[ "$(serial_of "$QUERY_ADDR")" == "$SEC_SERIAL_NEW" ]]; }
if [[ -n "$SEC_SERIAL_NEW" && "$SEC_SERIAL_NEW" != "$SEC_SERIAL_BEFORE" ]] && poll 10 new_cert_served; then
  pass "new connections get the replaced certificate within 10 s ($((SECONDS - SEC_ROTATED_AT)) s, no restart)"
else
  fail "new connections get the replaced certificate within 10 s" "before $SEC_SERIAL_BEFORE, new $SEC_SERIAL_NEW, served $(serial_of "$QUERY_ADDR")"
fi
GC_KEY=$SEC_WRITER
expect_ok "publish an event for the open stream" "$INGEST_ADDR" "$I_METHOD" \
  "$(publish_json "tailed-$SEC_RUN" "$SEC_TAIL_USER")"
tailed() { grep -q "tailed-$SEC_RUN" "$SEC_WORK/tail.out"; }
if poll 30 tailed; then
  pass "the TailEvents stream opened before the rotation still delivers"
else
  fail "the TailEvents stream opened before the rotation still delivers" "$(cat "$SEC_WORK/tail.err")"
fi
kill "$SEC_TAIL_PID" 2>/dev/null
SEC_TAIL_PID=""

# ---------------------------------------------------------------- webhooks
section "secure mode: webhooks never reach internal addresses"

SEC_HOOK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The same receiver on 127.0.0.1 (what localhost is) and on 127.0.0.2 (the
# one allowed address): every request it gets is recorded with its address.
SEC_HOOK_PIDS=()
for host in 127.0.0.1 "$SEC_HOOK_HOST"; do
  python3 - "$host" "$SEC_HOOK_PORT" "$SEC_WORK/hooks" >>"$SEC_WORK/hook.log" 2>&1 <<'PY' &
import http.server, sys
host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "a") as f:
            f.write("%s %s\n" % (host, self.path))
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        else:
            self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer((host, port), H).serve_forever()
PY
  SEC_HOOK_PIDS+=("$!")
done
SEC_RULE_TYPE="secure.hook.$SEC_RUN"
rule_with() { # NAME URL
  jq -nc --arg n "$1-$SEC_RUN" --arg t "$SEC_RULE_TYPE" --arg w "$2" \
    '{name: $n, eventType: $t, path: "/amount", comparator: "COMPARATOR_GT", threshold: 1, webhookUrl: $w}'
}
GC_KEY=$SEC_OPERATOR
for url in "http://169.254.169.254/latest/meta-data/" "http://[::ffff:169.254.169.254]/latest/meta-data/" \
  "http://[::ffff:a9fe:a9fe]/" "http://127.0.0.1:$SEC_HOOK_PORT/"; do
  if expect_code "a rule's webhook to $url is InvalidArgument at CreateRule" InvalidArgument \
    "$SEC_ADMIN" "$ADMIN/CreateRule" "$(rule_with literal "$url")"; then
    assert_contains "  naming webhook_url" "$GC_ERR" "webhook_url"
  fi
done
declare -A SEC_RULES=()
for spec in "localhost http://localhost:$SEC_HOOK_PORT/localhost" \
  "redirect http://$SEC_HOOK_HOST:$SEC_HOOK_PORT/redirect" "allowed http://$SEC_HOOK_HOST:$SEC_HOOK_PORT/allowed"; do
  read -r name url <<<"$spec"
  if expect_ok "CreateRule with the webhook $url" "$SEC_ADMIN" "$ADMIN/CreateRule" "$(rule_with "$name" "$url")"; then
    SEC_RULES[$name]=$(jq -r '.ruleId' <<<"$GC_OUT")
  fi
done
rules_loaded() { curl -fsS -m 5 http://127.0.0.1:9602/metrics | grep -q "tributary_rule_alerts_total{rule=\"allowed-$SEC_RUN\"}"; }
poll 20 rules_loaded || fail "the processor loaded the rules"
GC_KEY=$SEC_WRITER
expect_ok "publish an event that fires the three rules" "$INGEST_ADDR" "$I_METHOD" \
  "$(jq -nc --arg id "hook-$SEC_RUN" --arg t "$SEC_RULE_TYPE" '{event: {eventId: $id, eventType: $t, payload: {amount: 5}}}')"
GC_KEY=$SEC_OPERATOR
webhook_status() { # RULE_NAME: prints the status of its alert
  gcall "$SEC_ADMIN" "$ADMIN/ListAlerts" "$(jq -nc --arg r "${SEC_RULES[$1]:-none}" '{ruleId: $r}')" &&
    jq -r '.alerts[0].webhookStatus // "none"' <<<"$GC_OUT"
}
settled() { local n; for n in localhost redirect allowed; do [[ "$(webhook_status "$n")" =~ ^(delivered|failed)$ ]] || return 1; done; }
poll 30 settled || true
assert_eq "the allowed receiver got its alert" delivered "$(webhook_status allowed)"
assert_eq "a webhook to localhost is refused at connect time" failed "$(webhook_status localhost)"
assert_eq "a 302 from an allowed receiver is not followed (delivery failed)" failed "$(webhook_status redirect)"
assert_eq "nothing reached the receiver through localhost" 0 "$(awk '$1 == "127.0.0.1"' "$SEC_WORK/hooks" 2>/dev/null | wc -l)"
assert_match "the redirecting receiver was asked, the redirect never followed" "^$SEC_HOOK_HOST /redirect" \
  "$(grep '/redirect' "$SEC_WORK/hooks" 2>/dev/null | head -1)"
assert_contains "the processor logged the refused address" "$(tail -n 200 "$TB_LOG_DIR/processor.log")" "webhook address refused"
kill "${SEC_HOOK_PIDS[@]}" 2>/dev/null
SEC_HOOK_PIDS=()
for n in localhost redirect allowed; do
  [[ -n "${SEC_RULES[$n]:-}" ]] && gcall "$SEC_ADMIN" "$ADMIN/DeleteRule" "$(jq -nc --arg r "${SEC_RULES[$n]}" '{ruleId: $r}')"
done

# ---------------------------------------------------------------- deadlines
section "secure mode: a call past its deadline stops its statement"

# Another session holds the events table, so every read of it waits on the
# server until it lets go (20 s at most).
runuser -u postgres -- "$TB_PG_BIN/psql" -X -q -h "$TB_STATE_DIR/postgres/run" -p "${TRIBUTARY_PG_PORT:-55432}" -d tributary \
  -c "BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(20); COMMIT;" >/dev/null 2>&1 &
SEC_LOCK_PID=$!
locked() { [[ "$(sec_sql "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'events' AND l.mode = 'AccessExclusiveLock' AND l.granted")" -ge 1 ]]; }
poll 5 locked || fail "the events table is locked for the check"
waiting() { sec_sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tributary' AND state = 'active' AND query ILIKE '%FROM events%'"; }
GC_KEY=$SEC_READER
AGG='{"groupBy":[{"field":"EVENT_FIELD_EVENT_TYPE"}]}'
# First, that the probe sees such a statement while its call is alive.
( GC_KEY=$SEC_READER gc -max-time 3 -d "$AGG" "$QUERY_ADDR" tributary.v1.QueryService/AggregateEvents >/dev/null 2>&1 ) &
SEC_SLOW_CALL=$!
seen() { [[ "$(waiting)" -ge 1 ]]; }
if poll 3 seen; then pass "a waiting AggregateEvents shows in pg_stat_activity"; else fail "a waiting AggregateEvents shows in pg_stat_activity"; fi
wait "$SEC_SLOW_CALL" 2>/dev/null
gone() { [[ "$(waiting)" == 0 ]]; }
poll 3 gone >/dev/null
gc -max-time 0.3 -d "$AGG" "$QUERY_ADDR" tributary.v1.QueryService/AggregateEvents >"$SEC_WORK/agg.out" 2>"$SEC_WORK/agg.err"
assert_contains "AggregateEvents with a 0.3 s deadline fails with DeadlineExceeded" "$(cat "$SEC_WORK/agg.err")" "DeadlineExceeded"
# pg_stat_activity within a second: polled every 0.1 s, at most 10 times.
SEC_CLEARED=no
for _ in 1 2 3 4 5 6 7 8 9 10; do
  if [[ "$(waiting)" == 0 ]]; then SEC_CLEARED=yes; break; fi
  sleep 0.1
done
assert_eq "its statement is gone from pg_stat_activity within a second" yes "$SEC_CLEARED"
kill "$SEC_LOCK_PID" 2>/dev/null
sec_sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%LOCK TABLE events%' AND pid <> pg_backend_pid()" >/dev/null
SEC_LOCK_PID=""

# ---------------------------------------------------------------- secrets
section "secure mode: no secret in logs, metrics or traces"

SEC_METRICS=""
for port in 9601 9602 9603 9604 9605; do SEC_METRICS+=$(curl -s -m 5 "http://127.0.0.1:$port/metrics"); done
assert_contains "tributary_auth_requests_total names a known key" "$SEC_METRICS" "key_id=\"${SEC_READER:4:12}\""
for spec in "bootstrap-secret ${SEC_BOOTSTRAP:17}" "postgres-password $SEC_PG_PASSWORD" "kafka-password $SEC_KAFKA_PASSWORD" \
  "a-client-key's-secret ${SEC_READER:17}"; do
  read -r what secret <<<"$spec"
  found=$(grep -rlF -- "$secret" "$TB_LOG_DIR" "$TB_STATE_DIR/traces" 2>/dev/null | head -3)
  [[ "$SEC_METRICS" == *"$secret"* ]] && found+=" /metrics"
  assert_eq "the $what is in no log, trace file or /metrics" "" "$found"
done

printf '      (the secure checks took %ss; putting back the deployment found)\n' "$((SECONDS - SEC_UP_STARTED))"
if sec_put_back; then pass "the deployment the area found is back"; else fail "the deployment the area found is back"; fi
sec_untrap
fi
