#!/usr/bin/env python3
"""cachesync against rsync (daemon over TCP) and tar + zstd, on the same data,
in the same run:

    python3 bench/compare.py [--runs 3] [--scale 1.0] [--dir DIR] [--no-build]

1. initial sync of a Go module cache (restore.py's generator at 1.75 × its
   scale: ~19,500 files, ~335 MiB at --scale 1.0) into an empty destination,
   both directions: push (client tree -> server: `cachesync push` to a mirror,
   `rsync -a tree/ rsync://127.0.0.1:P/mod/dst/`) and pull (server -> empty
   client directory: `cachesync pull`, `rsync -a rsync://.../mod/tree/ dst/`);
2. a no-op sync of the same tree (push: the CI job's save at the end; pull: a
   node refreshing), both directions;
3. one new module version (~100 files: github.com/google/go-cmp v0.7.0, 70%
   of its files shared with v0.6.0) added to the tree, then synced, both
   directions; rsync plain and with --fuzzy;
4. a 256 MiB file (× --scale, at least 16 MiB) with 64 scattered 4 KiB
   changes, delta-synced both directions (rsync --no-whole-file);
5. the tree of 1. restored into an empty directory from a local tar + zstd
   archive made as actions/cache makes it, against 1.'s `cachesync pull`.

cachesync runs with its default settings, profile go-mod-trees for the module
cache (the whole tree, as rsync and tar move it; go-mod would sync only
cache/download) and generic for the 256 MiB file (the go-mod profiles never
delta-encode), NO_COLOR=1, one XDG_STATE_HOME for the CI job (pushes) and
one for the node (pulls) per run, so hash caches are warm as in use. rsync: `-a`, no compression (none asked for),
Debian's rsync, a daemon with its own rsyncd.conf on 127.0.0.1.

Measured per transfer: wall (perf_counter around the client), client CPU
(user+sys) and peak RSS (GNU time, children included), server CPU and peak RSS
(mirror: /proc/<pid>/stat delta and VmHWM reset through clear_refs; rsync: a
daemon per transfer under GNU time, which counts the children it forked for the
connection once they are reaped). Bytes on the wire: every transfer is run once
more, in a separate last pass, through a byte-counting TCP proxy on 127.0.0.1
that adds up the payload read from both sides; that pass's times are discarded.
Nothing is compressed between cachesync and a loopback peer, so that pass
also counts 1. once through a proxy on this machine's outside address.
Every run has fresh destinations and a fresh mirror; no tree is deleted before
the last timed run ends, only the ~100 files of 3.'s module version and the
four copies of the big file (ext4 slows inode allocation for minutes after
many inodes are freed). Figures are medians over --runs;
the tool order within each step alternates between runs.

The floor: in every timed run, bench/land.rs lands the tree of 1. into an
empty directory from memory with 2 and then 4 writer threads, nothing else
done (no network, no hashing, no modes or times), then runs one syncfs; then
the same with each distinct content once, named by its blake3 as a mirror's
store keeps blobs. The report sets the faster medians against scenario 1's
targets: all files against the pull's, distinct contents made durable
against the push's.
"""

import argparse
import filecmp
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import restore  # noqa: E402
from compare_net import ByteProxy, RsyncDaemon, ServerMeter, ensure_rsync, outside_address  # noqa: E402
from compare_report import Sample, print_report  # noqa: E402
from core import BIN, ROOT, Mirror, sh  # noqa: E402
from restore import make_modcache, meta, rm, timed  # noqa: E402

MiB = 1 << 20
LAND = ROOT / "target" / "release" / "examples" / "land"
TREE_SCALE = 1.75  # restore.py's generator: ~11,300 files and 191 MiB at 1.0
NEW_MOD, NEW_VER = "github.com/google/go-cmp", "v0.7.0"
PROFILE = "go-mod-trees"  # the whole tree, as rsync and tar move it (go-mod syncs cache/download only)


