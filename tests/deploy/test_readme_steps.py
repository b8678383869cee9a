"""deploy/README.md's command blocks are the helm test's steps (tests/realnode/readme.py):
every block is a named step, the ones marked run are what test_helm_install.py runs, in its
order, with the variables it sets; and the one-machine values the README writes render into
the chart as that machine needs, while the defaults stay as a real cluster wants them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.realnode import readme

from .chart import Helm, HelmError

# Names the run steps assign themselves (loop variables), not given by the test.
_LOCAL = {"ref", "archive"}


def test_every_bash_block_is_a_named_step_and_the_run_ones_are_the_tests() -> None:
    all_steps = readme.steps()
    assert [s.name for s in all_steps if s.run] == list(readme.RUN)
    for s in all_steps:
        assert s.run or s.reason, f"step {s.name}: not run, and no reason given"


def test_the_run_steps_use_exactly_the_variables_the_test_sets() -> None:
    used = {v for s in readme.run_steps().values() for v in re.findall(r"\$\{?([A-Z_a-z][A-Za-z0-9_]*)", s.script)}
    assert used - _LOCAL == set(readme.VARIABLES)


@pytest.mark.parametrize(
    "broken, message",
    [
        ("```bash\necho unmarked\n```\n", "bash blocks"),
        ("<!-- step: install (run) -->\n```bash\nhelm version\n```\n", "used twice"),
    ],
)
def test_a_readme_out_of_step_is_refused(broken: str, message: str) -> None:
    with pytest.raises(readme.ReadmeError, match=message):
        readme.steps(readme.README.read_text() + "\n" + broken)


def test_a_run_step_marked_not_run_is_refused() -> None:
    text = readme.README.read_text().replace("<!-- step: policy (run) -->", "<!-- step: policy (not run: x) -->")
    with pytest.raises(readme.ReadmeError, match="the test runs"):
        readme.run_steps(text)


def _one_machine_values(tmp_path: Path) -> dict[str, object]:
    """The README's values-one-machine step, run as written with the test's variables."""
    env = {name: str(20000 + i) for i, name in enumerate(readme.VARIABLES)}
    env.update(
        NODE="n1",
        INVENTORY="/srv/cards.json",
        POD_RESOURCES_DIR="/k/pod-resources",
        STATE_DIR="/srv/state",
        HOOK_DIR="/srv/hook",
    )
    script = readme.run_steps()["values-one-machine"].script
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env}, check=True
    )
    values: dict[str, object] = yaml.safe_load((tmp_path / "flexai-values.yaml").read_text())
    return values


def test_the_one_machine_values_put_both_pods_on_the_node_network(helm: Helm, tmp_path: Path) -> None:
    r = helm.template(_one_machine_values(tmp_path))
    sched, agent = r.one("Deployment"), r.one("DaemonSet")
    for workload in (sched, agent):
        assert workload["spec"]["template"]["spec"]["hostNetwork"] is True
    # The node's ports are held by the running pod: an upgrade stops it first.
    assert sched["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    for kind, name in (("Deployment", "kube-scheduler"), ("Deployment", "extender"), ("DaemonSet", "agent")):
        env = {e["name"]: e.get("value") for e in r.container(kind, name).get("env", [])}
        port = str(20000 + readme.VARIABLES.index("APISERVER_PORT"))
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("127.0.0.1", port), (kind, name)
    env = {e["name"]: e.get("value") for e in r.container("DaemonSet", "agent")["env"]}
    assert env["FLEXAI_INVENTORY"] == "file:/srv/cards.json"
    assert env["FLEXAI_POD_RESOURCES_SOCKET"] == "/k/pod-resources/kubelet.sock"
    mounts = {m["mountPath"]: m for m in r.container("DaemonSet", "agent")["volumeMounts"]}
    assert mounts["/srv/cards.json"]["readOnly"] is True
    volumes = {v["name"]: v for v in agent["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/srv/cards.json"]["name"]]["hostPath"] == {"path": "/srv/cards.json", "type": "File"}


def test_by_default_the_pods_use_the_cluster_network_nvml_and_the_in_cluster_apiserver(helm: Helm) -> None:
    r = helm.template()
    sched, agent = r.one("Deployment"), r.one("DaemonSet")
    for workload in (sched, agent):
        assert "hostNetwork" not in workload["spec"]["template"]["spec"]
    assert "strategy" not in sched["spec"]
    for kind, name in (("Deployment", "kube-scheduler"), ("Deployment", "extender"), ("DaemonSet", "agent")):
        names = {e["name"] for e in r.container(kind, name).get("env", [])}
        assert not names & {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}, (kind, name)
    env = {e["name"]: e.get("value") for e in r.container("DaemonSet", "agent")["env"]}
    assert env["FLEXAI_INVENTORY"] == "nvml"
    assert {v["name"] for v in agent["spec"]["template"]["spec"]["volumes"]} == {
        "device-plugins",
        "pod-resources",
        "state",
        "hook",
        "tmp",
    }


def test_an_apiserver_host_without_a_port_fails_at_render_time(helm: Helm) -> None:
    with pytest.raises(HelmError, match="apiServer.host needs apiServer.port"):
        helm.template({"apiServer": {"host": "10.1.2.3"}})
