"""Host and address rules shared by every listener (the bridge's gRPC port, ``/metrics``, its
Unix sockets) and the clients that dial them."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket


def private_unix_listener(path: str) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path``, mode 0600 from its bind (not after a
    chmod), in a directory that should be private already; a socket left there by a killed
    process of the same run is replaced."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def split_host_port(address: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or ``:port`` as (host without brackets, possibly empty;
    port); None for anything else (no port, or a target such as ``dns:///...``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return None
    return host.strip("[]"), int(port)
