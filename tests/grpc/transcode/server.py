"""A real gRPC server for the transcoding tests: the UserService of users.proto, with the
standard reflection service. Listens on 127.0.0.1 on a free port and prints `PORT <n>` once
it serves; stops when its standard input closes.

`--reflection v1` serves reflection as `grpc.reflection.v1` (the same messages under the
newer name) instead of `grpc.reflection.v1alpha`, the only version grpcio-reflection has.

`python3 server.py --descriptors OUT` instead writes the FileDescriptorSet of users.proto
(with its imports, as `protoc --include_imports -o` does) to OUT and exits."""

import os
import sys
import threading
import time
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def include_paths():
    """Where users.proto's imports are: grpc_tools' well-known types, and the
    google.api protos that googleapis-common-protos installs."""
    import grpc_tools
    import google.api.annotations_pb2 as annotations

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    googleapis = os.path.dirname(os.path.dirname(os.path.dirname(annotations.__file__)))
    return [HERE, wkt, googleapis]


def write_descriptors(out):
    from grpc_tools import protoc

    args = ["protoc"] + ["-I" + p for p in include_paths()]
    args += ["--include_imports", "--descriptor_set_out=" + out, "users.proto"]
    code = protoc.main(args)
    sys.exit(code)


def serve(reflection_version):
    from grpc_reflection.v1alpha import reflection, reflection_pb2

    protos, services = grpc.protos_and_services("users.proto")

    def user(i, **kw):
        return protos.User(id=i, display_name="user %d" % i, **kw)

    class Users(services.UserServiceServicer):
        def GetUser(self, request, context):
            if request.id == 404:
                context.abort(grpc.StatusCode.NOT_FOUND, "no user 404 ✓")
            if request.id == 400:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad id")
            if request.id == 999:
                time.sleep(2)
            if request.id == 998:
                time.sleep(6)
            who = dict(context.invocation_metadata()).get("x-who", "")
            u = protos.User(
                id=request.id,
                display_name=who,
                role=protos.ADMIN,
                tags=["a", "b"],
                address=protos.Address(city="Lyon", zip_code="69001"),
                active=True,
                visits=18446744073709551615,
                avatar=b"\x00\xffhi",
            )
            u.created_at.FromSeconds(1700000000)
            u.session_ttl.FromSeconds(90)
            if request.view:
                u.nickname.value = request.view
            u.profile.update({"theme": "dark", "n": 3})
            return u

        def CreateUser(self, request, context):
            request.id = 100
            return request

        def UpdateUser(self, request, context):
            if request.user.id == 998:
                time.sleep(6)
            return request.user

        def ListUsers(self, request, context):
            users = [
                protos.User(
                    id=i,
                    tags=request.tags,
                    role=request.role,
                    address=protos.Address(city=request.filter.city),
                    active=request.filter.active,
                )
                for i in range(request.page_size)
            ]
            return protos.ListUsersResponse(users=users, total=len(users))

        def DeleteUser(self, request, context):
            if request.id == 13:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
            return protos.Empty()

        def WatchUsers(self, request, context):
            for i in range(request.count):
                yield user(i)
            if request.fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "watch lost")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    services.add_UserServiceServicer_to_server(Users(), server)
    names = (protos.DESCRIPTOR.services_by_name["UserService"].full_name,)
    if reflection_version == "v1":
        servicer = reflection.ReflectionServicer(names)
        handler = grpc.method_handlers_generic_handler(
            "grpc.reflection.v1.ServerReflection",
            {
                "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                    servicer.ServerReflectionInfo,
                    request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                    response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
    else:
        reflection.enable_server_reflection(names + (reflection.SERVICE_NAME,), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)

    def watch_stdin():
        sys.stdin.read()
        server.stop(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--descriptors":
        write_descriptors(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--reflection":
        serve(sys.argv[2])
    else:
        serve("v1alpha")
