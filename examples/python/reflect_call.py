#!/usr/bin/python3
"""Call mmsimd using only gRPC server reflection: no generated stubs, no .proto files.

Works like a small grpcurl. Needs python3-grpcio and python3-protobuf (Debian:
apt-get install python3-grpcio python3-protobuf); it does not need
grpcio-reflection: the reflection messages are described below with
descriptor_pb2 and built at run time.

    /usr/bin/python3 examples/python/reflect_call.py                 # list services, call GetVersion
    /usr/bin/python3 examples/python/reflect_call.py list
    /usr/bin/python3 examples/python/reflect_call.py describe mmsim.v1.SystemService
    /usr/bin/python3 examples/python/reflect_call.py call mmsim.v1.SystemService/GetVersion
    /usr/bin/python3 examples/python/reflect_call.py call mmsim.v1.InspectService/CheckInvariants '{"mmId": 1}'
    /usr/bin/python3 examples/python/reflect_call.py --session 3 call mmsim.v1.AddressSpaceService/CreateMm '{"name": "p"}'

Options: --addr HOST:PORT (default $MMSIM_ADDR or 127.0.0.1:50051),
--session ID (sent as mmsim-session metadata), --timeout SECONDS.
Exit status: 0 ok, 1 gRPC error (prints "CODE: details"), 2 usage.
"""

import argparse
import json
import os
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.stderr.write(f"reflect_call.py: {e}; install python3-grpcio python3-protobuf (apt) and use /usr/bin/python3\n")
    sys.exit(2)

F = descriptor_pb2.FieldDescriptorProto


def _message_class(desc):
    """The Python class of a message descriptor (protobuf 3.20 .. 5.x)."""
    get = getattr(message_factory, "GetMessageClass", None)
    if get is not None:
        return get(desc)
    return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)


def _reflection_file(package):
    """grpc/reflection/v1/reflection.proto, reduced to the messages this client uses."""
    f = descriptor_pb2.FileDescriptorProto(name=f"mmsim_reflect_client/{package}.proto", package=package, syntax="proto3")

    def message(name, fields, oneof=None):
        m = f.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, number, ftype, type_name, repeated, in_oneof in fields:
            fd = m.field.add(name=fname, number=number, type=ftype,
                             label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                fd.type_name = f".{package}.{type_name}"
            if in_oneof:
                fd.oneof_index = 0

    message("ServerReflectionRequest", [
        ("host", 1, F.TYPE_STRING, None, False, False),
        ("file_by_filename", 3, F.TYPE_STRING, None, False, True),
        ("file_containing_symbol", 4, F.TYPE_STRING, None, False, True),
        ("list_services", 7, F.TYPE_STRING, None, False, True),
    ], oneof="message_request")
    message("FileDescriptorResponse", [("file_descriptor_proto", 1, F.TYPE_BYTES, None, True, False)])
    message("ServiceResponse", [("name", 1, F.TYPE_STRING, None, False, False)])
    message("ListServiceResponse", [("service", 1, F.TYPE_MESSAGE, "ServiceResponse", True, False)])
    message("ErrorResponse", [
        ("error_code", 1, F.TYPE_INT32, None, False, False),
        ("error_message", 2, F.TYPE_STRING, None, False, False),
    ])
    message("ServerReflectionResponse", [
        ("valid_host", 1, F.TYPE_STRING, None, False, False),
        ("original_request", 2, F.TYPE_MESSAGE, "ServerReflectionRequest", False, False),
        ("file_descriptor_response", 4, F.TYPE_MESSAGE, "FileDescriptorResponse", False, True),
        ("list_services_response", 6, F.TYPE_MESSAGE, "ListServiceResponse", False, True),
        ("error_response", 7, F.TYPE_MESSAGE, "ErrorResponse", False, True),
    ], oneof="message_response")
    return f


class ReflectionClient:
    """grpc.reflection.v1 (falling back to v1alpha) over one channel."""

    def __init__(self, channel, timeout):
        self.channel = channel
        self.timeout = timeout
        self.files = {}  # name -> FileDescriptorProto received
        self.pool = descriptor_pool.DescriptorPool()  # the server's files
        self._added = set()
        self._version = None
        self._use("v1")

    def _use(self, version):
        package = f"grpc.reflection.{version}"
        pool = descriptor_pool.DescriptorPool()
        pool.Add(_reflection_file(package))
        self.Request = _message_class(pool.FindMessageTypeByName(f"{package}.ServerReflectionRequest"))
        self.Response = _message_class(pool.FindMessageTypeByName(f"{package}.ServerReflectionResponse"))
        self._stream = self.channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=self.Request.SerializeToString,
            response_deserializer=self.Response.FromString,
        )
        self._version = version

    def _ask(self, **request):
        req = self.Request(**request)
        try:
            resp = next(iter(self._stream(iter([req]), timeout=self.timeout)))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED and self._version == "v1":
                self._use("v1alpha")
                return self._ask(**request)
            raise
        if resp.WhichOneof("message_response") == "error_response":
            raise LookupError(f"reflection: {resp.error_response.error_message} (code {resp.error_response.error_code})")
        return resp

    def list_services(self):
        return sorted(s.name for s in self._ask(list_services="*").list_services_response.service)

    def _receive(self, resp):
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            self.files.setdefault(fdp.name, fdp)

    def _add(self, name, stack=()):
        """Add a file to the pool after its dependencies, asking the server for missing ones."""
        if name in self._added:
            return
        if name in stack:
            raise LookupError(f"reflection: import cycle through {name}")
        if name not in self.files:
            self._receive(self._ask(file_by_filename=name))
        fdp = self.files[name]
        for dep in fdp.dependency:
            self._add(dep, stack + (name,))
        self.pool.Add(fdp)
        self._added.add(name)

    def load_symbol(self, symbol):
        resp = self._ask(file_containing_symbol=symbol)
        first = descriptor_pb2.FileDescriptorProto.FromString(resp.file_descriptor_response.file_descriptor_proto[0])
        self._receive(resp)
        self._add(first.name)

    def method(self, full_method):
        """"pkg.Service/Method" -> (method descriptor, request class, response class)."""
        service_name, _, method_name = full_method.partition("/")
        if not method_name:
            raise ValueError(f"expected SERVICE/METHOD, got {full_method!r}")
        self.load_symbol(service_name)
        service = self.pool.FindServiceByName(service_name)
        m = service.methods_by_name.get(method_name)
        if m is None:
            raise LookupError(f"{service_name} has no method {method_name} (methods: {', '.join(service.methods_by_name)})")
        return m, _message_class(m.input_type), _message_class(m.output_type)


