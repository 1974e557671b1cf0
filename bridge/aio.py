"""The asyncio API: the same names as the blocking one, awaited.

::

    import kernelpit.aio

    async with kernelpit.aio.Pool(adapters=["mytools"], workers=2) as pool:
        print(await pool.call("add", a=1, b=2))
        async for ev in pool.stream("train", epochs=3):
            ...
"""

from .caller import AsyncCaller as Caller
from .caller import AsyncSession as Session
from .local import AsyncPool as Pool

__all__ = ["Pool", "Session", "Caller"]
