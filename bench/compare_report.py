"""The table bench/compare.py prints: medians, cachesync / baseline ratios and
the targets of issue 6 with pass or FAIL."""

import os
import statistics
import subprocess
from dataclasses import dataclass

MiB = 1 << 20


@dataclass
class Sample:
    wall: float
    cpu_client: float
    cpu_server: float
    rss_client: float
    rss_server: float
    bytes: int | None  # on the wire, from the counting pass only
    reported: int | None = None  # cachesync's own count (--json bytes_sent + bytes_received)


# (row key of cachesync's samples, row key of the baseline's, baseline tool, label, wall target)
ROWS = [
    ("1-push", "1-push", "rsync", "1. initial sync, push (tree → empty mirror / server dir)", 0.5),
    ("1-pull", "1-pull", "rsync", "1. initial sync, pull (server → empty dir)", 0.5),
    ("2-push", "2-push", "rsync", "2. no-op sync, push", 0.5),
    ("2-pull", "2-pull", "rsync", "2. no-op sync, pull", 0.5),
    ("3-push", "3-push", "rsync", "3. one new module version, push", 0.5),
    ("3-push", "3-push", "rsync-fuzzy", "3. one new module version, push", 0.5),
    ("3-pull", "3-pull", "rsync", "3. one new module version, pull", 0.5),
    ("3-pull", "3-pull", "rsync-fuzzy", "3. one new module version, pull", 0.5),
    ("4-push", "4-push", "rsync", "4. big file, 64 × 4 KiB changed, delta push", 1.0),
    ("4-pull", "4-pull", "rsync", "4. big file, 64 × 4 KiB changed, delta pull", 1.0),
    ("1-pull", "1-pull", "tar", "5. restore into an empty dir (cachesync pull of 1.)", 1.0),
]
BASELINE = {"rsync": "rsync -a", "rsync-fuzzy": "rsync -a --fuzzy", "tar": "tar + unzstd, local archive"}


def human(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 100 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def med(samples, field):
    return statistics.median(getattr(s, field) for s in samples)


def row(ctx, cs_key, base_key, tool, label, wall_target):
    cs, base = ctx.samples[(cs_key, "cachesync")], ctx.samples[(base_key, tool)]
    cs_bytes, base_bytes = ctx.counted[(cs_key, "cachesync")].bytes, ctx.counted[(base_key, tool)].bytes
    archive = ctx.archive.stat().st_size
    cs_wall, base_wall = med(cs, "wall"), med(base, "wall")
    wall_ratio = cs_wall / base_wall
    byte_ratio = cs_bytes / base_bytes if base_bytes else float("inf")
    byte_target = f"≤ 1: {verdict(cs_bytes <= base_bytes)}"
    if label.startswith("1."):
        byte_target += f"; ≤ archive: {verdict(cs_bytes <= archive)}"
    elif tool == "tar":
        byte_target = f"≤ archive: {verdict(cs_bytes <= archive)}"
    server = "–" if tool == "tar" else f"{med(base, 'cpu_server'):.2f}"
    server_rss = "–" if tool == "tar" else f"{med(base, 'rss_server'):.0f}"
    flags = " --no-whole-file" if cs_key.startswith("4") else ""
    return (f"| {label} | {BASELINE[tool]}{flags} | {cs_wall:.2f} / {base_wall:.2f} | {wall_ratio:.2f} | "
            f"≤ {wall_target:g}: {verdict(wall_ratio <= wall_target)} | {human(cs_bytes)} / {human(base_bytes)} | "
            f"{byte_ratio:.2f} | {byte_target} | {med(cs, 'cpu_client'):.2f} + {med(cs, 'cpu_server'):.2f} / "
            f"{med(base, 'cpu_client'):.2f} + {server} | {med(cs, 'rss_client'):.0f}, {med(cs, 'rss_server'):.0f} / "
            f"{med(base, 'rss_client'):.0f}, {server_rss} |")


def print_report(ctx, files: int, size: int, started: str, load: tuple):
    args = ctx.args
    print(f"\ncachesync against rsync {rsync_version()} (daemon on 127.0.0.1, `-a`, no compression) and tar + zstd; "
          f"started {started}, --scale {args.scale:g}, {args.runs} runs, medians; {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.")
    print(f"Tree: Go module cache, {files} files, {human(size)} ({size / 1e6:.0f} MB); tar --posix | zstd -T0 "
          f"--long=30 archive {human(ctx.archive.stat().st_size)} (made in {ctx.archive_s:.1f} s). "
          f"3. adds or changes {ctx.new_files} files, {human(ctx.new_bytes)}. Big file: {ctx.big_mib} MiB. "
          "Bytes: payload both ways through a counting proxy, one extra pass.\n")
    print("| scenario | baseline | wall s, cachesync / baseline | wall ratio | wall target | bytes on the wire, "
          "cachesync / baseline | bytes ratio | bytes target | CPU s client + server, cachesync / baseline | "
          "peak RSS MiB client, server, cachesync / baseline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for spec in ROWS:
        print(row(ctx, *spec))
    print("\npush: client tree → server, as a CI job saves its cache at the end (`cachesync push`, "
          "`rsync -a dir/ rsync://…/mod/dst/`); pull: server → client directory, as a node restores "
          "(`cachesync pull`, `rsync -a rsync://…/mod/tree/ dir/`). cachesync with its defaults, profile "
          "go-mod-trees (generic for the big file). Server: the mirror's CPU and VmHWM; the rsync daemon with the children it "
          "forked for the connection. Ratios are cachesync / baseline; targets from issue 6.")
    own = ", ".join(f"{key} {human(s.reported)} vs {human(s.bytes)}" for (key, tool), s in sorted(ctx.counted.items())
                    if tool == "cachesync")
    if ctx.outside:
        print(f"Over loopback a cachesync pull asks the mirror not to compress. Counted once from this machine's "
              f"outside address ({ctx.outside['ip']}, not loopback to cachesync), 1. moves "
              f"{human(ctx.outside['push'])} (push) and {human(ctx.outside['pull'])} (pull).")
    print(f"cachesync's own byte counts (--json bytes_sent + bytes_received) against the socket's: {own}.")
    if ctx.floor:
        print(floor_report(ctx, files))


def floor_report(ctx, files: int) -> str:
    """Scenario 1's targets against the floor bench/land.rs measured in the same runs."""
    def best(mode, durable):
        """(median wall, threads, median CPU, files, bytes) of the faster thread count."""
        rows = []
        for (m, threads), runs in ctx.floor.items():
            if m == mode:
                wall = statistics.median(w + (s if durable else 0) for w, s, _ in runs)
                rows.append((wall, threads, statistics.median(c for _, _, c in runs)))
        return min(rows)
    land, t_land, cpu = best("all", False)
    durable, t_durable, _ = best("distinct", True)
    push = 0.5 * med(ctx.samples[("1-push", "rsync")], "wall")
    pull = 0.5 * med(ctx.samples[("1-pull", "rsync")], "wall")
    return (f"Floor (bench/land.rs, same runs, medians, nothing else done): the tree's {files} files landed from "
            f"memory in {land:.2f} s ({t_land} writer threads, CPU {cpu:.2f} s), against the pull's target of "
            f"{pull:.2f} s (0.5 × rsync): {land / pull:.2f} × it. Its distinct contents landed once each as a "
            f"store keeps blobs, then made durable by one syncfs (a mirror must, before it commits a snapshot): "
            f"{durable:.2f} s ({t_durable} threads), against the push's target of {push:.2f} s: "
            f"{durable / push:.2f} × it.")


def rsync_version() -> str:
    out = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"
