"""The worker agent: the fast call path that lives inside each kernel.

The kernel stays a full Jupyter kernel (shell, iopub, control, heartbeat on
its main thread).  Beside it the agent runs:

* an **io thread** with its own connection to the pool's call channel (a Unix
  socket, :mod:`.wire`).  It receives cancels, pings and stop requests, so they are
  served while tools run; it never runs user code.
* **executor threads** (``concurrency`` of them) that run tools.  Each has its
  own connection to the channel, and the pool sends each call to one executor's
  connection: the thread that runs the call is the one its arrival wakes, and its
  events and results go straight back the same way, with no thread hop at either
  end.  Its :class:`~.outbox.Outbox` holds back progress while the pool is behind
  (the latest wins), so a flooding tool never blocks.  An executor still running a
  call leaves the next ones it was sent in its socket until it is done.

Cancel raises :class:`CallCancelled` inside the thread running the call
(``PyThreadState_SetAsyncExc``), which stops Python code at its next bytecode:
the tool, or, once the tool has returned, the packing of its result (a large
value, an object that pickles slowly), after which the call ends as cancelled
and the worker keeps its state.  Code stuck in C does not stop, and the pool
restarts the worker after its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import re
import socket
import threading
import traceback
from typing import Any

from ..exceptions import Cancelled, ErrorPayload, KernelpitError, ToolNotFound
from . import capture, heap, lifeline, placement, wire
from .outbox import Outbox
from .arrow import DecodeError, Transport
from .protocol import EncodeError, decode, encode
from .registry import ToolSpec


# a result of these types is packed in one step, which no cancel could stop halfway
_PACKED_AT_ONCE = frozenset({type(None), bool, int, float, str})

# how encode() starts a call's header: {"op":"call","id":7,"tool":"add",...}
_CALL_HEAD = re.compile(rb'\{"op":"call","id":(\d+),"tool":"((?:[^"\\]|\\.)*)"')


class CallCancelled(BaseException):
    """Raised inside a tool whose call was cancelled (a BaseException, like KeyboardInterrupt)."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else ctypes.c_void_p(0))


