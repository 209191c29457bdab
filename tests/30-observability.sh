# shellcheck shell=bash disable=SC2016,SC2153
# (SC2016: the single-quoted $names are jq variables; SC2153: TB_LOG_DIR comes
# from scripts/lib.sh.)
# Observability assets (observability/, docs/runbooks.md): each check of
# scripts/check-observability.sh is one check line here. All but the last need
# no service; the metric-consistency check reads /metrics of the running
# deployment (every metric a rule or a dashboard names must be exported).
# When a Prometheus answers on TRIBUTARY_PROMETHEUS_URL (default
# 127.0.0.1:9090), it must have loaded these rules and see every target up.
# Sourced by test-system.sh (tests/lib.sh is loaded).

OBS_CHECK="$TB_ROOT/scripts/check-observability.sh"
OBS_LOG_DIR="$TB_LOG_DIR/test-system"

section "observability assets (offline)"
check "observability: promtool check rules + test rules (each alert fires once and stays quiet once)" \
  "$OBS_CHECK" rules
check "observability: every alert has severity, summary, description and a runbook anchor" \
  "$OBS_CHECK" alerts
check "observability: amtool check-config, page -> pager, ticket -> ticket" \
  "$OBS_CHECK" alertmanager
check "observability: promtool check config (prometheus.yml, prometheus-kubernetes.yml)" \
  "$OBS_CHECK" config
check "observability: every PromQL expression of rules and dashboards parses" \
  "$OBS_CHECK" promql
check_logged "observability: dashboards type-check against @grafana/schema Dashboard" \
  "$OBS_LOG_DIR/observability-dashboards.log" "$OBS_CHECK" dashboards
check "observability: OpenTelemetry collector config is consistent" \
  "$OBS_CHECK" otel

section "observability against the running deployment"
# The five services' /metrics (admin included: it exports the lag gauges the
# lag alerts use). TRIBUTARY_METRICS_URLS overrides the list.
check "observability: every metric used by a rule or a dashboard is exported by a running service" \
  "$OBS_CHECK" metrics

OBS_PROM_URL=${TRIBUTARY_PROMETHEUS_URL:-http://127.0.0.1:9090}
if curl -fsS -m 3 "$OBS_PROM_URL/-/ready" >/dev/null 2>&1; then
  obs_rules=$(curl -fsS -m 10 "$OBS_PROM_URL/api/v1/rules" 2>/dev/null)
  # The group names of observability/prometheus/rules/*.yml, as a JSON array.
  obs_groups=$(sed -n 's/^  - name: *//p' "$TB_ROOT"/observability/prometheus/rules/*.yml | jq -Rsc 'split("\n") | map(select(. != ""))')
  assert_json "observability: Prometheus at $OBS_PROM_URL loaded every rule group of observability/prometheus/rules" \
    '[.data.groups[].name] as $g | $want | length > 0 and all(. as $n | $g | index($n) != null)' \
    "$obs_rules" --argjson want "$obs_groups"
  assert_json "observability: Prometheus rules evaluate without errors" \
    '[.data.groups[].rules[] | select(.health == "err")] | length == 0' "$obs_rules"
  obs_targets=$(curl -fsS -m 10 "$OBS_PROM_URL/api/v1/targets?state=active" 2>/dev/null)
  assert_json "observability: Prometheus scrapes every tributary job and each target is up" \
    '[.data.activeTargets[] | select(.labels.job | startswith("tributary-"))] as $t
     | ([$t[].labels.job] | unique) == ["tributary-admin","tributary-dispatch","tributary-ingest","tributary-processor","tributary-query"]
       and all($t[]; .health == "up")' \
    "$obs_targets"
else
  printf 'note  no Prometheus answers on %s: its rule and target checks are left out\n' "$OBS_PROM_URL"
fi
