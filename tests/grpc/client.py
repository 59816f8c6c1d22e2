"""A real gRPC client for the gateway's tests. `client.py TARGET CASE` makes the calls of
CASE through TARGET (host:port) and prints one JSON object with what came back."""

import json
import os
import sys

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
protos, services = grpc.protos_and_services("echo.proto")


def outcome(call):
    try:
        return {"ok": call()}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def main():
    target, case = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(target)
    stub = services.EchoStub(channel)
    out = {}
    if case == "all":
        def unary():
            reply, call = stub.Unary.with_call(
                protos.Msg(text="hi", n=7), metadata=(("x-who", "alice"),), timeout=5
            )
            trailers = dict(call.trailing_metadata())
            return {"text": reply.text, "n": reply.n, "trailer": trailers.get("x-trailer")}

        out["unary"] = outcome(unary)
        out["count"] = outcome(
            lambda: [m.n for m in stub.Count(protos.Msg(text="c", n=5), timeout=5)]
        )
        out["join"] = outcome(
            lambda: stub.Join(iter([protos.Msg(text=t) for t in "abc"]), timeout=5).text
        )
        out["chat"] = outcome(
            lambda: [m.text for m in stub.Chat(iter([protos.Msg(text=t) for t in ["x", "y"]]), timeout=5)]
        )
        out["missing"] = outcome(lambda: stub.Unary(protos.Msg(text="missing"), timeout=5).text)
        out["deadline"] = outcome(
            lambda: stub.Unary(protos.Msg(text="slow", n=3000), timeout=0.3).text
        )
    elif case.startswith("fallback:"):
        # A call on the route picked by `x-variant`, with what the answer says of a fallback.
        def unary():
            reply, call = stub.Unary.with_call(
                protos.Msg(text="hi"), metadata=(("x-variant", case[9:]),), timeout=5
            )
            head = dict(call.initial_metadata())
            return {
                "text": reply.text,
                "n": reply.n,
                "fallback": head.get("x-gatehouse-fallback"),
                "degraded": head.get("x-degraded"),
            }

        out = outcome(unary)
    else:
        out[case] = outcome(lambda: stub.Unary(protos.Msg(text=case), timeout=5).text)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
