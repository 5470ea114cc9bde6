#!/usr/bin/env python3
"""A handover worker in Python, standard library only (socket.recv_fds: Python 3.9+).

Serves a tiny HTTP response on every connection it is given. It follows docs/protocol.md:

  prefork  the supervisor passes a control channel (HANDOVER_CHANNEL_FD); connections arrive
           on it as CONNECTION messages with the socket attached (SCM_RIGHTS), and this worker
           answers HELLO, ACK, FINISHED.
  shared   the supervisor passes listening sockets (LISTEN_FDS, from descriptor 3); we accept.

    handover serve --listen tcp://127.0.0.1:8080 --workers 4 -- python3 examples/workers/worker.py
    curl http://127.0.0.1:8080/
"""

import os
import socket
import struct
import sys
import threading

CAPACITY = int(os.environ.get("WORKER_CAPACITY", "16"))

# Frame header: magic, version, kind, flags, payload_len, handle_count (little-endian, 16 bytes).
FRAME = struct.Struct("<4sBBHII")
MAGIC, FRAME_VERSION, KIND_MESSAGE, KIND_ABORT, FLAG_MORE = b"HNDV", 1, 1, 2, 1

# Protocol messages (payloads), version 1.
PROTOCOL_VERSION = 1
HELLO, ACK, FINISHED, REJECT, PONG = 1, 2, 3, 4, 5
CONNECTION, DRAIN, STOP, PING = 16, 17, 18, 19
HELLO_HEARTBEAT = 1  # HELLO flag: this worker answers PING with PONG
CONNECTION_FIXED = struct.Struct("<BBBBHHQ16s")  # 32 bytes, then the listener name


class Channel:
    """The worker's end of the control channel: whole messages in, whole messages out."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)  # blocking reads (the descriptor arrives blocking; be sure)
        self.buf = bytearray()
        self.fds = []  # descriptors received, not yet claimed by a frame, in arrival order
        self.send_lock = threading.Lock()

    def send(self, payload):
        frame = FRAME.pack(MAGIC, FRAME_VERSION, KIND_MESSAGE, 0, len(payload), 0) + payload
        with self.send_lock:
            self.sock.sendall(frame)

    def recv(self):
        """Returns (payload, [sockets]); raises EOFError when the supervisor closes."""
        while True:
            if len(self.buf) >= FRAME.size:
                magic, version, kind, flags, plen, hcount = FRAME.unpack_from(self.buf)
                if magic != MAGIC or version != FRAME_VERSION or flags & ~FLAG_MORE:
                    raise ValueError("bad frame header")
                if flags & FLAG_MORE or hcount > 1 or plen > 4096:
                    raise ValueError("unexpected frame from the supervisor")
                if len(self.buf) >= FRAME.size + plen:
                    # The descriptors came with the frame's first byte, so they are here.
                    if len(self.fds) < hcount:
                        raise ValueError("frame declares a socket that did not arrive")
                    payload = bytes(self.buf[FRAME.size:FRAME.size + plen])
                    del self.buf[:FRAME.size + plen]
                    fds, self.fds = self.fds[:hcount], self.fds[hcount:]
                    if kind == KIND_ABORT:
                        continue  # a cancelled send: nothing to deliver
                    return payload, [socket.socket(fileno=fd) for fd in fds]
            data, fds, flags, _ = socket.recv_fds(self.sock, 65536, 8, socket.MSG_CMSG_CLOEXEC)
            self.fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                raise ValueError("control data truncated")
            if not data:
                raise EOFError
            self.buf += data


def http_answer(conn):
    conn.settimeout(10)
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 8192:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    body = ("hello from the python worker %d\n" % os.getpid()).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (len(body), body))


def prefork(fd):
    ch = Channel(fd)
    # The main thread only reads the channel (threads serve), so it can answer heartbeats.
    ch.send(struct.pack("<BBHII", HELLO, PROTOCOL_VERSION, HELLO_HEARTBEAT, CAPACITY, os.getpid()))
    live = []

    def serve(conn_id, conn):
        try:
            http_answer(conn)
        except OSError:
            pass
        finally:
            # FINISHED first (a worker that dies after it has answered), then end the stream:
            # the client sees the end now, not when the supervisor has read FINISHED.
            ch.send(struct.pack("<BBHIQ", FINISHED, PROTOCOL_VERSION, 0, 0, conn_id))
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()

    while True:
        try:
            payload, socks = ch.recv()
        except EOFError:
            return
        kind, version = payload[0], payload[1]
        if version != PROTOCOL_VERSION:
            sys.exit("unsupported protocol version %d" % version)
        if kind == CONNECTION:
            _, _, family, name_len, port, listener, conn_id, addr = CONNECTION_FIXED.unpack_from(payload)
            if len(socks) != 1:
                sys.exit("connection without its socket")
            # Acknowledge before reading anything: until then the supervisor may re-dispatch it.
            ch.send(struct.pack("<BBHIQ", ACK, PROTOCOL_VERSION, 0, 0, conn_id))
            t = threading.Thread(target=serve, args=(conn_id, socks[0]), daemon=True)
            t.start()
            live.append(t)
            live = [t for t in live if t.is_alive()]
        elif kind == PING:
            nonce = struct.unpack_from("<Q", payload, 8)[0]
            ch.send(struct.pack("<BBHIQ", PONG, PROTOCOL_VERSION, 0, 0, nonce))
        elif kind == DRAIN:
            for t in live:
                t.join()
            return
        elif kind == STOP:
            os._exit(0)
        else:
            for s in socks:
                s.close()  # unknown message: ignore it, but never leak what came with it


def shared(count):
    listeners = [socket.socket(fileno=3 + i) for i in range(count)]

    def accept_loop(listener):
        while True:
            conn, _ = listener.accept()
            with conn:
                try:
                    http_answer(conn)
                except OSError:
                    pass

    threads = [threading.Thread(target=accept_loop, args=(l,), daemon=True)
               for l in listeners for _ in range(CAPACITY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("worker.py: not started by `handover serve`")
    if "HANDOVER_CHANNEL_FD" in os.environ:
        prefork(int(os.environ["HANDOVER_CHANNEL_FD"]))
    elif int(os.environ.get("LISTEN_FDS", "0")) > 0:
        shared(int(os.environ["LISTEN_FDS"]))
    else:
        sys.exit("worker.py: no control channel and no listening sockets")


if __name__ == "__main__":
    main()
