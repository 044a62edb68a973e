#!/usr/bin/env bash
# Builds the nsbypass binary to install and prints its path. This is just
# `cargo build --release`: .cargo/config.toml makes that optimised and
# statically linked (no dynamic loader on every hook call; runs on any host
# glibc), so `cargo install --path hook` installs the same binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -q -p nsbypass
echo "${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/nsbypass"
