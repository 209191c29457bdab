# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables or SQL.)
# Data lifecycle (issue 15): time partitions, retention, the in-place
# upgrade and erasure, against the running deployment and two scratch
# databases this area creates in its PostgreSQL (and drops again):
#
#   a. Layout: events is a partitioned table (pg_class.relkind p) with the
#      DEFAULT partition events_default; range partitions cover every hour
#      from now to 2 days ahead (catalog); admin's /metrics says so too
#      (tributary_events_partitions_ahead_seconds >= 172800, the partition
#      count as in the catalog) and counts a successful maintenance round.
#   b. Through the services: events published to ingest are stored in the
#      partition that covers now and GetEvent finds them; one event_id
#      published twice without occurredAt and once with another occurredAt
#      (26 h earlier) is one row in events and one in event_ids, and GetEvent
#      keeps the first occurredAt. A ListEvents-shaped statement (prepared,
#      bound parameters) over one hour of today plans only the partition that
#      covers that hour (pruning); the unrestricted one reads every partition
#      through its by-time index (occurred_at DESC, event_id DESC), no Seq Scan.
#   c. tributary-ctl migrate --dry-run on the deployment's database (once
#      the processor's lag is 0) changes nothing (the relations of schema
#      public, schema_migrations and the count of event_ids, before and
#      after) and says "dry run: nothing was changed".
#   d. Retention, in a scratch database migrated with --retention 0: rows
#      40 days old land in events_default (no range partition covers them), a
#      partition of a day 45 days ago holds older ones, recent rows are in
#      today's partition and (29 days old) in events_default; dead letters and
#      alerts old and recent. migrate --dry-run --retention 30d lists that
#      partition under "retention: drop partition" and the rows past it, and
#      changes nothing; migrate --retention 30d names the partition it
#      dropped, and then the partition is gone (catalog), the old rows and
#      their event_ids are gone, old dead letters and alerts deleted, every
#      recent row kept.
#   e. In-place upgrade, in another scratch database: the migrations up to
#      20261201130000_subscription_dead_letters applied with psql and recorded
#      in schema_migrations with their FNV-1a 64 checksums (computed here as
#      migrate.rs does, and equal to what the deployment's migrator recorded),
#      20,000 rows in the old unpartitioned events over the last 10 days.
#      migrate --dry-run prints the conversion plan with the row count and
#      changes nothing; two migrate runs started while this area holds the
#      migrators' advisory lock are both seen waiting for it (pg_locks), then
#      both succeed, one applies the pending migrations and the other none, each
#      version is recorded once and the list equals the deployment's; events
#      is partitioned, events_legacy holds all 20,000 rows, event_ids has
#      20,000; an insert shaped like the processor's (insert_events) of an
#      old id with another occurred_at is refused as a duplicate while a new
#      id in the same statement is stored.
#   f. Erasure on the deployment: 60 marker events (other users, so the
#      replay below starts before everything of the two users on every
#      partition), then 8 events of user U and 5 of user V. EraseUser U
#      answers the counts (8 events, no alerts, no dead letters) and end
#      offsets past U's records; ListEvents finds none of U, V's 5 unchanged;
#      no event_ids row of U's events is left; the erasures rows and the
#      tombstone's rows (as text) contain neither U nor U in hex. An empty
#      user_id is InvalidArgument. Replay: the processor stopped, its group
#      reset to a timestamp before the markers (the reset starts at or before
#      U's first record), started again, lag 0: U still has no event, V has
#      each of its 5 exactly once, and the processor (fresh counters after
#      its restart) counted at least U's 8 records as
#      tributary_processor_events_total{result="erased"}. An event of U
#      published after the erasure is stored.
#   The area's wall time is printed and checked (at most 3 min, issue 15).
#
# Sourced by test-system.sh (tests/lib.sh is loaded). Every id, source,
# user and scratch database carries the run id. The processor is stopped
# once (f); it is started again whatever a check says, and by an EXIT trap
# should the run be cut short; the scratch databases are dropped on the way
# out in any case. tributary-ctl's outputs are kept in
# $TB_LOG_DIR/test-system/lifecycle-<run>/ (the latest run's only).
#
# Environment: ADMIN_ADDR (127.0.0.1:50053), ADMIN_METRICS_URL
# (http://127.0.0.1:9604/metrics), PROCESSOR_METRICS_URL
# (http://127.0.0.1:9602/metrics), KAFKA_BROKERS (127.0.0.1:9092),
# TB_PG_PORT (55432).

LC_ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:50053}
LC_ADMIN_METRICS_URL=${ADMIN_METRICS_URL:-http://127.0.0.1:9604/metrics}
LC_PROCESSOR_METRICS_URL=${PROCESSOR_METRICS_URL:-http://127.0.0.1:9602/metrics}
LC_KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
LC_PG_PORT=${TB_PG_PORT:-55432}
LC_ADMIN=tributary.v1.AdminService
LC_INGEST=tributary.v1.IngestService
LC_QUERY=tributary.v1.QueryService
LC_GROUP=tributary-processor
LC_CTL="$TB_BIN_DIR/tributary-ctl"
LC_RUN=${T_RUN_ID,,}
LC_SOURCE="lc-$LC_RUN"
LC_DB_RET="lc_${LC_RUN}_ret"
LC_DB_UP="lc_${LC_RUN}_up"
LC_UP_ROWS=20000
LC_DIR="$TB_LOG_DIR/test-system/lifecycle-$LC_RUN"
LC_MIGRATIONS="$TB_ROOT/services/store/migrations"

section "lifecycle: time partitions, retention, in-place upgrade, erasure (issue 15)"
LC_STARTED=$SECONDS
rm -rf "$TB_LOG_DIR/test-system"/lifecycle-r*
mkdir -p "$LC_DIR"

# ---------------------------------------------------------------- helpers

lc_url() { printf 'postgres://postgres:postgres@127.0.0.1:%s/%s\n' "$LC_PG_PORT" "$1"; }

# lc_sql DB SQL: one statement, unaligned, tuples only; stops on an error.
lc_sql() {
  PGPASSWORD=postgres psql -h 127.0.0.1 -p "$LC_PG_PORT" -U postgres -d "$1" -v ON_ERROR_STOP=1 -XAtqc "$2"
}
# lc_sql_in DB: the SQL script on stdin, in one transaction.
lc_sql_in() {
  PGPASSWORD=postgres psql -h 127.0.0.1 -p "$LC_PG_PORT" -U postgres -d "$1" -v ON_ERROR_STOP=1 -XAtq -1 -f -
}

# lc_ctl NAME ARGS...: tributary-ctl ARGS; its stdout goes to
# $LC_DIR/NAME.out, its log (stderr) to NAME.err; sets LC_CTL_OUT, LC_CTL_RC
# and LC_CTL_SECS (wall time, 2 decimals).
LC_CTL_OUT="" LC_CTL_RC=0 LC_CTL_SECS=""
lc_ctl() {
  local name=$1 t0=$EPOCHREALTIME
  shift
  TRIBUTARY_KAFKA_BROKERS=$LC_KAFKA_BROKERS "$LC_CTL" "$@" >"$LC_DIR/$name.out" 2>"$LC_DIR/$name.err"
  LC_CTL_RC=$?
  LC_CTL_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  LC_CTL_OUT=$(cat "$LC_DIR/$name.out")
}
# lc_ctl_ok NAME ARGS...: lc_ctl, checked to exit 0.
lc_ctl_ok() {
  local name=$1
  lc_ctl "$@"
  shift
  if ((LC_CTL_RC == 0)); then
    pass "tributary-ctl $* exits 0 ($LC_CTL_SECS s)"
  else
    fail "tributary-ctl $* exits 0" "exit status $LC_CTL_RC after $LC_CTL_SECS s" \
      "stdout:" "$LC_CTL_OUT" "log (tail):" "$(tail -n 15 "$LC_DIR/$name.err")"
    return 1
  fi
}

# lc_same NAME BEFORE AFTER: passes when the two texts are equal, else shows
# their diff.
lc_same() {
  if [[ "$2" == "$3" ]]; then
    pass "$1"
  else
    fail "$1" "diff before after:" "$(diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") | head -n 30)"
    return 1
  fi
}

