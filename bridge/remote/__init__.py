"""Clients of a bridge: the embedded pool's API, served by ``kernelpit serve`` over gRPC.

::

    import kernelpit

    with kernelpit.connect() as pool:          # finds the running bridge (kernelpit serve)
        pool.call("add", a=1, b=2)

::

    client.py      connect(), Client (blocking) and AsyncClient: the API of kernelpit.Pool
    backend.py     RemoteBackend: the Backend contract over one grpc.aio channel, blobs
    multiplex.py   the client end of the Calls stream (many calls over one stream)
    blob_lane.py   the client end of the blob lane: large results straight into their buffer
    lease.py       the lease that tells the bridge this client is still there
    target.py      address, token and TLS: from arguments, environment, discovery file

Nothing here imports the server (:mod:`kernelpit.service`) or the pool machinery.
"""

from .backend import RemoteBackend
from .client import (AsyncClient, Client, ClientPortal, Connecting, client_portal, connect,
                     connect_async)
from .target import resolve

__all__ = ["AsyncClient", "Client", "ClientPortal", "Connecting", "RemoteBackend",
           "client_portal", "connect", "connect_async", "resolve"]
