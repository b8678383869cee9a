"""The agent against the real kube-apiserver (tests/e2e harness): the Node patch, finding
pods bound through the Binding subresource, and Allocate for pods bound together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_core.model import Allocation
from flexai_node.admission import NoCandidate, PodRefused
from flexai_node.admitter import REFUSED_REASON, NodeAdmitter
from flexai_node.agent import AgentSettings, NodeAgent
from flexai_node.deviceplugin.devices import device_id
from flexai_node.deviceplugin.kubelet_pods import PodResourcesClient
from flexai_node.grant import GrantBuilder
from flexai_node.hook.files import HookConfigFiles
from flexai_node.inventory import CardReading, FileInventory, dumps
from flexai_node.kube import KubeError, KubeNodeApi
from flexai_node.ledger import Ledger
from flexai_node.workdirs import Workdirs
from tests.e2e.controlplane import ControlPlane, make_fake_node, wait_until

from .conftest import HOOK, config_of
from .fakes import CARDS, slice_on

pytestmark = pytest.mark.e2e
A, B = CARDS
NODE = "gpu-e2e"


def limits_of(vgpus: int, slices: list[Any]) -> dict[str, str]:
    """What a container asks for to be given these slices (the agent checks they match)."""
    first = slices[0]
    return {
        res.VGPU_NUMBER: str(vgpus),
        res.VGPU_CORES: str(first.cores),
        res.VGPU_MEMORY: str(first.memory_mib // 1024),
    }


def create_pod(core: k8s.CoreV1Api, name: str, containers: dict[str, int], slices: list[Any]) -> k8s.V1Pod:
    """A vGPU pod with its allocation annotation, left unbound: nobody schedules it
    (unknown schedulerName), the test binds it as the extender would."""
    alloc = Allocation.build("default", name, "", NODE, tuple(slices))
    body = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations={ann.POD_ALLOCATION: ann.encode_allocation(alloc)}),
        spec=k8s.V1PodSpec(
            scheduler_name="nobody",
            containers=[
                k8s.V1Container(
                    name=c,
                    image="registry.invalid/fake:1",
                    resources=k8s.V1ResourceRequirements(limits=limits_of(n, [s for s in slices if s.container == c])),
                )
                for c, n in containers.items()
            ],
        ),
    )
    pod: k8s.V1Pod = core.create_namespaced_pod("default", body)
    return pod


def bind(core: k8s.CoreV1Api, name: str) -> None:
    body = k8s.V1Binding(metadata=k8s.V1ObjectMeta(name=name), target=k8s.V1ObjectReference(kind="Node", name=NODE))
    # The client cannot deserialise the Status the API returns for a Binding: keep it raw.
    resp: Any = core.create_namespaced_pod_binding(name, "default", body, _preload_content=False)
    resp.release_conn()


@pytest.fixture
def node_api(control_plane: ControlPlane, core_api: k8s.CoreV1Api) -> Any:
    make_fake_node(core_api, NODE)
    api = KubeNodeApi.connect(str(control_plane.kubeconfig))
    yield api
    api.close()


def test_reporter_patches_the_node_and_the_scheduler_can_read_it(
    node_api: KubeNodeApi, core_api: k8s.CoreV1Api, tmp_path: Path
) -> None:
    inventory = tmp_path / "cards.json"
    inventory.write_text(dumps([CardReading(A, 5, 1000), CardReading(B, 0, 0)]))
    create_pod(core_api, "held", {"main": 1}, [slice_on(A, "main", 30, 4096)])
    bind(core_api, "held")
    agent = NodeAgent(
        AgentSettings(NODE, tmp_path / "state", Path("/hook.so"), plugin_dir=tmp_path / "dp", metrics_port=None),
        node_api,
        FileInventory(inventory),
    )
    agent.tick()
    node = core_api.read_node(NODE)
    assert node.metadata is not None and node.metadata.annotations is not None
    annotations: dict[str, str] = node.metadata.annotations
    inv = ann.decode_inventory(NODE, annotations[ann.NODE_INVENTORY])
    assert [c.uuid for c in inv.cards] == [A.uuid, B.uuid] and inv.heartbeat is not None
    cards = json.loads(annotations[ann.NODE_INVENTORY])["cards"]
    # 1000 MiB used on A, 4096 held by "held": nothing used by others yet.
    assert (cards[0]["allocatedCores"], cards[0]["allocatedMiB"], cards[0]["usedOutsideMiB"]) == (30, 4096, 0)
    assert annotations["kwok.x-k8s.io/node"] == "fake"  # a patch, not a replace


def admitter_for(node_api: KubeNodeApi, state: Path, kubelet: Any = None) -> NodeAdmitter:
    workdirs = Workdirs(state / "c")
    return NodeAdmitter(
        NODE,
        node_api,
        Ledger(state / "ledger.json"),
        workdirs,
        GrantBuilder(HookConfigFiles(workdirs.root, HOOK)),
        lambda: CARDS,
        kubelet,
    )


def host_dir(grant: Any) -> Path:
    return Path(next(m.host_path for m in grant.mounts if m.container_path == "/etc/flexai/vgpu.conf")).parent


def test_pods_bound_together_are_admitted_as_the_kubelet_admits_them(
    node_api: KubeNodeApi, core_api: k8s.CoreV1Api, short_tmp: Path
) -> None:
    """The kubelet's PodResources view (faked: no real kubelet here) names the pod being
    admitted; the API server (real) gives its allocation. The kubelet here admits in an
    order opposite to the binds, and each container still gets its own pod's slice."""
    from .fake_kubelet import FakePodResources

    create_pod(core_api, "first", {"main": 1}, [slice_on(A, "main", 50, 4096)])
    create_pod(core_api, "second", {"main": 1}, [slice_on(B, "main", 50, 8192)])
    create_pod(
        core_api,
        "two",
        {"a": 1, "b": 2},
        [slice_on(A, "a", 10, 4096), slice_on(A, "b", 10, 4096), slice_on(B, "b", 10, 4096)],
    )
    for name in ("first", "second", "two"):
        bind(core_api, name)  # within a second or two
    kubelet = FakePodResources(short_tmp / "pr" / "kubelet.sock")
    kubelet.start()
    try:
        admitter = admitter_for(node_api, short_tmp, PodResourcesClient(kubelet.socket))
        uids = {p.name: p.uid for p in admitter.bound_pods()}
        held: dict[str, dict[str, list[str]]] = {}
        got = []
        for pod, container, size in (("two", "a", 1), ("two", "b", 2), ("second", "main", 1), ("first", "main", 1)):
            held.setdefault(f"default/{pod}", {}).setdefault(container, [])
            kubelet.pods = held
            ids = [device_id(A.uuid, k) for k in range(size)]
            (grant,) = admitter.allocate([ids])
            held[f"default/{pod}"][container] = ids  # the kubelet records what it allocated
            got.append((host_dir(grant).parent.name, host_dir(grant).name, grant.envs["NVIDIA_VISIBLE_DEVICES"]))
    finally:
        kubelet.stop()
    assert got == [
        (uids["two"], "a", A.uuid),
        (uids["two"], "b", f"{A.uuid},{B.uuid}"),
        (uids["second"], "main", B.uuid),
        (uids["first"], "main", A.uuid),
    ]
    assert config_of(host_dir_of(short_tmp, uids["second"])).vgpus[0].memory_bytes == 8192 << 20