# The partitions of events in DB: "name|from|to" per line, bounds as unix
# seconds (from MIN for MINVALUE; from and to "-" for the default one).
read -r -d '' LC_PARTS_SQL <<'SQL'
SELECT c.relname,
       CASE WHEN b = 'DEFAULT' THEN '-'
            ELSE coalesce(extract(epoch FROM (regexp_match(b, 'FROM \(''([^'']+)''\)'))[1]::timestamptz)::bigint::text, 'MIN') END,
       CASE WHEN b = 'DEFAULT' THEN '-'
            ELSE extract(epoch FROM (regexp_match(b, 'TO \(''([^'']+)''\)'))[1]::timestamptz)::bigint::text END
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS b) x
 WHERE i.inhparent = 'events'::regclass
 ORDER BY 1
SQL
lc_parts() { lc_sql "$1" "$LC_PARTS_SQL"; }
# lc_part_covering PARTS FROM TO: the range partition covering [FROM, TO).
lc_part_covering() {
  awk -F'|' -v f="$2" -v t="$3" '$3 != "-" && ($2 == "MIN" || $2 <= f) && $3 >= t { print $1 }' <<<"$1"
}
# lc_parts_brief PARTS: "name [from, to)" per partition, dates in UTC.
lc_parts_brief() {
  local name from to
  while IFS='|' read -r name from to; do
    [[ -n "$name" ]] || continue
    if [[ "$to" == - ]]; then
      printf '%s (DEFAULT); ' "$name"
    else
      [[ "$from" == MIN ]] && from=MINVALUE || from=$(date -u -d "@$from" +%m-%dT%H)
      printf '%s [%s, %s); ' "$name" "$from" "$(date -u -d "@$to" +%m-%dT%H)"
    fi
  done <<<"$1"
}

# lc_snapshot DB: what a dry run must leave alone: the relations of schema
# public (name, kind), schema_migrations, and the row counts given as
# further arguments (SQL expressions), one per line.
lc_snapshot() {
  local db=$1 expr
  shift
  lc_sql "$db" "SELECT relname || ' ' || relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1"
  lc_sql "$db" "SELECT 'schema_migrations ' || version || ' ' || checksum || ' ' || applied_at FROM schema_migrations ORDER BY version"
  for expr in "$@"; do
    printf '%s = %s\n' "$expr" "$(lc_sql "$db" "SELECT $expr")"
  done
}

# lc_metric URL NAME LABEL: the sum of the series of NAME whose labels hold
# LABEL (e.g. 'outcome="ok"'; '' for all); fails when there is none.
lc_metric() {
  local body
  body=$(curl -fsS --max-time 10 "$1") || return 1
  awk -v name="$2" -v want="$3" '
    (index($1, name "{") == 1 || $1 == name) && (want == "" || index($1, want)) { s += $2; f = 1 }
    END { if (f) printf "%.0f\n", s; else exit 1 }' <<<"$body"
}

# lc_publish NAME BATCH_JSON: PublishBatch, checked to accept every event.
lc_publish() {
  local n
  n=$(jq '.events | length' <<<"$2")
  if gcall "$INGEST_ADDR" "$LC_INGEST/PublishBatch" "$2" && [[ "$(jq -r '"\(.accepted) \(.rejected)"' <<<"$GC_OUT")" == "$n 0" ]]; then
    pass "$1: PublishBatch accepted all $n"
  else
    fail "$1: PublishBatch accepted all $n" "grpcurl exit $GC_RC" "$GC_ERR" "$GC_OUT"
    return 1
  fi
}

# lc_list FILTER_JSON: ListEvents (one page of 1000); prints the ids, sorted.
lc_list() {
  gcall "$QUERY_ADDR" "$LC_QUERY/ListEvents" "$(jq -nc --argjson f "$1" '{filter: $f, pageSize: 1000}')" &&
    jq -r '.events[].event.eventId' <<<"$GC_OUT" | sort
}
LC_LISTED=""
lc_list_count_is() {
  LC_LISTED=$(lc_list "$1") || return 1
  [[ $(grep -c . <<<"$LC_LISTED") -eq $2 ]]
}
lc_user() { jq -nc --arg u "$1" '{userId: $u}'; }
lc_source() { jq -nc --arg s "$1" '{source: $s}'; }

# The processor's group and lag (as tests/60-admin.sh).
LC_GROUP_JSON=""
lc_group_is_empty() {
  gcall "$LC_ADMIN_ADDR" "$LC_ADMIN/ListConsumerGroups" '{}' || return 1
  LC_GROUP_JSON=$(jq -c --arg g "$LC_GROUP" '[.groups[] | select(.group == $g)] | first // {}' <<<"$GC_OUT")
  (($(jq -r '.memberCount // 0' <<<"$LC_GROUP_JSON") == 0))
}
lc_lag_is_zero() {
  gcall "$LC_ADMIN_ADDR" "$LC_ADMIN/GetConsumerLag" "{\"group\":\"$LC_GROUP\"}" &&
    [[ "$(jq -r .totalLag <<<"$GC_OUT")" == 0 ]]
}

# ---------------------------------------------------------------- cleanup

# Scratch databases are dropped and background migrators ended on the way
# out, also when the run is cut short.
LC_PIDS=()
lc_cleanup() {
  local pid db
  for pid in "${LC_PIDS[@]}"; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  LC_PIDS=()
  for db in "$LC_DB_RET" "$LC_DB_UP"; do
    lc_sql postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  done
}
lc_on_exit() {
  local rc=$?
  lc_cleanup
  run_prev_exit_trap LC_PREV "$rc"
  exit "$rc"
}
push_exit_trap LC_PREV lc_on_exit
lc_end() {
  lc_cleanup
  pop_exit_trap LC_PREV
}

# ================================================================ a. layout
section "lifecycle a: events is partitioned by occurred_at, partitions exist ahead"

assert_eq "events is a partitioned table (pg_class.relkind of events)" p \
  "$(lc_sql tributary "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass" 2>&1)"
LC_PARTS=$(lc_parts tributary 2>&1)
assert_eq "events_default is the DEFAULT partition of events" "events_default|-|-" "$(grep '^events_default|' <<<"$LC_PARTS")"
LC_NOW=$(date +%s)
LC_NEWEST=$(awk -F'|' '$3 != "-" && $3 > m { m = $3 } END { print m + 0 }' <<<"$LC_PARTS")
assert_json "range partitions reach at least 2 days past now (the newest ends $(date -u -d "@$LC_NEWEST" +%FT%TZ), $(((LC_NEWEST - LC_NOW) / 3600)) h ahead)" \
  '.[0] - .[1] >= 172800' "[$LC_NEWEST,$LC_NOW]"
