"""Reference rows: what Kernelpit's targets are measured against, in the same run.

* ``ref-ipykernel-start``: one plain ipykernel started through ``jupyter_client.KernelManager``
  until it answers (the floor of any kernel start; S4 and S5 targets).
* ``ref-grpc-echo``: a bare ``grpc.aio`` unary echo server in its own process, called from a
  plain sync gRPC channel with the same options as Kernelpit's client (the floor of a remote
  call; S1 and S2 targets).  Run ``python -m benchmarks.references`` to serve it alone.
* ``ref-memcpy``: a copy of the same number of bytes into memory already faulted in (the
  floor of moving a value; S7 targets).
* ``ref-grpc-stream``: the same server streaming a buffer of the S7 size from its own memory
  in Kernelpit's 4 MiB ``BlobChunk`` frames, read on the same blocking channel (as
  Kernelpit's blocking client reads a blob) into one buffer reused between repeats (the floor of a
  large value over gRPC on this machine; S7's remote rows).

None of these is a competitor: the report shows them, but the Kp/peer column leaves them out.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .peers import ROOT, RawKernel

ECHO_METHOD = "/echo.Echo/Echo"
STREAM_METHOD = "/echo.Echo/Stream"  # request: the number of bytes to stream, as ASCII
ECHO_PAYLOAD = b"x" * 32  # about the size of a no-op call request


def ipykernel_start() -> float:
    """Seconds from ``KernelManager.start_kernel`` to a kernel that answers, for one plain ipykernel."""
    kernel = RawKernel()
    try:
        return kernel.start()
    finally:
        kernel.stop()


def memcpy_rate(nbytes: int, repeats: int) -> list[float]:
    """GB/s of ``repeats`` copies of ``nbytes`` between two buffers faulted in beforehand."""
    src, dst = bytearray(nbytes), bytearray(nbytes)
    a = (ctypes.c_char * nbytes).from_buffer(src)
    b = (ctypes.c_char * nbytes).from_buffer(dst)
    # bytearray(n) is calloc'd: its pages are the kernel's one shared zero page until written,
    # and reading that page from cache ran at 14-25 GB/s. Real data, every page its own:
    ctypes.memset(a, 0x5A, nbytes)
    ctypes.memset(b, 0xA5, nbytes)
    ctypes.memmove(b, a, nbytes)  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ctypes.memmove(b, a, nbytes)
        out.append(nbytes / 1e9 / (time.perf_counter() - t0))
    del a, b
    return out


class EchoServer:
    """A bare grpc.aio unary echo server in its own process, and a sync client of it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.channel: Any = None
        self.echo: Any = None
        self.address = ""

    def start(self, timeout: float = 30.0) -> None:
        import grpc
        from kernelpit.remote.target import CHANNEL_OPTIONS
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.references"], cwd=str(ROOT),
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""  # "serving <port>"
        if not line.startswith("serving "):
            self.stop()
            raise RuntimeError(f"the echo server did not start: {line!r}")
        self.address = f"127.0.0.1:{int(line.split()[1])}"
        self.channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        self.echo = self.channel.unary_unary(ECHO_METHOD)

    def call(self) -> None:
        self.echo(ECHO_PAYLOAD)

    def rate(self, callers: int, total: int, repeats: int) -> list[float]:
        """Calls/s with ``callers`` threads sharing the channel, ``total`` calls per repeat."""
        per = total // callers
        out = []
        with ThreadPoolExecutor(callers) as ex:
            def caller(k: int) -> None:
                for _ in range(k):
                    self.echo(ECHO_PAYLOAD)
            list(ex.map(caller, [5] * callers))
            for _ in range(repeats):
                t0 = time.perf_counter()
                list(ex.map(caller, [per] * callers))
                out.append(per * callers / (time.perf_counter() - t0))
        return out

    def stream_rate(self, nbytes: int, repeats: int) -> list[float]:
        """GB/s of ``repeats`` transfers of ``nbytes`` streamed by the server (one warm-up),
        read on the blocking channel as Kernelpit's blocking client reads a blob."""
        from kernelpit.contract.framing import unframe

        stream = self.channel.unary_stream(STREAM_METHOD, response_deserializer=unframe)
        into = memoryview(bytearray(nbytes))
        out = []
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            pos = 0
            for data in stream(str(nbytes).encode()):
                into[pos:pos + len(data)] = data
                pos += len(data)
            if pos != nbytes:
                raise RuntimeError(f"the stream carried {pos} of {nbytes} bytes")
            if k:
                out.append(nbytes / 1e9 / (time.perf_counter() - t0))
        return out

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


async def _serve(stamps_path: str | None = None) -> None:
    """The echo server; with ``stamps_path``, each call's arrival time is written there at
    the end (as (arrival, arrival) pairs: benchmarks/profile_remote.py splits a call's legs)."""
    import asyncio
    import json
    import signal

    import grpc

    stamps: list[float] = []

    async def echo(request: bytes, context: Any) -> bytes:
        if stamps_path is not None:
            stamps.append(time.monotonic())
        return request
    from kernelpit.contract.framing import framed

    held: list[bytes] = []  # the streamed buffer, made once per size (as a value in memory)

    async def stream(request: bytes, context: Any) -> Any:
        nbytes = int(request)
        if not held or len(held[0]) != nbytes:
            held[:] = [b"\x5a" * nbytes]  # real pages (bytes(n) would read the zero page)
        for chunk in framed([held[0]]):
            yield chunk
    server = grpc.aio.server(options=[("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "echo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo),
                      "Stream": grpc.unary_stream_rpc_method_handler(stream)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await server.start()
    print(f"serving {port}", flush=True)
    await stop.wait()
    if stamps_path is not None:
        with open(stamps_path, "w") as f:
            json.dump([(t, t) for t in stamps], f)
    await server.stop(0)


if __name__ == "__main__":  # python -m benchmarks.references [STAMPS.json]
    import asyncio
    asyncio.run(_serve(sys.argv[1] if len(sys.argv) > 1 else None))