class Ctx:
    """What all passes share: the tree, the archive, the big file, the rsync daemon."""

    def __init__(self, args, base: Path, work: Path):
        self.args, self.base, self.work = args, base, work
        self.tree_scale = round(TREE_SCALE * args.scale, 4)
        self.tree = base / f"gomod2-{self.tree_scale}"
        self.big_mib = max(16, int(256 * args.scale))
        self.big = base / f"compare-big-{self.big_mib}m.bin"
        self.rsyncd = RsyncDaemon(base, work)
        self.rs_proxy = ByteProxy(self.rsyncd.port)
        self.samples, self.counted, self.outside = {}, {}, {}
        self.floor = {}  # (mode, writer threads) -> [(write s, syncfs s, CPU s)], from bench/land.rs

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.base))


def prepare(ctx: Ctx):
    if not (ctx.base / f"gomod2-{ctx.tree_scale}.done").exists():  # the same cache as restore.py's
        print(f"building the module cache in {ctx.tree} ...", file=sys.stderr)
        rm(ctx.tree)
        make_modcache(ctx.tree, ctx.tree_scale)
        (ctx.base / f"gomod2-{ctx.tree_scale}.done").write_text("")
    if version_paths(ctx)[1].exists():
        remove_version(ctx)  # left behind by an interrupted run
    dl, top = version_paths(ctx)  # adding and removing the version must leave these as they were
    ctx.touched = {path: os.stat(path) for path in (dl, dl / "list", top.parent)}
    if not ctx.big.exists():
        tmp = ctx.big.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(ctx.big_mib):
                f.write(os.urandom(MiB))
        tmp.rename(ctx.big)
    ctx.archive = ctx.work / "cache.tzst"
    t0 = time.perf_counter()
    sh("sh", "-c", f"tar --posix -cf - -C '{ctx.tree}' . | zstd -q -T0 --long=30 -o '{ctx.archive}'")
    ctx.archive_s = time.perf_counter() - t0
    ctx.meta = meta(ctx.tree)


def version_paths(ctx: Ctx):
    dl = ctx.tree / "cache" / "download" / restore.escape(NEW_MOD) / "@v"
    return dl, ctx.tree / f"{restore.escape(NEW_MOD)}@{NEW_VER}"


def add_version(ctx: Ctx):
    """Writes NEW_MOD@NEW_VER as `go mod download` would, with restore.py's generator."""
    mod, versions, nfiles, td_mib = next(m for m in restore.MODULES if m[0] == NEW_MOD)
    saved = restore.MODULES
    restore.MODULES = [(mod, [NEW_VER], nfiles, td_mib)]
    try:
        make_modcache(ctx.tree, ctx.tree_scale)
    finally:
        restore.MODULES = saved
    dl, _ = version_paths(ctx)
    (dl / "list").write_text("".join(v + "\n" for v in versions + [NEW_VER]))


