# shellcheck shell=bash
# The Rust workspace's own checks: formatting, clippy and the test suites, in
# the release profile and the shared target directory the deployment builds
# with (so nothing compiles twice). The integration tests use the running
# PostgreSQL cluster (each test creates a fresh database in it) and start
# their own memory-engine nisshi brokers on free ports.

RUST_LOG_DIR="$TB_LOG_DIR/test-system"
export TRIBUTARY_TEST_DATABASE_URL="${TRIBUTARY_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:${TRIBUTARY_PG_PORT:-55432}/postgres}"
export TRIBUTARY_NISSHI_BIN="${TRIBUTARY_NISSHI_BIN:-$TB_NISSHI_BIN}"

export CARGO_TERM_COLOR=never

in_workspace() { (cd "$TB_ROOT" && "$@"); }

section "rust (full output in $RUST_LOG_DIR)"
check_logged "cargo fmt --all --check" "$RUST_LOG_DIR/cargo-fmt.log" \
  in_workspace cargo fmt --all --check
check_logged "cargo clippy --release --workspace --all-targets -- -D warnings" "$RUST_LOG_DIR/cargo-clippy.log" \
  in_workspace cargo clippy --release --workspace --all-targets -- -D warnings
# Building the test binaries and running them are two checks: a slow build and
# a stuck test then show as what they are. A test that hangs is ended after
# TRIBUTARY_TEST_TIMEOUT seconds (libtest names tests running over 60 s).
check_logged "cargo test --release --workspace --no-run" "$RUST_LOG_DIR/cargo-test-build.log" \
  in_workspace cargo test --release --workspace --no-run &&
  check_logged "cargo test --release --workspace" "$RUST_LOG_DIR/cargo-test.log" \
    in_workspace timeout --kill-after=10 "${TRIBUTARY_TEST_TIMEOUT:-900}" cargo test --release --workspace
