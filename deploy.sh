#!/usr/bin/env bash
# Runs Tributary on this machine. ./deploy.sh --help says what it does.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TB_LOG_PREFIX=deploy
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
# shellcheck source=scripts/web.sh
source "$ROOT/scripts/web.sh"

SERVICES=(ingest processor query admin dispatch)
# Started in this order, stopped in reverse.
PARTS=(postgres broker tracesink "${SERVICES[@]}" alertsink alertmanager prometheus web)
TRACE_SINK_PORT=4317
PROMETHEUS_PORT=9090
ALERTMANAGER_PORT=9093
ALERT_SINK_PORT=9095
ALERT_FILE="$TB_LOG_DIR/alerts.jsonl"
AM_CONFIG="$ROOT/observability/alertmanager/alertmanager.yml"
TRACE_FILE="$TB_STATE_DIR/traces/spans.jsonl"
PROM_CONFIG="$ROOT/observability/prometheus/prometheus.yml"
BROKER_PORT=9092
CFG_FILE="$TB_STATE_DIR/deploy.env"
PG_DIR="$TB_STATE_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_SOCKET_DIR="$PG_DIR/run"
PG_LOG="$TB_LOG_DIR/postgres.log"
# --secure: the local CA, certificates and keys, and the secrets (passwords,
# the bootstrap admin key), made once and kept across runs.
TLS_DIR="$TB_STATE_DIR/tls"
SECRETS_DIR="$TB_STATE_DIR/secrets"
KAFKA_USER=tributary

usage() {
  cat <<EOF
Usage: ./deploy.sh [COMMAND] [OPTIONS]

Runs Tributary on this machine: a PostgreSQL $TB_PG_MAJOR cluster, the nisshi
Kafka-protocol broker, the ingest, processor, query, admin and dispatch services, the
trace sink (OTLP/gRPC, spans as JSON lines), Prometheus (with the alert rules)
and Alertmanager, whose pager and ticket webhooks go to a local receiver that
writes every notification to a file.

Commands:
  up [--secure]    (the default) Install what is missing (apt packages, grpcurl,
                   nisshi), build the release binaries, start PostgreSQL and the
                   broker, migrate (schema and topics), start the services, wait
                   until each answers gRPC health SERVING and HTTP /ready, then
                   print endpoints, log files and grpcurl examples.
                   Safe to re-run: parts already running are left alone, except a
                   service whose binary the build replaced, which is restarted.
  down             Stop the services, then the broker, then PostgreSQL (each by
                   its PID; SIGTERM, SIGKILL after 30 s), and forget the saved
                   options. Data stays in the state directory.
  status           State, PID, address and health of each part. Exit status 0
                   only when every part is running and healthy.
  start PART       Start one part with the saved options (no build, no migrate)
                   and wait until it is healthy.
  stop PART        Stop one part.
                   PART: ingest, processor, query, admin, dispatch, broker, postgres,
                   tracesink, alertsink, alertmanager, prometheus or web.
  k8s --env ENV    Install or upgrade the Helm chart charts/tributary on the
                   current kubectl context (ENV: dev, staging or prod):
                     helm upgrade --install tributary charts/tributary
                       -n tributary-ENV --create-namespace
                       -f charts/tributary/values.yaml
                       -f charts/tributary/values-ENV.yaml
                   The pre-install/pre-upgrade Job migrates first. Needs a
                   reachable cluster and the Secrets the values name (see
                   README, "Kubernetes"). Installs helm $TB_HELM_VERSION into the tools
                   cache when missing.

Options:
  --kafka HOST:PORT  (up) Use this existing broker; no local broker is started.
                     Its topics are created by the migrate step.
  --postgres DSN     (up) Use this existing PostgreSQL database, e.g.
                     postgres://user:pass@host:5432/tributary; the schema is
                     migrated into it and no local cluster is started. Without
                     --kafka the local broker then runs with the memory storage
                     engine: not durable, a broker restart loses unconsumed
                     events and committed offsets (topics are re-created by the
                     next 'up'). Give --kafka too for a durable broker.
  --broker-engine ENGINE
                     (up) The local broker's storage engine: postgres (durable,
                     in the database nisshi of the local PostgreSQL; the
                     default) or memory (not durable, as with --postgres; the
                     default there). postgres is refused with --postgres, the
                     option itself with --kafka (no local broker runs).
  --secure           (up) TLS and auth everywhere. A local CA (made once,
                     \$TRIBUTARY_STATE_DIR/tls/ca.pem) signs the certificates;
                     every gRPC port serves TLS only, admin's with mutual TLS
                     (clients present tls/client.pem); API keys are required
                     (the bootstrap admin key, every scope, is in
                     \$TRIBUTARY_STATE_DIR/secrets/admin.key, mode 0600);
                     PostgreSQL takes only TLS connections (the services
                     connect with sslmode=verify-full) with a generated
                     password; the broker listens TLS-only with SCRAM-SHA-512
                     users (SASL_SSL). Needs the local PostgreSQL and the
                     local broker on its postgres engine (exit 64 otherwise).
                     Without it: loopback only, no TLS, auth off (each
                     service warns). Switching needs a 'down' first.
  --no-build         (up) Skip 'cargo build'; use the binaries already built.
  --porcelain        (status) One line per part: NAME STATE PID HEALTH.
  --env ENV          (k8s) dev, staging or prod.
  --dry-run          (k8s) Render the manifests with 'helm template' to
                     standard output instead; no cluster is needed.
  -h, --help         This text.

Options given to 'up' are saved in \$TRIBUTARY_STATE_DIR/deploy.env and reused
by later commands until 'down'. Changing them needs a 'down' first.

Environment:
  TRIBUTARY_STATE_DIR   state directory: PostgreSQL data, pid files, logs
                        (default /var/lib/tributary; keep it outside /root and
                        the clone: the postgres user must reach it)
  TRIBUTARY_PG_PORT     local PostgreSQL port (default 55432)
  TRIBUTARY_BIND_HOST   address the services listen on (default 127.0.0.1)
  TRIBUTARY_PARTITIONS  partitions of tributary.events when migrate creates it
                        (default 6)
  TRIBUTARY_RETENTION   how long events, dead letters and alerts are kept
                        (default 30d; e.g. 36h, at least 1h; 0 keeps
                        everything). Reaches migrate (applied once per 'up';
                        retention.ms of the topics it creates) and admin's
                        maintenance loop through the environment; not saved
                        with the options, so give it to every 'up' and
                        'start admin' (README, "Retention and time partitions")
  TRIBUTARY_PARTITION_WIDTH, TRIBUTARY_MAINTENANCE_INTERVAL
                        likewise: the width of new partitions of events
                        (migrate; default 1d) and how often admin's
                        maintenance runs (default 15m)
  TRIBUTARY_LOG_FORMAT  service log format, text or json (default text)
  TRIBUTARY_WEBHOOK_ALLOW_CIDR
                        (up) addresses webhooks (rules, subscriptions) may reach although
                        internal (default: 127.0.0.0/8,::1/128 without
                        --secure, none with it); saved with the options
  CARGO_TARGET_DIR      build directory (default \$HOME/.cache/tributary/target)

