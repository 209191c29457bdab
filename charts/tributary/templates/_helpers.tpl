{{/*
Names, labels and the pieces every service shares. Helpers that concern one
service take a dict: (dict "root" $ "component" "ingest").
*/}}

{{- define "tributary.services" -}}
ingest processor query admin dispatch
{{- end }}

{{/*
The services whose gRPC health the admin service calls (pipeline status):
its TRIBUTARY_<SERVICE>_ADDR settings, its egress and their ingress.
*/}}
{{- define "tributary.healthChecked" -}}
ingest processor query
{{- end }}

{{- define "tributary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tributary.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one component's objects, e.g. tributary-ingest. */}}
{{- define "tributary.componentName" -}}
{{- printf "%s-%s" (include "tributary.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tributary.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tributary.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
part-of=tributary and component are what observability/prometheus/
prometheus-kubernetes.yml keys on (job="tributary-<component>").
*/}}
{{- define "tributary.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tributary.selectorLabels" . }}
app.kubernetes.io/part-of: tributary
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "tributary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tributary.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image of a service (or migrate): its override block, else the global
image; a digest wins over a tag. The global digest applies only when the
override names neither a repository nor a tag.
*/}}
{{- define "tributary.image" -}}
{{- $g := .root.Values.image }}
{{- $o := .override }}
{{- $repo := $o.repository | default $g.repository }}
{{- $digest := $o.digest }}
{{- if not (or $o.repository $o.tag) }}
{{- $digest = $o.digest | default $g.digest }}
{{- end }}
{{- $tag := $o.tag | default $g.tag | default .root.Chart.AppVersion }}
{{- if $digest }}
{{- printf "%s@%s" $repo $digest }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{- define "tributary.imagePullPolicy" -}}
{{- .override.pullPolicy | default .root.Values.image.pullPolicy }}
{{- end }}

{{/* Which services talk to what. */}}
{{- define "tributary.usesKafka" -}}
{{- if has .component (list "ingest" "processor" "admin" "dispatch" "migrate") }}true{{ end }}
{{- end }}

{{/*
admin reads PostgreSQL for its dead-letter, registry and replay RPCs
(proto/tributary/v1/admin.proto); ingest reads the event-type registry (its
schemas are cached, so a PostgreSQL blip does not stop ingest); dispatch
reads the subscriptions table.
*/}}
{{- define "tributary.usesDatabase" -}}
{{- if has .component (list "ingest" "processor" "query" "admin" "dispatch" "migrate") }}true{{ end }}
{{- end }}

{{/*
Webhook URLs are checked against TRIBUTARY_WEBHOOK_ALLOW_CIDR where they are
accepted (admin: rules and subscriptions) and where they are called
(processor: rule alerts; dispatch: push subscriptions).
*/}}
{{- define "tributary.checksWebhooks" -}}
{{- if has .component (list "processor" "admin" "dispatch") }}true{{ end }}
{{- end }}

{{/* The services that connect to webhook receivers (NetworkPolicy egress). */}}
{{- define "tributary.sendsWebhooks" -}}
{{- if has .component (list "processor" "dispatch") }}true{{ end }}
{{- end }}

{{/*
The address ranges no webhook may reach unless webhooks.allowCidrs names
them, as far as a NetworkPolicy can say it: the private, shared (CGNAT),
loopback, link-local and "this network" ranges of IPv4, and the loopback,
unique-local and link-local ranges of IPv6 (services/platform/src/egress.rs
refuses these and more, e.g. documentation and multicast ranges, at connect
time; this is the second fence, around the pod).
*/}}
{{- define "tributary.internalCidrs4" -}}
0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.168.0.0/16
{{- end }}
{{- define "tributary.internalCidrs6" -}}
::1/128 fc00::/7 fe80::/10
{{- end }}

{{/* True when something other than "replicas" sets the replica count. */}}
{{- define "tributary.autoscaled" -}}
{{- $v := index .root.Values .component }}
{{- if and (hasKey $v "autoscaling") $v.autoscaling.enabled }}true{{ end }}
{{- if and (hasKey $v "keda") $v.keda.enabled }}true{{ end }}
{{- end }}

{{/*
TRIBUTARY_KAFKA_OPTIONS ("k=v,k=v"): kafka.options (sorted), then the
security settings made from kafka.tls and kafka.sasl. Nothing secret: the
SASL password is a file (TRIBUTARY_KAFKA_SASL_PASSWORD_FILE, see
tributary.secretFileEnv).
*/}}
{{- define "tributary.kafkaOptions" -}}
{{- $k := .Values.kafka }}
{{- $opts := list }}
{{- range $key := keys $k.options | sortAlpha }}
{{- $opts = append $opts (printf "%s=%s" $key (index $k.options $key)) }}
{{- end }}
{{- if and $k.tls.enabled $k.sasl.enabled }}
{{- $opts = append $opts "security.protocol=SASL_SSL" }}
{{- else if $k.tls.enabled }}
{{- $opts = append $opts "security.protocol=SSL" }}
{{- else if $k.sasl.enabled }}
{{- $opts = append $opts "security.protocol=SASL_PLAINTEXT" }}
{{- end }}
{{- if $k.sasl.enabled }}
{{- $opts = append $opts (printf "sasl.mechanism=%s" $k.sasl.mechanism) }}
{{- $opts = append $opts (printf "sasl.username=%s" $k.sasl.username) }}
{{- end }}
{{- if and $k.tls.enabled $k.tls.caSecret.name }}
{{- $opts = append $opts "ssl.ca.location=/etc/tributary/kafka-ca/ca.crt" }}
{{- end }}
{{- if and $k.tls.enabled $k.tls.clientCertSecret.name }}
{{- $opts = append $opts "ssl.certificate.location=/etc/tributary/kafka-client/tls.crt" }}
{{- $opts = append $opts "ssl.key.location=/etc/tributary/kafka-client/tls.key" }}
{{- end }}
{{- join "," $opts }}
{{- end }}

{{/*
Secrets reach the containers as files, never as environment variables
(checkov CKV_K8S_35: a variable leaks into `kubectl describe`, crash dumps
and child processes). One projected volume "secrets" (read-only, on
/etc/tributary/secrets) holds the Secrets' keys that this component uses, and
TRIBUTARY_<X>_FILE names each file (the services read TRIBUTARY_X from the
file's content). Takes the component dict; prints "VARIABLE|secret|key|file"
lines, from which the volume, its mount and the variables are all made.
*/}}
{{- define "tributary.secretFiles" -}}
{{- $root := .root }}
{{- if include "tributary.usesDatabase" . }}
{{- $secret := $root.Values.database.existingSecret }}
{{- $key := $root.Values.database.key }}
{{- if and (eq .component "migrate") $root.Values.migrate.database.existingSecret }}
{{- $secret = $root.Values.migrate.database.existingSecret }}
{{- $key = $root.Values.migrate.database.key | default $key }}
{{- end }}
{{ printf "TRIBUTARY_DATABASE_URL_FILE|%s|%s|database-url" $secret $key }}
{{- end }}
{{- if and (include "tributary.usesKafka" .) $root.Values.kafka.sasl.enabled }}
{{ printf "TRIBUTARY_KAFKA_SASL_PASSWORD_FILE|%s|%s|kafka-sasl-password" $root.Values.kafka.sasl.passwordSecret.name $root.Values.kafka.sasl.passwordSecret.key }}
{{- end }}
{{- if include "tributary.usesBootstrapKey" . }}
{{ printf "TRIBUTARY_BOOTSTRAP_ADMIN_KEY_FILE|%s|%s|bootstrap-admin-key" $root.Values.auth.bootstrapKeySecret.name $root.Values.auth.bootstrapKeySecret.key }}
{{- end }}
{{- end }}

{{/*
The bootstrap admin API key goes to the admin service only (the service
that manages API keys); no other pod holds it.
*/}}
{{- define "tributary.usesBootstrapKey" -}}
{{- $a := .root.Values.auth }}
{{- if and (eq .component "admin") $a.enabled $a.bootstrapKeySecret.name }}true{{ end }}
{{- end }}

{{/* TRIBUTARY_*_FILE variables for the secret files (see tributary.secretFiles). */}}
{{- define "tributary.secretFileEnv" -}}
{{- range $line := splitList "\n" (include "tributary.secretFiles" . | trim) }}
{{- if $line }}
{{- $f := splitList "|" $line }}
- name: {{ index $f 0 }}
  value: {{ printf "/etc/tributary/secrets/%s" (index $f 3) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Where the TLS files are (the projected volume "tls" on /etc/tributary/tls):
tls.crt and tls.key of tls.secretName (every service), client-ca.crt (mutual
TLS) and, for the admin service, which calls the others' gRPC health,
ca.crt: the CA that verifies their certificates.
*/}}
{{- define "tributary.tlsDir" -}}/etc/tributary/tls{{- end }}

{{/* The Secret and key of the CA that verifies the services' certificates. */}}
{{- define "tributary.tlsCaSecret" -}}
{{- $t := .Values.tls }}
{{- $t.caSecret.name | default $t.secretName }}|{{ $t.caSecret.key }}
{{- end }}

{{/*
Volumes: /tmp (the root file system is read-only), the secret files, the
service's TLS certificate, and the Kafka TLS material. Secrets are mounted
as whole volumes, never with subPath: a subPath mount is never updated, and
the services re-read the certificate when cert-manager renews it in place.
*/}}
{{- define "tributary.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- $files := include "tributary.secretFiles" . | trim }}
{{- if $files }}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      {{- range $line := splitList "\n" $files }}
      {{- $f := splitList "|" $line }}
      - secret:
          name: {{ index $f 1 }}
          items:
            - key: {{ index $f 2 }}
              path: {{ index $f 3 }}
      {{- end }}
{{- end }}
{{- $t := .root.Values.tls }}
{{- if and $t.enabled (ne .component "migrate") }}
- name: tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ $t.secretName }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      {{- if $t.clientCaSecret.name }}
      - secret:
          name: {{ $t.clientCaSecret.name }}
          items:
            - key: {{ $t.clientCaSecret.key }}
              path: client-ca.crt
      {{- end }}
      {{- if eq .component "admin" }}
      {{- $ca := splitList "|" (include "tributary.tlsCaSecret" .root) }}
      - secret:
          name: {{ index $ca 0 }}
          items:
            - key: {{ index $ca 1 }}
              path: ca.crt
      {{- end }}
{{- end }}
{{- if include "tributary.usesKafka" . }}
{{- $tls := .root.Values.kafka.tls }}
{{- if and $tls.enabled $tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $tls.caSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $tls.caSecret.key }}
        path: ca.crt
{{- end }}
{{- if and $tls.enabled $tls.clientCertSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ $tls.clientCertSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $tls.clientCertSecret.certKey }}
        path: tls.crt
      - key: {{ $tls.clientCertSecret.keyKey }}
        path: tls.key
{{- end }}
{{- end }}
{{- end }}

{{- define "tributary.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "tributary.secretFiles" . | trim }}
- name: secrets
  mountPath: /etc/tributary/secrets
  readOnly: true
{{- end }}
{{- if and .root.Values.tls.enabled (ne .component "migrate") }}
- name: tls
  mountPath: {{ include "tributary.tlsDir" . }}
  readOnly: true
{{- end }}
{{- if include "tributary.usesKafka" . }}
{{- $tls := .root.Values.kafka.tls }}
{{- if and $tls.enabled $tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/tributary/kafka-ca
  readOnly: true
{{- end }}
{{- if and $tls.enabled $tls.clientCertSecret.name }}
- name: kafka-client
  mountPath: /etc/tributary/kafka-client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "tributary.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser | int }}
runAsGroup: {{ .Values.podSecurity.runAsGroup | int }}
fsGroup: {{ .Values.podSecurity.fsGroup | int }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tributary.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser | int }}
runAsGroup: {{ .Values.podSecurity.runAsGroup | int }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
A probe. kind grpc is the native gRPC probe on grpc.health.v1.Health (the
overall status, service ""); kind http is GET /ready (readiness) or /live
(liveness, startup) on the HTTP port, over HTTPS when tls.http is on (the
kubelet does not verify the certificate). kind auto is grpc while the gRPC
port is plaintext and http once it serves TLS: the kubelet's gRPC probe
speaks plaintext only and cannot present a client certificate, so the chart
refuses kind grpc together with tls.enabled (tributary.validate). Takes
(dict "probe" P "path" "/live" "ports" PORTS "root" $).
*/}}
{{- define "tributary.probe" -}}
{{- $t := .root.Values.tls }}
{{- $kind := .probe.kind }}
{{- if eq $kind "auto" }}
{{- $kind = ternary "http" "grpc" $t.enabled }}
{{- end }}
{{- if eq $kind "grpc" }}
grpc:
  port: {{ .ports.grpc | int }}
{{- else }}
httpGet:
  path: {{ .path }}
  port: {{ .ports.http | int }}
  scheme: {{ ternary "HTTPS" "HTTP" (and $t.enabled $t.http) }}
{{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds | int }}
periodSeconds: {{ .probe.periodSeconds | int }}
timeoutSeconds: {{ .probe.timeoutSeconds | int }}
failureThreshold: {{ .probe.failureThreshold | int }}
successThreshold: {{ .probe.successThreshold | int }}
{{- end }}

{{/*
The service's TRIBUTARY_* settings (its ConfigMap's data). Secrets never go
here.
*/}}
{{- define "tributary.configData" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- $c := $v.config }}
TRIBUTARY_GRPC_ADDR: {{ printf "0.0.0.0:%d" (int $v.ports.grpc) | quote }}
TRIBUTARY_HTTP_ADDR: {{ printf "0.0.0.0:%d" (int $v.ports.http) | quote }}
TRIBUTARY_LOG: {{ $c.logFilter | quote }}
TRIBUTARY_LOG_FORMAT: {{ $c.logFormat | quote }}
TRIBUTARY_SHUTDOWN_GRACE: {{ printf "%ds" (int $c.shutdownGraceSeconds) | quote }}
{{- with $root.Values.otlp.endpoint }}
TRIBUTARY_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- /* Trust: TLS file paths (the files are Secrets, mounted), auth, limits. */}}
{{- $t := $root.Values.tls }}
{{- if $t.enabled }}
{{- $dir := include "tributary.tlsDir" . }}
TRIBUTARY_TLS_CERT: {{ printf "%s/tls.crt" $dir | quote }}
TRIBUTARY_TLS_KEY: {{ printf "%s/tls.key" $dir | quote }}
{{- if $t.clientCaSecret.name }}
TRIBUTARY_TLS_CLIENT_CA: {{ printf "%s/client-ca.crt" $dir | quote }}
{{- end }}
{{- if eq .component "admin" }}
TRIBUTARY_TLS_CA: {{ printf "%s/ca.crt" $dir | quote }}
{{- if $t.clientCaSecret.name }}
TRIBUTARY_TLS_CLIENT_CERT: {{ printf "%s/tls.crt" $dir | quote }}
TRIBUTARY_TLS_CLIENT_KEY: {{ printf "%s/tls.key" $dir | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Only when on: the services take TRIBUTARY_HTTP_TLS as requiring a certificate. */}}
{{- if and $t.enabled $t.http }}
TRIBUTARY_HTTP_TLS: "true"
{{- end }}
TRIBUTARY_AUTH: {{ ternary "on" "off" $root.Values.auth.enabled | quote }}
TRIBUTARY_MAX_CONCURRENT_CALLS: {{ $root.Values.admission.maxConcurrentCalls | int | quote }}
TRIBUTARY_MAX_STREAMS: {{ $root.Values.admission.maxStreams | int | quote }}
{{- with $root.Values.auth.openMethods }}
TRIBUTARY_AUTH_OPEN_METHODS: {{ join "," . | quote }}
{{- end }}
{{- $rl := $root.Values.auth.rateLimits }}
{{- if $rl }}
{{- $limits := list }}
{{- range $scope := keys $rl | sortAlpha }}
{{- $limits = append $limits (printf "%s=%d/s" $scope (int (index $rl $scope))) }}
{{- end }}
TRIBUTARY_RATE_LIMITS: {{ join "," $limits | quote }}
{{- end }}
{{- if include "tributary.usesKafka" . }}
TRIBUTARY_KAFKA_BROKERS: {{ $root.Values.kafka.brokers | quote }}
TRIBUTARY_TOPIC: {{ $root.Values.kafka.topic | quote }}
TRIBUTARY_DLQ_TOPIC: {{ $root.Values.kafka.dlqTopic | quote }}
{{- with include "tributary.kafkaOptions" $root }}
TRIBUTARY_KAFKA_OPTIONS: {{ . | quote }}
{{- end }}
{{- end }}
{{- if and (include "tributary.checksWebhooks" .) $root.Values.webhooks.allowCidrs }}
TRIBUTARY_WEBHOOK_ALLOW_CIDR: {{ join "," $root.Values.webhooks.allowCidrs | quote }}
{{- end }}
{{- if and (has .component (list "query" "admin")) $c.maxCallDuration }}
TRIBUTARY_MAX_CALL_DURATION: {{ $c.maxCallDuration | quote }}
{{- end }}
{{- if eq .component "ingest" }}
TRIBUTARY_MAX_IN_FLIGHT_EVENTS: {{ $c.maxInFlightEvents | int | quote }}
TRIBUTARY_MAX_IN_FLIGHT_BYTES: {{ $c.maxInFlightBytes | quote }}
TRIBUTARY_STREAM_WINDOW: {{ $c.streamWindow | int | quote }}
TRIBUTARY_MAX_QUEUE_DELAY: {{ $c.maxQueueDelay | quote }}
{{- with $c.corsAllowOrigin }}
TRIBUTARY_CORS_ALLOW_ORIGIN: {{ join "," . | quote }}
{{- end }}
TRIBUTARY_PRODUCE_TIMEOUT: {{ $c.produceTimeout | quote }}
TRIBUTARY_PRODUCE_LINGER: {{ $c.linger | quote }}
{{- else if eq .component "processor" }}
TRIBUTARY_CONSUMER_GROUP: {{ $c.consumerGroup | quote }}
TRIBUTARY_BATCH_SIZE: {{ $c.batchSize | int | quote }}
TRIBUTARY_BATCH_TIMEOUT: {{ $c.batchTimeout | quote }}
TRIBUTARY_STORE_CONCURRENCY: {{ $c.storeConcurrency | int | quote }}
TRIBUTARY_MAX_BACKOFF: {{ $c.maxBackoff | quote }}
{{- else if eq .component "query" }}
TRIBUTARY_DB_POOL_SIZE: {{ $c.dbPoolSize | int | quote }}
{{- else if eq .component "dispatch" }}
TRIBUTARY_POLL_INTERVAL: {{ $c.pollInterval | quote }}
TRIBUTARY_FAILING_AFTER: {{ $c.failingAfter | quote }}
{{- else if eq .component "admin" }}
TRIBUTARY_LAG_GROUPS: {{ $c.lagGroups | default $root.Values.processor.config.consumerGroup | quote }}
TRIBUTARY_LAG_POLL_INTERVAL: {{ $c.lagPollInterval | quote }}
{{- /* The store's maintenance loop: partitions ahead, retention (toString: a bare 0 in the values is a number). */}}
TRIBUTARY_RETENTION: {{ $root.Values.retention | toString | quote }}
TRIBUTARY_MAINTENANCE_INTERVAL: {{ $c.maintenanceInterval | quote }}
{{- range $other := splitList " " (include "tributary.healthChecked" $root) }}
{{- $octx := dict "root" $root "component" $other }}
TRIBUTARY_{{ upper $other }}_ADDR: {{ printf "%s:%d" (include "tributary.componentName" $octx) (int (index $root.Values $other).ports.grpc) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Rules the schema cannot express (they relate two values). Included by every
template that renders a service, so `helm template` and `helm lint` fail on
them with these messages.
*/}}
{{- define "tributary.validate" -}}
{{- $v := .Values }}
{{- $p := $v.processor }}
{{- if $p.keda.enabled }}
{{- if gt (int $p.keda.maxReplicas) (int $v.kafka.partitions) }}
{{- fail (printf "processor.keda.maxReplicas (%d) must not exceed kafka.partitions (%d): a replica without a partition idles" (int $p.keda.maxReplicas) (int $v.kafka.partitions)) }}
{{- end }}
{{- if gt (int $p.keda.minReplicas) (int $p.keda.maxReplicas) }}
{{- fail (printf "processor.keda.minReplicas (%d) must not exceed processor.keda.maxReplicas (%d)" (int $p.keda.minReplicas) (int $p.keda.maxReplicas)) }}
{{- end }}
{{- end }}
{{- /* Both consume the topic in consumer groups (dispatch: one per subscription). */}}
{{- range $svc := list "processor" "dispatch" }}
{{- $replicas := int (index $v $svc).replicas }}
{{- if gt $replicas (int $v.kafka.partitions) }}
{{- fail (printf "%s.replicas (%d) must not exceed kafka.partitions (%d): each partition is consumed by one replica, the others would idle" $svc $replicas (int $v.kafka.partitions)) }}
{{- end }}
{{- end }}
{{- range $svc := splitList " " (include "tributary.services" $) }}
{{- $s := index $v $svc }}
{{- $drain := add $s.preStopSleepSeconds $s.config.shutdownGraceSeconds }}
{{- if le (int $s.terminationGracePeriodSeconds) (int $drain) }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.shutdownGraceSeconds (%d): the pod would be killed while draining" $svc (int $s.terminationGracePeriodSeconds) (int $drain)) }}
{{- end }}
{{- if and (hasKey $s "autoscaling") $s.autoscaling.enabled }}
{{- if gt (int $s.autoscaling.minReplicas) (int $s.autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%d) must not exceed maxReplicas (%d)" $svc (int $s.autoscaling.minReplicas) (int $s.autoscaling.maxReplicas)) }}
{{- end }}
{{- if not $s.resources.requests.cpu }}
{{- fail (printf "%s.autoscaling needs %s.resources.requests.cpu (the CPU target is a share of it)" $svc $svc) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.kafka.sasl.enabled (not $v.kafka.sasl.passwordSecret.name) }}
{{- fail "kafka.sasl.enabled needs kafka.sasl.passwordSecret.name (an existing Secret)" }}
{{- end }}
{{- if and $v.kafka.tls.clientCertSecret.name (not $v.kafka.tls.enabled) }}
{{- fail "kafka.tls.clientCertSecret is set but kafka.tls.enabled is false" }}
{{- end }}
{{- if and $v.kafka.tls.caSecret.name (not $v.kafka.tls.enabled) }}
{{- fail "kafka.tls.caSecret is set but kafka.tls.enabled is false" }}
{{- end }}
{{- with $v.auth.openMethods }}
{{- if not (has "grpc.health.v1.Health" .) }}
{{- fail "auth.openMethods replaces the default open methods and must keep grpc.health.v1.Health (the kubelet's gRPC probes and the admin service's status call it without a key)" }}
{{- end }}
{{- end }}
{{- $t := $v.tls }}
{{- if and $t.enabled (not $t.secretName) }}
{{- fail "tls.enabled needs tls.secretName (an existing kubernetes.io/tls Secret with tls.crt and tls.key)" }}
{{- end }}
{{- if not $t.enabled }}
{{- if $t.http }}
{{- fail "tls.http serves the gRPC port's certificate on the HTTP port: it needs tls.enabled" }}
{{- end }}
{{- if $t.clientCaSecret.name }}
{{- fail "tls.clientCaSecret is set but tls.enabled is false" }}
{{- end }}
{{- if $t.caSecret.name }}
{{- fail "tls.caSecret is set but tls.enabled is false" }}
{{- end }}
{{- else }}
{{- range $svc := splitList " " (include "tributary.services" $) }}
{{- range $probe := list "readiness" "liveness" "startup" }}
{{- if eq (index (index $v $svc).probes $probe).kind "grpc" }}
{{- fail (printf "%s.probes.%s.kind: grpc cannot be used with tls.enabled: the kubelet's gRPC probe speaks plaintext and cannot present a client certificate; use auto or http (GET /ready or /live on the HTTP port)" $svc $probe) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress rules shared by the services and the migrate hook:
DNS, then Kafka / PostgreSQL / OTLP / webhook receivers as the component
uses them.
*/}}
{{- define "tributary.egressRule" -}}
- ports:
    {{- range .rule.ports }}
    {{- $port := . }}
    {{- range $.protocols }}
    - port: {{ $port }}
      protocol: {{ . }}
    {{- end }}
    {{- end }}
  {{- with .rule.peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- define "tributary.egressRules" -}}
{{- $v := .root.Values }}
# DNS
{{ include "tributary.egressRule" (dict "rule" $v.networkPolicy.dns "protocols" (list "UDP" "TCP")) }}
{{- if include "tributary.usesKafka" . }}
# Kafka
{{ include "tributary.egressRule" (dict "rule" $v.kafka.networkPolicy "protocols" (list "TCP")) }}
{{- end }}
{{- if include "tributary.usesDatabase" . }}
# PostgreSQL
{{ include "tributary.egressRule" (dict "rule" $v.database.networkPolicy "protocols" (list "TCP")) }}
{{- end }}
{{- if and $v.otlp.endpoint (ne .component "migrate") }}
# OTLP
{{ include "tributary.egressRule" (dict "rule" $v.otlp.networkPolicy "protocols" (list "TCP")) }}
{{- end }}
{{- if include "tributary.sendsWebhooks" . }}
# webhook receivers
{{ include "tributary.egressRule" (dict "rule" (include "tributary.webhookEgress" .root | fromYaml) "protocols" (list "TCP")) }}
{{- end }}
{{- end }}

{{/*
Where webhooks may go (an egress rule for tributary.egressRule, as YAML):
webhooks.networkPolicy.ports on its peers, or, when it names none, on every
public address (0.0.0.0/0 and ::/0 without tributary.internalCidrs4/6);
plus webhooks.allowCidrs on the same ports.
*/}}
{{- define "tributary.webhookEgress" -}}
{{- $w := .Values.webhooks }}
{{- $peers := $w.networkPolicy.peers }}
{{- if not $peers }}
{{- $peers = list
  (dict "ipBlock" (dict "cidr" "0.0.0.0/0" "except" (splitList " " (include "tributary.internalCidrs4" .))))
  (dict "ipBlock" (dict "cidr" "::/0" "except" (splitList " " (include "tributary.internalCidrs6" .)))) }}
{{- end }}
{{- range $w.allowCidrs }}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" .)) }}
{{- end }}
{{- toYaml (dict "ports" $w.networkPolicy.ports "peers" $peers) }}
{{- end }}
