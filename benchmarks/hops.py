"""What a hop costs on this machine: the floors under S1's no-op round trips.

    python -m benchmarks.hops

Each line is the p50 of 5,000 round trips (after 300 to warm up):

- ``thread ping-pong``: two threads passing an item through two ``queue.SimpleQueue``;
- ``portal, coroutine``: ``asyncio.run_coroutine_threadsafe`` of a no-op coroutine and
  ``.result()``, as ``Portal.call`` does (a task, three loop passes, a ``Condition``);
- ``portal, callback``: ``loop.call_soon_threadsafe`` of a callback releasing a lock the
  caller waits on, as ``PoolPortal`` hands a tool call over;
- ``process, asyncio <-> blocking``: 200 bytes over a Unix socket pair from an asyncio loop
  to a forked process that echoes them from a blocking ``recv``, as the pool's channel
  talks to a worker's io thread;
- ``... + thread hop``: the same with the echo made by a second thread of that process,
  as a worker's executor thread sends a tool's result.

An embedded no-op call costs at least the callback hop plus the round trip with a thread
hop; docs/performance.md (S1) compares the suite's rows with these.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import statistics
import threading
import time
from typing import Callable

from .stats import timed_loop

N, WARM = 5000, 300


def p50_ms(fn: Callable[[], object]) -> float:
    return statistics.median(timed_loop(fn, N, WARM)) * 1e3


def thread_ping_pong() -> float:
    there, back = queue.SimpleQueue(), queue.SimpleQueue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    threading.Thread(target=echo, daemon=True).start()
    try:
        return p50_ms(lambda: (there.put(1), back.get()))
    finally:
        there.put(None)


def portal_hops() -> tuple[float, float]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def noop() -> None:
        return None

    def by_callback() -> None:
        done = threading.Lock()
        done.acquire()
        loop.call_soon_threadsafe(done.release)
        done.acquire()

    try:
        return (p50_ms(lambda: asyncio.run_coroutine_threadsafe(noop(), loop).result()),
                p50_ms(by_callback))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def process_round_trip(thread_hop: bool) -> float:
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echoing process: no asyncio, a blocking recv as a worker's io thread
        mine.close()
        replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()

        def send_replies() -> None:
            while True:
                theirs.sendall(replies.get())

        if thread_hop:
            threading.Thread(target=send_replies, daemon=True).start()
        while data := theirs.recv(4096):
            if thread_hop:
                replies.put(data)
            else:
                theirs.sendall(data)
        os._exit(0)
    theirs.close()

    async def measure() -> float:
        reader, writer = await asyncio.open_unix_connection(sock=mine)
        times = []
        for i in range(WARM + N):
            t0 = time.perf_counter()
            writer.write(b"x" * 200)
            await reader.read(4096)
            if i >= WARM:
                times.append(time.perf_counter() - t0)
        writer.close()
        return statistics.median(times) * 1e3

    try:
        return asyncio.run(measure())
    finally:
        os.waitpid(pid, 0)


def main() -> None:
    coroutine, callback = portal_hops()
    for name, ms in (("thread ping-pong", thread_ping_pong()),
                     ("portal, coroutine", coroutine),
                     ("portal, callback", callback),
                     ("process, asyncio <-> blocking", process_round_trip(False)),
                     ("process, asyncio <-> blocking + thread hop", process_round_trip(True))):
        print(f"{name:45s} p50 {ms:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
