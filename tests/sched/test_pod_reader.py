"""pod_reader: the memoised read of a pod's JSON reads every pod as ``parse_pod`` does.

The property test sends streams of pods that share their requests (so most reads are memo
hits) and differ in everything else, valid and not, and compares each read with
``parse_pod`` of the same JSON.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexai_core import annotations as ann
from flexai_core.requests import RequestError, RequestRules, parse_pod
from flexai_sched import pod_reader
from flexai_sched.pod_reader import PodReader

RULES = RequestRules()


def reading(read: Any, raw: bytes) -> object:
    """What a read gives: the request, or the error's reasons."""
    try:
        return read(raw)
    except RequestError as e:
        return ("error", e.reasons)


def pod(name: str, resources: object, **extra: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "x",
        "resources": resources,
        "volumeMounts": [{"name": f"kube-api-access-{name}", "mountPath": "/var/run/secrets"}],
    }
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}"},
        "spec": {"containers": [container], "volumes": [{"name": f"kube-api-access-{name}"}]},
    }
    body["spec"].update(extra)
    return body


LIMITS = {"limits": {"huawei.com/vgpu-number": "1", "huawei.com/vgpu-cores": "20", "huawei.com/vgpu-memory-1Gi": "4"}}


def test_pods_asking_alike_share_one_parse_and_keep_their_own_names(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = PodReader(RULES)
    calls: list[object] = []

    def counted(p: Any, rules: RequestRules) -> Any:
        calls.append(p)
        return parse_pod(p, rules)

    monkeypatch.setattr(pod_reader, "parse_pod", counted)
    first = reader.read(json.dumps(pod("a-1", LIMITS)).encode())
    second = reader.read(json.dumps(pod("a-2", LIMITS, nodeSelector={"x": "y"})).encode())
    assert len(calls) == 1
    assert (second.name, second.uid, second.namespace) == ("a-2", "uid-a-2", "team")
    assert second.containers == first.containers
    assert second == parse_pod(pod("a-2", LIMITS))


def test_a_different_request_is_parsed_anew() -> None:
    reader = PodReader(RULES)
    reader.read(json.dumps(pod("a", LIMITS)).encode())
    other = {"limits": {"huawei.com/vgpu-number": "2"}}
    got = reader.read(json.dumps(pod("b", other)).encode())
    assert got == parse_pod(pod("b", other))
    assert [(c.vgpus, c.cores) for c in got.containers] == [(2, 100)]


def test_an_invalid_request_raises_the_same_reasons_on_every_read() -> None:
    reader = PodReader(RULES)
    bad = {"limits": {"huawei.com/vgpu-number": "1", "huawei.com/vgpu-cores": "7"}}
    for name in ("a", "b"):
        with pytest.raises(RequestError) as got:
            reader.read(json.dumps(pod(name, bad)).encode())
        with pytest.raises(RequestError) as want:
            parse_pod(pod(name, bad))
        assert got.value.reasons == want.value.reasons


@pytest.mark.parametrize(
    "body",
    [
        {"metadata": {"name": 5}, "spec": {"containers": [{"name": "m", "resources": LIMITS}]}},
        {"metadata": {"name": "p", "annotations": []}, "spec": {}},
        {"metadata": {"name": "p"}, "spec": {"containers": {"name": "m"}}},
        {"metadata": {"name": "p"}, "spec": {"containers": ["m"]}},
        {"metadata": [], "spec": {}},
        {"metadata": {"name": "p"}, "spec": 3},
    ],
)
def test_pods_not_typed_as_kubernetes_types_them_get_parse_pods_errors(body: dict[str, Any]) -> None:
    reader = PodReader(RULES)
    raw = json.dumps(body).encode()
    assert reading(reader.read, raw) == reading(lambda r: parse_pod(json.loads(r)), raw)


def test_json_that_is_not_an_object_is_a_decode_error() -> None:
    reader = PodReader(RULES)
    for raw in (b"[1]", b'{"metadata": ', b'{"spec": {"containers": [{"name": "\\ud800"}]}}'):
        with pytest.raises(msgspec.DecodeError):
            reader.read(raw)


def test_a_duplicated_field_is_read_as_parse_pod_reads_it_and_cannot_poison_the_memo() -> None:
    """JSON with a key twice: the last one counts, in the key and in the parse alike."""
    reader = PodReader(RULES)
    small = '{"limits": {"huawei.com/vgpu-number": "1", "huawei.com/vgpu-cores": "10"}}'
    large = '{"limits": {"huawei.com/vgpu-number": "4"}}'
    head = '{"metadata": {"name": "p", "uid": "u"}, "spec": {"containers": [{"name": "m", '
    twice = (head + f'"resources": {small}, "resources": {large}}}]}}}}').encode()
    once_small = (head + f'"resources": {small}}}]}}}}').encode()
    for raw in (twice, once_small, twice):
        assert reader.read(raw) == parse_pod(json.loads(raw))


def test_the_memo_is_bounded_and_large_requests_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pod_reader, "MAX_REQUESTS", 8)
    reader = PodReader(RULES)
    for i in range(30):
        lim = {"limits": {"huawei.com/vgpu-number": "1", "huawei.com/vgpu-memory-1Gi": str(i + 1)}}
        reader.read(json.dumps(pod(f"p{i}", lim)).encode())
        assert len(reader._memo) <= 8
    reader = PodReader(RULES)
    huge = {"limits": {"huawei.com/vgpu-number": "1", **{f"example.com/r{i}": "1" for i in range(400)}}}
    got = reader.read(json.dumps(pod("h", huge)).encode())
    assert got == parse_pod(pod("h", huge))
    assert reader._memo == {}