def to_json(msg):
    return json.dumps(json_format.MessageToDict(msg, including_default_value_fields=True))


def call(rc, channel, full_method, body, metadata, timeout):
    m, Req, Res = rc.method(full_method)
    if m.client_streaming or m.server_streaming:
        raise ValueError(f"{full_method} is a streaming method; only unary calls are supported")
    req = json_format.Parse(body or "{}", Req())
    fn = channel.unary_unary(f"/{m.containing_service.full_name}/{m.name}",
                             request_serializer=Req.SerializeToString, response_deserializer=Res.FromString)
    return fn(req, metadata=metadata, timeout=timeout)


def describe(rc, symbol):
    rc.load_symbol(symbol)
    try:
        s = rc.pool.FindServiceByName(symbol)
        lines = [f"service {s.full_name}"]
        for m in s.methods:
            stream = "stream " if m.server_streaming else ""
            lines.append(f"  rpc {m.name}({m.input_type.full_name}) returns ({stream}{m.output_type.full_name})")
        return "\n".join(lines)
    except KeyError:
        d = rc.pool.FindMessageTypeByName(symbol)
        lines = [f"message {d.full_name}"]
        for f in d.fields:
            t = f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else F.Type.Name(f.type)[5:].lower()
            lines.append(f"  {t} {f.name} = {f.number}")
        return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description="Call mmsimd through gRPC server reflection (no stubs).")
    p.add_argument("--addr", default=os.environ.get("MMSIM_ADDR", "127.0.0.1:50051"))
    p.add_argument("--session", help="session id sent as mmsim-session metadata")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("command", nargs="?", choices=["list", "describe", "call"])
    p.add_argument("args", nargs="*")
    a = p.parse_args(argv)
    metadata = [("mmsim-session", a.session)] if a.session else None
    with grpc.insecure_channel(a.addr) as channel:
        rc = ReflectionClient(channel, a.timeout)
        try:
            if a.command in (None, "list"):
                print("services:")
                for s in rc.list_services():
                    print(f"  {s}")
            if a.command is None:
                method = "mmsim.v1.SystemService/GetVersion"
                print(method, to_json(call(rc, channel, method, "{}", metadata, a.timeout)))
            elif a.command == "describe":
                if len(a.args) != 1:
                    p.error("describe needs one SYMBOL")
                print(describe(rc, a.args[0]))
            elif a.command == "call":
                if len(a.args) not in (1, 2):
                    p.error("call needs SERVICE/METHOD [JSON]")
                print(to_json(call(rc, channel, a.args[0], a.args[1] if len(a.args) > 1 else "{}", metadata, a.timeout)))
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        except (LookupError, ValueError, json_format.ParseError) as e:
            print(f"reflect_call.py: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