# Every hour from now to 2 days ahead falls in a range partition, not in the
# default one: no gap.
LC_GAPS=""
for ((h = 0; h <= 48; h++)); do
  t=$((LC_NOW + h * 3600))
  [[ -n "$(lc_part_covering "$LC_PARTS" "$t" "$((t + 1))")" ]] || LC_GAPS+="$(date -u -d "@$t" +%FT%H) "
done
assert_eq "every hour from now to 2 days ahead is covered by a range partition ($(lc_parts_brief "$LC_PARTS"))" "" "$LC_GAPS"

LC_AHEAD=$(lc_metric "$LC_ADMIN_METRICS_URL" tributary_events_partitions_ahead_seconds '')
assert_json "admin's tributary_events_partitions_ahead_seconds >= 172800 (${LC_AHEAD:-none})" \
  '. >= 172800' "${LC_AHEAD:-null}"
LC_RUNS_OK=$(lc_metric "$LC_ADMIN_METRICS_URL" tributary_maintenance_runs_total 'outcome="ok"')
assert_json "admin's tributary_maintenance_runs_total{outcome=\"ok\"} >= 1 (${LC_RUNS_OK:-none}; failed: $(lc_metric "$LC_ADMIN_METRICS_URL" tributary_maintenance_runs_total 'outcome="failed"'))" \
  '. >= 1' "${LC_RUNS_OK:-null}"
assert_eq "admin's tributary_events_partitions is the catalog's count of partitions" \
  "$(grep -c . <<<"$LC_PARTS")" "$(lc_metric "$LC_ADMIN_METRICS_URL" tributary_events_partitions '')"

# ================================================================ b. services
section "lifecycle b: through the services: stored in today's partition, one row per event_id, pruned plans"

LC_B_IDS=()
for i in 0 1 2 3 4; do LC_B_IDS+=("lc-$LC_RUN-b$i"); done
LC_B_BATCH=$(jq -nc --arg s "$LC_SOURCE" --arg u "lc-b-$LC_RUN" '{events: [$ARGS.positional | to_entries[]
  | {eventId: .value, eventType: "lc.check", source: $s, userId: $u, payload: {i: .key}}]}' --args "${LC_B_IDS[@]}")
lc_publish "5 events of source $LC_SOURCE" "$LC_B_BATCH"
if poll 30 lc_list_count_is "$(lc_source "$LC_SOURCE")" 5; then
  pass "ListEvents by source finds the 5"
else
  fail "ListEvents by source finds the 5 within 30 s" "found: $(xargs <<<"$LC_LISTED")" "$GC_ERR"
fi
if event_persisted "${LC_B_IDS[2]}"; then
  assert_json "GetEvent finds ${LC_B_IDS[2]} as published" \
    '.event.eventId == $id and .event.source == $s and .event.payload.i == 2' "$GC_OUT" --arg id "${LC_B_IDS[2]}" --arg s "$LC_SOURCE"
else
  fail "GetEvent finds ${LC_B_IDS[2]}" "grpcurl exit $GC_RC" "$GC_ERR"
fi
LC_TODAY_PART=$(lc_part_covering "$LC_PARTS" "$LC_NOW" "$((LC_NOW + 1))")
assert_eq "the rows are in the partition that covers now ($LC_TODAY_PART)" "$LC_TODAY_PART" \
  "$(lc_sql tributary "SELECT string_agg(DISTINCT tableoid::regclass::text, ',') FROM events WHERE source = '$LC_SOURCE'" 2>&1)"

# One event_id: published without occurredAt (ingest stamps the receipt
# time), then again without it a second later, and once with an occurredAt
# 26 h earlier (another day's partition), followed by a sentinel of the same
# user (the same Kafka partition): once the sentinel is stored, the repeats
# before it were handled.
LC_DUP="lc-$LC_RUN-dup"
LC_DUP_USER="lc-d-$LC_RUN"
lc_dup_event() { jq -nc --arg id "$1" --arg u "$LC_DUP_USER" --arg s "$LC_SOURCE-dup" '{eventId: $id, eventType: "lc.dup", source: $s, userId: $u, payload: {}}'; }
LC_DUP_FIRST=""
if lc_publish "$LC_DUP without occurredAt" "$(jq -nc --argjson e "$(lc_dup_event "$LC_DUP")" '{events: [$e]}')" &&
  wait_persisted "$LC_DUP" 30; then
  LC_DUP_FIRST=$(jq -r .event.occurredAt <<<"$GC_OUT")
  pass "$LC_DUP is stored (occurredAt $LC_DUP_FIRST, the receipt time)"
else
  fail "$LC_DUP is stored within 30 s" "$GC_ERR"
fi
sleep 1
LC_DUP_EARLIER=$(rfc3339 $(($(date +%s) - 26 * 3600)))
lc_publish "$LC_DUP again without occurredAt, again with occurredAt $LC_DUP_EARLIER, then a sentinel" \
  "$(jq -nc --argjson e "$(lc_dup_event "$LC_DUP")" --argjson s "$(lc_dup_event "$LC_DUP-sentinel")" --arg t "$LC_DUP_EARLIER" \
    '{events: [$e, ($e + {occurredAt: $t}), $s]}')"
if wait_persisted "$LC_DUP-sentinel" 30; then
  pass "the sentinel after the repeats is stored"
else
  fail "the sentinel after the repeats is stored within 30 s" "$GC_ERR"
fi
assert_eq "$LC_DUP is one row in events and one in event_ids (events | event_ids)" "1|1" \
  "$(lc_sql tributary "SELECT (SELECT count(*) FROM events WHERE event_id = '$LC_DUP'), (SELECT count(*) FROM event_ids WHERE event_id = '$LC_DUP')" 2>&1)"
if event_persisted "$LC_DUP"; then
  assert_eq "GetEvent keeps the first occurredAt of $LC_DUP" "$LC_DUP_FIRST" "$(jq -r .event.occurredAt <<<"$GC_OUT")"
else
  fail "GetEvent finds $LC_DUP after the repeats" "$GC_ERR"
fi

# ListEvents' statement (store::events::list_events), prepared with bound
# parameters as the query service sends it.
LC_COLS="event_id, event_type, source, user_id, session_id, occurred_at, received_at, persisted_at, payload, kafka_partition, kafka_offset, trace_id, schema_version"
LC_H0=$((LC_NOW / 3600 * 3600))
LC_H1=$((LC_H0 + 3600))
LC_HOUR_PART=$(lc_part_covering "$LC_PARTS" "$LC_H0" "$LC_H1")
LC_PLAN_HOUR=$(lc_sql_in tributary <<SQL 2>&1
PREPARE lc_list_hour(timestamptz, timestamptz, int8) AS
  SELECT $LC_COLS FROM events WHERE occurred_at >= \$1 AND occurred_at < \$2
   ORDER BY occurred_at DESC, event_id DESC LIMIT \$3;
EXPLAIN (FORMAT JSON) EXECUTE lc_list_hour('$(rfc3339 "$LC_H0")', '$(rfc3339 "$LC_H1")', 101);
SQL
)
LC_PLAN_RELS=$(jq -c '[.. | objects | ."Relation Name"? // empty] | unique' <<<"$LC_PLAN_HOUR" 2>/dev/null)
assert_json "ListEvents over one hour of today ($(date -u -d "@$LC_H0" +%H):00-$(date -u -d "@$LC_H1" +%H):00 UTC) plans only $LC_HOUR_PART (relations in the plan: ${LC_PLAN_RELS:-none})" \
  '. == [$p]' "${LC_PLAN_RELS:-null}" --arg p "$LC_HOUR_PART"
