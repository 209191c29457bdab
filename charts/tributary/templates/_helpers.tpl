{{/*
Names, labels and the pieces every service shares. Helpers that concern one
service take a dict: (dict "root" $ "component" "ingest").
*/}}

{{- define "tributary.services" -}}
ingest processor query admin
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
{{- if has .component (list "ingest" "processor" "admin" "migrate") }}true{{ end }}
{{- end }}

{{/*
admin reads PostgreSQL for its dead-letter, registry and replay RPCs
(proto/tributary/v1/admin.proto); ingest reads the event-type registry (its
schemas are cached, so a PostgreSQL blip does not stop ingest).
*/}}
{{- define "tributary.usesDatabase" -}}
{{- if has .component (list "ingest" "processor" "query" "admin" "migrate") }}true{{ end }}
{{- end }}

{{/* True when something other than "replicas" sets the replica count. */}}
{{- define "tributary.autoscaled" -}}
{{- $v := index .root.Values .component }}
{{- if and (hasKey $v "autoscaling") $v.autoscaling.enabled }}true{{ end }}
{{- if and (hasKey $v "keda") $v.keda.enabled }}true{{ end }}
{{- end }}

{{/*
TRIBUTARY_KAFKA_OPTIONS ("k=v,k=v"): kafka.options (sorted), then the
security settings made from kafka.tls and kafka.sasl. The SASL password is
$(KAFKA_SASL_PASSWORD), which Kubernetes expands from the variable of that
name (a secretKeyRef) defined before it in the container's env.
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
{{- $opts = append $opts "sasl.password=$(KAFKA_SASL_PASSWORD)" }}
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
Environment variables from Secrets, and the ones that must be expanded by
Kubernetes (so they cannot live in the ConfigMap). Takes the component dict.
*/}}
{{- define "tributary.secretEnv" -}}
{{- $root := .root }}
{{- if include "tributary.usesDatabase" . }}
{{- $secret := $root.Values.database.existingSecret }}
{{- $key := $root.Values.database.key }}
{{- if and (eq .component "migrate") $root.Values.migrate.database.existingSecret }}
{{- $secret = $root.Values.migrate.database.existingSecret }}
{{- $key = $root.Values.migrate.database.key | default $key }}
{{- end }}
- name: TRIBUTARY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- if include "tributary.usesKafka" . }}
{{- if $root.Values.kafka.sasl.enabled }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.kafka.sasl.passwordSecret.name }}
      key: {{ $root.Values.kafka.sasl.passwordSecret.key }}
{{- end }}
{{- with include "tributary.kafkaOptions" $root }}
- name: TRIBUTARY_KAFKA_OPTIONS
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes for the Kafka TLS material, and /tmp (the root file system is read-only). */}}
{{- define "tributary.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
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
A probe: kind grpc is the native gRPC probe on grpc.health.v1.Health (the
overall status, service ""); kind http is GET /ready (readiness) or /live
(liveness, startup) on the HTTP port. Takes (dict "probe" P "path" "/live"
"ports" PORTS).
*/}}
{{- define "tributary.probe" -}}
{{- if eq .probe.kind "grpc" }}
grpc:
  port: {{ .ports.grpc | int }}
{{- else }}
httpGet:
  path: {{ .path }}
  port: {{ .ports.http | int }}
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
{{- if include "tributary.usesKafka" . }}
TRIBUTARY_KAFKA_BROKERS: {{ $root.Values.kafka.brokers | quote }}
TRIBUTARY_TOPIC: {{ $root.Values.kafka.topic | quote }}
TRIBUTARY_DLQ_TOPIC: {{ $root.Values.kafka.dlqTopic | quote }}
{{- end }}
{{- if eq .component "ingest" }}
TRIBUTARY_MAX_IN_FLIGHT_EVENTS: {{ $c.maxInFlightEvents | int | quote }}
TRIBUTARY_STREAM_WINDOW: {{ $c.streamWindow | int | quote }}
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
{{- else if eq .component "admin" }}
TRIBUTARY_LAG_GROUPS: {{ $c.lagGroups | default $root.Values.processor.config.consumerGroup | quote }}
TRIBUTARY_LAG_POLL_INTERVAL: {{ $c.lagPollInterval | quote }}
{{- range $other := list "ingest" "processor" "query" }}
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
{{- if gt (int $p.replicas) (int $v.kafka.partitions) }}
{{- fail (printf "processor.replicas (%d) must not exceed kafka.partitions (%d): each partition is consumed by one replica, the others would idle" (int $p.replicas) (int $v.kafka.partitions)) }}
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
{{- end }}

{{/*
NetworkPolicy egress rules shared by the services and the migrate hook:
DNS, then Kafka / PostgreSQL / OTLP as the component uses them.
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
{{- end }}
