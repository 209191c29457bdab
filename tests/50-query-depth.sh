# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables and SQL text.)
# AggregateEvents and TailEvents in depth, against the running services:
# a generated employee data set (average salary by gender, counts by birth
# month, payload filters), hourly counts by event type, bad requests, and a
# live tail. Every answer is compared with one computed independently from
# the same data: by this file's own arithmetic (python3) or by SQL (psql).
# Sourced by test-system.sh (tests/lib.sh is loaded). Every id, source and
# user carries the run id, so data from earlier runs never interferes.

QD_INGEST=tributary.v1.IngestService
QD_QUERY=tributary.v1.QueryService
QD_RUN=$T_RUN_ID
QD_NOW=$(date +%s)
# The employee data set is generated from this seed (the same seed gives the
# same payloads; the ids carry the run id).
QD_SEED=${QD_SEED:-5050}
QD_PGPORT=${QD_PGPORT:-55432}
QD_TMP=$(mktemp -d)

# qd_sql SQL: one value from the deployment's PostgreSQL (unaligned, tuples only).
qd_sql() {
  PGPASSWORD=${QD_PGPASSWORD:-postgres} psql -h 127.0.0.1 -p "$QD_PGPORT" -U postgres -d tributary \
    -X -q -v ON_ERROR_STOP=1 -Atc "$1"
}

# qd_stored_count_is SOURCE N: exactly N events with this source are stored.
qd_stored_count_is() {
  [[ "$(qd_sql "SELECT count(*) FROM events WHERE source = '$1'")" == "$2" ]]
}