def remove_version(ctx: Ctx):
    dl, top = version_paths(ctx)
    rm(top)
    for ext in ("zip", "ziphash", "info", "mod"):
        (dl / f"{NEW_VER}.{ext}").unlink(missing_ok=True)
    versions = next(m[1] for m in restore.MODULES if m[0] == NEW_MOD)
    (dl / "list").write_text("".join(v + "\n" for v in versions))
    for path, st in getattr(ctx, "touched", {}).items():
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class Pass:
    """One run of every scenario with its own mirror and destinations. The
    counting pass sends every measured transfer through the byte proxies."""

    def __init__(self, ctx: Ctx, name: str, index: int, counting: bool):
        self.ctx, self.index, self.counting = ctx, index, counting
        self.dir = ctx.work / name
        self.dir.mkdir()
        self.mirror = Mirror(self.dir / "store", self.dir / "mirror.log")
        self.meter = ServerMeter(self.mirror.proc.pid)
        self.direct = self.mirror.url
        if counting:
            self.proxy = ByteProxy(int(self.direct.rsplit(":", 1)[1]))
        env = {**os.environ, "NO_COLOR": "1"}
        self.env = {"ci": {**env, "XDG_STATE_HOME": str(self.dir / "state-ci")},
                    "node": {**env, "XDG_STATE_HOME": str(self.dir / "state-node")}}

    def record(self, row: str, tool: str, sample: Sample):
        if self.counting:
            self.ctx.counted[(row, tool)] = sample
        else:
            self.ctx.samples.setdefault((row, tool), []).append(sample)
            print(f"  {self.index}: {row} {tool}: {sample.wall:.2f} s", file=sys.stderr)

    def steps(self, row: str, steps: list):
        """Runs (tool, thunk) steps of one scenario, in turn-about order across runs."""
        for tool, thunk in (steps if self.index % 2 == 0 else steps[::-1]):
            self.record(row, tool, thunk())

    def cs_args(self, cmd: str, key: str, path: Path, url: str, profile: str = PROFILE):
        extra = ["--profile", profile] if cmd == "push" else []
        return [str(BIN), cmd, "--mirror", url, "--key", key, *extra, "--json", str(path)]

    def cs_untimed(self, cmd: str, key: str, path: Path, role: str, profile: str = PROFILE):
        sh(*self.cs_args(cmd, key, path, self.direct, profile), env=self.env[role], stdout=subprocess.DEVNULL)

    def cs(self, cmd: str, key: str, path: Path, profile: str = PROFILE) -> Sample:
        url = f"http://127.0.0.1:{self.proxy.port}" if self.counting else self.direct
        args = self.cs_args(cmd, key, path, url, profile)
        sh("sync")
        self.meter.start()
        t0 = time.perf_counter()
        out, _, rss, cpu = timed(args, self.env["ci" if cmd == "push" else "node"])
        wall = time.perf_counter() - t0
        scpu, srss = self.meter.stop()
        report = json.loads(out.strip().splitlines()[-1])
        return Sample(wall, cpu, scpu, rss, srss, self.proxy.take() if self.counting else None,
                      report["bytes_sent"] + report["bytes_received"])

    def rs(self, flags: list, src, dst) -> Sample:
        """rsync -a; a server-side path is given as ('srv', path under --dir)."""
        ctx = self.ctx
        port = ctx.rs_proxy.port if self.counting else ctx.rsyncd.port
        ends = [f"rsync://127.0.0.1:{port}/mod/{ctx.rel(p[1])}/" if isinstance(p, tuple) else f"{p}/" for p in (src, dst)]
        ctx.rsyncd.start()
        try:
            sh("sync")
            t0 = time.perf_counter()
            _, _, rss, cpu = timed(["rsync", "-a", *flags, *ends])
            wall = time.perf_counter() - t0
        finally:
            scpu, srss = ctx.rsyncd.stop()
        return Sample(wall, cpu, scpu, rss, srss, ctx.rs_proxy.take() if self.counting else None)

    def local(self, cmd: list, size: int) -> Sample:
        sh("sync")
        t0 = time.perf_counter()
        _, _, rss, cpu = timed(cmd)
        return Sample(time.perf_counter() - t0, cpu, 0.0, rss, 0.0, size)

    def stop(self):
        self.mirror.stop()


def same_tree(want: dict, path: Path, what: str):
    got = meta(path)
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if bad:
        sys.exit(f"{what} ({path}) differs from the source in {len(bad)} entries, e.g. "
                 + "; ".join(f"{k}: {want.get(k)} vs {got.get(k)}" for k in bad[:3]))


