"""How the bridge's port is exposed: TLS (and client certificates), and where plaintext may listen.

* ``tls_cert`` + ``tls_key`` (PEM files): the port speaks TLS only; a plaintext client's
  handshake fails before any RPC.
* ``tls_client_ca`` as well: mutual TLS; a client needs a certificate that CA signed
  (``require_client_auth``), else its handshake fails.
* Without TLS, the bridge listens on loopback only: :func:`check_bind` refuses any other
  host before anything binds, unless ``insecure_bind_anywhere`` (``--insecure-bind-anywhere``),
  which the bridge then reports loudly (at start, and in ``ServerInfo.warnings``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..addresses import is_loopback

INSECURE_FLAG = "--insecure-bind-anywhere"


class InsecureBind(ValueError):
    """A plaintext bridge was asked to listen beyond loopback."""


@dataclass(frozen=True)
class ServerTLS:
    """The PEM contents of the bridge's certificate chain, key and (mutual TLS) client CA."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None
    ca: bytes | None = None  # what clients should trust; recorded in the discovery file

    @classmethod
    def load(cls, cert: str | Path | None, key: str | Path | None,
             client_ca: str | Path | None = None, ca: str | Path | None = None
             ) -> "ServerTLS | None":
        """Read the files; None when no TLS is asked for."""
        if cert is None and key is None:
            if client_ca is not None:
                raise ValueError("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")
            return None
        if cert is None or key is None:
            raise ValueError("TLS needs both --tls-cert FILE (the certificate chain, PEM) and "
                             "--tls-key FILE (its private key, PEM)")
        return cls(_read(cert, "--tls-cert"), _read(key, "--tls-key"),
                   _read(client_ca, "--tls-client-ca") if client_ca is not None else None,
                   _read(ca, "the server's CA") if ca is not None else None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None)

    @property
    def trust(self) -> bytes:
        """What a local client verifies the bridge with: the CA if given, else the chain itself
        (enough for a self-signed certificate, or a chain file that ends with its root)."""
        return self.ca or self.cert


def _read(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} file {path} is not PEM (no '-----BEGIN' line)")
    return data


def https_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server-side TLS context from the bridge's certificate and key (for ``/metrics``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


def check_bind(host: str, tls: bool, insecure_bind_anywhere: bool) -> str | None:
    """Refuse a plaintext listener beyond loopback (:class:`InsecureBind`); the warning to
    show when it was allowed anyway, else None."""
    if tls or is_loopback(host):
        return None
    if not insecure_bind_anywhere:
        raise InsecureBind(
            f"refusing to listen on {host!r} without TLS: tokens and every value would cross the "
            "network in plaintext. Serve TLS with --tls-cert FILE --tls-key FILE (and "
            "--tls-client-ca FILE to require client certificates), listen on 127.0.0.1, or, on a "
            f"network you trust completely, override with {INSECURE_FLAG}")
    return (f"listening on {host} WITHOUT TLS ({INSECURE_FLAG}): tokens and values cross the "
            "network in plaintext; anyone on the path can read them and replay the token")
