"""FastAPI edge: the app that assembles the routers, its middleware and its lifespan.

Routers: ``verbs`` (kube-scheduler's extender verbs), ``quota_views`` (/v1/quotas),
``views`` (/v1/nodes, /v1/allocations, /v1/pods), ``dashboard`` (the page and
/v1/explain) and ``_operations`` (/healthz, /readyz, /metrics). A body that is not the
wire format gets a 422 naming the field (never echoing what was sent); a body past
``max_body`` bytes, declared or streamed, gets a 413; nothing becomes a 500.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, dashboard, quota_views, verbs, views
from .backend import Backend
from .extender import Extender
from .fastpath import Hot, HotVerbs
from .metrics import Metrics, ReservationCollector
from .state import ClusterState

log = logging.getLogger("flexai_sched")
MAX_BODY = 64 << 20  # a 5,000-node NodeList is ~30 MiB; anything past this is refused


async def _learn_workload(extender: Extender) -> None:
    """Every ``workload_refresh_s``: the policy's target workload from the bound pods."""
    settings = extender.settings
    while True:
        await asyncio.sleep(settings.workload_refresh_s)
        try:
            n = await run_in_threadpool(extender.learn_workload, settings.workload_min_pods)
        except Exception:  # never let a bad pod end the loop
            log.exception("learning the target workload failed; keeping the previous one")
            continue
        if n:
            log.info("target workload learned from %d bound pods", n)


def create_app(extender: Extender, start_backend: bool = True, max_body: int = MAX_BODY) -> FastAPI:
    state: ClusterState = extender.state
    backend: Backend = extender.backend
    metrics = Metrics(state)
    metrics.registry.register(ReservationCollector(extender.reserving.counts))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_backend:
            await run_in_threadpool(backend.start, state)
        # The synced cluster state is long-lived: move it out of the GC's reach so a full
        # collection never walks it in the middle of a filter call.
        gc.collect()
        gc.freeze()
        learner = asyncio.create_task(_learn_workload(extender)) if extender.settings.workload_refresh_s else None
        try:
            yield
        finally:
            if learner is not None:
                learner.cancel()
            if start_backend:
                await run_in_threadpool(backend.stop)

    app = FastAPI(
        title="flexai-sched",
        version=__version__,
        summary="vGPU bin-packing extender for kube-scheduler, and views of its allocations",
        lifespan=lifespan,
    )
    app.state.extender = extender
    app.state.metrics = metrics
    # filter and prioritize are answered below FastAPI (fastpath.py: in uvicorn's protocol
    # with ``fastpath.protocol(app.state.hot)``, else in this middleware): the handlers
    # below document them in /docs and make the same decisions.
    app.state.hot = Hot(extender, metrics, max_body)
    app.add_middleware(HotVerbs, hot=app.state.hot)
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    quota_views.install(app, state.quotas, metrics.registry)

    _flat(app, verbs.router(extender, metrics))
    _flat(app, views.router(state))
    app.include_router(dashboard.router(extender))  # the web page at / and /v1/explain
    _flat(app, _operations(backend, state, metrics))
    return app


def _flat(app: FastAPI, router: APIRouter) -> None:
    """The router's routes on the app's own table, as if declared there: ``app.routes`` lists
    them (FastAPI keeps an included router as one entry), so tests and tools that walk the
    routes see every verb and view."""
    app.router.routes.extend(router.routes)


def _operations(backend: Backend, state: ClusterState, metrics: Metrics) -> APIRouter:
    """/healthz, /readyz (503 while syncing with the cluster) and /metrics."""
    r = APIRouter(tags=["operations"])

    @r.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @r.get("/readyz", responses={503: {"description": "Still syncing with the cluster"}})
    def readyz() -> Response:
        if backend.ready():
            return JSONResponse({"status": "ready", "nodes": len(state)})
        return JSONResponse({"status": "syncing"}, status_code=503)

    @r.get("/metrics", response_class=PlainTextResponse)
    def metrics_() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return r


class BodyLimit:
    """Refuses bodies over ``limit`` bytes with 413: at once when the declared length is
    over, else as soon as the bytes received pass it (a chunked body declares none).

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware re-streams every response,
    which costs more than the filter itself on large node lists. Past the limit the app
    is told the client left (``http.disconnect``), so it stops reading, and whatever it
    answers then is dropped: the 413 went first.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send, f"body of {int(value)} bytes exceeds {self.limit}")
                return
        received = 0
        refused = started = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send, f"body exceeds {self.limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, why: str) -> None:
        # Connection: close, so the server stops reading the rest of the body.
        reply = JSONResponse({"detail": why}, status_code=413, headers={"connection": "close"})
        await reply(scope, receive, send)


MAX_ERRORS = 20  # a body with a million bad items gets the first few named, and a count


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and the reason, never echoing the input: the input may be
    huge, NaN, or not text at all, which FastAPI's own handler fails to encode (a 500)."""
    errors = list(exc.errors())
    detail: list[dict[str, Any]] = [
        {
            "loc": [x if isinstance(x, int) else _printable(str(x)) for x in d.get("loc", ())],
            "msg": _printable(str(d.get("msg", ""))),
            "type": _printable(str(d.get("type", ""))),
        }
        for d in errors[:MAX_ERRORS]
    ]
    if len(errors) > MAX_ERRORS:
        detail.append({"loc": [], "msg": f"and {len(errors) - MAX_ERRORS} more errors", "type": "too_many_errors"})
    return JSONResponse({"detail": detail}, status_code=422)


def _printable(text: str, most: int = 200) -> str:
    """Valid UTF-8 (lone surrogates replaced), at most ``most`` characters."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= most else text[:most] + "..."
