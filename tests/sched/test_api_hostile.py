"""Hostile bodies over HTTP: whatever arrives, no 5xx, and the answer names the field.

Whoever can create a pod writes most of what the extender reads (the Pod in every verb),
and whoever reaches the port writes the rest. Three layers: the findings of the fuzzing
round as explicit regressions, hypothesis mutating valid bodies (and sending raw bytes),
and schemathesis generating from /openapi.json (see test_api_schema.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexai_sched.app import create_app
from flexai_sched.backend import MemoryBackend
from flexai_sched.config import Settings
from flexai_sched.extender import Extender
from flexai_sched.state import ClusterState

from .fixtures import limits, node, pod

NODES = ["big", "small"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    state = ClusterState()
    backend = MemoryBackend([node("big", 8), node("small", 2)], heartbeat_every=None)
    for name in ("bound", "free"):
        backend.create_pod(pod(name, limits(1, cores=50)))
    app = create_app(Extender(state, backend, Settings(node_policy="binpack", card_policy="binpack")))
    # raise_server_exceptions=False: a crash must show as the 500 a client would see.
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/bind", json={"PodName": "bound", "PodNamespace": "default", "PodUID": "uid-bound", "Node": "big"})
        assert r.json() == {"Error": ""}
        yield c


# Stands for a 4,300-digit integer: the most the JSON parser takes (one digit more is a 422,
# see filter-5000-digit-number), and as many as Python will turn into a string.
BIG_INT = "\x00big-int\x00"


def dumps(body: object) -> bytes:
    """JSON bytes as a client may send them: NaN, lone surrogates and huge integers included."""
    text = json.dumps(body).replace(json.dumps(BIG_INT), "1" * 4300)
    return text.encode("utf-8", "surrogatepass")


def post(client: TestClient, path: str, body: bytes | object) -> Any:
    raw = body if isinstance(body, bytes) else dumps(body)
    return client.post(path, content=raw, headers={"content-type": "application/json"})


def good_pod(**changes: Any) -> dict[str, Any]:
    p = pod("p", limits(1, cores=50), annotations={"vgpu.flexai.io/gpu-models": "NVIDIA H200"})
    p["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "500m", "memory": "1Gi"}
    for path, value in changes.items():
        at = p
        *parents, last = path.split(".")
        for key in parents:
            at = at[int(key)] if isinstance(at, list) else at[key]
        at[int(last) if isinstance(at, list) else last] = value
    return p


def unresolvable(client: TestClient, p: object) -> dict[str, str]:
    r = post(client, "/filter", {"Pod": p, "Nodes": None, "NodeNames": NODES})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["NodeNames"] == [] and set(body["FailedAndUnresolvableNodes"]) == set(NODES)
    return dict(body["FailedAndUnresolvableNodes"])


# ---- the pod: kube-scheduler's channel (a reason per node, 200) ----


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param(
            {"metadata.annotations": {"vgpu.flexai.io/gpu-models": 5}},
            "annotation vgpu.flexai.io/gpu-models: must be a string",
            id="annotation-int",
        ),
        pytest.param(
            {"metadata.annotations": {"vgpu.flexai.io/gpu-uuids-exclude": ["a"]}},
            "annotation vgpu.flexai.io/gpu-uuids-exclude: must be a string",
            id="annotation-list",
        ),
        pytest.param(
            {"metadata.annotations": {"vgpu.flexai.io/node-policy": [1]}},
            "annotation vgpu.flexai.io/node-policy: must be a string",
            id="policy-unhashable",
        ),
        pytest.param(
            {"metadata.annotations": {"vgpu.flexai.io/card-policy": {"a": 1}}},
            "annotation vgpu.flexai.io/card-policy: must be a string",
            id="policy-object",
        ),
        pytest.param(
            {"metadata.annotations": "x"}, "pod: metadata.annotations must be an object", id="annotations-scalar"
        ),
        pytest.param({"spec.initContainers": 5}, "init containers: must be a list", id="init-containers-scalar"),
        pytest.param({"spec.initContainers": "abc"}, "init containers: must be a list", id="init-containers-string"),
        pytest.param(
            {"spec.containers.0.resources.requests.cpu": "1e1000000"},
            "container \"c0\": resources.requests.cpu='1e1000000': out of range",
            id="cpu-1e1000000",
        ),
        pytest.param(
            {"spec.containers.0.resources.requests.memory": "1e-1000000"},
            "resources.requests.memory='1e-1000000': out of range",
            id="memory-1e-1000000",
        ),
        pytest.param(
            {"spec.containers.0.resources.requests.cpu": "1" * 4301}, "resources.requests.cpu=", id="cpu-4301-digits"
        ),
        pytest.param(
            {"spec.containers.0.resources.requests.cpu": "1e" + "9" * 4301},
            "resources.requests.cpu=",
            id="cpu-exponent-4301-digits",
        ),
        pytest.param(
            {"spec.containers.0.resources.requests.memory": BIG_INT},
            "resources.requests.memory=<an integer of 14282 bits>: out of range",
            id="memory-int-4300-digits",
        ),
        pytest.param(
            {"spec.containers.0.resources.requests.cpu": 1e308},
            "resources.requests.cpu=1e+308: out of range",
            id="cpu-1e308",
        ),
        pytest.param({"spec.overhead": {"cpu": "9" * 30 + "E"}}, "spec.overhead.cpu=", id="overhead-huge"),
        pytest.param(
            {"spec.containers.0.resources.limits": {"huawei.com/vgpu-number": "1" * 4301}},
            "huawei.com/vgpu-number=",
            id="vgpu-number-4301-digits",
        ),
        pytest.param(
            {"spec.containers.0.resources.limits": {"huawei.com/vgpu-number": BIG_INT}},
            "huawei.com/vgpu-number=<an integer of 14282 bits>",
            id="vgpu-number-int-4300-digits",
        ),
        pytest.param(
            {
                "spec.containers.0.resources.limits": {
                    "huawei.com/vgpu-number": "1",
                    "huawei.com/vgpu-memory-1Gi": "9" * 40,
                }
            },
            "huawei.com/vgpu-memory-1Gi=",
            id="vgpu-memory-40-digits",
        ),
        pytest.param({"metadata": "x"}, "pod: metadata and spec must be objects", id="metadata-string"),
        pytest.param({"metadata": [1]}, "pod: metadata and spec must be objects", id="metadata-list"),
        pytest.param({"metadata.name": BIG_INT}, "pod: metadata.name must be a string", id="name-big-int"),
        pytest.param({"metadata.uid": {"a": 1}}, "pod: metadata.uid must be a string", id="uid-object"),
        pytest.param(
            {"spec.containers.0.name": BIG_INT}, "container #0: name must be a string", id="container-name-big-int"
        ),
        pytest.param(
            {"spec.containers.0.resources.requests.cpu": float("nan")}, "resources.requests.cpu=nan", id="cpu-nan"
        ),
        pytest.param(
            {"spec.containers.0.resources.requests.cpu": float("inf")}, "resources.requests.cpu=inf", id="cpu-infinity"
        ),
    ],
)
def test_a_hostile_pod_is_an_unresolvable_reason_naming_the_field(
    client: TestClient, changes: dict[str, Any], reason: str
) -> None:
    reasons = unresolvable(client, good_pod(**changes))
    assert reason in reasons["big"], reasons["big"]
    assert len(reasons["big"]) < 1000  # a 4,301-digit value is not echoed back whole


@pytest.mark.parametrize("verb", ["/prioritize", "/preempt"])
@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"metadata.annotations": {"vgpu.flexai.io/node-policy": [1]}}, id="policy-unhashable"),
        pytest.param({"spec.initContainers": 5}, id="init-containers-scalar"),
        pytest.param({"spec.containers.0.resources.requests.cpu": "1e1000000"}, id="cpu-1e1000000"),
        pytest.param(
            {"spec.containers.0.resources.limits": {"huawei.com/vgpu-number": "1" * 4301}}, id="vgpu-number-4301-digits"
        ),
        pytest.param({"metadata": 7}, id="metadata-int"),
    ],
)
def test_a_hostile_pod_gets_the_verbs_neutral_answer(client: TestClient, verb: str, changes: dict[str, Any]) -> None:
    """prioritize scores every node 0; preempt keeps no victims (the pod cannot be placed)."""
    p = good_pod(**changes)
    if verb == "/prioritize":
        r = post(client, verb, {"Pod": p, "Nodes": None, "NodeNames": NODES})
        assert r.status_code == 200 and r.json() == [{"Host": n, "Score": 0} for n in NODES]
    else:
        r = post(client, verb, {"Pod": p, "NodeNameToMetaVictims": {"big": {"Pods": [{"UID": "uid-bound"}]}}})
        assert r.status_code == 200 and r.json() == {"NodeNameToMetaVictims": {}}


# ---- the wire format: 422 naming the field, never the input echoed ----


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        pytest.param(
            "/filter",
            {"Pod": good_pod(), "Nodes": {"items": [{"metadata": "x"}]}},
            "Nodes.items.0.metadata",
            id="node-metadata-string",
        ),
        pytest.param(
            "/filter",
            {"Pod": good_pod(), "Nodes": {"items": [{"metadata": {"name": 5}}]}},
            "Nodes.items.0.metadata.name",
            id="node-name-int",
        ),
        pytest.param(
            "/prioritize",
            {"Pod": good_pod(), "Nodes": {"items": [{"kind": "Node", "metadata": None}, {"metadata": [1]}]}},
            "Nodes.items.0.metadata",
            id="node-metadata-null-then-list",
        ),
        pytest.param(
            "/preempt",
            {"Pod": good_pod(), "NodeNameToVictims": {"big": {"Pods": [{"metadata": 5}]}}},
            "NodeNameToVictims.big.Pods.0.metadata",
            id="victim-metadata-int",
        ),
        pytest.param(
            "/preempt",
            {"Pod": good_pod(), "NodeNameToVictims": {"big": {"Pods": [{"metadata": None}]}}},
            "NodeNameToVictims.big.Pods.0.metadata",
            id="victim-metadata-null",
        ),
        pytest.param(
            "/preempt",
            {"Pod": good_pod(), "NodeNameToVictims": {"big": {"Pods": [{"metadata": {}}]}}},
            "NodeNameToVictims.big.Pods.0.metadata.uid",
            id="victim-without-uid",
        ),
        pytest.param(
            "/preempt",
            {"Pod": good_pod(), "NodeNameToVictims": {"big": {"Pods": [{"metadata": {"uid": BIG_INT}}]}}},
            "NodeNameToVictims.big.Pods.0.metadata.uid",
            id="victim-uid-big-int",
        ),
        pytest.param(
            "/bind", {"PodName": BIG_INT, "PodNamespace": "default", "Node": "big"}, "PodName", id="bind-name-big-int"
        ),
        pytest.param(
            "/bind",
            {"PodName": "a/../b", "PodNamespace": "default", "Node": "big"},
            "PodName",
            id="bind-name-not-a-kubernetes-name",
        ),
        pytest.param(
            "/bind", {"PodName": "a", "PodNamespace": "default", "Node": "x" * 300}, "Node", id="bind-node-too-long"
        ),
        pytest.param("/bind", b'{"PodName": NaN, "PodNamespace": "a", "Node": "x"}', "PodName", id="bind-nan"),
        pytest.param("/bind", b'{"PodName": "a", "PodNamespace": "a", "Node": Infinity}', "Node", id="bind-infinity"),
        pytest.param(
            "/bind",
            b'{"PodName": "a", "PodNamespace": -Infinity, "Node": "x"}',
            "PodNamespace",
            id="bind-minus-infinity",
        ),
        pytest.param(
            "/preempt",
            b'{"Pod": {}, "NodeNameToMetaVictims": {"n": {"Pods": [{"UID": NaN}]}}}',
            "NodeNameToMetaVictims.n.Pods.0.UID",
            id="preempt-nan",
        ),
        pytest.param("/filter", b'{"Pod": NaN, "NodeNames": ["a"]}', "Pod", id="filter-nan-pod"),
        pytest.param("/bind", b'{"PodName": "\xff\xfe", "PodNamespace": "a", "Node": "x"}', "body", id="bind-not-utf8"),
        pytest.param("/filter", b'{"Pod": {}, "NodeNames": ["\xc3\x28"]}', "body", id="filter-not-utf8"),
        pytest.param("/preempt", b"\xff" * 64, "body", id="preempt-not-utf8"),
        pytest.param("/prioritize", "\ufeff{}".encode("utf-16"), "body", id="prioritize-utf16"),
        pytest.param(
            "/bind", b'{"PodName": "\\udc80", "PodNamespace": "a", "Node": "x"}', "body", id="bind-lone-surrogate"
        ),
        pytest.param(
            "/bind",
            b'{"PodName": "\\udc80", "PodNamespace": "a", "Node": 5}',
            "body",
            id="bind-lone-surrogate-and-wrong-type",
        ),
        pytest.param(
            "/filter",
            b'{"Pod": {"metadata": {"name": "\\ud800"}}, "NodeNames": ["a"]}',
            "body",
            id="filter-lone-surrogate",
        ),
        pytest.param(
            "/preempt",
            b'{"Pod": {}, "NodeNameToMetaVictims": {"\\udc80": {"Pods": [{"UID": 5}]}}}',
            "body",
            id="preempt-lone-surrogate-key",
        ),
        pytest.param(
            "/preempt",
            {
                "Pod": good_pod(),
                "NodeNameToMetaVictims": {"big": {"Pods": [{"UID": "x"}], "NumPDBViolations": BIG_INT}},
            },
            "NodeNameToMetaVictims.big.NumPDBViolations",
            id="preempt-pdb-violations-past-int32",
        ),
        pytest.param("/filter", b"[1, 2]", "body", id="filter-array"),
        pytest.param("/bind", b"", "body", id="bind-empty"),
        pytest.param(
            "/preempt",
            b'{"Pod": {}, "NodeNameToVictims": {"n": 5}}',
            "NodeNameToVictims.n",
            id="preempt-victims-scalar",
        ),
        pytest.param(
            "/filter", b'{"Pod": {}, "NodeNames": [' + b"1" * 5000 + b"]}", "body", id="filter-5000-digit-number"
        ),
    ],
)
def test_a_body_that_is_not_the_wire_format_is_a_422_naming_the_field(
    client: TestClient, path: str, raw: object, field: str
) -> None:
    r = post(client, path, raw)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    want = "body" if field == "body" else f"body.{field}"
    assert any(".".join(str(x) for x in d["loc"]).startswith(want) and d["msg"] for d in detail), detail
    assert all("input" not in d for d in detail)  # what the client sent is not echoed back
    assert len(r.content) < 4000


def test_views_answer_404_for_odd_names(client: TestClient) -> None:
    for path in ("/v1/nodes/%ff%fe", "/v1/pods/%ed%b2%80/x", "/v1/nodes/" + "x" * 5000, "/v1/pods/a/%00"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["detail"], path


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_every_path_and_method_answers_below_500(client: TestClient, method: str) -> None:
    """Everything served (the verbs, views, metrics, health, docs) and some that is not,
    with every method and a body that is not JSON: never a 5xx."""
    paths = sorted({getattr(r, "path", "") for r in cast(FastAPI, client.app).routes} - {""})
    paths = [p.replace("{namespace}", "ns").replace("{name}", "x") for p in paths]
    assert {"/filter", "/prioritize", "/bind", "/preempt", "/metrics", "/v1/nodes"} <= set(paths)
    for path in [*paths, "/", "/nope", "/v1", "/filter/x", "/%ff", "/v1/pods/a/b/c"]:
        r = client.request(method, path, content=b"\xff\x00{[", headers={"content-type": "application/json"})
        assert r.status_code < 500, (method, path, r.status_code, r.text[:200])


# ---- hypothesis: valid bodies with one part replaced by anything JSON can say ----

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.just(BIG_INT),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(
        [
            "1e1000000",
            "1" * 4301,
            "-1",
            "1Ki",
            "0.5",
            "1e",
            "",
            " ",
            "NaN",
            "100",
            "5",
            "Always",
            "binpack",
            "huawei.com/vgpu-number",
            "\x00",
            "1e-1000000",
            "1E",
            "9" * 30 + "Ei",
        ]
    ),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*at, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = doc.copy()
    out[path[0]] = _replace(doc[path[0]], path[1:], value)
    return out


def _bodies() -> dict[str, Any]:
    p = good_pod()
    p["spec"]["initContainers"] = [
        {"name": "i", "restartPolicy": "Always", "resources": {"limits": limits(1, cores=10, memory_gib=1)}}
    ]
    p["spec"]["overhead"] = {"cpu": "10m"}
    nodes = {"items": [{"metadata": {"name": n}} for n in NODES]}
    return {
        "/filter": {"Pod": p, "Nodes": None, "NodeNames": NODES},
        "/prioritize": {"Pod": p, "Nodes": nodes, "NodeNames": None},
        "/bind": {"PodName": "free", "PodNamespace": "default", "PodUID": "uid-free", "Node": "small"},
        "/preempt": {
            "Pod": p,
            "NodeNameToVictims": {"big": {"Pods": [{"metadata": {"uid": "uid-bound"}}], "NumPDBViolations": 0}},
            "NodeNameToMetaVictims": {"big": {"Pods": [{"UID": "uid-bound"}], "NumPDBViolations": 0}},
        },
    }


BODIES = _bodies()
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _check(r: Any) -> None:
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.status_code in (404, 413, 422), r.text
        assert r.json()["detail"]


@pytest.mark.parametrize("verb", sorted(BODIES))
@FUZZ
@given(data=st.data())
def test_any_part_of_a_valid_body_replaced_by_any_json_is_never_a_5xx(
    client: TestClient, verb: str, data: st.DataObject
) -> None:
    body = BODIES[verb]
    path = data.draw(st.sampled_from(_paths(body)), label="path")
    value = data.draw(_json, label="value")
    _check(post(client, verb, _replace(body, path, value)))


@pytest.mark.parametrize("verb", sorted(BODIES))
@settings(FUZZ, max_examples=150)
@given(raw=st.one_of(st.binary(max_size=200), _json.map(dumps)))
def test_any_bytes_are_never_a_5xx(client: TestClient, verb: str, raw: bytes) -> None:
    _check(post(client, verb, raw))


# ---- amplification: what one body may cost the server, and how long the reply gets ----


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        pytest.param(
            "/filter",
            b'{"Pod": {}, "NodeNames": [' + b",".join([b"1"] * 1_000_000) + b"]}",
            id="a-million-bad-node-names",
        ),
        pytest.param(
            "/filter",
            b'{"Pod": {}, "Nodes": {"items": [' + b",".join([b"{}"] * 500_000) + b"]}}",
            id="half-a-million-nameless-nodes",
        ),
        pytest.param(
            "/preempt",
            b'{"Pod": {}, "NodeNameToMetaVictims": {' + b",".join(b'"n%d": 1' % i for i in range(300_000)) + b"}}",
            id="300k-bad-victim-nodes",
        ),
        pytest.param(
            "/preempt",
            b'{"Pod": {}, "NodeNameToVictims": {"n": {"Pods": [' + b",".join([b'{"metadata": {}}'] * 300_000) + b"]}}}",
            id="300k-victims-without-uid",
        ),
    ],
)
def test_a_body_of_many_bad_items_costs_one_error_not_one_per_item(client: TestClient, path: str, raw: bytes) -> None:
    """Each error is an object of its own (~400 bytes): a million would cost the server
    gigabytes from a body of a few MiB. Lists stop at their first bad item; a map of
    victims is refused past 100,000 nodes before its values are read."""
    r = post(client, path, raw)
    assert r.status_code == 422
    assert len(r.json()["detail"]) <= 21 and len(r.content) < 4000


def test_a_map_of_victims_past_the_node_bound_is_refused_naming_it(client: TestClient) -> None:
    raw = (
        b'{"Pod": {}, "NodeNameToMetaVictims": {'
        + b",".join(b'"n%d": {"Pods": []}' % i for i in range(100_001))
        + b"}}"
    )
    detail = post(client, "/preempt", raw).json()["detail"]
    assert detail[0]["loc"] == ["body", "NodeNameToMetaVictims"]
    assert "at most 100000 nodes, got 100001" in detail[0]["msg"]


LONG_MODELS = ",".join(f"model-{i:06d}" for i in range(20_000))  # ~260 KiB, as an annotation may be


@pytest.mark.parametrize(
    "p",
    [
        pytest.param(
            pod("p", limits(1, cores=50), annotations={"vgpu.flexai.io/gpu-models": LONG_MODELS}),
            id="models-nobody-has",
        ),
        # 8 whole cards: big has 8, one of them half held: "needs 8 cards with room for ... model A|B|...".
        pytest.param(
            pod("p", limits(8, cores=100), annotations={"vgpu.flexai.io/gpu-models": "NVIDIA H200," + LONG_MODELS}),
            id="models-and-no-room",
        ),
        pytest.param(pod("p", *[limits(1, cores=130)] * 2000), id="two-thousand-bad-containers"),
        pytest.param(
            pod("p", {"name": "c" * 300_000, "resources": {"limits": limits(9, cores=50)}}), id="a-300k-container-name"
        ),
    ],
)
def test_a_reason_is_never_long_however_long_the_pod_makes_it(client: TestClient, p: dict[str, Any]) -> None:
    """kube-scheduler gets a reason per node: 5,000 nodes times a 260 KiB reason would be
    a 1.3 GB reply. Every reason is at most 500 characters."""
    r = post(client, "/filter", {"Pod": p, "Nodes": None, "NodeNames": NODES})
    assert r.status_code == 200
    reasons = {**r.json()["FailedNodes"], **r.json()["FailedAndUnresolvableNodes"]}
    assert reasons and all(len(x) <= 500 for x in reasons.values()), {k: len(x) for k, x in reasons.items()}


def test_two_thousand_bad_containers_are_counted_not_listed(client: TestClient) -> None:
    reason = unresolvable(client, pod("p", *[limits(1, cores=130)] * 2000))["big"]
    shown = reason.count("huawei.com/vgpu-cores=130: must be at most 100")
    assert shown >= 1 and reason.endswith(f"; and {2000 - shown} more"), reason
    assert len(reason) <= 500
