"""kube-scheduler's extender verbs over HTTP: filter, prioritize, bind, preempt (an APIRouter).

Handlers only parse, call ``Extender`` and serialise. A request the core rejects becomes a
well-formed extender reply (kube-scheduler shows its reason in the pod's FailedScheduling
event); a body that is not the wire format gets a 422 naming the field (``app`` answers it).

Every verb parses its raw body with pydantic's JSON parser, which refuses what a
well-formed client never sends: bytes that are not UTF-8 and lone surrogates.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from .errors import BindFailure
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
from .metrics import Metrics
from .views import Refused

log = logging.getLogger("flexai_sched")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """422: the fields that are not the wire format, and why."""

    detail: list[FieldError]


_POSTED: dict[int | str, dict[str, Any]] = {
    413: {"model": Refused, "description": "Body larger than the limit (declared or streamed)"},
    422: {"model": Invalid, "description": "Body is not the wire format: each field and the reason"},
}


def router(extender: Extender, metrics: Metrics) -> APIRouter:
    r = APIRouter()

    # Every body is parsed by _parse; bind and preempt then run in the thread pool.

    # filter and prioritize carry thousands of node names per call and are pure CPU work of
    # a millisecond or two: they parse the body with pydantic's Rust JSON parser, run on the
    # event loop (no thread hop), and write plain dicts straight to JSON. The models still
    # document both shapes in /docs.
    @r.post(
        "/filter",
        response_model=ExtenderFilterResult,
        openapi_extra=_body_doc(ExtenderArgs),
        responses=_POSTED,
        tags=["extender"],
    )
    async def filter_(request: Request) -> Response:
        args = _parse(ExtenderArgs, await request.body())
        with metrics.latency.labels("filter").time(), extender.filler.call():
            out = extender.filter(args.Pod, args.node_names(), bounded=True)
            if out.deferred:
                metrics.deferred.inc(len(out.deferred))
            reply: dict[str, Any] = {
                "Nodes": None,
                "NodeNames": None,
                "FailedNodes": out.failed,
                "FailedAndUnresolvableNodes": out.unresolvable,
                "Error": "",
            }
            if args.NodeNames is not None or args.Nodes is None:
                reply["NodeNames"] = out.fits
            else:  # full-NodeList mode: kube-scheduler reads only Nodes
                keep = set(out.fits)
                items = [n for n in args.Nodes.items if n["metadata"]["name"] in keep]
                reply["Nodes"] = {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items}
            return _json(reply)

    @r.post(
        "/prioritize",
        response_model=list[HostPriority],
        openapi_extra=_body_doc(ExtenderArgs),
        responses=_POSTED,
        tags=["extender"],
    )
    async def prioritize(request: Request) -> Response:
        args = _parse(ExtenderArgs, await request.body())
        with metrics.latency.labels("prioritize").time(), extender.filler.call():
            return _json([{"Host": h, "Score": s} for h, s in extender.prioritize(args.Pod, args.node_names())])

    @r.post(
        "/bind",
        response_model=ExtenderBindingResult,
        openapi_extra=_body_doc(ExtenderBindingArgs),
        responses=_POSTED,
        tags=["extender"],
    )
    async def bind(request: Request) -> ExtenderBindingResult:
        args = _parse(ExtenderBindingArgs, await request.body())
        extender.reserving.bind_arrived(f"{args.PodNamespace}/{args.PodName}")
        return await run_in_threadpool(bind_, args)  # may wait on the apiserver

    def bind_(args: ExtenderBindingArgs) -> ExtenderBindingResult:
        return ExtenderBindingResult(
            Error=bind_error(extender, metrics, args.PodNamespace, args.PodName, args.PodUID, args.Node)
        )

    @r.post(
        "/preempt",
        response_model=ExtenderPreemptionResult,
        openapi_extra=_body_doc(ExtenderPreemptionArgs),
        responses=_POSTED,
        tags=["extender"],
    )
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

    return r


def bind_error(extender: Extender, metrics: Metrics, namespace: str, name: str, uid: str, node: str) -> str:
    """The bind verb's work, and its answer's ``Error``: "" when bound (blocks on the backend)."""
    with metrics.latency.labels("bind").time():
        try:
            extender.bind(namespace, name, uid, node)
        except BindError as e:
            metrics.bind_failures.labels(e.reason.value).inc()
            log.info("bind %s/%s -> %s failed: %s", namespace, name, node, e)
            return str(e)
        except Exception as e:  # the API edge: a failure of the backend is an answer, not a 500
            metrics.bind_failures.labels(BindFailure.INTERNAL.value).inc()
            log.exception("bind %s/%s -> %s", namespace, name, node)
            return f"internal error: {e}"
        metrics.binds.inc()
        return ""


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


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a handler that parses its own body."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
