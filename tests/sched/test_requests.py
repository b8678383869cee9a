"""Parsing and validation of vGPU requests: every rule, every bad case."""

from __future__ import annotations

import pytest

from flexai_core import annotations as ann
from flexai_core import resources as res
from flexai_core.model import FULL_CORES
from flexai_core.requests import RequestError, RequestRules, _quantity, parse_pod

from .fixtures import limits, pod


@pytest.mark.parametrize(
    ("lim", "expect"),
    [
        # (vgpus, cores, memory MiB or None = all of the card)
        pytest.param(limits(1), (1, FULL_CORES, None), id="number-alone-is-a-whole-card"),
        pytest.param(limits(2, cores=30), (2, 30, None), id="cores-without-memory-gets-all-memory"),
        pytest.param(limits(1, memory_gib=3), (1, 0, 3 * 1024), id="memory-without-cores-has-no-compute-limit"),
        pytest.param(limits(1, cores=20, memory_gib=3), (1, 20, 3072), id="cores-and-memory"),
        pytest.param(limits(1, cores=0, memory_gib=4), (1, 0, 4096), id="cores-zero"),
        pytest.param(limits(1, cores=100), (1, 100, None), id="exclusive"),
        pytest.param({res.VGPU_NUMBER: 1, res.VGPU_MEMORY_ALT: "2"}, (1, 0, 2048), id="seed-spelling-of-memory"),
    ],
)
def test_semantics(lim: dict[str, object], expect: tuple[int, int, int | None]) -> None:
    req = parse_pod(pod("p", lim))
    c = req.containers[0]
    assert (c.vgpus, c.cores, c.memory_mib) == expect


def test_requests_equal_to_limits_are_accepted_and_requests_alone_too() -> None:
    both = {"name": "m", "resources": {"limits": limits(1, cores=20), "requests": limits(1, cores=20)}}
    only_requests = {"name": "m", "resources": {"requests": limits(1, cores=20)}}
    assert parse_pod(pod("a", both)).containers[0].cores == 20
    assert parse_pod(pod("b", only_requests)).containers[0].cores == 20


@pytest.mark.parametrize(
    ("lim", "message"),
    [
        pytest.param(
            limits(1, cores=130), 'container "c0": huawei.com/vgpu-cores=130: must be at most 100', id="cores>100"
        ),
        pytest.param(limits(1, cores=22), "huawei.com/vgpu-cores=22: must be a multiple of 5", id="granularity"),
        pytest.param(
            limits(1, cores=-5), "huawei.com/vgpu-cores='-5': must be a whole non-negative number", id="negative"
        ),
        pytest.param(limits(1, memory_gib=0), "huawei.com/vgpu-memory-1Gi=0: must be at least 1 GiB", id="memory-zero"),
        pytest.param({res.VGPU_NUMBER: "1.5"}, "huawei.com/vgpu-number='1.5': must be a whole", id="fraction"),
        pytest.param({res.VGPU_NUMBER: "2Gi"}, "huawei.com/vgpu-number='2Gi'", id="suffix"),
        pytest.param({res.VGPU_CORES: "20"}, "need huawei.com/vgpu-number >= 1", id="cores-without-number"),
        pytest.param(
            {res.VGPU_NUMBER: "1", res.VGPU_MEMORY: "1", res.VGPU_MEMORY_ALT: "1"},
            "give memory once",
            id="both-memory-spellings",
        ),
        pytest.param({res.VGPU_NUMBER: "65"}, "more than 64 vGPUs", id="absurd-count"),
    ],
)
def test_bad_requests_name_container_resource_and_rule(lim: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError) as e:
        parse_pod(pod("p", lim))
    assert message in str(e.value)


def test_requests_differing_from_limits_are_rejected() -> None:
    c = {"name": "m", "resources": {"limits": limits(1, cores=20), "requests": limits(1, cores=30)}}
    with pytest.raises(
        RequestError, match=r'container "m": huawei.com/vgpu-cores: requests \(30\) must equal limits \(20\)'
    ):
        parse_pod(pod("p", c))


