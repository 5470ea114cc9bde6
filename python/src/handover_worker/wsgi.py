"""A WSGI server on handed-over connections: h11 for HTTP/1.1, a pool of threads for the
requests and one selector thread for the connections between requests, as gunicorn's
gthread worker does.

    handover serve -l tcp://127.0.0.1:8080 -w 4 -- python3 -m handover_worker wsgi myapp:app --threads 8

The worker declares a capacity of --connections (default 1000) to the supervisor. A
connection waiting for its next request (a new one, or one kept alive) sits in the selector
thread and holds no pool thread; when the first bytes of a request arrive (or a pipelined
request is already buffered) it goes to the pool, whose --threads threads serve one request
each at a time, and after the response it comes back to the selector. An idle kept-alive
connection is closed after --keepalive seconds, a new one that sends nothing after --timeout
seconds. On DRAIN the idle connections are closed at once and the busy ones end after their
response.
"""

import collections
import http
import os
import selectors
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import h11

_READ = 65536
# After the response, unread request body is read and dropped up to this much, so that
# closing the connection does not reset it (and cut off the response): docs/protocol.md §4.
_DRAIN_BODY_BYTES = 16 << 20
_DRAIN_BODY_SECONDS = 2.0
# select() on Windows takes at most 512 sockets (CPython's FD_SETSIZE there); the poller's
# wake-up socket is one.
_WINDOWS_MAX_CONNECTIONS = 500


class Options:
    def __init__(self, threads=4, keepalive=5.0, timeout=30.0, connections=1000):
        self.threads = threads  # requests served at once
        self.connections = connections  # connections held at once: the declared capacity
        self.keepalive = keepalive  # idle time allowed between requests on a connection
        self.timeout = timeout  # longest wait for one read or write inside a request


class _ClientGone(OSError):
    """The client closed, reset, or timed out mid-request: nothing more to send it. An
    OSError, as the app sees it from wsgi.input."""


def serve(app, worker, options):
    """Serves `app` on every connection `worker` is handed, until DRAIN (returns once the
    connections held are finished) or the supervisor's exit."""
    if sys.platform == "win32" and options.connections > _WINDOWS_MAX_CONNECTIONS:
        sys.stderr.write("handover_worker: --connections %d is more than select() takes on "
                         "Windows; declaring %d\n" % (options.connections, _WINDOWS_MAX_CONNECTIONS))
        options.connections = _WINDOWS_MAX_CONNECTIONS
    draining = threading.Event()
    pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="wsgi")
    poller = _Poller(pool, options)
    poller.start()
    # The main thread only reads the channel, so it answers PINGs while the pool serves.
    worker.hello(capacity=options.connections, heartbeat=True)
    for conn in worker:
        conn.ack()  # before any read of the connection: the protocol's one hard rule
        try:
            http_conn = _HTTPConnection(app, conn, options, draining, poller)
        except Exception:
            conn.finish()
            raise
        poller.add(http_conn)
    if worker.state in ("stopped", "closed"):
        # STOP means now; a closed channel means the supervisor is gone and reads nothing.
        sys.stderr.flush()
        os._exit(0)
    draining.set()  # busy connections end after their response (Connection: close)
    poller.stop()  # idle keep-alive connections close now
    poller.join()
    pool.shutdown(wait=True)


