"""Finding, keeping and re-finding the bridge a notebook talks to."""

from __future__ import annotations

import threading
from typing import Any

NO_BRIDGE = ("no Kernelpit bridge is running. Start one from the notebook with "
             "`%kp start --adapter MODULE` (e.g. --adapter kernelpit.kernels.demo), or from a "
             "terminal with `kernelpit serve --adapter MODULE`; `%kp connect ADDRESS` joins one "
             "elsewhere")


class Connector:
    """Hands out a working client; after a failure, connects again (to a restarted bridge too).

    A bridge found through the discovery file is looked up again on reconnect,
    so a bridge restarted on another port (``%kp stop`` + ``%kp start``, or a
    crash) is found; one given by address is reconnected at that address.  An
    embedded :class:`kernelpit.Pool` is used as it is.
    """

    def __init__(self, client: Any = None, address: str | None = None,
                 token: str | None = None, **tls: Any) -> None:
        self._client = client
        self._address = address
        self._token = token
        self._tls = tls  # tls_ca, tls_cert, tls_key of kernelpit.connect
        self._owned = client is None
        self._broken = False
        self._lock = threading.RLock()
        if client is not None and address is None and hasattr(client, "address"):
            self._address = client.address

    @property
    def reconnects(self) -> bool:
        return not self._is_pool(self._client)

    @staticmethod
    def _is_pool(client: Any) -> bool:
        return client is not None and not hasattr(client, "watch")

    @property
    def client(self) -> Any:
        """The current client, without checking it (None before the first connect)."""
        return self._client

    def get(self, timeout: float = 3.0) -> Any:
        """A client; raises BridgeNotFound (with how to start one) when none answers."""
        with self._lock:
            if self._client is not None and (not self._broken or self._is_pool(self._client)):
                return self._client
            import kernelpit
            from kernelpit.exceptions import BridgeNotFound
            try:
                client = kernelpit.connect(self._address, self._token, timeout=timeout,
                                           **self._tls)
            except BridgeNotFound as exc:
                if self._address is None:
                    raise BridgeNotFound(NO_BRIDGE) from None
                raise BridgeNotFound(f"{exc}") from None
            old, self._client, self._broken = self._client, client, False
            if old is not None and self._owned:
                try:
                    old.close()
                except Exception:
                    pass
            self._owned = True
            return client

    def invalidate(self, client: Any) -> None:
        """``client`` failed (the bridge went away): the next ``get`` connects again."""
        with self._lock:
            if client is self._client:
                self._broken = True

    def forget_address(self) -> None:
        """Find the bridge through the discovery file from now on."""
        with self._lock:
            self._address = None
            self._token = None
            self._tls = {}

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            if client is not None and self._owned:
                try:
                    client.close()
                except Exception:
                    pass
