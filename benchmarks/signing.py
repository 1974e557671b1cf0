"""What authenticating (or encrypting) the call channel costs, against a plain copy.

    python -m benchmarks.signing [--json]

For 1 MB and 100 MB buffers, in one run on one core: a memcpy into a reused buffer
and an allocating copy (``bytes(...)``, what a receiver pays at least once), then
each option of issue 14 for the TCP call channel:

* HMAC-SHA256 over every byte (:func:`kernelpit.kernels.signing.sign`; the fallback of a
  link where either end lacks ``cryptography``);
* Poly1305 under a one-time key per message over every byte (a ``poly1305`` link of
  :class:`~kernelpit.kernels.signing.Link`, what the channel uses);
* HMAC over the header plus a fast digest of the buffers: SHA-256 and keyed BLAKE2b;
* keyed BLAKE2b over every byte;
* AEAD (AES-256-GCM, ChaCha20-Poly1305) when the ``cryptography`` package is there;
* end to end over loopback TCP in two threads: plain; signed one step after the
  other (sign, send, receive, verify); signed while streaming (the MAC fed piece by
  piece at both ends, as :class:`~kernelpit.kernels.signing.Link` allows); and TLS
  with a per-run self-signed certificate (made with the ``openssl`` command).

GB/s is 1e9 bytes per second of the best of several repetitions; the ratio column is
against the allocating copy.  hashlib and ssl release the GIL on large buffers.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from kernelpit.kernels import signing

SIZES = {"1 MB": 1 << 20, "100 MB": 100 << 20}
KEY = signing.new_key()


def best(fn: Callable[[], Any], nbytes: int, budget: float = 1.5) -> float:
    """GB/s of the fastest of repeated runs of ``fn`` (at least 3, about ``budget`` seconds)."""
    fn()  # warm: page faults, first-use allocations
    times: list[float] = []
    end = time.perf_counter() + budget
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 200):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return nbytes / min(times) / 1e9


def in_memory(buf: bytes) -> dict[str, Callable[[], Any] | None]:
    header = b'{"op":"ev","id":1,"k":"result","bufs":[1]}'
    scratch = bytearray(len(buf))
    view = memoryview(buf)

    def memcpy() -> None:
        scratch[:] = view

    def header_plus(digest: Callable[[], Any]) -> Callable[[], bytes]:
        def run() -> bytes:
            return hmac.new(KEY, header + digest().digest(), "sha256").digest()
        return run

    options: dict[str, Callable[[], Any] | None] = {
        "memcpy (into a reused buffer)": memcpy,
        "copy (bytes(), allocating)": lambda: bytes(bytearray(view)),
        "HMAC-SHA256, every byte (fallback)": lambda: signing.sign([header, buf], KEY),
        "Poly1305, one-time key, every byte (chosen)": None,
        "HMAC(header) + SHA-256(buffers)": header_plus(lambda: hashlib.sha256(buf)),
        "HMAC(header) + keyed BLAKE2b(buffers)": header_plus(
            lambda: hashlib.blake2b(buf, key=KEY)),
        "keyed BLAKE2b, every byte": lambda: hashlib.blake2b(buf, key=KEY).digest(),
        "AES-256-GCM (cryptography)": None,
        "ChaCha20-Poly1305 (cryptography)": None,
    }
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    except ImportError:
        return options
    poly, _ = _linked(signing.POLY1305)
    options["Poly1305, one-time key, every byte (chosen)"] = lambda: poly.seal([header, buf])
    nonce = os.urandom(12)
    aes = AESGCM(AESGCM.generate_key(256))
    chacha = ChaCha20Poly1305(ChaCha20Poly1305.generate_key())
    options["AES-256-GCM (cryptography)"] = lambda: aes.encrypt(nonce, buf, header)
    options["ChaCha20-Poly1305 (cryptography)"] = lambda: chacha.encrypt(nonce, buf, header)
    return options


# -- over loopback TCP ----------------------------------------------------------------------

def _pair(context: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
          ) -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    box: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: box.append(listener.accept()[0]))
    accepting.start()
    client = socket.create_connection(listener.getsockname())
    accepting.join()
    listener.close()
    server = box[0]
    if context is None:
        return client, server
    server_ctx, client_ctx = context
    wrapped: list[socket.socket] = []
    handshake = threading.Thread(target=lambda: wrapped.append(
        server_ctx.wrap_socket(server, server_side=True)))
    handshake.start()
    client = client_ctx.wrap_socket(client, server_hostname="kernelpit")
    handshake.join()
    return client, wrapped[0]


def _transfer(sender: socket.socket, receiver: socket.socket, buf: bytes,
              sign: bool) -> Callable[[], None]:
    """One message of ``len(buf)`` bytes sent by a thread and received (and verified) here."""
    size = len(buf)
    sink = bytearray(size + signing.TAG_BYTES)

    def send() -> None:
        sender.sendall(buf)
        if sign:
            sender.sendall(signing.sign([buf], KEY))

    def run() -> None:
        thread = threading.Thread(target=send)
        thread.start()
        view, got, total = memoryview(sink), 0, size + (signing.TAG_BYTES if sign else 0)
        while got < total:
            got += receiver.recv_into(view[got:total])
        thread.join()
        if sign:
            signing.verify([view[:size]], bytes(view[size:total]), KEY)

    return run


def _linked(mac: str) -> tuple[signing.Link, signing.Link]:
    """A writer's and a reader's end of one link that uses ``mac``."""
    hello, nonce = signing.challenge((mac,))
    reply, writer = signing.answer(hello, KEY, b"1", (mac,))
    _, reader = signing.accept(reply, KEY, nonce, (mac,))
    return writer, reader


def _streamed(sender: socket.socket, receiver: socket.socket, buf: bytes,
              mac_name: str) -> Callable[[], None]:
    """One signed message sent and verified piece by piece (:meth:`signing.Link.signer` and
    :meth:`~signing.Link.verifier`), as the channel's writer and reader would."""
    writer, reader = _linked(mac_name)
    tag = writer.tag_bytes
    size, piece = len(buf), 1 << 20
    sink = bytearray(size + tag)
    src = memoryview(buf)

    def send() -> None:
        mac = writer.signer([size])
        for at in range(0, size, piece):
            mac.update(src[at:at + piece])
            sender.sendall(src[at:at + piece])
        sender.sendall(mac.digest())

    def run() -> None:
        thread = threading.Thread(target=send)
        thread.start()
        mac = reader.verifier([size])
        view, got, total = memoryview(sink), 0, size + tag
        while got < total:
            n = receiver.recv_into(view[got:total])
            data_end = min(got + n, size)
            if data_end > got:
                mac.update(view[got:data_end])
            got += n
        thread.join()
        signing.Link.check(mac, view[size:total])

    return run