class _Poller(threading.Thread):
    """The selector thread: holds the connections between requests and hands each to the
    pool when its next request begins. Other threads give it connections through `add`
    (a queue, and a byte on a socketpair to wake its select), never by registering
    themselves."""

    def __init__(self, pool, options):
        super().__init__(name="wsgi-poller", daemon=True)
        self.pool = pool
        self.options = options
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.lock = threading.Lock()
        self.queue = collections.deque()  # under lock
        self.stopping = False  # under lock; once set, `add` refuses
        # Waiting connections by deadline; a deadline is now + a fixed time, so insertion
        # order is deadline order within each: new connections, kept-alive ones.
        self.fresh = {}
        self.kept = {}

    def add(self, http_conn):
        """Any thread: `http_conn` waits here for its next request. After `stop`, it is
        finished (closed) instead."""
        with self.lock:
            if not self.stopping:
                self.queue.append(http_conn)
                http_conn = None
        if http_conn is not None:
            http_conn.conn.finish()
            return
        self._wake()

    def stop(self):
        with self.lock:
            self.stopping = True
        self._wake()

    def _wake(self):
        try:
            self.wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # a wake-up is already pending
        except OSError:
            pass

    def run(self):
        try:
            self._loop()
        except Exception:
            sys.stderr.write("handover_worker: the connection poller failed\n%s"
                             % traceback.format_exc())
            with self.lock:
                self.stopping = True
            self._close_all()
        finally:
            self.sel.close()
            self.wake_r.close()
            self.wake_w.close()

    def _loop(self):
        while True:
            with self.lock:
                added, self.queue = self.queue, collections.deque()
                stopping = self.stopping
            now = time.monotonic()
            for h in added:
                if h.ready():
                    self._dispatch(h)  # pipelined: the next request is already buffered
                    continue
                try:
                    self.sel.register(h.sock, selectors.EVENT_READ, h)
                except (OSError, ValueError):
                    h.conn.finish()
                    continue
                if h.served:
                    self.kept[h] = now + self.options.keepalive
                else:
                    self.fresh[h] = now + self.options.timeout
            if stopping:
                self._close_all()
                return
            timeout = None
            for waiting in (self.fresh, self.kept):
                if waiting:
                    first = next(iter(waiting.values()))
                    left = max(0.0, first - now)
                    timeout = left if timeout is None else min(timeout, left)
            for key, _ in self.sel.select(timeout):
                h = key.data
                if h is None:
                    try:
                        while self.wake_r.recv(4096):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                    continue
                self._unregister(h)
                self._dispatch(h)
            now = time.monotonic()
            for waiting in (self.fresh, self.kept):
                while waiting:
                    h, deadline = next(iter(waiting.items()))
                    if deadline > now:
                        break
                    self._unregister(h)
                    h.conn.finish()  # idle too long

    def _unregister(self, h):
        self.sel.unregister(h.sock)
        self.fresh.pop(h, None)
        self.kept.pop(h, None)

    def _dispatch(self, h):
        self.pool.submit(_serve_ready, h)

    def _close_all(self):
        """On DRAIN: idle kept-alive connections close; a new one that has not been served
        yet goes to the pool (its request may be on its way), as does one whose request has
        begun to arrive."""
        with self.lock:
            added, self.queue = self.queue, collections.deque()
        waiting = list(self.fresh) + list(self.kept) + list(added)
        for h in list(self.fresh) + list(self.kept):
            self._unregister(h)
        for h in waiting:
            if not h.served or h.ready() or _readable(h.sock):
                self._dispatch(h)
            else:
                h.conn.finish()


def _readable(sock):
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            return bool(sel.select(0))
    except (OSError, ValueError):
        return False


def _serve_ready(h):
    """A pool thread: serves the requests on `h` whose first bytes are here, then gives it
    back to the poller, or finishes it."""
    keep = False
    try:
        keep = h.serve_ready()
    except _ClientGone:
        pass
    except Exception:
        sys.stderr.write("handover_worker: connection %d from %s: internal error\n%s"
                         % (h.conn.id, h.conn.peer, traceback.format_exc()))
    if keep and not h.draining.is_set():
        h.poller.add(h)
    else:
        h.conn.finish()


