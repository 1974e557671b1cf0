"""The coalescing queue of a stream's events (kernelpit.backlog) and the worker's outbox
(kernelpit.kernels.outbox), on their own: order, what coalesces, counters, waiting."""

import asyncio
import json
import socket
import threading

from conftest import wait_until
from kernelpit.backlog import AsyncBacklog, Backlog, BlockingBacklog
from kernelpit.events import Progress, Result, Stdout
from kernelpit.kernels.outbox import Outbox, unread_bytes


def progress(done, call_id=1):
    return Progress(call_id=call_id, done=done, total=10)


def drain(backlog):
    out = []
    while len(backlog):
        out.append(backlog.pop())
    return out


def test_a_progress_replaces_a_progress_waiting_at_the_tail_and_nothing_else():
    b = Backlog()
    line, result = Stdout(call_id=1, text="a\n"), Result(call_id=1, value=3)
    for item in (progress(1), progress(2), line, progress(3), progress(4), progress(5), result):
        b.push(item)
    assert drain(b) == [progress(2), line, progress(5), result]
    assert b.coalesced == 3


def test_the_final_progress_stays_and_an_item_taken_is_never_replaced():
    b = Backlog()
    b.push(progress(1))
    assert b.pop() == progress(1)
    b.push(progress(2))  # the tail left the queue: this one is new, not a replacement
    b.push(progress(3))
    assert drain(b) == [progress(3)] and b.coalesced == 1


def test_progress_of_different_calls_and_other_kinds_never_coalesce():
    b = Backlog()
    items = [progress(1, call_id=1), progress(1, call_id=2), Stdout(call_id=2, text="x"),
             Stdout(call_id=2, text="x"), Result(call_id=2), Result(call_id=2)]
    for item in items:
        b.push(item)
    assert drain(b) == items and b.coalesced == 0


def test_a_custom_key_coalesces_what_it_names():
    b = Backlog(key=lambda m: m["id"] if m["k"] == "progress" else None)
    for m in ({"k": "progress", "id": 7, "done": 1}, {"k": "progress", "id": 7, "done": 2},
              {"k": "stdout", "id": 7}, {"k": "progress", "id": 7, "done": 3}):
        b.push(m)
    assert [m.get("done") for m in drain(b)] == [2, None, 3]


def test_async_backlog_wakes_its_consumer_and_coalesces_what_it_has_not_taken():
    async def go():
        b = AsyncBacklog()
        waiting = asyncio.ensure_future(b.get())
        await asyncio.sleep(0)  # the consumer is now waiting
        b.put_nowait(progress(1))
        assert await waiting == progress(1)
        for i in range(2, 6):
            b.put_nowait(progress(i))
        b.put_nowait(Result(call_id=1))
        assert [await b.get(), await b.get()] == [progress(5), Result(call_id=1)]
        assert b.empty() and b.coalesced == 3
    asyncio.run(go())


def test_blocking_backlog_hands_items_across_threads_in_order():
    b = BlockingBacklog()
    got = []
    reader = threading.Thread(target=lambda: got.extend(b.get() for _ in range(3)))
    reader.start()
    b.put(Stdout(call_id=1, text="a"))
    b.put(Stdout(call_id=1, text="b"))
    b.put(Result(call_id=1, value=1))
    reader.join(timeout=10)
    assert [getattr(x, "text", None) for x in got] == ["a", "b", None]


# -- the worker's outbox, on a real socket pair ------------------------------------------------

def outbox_pair():
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lock = threading.Lock()

    def send(msg):
        with lock:
            ours.sendall(json.dumps(msg).encode() + b"\n")
    return Outbox(send, ours), ours, peer


def read_all(peer, until):
    """Messages from the peer's end until one satisfies ``until``."""
    got, buf = [], b""
    while not got or not until(got[-1]):
        buf += peer.recv(65536)
        *lines, buf = buf.split(b"\n")
        got += [json.loads(line) for line in lines]
    return got


def ev(k, **fields):
    return {"op": "ev", "id": 1, "k": k, **fields}


def test_outbox_holds_progress_while_the_pool_is_behind_and_keeps_everything_else():
    box, ours, peer = outbox_pair()
    try:
        assert unread_bytes(ours) is not None  # Linux: the pool's reading is visible
        box.put(ev("progress", done=1))  # sent at once: nothing was waiting
        for i in range(2, 50):
            box.put(ev("progress", done=i))  # the peer has read nothing: held, the latest wins
        box.put(ev("stdout", text="x"))  # sends the held progress first, then itself
        box.put(ev("result", value=1))
        got = read_all(peer, lambda m: m["k"] == "result")
        assert [(m["k"], m.get("done")) for m in got] == [
            ("progress", 1), ("progress", 49), ("stdout", None), ("result", None)]
        assert box.coalesced == 47
    finally:
        box.close()
        ours.close()
        peer.close()


def test_outbox_sends_a_held_progress_once_the_pool_catches_up_even_if_the_tool_goes_quiet():
    box, ours, peer = outbox_pair()
    try:
        box.put(ev("progress", done=1))
        box.put(ev("progress", done=2))  # held: the peer has not read the first yet
        # the tool emits nothing more; reading the first lets the outbox's thread send the second
        got = read_all(peer, lambda m: m.get("done") == 2)
        assert [m["done"] for m in got] == [1, 2]
        wait_until(lambda: unread_bytes(ours)() == 0)
    finally:
        box.close()
        ours.close()
        peer.close()
