"""The Python side of the public gRPC contract (``proto/kernelpit/v1``), used by both the
bridge (:mod:`kernelpit.service`) and its clients (:mod:`kernelpit.remote`).

::

    values.py      Python values <-> kernelpit.v1.Value (JSON + binary buffers: bytes, Arrow IPC)
    convert.py     core objects <-> kernelpit.v1 messages (requests, events, tools, workers, ...)
    errors.py      ErrorPayload <-> gRPC status codes and RemoteException (the one mapping)
    framing.py     blob chunks and message batches cut to a size limit
    metadata.py    call metadata keys (token, packed lists, client id)
    lane.py        the blob lane's request and reply lines (result blobs over plain TCP)
"""
