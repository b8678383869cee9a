from __future__ import annotations

from pathlib import Path

import pytest

from flexai_core.model import FULL_CORES
from flexai_sched.sim import trace
from tests.sim.conftest import write_trace


def test_nodes_become_cards_of_the_stated_size(tiny: Path) -> None:
    t = trace.load(tiny)
    inv = t.nodes[0].inventory()
    assert [c.model for c in inv.cards] == ["T4"]
    assert inv.cards[0].memory_mib == 16 * 1024
    assert inv.cards[0].max_vgpus == trace.MAX_SLICES_PER_CARD
    assert t.gpu_capacity_milli == 2000


@pytest.mark.parametrize(
    ("row", "vgpus", "cores", "memory"),
    [
        # 47% of a card: 47 cores, 47% of the smallest (16 GiB) card = 7700.48 -> 7700 MiB.
        ("p,1000,1024,1,470,", 1, 47, 7700),
        ("p,1000,1024,2,1000,", 2, FULL_CORES, None),  # whole cards take all memory
        ("p,1000,1024,1,1000,", 1, FULL_CORES, None),
    ],
    ids=["share", "two-whole", "one-whole"],
)
def test_pod_requests(tmp_path: Path, row: str, vgpus: int, cores: int, memory: int | None) -> None:
    t = trace.load(write_trace(tmp_path, ["n0,8000,32768,2,T4"], [row]))
    req = trace.request(t.pods[0], "u", trace.smallest_card_mib(t.pods[0].gpu_spec, ["T4", "V100M32"]))
    (c,) = req.containers
    assert (c.vgpus, c.cores, c.memory_mib) == (vgpus, cores, memory)


def test_cpu_only_pod_asks_for_no_gpu(tmp_path: Path) -> None:
    t = trace.load(write_trace(tmp_path, ["n0,8000,32768,2,T4"], ["p,4000,1024,0,0,"]))
    assert not trace.request(t.pods[0], "u", 16384).wants_gpu
    assert t.pods[0].gpu_demand_milli == 0


def test_gpu_spec_becomes_the_selector(tmp_path: Path) -> None:
    t = trace.load(write_trace(tmp_path, ["n0,8000,32768,2,T4"], ["p,1000,1024,1,500,T4|A10"]))
    req = trace.request(t.pods[0], "u", trace.smallest_card_mib(t.pods[0].gpu_spec, ["T4", "A10", "V100M32"]))
    assert req.selector.models == {"T4", "A10"}
    assert trace.smallest_card_mib(frozenset({"V100M32"}), ["T4", "V100M32"]) == 32 * 1024


@pytest.mark.parametrize(
    ("row", "message"),
    [("p,1000,1024,2,500,", "share of one GPU"), ("p,x,1024,1,500,", "cpu_milli='x'"), ("p,1000,1024,1,455,", "share")],
    ids=["share-on-two", "not-a-number", "not-a-whole-percent"],
)
def test_bad_rows_are_named(tmp_path: Path, row: str, message: str) -> None:
    folder = write_trace(tmp_path, ["n0,8000,32768,2,T4"], [row])
    with pytest.raises(trace.TraceError, match=message) as e:
        trace.load(folder)
    assert "openb_pod_list_default.csv:2" in str(e.value)


def test_unknown_model_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(trace.TraceError, match="without a memory size: H200"):
        trace.load(write_trace(tmp_path / "a", ["n0,8000,32768,2,H200"], []))
    with pytest.raises(trace.TraceError, match="openb_pod_list_cpu050.csv"):
        trace.load(write_trace(tmp_path / "b", ["n0,8000,32768,2,T4"], []), "cpu050")


def test_optional_columns_take_their_defaults(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,8000,32768,2,T4\n")
    (tmp_path / "openb_pod_list_x.csv").write_text("num_gpu,gpu_milli\n1,500\n2,1000\n")
    t = trace.load_files(tmp_path / "n.csv", tmp_path / "openb_pod_list_x.csv")
    assert t.variant == "x" and not t.published  # named by its file; not the published cluster
    assert [(p.name, p.cpu_milli, p.memory_mib, p.gpu_spec) for p in t.pods] == [
        ("pod-2", 0, 0, frozenset()),
        ("pod-3", 0, 0, frozenset()),
    ]
    (tmp_path / "bad.csv").write_text("name,num_gpu\na,1\n")
    with pytest.raises(trace.TraceError, match="missing columns gpu_milli"):
        trace.load_files(tmp_path / "n.csv", tmp_path / "bad.csv")
