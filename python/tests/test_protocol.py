"""The worker protocol (docs/protocol.md) against a stand-in supervisor, in this process."""

import os
import socket
import struct

import pytest

import handover_worker
from fake_supervisor import FakeSupervisor

ACK, FINISHED, REJECT, PONG = 2, 3, 4, 5
CONNECTION, DRAIN, STOP, PING = 16, 17, 18, 19


@pytest.fixture
def sup():
    s = FakeSupervisor()
    yield s
    s.close()


def id_of(payload):
    assert payload[1:8] == b"\x01" + bytes(6), payload
    return struct.unpack_from("<Q", payload, 8)[0]


def test_hello_declares_capacity_heartbeat_and_pid(sup):
    w = sup.worker_in_process()
    w.hello(capacity=7, heartbeat=True)
    payload = sup.expect(1)
    assert struct.unpack("<BBHII", payload) == (1, 1, 1, 7, os.getpid())


def test_connection_is_acked_then_finished_and_the_client_sees_the_end(sup):
    w = sup.worker_in_process()
    w.hello(capacity=1)
    sup.expect(1)
    client, supervisors_copy = sup.connect()
    cid = sup.send_connection(supervisors_copy, name=b"http")
    conn = w.next()
    assert (conn.id, conn.listener, conn.listener_index) == (cid, "http", 0)
    assert conn.peer == client.getsockname()
    sock = conn.ack()
    assert id_of(sup.expect(ACK)) == cid
    client.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    sock.sendall(b"pong")
    conn.finish()
    assert id_of(sup.expect(FINISHED)) == cid
    # The supervisor still holds its copy, yet the client has the whole answer and the end.
    assert client.recv(100) == b"pong"
    assert client.recv(100) == b""
    conn.finish()  # idempotent
    client.close()
    supervisors_copy.close()


def test_pings_are_answered_while_iterating_and_drain_ends_the_iteration(sup):
    w = sup.worker_in_process()
    w.hello(capacity=1)
    sup.expect(1)
    sup.send_frame(bytes([PING, 1, 0, 0, 0, 0, 0, 0]) + struct.pack("<Q", 0xABCDEF))
    sup.send_simple(DRAIN)
    assert list(w) == []
    assert id_of(sup.expect(PONG)) == 0xABCDEF
    assert w.state == "draining"


def test_stop_and_end_of_channel_end_the_iteration(sup):
    w = sup.worker_in_process()
    w.hello(capacity=1)
    sup.send_simple(STOP)
    assert w.next() is None and w.state == "stopped"
    sup2 = FakeSupervisor()
    try:
        w2 = sup2.worker_in_process()
        w2.hello(capacity=1)
        sup2.sup.close()
        assert w2.next() is None and w2.state == "closed"
    finally:
        sup2.close()


def test_reject_hands_the_connection_back(sup):
    w = sup.worker_in_process()
    w.hello(capacity=1)
    sup.expect(1)
    client, copy = sup.connect()
    cid = sup.send_connection(copy)
    w.next().reject()
    assert id_of(sup.expect(REJECT)) == cid
    client.close()
    copy.close()


def test_abort_frames_and_unknown_messages_are_skipped_without_leaking(sup):
    w = sup.worker_in_process()
    w.hello(capacity=1)
    sup.expect(1)
    client, copy = sup.connect()
    before = len(os.listdir("/proc/self/fd"))
    sup.send_frame(b"", kind=2)  # abort
    sup.send_frame(bytes([99, 1, 0, 0]), fds=[copy.fileno()])  # unknown type, with a socket
    sup.send_simple(DRAIN)
    assert w.next() is None and w.state == "draining"
    assert len(os.listdir("/proc/self/fd")) == before, "the unknown message's socket was closed"
    client.close()
    copy.close()


@pytest.mark.parametrize("header", [
    b"XNDV" + bytes([1, 1, 0, 0]) + struct.pack("<II", 4, 0),  # magic
    b"HNDV" + bytes([2, 1, 0, 0]) + struct.pack("<II", 4, 0),  # frame version
    b"HNDV" + bytes([1, 1, 2, 0]) + struct.pack("<II", 4, 0),  # reserved flag
    b"HNDV" + bytes([1, 1, 0, 0]) + struct.pack("<II", 1 << 20, 0),  # oversized
])
def test_malformed_frames_are_refused(sup, header):
    w = sup.worker_in_process()
    w.hello(capacity=1)
    sup.sup.sendall(header + bytes([DRAIN, 1, 0, 0]))
    with pytest.raises(handover_worker.ProtocolError):
        w.next()


def test_a_newer_protocol_version_is_refused(sup):
    w = sup.worker_in_process()
    w.hello(capacity=1)
    sup.send_frame(bytes([DRAIN, 2, 0, 0]))
    with pytest.raises(handover_worker.ProtocolError, match="version 2"):
        w.next()


def test_not_started_by_the_supervisor():
    with pytest.raises(handover_worker.NotSupervised):
        handover_worker.Worker.from_environ({})
    with pytest.raises(handover_worker.NotSupervised, match="another process"):
        handover_worker.Worker.from_environ({"HANDOVER_CHANNEL_FD": "0", "LISTEN_PID": "1"})


def test_connection_message_peers():
    from handover_worker import _frame

    def msg(family, addr, port=8080, name=b"v6"):
        return struct.pack("<BBBBHHQ16s", CONNECTION, 1, family, len(name), port, 3, 42, addr) + name

    _, c = _frame.decode(msg(6, bytes(15) + b"\x01"))
    assert (c.peer, c.listener, c.listener_index, c.id) == (("::1", 8080), "v6", 3, 42)
    _, c = _frame.decode(msg(4, bytes([203, 0, 113, 9]) + bytes(12), port=51234))
    assert c.peer == ("203.0.113.9", 51234)
    _, c = _frame.decode(msg(0, bytes(16), port=0, name=b"unix"))
    assert c.peer is None and c.listener == "unix"
    with pytest.raises(handover_worker.ProtocolError):
        _frame.decode(msg(4, bytes(16))[:-1])  # name cut short
