#!/usr/bin/env python3
"""nsbypass's benchmark suite: runs every comparison on a throwaway testbed and
writes docs/PERFORMANCE.md (tables, the goals as PASS/MISS) and docs/perf/*.svg.

Run as root after scripts/setup.sh and scripts/build-release.sh:

    scripts/bench.py [--runs N] [--quick] [--output docs/PERFORMANCE.md]
    scripts/bench.py --selftest     # the statistics and SVG code; no root

Comparisons (each alternates its sides within one loop, in a random order per
round, so load drifts hit every side; ratios are taken per round):
  lifecycle   nsbypass hook prestart+poststop against /usr/lib/cni/macvlan
              ADD+DEL (host-local IPAM), same churn; plus the netns floor and
              the pod case (netns alive at poststop)
  runc        runc run of a busybox `true`: no hooks; hooks, no request;
              hooks and one MACVLAN network
  podman      podman run --rm --rootfs DIR true: --network none; a netavark
              macvlan network; --network none plus nsbypass's hooks.d
  etcd        nsbypass hook prestart+poststop with [leases] store = "etcd"
              (one etcd member on 127.0.0.1 of the testbed's host netns,
              started and killed by the bench) against the file store
  no-op       nsbypass hook createContainer </dev/null against /bin/true
  concurrent  8 prestarts at once against 8 one after another (how much the
              state lock and the kernel's RTNL serialise), and the share of
              its time a prestart holds the lock
  rss         peak RSS of one prestart (ru_maxrss through a static launcher), alone and at each scale level
  scale       prestart and poststop of one more container with N live
              attachments on the same parent, N = 10 ... 1000
  data path   sockperf UDP ping-pong (full RTT) and iperf3 TCP (-P1) between
              two namespaces over MACVLAN bridge/private/vepa, veth + Linux
              bridge, and a plain veth pair; and whether IPVLAN can be made

Everything runs in network namespaces named nbb<pid>-* that the script creates
and deletes; it never touches the machine's interfaces, uses 10.x addresses
only, and kills only processes it started. Times are the wall time of whole
processes, as a runtime pays them. State directories are on tmpfs (/dev/shm),
as /run is on a real host. Standard library only.
"""

import argparse
import ctypes
import datetime
import doctest
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNI = "/usr/lib/cni"
CLONE_NEWNET = 0x40000000
# Names of everything the bench makes start with this; the pid keeps two
# runs on one machine (two engineers, two worktrees) apart.
TAG = f"nbb{os.getpid() % 100000:05d}"
TARGET = "x86_64-unknown-linux-gnu"


class BenchError(Exception):
    pass


# -- statistics ---------------------------------------------------------------

def quantile(xs, q):
    """Linear-interpolation quantile (numpy's default).

    >>> quantile([1, 2, 3, 4], 0.5)
    2.5
    >>> quantile([5, 1, 3], 0.0), quantile([5, 1, 3], 1.0)
    (1, 5)
    >>> quantile(range(11), 0.9), quantile([0, 1], 0.25)
    (9, 0.25)
    """
    s = sorted(xs)
    if not s:
        raise ValueError("quantile of nothing")
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] if pos == lo else s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs):
    """Median, p10, p90 and count.

    >>> summary([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    {'median': 6, 'p10': 2, 'p90': 10, 'n': 11}
    """
    return {"median": statistics.median(xs), "p10": quantile(xs, 0.1),
            "p90": quantile(xs, 0.9), "n": len(xs)}


def ratios(a, b):
    """Per-pair ratios a[i] / b[i].

    >>> ratios([1, 2, 3], [2, 4, 3])
    [0.5, 0.5, 1.0]
    """
    if len(a) != len(b):
        raise ValueError("unpaired samples")
    return [x / y for x, y in zip(a, b)]


def bootstrap_ci(xs, stat=statistics.median, n=2000, level=0.95, seed=1):
    """Percentile-bootstrap confidence interval of stat(xs); deterministic.

    >>> lo, hi = bootstrap_ci([10] * 20)
    >>> (lo, hi)
    (10.0, 10.0)
    >>> lo, hi = bootstrap_ci(list(range(100)))
    >>> 35 < lo < 49.5 < hi < 65
    True
    """
    rng = random.Random(seed)
    k = len(xs)
    stats = sorted(stat([xs[rng.randrange(k)] for _ in range(k)]) for _ in range(n))
    return quantile(stats, (1 - level) / 2), quantile(stats, 1 - (1 - level) / 2)


