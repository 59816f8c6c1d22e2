"""A real WebSocket server and client for the gateway's tests (the `websockets` package).

`ws.py serve` listens on 127.0.0.1 on a free port, prints `PORT <n>`, and echoes every
message back upper-cased; a message `close` makes it close the connection (code 4001).
Stops when its standard input closes.

`ws.py talk URL [MESSAGES...]` connects through URL, sends each message, reads each answer,
then closes; `ws.py wait URL` connects, sends nothing and waits for the other side to close.
Both print one JSON object with what happened."""

import asyncio
import json
import sys

import websockets


async def serve():
    async def echo(ws):
        async for message in ws:
            if message == "close":
                await ws.close(code=4001, reason="asked to")
                return
            await ws.send(message.upper())

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


async def talk(url, messages):
    out = {"answers": []}
    try:
        async with websockets.connect(url, open_timeout=5, close_timeout=2) as ws:
            for m in messages:
                await ws.send(m)
                try:
                    out["answers"].append(await asyncio.wait_for(ws.recv(), 5))
                except websockets.ConnectionClosed as e:
                    out["closed"] = {"code": e.rcvd.code if e.rcvd else None}
                    break
    except websockets.InvalidStatus as e:
        out["refused"] = e.response.status_code
    print(json.dumps(out))


async def wait(url, seconds):
    out = {}
    async with websockets.connect(url, open_timeout=5, ping_interval=None) as ws:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.wait_for(ws.recv(), seconds)
        except websockets.ConnectionClosed:
            out["closed_after"] = loop.time() - started
        except asyncio.TimeoutError:
            out["still_open_after"] = seconds
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve())
    elif sys.argv[1] == "talk":
        asyncio.run(talk(sys.argv[2], sys.argv[3:]))
    else:
        asyncio.run(wait(sys.argv[2], float(sys.argv[3])))