LC_PLAN_ALL=$(lc_sql_in tributary <<SQL 2>&1
PREPARE lc_list_all(int8) AS
  SELECT $LC_COLS FROM events ORDER BY occurred_at DESC, event_id DESC LIMIT \$1;
EXPLAIN (FORMAT JSON) EXECUTE lc_list_all(101);
SQL
)
LC_SCANS=$(jq -c '[.. | objects | select(."Relation Name"?) | {rel: ."Relation Name", node: ."Node Type", index: (."Index Name" // null)}]' <<<"$LC_PLAN_ALL" 2>/dev/null)
assert_json "the unrestricted ListEvents reads $LC_TODAY_PART with an Index Scan ($(jq -c --arg p "$LC_TODAY_PART" '[.[] | select(.rel == $p)]' <<<"${LC_SCANS:-[]}"))" \
  'any(.[]; .rel == $p and (.node | startswith("Index"))) and all(.[]; .rel != $p or .node != "Seq Scan")' "${LC_SCANS:-null}" --arg p "$LC_TODAY_PART"
assert_json "no partition is read by a Seq Scan, each by an index ($(jq -r 'map(.node) | group_by(.) | map("\(length) \(.[0])") | join(", ")' <<<"${LC_SCANS:-[]}" 2>/dev/null))" \
  'length > 0 and all(.[]; .node | startswith("Index"))' "${LC_SCANS:-null}"
LC_INDEXES=$(jq -r '[.[].index // empty] | unique | .[]' <<<"${LC_SCANS:-[]}" 2>/dev/null)
LC_NOT_BY_TIME=""
while read -r idx; do
  [[ -n "$idx" ]] || continue
  def=$(lc_sql tributary "SELECT pg_get_indexdef('$idx'::regclass)" 2>&1)
  [[ "$def" == *"(occurred_at DESC, event_id DESC)" ]] || LC_NOT_BY_TIME+="$def; "
done <<<"$LC_INDEXES"
assert_eq "every index it uses is a by-time index (occurred_at DESC, event_id DESC): $(xargs <<<"$LC_INDEXES")" "" "$LC_NOT_BY_TIME"

# ================================================================ c. dry run
section "lifecycle c: migrate --dry-run on the deployment's database changes nothing"

# Nothing may be stored while the snapshots are taken: the processor has
# consumed everything first (an earlier area may have left a backlog).
if poll 120 lc_lag_is_zero; then
  pass "the processor's lag is 0: nothing is being stored meanwhile"
else
  fail "the processor's lag is 0 within 120 s (nothing is being stored meanwhile)" "$(jq -c '{totalLag}' <<<"$GC_OUT" 2>/dev/null)" "$GC_ERR"
fi
LC_SNAP_BEFORE=$(lc_snapshot tributary "count(*) FROM event_ids" 2>&1)
if lc_ctl_ok deploy-dry-run migrate --dry-run --database-url "$(lc_url tributary)"; then
  assert_contains "its output ends: dry run: nothing was changed" "$LC_CTL_OUT" "dry run: nothing was changed"
  assert_contains "it has no migration to apply (the deployment is migrated)" "$LC_CTL_OUT" "schema: 0 migration(s) to apply"
  printf '      (its plan: %s)\n' "$(grep -E '^(partitions|retention|topic)' <<<"$LC_CTL_OUT" | paste -sd ';' -)"
fi
lc_same "the relations of schema public, schema_migrations and event_ids' count are as before" \
  "$LC_SNAP_BEFORE" "$(lc_snapshot tributary "count(*) FROM event_ids" 2>&1)"

# ================================================================ d. retention
section "lifecycle d: retention in a scratch database ($LC_DB_RET)"

LC_D_OK=1
check "CREATE DATABASE $LC_DB_RET" lc_sql postgres "CREATE DATABASE $LC_DB_RET" || LC_D_OK=0
if ((LC_D_OK)) && lc_ctl_ok ret-migrate migrate --skip-topics --database-url "$(lc_url "$LC_DB_RET")" --retention 0; then
  assert_contains "migrate --retention 0 keeps everything" "$LC_CTL_OUT" "retention: 0 (everything is kept)"
else
  LC_D_OK=0
fi
if ((LC_D_OK)); then
  LC_D_NOW=$(date +%s)
  LC_D45=$(((LC_D_NOW / 86400 - 45) * 86400))
  # Today, between its start and now.
  LC_D_TODAY=$((LC_D_NOW / 86400 * 86400 + (LC_D_NOW % 86400) / 2))
  LC_OLD_PART="events_p$(date -u -d "@$LC_D45" +%Y%m%d)"
  # A partition of the day after, detached and not dropped: what a run
  # interrupted between its DETACH and its DROP leaves.
  LC_ORPHAN="events_p$(date -u -d "@$((LC_D45 + 86400))" +%Y%m%d)"
  # 50 rows 40 days old and 5 rows 29 days old (no range partition covers
  # them: events_default), 30 rows in the partition of the day 45 days ago,
  # 20 rows of today (today's partition); event_ids for all of them;
  # 10 old and 10 recent dead letters and alerts.
  if LC_SEED=$(lc_sql_in "$LC_DB_RET" 2>&1 <<SQL
SELECT tributary_create_event_partition('$LC_OLD_PART', '$(rfc3339 "$LC_D45")', '$(rfc3339 $((LC_D45 + 86400)))');
SELECT tributary_create_event_partition('$LC_ORPHAN', '$(rfc3339 $((LC_D45 + 86400)))', '$(rfc3339 $((LC_D45 + 2 * 86400)))');
ALTER TABLE events DETACH PARTITION $LC_ORPHAN;
INSERT INTO events (event_id, event_type, source, user_id, occurred_at, received_at, payload, kafka_partition, kafka_offset)
SELECT id, 'lc.retention', 'lc', 'u', at, at, '{}', 0, g
  FROM (SELECT 'old-default-' || g AS id, now() - interval '40 days' - g * interval '1 minute' AS at, g FROM generate_series(1, 50) g
        UNION ALL SELECT 'old-part-' || g, timestamptz '$(rfc3339 "$LC_D45")' + g * interval '10 minutes', 100 + g FROM generate_series(1, 30) g
        UNION ALL SELECT 'kept-default-' || g, now() - interval '29 days' - g * interval '1 minute', 200 + g FROM generate_series(1, 5) g
        UNION ALL SELECT 'kept-recent-' || g, timestamptz '$(rfc3339 "$LC_D_TODAY")' - g * interval '1 second', 300 + g FROM generate_series(1, 20) g) r;
INSERT INTO event_ids (event_id, occurred_at) SELECT event_id, occurred_at FROM events;
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, reason, first_seen_at)
SELECT 'tributary.events', 0, g, 'lc', CASE WHEN g <= 10 THEN now() - interval '40 days' ELSE now() - interval '1 day' END
  FROM generate_series(1, 20) g;
INSERT INTO alert_rules (rule_id, name, event_type, path, pointer, comparator, threshold)
VALUES ('lc-rule', 'lc', 'lc.retention', '{n}', '/n', 'GT', '1');
INSERT INTO alerts (rule_id, event_id, event_type, observed, triggered_at)
SELECT 'lc-rule', 'alert-' || g, 'lc.retention', '2', CASE WHEN g <= 10 THEN now() - interval '40 days' ELSE now() - interval '1 day' END
  FROM generate_series(1, 20) g;
SQL
  ); then
    pass "seeded: partition $LC_OLD_PART, $LC_ORPHAN detached, 105 events, 105 event_ids, 20 dead letters, 20 alerts"
  else
    fail "seeding $LC_DB_RET" "$LC_SEED"
    LC_D_OK=0
  fi
