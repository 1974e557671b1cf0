"""kernels/signing.py: what a signed call channel refuses, and what it lets through."""

from __future__ import annotations

import array
import os
import socket
import threading

import pytest
from hypothesis import given, settings, strategies as st

from conftest import wait_until
from kernelpit.kernels import signing, wire
from kernelpit.kernels.signing import Link, SignatureError

KEY = signing.new_key()
HEADER = b'{"op":"call","id":7,"tool":"add"}'


def frames(big: int = 1 << 20) -> list:
    return [HEADER, os.urandom(big), bytearray(b"xyz"), array.array("d", [1.5, 2.5])]


def test_a_signed_message_verifies_with_its_key_in_any_buffer_type():
    message = frames()
    tag = signing.sign(message, KEY)
    assert len(tag) == signing.TAG_BYTES
    signing.verify(message, tag, KEY)
    signing.verify([bytes(memoryview(f).cast("B")) for f in message], tag, KEY)


@pytest.mark.parametrize("tamper", ["header", "buffer", "key", "truncated frame", "dropped frame",
                                    "moved byte", "truncated tag", "context"])
def test_tampering_of_any_kind_is_refused(tamper):
    message = frames()
    tag, key, context = signing.sign(message, KEY, context=b"x"), KEY, b"x"
    if tamper == "header":
        message[0] = message[0].replace(b"add", b"rm!")
    elif tamper == "buffer":
        buf = bytearray(message[1])
        buf[len(buf) // 2] ^= 1
        message[1] = buf
    elif tamper == "key":
        key = signing.new_key()
    elif tamper == "truncated frame":
        message[1] = message[1][:-1]
    elif tamper == "dropped frame":
        message = message[:-1]
    elif tamper == "moved byte":  # the same bytes back to back, split differently
        message[0], message[1] = message[0] + message[1][:1], message[1][1:]
    elif tamper == "truncated tag":
        tag = tag[:-1]
    elif tamper == "context":
        context = b"y"
    with pytest.raises(SignatureError):
        signing.verify(message, tag, key, context=context)


def linked(server_key: bytes = KEY, client_key: bytes = KEY,
           mac: str = signing.MACS[0]) -> tuple[Link, Link]:
    hello, nonce = signing.challenge((mac,))
    reply, client = signing.answer(hello, client_key, b"3")
    identity, server = signing.accept(reply, server_key, nonce, (mac,))
    assert identity == b"3" and server.mac == client.mac == mac
    return server, client


EVERY_MAC = pytest.mark.parametrize("mac", signing.MACS)


def test_the_pool_offers_its_macs_and_the_agent_takes_the_first_it_has():
    assert signing.MACS == (signing.POLY1305, signing.HMAC_SHA256)  # cryptography is installed
    hello, nonce = signing.challenge()
    reply, client = signing.answer(hello, KEY, b"3", macs=(signing.HMAC_SHA256,))  # no poly
    _, server = signing.accept(reply, KEY, nonce)
    assert (client.mac, server.mac, server.tag_bytes) == ("hmac-sha256", "hmac-sha256", 32)
    assert server.open(client.seal([b"x"])) == [b"x"]
    reply, client = signing.answer(hello, KEY, b"3")
    _, server = signing.accept(reply, KEY, nonce)
    assert (client.mac, server.tag_bytes, len(client.seal([b"x"])[-1])) == ("poly1305", 16, 16)
    with pytest.raises(SignatureError, match="no message MAC this kernel has"):
        signing.answer(hello, KEY, b"3", macs=("rot13",))
    # the choice is inside the signed answer: a man in the middle cannot swap it
    forged = [*reply[:2], b"hmac-sha256", reply[3]]
    with pytest.raises(SignatureError, match="not signed with this run's key"):
        signing.accept(forged, KEY, nonce)
    # ... nor shorten the pool's offer to push both ends onto another MAC
    short = [hello[0], hello[1], b"hmac-sha256"]
    reply, _ = signing.answer(short, KEY, b"3")
    with pytest.raises(SignatureError, match="not signed with this run's key"):
        signing.accept(reply, KEY, nonce)


@EVERY_MAC
def test_a_link_carries_messages_both_ways(mac):
    server, client = linked(mac=mac)
    for _ in range(3):
        sent = frames(1000)
        assert [bytes(memoryview(f).cast("B")) for f in server.open(client.seal(sent))] == \
            [bytes(memoryview(f).cast("B")) for f in sent]
        sealed = server.seal([b"result", b"\x00" * 10])
        assert client.open(sealed) == [b"result", b"\x00" * 10]


@EVERY_MAC
def test_replayed_reordered_reflected_and_foreign_messages_are_refused(mac):
    server, client = linked(mac=mac)
    first, second = client.seal([b"a"]), client.seal([b"b"])
    with pytest.raises(SignatureError):  # reordered
        server.open(second)
    server2, client2 = linked(mac=mac)
    m = client2.seal([b"a"])
    server2.open(m)
    with pytest.raises(SignatureError):  # replayed on the same connection
        server2.open(m)
    server3, _ = linked(mac=mac)
    with pytest.raises(SignatureError):  # recorded on another connection
        server3.open(first)
    server4, client4 = linked(mac=mac)
    with pytest.raises(SignatureError):  # reflected back to its sender
        client4.open(client4.seal([b"a"]))
    with pytest.raises(SignatureError):  # unsigned (a plain wire message)
        server4.open([HEADER, b"payload"])


def test_a_peer_without_the_run_key_cannot_connect_or_pose_as_the_pool():
    with pytest.raises(SignatureError, match="not signed with this run's key"):
        linked(client_key=signing.new_key())
    with pytest.raises(SignatureError, match="greeting"):
        signing.answer([b"HTTP/1.1 200 OK", b"x" * 16], KEY, b"3")
    with pytest.raises(SignatureError):  # a client that just sends frames
        signing.accept([b"3"], KEY, os.urandom(16))
    # a "pool" without the key: its messages do not verify at the agent
    hello, nonce = signing.challenge()
    reply, client = signing.answer(hello, KEY, b"3")
    impostor = Link(signing.new_key(), nonce, reply[1], server=True, mac=client.mac)
    with pytest.raises(SignatureError):
        client.open(impostor.seal([b'{"op":"call"}']))


@EVERY_MAC
def test_feeding_frames_as_they_arrive_gives_the_same_verdict(mac):
    server, client = linked(mac=mac)
    message = client.seal(frames(3 << 20))
    data, tag = message[:-1], message[-1]
    mac = server.verifier([len(memoryview(f).cast("B")) for f in data])
    for frame in data:
        view = memoryview(frame).cast("B")
        for at in range(0, len(view), 65536):
            mac.update(view[at:at + 65536])
    Link.check(mac, tag)


@EVERY_MAC
@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=5), st.data())
def test_any_single_flipped_bit_is_refused(mac, parts, data):
    server, client = linked(mac=mac)
    sealed = client.seal(parts)
    which = data.draw(st.sampled_from([i for i, f in enumerate(sealed) if len(f)]))
    at = data.draw(st.integers(0, len(sealed[which]) - 1))
    bit = data.draw(st.integers(0, 7))
    frame = bytearray(sealed[which])
    frame[at] ^= 1 << bit
    sealed[which] = bytes(frame)
    with pytest.raises(SignatureError):
        server.open(sealed)


