"""The chart under test: run helm on deploy/helm/flexai and read back what it rendered.

helm is built from its Go module with the control-plane binaries
(tools/controlplane/build.sh); its default Kubernetes version is that of its own
client library, so every call names the version the chart targets.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.controlplane import REPO_ROOT

CHART = REPO_ROOT / "deploy" / "helm" / "flexai"
KUBE_VERSION = "v1.34.4"  # the kube-scheduler image the chart runs
RELEASE = "flexai"
NAMESPACE = "flexai-system"

Obj = dict[str, Any]

# Values that switch every optional part on, with TLS: rendered and checked beside the defaults.
TLS_VALUES: Mapping[str, Any] = {
    "scheduler": {"extender": {"tls": {"enabled": True, "secretName": "flexai-extender-tls"}}},
}


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its output."""


@dataclass(frozen=True)
class Helm:
    binary: Path

    def run(self, *args: str, values: Mapping[str, Any] | None = None, cwd: Path = REPO_ROOT) -> str:
        argv = [str(self.binary), *args]
        if values:
            # One values file rather than --set: nested maps and types stay as written.
            argv += ["--values", "-"]
        r = subprocess.run(
            argv,
            input=yaml.safe_dump(dict(values)) if values else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if r.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def lint(self, values: Mapping[str, Any] | None = None) -> str:
        return self.run(
            "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "--namespace", NAMESPACE, values=values
        )

    def template(
        self, values: Mapping[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
    ) -> Rendered:
        out = self.run(
            "template", release, str(CHART), "--kube-version", KUBE_VERSION, "--namespace", namespace, values=values
        )
        docs = [d for d in yaml.safe_load_all(out) if d]
        return Rendered(docs, release, namespace)


@dataclass(frozen=True)
class Rendered:
    docs: list[Obj]
    release: str
    namespace: str

    def all(self, kind: str) -> list[Obj]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, suffix: str = "") -> Obj:
        """The only object of `kind` whose name ends with `suffix`."""
        found = [d for d in self.all(kind) if d["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
        return found[0]

    @property
    def config_map(self) -> Obj:
        return self.one("ConfigMap", "-scheduler-config")

    @property
    def scheduler_config(self) -> Obj:
        """The KubeSchedulerConfiguration, parsed."""
        cfg: Obj = yaml.safe_load(self.config_map["data"]["scheduler-config.yaml"])
        return cfg

    def container(self, kind: str, name: str, init: bool = False) -> Obj:
        spec = self.one(kind)["spec"]["template"]["spec"]
        found: list[Obj] = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
        assert len(found) == 1, f"{kind} container {name}"
        return found[0]

    def service_account(self, component: str) -> str:
        return str(self.one("ServiceAccount", f"-{component}")["metadata"]["name"])

    def rbac(self) -> list[Obj]:
        """ServiceAccounts, Roles and bindings: what the RBAC test creates for real."""
        kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
        return [d for d in self.docs if d["kind"] in kinds]


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of values layers, later ones winning."""
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if isinstance(v, Mapping) and isinstance(out.get(k), dict):
                out[k] = merged(out[k], v)
            else:
                out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def arg_value(args: Sequence[str], flag: str) -> str:
    """The value of `--flag=value` in a container's args."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} in {args}"
    return values[0]
