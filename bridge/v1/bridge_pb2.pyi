from kernelpit.v1 import values_pb2 as _values_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_CHANGE_UNSPECIFIED: _ClassVar[SessionChange]
    SESSION_CHANGE_OPENED: _ClassVar[SessionChange]
    SESSION_CHANGE_CLOSED: _ClassVar[SessionChange]
    SESSION_CHANGE_LOST: _ClassVar[SessionChange]
SESSION_CHANGE_UNSPECIFIED: SessionChange
SESSION_CHANGE_OPENED: SessionChange
SESSION_CHANGE_CLOSED: SessionChange
SESSION_CHANGE_LOST: SessionChange

class CallOptions(_message.Message):
    __slots__ = ("deadline", "session", "pool", "worker", "idempotent", "trace_context", "tenant", "priority")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    deadline: float
    session: str
    pool: str
    worker: int
    idempotent: bool
    trace_context: _containers.ScalarMap[str, str]
    tenant: str
    priority: int
    def __init__(self, deadline: _Optional[float] = ..., session: _Optional[str] = ..., pool: _Optional[str] = ..., worker: _Optional[int] = ..., idempotent: _Optional[bool] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., tenant: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("tool", "args", "kwargs", "options")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    tool: str
    args: _values_pb2.Value
    kwargs: _values_pb2.Value
    options: CallOptions
    def __init__(self, tool: _Optional[str] = ..., args: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., kwargs: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., options: _Optional[_Union[CallOptions, _Mapping]] = ...) -> None: ...

class CallResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _values_pb2.Value
    def __init__(self, result: _Optional[_Union[_values_pb2.Value, _Mapping]] = ...) -> None: ...

class CallBatch(_message.Message):
    __slots__ = ("calls", "cancel")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[TaggedCall]
    cancel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, calls: _Optional[_Iterable[_Union[TaggedCall, _Mapping]]] = ..., cancel: _Optional[_Iterable[int]] = ...) -> None: ...

class TaggedCall(_message.Message):
    __slots__ = ("id", "request")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    id: int
    request: CallRequest
    def __init__(self, id: _Optional[int] = ..., request: _Optional[_Union[CallRequest, _Mapping]] = ...) -> None: ...

