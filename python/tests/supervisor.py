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
APPS = Path(__file__).resolve().parent / "apps"
# HANDOVER_TEST_WINE=1: the Windows build of the supervisor under Wine, with the embeddable
# Windows CPython of .ci/setup-wine-python.sh, driven from this (Linux) process's clients.
WINE = os.environ.get("HANDOVER_TEST_WINE") == "1"
if WINE:
    HANDOVER = os.environ.get("HANDOVER_BIN") or str(
        REPO / "target" / "x86_64-pc-windows-gnu" / "debug" / "handover.exe")
    PYTHON = str(REPO / "target" / "winpython" / "cp313" / "python.exe")
else:
    HANDOVER = os.environ.get("HANDOVER_BIN") or str(REPO / "target" / "debug" / "handover")
    PYTHON = sys.executable
# Wine starts a Python worker in seconds, not a tenth of one.
SLOW = 6 if WINE else 1


def win(path):
    """The path Wine's programs see for a Linux path (drive Z: is /)."""
    return "Z:" + str(path).replace("/", "\\") if WINE else str(path)


def _handover_cmd(*args):
    return (["wine", HANDOVER] if WINE else [HANDOVER]) + list(args)


class Supervisor:
    def __init__(self, kind, app, workers=2, args=(), worker_args=(), cwd=APPS):
        assert Path(HANDOVER).is_file(), "no supervisor binary at %s (scripts/test.sh builds it)" % HANDOVER
        assert Path(PYTHON).is_file(), "no Python at %s (scripts/setup.sh installs it)" % PYTHON
        self.dir = tempfile.mkdtemp(prefix="hw-")  # short: the control socket's path must be
        self.control = win(os.path.join(self.dir, "control.sock"))
        self.log = os.path.join(self.dir, "supervisor.log")
        # The documented command, with the test environment's Python.
        cmd = _handover_cmd("serve", "-l", "http=tcp://127.0.0.1:0", "-w", str(workers),
                            "--control", self.control, *args, "--",
                            win(PYTHON), "-m", "handover_worker", kind, app, *worker_args)
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
            out = subprocess.run(_handover_cmd("status", "--json", "--control", self.control),
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=10 * SLOW)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait_ready(self, n, within=30.0):
        """Waits for `n` ready workers; returns the listener's (host, port)."""
        within *= SLOW
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
        r = subprocess.run(_handover_cmd(*args, "--control", self.control), capture_output=True,
                           stdin=subprocess.DEVNULL, text=True, timeout=timeout * SLOW)
        return r.returncode, r.stdout + r.stderr

    def totals(self):
        return self.status()["programs"][0]["totals"]

    def worker_pids(self):
        return sorted(w["pid"] for w in self.status()["programs"][0]["workers"] if w.get("pid"))

    def kill_a_worker(self, rng):
        """Kills a random worker from outside: SIGKILL on Linux, `taskkill /F` under Wine
        (as an operator would). Returns whether a worker was there to kill."""
        if WINE:
            pids = self.worker_pids()
            if not pids:
                return False
            r = subprocess.run(["wine", "taskkill", "/F", "/PID", str(rng.choice(pids))],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            return r.returncode == 0
        pids = self.children()
        if not pids:
            return False
        try:
            os.kill(rng.choice(pids), signal.SIGKILL)
            return True
        except ProcessLookupError:
            return False

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
        """Drain (SIGTERM; `handover stop` under Wine), then the exit status."""
        if WINE:
            code, out = self.handover("stop")
            assert code == 0, out
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=within * SLOW)
        except subprocess.TimeoutExpired:
            raise AssertionError("no exit %ss after SIGTERM:\n%s" % (within, self.log_text()))

    def close(self, failed=False):
        if WINE and self.proc.poll() is None:
            # Its workers are in kill-on-close job objects; a drain ends them surely.
            try:
                self.handover("stop")
                self.proc.wait(timeout=20 * SLOW)
            except (subprocess.TimeoutExpired, OSError):
                pass
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