Local endpoints (on TRIBUTARY_BIND_HOST):
  ingest     gRPC :50051   HTTP :9601 (/metrics /live /ready)
  processor  gRPC :50054   HTTP :9602   (health and reflection only)
  query      gRPC :50052   HTTP :9603
  admin      gRPC :50053   HTTP :9604   (topics, groups, lag; exports the lag gauges)
  dispatch   gRPC :50055   HTTP :9605   (delivers subscriptions: push webhooks, and Pull)
  tracesink  OTLP/gRPC 127.0.0.1:$TRACE_SINK_PORT, spans to \$TRIBUTARY_STATE_DIR/traces/spans.jsonl
  prometheus http://127.0.0.1:$PROMETHEUS_PORT (scrapes all five services, evaluates observability/prometheus/rules)
  alertmanager http://127.0.0.1:$ALERTMANAGER_PORT (observability/alertmanager/alertmanager.yml)
  web        http://127.0.0.1:$TB_WEB_PORT the live page (clients/web; plain mode only): the
             browser tracker sends your clicks to ingest over gRPC-Web and the page
             shows them coming back through query (TailEvents, AggregateEvents)
  alertsink  http://127.0.0.1:$ALERT_SINK_PORT/{pager,ticket}: Alertmanager's webhooks, one
             JSON line per notification in \$TRIBUTARY_STATE_DIR/logs/alerts.jsonl
  broker     127.0.0.1:$BROKER_PORT (nisshi; storage engine: see --broker-engine)
  postgres   127.0.0.1:55432, user postgres, password postgres,
             databases tributary and nisshi (the broker's, postgres engine)
Logs: \$TRIBUTARY_STATE_DIR/logs/NAME.log (NAME: a part, or migrate).
Tools are cached in \$HOME/.cache/tributary/tools.
EOF
}

# ---------------------------------------------------------------- options

svc_grpc_port() { case $1 in ingest) echo 50051 ;; query) echo 50052 ;; admin) echo 50053 ;; processor) echo 50054 ;; dispatch) echo 50055 ;; esac; }
svc_http_port() { case $1 in ingest) echo 9601 ;; processor) echo 9602 ;; query) echo 9603 ;; admin) echo 9604 ;; dispatch) echo 9605 ;; esac; }

redact_dsn() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

CFG_KAFKA=""
CFG_POSTGRES=""
# Empty: the default (see broker_engine_name), e.g. in a deploy.env written
# before --broker-engine existed; always empty with --kafka.
CFG_BROKER_ENGINE=""
CFG_PG_PORT=55432
CFG_BIND_HOST=127.0.0.1
CFG_SECURE=0
CFG_WEBHOOK_ALLOW=""

load_saved_cfg() {
  [[ -f "$CFG_FILE" ]] || return 1
  # shellcheck disable=SC1090
  source "$CFG_FILE"
}

save_cfg() {
  mkdir -p "$TB_STATE_DIR"
  local tmp="$CFG_FILE.tmp"
  (
    umask 077
    {
      echo "# written by deploy.sh up; removed by deploy.sh down"
      printf 'CFG_KAFKA=%q\n' "$CFG_KAFKA"
      printf 'CFG_POSTGRES=%q\n' "$CFG_POSTGRES"
      printf 'CFG_BROKER_ENGINE=%q\n' "$CFG_BROKER_ENGINE"
      printf 'CFG_PG_PORT=%q\n' "$CFG_PG_PORT"
      printf 'CFG_BIND_HOST=%q\n' "$CFG_BIND_HOST"
      printf 'CFG_SECURE=%q\n' "$CFG_SECURE"
      printf 'CFG_WEBHOOK_ALLOW=%q\n' "$CFG_WEBHOOK_ALLOW"
    } >"$tmp"
  )
  mv "$tmp" "$CFG_FILE"
}

cfg_summary() {
  printf 'kafka=%s postgres=%s broker-engine=%s pg-port=%s bind-host=%s mode=%s' "${CFG_KAFKA:-local}" \
    "$( [[ -n "$CFG_POSTGRES" ]] && redact_dsn "$CFG_POSTGRES" || echo local)" \
    "$(local_broker && broker_engine_name || echo -)" "$CFG_PG_PORT" "$CFG_BIND_HOST" \
    "$(secure && echo secure || echo plain)"
}

# The raw options, to compare a request with what is running.
cfg_key() {
  printf '%s|%s|%s|%s|%s|%s|%s' "$CFG_KAFKA" "$CFG_POSTGRES" "$CFG_BROKER_ENGINE" "$CFG_PG_PORT" \
    "$CFG_BIND_HOST" "$CFG_SECURE" "$CFG_WEBHOOK_ALLOW"
}

secure() { [[ "$CFG_SECURE" == 1 ]]; }

# How the scripts' grpcurl calls reach the services (scripts/lib.sh).
set_grpcurl_tls() {
  if secure; then
    TB_GRPCURL_TLS=(-cacert "$TLS_DIR/ca.pem" -cert "$TLS_DIR/client.pem" -key "$TLS_DIR/client.key")
  else
    TB_GRPCURL_TLS=(-plaintext)
  fi
}

local_pg() { [[ -z "$CFG_POSTGRES" ]]; }
local_broker() { [[ -z "$CFG_KAFKA" ]]; }
kafka_brokers() { if local_broker; then echo "127.0.0.1:$BROKER_PORT"; else echo "$CFG_KAFKA"; fi; }
pg_password() { if secure; then cat "$SECRETS_DIR/pg.password"; else echo postgres; fi; }
database_url() {
  if ! local_pg; then
    echo "$CFG_POSTGRES"
  elif secure; then
    echo "postgres://postgres:$(pg_password)@127.0.0.1:$CFG_PG_PORT/tributary?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem"
  else
    echo "postgres://postgres:postgres@127.0.0.1:$CFG_PG_PORT/tributary"
  fi
}
# What a service or tributary-ctl needs in its environment to reach
# PostgreSQL and the broker (call it in a subshell: it exports).
export_dependency_env() {
  export TRIBUTARY_KAFKA_BROKERS
  TRIBUTARY_KAFKA_BROKERS="$(kafka_brokers)"
  if secure; then
    # Secrets as files, never in a process's arguments or environment.
    # (What the caller's environment holds for the clients, e.g. for the
    # bench, must not clash with the files.)
    unset TRIBUTARY_DATABASE_URL TRIBUTARY_KAFKA_SASL_PASSWORD
    export TRIBUTARY_DATABASE_URL_FILE="$SECRETS_DIR/database.url"
    export TRIBUTARY_KAFKA_OPTIONS="security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=$KAFKA_USER,ssl.ca.location=$TLS_DIR/ca.pem"
    export TRIBUTARY_KAFKA_SASL_PASSWORD_FILE="$SECRETS_DIR/kafka.password"
  else
    unset TRIBUTARY_DATABASE_URL_FILE
    # The local plain broker takes no TLS or SASL, whatever the caller's
    # environment says.
    local_broker && unset TRIBUTARY_KAFKA_OPTIONS TRIBUTARY_KAFKA_SASL_PASSWORD TRIBUTARY_KAFKA_SASL_PASSWORD_FILE
    export TRIBUTARY_DATABASE_URL
    TRIBUTARY_DATABASE_URL="$(database_url)"
  fi
}
# The local broker's storage engine: --broker-engine, else postgres when
# PostgreSQL is local (memory has nowhere durable to keep its data otherwise).
broker_engine_name() {
  if [[ -n "$CFG_BROKER_ENGINE" ]]; then
    echo "$CFG_BROKER_ENGINE"
  elif local_pg; then echo postgres; else echo memory; fi
}
broker_on_pg() { local_broker && [[ "$(broker_engine_name)" == postgres ]]; }
broker_engine() {
  if ! broker_on_pg; then
    echo "memory://nisshi/"
  elif secure; then
    # nisshi checks the server against the system's CAs (SSL_CERT_FILE).
    echo "postgres://postgres:$(pg_password)@127.0.0.1:$CFG_PG_PORT/nisshi?sslmode=require"
  else
    echo "postgres://postgres:postgres@127.0.0.1:$CFG_PG_PORT/nisshi"
  fi
}

# ---------------------------------------------------------------- postgres

pg_as() { runuser -u postgres -- "$@"; }

