"""The chart rendered by helm, read by the programs that consume it: lint, the one
source of the extender block, the settings file flexai-sched loads, the node agent's
flags, and RBAC without wildcards. (The apiserver and kube-scheduler checks are in
test_apiserver.py and test_kube_scheduler.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexai_core import annotations as ann
from flexai_node.cli import parse_args
from flexai_sched import config, policies
from tests.e2e.controlplane import extender_block

from .chart import TLS_VALUES, Helm, HelmError, Rendered, arg_value

VALUE_SETS = {"defaults": {}, "tls": TLS_VALUES}


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_helm_lint_strict_passes(helm: Helm, values: dict[str, object]) -> None:
    out = helm.lint(values)
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_extender_block_is_the_shared_file(helm: Helm) -> None:
    # The same block the e2e tests give kube-scheduler, with the sidecar's loopback URL.
    cfg = helm.template({"scheduler": {"extender": {"port": 9123}}}).scheduler_config
    assert cfg["extenders"] == [extender_block("http://127.0.0.1:9123")]


def test_tls_switches_https_on_and_names_the_ca(helm: Helm) -> None:
    values = {
        "scheduler": {
            "extender": {
                "tls": {"enabled": True, "secretName": "s", "serverName": "flexai-extender", "mountPath": "/tls"}
            }
        }
    }
    r = helm.template(values)
    want = extender_block("https://127.0.0.1:8888")
    want.update(enableHTTPS=True, tlsConfig={"caFile": "/tls/ca.crt", "serverName": "flexai-extender"})
    assert r.scheduler_config["extenders"] == [want]
    args = r.container("Deployment", "extender")["args"]
    assert arg_value(args, "--tls-cert") == "/tls/tls.crt"
    assert arg_value(args, "--tls-key") == "/tls/tls.key"
    # the probes speak HTTPS too
    probe = r.container("Deployment", "extender")["livenessProbe"]["exec"]["command"]
    assert probe[-1] == "https://127.0.0.1:8888/healthz"
    volumes = {v["name"]: v for v in r.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["extender-tls"]["secret"]["secretName"] == "s"


def test_scheduler_profile_and_leader_election(helm: Helm) -> None:
    r = helm.template({"scheduler": {"name": "gpu-sched"}}, release="r1", namespace="ns1")
    cfg = r.scheduler_config
    assert cfg["profiles"] == [{"schedulerName": "gpu-sched"}]
    le = cfg["leaderElection"]
    assert le["leaderElect"] is True
    # Its own lease: sharing "kube-scheduler" with the default scheduler would leave
    # only one of the two scheduling.
    assert le["resourceName"] != "kube-scheduler"
    assert le["resourceNamespace"] == "ns1"
    lease_rule = [rule for rule in r.one("Role", "-leader-election")["rules"] if "resourceNames" in rule]
    assert lease_rule == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [le["resourceName"]],
            "verbs": ["get", "update"],
        }
    ]


def test_policy_config_map_is_what_flexai_sched_loads(helm: Helm, tmp_path: Path) -> None:
    values = {
        "policy": {
            "nodePolicy": "spread",
            "cardPolicy": "fgd",
            "coreGranularity": 10,
            "maxVgpusPerCard": 3,
            "heartbeatTTLSeconds": 90,
            "filterAnswer": "all",
        }
    }
    r = helm.template(values)
    path = tmp_path / "flexai-sched.yaml"
    path.write_text(r.config_map["data"]["flexai-sched.yaml"])
    settings = config.load(path)
    assert (
        settings.node_policy,
        settings.card_policy,
        settings.granularity,
        settings.max_vgpus_per_card,
        settings.heartbeat_ttl_s,
        settings.filter_answer,
    ) == ("spread", "fgd", 10, 3, 90.0, "all")
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(helm.template({}).config_map["data"]["flexai-sched.yaml"])
    assert config.load(defaults).filter_answer == "best" == config.load(None).filter_answer
    # the extender reads that file: the path in its args is where the ConfigMap is mounted
    args = r.container("Deployment", "extender")["args"]
    assert arg_value(args, "--config") == "/etc/flexai/scheduler/flexai-sched.yaml"
    assert arg_value(args, "--host") == "127.0.0.1"


@pytest.mark.parametrize("name", policies.names())
def test_every_flexai_sched_policy_is_accepted(helm: Helm, name: str) -> None:
    r = helm.template({"policy": {"nodePolicy": name, "cardPolicy": name}})
    assert f"node_policy: {name}" in r.config_map["data"]["flexai-sched.yaml"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policy": {"nodePolicy": "firstfit"}}, "policy.nodePolicy"),
        ({"policy": {"filterAnswer": "first"}}, "policy.filterAnswer"),
        ({"scheduler": {"kubeScheduler": {"percentageOfNodesToScore": 101}}}, "percentageOfNodesToScore"),
        ({"scheduler": {"extender": {"tls": {"enabled": True}}}}, "tls.secretName"),
        # TTL at or under the heartbeat period: every node would look silent at times
        ({"policy": {"heartbeatTTLSeconds": 30}, "node": {"reportEverySeconds": 30}}, "heartbeatTTLSeconds"),
    ],
    ids=[
        "unknown-policy",
        "unknown-filter-answer",
        "score-percent-over-100",
        "tls-without-secret",
        "ttl-not-above-heartbeat",
    ],
)
def test_bad_values_fail_at_render_time(helm: Helm, values: dict[str, object], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        helm.template(values)


def test_node_agent_env_is_understood_by_flexai_node(helm: Helm) -> None:
    r = helm.template({"policy": {"maxVgpusPerCard": 4}, "node": {"reportEverySeconds": 20}})
    agent = r.container("DaemonSet", "agent")
    env = {e["name"]: e.get("value", "") for e in agent["env"]}
    assert agent["env"][0]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    env["FLEXAI_NODE_NAME"] = "gpu-7"  # what the downward API fills in
    args = parse_args([], env=env)
    assert args.node_name == "gpu-7"
    assert args.max_vgpus_per_card == 4 and args.report_every == 20.0
    assert args.inventory == "nvml" and args.metrics_port == 9400
    # Host paths are mounted at the same path inside: the agent gives them to the kubelet.
    spec = r.one("DaemonSet")["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert (
        host["device-plugins"]
        == mounts["device-plugins"]
        == str(args.device_plugin_dir)
        == "/var/lib/kubelet/device-plugins"
    )
    assert host["state"] == mounts["state"] == str(args.state_dir)
    assert str(Path(args.pod_resources_socket).parent) == host["pod-resources"] == mounts["pod-resources"]
    # The hook library the kubelet mounts is the one the init container installs on the host.
    assert args.hook_library.parent == Path(host["hook"])
    install = r.container("DaemonSet", "install-hook", init=True)
    assert f"/host-hook/{args.hook_library.name}" in install["command"][-1]
    assert spec["nodeSelector"] == {ann.GPU_NODE_LABEL: "true"}


@pytest.mark.parametrize(
    "ref,mode,caps",
    [(None, "auto", "compute,utility"), ("off", "off", "utility"), (1485, 1485, "utility")],
    ids=["default-auto", "off", "fixed"],
)
def test_node_agent_ref_clock_and_driver_capabilities(helm: Helm, ref: object, mode: object, caps: str) -> None:
    """auto measures each card (calibration.py), which needs libcuda in the agent's container."""
    r = helm.template({"node": {"refClockMHz": ref}} if ref is not None else {})
    env = {e["name"]: e.get("value", "") for e in r.container("DaemonSet", "agent")["env"]}
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == caps
    env["FLEXAI_NODE_NAME"] = "gpu-7"
    assert parse_args([], env=env).ref_clock_mhz == mode


