"""The handover wire format (docs/protocol.md sections 2 and 3): frames and worker messages.

Pure code: no sockets, no descriptors owned here. `Decoder` turns the channel's byte stream
into whole frames; the transport (`_sys`) pairs each frame with the descriptors it carries.
"""

import ipaddress
import struct

FRAME = struct.Struct("<4sBBHII")  # magic, version, kind, flags, payload_len, handle_count
MAGIC = b"HNDV"
FRAME_VERSION = 1
KIND_MESSAGE = 1
KIND_ABORT = 2
FLAG_MORE = 1

PROTOCOL_VERSION = 1

# Worker -> supervisor.
HELLO, ACK, FINISHED, REJECT, PONG = 1, 2, 3, 4, 5
# Supervisor -> worker.
CONNECTION, DRAIN, STOP, PING = 16, 17, 18, 19

HELLO_HEARTBEAT = 1  # HELLO flag: this worker answers every PING with a PONG

_HELLO = struct.Struct("<BBHII")
_ID_MESSAGE = struct.Struct("<BBHIQ")  # ACK, FINISHED, REJECT, PONG, PING
_CONNECTION = struct.Struct("<BBBBHHQ16s")  # 32 bytes, then the listener name

# The largest message the supervisor sends: a CONNECTION with a 255-byte listener name.
MAX_PAYLOAD = _CONNECTION.size + 255


class ProtocolError(Exception):
    """The supervisor sent something this worker does not understand: not recoverable."""


def frame(payload):
    """One message frame around `payload` (no descriptors: a worker never sends any)."""
    return FRAME.pack(MAGIC, FRAME_VERSION, KIND_MESSAGE, 0, len(payload), 0) + payload


def hello(capacity, pid, heartbeat):
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    flags = HELLO_HEARTBEAT if heartbeat else 0
    return _HELLO.pack(HELLO, PROTOCOL_VERSION, flags, capacity, pid)


def id_message(kind, value):
    """ACK, FINISHED, REJECT (with a connection id) or PONG (with a PING's nonce)."""
    return _ID_MESSAGE.pack(kind, PROTOCOL_VERSION, 0, 0, value)


class ConnectionMessage:
    """A decoded CONNECTION message (the socket travels beside it)."""

    __slots__ = ("id", "peer", "listener", "listener_index")

    def __init__(self, id, peer, listener, listener_index):
        self.id = id
        self.peer = peer
        self.listener = listener
        self.listener_index = listener_index


def decode(payload):
    """Returns (type, value): value is a `ConnectionMessage` for CONNECTION, the nonce for PING,
    None otherwise. Raises ProtocolError for a malformed or unsupported message."""
    if len(payload) < 4:
        raise ProtocolError("message of %d bytes" % len(payload))
    kind, version = payload[0], payload[1]
    if version != PROTOCOL_VERSION:
        raise ProtocolError("protocol version %d (this worker speaks %d)" % (version, PROTOCOL_VERSION))
    if kind == CONNECTION:
        if len(payload) < _CONNECTION.size:
            raise ProtocolError("short CONNECTION message")
        _, _, family, name_len, port, index, conn_id, addr = _CONNECTION.unpack_from(payload)
        name = payload[_CONNECTION.size:_CONNECTION.size + name_len]
        if len(name) != name_len:
            raise ProtocolError("CONNECTION message cut short in its listener name")
        if family == 4:
            peer = (_ip4(addr[:4]), port)
        elif family == 6:
            peer = (_ip6(addr), port)
        elif family == 0:
            peer = None
        else:
            raise ProtocolError("CONNECTION with address family %d" % family)
        return kind, ConnectionMessage(conn_id, peer, name.decode("utf-8", "replace"), index)
    if kind == PING:
        if len(payload) < _ID_MESSAGE.size:
            raise ProtocolError("short PING message")
        return kind, _ID_MESSAGE.unpack_from(payload)[4]
    return kind, None


def _ip4(b):
    return "%d.%d.%d.%d" % tuple(b)


def _ip6(b):
    return str(ipaddress.IPv6Address(bytes(b)))


class Decoder:
    """Splits a byte stream into frames. `feed` bytes, then `next_frame` until it returns None."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data

    @property
    def buffered(self):
        return len(self._buf)

    def next_frame(self):
        """Returns (kind, payload, handle_count) for the next whole frame, or None."""
        if len(self._buf) < FRAME.size:
            return None
        magic, version, kind, flags, plen, hcount = FRAME.unpack_from(self._buf)
        if magic != MAGIC:
            raise ProtocolError("bad frame magic %r" % bytes(magic))
        if version != FRAME_VERSION:
            raise ProtocolError("frame version %d" % version)
        if kind not in (KIND_MESSAGE, KIND_ABORT):
            raise ProtocolError("frame kind %d" % kind)
        if flags & ~FLAG_MORE:
            raise ProtocolError("reserved frame flags 0x%x" % flags)
        # The supervisor sends at most one descriptor per message, so never MORE.
        if flags & FLAG_MORE:
            raise ProtocolError("multi-frame message")
        if plen > MAX_PAYLOAD or hcount > 1:
            raise ProtocolError("frame of %d bytes with %d descriptors" % (plen, hcount))
        if len(self._buf) < FRAME.size + plen:
            return None
        payload = bytes(self._buf[FRAME.size:FRAME.size + plen])
        del self._buf[:FRAME.size + plen]
        return kind, payload, hcount
