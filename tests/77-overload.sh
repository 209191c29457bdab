# shellcheck shell=bash
# Overload, quick mode: `tributary-bench --quick --scenarios overload` starts
# an ingest of its own (its default bounds, --max-queue-delay 200ms so the
# short run surely sheds) and sends it three times the ingest scenario's
# callers, half with 4 MiB batches, with slow PublishStream and TailEvents
# clients that never read. Its report must show refusals as
# RESOURCE_EXHAUSTED with RetryInfo (never INTERNAL, UNKNOWN or a broken
# connection), every acknowledged event stored, ingest alive, and each
# service's peak memory under the ceiling computed from its bounds. How fast
# is printed, never checked (FAULTS.md has the full mode's figures).
# Sourced by test-system.sh (tests/lib.sh is loaded).

OVERLOAD_DIR="$TB_LOG_DIR/test-system"
OVERLOAD_JSON="$OVERLOAD_DIR/overload-quick.json"
OVERLOAD_TXT="$OVERLOAD_DIR/overload-quick.txt"

# overload_json NAME EXPR [DETAIL]: the jq expression is true of the report.
overload_json() {
  local name=$1 expr=$2 detail=${3:-.}
  if jq -e "$expr" "$OVERLOAD_JSON" >/dev/null 2>&1; then
    pass "$name"
  else
    fail "$name" "$(jq -r "$detail" "$OVERLOAD_JSON" 2>&1 | head -c 3000)"
  fi
}

section "overload (quick mode; output in $OVERLOAD_DIR)"
mkdir -p "$OVERLOAD_DIR"
rm -f "$OVERLOAD_JSON"
check_logged "tributary-bench --quick --scenarios overload exits 0" "$OVERLOAD_TXT" \
  "$TB_BIN_DIR/tributary-bench" --quick --scenarios overload --state-dir "$TB_STATE_DIR" \
  --deploy "$TB_ROOT/deploy.sh" --out "$OVERLOAD_JSON"
if ! jq -e '.scenarios.overload | type == "object"' "$OVERLOAD_JSON" >/dev/null 2>&1; then
  fail "the overload report was written ($OVERLOAD_JSON)" "$(head -c 2000 "$OVERLOAD_JSON" 2>&1)"
else
  pass "the overload report was written ($OVERLOAD_JSON)"
  sed -n '/^## Overload/,/^report:/p' "$OVERLOAD_TXT"
  O=.scenarios.overload
  overload_json "overload: ingest refused calls with RESOURCE_EXHAUSTED ($(jq "$O.resource_exhausted_calls" "$OVERLOAD_JSON"))" \
    "$O.resource_exhausted_calls > 0" "$O | {overload_small, overload_big}"
  overload_json "overload: every acknowledged event is stored" \
    "$O | .acked > 0 and .stored == .acked" "$O | {acked, stored}"
  overload_json "overload: the small callers were still served during the overload" \
    "$O.overload_small.acked > 0" "$O.overload_small"
  overload_json "overload: throughput came back after it ($(jq "$O.recovered_within_s" "$OVERLOAD_JSON") s to 80% of the baseline)" \
    "$O.recovery.acked > 0" "$O.recovery"
  overload_json "overload: every service's peak memory is under its ceiling" \
    "[$O.memory[] | select(.peak_mib == null or .peak_mib > .ceiling_mib)] == []" "$O.memory"
  overload_json "overload: the bench's own checks all pass (codes, RetryInfo, ingest alive)" \
    '(.checks | length) > 0 and all(.checks[]; .ok == true)' \
    '.checks[] | select(.ok != true) | "\(.name): \(.detail)"'
fi
check "every part of the deployment still runs after the overload" ./deploy.sh status