# The data generators and the independent answers, in python3:
#   employees SEED RUN          the employee events (a JSON array)
#   by-gender EVENTS            rows: [gender] -> [avg salary, count]; and skipped
#   by-month EVENTS             rows: [UTC month of birth_date] -> [count]
#   hourly SEED RUN H0          the hourly events (a JSON array)
#   by-type-hour EVENTS ZONE [AFTER BEFORE]
#                               rows: [type, hour bucket in ZONE] -> [count]
#   rows EXPECTED ACTUAL ORDER  compares expected rows with a response's rows
#                               (numbers within 1e-6); ORDER: ordered|unordered
#   ascending ACTUAL            the non-null group keys are in ascending order
QD_PY=$(
  cat <<'PY'
import datetime as dt
import json
import random
import re
import sys
import zoneinfo
from decimal import Decimal

UTC = dt.timezone.utc


def employees(seed, run):
    rng = random.Random(seed)
    events = []
    edge_dates = {
        10: "1989-03-01T02:00:00+05:30",         # 1989-02-28T20:30Z: February
        11: "1989-04-30T23:30:00-02:00",         # 1989-05-01T01:30Z: May
        12: "1990-01-01",                         # a date: January
        14: "1989-12-31T23:59:59.999999Z",       # December
        15: "1990-01-01T00:00:00Z",               # January
        16: "1988-07-01T00:00:00+00:00",          # July
        17: "1988-08-01T00:30:00+01:00",          # 1988-07-31T23:30Z: July
        18: "1990-02-30",                         # not a date: no bucket
        19: "unknown",                            # not a date: no bucket
    }
    for i in range(200):
        p = {"gender": rng.choice("FMX")}
        if i % 29 == 3:
            pass  # salary absent
        elif i % 37 == 11:
            p["salary"] = str(rng.randint(30000, 90000))  # a string
        elif i == 100:
            p["salary"] = None
        elif i == 101:
            p["salary"] = True
        elif i == 102:
            p["salary"] = {"amount": 50000}
        elif rng.random() < 0.5:
            p["salary"] = rng.randint(30000, 120000)
        else:
            p["salary"] = round(rng.uniform(30000, 120000), 2)
        y, m, d = rng.choice([1988, 1989, 1990]), rng.randint(1, 12), rng.randint(1, 28)
        hh, mm, ss = rng.randrange(24), rng.randrange(60), rng.randrange(60)
        kind = rng.randrange(4)
        if kind == 0:
            bd = f"{y}-{m:02d}-{d:02d}"
        elif kind == 1:
            bd = f"{y}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z"
        elif kind == 2:
            bd = f"{y}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{rng.randrange(10**6):06d}Z"
        else:
            off = rng.choice(["+05:30", "-08:00", "+02:00", "-03:30", "+14:00"])
            bd = f"{y}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}{off}"
        bd = edge_dates.get(i, bd)
        if i not in (20, 21):  # birth_date absent
            p["birth_date"] = bd
        p["country"] = rng.choices(["DE", "FR", "US", "JP", "BR"], weights=[3, 2, 3, 1, 1])[0]
        p["org"] = {"unit": rng.choice(["eng", "ops", "sales"])}
        events.append({
            "eventId": f"{run}-emp-{i:03d}",
            "eventType": "employee.profile",
            "source": f"emp-{run}",
            "userId": f"emp{i % 150}-{run}",
            "payload": p,
        })
    return events


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def by_gender(events):
    groups = {}
    skipped = 0
    for e in events:
        p = e["payload"]
        g = groups.setdefault(p.get("gender"), {"n": 0, "salaries": []})
        g["n"] += 1
        if is_number(p.get("salary")):
            g["salaries"].append(Decimal(repr(p["salary"])))
        else:
            skipped += 1
    rows = []
    for k in sorted(groups):
        s = groups[k]["salaries"]
        avg = float(sum(s) / len(s)) if s else None
        rows.append({"group": [k], "values": [avg, groups[k]["n"]]})
    return {"rows": rows, "skipped": skipped}


def parse_time(s):
    if not isinstance(s, str):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            return dt.datetime.strptime(s, "%Y-%m-%d").replace(tzinfo=UTC)
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def stamp(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def by_month(events):
    counts = {}
    for e in events:
        t = parse_time(e["payload"].get("birth_date"))
        key = None
        if t is not None:
            t = t.astimezone(UTC)
            key = f"{t.year:04d}-{t.month:02d}-01T00:00:00Z"
        counts[key] = counts.get(key, 0) + 1
    keys = sorted(k for k in counts if k is not None) + ([None] if None in counts else [])
    return [{"group": [k], "values": [counts[k]]} for k in keys]


def hourly(seed, run, h0):
    rng = random.Random(seed + 1)
    types = ["hourly.click", "hourly.purchase", "hourly.view"]
    times = []
    for _ in range(42):
        t = rng.choice(types)
        us = rng.choice([0, rng.randrange(10**6)])
        times.append((t, h0 * 10**6 + (rng.randrange(6) * 3600 + rng.randrange(3600)) * 10**6 + us))
    # On and next to hour boundaries (microseconds).
    times.append(("hourly.view", (h0 + 2 * 3600) * 10**6))
    times.append(("hourly.view", (h0 + 2 * 3600) * 10**6 - 1))
    times.append(("hourly.click", (h0 + 6 * 3600) * 10**6 - 1))
    times.append(("hourly.purchase", h0 * 10**6))
    events = []
    for i, (t, us) in enumerate(times):
        s = dt.datetime.fromtimestamp(us // 10**6, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        events.append({
            "eventId": f"{run}-hourly-{i:03d}",
            "eventType": t,
            "source": f"hourly-{run}",
            "userId": f"hu{i % 7}-{run}",
            "occurredAt": f"{s}.{us % 10**6:06d}Z",
            "payload": {"i": i},
        })
    return events


def by_type_hour(events, zone, after=None, before=None):
    tz = zoneinfo.ZoneInfo(zone)
    lo = parse_time(after) if after else None
    hi = parse_time(before) if before else None
    counts = {}
    for e in events:
        t = parse_time(e["occurredAt"])
        if (lo and t < lo) or (hi and t >= hi):
            continue
        local = t.astimezone(tz).replace(minute=0, second=0, microsecond=0)
        key = (e["eventType"], stamp(local))
        counts[key] = counts.get(key, 0) + 1
    return [{"group": list(k), "values": [counts[k]]} for k in sorted(counts)]


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= 1e-6


def compare_rows(expected, actual, order):
    got = actual["rows"]
    problems = []
    if len(got) != len(expected):
        problems.append(f"{len(got)} rows, expected {len(expected)}")
    if order == "unordered":
        want = {json.dumps(r["group"]): r["values"] for r in expected}
        have = {json.dumps(r["group"]): r["values"] for r in got}
        for k in sorted(set(want) | set(have)):
            w, h = want.get(k), have.get(k)
            if w is None or h is None or len(w) != len(h) or not all(map(close, w, h)):
                problems.append(f"group {k}: expected {w}, got {h}")
    else:
        for i, (w, h) in enumerate(zip(expected, got)):
            if w["group"] != h["group"] or len(w["values"]) != len(h["values"]) \
                    or not all(map(close, w["values"], h["values"])):
                problems.append(f"row {i}: expected {json.dumps(w)}, got {json.dumps(h)}")
    for p in problems:
        print(p)
    return not problems


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "employees":
        print(json.dumps(employees(int(args[0]), args[1])))
    elif cmd == "by-gender":
        print(json.dumps(by_gender(json.loads(args[0]))))
    elif cmd == "by-month":
        print(json.dumps(by_month(json.loads(args[0]))))
    elif cmd == "hourly":
        print(json.dumps(hourly(int(args[0]), args[1], int(args[2]))))
    elif cmd == "by-type-hour":
        print(json.dumps(by_type_hour(json.loads(args[0]), *args[1:])))
    elif cmd == "rows":
        sys.exit(0 if compare_rows(json.loads(args[0]), json.loads(args[1]), args[2]) else 1)
    elif cmd == "ascending":
        keys = [r["group"] for r in json.loads(args[0])["rows"] if None not in r["group"]]
        if keys != sorted(keys):
            print("not ascending:", keys)
            sys.exit(1)
    else:
        sys.exit(f"unknown command {cmd}")


main()
PY
)
qd_py() { python3 -c "$QD_PY" "$@"; }

