#!/usr/bin/env bash
# Checks the observability assets in observability/ (standalone: needs no
# service except for the metrics check).
#
#   scripts/check-observability.sh [CHECK...]     default: all of them, in this order
#
#   rules         promtool check rules + promtool test rules (every alert fires
#                 in one test and stays quiet in another)
#   alerts        every alert has labels.severity page|ticket, summary, description
#                 and a runbook_url whose anchor is a heading of docs/runbooks.md
#   alertmanager  amtool check-config; the routes: page -> pager, ticket -> ticket;
#                 and, on a throw-away Alertmanager on a free local port, that a
#                 page inhibits the ticket of the same alert and nothing else
#   config        promtool check config on prometheus.yml; prometheus-kubernetes.yml
#                 with its kubernetes_sd_configs swapped for static targets (Debian's
#                 promtool is built without Kubernetes discovery), so its relabelling
#                 is still checked
#   promql        every PromQL expression of the rules and dashboards parses
#                 (Grafana variables replaced: $__rate_interval -> 1m, $job -> a word);
#                 the metric-name extractor passes its self-test
#   dashboards    the dashboards type-check against @grafana/schema's Dashboard type
#                 (typescript, tsc --noEmit); uids unique, datasource and job variables
#   otel          the collector config: every pipeline names defined components
#   metrics       every metric name used by a rule or a dashboard is exported by one
#                 of the running targets (TRIBUTARY_METRICS_URLS, space separated;
#                 default the five local services), is a recording rule, is a
#                 Prometheus built-in (up, ALERTS), or is a per-subscription family
#                 that a service under services/ registers (no series before the
#                 first subscription exists). Unreachable targets fail the check
#                 unless TRIBUTARY_SKIP_METRICS_CHECK=1.
#
# Prints one "PASS name" or "FAIL name: why" line per check on stdout (details
# on stderr) and exits non-zero when a check failed. Installs what it needs
# when missing (apt: prometheus, prometheus-alertmanager, python3-yaml; npm:
# @grafana/schema and typescript into ~/.cache/tributary/tools/grafana-schema).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OBS="$ROOT/observability"
PROM="$OBS/prometheus"
HELPER="$ROOT/scripts/check_observability.py"
TOOLS_DIR="$HOME/.cache/tributary/tools"
GS_DIR="$TOOLS_DIR/grafana-schema"
GRAFANA_SCHEMA_VERSION=13.2.3
TYPESCRIPT_VERSION=5.9.3
ALL_CHECKS=(rules alerts alertmanager config promql dashboards otel metrics)
DEFAULT_METRICS_URLS="http://127.0.0.1:9601/metrics http://127.0.0.1:9602/metrics http://127.0.0.1:9603/metrics http://127.0.0.1:9604/metrics http://127.0.0.1:9605/metrics"

case "${1:-}" in
  -h | --help)
    sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  --list)
    printf '%s\n' "${ALL_CHECKS[@]}"
    exit 0
    ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tributary-obs.XXXXXX")
GS_WORK=""
cleanup() {
  rm -rf "$WORK"
  [[ -n "$GS_WORK" ]] && rm -rf "$GS_WORK"
}
trap cleanup EXIT

FAILED=0
pass() { printf 'PASS %s\n' "$1"; }
# fail NAME WHY [DETAIL_FILE]: DETAIL_FILE's tail goes to stderr, indented.
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL %s: %s\n' "$1" "$2"
  if [[ -n "${3:-}" && -s "${3:-}" ]]; then
    tail -n 60 "$3" | sed 's/^/    /' >&2
  fi
}

# ---------------------------------------------------------------- installs

apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ $EUID -ne 0 ]]; then
    echo "missing packages: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    return 1
  fi
  echo "installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
}

need_promtool() { command -v promtool >/dev/null || apt_install prometheus; command -v promtool >/dev/null; }
need_amtool() {
  command -v amtool >/dev/null || apt_install prometheus-alertmanager || return 1
  command -v jq >/dev/null || apt_install jq || return 1
  command -v amtool >/dev/null
}
need_yaml() { python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml; python3 -c 'import yaml' 2>/dev/null; }

pkg_version() { node -e "console.log(require('$GS_DIR/node_modules/$1/package.json').version)" 2>/dev/null; }