def host_dir_of(state: Path, uid: str) -> Path:
    return state / "c" / uid / "main"


def test_without_the_kubelet_view_pods_bound_together_still_get_distinct_slices(
    node_api: KubeNodeApi, core_api: k8s.CoreV1Api, tmp_path: Path
) -> None:
    create_pod(core_api, "p1", {"main": 1}, [slice_on(A, "main", 50, 4096)])
    create_pod(core_api, "p2", {"main": 1}, [slice_on(B, "main", 50, 4096)])
    bind(core_api, "p1")
    bind(core_api, "p2")
    admitter = admitter_for(node_api, tmp_path)
    grants = [admitter.allocate([[device_id(A.uuid, 0)]])[0] for _ in range(2)]
    assert sorted(g.envs["NVIDIA_VISIBLE_DEVICES"] for g in grants) == [A.uuid, B.uuid]
    assert len({host_dir(g) for g in grants}) == 2
    with pytest.raises(NoCandidate):
        admitter.allocate([[device_id(A.uuid, 0)]])
    # Once a pod is deleted, its directories go.
    gone = host_dir(grants[0]).parent.name
    core_api.delete_namespaced_pod(
        next(p.name for p in admitter.bound_pods() if p.uid == gone), "default", grace_period_seconds=0
    )
    wait_until(lambda: gone not in {p.uid for p in admitter.bound_pods()}, 30, "the pod deleted")
    assert admitter.prune() == [gone]
    assert not host_dir(grants[0]).exists() and host_dir(grants[1]).exists()


