"""Where a client connects and how it proves itself: address, token, TLS.

:func:`resolve` fills in what the caller did not give, in this order: the arguments,
the environment (``$KERNELPIT_TOKEN``, ``$KERNELPIT_TLS_CA``, ``$KERNELPIT_TLS_CERT``,
``$KERNELPIT_TLS_KEY``), and the discovery file of the running bridge (when no address
is given, or the given one is the discovery file's).  A token read from the discovery
file is read again once when the bridge refuses it (:meth:`Target.reload_token`), so a
client follows ``kernelpit token rotate owner`` without being told.

``transport`` picks the way in: ``"grpc"``, or ``"local"`` (the bridge's Unix socket,
:mod:`kernelpit.remote.local_channel`: only for a bridge on this machine run by this
user, which its discovery file names), or ``"auto"`` (the default): local when it can be,
else gRPC.  An address ``unix:PATH`` names that socket directly (``Bridge.local_address``).

TLS values (``tls_ca``, ``tls_cert``, ``tls_key``) are a path to a PEM file, or the PEM
itself (``bytes``, or a ``str`` starting with ``-----BEGIN``); ``tls_ca=True`` trusts the
system's root certificates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import grpc

from .. import discovery
from ..exceptions import BridgeError, BridgeNotFound

Pem = Union[str, bytes, os.PathLike, bool, None]
HOW_TO_START = ("Start one with `kernelpit serve --adapter MODULE` (e.g. --adapter "
                "kernelpit.kernels.demo), or pass connect(address=..., token=...)")
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_retries", 0),
]


@dataclass(frozen=True)
class ClientTLS:
    """PEM bytes: the CA to verify the bridge with (None: the system's roots), and the
    client's certificate chain and key for mutual TLS (None: none)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


@dataclass
class Target:
    address: str
    token: str | None
    tls: ClientTLS | None = None
    #: the discovery file the token came from (None: the caller gave it)
    token_source: Path | None = None
    #: the bridge says it wants client certificates (from the discovery file)
    wants_client_cert: bool = field(default=False)
    #: the bridge's Unix socket when the local transport is used (None: gRPC)
    local: str | None = None

    @property
    def transport(self) -> str:
        return "grpc" if self.local is None else "local"

    def channel(self) -> Any:
        """A ``grpc.aio.Channel``, or the local transport's stand-in for one."""
        if self.local is not None:
            from .local_channel import LocalChannel
            return LocalChannel(self.local)
        if self.tls is None:
            return grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.address, self.tls.credentials(),
                                       options=CHANNEL_OPTIONS)

    def blocking_channel(self) -> Any:
        """A blocking ``grpc.Channel``, or the local transport's (one thread at a time)."""
        if self.local is not None:
            from .local_channel import BlockingLocalChannel
            return BlockingLocalChannel(self.local)
        if self.tls is None:
            return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return grpc.secure_channel(self.address, self.tls.credentials(), options=CHANNEL_OPTIONS)

    def reload_token(self) -> bool:
        """Read the discovery file's token again; True when it changed (then retry once)."""
        if self.token_source is None:
            return False
        info = discovery.read(self.token_source)
        if info is None or (info.get("address") != self.address
                            and (self.local is None or info.get("local") != self.local)):
            return False
        token = info.get("token")
        if not token or token == self.token:
            return False
        self.token = token
        return True

    def explain(self, details: str) -> str | None:
        """Words for a connection that failed in the TLS handshake (None: not a TLS failure)."""
        text = details.lower()
        where = f"the bridge at {self.address}"
        if self.tls is None:
            if "ssl" in text or "tls" in text or "handshake" in text or "socket closed" in text \
                    or "connection reset" in text:
                return (f"{where} closed the plaintext connection: it serves TLS. Pass tls_ca= "
                        "(the CA that signed its certificate; --tls-ca on the command line, or "
                        "$KERNELPIT_TLS_CA)")
            return None
        if "certificate_verify_failed" in text or "certificate verify failed" in text:
            return (f"{where} presented a certificate that the given CA does not verify: pass "
                    "as tls_ca= (--tls-ca) the CA that signed the bridge's certificate, and "
                    "connect by a name or address the certificate lists")
        if "wrong_version_number" in text or "wrong version number" in text \
                or "record_layer_failure" in text:
            return (f"{where} does not speak TLS: it is a plaintext bridge; connect without "
                    "tls_ca/tls_cert/tls_key (or start it with --tls-cert and --tls-key)")
        if "certificate required" in text or "certificate_required" in text \
                or "handshake" in text or "alert" in text or "socket closed" in text:
            if self.tls.cert is None:
                return (f"{where} refused the TLS handshake; it requires a client certificate "
                        "(mutual TLS): pass tls_cert= and tls_key= (--tls-cert/--tls-key, or "
                        "$KERNELPIT_TLS_CERT/$KERNELPIT_TLS_KEY) signed by the CA it trusts")
            return (f"{where} refused the TLS handshake: its CA (--tls-client-ca) did not sign "
                    "this client's certificate (tls_cert), or the certificate has expired; "
                    "ask the bridge's owner for a certificate its CA signed")
        return None


TRANSPORTS = ("auto", "grpc", "local")
LOCAL_SCHEME = "unix:"