def test_a_sidecar_and_an_init_container_asking_alike_are_read_apart() -> None:
    reader = PodReader(RULES)
    init = {"name": "prep", "resources": {"limits": {"huawei.com/vgpu-number": "1"}}}
    plain = reader.read(json.dumps(pod("a", LIMITS, initContainers=[init])).encode())
    sidecar = reader.read(json.dumps(pod("b", LIMITS, initContainers=[{**init, "restartPolicy": "Always"}])).encode())
    assert [c.name for c in plain.init_containers] == ["prep"]
    assert [c.name for c in sidecar.containers] == ["main", "prep"] and sidecar.init_containers == ()


def test_every_annotation_parse_pod_reads_is_in_the_key() -> None:
    """An annotation parse_pod reads but the key left out would make two pods' reads one."""
    reader = PodReader(RULES)
    values = {
        ann.GPU_MODELS: "H100",
        ann.GPU_MODELS_EXCLUDE: "A10",
        ann.GPU_UUIDS: "GPU-1",
        ann.GPU_UUIDS_EXCLUDE: "GPU-2",
        ann.NODE_POLICY: "spread",
        ann.CARD_POLICY: "binpack",
    }
    assert set(values) == set(ann.USER_POD_ANNOTATIONS)
    base = parse_pod(pod("p", LIMITS))
    reader.read(json.dumps(pod("p", LIMITS)).encode())
    for key, value in values.items():
        body = pod("q", LIMITS)
        body["metadata"]["annotations"] = {key: value}
        got = reader.read(json.dumps(body).encode())
        assert got == parse_pod(body)
        assert (got.selector, got.node_policy, got.card_policy) != (base.selector, base.node_policy, base.card_policy)


# ---- the property: streams of pods, each read compared with parse_pod ----

quantity = st.one_of(
    st.sampled_from(["0", "1", "2", "5", "20", "25", "100", "101", "7", "-1", "1.5", "2Gi", "", "08"]),
    st.integers(-2, 120),
    st.none(),
    st.booleans(),
    st.just([1]),
)
resource_name = st.sampled_from(
    [
        "huawei.com/vgpu-number",
        "huawei.com/vgpu-cores",
        "huawei.com/vgpu-memory-1Gi",
        "huawei.com/vgpu-memory",
        "huawei.com/vgpu-type-H100",
        "cpu",
        "memory",
        "example.com/other",
    ]
)
resources = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "limits": st.dictionaries(resource_name, quantity, max_size=4),
            "requests": st.dictionaries(resource_name, quantity, max_size=4),
        },
    ),
    st.none(),
    st.just("bad"),
)
container = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["main", "side", ""]), st.none())},
    optional={
        "resources": resources,
        "restartPolicy": st.sampled_from(["Always", "OnFailure", None]),
        "image": st.text(max_size=3),
        "env": st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)}), max_size=2),
    },
)
annotation = st.dictionaries(
    st.sampled_from([*ann.USER_POD_ANNOTATIONS, "other.io/x"]),
    st.one_of(st.sampled_from(["binpack", "spread", "H100", "GPU-1,GPU-2", "nope", ""]), st.integers(0, 3)),
    max_size=3,
)
spec = st.fixed_dictionaries(
    {"containers": st.lists(container, max_size=3)},
    optional={
        "initContainers": st.lists(container, max_size=2),
        "overhead": st.one_of(st.fixed_dictionaries({"cpu": st.sampled_from(["100m", "x"])}), st.none()),
        "priority": st.one_of(st.integers(-5, 5), st.none(), st.just("high")),
        "nodeName": st.text(max_size=4),
    },
)
meta = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=6)},
    optional={
        "namespace": st.one_of(st.text(max_size=4), st.none()),
        "uid": st.text(max_size=6),
        "annotations": annotation,
    },
)