def test_a_self_granted_allocation_is_refused_with_an_event_on_the_pod(
    node_api: KubeNodeApi, core_api: k8s.CoreV1Api, tmp_path: Path
) -> None:
    # The finding on a real apiserver (no admission policy here): the pod asks for 20% and
    # 4 GiB and carries an allocation of no compute limit and the whole card.
    create_pod(core_api, "greedy", {"main": 1}, [slice_on(A, "main", 20, 4096)])
    whole = Allocation.build("default", "greedy", "", NODE, (slice_on(A, "main", 0, A.memory_mib),))
    core_api.patch_namespaced_pod(
        "greedy", "default", {"metadata": {"annotations": {ann.POD_ALLOCATION: ann.encode_allocation(whole)}}}
    )
    bind(core_api, "greedy")
    admitter = admitter_for(node_api, tmp_path)
    with pytest.raises(PodRefused) as e:
        admitter.allocate([[device_id(A.uuid, 0)]])
    assert (
        "container 'main' asks for 20 percent of a card's cores per vGPU, the allocation gives 0 percent on card 0"
        in str(e.value)
    )
    assert not list((tmp_path / "c").glob("*/main"))  # no hook config was written
    events = core_api.list_namespaced_event("default", field_selector="involvedObject.name=greedy").items
    (event,) = [ev for ev in events if ev.reason == REFUSED_REASON]
    assert event.type == "Warning" and event.involved_object.kind == "Pod"
    assert event.involved_object.uid == e.value.pod.uid
    assert event.message.startswith(f"flexai-node on {NODE}: pod default/greedy: vgpu.flexai.io/allocation is not")


def test_an_unreachable_api_server_is_a_kube_error(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "x", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
            }
        )
    )
    api = KubeNodeApi.connect(str(cfg))
    with pytest.raises(KubeError, match="cannot list the pods of node n"):
        api.list_pods("n")
    api.close()


def test_flexai_node_cli_runs_the_agent(control_plane: ControlPlane, core_api: k8s.CoreV1Api, short_tmp: Path) -> None:
    """The command itself: registers with the (fake) kubelet, writes the node annotation
    to the real API server, serves metrics, and exits cleanly on SIGTERM."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from tests.e2e.controlplane import free_port

    from .fake_kubelet import FakeKubelet

    make_fake_node(core_api, NODE)
    kubelet = FakeKubelet(short_tmp / "dp")
    kubelet.start()
    inventory = short_tmp / "cards.yaml"
    inventory.write_text(dumps([CardReading(A), CardReading(B)]))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flexai_node.cli",
            "--node-name",
            NODE,
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "--inventory",
            f"file:{inventory}",
            "--device-plugin-dir",
            str(kubelet.dir),
            "--state-dir",
            str(short_tmp / "state"),
            "--metrics-port",
            str(port),
            "--metrics-address",
            "127.0.0.1",
            "--hook-library",
            "/hook.so",
            "--pod-resources-socket",
            "",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert kubelet.registrations.get(timeout=60).resource_name == res.VGPU_NUMBER
        assert len(kubelet.device_lists.get(timeout=30)) == 10

        def annotated() -> bool:
            node = core_api.read_node(NODE)
            return bool(node.metadata and ann.NODE_INVENTORY in (node.metadata.annotations or {}))

        wait_until(annotated, 60, "the node annotation")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert f'flexai_card_healthy{{node="{NODE}",uuid="{A.uuid}"}} 1.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        kubelet.stop()
    assert proc.returncode == 0, out[-4000:]