fi
if ((LC_D_OK)); then
  assert_eq "where the rows landed: 40 and 29 days old in events_default, 45 in $LC_OLD_PART, today's in today's partition" \
    "events_default kept-default 5;events_default old-default 50;$LC_OLD_PART old-part 30;$(lc_part_covering "$(lc_parts "$LC_DB_RET")" "$LC_D_TODAY" "$((LC_D_TODAY + 1))") kept-recent 20" \
    "$(lc_sql "$LC_DB_RET" "SELECT string_agg(p || ' ' || k || ' ' || n, ';' ORDER BY p, k) FROM (SELECT tableoid::regclass::text AS p, regexp_replace(event_id, '-[0-9]+$', '') AS k, count(*) AS n FROM events GROUP BY 1, 2) s" 2>&1)"
  LC_RET_COUNTS="(SELECT count(*) FROM events WHERE event_id LIKE 'old-%') || ' ' || (SELECT count(*) FROM events WHERE event_id LIKE 'kept-%') || ' ' || (SELECT count(*) FROM event_ids WHERE event_id LIKE 'old-%') || ' ' || (SELECT count(*) FROM event_ids WHERE event_id LIKE 'kept-%') || ' ' || (SELECT count(*) FROM dead_letters WHERE first_seen_at < now() - interval '30 days') || ' ' || (SELECT count(*) FROM dead_letters WHERE first_seen_at >= now() - interval '30 days') || ' ' || (SELECT count(*) FROM alerts WHERE triggered_at < now() - interval '30 days') || ' ' || (SELECT count(*) FROM alerts WHERE triggered_at >= now() - interval '30 days')"
  LC_SNAP_BEFORE=$(lc_snapshot "$LC_DB_RET" "$LC_RET_COUNTS" 2>&1)
  if lc_ctl_ok ret-dry-run migrate --skip-topics --database-url "$(lc_url "$LC_DB_RET")" --retention 30d --dry-run; then
    assert_contains "the dry run lists retention: drop partition $LC_OLD_PART" "$LC_CTL_OUT" "retention: drop partition $LC_OLD_PART"
    assert_eq "the dry run drops $LC_OLD_PART and the detached $LC_ORPHAN, no other partition" \
      "retention: drop partition $LC_OLD_PART;retention: drop partition $LC_ORPHAN" \
      "$(grep '^retention: drop partition' <<<"$LC_CTL_OUT" | paste -sd ';' -)"
    for want in "50 row(s) of events_default" "10 row(s) of dead_letters" "10 row(s) of alerts"; do
      assert_contains "the dry run counts retention: $want past it" "$LC_CTL_OUT" "retention: $want past it"
    done
    assert_contains "the dry run says: dry run: nothing was changed" "$LC_CTL_OUT" "dry run: nothing was changed"
  fi
  lc_same "the dry run changed nothing (relations, schema_migrations, row counts)" \
    "$LC_SNAP_BEFORE" "$(lc_snapshot "$LC_DB_RET" "$LC_RET_COUNTS" 2>&1)"

  if lc_ctl_ok ret-apply migrate --skip-topics --database-url "$(lc_url "$LC_DB_RET")" --retention 30d; then
    assert_match "its output names the dropped partition: $(grep "^retention: dropped" <<<"$LC_CTL_OUT")" \
      "retention: dropped partition $LC_OLD_PART" "$LC_CTL_OUT"
    assert_contains "and the one left detached: retention: dropped partition $LC_ORPHAN" "$LC_CTL_OUT" \
      "retention: dropped partition $LC_ORPHAN"
    assert_match "its output states the DETACH's lock time" \
      "retention: detached the partitions past it in one transaction \\(lock on events held [0-9]+ ms\\)" "$LC_CTL_OUT"
    for want in "50 row(s) of events_default" "10 row(s) of dead_letters" "10 row(s) of alerts" "80 row(s) of event_ids"; do
      assert_contains "its output: retention: deleted $want" "$LC_CTL_OUT" "retention: deleted $want"
    done
  fi
  assert_eq "$LC_OLD_PART is gone: no longer a partition of events, no longer a table" "0|" \
    "$(lc_sql "$LC_DB_RET" "SELECT (SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass AND c.relname = '$LC_OLD_PART'), to_regclass('$LC_OLD_PART')" 2>&1)"
  assert_eq "$LC_ORPHAN is gone too" "" "$(lc_sql "$LC_DB_RET" "SELECT to_regclass('$LC_ORPHAN')" 2>&1)"
  assert_eq "after it (old events | kept events | old event_ids | kept event_ids | old and recent dead letters | old and recent alerts)" \
    "0 25 0 25 0 10 0 10" "$(lc_sql "$LC_DB_RET" "SELECT $LC_RET_COUNTS" 2>&1)"
fi
lc_sql postgres "DROP DATABASE IF EXISTS $LC_DB_RET WITH (FORCE)" >/dev/null 2>&1

# ================================================================ e. upgrade
section "lifecycle e: in-place upgrade of the old layout ($LC_DB_UP, $LC_UP_ROWS rows), two migrators at once"