def test_every_error_of_a_pod_is_reported_at_once() -> None:
    with pytest.raises(RequestError) as e:
        parse_pod(pod("p", limits(1, cores=130), limits(1, cores=22)))
    assert len(e.value.reasons) == 2


def test_granularity_is_a_setting() -> None:
    assert parse_pod(pod("p", limits(1, cores=22)), RequestRules(granularity=1)).containers[0].cores == 22


def test_init_containers_and_sidecars() -> None:
    sidecar = {"name": "side", "restartPolicy": "Always", "resources": {"limits": limits(1, cores=10)}}
    req = parse_pod(pod("p", limits(1, cores=50), init=(limits(2, cores=20), sidecar)))
    assert [c.name for c in req.containers] == ["c0", "side"]  # a sidecar runs beside the app
    assert [(c.name, c.init) for c in req.init_containers] == [("init0", True)]


def test_model_selection_from_resource_and_annotations() -> None:
    p = pod(
        "p",
        limits(1, cores=20) | {res.VGPU_TYPE_PREFIX + "A100": "1"},
        annotations={ann.GPU_MODELS: "H200, B200", ann.GPU_UUIDS_EXCLUDE: "GPU-x", ann.NODE_POLICY: "spread"},
    )
    req = parse_pod(p)
    assert req.selector.models == {"A100", "H200", "B200"}
    assert req.selector.exclude_uuids == {"GPU-x"}
    assert req.node_policy == "spread"


def test_unknown_policy_annotation_is_an_error() -> None:
    with pytest.raises(RequestError, match="vgpu.flexai.io/card-policy='tightest': must be one of"):
        parse_pod(pod("p", limits(1), annotations={ann.CARD_POLICY: "tightest"}))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="not-an-object"),
        pytest.param({"metadata": [], "spec": {}}, id="metadata-list"),
        pytest.param({"metadata": {}, "spec": {"containers": {}}}, id="containers-not-list"),
        pytest.param({"metadata": {}, "spec": {"containers": [{"name": "m", "resources": []}]}}, id="resources-list"),
        pytest.param({"metadata": {}, "spec": {"containers": [7]}}, id="container-not-object"),
    ],
)
def test_malformed_pods_are_request_errors_not_crashes(body: object) -> None:
    with pytest.raises(RequestError):
        parse_pod(body)  # type: ignore[arg-type]


def test_pod_without_vgpu_resources_wants_no_gpu() -> None:
    assert not parse_pod(pod("p", {"cpu": "1"})).wants_gpu


# ---- host requests: CPU and memory as kube-scheduler counts them ----


def _c(
    name: str,
    cpu: str | None = None,
    mem: str | None = None,
    gpu: bool = False,
    where: str = "requests",
    restart: str | None = None,
) -> dict[str, object]:
    r: dict[str, object] = {}
    if cpu is not None:
        r["cpu"] = cpu
    if mem is not None:
        r["memory"] = mem
    resources: dict[str, object] = {where: r}
    if gpu:
        resources["limits"] = {**(r if where == "limits" else {}), **limits(1, cores=20)}
    c: dict[str, object] = {"name": name, "image": "x", "resources": resources}
    if restart:
        c["restartPolicy"] = restart
    return c


def test_host_request_sums_app_containers_in_millicores_and_mib() -> None:
    req = parse_pod(pod("p", _c("a", "500m", "1Gi", gpu=True), _c("b", "1.5", "512Mi")))
    assert (req.cpu_milli, req.memory_mib) == (2000, 1536)


def test_host_request_defaults_to_limits_rounds_up_and_is_not_part_of_the_shape() -> None:
    req = parse_pod(pod("p", _c("a", "250m", "1G", where="limits", gpu=True)))
    assert (req.cpu_milli, req.memory_mib) == (250, 954)  # 10^9 bytes = 953.67 MiB, rounded up
    assert req.shape() == parse_pod(pod("q", limits(1, cores=20))).shape()
    assert (parse_pod(pod("r", limits(1))).cpu_milli, parse_pod(pod("r", limits(1))).memory_mib) == (0, 0)