def initial_and_noop(p: Pass):
    ctx, d, tree = p.ctx, p.dir, p.ctx.tree
    p.steps("1-push", [("cachesync", lambda: p.cs("push", "gomod", tree)),
                       ("rsync", lambda: p.rs([], tree, ("srv", d / "up")))])
    (d / "tar-dl").mkdir()
    tar = ["tar", "--use-compress-program", "unzstd --long=30", "-xf", str(ctx.archive), "-C", str(d / "tar-dl")]
    p.steps("1-pull", [("cachesync", lambda: p.cs("pull", "gomod", d / "cs-dl")),
                       ("rsync", lambda: p.rs([], ("srv", tree), d / "rs-dl")),
                       ("tar", lambda: p.local(tar, ctx.archive.stat().st_size))])
    for name in ("up", "cs-dl", "rs-dl", "tar-dl"):
        same_tree(ctx.meta, d / name, name)
    if p.counting:  # contents too, once
        for name in ("up", "cs-dl", "rs-dl", "tar-dl"):
            sh("diff", "-r", "-q", str(tree), str(d / name))
    else:
        floor(p)
    p.steps("2-push", [("cachesync", lambda: p.cs("push", "gomod", tree)),
                       ("rsync", lambda: p.rs([], tree, ("srv", d / "up")))])
    p.steps("2-pull", [("cachesync", lambda: p.cs("pull", "gomod", d / "cs-dl")),
                       ("rsync", lambda: p.rs([], ("srv", tree), d / "rs-dl"))])


def floor(p: Pass):
    """The floor under scenario 1 (bench/land.rs): with nothing else done, the
    tree's files landed from memory (what a pull writes), and each distinct
    content landed once as a store keeps blobs (what a push into an empty
    mirror writes), each with 2 and 4 writer threads, then one syncfs."""
    for mode in ("all", "distinct"):
        for threads in (2, 4):
            sh("sync")
            dest = p.dir / f"floor-{mode}-{threads}"
            extra = ["--distinct"] if mode == "distinct" else []
            out = subprocess.run([str(LAND), str(p.ctx.tree), str(dest), str(threads), *extra],
                                 capture_output=True, text=True, check=True).stdout
            got = json.loads(out)
            p.ctx.floor.setdefault((mode, threads), []).append((got["write_s"], got["sync_s"], got["cpu_s"]))


def new_version(p: Pass):
    ctx, d, tree = p.ctx, p.dir, p.ctx.tree
    sh("cp", "-al", str(d / "up"), str(d / "up-fz"))  # rsync replaces files by rename: links are safe bases
    sh("cp", "-al", str(d / "rs-dl"), str(d / "rs-dl-fz"))
    add_version(ctx)
    try:
        want = meta(tree)
        new = [v for k, v in want.items() if ctx.meta.get(k) != v and stat.S_ISREG(v[0])]
        ctx.new_files, ctx.new_bytes = len(new), sum(v[2] for v in new)  # added or changed
        p.steps("3-push", [("cachesync", lambda: p.cs("push", "gomod", tree)),
                           ("rsync", lambda: p.rs([], tree, ("srv", d / "up"))),
                           ("rsync-fuzzy", lambda: p.rs(["--fuzzy"], tree, ("srv", d / "up-fz")))])
        p.steps("3-pull", [("cachesync", lambda: p.cs("pull", "gomod", d / "cs-dl")),
                           ("rsync", lambda: p.rs([], ("srv", tree), d / "rs-dl")),
                           ("rsync-fuzzy", lambda: p.rs(["--fuzzy"], ("srv", tree), d / "rs-dl-fz"))])
        for name in ("up", "up-fz", "cs-dl", "rs-dl", "rs-dl-fz"):
            same_tree(want, d / name, name)
    finally:
        remove_version(ctx)


