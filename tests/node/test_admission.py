"""Which pod and container an Allocate call is for (flexai_node.admission + pods)."""

from __future__ import annotations

from typing import Any

import pytest

from flexai_core.model import Slice
from flexai_node.admission import KubeletView, NoCandidate, PodRefused, choose
from flexai_node.pods import BoundPod

from .fakes import CARDS, FakeNodeApi, bound_pod, container, slice_on

A, B = CARDS
NODE = "gpu-1"


def parse(pods: list[dict[str, Any]]) -> list[BoundPod]:
    api = FakeNodeApi()  # gives increasing resourceVersions in creation order
    parsed = [BoundPod.parse(api.add(p), NODE, CARDS) for p in pods]
    return [p for p in parsed if p is not None]


def one(name: str, uid: str, card: Any = A, vgpus: int = 1, mem: int = 10, **kw: Any) -> dict[str, Any]:
    cards = list(CARDS)[:vgpus] if vgpus > 1 else [card]
    return bound_pod(
        name,
        uid,
        [container("main", vgpus, 20, mem)],
        [slice_on(c, "main", 20, mem * 1024) for c in cards],
        **kw,
    )


def never(*_: str) -> bool:
    return False


@pytest.mark.parametrize(
    "pods, counts, admitted, expect",
    [
        # Same second, same resourceVersion order as created: the first bound goes first.
        ([one("p1", "u1"), one("p2", "u2", B)], [1], set(), ("p1", ["main"])),
        # p1 already admitted: the next call is p2's, though bound in the same second.
        ([one("p1", "u1"), one("p2", "u2", B)], [1], {("u1", "main")}, ("p2", ["main"])),
        # Same second, different sizes: the call's size decides, whatever the order.
        ([one("big", "u1", vgpus=2), one("small", "u2", B)], [1], set(), ("small", ["main"])),
        ([one("big", "u1", vgpus=2), one("small", "u2", B)], [2], set(), ("big", ["main"])),
        # Bound a second earlier wins even though created (and written) later.
        (
            [
                one("late", "u1", bound_at="2026-11-29T10:00:01Z"),
                one("early", "u2", B, bound_at="2026-11-29T10:00:00Z"),
            ],
            [1],
            set(),
            ("early", ["main"]),
        ),
    ],
    ids=["same-second-first", "same-second-second", "by-size-1", "by-size-2", "bind-time-order"],
)
def test_choose(
    pods: list[dict[str, Any]], counts: list[int], admitted: set[tuple[str, str]], expect: tuple[str, list[str]]
) -> None:
    choice = choose(parse(pods), counts, lambda u, c: (u, c) in admitted, never)
    assert (choice.pod.name, [c.name for c in choice.containers]) == expect


def two_containers(name: str, uid: str) -> dict[str, Any]:
    return bound_pod(
        name,
        uid,
        [container("a", 1, 20, 4), container("sidecar", 0), container("b", 2, 30, 8)],
        [slice_on(A, "a", 20, 4096), slice_on(A, "b", 30, 8192), slice_on(B, "b", 30, 8192)],
    )


def test_half_admitted_pod_comes_before_fresh_pods_of_the_same_size() -> None:
    # "other" was bound first and asks for 2 vGPUs, as two-containers' second container does;
    # but the kubelet finishes a pod before it starts the next, so "b" is next.
    pods = parse([one("other", "u0", vgpus=2, bound_at="2026-11-29T09:00:00Z"), two_containers("two", "u1")])
    first = choose(pods, [1], never, never)
    assert (first.pod.name, [c.name for c in first.containers]) == ("two", ["a"])
    second = choose(pods, [2], lambda u, c: (u, c) == ("u1", "a"), never)
    assert (second.pod.name, [c.name for c in second.containers]) == ("two", ["b"])
    assert [s.card_uuid for s in second.containers[0].slices] == [A.uuid, B.uuid]


def test_one_call_for_all_containers_of_a_pod() -> None:
    choice = choose(parse([two_containers("two", "u1")]), [1, 2], never, never)
    assert [c.name for c in choice.containers] == ["a", "b"]


def test_init_containers_are_admitted_first() -> None:
    pod = bound_pod(
        "init",
        "u1",
        [container("main", 1, 50, 8)],
        [slice_on(A, "setup", 10, 1024, init=True), slice_on(A, "main", 50, 8192)],
        init_containers=[container("setup", 1, 10, 1)],
    )
    parsed = parse([pod])
    assert [c.name for c in parsed[0].containers] == ["setup", "main"]
    assert choose(parsed, [1], never, never).containers[0].slices[0].memory_mib == 1024


