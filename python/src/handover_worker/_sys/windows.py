"""Windows transport: not built yet.

What it needs (docs/protocol.md, Windows): HANDOVER_CHANNEL_FD holds an inherited, overlapped
named-pipe HANDLE in decimal; each frame with handle_count n is followed by n 628-byte
WSAPROTOCOL_INFOW records, each rebuilt with socket.fromshare. _winapi's overlapped
ReadFile/WriteFile can drive the handle without dependencies.
"""

from . import NotSupervised


def open_inherited(environ):
    raise NotSupervised("handover_worker does not run on Windows yet (see docs/python.md)")