# qd_rows_match EXPECTED_ROWS RESPONSE [ORDER]: the response's rows are the
# expected ones (values within 1e-6), in order unless ORDER is "unordered".
qd_rows_match() { qd_py rows "$1" "$2" "${3:-ordered}"; }

# qd_aggregate NAME REQUEST_JSON: AggregateEvents answers OK (a check); GC_OUT
# then holds the response.
qd_aggregate() { expect_ok "$1" "$QUERY_ADDR" "$QD_QUERY/AggregateEvents" "$2"; }

# qd_sql_rows SQL: rows as JSON from a query selecting (group json array, values json array).
qd_sql_rows() {
  qd_sql "SELECT coalesce(json_agg(json_build_object('group', g, 'values', v) ORDER BY n), '[]') FROM ($1) q"
}

if [[ ! "$QD_RUN" =~ ^[A-Za-z0-9._:-]{1,80}$ ]]; then
  fail "query depth: the run id is usable in event ids and SQL" "T_RUN_ID=$QD_RUN"
fi

# ================================================================ employee data set
section "AggregateEvents: employee data set"
QD_EMP_SOURCE="emp-$QD_RUN"
QD_EMP=$(qd_py employees "$QD_SEED" "$QD_RUN")
QD_EMP_N=$(jq length <<<"$QD_EMP")
if expect_ok "PublishBatch: $QD_EMP_N generated employee events (seed $QD_SEED)" "$INGEST_ADDR" "$QD_INGEST/PublishBatch" @ \
  <<<"$(jq -c '{events: .}' <<<"$QD_EMP")"; then
  assert_json "PublishBatch: every employee event is accepted" '.accepted == $n and .rejected == 0' "$GC_OUT" --argjson n "$QD_EMP_N"
fi
check "employee events: all $QD_EMP_N stored (within 60 s)" poll 60 qd_stored_count_is "$QD_EMP_SOURCE" "$QD_EMP_N"

QD_EMP_FILTER=$(jq -nc --arg s "$QD_EMP_SOURCE" '{source: $s}')

