# shellcheck shell=bash disable=SC2016
# (SC2016: the single-quoted $r and $v are jq variables.)
# The gRPC contract (proto/) with the buf CLI, offline: no running service is
# needed. buf.yaml at the repository root configures both checks:
#
#   buf lint        STANDARD (buf's new name for DEFAULT) minus the three
#                   request/response naming rules the contract breaks on
#                   purpose; the vendored proto/google ignored
#   buf breaking    FILE rules against proto/released.binpb, the image of the
#                   last released contract
#
# Both must pass on the contract as it is. Then, to show they bite, each of
# a few edits is made in a scratch copy of buf.yaml and proto/ (under
# $TB_LOG_DIR/test-system/contract) and must be refused with its rule: a
# deleted field, a renumbered field, a renamed field (wire-compatible, but
# JSON and generated code change), a deleted RPC; a camelCase field and an
# enum without an _UNSPECIFIED zero value for lint. An additive edit (a new
# field) must pass both, so the refusals are the edits' doing.
# Tools: buf, pinned by tools/buf/package.json and package-lock.json, is
# installed into $HOME/.cache/tributary/tools/buf when missing (scripts/lib.sh:
# ensure_buf; about 4 s cold).
# Sourced by test-system.sh (tests/lib.sh is loaded).

CONTRACT_WORK="$TB_LOG_DIR/test-system/contract"
mkdir -p "$CONTRACT_WORK" 2>/dev/null || CONTRACT_WORK=$(mktemp -d)
CONTRACT_RELEASED="$TB_ROOT/proto/released.binpb"
CONTRACT_STARTED=$SECONDS
# The lint rules buf.yaml turns off, and why, are in buf.yaml.
CONTRACT_LINT_EXCEPT=(RPC_REQUEST_RESPONSE_UNIQUE RPC_REQUEST_STANDARD_NAME RPC_RESPONSE_STANDARD_NAME)

# contract_buf DIR ARGS...: buf ARGS run in DIR (where its buf.yaml is).
contract_buf() {
  local dir=$1
  shift
  (cd "$dir" && "$CONTRACT_BUF" "$@")
}

# contract_scratch NAME: a fresh copy of buf.yaml and proto/ in
# $CONTRACT_WORK/NAME; prints its path.
contract_scratch() {
  local dir="$CONTRACT_WORK/$1"
  rm -rf "$dir" && mkdir -p "$dir" && cp "$TB_ROOT/buf.yaml" "$dir/" && cp -r "$TB_ROOT/proto" "$dir/proto" &&
    printf '%s\n' "$dir"
}

# contract_edit NAME FILE SED_SCRIPT: a scratch copy NAME with SED_SCRIPT
# applied to proto/FILE; prints its path. Fails when the edit changed nothing
# (the contract moved on: adapt the edit here).
contract_edit() {
  local dir
  dir=$(contract_scratch "$1") || return 1
  sed -i -e "$3" "$dir/proto/$2" || return 1
  if cmp -s "$TB_ROOT/proto/$2" "$dir/proto/$2"; then
    printf 'the edit %s changed nothing in proto/%s\n' "$3" "$2"
    return 1
  fi
  printf '%s\n' "$dir"
}

# contract_buf_args KIND: the arguments of `buf KIND` (lint, breaking).
contract_buf_args() {
  case $1 in
    lint) CONTRACT_ARGS=(lint) ;;
    breaking) CONTRACT_ARGS=(breaking --against "$CONTRACT_RELEASED") ;;
  esac
}

