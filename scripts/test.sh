#!/usr/bin/env bash
# Every check CI runs: formatting, lints, unit tests, the end-to-end tests
# against real runc containers (those need root and skip, saying why, without),
# and a minute of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo fmt --all --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --locked --workspace --all-targets --features nsbypass/failpoints -- -D warnings
# End-to-end tests skip without root; here, skipping is a failure. The hook
# is built with its failpoints (tests/e2e/integrity.rs arms them); a
# release build never has them.
NSBYPASS_E2E=1 cargo test --locked --workspace --features nsbypass/failpoints

# The tests must clean up after themselves, failures included.
leftover=$(ip netns list 2>/dev/null | grep -E '^nb[0-9a-z]+-' || true)
if [ -n "$leftover" ]; then
    echo "test.sh: tests left network namespaces behind:" >&2
    echo "$leftover" >&2
    exit 1
fi

# The fuzz crate is a workspace of its own: lint it apart.
cargo clippy --locked --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
scripts/fuzz.sh 60
echo "test.sh: all checks passed"
