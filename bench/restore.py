#!/usr/bin/env python3
"""Restore benchmark: a Go module cache restored into an empty directory by
`cachesync pull` from a mirror over loopback, against unpacking the same tree
from a tar + zstd archive the way actions/cache does.

    python3 bench/restore.py [--dir DIR] [--runs 5] [--scale 1.0] [--no-build]

The cache is generated offline: ~60 module versions in GOMODCACHE layout
(cache/download/<escaped module>/@v/{list,.info,.mod,.zip,.ziphash}, extracted
<escaped module>@<version>/ trees with files 0444 and directories 0555), Go-like
text that compresses, incompressible testdata, ~70% of files shared between
versions of a module. The archive is made as @actions/cache (tar.ts) makes it:
`tar --posix | zstdmt --long=30` (level 3), unpacked with `tar
--use-compress-program 'unzstd --long=30' -xf`, from a local file in the page
cache (the download is not counted). cachesync pulls from a mirror on
127.0.0.1, on the same cores, whose store is in the page cache too. Wall, CPU,
peak RSS: GNU /usr/bin/time (for tar: tar + unzstd CPU, the larger RSS).
Run it on a quiet machine, minutes after any large delete: ext4 slows every
inode allocation (`recently_deleted`) for a while after many inodes are freed.
"""

import argparse, base64, hashlib, json, math, os, random, stat, subprocess, sys, zipfile  # noqa: E401
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import BIN, ROOT, Mirror, ensure_gnu_time, median, sh  # noqa: E402

MiB = 1 << 20
# (module, versions, Go files per version, testdata MiB per version)
MODULES = [
    ("github.com/BurntSushi/toml", ["v1.3.2", "v1.4.0"], 60, 0.5), ("github.com/google/go-cmp", ["v0.5.9", "v0.6.0"], 90, 0),
    ("github.com/Azure/azure-sdk-for-go/sdk/azcore", ["v1.9.1"], 400, 0.5), ("gopkg.in/yaml.v3", ["v3.0.1"], 30, 0),
    ("github.com/stretchr/testify", ["v1.8.4", "v1.9.0"], 80, 0), ("github.com/davecgh/go-spew", ["v1.1.1"], 20, 0),
    ("github.com/pmezard/go-difflib", ["v1.0.0"], 5, 0), ("golang.org/x/sys", ["v0.15.0", "v0.18.0", "v0.19.0", "v0.20.0"], 700, 0),
    ("golang.org/x/net", ["v0.19.0", "v0.22.0", "v0.24.0"], 800, 2), ("golang.org/x/text", ["v0.14.0"], 600, 4),
    ("golang.org/x/tools", ["v0.16.1"], 1800, 3), ("golang.org/x/crypto", ["v0.17.0", "v0.22.0"], 500, 2),
    ("golang.org/x/mod", ["v0.14.0"], 120, 0.5), ("golang.org/x/sync", ["v0.5.0", "v0.7.0"], 20, 0),
    ("golang.org/x/oauth2", ["v0.15.0"], 80, 0), ("golang.org/x/exp", ["v0.0.0-20231214170342-aacd6d4b4611"], 200, 0),
    ("google.golang.org/grpc", ["v1.60.1", "v1.63.2"], 900, 1), ("google.golang.org/protobuf", ["v1.32.0", "v1.34.1"], 500, 2),
    ("google.golang.org/genproto/googleapis/rpc", ["v0.0.0-20231212172506-995d672761c0"], 40, 0),
    ("github.com/golang/protobuf", ["v1.5.3"], 150, 0.5), ("github.com/Microsoft/go-winio", ["v0.6.1"], 120, 0),
    ("github.com/sirupsen/logrus", ["v1.9.3"], 50, 0), ("github.com/spf13/cobra", ["v1.8.0"], 90, 0),
    ("github.com/spf13/pflag", ["v1.0.5"], 60, 0), ("github.com/inconshreveable/mousetrap", ["v1.1.0"], 5, 0),
    ("github.com/prometheus/client_golang", ["v1.18.0"], 250, 0.5), ("github.com/prometheus/common", ["v0.45.0"], 120, 0),
    ("github.com/prometheus/procfs", ["v0.12.0"], 300, 2), ("github.com/cespare/xxhash/v2", ["v2.2.0"], 15, 0),
    ("github.com/klauspost/compress", ["v1.17.4"], 450, 6), ("github.com/DataDog/zstd", ["v1.5.5"], 60, 2),
    ("github.com/ProtonMail/go-crypto", ["v0.0.0-20230923063757-afb1ddc0824c"], 250, 1),
    ("github.com/aws/aws-sdk-go-v2", ["v1.24.0"], 350, 0.5), ("github.com/aws/aws-sdk-go-v2/service/s3", ["v1.47.7"], 180, 0.5),
    ("github.com/go-logr/logr", ["v1.4.1"], 40, 0), ("github.com/hashicorp/go-multierror", ["v1.1.1"], 15, 0),
    ("github.com/json-iterator/go", ["v1.1.12"], 150, 0), ("github.com/mattn/go-isatty", ["v0.0.20"], 15, 0),
    ("github.com/pkg/errors", ["v0.9.1"], 15, 0), ("github.com/rogpeppe/go-internal", ["v1.12.0"], 300, 1),
    ("go.uber.org/zap", ["v1.26.0", "v1.27.0"], 200, 0), ("go.opentelemetry.io/otel", ["v1.21.0"], 300, 0),
    ("k8s.io/apimachinery", ["v0.29.0"], 700, 1), ("k8s.io/client-go", ["v0.29.0"], 1400, 0.5),
    ("github.com/Masterminds/semver/v3", ["v3.2.1"], 20, 0), ("honnef.co/go/tools", ["v0.4.6"], 900, 1),
    ("github.com/GoogleCloudPlatform/opentelemetry-operations-go/detectors/gcp", ["v1.21.0"], 20, 0),
]
FILES_FACTOR = 0.55  # the counts above are closer to the real modules; this keeps scale 1.0 near 11,000 files
W = ("client server request response config cache token buffer reader writer handler context value index node tree "
     "parse encode decode stream option state error message header body conn pool frame codec field schema record "
     "batch queue retry limit window table entry key path name size count offset proto route match scope").split()
