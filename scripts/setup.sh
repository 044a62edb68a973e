#!/usr/bin/env bash
# One-time setup of a fresh Debian machine, as root: installs what nsbypass's
# tests and demo drive (runc, a static busybox for container rootfs, iproute2,
# nsenter) and builds the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs packages with apt-get)" >&2
    exit 1
fi

# gcc, libc6-dev: the profile tests build a preload shim and a sender.
# g++: libfuzzer-sys compiles libFuzzer for the fuzz targets.
# podman, docker.io, containerd: the runtimes the install tests drive.
# containernetworking-plugins, netavark: the CNI and podman macvlan drivers
# scripts/bench.py compares against; sockperf, iperf3: its data-path figures.
# etcd-server, etcd-client: the etcd lease store's cluster (etcd) and its
# inspection (etcdctl) in tests/e2e/etcd.rs and the bench; the tests run
# their own members in their own namespaces, never the packaged service.
# openssl: that test's certificates for etcd over TLS.
# nftables: the tests read the address guard's tables with `nft` (the hook
# itself speaks netlink and needs no nft binary).
# dpdk, librte-net-af-xdp23: the host's DPDK that tests/e2e/dpdk.rs carries
# into containers (testpmd over AF_XDP); dpdk-dev: Debian 12 ships
# dpdk-testpmd there.
packages=(runc busybox-static iproute2 util-linux gcc g++ libc6-dev
          podman docker.io containerd containernetworking-plugins netavark
          sockperf iperf3 etcd-server etcd-client openssl nftables
          dpdk dpdk-dev librte-net-af-xdp23)
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${packages[@]}"
fi

# cargo fuzz, for scripts/fuzz.sh: on stable Rust with --sanitizer none.
cargo_fuzz=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz" ]; then
    cargo install --locked "cargo-fuzz@$cargo_fuzz"
fi

# With the failpoints the fault-injection tests arm, as scripts/test.sh builds.
cargo build --locked --workspace --all-targets --features nsbypass/failpoints
echo "setup.sh: done; run scripts/test.sh"
