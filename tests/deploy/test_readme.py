"""deploy/README.md's workload example is real: the apiserver accepts it (server-side
dry run, strict fields), it asks for the chart's scheduler, and flexai-sched reads its
vGPU request as the text says."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from flexai_core.model import ContainerRequest
from flexai_core.requests import parse_pod
from tests.e2e.controlplane import ControlPlane

from .chart import CHART
from .kubeapi import Objects, close, ensure_namespace

pytestmark = pytest.mark.e2e

README = CHART.parents[2] / "deploy" / "README.md"


def _example() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    docs = [d for block in blocks for d in yaml.safe_load_all(block) if d and "kind" in d]
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    return docs


def test_readme_example_is_accepted_and_asks_for_a_vgpu(control_plane: ControlPlane) -> None:
    deployment, service = _example()
    template = deployment["spec"]["template"]
    default_name = yaml.safe_load((CHART / "values.yaml").read_text())["scheduler"]["name"]
    assert template["spec"]["schedulerName"] == default_name
    request = parse_pod(template)
    assert request.containers == (ContainerRequest("deepseek-r1", vgpus=1, cores=50, memory_mib=24 * 1024),)

    api = control_plane.api_client()
    try:
        ensure_namespace(k8s.CoreV1Api(api), deployment["metadata"]["namespace"])
        objects = Objects(api)
        for doc in (deployment, service):
            objects.create(doc, dry_run=True)
    finally:
        close(api)
