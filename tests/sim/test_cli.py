from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexai_sched.cli import main
from tests.sim.conftest import write_trace


def test_sim_prints_the_table_and_writes_csv_png_json(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "sim",
            "--trace",
            str(tiny),
            "--policies",
            "fragmentation,fragmentation:cards,spread",
            "--seeds",
            "42,43",
            "--out",
            str(out),
            "--raw",
            str(out / "runs.json"),
            "--no-progress",
        ]
    )
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
    [
        (["--policies", "nope"], "policy 'nope'"),
        (["--variants", "cpu999"], "variant 'cpu999'"),
        (["--seeds", "a-b"], "seeds"),
    ],
    ids=["policy", "variant", "seeds"],
)
def test_sim_rejects_bad_arguments(
    tiny: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "--trace", str(tiny), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_sim_names_a_missing_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--trace", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "openb_node_list_gpu_node.csv" in capsys.readouterr().err


def test_sim_takes_a_pod_list_without_gpu_spec_and_a_node_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As the published multigpu files: five columns, no gpu_spec (any model).
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,8000,32768,1,T4\nn1,8000,32768,1,V100M32\n")
    pods = tmp_path / "my_pods.csv"
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1000,1024,1,500\nb,1000,1024,1,1000\n")
    rc = main(
        [
            "sim",
            "--trace",
            str(pods),
            "--nodes",
            str(nodes),
            "--policies",
            "fragmentation,fgd",
            "--seeds",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "| my_pods | fragmentation | 1 |" in text and "| my_pods | fgd | 1 |" in text


def test_sim_takes_any_pod_list_of_a_folder_and_generated_variants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"p{i},1000,1024,1,{'1000' if i % 3 else '470'}," for i in range(30)] + ["m,4000,4096,2,1000,"]
    folder = write_trace(tmp_path / "t", ["n0,64000,262144,4,G2", "n1,16000,65536,2,T4"], rows)
    write_trace(folder, ["n0,64000,262144,4,G2", "n1,16000,65536,2,T4"], rows[:5], variant="mine")
    rc = main(
        [
            "sim",
            "--trace",
            str(folder),
            "--variants",
            "mine,gen-gpuspec33,gen-multigpu50",
            "--policies",
            "fgd",
            "--seeds",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("mine", "gen-gpuspec33", "gen-multigpu50"):
        assert f"| {name} | fgd | 1 |" in text


def test_published_figures_only_for_the_published_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A file named as the published default, on another cluster: no paper column filled.
    folder = write_trace(tmp_path / "t", ["n0,8000,32768,1,T4"], ["a,1000,1024,1,500,"])
    assert main(["sim", "--trace", str(folder), "--policies", "fgd", "--seeds", "1", "--no-progress"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| default | fgd"))
    assert row.split("|")[5].strip() == ""  # the paper @100% column


def test_the_default_trace_is_found_from_the_working_folder_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flexai_sched.sim import cli

    found = write_trace(tmp_path / "shared" / "traces" / "alibaba-gpu-v2023", ["n0,8000,32768,1,T4"], [])
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.delenv(cli.TRACE_ENV, raising=False)
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert cli.default_trace() == found  # from a folder above the working one
    monkeypatch.setenv(cli.TRACE_ENV, str(tmp_path / "elsewhere"))
    assert cli.default_trace() == tmp_path / "elsewhere"
