"""The hot extender verbs, filter and prioritize, served below FastAPI.

kube-scheduler calls filter and prioritize for every vGPU pod with up to every node's
name, so their cost is mostly framing and JSON: this plain ASGI middleware answers
``POST /filter`` and ``POST /prioritize`` in the form kube-scheduler sends as deployed
(``nodeCacheCapable``: names, no NodeList) itself (no routing, no request object, no
response class), decoding the body with msgspec straight into a typed struct and
encoding the reply with msgspec. Every other path goes on to the FastAPI app, which
documents both verbs in /docs.

Anything else, a body msgspec refuses, a full NodeList, a reply that cannot be encoded
(a lone surrogate in what the pod sent), is replayed to the FastAPI handlers, which make
the same decisions and give the edge's error answers (a 422 naming the field, never a
5xx) from one place. A body is refused with 413 as soon as the bytes received pass the
limit, chunked or not.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .extender import Extender
from .metrics import Metrics

log = logging.getLogger("flexai_sched")


class _Args(msgspec.Struct):
    """ExtenderArgs as kube-scheduler sends it with nodeCacheCapable (unknown fields ignored)."""

    Pod: dict[str, Any]
    NodeNames: list[str]
    Nodes: None = None


_decode = msgspec.json.Decoder(_Args).decode
_encode = msgspec.json.Encoder().encode
_JSON = [(b"content-type", b"application/json")]


class HotVerbs:
    """Serves ``POST /filter`` and ``POST /prioritize`` for ``extender``; passes the rest on."""

    def __init__(self, app: ASGIApp, extender: Extender, metrics: Metrics, limit: int) -> None:
        self.app = app
        self.extender = extender
        self.metrics = metrics
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" and scope.get("method") == "POST" else None
        if path != "/filter" and path != "/prioritize":
            await self.app(scope, receive, send)
            return
        body = await _read(receive, self.limit)
        if body is None:  # over the limit, or the client left
            await _send(send, 413, {"detail": f"body exceeds {self.limit} bytes"})
            return
        try:
            args = _decode(body)
            reply = _encode(self._filter(args) if path == "/filter" else self._prioritize(args))
        except Exception:  # not the happy path (msgspec refused the body or the reply): FastAPI answers
            log.debug("%s: answered by the app", path, exc_info=True)
            await self.app(scope, _replay(body, receive), send)
            return
        await _send_raw(send, 200, reply)

    def _filter(self, args: _Args) -> Any:
        names = args.NodeNames
        with self.metrics.latency.labels("filter").time():
            try:
                out = self.extender.filter(args.Pod, names)
            except Exception as e:  # an answer kube-scheduler shows in the pod's events, not a 500
                log.exception("filter")
                return {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
                        "Error": f"internal error: {e}"}
        return {"Nodes": None, "NodeNames": out.fits, "FailedNodes": out.failed,
                "FailedAndUnresolvableNodes": out.unresolvable, "Error": ""}

    def _prioritize(self, args: _Args) -> Any:
        names = args.NodeNames
        with self.metrics.latency.labels("prioritize").time():
            try:
                scores = self.extender.prioritize(args.Pod, names)
            except Exception:  # prioritize errors are ignored by kube-scheduler: score nothing
                log.exception("prioritize")
                scores = [(n, 0) for n in names]
        return [{"Host": h, "Score": s} for h, s in scores]


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the FastAPI app: the body already read, then the client's own messages."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once more than ``limit`` bytes arrived (chunked bodies included)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return None  # the client left (or BodyLimit refused the body and answered)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: Any) -> None:
    await _send_raw(send, status, _encode(body))


async def _send_raw(send: Send, status: int, raw: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})
