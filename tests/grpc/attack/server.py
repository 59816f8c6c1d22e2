"""A gRPC server for the gateway's attack tests: the Echo service of ../echo.proto, made to
observe cancellations. Prints `PORT <n>`; stops when stdin closes.

Unary: text "block" waits up to 5 s for the call to be cancelled; text "status" answers
with a JSON summary of what was seen; text "bigtrailer" sets an `n`-byte trailer; other
texts echo. Count: `n` messages 100 ms apart, noting how the call ended. Chat: echoes,
noting how the call ended."""

import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
protos, services = grpc.protos_and_services("echo.proto")

SEEN = {"block_cancelled": 0, "block_completed": 0, "count_cancelled": 0,
        "count_completed": 0, "chat_cancelled": 0, "chat_ended": 0, "calls": 0,
        "timeouts": []}
LOCK = threading.Lock()


def note(key, by=1):
    with LOCK:
        SEEN[key] += by


class Echo(services.EchoServicer):
    def Unary(self, request, context):
        note("calls")
        with LOCK:
            SEEN["timeouts"].append(context.time_remaining())
        if request.text == "block":
            started = time.time()
            while context.is_active() and time.time() - started < 5:
                time.sleep(0.02)
            note("block_cancelled" if not context.is_active() else "block_completed")
            return protos.Msg(text="blocked")
        if request.text == "status":
            with LOCK:
                return protos.Msg(text=json.dumps(SEEN))
        if request.text == "bigtrailer":
            context.set_trailing_metadata((("x-big", "a" * request.n),))
            return protos.Msg(text="big")
        if request.text == "bigheader":
            context.send_initial_metadata((("x-big", "a" * request.n),))
            return protos.Msg(text="big")
        return protos.Msg(text=request.text, n=request.n)

    def Count(self, request, context):
        note("calls")
        # grpcio stops taking messages from a cancelled call's generator and closes it at
        # its `yield`, so the outcome is noted on the way out, however it leaves.
        try:
            for i in range(request.n):
                if not context.is_active():
                    return
                yield protos.Msg(text=request.text, n=i)
                time.sleep(0.1)
            # The last message went out: wait to see whether the call was cancelled.
            time.sleep(0.3)
        finally:
            note("count_completed" if context.is_active() else "count_cancelled")

    def Join(self, request_iterator, context):
        texts = [m.text for m in request_iterator]
        return protos.Msg(text="+".join(texts), n=len(texts))

    def Chat(self, request_iterator, context):
        note("calls")
        try:
            for m in request_iterator:
                yield protos.Msg(text=m.text.upper(), n=m.n)
        except Exception:
            pass
        finally:
            note("chat_cancelled" if not context.is_active() else "chat_ended")


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    services.add_EchoServicer_to_server(Echo(), server)
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
