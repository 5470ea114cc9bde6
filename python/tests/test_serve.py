"""Real apps (Flask for WSGI, Starlette for ASGI, from PyPI) served by the real supervisor in
prefork mode with the documented command:

    handover serve -l tcp://127.0.0.1:8080 -w N -- python3 -m handover_worker {wsgi|asgi} MODULE:app
"""

import base64
import hashlib
import http.client
import os
import random
import socket
import threading
import time

import pytest

from supervisor import SLOW, WINE, Supervisor, request_once

# One app per kind for the tests that start a supervisor each...
KINDS = {
    "wsgi": ("flask_app:app", ["--threads", "4"], "flask"),
    "asgi": ("starlette_app:app", [], "starlette"),
}
# ...and every app for the HTTP tests, which share one supervisor per app.
APPS = {
    "flask": ("wsgi", "flask_app:app", ["--threads", "4"]),
    "django": ("wsgi", "django_app:application", ["--threads", "4"]),
    "starlette": ("asgi", "starlette_app:app", []),
    "fastapi": ("asgi", "fastapi_app:app", []),
}


@pytest.fixture(scope="module", params=sorted(APPS))
def served(request):
    name = request.param
    kind, app, worker_args = APPS[name]
    sup = Supervisor(kind, app, workers=2, worker_args=worker_args)
    try:
        sup.addr = sup.wait_ready(2)
        sup.kind, sup.name = kind, name
        yield sup
    finally:
        sup.close(failed=getattr(request.node, "failed", False))


def connect(sup):
    return http.client.HTTPConnection(*sup.addr, timeout=15)


