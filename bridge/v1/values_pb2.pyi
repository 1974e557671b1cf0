from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_TOOL: _ClassVar[ErrorKind]
    ERROR_KIND_WORKER_CRASHED: _ClassVar[ErrorKind]
    ERROR_KIND_SESSION_LOST: _ClassVar[ErrorKind]
    ERROR_KIND_DEADLINE: _ClassVar[ErrorKind]
    ERROR_KIND_CANCELLED: _ClassVar[ErrorKind]
    ERROR_KIND_QUEUE_FULL: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID_ARGUMENTS: _ClassVar[ErrorKind]
    ERROR_KIND_NOT_FOUND: _ClassVar[ErrorKind]
    ERROR_KIND_UNAVAILABLE: _ClassVar[ErrorKind]
    ERROR_KIND_UNAUTHENTICATED: _ClassVar[ErrorKind]
    ERROR_KIND_CLOSED: _ClassVar[ErrorKind]
    ERROR_KIND_START: _ClassVar[ErrorKind]
    ERROR_KIND_INTERNAL: _ClassVar[ErrorKind]
    ERROR_KIND_TOOL_TAINTED: _ClassVar[ErrorKind]
    ERROR_KIND_JOB_LOST: _ClassVar[ErrorKind]
    ERROR_KIND_PERMISSION_DENIED: _ClassVar[ErrorKind]
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_TOOL: ErrorKind
ERROR_KIND_WORKER_CRASHED: ErrorKind
ERROR_KIND_SESSION_LOST: ErrorKind
ERROR_KIND_DEADLINE: ErrorKind
ERROR_KIND_CANCELLED: ErrorKind
ERROR_KIND_QUEUE_FULL: ErrorKind
ERROR_KIND_INVALID_ARGUMENTS: ErrorKind
ERROR_KIND_NOT_FOUND: ErrorKind
ERROR_KIND_UNAVAILABLE: ErrorKind
ERROR_KIND_UNAUTHENTICATED: ErrorKind
ERROR_KIND_CLOSED: ErrorKind
ERROR_KIND_START: ErrorKind
ERROR_KIND_INTERNAL: ErrorKind
ERROR_KIND_TOOL_TAINTED: ErrorKind
ERROR_KIND_JOB_LOST: ErrorKind
ERROR_KIND_PERMISSION_DENIED: ErrorKind

class Value(_message.Message):
    __slots__ = ("json", "raw", "buffers", "encoding", "blobs")
    JSON_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    json: str
    raw: bytes
    buffers: _containers.RepeatedScalarFieldContainer[bytes]
    encoding: str
    blobs: _containers.RepeatedCompositeFieldContainer[BlobRef]
    def __init__(self, json: _Optional[str] = ..., raw: _Optional[bytes] = ..., buffers: _Optional[_Iterable[bytes]] = ..., encoding: _Optional[str] = ..., blobs: _Optional[_Iterable[_Union[BlobRef, _Mapping]]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("id", "size")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    id: str
    size: int
    def __init__(self, id: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class RemoteException(_message.Message):
    __slots__ = ("kind", "type", "module", "message", "traceback", "args", "exit_code", "signal", "tool", "call_id", "worker", "map_index", "reason", "until")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    MAP_INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    kind: ErrorKind
    type: str
    module: str
    message: str
    traceback: str
    args: Value
    exit_code: int
    signal: str
    tool: str
    call_id: int
    worker: int
    map_index: int
    reason: str
    until: float
    def __init__(self, kind: _Optional[_Union[ErrorKind, str]] = ..., type: _Optional[str] = ..., module: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., args: _Optional[_Union[Value, _Mapping]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[str] = ..., tool: _Optional[str] = ..., call_id: _Optional[int] = ..., worker: _Optional[int] = ..., map_index: _Optional[int] = ..., reason: _Optional[str] = ..., until: _Optional[float] = ...) -> None: ...
