#!/usr/bin/env python3
"""Side-by-side timings: nsbypass's hook lifecycle against CNI's macvlan plugin
(with host-local IPAM) and against plain runc, on a throwaway testbed.

Run as root after scripts/setup.sh:  scripts/bench.py [--runs N]

Every figure is the wall time of whole processes, as a runtime pays it:
  netns            ip netns add + ip netns del (the floor any runtime pays)
  cni add+del      /usr/lib/cni/macvlan ADD then DEL into a fresh netns
  nsbypass         nsbypass hook prestart, then (netns gone) hook poststop
  nsbypass (pod)   the same but poststop deletes the link in a live netns
  runc ...         runc run of a busybox `true`: no hooks; hooks but no
                   request; hooks and one MACVLAN network
  podman ...       podman run --rm of the same: --network none; a netavark
                   macvlan network; --network none plus nsbypass's hooks.d
                   wiring one MACVLAN
Medians and 90th percentiles over --runs runs. The state directories (nsbypass
leases, host-local's data dir) are on tmpfs, as /run is on a real host.
"""

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNI = "/usr/lib/cni"
CLONE_NEWNET = 0x40000000
TAG = "nbbench"


def sh(*argv, stdin=None, env=None, check=True):
    out = subprocess.run(argv, input=stdin, capture_output=True, env=env)
    if check and out.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed: {out.stderr.decode().strip()}")
    return out


def timed(*argv, stdin=None, env=None):
    start = time.perf_counter()
    sh(*argv, stdin=stdin, env=env)
    return time.perf_counter() - start


def enter_netns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path) as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            sys.exit(f"bench: setns {path}: {os.strerror(ctypes.get_errno())}")