pg_running() {
  [[ -f "$PG_DATA/PG_VERSION" ]] && pg_as "$TB_PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || echo -; }

# Over the unix socket as the postgres user (peer): no password, either mode.
pg_psql() {
  PGCONNECT_TIMEOUT=5 pg_as "$TB_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
    -h "$PG_SOCKET_DIR" -p "$CFG_PG_PORT" -U postgres -d postgres -tA "$@"
}

pg_create_database() {
  local db=$1 exists
  exists=$(pg_psql -c "SELECT 1 FROM pg_database WHERE datname = '$db'") || die "cannot query the local PostgreSQL"
  if [[ "$exists" != 1 ]]; then
    log_info "creating database $db"
    pg_psql -c "CREATE DATABASE \"$db\"" || die "CREATE DATABASE $db failed"
  fi
}

pg_write_conf() {
  # Regenerated on every start; postgresql.conf includes it.
  # Memory: a quarter of RAM for shared buffers (128 MiB to 2 GiB); the
  # default 128 MiB keeps too little of the events indexes in memory once the
  # table holds millions of rows (BENCHMARKS.md). WAL: fewer, spread
  # checkpoints, so inserts do not stall on bursts of full-page writes.
  # Durability is unchanged (fsync and synchronous_commit stay on: the
  # processor commits Kafka offsets only after PostgreSQL's commit).
  local mem_mib shared_mib
  mem_mib=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo 2>/dev/null) || mem_mib=0
  shared_mib=$((${mem_mib:-0} / 4))
  ((shared_mib < 128)) && shared_mib=128
  ((shared_mib > 2048)) && shared_mib=2048
  cat >"$PG_DATA/tributary.conf" <<EOF
# written by deploy.sh
listen_addresses = '127.0.0.1'
port = $CFG_PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
password_encryption = 'scram-sha-256'
shared_buffers = ${shared_mib}MB
effective_cache_size = $((shared_mib * 2))MB
wal_buffers = 16MB
max_wal_size = 4GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
EOF
  if secure; then
    cat >>"$PG_DATA/tributary.conf" <<EOF
ssl = on
ssl_cert_file = '$PG_DIR/tls/server.pem'
ssl_key_file = '$PG_DIR/tls/server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
  fi
  chown postgres:postgres "$PG_DATA/tributary.conf"
  # Who may connect: the socket as the postgres user (peer); over TCP with a
  # password, and with --secure only over TLS.
  local host=host
  secure && host=hostssl
  cat >"$PG_DATA/pg_hba.conf" <<EOF
# written by deploy.sh
local   all   all                  peer
$host   all   all   127.0.0.1/32   scram-sha-256
$host   all   all   ::1/128        scram-sha-256
EOF
  chown postgres:postgres "$PG_DATA/pg_hba.conf"
}

pg_init() {
  local tmp="$PG_DATA.init" pwfile="$PG_DIR/.pwfile"
  log_info "initialising a PostgreSQL $TB_PG_MAJOR cluster in $PG_DATA"
  rm -rf "$tmp"
  install -m 600 -o postgres -g postgres /dev/null "$pwfile"
  printf 'postgres\n' >"$pwfile"
  # Password (SCRAM) over TCP, peer on the unix socket.
  if ! pg_as "$TB_PG_BIN/initdb" -D "$tmp" -U postgres --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=peer -E UTF8 --locale=C.UTF-8 >>"$PG_LOG" 2>&1; then
    rm -f "$pwfile"
    log_tail "$PG_LOG"
    die "initdb failed"
  fi
  rm -f "$pwfile"
  printf "\ninclude_if_exists = 'tributary.conf'\n" >>"$tmp/postgresql.conf"
  mv "$tmp" "$PG_DATA"
}

start_postgres() {
  [[ -x "$TB_PG_BIN/initdb" ]] || die "$TB_PG_BIN/initdb not found (apt-get install postgresql)"
  id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql)"
  mkdir -p "$TB_STATE_DIR" "$TB_LOG_DIR"
  chmod 755 "$TB_STATE_DIR"
  install -d -o postgres -g postgres -m 700 "$PG_DIR" "$PG_SOCKET_DIR"
  pg_as test -w "$PG_DIR" ||
    die "the postgres user cannot reach $PG_DIR: put TRIBUTARY_STATE_DIR where every parent directory is world-searchable (not under /root)"
  [[ -f "$PG_LOG" ]] || install -m 640 -o postgres -g postgres /dev/null "$PG_LOG"
  chown postgres:postgres "$PG_LOG"
  [[ -f "$PG_DATA/PG_VERSION" ]] || pg_init
  if pg_running; then
    log_info "postgres already running (pid $(pg_pid))"
  else
    port_open 127.0.0.1 "$CFG_PG_PORT" &&
      die "port $CFG_PG_PORT is in use by another process; set TRIBUTARY_PG_PORT or stop it"
    pg_write_conf
    log_info "starting postgres on 127.0.0.1:$CFG_PG_PORT"
    pg_as "$TB_PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null || {
      log_tail "$PG_LOG"
      die "postgres did not start"
    }
  fi
  # The password of the mode (with --secure a generated one), set over the
  # socket; the statement goes through standard input, not an argument.
  pg_psql <<<"ALTER ROLE postgres PASSWORD '$(pg_password)'" >/dev/null || die "cannot set the postgres password"
  pg_create_database tributary
  broker_on_pg && pg_create_database nisshi
  return 0
}

stop_postgres() {
  if pg_running; then
    log_info "stopping postgres (pid $(pg_pid))"
    pg_as "$TB_PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed"
  fi
}

# ---------------------------------------------------------------- broker

start_broker() {
  local pid log="$TB_LOG_DIR/broker.log"
  if pid=$(pid_get broker); then
    log_info "broker already running (pid $pid)"
    return 0
  fi
  # nisshi panics at start-up when its port is taken.
  port_open 127.0.0.1 "$BROKER_PORT" &&
    die "port $BROKER_PORT is in use by a process this script did not start; stop it, or pass --kafka HOST:PORT to use it"
  if broker_on_pg; then
    pg_running || die "the broker's storage is the local PostgreSQL, which is not running (./deploy.sh start postgres)"
    pg_create_database nisshi
  fi
  mkdir -p "$TB_LOG_DIR"
  local tls=()
  if secure; then
    ensure_kafka_user
    tls=(--cert "$TLS_DIR/server.pem" --key "$TLS_DIR/server.key" --authentication)
  fi
  log_info "starting nisshi broker on 127.0.0.1:$BROKER_PORT ($(broker_engine_name) storage engine$(secure && echo ', TLS only, SCRAM-SHA-512'))"
  pid=$(run_broker "$log" "${tls[@]}")
  wait_for_port 127.0.0.1 "$BROKER_PORT" 30 broker || {
    log_tail "$log"
    die "the broker did not start (pid $pid)"
  }
}

# run_broker LOG [ARGS...]: starts nisshi; prints its pid. The storage URL
# (with its password) goes through the environment, not the arguments.
run_broker() {
  local log=$1
  shift
  (
    cd "$TB_STATE_DIR" || exit 1
    export STORAGE_ENGINE
    STORAGE_ENGINE="$(broker_engine)"
    if secure; then export SSL_CERT_FILE="$TLS_DIR/ca.pem"; fi
    pid_start broker "$log" "$TB_NISSHI_BIN" broker \
      --cluster-id tributary \
      --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --group-initial-rebalance-delay 100ms "$@"
  )
}

