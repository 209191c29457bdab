#!/usr/bin/env bash
# Builds tributary-processor at an older commit: the bench's `layout`
# scenario runs it as the pipeline baseline (--baseline-processor).
set -euo pipefail

TB_LOG_PREFIX=baseline
# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() {
  cat <<EOF
Usage: scripts/build-baseline-processor.sh [COMMIT]

Builds tributary-processor at COMMIT (default 8a51225, the last commit before
the partitioned events layout: its schema is the migrations up to
20261201130000_subscription_dead_letters) in a temporary git worktree, with
the target directory \$HOME/.cache/tributary/target-baseline, and copies it to
  \$HOME/.cache/tributary/baseline/<commit>/tributary-processor
(<commit>: 12 hex digits). A binary already there is reused. Prints its path:
  tributary-bench --scenarios layout --baseline-processor PATH

Options:
  -h, --help   This text.
EOF
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
esac
[[ $# -le 1 ]] || {
  usage >&2
  exit 64
}

commit=$(git -C "$TB_ROOT" rev-parse --verify --short=12 "${1:-8a51225}^{commit}") ||
  die "no commit ${1:-8a51225} in $TB_ROOT"
out_dir="$HOME/.cache/tributary/baseline/$commit"
binary="$out_dir/tributary-processor"
if [[ -x "$binary" ]]; then
  log_info "reusing $binary"
  echo "$binary"
  exit 0
fi

tree=$(mktemp -d "${TMPDIR:-/tmp}/tributary-baseline.XXXXXX")
cleanup() { git -C "$TB_ROOT" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"; }
trap cleanup EXIT
git -C "$TB_ROOT" worktree add --detach "$tree" "$commit" >/dev/null
log_info "building tributary-processor at $commit (several minutes on a cold target directory)"
(
  cd "$tree"
  CARGO_TARGET_DIR="$HOME/.cache/tributary/target-baseline" \
    cargo build --release --locked -p tributary-processor >&2
)
mkdir -p "$out_dir"
cp "$HOME/.cache/tributary/target-baseline/release/tributary-processor" "$binary.tmp"
mv "$binary.tmp" "$binary"
log_info "built $binary"
echo "$binary"
