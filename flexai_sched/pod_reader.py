"""A pod's request read from the JSON bytes kube-scheduler sends, memoised on what it depends on.

Every filter call carries a new pod, but a Deployment's or a Job's pods ask alike: they
differ in their names, UIDs and volumes, not in their containers' resources. ``PodReader``
decodes only the fields ``requests.parse_pod`` reads (msgspec skips the rest of the pod
without building it), keeps each of them as its raw JSON, and keys a memo on those bytes:
a pod asking what an earlier one asked gets the earlier request under its own namespace,
name and UID, without the parse (its quantities, rules and error messages).

The memo cannot be fooled: a miss parses the very fields the key is made of (``parse_pod``
of a pod built from them alone), so one key always names one reading, whatever else the
pod holds. A pod whose fields are not the types Kubernetes gives them (``msgspec``
refuses the typed view) is parsed whole each time, so its errors are ``parse_pod``'s own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from msgspec import Raw

from flexai_core import annotations as ann
from flexai_core.model import PodRequest
from flexai_core.requests import RequestError, RequestRules, parse_pod

# Bounds: a memo entry per distinct request, its key at most this many bytes (a pod whose
# resources are larger is parsed each call).
MAX_REQUESTS = 1024
MAX_KEY = 4096
_NULL = Raw(b"null")


class _Container(msgspec.Struct):
    name: Raw = _NULL
    resources: Raw = _NULL
    restartPolicy: Raw = _NULL


class _Meta(msgspec.Struct):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    annotations: dict[str, Raw] | None = None


class _Spec(msgspec.Struct):
    containers: list[_Container] | None = None
    initContainers: list[_Container] | None = None
    overhead: Raw = _NULL
    priority: Raw = _NULL


class _Pod(msgspec.Struct):
    metadata: _Meta | None = None
    spec: _Spec | None = None


_decode_view = msgspec.json.Decoder(_Pod).decode
_decode_any = msgspec.json.Decoder().decode
_decode_pod = msgspec.json.Decoder(dict[str, Any]).decode
# A hit gives the memo's fields after these three, which are each pod's own.
_OWN = ("namespace", "name", "uid")
assert tuple(f.name for f in dataclasses.fields(PodRequest)[:3]) == _OWN
_REST = dataclasses.fields(PodRequest)[3:]


class PodReader:
    """``read``: the request of a pod's JSON object, as ``parse_pod`` reads it with ``rules``."""

    def __init__(self, rules: RequestRules) -> None:
        self.rules = rules
        # key -> the request's fields after its namespace, name and UID, or the parse's reasons
        self._memo: dict[tuple[bytes, ...], tuple[Any, ...] | list[str]] = {}

    def read(self, raw: bytes) -> PodRequest:
        """Raises RequestError as ``parse_pod`` does, and msgspec.DecodeError for bytes that
        are not a JSON object."""
        try:
            view = _decode_view(raw)
        except msgspec.ValidationError:  # JSON, but not typed as Kubernetes types a pod
            return parse_pod(_decode_pod(raw), self.rules)
        meta, spec = view.metadata or _Meta(), view.spec or _Spec()
        annotations = meta.annotations or {}
        key = _key(spec, annotations)
        got = self._memo.get(key)
        if got is None:
            try:
                req = parse_pod(_pod_of(meta, spec, annotations), self.rules)
            except RequestError as e:
                got = e.reasons
            else:
                got = tuple(getattr(req, f.name) for f in _REST)
            if sum(map(len, key)) <= MAX_KEY:
                if len(self._memo) >= MAX_REQUESTS:
                    self._memo.clear()  # new shapes keep coming: the recent ones refill it
                self._memo[key] = got
        if isinstance(got, list):
            raise RequestError(list(got))  # a copy: the memo keeps its own
        return PodRequest(meta.namespace or "default", meta.name or "", meta.uid or "", *got)


def _key(spec: _Spec, annotations: dict[str, Raw]) -> tuple[bytes, ...]:
    """The raw JSON of every field the request depends on, in a fixed order: the containers'
    names and resources, the init containers' with their restart policy, the overhead, the
    priority, and the annotations ``parse_pod`` reads."""
    key = [b"%d %d" % (len(spec.containers or ()), len(spec.initContainers or ()))]
    for c in spec.containers or ():
        key += (bytes(c.name), bytes(c.resources))
    for c in spec.initContainers or ():
        key += (bytes(c.name), bytes(c.resources), bytes(c.restartPolicy))
    key += (bytes(spec.overhead), bytes(spec.priority))
    key += (bytes(annotations.get(name, _NULL)) for name in ann.USER_POD_ANNOTATIONS)
    return tuple(key)


def _pod_of(meta: _Meta, spec: _Spec, annotations: dict[str, Raw]) -> dict[str, Any]:
    """The pod ``parse_pod`` reads, built from the view alone (what the key is made of)."""
    return {
        "metadata": {
            "namespace": meta.namespace,
            "name": meta.name,
            "uid": meta.uid,
            "annotations": {n: _decode_any(annotations[n]) for n in ann.USER_POD_ANNOTATIONS if n in annotations},
        },
        "spec": {
            "containers": _containers(spec.containers),
            "initContainers": _containers(spec.initContainers),
            "overhead": _decode_any(spec.overhead),
            "priority": _decode_any(spec.priority),
        },
    }


def _containers(raw: list[_Container] | None) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    return [
        {
            "name": _decode_any(c.name),
            "resources": _decode_any(c.resources),
            "restartPolicy": _decode_any(c.restartPolicy),
        }
        for c in raw
    ]
