# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $names are jq variables.)
# Alerts that really fire, through the real chain: Prometheus evaluates the
# project's rules (never shortened for tests), Alertmanager routes with the
# project's alertmanager.yml, and the local receiver (./deploy.sh's
# alertsink) writes each notification to logs/alerts.jsonl.
#
# Quick mode (always): the processor is stopped until TributaryTargetDown
# (page, for: 2m) reaches the receiver on /pager, then started again, and
# Prometheus' /api/v1/alerts must show the alert gone (resolved). About 3
# minutes.
#
# Full mode (TB_ALERTS_FULL=1 ./test-system.sh alerts; about 25 minutes): the
# processor stays stopped while events wait in the topic, until
# TributaryConsumerStalled and TributaryConsumerLagHigh reach the receiver,
# then it is started and both must be resolved at the receiver.
# Sourced by test-system.sh (tests/lib.sh is loaded).

AL_FILE="$TB_LOG_DIR/alerts.jsonl"
AL_PROM=http://127.0.0.1:9090

# al_notified SINCE ALERT STATUS [PATH]: a notification line after line SINCE
# of the receiver's file names ALERT with STATUS (firing|resolved), sent to
# PATH (e.g. /pager) when given.
al_notified() {
  local since=$1 alert=$2 status=$3 path=${4:-}
  [[ -f "$AL_FILE" ]] || return 1
  tail -n +"$((since + 1))" "$AL_FILE" | jq -e -s --arg a "$alert" --arg s "$status" --arg p "$path" \
    'any(.[]; ($p == "" or .path == $p) and any(.alerts[]; .alertname == $a and .status == $s))' >/dev/null 2>&1
}

# al_firing_in_prometheus ALERT: Prometheus lists ALERT as firing.
al_firing_in_prometheus() {
  curl -fsS -m 5 "$AL_PROM/api/v1/alerts" 2>/dev/null |
    jq -e --arg a "$1" 'any(.data.alerts[]; .labels.alertname == $a and .state == "firing")' >/dev/null 2>&1
}
al_not_firing_in_prometheus() { ! al_firing_in_prometheus "$1" && curl -fsS -m 5 "$AL_PROM/-/ready" >/dev/null 2>&1; }

al_lines() { if [[ -f "$AL_FILE" ]]; then wc -l <"$AL_FILE"; else echo 0; fi; }

section "alerts: Prometheus -> Alertmanager -> receiver (quick: TributaryTargetDown)"
# al_part_healthy PART: ./deploy.sh status --porcelain says PART runs and is healthy.
al_part_healthy() {
  ./deploy.sh status --porcelain 2>/dev/null |
    awk -v p="$1" '$1 == p && $2 == "running" && $4 ~ /=200$/ { f = 1 } END { exit !f }'
}
# A deployment made before deploy.sh ran Alertmanager lacks these two.
for part in alertsink alertmanager; do
  al_part_healthy "$part" || check "./deploy.sh start $part (the deployment found had none)" ./deploy.sh start "$part"
done
check "alertmanager is running and ready" al_part_healthy alertmanager
check "the alert sink (receiver on 127.0.0.1:9095) is running" al_part_healthy alertsink
# A Prometheus that has just started finds it within seconds.
al_am_active() {
  [[ "$(curl -fsS -m 5 "$AL_PROM/api/v1/alertmanagers" |
    jq '[.data.activeAlertmanagers[] | select(.url | startswith("http://127.0.0.1:9093"))] | length')" == 1 ]]
}
check "Prometheus sends alerts to the local Alertmanager" poll 30 al_am_active

guard_processor
AL_SINCE=$(al_lines)
AL_T0=$SECONDS
check "./deploy.sh stop processor" ./deploy.sh stop processor
# for: 2m, a 5 s scrape and evaluation interval, group_wait 10 s: about 2.3 min.
if poll 240 al_notified "$AL_SINCE" TributaryTargetDown firing /pager; then
  pass "TributaryTargetDown (page) reached the receiver on /pager $((SECONDS - AL_T0)) s after the processor stopped"
else
  fail "TributaryTargetDown (page) reached the receiver on /pager within 240 s" \
    "$(tail -n +"$((AL_SINCE + 1))" "$AL_FILE" 2>&1 | jq -c '{path, status, alerts}' 2>&1 | tail -5)" \
    "$(curl -fsS -m 5 "$AL_PROM/api/v1/alerts" 2>&1 | head -c 1500)"
fi
assert_eq "the notification names the processor's job" true \
  "$(tail -n +"$((AL_SINCE + 1))" "$AL_FILE" 2>/dev/null | jq -s 'any(.[]; any(.notification.alerts[]?; .labels.alertname == "TributaryTargetDown" and .labels.job == "tributary-processor"))')"
AL_T1=$SECONDS
check "./deploy.sh start processor" ./deploy.sh start processor
unguard_processor
if poll 90 al_not_firing_in_prometheus TributaryTargetDown; then
  pass "TributaryTargetDown is resolved in Prometheus $((SECONDS - AL_T1)) s after the processor started"
else
  fail "TributaryTargetDown is resolved in Prometheus within 90 s" "$(curl -fsS -m 5 "$AL_PROM/api/v1/alerts" 2>&1 | head -c 1500)"
fi

if [[ "${TB_ALERTS_FULL:-0}" == 1 ]]; then
  section "alerts, full mode: TributaryConsumerStalled and TributaryConsumerLagHigh (about 25 minutes)"
  guard_processor
  AL_SINCE=$(al_lines)
  AL_T0=$SECONDS
  check "./deploy.sh stop processor" ./deploy.sh stop processor
  # Events wait in the topic, a few each minute, so lag is never zero.
  (
    for ((i = 0; i < 40; i++)); do
      gcall "$INGEST_ADDR" tributary.v1.IngestService/Publish \
        "$(jq -nc --arg u "alerts-$T_RUN_ID" '{event: {eventType: "alerts.check", source: "alerts", userId: $u, payload: {n: 1}}}')" >/dev/null 2>&1
      sleep 30
    done
  ) &
  AL_PUB=$!
  for alert in TributaryConsumerStalled TributaryConsumerLagHigh; do
    if poll 1500 al_notified "$AL_SINCE" "$alert" firing /pager; then
      pass "$alert (page) reached the receiver $((SECONDS - AL_T0)) s after the processor stopped"
    else
      fail "$alert reached the receiver within 25 minutes" "$(curl -fsS -m 5 "$AL_PROM/api/v1/alerts" 2>&1 | head -c 1500)"
    fi
  done
  kill "$AL_PUB" 2>/dev/null
  AL_T1=$SECONDS
  check "./deploy.sh start processor" ./deploy.sh start processor
  unguard_processor
  for alert in TributaryConsumerStalled TributaryConsumerLagHigh; do
    # Alertmanager sends resolutions at its group_interval (5 m).
    if poll 600 al_notified "$AL_SINCE" "$alert" resolved /pager; then
      pass "$alert was resolved at the receiver $((SECONDS - AL_T1)) s after the processor started"
    else
      fail "$alert was resolved at the receiver within 10 minutes" "$(curl -fsS -m 5 "$AL_PROM/api/v1/alerts" 2>&1 | head -c 1500)"
    fi
  done
fi
