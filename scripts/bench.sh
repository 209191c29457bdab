#!/usr/bin/env bash
# Runs the benchmarks on both storage engines of the local broker.
# scripts/bench.sh --help says what it does.
set -euo pipefail

TB_LOG_PREFIX=bench
# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

DEPLOY="$TB_ROOT/deploy.sh"
BENCH_BIN="$TB_BIN_DIR/tributary-bench"
# deploy.sh must see the same state directory, even when it was given relative.
export TRIBUTARY_STATE_DIR="$TB_STATE_DIR"

usage() {
  cat <<EOF
Usage: scripts/bench.sh [--quick] [--engine memory|postgres|both] [--out-dir DIR]
                        [-- EXTRA_BENCH_ARGS...]

Runs the benchmarks (tributary-bench) against the local deployment once per
storage engine of the nisshi broker, memory first, then postgres. For each
engine: ./deploy.sh down (when anything runs), ./deploy.sh up --broker-engine
ENGINE (which builds the release binaries, tributary-bench among them), then
  tributary-bench --state-dir \$TRIBUTARY_STATE_DIR --deploy ./deploy.sh
                  --out DIR/bench-ENGINE.json [--quick] EXTRA_BENCH_ARGS...
with its output also written to DIR/bench-ENGINE.txt.

The deployments are local (PostgreSQL and broker): options saved by an earlier
'up' (--kafka, --postgres) are not kept. When nothing ran before, the script
ends with ./deploy.sh down; otherwise the deployment is left running with the
last engine. The exit status is non-zero when a run failed.

Options:
  --quick            The bench's quick mode (what ./test-system.sh 70-bench
                     runs against the running deployment).
  --engine ENGINE    memory, postgres or both (default both).
  --out-dir DIR      Where the results go (default \$TRIBUTARY_STATE_DIR/bench).
  -- ARGS...         Passed on to tributary-bench.
  -h, --help         This text.

Environment: TRIBUTARY_STATE_DIR, CARGO_TARGET_DIR as for deploy.sh. Needs
root, as deploy.sh does.
EOF
}

# True when any part of the deployment runs (status exits non-zero then too,
# unless every part is healthy, hence no pipe on its exit status).
deployment_running() {
  local status
  status=$("$DEPLOY" status --porcelain 2>/dev/null) || true
  awk '$2 == "running" { found = 1 } END { exit !found }' <<<"$status"
}

OUT_DIR="$TB_STATE_DIR/bench"
RUNNING_BEFORE=0
DEPLOYED=0
LAST_ENGINE=""

# Leaves the machine as found: stopped, or running (then with the last engine).
finish() {
  local rc=$?
  if ((DEPLOYED)); then
    if ((RUNNING_BEFORE)); then
      log_info "the deployment was running before: left running with the $LAST_ENGINE broker engine (./deploy.sh down stops it)"
    else
      log_info "stopping the deployment this script started"
      "$DEPLOY" down || rc=1
    fi
  fi
  exit "$rc"
}

# run_bench ENGINE QUICK EXTRA...: one benchmark run; its status.
run_bench() {
  local engine=$1 quick=$2
  shift 2
  local json="$OUT_DIR/bench-$engine.json" txt="$OUT_DIR/bench-$engine.txt"
  local args=(--state-dir "$TB_STATE_DIR" --deploy "$DEPLOY" --out "$json")
  ((quick)) && args+=(--quick)
  # A report left by an earlier run must not pass for this one's.
  rm -f "$json"
  log_info "running tributary-bench on the $engine engine (output: $txt)"
  "$BENCH_BIN" "${args[@]}" "$@" | tee "$txt"
}

main() {
  local quick=0 engine=both extra=() engines=() e failed=()
  while (($#)); do
    case $1 in
      -h | --help)
        usage
        return 0
        ;;
      --quick)
        quick=1
        shift
        ;;
      --engine)
        (($# >= 2)) || die "--engine needs a value: memory, postgres or both"
        engine=$2
        shift 2
        ;;
      --engine=*)
        engine=${1#*=}
        shift
        ;;
      --out-dir)
        (($# >= 2)) || die "--out-dir needs a directory"
        OUT_DIR=$2
        [[ -n "$OUT_DIR" ]] || die "--out-dir needs a directory"
        shift 2
        ;;
      --out-dir=*)
        OUT_DIR=${1#*=}
        [[ -n "$OUT_DIR" ]] || die "--out-dir needs a directory"
        shift
        ;;
      --)
        shift
        extra=("$@")
        break
        ;;
      *) die "unknown option or argument '$1' (see --help)" ;;
    esac
  done
  case $engine in
    both) engines=(memory postgres) ;;
    memory | postgres) engines=("$engine") ;;
    *) die "--engine wants memory, postgres or both, not '$engine'" ;;
  esac
  [[ $EUID -eq 0 ]] || die "run as root (deploy.sh up and down need it)"
  mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"

  deployment_running && RUNNING_BEFORE=1
  trap finish EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for e in "${engines[@]}"; do
    # The engine is a saved option of 'up': changing it needs a 'down'.
    if deployment_running; then
      log_info "stopping the deployment to switch to the $e engine"
      "$DEPLOY" down || die "./deploy.sh down failed"
    fi
    DEPLOYED=1 LAST_ENGINE=$e
    log_info "deploying with --broker-engine $e"
    "$DEPLOY" up --broker-engine "$e" || die "./deploy.sh up --broker-engine $e failed"
    # Not in TB_BINARIES: that list is what the deployment itself runs.
    [[ -x "$BENCH_BIN" ]] || die "$BENCH_BIN is missing (cargo build --release --workspace --bins builds it)"
    if run_bench "$e" "$quick" "${extra[@]}"; then
      log_info "$e engine: done, report $OUT_DIR/bench-$e.json"
    else
      log_warn "$e engine: tributary-bench failed (output: $OUT_DIR/bench-$e.txt)"
      failed+=("$e")
    fi
  done
  ((${#failed[@]} == 0)) || die "the bench failed on: ${failed[*]}"
  log_info "results in $OUT_DIR"
}

main "$@"
