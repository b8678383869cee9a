"""The generated stress workloads: constrained and multi-GPU shares as specified."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from flexai_sched.sim import trace, variants
from flexai_sched.sim.trace import TracePod
from tests.sim.conftest import write_trace


def pods() -> tuple[TracePod, ...]:
    """385 pods: 150 shares, 150 one-card, 5 of 2/4/8 cards (about 10% of the GPU demand), 80 without GPUs."""
    out = [TracePod(f"s{i}", 4000, 1024, 1, 10 * (1 + i % 90), frozenset()) for i in range(150)]
    out += [TracePod(f"w{i}", 8000, 2048, 1, 1000, frozenset()) for i in range(150)]
    out += [TracePod(f"m{i}", 32000, 8192, (2, 4, 8)[i % 3], 1000, frozenset()) for i in range(5)]
    out += [TracePod(f"c{i}", 2000, 512, 0, 0, frozenset()) for i in range(80)]
    return tuple(out)


@pytest.mark.parametrize("pct", variants.GPUSPEC)
def test_gpuspec_constrains_that_share_of_gpu_pods(pct: int) -> None:
    base = pods()
    got = variants.gpuspec(base, pct / 100, random.Random(1))
    # 305 GPU pods: round(pct% x 305) carry a constraint, e.g. 33% -> 101 (33.1%).
    assert sum(1 for p in got if p.gpu_spec) == round(pct / 100 * 305)
    assert variants.constrained_share(got) == pytest.approx(pct / 100, abs=1 / 305)
    # Row for row the same pods; only gpu_spec changes, and only on GPU pods, from the mix.
    mix = {k: {frozenset(s.split("|")) for s, _ in v} for k, v in variants.SPEC_MIX.items()}
    for old, new in zip(base, got, strict=True):
        assert (old.name, old.num_gpu, old.gpu_milli, old.cpu_milli) == (
            new.name,
            new.num_gpu,
            new.gpu_milli,
            new.cpu_milli,
        )
        if new.gpu_spec:
            assert new.num_gpu and new.gpu_spec in mix["share" if new.gpu_milli < 1000 else "whole"]


@pytest.mark.parametrize("pct", variants.MULTIGPU)
def test_multigpu_adds_multi_gpu_pods_to_that_share_of_gpu_demand(pct: int) -> None:
    base = pods()
    got = variants.multigpu(base, pct / 100, random.Random(1))
    assert got[: len(base)] == base  # every pod of the list kept, in order
    added = got[len(base) :]
    assert added and all(p.num_gpu >= 2 and p.gpu_milli == 1000 for p in added)
    assert len({p.name for p in got}) == len(got)
    # At least the share, and the last pod added (at most 8 cards) crossed it.
    share = variants.multigpu_share(got)
    assert pct / 100 <= share
    assert variants.multigpu_share(got[:-1]) < pct / 100


def test_generated_variants_are_the_same_every_time(tmp_path: Path) -> None:
    rows = [f"p{i},4000,1024,1,{'1000' if i % 2 else '470'}," for i in range(60)] + ["m,32000,8192,8,1000,"]
    base = trace.load(write_trace(tmp_path, ["n0,64000,262144,8,G2", "n1,16000,65536,2,T4"], rows))
    for name in variants.GENERATED:
        first, again = variants.generate(base, name), variants.generate(base, name)
        assert first == again and first.variant == name and first.nodes == base.nodes
        assert not first.published
    with pytest.raises(ValueError, match="gen-nope"):
        variants.generate(base, "gen-nope")
