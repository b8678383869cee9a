from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexai_sched.cli import main


def test_sim_prints_the_table_and_writes_csv_png_json(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["sim", "--trace", str(tiny), "--policies", "fragmentation,fragmentation:cards,spread", "--seeds", "42,43",
               "--out", str(out), "--raw", str(out / "runs.json"), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| default | fragmentation | 2 |" in text and "| default | spread | 2 |" in text
    assert "| default | fragmentation:cards | 2 |" in text
    rows = (out / "trace-replay.csv").read_text().splitlines()
    assert rows[0].startswith("variant,policy,seeds,arrived_pct")
    assert (out / "trace-replay.png").read_bytes()[:4] == b"\x89PNG"
    runs = json.loads((out / "runs.json").read_text())
    assert {r["seed"] for r in runs} == {42, 43}
    # Reporting saved runs prints the same table.
    assert main(["sim", "--from", str(out / "runs.json")]) == 0
    assert capsys.readouterr().out.splitlines()[:5] == text.splitlines()[:5]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--policies", "nope"], "policy 'nope'"), (["--variants", "cpu999"], "variant 'cpu999'"), (["--seeds", "a-b"], "seeds")],
    ids=["policy", "variant", "seeds"],
)
def test_sim_rejects_bad_arguments(tiny: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--trace", str(tiny), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_sim_names_a_missing_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--trace", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "openb_node_list_gpu_node.csv" in capsys.readouterr().err
