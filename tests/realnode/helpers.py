"""What the real-node scenarios share: waiting on pods, reading what a container was given."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from flexai_core import annotations as ann
from flexai_core.model import Allocation
from flexai_node.hook import config as hook_config
from tests.e2e.controlplane import wait_until

from .conftest import NS, RealCluster
from .pods import MONITOR, PROBE, env_of, json_lines, only

OUT_OF_MEMORY = 2  # CUDA_ERROR_OUT_OF_MEMORY


def pod(core: k8s.CoreV1Api, name: str) -> k8s.V1Pod:
    p: k8s.V1Pod = core.read_namespaced_pod(name, NS)
    return p


def allocation(p: k8s.V1Pod) -> Allocation:
    meta = p.metadata
    text = (meta.annotations or {}).get(ann.POD_ALLOCATION)
    assert text and meta.name, f"pod {meta.name} has no allocation annotation"
    return ann.decode_allocation(NS, meta.name, meta.uid or "", text)


def running(core: k8s.CoreV1Api, name: str) -> bool:
    """Every app container running (and the pod Running)."""
    p = pod(core, name)
    st = p.status
    if st is None or st.phase != "Running":
        return False
    return all(cs.state is not None and cs.state.running is not None for cs in st.container_statuses or [])


def wait_running(cluster: RealCluster, core: k8s.CoreV1Api, names: Iterable[str], timeout: float = 120) -> None:
    want = list(names)

    def done() -> bool:
        return all(running(core, n) for n in want)

    try:
        wait_until(done, timeout, f"pods running: {want[:6]}...", interval=0.5)
    except TimeoutError:
        states = {n: _state(core, n) for n in want if not running(core, n)}
        raise AssertionError(f"not running after {timeout:.0f}s: {states}") from None


def _state(core: k8s.CoreV1Api, name: str) -> Any:
    p = pod(core, name)
    st = p.status
    if st is None:
        return None
    events = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
    return {
        "phase": st.phase,
        "node": p.spec.node_name,
        "reason": st.reason,
        "message": st.message,
        "containers": [(cs.name, cs.state.to_dict() if cs.state else None) for cs in st.container_statuses or []],
        "events": [f"{e.reason}: {e.message}" for e in events][-4:],
    }


@dataclass(frozen=True)
class Given:
    """What a container's first process got: its environment and its hook config."""

    env: dict[str, str]
    config: hook_config.HookConfig
    config_text: str
    maps: str


def given(cluster: RealCluster, pod_name: str, container: str) -> Given:
    """One exec: the first process's environ, the config its env names, its memory map."""
    script = 'tr "\\0" "\\n" < /proc/1/environ; echo @@@; cat "$FLEXAI_VGPU_CONFIG"; echo @@@; cat /proc/1/maps'
    r = cluster.node.exec(pod_name, container, ["/bin/sh", "-c", script])
    assert r.returncode == 0, f"{pod_name}/{container}: {r.stdout} {r.stderr}"
    environ, config, maps = r.stdout.split("@@@\n")
    return Given(env_of(environ), hook_config.parse(config), config, maps)


def probe(cluster: RealCluster, pod_name: str, container: str, *args: str, timeout: float = 60) -> list[dict[str, Any]]:
    r = cluster.node.exec(pod_name, container, [PROBE, *args], timeout=timeout)
    lines = json_lines(r.stdout)
    assert r.returncode == 0 and lines, f"slice_probe {args}: rc {r.returncode}: {r.stdout} {r.stderr}"
    return lines


def monitor(cluster: RealCluster, pod_name: str, container: str) -> dict[str, Any]:
    r = cluster.node.exec(pod_name, container, [*MONITOR, "-p", "0.5", "-o", "json"])
    assert r.returncode == 0, f"gpu-monitor: {r.stdout} {r.stderr}"
    report: dict[str, Any] = only(json_lines(r.stdout))
    return report


class Background:
    """A call run on a thread; ``result()`` joins it and returns (or raises) its outcome."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._out: list[Any] = []
        self._err: list[BaseException] = []
        self._t = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._t.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._out.append(fn())
        except BaseException as e:  # handed to the caller by result()
            self._err.append(e)

    def result(self, timeout: float = 120) -> Any:
        self._t.join(timeout)
        assert not self._t.is_alive(), "background call still running"
        if self._err:
            raise self._err[0]
        return self._out[0]