class Bench:
    def __init__(self, runs, nsbypass):
        self.runs = runs
        self.nsbypass = nsbypass
        self.dir = tempfile.mkdtemp(prefix="nsbypass-bench-", dir="/dev/shm")
        self.host, self.peer = f"{TAG}-h", f"{TAG}-p"
        self.parent = f"{TAG}n"
        self.results = {}

    def __enter__(self):
        for ns in (self.host, self.peer):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", self.host, "link", "add", self.parent, "type", "veth",
           "peer", "name", f"{TAG}w", "netns", self.peer)
        sh("ip", "-n", self.host, "link", "set", self.parent, "up")
        sh("ip", "-n", self.peer, "link", "set", f"{TAG}w", "up")
        # Everything below runs "on the host" of the testbed.
        enter_netns(f"/run/netns/{self.host}")
        return self

    def __exit__(self, *_):
        for ns in (self.host, self.peer):
            sh("ip", "netns", "del", ns, check=False)
        # podman's vfs storage may hold mounts under the bench directory.
        sh("sh", "-c", f"grep -o ' {self.dir}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r umount -l",
           check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def record(self, name, samples):
        self.results[name] = samples

    # -- scenarios ---------------------------------------------------------

    def netns(self):
        samples = []
        for i in range(self.runs):
            samples.append(timed("ip", "netns", "add", f"{TAG}-x") + timed("ip", "netns", "del", f"{TAG}-x"))
        self.record("netns add+del", samples)

    def cni(self):
        conf = json.dumps({
            "cniVersion": "0.4.0", "name": "fast", "type": "macvlan",
            "master": self.parent, "mode": "bridge",
            "ipam": {"type": "host-local", "subnet": "10.88.0.0/24",
                     "rangeStart": "10.88.0.100", "rangeEnd": "10.88.0.199",
                     "dataDir": f"{self.dir}/cni"},
        }).encode()
        adds, dels = [], []
        for i in range(self.runs):
            sh("ip", "netns", "add", f"{TAG}-x")
            env = {"CNI_CONTAINERID": f"bench{i}", "CNI_NETNS": f"/run/netns/{TAG}-x",
                   "CNI_IFNAME": "net1", "CNI_PATH": CNI, "PATH": os.environ["PATH"]}
            adds.append(timed(f"{CNI}/macvlan", stdin=conf, env={**env, "CNI_COMMAND": "ADD"}))
            dels.append(timed(f"{CNI}/macvlan", stdin=conf, env={**env, "CNI_COMMAND": "DEL"}))
            sh("ip", "netns", "del", f"{TAG}-x")
        self.record("cni macvlan ADD", adds)
        self.record("cni macvlan DEL", dels)
        self.record("cni macvlan ADD+DEL", [a + d for a, d in zip(adds, dels)])

    def write_config(self):
        path = f"{self.dir}/config.toml"
        with open(path, "w") as f:
            f.write(f'state_dir = "{self.dir}/state"\n[log]\nfile = "{self.dir}/nsbypass.log"\n'
                    f'[networks.fast]\nparent = "{self.parent}"\nsubnet = "10.77.0.0/24"\n'
                    f'range = "10.77.0.100-10.77.0.199"\n')
        os.makedirs(f"{self.dir}/bundle", exist_ok=True)
        with open(f"{self.dir}/bundle/config.json", "w") as f:
            json.dump({"annotations": {"nsbypass.io/network": "fast"}}, f)
        return path

    def nsbypass_hook(self, pod):
        config = self.write_config()
        hook = lambda stage, state: timed(self.nsbypass, "--config", config, "hook", stage, stdin=state)
        pre, post = [], []
        for i in range(self.runs):
            bundle = f"{self.dir}/bundle"
            if pod:
                # A pod's namespace, pinned as a sandbox pins it, outlives
                # the member: its poststop deletes the link in a live netns.
                pin = f"{TAG}-pod"
                sh("ip", "netns", "add", pin)
                bundle = f"{self.dir}/bundle-pod"
                os.makedirs(bundle, exist_ok=True)
                with open(f"{bundle}/config.json", "w") as f:
                    json.dump({"annotations": {"nsbypass.io/network": "fast"},
                               "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{pin}"}]}}, f)
                init = subprocess.Popen(["nsenter", f"--net=/run/netns/{pin}", "sleep", "60"])
            else:
                # A process in a fresh netns stands in for the container's init.
                init = subprocess.Popen(["unshare", "--net", "sleep", "60"])
            time.sleep(0.01)
            state = json.dumps({"ociVersion": "1.0.2", "id": f"bench{i}", "status": "creating",
                                "pid": init.pid, "bundle": bundle}).encode()
            pre.append(hook("prestart", state))
            # A runtime runs poststop once the container's processes are gone.
            init.send_signal(signal.SIGKILL)
            init.wait()
            post.append(hook("poststop", state))
            if pod:
                sh("ip", "netns", "del", pin)
        label = "nsbypass (pod: netns alive at poststop)" if pod else "nsbypass"
        self.record(f"{label} prestart", pre)
        self.record(f"{label} poststop", post)
        self.record(f"{label} prestart+poststop", [a + b for a, b in zip(pre, post)])

    def runc(self):
        config = self.write_config()
        rootfs = f"{self.dir}/rootfs"
        os.makedirs(f"{rootfs}/bin")
        shutil.copy("/bin/busybox", f"{rootfs}/bin/busybox")
        os.symlink("busybox", f"{rootfs}/bin/true")
        base = f"{self.dir}/runc-bundle"
        os.makedirs(base)
        sh("runc", "spec", "--bundle", base)
        with open(f"{base}/config.json") as f:
            spec = json.load(f)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["true"]
        spec["root"] = {"path": rootfs, "readonly": True}
        hook = lambda stage: {"path": self.nsbypass, "args": ["nsbypass", "--config", config, "hook", stage],
                              "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
        variants = {
            "runc run (no hooks)": ({}, {}),
            "runc run (hooks, no request)": ({"prestart": [hook("prestart")], "poststop": [hook("poststop")]}, {}),
            "runc run (hooks, one network)": ({"prestart": [hook("prestart")], "poststop": [hook("poststop")]},
                                              {"nsbypass.io/network": "fast"}),
        }
        for name, (hooks, annotations) in variants.items():
            spec["hooks"] = hooks
            spec["annotations"] = annotations
            with open(f"{base}/config.json", "w") as f:
                json.dump(spec, f)
            samples = [timed("runc", "--root", f"{self.dir}/runc", "run", "--bundle", base, f"bench{i}")
                       for i in range(self.runs)]
            self.record(name, samples)

    def podman(self):
        config = self.write_config()
        rootfs = f"{self.dir}/rootfs"
        hooks, empty = f"{self.dir}/hooks.d", f"{self.dir}/no-hooks.d"
        os.makedirs(empty, exist_ok=True)
        sh(self.nsbypass, "--config", config, "install", "podman", "--hooks-dir", hooks, "--binary", self.nsbypass)
        base = ["podman", "--root", f"{self.dir}/podman/root", "--runroot", f"{self.dir}/podman/run",
                "--tmpdir", f"{self.dir}/podman/tmp", "--storage-driver", "vfs", "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--network-backend", "netavark", "--network-config-dir", f"{self.dir}/podman/net"]
        sh(*base, "network", "create", "-d", "macvlan", "-o", f"parent={self.parent}",
           "--subnet", "10.78.0.0/24", "benchnet")
        run = ["run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
        variants = {
            "podman run (--network none)": ["--hooks-dir", empty, "--network", "none"],
            "podman run (netavark macvlan)": ["--hooks-dir", empty, "--network", "benchnet"],
            "podman run (nsbypass macvlan)": ["--hooks-dir", hooks, "--network", "none",
                                              "--annotation", "nsbypass.io/network=fast"],
        }
        for name, extra in variants.items():
            argv = base + run + extra + ["--rootfs", rootfs, "true"]
            self.record(name, [timed(*argv) for _ in range(self.runs)])

    def report(self):
        ms = lambda s: s * 1000
        print(f"{'scenario':44} {'median ms':>10} {'p90 ms':>8}   ({self.runs} runs)")
        for name, samples in self.results.items():
            p90 = sorted(samples)[max(0, int(len(samples) * 0.9) - 1)]
            print(f"{name:44} {ms(statistics.median(samples)):10.2f} {ms(p90):8.2f}")
        med = lambda k: statistics.median(self.results[k])
        print()
        print(f"nsbypass lifecycle / CNI macvlan ADD+DEL:   "
              f"{med('nsbypass prestart+poststop') / med('cni macvlan ADD+DEL'):.3f}")
        print(f"runc with one network / runc without hooks: "
              f"{med('runc run (hooks, one network)') / med('runc run (no hooks)'):.3f}")
        print(f"runc, hooks but no request / no hooks:      "
              f"{med('runc run (hooks, no request)') / med('runc run (no hooks)'):.3f}")
        if "podman run (--network none)" in self.results:
            none = med("podman run (--network none)")
            print(f"podman + nsbypass macvlan, added to --network none: "
                  f"{(med('podman run (nsbypass macvlan)') - none) * 1000:.1f} ms; "
                  f"netavark macvlan: {(med('podman run (netavark macvlan)') - none) * 1000:.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--nsbypass", default=f"{ROOT}/target/x86_64-unknown-linux-gnu/release/nsbypass",
                        help="the hook binary (default: what scripts/build-release.sh builds)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates network namespaces)")
    for tool in (args.nsbypass, f"{CNI}/macvlan", shutil.which("runc")):
        if not tool or not os.path.exists(tool):
            sys.exit(f"bench: missing {tool}; run scripts/setup.sh and scripts/build-release.sh")
    with Bench(args.runs, os.path.abspath(args.nsbypass)) as bench:
        bench.netns()
        bench.cni()
        bench.nsbypass_hook(pod=False)
        bench.nsbypass_hook(pod=True)
        bench.runc()
        if shutil.which("podman") and os.path.exists("/usr/lib/podman/netavark"):
            bench.podman()
        else:
            print("bench: no podman with netavark here; skipping the podman comparison", file=sys.stderr)
        bench.report()


if __name__ == "__main__":
    main()