LC_E_OK=1
LC_OLD_FILES=()
for f in "$LC_MIGRATIONS"/*.sql; do
  [[ "$(basename "$f")" > 20261201130000_subscription_dead_letters.sql ]] && break
  LC_OLD_FILES+=("$f")
done
assert_eq "the old layout: the 9 migrations up to 20261201130000_subscription_dead_letters" 9 "${#LC_OLD_FILES[@]}"
# FNV-1a 64 of each file's text, 16 lowercase hex digits (migrate.rs).
LC_CHECKSUMS=$(python3 - "${LC_OLD_FILES[@]}" <<'PY'
import os
import sys

for path in sys.argv[1:]:
    h = 0xCBF29CE484222325
    with open(path, "rb") as f:
        for b in f.read():
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    print("%s %016x" % (os.path.basename(path)[: -len(".sql")], h))
PY
)
assert_eq "the checksums computed here equal what the deployment's migrator recorded for those versions" \
  "$LC_CHECKSUMS" "$(lc_sql tributary "SELECT version || ' ' || checksum FROM schema_migrations WHERE version <= '20261201130000_subscription_dead_letters' ORDER BY version" 2>&1)"

check "CREATE DATABASE $LC_DB_UP" lc_sql postgres "CREATE DATABASE $LC_DB_UP" || LC_E_OK=0
if ((LC_E_OK)); then
  LC_APPLIED=0
  for f in "${LC_OLD_FILES[@]}"; do
    if out=$(PGPASSWORD=postgres psql -h 127.0.0.1 -p "$LC_PG_PORT" -U postgres -d "$LC_DB_UP" -v ON_ERROR_STOP=1 -XAtq -1 -f "$f" 2>&1); then
      LC_APPLIED=$((LC_APPLIED + 1))
    else
      fail "psql applies $(basename "$f")" "$out"
      LC_E_OK=0
      break
    fi
  done
fi
if ((LC_E_OK)); then
  pass "psql applied the $LC_APPLIED old migrations"
  LC_SEED_SQL="CREATE TABLE schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);"
  while read -r v c; do
    LC_SEED_SQL+=$'\n'"INSERT INTO schema_migrations (version, checksum) VALUES ('$v', '$c');"
  done <<<"$LC_CHECKSUMS"
  LC_SEED_SQL+="
INSERT INTO events (event_id, event_type, source, user_id, occurred_at, received_at, payload, kafka_partition, kafka_offset)
SELECT 'lc-up-' || g, 'lc.upgrade', 'lc-up', 'u' || (g % 100), now() - g * interval '43 seconds',
       now() - g * interval '43 seconds', jsonb_build_object('g', g), g % 6, g / 6
  FROM generate_series(1, $LC_UP_ROWS) g;"
  if out=$(lc_sql_in "$LC_DB_UP" <<<"$LC_SEED_SQL" 2>&1); then
    pass "recorded the 9 in schema_migrations and seeded $LC_UP_ROWS rows over the last 10 days into the unpartitioned events"
  else
    fail "recording schema_migrations and seeding events" "$out"
    LC_E_OK=0
  fi
fi
if ((LC_E_OK)); then
  assert_eq "before: events is a plain table (relkind r) with $LC_UP_ROWS rows" "r|$LC_UP_ROWS" \
    "$(lc_sql "$LC_DB_UP" "SELECT relkind, (SELECT count(*) FROM events) FROM pg_class WHERE oid = 'events'::regclass" 2>&1)"
  LC_SNAP_BEFORE=$(lc_snapshot "$LC_DB_UP" "count(*) FROM events" 2>&1)
  if lc_ctl_ok up-dry-run migrate --skip-topics --database-url "$(lc_url "$LC_DB_UP")" --dry-run; then
    assert_contains "the plan lists 20261202000000_partitioned_events to apply" "$LC_CTL_OUT" "20261202000000_partitioned_events:"
    assert_match "the plan: events' $LC_UP_ROWS rows stay in place as partition events_legacy ($(grep -o 'events: [0-9].*' <<<"$LC_CTL_OUT" | head -n 1))" \
      "events: $LC_UP_ROWS row\\(s\\) stay in place as partition events_legacy" "$LC_CTL_OUT"
    assert_contains "the plan: event_ids filled with $LC_UP_ROWS rows" "$LC_CTL_OUT" "event_ids: filled with $LC_UP_ROWS row(s)"
    assert_contains "the dry run says: dry run: nothing was changed" "$LC_CTL_OUT" "dry run: nothing was changed"
  fi
  lc_same "the dry run changed nothing (relations, schema_migrations, events' count)" \
    "$LC_SNAP_BEFORE" "$(lc_snapshot "$LC_DB_UP" "count(*) FROM events" 2>&1)"

  # Two migrators at once. This area holds the migrators' advisory lock
  # (store::migrate::LOCK_KEY, as classid and objid in pg_locks) for 3 s
  # while both start, so they contend for it: both are seen waiting, and
  # then run one after the other.
  LC_LOCK_KEY=8390884927342928242
  LC_LOCK_WHERE="locktype = 'advisory' AND classid = 1953655138 AND objid = 1970561394 AND objsubid = 1
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
  (
    lc_sql "$LC_DB_UP" "SELECT pg_advisory_lock($LC_LOCK_KEY), pg_sleep(3)" >/dev/null 2>&1
    echo "$EPOCHREALTIME" >"$LC_DIR/up-lock.released"
  ) &
  LC_PIDS+=($!)
  lc_lock_holders() { lc_sql "$LC_DB_UP" "SELECT count(*) FILTER (WHERE granted) || ' ' || count(*) FILTER (WHERE NOT granted) FROM pg_locks WHERE $LC_LOCK_WHERE"; }
  LC_LOCKS=""
  lc_locks_are() { LC_LOCKS=$(lc_lock_holders 2>&1) && [[ "$LC_LOCKS" == "$1" ]]; }
  poll 5 lc_locks_are "1 0" || fail "this area holds the migrators' advisory lock" "granted, waiting: $LC_LOCKS"
  LC_T0=$EPOCHREALTIME
  for n in 1 2; do
    (
      TRIBUTARY_KAFKA_BROKERS=$LC_KAFKA_BROKERS "$LC_CTL" migrate --skip-topics --database-url "$(lc_url "$LC_DB_UP")" \
        >"$LC_DIR/up-$n.out" 2>"$LC_DIR/up-$n.err"
      echo "$? $EPOCHREALTIME" >"$LC_DIR/up-$n.rc"
    ) &
    LC_PIDS+=($!)
  done
  if poll 2 lc_locks_are "1 2"; then
    pass "both migrators wait for the advisory lock while this area holds it (pg_locks: 1 granted, 2 waiting)"
  else
    fail "both migrators wait for the advisory lock while this area holds it (pg_locks: 1 granted, 2 waiting)" \
      "granted, waiting: $LC_LOCKS"
  fi
  wait "${LC_PIDS[@]}"
  LC_PIDS=()
  LC_RELEASED=$(cat "$LC_DIR/up-lock.released" 2>/dev/null || echo "$LC_T0")
  LC_UP_RESULT=""
  LC_UP_FAIL=()
  for n in 1 2; do
    read -r rc at <"$LC_DIR/up-$n.rc" 2>/dev/null || rc="none"
    LC_UP_RESULT+="migrator $n: exit $rc $(awk -v a="$LC_RELEASED" -v b="${at:-$LC_RELEASED}" 'BEGIN { printf "%.2f", b - a }') s after the lock was released, $(grep '^schema:' "$LC_DIR/up-$n.out"); "
    if [[ "$rc" != 0 ]]; then
      LC_UP_FAIL+=("$n")
    fi
  done
  if ((${#LC_UP_FAIL[@]} == 0)); then
    pass "two migrate runs at once both exit 0 ($LC_UP_RESULT)"
  else
    fail "two migrate runs at once both exit 0" "$LC_UP_RESULT" "$(tail -n 10 "$LC_DIR/up-${LC_UP_FAIL[0]}.err")"
  fi
  LC_APPLIED_BY=$(grep -h '^schema:' "$LC_DIR/up-1.out" "$LC_DIR/up-2.out" | sed -E 's/^schema: ([0-9]+) migration.*/\1/' | sort -n | paste -sd ' ' -)
  LC_PENDING=$(grep -cE '^  [0-9]{14}_' "$LC_DIR/up-dry-run.out")
  assert_eq "one applied the $LC_PENDING pending migrations, the other none (serialised by the advisory lock)" \
    "0 $LC_PENDING" "$LC_APPLIED_BY"
  assert_eq "each version is recorded once, the same list as the deployment's" \
    "$(lc_sql tributary "SELECT string_agg(version, ' ' ORDER BY version) FROM schema_migrations" 2>&1)" \
    "$(lc_sql "$LC_DB_UP" "SELECT string_agg(version, ' ' ORDER BY version) FROM schema_migrations HAVING count(*) = count(DISTINCT version)" 2>&1)"
  LC_UP_PARTS=$(lc_parts "$LC_DB_UP" 2>&1)
  assert_eq "events is partitioned (relkind p)" p \
    "$(lc_sql "$LC_DB_UP" "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass" 2>&1)"
  assert_match "events_legacy is its partition from MINVALUE ($(lc_parts_brief "$LC_UP_PARTS"))" \
    '^events_legacy[|]MIN[|][0-9]+$' "$(grep '^events_legacy|' <<<"$LC_UP_PARTS")"
  assert_eq "events_legacy holds all $LC_UP_ROWS rows, events has no other, event_ids has $LC_UP_ROWS (legacy | events | event_ids)" \
    "$LC_UP_ROWS|$LC_UP_ROWS|$LC_UP_ROWS" \
    "$(lc_sql "$LC_DB_UP" "SELECT (SELECT count(*) FROM events_legacy), (SELECT count(*) FROM events), (SELECT count(*) FROM event_ids)" 2>&1)"
  assert_eq "event_ids holds every old event's id and occurred_at (rows of events without their match)" 0 \
    "$(lc_sql "$LC_DB_UP" "SELECT count(*) FROM events e LEFT JOIN event_ids i USING (event_id, occurred_at) WHERE i.event_id IS NULL" 2>&1)"
  # The processor's insert (store::events::insert_events): the old id with
  # another occurred_at, and a new id.
  LC_INSERTED=$(lc_sql_in "$LC_DB_UP" 2>&1 <<SQL
WITH input AS (
    SELECT DISTINCT ON (event_id) *
    FROM unnest(ARRAY['lc-up-7', 'lc-up-new']::text[], ARRAY['lc.upgrade', 'lc.upgrade']::text[],
                ARRAY['lc-up', 'lc-up']::text[], ARRAY['u7', 'u7']::text[], ARRAY['', '']::text[],
                ARRAY[now(), now()]::timestamptz[], ARRAY[now(), now()]::timestamptz[],
                ARRAY['{}', '{}']::text[], ARRAY[1, 1]::int4[], ARRAY[900001, 900002]::int8[],
                ARRAY['', '']::text[], ARRAY[0, 0]::int4[])
         AS e(event_id, event_type, source, user_id, session_id, occurred_at, received_at, payload,
              kafka_partition, kafka_offset, trace_id, schema_version)
    ORDER BY event_id, kafka_partition, kafka_offset
), fresh AS (
    INSERT INTO event_ids (event_id, occurred_at)
    SELECT event_id, occurred_at FROM input
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO events (event_id, event_type, source, user_id, session_id, occurred_at, received_at, payload,
                    kafka_partition, kafka_offset, trace_id, schema_version)
SELECT e.event_id, e.event_type, e.source, e.user_id, e.session_id, e.occurred_at, e.received_at,
       e.payload::jsonb, e.kafka_partition, e.kafka_offset, e.trace_id, e.schema_version
FROM input e JOIN fresh USING (event_id)
RETURNING event_id;
SQL
  )
  assert_eq "insert_events' statement with an old id (other occurred_at) and a new one returns only the new one" "lc-up-new" "$LC_INSERTED"
  assert_eq "the old id is still one row (events | event_ids)" "1|1" \
    "$(lc_sql "$LC_DB_UP" "SELECT (SELECT count(*) FROM events WHERE event_id = 'lc-up-7'), (SELECT count(*) FROM event_ids WHERE event_id = 'lc-up-7')" 2>&1)"
fi
lc_sql postgres "DROP DATABASE IF EXISTS $LC_DB_UP WITH (FORCE)" >/dev/null 2>&1

# ================================================================ f. erasure
section "lifecycle f: EraseUser, and a replay that does not bring the user back"

LC_U="lc-u-$LC_RUN"
LC_V="lc-v-$LC_RUN"
LC_U_N=8
LC_V_N=5
LC_MARK_N=60
# The replay starts from here: before the markers.
LC_REPLAY_FROM=$(rfc3339 $(($(date +%s) - 1)))
sleep 1
LC_MARKS=$(jq -nc --arg r "$LC_RUN" --arg s "$LC_SOURCE-mark" --argjson n "$LC_MARK_N" \
  '{events: [range(0; $n) | {eventId: "lc-\($r)-m\(.)", eventType: "lc.mark", source: $s, userId: "lc-m\(.)-\($r)", payload: {}}]}')
lc_publish "$LC_MARK_N marker events, each of its own user" "$LC_MARKS"
if poll 30 lc_list_count_is "$(lc_source "$LC_SOURCE-mark")" "$LC_MARK_N"; then
  pass "the $LC_MARK_N markers are stored"
else
  fail "the $LC_MARK_N markers are stored within 30 s" "found $(grep -c . <<<"$LC_LISTED")" "$GC_ERR"
fi
mapfile -t LC_U_IDS < <(for ((i = 0; i < LC_U_N; i++)); do echo "lc-$LC_RUN-u$i"; done)
mapfile -t LC_V_IDS < <(for ((i = 0; i < LC_V_N; i++)); do echo "lc-$LC_RUN-v$i"; done)
lc_publish "$LC_U_N events of user U ($LC_U) and $LC_V_N of user V ($LC_V)" \
  "$(jq -nc --arg u "$LC_U" --arg v "$LC_V" --arg s "$LC_SOURCE-users" --argjson ui "$(jq -nc '$ARGS.positional' --args "${LC_U_IDS[@]}")" \
    --argjson vi "$(jq -nc '$ARGS.positional' --args "${LC_V_IDS[@]}")" \
    '{events: (($ui | map({eventId: ., eventType: "lc.user", source: $s, userId: $u, payload: {who: "u"}}))
              + ($vi | map({eventId: ., eventType: "lc.user", source: $s, userId: $v, payload: {who: "v"}})))}')"