def big_delta(p: Pass):
    ctx, d = p.ctx, p.dir
    for name in ("big-src", "big-up", "rs-big"):
        (d / name).mkdir()
        shutil.copy2(ctx.big, d / name / "data.bin")
    p.cs_untimed("push", "big", d / "big-src", "ci", "generic")
    p.cs_untimed("pull", "big", d / "cs-big", "node")
    rng = random.Random(4)  # the same 64 changes in every run
    with open(d / "big-src" / "data.bin", "r+b") as f:
        for i in range(64):
            f.seek(i * (ctx.big_mib * MiB // 64) + rng.randrange(0, ctx.big_mib * MiB // 64 - 4096))
            f.write(rng.randbytes(4096))
    p.steps("4-push", [("cachesync", lambda: p.cs("push", "big", d / "big-src", "generic")),
                       ("rsync", lambda: p.rs(["--no-whole-file"], d / "big-src", ("srv", d / "big-up")))])
    p.steps("4-pull", [("cachesync", lambda: p.cs("pull", "big", d / "cs-big")),
                       ("rsync", lambda: p.rs(["--no-whole-file"], ("srv", d / "big-up"), d / "rs-big"))])
    for name in ("big-up", "cs-big", "rs-big"):
        if not filecmp.cmp(d / "big-src" / "data.bin", d / name / "data.bin", shallow=False):
            sys.exit(f"{d / name / 'data.bin'} differs from {d / 'big-src' / 'data.bin'}")
    for name in ("big-src", "big-up", "cs-big", "rs-big"):  # disk space; four inodes do not slow ext4 down
        (d / name / "data.bin").unlink()


def not_loopback(p: Pass):
    """cachesync pushes to and pulls from a loopback peer without compression; counts 1.
    once more as a remote node would see it, through a proxy on this machine's
    outside address (no timing: the proxy is in the way)."""
    ip = outside_address()
    if ip is None:
        return
    d = p.dir / "outside"
    d.mkdir()
    mirror = Mirror(d / "store", d / "mirror.log")
    proxy = ByteProxy(int(mirror.url.rsplit(":", 1)[1]), ip)
    env = {**os.environ, "NO_COLOR": "1", "XDG_STATE_HOME": str(d / "state")}
    try:
        for cmd, path in (("push", p.ctx.tree), ("pull", d / "dl")):
            sh(*p.cs_args(cmd, "gomod", path, f"http://{ip}:{proxy.port}"), env=env, stdout=subprocess.DEVNULL)
            p.ctx.outside[cmd] = proxy.take()
        p.ctx.outside["ip"] = ip
    finally:
        mirror.stop()


def run_pass(ctx: Ctx, name: str, index: int, counting: bool):
    p = Pass(ctx, name, index, counting)
    try:
        initial_and_noop(p)
        new_version(p)
        big_delta(p)
        if counting:
            not_loopback(p)
    finally:
        p.stop()


def check_space(ctx: Ctx):
    """Each run keeps eight copies of the tree and a mirror store until the end."""
    size = sum(v[2] for v in ctx.meta.values())
    need = ctx.args.runs * (10 * size + 2 * ctx.big_mib * MiB)
    free = shutil.disk_usage(ctx.work).free
    if free < need:
        sys.exit(f"{ctx.work}: {free / 1e9:.1f} GB free, the runs need about {need / 1e9:.1f} GB "
                 "(fewer --runs, a smaller --scale, or another --dir)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/cachesync-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="data size factor (1.0: ~19,500 files and ~335 MiB, a 256 MiB file)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/cachesync as it is")
    args = ap.parse_args()
    restore.ensure_tools()  # GNU time, GNU tar, zstd
    ensure_rsync()
    if not args.no_build:
        sh("cargo", "build", "--release", "--quiet", "--bin", "cachesync", "--example", "land", cwd=ROOT)
    if not LAND.exists():
        sys.exit(f"{LAND} is missing: run without --no-build, or `cargo build --release --example land`")
    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    work = base / f"compare-{os.getpid()}"
    work.mkdir()
    ctx = Ctx(args, base, work)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    try:
        prepare(ctx)
        check_space(ctx)
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", file=sys.stderr)
            run_pass(ctx, f"run-{run}", run, False)
        # The counting pass comes last, after the timed runs' trees are gone:
        # its times are discarded, so the slow inode allocation does not matter.
        for run in range(args.runs):
            rm(work / f"run-{run}")
        print("last pass: bytes on the wire, through the proxies (times discarded)", file=sys.stderr)
        run_pass(ctx, "count", 0, True)
        files = sum(1 for v in ctx.meta.values() if stat.S_ISREG(v[0]))
        size = sum(v[2] for v in ctx.meta.values())
        print_report(ctx, files, size, started, (load, os.getloadavg()[0]))
    finally:
        ctx.rsyncd.kill()
        rm(work)  # everything, once, at the end


if __name__ == "__main__":
    main()