valid = st.fixed_dictionaries(  # mostly requests that parse, so containers carry their names
    {
        "limits": st.fixed_dictionaries(
            {"huawei.com/vgpu-number": st.sampled_from(["1", "2"])},
            optional={"huawei.com/vgpu-cores": st.sampled_from(["10", "100"]), "cpu": st.sampled_from(["1", "500m"])},
        )
    }
)
# One field of a pod, and a value for it: a stream of pods that differ in one field at a time.
edit = st.one_of(
    st.tuples(st.just("containers"), st.integers(0, 2), st.just("name"), st.sampled_from(["main", "side", "", None])),
    st.tuples(st.just("containers"), st.integers(0, 2), st.just("resources"), st.one_of(valid, resources)),
    st.tuples(st.just("initContainers"), st.integers(0, 1), st.just("name"), st.sampled_from(["init", "side"])),
    st.tuples(st.just("initContainers"), st.integers(0, 1), st.just("resources"), st.one_of(valid, resources)),
    st.tuples(
        st.just("initContainers"), st.integers(0, 1), st.just("restartPolicy"), st.sampled_from(["Always", None])
    ),
    st.tuples(
        st.just("spec"),
        st.just(0),
        st.sampled_from(["overhead", "priority"]),
        st.one_of(st.none(), st.integers(0, 2), st.fixed_dictionaries({"memory": st.sampled_from(["1Gi", "2Gi"])})),
    ),
    st.tuples(
        st.just("annotations"),
        st.just(0),
        st.sampled_from(ann.USER_POD_ANNOTATIONS),
        st.sampled_from(["binpack", "spread", "H100", "A10", "GPU-1", None]),
    ),
)


def edited(body: dict[str, Any], where: str, i: int, field: str, value: object) -> None:
    spec, meta = body["spec"], body["metadata"]
    if where == "spec":
        spec[field] = value
    elif where == "annotations":
        meta["annotations"] = {**(meta.get("annotations") or {}), field: value}
    else:
        items = spec.setdefault(where, [])
        if not isinstance(items, list):
            return
        while len(items) <= i:
            items.append({"name": f"c{len(items)}", "resources": {"limits": {"huawei.com/vgpu-number": "1"}}})
        items[i][field] = value


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.fixed_dictionaries({"metadata": meta, "spec": spec}), min_size=1, max_size=6),
    st.lists(edit, max_size=12),
    st.randoms(),
)
def test_every_read_is_parse_pods(pods: list[dict[str, Any]], edits: list[Any], rng: Any) -> None:
    reader = PodReader(RULES)
    stream = [json.loads(json.dumps(p)) for p in pods]
    for e in edits:  # each a copy of the pod before it with one field changed
        body = json.loads(json.dumps(stream[-1]))
        edited(body, *e)
        stream.append(body)
    stream += [rng.choice(stream) for _ in range(len(stream))]  # repeats: memo hits
    for i, body in enumerate(stream):
        body = json.loads(json.dumps(body))
        body["metadata"]["name"] = f"{body['metadata']['name']}-{i}"  # each pod its own name
        raw = json.dumps(body).encode()
        assert reading(reader.read, raw) == reading(lambda r: parse_pod(json.loads(r), RULES), raw)


def test_the_reader_reads_with_its_rules() -> None:
    reader = PodReader(RequestRules(granularity=10))
    lim = {"limits": {"huawei.com/vgpu-number": "1", "huawei.com/vgpu-cores": "15"}}
    with pytest.raises(RequestError, match="multiple of 10"):
        reader.read(json.dumps(pod("p", lim)).encode())