def _tls_contexts(workdir: str) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """A per-run self-signed certificate, if this machine has the openssl command."""
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    if not shutil.which("openssl"):
        return None
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=kernelpit", "-keyout", key, "-out", cert], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


def over_tcp(buf: bytes, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None
             ) -> dict[str, tuple[Callable[[], None] | None, list[socket.socket]]]:
    plain, signed, streamed, poly = _pair(), _pair(), _pair(), _pair()
    cases: dict[str, tuple[Callable[[], None] | None, list[socket.socket]]] = {
        "TCP loopback, plain": (_transfer(*plain, buf, False), list(plain)),
        "TCP, HMAC: sign, send, receive, verify": (_transfer(*signed, buf, True), list(signed)),
        "TCP, HMAC streamed (fallback)": (_streamed(*streamed, buf, signing.HMAC_SHA256),
                                          list(streamed)),
        "TCP, Poly1305 streamed (chosen)": ((_streamed(*poly, buf, signing.POLY1305)
                                             if signing.POLY1305 in signing.MACS else None),
                                            list(poly)),
    }
    if tls is None:
        cases["TCP loopback, TLS (per-run cert)"] = (None, [])
    else:
        secure = _pair(tls)
        cases["TCP loopback, TLS (per-run cert)"] = (_transfer(*secure, buf, False), list(secure))
    return cases


def measure() -> dict[str, Any]:
    results: dict[str, Any] = {"cpu": _cpu(), "python": sys.version.split()[0],
                               "openssl": ssl.OPENSSL_VERSION, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="kp-signing-") as workdir:
        tls = _tls_contexts(workdir)
        for label, size in SIZES.items():
            buf = os.urandom(size)
            budget = 1.0 if size <= 1 << 20 else 3.0
            rows: dict[str, float | None] = {}
            for name, fn in in_memory(buf).items():
                rows[name] = None if fn is None else best(fn, size, budget)
            for name, (fn, socks) in over_tcp(buf, tls).items():
                rows[name] = None if fn is None else best(fn, size, budget)
                for sock in socks:
                    sock.close()
            results["sizes"][label] = rows
    return results


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def report(results: dict[str, Any]) -> str:
    lines = [f"{results['cpu']}, Python {results['python']}, {results['openssl']}", ""]
    for label, rows in results["sizes"].items():
        base = rows["copy (bytes(), allocating)"]
        lines.append(f"{label:<42} {'GB/s':>6}  {'x copy':>6}")
        for name, rate in rows.items():
            if rate is None:
                why = "pip install cryptography" if "cryptography" in name else "no openssl"
                lines.append(f"  {name:<40} {'n/a':>6}  ({why})")
            else:
                lines.append(f"  {name:<40} {rate:6.2f}  {rate / base:6.2f}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = measure()
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
