"""``%%kp`` cells and ``%kp push/pull``: code and variables in a worker kernel.

A worker is a real Jupyter kernel, so a cell is sent to it as an
``execute_request`` with a :class:`jupyter_client.BlockingKernelClient` on the
worker's connection file, and its iopub messages (stdout, stderr, rich
displays, results, errors) are re-published in the notebook's cell as they
arrive.
"""

from __future__ import annotations

import ast
import sys
import threading
import time
from typing import Any, Callable

from jupyter_client import BlockingKernelClient

from . import wire


class RemoteCellError(Exception):
    """The cell raised in the worker kernel; shown with the worker's own traceback."""

    def __init__(self, ename: str, evalue: str, traceback: list[str], worker: int) -> None:
        super().__init__(f"{ename}: {evalue} (in worker {worker})")
        self.ename, self.evalue, self.traceback, self.worker = ename, evalue, traceback, worker

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of ours
        return [*self.traceback, f"(raised in Kernelpit worker {self.worker})"]


class WorkerShell:
    """A kernel client of one worker kernel (cached per connection file)."""

    def __init__(self, connection_file: str, worker: int) -> None:
        self.connection_file = connection_file
        self.worker = worker
        self.kc = BlockingKernelClient(connection_file=connection_file)
        self.kc.load_connection_file()
        self.kc.start_channels()
        self.lock = threading.Lock()

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        except Exception:
            pass

    def execute(self, code: str, *, silent: bool = False,
                user_expressions: dict[str, str] | None = None,
                on_output: Callable[[dict], None] | None = None,
                timeout: float | None = None) -> dict:
        """Run ``code``; every iopub output goes to ``on_output`` as it arrives.

        Returns the execute reply's content.  ``timeout`` bounds the wait for
        the reply (None: as long as the code runs).
        """
        with self.lock:
            kc = self.kc
            msg_id = kc.execute(code, silent=silent, store_history=not silent,
                                user_expressions=user_expressions or {}, allow_stdin=False)
            end = None if timeout is None else time.monotonic() + timeout
            idle = False
            while not idle:
                wait = 1.0 if end is None else max(0.0, min(1.0, end - time.monotonic()))
                try:
                    msg = kc.get_iopub_msg(timeout=wait)
                except Exception:  # queue.Empty
                    if end is not None and time.monotonic() >= end:
                        raise TimeoutError(f"worker {self.worker} did not answer within "
                                           f"{timeout:g} s") from None
                    if not kc.is_alive():
                        raise ConnectionError(f"worker {self.worker}'s kernel has gone away")
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                mtype = msg["msg_type"]
                if mtype == "status":
                    idle = msg["content"]["execution_state"] == "idle"
                elif on_output is not None and mtype in ("stream", "display_data",
                                                         "update_display_data",
                                                         "execute_result", "error",
                                                         "clear_output"):
                    on_output(msg)
            reply = kc.get_shell_msg(timeout=30)
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = kc.get_shell_msg(timeout=30)
            return reply["content"]

    # -- variables ---------------------------------------------------------------------------
    def push(self, values: dict[str, Any]) -> None:
        """Assign ``values`` in the worker's namespace (each must be movable, see wire)."""
        payload = {name: wire.dumps(value, name) for name, value in values.items()}
        code = ("from kernelpit.widgets import wire as __kp_wire\n"
                + "".join(f"{name} = __kp_wire.loads({text!r})\n"
                          for name, text in payload.items())
                + "del __kp_wire\n")
        reply = self.execute(code, silent=True, timeout=60)
        if reply.get("status") != "ok":
            raise RuntimeError(f"push failed in worker {self.worker}: "
                               f"{reply.get('ename')}: {reply.get('evalue')}")

    def pull(self, names: list[str]) -> dict[str, Any]:
        """The values of ``names`` in the worker's namespace."""
        exprs = {name: f"__import__('kernelpit.widgets.wire', fromlist=['dumps']).dumps("
                       f"{name}, {name!r})" for name in names}
        reply = self.execute("", silent=True, user_expressions=exprs, timeout=60)
        out: dict[str, Any] = {}
        for name in names:
            result = reply.get("user_expressions", {}).get(name, {})
            if result.get("status") != "ok":
                ename, evalue = result.get("ename", "Error"), result.get("evalue", "")
                if ename == "NameError":
                    raise KeyError(f"no variable {name!r} in worker {self.worker}")
                if ename == "NotMovable":
                    raise wire.NotMovable(evalue)
                raise RuntimeError(f"cannot pull {name!r}: {ename}: {evalue}")
            out[name] = wire.loads(ast.literal_eval(result["data"]["text/plain"]))
        return out


def publish(msg: dict) -> None:
    """Show one iopub message of the worker in the current cell, as it arrived."""
    from IPython.display import clear_output, display, publish_display_data
    mtype, content = msg["msg_type"], msg["content"]
    if mtype == "stream":
        stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
        stream.write(content.get("text", ""))
        stream.flush()
    elif mtype in ("display_data", "execute_result"):
        data = dict(content.get("data", {}))
        md = content.get("metadata", {})
        transient = content.get("transient", {})
        if transient.get("display_id"):
            display(data, raw=True, metadata=md, display_id=transient["display_id"])
        else:
            publish_display_data(data, metadata=md)
    elif mtype == "update_display_data":
        display_id = content.get("transient", {}).get("display_id")
        if display_id:
            display(content.get("data", {}), raw=True, metadata=content.get("metadata", {}),
                    display_id=display_id, update=True)
    elif mtype == "clear_output":
        clear_output(wait=content.get("wait", False))
