#!/usr/bin/env python3
"""Core benchmark: hashing throughput, push/pull throughput over loopback for a
1 GiB tree of mixed file sizes, and the peak memory of pulling one 1 GiB file
(whole, and as a delta against an older version).

    python3 bench/core.py [--dir DIR] [--runs N] [--scale 1.0]

Builds the release binary, starts a real mirror on 127.0.0.1, and drives the
real `cachesync` commands; peak RSS comes from /usr/bin/time (GNU time, from
Debian's `time` package, installed here if missing). Prints medians of N runs.
Figures are from whatever machine runs this: compare ratios, not absolutes.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "cachesync"
MiB = 1 << 20


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_gnu_time():
    if Path("/usr/bin/time").exists():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    sh(*sudo, "apt-get", "update", "-qq")
    sh(*sudo, "apt-get", "install", "-y", "-qq", "time")


def write_random(path: Path, size: int, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


def write_text(path: Path, size: int, seed: int):
    """Compressible content, like object files and indexes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"func handler{seed}(w http.ResponseWriter, r *http.Request) {{ return nil }} // {seed}\n".encode()
    data = (line * (size // len(line) + 1))[:size]
    path.write_bytes(data)


def make_tree(root: Path, scale: float) -> int:
    """About 1 GiB: 4 large files, 64 medium, 2,000 small, 20,000 tiny; half random, half text."""
    if root.exists():
        shutil.rmtree(root)
    total = 0
    plan = [(4, 128 * MiB, "large"), (64, 4 * MiB, "medium"), (2000, 64 << 10, "small"), (20000, 4 << 10, "tiny")]
    for count, size, name in plan:
        count = max(1, int(count * scale))
        for i in range(count):
            path = root / name / f"d{i % 50:02}" / f"f{i}.bin"
            (write_random if i % 2 else write_text)(path, size, i)
            total += size
    return total


class Mirror:
    def __init__(self, store: Path, log: Path):
        self.log = open(log, "w+")
        self.proc = subprocess.Popen([str(BIN), "mirror", "--listen", "127.0.0.1:0", "--store", str(store)],
                                     stderr=self.log, env={**os.environ, "NO_COLOR": "1"})
        deadline = time.time() + 30
        while time.time() < deadline:
            self.log.seek(0)
            m = re.search(r"addr=(127\.0\.0\.1:\d+)", self.log.read())
            if m:
                self.url = "http://" + m.group(1)
                return
            time.sleep(0.05)
        raise RuntimeError("mirror did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0


def timed(args, env):
    """Runs a cachesync command under GNU time; returns (json report, wall s, peak RSS MiB, cpu s)."""
    fmt = "TIME %e %M %U %S"
    out = subprocess.run(["/usr/bin/time", "-f", fmt, str(BIN), *args, "--json"], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{args}: {out.stderr}")
    m = re.search(r"TIME ([\d.]+) (\d+) ([\d.]+) ([\d.]+)", out.stderr)
    wall, rss, user, system = float(m[1]), int(m[2]) / 1024, float(m[3]), float(m[4])
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report, wall, rss, user + system


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/cachesync-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="tree size factor (1.0 is about 1 GiB)")
    args = ap.parse_args()
    ensure_gnu_time()
    sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    # Fresh directories for every run, removed at the end: ext4 slows down
    # inode allocation right after a large tree was deleted in the same place.
    work = base / f"run-{os.getpid()}"
    work.mkdir()
    try:
        measure(args, base, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, base: Path, work: Path):
    env = {**os.environ, "NO_COLOR": "1", "XDG_STATE_HOME": str(work / "state")}

    tree = base / f"tree-{args.scale}"
    if not (tree / ".complete").exists():
        print(f"building the tree in {tree} ...", file=sys.stderr)
        make_tree(tree, args.scale)
        (tree / ".complete").write_text("")
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    files = sum(1 for _ in tree.rglob("*") if _.is_file())

    # Hashing: a scan with no hash cache reads and hashes every byte (from the page cache).
    scans = []
    for _ in range(args.runs):
        out = subprocess.run([str(BIN), "scan", "--json", str(tree)], capture_output=True, text=True, check=True)
        scans.append(json.loads(out.stdout)["hash_gb_per_s"])

    pushes, pulls = [], []
    for run in range(args.runs):
        env["XDG_STATE_HOME"] = str(work / f"state-{run}")
        mirror = Mirror(work / f"store-{run}", work / "mirror.log")
        try:
            rep, wall, rss, cpu = timed(["push", "--mirror", mirror.url, "--key", "bench/tree", str(tree)], env)
            pushes.append((size / wall / 1e6, rep["bytes_sent"], rss, cpu))
            rep, wall, rss, cpu = timed(["pull", "--mirror", mirror.url, "--key", "bench/tree", str(work / f"pulled-{run}")], env)
            pulls.append((size / wall / 1e6, rep["bytes_received"], rss, cpu))
        finally:
            mirror.stop()

    # One 1 GiB file: peak memory of pulling it whole, then as a delta.
    big = work / "big"
    write_random(big / "one.bin", 1024 * MiB, 1)
    env["XDG_STATE_HOME"] = str(work / "state-big")
    mirror = Mirror(work / "store-big", work / "mirror.log")
    try:
        timed(["push", "--mirror", mirror.url, "--key", "bench/big", str(big)], env)
        _, whole_wall, whole_rss, _ = timed(["pull", "--mirror", mirror.url, "--key", "bench/big", str(work / "pulled-big")], env)
        with open(big / "one.bin", "r+b") as f:  # 64 scattered 16 KiB changes (~0.1%)
            for i in range(64):
                f.seek(i * 16 * MiB + 4096)
                f.write(os.urandom(16 << 10))
        _, dpush_wall, dpush_rss, _ = timed(["push", "--mirror", mirror.url, "--key", "bench/big", str(big)], env)
        rep, delta_wall, delta_rss, _ = timed(["pull", "--mirror", mirror.url, "--key", "bench/big", str(work / "pulled-big")], env)
        delta_received = rep["bytes_received"]
        mirror_rss = mirror.rss_kib() / 1024
    finally:
        mirror.stop()

    print(f"\ncachesync core benchmark: {files} files, {size / MiB:.0f} MiB, {args.runs} runs, medians; "
          f"{os.cpu_count()} cores")
    print(f"| measure | result |\n| --- | --- |")
    print(f"| hashing (scan, no hash cache, page cache warm) | {median(scans):.2f} GB/s |")
    print(f"| push, empty mirror, loopback | {median(p[0] for p in pushes):.0f} MB/s, "
          f"{median(p[1] for p in pushes) / size:.2f} × tree on the wire, peak RSS {median(p[2] for p in pushes):.0f} MiB, "
          f"CPU {median(p[3] for p in pushes):.1f} s |")
    print(f"| pull into an empty dir, loopback | {median(p[0] for p in pulls):.0f} MB/s, "
          f"{median(p[1] for p in pulls) / size:.2f} × tree on the wire, peak RSS {median(p[2] for p in pulls):.0f} MiB, "
          f"CPU {median(p[3] for p in pulls):.1f} s |")
    print(f"| pull one 1 GiB file whole | {1024 / whole_wall:.0f} MiB/s, peak RSS {whole_rss:.0f} MiB |")
    print(f"| push 1 GiB file, 0.1% changed (delta) | {dpush_wall:.1f} s, peak RSS {dpush_rss:.0f} MiB |")
    print(f"| pull 1 GiB file, 0.1% changed (delta) | {delta_wall:.1f} s, {delta_received / MiB:.1f} MiB received, "
          f"peak RSS {delta_rss:.0f} MiB |")
    print(f"| mirror peak RSS over the 1 GiB runs | {mirror_rss:.0f} MiB |")


if __name__ == "__main__":
    main()