# Average salary and count by gender.
QD_WANT=$(qd_py by-gender "$QD_EMP")
QD_WANT_SKIPPED=$(jq .skipped <<<"$QD_WANT")
if qd_aggregate "AggregateEvents: by /gender, AVG /salary and COUNT" "$(jq -nc --argjson f "$QD_EMP_FILTER" '{filter: $f,
    groupBy: [{payloadPath: "/gender"}],
    measures: [{aggregation: "AGGREGATION_AVG", payloadPath: "/salary"}, {aggregation: "AGGREGATION_COUNT"}]}')"; then
  R=$GC_OUT
  check "by gender: rows (F, M, X) with the average salary and count computed here" qd_rows_match "$(jq -c .rows <<<"$QD_WANT")" "$R"
  assert_eq "by gender: skipped = events whose salary is absent or not a number" "\"$QD_WANT_SKIPPED\"" "$(jq -c .skipped <<<"$R")"
  assert_json "by gender: columns name the group and the measures" '.columns == ["/gender", "avg(/salary)", "count"]' "$R"
  assert_json "by gender: the counts add up to every event" '([.rows[].values[1]] | add) == $n' "$R" --argjson n "$QD_EMP_N"
fi

# Counts by UTC birth month (dates, RFC 3339 with Z, fractions and offsets).
QD_WANT=$(qd_py by-month "$QD_EMP")
if qd_aggregate "AggregateEvents: by MONTH of /birth_date (UTC), COUNT" "$(jq -nc --argjson f "$QD_EMP_FILTER" '{filter: $f,
    groupBy: [{timeBucket: {width: "BUCKET_WIDTH_MONTH", timeZone: "UTC", payloadPath: "/birth_date"}}]}')"; then
  R=$GC_OUT
  check "by birth month: the count per month equals the one computed here ($(jq length <<<"$QD_WANT") buckets, absent/invalid dates null)" \
    qd_rows_match "$QD_WANT" "$R" unordered
  check "by birth month: the month rows are in ascending order" qd_py ascending "$R"
  assert_json "by birth month: buckets are RFC 3339 UTC month starts" \
    '[.rows[].group[0] | select(. != null)] | all(test("^[0-9]{4}-[0-9]{2}-01T00:00:00Z$"))' "$R"
  assert_eq "by birth month: skipped is 0 (no numeric measure)" '"0"' "$(jq -c .skipped <<<"$R")"
fi

# payloadMatches with a group, against SQL.
QD_DE_SQL="FROM events WHERE source = '$QD_EMP_SOURCE' AND payload->>'country' = 'DE'"
QD_SQL_WANT=$(qd_sql_rows "SELECT payload->>'gender' AS n, json_build_array(payload->>'gender') AS g,
    json_build_array(avg(CASE WHEN jsonb_typeof(payload->'salary') = 'number' THEN (payload->>'salary')::numeric END)::float8,
                     count(*)) AS v
  $QD_DE_SQL GROUP BY 1")
QD_SQL_SKIPPED=$(qd_sql "SELECT count(*) $QD_DE_SQL AND jsonb_typeof(payload->'salary') IS DISTINCT FROM 'number'")
if qd_aggregate "AggregateEvents: payloadMatches /country = \"DE\", by /gender, AVG /salary and COUNT" \
  "$(jq -nc --arg s "$QD_EMP_SOURCE" '{filter: {source: $s, payloadMatches: [{path: "/country", value: "DE"}]},
    groupBy: [{payloadPath: "/gender"}],
    measures: [{aggregation: "AGGREGATION_AVG", payloadPath: "/salary"}, {aggregation: "AGGREGATION_COUNT"}]}')"; then
  R=$GC_OUT
  check "country DE by gender: rows equal the SQL answer" qd_rows_match "$QD_SQL_WANT" "$R"
  assert_eq "country DE by gender: skipped equals the SQL count" "\"$QD_SQL_SKIPPED\"" "$(jq -c .skipped <<<"$R")"
fi

QD_SQL_WANT=$(qd_sql_rows "SELECT payload->>'gender' AS n, json_build_array(payload->>'gender') AS g, json_build_array(count(*)) AS v
  $QD_DE_SQL AND payload->'org'->>'unit' = 'eng' GROUP BY 1")
if qd_aggregate "AggregateEvents: two payloadMatches (/country DE, nested /org/unit eng), by /gender" \
  "$(jq -nc --arg s "$QD_EMP_SOURCE" '{filter: {source: $s,
      payloadMatches: [{path: "/country", value: "DE"}, {path: "/org/unit", value: "eng"}]},
    groupBy: [{payloadPath: "/gender"}]}')"; then
  check "country DE and unit eng by gender: rows equal the SQL answer" qd_rows_match "$QD_SQL_WANT" "$GC_OUT"