TYPES = "int int64 string []byte error bool uint32 float64 *Config map[string]string time.Duration".split()
TEMPLATES = [
    '// {A}{B} returns the {a} {b} for the given {c}.\n// It is safe for concurrent use; see {A}{C} for details.\n'
    'func ({r} *{A}{B}) {B}{C}({a} {t1}, {b} {t2}) ({t3}, error) {{\n\tif {r}.{a}{B} == nil {{\n'
    '\t\treturn nil, fmt.Errorf("{p}: {a} {b} %q not found", {b})\n\t}}\n\tfor i := 0; i < len({r}.{c}s); i++ {{\n'
    '\t\t{r}.{c}s[i].{A}({n})\n\t}}\n\treturn {r}.{a}{B}.{C}{A}({a}), nil\n}}\n\n',
    'type {A}{B} struct {{\n\t{A} {t1} `json:"{a},omitempty"`\n\t{B} {t2} `json:"{b}"`\n\t{C}{A} {t3}\n'
    '\tmu sync.Mutex // guards {c}\n}}\n\n',
    'const (\n\t{A}{B}Max = 0x{h}\n\t{A}{C}Default = {n}\n)\n\n',
    'func Test{A}{B}(t *testing.T) {{\n\ttests := []struct {{\n\t\tname string\n\t\t{a} {t1}\n\t\twant {t2}\n\t}}{{\n'
    '\t\t{{"{a}-{b}", {n}, nil}},\n\t\t{{"{c}-{a}", {m}, nil}},\n\t}}\n\tfor _, tt := range tests {{\n'
    '\t\tif got := {A}{B}(tt.{a}); got != tt.want {{\n\t\t\tt.Errorf("{A}{B}(%v) = %v, want %v", tt.{a}, got, tt.want)\n'
    '\t\t}}\n\t}}\n}}\n\n',
]