def test_host_request_init_containers_peak_sidecars_and_overhead() -> None:
    p = pod("p", _c("app", "1", "1Gi", gpu=True), init=(_c("big", "4", "512Mi"), _c("small", "100m", "8Gi")))
    req = parse_pod(p)
    assert (req.cpu_milli, req.memory_mib) == (4000, 8192)  # per resource: max(app sum, each init's)
    # A sidecar (restartable init) runs with the app and with every init container after it.
    p = pod(
        "p",
        _c("app", "1", "1Gi", gpu=True),
        init=(_c("side", "500m", "256Mi", restart="Always"), _c("big", "3", "100Mi")),
    )
    req = parse_pod(p)
    assert (req.cpu_milli, req.memory_mib) == (3500, 1280)  # init: 3 + 0.5; memory: 1024 + 256
    p["spec"]["overhead"] = {"cpu": "250m", "memory": "64Mi"}
    req = parse_pod(p)
    assert (req.cpu_milli, req.memory_mib) == (3750, 1344)


@pytest.mark.parametrize(
    ("container", "overhead", "message"),
    [
        pytest.param(
            _c("app", cpu="lots", gpu=True),
            None,
            "container \"app\": resources.requests.cpu='lots': not a quantity",
            id="cpu-not-a-quantity",
        ),
        pytest.param(
            _c("app", mem="-1Gi", gpu=True),
            None,
            "container \"app\": resources.requests.memory='-1Gi': must be a non-negative quantity",
            id="memory-negative",
        ),
        pytest.param(
            _c("app", cpu="2x", where="limits", gpu=True),
            None,
            "container \"app\": resources.limits.cpu='2x'",
            id="limit-named-when-it-is-the-request",
        ),
        pytest.param(_c("app", gpu=True), {"memory": "1ki"}, "pod: spec.overhead.memory='1ki'", id="overhead"),
    ],
)
def test_malformed_host_quantities_name_the_field(container: dict[str, object], overhead: object, message: str) -> None:
    p = pod("p", container)
    if overhead is not None:
        p["spec"]["overhead"] = overhead
    with pytest.raises(RequestError) as e:
        parse_pod(p)
    assert message in str(e.value)


def test_host_request_helper_is_the_one_the_backend_uses_for_pods_without_gpus() -> None:
    from flexai_core.requests import host_request, parse_cpu_milli, parse_memory_mib

    assert host_request(pod("cpu-only", _c("a", "2", "4Gi"))) == (2000, 4096)
    assert parse_cpu_milli("64", "cpu") == 64000
    assert parse_memory_mib("1049000Ki", "memory", round_up=False) == 1024  # capacity rounds down
    with pytest.raises(RequestError, match='init container "i": resources.requests.cpu'):
        host_request(pod("bad", _c("a"), init=(_c("i", cpu="?"),)))


QUANTITIES = [
    "500m",
    "2",
    "1.5",
    ".5",
    "1Ki",
    "512Mi",
    "1.25Gi",
    "1G",
    "1e3",
    "1E3",
    "1E",
    "100n",
    "3u",
    "12k",
    "7910m",
    "32Gi",
    "1073741824",
    "1e-3",
    "5Ei",
    "2P",
    1,
    2.5,
]


@pytest.mark.parametrize("value", QUANTITIES)
def test_quantities_read_as_kubernetes_reads_them(value: object) -> None:
    # Our parser keeps the core free of the Kubernetes client; the client is the reference.
    from kubernetes.utils.quantity import parse_quantity

    assert _quantity(value, "x") == parse_quantity(value)  # type: ignore[no-untyped-call]  # the client's reference parser is untyped


@pytest.mark.parametrize("value", ["lots", "1.2.3", "", "1Kb", "--1", "1 Gi", "-1", True, None, [1]])
def test_bad_quantities_name_the_field(value: object) -> None:
    with pytest.raises(ValueError, match="resources.requests.cpu"):
        _quantity(value, "resources.requests.cpu")


def test_priority_is_read_and_a_bad_one_is_named() -> None:
    p = pod("p", limits(1, cores=10))
    assert parse_pod(p).priority == 0
    p["spec"]["priority"] = 1000
    assert parse_pod(p).priority == 1000
    p["spec"]["priority"] = "high"
    with pytest.raises(RequestError, match=r"pod: spec.priority='high': must be an integer"):
        parse_pod(p)
