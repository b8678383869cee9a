"""Card choice and fit rules, table-driven, with the arithmetic in comments."""

from __future__ import annotations

import pytest

from flexai_core.model import Card, CardSelector, CardUsage, ContainerRequest, PodRequest
from flexai_sched import policies
from flexai_sched.allocator import NoFit, Placement, place, slice_fits

CARD = Card(0, "GPU-0", "H200", 1000, max_vgpus=3)


def req(
    *containers: ContainerRequest, init: tuple[ContainerRequest, ...] = (), selector: CardSelector = CardSelector()
) -> PodRequest:
    return PodRequest("ns", "p", "uid", tuple(containers), init, selector)


def c(vgpus: int, cores: int, mem: int | None, name: str = "m", init: bool = False) -> ContainerRequest:
    return ContainerRequest(name, vgpus, cores, mem, init)


@pytest.mark.parametrize(
    ("used", "cores", "mem", "fits"),
    [
        pytest.param(CardUsage(), 100, 1000, True, id="exclusive-on-empty"),
        pytest.param(CardUsage(0, 100, 1), 100, 500, False, id="exclusive-needs-nothing-else-even-cores0"),
        pytest.param(CardUsage(70, 100, 1), 30, 900, True, id="70+30=100-and-100+900=1000MiB"),
        pytest.param(CardUsage(70, 100, 1), 35, 10, False, id="70+35>100"),
        pytest.param(CardUsage(70, 100, 1), 30, 901, False, id="100+901>1000MiB"),
        pytest.param(CardUsage(95, 0, 1), 0, 10, True, id="cores0-on-card-at-95"),
        pytest.param(CardUsage(100, 0, 1), 0, 10, False, id="cores0-never-on-card-at-100"),
        pytest.param(CardUsage(30, 30, 3), 10, 10, False, id="vgpu-slots-full-3-of-3"),
    ],
)
def test_slice_fits(used: CardUsage, cores: int, mem: int, fits: bool) -> None:
    assert slice_fits(CARD, used, cores, mem) is fits


def test_unhealthy_card_takes_nothing() -> None:
    sick = Card(0, "GPU-0", "H200", 1000, healthy=False)
    assert not slice_fits(sick, CardUsage(), 10, 10)


def test_memory_used_outside_our_slices_is_never_given_out() -> None:
    busy = Card(0, "GPU-0", "H200", 1000, used_outside_mib=300)
    assert slice_fits(busy, CardUsage(), 10, 700)
    assert not slice_fits(busy, CardUsage(), 10, 701)
    # A whole-card request gets what is left: 1000 - 300 MiB.
    placed = place((busy,), (CardUsage(),), req(c(1, 100, None)), policies.Binpack())
    assert isinstance(placed, Placement) and placed.slices[0].memory_mib == 700


CARDS = tuple(Card(i, f"GPU-{i}", "H200", 1000) for i in range(4))


def test_binpack_fills_the_fullest_card_spread_the_emptiest() -> None:
    usage = (CardUsage(10, 100, 1), CardUsage(60, 600, 1), CardUsage(), CardUsage(30, 300, 1))
    bp = place(CARDS, usage, req(c(1, 20, 100)), policies.Binpack())
    sp = place(CARDS, usage, req(c(1, 20, 100)), policies.Spread())
    assert isinstance(bp, Placement) and bp.slices[0].card_index == 1  # 60% is the fullest
    assert isinstance(sp, Placement) and sp.slices[0].card_index == 2  # empty


def test_a_containers_vgpus_sit_on_distinct_cards() -> None:
    placed = place(CARDS, (CardUsage(),) * 4, req(c(3, 10, 10)), policies.Binpack())
    assert isinstance(placed, Placement)
    assert len({s.card_index for s in placed.slices}) == 3


def test_two_containers_can_share_a_card_and_are_counted_together() -> None:
    placed = place(CARDS[:1], (CardUsage(),), req(c(1, 40, 100, "a"), c(1, 50, 200, "b")), policies.Binpack())
    assert isinstance(placed, Placement)
    assert placed.usage_after[0] == CardUsage(90, 300, 2)  # 40+50 cores, 100+200 MiB, 2 slices


def test_two_containers_that_do_not_fit_together_fail() -> None:
    got = place(CARDS[:1], (CardUsage(),), req(c(1, 60, 100, "a"), c(1, 50, 100, "b")), policies.Binpack())
    assert isinstance(got, NoFit) and got.resolvable
    assert 'container "b"' in got.reason  # 60 is placed first (hardest), 50 no longer fits


def test_init_container_slice_is_released_for_the_app() -> None:
    # init needs 80%, app needs 60% of the single card: sequential, so the pod holds max(80, 60) = 80.
    placed = place(CARDS[:1], (CardUsage(),), req(c(1, 60, 500), init=(c(1, 80, 200, "i", True),)), policies.Binpack())
    assert isinstance(placed, Placement)
    assert placed.usage_after[0] == CardUsage(80, 500, 1)


def test_more_vgpus_than_cards_is_unresolvable() -> None:
    got = place(CARDS, (CardUsage(),) * 4, req(c(5, 10, 10)), policies.Binpack())
    assert isinstance(got, NoFit) and not got.resolvable
    assert "asks for 5 vGPUs, node has 4 cards" in got.reason


def test_model_selector_mismatch_is_unresolvable_usage_is_resolvable() -> None:
    a100 = req(c(1, 10, 10), selector=CardSelector(models=frozenset({"A100"})))
    got = place(CARDS, (CardUsage(),) * 4, a100, policies.Binpack())
    assert isinstance(got, NoFit) and not got.resolvable and "model A100" in got.reason
    full = (CardUsage(100, 1000, 1),) * 4
    got = place(CARDS, full, req(c(1, 10, 10)), policies.Binpack())
    assert isinstance(got, NoFit) and got.resolvable


def test_uuid_exclusion() -> None:
    sel = CardSelector(exclude_uuids=frozenset({"GPU-0", "GPU-1", "GPU-2"}))
    placed = place(CARDS, (CardUsage(),) * 4, req(c(1, 10, 10), selector=sel), policies.Binpack())
    assert isinstance(placed, Placement) and placed.slices[0].card_uuid == "GPU-3"
