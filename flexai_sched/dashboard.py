"""The web page at ``/`` and the "why pending" API: an APIRouter the app includes.

- ``GET /`` and ``GET /ui/{file}``: the page (plain HTML, CSS and JS in ``static/``).
- ``GET /v1/dashboard?since=S``: what the page draws. Every node with its cards and
  slices the first time, then only what changed after serial ``S`` (nodes whose cards or
  allocations changed, heartbeats, nodes gone), with the cluster summary and the pods
  waiting. Each node's JSON is built once per node version and kept (``Feed``), and the
  state is scanned at most every ``Feed.min_interval`` seconds whatever the number of
  pages polling, so the page adds no work to filter/prioritize and little beside them.
- ``GET /v1/explain/{namespace}/{name}`` and ``POST /v1/explain`` (a pod as YAML or JSON):
  ``explain.explain`` over the filter's own reasons for every node.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from flexai_core.requests import RequestError, parse_pod

from . import capacity, explain
from .capacity import Capacity, Shape
from .extender import Extender, invalid_outcome
from .state import NodeState

STATIC = Path(__file__).with_name("static")
_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
MAX_POD_BYTES = 1 << 20  # a pod manifest; anything larger is not one
PENDING_SHOWN = 100
GZIP_FROM = 32 << 10


class Problem(BaseModel):
    """A 4xx: why."""

    detail: str


_EXPLAIN_GET: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such pod"},
    424: {"model": Problem, "description": "The cluster did not answer when the pod was read"},
}
_EXPLAIN_POST: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "Body larger than a pod manifest"},
    422: {"model": Problem, "description": "Body is not a pod manifest: the field and the reason"},
}


@dataclass(slots=True)
class _Entry:
    version: int
    heartbeat: datetime | None
    serial: int  # when the node's cards or slices last changed, in the feed's serials
    beat_serial: int  # when its heartbeat last changed
    body: bytes  # the node's JSON
    capacity: Capacity
    shapes: int  # the shapes generation ``capacity`` was judged with
    stale: bool


class Feed:
    """The page's view of ``ClusterState``, kept per node and rebuilt only where it changed."""

    min_interval = 1.0  # seconds between two scans of the state, however many pages poll
    pending_interval = 5.0  # seconds between two looks at the pods waiting (up to 10,000)

    def __init__(self, extender: Extender) -> None:
        self.extender = extender
        self._mu = threading.Lock()
        self._serial = 0
        self._nodes: dict[str, _Entry] = {}
        self._gone: dict[str, int] = {}
        self._scanned = float("-inf")
        self._shapes: tuple[Shape, ...] = ()
        self._shapes_gen = 0
        self._pending: list[dict[str, Any]] = []
        self._waiting = 0
        self._waited = float("-inf")
        self._summary = b"{}"

    def payload(self, since: int) -> bytes:
        """The JSON the page reads: everything (``since`` 0) or what changed after ``since``."""
        with self._mu:
            self._refresh()
            full = since <= 0 or since > self._serial
            nodes = [e.body for e in self._nodes.values() if full or e.serial > since]
            beats = (
                []
                if full
                else [
                    [n, _epoch(e.heartbeat)]
                    for n, e in self._nodes.items()
                    if e.beat_serial > since and e.serial <= since
                ]
            )
            gone = [] if full else [n for n, s in self._gone.items() if s > since]
            head = {
                "serial": self._serial,
                "full": full,
                "now": time.time(),
                "heartbeat_ttl_s": self.extender.settings.heartbeat_ttl_s,
                "beats": beats,
                "gone": gone,
                "pending": self._pending,
            }
            summary = self._summary
        return b"".join([to_json(head)[:-1], b',"summary":', summary, b',"nodes":[', b",".join(nodes), b"]}"])

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._scanned < self.min_interval:
            return
        self._scanned = now
        ext = self.extender
        dirty = False
        if now - self._waited >= self.pending_interval:
            self._waited = now
            waiting = ext.pending()
            shapes = tuple(capacity.essential(capacity.pending_shapes(waiting) + capacity.typical_shapes(ext.workload)))
            if shapes != self._shapes:
                self._shapes, self._shapes_gen, dirty = shapes, self._shapes_gen + 1, True
            self._waiting = len(waiting)
            self._pending = [{"pod": r.key, "uid": r.uid, "shape": _shape_text(r)} for r in waiting[-PENDING_SHOWN:]][
                ::-1
            ]
        cutoff = ext.heartbeat_cutoff()
        live = ext.state.nodes_by_name()
        bumped = False
        for name, node in list(live.items()):
            e = self._nodes.get(name)
            stale = node.heartbeat is None or node.heartbeat < cutoff
            if e is None or e.version != node.version:
                if not bumped:
                    self._serial, bumped = self._serial + 1, True
                self._nodes[name] = _Entry(
                    node.version,
                    node.heartbeat,
                    self._serial,
                    self._serial,
                    _node_json(node),
                    self._capacity(node, stale),
                    self._shapes_gen,
                    stale,
                )
                self._gone.pop(name, None)
                dirty = True
                continue
            if e.heartbeat != node.heartbeat:
                if not bumped:
                    self._serial, bumped = self._serial + 1, True
                e.heartbeat, e.beat_serial = node.heartbeat, self._serial
            if e.shapes != self._shapes_gen or e.stale != stale:
                e.capacity, e.shapes, e.stale = self._capacity(node, stale), self._shapes_gen, stale
                dirty = True
        if len(self._nodes) != len(live):
            for name in [n for n in self._nodes if n not in live]:
                if not bumped:
                    self._serial, bumped = self._serial + 1, True
                del self._nodes[name]
                self._gone[name] = self._serial
            dirty = True
        if dirty:  # the totals are summed again only when a node's numbers moved
            total = Capacity.sum(e.capacity for e in self._nodes.values())
            self._summary = to_json(
                {
                    "nodes": len(self._nodes),
                    "stale_nodes": sum(e.stale for e in self._nodes.values()),
                    "pending": self._waiting,
                    "shapes": len(self._shapes),
                    **_capacity_json(total),
                }
            )

    def _capacity(self, node: NodeState, stale: bool) -> Capacity:
        return capacity.node_capacity(node.cards, node.allocated, self._shapes, stranding=not stale)