if poll 30 lc_list_count_is "$(lc_user "$LC_U")" "$LC_U_N" && poll 30 lc_list_count_is "$(lc_user "$LC_V")" "$LC_V_N"; then
  pass "U's $LC_U_N and V's $LC_V_N events are stored"
else
  fail "U's $LC_U_N and V's $LC_V_N events are stored within 30 s" "last found: $(xargs <<<"$LC_LISTED")" "$GC_ERR"
fi
LC_V_BEFORE=$(lc_list "$(lc_user "$LC_V")")
# Where U's records are: partition, first and last offset.
read -r LC_U_PART LC_U_FIRST LC_U_LAST < <(lc_sql tributary \
  "SELECT kafka_partition || ' ' || min(kafka_offset) || ' ' || max(kafka_offset) FROM events WHERE user_id = '$LC_U' GROUP BY kafka_partition" 2>&1 | tr '\n' ' ')
assert_match "U's records are on one partition of tributary.events (partition $LC_U_PART, offsets $LC_U_FIRST..$LC_U_LAST)" \
  '^[0-9]+ [0-9]+ [0-9]+$' "$LC_U_PART $LC_U_FIRST $LC_U_LAST"

LC_ERASED=""
if expect_ok "EraseUser U" "$LC_ADMIN_ADDR" "$LC_ADMIN/EraseUser" "$(jq -nc --arg u "$LC_U" '{userId: $u}')"; then
  LC_ERASED=$GC_OUT
  assert_json "EraseUser's counts: $LC_U_N events, 0 alerts, 0 dead letters, 0 subscription dead letters ($(jq -c '{events, alerts, deadLetters, subscriptionDeadLetters, erasureId}' <<<"$LC_ERASED"))" \
    '(.events | tonumber) == $n and (.alerts | tonumber) == 0 and (.deadLetters | tonumber) == 0
     and (.subscriptionDeadLetters | tonumber) == 0 and (.erasureId | tonumber) > 0 and (.erasedAt | length) > 0' \
    "$LC_ERASED" --argjson n "$LC_U_N"
  assert_json "its end offsets (tributary.events) lie past U's records: partition $LC_U_PART ends at $(jq -r --argjson p "${LC_U_PART:-0}" '[.endOffsets[] | select(.topic == "tributary.events") | .offsets[] | select((.partition // 0) == $p) | .offset] | first // "none"' <<<"$LC_ERASED")" \
    '[.endOffsets[] | select(.topic == "tributary.events") | .offsets[] | select((.partition // 0) == $p) | .offset | tonumber] | length == 1 and .[0] > $last' \
    "$LC_ERASED" --argjson p "${LC_U_PART:-0}" --argjson last "${LC_U_LAST:-0}"
