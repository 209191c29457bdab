# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# Events from the browser (clients/web), in Debian's Chromium driven headless
# by playwright-core (tests/web/browser.mjs), against the running deployment:
#
#   installs (chromium, the pinned npm packages) and the build; the generated
#   protobuf-es code matches a fresh `buf generate`; the tracker type-checks;
#   its bundle size (minified + gzip) is printed; the tracker's own tests
#   (Node, real ingest: acks, INVALID_ARGUMENT to onReject, retries on a
#   refused connection, RetryInfo, pause on UNAUTHENTICATED); CORS preflights
#   (the page's origin allowed, another refused); then in the browser: the
#   page loads, three clicks and a form submission are stored exactly once
#   each (ListEvents, by event_id); ingest stopped (./deploy.sh stop ingest),
#   clicks and a reload while it is down, ingest started: nothing lost or
#   doubled; an event published by grpcurl appears in the live panel within
#   15 s (the delay is printed); the events/s one tab can send (printed; all
#   stored, AggregateEvents); the page from an origin not allowed gets
#   nothing through. A screenshot of the page under load is kept in the log
#   directory (docs/web-page.png is one).
#
# Environment (defaults: the local deployment):
#   WEB_PAGE_PORT     the live page's port (8088, deploy.sh part web; served
#                     by this area when nothing listens there)
#   WEB_BAD_PORT      a second origin, not allowed, served by this area (8089)
#   WEB_INGEST_URL    http://$INGEST_ADDR;  WEB_QUERY_URL: http://$QUERY_ADDR
#   WEB_STOP_INGEST / WEB_START_INGEST   ./deploy.sh stop ingest / start ingest
#   WEB_LOAD_EVENTS   events of the throughput step (5000)
#   TRIBUTARY_WEB_SPARE_PORT   first of 4 free ports for the Node tests' own ingests (51161)
# Sourced by test-system.sh (tests/lib.sh is loaded).

# shellcheck source=scripts/web.sh
source "$TB_ROOT/scripts/web.sh"

