"""Unix transport: the inherited AF_UNIX socket, descriptors as SCM_RIGHTS."""

import array
import os
import socket

from . import NotSupervised

_MAX_FDS = 16  # per read; the supervisor attaches one per frame
_CMSG_SPACE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)


def open_inherited(environ):
    raw = environ.get("HANDOVER_CHANNEL_FD")
    if raw is None:
        raise NotSupervised("HANDOVER_CHANNEL_FD is not set")
    pid = environ.get("LISTEN_PID")
    if pid is not None and pid != str(os.getpid()):
        raise NotSupervised("LISTEN_PID is %s, not this process (%d): the variables were meant "
                            "for another process" % (pid, os.getpid()))
    try:
        fd = int(raw)
    except ValueError:
        raise NotSupervised("HANDOVER_CHANNEL_FD is %r, not a descriptor number" % raw)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise NotSupervised("HANDOVER_CHANNEL_FD=%d is not an open socket: %s" % (fd, e))
    if sock.family != socket.AF_UNIX:
        raise NotSupervised("HANDOVER_CHANNEL_FD=%d is not a Unix socket" % fd)
    os.set_inheritable(fd, False)  # programs this worker starts must not hold the channel
    return RawChannel(sock)


class RawChannel:
    def __init__(self, sock):
        self._sock = sock
        # Blocking, whatever the descriptor arrived as: reads that must not wait say so
        # per call (MSG_DONTWAIT), so writes from any thread stay simple whole writes.
        sock.setblocking(True)

    def fileno(self):
        return self._sock.fileno()

    def send(self, data):
        self._sock.sendall(data)

    def recv(self, block):
        flags = socket.MSG_CMSG_CLOEXEC | (0 if block else socket.MSG_DONTWAIT)
        # recvmsg, not socket.recv_fds: recv_fds drops its `flags` argument (CPython 3.11
        # checked), which would lose both MSG_DONTWAIT and MSG_CMSG_CLOEXEC.
        try:
            data, ancdata, msg_flags, _ = self._sock.recvmsg(65536, _CMSG_SPACE, flags)
        except BlockingIOError:
            return None, []
        except ConnectionResetError:
            return b"", []  # the supervisor closed with our messages unread: it is gone
        fds = array.array("i")
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        # Owners first, so nothing below can leak a descriptor.
        socks = [socket.socket(fileno=fd) for fd in fds]
        if msg_flags & socket.MSG_CTRUNC:
            for s in socks:
                s.close()
            raise OSError("control data cut off (out of descriptors?)")
        return data, socks

    def close(self):
        self._sock.close()