fi
LC_ERASURE_ID=0
[[ -n "$LC_ERASED" ]] && LC_ERASURE_ID=$(jq -r '.erasureId // 0' <<<"$LC_ERASED")
if lc_list_count_is "$(lc_user "$LC_U")" 0; then
  pass "ListEvents of user U finds nothing"
else
  fail "ListEvents of user U finds nothing" "found: $(xargs <<<"$LC_LISTED")" "$GC_ERR"
fi
assert_eq "ListEvents of user V: its $LC_V_N, unchanged" "$LC_V_BEFORE" "$(lc_list "$(lc_user "$LC_V")")"
LC_U_ARRAY="ARRAY[$(printf "'%s'," "${LC_U_IDS[@]}" | sed 's/,$//')]"
assert_eq "no row of U is left (events by user_id | event_ids of U's events)" "0|0" \
  "$(lc_sql tributary "SELECT (SELECT count(*) FROM events WHERE user_id = '$LC_U'), (SELECT count(*) FROM event_ids WHERE event_id = ANY($LC_U_ARRAY))" 2>&1)"
LC_AUDIT=$(lc_sql tributary "SELECT e::text FROM erasures e ORDER BY erasure_id" 2>&1)
LC_TOMB=$(lc_sql tributary "SELECT o::text FROM erasure_offsets o WHERE erasure_id = $LC_ERASURE_ID" 2>&1)
LC_U_HEX=$(printf '%s' "$LC_U" | od -An -tx1 | tr -d ' \n')
LC_AUDIT_ROW=$(grep "^($LC_ERASURE_ID," <<<"$LC_AUDIT")
assert_match "the erasures table holds this erasure's record: $LC_U_N events, no alerts or dead letters ($LC_AUDIT_ROW)" \
  "^\\($LC_ERASURE_ID,[^,]*,[^,]*,$LC_U_N,0,0,0\\)\$" "$LC_AUDIT_ROW"
assert_not_contains "no erasures row (as text, $(grep -c . <<<"$LC_AUDIT") rows) contains U" "$LC_AUDIT" "$LC_U"
assert_not_contains "no erasures row contains U in hex" "$LC_AUDIT" "$LC_U_HEX"
assert_json "the tombstone (erasure_offsets of erasure $LC_ERASURE_ID) has rows: $(grep -c . <<<"$LC_TOMB")" '. > 0' "$(grep -c . <<<"$LC_TOMB")"
assert_not_contains "no tombstone row contains U" "$LC_TOMB" "$LC_U"
assert_not_contains "no tombstone row contains U in hex" "$LC_TOMB" "$LC_U_HEX"
expect_code "EraseUser with an empty userId is InvalidArgument" InvalidArgument \
  "$LC_ADMIN_ADDR" "$LC_ADMIN/EraseUser" '{"userId":""}'

# The replay: the processor stopped, its group reset to before the markers.
LC_ERASED_BEFORE=$(lc_metric "$LC_PROCESSOR_METRICS_URL" tributary_processor_events_total 'result="erased"')
guard_processor
if check "replay: ./deploy.sh stop processor" ./deploy.sh stop processor; then
  if poll 60 lc_group_is_empty; then
    pass "the processor's group has no members ($(jq -c '{state, memberCount}' <<<"$LC_GROUP_JSON"))"
  else
    fail "the processor's group has no members within 60 s" "$LC_GROUP_JSON" "$GC_ERR"
  fi
  if expect_ok "ResetOffsets of $LC_GROUP to $LC_REPLAY_FROM (before the markers)" "$LC_ADMIN_ADDR" "$LC_ADMIN/ResetOffsets" \
    "$(jq -nc --arg g "$LC_GROUP" --arg t "$LC_REPLAY_FROM" '{group: $g, timestamp: $t}')"; then
    assert_json "the reset is applied, and on U's partition $LC_U_PART it starts at or before U's first record ($LC_U_FIRST): $(jq -c '[.offsets[] | {partition: (.partition // 0), offset}]' <<<"$GC_OUT")" \
      '.applied == true and ([.offsets[] | select((.partition // 0) == $p) | .offset | tonumber] | length == 1 and .[0] <= $first)' \
      "$GC_OUT" --argjson p "${LC_U_PART:-0}" --argjson first "${LC_U_FIRST:-0}"
  fi
  if gcall "$LC_ADMIN_ADDR" "$LC_ADMIN/GetConsumerLag" "{\"group\":\"$LC_GROUP\"}"; then
    LC_REPLAY_LAG=$(jq -r .totalLag <<<"$GC_OUT")
    assert_json "GetConsumerLag: the records since then are to be read again (totalLag $LC_REPLAY_LAG >= $((LC_MARK_N + LC_U_N + LC_V_N)))" \
      '(.totalLag | tonumber) >= $n' "$GC_OUT" --argjson n $((LC_MARK_N + LC_U_N + LC_V_N))
  fi
fi
LC_T_REPLAY=$SECONDS
check "replay: ./deploy.sh start processor (waits until healthy)" ./deploy.sh start processor
unguard_processor
if poll 120 lc_lag_is_zero; then
  pass "the replay is consumed: lag 0 after $((SECONDS - LC_T_REPLAY)) s"
else
  fail "the replay is consumed: lag 0 within 120 s" "$(jq -c '{totalLag}' <<<"$GC_OUT" 2>/dev/null)" "$GC_ERR"
fi
LC_ERASED_AFTER=$(lc_metric "$LC_PROCESSOR_METRICS_URL" tributary_processor_events_total 'result="erased"')
assert_json "the processor counted U's replayed records as erased: tributary_processor_events_total{result=\"erased\"} ${LC_ERASED_AFTER:-none} since its restart (${LC_ERASED_BEFORE:-none} before it) >= $LC_U_N" \
  '. >= $n' "${LC_ERASED_AFTER:-null}" --argjson n "$LC_U_N"
if lc_list_count_is "$(lc_user "$LC_U")" 0; then
  pass "after the replay ListEvents of user U still finds nothing"
else
  fail "after the replay ListEvents of user U still finds nothing" "found: $(xargs <<<"$LC_LISTED")" "$GC_ERR"
fi
assert_eq "after the replay V has each of its $LC_V_N events once (ListEvents)" "$LC_V_BEFORE" "$(lc_list "$(lc_user "$LC_V")")"
assert_eq "after the replay (U's rows | V's rows | V's distinct ids)" "0|$LC_V_N|$LC_V_N" \
  "$(lc_sql tributary "SELECT (SELECT count(*) FROM events WHERE user_id = '$LC_U'), count(*), count(DISTINCT event_id) FROM events WHERE user_id = '$LC_V'" 2>&1)"

# The user's events published after the erasure are stored as usual.
LC_U_AFTER="lc-$LC_RUN-u-after"
lc_publish "an event of U after the erasure" \
  "$(jq -nc --arg id "$LC_U_AFTER" --arg u "$LC_U" --arg s "$LC_SOURCE-users" '{events: [{eventId: $id, eventType: "lc.user", source: $s, userId: $u, payload: {}}]}')"
if wait_persisted "$LC_U_AFTER" 30; then
  pass "it is stored (GetEvent)"
  assert_eq "ListEvents of user U finds only it" "$LC_U_AFTER" "$(lc_list "$(lc_user "$LC_U")")"
else
  fail "it is stored within 30 s (GetEvent)" "$GC_ERR"
fi

LC_TOOK=$((SECONDS - LC_STARTED))
assert_json "the lifecycle area took $((LC_TOOK / 60))m$((LC_TOOK % 60))s wall time (at most 3 min)" '. <= 180' "$LC_TOOK"

lc_end
