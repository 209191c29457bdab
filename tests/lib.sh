# shellcheck shell=bash disable=SC2034
# (SC2034: JQ_DEFS and the like are used by the test files that source this.)
# Helpers for the system tests: counters, checks, a grpcurl wrapper and JSON
# via jq. Sourced by test-system.sh before the tests/NN-*.sh files.

if [[ -z "${TB_LIB_SOURCED:-}" ]]; then
  # shellcheck source=scripts/lib.sh
  source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/scripts/lib.sh"
fi

T_PASSED=0
T_FAILED=0
T_FAILURES=()

INGEST_ADDR=${INGEST_ADDR:-127.0.0.1:50051}
QUERY_ADDR=${QUERY_ADDR:-127.0.0.1:50052}
PROCESSOR_ADDR=${PROCESSOR_ADDR:-127.0.0.1:50054}

# A run id that keeps this run's data apart from earlier runs' data.
T_RUN_ID=${T_RUN_ID:-r$(date +%s)$((RANDOM % 10000))}

# Sections carry the wall-clock time since the run began, so a slow or stuck
# CI run shows where its minutes went.
section() { printf '\n== %s  [+%dm%02ds]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

pass() {
  T_PASSED=$((T_PASSED + 1))
  printf 'PASS  %s\n' "$1"
}

# fail NAME [DETAIL...]: DETAIL is printed indented, at most 40 lines.
fail() {
  local name=$1
  shift
  T_FAILED=$((T_FAILED + 1))
  T_FAILURES+=("$name")
  printf 'FAIL  %s\n' "$name"
  if (($#)); then
    printf '%s\n' "$@" | head -n 40 | sed 's/^/      /'
  fi
}

# check NAME CMD...: passes when CMD exits 0; prints its output on failure.
check() {
  local name=$1 out rc
  shift
  out=$("$@" 2>&1)
  rc=$?
  if ((rc == 0)); then
    pass "$name"
  else
    fail "$name" "exit status $rc: $*" "$out"
  fi
  return "$rc"
}

# check_logged NAME LOGFILE CMD...: as check, for long outputs: the output goes
# to LOGFILE and its tail is printed on failure.
check_logged() {
  local name=$1 log=$2 rc started=$SECONDS took
  shift 2
  mkdir -p "$(dirname "$log")"
  "$@" >"$log" 2>&1
  rc=$?
  took="took $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s"
  if ((rc == 0)); then
    pass "$name ($took)"
  else
    fail "$name" "exit status $rc after ${took#took }: $* (full output: $log)" "$(tail -n 40 "$log")"
  fi
  return "$rc"
}

assert_eq() {
  local name=$1 expected=$2 actual=$3
  if [[ "$expected" == "$actual" ]]; then
    pass "$name"
  else
    fail "$name" "expected: $expected" "actual:   $actual"
    return 1
  fi
}

assert_contains() {
  local name=$1 haystack=$2 needle=$3
  if [[ "$haystack" == *"$needle"* ]]; then
    pass "$name"
  else
    fail "$name" "expected to contain: $needle" "in: $haystack"
    return 1
  fi
}

assert_not_contains() {
  local name=$1 haystack=$2 needle=$3
  if [[ "$haystack" != *"$needle"* ]]; then
    pass "$name"
  else
    fail "$name" "expected not to contain: $needle" "in: $haystack"
    return 1
  fi
}

assert_match() {
  local name=$1 regex=$2 actual=$3
  if [[ "$actual" =~ $regex ]]; then
    pass "$name"
  else
    fail "$name" "expected to match: $regex" "actual: $actual"
    return 1
  fi
}

# assert_json NAME JQ_EXPR JSON [JQ_ARG...]: passes when the jq expression is
# true for JSON; JQ_ARGs (e.g. --arg id X) go to jq before the expression.
assert_json() {
  local name=$1 expr=$2 json=$3 result
  shift 3
  if result=$(jq -e "$@" "$expr" <<<"$json" 2>&1); then
    pass "$name"
  else
    fail "$name" "jq: $expr => $result" "json: $(head -c 2000 <<<"$json")"
    return 1
  fi
}

# jq definitions the tests share. ts: an RFC 3339 UTC timestamp as integer
# microseconds since the epoch.
JQ_DEFS='def ts: capture("^(?<s>[^.Z]+)(\\.(?<f>[0-9]+))?Z$") | ((.s + "Z") | fromdateiso8601) * 1000000 + (((.f // "") + "000000")[0:6] | tonumber);'

# ---------------------------------------------------------------- grpcurl

# gc ARGS...: grpcurl with -emit-defaults always, and GC_FLAGS (how to reach
# the services: -plaintext, or the TLS flags of a --secure deployment) and
# GC_KEY (an API key sent as "authorization: Bearer ..." when set).
GC_FLAGS=(-plaintext)
GC_KEY=""
gc() {
  local auth=()
  [[ -n "$GC_KEY" ]] && auth=(-H "authorization: Bearer $GC_KEY")
  "$TB_GRPCURL" "${GC_FLAGS[@]}" "${auth[@]}" -emit-defaults "$@"
}

# gcall ADDR METHOD [JSON]: calls and sets GC_OUT (stdout), GC_ERR (stderr),
# GC_RC (grpcurl's exit status: 0, or 64 + the gRPC status code). JSON "@"
# reads the request(s) from stdin.
GC_OUT="" GC_ERR="" GC_RC=0
gcall() {
  local addr=$1 method=$2 errfile
  errfile=$(mktemp)
  if (($# >= 3)); then
    GC_OUT=$(gc -max-time 30 -d "$3" "$addr" "$method" 2>"$errfile")
  else
    GC_OUT=$(gc -max-time 30 "$addr" "$method" 2>"$errfile")
  fi
  GC_RC=$?
  # tr: an error message may echo a NUL character from the request.
  GC_ERR=$(tr -d '\000' <"$errfile")
  rm -f "$errfile"
  return "$GC_RC"
}

grpc_code_number() {
  case $1 in
    OK) echo 0 ;; Canceled) echo 1 ;; Unknown) echo 2 ;; InvalidArgument) echo 3 ;;
    DeadlineExceeded) echo 4 ;; NotFound) echo 5 ;; AlreadyExists) echo 6 ;;
    PermissionDenied) echo 7 ;; ResourceExhausted) echo 8 ;; FailedPrecondition) echo 9 ;;
    Aborted) echo 10 ;; OutOfRange) echo 11 ;; Unimplemented) echo 12 ;; Internal) echo 13 ;;
    Unavailable) echo 14 ;; DataLoss) echo 15 ;; Unauthenticated) echo 16 ;;
    *) echo -1 ;;
  esac
}

