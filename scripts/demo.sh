#!/usr/bin/env bash
# Shows nsbypass working with nothing configured by hand: a throwaway testbed
# (veth NIC, peer host namespace), two runc containers wired by the hook,
# traffic between them, then everything removed. Run as root after setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -q -p nsbypass -p nsbypass-testbed
exec target/x86_64-unknown-linux-gnu/release/nsbypass-demo --nsbypass target/x86_64-unknown-linux-gnu/release/nsbypass