fi

QD_SQL_WANT=$(qd_sql_rows "SELECT payload->>'country' AS n, json_build_array(payload->>'country') AS g,
    json_build_array(sum(s)::float8, min(s)::float8, max(s)::float8, count(DISTINCT user_id)) AS v
  FROM (SELECT payload, user_id, CASE WHEN jsonb_typeof(payload->'salary') = 'number' THEN (payload->>'salary')::numeric END AS s
        FROM events WHERE source = '$QD_EMP_SOURCE') e GROUP BY 1")
if qd_aggregate "AggregateEvents: by /country, SUM, MIN, MAX /salary and COUNT_DISTINCT_USERS" \
  "$(jq -nc --argjson f "$QD_EMP_FILTER" '{filter: $f, groupBy: [{payloadPath: "/country"}],
    measures: [{aggregation: "AGGREGATION_SUM", payloadPath: "/salary"}, {aggregation: "AGGREGATION_MIN", payloadPath: "/salary"},
               {aggregation: "AGGREGATION_MAX", payloadPath: "/salary"}, {aggregation: "AGGREGATION_COUNT_DISTINCT_USERS"}]}')"; then
  R=$GC_OUT
  check "by country: SUM, MIN, MAX and distinct users equal the SQL answer" qd_rows_match "$QD_SQL_WANT" "$R"
  assert_eq "by country: skipped is counted once per event over several measures" "\"$QD_WANT_SKIPPED\"" "$(jq -c .skipped <<<"$R")"
fi

# ================================================================ hourly counts
section "AggregateEvents: hourly counts by event type"
# Six whole hours, starting seven hours ago: all in the past.
QD_H0=$(((QD_NOW / 3600 - 7) * 3600))
QD_HOURLY_SOURCE="hourly-$QD_RUN"
QD_HOURLY=$(qd_py hourly "$QD_SEED" "$QD_RUN" "$QD_H0")
QD_HOURLY_N=$(jq length <<<"$QD_HOURLY")
if expect_ok "PublishBatch: $QD_HOURLY_N events of three types over six hours" "$INGEST_ADDR" "$QD_INGEST/PublishBatch" @ \
  <<<"$(jq -c '{events: .}' <<<"$QD_HOURLY")"; then
  assert_json "PublishBatch: every hourly event is accepted" '.accepted == $n and .rejected == 0' "$GC_OUT" --argjson n "$QD_HOURLY_N"
fi
check "hourly events: all $QD_HOURLY_N stored (within 60 s)" poll 60 qd_stored_count_is "$QD_HOURLY_SOURCE" "$QD_HOURLY_N"

