"""The call channel's framing: any messages, cut anywhere by the socket, come back whole."""

import socket
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from kernelpit.kernels import wire

large = st.builds(lambda n, b: bytes([b]) * n + bytes(range(256)), st.integers(60_000, 300_000),
                  st.integers(0, 255))  # more than the reader's buffer and its in-place limit
frames = st.lists(st.one_of(st.binary(max_size=64), large), min_size=1, max_size=4)


def stream_of(messages):
    return b"".join(b"".join(bytes(p) for p in wire.pieces(m)) for m in messages)


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(frames, min_size=1, max_size=6), cuts=st.lists(st.integers(1, 200_000)))
def test_messages_cut_anywhere_are_read_back_whole(messages, cuts):
    data = stream_of(messages)
    reader = wire.Reader(size=1024)
    got, at = [], 0
    for cut in [*cuts, len(data)]:
        while at < len(data) and cut > 0:
            buf = reader.buffer()
            n = min(len(buf), cut, len(data) - at)
            buf[:n] = data[at:at + n]
            at += n
            cut -= n
            got.extend(reader.advance(n))
    assert [[bytes(f) for f in m] for m in got] == messages


def test_a_large_message_crosses_a_real_socket():
    left, right = socket.socketpair()
    big = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffer holds
    sender = threading.Thread(target=wire.send, args=(left, [b'{"op":"x"}', big, b"", memoryview(big)[:5]]))
    sender.start()
    got = []
    wire.receive_forever(right, lambda m: got.append(m) or False)
    sender.join()
    assert [bytes(f) for f in got[0]] == [b'{"op":"x"}', big, b"", big[:5]]
    assert type(got[0][1]) is bytes  # received in place, handed over without a copy


def test_bytes_that_are_not_a_message_are_refused():
    reader = wire.Reader()
    buf = reader.buffer()
    buf[:4] = b"\xff\xff\xff\xff"
    try:
        reader.advance(4)
    except wire.WireError as exc:
        assert "frames" in str(exc)
    else:
        raise AssertionError("a frame count of 4 billion was accepted")


def test_a_call_for_an_executor_not_yet_connected_waits_for_it(tmp_path):
    # A worker's io thread can say hello before the pool has read the introductions of its
    # executors' connections (nothing orders the reads of two sockets): a call sent to an
    # executor the channel has not met yet is held, and sent when it introduces itself.
    import asyncio

    from kernelpit.kernels.protocol import decode, encode
    from kernelpit.pool.channel import Channel

    def first_message(sock):
        got = []

        def handle(frames):
            got.append(decode(frames))
            return False

        wire.receive_forever(sock, handle)
        return got[0]

    async def main():
        channel = await Channel.open(tmp_path, lambda worker, msg: None)
        try:
            call = encode({"op": "call", "id": 1, "tool": "add", "args": [1, 2]})
            assert channel.send_call(7, 0, call) is False  # no such worker connected
            io = wire.connect(channel.endpoint, "7")
            while not channel.send(7, {"op": "ping", "id": 1}):  # its io thread, introduced
                await asyncio.sleep(0.001)
            assert await asyncio.to_thread(first_message, io) == {"op": "ping", "id": 1}
            assert channel.send_call(7, 0, call) is True  # held: executor 0 is not known yet
            executor = wire.connect(channel.endpoint, "7.0")
            got = await asyncio.to_thread(first_message, executor)
            assert got == {"op": "call", "id": 1, "tool": "add", "args": [1, 2]}
            io.close()
            executor.close()
        finally:
            channel.close()

    asyncio.run(main())
