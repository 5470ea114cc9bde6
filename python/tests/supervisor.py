"""The real `handover serve` (HANDOVER_BIN, default target/debug/handover) run as a process
for a test, with a private control socket and its log in a file."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HANDOVER = os.environ.get("HANDOVER_BIN") or str(REPO / "target" / "debug" / "handover")
APPS = Path(__file__).resolve().parent / "apps"


class Supervisor:
    def __init__(self, kind, app, workers=2, args=(), worker_args=(), cwd=APPS):
        assert Path(HANDOVER).is_file(), "no supervisor binary at %s (cargo build -p handover-cli)" % HANDOVER
        self.dir = tempfile.mkdtemp(prefix="hw-")  # short: the control socket's path must be
        self.control = os.path.join(self.dir, "control.sock")
        self.log = os.path.join(self.dir, "supervisor.log")
        # The documented command, with this venv's python3.
        cmd = [HANDOVER, "serve", "-l", "http=tcp://127.0.0.1:0", "-w", str(workers),
               "--control", self.control, *args, "--",
               sys.executable, "-m", "handover_worker", kind, app, *worker_args]
        with open(self.log, "wb") as log:
            # No .pyc: a test that rewrites an app within the same second, at the same
            # size, would otherwise import the old code (the cache is keyed on both).
            env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
            self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        self.started = time.monotonic()

    def log_text(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def status(self):
        try:
            out = subprocess.run([HANDOVER, "status", "--json", "--control", self.control],
                                 capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait_ready(self, n, within=30.0):
        """Waits for `n` ready workers; returns the listener's (host, port)."""
        deadline = time.monotonic() + within
        while True:
            s = self.status()
            if s is not None:
                ready = [w for w in s["programs"][0]["workers"] if w["state"] == "ready"]
                if len(ready) >= n:
                    host, port = s["listeners"][0]["address"][len("tcp://"):].rsplit(":", 1)
                    return host, int(port)
            if self.proc.poll() is not None:
                raise AssertionError("the supervisor exited (%s):\n%s" % (self.proc.returncode, self.log_text()))
            if time.monotonic() > deadline:
                raise AssertionError("workers not ready in %ss:\n%s" % (within, self.log_text()))
            time.sleep(0.05)

    def handover(self, *args, timeout=60):
        """`handover ARGS --control ...`: (exit status, output)."""
        r = subprocess.run([HANDOVER, *args, "--control", self.control], capture_output=True,
                           text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def totals(self):
        return self.status()["programs"][0]["totals"]

    def worker_pids(self):
        return sorted(w["pid"] for w in self.status()["programs"][0]["workers"] if w.get("pid"))

    def children(self):
        """The worker processes: the supervisor's direct children, read from /proc."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if rest[0] != "Z" and int(rest[1]) == self.proc.pid:
                out.append(int(entry))
        return out

    def stop(self, within=20.0):
        """SIGTERM (drain), then the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError("no exit %ss after SIGTERM:\n%s" % (within, self.log_text()))

    def close(self, failed=False):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if failed:
            sys.stderr.write("supervisor log (%s):\n%s\n" % (self.log, self.log_text()))
        shutil.rmtree(self.dir, ignore_errors=True)


def request_once(addr, path, timeout=15.0):
    """GET on a fresh connection with `Connection: close`, read to the end of the stream.
    Returns the body of a complete 200 response that ended cleanly; raises otherwise.
    No retry: a lost connection is a failure."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError("bad response: %r" % data[:200])
    lengths = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
               if l.lower().startswith(b"content-length:")]
    if not lengths or int(lengths[0]) != len(body):
        raise AssertionError("cut off: %r" % data[:200])
    return body
