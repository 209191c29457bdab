# shellcheck shell=bash
# GetPipelineStatus: every component's health and the lag summary, and that
# a stopped service shows as such. Sourced by test-system.sh.

section "pipeline status"
STATUS_ADDR=${ADMIN_ADDR:-127.0.0.1:50053}
status_components() { jq -r '[.components[] | "\(.name)=\(.health | sub("COMPONENT_HEALTH_"; ""))"] | join(" ")' <<<"$GC_OUT"; }

if expect_ok "GetPipelineStatus" "$STATUS_ADDR" tributary.v1.AdminService/GetPipelineStatus '{}'; then
  assert_eq "every component serves" \
    "ingest=SERVING processor=SERVING query=SERVING admin=SERVING kafka=SERVING postgres=SERVING" "$(status_components)"
  assert_eq "the pipeline is healthy" true "$(jq -r '.healthy' <<<"$GC_OUT")"
  assert_eq "the lag summary names the processor's group" tributary-processor "$(jq -r '.lag[0].group' <<<"$GC_OUT")"
fi

# Whatever happens below, query is started again for the files after this one.
restart_query() { ./deploy.sh start query >/dev/null 2>&1 || true; }
if ./deploy.sh stop query >/dev/null 2>&1; then
  if expect_ok "GetPipelineStatus with query stopped" "$STATUS_ADDR" tributary.v1.AdminService/GetPipelineStatus '{}'; then
    assert_eq "a stopped query shows as unreachable" "query=UNREACHABLE" \
      "$(status_components | tr ' ' '\n' | grep '^query=')"
    assert_eq "and the pipeline as unhealthy" false "$(jq -r '.healthy' <<<"$GC_OUT")"
  fi
  restart_query
else
  fail "deploy.sh stop query"
  restart_query
fi
healthy_again() { gcall "$STATUS_ADDR" tributary.v1.AdminService/GetPipelineStatus '{}' && [[ "$(jq -r '.healthy' <<<"$GC_OUT")" == true ]]; }
if poll 30 healthy_again; then pass "healthy again once query is back"; else fail "healthy again once query is back" "$GC_OUT"; fi