def error_payload(exc: BaseException, kind: str = "tool") -> dict[str, Any]:
    """The structured, JSON-safe description of an exception raised in this kernel, with the
    agent's own frames left out of its traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    payload = ErrorPayload.of(exc)
    if not isinstance(exc, KernelpitError):
        payload.kind = kind
    payload.traceback = "".join(traceback.format_exception(type(exc), exc, tb))
    return payload.to_dict()


def _cancelled(call_id: int, tool: str) -> dict[str, Any]:
    return ErrorPayload.of(Cancelled(f"call {call_id} of {tool}() was cancelled")).to_dict()


def _cancelled_result(call_id: int) -> dict[str, Any]:
    return {"op": "ev", "id": call_id, "k": "error", "error": ErrorPayload.of(Cancelled(
        f"call {call_id} was cancelled while its result was being sent")).to_dict()}


def _unsendable(exc: Exception, what: str, transport: Any) -> Exception:
    """What the caller is told when the value a tool ``what`` (returned, yielded, sent)
    cannot be sent."""
    if isinstance(exc, EncodeError):
        return TypeError(f"the tool {what} a value Kernelpit cannot send: {exc}")
    if isinstance(exc, OSError):
        return RuntimeError(
            f"the tool {what} a value that could not be written to shared memory "
            f"({transport.shm_dir}): {exc}; free room there (df -h /dev/shm), or lower the "
            "pool's shm_arena so that fewer free slabs are kept")
    return RuntimeError(f"the tool {what} a value Kernelpit failed to send "
                        f"({type(exc).__name__}: {exc}); please report this")


class Agent:
    """Serves tool calls for one worker kernel."""

    def __init__(self, endpoint: str, worker_id: str, tools: dict[str, ToolSpec],
                 concurrency: int = 1, on_stop: Any = None) -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.tools = tools
        self.concurrency = max(1, concurrency)
        self.on_stop = on_stop
        self.transport = Transport.from_env(prefix=f"w{worker_id}")
        self._executor_sockets: list[socket.socket] = []  # connected in start(), before any call
        self._lock = threading.Lock()
        # call id -> the thread a cancel interrupts: the executor running its tool, then the
        # thread packing its result
        self._running: dict[int, int] = {}
        self._interrupted: set[int] = set()  # threads a CallCancelled was raised in
        self._cancelled_early: set[int] = set()  # cancelled before an executor took them

    # -- lifecycle -----------------------------------------------------------------
    def start(self, hello: dict[str, Any]) -> None:
        heap.keep_freed_memory()  # this worker's messages reuse pages, not fault new ones
        # The executors connect first, so that the io thread can always end them (see
        # _io_loop); the pool holds a call for an executor it has not met yet (Channel).
        self._executor_sockets = [self._socket(f"{self.worker_id}.{i}")
                                  for i in range(self.concurrency)]
        threading.Thread(target=self._io_loop, args=(hello,), name="kernelpit-io",
                         daemon=True).start()
        for i, sock in enumerate(self._executor_sockets):
            threading.Thread(target=self._executor, args=(i, sock), name=f"kernelpit-exec-{i}",
                             daemon=True).start()

    def _socket(self, identity: str) -> socket.socket:
        """A connection to the pool: its Unix socket, or signed TCP from another node."""
        return wire.connect(self.endpoint, identity, placement.run_key())

    # -- io thread -----------------------------------------------------------------
    def _io_loop(self, hello: dict[str, Any]) -> None:
        sock = self._socket(self.worker_id)
        wire.send(sock, encode(hello))

        def handle(frames: list[Any]) -> bool:
            try:
                msg = decode(frames, self.transport)
            except (DecodeError, ValueError, RecursionError):
                return True  # not a message of the pool's: the io thread goes on serving
            op = msg.get("op")
            if op == "cancel":
                self.cancel(msg["id"])
            elif op == "forget":
                _session_states.pop(msg.get("session"), None)
            elif op == "ping":
                if msg.get("give_back"):  # over max_memory: what is kept for reuse goes first
                    wire.drop_kept()
                    heap.give_back()
                wire.send(sock, encode({"op": "pong", "id": msg.get("id")}))
            elif op == "stop":
                stopped.set()
                return False
            return True

        # Until a stop, or until the pool closes the channel (then the lifeline ends the kernel).
        stopped = threading.Event()
        try:
            wire.receive_forever(sock, handle)
        finally:
            for executor in self._executor_sockets:  # each ends once the calls it was sent are done
                with contextlib.suppress(OSError):
                    executor.shutdown(socket.SHUT_RD)
            sock.close()
        if stopped.is_set() and self.on_stop is not None:
            self.on_stop()
        elif not stopped.is_set() and self.endpoint.startswith("tcp://"):
            lifeline.channel_lost()  # on another node no pid of the controller can be watched

    def cancel(self, call_id: int) -> None:
        with self._lock:
            thread_id = self._running.get(call_id)
            if thread_id is not None:
                _set_async_exc(thread_id, CallCancelled)
                self._interrupted.add(thread_id)
            else:
                # not taken yet (or already finished: then the entry is never looked up again)
                self._cancelled_early.add(call_id)
                if len(self._cancelled_early) > 10_000:  # drop the oldest half of such strays
                    keep = sorted(self._cancelled_early)[5_000:]
                    self._cancelled_early = set(keep)

    # -- executor threads --------------------------------------------------------------
    def _executor(self, index: int, sock: socket.socket) -> None:
        def write(frames: list[Any]) -> None:
            try:
                # Under the lock cancel() takes to raise CallCancelled in this thread, so the
                # exception never lands halfway through a message (that would garble the stream).
                with self._lock:
                    wire.send(sock, frames)
            except OSError:
                pass  # the pool is gone: nobody is left to tell (the lifeline ends the kernel)

        def send(msg: dict[str, Any]) -> None:
            try:
                if msg.get("k") == "result" and type(msg.get("value")) not in _PACKED_AT_ONCE:
                    # packing it may take long (or be slow Python code): a cancel stops it
                    frames = self._pack_result(msg, write)
                else:
                    frames = encode(msg, self.transport, ahead=write)  # long lists go first
            except Exception as exc:  # noqa: BLE001 - the value fails its call, the worker goes on
                what = {"partial": "yielded", "result": "returned"}.get(msg.get("k", ""), "sent")
                frames = encode({"op": "ev", "id": msg.get("id"), "k": "error", "error": {
                    **error_payload(_unsendable(exc, what, self.transport)), "traceback": ""}})
            write(frames)

        outbox = Outbox(send, sock, name=f"kernelpit-outbox-{index}")

        def handle(frames: list[Any]) -> bool:
            try:
                job = decode(frames, self.transport)
            except (DecodeError, ValueError, RecursionError) as exc:
                # An unreadable call fails alone; the executor goes on serving.
                found = _CALL_HEAD.match(bytes(frames[0][:300]))
                if found:
                    err = RuntimeError(f"the arguments of {found[2].decode()}() could not be "
                                       f"read: {type(exc).__name__}: {exc}")
                    write(encode({"op": "ev", "id": int(found[1]), "k": "error",
                                  "error": error_payload(err)}))
                return True
            if job.get("op") == "call":
                self._serve(job, outbox)
            return True

        # Until the io thread ends it (a stop, or the pool gone), or the pool closes it.
        wire.receive_forever(sock, handle)
        outbox.close()
        sock.close()

    def _serve(self, job: dict[str, Any], outbox: Outbox) -> None:
        call = capture.CallContext(job["id"], outbox.put, job.get("session"))
        spec = self.tools.get(job["tool"])
        if spec is None:
            names = ", ".join(sorted(self.tools)) or "none"
            call.emit("error", error=ErrorPayload.of(ToolNotFound(
                f"no tool named '{job['tool']}' (tools: {names})")).to_dict())
            return
        me = threading.get_ident()
        with self._lock:
            cancelled = call.id in self._cancelled_early
            self._cancelled_early.discard(call.id)
            if not cancelled:
                self._running[call.id] = me
        if cancelled:
            call.emit("error", error=_cancelled(call.id, spec.name))
            return
        outcome: dict[str, Any]
        trace = job.get("trace")
        traced = _enter_trace(trace) if trace else None
        try:
            capture.set_current(call)
            try:
                if "cols" in job:
                    value = self._invoke_batch(spec, job["cols"])
                else:
                    value = self._invoke(spec, call, job.get("args") or [], job.get("kwargs") or {})
            except CallCancelled:
                outcome = {"k": "error", "error": _cancelled(call.id, spec.name)}
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
                outcome = {"k": "error", "error": error_payload(exc)}
            else:
                outcome = {"k": "result", "value": value}
        except CallCancelled:  # arrived while the outcome was being recorded
            outcome = {"k": "error", "error": _cancelled(call.id, spec.name)}
        while True:  # leave the running table with no cancel left pending for this thread
            try:
                self._stop_running(call.id, me)
                break
            except CallCancelled:  # it came before the lock: raised once, then none is left
                continue
        outbox.recover()  # a cancel may have cut this thread off in the middle of sending
        capture.set_current(None)
        if traced is not None:
            _leave_trace(traced)
        call.flush()
        kind = outcome.pop("k")
        call.emit(kind, **outcome)

    def _pack_result(self, msg: dict[str, Any], write: Any) -> list[Any]:
        """The frames of a result message (its long lists written ahead with ``write``), or
        of a cancelled error when the call is cancelled before or while it is packed."""
        call_id, me = msg["id"], threading.get_ident()
        with self._lock:
            cancelled = call_id in self._cancelled_early  # cancelled after the tool returned
            self._cancelled_early.discard(call_id)
            if not cancelled:
                self._running[call_id] = me
        if cancelled:
            return encode(_cancelled_result(call_id))
        frames, failure, packing = None, None, True
        while True:
            try:
                if packing:
                    packing = False
                    try:
                        frames = encode(msg, self.transport, ahead=write)
                    except Exception as exc:  # noqa: BLE001 - raised once out of the table
                        failure = exc
                self._stop_running(call_id, me)
                break
            except CallCancelled:  # the lists already written ahead are dropped by the pool
                continue
        if failure is not None:
            raise failure  # a value that cannot be sent: send() tells the caller why
        return frames if frames is not None else encode(_cancelled_result(call_id))

    def _stop_running(self, call_id: int, me: int) -> None:
        """Take ``call_id`` out of the running table with no cancel left pending for this
        thread (call it where a CallCancelled raised before it took the lock is caught)."""
        with self._lock:
            self._running.pop(call_id, None)
            if me in self._interrupted:  # a cancel may still be pending: drop it
                self._interrupted.discard(me)
                _set_async_exc(me, None)

    @staticmethod
    def _invoke_batch(spec: ToolSpec, columns: list[Any]) -> list[Any]:
        """Run a plain (non-streaming) tool once per row of argument columns: one message
        for many calls."""
        results: list[Any] = []
        append = results.append
        try:
            for value in map(spec.func, *columns):
                append(value)
        except CallCancelled:
            raise
        except BaseException as exc:
            exc.map_index = len(results)  # type: ignore[attr-defined] - within this chunk
            raise
        return results

    @staticmethod
    def _invoke(spec: ToolSpec, call: capture.CallContext, args: list[Any],
                kwargs: dict[str, Any]) -> Any:
        func = spec.func
        kind = spec.kind
        if kind == "plain":
            return func(*args, **kwargs)
        if kind == "generator":
            gen = func(*args, **kwargs)
            try:
                while True:
                    call.emit("partial", value=next(gen))
            except StopIteration as stop:
                return stop.value
        if kind == "coroutine":
            return asyncio.run(func(*args, **kwargs))
        if kind == "asyncgen":
            async def drain() -> None:
                async for item in func(*args, **kwargs):
                    call.emit("partial", value=item)
            asyncio.run(drain())
            return None
        return func(*args, **kwargs)


_otel: Any = None  # (context, propagator) once a traced call came; False: not installed here


def _enter_trace(carrier: dict[str, str]) -> Any:
    """Make the caller's W3C trace context current on this thread (the tool's spans become its
    children); a token for :func:`_leave_trace`, or None when OpenTelemetry is not installed in
    the worker (then the tool runs untraced).  OpenTelemetry is imported on the first traced
    call, never before."""
    global _otel
    if _otel is None:
        try:
            from opentelemetry import context
            from opentelemetry.trace.propagation.tracecontext import \
                TraceContextTextMapPropagator
        except ImportError:
            _otel = False
        else:
            _otel = (context, TraceContextTextMapPropagator())
    if _otel is False:
        return None
    context, propagator = _otel
    return context.attach(propagator.extract(carrier))


def _leave_trace(token: Any) -> None:
    _otel[0].detach(token)


def progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report progress of the running tool: ``done`` of ``total`` units, with a message.

    Outside a tool call (for example in a notebook cell inside the kernel) it
    does nothing, so tool code can be exercised directly.
    """
    call = capture.current()
    if call is not None:
        call.emit("progress", done=done, total=total, message=str(message))


_session_states: dict[str, dict[str, Any]] = {}


def session_state() -> dict[str, Any]:
    """A dict private to the current session, kept in this worker between its calls.

    Store what a session loads (a model, a dataset) here instead of in module
    globals: it is dropped when the session is closed or expires.  Raises
    RuntimeError in a call that is not part of a session.
    """
    call = capture.current()
    if call is None or call.session is None:
        raise RuntimeError("session_state() needs a call made in a session: "
                           "use `with pool.session() as s: s.call(...)`")
    return _session_states.setdefault(call.session, {})


def current_session_id() -> str | None:
    """The session id of the call running on this thread, or None."""
    call = capture.current()
    return call.session if call else None


def current_call_id() -> int | None:
    """The id of the call running on this thread, or None outside a tool."""
    call = capture.current()
    return call.id if call else None
