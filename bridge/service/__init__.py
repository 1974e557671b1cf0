"""The gRPC bridge service (``kernelpit serve``): one pool of worker kernels, many clients.

::

    server.py      Bridge: the pool and a grpc.aio server in one process; health, reflection, drain
    run.py         `kernelpit serve` in the foreground: signals and messages
    servicer.py    the kernelpit.v1.Bridge RPC handlers
    multiplex.py   the Calls stream (many calls over one stream), both ends
    pump.py        batching of a call's events for CallStream
    watch.py       the Watch RPC's shared sampler and the events remote clients get
    convert.py     core objects <-> kernelpit.v1 messages
    values.py      Python values <-> kernelpit.v1.Value (JSON + binary buffers: bytes, Arrow IPC)
    blobs.py       large values beside the messages: the blob store, ReadBlob/WriteBlob chunks
    errors.py      exceptions <-> gRPC status codes and RemoteException (the one mapping)
    auth.py        the bearer-token interceptor
    discovery.py   the discovery file in the Jupyter runtime dir
    config.py      the TOML config file of `kernelpit serve --config`
    codegen.py     regenerates the committed stubs (kernelpit.v1) from proto/

The remote clients are in :mod:`kernelpit.remote`; the contract and its
status mapping are described in docs/service.md.
"""
