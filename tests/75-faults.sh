# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# The no-loss promise under faults, quick mode: `tributary-bench --quick
# --scenarios faults` publishes with its own event ids (retrying with the
# same ids) while it kills the processor, ingest, the broker (durable engine
# only), freezes the broker, stops PostgreSQL at once, and kills query and
# admin, each started again by deploy.sh. Its report must show nothing lost
# or doubled, no INTERNAL or UNKNOWN, no publish ending in
# DEADLINE_EXCEEDED, and an acknowledgement after every fault. The full mode
# (longer outages, a second processor joining) is in BENCHMARKS.md.
# Sourced by test-system.sh (tests/lib.sh is loaded).

FAULTS_DIR="$TB_LOG_DIR/test-system"
FAULTS_JSON="$FAULTS_DIR/faults-quick.json"
FAULTS_TXT="$FAULTS_DIR/faults-quick.txt"

# faults_json NAME EXPR [DETAIL]: the jq expression is true of the report.
faults_json() {
  local name=$1 expr=$2 detail=${3:-.}
  if jq -e "$expr" "$FAULTS_JSON" >/dev/null 2>&1; then
    pass "$name"
  else
    fail "$name" "$(jq -r "$detail" "$FAULTS_JSON" 2>&1 | head -c 3000)"
  fi
}

# faults_repair: every part running again (should the run have been cut
# short with one down).
faults_repair() {
  local part
  for part in postgres broker tracesink ingest processor query admin; do
    if ! ./deploy.sh status --porcelain 2>/dev/null | awk -v p="$part" '$1 == p && $2 == "running" { f = 1 } END { exit !f }'; then
      printf 'starting %s, which the faults area left down\n' "$part" >&2
      ./deploy.sh start "$part" >&2
    fi
  done
}
faults_on_exit() {
  local rc=$?
  faults_repair
  run_prev_exit_trap FAULTS_PREV "$rc"
  exit "$rc"
}

section "faults (quick mode; output in $FAULTS_DIR)"
mkdir -p "$FAULTS_DIR"
rm -f "$FAULTS_JSON"
push_exit_trap FAULTS_PREV faults_on_exit
check_logged "tributary-bench --quick --scenarios faults exits 0" "$FAULTS_TXT" \
  "$TB_BIN_DIR/tributary-bench" --quick --scenarios faults --state-dir "$TB_STATE_DIR" \
  --deploy "$TB_ROOT/deploy.sh" --out "$FAULTS_JSON"
faults_repair
pop_exit_trap FAULTS_PREV
check "every part runs again after the faults" ./deploy.sh status

if ! jq -e '.scenarios.faults | type == "object"' "$FAULTS_JSON" >/dev/null 2>&1; then
  fail "the faults report was written ($FAULTS_JSON)" "$(head -c 2000 "$FAULTS_JSON" 2>&1)"
else
  pass "the faults report was written ($FAULTS_JSON)"
  sed -n '/^## Faults/,/^whole run/p' "$FAULTS_TXT"
  faults_json "faults: events were acknowledged ($(jq .scenarios.faults.acknowledged "$FAULTS_JSON"))" \
    '.scenarios.faults.acknowledged > 0' '.scenarios.faults'
  faults_json "faults: lost 0 and stored == acknowledged" \
    '.scenarios.faults | .lost == 0 and .stored == .acknowledged' '.scenarios.faults | {acknowledged, stored, lost}'
  faults_json "faults: duplicated 0" '.scenarios.faults.duplicated == 0' '.scenarios.faults | {duplicated}'
  faults_json "faults: every fault ran: processor, ingest, PostgreSQL, query and admin (and the broker's on the durable engine)" \
    '[.scenarios.faults.phases[].phase] as $p
      | ["kill -9 processor", "kill -9 ingest", "kill -9 query", "kill -9 admin"] - $p == []
        and any($p[]; startswith("PostgreSQL immediate stop"))
        and (.scenarios.faults.broker_engine == "memory"
             or (["kill -9 broker"] - $p == [] and any($p[]; startswith("SIGSTOP broker"))))' \
    '[.scenarios.faults.phases[].phase]'
  faults_json "faults: no client saw INTERNAL or UNKNOWN" \
    '[.scenarios.faults.phases[] | (.publish_calls, .publish_events, .query_reads, .admin_reads) | to_entries[]
      | select(.key == "Internal" or .key == "Unknown")] == []' \
    '[.scenarios.faults.phases[] | {phase, publish_calls, publish_events, query_reads, admin_reads, examples}]'
  faults_json "faults: no publish ended in DEADLINE_EXCEEDED" \
    '[.scenarios.faults.phases[].publish_calls.DeadlineExceeded // 0] | add == 0' \
    '[.scenarios.faults.phases[] | {phase, publish_calls}]'
  faults_json "faults: clients did see the faults (some call was not OK)" \
    '[.scenarios.faults.phases[] | (.publish_calls, .query_reads, .admin_reads) | to_entries[] | select(.key != "Ok") | .value] | add > 0' \
    '[.scenarios.faults.phases[] | {phase, publish_calls, query_reads, admin_reads}]'
  faults_json "faults: after every fault an event was acknowledged, and everything acknowledged before it was stored" \
    'all(.scenarios.faults.phases[1:][]; .timeline.back_to_first_ack_s != null and .timeline.fault_to_all_stored_s != null)' \
    '[.scenarios.faults.phases[] | {phase, timeline}]'
  faults_json "faults: the bench's own checks all pass" \
    '(.checks | length) > 0 and all(.checks[]; .ok == true)' \
    '.checks[] | select(.ok != true) | "\(.name): \(.detail)"'
fi
