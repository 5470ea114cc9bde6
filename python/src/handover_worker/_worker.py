"""The worker side of the protocol: HELLO, connections in, ACK/FINISHED/REJECT out."""

import os
import socket
import threading

from . import _frame, _sys
from ._frame import ProtocolError
from ._sys import NotSupervised

__all__ = ["Worker", "Connection", "ProtocolError", "NotSupervised"]


class Connection:
    """A connection the supervisor handed to this worker.

    `socket` is yours to serve once you have called `ack()` (the protocol forbids reading
    it before). End with `finish()` (after `ack`) or `reject()` (instead of `ack`).

    Attributes: `id` (the supervisor's connection id), `peer` (`(host, port)`, or None for
    a Unix-socket listener), `listener` (the listener's name, e.g. "listen0"),
    `listener_index`, `socket`.
    """

    __slots__ = ("_worker", "id", "peer", "listener", "listener_index", "socket", "_state")

    def __init__(self, worker, msg, sock):
        self._worker = worker
        self.id = msg.id
        self.peer = msg.peer
        self.listener = msg.listener
        self.listener_index = msg.listener_index
        self.socket = sock
        self._state = "new"

    def __repr__(self):
        return "<Connection %d from %s on %s (%s)>" % (self.id, self.peer, self.listener, self._state)

    def ack(self):
        """Tells the supervisor this worker has the connection; returns its socket. Call
        before the first read: once the supervisor has the ACK, a worker that dies loses
        the request."""
        if self._state != "new":
            raise RuntimeError("ack() on a connection that is %s" % self._state)
        self._worker._send(_frame.id_message(_frame.ACK, self.id))
        self._state = "acked"
        return self.socket

    def reject(self):
        """Hands the connection back unread (instead of `ack`); the supervisor gives it to
        another worker. Closes this worker's copy."""
        if self._state != "new":
            raise RuntimeError("reject() on a connection that is %s" % self._state)
        self._state = "done"
        try:
            self._worker._send(_frame.id_message(_frame.REJECT, self.id))
        finally:
            self.socket.close()

    def finish(self):
        """Reports the connection done (FINISHED), then ends the stream for the client
        (shutdown for writing) and closes this worker's copy. Idempotent.

        The order matters (docs/protocol.md, section 4): FINISHED before the end of the
        stream, so a worker killed in between is never counted as having lost a connection
        whose client got the whole response; the shutdown because the supervisor still
        holds a copy of the socket, and without it the client would see the end only when
        the supervisor has read FINISHED."""
        if self._state == "done":
            return
        acked, self._state = self._state == "acked", "done"
        try:
            if acked:
                try:
                    self._worker._send(_frame.id_message(_frame.FINISHED, self.id))
                except OSError:
                    pass  # the supervisor is gone: nobody to tell
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client went away, or the supervisor reset it
        finally:
            self.socket.close()

    def __enter__(self):
        if self._state == "new":
            self.ack()
        return self

    def __exit__(self, *exc):
        self.finish()


class Worker:
    """This process's end of the supervisor's control channel.

        worker = Worker.from_environ()        # before HELLO: import your app first
        worker.hello(capacity=8)
        for conn in worker:                  # ends on DRAIN, STOP or the supervisor's exit
            sock = conn.ack()
            ...                              # serve, on this thread or another
            conn.finish()
        # worker.state tells why it ended: "draining", "stopped" or "closed"

    The iteration answers PINGs itself, so with `hello(heartbeat=True)` keep iterating
    while connections are served elsewhere (the supervisor kills a worker that does not
    answer within --heartbeat-timeout). `send` methods may be called from any thread; only
    one thread may iterate.
    """

    def __init__(self, raw):
        self._raw = raw
        self._decoder = _frame.Decoder()
        self._socks = []  # received, not yet claimed by a frame, in arrival order
        self._send_lock = threading.Lock()
        self.state = "starting"  # -> ready -> draining | stopped | closed

    @classmethod
    def from_environ(cls, environ=None):
        """The channel `handover serve` passed this process. Raises NotSupervised."""
        return cls(_sys.open_inherited(os.environ if environ is None else environ))

    def fileno(self):
        """The channel's descriptor, to wait on in an event loop (Unix), or None."""
        return self._raw.fileno()

    def hello(self, capacity, heartbeat=True):
        """Declares this worker ready for up to `capacity` connections at once."""
        if self.state != "starting":
            raise RuntimeError("hello() twice")
        self._send(_frame.hello(capacity, os.getpid(), heartbeat))
        self.state = "ready"

    def _send(self, payload):
        data = _frame.frame(payload)
        with self._send_lock:
            self._raw.send(data)

    def __iter__(self):
        while True:
            conn = self.next(block=True)
            if conn is None:
                return
            yield conn

    def next(self, block=True):
        """The next connection; None when nothing more will come (see `state`), or, when
        `block` is false, when nothing is there yet (`state` is still "ready")."""
        while self.state == "ready":
            item = self._next_message()
            if item is None:
                if not self._read(block):
                    return None
                continue
            kind, value, socks = item
            if kind == _frame.CONNECTION:
                if len(socks) != 1:
                    for s in socks:
                        s.close()
                    raise ProtocolError("CONNECTION with %d sockets" % len(socks))
                return Connection(self, value, socks[0])
            for s in socks:
                s.close()  # no other message carries one; never leak what came
            if kind == _frame.PING:
                self._send(_frame.id_message(_frame.PONG, value))
            elif kind == _frame.DRAIN:
                self.state = "draining"
            elif kind == _frame.STOP:
                self.state = "stopped"
            # Any other type: version 1 lets a worker ignore it.
        return None

    def _next_message(self):
        while True:
            f = self._decoder.next_frame()
            if f is None:
                return None
            kind, payload, hcount = f
            if len(self._socks) < hcount:
                raise ProtocolError("frame declares a socket that did not arrive")
            socks, self._socks = self._socks[:hcount], self._socks[hcount:]
            if kind == _frame.KIND_ABORT:
                for s in socks:
                    s.close()
                continue
            try:
                msg_kind, value = _frame.decode(payload)
            except ProtocolError:
                for s in socks:
                    s.close()
                raise
            return msg_kind, value, socks

    def _read(self, block):
        """Reads from the channel; False if nothing is there (non-blocking) or it ended."""
        data, socks = self._raw.recv(block)
        if data is None:
            return False
        self._socks.extend(socks)
        if not data:
            for s in self._socks:
                s.close()
            self._socks = []
            self.state = "closed"
            return False
        self._decoder.feed(data)
        return True

    def close(self):
        for s in self._socks:
            s.close()
        self._socks = []
        self._raw.close()
