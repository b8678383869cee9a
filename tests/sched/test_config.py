"""Settings: file, flags, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexai_sched import config, demo
from flexai_sched.cli import main


def test_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("node-policy: spread\ngranularity: 10\nheartbeat_ttl_s: 30\n")
    s = config.load(f, granularity=None, port=9000)
    assert (s.node_policy, s.granularity, s.heartbeat_ttl_s, s.port) == ("spread", 10, 30, 9000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("granularity: 7\n", "granularity=7: must divide 100"),
        ("node_policy: tightest\n", "node_policy='tightest': must be one of"),
        ("colour: blue\n", "unknown setting 'colour'"),
        ("tls_cert: /x\n", "tls_cert and tls_key: give both or neither"),
        ("max_vgpus_per_card: 0\n", "max_vgpus_per_card=0: must be at least 1"),
        ("workload_refresh_s: -1\n", r"workload_refresh_s=-1: must be 0 \(off\) or positive"),
        ("workload_min_pods: 0\n", "workload_min_pods=0: must be at least 1"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        config.load(f)


def test_cli_reports_bad_settings_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--granularity", "7"]) == 2
    assert "granularity=7: must divide 100" in capsys.readouterr().err


def test_demo_inventory_file(tmp_path: Path) -> None:
    f = tmp_path / "inv.yaml"
    f.write_text("nodes:\n  - name: a\n    cards: [{model: T4, memoryMiB: 15360, count: 2, maxVgpus: 3}]\n")
    nodes = demo.load_file(f)
    assert [(c.index, c.model, c.max_vgpus) for c in nodes[0].cards] == [(0, "T4", 3), (1, "T4", 3)]
    f.write_text("nodes:\n  - name: a\n    cards: [{model: T4, memoryMiB: -1}]\n")
    with pytest.raises(ValueError, match=r"nodes\[0\].cards\[0\].memoryMiB: must be a positive integer"):
        demo.load_file(f)