def test_signed_messages_over_a_real_tcp_connection_with_the_wire_format():
    """The frame format extension as the later phase plugs it into wire.py: a challenge, a
    signed answer, then sealed wire messages (a large one too), and a stranger refused."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: list = []
    refused: list = []

    def serve(conn: socket.socket) -> None:
        hello, nonce = signing.challenge()
        wire.send(conn, hello)
        state: dict = {}

        def handle(msg: list) -> bool:
            if "link" not in state:
                try:
                    _, state["link"] = signing.accept(msg, KEY, nonce)
                except SignatureError as exc:
                    refused.append(str(exc))
                    return False
                return True
            got.append(state["link"].open(msg))
            wire.send(conn, state["link"].seal([b"ack"]))
            return True

        wire.receive_forever(conn, handle)
        conn.close()

    def accept_two() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            serve(conn)

    server = threading.Thread(target=accept_two, daemon=True)
    server.start()
    port = listener.getsockname()[1]

    agent = socket.create_connection(("127.0.0.1", port))
    replies: list = []
    state: dict = {}

    def agent_handle(msg: list) -> bool:
        if "link" not in state:
            reply, state["link"] = signing.answer(msg, KEY, b"5")
            wire.send(agent, reply)
            wire.send(agent, state["link"].seal([HEADER, os.urandom(8 << 20)]))
            return True
        replies.append(state["link"].open(msg))
        return False

    wire.receive_forever(agent, agent_handle)
    agent.close()
    assert replies == [[b"ack"]] and len(got) == 1 and len(got[0][1]) == 8 << 20

    stranger = socket.create_connection(("127.0.0.1", port))
    wire.send(stranger, [b"5"])  # an unsigned introduction, as today's Unix-socket agent sends
    stranger.settimeout(10)
    stranger.recv(4096)  # the challenge
    assert stranger.recv(4096) == b""  # then the pool hangs up
    stranger.close()
    server.join(10)
    listener.close()
    assert refused and "greeting" in refused[0]


def test_the_signing_benchmark_runs_every_path(monkeypatch):
    """Each option of benchmarks/signing.py runs once and verifies (speed is its own business)."""
    from benchmarks import signing as bench

    monkeypatch.setattr(bench, "SIZES", {"256 KB": 256 << 10})
    monkeypatch.setattr(bench, "best", lambda fn, nbytes, budget=0.0: (fn(), 1.0)[1])
    results = bench.measure()
    rows = results["sizes"]["256 KB"]
    assert rows["TCP, HMAC streamed (fallback)"] == 1.0 and rows["HMAC-SHA256, every byte (fallback)"]
    assert rows["TCP, Poly1305 streamed (chosen)"] == 1.0
    assert rows["Poly1305, one-time key, every byte (chosen)"] == 1.0
    assert "256 KB" in bench.report(results)


def _linked_pair() -> tuple[socket.socket, "wire.SignedReader", socket.socket]:
    """A signed connection without a pool: the agent's end (a SignedSocket) and the pool's
    (a socket and the SignedReader that verifies what arrives on it)."""
    left, right = socket.socketpair()
    hello, nonce = signing.challenge()
    reply, agent_link = signing.answer(hello, KEY, b"5")
    _, pool_link = signing.accept(reply, KEY, nonce)
    agent = wire.SignedSocket(fileno=left.detach())
    agent.link = agent_link
    return agent, wire.SignedReader(pool_link), right


def _carry(agent: socket.socket, reader: "wire.SignedReader", pool_end: socket.socket,
           frames: list) -> list:
    """Send ``frames`` from the agent's end and return them as the pool's end receives them."""
    sender = threading.Thread(target=wire.send, args=(agent, frames))
    sender.start()
    got: list = []
    while not got:
        got = reader.advance(pool_end.recv_into(reader.buffer()))
    sender.join(10)
    return got[0]


def test_a_large_frame_is_received_into_a_kept_frame_only_once_nobody_holds_it():
    """Large frames land in memory kept from earlier ones (no fresh pages to fault and zero),
    but never in one that a value, a view or an Arrow buffer still holds."""
    pa = pytest.importorskip("pyarrow")
    agent, reader, pool_end = _linked_pair()
    wire.drop_kept()  # frames kept by earlier tests would be reused first
    try:
        size = wire.KEEP_FROM + (1 << 20)
        first = _carry(agent, reader, pool_end, [HEADER, b"a" * size])[1]
        view, arrow_buffer = memoryview(first)[10:], pa.py_buffer(first)
        address = id(first)
        del first
        second = _carry(agent, reader, pool_end, [HEADER, b"b" * size])[1]
        assert id(second) != address and view[:3] == b"aaa" and view[-3:] == b"aaa"
        assert arrow_buffer.to_pybytes() == b"a" * size  # still held: never written into
        del view, arrow_buffer
        smaller = size - (1 << 20)
        third = _carry(agent, reader, pool_end, [HEADER, b"c" * smaller])[1]
        assert id(third) == address  # the first one's memory, nobody holding it any more
        assert third == b"c" * smaller and len(third) == smaller
        assert hash(third) == hash(b"c" * smaller) and bytes(third[-1:]) == b"c"
        assert second == b"b" * size
        del second, third
        wire.drop_kept()
        assert wire._kept.held() == 0
    finally:
        agent.close()
        pool_end.close()


def test_a_kept_frame_is_let_go_once_nobody_has_held_it_for_its_idle_time(monkeypatch):
    """Kept memory is not kept for ever: a frame nobody has held or been handed for
    KEPT_SECONDS goes, while one a value still holds stays intact (and counts as used)."""
    monkeypatch.setattr(wire, "KEPT_SECONDS", 0.3)
    agent, reader, pool_end = _linked_pair()
    wire.drop_kept()  # also stops a timer armed with the longer idle time
    try:
        size = wire.KEEP_FROM + (1 << 20)
        dropped = _carry(agent, reader, pool_end, [HEADER, b"d" * size])[1]
        held = _carry(agent, reader, pool_end, [HEADER, b"h" * size])[1]
        del dropped
        assert wire._kept.held() == size  # kept for the next frame, for now
        wait_until(lambda: wire._kept.held() == 0, timeout=10)
        assert held == b"h" * size and wire._kept._frames  # held: kept and never written into
        del held
        wait_until(lambda: wire._kept.held() == 0 and not wire._kept._frames, timeout=10)
    finally:
        agent.close()
        pool_end.close()


def test_a_value_hashed_ahead_arrives_verified_and_a_dropped_connection_stops_its_sender():
    """A large value's tags are computed on a helper thread while its parts are written: what
    arrives verifies (and a flipped bit in it would not, as above); a receiver that hangs up
    mid-value makes the sender fail with OSError instead of waiting, and the helper serves
    the next connection."""
    agent, reader, pool_end = _linked_pair()
    value = os.urandom(wire.HASH_AHEAD_FROM + 12345)
    try:
        assert _carry(agent, reader, pool_end, [HEADER, value]) == [HEADER, value]
        errors: list = []
        sender = threading.Thread(target=lambda: errors.append(
            pytest.raises(OSError, wire.send, agent, [HEADER, value])))
        sender.start()
        pool_end.recv(1 << 20)  # the next value's first bytes, then the pool's end is gone
        pool_end.close()
        sender.join(30)
        assert not sender.is_alive() and errors
    finally:
        agent.close()
        pool_end.close()
    agent, reader, pool_end = _linked_pair()
    try:
        assert _carry(agent, reader, pool_end, [HEADER, value]) == [HEADER, value]
    finally:
        agent.close()
        pool_end.close()