class ReplyBatch(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[Reply]
    def __init__(self, replies: _Optional[_Iterable[_Union[Reply, _Mapping]]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("id", "result", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    result: _values_pb2.Value
    error: _values_pb2.RemoteException
    def __init__(self, id: _Optional[int] = ..., result: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_values_pb2.RemoteException, _Mapping]] = ...) -> None: ...

class ReadBlobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class MapRequest(_message.Message):
    __slots__ = ("tool", "items", "columns", "options", "chunksize")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNKSIZE_FIELD_NUMBER: _ClassVar[int]
    tool: str
    items: _values_pb2.Value
    columns: _values_pb2.Value
    options: CallOptions
    chunksize: int
    def __init__(self, tool: _Optional[str] = ..., items: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., columns: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., options: _Optional[_Union[CallOptions, _Mapping]] = ..., chunksize: _Optional[int] = ...) -> None: ...

class MapResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _values_pb2.Value
    def __init__(self, results: _Optional[_Union[_values_pb2.Value, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("call_id", "time", "queued", "started", "progress", "stdout", "stderr", "display", "partial", "result", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    time: float
    queued: Queued
    started: Started
    progress: Progress
    stdout: Output
    stderr: Output
    display: Display
    partial: _values_pb2.Value
    result: _values_pb2.Value
    error: _values_pb2.RemoteException
    def __init__(self, call_id: _Optional[int] = ..., time: _Optional[float] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., stdout: _Optional[_Union[Output, _Mapping]] = ..., stderr: _Optional[_Union[Output, _Mapping]] = ..., display: _Optional[_Union[Display, _Mapping]] = ..., partial: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., result: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_values_pb2.RemoteException, _Mapping]] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: int
    def __init__(self, worker: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("done", "total", "message")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    done: float
    total: float
    message: str
    def __init__(self, done: _Optional[float] = ..., total: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Display(_message.Message):
    __slots__ = ("data", "metadata")
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    data: _values_pb2.Value
    metadata: _values_pb2.Value
    def __init__(self, data: _Optional[_Union[_values_pb2.Value, _Mapping]] = ..., metadata: _Optional[_Union[_values_pb2.Value, _Mapping]] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "doc", "signature", "parameters_schema", "pool", "module", "thread_safe", "idempotent", "streaming")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    THREAD_SAFE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    name: str
    doc: str
    signature: str
    parameters_schema: str
    pool: str
    module: str
    thread_safe: bool
    idempotent: bool
    streaming: bool
    def __init__(self, name: _Optional[str] = ..., doc: _Optional[str] = ..., signature: _Optional[str] = ..., parameters_schema: _Optional[str] = ..., pool: _Optional[str] = ..., module: _Optional[str] = ..., thread_safe: _Optional[bool] = ..., idempotent: _Optional[bool] = ..., streaming: _Optional[bool] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    def __init__(self, tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ...) -> None: ...

class DescribeToolRequest(_message.Message):
    __slots__ = ("name", "pool")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    pool: str
    def __init__(self, name: _Optional[str] = ..., pool: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "pool", "worker", "created", "last_used", "ttl", "calls", "metadata", "lost")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    id: str
    pool: str
    worker: int
    created: float
    last_used: float
    ttl: float
    calls: int
    metadata: _containers.ScalarMap[str, str]
    lost: str
    def __init__(self, id: _Optional[str] = ..., pool: _Optional[str] = ..., worker: _Optional[int] = ..., created: _Optional[float] = ..., last_used: _Optional[float] = ..., ttl: _Optional[float] = ..., calls: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., lost: _Optional[str] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("pool", "ttl", "metadata", "id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    POOL_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    pool: str
    ttl: float
    metadata: _containers.ScalarMap[str, str]
    id: str
    def __init__(self, pool: _Optional[str] = ..., ttl: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., id: _Optional[str] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("id", "pool", "state", "pid", "connection_file", "rss", "cpu", "calls", "uptime", "current_call", "current_call_seconds", "sessions", "recycles", "recycle_reason", "last_heartbeat", "recycle_in", "spare", "node", "host")
    class RecycleInEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FILE_FIELD_NUMBER: _ClassVar[int]
    RSS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CALL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    RECYCLES_FIELD_NUMBER: _ClassVar[int]
    RECYCLE_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RECYCLE_IN_FIELD_NUMBER: _ClassVar[int]
    SPARE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    id: int
    pool: str
    state: str
    pid: int
    connection_file: str
    rss: int
    cpu: float
    calls: int
    uptime: float
    current_call: str
    current_call_seconds: float
    sessions: int
    recycles: int
    recycle_reason: str
    last_heartbeat: float
    recycle_in: _containers.ScalarMap[str, float]
    spare: bool
    node: str
    host: str
    def __init__(self, id: _Optional[int] = ..., pool: _Optional[str] = ..., state: _Optional[str] = ..., pid: _Optional[int] = ..., connection_file: _Optional[str] = ..., rss: _Optional[int] = ..., cpu: _Optional[float] = ..., calls: _Optional[int] = ..., uptime: _Optional[float] = ..., current_call: _Optional[str] = ..., current_call_seconds: _Optional[float] = ..., sessions: _Optional[int] = ..., recycles: _Optional[int] = ..., recycle_reason: _Optional[str] = ..., last_heartbeat: _Optional[float] = ..., recycle_in: _Optional[_Mapping[str, float]] = ..., spare: _Optional[bool] = ..., node: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    def __init__(self, workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ...) -> None: ...

class WorkerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class WorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UntaintRequest(_message.Message):
    __slots__ = ("tool", "pool")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    tool: str
    pool: str
    def __init__(self, tool: _Optional[str] = ..., pool: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    def __init__(self, workers: _Optional[int] = ...) -> None: ...

class UntaintResponse(_message.Message):
    __slots__ = ("lifted",)
    LIFTED_FIELD_NUMBER: _ClassVar[int]
    lifted: bool
    def __init__(self, lifted: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("snapshot_interval",)
    SNAPSHOT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    snapshot_interval: float
    def __init__(self, snapshot_interval: _Optional[float] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("time", "snapshot", "worker_changed", "session_changed")
    TIME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    WORKER_CHANGED_FIELD_NUMBER: _ClassVar[int]
    SESSION_CHANGED_FIELD_NUMBER: _ClassVar[int]
    time: float
    snapshot: Snapshot
    worker_changed: WorkerChanged
    session_changed: SessionChanged
    def __init__(self, time: _Optional[float] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., worker_changed: _Optional[_Union[WorkerChanged, _Mapping]] = ..., session_changed: _Optional[_Union[SessionChanged, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("workers", "sessions", "tenants")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantLoad]
    def __init__(self, workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ..., sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., tenants: _Optional[_Iterable[_Union[TenantLoad, _Mapping]]] = ...) -> None: ...

class TenantLoad(_message.Message):
    __slots__ = ("pool", "tenant", "waiting", "running")
    POOL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    pool: str
    tenant: str
    waiting: int
    running: int
    def __init__(self, pool: _Optional[str] = ..., tenant: _Optional[str] = ..., waiting: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class WorkerChanged(_message.Message):
    __slots__ = ("worker", "previous_state", "removed")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    worker: Worker
    previous_state: str
    removed: bool
    def __init__(self, worker: _Optional[_Union[Worker, _Mapping]] = ..., previous_state: _Optional[str] = ..., removed: _Optional[bool] = ...) -> None: ...

class SessionChanged(_message.Message):
    __slots__ = ("session", "change")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    session: Session
    change: SessionChange
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., change: _Optional[_Union[SessionChange, str]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("kinds",)
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class TelemetryEvent(_message.Message):
    __slots__ = ("kind", "time", "pool", "worker", "tool", "call_id", "data")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    time: float
    pool: str
    worker: int
    tool: str
    call_id: int
    data: _values_pb2.Value
    def __init__(self, kind: _Optional[str] = ..., time: _Optional[float] = ..., pool: _Optional[str] = ..., worker: _Optional[int] = ..., tool: _Optional[str] = ..., call_id: _Optional[int] = ..., data: _Optional[_Union[_values_pb2.Value, _Mapping]] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TelemetryEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TelemetryEvent, _Mapping]]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "run_id", "pid", "pools", "started", "address", "max_message_size", "blob_ttl", "blob_lane_port", "security", "warnings")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOB_TTL_FIELD_NUMBER: _ClassVar[int]
    BLOB_LANE_PORT_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    version: str
    run_id: str
    pid: int
    pools: _containers.RepeatedScalarFieldContainer[str]
    started: float
    address: str
    max_message_size: int
    blob_ttl: float
    blob_lane_port: int
    security: TransportSecurity
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., run_id: _Optional[str] = ..., pid: _Optional[int] = ..., pools: _Optional[_Iterable[str]] = ..., started: _Optional[float] = ..., address: _Optional[str] = ..., max_message_size: _Optional[int] = ..., blob_ttl: _Optional[float] = ..., blob_lane_port: _Optional[int] = ..., security: _Optional[_Union[TransportSecurity, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ("grace",)
    GRACE_FIELD_NUMBER: _ClassVar[int]
    grace: float
    def __init__(self, grace: _Optional[float] = ...) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("client_id", "ttl")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    ttl: float
    def __init__(self, client_id: _Optional[str] = ..., ttl: _Optional[float] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("idle_timeout", "ttl")
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    idle_timeout: float
    ttl: float
    def __init__(self, idle_timeout: _Optional[float] = ..., ttl: _Optional[float] = ...) -> None: ...

class TransportSecurity(_message.Message):
    __slots__ = ("tls", "client_certificates", "auth", "role", "token_name")
    TLS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    tls: bool
    client_certificates: bool
    auth: bool
    role: str
    token_name: str
    def __init__(self, tls: _Optional[bool] = ..., client_certificates: _Optional[bool] = ..., auth: _Optional[bool] = ..., role: _Optional[str] = ..., token_name: _Optional[str] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("name", "role", "created", "last_used")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    created: float
    last_used: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., created: _Optional[float] = ..., last_used: _Optional[float] = ...) -> None: ...

class TokenSecret(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    secret: str
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class AddTokenRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class TokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
