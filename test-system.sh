#!/usr/bin/env bash
# The end-to-end check of a running Tributary deployment.
#
#   ./test-system.sh [PATTERN...]
#
# Runs every tests/NN-*.sh in order (or those whose name contains a PATTERN)
# against the local deployment, with real grpcurl calls. When nothing answers
# (ingest health fails) it first runs ./deploy.sh and, on exit, stops again
# exactly the parts it started. Prints PASS/FAIL per check, then
# "N passed, N failed"; the exit status is non-zero when a check failed.
#
# Environment: TRIBUTARY_STATE_DIR, CARGO_TARGET_DIR as for deploy.sh.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT" || exit 1
TB_LOG_PREFIX=test-system
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

case "${1:-}" in
  -h | --help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

PARTS_IN_STOP_ORDER=(web prometheus alertmanager alertsink dispatch ingest processor query admin tracesink broker postgres)
DEPLOYED=0
RUNNING_BEFORE=()

running_parts() {
  ./deploy.sh status --porcelain 2>/dev/null | awk '$2 == "running" { print $1 }'
}

# Stops what this run started: the parts running now that were not before.
cleanup() {
  local rc=$? part started=() all=1
  ((DEPLOYED)) || exit "$rc"
  while read -r part; do
    [[ " ${RUNNING_BEFORE[*]} " == *" $part "* ]] || started+=("$part")
  done < <(running_parts)
  ((${#started[@]})) || exit "$rc"
  for part in "${PARTS_IN_STOP_ORDER[@]}"; do
    [[ " ${started[*]} " == *" $part "* ]] || all=0
  done
  if ((all)); then
    log_info "stopping the deployment this run started"
    ./deploy.sh down || rc=1
  else
    for part in "${PARTS_IN_STOP_ORDER[@]}"; do
      if [[ " ${started[*]} " == *" $part "* ]]; then
        log_info "stopping $part (this run started it)"
        ./deploy.sh stop "$part" || rc=1
      fi
    done
  fi
  exit "$rc"
}

ensure_apt jq curl
ensure_grpcurl
# shellcheck source=tests/lib.sh
source "$ROOT/tests/lib.sh"

# The areas run against the plain deployment (tests/80-secure.sh switches to
# --secure and back on its own). A --secure one found running is put back at
# the end.
SECURE_FOUND=0
if grep -qx 'CFG_SECURE=1' "$TB_STATE_DIR/deploy.env" 2>/dev/null; then
  log_info "a --secure deployment runs: the tests switch to the plain one and put it back at the end"
  SECURE_FOUND=1
  ./deploy.sh down || exit 1
  trap 'rc=$?; log_info "putting back the --secure deployment"; ./deploy.sh down >/dev/null; ./deploy.sh up --secure --no-build >/dev/null || rc=1; exit "$rc"' EXIT
  trap 'exit 130' INT TERM
fi

if [[ "$(grpc_health "$INGEST_ADDR")" != SERVING ]]; then
  log_info "ingest does not answer on $INGEST_ADDR: deploying"
  mapfile -t RUNNING_BEFORE < <(running_parts)
  DEPLOYED=1
  ((SECURE_FOUND)) || trap cleanup EXIT
  trap 'exit 130' INT TERM
  ./deploy.sh up
  deploy_rc=$?
  if ((deploy_rc != 0)); then
    fail "deploy.sh up" "exit status $deploy_rc (logs: $TB_LOG_DIR)"
    summary
    exit 1
  fi
  pass "deploy.sh up"
fi

files=()
for f in "$ROOT"/tests/[0-9][0-9]-*.sh; do
  [[ -e "$f" ]] || continue
  if (($#)); then
    match=0
    for pattern in "$@"; do
      [[ "$(basename "$f")" == *"$pattern"* ]] && match=1
    done
    ((match)) || continue
  fi
  files+=("$f")
done

for f in "${files[@]}"; do
  section "$(basename "$f")"
  # shellcheck disable=SC1090
  source "$f"
done

summary
((T_FAILED == 0))
