"""``ref-tcp-loopback``: what loopback TCP itself carries between two processes (S9).

The ceiling of the network path on this machine: a child process writes ``nbytes`` from
memory it already has (``sendall`` of 4 MiB slices, as the signed channel writes a large
value's buffers straight from the table), this process receives them into one buffer that
is already faulted in and reused for every transfer (as the channel's kept frames are).
No signing, no Arrow, no event loop: two copies through the kernel and nothing else.  The
socket buffers are the channel's (:func:`kernelpit.kernels.wire.tune`).

``python -m benchmarks.tcpref [transfers]`` prints the rates alone.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from typing import Any

from kernelpit.kernels import wire

PIECE = 4 << 20
_SIZE = struct.Struct("<Q")

_SENDER = r"""
import socket, struct, sys
from kernelpit.kernels import wire
port, nbytes, piece = (int(a) for a in sys.argv[1:4])
data = memoryview(bytearray(b"\x5a") * nbytes)
sock = socket.create_connection(("127.0.0.1", port))
wire.tune(sock)
while sock.recv(1) == b"g":
    sock.sendall(struct.pack("<Q", nbytes))
    for at in range(0, nbytes, piece):
        sock.sendall(data[at:at + piece])
"""


class LoopbackTcp:
    """A sender process and a connection to it; :meth:`transfer` times one value.  Use as a
    context manager: the sender ends with the connection."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._into = memoryview(bytearray(nbytes))  # zero-filled: every page faulted in
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        self._proc = subprocess.Popen([sys.executable, "-c", _SENDER,
                                       str(listener.getsockname()[1]), str(nbytes), str(PIECE)])
        try:
            self._sock, _ = listener.accept()
        except OSError:
            self._proc.kill()
            raise
        finally:
            listener.close()
        self._sock.settimeout(60)
        wire.tune(self._sock)

    def transfer(self) -> float:
        """One transfer of ``nbytes``, in MB/s (from asking to the last byte received)."""
        t0 = time.perf_counter()
        self._sock.sendall(b"g")
        head = bytearray()
        while len(head) < _SIZE.size:
            chunk = self._sock.recv(_SIZE.size - len(head))
            if not chunk:
                raise ConnectionError("the loopback TCP sender ended")
            head += chunk
        (size,) = _SIZE.unpack(head)
        got = 0
        while got < size:
            n = self._sock.recv_into(self._into[got:], min(size - got, PIECE))
            if not n:
                raise ConnectionError("the loopback TCP sender ended mid-transfer")
            got += n
        return size / 1e6 / (time.perf_counter() - t0)

    def __enter__(self) -> "LoopbackTcp":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sock.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


if __name__ == "__main__":
    transfers = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with LoopbackTcp(100_000_000) as tcp:
        rates = [tcp.transfer() for _ in range(transfers)]
    print("loopback TCP, 100 MB, two processes: " + " ".join(f"{r:,.0f}" for r in rates)
          + f" MB/s; median {sorted(rates)[len(rates) // 2]:,.0f}")
