"""The asyncio API: the same names as the blocking one, awaited.

::

    import kernelpit.aio

    async with kernelpit.aio.Pool(adapters=["mytools"], workers=2) as pool:
        print(await pool.call("add", a=1, b=2))
        async for ev in pool.stream("train", epochs=3):
            ...
"""

from typing import TYPE_CHECKING, Any

from .caller import AsyncCaller as Caller
from .caller import AsyncSession as Session
from .local import AsyncPool as Pool

if TYPE_CHECKING:
    from .remote import Connecting


def connect(address: str | None = None, token: str | None = None, *, timeout: float = 5.0,
            tls_ca: Any = None, tls_cert: Any = None, tls_key: Any = None,
            transport: str = "auto") -> "Connecting":
    """A client of a running bridge: the API of :class:`Pool`, plus ``watch()``.

    ``async with kernelpit.aio.connect() as pool:`` or ``pool = await kernelpit.aio.connect()``.
    With no arguments it finds the bridge through its discovery file; raises
    ``BridgeNotFound`` when none answers.  ``tls_ca``, ``tls_cert``, ``tls_key``: as
    :func:`kernelpit.connect`, and so is ``transport``.
    """
    from .remote import Connecting
    return Connecting(address, token, timeout, transport, tls_ca=tls_ca, tls_cert=tls_cert,
                      tls_key=tls_key)


__all__ = ["Pool", "Session", "Caller", "connect"]
