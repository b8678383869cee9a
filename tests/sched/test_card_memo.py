"""The per-card memos of the cold path answer as the direct computation does.

``allocator.CardMemo`` (a slice's fit and cost per card state, shared across nodes) and
``fragmentation._Measure._seen`` given a ``base`` (a placed pod's node summary worked out
from the node's before-state, only the changed cards again) over random card states.
"""

from __future__ import annotations

import random

import pytest

from flexai_core.model import Card, CardSelector, CardUsage, ContainerRequest, PodRequest
from flexai_sched import policies
from flexai_sched.allocator import CardMemo, Placement, place
from flexai_sched.policies.fragmentation import Fragmentation

MODELS = ("H200", "A100")


def random_node(rng: random.Random, n: int) -> tuple[tuple[Card, ...], tuple[CardUsage, ...]]:
    cards = tuple(
        Card(
            i,
            f"GPU-{rng.random()}",
            rng.choice(MODELS),
            rng.choice((1000, 2000)),
            max_vgpus=rng.choice((2, 5)),
            healthy=rng.random() > 0.1,
            used_outside_mib=rng.choice((0, 0, 100)),
        )
        for i in range(n)
    )
    usage = []
    for _ in cards:
        k = rng.choice((0, 0, 1, 2, 3))
        usage.append(
            CardUsage()
            if k == 0
            else CardUsage(rng.choice((0, 10, 25, 50, 70, 100)), rng.choice((0, 100, 500, 900)), k)
        )
    return cards, tuple(usage)


def random_pod(rng: random.Random) -> PodRequest:
    def container(name: str) -> ContainerRequest:
        return ContainerRequest(
            name, rng.choice((1, 1, 2, 4)), rng.choice((0, 10, 30, 50, 100)), rng.choice((None, 100, 400, 800))
        )

    apps = tuple(container(f"c{i}") for i in range(rng.choice((1, 1, 2))))
    inits = (container("init"),) if rng.random() < 0.2 else ()
    selector = CardSelector(models=frozenset({"H200"})) if rng.random() < 0.3 else CardSelector()
    return PodRequest("ns", "p", "uid", apps, inits, selector)


@pytest.mark.parametrize("name", ["fragmentation", "fgd", "binpack", "spread"])
def test_place_with_a_card_memo_equals_place_without(name: str) -> None:
    rng = random.Random(name)
    policy = policies.get(name)
    for _ in range(60):
        pod = random_pod(rng)
        memo = CardMemo(pod.selector, policy)  # one per shape, shared by every node
        for _ in range(40):
            cards, usage = random_node(rng, rng.choice((1, 4, 8)))
            got = place(cards, usage, pod, policy, memo)
            assert got == place(cards, usage, pod, policy)
        assert memo.costs, "the memo was used"


def test_a_card_memo_serves_only_its_selector_and_a_policy_whose_cost_reads_the_card_state() -> None:
    frag = policies.get("fragmentation")
    memo = CardMemo(CardSelector(), frag)
    assert memo.serves(CardSelector(), frag)
    assert not memo.serves(CardSelector(models=frozenset({"H200"})), frag)
    assert not memo.serves(CardSelector(), policies.get("binpack"))
    by_uuid = CardSelector(uuids=frozenset({"GPU-1"}))
    assert not CardMemo(by_uuid, frag).serves(by_uuid, frag)  # a UUID is no part of the key
    random_policy = policies.get("random")  # draws a cost per call: nothing to share
    assert not CardMemo(CardSelector(), random_policy).serves(CardSelector(), random_policy)


def test_a_summary_from_the_before_state_equals_one_from_scratch() -> None:
    rng = random.Random(3)
    policy = policies.get("binpack")
    for _ in range(300):
        cards, before = random_node(rng, rng.choice((1, 4, 8)))
        pod = random_pod(rng)
        got = place(cards, before, pod, policy)
        if not isinstance(got, Placement):
            continue
        after = got.usage_after
        warm, cold = Fragmentation(), Fragmentation()
        base = warm._m._seen(cards, before)
        derived = warm._m._seen(cards, after, base)
        fresh = cold._m._seen(cards, tuple(CardUsage(u.cores, u.memory_mib, u.vgpus) for u in after))
        assert derived[2:] == fresh[2:]  # summary, frees, wholly free cards, packed parts, models
        assert warm.node_score(cards, before, after) == cold.node_score(cards, before, after)