# qd_hourly_request ZONE [AFTER BEFORE]: by event type and hour bucket in ZONE.
qd_hourly_request() {
  jq -nc --arg s "$QD_HOURLY_SOURCE" --arg z "$1" --arg a "${2:-}" --arg b "${3:-}" '{
    filter: ({source: $s} + (if $a == "" then {} else {occurredAfter: $a, occurredBefore: $b} end)),
    groupBy: [{field: "EVENT_FIELD_EVENT_TYPE"}, {timeBucket: {width: "BUCKET_WIDTH_HOUR", timeZone: $z}}],
    measures: [{aggregation: "AGGREGATION_COUNT"}]}'
}
QD_WANT=$(qd_py by-type-hour "$QD_HOURLY" UTC)
QD_SQL_WANT=$(qd_sql_rows "SELECT event_type || h AS n, json_build_array(event_type, h) AS g, json_build_array(count(*)) AS v
  FROM (SELECT event_type, to_char(date_trunc('hour', occurred_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS h
        FROM events WHERE source = '$QD_HOURLY_SOURCE') e GROUP BY event_type, h")
if qd_aggregate "AggregateEvents: by EVENT_TYPE and HOUR (UTC), COUNT" "$(qd_hourly_request UTC)"; then
  R=$GC_OUT
  check "by type and hour: rows equal the counts computed here, ordered by type then hour ($(jq length <<<"$QD_WANT") rows)" \
    qd_rows_match "$QD_WANT" "$R"
  check "by type and hour: rows equal the SQL date_trunc('hour', occurred_at) answer" qd_rows_match "$QD_SQL_WANT" "$R"
  assert_json "by type and hour: the counts add up to every event" '([.rows[].values[0]] | add) == $n' "$R" --argjson n "$QD_HOURLY_N"
fi

if qd_aggregate "AggregateEvents: by EVENT_TYPE and HOUR in Asia/Kolkata (UTC+05:30)" "$(qd_hourly_request Asia/Kolkata)"; then
  check "by type and Kolkata hour: buckets start at hh:30 UTC, counts equal the ones computed here" \
    qd_rows_match "$(qd_py by-type-hour "$QD_HOURLY" Asia/Kolkata)" "$GC_OUT"
fi

QD_AFTER=$(rfc3339 $((QD_H0 + 2 * 3600)))
QD_BEFORE=$(rfc3339 $((QD_H0 + 4 * 3600)))
if qd_aggregate "AggregateEvents: by EVENT_TYPE and HOUR within [H0+2h, H0+4h)" "$(qd_hourly_request UTC "$QD_AFTER" "$QD_BEFORE")"; then
  check "by type and hour in a window: occurredAfter inclusive, occurredBefore exclusive, to the microsecond" \
    qd_rows_match "$(qd_py by-type-hour "$QD_HOURLY" UTC "$QD_AFTER" "$QD_BEFORE")" "$GC_OUT"
fi

# ================================================================ bad requests
section "AggregateEvents: bad requests"
qd_bad() {
  local name=$1 request
  request=$(jq -nc --arg s "$2" "$3")
  expect_code "AggregateEvents: $name is InvalidArgument" InvalidArgument "$QUERY_ADDR" "$QD_QUERY/AggregateEvents" "$request"
}
QD_TZ_BAD='{filter: {source: $s}, groupBy: [{timeBucket: {width: "BUCKET_WIDTH_HOUR", timeZone: "Mars/Olympus_Mons"}}]}'
qd_bad "an unknown time zone" "$QD_HOURLY_SOURCE" "$QD_TZ_BAD"
qd_bad "an unknown time zone, when no event matches" "none-$QD_RUN" "$QD_TZ_BAD"
qd_bad "a group payloadPath without a leading '/'" "$QD_EMP_SOURCE" '{filter: {source: $s}, groupBy: [{payloadPath: "gender"}]}'
qd_bad "a measure payloadPath without a leading '/'" "$QD_EMP_SOURCE" \
  '{filter: {source: $s}, measures: [{aggregation: "AGGREGATION_AVG", payloadPath: "salary"}]}'
qd_bad "a time bucket payloadPath without a leading '/'" "$QD_EMP_SOURCE" \
  '{filter: {source: $s}, groupBy: [{timeBucket: {width: "BUCKET_WIDTH_MONTH", payloadPath: "birth_date"}}]}'
qd_bad "SUM without payloadPath" "$QD_EMP_SOURCE" '{filter: {source: $s}, measures: [{aggregation: "AGGREGATION_SUM"}]}'
assert_contains "AggregateEvents: the SUM error names measures[0].payload_path" "$GC_ERR" "measures[0].payload_path"
qd_bad "a time bucket without a width" "$QD_EMP_SOURCE" '{filter: {source: $s}, groupBy: [{timeBucket: {timeZone: "UTC"}}]}'
qd_bad "a groupBy with no key" "$QD_EMP_SOURCE" '{filter: {source: $s}, groupBy: [{}]}'

# ================================================================ TailEvents
section "TailEvents"
QD_TAIL_USER="tail-$QD_RUN"
QD_TAIL_OUT="$QD_TMP/tail.json"
QD_TAIL_ERR="$QD_TMP/tail.err"
# qd_tail_event ID USER: a tail test event.
qd_tail_event() {
  jq -nc --arg id "$QD_RUN-$1" --arg u "$2" --arg s "tailsrc-$QD_RUN" '{eventId: $id, eventType: "tail.check", source: $s, userId: $u, payload: {id: $id}}'
}
# qd_tail_has ID: the tail output holds the event (grpcurl prints each message whole).
qd_tail_has() { grep -qF "\"$QD_RUN-$1\"" "$QD_TAIL_OUT"; }

# A matching event stored before the tail starts: a tail is live, not a replay.
expect_ok "TailEvents: publish a matching event before the tail starts" "$INGEST_ADDR" "$QD_INGEST/Publish" \
  "$(jq -nc --argjson e "$(qd_tail_event tail-before "$QD_TAIL_USER")" '{event: $e}')"
check "TailEvents: the earlier event is stored" wait_persisted "$QD_RUN-tail-before" 30

"$TB_GRPCURL" -plaintext -d "$(jq -nc --arg u "$QD_TAIL_USER" '{filter: {userId: $u}}')" -max-time 60 \
  "$QUERY_ADDR" "$QD_QUERY/TailEvents" >"$QD_TAIL_OUT" 2>"$QD_TAIL_ERR" &
QD_TAIL_PID=$!
sleep 1
# A first matching event shows the tail is connected before the rest is sent.
expect_ok "TailEvents: publish a first matching event" "$INGEST_ADDR" "$QD_INGEST/Publish" \
  "$(jq -nc --argjson e "$(qd_tail_event tail-first "$QD_TAIL_USER")" '{event: $e}')"
check "TailEvents: the first matching event arrives (within 20 s)" poll 20 qd_tail_has tail-first

QD_TAIL_BATCH=$(for i in 1 2 3 4; do
  qd_tail_event "tail-m$i" "$QD_TAIL_USER"
  qd_tail_event "tail-o$i" "other-$QD_RUN"
done | jq -sc '{events: .}')
if expect_ok "TailEvents: publish four matching and four other events, interleaved" "$INGEST_ADDR" "$QD_INGEST/PublishBatch" "$QD_TAIL_BATCH"; then
  assert_json "TailEvents: all eight accepted" '.accepted == 8 and .rejected == 0' "$GC_OUT"
fi
expect_ok "TailEvents: publish one more event for another user" "$INGEST_ADDR" "$QD_INGEST/Publish" \
  "$(jq -nc --argjson e "$(qd_tail_event tail-o5 "tail-$QD_RUN-x")" '{event: $e}')"
check "TailEvents: the other users' events are stored" poll 30 qd_stored_count_is "tailsrc-$QD_RUN" 11
# Published after every other event was stored: once it arrives, any of them
# the tail would have sent has arrived too.
expect_ok "TailEvents: publish a last matching event" "$INGEST_ADDR" "$QD_INGEST/Publish" \
  "$(jq -nc --argjson e "$(qd_tail_event tail-last "$QD_TAIL_USER")" '{event: $e}')"
check "TailEvents: the last matching event arrives (within 20 s)" poll 20 qd_tail_has tail-last
sleep 0.5
QD_TAIL_ALIVE=0
kill -0 "$QD_TAIL_PID" 2>/dev/null && QD_TAIL_ALIVE=1
kill "$QD_TAIL_PID" 2>/dev/null
wait "$QD_TAIL_PID" 2>/dev/null
assert_eq "TailEvents: the stream stays open while the client reads" 1 "$QD_TAIL_ALIVE"

if QD_TAILED=$(jq -sc '.' "$QD_TAIL_OUT" 2>&1); then
  pass "TailEvents: the output is a sequence of JSON messages"
  assert_eq "TailEvents: exactly the matching events published after it connected, none other" \
    "$(for n in first last m1 m2 m3 m4; do echo "$QD_RUN-tail-$n"; done | sort | xargs)" \
    "$(jq -r '.[].event.eventId' <<<"$QD_TAILED" | sort | xargs)"
  assert_json "TailEvents: streamed events carry the stored fields (user, type, payload, persistedAt, offset)" \
    'length > 0 and all(.event.userId == $u and .event.eventType == "tail.check" and .event.payload.id == .event.eventId
      and (.persistedAt | type == "string") and (.offset | test("^[0-9]+$")))' "$QD_TAILED" --arg u "$QD_TAIL_USER"
else
  fail "TailEvents: the output is a sequence of JSON messages" "$QD_TAILED" "$(head -c 2000 "$QD_TAIL_ERR")"
fi

rm -rf "$QD_TMP"
