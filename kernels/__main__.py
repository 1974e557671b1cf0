"""Start an ipykernel with the Kernelpit agent: ``python -m kernelpit.kernels -f CONNECTION_FILE``.

The pool passes its settings in the environment:

``KERNELPIT_ENDPOINT``   the pool's call channel (``unix://<path>``; a kernel placed on another
                         node connects to ``KERNELPIT_TCP_ENDPOINT`` instead, see placement.py)
``KERNELPIT_WORKER``     this worker's id
``KERNELPIT_ADAPTERS``   comma-separated adapter modules to import
``KERNELPIT_CONCURRENCY`` executor threads (default 1)

Without ``KERNELPIT_ENDPOINT`` it is a plain ipykernel.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback


def main() -> None:
    __import__("kernelpit.kernels.lifeline", fromlist=["start"]).start()  # dies with the controller
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(sys.argv[1:])
    from .placement import choose

    endpoint = choose() if os.environ.get("KERNELPIT_ENDPOINT") else None
    if endpoint:
        _start_agent(app, endpoint)
    app.start()


def _start_agent(app, endpoint: str) -> None:
    from . import capture
    from .agent import Agent, error_payload
    from .registry import AdapterError, load_adapters

    adapters = [a for a in os.environ.get("KERNELPIT_ADAPTERS", "").split(",") if a]
    hello: dict = {"op": "hello", "pid": os.getpid(), "python": sys.executable,
                   "connection_file": app.abs_connection_file,
                   "channel": endpoint.partition("://")[0],
                   "node": os.environ.get("KERNELPIT_NODE_ID")}
    tools = {}
    try:
        tools = load_adapters(adapters)
        hello["tools"] = [spec.description for spec in tools.values()]
    except AdapterError as exc:
        hello["error"] = {**error_payload(exc, kind="adapter"), "traceback": ""}
    except BaseException as exc:  # noqa: BLE001 - report, never die silently
        hello["error"] = error_payload(exc, kind="adapter")
        hello["error"]["traceback"] = traceback.format_exc()
    capture.install(app.shell)

    def stop() -> None:
        loop = getattr(app, "io_loop", None)
        if loop is not None:
            loop.add_callback(loop.stop)
        else:
            os._exit(0)

    agent = Agent(endpoint, os.environ.get("KERNELPIT_WORKER", "w0"), tools,
                  int(os.environ.get("KERNELPIT_CONCURRENCY", "1")), on_stop=stop)
    # Everything imported so far (IPython, ipykernel, the adapters) lives as long as the kernel:
    # move it out of the collector's sight, so a full collection triggered by a tool's
    # allocations scans only the tool's objects (tens of ms less, now and then, per call).
    gc.freeze()
    agent.start(hello)
    app.kernelpit_agent = agent


if __name__ == "__main__":
    main()