# contract_refused KIND WHAT FILE SED_SCRIPT RULE...: after the edit in a
# scratch copy, `buf KIND` exits 100 (buf's status for findings, as opposed
# to 1 for a configuration or compile error) and reports every RULE.
contract_refused() {
  local kind=$1 what=$2 file=$3 script=$4 dir out rc rule missing=()
  shift 4
  local name="buf $kind refuses $what: ${*}"
  if ! dir=$(contract_edit "$kind-$(tr '[:upper:]' '[:lower:]' <<<"$what" | tr -c 'a-z0-9' '-' | cut -c1-40)" "$file" "$script"); then
    fail "$name" "$dir"
    return 1
  fi
  contract_buf_args "$kind"
  out=$(contract_buf "$dir" "${CONTRACT_ARGS[@]}" --error-format json 2>&1)
  rc=$?
  for rule in "$@"; do
    jq -se --arg r "$rule" 'any(.[]; .type == $r)' <<<"$out" >/dev/null 2>&1 || missing+=("$rule")
  done
  if ((rc == 100 && ${#missing[@]} == 0)); then
    pass "$name"
  else
    fail "$name" "exit status $rc (want 100), rules not reported: ${missing[*]:-none}" "$out" \
      "$(diff -u "$TB_ROOT/proto/$file" "$dir/proto/$file")"
    return 1
  fi
}

section "contract: buf lint and buf breaking on proto/ (scratch copies in $CONTRACT_WORK)"

# ensure_buf dies on failure: a subshell keeps that to this check.
contract_install() (ensure_buf)
if check_logged "tools: buf $(buf_version_pinned) (npm ci --ignore-scripts of tools/buf, cached in $TB_TOOLS_DIR/buf)" \
  "$CONTRACT_WORK/install.log" contract_install; then
  CONTRACT_BUF=$(buf_bin)

  contract_pinned=$(buf_version_pinned)
  assert_match "tools/buf/package.json pins @bufbuild/buf to an exact version ($contract_pinned)" \
    '^[0-9]+\.[0-9]+\.[0-9]+$' "$contract_pinned"
  assert_json "tools/buf/package-lock.json locks @bufbuild/buf and its linux-x64 binary at $contract_pinned" \
    '.packages["node_modules/@bufbuild/buf"].version == $v and .packages["node_modules/@bufbuild/buf-linux-x64"].version == $v' \
    "$(cat "$TB_BUF_PACKAGE_DIR/package-lock.json")" --arg v "$contract_pinned"

  # ---------------------------------------------------------- configuration
  # The rules in force are exactly STANDARD minus the three exceptions, and
  # FILE for breaking: a new exception or a weaker category shows here.
  contract_all=$("$CONTRACT_BUF" config ls-lint-rules --version v2 --format json 2>&1)
  contract_lint_rules=$(contract_buf "$TB_ROOT" config ls-lint-rules --configured-only --format json 2>&1)
  contract_want=$(jq -sr --args '[.[] | select((.categories | index("STANDARD")) and (.deprecated | not)) | .id]
    - $ARGS.positional | sort | join(" ")' "${CONTRACT_LINT_EXCEPT[@]}" <<<"$contract_all" 2>&1)
  assert_eq "buf lint runs STANDARD minus ${CONTRACT_LINT_EXCEPT[*]}" \
    "$contract_want" "$(jq -sr '[.[].id] | sort | join(" ")' <<<"$contract_lint_rules" 2>&1)"
  contract_all=$("$CONTRACT_BUF" config ls-breaking-rules --version v2 --format json 2>&1)
  contract_breaking_rules=$(contract_buf "$TB_ROOT" config ls-breaking-rules --configured-only --format json 2>&1)
  assert_eq "buf breaking runs the FILE rules" \
    "$(jq -sr '[.[] | select((.categories | index("FILE")) and (.deprecated | not)) | .id] | sort | join(" ")' <<<"$contract_all" 2>&1)" \
    "$(jq -sr '[.[].id] | sort | join(" ")' <<<"$contract_breaking_rules" 2>&1)"

  # ---------------------------------------------------------- the contract
  check "buf lint passes on proto/" contract_buf "$TB_ROOT" lint
  contract_files=$("$CONTRACT_BUF" ls-files "$CONTRACT_RELEASED" 2>&1)
  contract_missing=()
  for f in tributary/v1/event.proto tributary/v1/ingest.proto tributary/v1/query.proto tributary/v1/admin.proto; do
    grep -qx "$f" <<<"$contract_files" || contract_missing+=("$f")
  done
  # (An empty or foreign image would let every change through.)
  if ((${#contract_missing[@]} == 0)); then
    pass "proto/released.binpb is an image of the contract ($(grep -c . <<<"$contract_files") files)"
  else
    fail "proto/released.binpb is an image of the contract" "missing: ${contract_missing[*]}" "$contract_files"
  fi
  check "buf breaking --against proto/released.binpb passes on proto/" \
    contract_buf "$TB_ROOT" breaking --against "$CONTRACT_RELEASED"

  # ---------------------------------------------------------- the checks bite
  section "contract: edits in a scratch copy"
  if contract_dir=$(contract_edit additive tributary/v1/event.proto \
    's|^  google.protobuf.Struct payload = 7;$|&\n  // A field added after the release.\n  string tenant_id = 8;|'); then
    check "an additive edit (Event.tenant_id = 8) passes buf lint" contract_buf "$contract_dir" lint
    check "an additive edit (Event.tenant_id = 8) passes buf breaking" \
      contract_buf "$contract_dir" breaking --against "$CONTRACT_RELEASED"
  else
    fail "an additive edit (Event.tenant_id = 8) in a scratch copy" "$contract_dir"
  fi
  contract_refused breaking "a deleted field (Event.user_id)" tributary/v1/event.proto \
    '/^  string user_id = 4;$/d' FIELD_NO_DELETE
  contract_refused breaking "a renumbered field (Event.session_id 5 -> 15)" tributary/v1/event.proto \
    's/^  string session_id = 5;$/  string session_id = 15;/' FIELD_NO_DELETE
  contract_refused breaking "a renamed field, same number (Event.user_id -> user_ref)" tributary/v1/event.proto \
    's/^  string user_id = 4;$/  string user_ref = 4;/' FIELD_SAME_NAME FIELD_SAME_JSON_NAME
  contract_refused breaking "a deleted RPC (IngestService.PublishStream)" tributary/v1/ingest.proto \
    '/^  rpc PublishStream(/d' RPC_NO_DELETE
  contract_refused lint "a camelCase field (Event.sessionLabel)" tributary/v1/event.proto \
    's|^  google.protobuf.Struct payload = 7;$|&\n  string sessionLabel = 8;|' FIELD_LOWER_SNAKE_CASE
  contract_refused lint "an enum without an _UNSPECIFIED zero value" tributary/v1/event.proto \
    '$a enum Colour { RED = 0; }' ENUM_ZERO_VALUE_SUFFIX ENUM_VALUE_PREFIX
fi
printf '      the contract area took %ds\n' $((SECONDS - CONTRACT_STARTED))
