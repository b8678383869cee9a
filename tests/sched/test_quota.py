"""vGPU quota arithmetic and declarations (flexai_sched.quota), pure."""

from __future__ import annotations

import pytest

from flexai_core import resources as res
from flexai_core.model import Allocation, Slice
from flexai_core.requests import parse_pod
from flexai_sched.quota import Quota, QuotaBook, QuotaError, Usage, allocation_usage, parse_quotas, request_usage

from .fixtures import limits, pod

GIB = 1024


def _sidecar(name: str, lim: dict[str, str]) -> dict[str, object]:
    return {"name": name, "restartPolicy": "Always", "resources": {"limits": lim}}


@pytest.mark.parametrize(
    ("p", "want"),
    [
        # 2 vGPUs x 30% x 10 GiB: 60 card-%, 20 GiB, 2 vGPUs.
        pytest.param(pod("a", limits(2, cores=30, memory_gib=10)), Usage(60, 20 * GIB, 2), id="number-times-amount"),
        # Two app containers add up: 1x20%/4 + 3x10%/2 = 50%, 10 GiB, 4 vGPUs.
        pytest.param(
            pod("b", limits(1, cores=20, memory_gib=4), limits(3, cores=10, memory_gib=2)),
            Usage(50, 10 * GIB, 4),
            id="app-containers-sum",
        ),
        # An init container of 1 x 100% / 8 GiB runs alone before an app of 2 x 20% / 5 GiB:
        # per dimension the peak: cores max(40, 100) = 100, memory max(10, 8) = 10 GiB, vGPUs max(2, 1) = 2.
        pytest.param(
            pod("c", limits(2, cores=20, memory_gib=5), init=(limits(1, cores=100, memory_gib=8),)),
            Usage(100, 10 * GIB, 2),
            id="init-peak-per-dimension",
        ),
        # Two init containers: each alone, the larger counts: max(3x10%, 1x50%) = 50, not 80.
        pytest.param(
            pod(
                "d",
                limits(1, cores=10, memory_gib=1),
                init=(limits(3, cores=10, memory_gib=1), limits(1, cores=50, memory_gib=1)),
            ),
            Usage(50, 3 * GIB, 3),
            id="init-containers-one-at-a-time",
        ),
        # A sidecar counts with the app: 1x20%/2 + sidecar 1x10%/1 = 30%, 3 GiB, 2 vGPUs.
        pytest.param(
            pod("e", limits(1, cores=20, memory_gib=2), init=(_sidecar("side", limits(1, cores=10, memory_gib=1)),)),
            Usage(30, 3 * GIB, 2),
            id="sidecar-is-app",
        ),
    ],
)
def test_a_pod_counts_number_times_amount_with_init_peaks(p: dict[str, object], want: Usage) -> None:
    got, unsized = request_usage(parse_pod(p))
    assert got == want and unsized == ""


def test_a_container_without_memory_is_unsized() -> None:
    got, unsized = request_usage(parse_pod(pod("w", limits(2))))  # two whole cards
    assert got == Usage(200, 0, 2) and unsized == "c0"


def test_a_bound_pod_counts_what_its_slices_hold() -> None:
    # App "a" holds 2 slices (30% / 80 GiB of a whole card each: it gave no memory), init "i" 1 x 100%.
    slices = (
        Slice("a", 0, "g0", 30, 80 * GIB),
        Slice("a", 1, "g1", 30, 80 * GIB),
        Slice("i", 0, "g0", 100, 8 * GIB, init=True),
    )
    # cores max(60, 100) = 100; memory max(160, 8) = 160 GiB; vGPUs max(2, 1) = 2.
    assert allocation_usage(Allocation.build("ns", "p", "u", "n", slices)) == Usage(100, 160 * GIB, 2)


QUOTAS = f"""
quotas:
  - name: team-a
    namespace: a
    hard: {{{res.VGPU_NUMBER}: 4, {res.VGPU_CORES}: 100, {res.VGPU_MEMORY}: 20}}
  - name: research
    namespaceSelector: {{matchLabels: {{group: research}}}}
    hard: {{{res.VGPU_NUMBER}: "3"}}
"""


