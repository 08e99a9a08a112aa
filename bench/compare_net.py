"""Network helpers for bench/compare.py: a byte-counting TCP proxy, an rsync
daemon started per transfer under GNU time, and the server-side CPU and peak
RSS of a long-lived process (the cachesync mirror)."""

import asyncio
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from core import sh
from restore import cpu_s


def ensure_rsync():
    if shutil.which("rsync"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    sh(*sudo, "apt-get", "update", "-qq")
    sh(*sudo, "apt-get", "install", "-y", "-qq", "rsync")


def wait_for(cond, what: str, timeout: float = 60):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def children(pid: int) -> list:
    """Processes whose parent is pid (zombies included: they are gone only once reaped)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == want and cols[3] == "0A":
            return True
    return False


def outside_address():
    """This machine's first global IPv4 address: a peer there is not loopback
    to cachesync, though the kernel still routes the traffic locally."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        return line.split()[3].split("/")[0]
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ByteProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target and counts the payload read
    from either side (client to server plus server to client), so a transfer
    run through it once gives its bytes on the wire, whatever the tool reports."""

    def __init__(self, target: int, host: str = "127.0.0.1"):
        self.target, self.host, self.bytes, self.active = target, host, 0, 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait()

    def _serve(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._conn, self.host, 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _conn(self, cr, cw):
        self.active += 1
        sw = None
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
            pipes = {asyncio.ensure_future(self._pipe(cr, sw)), asyncio.ensure_future(self._pipe(sr, cw))}
            _, rest = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            if rest:  # one side closed: give the other 10 s to finish what it was saying
                await asyncio.wait(rest, timeout=10)
                for task in rest:
                    task.cancel()
        finally:
            for w in (cw, sw):
                if w is not None:
                    w.close()
            self.active -= 1

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(1 << 20):
                self.bytes += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    def take(self) -> int:
        """Bytes since the last take, once every proxied connection has closed."""
        wait_for(lambda: self.active == 0, "proxied connections to close")
        n, self.bytes = self.bytes, 0
        return n


class RsyncDaemon:
    """`rsync --daemon --no-detach` on 127.0.0.1:port serving module `mod` at
    root, read-write, no chroot, as the current user. One daemon per transfer,
    wrapped in GNU time: on stop it reports the daemon's CPU and peak RSS
    including the children it forked for the connection (reaped, so counted)."""

    def __init__(self, root: Path, work: Path):
        self.port, self.work = free_port(), work
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        self.conf = work / "rsyncd.conf"
        self.conf.write_text(f"log file = {work / 'rsyncd.log'}\nuse chroot = false\n\n[mod]\n"
                             f"    path = {root}\n    read only = false\n    use chroot = false\n"
                             f"    uid = {user}\n    gid = {group}\n")
        self.proc = None

    def start(self):
        self.times = self.work / "rsyncd.time"
        self.proc = subprocess.Popen(["/usr/bin/time", "-f", "TIME %e %M %U %S", "-o", str(self.times),
                                      "rsync", "--daemon", "--no-detach", f"--config={self.conf}",
                                      "--address=127.0.0.1", f"--port={self.port}"])
        wait_for(lambda: listening(self.port) or self.proc.poll() is not None, "rsync daemon to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"rsync daemon exited with {self.proc.returncode}; see {self.work / 'rsyncd.log'}")
        self.pid = children(self.proc.pid)[0]

    def stop(self):
        """Waits for the connection's processes to be reaped; returns (CPU s, peak RSS MiB)."""
        wait_for(lambda: not children(self.pid), "rsync daemon children to exit")
        os.kill(self.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None
        m = re.search(r"TIME ([\d.]+) (\d+) ([\d.]+) ([\d.]+)", self.times.read_text())
        return float(m[3]) + float(m[4]), int(m[2]) / 1024

    def kill(self):
        if self.proc is not None:
            os.kill(self.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


class ServerMeter:
    """CPU (from /proc/<pid>/stat, all threads) and peak RSS (VmHWM, reset
    through clear_refs) of a long-lived server process over one transfer."""

    def __init__(self, pid: int):
        self.pid = pid

    def start(self):
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass  # then the peak is over the process's life so far
        self.cpu = cpu_s(self.pid)

    def stop(self):
        hwm = next(int(line.split()[1]) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
        return cpu_s(self.pid) - self.cpu, hwm / 1024