def test_get(served):
    c = connect(served)
    c.request("GET", "/")
    r = c.getresponse()
    assert (r.status, r.read().decode().split()[:3]) == (200, ["hello", "from", served.name])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_post_5mb(served, chunked):
    if chunked and served.name == "django":
        pytest.skip("Django 5.2 reads a request body by its Content-Length only, whatever the server")
    body = os.urandom(5 << 20)
    c = connect(served)
    if chunked:
        c.request("POST", "/upload", body=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                  encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    else:
        c.request("POST", "/upload", body=body)
    r = c.getresponse()
    assert r.status == 200
    assert r.read().decode() == "%d %s" % (len(body), hashlib.sha256(body).hexdigest())


def test_streamed_response_is_chunked(served):
    c = connect(served)
    c.request("GET", "/stream")
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Transfer-Encoding") == "chunked" and r.getheader("Content-Length") is None
    assert r.read().decode() == "".join("chunk %d\n" % i for i in range(100))


def test_keep_alive_reuses_the_connection(served):
    before = served.totals()["dispatched"]
    c = connect(served)
    socks = set()
    for path in ["/", "/stream", "/remote", "/"]:
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 200 and r.getheader("Connection", "").lower() != "close"
        r.read()
        socks.add(id(c.sock))
    assert len(socks) == 1, "one connection for all four requests"
    c.close()
    assert served.totals()["dispatched"] == before + 1, "the supervisor handed over one connection"


def raw_exchange(sup, *sends, until=b""):
    """Sends each of `sends` on one connection (waiting for `until` after the first), then
    reads to the end of the stream."""
    with socket.create_connection(sup.addr, timeout=15) as s:
        s.sendall(sends[0])
        got = b""
        while until and until not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        for data in sends[1:]:
            s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


def test_pipelined_requests_are_answered_in_order(served):
    got = raw_exchange(served, b"GET /remote HTTP/1.1\r\nHost: t\r\n\r\n"
                               b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert got.count(b"HTTP/1.1 200") == 2, got
    assert got.index(b"127.0.0.1 ") < got.index(b"hello from " + served.name.encode()), got


def test_expect_100_continue(served):
    body = b"x" * 100000
    got = raw_exchange(served, b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body),
                       body, until=b"100 Continue\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), got
    assert got.endswith(("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode()), got


def test_head_has_headers_and_no_body(served):
    got = raw_exchange(served, b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"", got


def test_http_1_0_client(served):
    got = raw_exchange(served, b"GET / HTTP/1.0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200") and b"hello from " + served.name.encode() in got, got


def test_websocket_echo_and_the_connection_is_finished_after(served):
    if served.name != "starlette":
        pytest.skip("the WebSocket route is in the Starlette app only")
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(served.addr, timeout=15) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        mask = os.urandom(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi"))
        s.sendall(bytes([0x81, 0x80 | 2]) + mask + payload)  # a masked text frame
        while len(rest) < 2 + len("echo: hi"):
            rest += s.recv(4096)
        assert rest[:2 + 8] == bytes([0x81, 8]) + b"echo: hi", rest
        s.sendall(bytes([0x88, 0x80]) + mask)  # close, in answer to the app's
        while s.recv(4096):
            pass
    # FINISHED came once the WebSocket ended: no connection left at any worker.
    deadline = time.monotonic() + 5 * SLOW
    while sum(w["live"] for w in served.status()["programs"][0]["workers"]) != 0:
        assert time.monotonic() < deadline, served.status()["programs"][0]["workers"]
        time.sleep(0.1)


def test_remote_addr_is_the_clients(served):
    c = connect(served)
    c.connect()
    host, port = c.sock.getsockname()[:2]
    c.request("GET", "/remote")
    assert c.getresponse().read().decode() == "%s %d" % (host, port)


def test_an_app_exception_is_a_500_and_the_worker_lives(served):
    pids = served.worker_pids()
    restarts = served.totals()["restarts"]
    for _ in range(4):  # both workers, round-robin
        c = connect(served)
        c.request("GET", "/raise")
        r = c.getresponse()
        assert r.status == 500
        r.read()
    for _ in range(4):
        c = connect(served)
        c.request("GET", "/")
        assert c.getresponse().status == 200
    assert served.worker_pids() == pids and served.totals()["restarts"] == restarts
    if served.name != "django":  # Django logs it only if its LOGGING says so
        assert "the app failed on purpose" in served.log_text(), "the traceback is in the log"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_drain_lets_the_request_in_flight_finish(kind):
    app, worker_args, name = KINDS[kind]
    sup = Supervisor(kind, app, workers=1, worker_args=worker_args)
    failed = True
    try:
        addr = sup.wait_ready(1)
        idle = http.client.HTTPConnection(*addr, timeout=15)
        idle.request("GET", "/")
        assert idle.getresponse().read().startswith(b"hello")  # now idle, kept alive
        got = []
        t = threading.Thread(target=lambda: got.append(request_once(addr, "/slow?s=1")))
        t.start()
        time.sleep(0.4)
        stopping = time.monotonic()
        assert sup.stop() == 0, sup.log_text()
        took = time.monotonic() - stopping
        t.join(10 * SLOW)
        assert got and got[0].startswith(b"hello from " + name.encode())
        assert idle.sock.recv(100) == b"", "the idle keep-alive connection was closed"
        # Not held open for the keep-alive timeout (5 s) by the idle connection.
        assert took < 4 * SLOW, took
        if kind == "asgi":
            assert "lifespan shutdown ran" in sup.log_text()
        failed = False
    finally:
        sup.close(failed)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kill_9_under_load_loses_only_what_workers_had_read(kind):
    """Connect-per-request clients while a random worker is killed with SIGKILL every 100 ms
    (under Wine: `taskkill /F` every second): every request that failed is one the supervisor counted lost mid-request (a worker had
    acknowledged it, so may have read it), none refused, most answered."""
    app, worker_args, _ = KINDS[kind]
    # Under Wine a kill is a `taskkill` process (about a second) and a restart takes seconds.
    # There the load runs until 4 kills (at most 3,000 requests), here for 1,200 requests.
    total, threads, every, answered = (3000, 4, 0.5, 50) if WINE else (1200, 8, 0.1, 90)
    sup = Supervisor(kind, app, workers=3, worker_args=worker_args)
    failed = True
    try:
        addr = sup.wait_ready(3)
        stop = threading.Event()
        kills = []
        next_request = iter(range(total))
        lock = threading.Lock()
        results = {"sent": 0, "ok": 0, "failed": 0, "refused": 0, "errors": []}

        def killer():
            rng = random.Random(7)
            while not stop.wait(every):
                if sup.kill_a_worker(rng):
                    kills.append(1)
                if WINE and len(kills) >= 4:
                    enough.set()  # the clients stop, and the workers may come back
                    return

        enough = threading.Event()

        def client():
            while not enough.is_set():
                with lock:
                    if next(next_request, None) is None:
                        return
                try:
                    # A long timeout: with every worker just killed and restarting on a
                    # loaded machine, a request can wait in the queue for seconds; only a
                    # lost connection may fail here, not a slow one.
                    request_once(addr, "/slow?s=0.002", timeout=60)
                    outcome = "ok"
                except ConnectionRefusedError as e:
                    outcome, err = "refused", e
                except Exception as e:
                    outcome, err = "failed", e
                with lock:
                    results["sent"] += 1
                    results[outcome] += 1
                    if outcome != "ok" and len(results["errors"]) < 30:
                        results["errors"].append(repr(err))

        k = threading.Thread(target=killer)
        k.start()
        started = time.monotonic()
        clients = [threading.Thread(target=client) for _ in range(threads)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120 * SLOW)
        stop.set()
        k.join()
        time.sleep(0.5)  # the last deaths are settled
        assert sup.proc.poll() is None, "the supervisor gave up:\n" + sup.log_text()
        t = sup.totals()
        print("%s: %d kills in %.1fs; answered %d/%d; failed %d; lost mid-request %d; "
              "re-dispatched %d; restarts %d" % (kind, len(kills), time.monotonic() - started,
                                                 results["ok"], results["sent"], results["failed"],
                                                 t["lost_mid_request"], t["redispatched"],
                                                 t["restarts"]))
        if results["failed"] != t["lost_mid_request"]:
            print("errors: %s\ntotals: %s" % (results["errors"], t))
        assert len(kills) >= (3 if WINE else 5), "the killer ran"
        assert results["refused"] == 0, results["errors"]
        assert results["failed"] == t["lost_mid_request"], (results["errors"], results, t)
        assert results["ok"] * 100 >= results["sent"] * answered, results
        sup.wait_ready(3)
        failed = False
    finally:
        sup.close(failed)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_syntax_error_in_the_app_fails_fast_with_the_reason(kind):
    sup = Supervisor(kind, "broken_app:app", workers=2)
    failed = True
    try:
        try:
            code = sup.proc.wait(timeout=30 * SLOW)
        except Exception:
            raise AssertionError("still running %d s after start:\n%s" % (30 * SLOW, sup.log_text()))
        elapsed = time.monotonic() - sup.started
        log = sup.log_text()
        print("%s: the supervisor gave up after %.1fs with exit %d" % (kind, elapsed, code))
        assert code == 3, log  # the supervisor's crash-loop exit
        assert "SyntaxError" in log and "broken_app.py" in log, log
        assert "handover_worker: cannot load the app: importing 'broken_app' failed" in log, log
        assert elapsed < 15 * SLOW, log
        failed = False
    finally:
        sup.close(failed)


VERSIONED = {
    "wsgi": '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"%s"]
''',
    "asgi": '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"%s"})
''',
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reload_picks_up_new_code(kind, tmp_path):
    (tmp_path / "versioned.py").write_text(VERSIONED[kind] % "v1")
    # No .pyc: rewritten within the same second at the same size, the app would otherwise
    # be imported from the stale cache (keyed on both).
    sup = Supervisor(kind, "versioned:app", workers=2, cwd=tmp_path,
                     env={"PYTHONDONTWRITEBYTECODE": "1"})
    failed = True
    try:
        addr = sup.wait_ready(2)
        assert {request_once(addr, "/") for _ in range(4)} == {b"v1"}
        (tmp_path / "versioned.py").write_text(VERSIONED[kind] % "v2")
        code, out = sup.handover("reload")
        assert code == 0, out
        assert {request_once(addr, "/") for _ in range(4)} == {b"v2"}
        failed = False
    finally:
        sup.close(failed)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_max_requests_recycles_workers_without_a_failed_request(kind):
    """--max-requests: a worker is sent DRAIN after its last connection, finishes it and
    exits 0; its replacement serves on. Every request is answered."""
    app, worker_args, name = KINDS[kind]
    sup = Supervisor(kind, app, workers=2, args=["--max-requests", "5"], worker_args=worker_args)
    failed = True
    try:
        addr = sup.wait_ready(2)
        for _ in range(30):
            assert request_once(addr, "/", timeout=30 * SLOW).startswith(b"hello from " + name.encode())
        t = sup.wait_ready(2) and sup.totals()
        assert t["restarts_by_cause"]["max_requests"] >= 4, t
        assert t["lost_mid_request"] == 0 and t["restarts_by_cause"]["exit"] == 0, t
        failed = False
    finally:
        sup.close(failed)


def test_wsgi_idle_keep_alive_connections_do_not_hold_threads():
    """2 workers x --threads 2, and 12 clients each keeping its own connection alive
    between requests (as a browser's 6 do): every client is answered at once. A worker
    that held a thread per connection would serve 4, and leave the other 8 in the
    supervisor's backlog until a kept-alive connection closed (--keepalive, 5 s)."""
    sup = Supervisor("wsgi", "flask_app:app", workers=2, worker_args=["--threads", "2"])
    failed = True
    try:
        addr = sup.wait_ready(2)
        clients = 12
        done = threading.Barrier(clients + 1)
        took, errors = [], []

        def client():
            c = http.client.HTTPConnection(*addr, timeout=30 * SLOW)
            try:
                started = time.monotonic()
                for _ in range(3):
                    c.request("GET", "/")
                    r = c.getresponse()
                    assert r.status == 200 and r.read().startswith(b"hello from flask")
                    time.sleep(0.1)  # idle, kept alive
                took.append(time.monotonic() - started)
            except Exception as e:
                errors.append(repr(e))
            try:
                done.wait(30 * SLOW)  # every connection stays open until all are answered
            except threading.BrokenBarrierError:
                pass
            c.close()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        try:
            done.wait(30 * SLOW)
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join(30 * SLOW)
        assert not errors, errors
        assert len(took) == clients and max(took) < 2.5 * SLOW, sorted(took)
        failed = False
    finally:
        sup.close(failed)


def test_wsgi_threads_bound_the_requests_served_at_once():
    """--threads 2: 8 requests at once to a 0.5 s app on one worker take 4 rounds (>= 2 s),
    though the worker holds all 8 connections."""
    sup = Supervisor("wsgi", "flask_app:app", workers=1, worker_args=["--threads", "2"])
    failed = True
    try:
        addr = sup.wait_ready(1)
        got, errors = [], []

        def one():
            try:
                got.append(request_once(addr, "/slow?s=0.5", timeout=30 * SLOW))
            except Exception as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30 * SLOW)
        took = time.monotonic() - started
        assert not errors and len(got) == 8, errors
        assert took >= 2.0, took
        assert took < 6 * SLOW, took
        failed = False
    finally:
        sup.close(failed)


def test_wsgi_idle_connections_close_after_keepalive():
    """The selector thread closes a kept-alive connection --keepalive after its last
    response, and the supervisor is told (FINISHED): no connection is left at the worker."""
    sup = Supervisor("wsgi", "flask_app:app", workers=1, worker_args=["--keepalive", "0.5"])
    failed = True
    try:
        addr = sup.wait_ready(1)
        c = http.client.HTTPConnection(*addr, timeout=15)
        c.request("GET", "/")
        assert c.getresponse().read().startswith(b"hello from flask")
        idle = time.monotonic()
        assert c.sock.recv(100) == b"", "closed by the worker"
        took = time.monotonic() - idle
        assert 0.4 <= took < 3 * SLOW, took
        deadline = time.monotonic() + 5 * SLOW
        while sum(w["live"] for w in sup.status()["programs"][0]["workers"]) != 0:
            assert time.monotonic() < deadline, sup.status()["programs"][0]["workers"]
            time.sleep(0.1)
        failed = False
    finally:
        sup.close(failed)


def test_wsgi_connections_that_send_nothing_hold_no_thread():
    """--threads 1: two clients that connect and send nothing (a browser's preconnect) do
    not keep a third client's request waiting."""
    sup = Supervisor("wsgi", "flask_app:app", workers=1, worker_args=["--threads", "1"])
    failed = True
    try:
        addr = sup.wait_ready(1)
        silent = [socket.create_connection(addr, timeout=15) for _ in range(2)]
        try:
            time.sleep(0.3)  # both handed to the worker
            started = time.monotonic()
            assert request_once(addr, "/", timeout=15).startswith(b"hello from flask")
            assert time.monotonic() - started < 2 * SLOW
        finally:
            for s in silent:
                s.close()
        failed = False
    finally:
        sup.close(failed)


def test_wsgi_kept_alive_requests_are_not_held_back_by_nagle():
    """30 requests back to back on one kept-alive connection. A response goes out in several
    writes (head, body, end); without TCP_NODELAY the second waits for the client's delayed
    acknowledgement of the first, about 40 ms a request (1.2 s here), where it takes about a
    millisecond."""
    sup = Supervisor("wsgi", "flask_app:app", workers=1)
    failed = True
    try:
        addr = sup.wait_ready(1)
        c = http.client.HTTPConnection(*addr, timeout=30 * SLOW)
        c.request("GET", "/")  # the first one: connection set-up, app warm-up
        assert c.getresponse().read().startswith(b"hello from flask")
        started = time.monotonic()
        for _ in range(30):
            c.request("GET", "/")
            r = c.getresponse()
            assert r.status == 200 and r.read().startswith(b"hello from flask")
        took = time.monotonic() - started
        c.close()
        assert took < 0.6 * SLOW, "30 kept-alive requests took %.2f s" % took
        failed = False
    finally:
        sup.close(failed)