def test_rbac_names_every_verb_and_resource(helm: Helm) -> None:
    r = helm.template(TLS_VALUES)
    for role in r.all("ClusterRole") + r.all("Role"):
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule[key], f"{role['metadata']['name']}: wildcard {key}"
    refs = {b["roleRef"]["name"] for b in r.all("ClusterRoleBinding") + r.all("RoleBinding")}
    own = {d["metadata"]["name"] for d in r.all("ClusterRole") + r.all("Role")}
    builtin = refs - own
    assert builtin == {"system:kube-scheduler", "system:volume-scheduler", "extension-apiserver-authentication-reader"}


def test_every_container_has_requests_and_probes(helm: Helm) -> None:
    r: Rendered = helm.template(TLS_VALUES)
    for kind in ("Deployment", "DaemonSet"):
        for c in r.one(kind)["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"], f"{kind}/{c['name']}: no requests"
            assert "livenessProbe" in c and "readinessProbe" in c, f"{kind}/{c['name']}: no probes"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            # the agent's root stays writable for the NVIDIA runtime hook's ld.so.cache
            assert c["securityContext"]["readOnlyRootFilesystem"] is (c["name"] != "agent")
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_the_extender_verbs_are_reachable_from_its_pod_only(helm: Helm, values: dict[str, object]) -> None:
    """The extender does not authenticate its callers: only kube-scheduler, beside it in the
    pod, reaches the verbs (it listens on loopback); the Service exposes the views proxy,
    which passes GET (and HEAD) of the views, metrics and health, and nothing else."""
    r = helm.template(values)
    ext = r.container("Deployment", "extender")
    assert arg_value(ext["args"], "--host") == "127.0.0.1"
    assert not ext.get("ports") or all("hostPort" not in p for p in ext["ports"])
    assert r.one("Deployment")["spec"]["template"]["spec"].get("hostNetwork") is not True
    exposed = {p["targetPort"] for p in r.one("Service", "-scheduler")["spec"]["ports"]}
    assert exposed == {"http-views", "https-sched"}
    conf = next(iter(r.one("ConfigMap", "-views")["data"].values()))
    proxied = [line.strip() for line in conf.splitlines() if line.strip().startswith("location")]
    assert proxied == ["location ~ ^/(v1/|metrics$|healthz$|readyz$) {", "location / { return 404; }"]
    assert "limit_except GET { deny all; }" in conf


def test_the_allocation_write_policy_names_its_writers_and_the_user_keys(helm: Helm) -> None:
    # The scheduler's account comes from the release; extra writers from the values; the keys
    # users may write are annotations.USER_POD_ANNOTATIONS (the policy spells them).
    extra = "system:serviceaccount:elsewhere:flexai-sched"
    rendered = helm.template({"scheduler": {"allocationWriters": [extra]}}, release="r1", namespace="ns1")
    policy = rendered.one("ValidatingAdmissionPolicy", "-allocation-writes")
    (writers,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "scheduler"]
    assert writers == f'request.userInfo.username in ["system:serviceaccount:ns1:r1-flexai-scheduler","{extra}"]'
    (user_keys,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "userKeys"]
    assert set(json.loads(user_keys.replace("'", '"'))) == set(ann.USER_POD_ANNOTATIONS)
    off = helm.template({"scheduler": {"restrictAllocationWrites": False}})
    assert not [p for p in off.all("ValidatingAdmissionPolicy") if p["metadata"]["name"].endswith("-allocation-writes")]