def resolve(address: str | None = None, token: str | None = None, *, tls_ca: Pem = None,
            tls_cert: Pem = None, tls_key: Pem = None, transport: str = "auto") -> Target:
    """The address, token, TLS settings and transport to use; see the module's docstring."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(map(repr, TRANSPORTS))}, "
                         f"not {transport!r}")
    if address is not None and address.startswith(LOCAL_SCHEME):
        return _resolve_socket(address, token, transport)
    env = os.environ
    tls_ca = tls_ca if tls_ca is not None else env.get("KERNELPIT_TLS_CA") or None
    tls_cert = tls_cert if tls_cert is not None else env.get("KERNELPIT_TLS_CERT") or None
    tls_key = tls_key if tls_key is not None else env.get("KERNELPIT_TLS_KEY") or None
    explicit_tls = any(v is not None and v is not False for v in (tls_ca, tls_cert, tls_key))
    path = discovery.default_path()
    info: dict[str, Any] | None
    if address is None:
        info = discovery.read(path)
        if info is None:
            why = ("its discovery file is stale (the process is gone)" if path.exists()
                   else f"there is no discovery file {path}")
            raise BridgeNotFound(f"no Kernelpit bridge was found: {why}. {HOW_TO_START}")
        address = info["address"]
    else:
        if token is None:
            token = env.get("KERNELPIT_TOKEN")
        info = discovery.read(path)
        if info is not None and info.get("address") != address:
            info = None
    source = None
    if token is None and info is not None:
        token, source = info.get("token"), path
    found = (info or {}).get("tls") or {}
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("mutual TLS needs both tls_cert (the client's certificate chain) and "
                         "tls_key (its private key)")
    tls = None
    if tls_ca is not None or tls_cert is not None or found:
        ca = (None if tls_ca is True else _pem(tls_ca, "tls_ca") if tls_ca is not None
              else found.get("ca", "").encode() or None)
        tls = ClientTLS(ca, _pem(tls_cert, "tls_cert"), _pem(tls_key, "tls_key"))
    if transport == "local" and explicit_tls:
        raise ValueError("TLS settings (tls_ca, tls_cert, tls_key or $KERNELPIT_TLS_*) apply to "
                         "gRPC; the local transport is a private Unix socket and takes none: drop "
                         "them, or connect with transport='grpc'")
    # a caller who asks for TLS checks the bridge's certificate: that is gRPC's to do
    target = Target(address, token, tls, source, bool(found.get("client_certificates")),
                    None if explicit_tls else _local_socket(info, address, transport))
    if target.wants_client_cert and tls is not None and tls.cert is None:
        raise BridgeError(f"the bridge at {address} requires a client certificate (mutual TLS): "
                          "pass tls_cert= and tls_key= (--tls-cert/--tls-key, or "
                          "$KERNELPIT_TLS_CERT/$KERNELPIT_TLS_KEY), signed by the CA it trusts")
    return target


def _resolve_socket(address: str, token: str | None, transport: str) -> Target:
    """A ``unix:PATH`` address: the local transport, with the token given, from
    ``$KERNELPIT_TOKEN``, or from the discovery file of the bridge that owns the socket."""
    path = address[len(LOCAL_SCHEME):]
    if transport == "grpc":
        raise ValueError(f"{address} is a bridge's local socket, which speaks the local "
                         "transport only; connect with transport='auto' or 'local', or give "
                         "the bridge's gRPC address (host:port)")
    source = None
    if token is None:
        token = os.environ.get("KERNELPIT_TOKEN")
    if token is None:
        info = discovery.read(discovery.default_path())
        if info is not None and info.get("local") == path:
            token, source = info.get("token"), discovery.default_path()
    _local_socket({"local": path}, address, "local")  # raises BridgeError when it cannot be used
    return Target(address, token, None, source, False, path)


def _local_socket(info: dict[str, Any] | None, address: str, transport: str) -> str | None:
    """The bridge's Unix socket, when ``transport`` allows it and the bridge at ``address``
    is on this machine and run by this user (its live discovery file names the socket)."""
    if transport == "grpc":
        return None
    path = (info or {}).get("local")
    why = None
    if not path:
        why = ("no bridge on this machine announces that address in its discovery file "
               f"({discovery.default_path()})" if info is None else
               "the bridge does not offer the local transport (an older version?)")
    else:
        try:
            st = os.stat(path)
        except OSError as exc:
            why = f"its socket {path} cannot be reached ({exc.strerror})"
        else:
            if st.st_uid != os.getuid():
                why = f"its socket {path} belongs to another user"
    if why is None:
        return path
    if transport == "local":
        raise BridgeError(f"transport='local' cannot reach the bridge at {address}: {why}. The "
                          "local transport is for a bridge on this machine run by this user; "
                          "connect with transport='grpc' (or 'auto') otherwise")
    return None


def _pem(value: Pem, what: str) -> bytes | None:
    if value is None or value is False:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        data = Path(value).read_bytes()  # type: ignore[arg-type]
    except (OSError, TypeError) as exc:
        raise ValueError(f"cannot read {what} {value!r}: {getattr(exc, 'strerror', None) or exc}; "
                         "give a path to a PEM file, or the PEM itself") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} file {value} is not PEM (no '-----BEGIN' line)")
    return data