@pytest.mark.parametrize(
    "pod, message",
    [
        (bound_pod("bare", "u1", [container("main", 1, 20, 4)], None), "no vgpu.flexai.io/allocation annotation"),
        (bound_pod("junk", "u1", [container("main", 1, 20, 4)], None, allocation_text="{not json"), "not valid JSON"),
        (bound_pod("v9", "u1", [container("main", 1)], None, allocation_text='{"v": 9}'), "unsupported version 9"),
        (
            bound_pod("elsewhere", "u1", [container("main", 1)], [slice_on(A, "main", 100, 1)], node="gpu-2"),
            "is for node 'gpu-2'",
        ),
        (
            bound_pod("short", "u1", [container("main", 2, 20, 4)], [slice_on(A, "main", 20, 4096)]),
            "container 'main' asks for 2 vGPU(s), the allocation gives it 1",
        ),
        (
            bound_pod("doubled", "u1", [container("main", 2, 20, 4)], [slice_on(A, "main", 20, 4096)] * 2),
            "two of its vGPUs on one card",
        ),
        (
            bound_pod(
                "stray",
                "u1",
                [container("main", 1, 20, 4)],
                [slice_on(A, "main", 20, 4096), slice_on(B, "ghost", 20, 4096)],
            ),
            "slices for 'ghost'",
        ),
        # The finding: a pod that asks for 20% and 4 GiB, annotated with no compute limit
        # and the whole card.
        (
            bound_pod("greedy", "u1", [container("main", 1, 20, 4)], [slice_on(A, "main", 0, A.memory_mib)]),
            "vgpu.flexai.io/allocation is not what the pod asks for: "
            "container 'main' asks for 20 percent of a card's cores per vGPU, the allocation gives 0 percent on card 0; "
            f"container 'main' asks for 4096 MiB per vGPU, the allocation gives {A.memory_mib} MiB on card 0",
        ),
        (
            bound_pod("ghost-card", "u1", [container("main", 1, 20, 4)], [Slice("main", 5, "GPU-elsewhere", 20, 4096)]),
            "card 5 is not on node 'gpu-1'",
        ),
        (
            bound_pod("swapped", "u1", [container("main", 1, 20, 4)], [Slice("main", 0, B.uuid, 20, 4096)]),
            f"card 0 of node 'gpu-1' is {A.uuid}, the allocation names {B.uuid}",
        ),
        (
            bound_pod(
                "init-greedy",
                "u1",
                [container("main", 1, 20, 4)],
                [slice_on(A, "setup", 100, A.memory_mib, init=True), slice_on(A, "main", 20, 4096)],
                init_containers=[container("setup", 1, 10, 1)],
            ),
            "container 'setup' asks for 10 percent of a card's cores per vGPU, the allocation gives 100 percent on card 0",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "bad-version",
        "other-node",
        "too-few-slices",
        "same-card",
        "stray-container",
        "self-granted-card",
        "card-not-on-node",
        "uuid-of-another-card",
        "init-container",
    ],
)
def test_malformed_allocation_refuses_that_pod(pod: dict[str, Any], message: str) -> None:
    if pod["spec"]["nodeName"] != NODE:  # the annotation says gpu-2, the pod is here
        pod["spec"]["nodeName"] = NODE
        pod["metadata"]["annotations"]["vgpu.flexai.io/allocation"] = pod["metadata"]["annotations"][
            "vgpu.flexai.io/allocation"
        ].replace(NODE, "gpu-2")
    with pytest.raises(PodRefused, match="pod default/") as e:
        choose(parse([pod]), [pod_vgpus(pod)], never, never)
    assert message in str(e.value)


def pod_vgpus(pod: dict[str, Any]) -> int:
    return int(pod["spec"]["containers"][0]["resources"]["limits"]["huawei.com/vgpu-number"])


def test_a_refused_pod_does_not_shadow_the_next() -> None:
    bad = bound_pod("bad", "u1", [container("main", 1, 20, 4)], None, bound_at="2026-11-29T09:00:00Z")
    pods = parse([bad, one("good", "u2")])
    with pytest.raises(PodRefused):
        choose(pods, [1], never, never)
    assert choose(pods, [1], never, lambda uid: uid == "u1").pod.name == "good"


@pytest.mark.parametrize(
    "pods, counts, admitted",
    [
        ([], [1], set()),
        ([one("p1", "u1")], [2], set()),
        ([one("p1", "u1")], [1], {("u1", "main")}),
        ([dict(one("p1", "u1"), status={"phase": "Failed"})], [1], set()),
        (
            [
                {
                    **one("p1", "u1"),
                    "metadata": {**one("p1", "u1")["metadata"], "deletionTimestamp": "2026-11-29T10:00:05Z"},
                }
            ],
            [1],
            set(),
        ),
    ],
    ids=["no-pods", "size-mismatch", "already-admitted", "terminal", "deleting"],
)
def test_no_candidate(pods: list[dict[str, Any]], counts: list[int], admitted: set[tuple[str, str]]) -> None:
    with pytest.raises(NoCandidate, match=r"no pod bound to this node waits for containers of \[\d\]"):
        choose(parse(pods), counts, lambda u, c: (u, c) in admitted, never)


def test_pods_without_vgpus_are_ignored() -> None:
    assert parse([bound_pod("cpu", "u1", [container("main", 0)], None)]) == []


def view(**pods: dict[str, tuple[str, ...]]) -> KubeletView:
    return KubeletView({f"default/{k}": v for k, v in pods.items()})


@pytest.mark.parametrize(
    "kubelet, admitted, expect",
    [
        # The kubelet holds p2 only: it is admitting p2, though p1 was bound first.
        (view(p2={"main": ()}), set(), "p2"),
        # It holds both and has allocated p1's container (our ledger lost it): p2 is next.
        (view(p1={"main": ("GPU-aaaa::0",)}, p2={"main": ()}), set(), "p2"),
        # It holds neither (a lagging List): the choice falls back to bind order.
        (view(other={"main": ()}), set(), "p1"),
        # No view at all: bind order, then the ledger.
        (None, {("u1", "main")}, "p2"),
    ],
    ids=["holds-only-the-second", "kubelet-says-first-is-allocated", "lagging-view", "no-view"],
)
def test_kubelet_view_tells_same_second_pods_apart(
    kubelet: KubeletView | None, admitted: set[tuple[str, str]], expect: str
) -> None:
    pods = parse([one("p1", "u1"), one("p2", "u2", B)])
    assert choose(pods, [1], lambda u, c: (u, c) in admitted, never, kubelet).pod.name == expect


def test_a_pods_policy_annotation_never_refuses_its_admission() -> None:
    # The owner may edit it after the bind; the scheduler already placed the pod.
    pod = one("p", "u1")
    pod["metadata"]["annotations"]["vgpu.flexai.io/node-policy"] = "no-such-policy"
    assert choose(parse([pod]), [1], never, never).pod.name == "p"
