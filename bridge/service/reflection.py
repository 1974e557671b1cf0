"""Server reflection as both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection serves only ``v1alpha`` (grpc/grpc#38576), while current tools
(grpcurl, Postman, grpcui) ask for ``v1`` first.  The two protocols are the same
messages under another package name, so the ``v1`` service here reuses the
``v1alpha`` servicer as it is: the bytes on the wire are identical.  The ``v1``
file descriptor is made from the ``v1alpha`` one (package and type names
changed) and added to the default descriptor pool, so reflection can describe
itself under both names.
"""

from __future__ import annotations

from typing import Any, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection as v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
METHOD = "ServerReflectionInfo"


def v1_file() -> Any:
    """The ``grpc/reflection/v1/reflection.proto`` descriptor, added to the default pool once."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    old_package = v1alpha_pb.DESCRIPTOR.package
    proto = descriptor_pb2.FileDescriptorProto.FromString(v1alpha_pb.DESCRIPTOR.serialized_pb)
    proto.name, proto.package = V1_FILE, V1_PACKAGE

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{old_package}.", f".{V1_PACKAGE}.", 1)

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = (renamed(method.input_type),
                                                     renamed(method.output_type))
    proto.options.Clear()  # v1alpha's say deprecated and name v1alpha packages
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    return pool.AddSerializedFile(proto.SerializeToString())


def v1_messages() -> tuple[type, type]:
    """The ``grpc.reflection.v1`` (ServerReflectionRequest, ServerReflectionResponse) classes."""
    file = v1_file()
    return (message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionRequest"]),
            message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionResponse"]))


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection of ``service_names`` (and of itself) as v1 and v1alpha."""
    v1_file()
    servicer = v1alpha.aio.ReflectionServicer(
        (*service_names, v1alpha.SERVICE_NAME, SERVICE_NAME))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(name, {METHOD: handler})
        for name in (SERVICE_NAME, v1alpha.SERVICE_NAME)))