class _HTTPConnection:
    def __init__(self, app, conn, options, draining, poller):
        self.app = app
        self.conn = conn
        self.sock = conn.socket
        self.options = options
        self.draining = draining
        self.poller = poller
        self.served = 0  # requests answered: 0 for a connection new to this worker
        self.h = h11.Connection(h11.SERVER)
        self.sock.settimeout(options.timeout)
        # A response goes out as several writes (head, body chunks, end): without this, Nagle
        # holds the second back until the client acknowledges the first, which a client
        # waiting for the rest delays by up to 40 ms (kept-alive connections only: a close
        # flushes).
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            local = self.sock.getsockname()
        except OSError:
            local = None
        if isinstance(local, tuple):
            self.server_name, self.server_port = str(local[0]), str(local[1])
        else:
            self.server_name, self.server_port = "localhost", "0"

    # Reading

    def ready(self):
        """A pipelined request is already buffered."""
        return bool(self.h.trailing_data[0])

    def _event(self):
        while True:
            event = self.h.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(_READ)
            except (OSError, socket.timeout) as e:
                raise _ClientGone(e)
            self.h.receive_data(data)

    def _send(self, event):
        data = self.h.send(event)
        if data:
            try:
                self.sock.sendall(data)
            except (OSError, socket.timeout) as e:
                raise _ClientGone(e)

    # Serving

    def serve_ready(self):
        """Serves the next request (its first bytes are here), and any pipelined after it.
        True: the connection is kept alive, to wait for its next request."""
        while True:
            try:
                event = self._event()
            except h11.RemoteProtocolError as e:
                self._error(e.error_status_hint, "bad request: %s\n" % e)
                return False
            if isinstance(event, h11.ConnectionClosed):
                return False
            if not isinstance(event, h11.Request):
                return False  # nothing else can start a cycle
            if not self._request(event):
                return False
            if self.h.our_state is h11.MUST_CLOSE or not self._finish_request_body():
                return False
            try:
                self.h.start_next_cycle()
            except h11.LocalProtocolError:
                return False
            self.served += 1
            if not self.ready():
                return not self.h.trailing_data[1]  # unless the client has closed

    def _finish_request_body(self):
        """Reads what the app left of the request body. False: give up, close."""
        if self.h.their_state is h11.DONE:
            return True
        deadline = time.monotonic() + _DRAIN_BODY_SECONDS
        dropped = 0
        while self.h.their_state is h11.SEND_BODY:
            if time.monotonic() > deadline or dropped > _DRAIN_BODY_BYTES:
                return False
            try:
                event = self._event()
            except (h11.RemoteProtocolError, _ClientGone):
                return False
            if isinstance(event, h11.Data):
                dropped += len(event.data)
            elif isinstance(event, h11.ConnectionClosed):
                return False
        return self.h.their_state is h11.DONE

    def _error(self, status, message):
        sys.stderr.write("handover_worker: %s" % message)
        if self.h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = ("%d %s\n" % (status, _reason(status).decode())).encode()
        try:
            self._send(h11.Response(status_code=status, reason=_reason(status), headers=[
                (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)),
                (b"connection", b"close")]))
            self._send(h11.Data(data=body))
            self._send(h11.EndOfMessage())
        except (h11.LocalProtocolError, _ClientGone):
            pass

    def _request(self, req):
        """Runs the app for one request. False: the connection must close now."""
        response = _Response(self, req)
        environ = self._environ(req)
        try:
            result = self.app(environ, response.start_response)
            try:
                for chunk in result:
                    if chunk:
                        response.write(chunk)
                response.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except _ClientGone:
            return False
        except Exception:
            sys.stderr.write("handover_worker: %s %s: the app raised\n%s"
                             % (req.method.decode("latin-1"), req.target.decode("latin-1"),
                                traceback.format_exc()))
            if response.headers_sent:
                return False  # the client sees a cut-off response, not a complete one
            self._error(500, "answered 500\n")
            return False
        return True

    def _environ(self, req):
        target = req.target
        if not target.startswith(b"/"):
            parts = urllib.parse.urlsplit(target)  # absolute form, or "*"
            target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
        path, _, query = target.partition(b"?")
        env = {
            "REQUEST_METHOD": req.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": self.server_name,
            "SERVER_PORT": self.server_port,
            "SERVER_PROTOCOL": "HTTP/" + req.http_version.decode("ascii"),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": _Input(self),
            "wsgi.input_terminated": True,  # reads end at the body's end, chunked or not
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.options.threads > 1,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "handover.listener": self.conn.listener,
            "handover.connection_id": self.conn.id,
        }
        if self.conn.peer is not None:
            # From the hand-off: the address the supervisor accepted the connection from.
            env["REMOTE_ADDR"], env["REMOTE_PORT"] = self.conn.peer[0], str(self.conn.peer[1])
        for name, value in req.headers:
            if b"_" in name:
                continue  # would alias a dashed name in environ (header smuggling)
            if name == b"content-type":
                key = "CONTENT_TYPE"
            elif name == b"content-length":
                key = "CONTENT_LENGTH"
            else:
                key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            value = value.decode("latin-1")
            if key in env:
                value = env[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            env[key] = value
        return env


class _Response:
    """start_response and the body writes for one request."""

    def __init__(self, http, req):
        self.http = http
        self.head = req.method == b"HEAD"
        self.status = None
        self.headers = None
        self.headers_sent = False

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        self.status, self.headers = status, headers
        return self.write

    def _send_headers(self):
        if self.status is None:
            raise AssertionError("the app returned without calling start_response")
        code, _, reason = self.status.partition(" ")
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]
        if self.http.draining.is_set():
            headers.append((b"connection", b"close"))
        self.http._send(h11.Response(status_code=int(code), reason=reason.encode("latin-1"),
                                     headers=headers))
        self.headers_sent = True

    def write(self, data):
        if not self.headers_sent:
            self._send_headers()
        if data and not self.head:
            self.http._send(h11.Data(data=data))

    def finish(self):
        if not self.headers_sent:
            self._send_headers()
        self.http._send(h11.EndOfMessage())


class _Input:
    """wsgi.input: the request body, read as the app asks for it."""

    def __init__(self, http):
        self.http = http
        self.buf = bytearray()
        self.eof = False

    def _fill(self):
        h = self.http.h
        if self.eof:
            return False
        if h.they_are_waiting_for_100_continue:
            self.http._send(h11.InformationalResponse(status_code=100, headers=[],
                                                      reason=b"Continue"))
        if h.their_state is not h11.SEND_BODY:
            self.eof = True
            return False
        try:
            event = self.http._event()
        except h11.RemoteProtocolError as e:
            raise _ClientGone(e)  # a body cut short, or malformed chunks
        if isinstance(event, h11.Data):
            self.buf += event.data
            return True
        if isinstance(event, h11.EndOfMessage):
            self.eof = True
            return False
        raise _ClientGone("the client closed mid-body")

    def read(self, size=-1):
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self.buf)
        else:
            while len(self.buf) < size and self._fill():
                pass
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def read1(self, size=-1):
        if not self.buf:
            self._fill()
        return self.read(len(self.buf) if size is None or size < 0 else min(size, len(self.buf)))

    def readline(self, size=-1):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                n = i + 1
                break
            if not self._fill():
                n = len(self.buf)
                break
        if size is not None and size >= 0:
            n = min(n, size)
        return self.read(n)

    def readlines(self, hint=-1):
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def _reason(status):
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