def ratio_of_medians_ci(a, b, n=2000, seed=1):
    """Bootstrap CI of median(a) / median(b) for unpaired samples.

    >>> ratio_of_medians_ci([2] * 10, [1] * 10)
    (2.0, 2.0)
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ra = statistics.median([a[rng.randrange(len(a))] for _ in a])
        rb = statistics.median([b[rng.randrange(len(b))] for _ in b])
        out.append(ra / rb)
    out.sort()
    return quantile(out, 0.025), quantile(out, 0.975)


def verdict(ok):
    if ok is None:
        return "reported (no goal)"
    return "**PASS**" if ok else "**MISS**"


# -- SVG ------------------------------------------------------------------------

FONT = 'font-family="sans-serif" font-size="12"'


def nice_ticks(vmax, count=5):
    """Round tick values from 0 up to at least vmax.

    >>> nice_ticks(9.3)
    [0, 2, 4, 6, 8, 10]
    >>> nice_ticks(0.42)
    [0, 0.1, 0.2, 0.3, 0.4, 0.5]
    """
    if vmax <= 0:
        return [0, 1]
    raw = vmax / count
    mag = 10 ** int(f"{raw:e}".split("e")[1])
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks, t = [0], 0
    while t < vmax - 1e-12:
        t = round(t + step, 10)
        ticks.append(int(t) if float(t).is_integer() else t)
    return ticks


def fmt(v):
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def svg_bars(title, unit, rows, note=""):
    """Horizontal bars: rows of (label, value, low, high); low/high (the
    whisker) may be None.

    >>> import xml.etree.ElementTree as ET
    >>> svg = svg_bars("t", "ms", [("a", 1.0, 0.5, 1.5), ("b <&>", 2.0, None, None)])
    >>> ET.fromstring(svg).tag
    '{http://www.w3.org/2000/svg}svg'
    """
    width, left, right, rowh, top = 760, 330, 90, 26, 44
    height = top + rowh * len(rows) + 46 + (16 if note else 0)
    vmax = max(max(v, hi if hi is not None else v) for _, v, _, hi in rows) or 1
    ticks = nice_ticks(vmax)
    scale = (width - left - right) / ticks[-1]
    p = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" {FONT}>',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">'
         f'{escape(title)}</text>']
    axis_y = top + rowh * len(rows)
    for t in ticks:
        x = left + t * scale
        p.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y}" stroke="#ddd"/>')
        p.append(f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">{fmt(t)}</text>')
    p.append(f'<text x="{left + (width - left - right) / 2}" y="{axis_y + 34}" '
             f'text-anchor="middle">{escape(unit)}</text>')
    for i, (label, v, lo, hi) in enumerate(rows):
        y = top + i * rowh
        cy = y + rowh / 2
        p.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        p.append(f'<rect x="{left}" y="{y + 5}" width="{max(v * scale, 0.5):.1f}" height="{rowh - 10}" '
                 f'fill="{"#4a7ebb" if i % 2 == 0 else "#7aa6d6"}"/>')
        end = v
        if lo is not None and hi is not None:
            x1, x2 = left + lo * scale, left + hi * scale
            p.append(f'<line x1="{x1:.1f}" y1="{cy}" x2="{x2:.1f}" y2="{cy}" stroke="black"/>')
            for x in (x1, x2):
                p.append(f'<line x1="{x:.1f}" y1="{cy - 5}" x2="{x:.1f}" y2="{cy + 5}" stroke="black"/>')
            end = max(v, hi)
        p.append(f'<text x="{left + end * scale + 5:.1f}" y="{cy + 4:.1f}">{fmt(v)}</text>')
    p.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="black"/>')
    if note:
        p.append(f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="11" '
                 f'fill="#555">{escape(note)}</text>')
    p.append("</svg>")
    return "\n".join(p) + "\n"


def svg_lines(title, xlabel, ylabel, series, note=""):
    """Line plot: series maps a name to points (x, y, low, high).

    >>> import xml.etree.ElementTree as ET
    >>> svg = svg_lines("t", "n", "ms", {"a": [(10, 1, 0.9, 1.1), (100, 2, 1.5, 2.5)]})
    >>> len(ET.fromstring(svg)) > 5
    True
    """
    width, height, left, right, top, bottom = 760, 420, 70, 180, 44, 60
    colours = ["#4a7ebb", "#d0743c", "#5a9e4b", "#8e6bb0"]
    xs = [pt[0] for pts in series.values() for pt in pts]
    ys = [max(pt[1], pt[3]) for pts in series.values() for pt in pts]
    xt, yt = nice_ticks(max(xs)), nice_ticks(max(ys))
    pw, ph = width - left - right, height - top - bottom
    X = lambda x: left + x / xt[-1] * pw
    Y = lambda y: top + ph - y / yt[-1] * ph
    p = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" {FONT}>',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">'
         f'{escape(title)}</text>']
    for t in xt:
        p.append(f'<line x1="{X(t):.1f}" y1="{top}" x2="{X(t):.1f}" y2="{top + ph}" stroke="#eee"/>')
        p.append(f'<text x="{X(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{fmt(t)}</text>')
    for t in yt:
        p.append(f'<line x1="{left}" y1="{Y(t):.1f}" x2="{left + pw}" y2="{Y(t):.1f}" stroke="#eee"/>')
        p.append(f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    p.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    p.append(f'<text x="{left + pw / 2}" y="{top + ph + 36}" text-anchor="middle">{escape(xlabel)}</text>')
    p.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
             f'transform="rotate(-90 16 {top + ph / 2})">{escape(ylabel)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        c = colours[i % len(colours)]
        pts = sorted(pts)
        p.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                 + " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _, _ in pts) + '"/>')
        for x, y, lo, hi in pts:
            p.append(f'<line x1="{X(x):.1f}" y1="{Y(lo):.1f}" x2="{X(x):.1f}" y2="{Y(hi):.1f}" stroke="{c}"/>')
            p.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3.5" fill="{c}"/>')
        ly = top + 10 + i * 20
        p.append(f'<line x1="{left + pw + 12}" y1="{ly}" x2="{left + pw + 32}" y2="{ly}" '
                 f'stroke="{c}" stroke-width="2"/>')
        p.append(f'<text x="{left + pw + 38}" y="{ly + 4}">{escape(name)}</text>')
    if note:
        p.append(f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="11" '
                 f'fill="#555">{escape(note)}</text>')
    p.append("</svg>")
    return "\n".join(p) + "\n"


def selftest():
    failures, tests = doctest.testmod(sys.modules[__name__])
    # A paired ratio is the median of per-round ratios, not a ratio of medians.
    a, b = [1, 1, 10], [2, 2, 1]
    assert statistics.median(ratios(a, b)) == 0.5, "paired ratio"
    assert abs(statistics.median(a) / statistics.median(b) - 0.5) < 1e-9
    assert parse_sockperf(SOCKPERF_SAMPLE) == {"p25": 8.298, "p50": 9.53, "p90": 10.588, "p99": 13.668,
                                               "avg": 9.649}, "sockperf parser"
    if failures:
        sys.exit(f"selftest: {failures} of {tests} doctests failed")
    print(f"selftest: {tests} doctests and 3 checks passed")


# -- processes ------------------------------------------------------------------

def sh(*argv, stdin=None, env=None, check=True):
    out = subprocess.run(argv, input=stdin, capture_output=True, env=env)
    if check and out.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {out.stderr.decode().strip()}")
    return out


# A tiny static program that forks, execs its arguments and writes the
# child's ru_maxrss (KiB) to the file named first: see run().
RSS_LAUNCHER_C = r"""
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) { execv(argv[2], argv + 2); _exit(127); }
    int status; struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) return 2;
    FILE *out = fopen(argv[1], "w");
    if (!out) return 2;
    fprintf(out, "%ld\n", ru.ru_maxrss);
    fclose(out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"""
NOOP_C = "int main(void) { return 0; }\n"

# Set by build_rss_tools(): (launcher, static no-op) or None for GNU time.
RSS_TOOLS = None


def build_rss_tools(directory):
    """Builds the RSS launcher and a static no-op with gcc; None without gcc."""
    built = []
    for name, source in (("rss-launcher", RSS_LAUNCHER_C), ("noop", NOOP_C)):
        src = os.path.join(directory, name + ".c")
        with open(src, "w") as f:
            f.write(source)
        exe = os.path.join(directory, name)
        r = subprocess.run(["gcc", "-static", "-O2", "-o", exe, src], capture_output=True)
        if r.returncode != 0:
            return None
        built.append(exe)
    return tuple(built)


def rss_method():
    if RSS_TOOLS:
        return ("a static launcher's `wait4` `ru_maxrss` (the launcher forks and execs the hook; "
                "its own share is the floor below)")
    return "GNU time's `%M` (the child's `ru_maxrss`; `/usr/bin/time` itself sets a floor of about 1 MB)"


def run(argv, stdin=b"", env=None, check=True, rss=False):
    """Runs argv to completion; returns (wall seconds, peak RSS in KiB or None).

    The peak RSS needs rss=True, which runs argv under a static launcher
    (RSS_TOOLS; GNU time without gcc) that reports the child's ru_maxrss:
    wait4's own ru_maxrss of a child forked from this Python carries
    Python's high-water mark across exec (about 28 MB), so it says nothing
    about the hook, and a dynamic launcher's (GNU time's, about 1 MB) is
    carried the same way. The wall time then includes the launcher's start.
    """
    err = tempfile.TemporaryFile()
    if rss:
        out = tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="nbbench-rss-")
        if RSS_TOOLS:
            argv = [RSS_TOOLS[0], out.name, *argv]
        else:
            argv = ["/usr/bin/time", "-f", "%M", "-o", out.name, *argv]
    r, w = os.pipe()
    os.write(w, stdin)  # small: fits the pipe before the child reads
    os.close(w)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=r, stdout=subprocess.DEVNULL, stderr=err, env=env)
    _, status, _ = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    os.close(r)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if check and proc.returncode != 0:
        err.seek(0)
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {err.read().decode().strip()[-500:]}")
    err.close()
    if not rss:
        return elapsed, None
    with out:
        return elapsed, int(out.read().split()[-1])


def enter_netns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path) as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            raise BenchError(f"setns {path}: {os.strerror(ctypes.get_errno())}")


SOCKPERF_SAMPLE = """sockperf: ====> avg-rtt=9.649 (std-dev=12.888)
sockperf: ---> percentile 99.000 =   13.668
sockperf: ---> percentile 90.000 =   10.588
sockperf: ---> percentile 75.000 =    9.994
sockperf: ---> percentile 50.000 =    9.530
sockperf: ---> percentile 25.000 =    8.298
"""


def parse_sockperf(text):
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    out = {}
    for q in ("25", "50", "90", "99"):
        m = re.search(rf"percentile {q}\.000 =\s*([0-9.]+)", text)
        if m:
            out[f"p{q}"] = float(m.group(1))
    m = re.search(r"avg-(?:rtt|lat)=([0-9.]+)", text)
    if m:
        out["avg"] = float(m.group(1))
    return out


# -- the bench ------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.runs = args.runs
        self.nsbypass = args.nsbypass
        self.dir = tempfile.mkdtemp(prefix="nsbypass-bench-", dir="/dev/shm")
        self.host, self.peer = f"{TAG}-h", f"{TAG}-p"
        self.parent = f"{TAG}n"
        self.namespaces = []
        self.procs = []
        self.sections = []   # (heading, markdown) in order
        self.goals = []      # (comparison, figure, goal, ok)
        self.svgs = {}       # file name -> text
        self.rng = random.Random(args.seed)
        self.prestart_rss = []

    # bookkeeping: everything made is undone in close()

    def netns_add(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)

    def netns_del(self, name):
        sh("ip", "netns", "del", name, check=False)
        if name in self.namespaces:
            self.namespaces.remove(name)

    def spawn(self, argv, **kw):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def reap(self, proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def open(self):
        for ns in (self.host, self.peer):
            self.netns_add(ns)
        sh("ip", "-n", self.host, "link", "add", self.parent, "type", "veth",
           "peer", "name", f"{TAG}w", "netns", self.peer)
        sh("ip", "-n", self.host, "link", "set", self.parent, "up")
        sh("ip", "-n", self.peer, "link", "set", f"{TAG}w", "up")
        self.own_netns = os.readlink("/proc/self/ns/net")
        # Everything below runs "on the host" of the testbed.
        enter_netns(f"/run/netns/{self.host}")
        self.own_netns = os.readlink("/proc/self/ns/net")

    def close(self):
        for proc in list(self.procs):
            self.reap(proc)
        for ns in list(reversed(self.namespaces)):
            self.netns_del(ns)
        # podman's vfs storage may hold mounts under the bench directory.
        sh("sh", "-c", f"grep -o ' {self.dir}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r umount -l",
           check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def alternate(self, sides, rounds, warmup=1):
        """Runs each side once per round, in a random order per round; a side
        is a function returning a dict of named samples. Returns name -> list."""
        out = {}
        for r in range(warmup + rounds):
            order = list(sides.items())
            self.rng.shuffle(order)
            for name, fn in order:
                got = fn(r)
                if r >= warmup:
                    for k, v in got.items():
                        out.setdefault(k, []).append(v)
        return out

    # -- the hook's inputs ----------------------------------------------------

    def write_config(self, name="config.toml", subnet="10.77.0.0/24", rng="10.77.0.100-10.77.0.199",
                     extra=""):
        path = f"{self.dir}/{name}"
        with open(path, "w") as f:
            f.write(f'state_dir = "{self.dir}/state-{name}"\n[log]\nfile = "{self.dir}/nsbypass.log"\n'
                    f'[networks.fast]\nparent = "{self.parent}"\nsubnet = "{subnet}"\n'
                    f'range = "{rng}"\n{extra}')
        os.makedirs(f"{self.dir}/bundle", exist_ok=True)
        with open(f"{self.dir}/bundle/config.json", "w") as f:
            json.dump({"annotations": {"nsbypass.io/network": "fast"}}, f)
        return path

    def state(self, cid, pid, bundle=None):
        return json.dumps({"ociVersion": "1.0.2", "id": cid, "status": "creating",
                           "pid": pid, "bundle": bundle or f"{self.dir}/bundle"}).encode()

    def container_init(self):
        """A process in a fresh netns, standing in for a container's init."""
        init = self.spawn(["unshare", "--net", "sleep", "3600"])
        deadline = time.monotonic() + 5
        while True:
            try:
                if os.readlink(f"/proc/{init.pid}/ns/net") != self.own_netns:
                    return init
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("unshare --net did not make a netns in 5 s")
            time.sleep(0.0005)

    def hook(self, config, stage, state, rss=False):
        return run([self.nsbypass, "--config", config, "hook", stage], stdin=state, rss=rss)

    def lifecycle(self, config, cid, bundle=None, rss=False):
        """prestart, then (container gone) poststop: (pre s, post s, pre RSS KiB
        or None); with rss, prestart runs under GNU time."""
        init = self.container_init()
        state = self.state(cid, init.pid, bundle)
        pre, rss = self.hook(config, "prestart", state, rss=rss)
        self.reap(init)
        post, _ = self.hook(config, "poststop", state)
        return pre, post, rss

    # -- comparisons ----------------------------------------------------------

    def table(self, rows, unit="ms", factor=1000):
        lines = [f"| | median {unit} | p10 {unit} | p90 {unit} | runs |", "|---|---:|---:|---:|---:|"]
        for name, xs in rows:
            s = summary(xs)
            lines.append(f"| {name} | {s['median'] * factor:.2f} | {s['p10'] * factor:.2f} | "
                         f"{s['p90'] * factor:.2f} | {s['n']} |")
        return "\n".join(lines)

    def bars(self, file, title, rows, unit="ms", factor=1000, note="p10-p90 whiskers"):
        self.svgs[file] = svg_bars(title, unit, [
            (name, statistics.median(xs) * factor, quantile(xs, 0.1) * factor, quantile(xs, 0.9) * factor)
            for name, xs in rows], note)
        return f"![{title}](perf/{file})"

    def cmp_lifecycle(self):
        config = self.write_config()
        conf = json.dumps({
            "cniVersion": "0.4.0", "name": "fast", "type": "macvlan",
            "master": self.parent, "mode": "bridge",
            "ipam": {"type": "host-local", "subnet": "10.88.0.0/24",
                     "rangeStart": "10.88.0.100", "rangeEnd": "10.88.0.199",
                     "dataDir": f"{self.dir}/cni"},
        }).encode()
        pin = f"{TAG}-pod"
        pod_bundle = f"{self.dir}/bundle-pod"
        os.makedirs(pod_bundle, exist_ok=True)
        with open(f"{pod_bundle}/config.json", "w") as f:
            json.dump({"annotations": {"nsbypass.io/network": "fast"},
                       "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{pin}"}]}}, f)

        def netns(r):
            a, _ = run(["ip", "netns", "add", f"{TAG}-x"])
            self.namespaces.append(f"{TAG}-x")
            d, _ = run(["ip", "netns", "del", f"{TAG}-x"])
            self.namespaces.remove(f"{TAG}-x")
            return {"netns add+del": a + d}

        def cni(r):
            self.netns_add(f"{TAG}-c")
            env = {"CNI_CONTAINERID": f"bench{r}", "CNI_NETNS": f"/run/netns/{TAG}-c",
                   "CNI_IFNAME": "net1", "CNI_PATH": CNI, "PATH": os.environ["PATH"]}
            add, _ = run([f"{CNI}/macvlan"], stdin=conf, env={**env, "CNI_COMMAND": "ADD"})
            dele, _ = run([f"{CNI}/macvlan"], stdin=conf, env={**env, "CNI_COMMAND": "DEL"})
            self.netns_del(f"{TAG}-c")
            return {"cni ADD": add, "cni DEL": dele, "cni": add + dele}

        def hook(r):
            pre, post, _ = self.lifecycle(config, f"bench{r}")
            return {"hook prestart": pre, "hook poststop": post, "hook": pre + post}

        def settled(r):
            # The same, but poststop waits until the kernel has (very
            # likely) finished tearing the dead netns down: that teardown
            # runs asynchronously and holds the RTNL lock meanwhile.
            init = self.container_init()
            state = self.state(f"settled{r}", init.pid)
            pre, _ = self.hook(config, "prestart", state)
            self.reap(init)
            time.sleep(0.3)
            post, _ = self.hook(config, "poststop", state)
            return {"settled poststop": post, "settled": pre + post}

        def pod(r):
            # A pod's namespace, pinned as a sandbox pins it, outlives the
            # member: its poststop deletes the link in a live netns.
            self.netns_add(pin)
            init = self.spawn(["nsenter", f"--net=/run/netns/{pin}", "sleep", "3600"])
            time.sleep(0.01)
            state = self.state(f"pod{r}", init.pid, pod_bundle)
            pre, _ = self.hook(config, "prestart", state)
            self.reap(init)
            post, _ = self.hook(config, "poststop", state)
            self.netns_del(pin)
            return {"pod": pre + post}

        res = self.alternate({"netns": netns, "cni": cni, "hook": hook, "settled": settled, "pod": pod}, self.runs)
        rat = ratios(res["hook"], res["cni"])
        med = statistics.median(rat)
        ok = med <= 0.07
        self.goals.append(("hook prestart+poststop / CNI macvlan ADD+DEL (paired)",
                           f"{med:.3f} (p10-p90 {quantile(rat, 0.1):.3f}-{quantile(rat, 0.9):.3f})",
                           "<= 0.07", ok))
        rows = [("CNI macvlan ADD", res["cni ADD"]), ("CNI macvlan DEL", res["cni DEL"]),
                ("CNI macvlan ADD+DEL", res["cni"]),
                ("nsbypass prestart", res["hook prestart"]), ("nsbypass poststop", res["hook poststop"]),
                ("nsbypass prestart+poststop", res["hook"]),
                ("nsbypass poststop, 0.3 s after the container died", res["settled poststop"]),
                ("nsbypass prestart+poststop (poststop 0.3 s later)", res["settled"]),
                ("nsbypass, pod (netns alive at poststop)", res["pod"]),
                ("netns add+del (floor)", res["netns add+del"])]
        img = self.bars("lifecycle.svg", "Lifecycle of one MACVLAN attachment", rows)
        md = (f"Each round runs, in a random order: CNI `macvlan` ADD then DEL (host-local IPAM) into a "
              f"fresh netns; nsbypass `hook prestart` for a process in a fresh netns, then (process "
              f"killed) `hook poststop`; the same with a pinned pod netns that outlives the member; "
              f"the same with poststop 0.3 s after the death; and `ip netns add`+`del` as a floor.\n\n{self.table(rows)}\n\n"
              f"Paired ratio nsbypass / CNI (median of per-round ratios): **{med:.3f}**, "
              f"p10-p90 {quantile(rat, 0.1):.3f}-{quantile(rat, 0.9):.3f}, 95% CI of the median "
              f"{bootstrap_ci(rat)[0]:.3f}-{bootstrap_ci(rat)[1]:.3f}. "
              f"Goal <= 0.07: {verdict(ok)}\n\n"
              f"The same ratio with poststop run 0.3 s after the container died (not the goal's "
              f"churn, a diagnosis): {statistics.median(ratios(res['settled'], res['cni'])):.3f}. A "
              f"poststop right after the container's death does not wait for the kernel, which tears "
              f"the dead netns (and its MACVLAN) down asynchronously under the RTNL lock: the address "
              f"drains, and the next prestart's sweep frees it; but the kernel's teardown still "
              f"competes with both for RTNL and the CPU. CNI's DEL deletes the link itself in a live "
              f"netns and pays the same order of cost as the pod case.\n\n{img}")
        self.sections.append(("Hook lifecycle against CNI macvlan", md))

    def cmp_etcd(self):
        """prestart+poststop with the etcd lease store against the file store,
        alternated; one etcd member on loopback, data on tmpfs."""
        etcd = shutil.which("etcd")
        sh("ip", "link", "set", "lo", "up")
        port = 23790
        member = self.spawn([etcd, "--name", "bench", "--data-dir", f"{self.dir}/etcd",
                             "--listen-client-urls", f"http://127.0.0.1:{port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{port}",
                             "--listen-peer-urls", "http://127.0.0.1:23890",
                             "--initial-advertise-peer-urls", "http://127.0.0.1:23890",
                             "--initial-cluster", "bench=http://127.0.0.1:23890"])
        try:
            file_config = self.write_config("file.toml")
            etcd_config = self.write_config("etcd.toml")
            with open(etcd_config, "a") as f:
                f.write(f'[leases]\nstore = "etcd"\nendpoints = ["http://127.0.0.1:{port}"]\n'
                        f'prefix = "/bench"\nnode = "bench"\n')
            deadline = time.monotonic() + 20
            while True:
                # doctor exits 0 once the member answers with quorum (and
                # the rest of the host is fine, as the bench needs anyway).
                out = sh(self.nsbypass, "--config", etcd_config, "doctor", check=False).stdout.decode()
                if "ok   leases etcd quorum" in out:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"etcd did not answer in 20 s: {out}")
                time.sleep(0.1)

            def side(name, config):
                def go(r):
                    pre, post, _ = self.lifecycle(config, f"{name}{r}")
                    return {f"{name} prestart": pre, f"{name} poststop": post, name: pre + post}
                return go

            def settled(name, config):
                # poststop 0.3 s after the death, when the kernel has (very
                # likely) torn the netns down: the store's own cost shows.
                def go(r):
                    init = self.container_init()
                    state = self.state(f"{name}s{r}", init.pid)
                    pre, _ = self.hook(config, "prestart", state)
                    self.reap(init)
                    time.sleep(0.3)
                    post, _ = self.hook(config, "poststop", state)
                    return {f"{name} settled poststop": post, f"{name} settled": pre + post}
                return go

            res = self.alternate({"file": side("file", file_config), "etcd": side("etcd", etcd_config),
                                  "file settled": settled("file", file_config),
                                  "etcd settled": settled("etcd", etcd_config)},
                                 max(12, self.runs // 2))
            rss = {name: [self.lifecycle(config, f"{name}rss{i}", rss=True)[2] for i in range(5)]
                   for name, config in (("file", file_config), ("etcd", etcd_config))}
        finally:
            self.reap(member)
        rat = ratios(res["etcd"], res["file"])
        pre = ratios(res["etcd prestart"], res["file prestart"])
        quiet = ratios(res["etcd settled"], res["file settled"])
        med = statistics.median(rat)
        claim = statistics.median(res["etcd prestart"]) - statistics.median(res["file prestart"])
        self.goals.append(("prestart+poststop, etcd lease store / file store (paired)",
                           f"{med:.2f}x (p10-p90 {quantile(rat, 0.1):.2f}-{quantile(rat, 0.9):.2f}); "
                           f"prestart {statistics.median(pre):.2f}x, +{claim * 1000:.2f} ms",
                           "none set", None))
        rows = [("file prestart", res["file prestart"]), ("etcd prestart", res["etcd prestart"]),
                ("file poststop", res["file poststop"]), ("etcd poststop", res["etcd poststop"]),
                ("file prestart+poststop", res["file"]), ("etcd prestart+poststop", res["etcd"]),
                ("file poststop, 0.3 s after the death", res["file settled poststop"]),
                ("etcd poststop, 0.3 s after the death", res["etcd settled poststop"]),
                ("file prestart+poststop (poststop 0.3 s later)", res["file settled"]),
                ("etcd prestart+poststop (poststop 0.3 s later)", res["etcd settled"])]
        img = self.bars("etcd.svg", "Lifecycle with the etcd lease store and the file store", rows)
        md = (f"One etcd member ({sh(etcd, '--version').stdout.decode().splitlines()[0]}) on 127.0.0.1 "
              f"of the testbed's host netns, its data on tmpfs; the hook reaches it through the v3 JSON "
              f"gateway on one HTTP/1.1 connection per run. Each round runs, in a random order, a "
              f"prestart+poststop with each store, and each again with poststop 0.3 s after the death "
              f"(so the kernel's teardown of the dead netns is out of the way). A prestart claims with "
              f"two round trips (a keys-only read of the network's prefix, one create transaction); a "
              f"release is one (a delete that compares the value), made by the poststop, which with "
              f"etcd waits (at most 1 s, without the lock) for the dying netns so that the cluster gets "
              f"the address at once.\n\n{self.table(rows)}\n\n"
              f"Paired ratio etcd / file, prestart+poststop: **{med:.2f}x** (p10-p90 "
              f"{quantile(rat, 0.1):.2f}-{quantile(rat, 0.9):.2f}); prestart alone "
              f"{statistics.median(pre):.2f}x; with the settled poststop {statistics.median(quiet):.2f}x. "
              f"The claim costs {claim * 1000:.2f} ms more than a lease file here. A real cluster adds "
              f"its network round trips and its disk's fsync to each. Peak RSS of one prestart ("
              f"{rss_method()}, median of 5): file store {statistics.median(rss['file'])} KiB, etcd store "
              f"{statistics.median(rss['etcd'])} KiB.\n\n{img}")
        self.sections.append(("Lease store: etcd against files", md))

    def cmp_noop(self):
        rounds = max(100, self.runs * 6)
        res = self.alternate({
            "hook": lambda r: {"hook": run([self.nsbypass, "hook", "createContainer"])[0]},
            "true": lambda r: {"true": run(["/bin/true"])[0]},
        }, rounds, warmup=5)
        noop_rss = [run([self.nsbypass, "hook", "createContainer"], rss=True)[1] for _ in range(5)]
        true_rss = [run(["/bin/true"], rss=True)[1] for _ in range(5)]
        floor = self.rss_floor()
        rat = ratios(res["hook"], res["true"])
        med = statistics.median(rat)
        ok = med <= 1.3
        self.goals.append(("no-op stage (`hook createContainer`) / `/bin/true` (paired)",
                           f"{med:.2f}x (p10-p90 {quantile(rat, 0.1):.2f}-{quantile(rat, 0.9):.2f})",
                           "<= 1.3x", ok))
        rows = [("nsbypass hook createContainer </dev/null", res["hook"]), ("/bin/true", res["true"])]
        img = self.bars("noop.svg", "No-op stage against /bin/true", rows)
        md = (f"{rounds} rounds, each running both in a random order.\n\n{self.table(rows)}\n\n"
              f"Peak RSS ({rss_method()}, medians of 5): the no-op stage {statistics.median(noop_rss)} KiB, "
              f"/bin/true {statistics.median(true_rss)} KiB{floor}.\n\n"
              f"Paired ratio: **{med:.2f}x**, p10-p90 {quantile(rat, 0.1):.2f}-{quantile(rat, 0.9):.2f}. "
              f"Goal <= 1.3x: {verdict(ok)}\n\n{img}")
        self.sections.append(("No-op stage against /bin/true", md))

    def rootfs(self):
        rootfs = f"{self.dir}/rootfs"
        if not os.path.exists(rootfs):
            os.makedirs(f"{rootfs}/bin")
            shutil.copy("/bin/busybox", f"{rootfs}/bin/busybox")
            os.symlink("busybox", f"{rootfs}/bin/true")
        return rootfs

    def cmp_runc(self):
        config = self.write_config()
        rootfs = self.rootfs()
        spec0 = f"{self.dir}/runc-spec"
        os.makedirs(spec0)
        sh("runc", "spec", "--bundle", spec0)
        with open(f"{spec0}/config.json") as f:
            spec = json.load(f)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["true"]
        spec["root"] = {"path": rootfs, "readonly": True}
        hook = lambda stage: {"path": self.nsbypass, "args": ["nsbypass", "--config", config, "hook", stage],
                              "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
        both = {"prestart": [hook("prestart")], "poststop": [hook("poststop")]}
        variants = {"runc run (no hooks)": ({}, {}),
                    "runc run (hooks, no request)": (both, {}),
                    "runc run (hooks, one network)": (both, {"nsbypass.io/network": "fast"})}
        sides = {}
        for i, (name, (hooks, annotations)) in enumerate(variants.items()):
            bundle = f"{self.dir}/runc-bundle{i}"
            os.makedirs(bundle)
            with open(f"{bundle}/config.json", "w") as f:
                json.dump({**spec, "hooks": hooks, "annotations": annotations}, f)
            sides[name] = (lambda n, b: lambda r: {n: run(["runc", "--root", f"{self.dir}/runc", "run",
                                                           "--bundle", b, f"bench{r}"])[0]})(name, bundle)
        res = self.alternate(sides, self.runs)
        rows = list(res.items())
        base = res["runc run (no hooks)"]
        lines = []
        for name in list(variants)[1:]:
            rat = ratios(res[name], base)
            lines.append(f"- {name} / no hooks: {statistics.median(rat):.3f} "
                         f"(p10-p90 {quantile(rat, 0.1):.3f}-{quantile(rat, 0.9):.3f})")
        img = self.bars("runc.svg", "runc run of busybox true", rows)
        md = (f"`runc run` of a busybox `true`, the three variants alternating.\n\n{self.table(rows)}\n\n"
              f"Paired ratios:\n" + "\n".join(lines) + f"\n\n{img}")
        self.sections.append(("runc with and without the hook", md))

    def cmp_podman(self):
        config = self.write_config()
        rootfs = self.rootfs()
        hooks, empty = f"{self.dir}/hooks.d", f"{self.dir}/no-hooks.d"
        os.makedirs(empty, exist_ok=True)
        sh(self.nsbypass, "--config", config, "install", "podman", "--hooks-dir", hooks, "--binary", self.nsbypass)
        base = ["podman", "--root", f"{self.dir}/podman/root", "--runroot", f"{self.dir}/podman/run",
                "--tmpdir", f"{self.dir}/podman/tmp", "--storage-driver", "vfs", "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--network-backend", "netavark", "--network-config-dir", f"{self.dir}/podman/net"]
        sh(*base, "network", "create", "-d", "macvlan", "-o", f"parent={self.parent}",
           "--subnet", "10.78.0.0/24", "benchnet")
        cmd = ["run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
        variants = {
            "podman run (--network none)": ["--hooks-dir", empty, "--network", "none"],
            "podman run (netavark macvlan)": ["--hooks-dir", empty, "--network", "benchnet"],
            "podman run (nsbypass macvlan)": ["--hooks-dir", hooks, "--network", "none",
                                              "--annotation", "nsbypass.io/network=fast"],
        }
        sides = {name: (lambda n, argv: lambda r: {n: run(argv)[0]})(name, base + cmd + extra + ["--rootfs", rootfs, "true"])
                 for name, extra in variants.items()}
        res = self.alternate(sides, self.runs, warmup=2)
        none = res["podman run (--network none)"]
        nsb = [a - b for a, b in zip(res["podman run (nsbypass macvlan)"], none)]
        nav = [a - b for a, b in zip(res["podman run (netavark macvlan)"], none)]
        m_nsb, m_nav = statistics.median(nsb), statistics.median(nav)
        ci_nsb, ci_nav = bootstrap_ci(nsb), bootstrap_ci(nav)
        ok = m_nsb <= 0.003 and m_nsb <= m_nav / 8
        self.goals.append(("`podman run --rm --rootfs DIR true`: added over `--network none`",
                           f"nsbypass {m_nsb * 1000:.1f} ms (95% CI {ci_nsb[0] * 1000:.1f}-{ci_nsb[1] * 1000:.1f}); "
                           f"netavark {m_nav * 1000:.1f} ms; 1/{m_nav / m_nsb:.1f} of it" if m_nsb > 0 else
                           f"nsbypass {m_nsb * 1000:.1f} ms; netavark {m_nav * 1000:.1f} ms",
                           "<= 3 ms and <= 1/8 of netavark's", ok))
        rows = list(res.items())
        img = self.bars("podman.svg", "podman run --rm --rootfs DIR true", rows)
        img2 = self.bars("podman-added.svg", "What a MACVLAN adds to podman --network none",
                         [("nsbypass hooks.d", nsb), ("netavark macvlan", nav)])
        md = (f"`podman run --rm --rootfs DIR true` (vfs storage, runc, cgroupfs), the three variants "
              f"alternating in a random order per round; added = variant - `--network none` of the same "
              f"round.\n\n{self.table(rows)}\n\n"
              f"| added over `--network none` | median ms | 95% CI (bootstrap) ms | p10 ms | p90 ms |\n"
              f"|---|---:|---:|---:|---:|\n"
              f"| nsbypass hooks.d | {m_nsb * 1000:.1f} | {ci_nsb[0] * 1000:.1f}-{ci_nsb[1] * 1000:.1f} | "
              f"{quantile(nsb, 0.1) * 1000:.1f} | {quantile(nsb, 0.9) * 1000:.1f} |\n"
              f"| netavark macvlan | {m_nav * 1000:.1f} | {ci_nav[0] * 1000:.1f}-{ci_nav[1] * 1000:.1f} | "
              f"{quantile(nav, 0.1) * 1000:.1f} | {quantile(nav, 0.9) * 1000:.1f} |\n\n"
              f"Goal <= 3 ms and <= 1/8 of netavark's ({m_nav / 8 * 1000:.1f} ms): {verdict(ok)}\n\n"
              f"{img}\n\n{img2}")
        self.sections.append(("podman: what the hook adds", md))

    def logged(self, ids):
        """The hook's own `elapsed_us` and `locked_us` of the prestarts of `ids`."""
        found = {}
        with open(f"{self.dir}/nsbypass.log") as f:
            for line in f:
                if "setup done" not in line:
                    continue
                fields = dict(t.split("=", 1) for t in line.split() if "=" in t)
                if fields.get("container") in ids:
                    found[fields["container"]] = (int(fields["elapsed_us"]), int(fields["locked_us"]))
        return [found[i] for i in ids if i in found]

    def cmp_concurrent(self):
        """PARALLEL prestarts at once against the same one after another.

        Every setup on a host serialises on the state lock; the kernel
        serialises most of what is done under it again on RTNL (creating the
        link, addresses, link-up). The batch ratio says how much of that
        survives: 1/PARALLEL would be perfect overlap, 1.0 none at all.
        """
        parallel = 8
        config = self.write_config()
        rounds = max(4, self.runs // 5)
        batch = {"one after another": [], "all at once": []}
        ids = {"one after another": [], "all at once": []}
        for r in range(rounds):
            order = list(batch)
            self.rng.shuffle(order)
            for how in order:
                inits = [self.container_init() for _ in range(parallel)]
                names = [f"cc{r}-{how[0]}{i}" for i in range(parallel)]
                argv = [self.nsbypass, "--config", config, "hook", "prestart"]
                start = time.perf_counter()
                if how == "all at once":
                    procs = []
                    for name, init in zip(names, inits):
                        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE)
                        procs.append((p, self.state(name, init.pid)))
                    for p, state in procs:
                        p.stdin.write(state)
                        p.stdin.close()
                    for p, _ in procs:
                        if p.wait() != 0:
                            raise BenchError(f"a concurrent prestart failed: {p.stderr.read().decode()[-300:]}")
                else:
                    for name, init in zip(names, inits):
                        run(argv, stdin=self.state(name, init.pid))
                batch[how].append(time.perf_counter() - start)
                ids[how] += names
                for name, init in zip(names, inits):
                    self.reap(init)
                    self.hook(config, "poststop", self.state(name, init.pid))
        rat = ratios(batch["all at once"], batch["one after another"])
        med = statistics.median(rat)
        seq = self.logged(ids["one after another"])
        share = statistics.median(l / e for e, l in seq) if seq else float("nan")
        locked = statistics.median(l for _, l in seq) / 1000 if seq else float("nan")
        rows = [(f"{parallel} prestarts {how}", xs) for how, xs in batch.items()]
        img = self.bars("concurrent.svg", f"{parallel} prestarts at once against one after another", rows)
        md = (f"{rounds} rounds, each running {parallel} prestarts (each into a fresh netns) one after "
              f"another and {parallel} at once, in a random order; times are whole batches.\n\n"
              f"{self.table(rows)}\n\n"
              f"Batch ratio at once / one after another (median of per-round ratios): **{med:.2f}** "
              f"(p10-p90 {quantile(rat, 0.1):.2f}-{quantile(rat, 0.9):.2f}; 1/{parallel} would be perfect "
              f"overlap, 1.0 none). The hook's own log, for the prestarts one after another: it holds the "
              f"state lock {locked:.2f} ms (median), {share:.0%} of its in-process time "
              f"(`locked_us` / `elapsed_us`).\n\n{img}")
        self.sections.append((f"{parallel} concurrent prestarts", md))

    def cmp_scale(self):
        levels = [10, 100, 500] if self.args.quick else [10, 100, 250, 500, 1000]
        k = max(10, self.runs // 2)
        config = self.write_config("scale.toml", "10.76.0.0/16", "10.76.0.10-10.76.15.250")
        live, curve, build = [], {}, {}
        start_all = time.perf_counter()
        for n in levels:
            t0 = time.perf_counter()
            while len(live) < n:
                init = self.container_init()
                self.hook(config, "prestart", self.state(f"live{len(live)}", init.pid))
                live.append(init)
            build[n] = time.perf_counter() - t0
            pre, post = [], []
            for i in range(k):
                p, q, _ = self.lifecycle(config, f"probe{n}-{i}")
                pre.append(p)
                post.append(q)
            curve[n] = (pre, post)
            for i in range(3):
                self.prestart_rss.append((n, self.lifecycle(config, f"rss{n}-{i}", rss=True)[2]))
        built_in = time.perf_counter() - start_all
        for init in live:
            self.reap(init)
        lo, hi = levels[0], (500 if 500 in curve else levels[-1])
        r = statistics.median(curve[hi][0]) / statistics.median(curve[lo][0])
        ci = ratio_of_medians_ci(curve[hi][0], curve[lo][0])
        ok = r <= 1.3
        self.goals.append((f"prestart with {hi} live attachments on one parent / with {lo}",
                           f"{r:.2f}x (95% CI {ci[0]:.2f}-{ci[1]:.2f})", "<= 1.3x", ok))
        series = {name: [(n, statistics.median(curve[n][j]) * 1000, quantile(curve[n][j], 0.1) * 1000,
                          quantile(curve[n][j], 0.9) * 1000) for n in levels]
                  for j, name in enumerate(("prestart", "poststop"))}
        self.svgs["scale.svg"] = svg_lines("Prestart and poststop against live attachments on one parent",
                                           "live attachments on the parent", "ms", series,
                                           "medians, p10-p90 whiskers")
        lines = ["| live attachments | prestart median ms | p10 | p90 | poststop median ms | p10 | p90 | "
                 "time to add the live set s |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in levels:
            p, q = curve[n]
            lines.append(f"| {n} | {statistics.median(p) * 1000:.2f} | {quantile(p, 0.1) * 1000:.2f} | "
                         f"{quantile(p, 0.9) * 1000:.2f} | {statistics.median(q) * 1000:.2f} | "
                         f"{quantile(q, 0.1) * 1000:.2f} | {quantile(q, 0.9) * 1000:.2f} | {build[n]:.1f} |")
        md = (f"N sleepers, each in its own netns and wired by `hook prestart` (sequentially) to one veth "
              f"parent, stay alive; at each level {k} more containers run prestart, then (killed) poststop. "
              f"The live set grows from one level to the next (the last column: the time to add it, "
              f"{built_in:.0f} s in all with the probes; {levels[-1]} MACVLANs on one veth parent work "
              f"on this kernel). The levels cannot alternate, so the ratio is of medians with a "
              f"bootstrap CI.\n\n" + "\n".join(lines) +
              f"\n\nprestart at {hi} / at {lo}: **{r:.2f}x** (95% CI {ci[0]:.2f}-{ci[1]:.2f}). "
              f"Goal <= 1.3x: {verdict(ok)}\n\n![scale](perf/scale.svg)")
        self.sections.append(("Scale: prestart against live attachments", md))

    def rss_floor(self):
        """What the measurement alone reads: a static no-op under the launcher."""
        if not RSS_TOOLS:
            return ""
        kib = statistics.median(run([RSS_TOOLS[1]], rss=True)[1] for _ in range(5))
        return f"; a static no-op program reads {kib:.0f} KiB the same way"

    def cmp_rss(self):
        config = self.write_config()
        for i in range(self.runs):
            self.prestart_rss.append((0, self.lifecycle(config, f"rss{i}", rss=True)[2]))
        kib = [k for _, k in self.prestart_rss]
        by_level = {}
        for n, k in self.prestart_rss:
            by_level.setdefault(n, []).append(k)
        m, top = statistics.median(kib), max(kib)
        ok = top <= 4096
        self.goals.append(("peak RSS of one prestart (max over every measured prestart)",
                           f"max {top / 1024:.2f} MiB (median {m / 1024:.2f})", "<= 4 MB", ok))
        self.svgs["rss.svg"] = svg_bars("Peak RSS of one prestart", "MiB", [
            ("nsbypass hook prestart", m / 1024, quantile(kib, 0.1) / 1024, top / 1024),
            ("goal", 4.0, None, None)], "median; whisker p10 to max")
        levels = "\n".join(f"| {n or 'none (empty state)'} | {statistics.median(v):.0f} | {max(v)} | {len(v)} |"
                           for n, v in sorted(by_level.items()))
        md = (f"Peak RSS by {rss_method()} of {len(kib)} prestarts: {self.runs} with no other "
              f"attachment, 3 at each level of the scale run{self.rss_floor()}.\n\n"
              f"| live attachments | median KiB | max KiB | prestarts |\n|---|---:|---:|---:|\n{levels}\n\n"
              f"Over all: median {m:.0f} KiB, p90 {quantile(kib, 0.9):.0f} KiB, max {top} KiB.\n\n"
              f"Goal <= 4 MB (4096 KiB) for the max: {verdict(ok)}\n\n![rss](perf/rss.svg)")
        self.sections.append(("Peak RSS of one prestart", md))

    # -- data path --------------------------------------------------------------

    def dp_ns(self, *names):
        for n in names:
            self.netns_add(f"{TAG}-d{n}")
        return [f"{TAG}-d{n}" for n in names]

    def dp_macvlan(self, mode):
        a, b, p, w = self.dp_ns("a", "b", "p", "w")
        sh("ip", "-n", p, "link", "add", "p0", "type", "veth", "peer", "name", "w0", "netns", w)
        sh("ip", "-n", p, "link", "set", "p0", "up")
        sh("ip", "-n", w, "link", "set", "w0", "up")
        for ns, dev, addr in ((a, "m1", "10.98.0.1"), (b, "m2", "10.98.0.2")):
            sh("ip", "-n", p, "link", "add", "link", "p0", "name", dev, "type", "macvlan", "mode", mode)
            sh("ip", "-n", p, "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        if mode == "vepa":
            # A 802.1Qbg-style switch: a Linux bridge whose port to the
            # parent reflects frames back (hairpin).
            sh("ip", "-n", w, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", w, "link", "set", "w0", "master", "br0")
            sh("ip", "-n", w, "link", "set", "dev", "w0", "type", "bridge_slave", "hairpin", "on")
            sh("ip", "-n", w, "link", "set", "br0", "up")
        if mode == "private":
            sh("ip", "-n", w, "addr", "add", "10.98.0.3/24", "dev", "w0")
            self.private_blocked = not self.dp_rtt(a, b, "10.98.0.2", 1)
            return a, w, "10.98.0.3"
        return a, b, "10.98.0.2"

    def dp_bridge(self):
        a, b, s = self.dp_ns("a", "b", "s")
        sh("ip", "-n", s, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", s, "link", "set", "br0", "up")
        for ns, dev, addr in ((a, "a0", "10.98.0.1"), (b, "b0", "10.98.0.2")):
            sh("ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", f"s{dev}", "netns", s)
            sh("ip", "-n", s, "link", "set", f"s{dev}", "master", "br0")
            sh("ip", "-n", s, "link", "set", f"s{dev}", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        return a, b, "10.98.0.2"

    def dp_veth(self):
        a, b = self.dp_ns("a", "b")
        sh("ip", "-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b)
        for ns, dev, addr in ((a, "a0", "10.98.0.1"), (b, "b0", "10.98.0.2")):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        return a, b, "10.98.0.2"

    def dp_rtt(self, client, server, ip, secs):
        """sockperf UDP ping-pong client -> server; {} if nothing came back."""
        srv = self.spawn(["ip", "netns", "exec", server, "sockperf", "server", "-i", ip, "-p", "11111"])
        try:
            time.sleep(0.3)
            out = subprocess.run(["ip", "netns", "exec", client, "sockperf", "ping-pong", "-i", ip,
                                  "-p", "11111", "-t", str(secs), "--full-rtt"],
                                 capture_output=True, timeout=secs + 20)
        finally:
            self.reap(srv)
        lat = parse_sockperf(out.stdout.decode() + out.stderr.decode())
        return lat if "p50" in lat else {}

    def dp_measure(self, client, server, ip, secs):
        lat = self.dp_rtt(client, server, ip, secs)
        if not lat:
            raise BenchError(f"data path {client} -> {server} {ip}: no UDP round trips")
        srv = self.spawn(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", ip, "-p", "5201"])
        time.sleep(0.3)
        out = sh("ip", "netns", "exec", client, "iperf3", "-c", ip, "-p", "5201", "-t", str(secs),
                 "-P", "1", "-J")
        self.reap(srv)
        j = json.loads(out.stdout)
        gbit = j["end"]["sum_received"]["bits_per_second"] / 1e9
        intervals = [iv["sum"]["bits_per_second"] / 1e9 for iv in j["intervals"]]
        return lat, gbit, intervals

    def ipvlan_probe(self):
        (ns,) = self.dp_ns("v")
        sh("ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        out = sh("ip", "-n", ns, "link", "add", "link", "v0", "name", "iv0", "type", "ipvlan", "mode", "l2",
                 check=False)
        self.netns_del(ns)
        if out.returncode == 0:
            return "IPVLAN can be made on this kernel (`ip link add link v0 name iv0 type ipvlan mode l2` succeeded)."
        return (f"IPVLAN cannot be made on this kernel: `ip link add link v0 name iv0 type ipvlan mode l2` "
                f"in a throwaway namespace fails with `{out.stderr.decode().strip()}` (exit {out.returncode}).")

    def cmp_datapath(self):
        secs = 1 if self.args.quick else 4
        setups = [
            ("MACVLAN bridge, child to child", lambda: self.dp_macvlan("bridge")),
            ("MACVLAN private, child to the parent's wire peer", lambda: self.dp_macvlan("private")),
            ("MACVLAN vepa, child to child through a hairpin bridge", lambda: self.dp_macvlan("vepa")),
            ("veth + Linux bridge", self.dp_bridge),
            ("veth pair", self.dp_veth),
        ]
        results = []
        for name, make in setups:
            made_before = list(self.namespaces)
            client, server, ip = make()
            lat, gbit, iv = self.dp_measure(client, server, ip, secs)
            results.append((name, lat, gbit, iv))
            for ns in [n for n in self.namespaces if n not in made_before]:
                self.netns_del(ns)
        ipvlan = self.ipvlan_probe()
        lines = ["| path | UDP RTT p50 us | p90 us | p99 us | TCP Gbit/s | per-second p10-p90 Gbit/s |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name, lat, gbit, iv in results:
            spread = f"{quantile(iv, 0.1):.2f}-{quantile(iv, 0.9):.2f}" if len(iv) > 1 else "-"
            lines.append(f"| {name} | {lat.get('p50', float('nan')):.1f} | {lat.get('p90', float('nan')):.1f} | "
                         f"{lat.get('p99', float('nan')):.1f} | {gbit:.2f} | {spread} |")
        self.svgs["datapath-rtt.svg"] = svg_bars("UDP round trip (sockperf ping-pong)", "microseconds", [
            (name, lat["p50"], lat["p25"], lat["p99"]) for name, lat, _, _ in results],
            "bar: p50; whisker: p25 to p99")
        self.svgs["datapath-tcp.svg"] = svg_bars("TCP throughput (iperf3, one stream)", "Gbit/s", [
            (name, gbit, quantile(iv, 0.1), quantile(iv, 0.9)) for name, _, gbit, iv in results],
            "bar: whole run; whisker: p10-p90 of 1 s intervals")
        blocked = getattr(self, "private_blocked", None)
        md = (f"A finding, not a target. Two namespaces, sockperf UDP ping-pong for {secs} s (full round "
              f"trips, default 64-byte messages) and iperf3 TCP for {secs} s with one stream (-P1), both "
              f"machine-local and CPU-bound (the 2 cores carry sender, receiver and the kernel's "
              f"forwarding):\n\n" + "\n".join(lines) + "\n\n"
              f"- MACVLAN children hang off a veth whose peer sits in a third namespace (the \"wire\").\n"
              f"- Bridge mode: child-to-child frames turn round inside the macvlan driver and never "
              f"touch the parent.\n"
              f"- Private mode blocks child to child (a UDP ping-pong between the two children "
              f"{'failed, as it should' if blocked else 'did NOT fail'}); measured instead: a child "
              f"to an address on the wire peer, through the parent.\n"
              f"- VEPA sends child-to-child frames out of the parent and needs the switch to send them "
              f"back; measured with a Linux bridge on the wire side whose port has hairpin on.\n"
              f"- {ipvlan}\n\n![rtt](perf/datapath-rtt.svg)\n\n![tcp](perf/datapath-tcp.svg)")
        self.sections.append(("Data path", md))

    def cmp_guard(self):
        """The address guard: what it adds to prestart (paired against the
        same config with guard = false), and the data path with and without
        it, off the host (both filters) and between two children (the one
        in the namespace)."""
        on = self.write_config("guard-on.toml")
        off = self.write_config("guard-off.toml", extra="guard = false\n")
        n = self.args.runs

        def side(config, tag):
            def go(r):
                pre, post, _ = self.lifecycle(config, f"{tag}{r}")
                return {f"{tag} prestart": pre, f"{tag} poststop": post}
            return go

        res = self.alternate({"on": side(on, "guarded"), "off": side(off, "unguarded")}, n)
        pre = ratios(res["guarded prestart"], res["unguarded prestart"])
        added = statistics.median(res["guarded prestart"]) - statistics.median(res["unguarded prestart"])
        lo, hi = ratio_of_medians_ci(res["guarded prestart"], res["unguarded prestart"])
        self.goals.append(("prestart with the address guard / without (paired)",
                           f"{statistics.median(pre):.2f}x, +{added * 1000:.2f} ms", "none set", None))

        # The data path: two children per side on the testbed's parent,
        # attached by nsbypass itself, and the wire peer with an address in
        # each side's subnet.
        secs = 1 if self.args.quick else 4
        wire = f"{TAG}w"
        paths = {}
        for label, config, subnet, extra in (
                ("with the guard", "dp-on.toml", "10.95.0", ""),
                ("without", "dp-off.toml", "10.96.0", "guard = false\n")):
            cfg = self.write_config(config, subnet=f"{subnet}.0/24", rng=f"{subnet}.10-{subnet}.20",
                                    extra=extra)
            sh("ip", "-n", self.peer, "addr", "add", f"{subnet}.1/24", "dev", wire)
            names = []
            for who in ("a", "b"):
                ns = f"{TAG}-g{'n' if not extra else 'f'}{who}"
                self.netns_add(ns)
                run([self.nsbypass, "--config", cfg, "attach", "--netns", f"/run/netns/{ns}",
                     "--id", ns, "--network", "fast"])
                names.append(ns)
            b_ip = json.loads(sh("ip", "-n", names[1], "-j", "-4", "addr", "show", "dev", "net1")
                              .stdout)[0]["addr_info"][0]["local"]
            paths[label] = {"to the wire peer (both filters)": (names[0], self.peer, f"{subnet}.1"),
                            "child to child (the namespace's filter)": (names[0], names[1], b_ip)}
        rounds = 1 if self.args.quick else 3
        got = {}
        for r in range(rounds):
            order = list(paths.items())
            self.rng.shuffle(order)
            for label, ways in order:
                for way, (client, server, ip) in ways.items():
                    lat, gbit, _ = self.dp_measure(client, server, ip, secs)
                    got.setdefault((way, label), []).append((lat, gbit))
        lines = ["| path | guard | UDP RTT p50 us | p99 us | TCP Gbit/s |", "|---|---|---:|---:|---:|"]
        for (way, label), xs in sorted(got.items()):
            p50 = statistics.median(l["p50"] for l, _ in xs)
            p99 = statistics.median(l["p99"] for l, _ in xs)
            gbit = statistics.median(g for _, g in xs)
            lines.append(f"| {way} | {label} | {p50:.1f} | {p99:.1f} | {gbit:.2f} |")
        for label in paths:
            for ns in [n for n in list(self.namespaces) if n.startswith(f"{TAG}-g")]:
                self.netns_del(ns)
        rows = [("with the guard", res["guarded prestart"]), ("guard = false", res["unguarded prestart"])]
        img = self.bars("guard.svg", "Prestart with and without the address guard", rows)
        md = (f"Prestart of one link with `guard = true` and with `guard = false`, otherwise the same "
              f"config, {n} rounds in a random order per round:\n\n{self.table(rows)}\n\n"
              f"Paired ratio guarded / unguarded: **{statistics.median(pre):.2f}x** (ratio of medians "
              f"{statistics.median(res['guarded prestart']) / statistics.median(res['unguarded prestart']):.2f}, "
              f"95% CI {lo:.2f}-{hi:.2f}); the guard adds {added * 1000:.2f} ms: one nftables batch in the "
              f"container's namespace (its table, chain and rules) and one on the parent (the link's set "
              f"elements; the parent's table is made by the first guarded link only).\n\n"
              f"Data path, sockperf UDP ping-pong and iperf3 TCP (one stream) for {secs} s each, "
              f"{rounds} round(s) alternating the sides in a random order, medians over the rounds. Each "
              f"side is two children attached by nsbypass on the testbed's parent and the wire peer; "
              f"\"to the wire peer\" passes the link's filter and the parent's, \"child to child\" (bridge "
              f"mode) only the link's:\n\n" + "\n".join(lines) + f"\n\n{img}")
        self.sections.append(("Address guard: what it costs", md))

    # -- the report -------------------------------------------------------------

    def write(self, output, started, began_load, duration):
        outdir = os.path.dirname(os.path.abspath(output))
        perf = os.path.join(outdir, "perf")
        os.makedirs(perf, exist_ok=True)
        for f in os.listdir(perf):
            if f.endswith(".svg") and f not in self.svgs:
                os.remove(os.path.join(perf, f))
        for name, text in self.svgs.items():
            with open(os.path.join(perf, name), "w") as f:
                f.write(text)
        m = machine()
        end_load = loadavg()
        binary = self.nsbypass
        filed = sh("file", "-b", binary, check=False).stdout.decode().strip()
        linkage = "static" if "static" in filed else "dynamic"
        commit = sh("git", "-C", ROOT, "describe", "--always", "--dirty", "--abbrev=12", check=False).stdout.decode().strip()
        argv = " ".join(["scripts/bench.py"] + sys.argv[1:])
        out = [
            "# Performance",
            "",
            f"Written by `{argv}` (`scripts/bench.py` is the one command: it runs the whole suite and "
            f"rewrites this file and `docs/perf/*.svg`; `scripts/bench.py --selftest` checks its "
            f"statistics and SVG code). This is the latest run{' (--quick: fewer runs and levels)' if self.args.quick else ''}.",
            "",
            "| | |",
            "|---|---|",
            f"| date | {started.strftime('%Y-%m-%d %H:%M UTC')} |",
            f"| CPU | {m['cpu']}, {m['cores']} cores |",
            f"| RAM | {m['ram']} |",
            f"| kernel | `{os.uname().release}` |",
            f"| build measured | `{binary}`: {linkage}, {os.path.getsize(binary) / 1e6:.1f} MB, source tree "
            f"`{commit}` |",
            f"| `file` | {filed} |",
            f"| load average (1, 5, 15 min) | start {began_load}; end {end_load} (shared machine: other "
            f"builds may run) |",
            f"| runs per comparison | {self.runs} (no-op: {max(100, self.runs * 6)}) |",
            f"| duration | {duration:.0f} s |",
            "",
            "## Goals",
            "",
            "| comparison | figure | goal | result |",
            "|---|---|---|---|",
        ]
        for comp, figure, goal, ok in self.goals:
            out.append(f"| {comp} | {figure} | {goal} | {verdict(ok)} |")
        out += ["", "Medians throughout; spread is p10-p90; a paired ratio is the median of per-round "
                "ratios, each round running every side once in a random order. Times are wall times of "
                "whole processes (fork to wait4) from a Python driver.", ""]
        for heading, md in self.sections:
            out += [f"## {heading}", "", md, ""]
        with open(output, "w") as f:
            f.write("\n".join(out))
        return "\n".join(out)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {"cpu": cpu, "cores": os.cpu_count(), "ram": ram}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, help="rounds per comparison (default 100; 12 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 2 minutes")
    parser.add_argument("--output", default=f"{ROOT}/docs/PERFORMANCE.md")
    parser.add_argument("--seed", type=int, default=10, help="seed of the per-round order")
    parser.add_argument("--only", help="comma-separated subset: "
                        "lifecycle,noop,runc,concurrent,etcd,podman,datapath,guard,scale,rss")
    target = os.environ.get("CARGO_TARGET_DIR", f"{ROOT}/target")
    parser.add_argument("--nsbypass", default=f"{target}/{TARGET}/release/nsbypass",
                        help="the hook binary (default: what scripts/build-release.sh builds)")
    parser.add_argument("--selftest", action="store_true", help="test the statistics and SVG code, then exit")
    args = parser.parse_args()
    if args.selftest:
        selftest()
        return
    if args.runs is None:
        args.runs = 12 if args.quick else 100
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates network namespaces)")
    args.nsbypass = os.path.abspath(args.nsbypass)
    for tool in (args.nsbypass, f"{CNI}/macvlan", shutil.which("runc"), shutil.which("sockperf"),
                 shutil.which("iperf3")):
        if not tool or not os.path.exists(tool):
            sys.exit(f"bench: missing {tool}; run scripts/setup.sh and scripts/build-release.sh")
    only = set(args.only.split(",")) if args.only else None
    want = lambda name: only is None or name in only
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, began_load, t0 = datetime.datetime.now(datetime.timezone.utc), loadavg(), time.perf_counter()
    bench = Bench(args)
    global RSS_TOOLS
    RSS_TOOLS = build_rss_tools(bench.dir)
    if not RSS_TOOLS:
        print("bench: no gcc here; peak RSS is measured under GNU time", file=sys.stderr)
    try:
        bench.open()
        steps = [("lifecycle", bench.cmp_lifecycle), ("noop", bench.cmp_noop), ("runc", bench.cmp_runc),
                 ("concurrent", bench.cmp_concurrent)]
        if shutil.which("etcd"):
            steps.append(("etcd", bench.cmp_etcd))
        else:
            print("bench: no etcd here (apt-get install etcd-server); skipping the etcd comparison",
                  file=sys.stderr)
        if shutil.which("podman") and os.path.exists("/usr/lib/podman/netavark"):
            steps.append(("podman", bench.cmp_podman))
        else:
            print("bench: no podman with netavark here; skipping the podman comparison", file=sys.stderr)
        # The data path before the scale run: a thousand namespaces going
        # away keep the kernel busy for a while.
        steps += [("datapath", bench.cmp_datapath), ("guard", bench.cmp_guard), ("scale", bench.cmp_scale)]
        for name, step in steps:
            if want(name):
                t = time.perf_counter()
                step()
                print(f"bench: {name} done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        if want("rss"):
            bench.cmp_rss()
    except BenchError as e:
        sys.exit(f"bench: {e}")
    finally:
        bench.close()
    text = bench.write(args.output, started, began_load, time.perf_counter() - t0)
    goals = text.split("## Goals", 1)[1].split("\n\n")[1]
    print(goals)
    print(f"bench: wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