need_grafana_schema() {
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm || return 1
  if [[ "$(pkg_version @grafana/schema)" == "$GRAFANA_SCHEMA_VERSION" && "$(pkg_version typescript)" == "$TYPESCRIPT_VERSION" ]]; then
    return 0
  fi
  mkdir -p "$GS_DIR"
  [[ -f "$GS_DIR/package.json" ]] || echo '{"name":"tributary-grafana-schema-check","private":true}' >"$GS_DIR/package.json"
  echo "installing @grafana/schema@$GRAFANA_SCHEMA_VERSION typescript@$TYPESCRIPT_VERSION into $GS_DIR" >&2
  (cd "$GS_DIR" && npm install --no-audit --no-fund --save-exact \
    "@grafana/schema@$GRAFANA_SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION" >&2) || return 1
  [[ "$(pkg_version @grafana/schema)" == "$GRAFANA_SCHEMA_VERSION" ]]
}

# ---------------------------------------------------------------- checks

check_rules() {
  local name=promtool-rules log="$WORK/rules.log"
  need_promtool || { fail $name "promtool is missing (apt-get install -y prometheus)"; return; }
  if ! promtool check rules "$PROM"/rules/*.yml >"$log" 2>&1; then
    fail $name "promtool check rules failed" "$log"
    return
  fi
  local tests=("$PROM"/tests/*.yml)
  if ! (cd "$PROM/tests" && promtool test rules "${tests[@]##*/}") >"$log" 2>&1; then
    fail $name "promtool test rules failed" "$log"
    return
  fi
  # Every alert has a test that expects it to fire and one that expects silence.
  local alert missing=()
  while read -r alert; do
    grep -q "alertname: $alert\$" "$PROM"/tests/*.yml || { missing+=("$alert (no test)"); continue; }
    python3 - "$alert" "$PROM"/tests/*.yml <<'EOF' || missing+=("$alert (needs a test case where it fires and one where it never fires)")
import re, sys
# Per test case (an item of `tests:`): does the alert fire in one, and is
# there one where every evaluation of it expects no alert (the case it must
# ignore)?
alert, files = sys.argv[1], sys.argv[2:]
fires = quiet = False
for f in files:
    lines = open(f).read().split("\n")
    try:
        start = next(i for i, l in enumerate(lines) if re.match(r"^tests:\s*$", l))
    except StopIteration:
        continue
    item = next((re.match(r"^(\s*)- ", l).group(1) for l in lines[start + 1:] if re.match(r"^\s*- ", l)), None)
    if item is None:
        continue
    cases, cur = [], []
    for l in lines[start + 1:]:
        if l.startswith(item + "- "):
            cases.append(cur)
            cur = []
        cur.append(l)
    cases.append(cur)
    for case in cases:
        text = "\n".join(case)
        evals = [m.group(1).strip() for m in re.finditer(
            r"alertname: " + re.escape(alert) + r"\s*\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time:|\n\s*promql_expr_test:|\Z)", text, re.S)]
        if not evals:
            continue
        if any(not e.startswith("[]") for e in evals):
            fires = True
        else:
            quiet = True
sys.exit(0 if fires and quiet else 1)
EOF
  done < <(grep -ho '^\s*- alert: *[A-Za-z0-9_]*' "$PROM"/rules/*.yml | awk '{print $3}' | sort -u)
  if ((${#missing[@]})); then
    fail $name "alerts not covered: ${missing[*]}"
    return
  fi
  local n rule_files=("$PROM"/rules/*.yml)
  n=$(grep -c 'SUCCESS' "$log")
  pass "$name (${#rule_files[@]} rule files, $n test files)"
}

check_alerts() {
  local name=alert-conventions log="$WORK/alerts.log" out
  if out=$(python3 "$HELPER" alert-conventions 2>&1); then
    pass "$name ($out)"
  else
    printf '%s\n' "$out" >"$log"
    fail $name "$(head -n1 <<<"$out")" "$log"
  fi
}

check_alertmanager() {
  local name=amtool-check-config log="$WORK/am.log" cfg="$OBS/alertmanager/alertmanager.yml"
  need_amtool || { fail $name "amtool is missing (apt-get install -y prometheus-alertmanager)"; return; }
  if ! amtool check-config "$cfg" >"$log" 2>&1; then
    fail $name "amtool check-config failed" "$log"
    return
  fi
  local labels want got
  for spec in "severity=page:pager" "severity=ticket:ticket" "severity=info:default"; do
    labels=${spec%%:*} want=${spec##*:}
    got=$(amtool config routes test --config.file="$cfg" alertname=TributaryTest "$labels" 2>/dev/null)
    if [[ "$got" != "$want" ]]; then
      fail $name "an alert with $labels goes to '$got', expected '$want'"
      return
    fi
  done
  # A real Alertmanager on a free port: a ticket is held back while the page
  # of the same alert fires, and only then.
  local am_bin port pid now alerts got
  am_bin=$(command -v prometheus-alertmanager || command -v alertmanager)
  if [[ -z "$am_bin" ]]; then
    fail $name "no alertmanager binary (apt-get install -y prometheus-alertmanager)"
    return
  fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$am_bin" --config.file="$cfg" --storage.path="$WORK/am-data" --web.listen-address="127.0.0.1:$port" \
    --cluster.listen-address= >"$WORK/am-run.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do
    curl -fsS -m 1 "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && break
    sleep 0.2
  done
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  alerts='[
    {"labels": {"alertname": "TributaryTargetDown", "job": "tributary-query", "severity": "page"}},
    {"labels": {"alertname": "TributaryTargetDown", "job": "tributary-query", "instance": "a:9603", "severity": "ticket"}},
    {"labels": {"alertname": "TributaryTargetDown", "job": "tributary-ingest", "instance": "b:9601", "severity": "ticket"}},
    {"labels": {"alertname": "TributaryDeadLetters", "job": "tributary-query", "severity": "ticket"}}]'
  alerts=$(jq -c --arg now "$now" 'map(. + {startsAt: $now})' <<<"$alerts" 2>/dev/null) || alerts=""
  got=""
  if [[ -n "$alerts" ]] && curl -fsS -m 5 -H 'Content-Type: application/json' -d "$alerts" \
    "http://127.0.0.1:$port/api/v2/alerts" >/dev/null 2>>"$WORK/am-run.log"; then
    sleep 1
    got=$(curl -fsS -m 5 "http://127.0.0.1:$port/api/v2/alerts" 2>>"$WORK/am-run.log" |
      jq -r 'sort_by(.labels.alertname, .labels.job, .labels.severity)
             | map("\(.labels.alertname)/\(.labels.job)/\(.labels.severity)=\(.status.state)") | join(" ")' 2>>"$WORK/am-run.log")
  fi
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  local want="TributaryDeadLetters/tributary-query/ticket=active TributaryTargetDown/tributary-ingest/ticket=active TributaryTargetDown/tributary-query/page=active TributaryTargetDown/tributary-query/ticket=suppressed"
  if [[ "$got" != "$want" ]]; then
    echo "expected: $want" >>"$WORK/am-run.log"
    echo "got:      $got" >>"$WORK/am-run.log"
    fail $name "inhibition: a ticket is not held back exactly while the page of the same alert fires" "$WORK/am-run.log"
    return
  fi
  pass "$name (page -> pager, ticket -> ticket; a page inhibits its own ticket, checked on a running Alertmanager)"
}

check_config() {
  local name=promtool-check-config log="$WORK/config.log" k8s="$WORK/prometheus-kubernetes.yml"
  need_promtool || { fail $name "promtool is missing (apt-get install -y prometheus)"; return; }
  if ! promtool check config "$PROM/prometheus.yml" >"$log" 2>&1; then
    fail $name "prometheus.yml is invalid" "$log"
    return
  fi
  # Debian's Prometheus has no Kubernetes discovery: check the rest of the
  # Kubernetes example (relabelling, regexes) with static targets in its place.
  python3 - "$PROM/prometheus-kubernetes.yml" "$k8s" <<'EOF' >"$log" 2>&1 || { fail $name "cannot rewrite prometheus-kubernetes.yml" "$log"; return; }
import re, sys
src, dst = sys.argv[1], sys.argv[2]
out, skip_indent = [], None
for line in open(src).read().split("\n"):
    ind = len(line) - len(line.lstrip())
    if skip_indent is not None:
        if line.strip() == "" or ind > skip_indent or (ind == skip_indent and line.lstrip().startswith("- ")):
            continue
        skip_indent = None
    m = re.match(r"^(\s*)(- )?kubernetes_sd_configs:\s*$", line)
    if m:
        key = m.group(1) + ("  " if m.group(2) else "")
        skip_indent = len(key)
        out.append(f"{m.group(1)}{m.group(2) or ''}static_configs:")
        out.append(f"{key}  - targets: ['k8s-placeholder:9601']")
        continue
    out.append(line)
text = "\n".join(out).replace("/etc/prometheus/rules/*.yml", "rules-placeholder/*.yml")
open(dst, "w").write(text)
EOF
  if ! (cd "$WORK" && promtool check config --syntax-only "$k8s") >"$log" 2>&1; then
    fail $name "prometheus-kubernetes.yml is invalid (kubernetes_sd_configs replaced by static targets)" "$log"
    return
  fi
  pass "$name (prometheus.yml; prometheus-kubernetes.yml with static targets for kubernetes_sd)"
}

check_promql() {
  local name=promql-parses log="$WORK/promql.log" file="$WORK/exprs.yml" n rules got
  need_promtool || { fail $name "promtool is missing (apt-get install -y prometheus)"; return; }
  if ! python3 "$HELPER" selftest >"$log" 2>&1; then
    fail $name "the metric-name extractor fails its self-test" "$log"
    return
  fi
  if ! n=$(python3 "$HELPER" dashboard-rules "$file" 2>"$log"); then
    fail $name "cannot extract the expressions" "$log"
    return
  fi
  if ! promtool check rules "$file" >"$log" 2>&1; then
    # Name the source of each expression promtool refused.
    local ids
    ids=$(grep -o '"check:expr_[0-9]*"' "$log" | tr -d '"' | sort -u)
    {
      echo "where:"
      for id in $ids; do grep "^$id: " "$file.index"; done
    } >>"$log"
    fail $name "$(grep -c '"check:expr_' "$log") expression(s) do not parse" "$log"
    return
  fi
  # The extractor must see every rule promtool sees (it also feeds the metrics check).
  rules=$(python3 "$HELPER" rule-count)
  got=$(promtool check rules "$PROM"/rules/*.yml 2>&1 | sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p' | awk '{s += $1} END {print s + 0}')
  if [[ "$rules" != "$got" ]]; then
    fail $name "the extractor found $rules rules, promtool $got"
    return
  fi
  pass "$name ($n expressions: $rules rules, $((n - rules)) dashboard queries)"
}

check_dashboards() {
  local name=dashboards-typecheck log="$WORK/tsc.log" f base dashboards=("$OBS"/grafana/dashboards/*.json)
  need_grafana_schema || { fail $name "cannot install @grafana/schema@$GRAFANA_SCHEMA_VERSION and typescript into $GS_DIR"; return; }
  # Static rules first: parseable JSON, unique uids, the datasource and job variables.
  if ! python3 - "$OBS"/grafana/dashboards/*.json >"$log" 2>&1 <<'EOF'; then
import json, sys
uids, bad = {}, []
for path in sys.argv[1:]:
    try:
        d = json.load(open(path))
    except ValueError as e:
        bad.append(f"{path}: not JSON: {e}")
        continue
    uid = d.get("uid")
    if not uid:
        bad.append(f"{path}: no uid")
    elif uid in uids:
        bad.append(f"{path}: uid {uid} also in {uids[uid]}")
    uids[uid] = path
    names = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = names.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        bad.append(f"{path}: no datasource variable of type prometheus")
    if "job" not in names:
        bad.append(f"{path}: no job variable")
    def panels(ps):
        for p in ps or []:
            yield p
            yield from panels(p.get("panels"))
    for p in panels(d.get("panels")):
        if p.get("type") == "row":
            continue
        for t in [p] + (p.get("targets") or []):
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                bad.append(f'{path}: panel {p.get("id")} "{p.get("title")}" does not use ${{datasource}}')
                break
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
    fail $name "dashboard conventions" "$log"
    return
  fi
  # Each dashboard becomes a .ts module whose object literal must satisfy the
  # Dashboard type. JSON holds an enum's value, never the enum, so string
  # enums (ThresholdsMode, ...) are compared by value through Json<T>.
  GS_WORK=$(mktemp -d "$GS_DIR/check.XXXXXX")
  for f in "$OBS"/grafana/dashboards/*.json; do
    base=$(basename "$f" .json)
    {
      echo "import type { Dashboard } from '@grafana/schema';"
      # shellcheck disable=SC2016 # TypeScript, not shell
      echo 'type Json<T> = T extends string ? `${T}` : T extends (infer U)[] ? Json<U>[] : T extends object ? { [K in keyof T]: Json<T[K]> } : T;'
      printf 'export const dashboard = ('
      cat "$f"
      echo ') satisfies Json<Dashboard>;'
    } >"$GS_WORK/${base//[^A-Za-z0-9_]/_}.ts"
  done
  cat >"$GS_WORK/tsconfig.json" <<'EOF'
{"compilerOptions": {"strict": true, "noEmit": true, "target": "ES2022", "module": "ESNext",
  "moduleResolution": "Bundler", "skipLibCheck": true, "types": []}, "include": ["*.ts"]}
EOF
  # Line numbers in the errors are the JSON file's plus 2.
  if ! (cd "$GS_WORK" && "$GS_DIR/node_modules/.bin/tsc" -p .) >"$log" 2>&1; then
    fail $name "tsc: a dashboard does not match @grafana/schema $GRAFANA_SCHEMA_VERSION's Dashboard (error line = JSON line + 2)" "$log"
    return
  fi
  pass "$name (${#dashboards[@]} dashboards against @grafana/schema $GRAFANA_SCHEMA_VERSION Dashboard, typescript $TYPESCRIPT_VERSION)"
}

check_otel() {
  local name=otel-collector-config log="$WORK/otel.log"
  need_yaml || { fail $name "python3-yaml is missing (apt-get install -y python3-yaml)"; return; }
  if ! python3 - "$OBS/otel/collector.yaml" >"$log" 2>&1 <<'EOF'; then
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
bad = []
pipes = c.get("service", {}).get("pipelines", {})
if not pipes:
    bad.append("no service.pipelines")
for pname, p in pipes.items():
    for kind in ("receivers", "processors", "exporters"):
        for comp in p.get(kind, []):
            if comp not in (c.get(kind) or {}):
                bad.append(f"pipeline {pname}: {kind[:-1]} {comp} is not defined")
    procs = p.get("processors", [])
    if procs and procs[0] != "memory_limiter":
        bad.append(f"pipeline {pname}: memory_limiter must come first")
for ext in c.get("service", {}).get("extensions", []):
    if ext not in (c.get("extensions") or {}):
        bad.append(f"extension {ext} is not defined")
grpc = (((c.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("grpc") or {}
if not str(grpc.get("endpoint", "")).endswith(":4317"):
    bad.append("the otlp receiver does not listen for gRPC on 4317")
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
    fail $name "collector.yaml is inconsistent" "$log"
    return
  fi
  pass "$name (structure only: no collector binary on these machines)"
}

check_metrics() {
  local name=metrics-consistency log="$WORK/metrics.log" urls out
  urls=${TRIBUTARY_METRICS_URLS:-$DEFAULT_METRICS_URLS}
  if [[ "${TRIBUTARY_SKIP_METRICS_CHECK:-0}" == 1 ]]; then
    # Without the targets the check still runs against nothing but recording rules
    # and built-ins would fail, so it is skipped outright.
    pass "$name (skipped: TRIBUTARY_SKIP_METRICS_CHECK=1)"
    return
  fi
  # shellcheck disable=SC2086 # the URL list is space separated on purpose
  if out=$(python3 "$HELPER" consistency $urls 2>"$log"); then
    pass "$name ($out)"
  else
    fail $name "$out" "$log"
  fi
}

checks=("$@")
((${#checks[@]})) || checks=("${ALL_CHECKS[@]}")
for c in "${checks[@]}"; do
  case $c in
    rules) check_rules ;;
    alerts) check_alerts ;;
    alertmanager) check_alertmanager ;;
    config) check_config ;;
    promql) check_promql ;;
    dashboards) check_dashboards ;;
    otel) check_otel ;;
    metrics) check_metrics ;;
    *)
      fail "$c" "unknown check (known: ${ALL_CHECKS[*]})"
      ;;
  esac
done
((FAILED == 0))