def router(extender: Extender) -> APIRouter:
    r = APIRouter()
    feed = Feed(extender)
    index = (STATIC / "index.html").read_text()

    @r.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(index, headers={"cache-control": "no-cache"})

    @r.get("/ui/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in _FILES:
            raise HTTPException(404, f"/ui/{name}: no such file")
        return Response((STATIC / name).read_bytes(), media_type=_FILES[name], headers={"cache-control": "no-cache"})

    @r.get("/v1/dashboard", tags=["views"])
    async def dashboard(request: Request, since: int = 0) -> Response:
        """Nodes, cards and slices as the page draws them; with ``since``, only what changed."""
        body = await run_in_threadpool(feed.payload, since)
        if len(body) >= GZIP_FROM and "gzip" in request.headers.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            return Response(
                body, media_type="application/json", headers={"content-encoding": "gzip", "vary": "accept-encoding"}
            )
        return Response(body, media_type="application/json", headers={"vary": "accept-encoding"})

    @r.get("/v1/explain/{namespace}/{name}", responses=_EXPLAIN_GET, tags=["views"])
    def explain_pod(namespace: str, name: str) -> JSONResponse:
        """Why the pod is pending: per node the filter's reason, the closest card, a plan of moves."""
        key = f"{namespace}/{name}"
        alloc = extender.state.allocation(key)
        if alloc is not None:
            return JSONResponse(
                {
                    "pod": key,
                    "bound_node": alloc.node,
                    "wants_gpu": True,
                    "error": "",
                    "fits": [],
                    "nodes": [],
                    "reasons": {},
                    "closest": None,
                    "plan": None,
                    "plan_searched": 0,
                    "plan_complete": True,
                }
            )
        try:
            pod = extender.backend.get_pod(namespace, name)
        except Exception as e:  # the cluster's failure is an answer naming it, not a 500
            raise HTTPException(424, f"pod {key}: could not be read from the cluster: {e}") from None
        if pod is None:
            raise HTTPException(404, f"pod {key}: not found")
        return JSONResponse(explain_json(extender, pod))

    @r.post(
        "/v1/explain",
        responses=_EXPLAIN_POST,
        tags=["views"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/yaml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def explain_posted(request: Request) -> JSONResponse:
        """Why this pod (a manifest, YAML or JSON) would be pending, as if it were submitted now."""
        raw = await request.body()
        if len(raw) > MAX_POD_BYTES:
            raise HTTPException(413, f"body: {len(raw)} bytes; a pod manifest is at most {MAX_POD_BYTES}")
        pod = read_pod(raw)
        return JSONResponse(await run_in_threadpool(explain_json, extender, pod))

    return r


def read_pod(raw: bytes) -> dict[str, Any]:
    """A pod manifest from YAML or JSON; 422 naming what is wrong."""
    try:
        text = raw.decode("utf-8")
        # JSON first: a JSON document YAML would refuse (tabs between tokens) is still a pod.
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise HTTPException(422, f"body: not a YAML or JSON document: {e}") from None
    if not isinstance(doc, dict):
        raise HTTPException(422, "body: must be a pod manifest (a mapping with metadata and spec)")
    kind = doc.get("kind", "Pod")
    if kind != "Pod":
        raise HTTPException(422, f"kind: {kind!r}: must be Pod")
    for field in ("metadata", "spec"):
        if not isinstance(doc.get(field), dict):
            raise HTTPException(422, f"{field}: must be a mapping")
    if not isinstance(doc["metadata"].get("name"), str) or not doc["metadata"]["name"]:
        raise HTTPException(422, "metadata.name: must be a non-empty string")
    return doc


def explain_json(extender: Extender, pod: Mapping[str, Any]) -> dict[str, Any]:
    """The explanation of ``pod`` over every node the scheduler knows, as JSON."""
    names = sorted(extender.state.nodes_by_name())
    meta = pod.get("metadata") or {}
    key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
    try:
        req = parse_pod(pod, extender.rules)
    except RequestError as e:
        out = invalid_outcome(e, names)
        nodes: list[dict[str, Any]] = [
            {"node": n, "fits": False, "reason": r, "resolvable": False, "closest": None}
            for n, r in sorted(out.unresolvable.items())
        ]
        return {
            "pod": key,
            "bound_node": None,
            "wants_gpu": True,
            "error": f"invalid vGPU request: {e}",
            "fits": [],
            "nodes": nodes,
            "reasons": _grouped(nodes),
            "closest": None,
            "plan": None,
            "plan_searched": 0,
            "plan_complete": True,
        }
    outcome = extender.filter_request(req, names)
    got = explain.explain(
        req, outcome, extender.state.nodes_by_name(), extender.card_policy(req), extender.heartbeat_cutoff()
    )
    nodes = [
        {"node": n.node, "fits": n.fits, "reason": n.reason, "resolvable": n.resolvable, "closest": _gap(n.closest)}
        for n in got.nodes
    ]
    plan: dict[str, Any] | None = None
    if got.plan is not None:
        plan = {
            "node": got.plan.node,
            "cards": list(got.plan.cards),
            "moves": [
                {
                    "pod": m.pod,
                    "from_node": m.from_node,
                    "from_cards": list(m.from_cards),
                    "to_node": m.to_node,
                    "to_cards": list(m.to_cards),
                }
                for m in got.plan.moves
            ],
        }
    return {
        "pod": key,
        "bound_node": None,
        "wants_gpu": got.wants_gpu,
        "error": "",
        "fits": got.fits,
        "nodes": nodes,
        "reasons": _grouped(nodes),
        "closest": _gap(got.closest),
        "plan": plan,
        "plan_searched": got.plan_searched,
        "plan_complete": got.plan_complete,
    }


def _grouped(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """Reason -> how many nodes give it, most common first (5,000 nodes read as a few lines)."""
    counts: dict[str, int] = {}
    for n in nodes:
        if not n["fits"]:
            counts[n["reason"]] = counts.get(n["reason"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _gap(g: explain.CardGap | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {
        "node": g.node,
        "card": g.card,
        "model": g.model,
        "container": g.container,
        "missing_cores": g.missing_cores,
        "missing_memory_mib": g.missing_memory_mib,
        "missing_slot": g.missing_slot,
        "must_be_empty": g.must_be_empty,
        "missing": list(g.missing),
    }


def _node_json(node: NodeState) -> bytes:
    slices: dict[int, list[dict[str, Any]]] = {}
    for a in node.pods.values():
        for s in a.slices:
            slices.setdefault(s.card_index, []).append(
                {
                    "ns": a.namespace,
                    "pod": a.name,
                    "c": s.container,
                    "cores": s.cores,
                    "mib": s.memory_mib,
                    "init": s.init,
                }
            )
    cards = [
        {
            "i": c.index,
            "uuid": c.uuid,
            "model": c.model,
            "mib": c.memory_mib,
            "out": c.used_outside_mib,
            "ok": c.healthy,
            "cores": u.cores,
            "used": u.memory_mib,
            "vg": u.vgpus,
            "maxvg": c.max_vgpus,
            "slices": slices.get(c.index, []),
        }
        for c, u in zip(node.cards, node.allocated, strict=True)
    ]
    return to_json({"name": node.name, "v": node.version, "hb": _epoch(node.heartbeat), "cards": cards})


def _capacity_json(c: Capacity) -> dict[str, int]:
    return {
        "cards": c.cards,
        "unhealthy_cards": c.unhealthy_cards,
        "cores_total": c.cores_total,
        "cores_allocated": c.cores_allocated,
        "cores_free": c.cores_free,
        "cores_stranded": c.cores_stranded,
        "memory_mib_total": c.memory_mib_total,
        "memory_mib_allocated": c.memory_mib_allocated,
        "memory_mib_free": c.memory_mib_free,
        "memory_mib_stranded": c.memory_mib_stranded,
    }


def _epoch(t: datetime | None) -> float | None:
    return None if t is None else round(t.timestamp(), 3)


def _shape_text(r: Any) -> str:
    parts = []
    for c in (*r.containers, *r.init_containers):
        if c.vgpus:
            mem = "all memory" if c.memory_mib is None else f"{c.memory_mib / 1024:g} GiB"
            parts.append(f"{c.name}: {c.vgpus} x {c.cores}% / {mem}")
    return "; ".join(parts) or "no vGPUs"