def escape(path: str) -> str:
    """Go's module path escaping: an upper-case letter becomes '!' and its lower case."""
    return "".join("!" + c.lower() if c.isupper() else c for c in path)


def go_source(rng: random.Random, size: int, pkg: str) -> bytes:
    out = [f"// Copyright 20{rng.randint(12, 24)} The {pkg} Authors. All rights reserved.\n\npackage {pkg}\n\n"
           'import (\n\t"context"\n\t"fmt"\n\t"sync"\n\t"time"\n)\n\n']
    n = len(out[0])
    while n < size:
        a, b, c = rng.choice(W), rng.choice(W), rng.choice(W)
        t = rng.choice(TEMPLATES).format(A=a.title(), B=b.title(), C=c.title(), a=a, b=b, c=c, r=a[0], p=pkg,
                                         t1=rng.choice(TYPES), t2=rng.choice(TYPES), t3=rng.choice(TYPES),
                                         n=rng.randint(0, 1 << 16), m=rng.randint(0, 999), h=rng.getrandbits(32))
        out.append(t)
        n += len(t)
    return "".join(out).encode()[:size]


def module_files(mod: str, ver: str, nfiles: int, td_bytes: int) -> dict:
    lay = random.Random(mod)  # the layout and ~70% of contents are shared by all versions of a module
    pkgs = [""] + ["/".join(lay.sample(W, lay.randint(1, 2))) for _ in range(max(1, nfiles // 12))]
    gomod = f"module {mod}\n\ngo 1.20\n\nrequire golang.org/x/sys v0.15.0\n".encode()
    files = {"go.mod": gomod, "LICENSE": b"Copyright (c) The Authors. All rights reserved.\n" * 20,
             "README.md": f"# {mod}\n\n".encode() + go_source(lay, 3000, "readme")}
    for i in range(nfiles):
        d, name = lay.choice(pkgs), f"{lay.choice(W)}_{lay.choice(W)}{i}{'_test' if lay.random() < 0.3 else ''}.go"
        size = int(min(150_000, max(150, lay.lognormvariate(math.log(5000), 1.0))))
        tag = ver if lay.random() < 0.3 else ""
        files[f"{d}/{name}".lstrip("/")] = go_source(random.Random(f"{mod}|{name}|{tag}"), size,
                                                     (d.rsplit("/", 1)[-1] or mod.rsplit("/", 1)[-1]).replace(".", "_").replace("-", "_"))
    j = 0
    while td_bytes > 0:
        sz = min(td_bytes, lay.choice([64 << 10, 256 << 10, 1 << 20]))
        files[f"testdata/blob{j}.{lay.choice(['bin', 'gz', 'png', 'zst'])}"] = random.Random(f"{mod}|td{j}").randbytes(sz)
        td_bytes, j = td_bytes - sz, j + 1
    return files


def make_modcache(root: Path, scale: float):
    for mod, versions, nfiles, td_mib in MODULES:
        dl = root / "cache" / "download" / escape(mod) / "@v"
        dl.mkdir(parents=True, exist_ok=True)
        for ver in versions:
            files = module_files(mod, ver, max(3, int(nfiles * FILES_FACTOR * scale)), int(td_mib * MiB * scale))
            top = root / f"{escape(mod)}@{escape(ver)}"
            zpath, lines = dl / f"{escape(ver)}.zip", []
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
                for rel, data in sorted(files.items()):
                    (top / rel).parent.mkdir(parents=True, exist_ok=True)
                    (top / rel).write_bytes(data)
                    zf.writestr(zipfile.ZipInfo(f"{mod}@{ver}/{rel}", (2019, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
                    lines.append(f"{hashlib.sha256(data).hexdigest()}  {mod}@{ver}/{rel}\n")
            # Go's dirhash Hash1: one line per file, in the order of the sorted names.
            h1 = base64.b64encode(hashlib.sha256("".join(lines).encode()).digest()).decode()
            (dl / f"{escape(ver)}.ziphash").write_text(f"h1:{h1}")
            (dl / f"{escape(ver)}.info").write_text(json.dumps({"Version": ver, "Time": "2023-12-01T10:00:00Z"}))
            (dl / f"{escape(ver)}.mod").write_bytes(files["go.mod"])
            for dp, dns, fns in os.walk(top, topdown=False):  # as Go leaves extracted modules: read-only
                for n in fns:
                    os.chmod(os.path.join(dp, n), 0o444)
                os.chmod(dp, 0o555)
        (dl / "list").write_text("".join(v + "\n" for v in versions))


def rm(path: Path):
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
        subprocess.run(["rm", "-rf", str(path)], check=True)


def meta(root: Path) -> dict:
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            st = os.lstat(os.path.join(dp, n))
            out[os.path.relpath(os.path.join(dp, n), root)] = (
                stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_size if stat.S_ISREG(st.st_mode) else 0, int(st.st_mtime))
    return out


def timed(cmd, env=None):
    """Runs cmd under GNU time; returns (stdout, wall s, peak RSS MiB, CPU s)."""
    out = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M %U %S", *cmd], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr}")
    wall, rss, user, system = out.stderr.rsplit("TIME ", 1)[1].split()
    return out.stdout, float(wall), int(rss) / 1024, float(user) + float(system)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ensure_tools():
    ensure_gnu_time()
    if "GNU tar" not in subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout:
        sys.exit("GNU tar is required")
    if not any((Path(d) / "zstd").exists() for d in os.environ["PATH"].split(":")):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        sh(*sudo, "apt-get", "update", "-qq") and sh(*sudo, "apt-get", "install", "-y", "-qq", "zstd")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/cachesync-bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="tree size factor (1.0: ~11,000 files, ~200 MB)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/cachesync as it is")
    args = ap.parse_args()
    ensure_tools()
    if not args.no_build:
        sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    tree = base / f"gomod2-{args.scale}"  # 2: zips whose ziphash Go (and the mirror) accepts
    if not (base / f"gomod2-{args.scale}.done").exists():
        print(f"building the module cache in {tree} ...", file=sys.stderr)
        rm(tree)
        make_modcache(tree, args.scale)
        (base / f"gomod2-{args.scale}.done").write_text("")
    # Fresh names for every restore, all removed at the end (see ext4 above).
    work = base / f"restore-{os.getpid()}"
    work.mkdir()
    try:
        measure(args, tree, work)
    finally:
        rm(work)


def measure(args, tree: Path, work: Path):
    src = meta(tree)
    files = sum(1 for v in src.values() if stat.S_ISREG(v[0]))
    size = sum(v[2] for v in src.values())
    download = {k: v for k, v in src.items() if k == "cache" or k.startswith("cache/")}
    dl_size = sum(v[2] for v in download.values())
    archive = work / "cache.tzst"
    sh("sh", "-c", f"tar --posix -cf - -C '{tree}' . | zstd -q -T0 --long=30 -o '{archive}'")
    env = {**os.environ, "NO_COLOR": "1", "XDG_STATE_HOME": str(work / "state-push")}
    mirror = Mirror(work / "store", work / "mirror.log")
    rows = {"tar": [], "tar_sync": [], "trees": [], "unpack": [], "download": []}
    mirror_cpu = {"trees": [], "unpack": [], "download": []}
    # The whole tree (go-mod-trees, as tar has it) and the download cache only (go-mod, the default).
    keys = {"trees": ("gomod/trees", "go-mod-trees"), "download": ("gomod/download", "go-mod")}
    # The whole tree again, its tree files unpacked from the zips on the client, as a pull from a
    # remote mirror does by default (transfer.unpack = "remote": not from a loopback one).
    unpack_config = work / "unpack.toml"
    unpack_config.write_text('[transfer]\nunpack = "always"\n')
    keys["unpack"] = ("gomod/trees", "go-mod-trees")
    extra = {"trees": [], "download": [], "unpack": ["--config", str(unpack_config)]}
    try:
        for key, profile in {keys["trees"], keys["download"]}:
            sh(str(BIN), "push", "--mirror", mirror.url, "--key", key, "--profile", profile, "--json", str(tree),
               env=env, stdout=subprocess.DEVNULL)
        for run in range(args.runs):
            dirs = {"tar": work / f"tar-{run}", "trees": work / f"pull-{run}", "unpack": work / f"unpack-{run}",
                    "download": work / f"dl-{run}"}
            order = ["tar", "trees", "unpack", "download"]
            order = order if run % 2 == 0 else order[::-1]  # alternate
            for which in order:
                sh("sync")  # none pays for writing back another's pages
                dirs[which].mkdir()
                if which == "tar":
                    _, wall, rss, cpu = timed(["tar", "--use-compress-program", "unzstd --long=30", "-xf", str(archive),
                                               "-C", str(dirs["tar"])])
                    rows["tar"].append((wall, cpu, rss, archive.stat().st_size))
                    _, swall, _, _ = timed(["sync", "-f", str(dirs["tar"])])
                    rows["tar_sync"].append((wall + swall, cpu, rss, archive.stat().st_size))
                else:
                    env["XDG_STATE_HOME"] = str(work / f"state-{which}-{run}")
                    before = cpu_s(mirror.proc.pid)
                    out, wall, rss, cpu = timed([str(BIN), "pull", *extra[which], "--mirror", mirror.url, "--key",
                                                 keys[which][0], "--json", str(dirs[which])], env)
                    mirror_cpu[which].append(cpu_s(mirror.proc.pid) - before)
                    rows[which].append((wall, cpu, rss, json.loads(out.strip().splitlines()[-1])["bytes_received"]))
            for name, want in (("tar", src), ("trees", src), ("unpack", src), ("download", download)):
                got = meta(dirs[name])
                bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
                if bad:
                    sys.exit(f"{name} restore differs from the source in {len(bad)} entries, e.g. "
                             + "; ".join(f"{k}: {want.get(k)} vs {got.get(k)}" for k in bad[:3]))
            sh("diff", "-r", "-q", str(dirs["tar"]), str(dirs["trees"]))
            sh("diff", "-r", "-q", str(dirs["tar"]), str(dirs["unpack"]))
            print(f"run {run + 1}/{args.runs}: tar {rows['tar'][-1][0]:.2f} s, cachesync {rows['trees'][-1][0]:.2f} s, "
                  f"unpacking {rows['unpack'][-1][0]:.2f} s, download cache only {rows['download'][-1][0]:.2f} s",
                  file=sys.stderr)
    finally:
        mirror.stop()

    print(f"\nrestore of a Go module cache into an empty directory: {files} files, {size / MiB:.0f} MiB "
          f"({size / 1e6:.0f} MB; cache/download alone {dl_size / MiB:.0f} MiB), archive "
          f"{archive.stat().st_size / MiB:.1f} MiB (tar --posix | zstd -T0 --long=30, level 3, as actions/cache); "
          f"{args.runs} runs, medians; {os.cpu_count()} cores; trees verified identical")
    print("| restore | wall (s) | CPU (s) | mirror CPU (s) | peak RSS (MiB) | bytes read | wall / tar wall |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    t0 = median(r[0] for r in rows["tar"])
    for label, key in (("tar + unzstd, local archive, no sync", "tar"),
                       ("tar + unzstd, then `sync -f` (durable)", "tar_sync"),
                       ("cachesync pull, whole tree (`go-mod-trees`), mirror on loopback", "trees"),
                       ("cachesync pull, whole tree, trees unpacked from the zips (`transfer.unpack = always`)",
                        "unpack"),
                       ("cachesync pull, download cache only (`go-mod`), mirror on loopback", "download")):
        r = rows[key]
        mcpu = f"{median(mirror_cpu[key]):.2f}" if key in mirror_cpu else "–"
        print(f"| {label} | {median(x[0] for x in r):.2f} | {median(x[1] for x in r):.2f} | {mcpu} | "
              f"{median(x[2] for x in r):.0f} | {median(x[3] for x in r) / MiB:.1f} MiB | "
              f"{median(x[0] for x in r) / t0:.2f} |")

if __name__ == "__main__":
    main()