# expect_ok NAME ADDR METHOD [JSON]: the call succeeds. GC_* hold the answer.
expect_ok() {
  local name=$1
  shift
  if gcall "$@"; then
    pass "$name"
  else
    fail "$name" "grpcurl exit $GC_RC" "$GC_ERR"
    return 1
  fi
}

# expect_code NAME CODE ADDR METHOD [JSON]: the call fails with gRPC status
# CODE (a name as grpcurl prints it, e.g. InvalidArgument).
expect_code() {
  local name=$1 code=$2
  shift 2
  gcall "$@"
  local want=$((64 + $(grpc_code_number "$code")))
  if [[ "$GC_RC" == "$want" && "$GC_ERR" == *"Code: $code"* ]]; then
    pass "$name"
  else
    fail "$name" "expected Code: $code (exit $want), got exit $GC_RC" "$GC_ERR" "$GC_OUT"
    return 1
  fi
}

# ---------------------------------------------------------------- exit traps

# push_exit_trap PREFIX HANDLER: keeps the EXIT, INT and TERM traps found in
# PREFIX_EXIT, PREFIX_INT and PREFIX_TERM, and sets HANDLER as the EXIT trap
# (INT and TERM exit through it). HANDLER ends with
# `run_prev_exit_trap PREFIX "$rc"; exit "$rc"`, so the trap found (e.g.
# test-system.sh's) still runs; pop_exit_trap PREFIX puts the traps back.
push_exit_trap() {
  local prefix=$1 handler=$2 prev
  prev=$(trap -p EXIT)
  prev=${prev#"trap -- '"}
  prev=${prev%"' EXIT"}
  printf -v "${prefix}_EXIT" '%s' "$prev"
  printf -v "${prefix}_INT" '%s' "$(trap -p INT)"
  printf -v "${prefix}_TERM" '%s' "$(trap -p TERM)"
  # shellcheck disable=SC2064 # the handler's name is fixed now
  trap "$handler" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
# run_prev_exit_trap PREFIX RC: runs the EXIT trap push_exit_trap kept, with
# $? set to RC.
run_prev_exit_trap() {
  local prev="${1}_EXIT"
  if [[ -n "${!prev}" ]]; then
    (exit "$2")
    eval "${!prev}"
  fi
}
pop_exit_trap() {
  local exit_var="${1}_EXIT" int_var="${1}_INT" term_var="${1}_TERM"
  if [[ -n "${!exit_var}" ]]; then trap -- "${!exit_var}" EXIT; else trap - EXIT; fi
  if [[ -n "${!int_var}" ]]; then eval "${!int_var}"; else trap - INT; fi
  if [[ -n "${!term_var}" ]]; then eval "${!term_var}"; else trap - TERM; fi
}

# ---------------------------------------------------------------- processor guard

# processor_running: ./deploy.sh status says the processor runs. (Its exit
# status is non-zero whenever any part is unhealthy, so it is not piped.)
processor_running() {
  local status
  status=$(./deploy.sh status --porcelain 2>/dev/null)
  awk '$1 == "processor" && $2 == "running" { found = 1 } END { exit !found }' <<<"$status"
}

# guard_processor: until unguard_processor, an EXIT trap (chained before the
# one already set, e.g. test-system.sh's) starts the processor again should the
# area be cut short while it is stopped; INT and TERM exit through it.
guard_processor() {
  push_exit_trap TB_GUARD_PREV guard_processor_on_exit
}
guard_processor_on_exit() {
  local rc=$?
  if ! processor_running; then
    printf 'starting the processor this area stopped\n' >&2
    ./deploy.sh start processor >&2
  fi
  run_prev_exit_trap TB_GUARD_PREV "$rc"
  exit "$rc"
}
# unguard_processor: puts back the traps guard_processor found.
unguard_processor() {
  pop_exit_trap TB_GUARD_PREV
}

# ---------------------------------------------------------------- polling

# poll TIMEOUT CMD...: runs CMD every 0.5 s until it succeeds or TIMEOUT s pass.
poll() {
  local timeout=$1 deadline
  shift
  deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# event_persisted ID: GetEvent finds it (GC_OUT then holds the StoredEvent).
event_persisted() { gcall "$QUERY_ADDR" tributary.v1.QueryService/GetEvent "$(jq -nc --arg id "$1" '{eventId: $id}')"; }

# wait_persisted ID [TIMEOUT]: polls GetEvent (the processor writes asynchronously).
wait_persisted() { poll "${2:-20}" event_persisted "$1"; }

# ---------------------------------------------------------------- time

# rfc3339 EPOCH_SECONDS [MICROS]: UTC, microseconds when given.
rfc3339() {
  if [[ -n "${2:-}" ]]; then
    printf '%s.%06dZ\n' "$(date -u -d "@$1" +%Y-%m-%dT%H:%M:%S)" "$((10#$2))"
  else
    date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ
  fi
}

# ---------------------------------------------------------------- summary

summary() {
  if ((T_FAILED > 0)); then
    printf '\nfailed checks:\n'
    printf '  %s\n' "${T_FAILURES[@]}"
  fi
  printf '\n%s passed, %s failed\n' "$T_PASSED" "$T_FAILED"
}
