"""A real gRPC server for the gateway's tests: the Echo service of echo.proto, plus the
standard health and reflection services. Listens on 127.0.0.1 on a free port and prints
`PORT <n>` once it serves. Stops on SIGTERM or when its standard input closes."""

import os
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
protos, services = grpc.protos_and_services("echo.proto")


class Echo(services.EchoServicer):
    def Unary(self, request, context):
        if request.text == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request.text == "slow":
            time.sleep(request.n / 1000.0)
        who = dict(context.invocation_metadata()).get("x-who", "")
        context.set_trailing_metadata((("x-trailer", "kept"),))
        return protos.Msg(text=request.text + "|" + who, n=request.n)

    def Count(self, request, context):
        for i in range(request.n):
            yield protos.Msg(text=request.text, n=i)

    def Join(self, request_iterator, context):
        texts = [m.text for m in request_iterator]
        return protos.Msg(text="+".join(texts), n=len(texts))

    def Chat(self, request_iterator, context):
        for m in request_iterator:
            yield protos.Msg(text=m.text.upper(), n=m.n)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    services.add_EchoServicer_to_server(Echo(), server)
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    checks.set("echo.v1.Echo", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection(
        (protos.DESCRIPTOR.services_by_name["Echo"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)

    def watch_stdin():
        sys.stdin.read()
        server.stop(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