# ensure_kafka_user: the broker's SCRAM user for the services, created once
# (nisshi keeps users in its postgres storage). A broker that requires
# authentication cannot create its first user, so this runs a plaintext
# broker on loopback for the moment it takes.
ensure_kafka_user() {
  [[ -f "$SECRETS_DIR/kafka.user" ]] && return 0
  local log="$TB_LOG_DIR/broker.log" pid
  log_info "creating the broker's SCRAM-SHA-512 user $KAFKA_USER"
  pid=$(run_broker "$log")
  wait_for_port 127.0.0.1 "$BROKER_PORT" 30 broker || {
    log_tail "$log"
    die "the broker did not start to create its user (pid $pid)"
  }
  "$TB_NISSHI_BIN" user create --broker "tcp://127.0.0.1:$BROKER_PORT" --mechanism scram512 \
    "$KAFKA_USER" "$(cat "$SECRETS_DIR/kafka.password")" >>"$log" 2>&1 || {
    pid_stop broker
    die "cannot create the broker's user (log: $log)"
  }
  pid_stop broker || die "could not stop the broker after creating its user"
  printf '%s\n' "$KAFKA_USER" >"$SECRETS_DIR/kafka.user"
}

# ---------------------------------------------------------------- --secure material

# tls_issue NAME CN SAN EKU: a key and a certificate signed by the local CA.
tls_issue() {
  local name=$1 cn=$2 san=$3 eku=$4 ext
  ext=$(mktemp)
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
    "$san" "$eku" >"$ext"
  if ! (
    umask 077
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
      -keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.csr" 2>/dev/null &&
      openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 825 -extfile "$ext" -out "$TLS_DIR/$name.pem.tmp" 2>/dev/null
  ); then
    rm -f "$ext"
    die "openssl could not issue the $name certificate"
  fi
  rm -f "$ext" "$TLS_DIR/$name.csr"
  chmod 644 "$TLS_DIR/$name.pem.tmp"
  mv "$TLS_DIR/$name.pem.tmp" "$TLS_DIR/$name.pem"
}

