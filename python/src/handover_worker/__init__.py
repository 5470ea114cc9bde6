"""Serve Python apps as `handover serve` prefork workers.

    handover serve -l tcp://127.0.0.1:8080 -w 4 -- python3 -m handover_worker wsgi myapp:app
    handover serve -l tcp://127.0.0.1:8080 -w 4 -- python3 -m handover_worker asgi myapp:app

For other servers, the worker protocol itself (docs/protocol.md): `Worker` and `Connection`.
"""

from ._frame import ProtocolError
from ._sys import NotSupervised
from ._worker import Connection, Worker

__all__ = ["Worker", "Connection", "ProtocolError", "NotSupervised"]
__version__ = "0.1.0"
