"""FastAPI edge: kube-scheduler's extender verbs, REST views, health and metrics.

Handlers only parse, call ``Extender`` and serialise. A request the core rejects
becomes a well-formed extender reply (kube-scheduler shows its reason in the pod's
FailedScheduling event); a body that is not the wire format gets a 422 naming the
field (never echoing what was sent); a body past ``max_body`` bytes, declared or
streamed, gets a 413; nothing becomes a 500.

Every verb parses its raw body with pydantic's JSON parser, which refuses what a
well-formed client never sends: bytes that are not UTF-8 and lone surrogates.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, dashboard, quota_views, views
from .backend import Backend
from .extender import BindError, Extender
from .extender_types import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    HostPriority,
    MetaPod,
    MetaVictims,
)
from .fastpath import Hot, HotVerbs
from .metrics import Metrics
from .state import ClusterState

log = logging.getLogger("flexai_sched")
MAX_BODY = 64 << 20  # a 5,000-node NodeList is ~30 MiB; anything past this is refused


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """422: the fields that are not the wire format, and why."""

    detail: list[FieldError]


class Refused(BaseModel):
    """404, 413, 503: why."""

    detail: str


_POSTED: dict[int | str, dict[str, Any]] = {
    413: {"model": Refused, "description": "Body larger than the limit (declared or streamed)"},
    422: {"model": Invalid, "description": "Body is not the wire format: each field and the reason"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Refused, "description": "Not known to the scheduler"}}


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

    # ---- extender verbs (every body parsed by _parse; bind and preempt then run in the thread pool) ----

    # filter and prioritize carry thousands of node names per call and are pure CPU work of
    # a millisecond or two: they parse the body with pydantic's Rust JSON parser, run on the
    # event loop (no thread hop), and write plain dicts straight to JSON. The models still
    # document both shapes in /docs.
    @app.post("/filter", response_model=ExtenderFilterResult, openapi_extra=_body_doc(ExtenderArgs),
              responses=_POSTED, tags=["extender"])
    async def filter_(request: Request) -> Response:
        args = _parse(ExtenderArgs, await request.body())
        with metrics.latency.labels("filter").time():
            out = extender.filter(args.Pod, args.node_names())
            reply: dict[str, Any] = {"Nodes": None, "NodeNames": None, "FailedNodes": out.failed,
                                     "FailedAndUnresolvableNodes": out.unresolvable, "Error": ""}
            if args.NodeNames is not None or args.Nodes is None:
                reply["NodeNames"] = out.fits
            else:  # full-NodeList mode: kube-scheduler reads only Nodes
                keep = set(out.fits)
                items = [n for n in args.Nodes.items if n["metadata"]["name"] in keep]
                reply["Nodes"] = {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items}
            return _json(reply)

    @app.post("/prioritize", response_model=list[HostPriority], openapi_extra=_body_doc(ExtenderArgs),
              responses=_POSTED, tags=["extender"])
    async def prioritize(request: Request) -> Response:
        args = _parse(ExtenderArgs, await request.body())
        with metrics.latency.labels("prioritize").time():
            return _json([{"Host": h, "Score": s} for h, s in extender.prioritize(args.Pod, args.node_names())])

    @app.post("/bind", response_model=ExtenderBindingResult, openapi_extra=_body_doc(ExtenderBindingArgs),
              responses=_POSTED, tags=["extender"])
    async def bind(request: Request) -> ExtenderBindingResult:
        args = _parse(ExtenderBindingArgs, await request.body())
        return await run_in_threadpool(bind_, args)  # may wait on the apiserver

    def bind_(args: ExtenderBindingArgs) -> ExtenderBindingResult:
        with metrics.latency.labels("bind").time():
            try:
                extender.bind(args.PodNamespace, args.PodName, args.PodUID, args.Node)
            except BindError as e:
                metrics.bind_failures.labels(_reason_class(str(e))).inc()
                log.info("bind %s/%s -> %s failed: %s", args.PodNamespace, args.PodName, args.Node, e)
                return ExtenderBindingResult(Error=str(e))
            except Exception as e:  # the API edge: a failure of the backend is an answer, not a 500
                metrics.bind_failures.labels("internal").inc()
                log.exception("bind %s/%s -> %s", args.PodNamespace, args.PodName, args.Node)
                return ExtenderBindingResult(Error=f"internal error: {e}")
            metrics.binds.inc()
            return ExtenderBindingResult()

    @app.post("/preempt", response_model=ExtenderPreemptionResult, openapi_extra=_body_doc(ExtenderPreemptionArgs),
              responses=_POSTED, tags=["extender"])
    async def preempt(request: Request) -> ExtenderPreemptionResult:
        args = _parse(ExtenderPreemptionArgs, await request.body())
        return await run_in_threadpool(preempt_, args)

    def preempt_(args: ExtenderPreemptionArgs) -> ExtenderPreemptionResult:
        with metrics.latency.labels("preempt").time():
            kept = extender.preempt(args.Pod, args.victims())
            return ExtenderPreemptionResult(
                NodeNameToMetaVictims={
                    n: MetaVictims(Pods=[MetaPod(UID=u) for u in uids], NumPDBViolations=pdb)
                    for n, (uids, pdb) in kept.items()
                }
            )

    # ---- views ----

    @app.get("/v1/nodes", response_model=list[views.NodeSummary], tags=["views"])
    def list_nodes() -> list[views.NodeSummary]:
        return [views.node_summary(n) for n in sorted(state.nodes(), key=lambda n: n.name)]

    @app.get("/v1/nodes/{name}", response_model=views.NodeDetail, responses=_NOT_FOUND, tags=["views"])
    def get_node(name: str) -> views.NodeDetail:
        node = state.node(name)
        if node is None:
            raise HTTPException(404, f"node {name!r}: not known to the scheduler")
        return views.node_detail(node, state)

    @app.get("/v1/allocations", response_model=list[views.AllocationView], tags=["views"])
    def list_allocations() -> list[views.AllocationView]:
        return [views.allocation_view(a, st) for a, st in sorted(state.allocations(), key=lambda x: x[0].key)]

    @app.get("/v1/pods/{namespace}/{name}", response_model=views.AllocationView, responses=_NOT_FOUND,
             tags=["views"])
    def get_pod(namespace: str, name: str) -> views.AllocationView:
        key = f"{namespace}/{name}"
        a = state.allocation(key)
        if a is None:
            raise HTTPException(404, f"pod {key}: has no vGPU allocation")
        return views.allocation_view(a, state.state_of(key))

    app.include_router(dashboard.router(extender))  # the web page at / and /v1/explain

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Still syncing with the cluster"}}, tags=["operations"])
    def readyz() -> Response:
        if backend.ready():
            return JSONResponse({"status": "ready", "nodes": len(state)})
        return JSONResponse({"status": "syncing"}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    def metrics_() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


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


def _json(body: object) -> Response:
    return Response(to_json(body), media_type="application/json")


_M = TypeVar("_M", bound=BaseModel)


def _parse(model: type[_M], raw: bytes) -> _M:
    """Validate a JSON body; errors become FastAPI's usual 422 naming the field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**d, "loc": ("body", *d["loc"])} for d in errors]) from None


