"""The blob lane's two lines, for both ends: the request a client sends and the reply line
the bridge answers with (the bridge's end is :mod:`kernelpit.service.blob_lane`, the client's
:mod:`kernelpit.remote.blob_lane`; the protocol is described there and in docs/service.md)::

    READ <blob id> <token, or - without one>\\n
    OK <size>\\n  (then the blob's bytes)    or    ERR <gRPC status name> <message>\\n
    STREAM\\n  (a streamed result: then its records, each head and body back to back;
               see kernelpit.contract.streamed)
"""

from __future__ import annotations

import grpc

MAX_LINE = 1024  # bytes a request line may take, its newline included
USAGE = "READ <blob id> <token>"
_NO_TOKEN = "-"


def request(blob_id: str, token: str | None) -> bytes | None:
    """The request line for ``blob_id``; None when ``token`` cannot be one word of it
    (spaces, non-ASCII: valid in gRPC metadata, so such a client reads with ReadBlob)."""
    word = token or _NO_TOKEN
    if not word.isascii() or len(word.split()) != 1 or not blob_id.isascii():
        return None
    return f"READ {blob_id} {word}\n".encode("ascii")


def parse_request(line: bytes) -> tuple[str, str | None] | None:
    """(blob id, token or None) of a request line without its newline; None when the line
    is not this protocol."""
    words = line.decode("ascii", "replace").split(" ")
    if len(words) != 3 or words[0] != "READ" or not words[1] or not words[2]:
        return None
    return words[1], None if words[2] == _NO_TOKEN else words[2]


def ok(size: int) -> bytes:
    return b"OK %d\n" % size


STREAM = b"STREAM\n"


def refusal(code: grpc.StatusCode, message: str) -> bytes:
    text = " ".join(message.split())  # one line
    return f"ERR {code.name} {text}\n".encode("utf-8", "replace")


def parse_reply(line: bytes) -> tuple[int, None] | tuple[None, tuple[grpc.StatusCode, str]] | None:
    """A reply line without its newline: (size, None) for OK, (-1, None) for STREAM,
    (None, (code, message)) for ERR, None when it is not this protocol."""
    status, _, rest = line.decode("utf-8", "replace").partition(" ")
    if status == "OK" and rest.isdigit():
        return int(rest), None
    if status == "STREAM" and not rest:
        return -1, None
    if status == "ERR":
        name, _, message = rest.partition(" ")
        return None, (getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN), message)
    return None