# ensure_secure_material: the CA, the server and client certificates, the
# passwords and the bootstrap admin key; each made once, when missing.
ensure_secure_material() {
  command -v openssl >/dev/null || ensure_apt openssl
  install -d -m 755 "$TLS_DIR"
  install -d -m 700 "$SECRETS_DIR"
  if [[ ! -s "$TLS_DIR/ca.pem" || ! -s "$TLS_DIR/ca.key" ]]; then
    log_info "making a local CA in $TLS_DIR"
    (
      umask 077
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=Tributary local CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
    ) || die "openssl could not make the CA"
    chmod 644 "$TLS_DIR/ca.pem"
    rm -f "$TLS_DIR/server.pem" "$TLS_DIR/client.pem"
  fi
  [[ -s "$TLS_DIR/server.pem" ]] ||
    tls_issue server localhost "DNS:localhost,IP:127.0.0.1,IP:::1" serverAuth
  [[ -s "$TLS_DIR/client.pem" ]] ||
    tls_issue client tributary-local-client "DNS:tributary-local-client" clientAuth
  local f
  for f in pg.password kafka.password; do
    [[ -s "$SECRETS_DIR/$f" ]] || (umask 077 && openssl rand -hex 24 >"$SECRETS_DIR/$f")
  done
  if [[ ! -s "$SECRETS_DIR/admin.key" ]]; then
    (umask 077 && "$TB_BIN_DIR/tributary-ctl" generate-key >"$SECRETS_DIR/admin.key") ||
      die "cannot generate the bootstrap admin key"
  fi
  (umask 077 && database_url >"$SECRETS_DIR/database.url")
  chmod 600 "$SECRETS_DIR"/*
  # PostgreSQL reads its own copies (it refuses a key others can read).
  install -d -o postgres -g postgres -m 700 "$PG_DIR" "$PG_DIR/tls"
  install -o postgres -g postgres -m 644 "$TLS_DIR/server.pem" "$PG_DIR/tls/server.pem"
  install -o postgres -g postgres -m 600 "$TLS_DIR/server.key" "$PG_DIR/tls/server.key"
}

# ---------------------------------------------------------------- services

# svc_start NAME: starts the service unless it runs already. Does not wait.
# reserve_ports: takes the services' gRPC ports and PostgreSQL's out of
# Linux's ephemeral range (32768-60999 here holds 50051-50055 and 55432). Else
# an outgoing connection (a broker or database client, a probe) can be given
# one while its service is stopped, and the service cannot bind it again until
# that connection closes, minutes later. Kept for the machine's uptime; only
# where /proc/sys is writable (root, not in every container).
reserve_ports() {
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports want="50051-50055,55432" cur
  [[ -r "$f" ]] || return 0
  cur=$(<"$f")
  # Already reserved (the kernel prints ranges merged: check each port).
  local unreserved=0 port
  for port in 50051 50052 50053 50054 50055 55432; do
    in_ranges "$port" "$cur" || unreserved=1
  done
  [[ "$unreserved" == 1 ]] || return 0
  if [[ -w "$f" ]] && printf '%s\n' "${cur:+$cur,}$want" >"$f" 2>/dev/null; then
    log_info "reserved ports $want (net.ipv4.ip_local_reserved_ports): no outgoing connection takes them"
  else
    log_warn "cannot reserve ports $want in net.ipv4.ip_local_reserved_ports: a service restarted while an outgoing connection holds its port fails to bind until it closes"
  fi
}

# in_ranges PORT LIST: whether PORT is in a comma-separated list of ports and
# A-B ranges.
in_ranges() {
  local port=$1 r lo hi
  local IFS=,
  for r in $2; do
    lo=${r%-*} hi=${r#*-}
    [[ -n "$lo" && "$port" -ge "$lo" && "$port" -le "$hi" ]] && return 0
  done
  return 1
}

svc_start() {
  local name=$1 grpc http pid log="$TB_LOG_DIR/$1.log" bin="$TB_BIN_DIR/tributary-$1"
  reserve_ports
  grpc=$(svc_grpc_port "$name")
  http=$(svc_http_port "$name")
  if pid=$(pid_get "$name"); then
    log_info "$name already running (pid $pid)"
    return 0
  fi
  [[ -x "$bin" ]] || die "$bin is missing (./deploy.sh up builds it)"
  local port
  for port in "$grpc" "$http"; do
    port_open 127.0.0.1 "$port" && die "port $port ($name) is in use by a process this script did not start"
  done
  mkdir -p "$TB_LOG_DIR"
  pid=$(
    export TRIBUTARY_GRPC_ADDR="$CFG_BIND_HOST:$grpc"
    export TRIBUTARY_HTTP_ADDR="$CFG_BIND_HOST:$http"
    export TRIBUTARY_LOG_FORMAT="${TRIBUTARY_LOG_FORMAT:-text}"
    # Every service exports its spans to the local trace sink, in batches
    # sent every 500 ms so a test sees them promptly.
    export TRIBUTARY_OTLP_ENDPOINT="http://127.0.0.1:$TRACE_SINK_PORT"
    export OTEL_BSP_SCHEDULE_DELAY=500
    # Where outgoing webhooks (rules) may connect although internal.
    unset TRIBUTARY_WEBHOOK_ALLOW_CIDR
    [[ -z "$CFG_WEBHOOK_ALLOW" ]] || export TRIBUTARY_WEBHOOK_ALLOW_CIDR="$CFG_WEBHOOK_ALLOW"
    export_dependency_env
    # The live page (part web, plain mode only) calls ingest and query over
    # gRPC-Web from its origin; admin never answers a browser.
    unset TRIBUTARY_CORS_ALLOW_ORIGIN
    if ! secure && [[ $name == ingest || $name == query ]]; then
      export TRIBUTARY_CORS_ALLOW_ORIGIN="$(web_cors_origins)"
    fi
    if secure; then
      export TRIBUTARY_AUTH=on
      export TRIBUTARY_BOOTSTRAP_ADMIN_KEY_FILE="$SECRETS_DIR/admin.key"
      export TRIBUTARY_TLS_CERT="$TLS_DIR/server.pem" TRIBUTARY_TLS_KEY="$TLS_DIR/server.key"
      if [[ $name == admin ]]; then
        # The operators' plane: mutual TLS. Admin also checks the other
        # services' health over TLS.
        export TRIBUTARY_TLS_CLIENT_CA="$TLS_DIR/ca.pem" TRIBUTARY_TLS_CA="$TLS_DIR/ca.pem"
      fi
    else
      # Plain mode: loopback only and no API keys (each service warns about
      # it in its log and /ready).
      export TRIBUTARY_AUTH=off
    fi
    pid_start "$name" "$log" "$bin"
  )
  log_info "started $name (pid $pid), log $log"
}

svc_wait() {
  local name=$1
  wait_for_health "$name" "127.0.0.1:$(svc_grpc_port "$name")" "127.0.0.1:$(svc_http_port "$name")" 90 \
    "$TB_LOG_DIR/$name.log" || die "$name did not become healthy (log: $TB_LOG_DIR/$name.log)"
  log_info "$name healthy"
}

run_migrate() {
  local log="$TB_LOG_DIR/migrate.log"
  mkdir -p "$TB_LOG_DIR"
  printf '\n==== %s migrate ====\n' "$(date -Is)" >>"$log"
  log_info "migrating (schema and topics)"
  # The DSN goes through the environment (or a file), so a password never
  # shows in ps.
  (export_dependency_env && "$TB_BIN_DIR/tributary-ctl" migrate \
    --partitions "${TRIBUTARY_PARTITIONS:-6}" >>"$log" 2>&1) || {
    log_tail "$log"
    die "migrate failed (log: $log)"
  }
}

check_external() {
  if ! local_pg; then
    PGCONNECT_TIMEOUT=5 "$TB_PG_BIN/pg_isready" -q -d "$CFG_POSTGRES" ||
      die "PostgreSQL at $(redact_dsn "$CFG_POSTGRES") is not reachable"
  fi
  if ! local_broker; then
    local first=${CFG_KAFKA%%,*}
    port_open "${first%:*}" "${first##*:}" || die "broker $first is not reachable"
  fi
}

# ---------------------------------------------------------------- trace sink, prometheus

start_tracesink() {
  local pid log="$TB_LOG_DIR/tracesink.log"
  if pid=$(pid_get tracesink); then
    log_info "trace sink already running (pid $pid)"
    return 0
  fi
  port_open 127.0.0.1 "$TRACE_SINK_PORT" &&
    die "port $TRACE_SINK_PORT (trace sink) is in use by a process this script did not start"
  mkdir -p "$TB_LOG_DIR" "$(dirname "$TRACE_FILE")"
  pid=$(pid_start tracesink "$log" "$TB_BIN_DIR/tributary-trace-sink" \
    --listen "127.0.0.1:$TRACE_SINK_PORT" --output "$TRACE_FILE")
  wait_for_port 127.0.0.1 "$TRACE_SINK_PORT" 30 tracesink || {
    log_tail "$log"
    die "the trace sink did not start (pid $pid)"
  }
  log_info "started the trace sink (pid $pid), spans in $TRACE_FILE"
}

# wait_http_ready PART URL: until URL answers 200 (30 s at most, and only
# while PART runs).
wait_http_ready() {
  local part=$1 url=$2 i
  for ((i = 0; i < 60; i++)); do
    [[ "$(http_status "$url")" == 200 ]] && return 0
    pid_alive "$part" || return 1
    sleep 0.5
  done
  return 1
}

# The local pager and ticket system: every notification Alertmanager sends
# becomes a line of $ALERT_FILE (scripts/alert-receiver.py).
start_alertsink() {
  local pid log="$TB_LOG_DIR/alertsink.log"
  if pid=$(pid_get alertsink); then
    log_info "alert sink already running (pid $pid)"
    return 0
  fi
  command -v python3 >/dev/null || die "python3 is not installed (apt-get install python3)"
  port_open 127.0.0.1 "$ALERT_SINK_PORT" &&
    die "port $ALERT_SINK_PORT (alert sink) is in use by a process this script did not start"
  mkdir -p "$TB_LOG_DIR"
  # The interpreter's real path (python3 may be a shim that execs another
  # program), so the pid file names what really runs.
  local python
  python=$(python3 -c 'import sys; print(sys.executable)') || die "python3 does not run"
  pid=$(pid_start alertsink "$log" "$python" "$ROOT/scripts/alert-receiver.py" \
    --listen "127.0.0.1:$ALERT_SINK_PORT" --out "$ALERT_FILE")
  wait_for_port 127.0.0.1 "$ALERT_SINK_PORT" 30 alertsink || {
    log_tail "$log"
    die "the alert sink did not start (pid $pid)"
  }
  log_info "started the alert sink (pid $pid), notifications in $ALERT_FILE"
}

start_alertmanager() {
  local pid log="$TB_LOG_DIR/alertmanager.log" bin
  if pid=$(pid_get alertmanager); then
    log_info "alertmanager already running (pid $pid)"
    return 0
  fi
  [[ -f "$AM_CONFIG" ]] || die "$AM_CONFIG is missing"
  # Debian's package names the binary prometheus-alertmanager.
  bin=$(command -v prometheus-alertmanager || command -v alertmanager) ||
    die "alertmanager is not installed (apt-get install prometheus-alertmanager)"
  port_open 127.0.0.1 "$ALERTMANAGER_PORT" &&
    die "port $ALERTMANAGER_PORT (alertmanager) is in use by a process this script did not start"
  mkdir -p "$TB_LOG_DIR" "$TB_STATE_DIR/alertmanager"
  # A fresh notification log each start: a page sent before a restart and
  # never resolved would otherwise be held back for its repeat_interval (1 h)
  # when it fires again. (Silences are kept.)
  rm -f "$TB_STATE_DIR/alertmanager/nflog"
  pid=$(pid_start alertmanager "$log" "$bin" \
    --config.file="$AM_CONFIG" \
    --storage.path="$TB_STATE_DIR/alertmanager" \
    --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" \
    --cluster.listen-address=)
  wait_http_ready alertmanager "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" || {
    log_tail "$log"
    die "alertmanager did not become ready (pid $pid)"
  }
  log_info "started alertmanager (pid $pid) on 127.0.0.1:$ALERTMANAGER_PORT"
}

start_prometheus() {
  local pid log="$TB_LOG_DIR/prometheus.log"
  if pid=$(pid_get prometheus); then
    log_info "prometheus already running (pid $pid)"
    return 0
  fi
  [[ -f "$PROM_CONFIG" ]] || die "$PROM_CONFIG is missing"
  command -v prometheus >/dev/null || die "prometheus is not installed (apt-get install prometheus)"
  port_open 127.0.0.1 "$PROMETHEUS_PORT" &&
    die "port $PROMETHEUS_PORT (prometheus) is in use by a process this script did not start"
  mkdir -p "$TB_LOG_DIR" "$TB_STATE_DIR/prometheus"
  pid=$(pid_start prometheus "$log" "$(command -v prometheus)" \
    --config.file="$PROM_CONFIG" \
    --storage.tsdb.path="$TB_STATE_DIR/prometheus" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
    --web.enable-lifecycle)
  wait_http_ready prometheus "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" || {
    log_tail "$log"
    die "prometheus did not become ready (pid $pid)"
  }
  log_info "started prometheus (pid $pid) on 127.0.0.1:$PROMETHEUS_PORT"
}

# ---------------------------------------------------------------- web (the live page)
#
# Part `web`: the live page of clients/web, built (esbuild) into
# $TB_STATE_DIR/web and served on 127.0.0.1:$TB_WEB_PORT by python's
# http.server. Plain mode only: with --secure, ingest and query serve TLS
# with the local CA, which a browser does not trust. Ingest and query must
# allow the page's origin (web_cors_origins) in TRIBUTARY_CORS_ALLOW_ORIGIN.

# The origins the local ingest and query allow for the page.
web_cors_origins() { printf 'http://127.0.0.1:%s,http://localhost:%s\n' "$TB_WEB_PORT" "$TB_WEB_PORT"; }

start_web() {
  local pid log="$TB_LOG_DIR/web.log" python
  if secure; then
    log_info "web: not started in --secure mode (the browser would not trust the local CA)"
    return 0
  fi
  if pid=$(pid_get web); then
    web_build # the page follows the checkout; the server serves the new files
    log_info "web already running (pid $pid)"
    return 0
  fi
  port_open 127.0.0.1 "$TB_WEB_PORT" &&
    die "port $TB_WEB_PORT (web) is in use by a process this script did not start"
  web_build
  mkdir -p "$TB_LOG_DIR"
  python=$(python3 -c 'import sys; print(sys.executable)') || die "python3 does not run"
  pid=$(pid_start web "$log" "$python" -m http.server --bind 127.0.0.1 --directory "$TB_WEB_OUT/page" "$TB_WEB_PORT")
  wait_http_ready web "http://127.0.0.1:$TB_WEB_PORT/" || {
    log_tail "$log"
    die "the web page server did not start (pid $pid)"
  }
  log_info "started web (pid $pid): the live page on http://127.0.0.1:$TB_WEB_PORT"
}

# ---------------------------------------------------------------- status

# http_part_status PART ADDR PATH LABEL: the status line of a part whose
# health is GET ADDR/PATH answering 200.
http_part_status() {
  local part=$1 addr=$2 path=$3 label=$4 pid code
  if pid=$(pid_get "$part"); then
    code=$(http_status "$addr$path")
    printf 'running\t%s\t%s\t%s=%s\n' "$pid" "$addr" "$label" "$code"
    [[ "$code" == 200 ]]
    return
  fi
  printf 'stopped\t-\t%s\t-\n' "$addr"
  return 1
}

# part_status PART: prints "STATE PID ADDRESS HEALTH" (tab separated); returns
# 0 when the part is running (or external) and healthy.
part_status() {
  local part=$1 pid health addr
  case $part in
    postgres)
      if ! local_pg; then
        addr=$(redact_dsn "$CFG_POSTGRES")
        if PGCONNECT_TIMEOUT=3 "$TB_PG_BIN/pg_isready" -q -d "$CFG_POSTGRES" 2>/dev/null; then
          printf 'external\t-\t%s\treachable\n' "$addr"
          return 0
        fi
        printf 'external\t-\t%s\tunreachable\n' "$addr"
        return 1
      fi
      addr="127.0.0.1:$CFG_PG_PORT"
      if pg_running; then
        if "$TB_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$CFG_PG_PORT" 2>/dev/null; then
          printf 'running\t%s\t%s\taccepting-connections\n' "$(pg_pid)" "$addr"
          return 0
        fi
        printf 'running\t%s\t%s\tnot-accepting\n' "$(pg_pid)" "$addr"
        return 1
      fi
      printf 'stopped\t-\t%s\t-\n' "$addr"
      return 1
      ;;
    broker)
      if ! local_broker; then
        local first=${CFG_KAFKA%%,*}
        if port_open "${first%:*}" "${first##*:}"; then
          printf 'external\t-\t%s\treachable\n' "$CFG_KAFKA"
          return 0
        fi
        printf 'external\t-\t%s\tunreachable\n' "$CFG_KAFKA"
        return 1
      fi
      addr="127.0.0.1:$BROKER_PORT"
      if pid=$(pid_get broker); then
        if port_open 127.0.0.1 "$BROKER_PORT"; then
          printf 'running\t%s\t%s\tport-open(%s-engine)\n' "$pid" "$addr" "$(broker_engine_name)"
          return 0
        fi
        printf 'running\t%s\t%s\tport-closed\n' "$pid" "$addr"
        return 1
      fi
      printf 'stopped\t-\t%s\t-\n' "$addr"
      return 1
      ;;
    tracesink)
      addr="127.0.0.1:$TRACE_SINK_PORT"
      if pid=$(pid_get tracesink); then
        if port_open 127.0.0.1 "$TRACE_SINK_PORT"; then
          printf 'running\t%s\t%s\tport-open\n' "$pid" "$addr"
          return 0
        fi
        printf 'running\t%s\t%s\tport-closed\n' "$pid" "$addr"
        return 1
      fi
      printf 'stopped\t-\t%s\t-\n' "$addr"
      return 1
      ;;
    alertsink) http_part_status alertsink "http://127.0.0.1:$ALERT_SINK_PORT" /-/healthy healthy ;;
    alertmanager) http_part_status alertmanager "http://127.0.0.1:$ALERTMANAGER_PORT" /-/ready ready ;;
    prometheus) http_part_status prometheus "http://127.0.0.1:$PROMETHEUS_PORT" /-/ready ready ;;
    web)
      if secure && ! pid_alive web; then
        printf 'off\t-\thttp://127.0.0.1:%s\tplain-mode-only\n' "$TB_WEB_PORT"
        return 0
      fi
      http_part_status web "http://127.0.0.1:$TB_WEB_PORT" / page
      ;;
    *)
      local grpc http ready
      grpc=$(svc_grpc_port "$part")
      http=$(svc_http_port "$part")
      addr="grpc=$CFG_BIND_HOST:$grpc,http=$CFG_BIND_HOST:$http"
      if pid=$(pid_get "$part"); then
        health=$(grpc_health "127.0.0.1:$grpc")
        ready=$(http_status "http://127.0.0.1:$http/ready")
        printf 'running\t%s\t%s\tgrpc=%s,ready=%s\n' "$pid" "$addr" "$health" "$ready"
        [[ "$health" == SERVING && "$ready" == 200 ]]
        return
      fi
      printf 'stopped\t-\t%s\t-\n' "$addr"
      return 1
      ;;
  esac
}

cmd_status() {
  local porcelain=$1 part line rc=0 state pid addr health
  load_saved_cfg || true
  set_grpcurl_tls
  [[ "$porcelain" == 1 ]] || printf '%-12s %-9s %-8s %-42s %s\n' PART STATE PID ADDRESS HEALTH
  for part in "${PARTS[@]}"; do
    line=$(part_status "$part") || rc=1
    IFS=$'\t' read -r state pid addr health <<<"$line"
    if [[ "$porcelain" == 1 ]]; then
      printf '%s %s %s %s\n' "$part" "$state" "$pid" "$health"
    else
      printf '%-12s %-9s %-8s %-42s %s\n' "$part" "$state" "$pid" "$addr" "$health"
    fi
  done
  if [[ "$porcelain" != 1 ]]; then
    echo
    echo "options: $(cfg_summary)$([[ -f "$CFG_FILE" ]] || echo ' (defaults; nothing saved)')"
    echo "logs:    $TB_LOG_DIR/{postgres,broker,migrate,tracesink,ingest,processor,query,admin,dispatch,alertsink,alertmanager,prometheus,web}.log"
  fi
  return "$rc"
}

anything_running() {
  local s
  pg_running && return 0
  for s in broker tracesink "${SERVICES[@]}" alertsink alertmanager prometheus web; do
    pid_alive "$s" && return 0
  done
  return 1
}

print_summary() {
  local g="$TB_GRPCURL" s
  cat <<EOF

Tributary is up.

  service    gRPC                 HTTP (/metrics /live /ready)   log
EOF
  for s in "${SERVICES[@]}"; do
    printf '  %-10s %-20s %-30s %s\n' "$s" "$CFG_BIND_HOST:$(svc_grpc_port "$s")" \
      "http://$CFG_BIND_HOST:$(svc_http_port "$s")" "$TB_LOG_DIR/$s.log"
  done
  echo
  if local_broker; then
    echo "  broker     $(kafka_brokers) (nisshi, $(broker_engine_name) engine)   log $TB_LOG_DIR/broker.log"
  else
    echo "  broker     $(kafka_brokers) (external)"
  fi
  if local_pg; then
    echo "  postgres   $(redact_dsn "$(database_url)")   log $PG_LOG"
  else
    echo "  postgres   $(redact_dsn "$CFG_POSTGRES") (external)"
  fi
  echo "  migrate    log $TB_LOG_DIR/migrate.log"
  echo "  tracesink  OTLP/gRPC 127.0.0.1:$TRACE_SINK_PORT, spans in $TRACE_FILE"
  echo "  prometheus http://127.0.0.1:$PROMETHEUS_PORT (alerts: /alerts)   log $TB_LOG_DIR/prometheus.log"
  echo "  alertmanager http://127.0.0.1:$ALERTMANAGER_PORT, notifications (pager, ticket) in $ALERT_FILE"
  secure || echo "  web        http://127.0.0.1:$TB_WEB_PORT  <- open this: the live page (your clicks, through the pipeline and back)"
  if secure; then
    print_secure_examples
    return
  fi
  cat <<EOF

Try (grpcurl $TB_GRPCURL_VERSION is $g):
  $g -plaintext 127.0.0.1:50051 list
  $g -plaintext -d '{"event":{"eventType":"page.view","source":"web","userId":"u1","payload":{"path":"/"}}}' \\
      127.0.0.1:50051 tributary.v1.IngestService/Publish
  $g -plaintext -d '{"eventId":"ID-FROM-PUBLISH"}' 127.0.0.1:50052 tributary.v1.QueryService/GetEvent
  $g -plaintext -d '{"filter":{"userId":"u1"},"pageSize":10}' 127.0.0.1:50052 tributary.v1.QueryService/ListEvents
  $g -plaintext 127.0.0.1:50054 grpc.health.v1.Health/Check
  $g -plaintext -emit-defaults -d '{"group":"tributary-processor"}' 127.0.0.1:50053 tributary.v1.AdminService/GetConsumerLag

Status: ./deploy.sh status      Stop everything: ./deploy.sh down
EOF
}

# The examples of a --secure deployment: TLS with the local CA, the key in a
# header read from its file (never printed).
print_secure_examples() {
  local g="$TB_GRPCURL" cacert="-cacert $TLS_DIR/ca.pem" key="-H \"authorization: Bearer \$(cat $SECRETS_DIR/admin.key)\""
  cat <<EOF

Secure mode: TLS on every gRPC port (CA $TLS_DIR/ca.pem; admin wants a client
certificate: $TLS_DIR/client.pem and client.key), API keys on every call
(bootstrap admin key, every scope: $SECRETS_DIR/admin.key), PostgreSQL over
TLS only (verify-full), the broker SASL_SSL with SCRAM-SHA-512.

Try (grpcurl $TB_GRPCURL_VERSION is $g):
  $g $cacert 127.0.0.1:50051 list
  $g $cacert $key -d '{"event":{"eventType":"page.view","source":"web","userId":"u1","payload":{"path":"/"}}}' \\
      127.0.0.1:50051 tributary.v1.IngestService/Publish
  $g $cacert $key -d '{"filter":{"userId":"u1"},"pageSize":10}' 127.0.0.1:50052 tributary.v1.QueryService/ListEvents
  # a key for a client, with only the scope it needs (the secret is shown once):
  $g $cacert -cert $TLS_DIR/client.pem -key $TLS_DIR/client.key $key \\
      -d '{"name":"reader","scopes":["query:read"]}' 127.0.0.1:50053 tributary.v1.AdminService/CreateApiKey

Status: ./deploy.sh status      Stop everything: ./deploy.sh down
EOF
}

# ---------------------------------------------------------------- commands

require_root() { [[ $EUID -eq 0 ]] || die "run as root (it installs packages and runs PostgreSQL as the postgres user)"; }

cmd_up() {
  local opt_set=$1 opt_kafka=$2 opt_postgres=$3 opt_engine=$4 no_build=$5 opt_secure=$6 s
  require_root
  reserve_ports
  local saved=0
  load_saved_cfg && saved=1
  # A deploy.env from before --broker-engine: the engine it runs with.
  local_broker && CFG_BROKER_ENGINE=$(broker_engine_name)
  local old old_key
  old=$(cfg_summary)
  old_key=$(cfg_key)
  if [[ "$opt_set" == 1 ]]; then
    CFG_KAFKA=$opt_kafka
    CFG_POSTGRES=$opt_postgres
    CFG_BROKER_ENGINE=$opt_engine
    CFG_SECURE=$opt_secure
    if [[ -n "$CFG_BROKER_ENGINE" ]]; then
      local_broker || die "--broker-engine chooses the local broker's storage engine; with --kafka no local broker is started"
      [[ "$CFG_BROKER_ENGINE" == memory ]] || local_pg ||
        die "--broker-engine postgres needs the local PostgreSQL (the broker's data go in its database nisshi), and with --postgres none is started: use --broker-engine memory (not durable), or --kafka HOST:PORT"
    fi
    local_broker && CFG_BROKER_ENGINE=$(broker_engine_name)
    if secure && ! { local_pg && broker_on_pg; }; then
      log_error "--secure runs the local PostgreSQL with TLS and the local broker TLS-only with SCRAM users, which only its postgres engine can store: it cannot be combined with --kafka, --postgres or --broker-engine memory"
      exit 64
    fi
    if [[ -n "${TRIBUTARY_WEBHOOK_ALLOW_CIDR+set}" ]]; then
      CFG_WEBHOOK_ALLOW=$TRIBUTARY_WEBHOOK_ALLOW_CIDR
    elif secure; then
      CFG_WEBHOOK_ALLOW=""
    else
      CFG_WEBHOOK_ALLOW="127.0.0.0/8,::1/128"
    fi
  elif [[ "$saved" == 1 ]]; then
    log_info "reusing the saved options: $old"
  else
    CFG_WEBHOOK_ALLOW=${TRIBUTARY_WEBHOOK_ALLOW_CIDR-127.0.0.0/8,::1/128}
  fi
  CFG_PG_PORT=${TRIBUTARY_PG_PORT:-$CFG_PG_PORT}
  CFG_BIND_HOST=${TRIBUTARY_BIND_HOST:-$CFG_BIND_HOST}
  if [[ "$saved" == 1 && "$(cfg_key)" != "$old_key" ]] && anything_running; then
    die "the deployment runs with other options ($old); run ./deploy.sh down first"
  fi
  [[ "$CFG_PG_PORT" =~ ^[0-9]+$ ]] || die "TRIBUTARY_PG_PORT must be a port number"
  if ! local_broker; then
    [[ "$CFG_KAFKA" =~ ^[^,:]+:[0-9]+(,[^,:]+:[0-9]+)*$ ]] || die "--kafka wants HOST:PORT[,HOST:PORT...]"
  fi
  save_cfg
  log_info "options: $(cfg_summary)"

  ensure_apt
  ensure_grpcurl
  # On a fresh machine both the broker and the workspace are built. Each build
  # has long single-threaded stretches (build scripts, the last crates, the
  # links), so side by side they finish sooner than one after the other.
  local nisshi_pid=""
  if local_broker; then
    if [[ "$no_build" != 1 && ! -x "$TB_NISSHI_BIN" ]]; then
      ensure_nisshi &
      nisshi_pid=$!
    else
      ensure_nisshi
    fi
  fi
  if [[ "$no_build" == 1 ]]; then
    require_binaries
  else
    ensure_rust_build
  fi
  if [[ -n "$nisshi_pid" ]]; then
    wait "$nisshi_pid" || die "building nisshi failed"
  fi

  set_grpcurl_tls
  secure && ensure_secure_material
  local_pg && start_postgres
  local_broker && start_broker
  check_external
  run_migrate
  if pid_binary_replaced tracesink; then
    pid_stop tracesink || die "could not stop tracesink"
  fi
  start_tracesink

  for s in "${SERVICES[@]}"; do
    if pid_binary_replaced "$s"; then
      log_info "$s runs an older build: restarting it"
      pid_stop "$s" || die "could not stop $s"
    fi
    svc_start "$s"
  done
  for s in "${SERVICES[@]}"; do
    svc_wait "$s"
  done
  if pid_alive prometheus; then
    # Rules or targets may have changed since it started.
    curl -fsS -X POST "http://127.0.0.1:$PROMETHEUS_PORT/-/reload" >/dev/null ||
      log_warn "prometheus did not reload its configuration"
  fi
  start_alertsink
  if pid_alive alertmanager; then
    curl -fsS -X POST "http://127.0.0.1:$ALERTMANAGER_PORT/-/reload" >/dev/null ||
      log_warn "alertmanager did not reload its configuration"
  fi
  start_alertmanager
  start_prometheus
  start_web
  print_summary
}

cmd_down() {
  require_root
  load_saved_cfg || true
  local s failed=0
  pid_stop web || failed=1
  pid_stop prometheus || failed=1
  pid_stop alertmanager || failed=1
  pid_stop alertsink || failed=1
  for s in "${SERVICES[@]}"; do
    pid_stop "$s" || failed=1
  done
  pid_stop tracesink || failed=1
  pid_stop broker || failed=1
  stop_postgres
  ((failed == 0)) || die "some processes could not be stopped; see above"
  rm -f "$CFG_FILE"
  log_info "everything is stopped (data kept in $TB_STATE_DIR)"
}

valid_part() {
  local p
  for p in "${PARTS[@]}"; do [[ "$1" == "$p" ]] && return 0; done
  return 1
}

cmd_start() {
  local part=$1
  require_root
  load_saved_cfg || true
  set_grpcurl_tls
  case $part in
    postgres)
      local_pg || die "this deployment uses an external PostgreSQL ($(redact_dsn "$CFG_POSTGRES"))"
      ensure_apt postgresql
      start_postgres
      ;;
    broker)
      local_broker || die "this deployment uses an external broker ($CFG_KAFKA)"
      ensure_nisshi
      start_broker
      ;;
    tracesink) start_tracesink ;;
    prometheus) start_prometheus ;;
    alertmanager) start_alertmanager ;;
    alertsink) start_alertsink ;;
    web) start_web ;;
    *)
      ensure_grpcurl
      svc_start "$part"
      svc_wait "$part"
      ;;
  esac
}

# cmd_k8s ENV DRY_RUN: the Helm chart with that environment's values.
cmd_k8s() {
  local env=$1 dry_run=$2 chart="$ROOT/charts/tributary"
  case $env in
    dev | staging | prod) ;;
    "") die "k8s needs --env dev|staging|prod" ;;
    *) die "unknown environment '$env': dev, staging or prod" ;;
  esac
  [[ -f "$chart/values-$env.yaml" ]] || die "$chart/values-$env.yaml is missing"
  ensure_helm
  local args=(tributary "$chart" -n "tributary-$env"
    -f "$chart/values.yaml" -f "$chart/values-$env.yaml")
  if ((dry_run)); then
    log_info "rendering charts/tributary for $env (helm template; nothing is installed)"
    "$TB_HELM" template "${args[@]}" || die "helm template failed"
  else
    log_info "helm upgrade --install tributary charts/tributary -n tributary-$env (values-$env.yaml)"
    "$TB_HELM" upgrade --install "${args[@]}" --create-namespace ||
      die "helm upgrade --install failed (is a cluster reachable? check: kubectl config current-context)"
  fi
}

cmd_stop() {
  local part=$1
  require_root
  load_saved_cfg || true
  case $part in
    postgres)
      pid_alive broker && broker_on_pg && log_warn "the broker stores its data in this PostgreSQL and is still running"
      stop_postgres
      ;;
    *) pid_stop "$part" || die "could not stop $part" ;;
  esac
}

main() {
  local cmd="" part="" opt_set=0 opt_kafka="" opt_postgres="" opt_engine="" no_build=0 porcelain=0 opt_secure=0
  local up_opts=0 status_opts=0 k8s_opts=0 k8s_env="" dry_run=0
  while (($#)); do
    case $1 in
      -h | --help | help)
        usage
        return 0
        ;;
      --kafka | --postgres)
        (($# >= 2)) || die "$1 needs a value"
        [[ $1 == --kafka ]] && opt_kafka=$2 || opt_postgres=$2
        [[ -n "$2" ]] || die "$1 needs a value"
        opt_set=1 up_opts=1
        shift 2
        ;;
      --kafka=* | --postgres=*)
        [[ -n "${1#*=}" ]] || die "${1%%=*} needs a value"
        [[ $1 == --kafka=* ]] && opt_kafka=${1#*=} || opt_postgres=${1#*=}
        opt_set=1 up_opts=1
        shift
        ;;
      --broker-engine | --broker-engine=*)
        if [[ $1 == --broker-engine ]]; then
          (($# >= 2)) || die "--broker-engine needs a value: postgres or memory"
          opt_engine=$2
          shift
        else
          opt_engine=${1#*=}
        fi
        [[ "$opt_engine" == postgres || "$opt_engine" == memory ]] ||
          die "--broker-engine wants postgres or memory, not '$opt_engine'"
        opt_set=1 up_opts=1
        shift
        ;;
      --no-build)
        no_build=1 up_opts=1
        shift
        ;;
      --secure)
        opt_secure=1 opt_set=1 up_opts=1
        shift
        ;;
      --porcelain)
        porcelain=1 status_opts=1
        shift
        ;;
      --env)
        (($# >= 2)) || die "--env needs a value: dev, staging or prod"
        k8s_env=$2 k8s_opts=1
        [[ -n "$k8s_env" ]] || die "--env needs a value: dev, staging or prod"
        shift 2
        ;;
      --env=*)
        k8s_env=${1#*=} k8s_opts=1
        [[ -n "$k8s_env" ]] || die "--env needs a value: dev, staging or prod"
        shift
        ;;
      --dry-run)
        dry_run=1 k8s_opts=1
        shift
        ;;
      -*) die "unknown option $1 (see --help)" ;;
      up | down | status | start | stop | k8s)
        [[ -z "$cmd" ]] || die "one command at a time (see --help)"
        cmd=$1
        shift
        ;;
      *)
        if [[ ("$cmd" == start || "$cmd" == stop) && -z "$part" ]]; then
          part=$1
          shift
        else
          die "unknown command or argument '$1' (see --help)"
        fi
        ;;
    esac
  done
  cmd=${cmd:-up}
  [[ "$up_opts" == 0 || "$cmd" == up ]] || die "--kafka, --postgres, --broker-engine, --secure and --no-build go with 'up'"
  [[ "$status_opts" == 0 || "$cmd" == status ]] || die "--porcelain goes with 'status'"
  [[ "$k8s_opts" == 0 || "$cmd" == k8s ]] || die "--env and --dry-run go with 'k8s'"
  if [[ "$cmd" == start || "$cmd" == stop ]]; then
    [[ -n "$part" ]] || die "$cmd needs a PART: ${PARTS[*]}"
    valid_part "$part" || die "unknown PART '$part': one of ${PARTS[*]}"
  fi
  case $cmd in
    up) cmd_up "$opt_set" "$opt_kafka" "$opt_postgres" "$opt_engine" "$no_build" "$opt_secure" ;;
    down) cmd_down ;;
    status) cmd_status "$porcelain" ;;
    start) cmd_start "$part" ;;
    stop) cmd_stop "$part" ;;
    k8s) cmd_k8s "$k8s_env" "$dry_run" ;;
  esac
}

main "$@"
