"""The gRPC bridge service (``kernelpit serve``): one pool of worker kernels, many clients.

::

    server.py      Bridge: the pool and a grpc.aio server in one process; health, reflection, drain
    run.py         `kernelpit serve` in the foreground: signals and messages
    servicer.py    the kernelpit.v1.Bridge RPC handlers
    multiplex.py   the Calls stream (many calls over one stream), the bridge's end
    pump.py        batching of a call's events for CallStream (progress coalesced and paced)
    blobs.py       large values beside the messages: the blob store behind ReadBlob/WriteBlob
    blob_lane.py   result blobs over a plain TCP port beside gRPC (faster than ReadBlob)
    auth.py        the bearer-token interceptor and check, new tokens
    idle.py        idle shutdown: open RPCs and client leases
    reflection.py  server reflection as grpc.reflection.v1 and v1alpha
    config.py      the TOML config file of `kernelpit serve --config`
    codegen.py     regenerates the committed stubs (kernelpit.v1) from proto/

The server only: what both ends use (values, messages, errors, framing) is
:mod:`kernelpit.contract`, the clients are :mod:`kernelpit.remote`, and the
discovery file is :mod:`kernelpit.discovery`.  The contract and its status
mapping are described in docs/service.md.
"""
