"""The one place that picks the operating system's transport for the control channel.

Contract (both backends):

    open_inherited(environ) -> RawChannel   the worker's end of the channel its supervisor
                                            passed (HANDOVER_CHANNEL_FD); raises NotSupervised
    RawChannel.send(data)                   writes all of `data` (blocking)
    RawChannel.recv(block) -> (data, socks) reads what is there: bytes (b"" at end of stream)
                                            and the sockets that came with them, each already a
                                            socket.socket; (None, []) if block is false and
                                            nothing is there
    RawChannel.fileno() -> int | None       for an event loop to wait on, or None
    RawChannel.close()

Unix: an AF_UNIX stream socket; sockets arrive as SCM_RIGHTS (socket.recv_fds).
Windows: a named pipe handle; sockets arrive as WSAPROTOCOL_INFOW records after the frame
payload, rebuilt with socket.fromshare (not built yet: see docs/python.md).
"""

import os


class NotSupervised(Exception):
    """This process was not started by `handover serve` in prefork mode."""


if os.name == "posix":
    from .unix import open_inherited  # noqa: F401
elif os.name == "nt":
    from .windows import open_inherited  # noqa: F401
else:
    raise ImportError("handover_worker: no transport for os.name %r" % os.name)
