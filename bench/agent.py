#!/usr/bin/env python3
"""Agent figures on one machine: two `cachesync agent` processes (a -> b)
over loopback, a root of N small files (default 100,000).

Prints: time for b to receive the whole root, propagation latency of one
small file written on a (from the write until b holds it; includes the
settle time and up to one interval), the cycle time a's log reports for that
one-file change, and each agent's CPU and RSS while idle (watching, nothing
changing; a pushed the root, b received it).

    cargo build --release && python3 bench/agent.py [--files 100000] [--bin target/release/cachesync]
"""
import argparse, os, re, socket, subprocess, sys, tempfile, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def config(d, port, peer, settle, interval):
    return (f'state_dir = "{d}/state"\n[agent]\nlisten = "127.0.0.1:{port}"\npeers = ["http://127.0.0.1:{peer}"]\n'
            f'settle = "{settle}"\n[[agent.root]]\nname = "tree"\npath = "{d}/root"\nkey = "bench/tree"\ninterval = "{interval}"\n')

def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def wait(cond, secs, what):
    end = time.time() + secs
    while not cond():
        if time.time() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.005)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--bin", default="target/release/cachesync")
    ap.add_argument("--settle", default="1s")
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--idle", type=float, default=20.0)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="cachesync-agent-bench-")
    a, b = f"{base}/a", f"{base}/b"
    for d in (a, b):
        os.makedirs(f"{d}/root")
    for i in range(args.files):
        sub = f"{a}/root/d{i // 1000:03}"
        if i % 1000 == 0:
            os.makedirs(sub)
        with open(f"{sub}/f{i}", "w") as f:
            f.write(f"file {i}\n")
    old = time.time() - 3600
    for dirpath, _, names in os.walk(f"{a}/root"):
        for n in names:
            os.utime(os.path.join(dirpath, n), (old, old))
    pa, pb = free_port(), free_port()
    open(f"{a}/agent.toml", "w").write(config(a, pa, pb, args.settle, args.interval))
    open(f"{b}/agent.toml", "w").write(config(b, pb, pa, args.settle, args.interval))
    env = dict(os.environ, NO_COLOR="1")
    logs = {d: open(f"{d}/log", "w") for d in (a, b)}
    procs = [subprocess.Popen([args.bin, "--config", f"{d}/agent.toml", "--log-level", "cachesync=debug", "agent"],
                              stderr=logs[d], env=env) for d in (a, b)]
    try:
        start = time.time()
        last = f"{b}/root/d{(args.files - 1) // 1000:03}/f{args.files - 1}"
        wait(lambda: os.path.exists(last), 3600, "the first sync")
        print(f"first sync of {args.files} files: {time.time() - start:.1f} s")
        time.sleep(3)
        t0 = time.time()
        with open(f"{a}/root/d000/new-file", "w") as f:
            f.write("one small new file\n")
        wait(lambda: os.path.exists(f"{b}/root/d000/new-file"), 120, "the new file")
        print(f"one-file propagation: {time.time() - t0:.2f} s (settle {args.settle}, interval {args.interval})")
        time.sleep(2)
        cycles = re.findall(r"sync_cycle.*pushed=1 duration_ms=(\d+)", open(f"{a}/log").read())
        print(f"a's cycle with one changed file: {cycles[-1] if cycles else '?'} ms (log)")
        c0, t0 = [cpu_ticks(p.pid) for p in procs], time.time()
        time.sleep(args.idle)
        for name, p, c in zip("ab", procs, c0):
            cpu = (cpu_ticks(p.pid) - c) / os.sysconf("SC_CLK_TCK") / (time.time() - t0) * 100
            print(f"idle agent {name}: {cpu:.2f}% of a core, RSS {rss_kib(p.pid) / 1024:.1f} MiB")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        print(f"exit codes {[p.returncode for p in procs]}; logs in {base}")

if __name__ == "__main__":
    main()
