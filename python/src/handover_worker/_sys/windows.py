"""Windows transport: the inherited named-pipe handle; sockets as WSAPROTOCOL_INFOW records.

HANDOVER_CHANNEL_FD holds the pipe HANDLE in decimal. It is opened for overlapped I/O, so
every read and write here is overlapped (`_winapi`), waited for at once. A frame that carries
n sockets is followed on the wire by n 628-byte WSAPROTOCOL_INFOW records, which
`WSADuplicateSocketW` filled in for this process; each becomes a socket with
`socket.fromshare`. This module hands the worker the frame without its records, and the
sockets beside it, as the Unix transport does: the worker's code is the same on both.
"""

import socket
import struct

import _winapi

from . import NotSupervised

_FRAME = struct.Struct("<4sBBHII")
_INFO = 628  # sizeof(WSAPROTOCOL_INFOW)
_ERROR_BROKEN_PIPE = 109
_ERROR_NO_DATA = 232


def open_inherited(environ):
    raw = environ.get("HANDOVER_CHANNEL_FD")
    if raw is None:
        raise NotSupervised("HANDOVER_CHANNEL_FD is not set")
    try:
        handle = int(raw)
    except ValueError:
        raise NotSupervised("HANDOVER_CHANNEL_FD is %r, not a handle value" % raw)
    return RawChannel(handle)


class RawChannel:
    def __init__(self, handle):
        self._h = handle
        self._buf = bytearray()  # bytes read, not yet returned as whole frames
        self._closed = False

    def fileno(self):
        return None  # a pipe handle: no select()/add_reader on Windows

    def send(self, data):
        view = memoryview(data)
        while view:
            ov, _ = _winapi.WriteFile(self._h, view, overlapped=True)
            n, _ = ov.GetOverlappedResult(True)
            view = view[n:]

    def recv(self, block):
        if not block:
            raise NotImplementedError("non-blocking reads of the channel on Windows")
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            if self._closed:
                if self._buf:
                    raise OSError("the channel ended inside a frame")
                return b"", []
            try:
                ov, _ = _winapi.ReadFile(self._h, 65536, overlapped=True)
                n, _ = ov.GetOverlappedResult(True)
            except OSError as e:
                # The supervisor closed its end: the end of the stream.
                if not isinstance(e, BrokenPipeError) and \
                        getattr(e, "winerror", None) not in (_ERROR_BROKEN_PIPE, _ERROR_NO_DATA):
                    raise
                self._closed = True
                continue
            if n == 0:
                self._closed = True
                continue
            self._buf += ov.getbuffer()[:n]

    def _take_frame(self):
        if len(self._buf) < _FRAME.size:
            return None
        _, _, _, _, plen, hcount = _FRAME.unpack_from(self._buf)
        # The worker's decoder checks the header; this only needs the lengths, bounded so a
        # corrupt header cannot make it wait for gigabytes.
        if plen > 1 << 20 or hcount > 64:
            data, self._buf = bytes(self._buf), bytearray()
            return data, []  # let the decoder refuse it
        end = _FRAME.size + plen
        total = end + _INFO * hcount
        if len(self._buf) < total:
            return None
        data = bytes(self._buf[:end])
        records = [bytes(self._buf[end + i * _INFO:end + (i + 1) * _INFO]) for i in range(hcount)]
        del self._buf[:total]
        socks = []
        try:
            for info in records:
                socks.append(socket.fromshare(info))
        except OSError:
            for s in socks:
                s.close()
            raise
        return data, socks

    def close(self):
        _winapi.CloseHandle(self._h)
