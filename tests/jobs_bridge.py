"""A bridge process for the job tests: a PoolManager, a JobRunner on a store and the Jobs
gRPC service on 127.0.0.1 (no token).  Prints one JSON line (address, owner, pid) when it
serves; SIGTERM stops it gracefully (running jobs get --grace seconds).

    python tests/jobs_bridge.py --store URL_OR_PATH [--lease S] [--grace S] [--workers N]
"""

import argparse
import asyncio
import json
import os
import signal
import sys

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--grace", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()

    from kernelpit.config import PoolConfig
    from kernelpit.jobs import JobRunner, open_store
    from kernelpit.jobs.service import add_jobs_service
    from kernelpit.pool import PoolManager

    store = await open_store(opts.store, namespace=opts.namespace)
    manager = PoolManager([PoolConfig(adapters=["kp_jobs"], workers=opts.workers,
                                      path=[os.path.join(HERE, "adapters")])])
    await manager.start()
    runner = await JobRunner(manager, store, lease=opts.lease).start()
    server = grpc.aio.server()
    add_jobs_service(server, runner)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"address": f"127.0.0.1:{port}", "owner": runner.owner,
                      "pid": os.getpid()}), flush=True)
    await stop.wait()
    await runner.stop(opts.grace)
    await server.stop(0)
    await store.close()
    await manager.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