WEB_LOG_DIR="$TB_LOG_DIR/test-system"
WEB_PAGE_PORT=${WEB_PAGE_PORT:-$TB_WEB_PORT}
WEB_BAD_PORT=${WEB_BAD_PORT:-8089}
WEB_INGEST_URL=${WEB_INGEST_URL:-http://$INGEST_ADDR}
WEB_QUERY_URL=${WEB_QUERY_URL:-http://$QUERY_ADDR}
WEB_REPORT="$WEB_LOG_DIR/web-report.json"
WEB_SHOT="$WEB_LOG_DIR/web-page.png"
WEB_SERVER_PIDS=()

section "web: the browser tracker and the live page (output in $WEB_LOG_DIR)"
mkdir -p "$WEB_LOG_DIR"

# web_cleanup: our page servers stopped, ingest running again.
web_cleanup() {
  local p
  for p in "${WEB_SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  WEB_SERVER_PIDS=()
  if [[ -z "${WEB_START_INGEST:-}" ]] &&
    ! ./deploy.sh status --porcelain 2>/dev/null | awk '$1 == "ingest" && $2 == "running" { f = 1 } END { exit !f }'; then
    printf 'starting ingest, which the web area left down\n' >&2
    ./deploy.sh start ingest >&2
  fi
}
web_on_exit() {
  local rc=$?
  web_cleanup
  run_prev_exit_trap WEB_PREV "$rc"
  exit "$rc"
}
push_exit_trap WEB_PREV web_on_exit

# web_serve PORT: python's http.server on the built page; its pid is kept.
web_serve() {
  local python
  python=$(python3 -c 'import sys; print(sys.executable)')
  "$python" -m http.server --bind 127.0.0.1 --directory "$TB_WEB_OUT/page" "$1" >>"$WEB_LOG_DIR/web-server-$1.log" 2>&1 &
  WEB_SERVER_PIDS+=($!)
  poll 10 port_open 127.0.0.1 "$1"
}

web_installs() { ensure_chromium && ensure_web_deps; }
check_logged "installs: chromium, the npm packages of clients/web (cached in $TB_TOOLS_DIR/web)" \
  "$WEB_LOG_DIR/web-installs.log" web_installs || { pop_exit_trap WEB_PREV; return 0; }

WEB_GEN_DIR=$(mktemp -d)
check_logged "the generated code (clients/web/src/gen) is what buf generate makes from proto/" "$WEB_LOG_DIR/web-generate.log" \
  bash -c 'source "$1/scripts/lib.sh" && source "$1/scripts/web.sh" && gen=$(web_generate "$2") && diff -r "$1/clients/web/src/gen" "$gen"' _ "$TB_ROOT" "$WEB_GEN_DIR"
rm -rf "$WEB_GEN_DIR"
check_logged "the tracker and the page type-check (tsc --noEmit)" "$WEB_LOG_DIR/web-tsc.log" \
  bash -c 'cd "$1/clients/web" && node_modules/.bin/tsc --noEmit -p .' _ "$TB_ROOT"
check_logged "the tracker and the page build (esbuild) into $TB_WEB_OUT" "$WEB_LOG_DIR/web-build.log" web_build
if WEB_GZIP=$(jq -r '.[] | select(.file == "tributary.js") | .gzip' "$TB_WEB_OUT/size.json" 2>/dev/null) && [[ -n "$WEB_GZIP" ]]; then
  printf '      the tracker (dist/tributary.js): %s bytes minified + gzip\n' "$WEB_GZIP"
  # A guard against growth; the aim is 25 KiB, the protobuf-es runtime alone is ~20 KiB of it.
  assert_json "the tracker bundle stays under 30 KiB minified + gzip ($WEB_GZIP bytes)" '. < 30720' "$WEB_GZIP"
else
  fail "the build wrote $TB_WEB_OUT/size.json"
fi

check_logged "the tracker's own tests against ingest and query (node --test clients/web/test)" "$WEB_LOG_DIR/web-node-tests.log" \
  env TRIBUTARY_WEB_INGEST_URL="$WEB_INGEST_URL" TRIBUTARY_WEB_QUERY_URL="$WEB_QUERY_URL" TRIBUTARY_BIN_DIR="$TB_BIN_DIR" \
  TRIBUTARY_WEB_DATABASE_URL="${TRIBUTARY_WEB_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:${TRIBUTARY_PG_PORT:-55432}/tributary}" \
  TRIBUTARY_WEB_KAFKA="${TRIBUTARY_WEB_KAFKA:-127.0.0.1:9092}" \
  bash -c 'cd "$1/clients/web" && timeout 300 node --test test/' _ "$TB_ROOT"

# ---------------------------------------------------------------- CORS preflights

WEB_ORIGIN="http://127.0.0.1:$WEB_PAGE_PORT"
WEB_BAD_ORIGIN="http://127.0.0.1:$WEB_BAD_PORT"
# preflight URL ORIGIN: the response headers of a browser's preflight.
preflight() {
  curl -s -D - -o /dev/null -m 5 -X OPTIONS -H "Origin: $2" -H 'Access-Control-Request-Method: POST' \
    -H 'Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,grpc-timeout' "$1" | tr -d '\r'
}
for svc in "ingest $WEB_INGEST_URL/tributary.v1.IngestService/PublishBatch" "query $WEB_QUERY_URL/tributary.v1.QueryService/TailEvents"; do
  name=${svc%% *} url=${svc#* }
  out=$(preflight "$url" "$WEB_ORIGIN")
  assert_contains "$name: the preflight from the page's origin $WEB_ORIGIN is allowed" "$out" "access-control-allow-origin: $WEB_ORIGIN"
  out=$(preflight "$url" "$WEB_BAD_ORIGIN")
  assert_not_contains "$name: the preflight from $WEB_BAD_ORIGIN (not listed) gets no access-control-allow-origin" "$out" "access-control-allow-origin"
done

# ---------------------------------------------------------------- in the browser

if ! port_open 127.0.0.1 "$WEB_PAGE_PORT"; then
  log_info "nothing serves the page on $WEB_PAGE_PORT: this area serves it"
  web_serve "$WEB_PAGE_PORT"
fi
web_serve "$WEB_BAD_PORT"
rm -f "$WEB_REPORT" "$WEB_SHOT"
check_logged "Chromium (headless) drives the live page: clicks, a form, ingest down and up, a grpcurl event, load, a refused origin" \
  "$WEB_LOG_DIR/web-browser.log" \
  env WEB_PAGE_URL="$WEB_ORIGIN/" WEB_BAD_PAGE_URL="$WEB_BAD_ORIGIN/" WEB_INGEST_URL="$WEB_INGEST_URL" \
  WEB_QUERY_URL="$WEB_QUERY_URL" WEB_INGEST_ADDR="$INGEST_ADDR" GRPCURL="$TB_GRPCURL" WEB_OUT="$WEB_REPORT" \
  WEB_SCREENSHOT="$WEB_SHOT" WEB_LOAD_EVENTS="${WEB_LOAD_EVENTS:-5000}" CHROMIUM="$TB_WEB_CHROMIUM" \
  WEB_STOP_INGEST="${WEB_STOP_INGEST:-./deploy.sh stop ingest}" WEB_START_INGEST="${WEB_START_INGEST:-./deploy.sh start ingest}" \
  timeout 300 node "$TB_ROOT/tests/web/browser.mjs"
web_cleanup
pop_exit_trap WEB_PREV

if ! WEB_R=$(cat "$WEB_REPORT" 2>/dev/null) || [[ -z "$WEB_R" ]]; then
  fail "the browser run wrote its report ($WEB_REPORT)"
  return 0
fi
assert_json "the browser run finished every step" '.error == null and .steps[-1] == "done"' "$WEB_R"
WEB_VISITOR=$(jq -r '.visitor // ""' <<<"$WEB_R")

# web_ids USER TYPES_JSON: the stored event ids of USER with those types, one per line (all pages).
web_ids() {
  local token="" req
  while :; do
    req=$(jq -nc --arg u "$1" --argjson t "$2" --arg p "$token" '{filter: {userId: $u, eventTypes: $t}, pageSize: 1000, pageToken: $p}')
    gcall "$QUERY_ADDR" tributary.v1.QueryService/ListEvents "$req" || return 1
    jq -r '.events[].event.eventId' <<<"$GC_OUT"
    token=$(jq -r '.nextPageToken' <<<"$GC_OUT")
    [[ -n "$token" ]] || return 0
  done
}

if [[ -n "$WEB_VISITOR" ]]; then
  # What the page tracked: 1 page view, 3 clicks and 1 form submission; then
  # during the outage 3 clicks, a page view (the reload) and 2 clicks.
  WEB_EXPECTED=$(jq -r '(.basic.acked // [])[].id, (.outage.pending // [])[].id' <<<"$WEB_R" | sort)
  assert_json "the page tracked 1 page view, 3 clicks and 1 form submission, each acknowledged" \
    '[.basic.acked[].type] | sort == ["click", "click", "click", "form.submit", "page.view"]' "$WEB_R"
  assert_json "ingest down: 3 clicks kept (in localStorage too) and retried, 4 waiting after the reload, 6 after 2 more clicks" \
    '.outage | .beforeReload.queued == 3 and .beforeReload.failedCalls > 0 and .storedLocally == 3
      and .afterReload.queued == 4 and .stateDown.queued == 6 and (.pending | length) == 6' "$WEB_R"
  assert_json "ingest up again: the 6 waiting events were acknowledged ($(jq -r '.outage.drainedAfterStartMs' <<<"$WEB_R") ms after the start)" \
    '(.outage.ackedAfterReload | map(.id) | sort) == (.outage.pending | map(.id) | sort)' "$WEB_R"
  WEB_STORED=""
  for _ in $(seq 1 40); do
    WEB_STORED=$(web_ids "$WEB_VISITOR" '["page.view","click","form.submit"]' | sort)
    [[ "$WEB_STORED" == "$WEB_EXPECTED" ]] && break
    sleep 0.5
  done
  assert_eq "ListEvents: exactly the 11 events the page tracked are stored, each once (by event_id)" \
    "$(printf '%s\n' "$WEB_EXPECTED" | wc -l) $WEB_EXPECTED" "$(printf '%s\n' "$WEB_STORED" | wc -l) $WEB_STORED"
  assert_eq "ListEvents: no event_id twice" "" "$(printf '%s\n' "$WEB_STORED" | uniq -d)"

  assert_json "the live panel showed the grpcurl event within 15 s (delay $(jq -r '.live.delayMs' <<<"$WEB_R") ms)" \
    '.live.seen == true and .live.delayMs < 15000' "$WEB_R"
  printf '      live panel: grpcurl Publish -> shown by TailEvents in %s ms\n' "$(jq -r '.live.delayMs' <<<"$WEB_R")"

  WEB_LOAD=$(jq -r '.load.events // 0' <<<"$WEB_R")
  printf '      one tab: %s events tracked and acknowledged in %s ms: %s events/s\n' "$WEB_LOAD" \
    "$(jq -r '.load.totalMs | floor' <<<"$WEB_R")" "$(jq -r '.load.perSecond' <<<"$WEB_R")"
  web_load_count() {
    gcall "$QUERY_ADDR" tributary.v1.QueryService/AggregateEvents \
      "$(jq -nc --arg u "$WEB_VISITOR" '{filter: {userId: $u, eventTypes: ["load.test"]}}')" &&
      [[ "$(jq -r '.rows[0].values[0] // 0' <<<"$GC_OUT")" == "$WEB_LOAD" ]]
  }
  poll 30 web_load_count
  assert_eq "AggregateEvents: all $WEB_LOAD events of the load step are stored" "$WEB_LOAD" "$(jq -r '.rows[0].values[0] // 0' <<<"$GC_OUT")"
else
  fail "the browser run reported the visitor id"
fi

assert_json "the page from $WEB_BAD_ORIGIN (not allowed): nothing acknowledged, its events kept, the failure seen as Unknown" \
  '.cors.state.acked == 0 and .cors.state.queued >= 2 and .cors.state.lastError.code == "Unknown" and .cors.tail == "reconnecting"' "$WEB_R"
WEB_BAD_VISITOR=$(jq -r '.cors.visitor // ""' <<<"$WEB_R")
if [[ -n "$WEB_BAD_VISITOR" ]]; then
  assert_eq "ListEvents: nothing stored for the visitor of the refused origin" "" \
    "$(web_ids "$WEB_BAD_VISITOR" '[]')"
fi
if [[ -s "$WEB_SHOT" ]]; then pass "a screenshot of the page under load: $WEB_SHOT"; else fail "a screenshot of the page under load: $WEB_SHOT"; fi