def test_parse_quotas_reads_one_namespace_and_a_label_group() -> None:
    a, r = parse_quotas(QUOTAS, "sys/q")
    assert a == Quota("team-a", "a", None, 4, 100, 20, "sys/q")
    assert r == Quota("research", None, (("group", "research"),), 3, None, None, "sys/q")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("quotas: [{name: x, hard: {huawei.com/vgpu-number: 1}}]", "exactly one of namespace and namespaceSelector"),
        ("quotas: [{name: x, namespace: a, hard: {huawei.com/vgpu-number: -1}}]", "hard.huawei.com/vgpu-number: -1"),
        ("quotas: [{name: x, namespace: a, hard: {cpu: 1}}]", "unknown resource 'cpu'"),
        ("quotas: [{name: x, namespace: a, hard: {}}]", "quotas[0].hard: must map"),
        ("quotas: [{name: x, namespace: a, hrad: {}}]", "unknown field(s) hrad"),
        ("quotas: [{namespace: a, hard: {huawei.com/vgpu-number: 1}}]", "quotas[0].name"),
        (
            "quotas: [{name: x, namespace: a, hard: {huawei.com/vgpu-number: 1}},"
            " {name: x, namespace: b, hard: {huawei.com/vgpu-number: 1}}]",
            "'x' is declared twice",
        ),
        (
            "quotas: [{name: x, namespaceSelector: {matchLabels: {}}, hard: {huawei.com/vgpu-number: 1}}]",
            "namespaceSelector",
        ),
        ("quotas: {", "not valid YAML"),
        ("- a", "must be a mapping"),
    ],
)
def test_bad_declarations_name_the_field(text: str, error: str) -> None:
    with pytest.raises(QuotaError) as e:
        parse_quotas(text, "sys/q")
    assert error in str(e.value) and str(e.value).startswith("sys/q")


def test_book_checks_a_namespace_and_its_group_with_the_numbers() -> None:
    book = QuotaBook()
    assert not book.active
    assert book.declare("sys/q", {"quotas.yaml": QUOTAS}) == ""
    assert book.active
    book.set_namespace("r1", {"group": "research"})
    book.set_namespace("r2", {"group": "research"})
    book.add("a", Usage(80, 16 * GIB, 3))
    # 80 card-% in use + 30 = 110 > 100.
    reason, resolvable = book.check("a", Usage(30, 1 * GIB, 1))
    assert (
        reason
        == (f"namespace a: over vGPU quota team-a: {res.VGPU_CORES} in use 80 + this pod 30 = 110 > limit 100 (card-%)")
        and resolvable
    )
    # 20 fits exactly: 80 + 20 = 100; memory 16 + 4 = 20 GiB fits too.
    assert book.check("a", Usage(20, 4 * GIB, 1)) == ("", True)
    # The group counts both namespaces: 2 (r1) + 1 (r2) in use, a third pod of 1 would make 4 > 3.
    book.add("r1", Usage(0, 0, 2))
    book.add("r2", Usage(0, 0, 1))
    reason, _ = book.check("r2", Usage(0, 0, 1))
    assert "over vGPU quota research: huawei.com/vgpu-number in use 3 + this pod 1 = 4 > limit 3" in reason
    # Freeing one vGPU of the group (a preemption victim) makes room.
    assert book.check("r2", Usage(0, 0, 1), less=Usage(0, 0, 1)) == ("", True)
    # A namespace that leaves the group leaves its quota.
    book.set_namespace("r1", {"group": "other"})
    assert book.check("r2", Usage(0, 0, 1)) == ("", True)
    # No quota on other namespaces.
    assert book.check("free", Usage(1000, 1000 * GIB, 100)) == ("", True)


def test_memory_limit_refuses_a_pod_that_does_not_say_its_memory() -> None:
    book = QuotaBook()
    book.declare("sys/q", {"quotas.yaml": QUOTAS})
    need, unsized = request_usage(parse_pod(pod("w", limits(1), namespace="a")))
    reason, resolvable = book.check("a", need, unsized)
    assert "quota team-a limits huawei.com/vgpu-memory-1Gi, so container 'c0' must give" in reason
    assert not resolvable


def test_changes_apply_and_errors_are_kept_per_source() -> None:
    book = QuotaBook()
    book.declare("sys/q", {"quotas.yaml": QUOTAS})
    book.add("a", Usage(0, 0, 4))
    assert book.check("a", Usage(0, 0, 1))[0]
    # Raised: fits now.
    raised = QUOTAS.replace(f"{res.VGPU_NUMBER}: 4", f"{res.VGPU_NUMBER}: 5")
    assert book.declare("sys/q", {"quotas.yaml": raised}) == ""
    assert book.check("a", Usage(0, 0, 1)) == ("", True)
    # A second source may not declare a name already taken; the first keeps its quotas.
    err = book.declare("sys/other", {"quotas.yaml": QUOTAS})
    assert "quota 'research' is already declared in sys/q" in err or "quota 'team-a' is already declared" in err
    assert [s.quota.name for s in book.status()] == ["research", "team-a"]
    assert "sys/other" in book.errors()
    # An unreadable edit drops that source's quotas (and says why); deleting it clears the error.
    assert "not valid YAML" in book.declare("sys/q", {"quotas.yaml": "quotas: {"})
    assert not book.active and book.check("a", Usage(0, 0, 9)) == ("", True)
    book.drop_source("sys/q")
    book.drop_source("sys/other")
    assert book.errors() == {} and book.sources() == []


def test_usage_never_goes_negative() -> None:
    book = QuotaBook()
    book.declare("sys/q", {"quotas.yaml": QUOTAS})
    book.add("a", Usage(10, 10, 1))
    book.remove("a", Usage(20, 20, 2))
    assert book.status()[1].used == Usage()