MAX_ERRORS = 20  # a body with a million bad items gets the first few named, and a count


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and the reason, never echoing the input: the input may be
    huge, NaN, or not text at all, which FastAPI's own handler fails to encode (a 500)."""
    errors = list(exc.errors())
    detail: list[dict[str, Any]] = [
        {"loc": [x if isinstance(x, int) else _printable(str(x)) for x in d.get("loc", ())],
         "msg": _printable(str(d.get("msg", ""))), "type": _printable(str(d.get("type", "")))}
        for d in errors[:MAX_ERRORS]
    ]
    if len(errors) > MAX_ERRORS:
        detail.append({"loc": [], "msg": f"and {len(errors) - MAX_ERRORS} more errors", "type": "too_many_errors"})
    return JSONResponse({"detail": detail}, status_code=422)


def _printable(text: str, most: int = 200) -> str:
    """Valid UTF-8 (lone surrogates replaced), at most ``most`` characters."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= most else text[:most] + "..."


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a handler that parses its own body."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _reason_class(message: str) -> str:
    """A small, fixed label set for the failure counter (messages are unbounded)."""
    for word, label in (("no longer fits", "conflict"), ("needs", "no_fit"), ("not found", "pod_gone"),
                        ("already", "duplicate"), ("invalid", "invalid_request"), ("inventory", "unknown_node")):
        if word in message:
            return label
    return "backend"


