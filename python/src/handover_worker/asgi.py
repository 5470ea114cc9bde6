"""An ASGI server on handed-over connections: uvicorn's connection layer (its HTTP protocol
classes, WebSockets when a websockets library is installed, and its lifespan handling) on
an asyncio loop, many connections per worker.

    handover serve -l tcp://127.0.0.1:8080 -w 4 -- python3 -m handover_worker asgi myapp:app

Why uvicorn's protocol classes and not an ASGI layer of our own on h11: they are what most
ASGI apps already run on (request/response cycles, flow control, disconnects, 100-continue,
keep-alive timeouts, WebSocket upgrades, the lifespan protocol), and a handed-over socket is
an accepted socket, which asyncio's `loop.connect_accepted_socket` feeds to them unchanged.
The cost is that `uvicorn.Config`, `ServerState` and the protocol constructors are uvicorn's
internals rather than a documented API: the `asgi` extra pins the uvicorn versions tested.

On Unix the channel is read on the event loop itself (`add_reader`), so PINGs are answered by
the loop: a loop stuck in a handler stops answering and the supervisor replaces the worker.
On Windows a thread reads it (a pipe handle cannot be watched by the loop).
"""

import asyncio
import os
import sys
import threading

import uvicorn
from uvicorn.server import ServerState

from ._app import EXIT_STARTUP


class Options:
    def __init__(self, capacity=1000, keepalive=5.0, lifespan="auto", access_log=False,
                 log_level="info", http="auto", ws="auto"):
        self.capacity = capacity
        self.keepalive = keepalive
        self.lifespan = lifespan
        self.access_log = access_log
        self.log_level = log_level
        self.http = http
        self.ws = ws


def serve(app, worker, options):
    """Runs the lifespan startup, says HELLO, serves until DRAIN, then the lifespan
    shutdown. Returns an exit status."""
    return asyncio.run(_serve(app, worker, options))


def _settle(future, result, error):
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _finishing(cls, held):
    """`cls` (a uvicorn protocol class) that reports its connection FINISHED once the
    transport is closed (the response flushed): the end of the stream comes after."""

    class Handed(cls):
        _handover_conn = None

        def connection_made(self, transport):
            if self._handover_conn is not None:
                held[transport] = self._handover_conn
            super().connection_made(transport)

        def connection_lost(self, exc):
            try:
                super().connection_lost(exc)
            finally:
                conn = held.pop(self.transport, None)
                if conn is not None:
                    conn.finish()

    Handed.__name__ = Handed.__qualname__ = "Handed" + cls.__name__
    return Handed


async def _serve(app, worker, options):
    loop = asyncio.get_running_loop()
    config = uvicorn.Config(app, lifespan=options.lifespan, access_log=options.access_log,
                            log_level=options.log_level, timeout_keep_alive=options.keepalive,
                            http=options.http, ws=options.ws,
                            # handover is the front server: the peer is the hand-off's.
                            proxy_headers=False, server_header=False)
    config.load()
    held = {}  # transport -> handover Connection, until the transport is closed
    http_class = _finishing(config.http_protocol_class, held)
    if config.ws_protocol_class is not None:
        config.ws_protocol_class = _finishing(config.ws_protocol_class, held)
    state = ServerState()
    lifespan = config.lifespan_class(config)
    await lifespan.startup()
    if lifespan.should_exit:
        sys.stderr.write("handover_worker: the app's lifespan startup failed\n")
        return EXIT_STARTUP

    def start(conn):
        sock = conn.ack()  # before the loop reads a byte of it
        # The transport gets a duplicate and closes it; `conn` keeps the original for its
        # FINISHED-then-shutdown once the transport is done.
        dup = sock.dup()

        def factory():
            p = http_class(config=config, server_state=state, app_state=lifespan.state,
                           _loop=loop)
            p._handover_conn = conn
            return p

        async def connect():
            try:
                await loop.connect_accepted_socket(factory, dup)
            except Exception as e:
                dup.close()
                sys.stderr.write("handover_worker: connection %d: %s\n" % (conn.id, e))
                conn.finish()

        task = loop.create_task(connect())
        starting.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(starting.discard)

    starting = set()

    ended = loop.create_future()

    def readable():
        try:
            while True:
                conn = worker.next(block=False)
                if conn is None:
                    break
                start(conn)
        except Exception as e:
            loop.remove_reader(worker.fileno())
            if not ended.done():
                ended.set_exception(e)
            return
        if worker.state != "ready":
            loop.remove_reader(worker.fileno())
            if not ended.done():
                ended.set_result(worker.state)

    def read_on_a_thread():
        # Windows: a pipe handle cannot be watched by the loop; a thread reads it and
        # passes each connection to the loop (PINGs are then answered by this thread).
        try:
            for conn in worker:
                loop.call_soon_threadsafe(start, conn)
            loop.call_soon_threadsafe(_settle, ended, worker.state, None)
        except Exception as e:
            loop.call_soon_threadsafe(_settle, ended, None, e)

    worker.hello(capacity=options.capacity, heartbeat=True)
    if worker.fileno() is not None:
        loop.add_reader(worker.fileno(), readable)
    else:
        threading.Thread(target=read_on_a_thread, daemon=True, name="channel").start()
    why = await ended
    if why in ("stopped", "closed"):
        sys.stderr.flush()
        os._exit(0)
    # DRAIN: take nothing new (the supervisor sends nothing more), end idle keep-alive
    # connections, let the others finish their response, then the lifespan shutdown.
    # uvicorn's shutdown() closes a connection that has no request in progress, which for a
    # connection handed over just before DRAIN would drop the request still on its way: such
    # a connection (no request yet) gets --keepalive seconds for it first.
    drain_started = loop.time()
    shut = set()
    while held or starting or state.tasks:
        for proto in list(state.connections):
            if proto in shut:
                continue
            fresh = getattr(proto, "cycle", None) is None
            if fresh and loop.time() - drain_started < options.keepalive:
                continue
            shut.add(proto)
            proto.shutdown()
        await asyncio.sleep(0.05)
    await lifespan.shutdown()
    return 0
