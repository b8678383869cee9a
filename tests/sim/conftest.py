"""Small hand-made traces in the published CSV format."""

from __future__ import annotations

from pathlib import Path

import pytest

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
)


def write_trace(folder: Path, nodes: list[str], pods: list[str], variant: str = "default") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "openb_node_list_gpu_node.csv").write_text(NODE_HEADER + "".join(n + "\n" for n in nodes))
    (folder / f"openb_pod_list_{variant}.csv").write_text(POD_HEADER + "".join(p + ",LS,Running,0,1,0\n" for p in pods))
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two 1-card T4 nodes; pods of half a card and of a whole card."""
    return write_trace(
        tmp_path / "tiny",
        ["n0,8000,32768,1,T4", "n1,8000,32768,1,T4"],
        ["half,1000,1024,1,500,", "whole,1000,1024,1,1000,"],
    )
