"""The floor: a do-nothing kube-scheduler extender on the fastest Python HTTP and JSON stack.

A raw asyncio protocol on uvloop, httptools' C parser for the HTTP/1.1 framing, msgspec's
JSON decoder and encoder (the fastest of orjson, msgspec and pydantic on these bodies:
bench/results/extender-latency.md). No framework, no routing table, no validation beyond
what decoding does. ``/filter`` answers that every node fits (echoes ``NodeNames``),
``/prioritize`` scores every node 0: it decodes the whole body and encodes a reply of the
same size as a real extender, and does nothing else. bench/extender_latency.py measures
our extender against it.

    .venv/bin/python bench/floor_extender.py [--port 18932]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httptools
import msgspec
import uvloop

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


def answer(path: bytes, body: bytes) -> bytes:
    if path == b"/healthz":
        return b'{"status":"ok"}'
    args: Any = _decode(body)
    names = args.get("NodeNames") or []
    if path == b"/filter":
        return _encode(
            {"Nodes": None, "NodeNames": names, "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""}
        )
    return _encode([{"Host": n, "Score": 0} for n in names])


class Floor(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        out = answer(self.url, b"".join(self.body))
        self.body.clear()
        assert self.transport is not None
        self.transport.write(HEAD % len(out) + out)


def serve(port: int) -> None:
    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(run())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18932)
    serve(ap.parse_args().port)
