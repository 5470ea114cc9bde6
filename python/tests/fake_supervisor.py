"""A stand-in supervisor for unit tests: the other end of a worker's channel, speaking
docs/protocol.md directly (not through handover_worker's code)."""

import os
import socket
import struct
import subprocess
import sys

FRAME = struct.Struct("<4sBBHII")
CONNECTION_FIXED = struct.Struct("<BBBBHHQ16s")


class FakeSupervisor:
    def __init__(self):
        self.sup, self.child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sup.settimeout(10)
        self.buf = b""
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(10)
        self.next_id = 1
        self.proc = None

    def spawn(self, args, cwd=None):
        """Starts `python3 ARGS` with the channel as HANDOVER_CHANNEL_FD."""
        fd = self.child_end.fileno()
        env = dict(os.environ, HANDOVER_CHANNEL_FD=str(fd))
        env.pop("LISTEN_PID", None)
        self.proc = subprocess.Popen([sys.executable] + list(args), pass_fds=[fd], env=env,
                                     cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.child_end.close()
        return self.proc

    def worker_in_process(self):
        """A handover_worker.Worker on the child end, in this process."""
        import handover_worker

        return handover_worker.Worker.from_environ({"HANDOVER_CHANNEL_FD": str(self.child_end.fileno())})

    def send_frame(self, payload, fds=(), kind=1, flags=0):
        header = FRAME.pack(b"HNDV", 1, kind, flags, len(payload), len(fds))
        if fds:
            socket.send_fds(self.sup, [header + payload], list(fds))
        else:
            self.sup.sendall(header + payload)

    def send_connection(self, sock, name=b"listen0"):
        peer_host, peer_port = sock.getpeername()[:2]
        cid = self.next_id
        self.next_id += 1
        payload = CONNECTION_FIXED.pack(16, 1, 4, len(name), peer_port, 0, cid,
                                        socket.inet_aton(peer_host) + bytes(12)) + name
        self.send_frame(payload, [sock.fileno()])
        return cid

    def connect(self):
        """A client connection and the accepted socket (the supervisor's copy)."""
        client = socket.create_connection(self.listener.getsockname(), timeout=10)
        accepted, _ = self.listener.accept()
        return client, accepted

    def send_simple(self, kind, extra=b""):
        self.send_frame(bytes([kind, 1, 0, 0]) + extra)

    def recv_message(self):
        """The next (type, payload) from the worker; None at end of stream."""
        while True:
            if len(self.buf) >= FRAME.size:
                magic, version, kind, flags, plen, hcount = FRAME.unpack_from(self.buf)
                assert (magic, version, kind, flags, hcount) == (b"HNDV", 1, 1, 0, 0), self.buf
                if len(self.buf) >= FRAME.size + plen:
                    payload = self.buf[FRAME.size:FRAME.size + plen]
                    self.buf = self.buf[FRAME.size + plen:]
                    return payload[0], payload
            data = self.sup.recv(4096)
            if not data:
                return None
            self.buf += data

    def expect(self, kind):
        got = self.recv_message()
        assert got is not None, "channel closed, expected message %d" % kind
        assert got[0] == kind, "expected message %d, got %r" % (kind, got)
        return got[1]

    def close(self):
        self.sup.close()
        self.listener.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
